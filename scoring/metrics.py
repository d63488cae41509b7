"""Model quality figures for binary scores: AUC (by ranks), KS, the KS-optimal cut-off and the
reference score histogram that the server's PSI drift gauge compares served scores against.

Pure numpy functions; nothing here knows about CatBoost or ONNX.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.integer]

HISTOGRAM_BINS = 20


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
