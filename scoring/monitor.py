"""Monitoring of served model versions: drift of their inputs and score over a window of recent
rows, and their AUC on outcomes as the lending book reports them.

What it owns, per model version (keyed by name and version: a version is immutable, so a reload
of the same version keeps its window):

  Reference    the bins drift is measured in, fixed at training (model.json `drift_reference`,
               metrics.drift_reference): ten equal-count bins per feature over the training
               rows, ten over the held-out rows' scores, and the reference's share of rows in each.
  DriftWindow  the bins of the last `rows_max` rows the version scored (a ring of bin indices, a
               column per feature and one for the score, and when each row was scored) with
               running counts per bin. PSI of each column against the reference is reported once
               the window holds `rows_min` rows, and not at all below.
  OutcomeBook  the scores of the last SCORES_KEPT_MAX rows the version scored for calls that
               carried an `id`, by (id, row). An outcome (label 0 or 1) for a key joins its score;
               the last OUTCOMES_MAX joined (score, label) pairs give an AUC once each class has
               OUTCOME_CLASS_MIN of them.

Why a window of rows, not of minutes: PSI's sampling noise depends on the number of rows (with no
drift its expected value is about (bins - 1) / rows, as N * PSI is close to a chi-square with
bins - 1 degrees of freedom: it is near the G-test's statistic), so a fixed count gives a fixed
noise floor and a fixed memory whatever the traffic; a window of minutes would be noisy at night
and large at peak. The report says when the window's oldest row was scored, so a stale window
shows. Memory: rows_max * (columns + 8) bytes per version (10,000 rows of 13 features: 0.2 MB),
plus about 200 bytes per kept score (SCORES_KEPT_MAX: about 10 MB per version at most).

Why 500 rows at least: with 10 bins, the PSI of 500 rows drawn from the reference itself averages
about 9 / 500 = 0.02, well under the 0.1 threshold; PSI of a handful of rows is noise (one row
in an empty bin of a 1-row sample reads 7.9: issue 21). The thresholds are a rule of thumb that
ignores sample size (Potgieter et al., "The Population Resemblance Statistic", arXiv:2307.11878),
which is why a minimum sample comes with them.

Thresholds: PSI < 0.1 no significant change, 0.1 to 0.25 a minor change worth watching, >= 0.25
a major shift: the credit-scoring industry's rule of thumb, as in N. Siddiqi, "Credit Risk
Scorecards" (Wiley, 2006), and usually traced to E. M. Lewis, "An Introduction to Credit Scoring"
(1992); B. Yurdakul, "Statistical Properties of Population Stability Index" (dissertation, Western
Michigan University, 2018, https://scholarworks.wmich.edu/dissertations/3208) studies them.

Threads: the server changes this state on its event loop and Prometheus reads it from its HTTP
thread, so each version's state is behind one lock. Nothing here survives a restart.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scoring import metrics

PSI_MINOR = 0.1  # at or above: a minor change, worth watching (thresholds: see the module)
PSI_MAJOR = 0.25  # at or above: a major shift
WINDOW_ROWS_DEFAULT = 10_000
WINDOW_ROWS_MAX = 100_000  # memory: see the module
WINDOW_ROWS_MIN_DEFAULT = 500  # PSI is reported from this many rows in the window
SCORES_KEPT_MAX = 50_000  # scored rows with an id, per version, that an outcome can still join
OUTCOMES_MAX = 10_000  # joined outcomes per version the AUC is computed over (the newest)
OUTCOME_CLASS_MIN = 50  # AUC only once both classes have this many outcomes
OUTCOMES_PER_CALL_MAX = 10_000
PENDING_ROWS_MAX = 256  # scored rows that wait to enter the window together (VersionMonitor)
ID_CHARS_MAX = 128  # a longer call id is not kept (and an outcome naming one is refused)
_NO_LABEL = -1

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def flag(psi: float) -> str:
    """How the rule of thumb reads a PSI: "" (stable), "minor" or "MAJOR"."""
    return "MAJOR" if psi >= PSI_MAJOR else "minor" if psi >= PSI_MINOR else ""


@dataclass(frozen=True)
class Reference:
    """The bins of a version's drift, one column per feature (when training stored them) and the
    score last, with the reference's share of rows per bin."""

    features: tuple[str, ...]  # the feature columns' names, in input order; () when not stored
    edges: FloatArray  # [C, E]: column c's cut points, then +inf padding
    edge_counts: IntArray  # [C]: column c has edge_counts[c] + 1 bins
    fractions: FloatArray  # [C, E + 1]: the reference's share of rows per bin, 0 past the column's bins

    def __post_init__(self) -> None:
        columns = len(self.features) + 1
        assert self.edges.shape[0] == columns and self.fractions.shape == (columns, self.edges.shape[1] + 1)
        assert np.allclose(self.fractions.sum(axis=1), 1.0, atol=1e-6), "each column's shares add up to 1"

    @property
    def columns(self) -> int:
        return len(self.features) + 1

    @property
    def bins(self) -> int:
        return int(self.fractions.shape[1])

    @classmethod
    def of(cls, features: Sequence[str], columns: Sequence[tuple[Sequence[float], Sequence[float]]]) -> Reference:
        """From each column's (cut points, shares), features first, the score last."""
        assert len(columns) == len(features) + 1
        width = max(len(edges) for edges, _ in columns)
        edges = np.full((len(columns), width), np.inf)
        fractions = np.zeros((len(columns), width + 1))
        for c, (cuts, shares) in enumerate(columns):
            assert len(shares) == len(cuts) + 1 and list(cuts) == sorted(set(cuts)), (len(cuts), len(shares))
            edges[c, : len(cuts)] = cuts
            fractions[c, : len(shares)] = shares
        counts = np.array([len(cuts) for cuts, _ in columns], dtype=np.int64)
        return cls(tuple(features), edges, counts, fractions)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Reference:
        """A version's reference from its model.json: `drift_reference`, or for a version trained
        before it was stored, the score alone from `reference_histogram` (fixed-width bins)."""
        stored = metadata.get("drift_reference")
        if stored is None:
            histogram = metadata["reference_histogram"]
            return cls.of((), [(histogram["edges"][1:-1], histogram["fractions"])])
        features = stored["features"]["columns"]
        columns = [(f["edges"], f["fractions"]) for f in features]
        columns.append((stored["score"]["edges"], stored["score"]["fractions"]))
        return cls.of([f["name"] for f in features], columns)

    def bin(self, features: npt.NDArray[np.float32], scores: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        """The bins of each row: [N, C], features first (when the reference has them), score last."""
        block = np.column_stack([features, scores]) if self.features else np.asarray(scores)[:, None]
        assert block.shape[1] == self.columns, f"{block.shape[1]} columns for a reference of {self.columns}"
        return metrics.bin_indices(block, self.edges, self.edge_counts).astype(np.uint8)


class DriftWindow:
    """The bins of the last `rows_max` rows of one version, and their counts per column and bin."""

    def __init__(self, reference: Reference, rows_max: int, rows_min: int) -> None:
        assert 1 <= rows_min <= rows_max <= WINDOW_ROWS_MAX, (rows_min, rows_max)
        assert reference.bins <= 256, "bin indices are kept as uint8"
        self.reference = reference
        self.rows_max, self.rows_min = rows_max, rows_min
        self.bins = np.zeros((rows_max, reference.columns), dtype=np.uint8)
        self.times_s = np.zeros(rows_max)
        self.counts = np.zeros((reference.columns, reference.bins), dtype=np.int64)
        self.rows = 0  # rows held: the ring fills positions 0.. first and is never emptied
        self.cursor = 0  # where the next row goes

    def add(self, features: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], times_s: FloatArray) -> None:
        """Rows scored at `times_s`, oldest first."""
        # Rows older than the window's size would be overwritten by this very call.
        new = self.reference.bin(features[-self.rows_max :], scores[-self.rows_max :])
        positions = (self.cursor + np.arange(len(new))) % self.rows_max
        evicted = self.bins[positions[positions < self.rows]]
        self.counts -= self._count(evicted)
        self.counts += self._count(new)
        self.bins[positions] = new
        self.times_s[positions] = times_s[-self.rows_max :]
        self.cursor = (self.cursor + len(new)) % self.rows_max
        self.rows = min(self.rows_max, self.rows + len(new))

    def _count(self, bins: npt.NDArray[np.uint8]) -> IntArray:
        columns, width = self.counts.shape
        flat = (np.arange(columns) * width)[None, :] + bins
        counts: IntArray = np.bincount(flat.ravel(), minlength=columns * width).reshape(columns, width)
        return counts

    def psi(self) -> FloatArray | None:
        """PSI per column against the reference, features first and the score last; None below rows_min."""
        assert (self.counts.sum(axis=1) == self.rows).all(), "every column counts every row of the window"
        if self.rows < self.rows_min:
            return None
        return metrics.psi(self.reference.fractions, self.counts / self.rows)

    def oldest_s(self) -> float | None:
        """When the oldest row of the window was scored (on the monitor's clock)."""
        if self.rows == 0:
            return None
        return float(self.times_s[self.cursor if self.rows == self.rows_max else 0])


class Outcome(enum.Enum):
    RECORDED = "recorded"  # joined to the row's score and counted
    EXISTS = "exists"  # the same label was recorded before: nothing changed
    UNKNOWN_SCORE = "unknown_score"  # no kept score for (id, row): never scored with that id, or forgotten
    CONFLICTS = "conflicts"  # another label was recorded for the row: nothing changed


class OutcomeBook:
    """Scores kept by (call id, row) for outcomes to join, and the newest joined (score, label) pairs."""

    def __init__(self, kept_max: int = SCORES_KEPT_MAX, outcomes_max: int = OUTCOMES_MAX) -> None:
        assert kept_max >= 1 and outcomes_max >= 1
        self.kept_max, self.outcomes_max = kept_max, outcomes_max
        self.kept: OrderedDict[tuple[str, int], tuple[float, int]] = OrderedDict()  # -> (score, label)
        self.scores = np.zeros(outcomes_max)
        self.labels = np.zeros(outcomes_max, dtype=np.int8)
        self.joined = 0  # pairs held, up to outcomes_max
        self.cursor = 0

    def keep(self, call_id: str, scores: npt.NDArray[np.float32]) -> None:
        """Keep a call's scores by row (a call scored again with the same id replaces them)."""
        assert 1 <= len(call_id) <= ID_CHARS_MAX
        first = max(0, len(scores) - self.kept_max)
        for row, score in enumerate(scores[first:].tolist(), start=first):
            key = (call_id, row)
            self.kept[key] = (score, _NO_LABEL)
            self.kept.move_to_end(key)
        while len(self.kept) > self.kept_max:
            self.kept.popitem(last=False)

    def keep_given(self, key: tuple[str, int], score: float) -> None:
        """A score the caller kept for `key`, kept here unless this book holds the row's own."""
        if key not in self.kept:
            self.kept[key] = (score, _NO_LABEL)
            while len(self.kept) > self.kept_max:
                self.kept.popitem(last=False)

    def check(self, key: tuple[str, int], label: int) -> Outcome:
        """What recording `label` for `key` would do (nothing changed)."""
        held = self.kept.get(key)
        if held is None:
            return Outcome.UNKNOWN_SCORE
        if held[1] == label:
            return Outcome.EXISTS
        return Outcome.CONFLICTS if held[1] != _NO_LABEL else Outcome.RECORDED

    def record(self, key: tuple[str, int], label: int) -> None:
        assert self.check(key, label) is Outcome.RECORDED and label in (0, 1)
        score, _ = self.kept[key]
        self.kept[key] = (score, label)
        self.scores[self.cursor], self.labels[self.cursor] = score, label
        self.cursor = (self.cursor + 1) % self.outcomes_max
        self.joined = min(self.outcomes_max, self.joined + 1)

    def classes(self) -> tuple[int, int]:
        """(positives, negatives) among the joined pairs."""
        positives = int(self.labels[: self.joined].sum())
        return positives, self.joined - positives

    def auc(self, class_min: int) -> float | None:
        positives, negatives = self.classes()
        if min(positives, negatives) < class_min:
            return None
        return metrics.auc(self.labels[: self.joined], self.scores[: self.joined])


@dataclass(frozen=True)
class Report:
    """One version's monitoring as it stands."""

    name: str
    version: int
    window_rows: int
    window_rows_max: int
    window_rows_min: int
    window_age_s: float | None  # since the oldest row of the window was scored; None when empty
    features_binned: bool  # False for a version trained before feature bins were stored
    score_psi: float | None  # None below window_rows_min
    feature_psi: dict[str, float]  # worst first; empty below window_rows_min or without feature bins
    positives: int
    negatives: int
    class_min: int
    outcomes_max: int
    auc: float | None  # None until each class has class_min outcomes


class VersionMonitor:
    """One version's window and outcomes. Scored rows wait in `pending` (at most PENDING_ROWS_MAX)
    and enter the window together: binning costs numpy tens of microseconds a call, whatever its
    rows, more than scoring one row does."""

    def __init__(self, name: str, version: int, reference: Reference, rows_max: int, rows_min: int) -> None:
        self.name, self.version = name, version
        self.lock = threading.Lock()
        self.window = DriftWindow(reference, rows_max, rows_min)
        self.book = OutcomeBook()
        self.pending: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]] = []
        self.pending_rows = 0

    def add(self, features: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], now_s: float) -> None:
        """Rows scored (under the lock)."""
        self.pending.append((features, scores, now_s))
        self.pending_rows += len(scores)
        if self.pending_rows >= PENDING_ROWS_MAX:
            self.flush()

    def flush(self) -> None:
        """Pending rows into the window (under the lock); each row keeps the time of its call."""
        if not self.pending:
            return
        features = np.concatenate([f for f, _, _ in self.pending])
        scores = np.concatenate([s for _, s, _ in self.pending])
        times_s = np.concatenate([np.full(len(s), t) for _, s, t in self.pending])
        self.pending, self.pending_rows = [], 0
        self.window.add(features, scores, times_s)

    def report(self, now_s: float, class_min: int) -> Report:
        with self.lock:
            self.flush()
            psi = self.window.psi()
            oldest = self.window.oldest_s()
            positives, negatives = self.book.classes()
            auc = self.book.auc(class_min)
            rows = self.window.rows
        names = self.window.reference.features
        features = {} if psi is None else dict(zip(names, psi[:-1].tolist(), strict=True))
        return Report(
            name=self.name,
            version=self.version,
            window_rows=rows,
            window_rows_max=self.window.rows_max,
            window_rows_min=self.window.rows_min,
            window_age_s=None if oldest is None else max(0.0, now_s - oldest),
            features_binned=bool(names),
            score_psi=None if psi is None else float(psi[-1]),
            feature_psi=dict(sorted(features.items(), key=lambda item: -item[1])),
            positives=positives,
            negatives=negatives,
            class_min=class_min,
            outcomes_max=self.book.outcomes_max,
            auc=auc,
        )


class Monitors:
    """Every version's monitor, made when the version first scores a row."""

    def __init__(
        self,
        rows_max: int = WINDOW_ROWS_DEFAULT,
        rows_min: int = WINDOW_ROWS_MIN_DEFAULT,
        class_min: int = OUTCOME_CLASS_MIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert 1 <= rows_min <= rows_max <= WINDOW_ROWS_MAX and class_min >= 1
        self.rows_max, self.rows_min, self.class_min = rows_max, rows_min, class_min
        self.clock = clock
        self.versions: dict[tuple[str, int], VersionMonitor] = {}

    def observe(
        self,
        name: str,
        version: int,
        reference: Reference,
        call_id: str,
        features: npt.NDArray[np.float32],
        scores: npt.NDArray[np.float32],
    ) -> None:
        """Rows a version scored: into its drift window, and kept for outcomes when the call has an id."""
        monitor = self._monitor(name, version, reference)
        with monitor.lock:
            monitor.add(features, scores, self.clock())
            if 1 <= len(call_id) <= ID_CHARS_MAX:
                monitor.book.keep(call_id, scores)

    def record(
        self,
        name: str,
        outcomes: Sequence[tuple[str, int, int]],
        given: Mapping[int, tuple[int, float, Reference]] | None = None,
    ) -> list[Outcome]:
        """Join each (call id, row, label) to the score of every version of `name` that kept one.
        `given[i]`: (version, score, its reference) the caller kept for outcome i, taken where that
        version keeps no score for the row. Per outcome: CONFLICTS if any version holds another
        label (nothing recorded), else RECORDED where a version can take it, else EXISTS, else
        UNKNOWN_SCORE."""
        for index, (version, score, reference) in (given or {}).items():
            call_id, row, _label = outcomes[index]
            monitor = self._monitor(name, version, reference)
            with monitor.lock:
                monitor.book.keep_given((call_id, row), score)
        monitors = [m for (model, _), m in self.versions.items() if model == name]
        results = []
        for call_id, row, label in outcomes:
            assert label in (0, 1), "labels are checked before they get here"
            key = (call_id, row)
            checked = []
            for monitor in monitors:
                with monitor.lock:
                    checked.append((monitor, monitor.book.check(key, label)))
            found = {outcome for _, outcome in checked}
            if Outcome.CONFLICTS in found:
                results.append(Outcome.CONFLICTS)
                continue
            for monitor, outcome in checked:
                if outcome is Outcome.RECORDED:
                    with monitor.lock:
                        monitor.book.record(key, label)
            results.append(next((o for o in (Outcome.RECORDED, Outcome.EXISTS) if o in found), Outcome.UNKNOWN_SCORE))
        return results

    def _monitor(self, name: str, version: int, reference: Reference) -> VersionMonitor:
        monitor = self.versions.get((name, version))
        if monitor is None:
            monitor = VersionMonitor(name, version, reference, self.rows_max, self.rows_min)
            self.versions = {**self.versions, (name, version): monitor}  # replaced whole: readers on other threads
        return monitor

    def keep_only(self, name: str, versions: Iterable[int]) -> None:
        """Forget the monitors of `name`'s versions no longer loaded (all of them for an unloaded model)."""
        loaded = set(versions)
        self.versions = {k: m for k, m in self.versions.items() if k[0] != name or k[1] in loaded}

    def report(self, name: str, version: int, reference: Reference) -> Report:
        """The version's monitoring; an empty one for a version that has scored nothing yet."""
        monitor = self.versions.get((name, version))
        if monitor is not None:
            return monitor.report(self.clock(), self.class_min)
        return Report(
            name, version, 0, self.rows_max, self.rows_min, None, bool(reference.features), None, {}, 0, 0,
            self.class_min, OUTCOMES_MAX, None,
        )  # fmt: skip
