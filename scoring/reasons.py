"""The reasons behind a score, as a model version serves them: each row's top contributions
(its exact SHAP values, scoring/explain.py), each with the feature, the row's value, the
contribution and a phrase a credit officer can give the applicant.

A version admitted with reasons carries `shap.npz` (the SHAP tables) and a `reasons` section
in model.json (`describe`: the trees' feature names, the expected margin, the check against
CatBoost, the phrases of scoring/reason_phrases.json as they were at training). `load` opens
them and checks that they explain the graph actually served: on probe rows, sigmoid(expected
margin + sum of contributions) must equal the ONNX probability (`check_served`).

`Reasons.top(rows, count)` lists, per row, up to `count` features with the largest |contribution|
(largest first, ties in feature order; a zero contribution is never a reason), and the sum of
the other features' contributions: expected_margin + listed + others = the row's raw margin,
the log-odds of the probability served. A positive contribution raises the probability of the
positive class (for the credit models: toward default, so toward decline).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scoring import derived, explain, registry

REASONS_MAX = 10  # reasons per row a caller may ask for
ROWS_MAX = 1_024  # rows one call may ask reasons for: they explain decisions, not bulk scoring
PROBABILITY_TOLERANCE = 1e-5  # the parity gate's: how far sigmoid(margin) may be from the ONNX probability
PHRASES_FILE = Path(__file__).with_name("reason_phrases.json")
DIRECTIONS = ("raises", "lowers")
CATEGORY = "{category}"  # in a phrase: the name of the row's category of the feature


class NoReasons(Exception):
    """The version was trained without reasons (FAILED_PRECONDITION): retrain it to get them."""


class BadAsk(ValueError):
    """Reasons asked for beyond the limits (INVALID_ARGUMENT); the message names the limit."""


@dataclass(frozen=True)
class Reason:
    feature: str
    value: float  # the row's value of the feature, as the trees read it
    contribution: float  # SHAP value, log-odds; > 0 raises the probability of the positive class
    phrase: str  # what to tell the applicant for this feature and direction (the feature's name if none)


@dataclass(frozen=True)
class RowReasons:
    reasons: tuple[Reason, ...]
    others: float  # the summed contributions of the features not listed


@dataclass(frozen=True)
class Reasons:
    """A version's explainer with what it needs to name, value and phrase its contributions."""

    explainer: explain.Explainer
    raw_names: list[str]  # what callers send
    derived: tuple[derived.Sum, ...]  # what the graph appends before the trees read the row
    phrases: dict[str, dict[str, str]]  # feature -> {"raises": ..., "lowers": ...}
    categories: dict[str, dict[float, str]]  # categorical feature -> code -> the category's name

    def __post_init__(self) -> None:
        assert len(self.raw_names) + len(self.derived) == self.explainer.feature_count

    @cached_property
    def feature_names(self) -> list[str]:
        return derived.names(self.derived, self.raw_names)

    @property
    def expected_margin(self) -> float:
        return self.explainer.expected_margin

    def margins(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """The raw margins (log-odds) that the contributions of checked raw rows add up to."""
        contributions = self.explainer.contributions(self._trees_input(rows))
        return np.asarray(self.expected_margin + contributions.sum(axis=1), dtype=np.float64)

    def top(self, rows: npt.NDArray[np.float32], count: int) -> list[RowReasons]:
        """Each checked raw row's `count` largest contributions (the module's docstring)."""
        assert 1 <= count <= REASONS_MAX and 1 <= len(rows) <= ROWS_MAX, (count, len(rows))
        matrix = self._trees_input(rows)
        contributions = self.explainer.contributions(matrix)
        names = self.feature_names
        # A stable sort of -|c| keeps equal contributions in feature order.
        orders = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :count].tolist()
        answers = []
        for row, values, order in zip(matrix.tolist(), contributions.tolist(), orders, strict=True):
            chosen = [i for i in order if values[i] != 0.0]
            listed = tuple(
                Reason(names[i], row[i], values[i], self.phrase(names[i], row[i], values[i])) for i in chosen
            )
            answers.append(RowReasons(listed, sum(values) - sum(values[i] for i in chosen)))
        return answers

    def phrase(self, feature: str, value: float, contribution: float) -> str:
        """The phrase for the feature and direction, naming the category where it says {category}."""
        text = self.phrases.get(feature, {}).get(DIRECTIONS[contribution < 0], feature)
        if CATEGORY in text:
            text = text.replace(CATEGORY, self.categories.get(feature, {}).get(value, f"{value:g}"))
        return text

    def _trees_input(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return derived.append(rows, self.derived, self.raw_names)


def ask(served: Reasons | None, model: str, version: int, rows: int, count: int) -> Reasons:
    """The reasons of a version for a call asking `count` per row for `rows` rows, checked
    before anything is scored: BadAsk beyond the limits, NoReasons if the version has none."""
    if not 1 <= count <= REASONS_MAX:
        raise BadAsk(f"reasons_max: {count} is outside 1 to {REASONS_MAX} (0 asks for no reasons)")
    if rows > ROWS_MAX:
        raise BadAsk(f"reasons_max: reasons are given for up to {ROWS_MAX} rows a call, not {rows}")
    if served is None:
        raise NoReasons(f"model {model!r} version {version} was trained without reasons; retrain it to get them")
    return served


@cache
def _phrase_book() -> dict[str, Any]:
    book: dict[str, Any] = json.loads(PHRASES_FILE.read_text())
    return book


def phrases_for(model: str, feature_names: list[str]) -> dict[str, dict[str, str]]:
    """The phrases of scoring/reason_phrases.json for the model's features that have them."""
    entries = _phrase_book().get(model, {})
    unknown = sorted(set(entries) - set(feature_names))
    assert not unknown, f"reason_phrases.json names features {model} does not have: {unknown}"
    for feature, entry in entries.items():
        assert set(entry) == set(DIRECTIONS) and all(isinstance(entry[d], str) and entry[d] for d in DIRECTIONS), (
            f"reason_phrases.json: {model}.{feature} needs a 'raises' and a 'lowers' phrase"
        )
    return {feature: dict(entries[feature]) for feature in feature_names if feature in entries}


def describe(
    model: str, explainer: explain.Explainer, check: explain.Check, feature_names: list[str]
) -> dict[str, Any]:
    """model.json's `reasons` section for a version written with its explainer."""
    return {
        "file": registry.SHAP_FILE,
        "catboost_model": registry.CATBOOST_FILE,
        "method": "CatBoost ShapValues (path-dependent TreeSHAP over leaf weights), tabulated per leaf "
        "(scoring/explain.py); contributions are log-odds of the positive class",
        "features": list(feature_names),
        "expected_margin": explainer.expected_margin,
        "check": check.to_json() | {"against": "CatBoost's get_feature_importance(type='ShapValues'), held-out rows"},
        "phrases": phrases_for(model, feature_names),
    }


def load(folder: Path, metadata: dict[str, Any]) -> Reasons | None:
    """The reasons of the version in `folder`, or None if it was trained without them."""
    section = metadata.get("reasons")
    if section is None:
        return None
    schema = metadata["input_schema"]
    raw_names = [f["name"] for f in sorted(schema["features"], key=lambda f: f["index"])]
    sums = tuple(derived.Sum(str(d["name"]), tuple(d["sum_of"])) for d in metadata.get("derived_features", []))
    categories = {
        feature: {float(code): str(label) for label, code in encoding["codes"].items()}
        | ({float(encoding["unknown"]): "unknown"} if "unknown" in encoding else {})
        for feature, encoding in metadata.get("categorical_encoding", {}).items()
        if "codes" in encoding
    }
    reasons = Reasons(explain.load(folder / section["file"]), raw_names, sums, dict(section["phrases"]), categories)
    if reasons.feature_names != section["features"]:
        raise ValueError(f"the SHAP tables describe {section['features']}, the model reads {reasons.feature_names}")
    if not math.isclose(reasons.expected_margin, float(section["expected_margin"]), rel_tol=0.0, abs_tol=1e-12):
        raise ValueError("shap.npz's expected margin is not the one model.json recorded")
    return reasons


def check_served(reasons: Reasons, rows: npt.NDArray[np.float32], served: npt.NDArray[np.float32]) -> None:
    """ValueError unless the contributions add up to the probabilities the served graph gave `rows`."""
    probabilities = 1.0 / (1.0 + np.exp(-reasons.margins(rows)))
    worst = float(np.max(np.abs(probabilities - served.astype(np.float64))))
    if not worst <= PROBABILITY_TOLERANCE:
        raise ValueError(f"the SHAP values do not add up to the served scores (off by up to {worst:.3g})")
