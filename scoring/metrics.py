"""Model quality figures for binary scores: AUC (by ranks), KS, the KS-optimal cut-off, a
fixed-width score histogram, and what drift is measured with: equal-count bins fixed on a
reference sample, and the population stability index (PSI) of shares of rows per bin.

Pure numpy functions; nothing here knows about CatBoost or ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.integer]

HISTOGRAM_BINS = 20
DRIFT_BINS = 10  # deciles: the usual binning of a population stability report
PSI_EPSILON = 1e-4  # floor of a bin's share, so an empty bin does not make PSI infinite


def _check(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[IntArray, FloatArray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    assert y.shape == s.shape, f"labels {y.shape} and scores {s.shape} differ in length"
    assert set(np.unique(y).tolist()) == {0, 1}, "AUC and KS need both classes present"
    return y, s


def auc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (average ranks break ties)."""
    y, s = _check(y_true, scores)
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # Average ranks over runs of tied scores, so ties count one half as the U statistic requires.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    positives = int(y.sum())
    negatives = len(y) - positives
    rank_sum = ranks[y == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def ks(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic between the score CDFs of positives and negatives.

    Returns (ks, cutoff): the largest gap between the two empirical CDFs, and a cut-off where
    `score >= cutoff` separates the classes best. The cut-off is the midpoint between the score
    at which the gap occurs and the next lower score, not an observed score itself: a cut-off
    equal to a held-out score would flip that row's decision under any rounding (float32 ONNX).
    """
    y, s = _check(y_true, scores)
    thresholds = np.unique(s)
    positives = np.sort(s[y == 1])
    negatives = np.sort(s[y == 0])
    # Share of each class scoring strictly below each candidate threshold.
    cdf_positive = np.searchsorted(positives, thresholds, side="left") / len(positives)
    cdf_negative = np.searchsorted(negatives, thresholds, side="left") / len(negatives)
    gaps = np.abs(cdf_negative - cdf_positive)
    best = int(np.argmax(gaps))
    cutoff = thresholds[best] if best == 0 else (thresholds[best - 1] + thresholds[best]) / 2.0
    return float(gaps[best]), float(cutoff)


def score_histogram(scores: npt.ArrayLike, bins: int = HISTOGRAM_BINS) -> dict[str, list[float]]:
    """Fixed-width histogram of probabilities over [0, 1]: edges and the share of scores per bin."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    assert len(s) > 0
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(s, 0.0, 1.0), bins=edges)
    return {"edges": edges.round(6).tolist(), "fractions": (counts / len(s)).round(8).tolist()}


def quantile_edges(values: npt.ArrayLike, bins: int = DRIFT_BINS) -> list[float]:
    """Interior cut points of `bins` equal-count bins of the finite `values`, increasing.

    The cut points are observed values (the inverted-CDF quantile), so a discrete feature's bins
    fall between its levels, and equal cut points are merged: a feature with 3 levels gets at most
    4 bins. A value v falls in bin `bin_indices` gives it: the number of cut points <= v.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    assert len(v) > 0 and bins >= 2
    cuts = np.quantile(v, np.arange(1, bins) / bins, method="inverted_cdf")
    return [float(c) for c in np.unique(cuts)]


def bin_indices(block: npt.NDArray[np.floating], edges: FloatArray, edge_counts: IntArray) -> IntArray:
    """The bin of each value of a [N, C] block: column c's cut points are edges[c, :edge_counts[c]]
    (the rest of the row is +inf padding); a value's bin is the number of cut points <= it, so
    column c has edge_counts[c] + 1 bins. NaN falls in bin 0; +inf in the top bin."""
    assert block.ndim == 2 and edges.shape == (block.shape[1], edges.shape[1]) and len(edge_counts) == block.shape[1]
    below = np.asarray(block, dtype=np.float64)[:, :, None] >= edges[None, :, :]
    indices: IntArray = np.minimum(below.sum(axis=2), edge_counts[None, :])
    return indices


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, epsilon: float = PSI_EPSILON) -> npt.NDArray[np.float64]:
    """Population stability index over the last axis: sum over bins of (a - e) * ln(a / e), where
    e and a are the reference's and the sample's shares of rows in each bin, floored at `epsilon`
    (an empty bin would otherwise make it infinite). Bins both leave empty add nothing."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    a = np.maximum(np.asarray(actual, dtype=np.float64), epsilon)
    result: npt.NDArray[np.float64] = np.sum((a - e) * np.log(a / e), axis=-1)
    return result


def drift_reference(
    feature_names: Sequence[str], train_x: npt.NDArray[np.floating], held_out_scores: npt.ArrayLike
) -> dict[str, Any]:
    """model.json's `drift_reference` (scoring/monitor.py measures drift in it): equal-count bins of
    each feature over the training rows, and of the score over the held-out rows (the scores of
    rows a model trained on are more confident than new rows' and would read as drift)."""

    def column(values: npt.ArrayLike) -> dict[str, Any]:
        edges = quantile_edges(values)
        bins = np.searchsorted(edges, np.asarray(values, dtype=np.float64).ravel(), side="right")  # cut points <= v
        fractions = np.bincount(bins, minlength=len(edges) + 1) / len(bins)
        return {"edges": edges, "fractions": fractions.round(8).tolist()}

    scores = np.asarray(held_out_scores, dtype=np.float64)
    return {
        "bins": DRIFT_BINS,
        "binning": "equal-count bins: cut points are observed quantiles, equal ones merged; a value v falls in "
        "bin i = the number of cut points <= v",
        "features": {
            "of": "training rows",
            "rows": len(train_x),
            "columns": [{"name": name} | column(train_x[:, i]) for i, name in enumerate(feature_names)],
        },
        "score": {"of": "held-out rows' ONNX probabilities", "rows": len(scores)} | column(scores),
    }
