"""SHAP values of a CatBoost model, served without CatBoost: per-leaf tables of its oblivious
trees, built once at training and checked against CatBoost's own `ShapValues`.

CatBoost's SHAP values (path-dependent TreeSHAP, Lundberg et al. 2018, with each node's cover
the summed training weight of the leaves under it) depend on a row only through the leaves it
falls in: every split of an oblivious tree is on the row's path, so the leaf decides every
branch. So for each tree and leaf we compute, once, the Shapley value of each of the tree's
features (brute force over the subsets of its at most DEPTH_MAX distinct features; the value
of a subset S is the cover-weighted mean of the leaves that agree with this leaf on the splits
of S's features, averaged from the root down). A row's SHAP values are then the leaf lookups
of every tree, summed per feature: the comparisons ONNX makes anyway, a gather and a sum.
CatBoost itself prepares such tables again on every call (about 10 ms for one row of
credit_risk on this machine, docs/models.md); these are read from the registry.

Exactness, the property reasons rest on: for every row, sum(contributions) + expected_margin
equals the model's raw margin (log-odds of the positive class), and `check` compares the
tables with CatBoost's `get_feature_importance(type="ShapValues")` on held-out rows; training
refuses a model whose tables disagree (TOLERANCE_LOG_ODDS).

Layout (one array per kind, trees padded to the deepest tree's depth D): `split_feature`
[T, D] and `split_border` [T, D] (a padding level has border +inf, so its bit is always 0, as
CatBoost numbers the leaves of a shallower tree), `leaf_shap` [T, 2^D, D] (a leaf's
contribution per slot) and `slot_feature` [T, D] (the feature a slot's contribution goes to).
Level d of a tree gives bit d of the leaf index, as CatBoost's JSON model lists its splits;
the root is the last split.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DEPTH_MAX = 8  # deeper trees make 2^D x D tables per tree too large to be worth it; our recipes use <= 6
TREES_MAX = 20_000
TOLERANCE_LOG_ODDS = 1e-9  # measured 9e-16 against CatBoost 1.2.10 (float64 sums in both)
CHUNK_ROWS = 64  # rows whose [rows, trees, depth] lookups are held at once (3,000 trees: 9 MB)
ARRAYS = ("split_feature", "split_border", "leaf_shap", "slot_feature")


@dataclass(frozen=True)
class Explainer:
    """The per-leaf SHAP tables of one model (the module's docstring has the layout)."""

    feature_count: int  # columns the trees read (raw features, then derived ones)
    split_feature: npt.NDArray[np.int32]  # [T, D]
    split_border: npt.NDArray[np.float32]  # [T, D]
    leaf_shap: npt.NDArray[np.float64]  # [T, 2^D, D]
    slot_feature: npt.NDArray[np.int32]  # [T, D]
    expected_margin: float  # E[f]: the raw margin with no feature known

    def __post_init__(self) -> None:
        trees, depth = self.split_feature.shape
        assert 1 <= trees <= TREES_MAX and 1 <= depth <= DEPTH_MAX, (trees, depth)
        assert self.split_border.shape == self.slot_feature.shape == (trees, depth)
        assert self.leaf_shap.shape == (trees, 1 << depth, depth), self.leaf_shap.shape
        for name in ("split_feature", "slot_feature"):
            indexes = getattr(self, name)
            assert indexes.min() >= 0 and indexes.max() < self.feature_count, f"{name} outside the features"
        assert math.isfinite(self.expected_margin) and np.all(np.isfinite(self.leaf_shap))

    def contributions(self, matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """SHAP values [N, F] (log-odds) of finite rows of the trees' features; each row sums,
        with expected_margin, to the model's raw margin for it."""
        assert matrix.ndim == 2 and matrix.shape[1] == self.feature_count, matrix.shape
        result = np.zeros((len(matrix), self.feature_count), dtype=np.float64)
        for first in range(0, len(matrix), CHUNK_ROWS):
            rows = np.ascontiguousarray(matrix[first : first + CHUNK_ROWS], dtype=np.float32)
            bits = rows[:, self.split_feature] > self.split_border  # [n, T, D], as CatBoost and ONNX compare
            leaves = bits.astype(np.int64) @ self._powers + self._tree_offsets  # [n, T]: rows of _leaf_rows
            values = self._leaf_rows[leaves]  # [n, T, D]
            cells = self._slots + (np.arange(len(rows)) * self.feature_count)[:, None]  # [n, T * D]
            summed = np.bincount(cells.ravel(), weights=values.ravel(), minlength=len(rows) * self.feature_count)
            result[first : first + len(rows)] = summed.reshape(len(rows), self.feature_count)
        return result

    # Flat views, so that a lookup is one gather (a one-row call is dominated by numpy's per-call costs).
    @cached_property
    def _powers(self) -> npt.NDArray[np.int64]:
        return (1 << np.arange(self.split_feature.shape[1])).astype(np.int64)

    @cached_property
    def _tree_offsets(self) -> npt.NDArray[np.int64]:
        trees, leaves = self.leaf_shap.shape[:2]
        return np.arange(0, trees * leaves, leaves, dtype=np.int64)

    @cached_property
    def _leaf_rows(self) -> npt.NDArray[np.float64]:
        return self.leaf_shap.reshape(-1, self.leaf_shap.shape[2])

    @cached_property
    def _slots(self) -> npt.NDArray[np.int64]:
        return self.slot_feature.astype(np.int64).ravel()[None, :]

    def save(self, path: Path) -> None:
        arrays = {name: getattr(self, name) for name in ARRAYS}
        np.savez(path, **arrays, feature_count=self.feature_count, expected_margin=self.expected_margin)


def load(path: Path) -> Explainer:
    """An explainer saved by Explainer.save (its invariants are checked again after the read)."""
    with np.load(path, allow_pickle=False) as saved:
        return Explainer(
            feature_count=int(saved["feature_count"]),
            split_feature=saved["split_feature"].astype(np.int32),
            split_border=saved["split_border"].astype(np.float32),
            leaf_shap=saved["leaf_shap"].astype(np.float64),
            slot_feature=saved["slot_feature"].astype(np.int32),
            expected_margin=float(saved["expected_margin"]),
        )


def from_catboost(model: Any, feature_count: int) -> Explainer:
    """The tables of a fitted binary CatBoostClassifier over `feature_count` float features.
    ValueError for what they cannot describe (non-oblivious trees, non-float splits, deep trees)."""
    with tempfile.TemporaryDirectory(prefix="yunkai-explain-") as scratch:
        path = Path(scratch) / "model.json"
        model.save_model(str(path), format="json")
        document = json.loads(path.read_text())
    return from_json(document, feature_count)


def from_json(document: dict[str, Any], feature_count: int) -> Explainer:
    """The tables of a CatBoost model in its JSON format (`save_model(format="json")`)."""
    trees = document.get("oblivious_trees")
    if not trees or len(trees) > TREES_MAX:
        raise ValueError(f"the model has {len(trees or [])} oblivious trees; 1 to {TREES_MAX} can be explained")
    depth = max(len(tree["splits"]) for tree in trees)
    if not 1 <= depth <= DEPTH_MAX:
        raise ValueError(f"trees of depth {depth}; 1 to {DEPTH_MAX} can be explained")
    scale, bias = _scale_and_bias(document)
    split_feature = np.zeros((len(trees), depth), dtype=np.int32)
    split_border = np.full((len(trees), depth), np.inf, dtype=np.float32)
    leaf_shap = np.zeros((len(trees), 1 << depth, depth), dtype=np.float64)
    slot_feature = np.zeros((len(trees), depth), dtype=np.int32)
    expected = bias
    for index, tree in enumerate(trees):
        features, borders, shap, slots, tree_expected = _tree_table(tree, feature_count)
        levels = len(features)
        split_feature[index, :levels] = features
        split_border[index, :levels] = borders
        leaf_shap[index, : 1 << levels, : shap.shape[1]] = shap * scale
        slot_feature[index, : len(slots)] = slots
        expected += tree_expected * scale
    return Explainer(feature_count, split_feature, split_border, leaf_shap, slot_feature, float(expected))


def _scale_and_bias(document: dict[str, Any]) -> tuple[float, float]:
    scale, bias = document.get("scale_and_bias", [1.0, [0.0]])
    biases = bias if isinstance(bias, list) else [bias]
    if len(biases) != 1:
        raise ValueError(f"{len(biases)} approx dimensions: only binary models (one margin) can be explained")
    return float(scale), float(biases[0])


def _tree_table(
    tree: dict[str, Any], feature_count: int
) -> tuple[list[int], list[float], npt.NDArray[np.float64], list[int], float]:
    """One tree's split features and borders, its [leaves, slots] SHAP table (unscaled), the
    feature of each slot (its distinct features, sorted), and its expected value."""
    splits = tree["splits"]
    for split in splits:
        if split.get("split_type") != "FloatFeature":
            raise ValueError(f"a {split.get('split_type')} split: only float features can be explained")
    features = [int(split["float_feature_index"]) for split in splits]
    if not all(0 <= f < feature_count for f in features):
        raise ValueError(f"a split on feature {max(features)} of a model with {feature_count} features")
    depth, leaves = len(splits), 1 << len(splits)
    values = np.asarray(tree["leaf_values"], dtype=np.float64)
    weights = np.asarray(tree["leaf_weights"], dtype=np.float64)
    if values.shape != (leaves,) or weights.shape != (leaves,):
        raise ValueError(f"a tree of depth {depth} with {values.size} leaf values: only one margin can be explained")
    bits = (np.arange(leaves)[:, None] >> np.arange(depth)[None, :]) & 1  # [leaf, level]
    ratios = _cover_ratios(bits, weights)
    slots = sorted(set(features))
    slot_of_level = np.asarray([slots.index(f) for f in features], dtype=np.int64)
    subsets = np.arange(1 << len(slots))
    followed = ((subsets[:, None] >> slot_of_level[None, :]) & 1).astype(bool)  # [subset, level]
    # v(S, leaf): the mean over the leaves that agree with `leaf` on the levels S follows, each
    # weighted by the cover ratios of the levels S does not follow.
    weighted = np.tile(values, (len(subsets), 1))
    for level in range(depth):
        weighted[~followed[:, level]] *= ratios[:, level]
    keys = (followed[:, None, :] * bits[None, :, :]) @ (1 << np.arange(depth))  # [subset, leaf]
    cells = subsets[:, None] * leaves + keys
    sums = np.bincount(cells.ravel(), weights=weighted.ravel(), minlength=len(subsets) * leaves)
    value_of = sums[cells]  # [subset, leaf]
    shap = (_shapley_matrix(len(slots)) @ value_of).T  # [leaf, slot]
    return features, [float(split["border"]) for split in splits], shap, slots, float(value_of[0, 0])


def _cover_ratios(bits: npt.NDArray[np.int64], weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """[leaf, level]: the share of the parent node's cover that the child on this leaf's path
    holds, with the root at the last level (CatBoost's order); 0 under a node no row reached."""
    leaves, depth = bits.shape
    ratios = np.zeros((leaves, depth), dtype=np.float64)
    parent_key = np.zeros(leaves, dtype=np.int64)
    for position, level in enumerate(reversed(range(depth))):
        child_key = parent_key | (bits[:, level] << position)
        parent = np.bincount(parent_key, weights=weights, minlength=leaves)[parent_key]
        child = np.bincount(child_key, weights=weights, minlength=leaves)[child_key]
        ratios[:, level] = np.divide(child, parent, out=np.zeros(leaves), where=parent > 0)
        parent_key = child_key
    return ratios


@cache
def _shapley_matrix(players: int) -> npt.NDArray[np.float64]:
    """[player, subset]: phi = matrix @ v gives each player's Shapley value of the game v,
    subsets numbered by their bit masks."""
    matrix = np.zeros((players, 1 << players), dtype=np.float64)
    for subset in range(1 << players):
        size = bin(subset).count("1")
        for player in range(players):
            if not subset >> player & 1:
                weight = math.factorial(size) * math.factorial(players - size - 1) / math.factorial(players)
                matrix[player, subset | 1 << player] += weight
                matrix[player, subset] -= weight
    return matrix


@dataclass(frozen=True)
class Check:
    """The tables against CatBoost's own SHAP values and raw margins on the same rows."""

    passed: bool
    rows_compared: int
    max_abs_diff: float  # |ours - CatBoost's ShapValues|, expected value included (log-odds)
    max_sum_error: float  # |sum(ours) + expected_margin - CatBoost's raw margin|
    tolerance: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check(
    explainer: Explainer, model: Any, matrix: npt.NDArray[np.float32], tolerance: float = TOLERANCE_LOG_ODDS
) -> Check:
    """Compare the tables with CatBoost on `matrix` (rows of the trees' features)."""
    import catboost

    assert len(matrix) > 0
    ours = explainer.contributions(matrix)
    theirs = np.asarray(
        model.get_feature_importance(catboost.Pool(matrix), type="ShapValues", thread_count=2), dtype=np.float64
    )
    raw = np.asarray(model.predict(matrix, prediction_type="RawFormulaVal"), dtype=np.float64)
    width = explainer.feature_count
    if theirs.shape != (len(matrix), width + 1):
        return Check(False, len(matrix), math.inf, math.inf, tolerance, f"CatBoost's SHAP has shape {theirs.shape}")
    diff = max(
        float(np.max(np.abs(ours - theirs[:, :width]))),
        float(np.max(np.abs(explainer.expected_margin - theirs[:, width]))),
    )
    sum_error = float(np.max(np.abs(ours.sum(axis=1) + explainer.expected_margin - raw)))
    reasons = []
    if diff > tolerance:
        reasons.append(f"SHAP values differ from CatBoost's by up to {diff:.3g} > {tolerance:.3g}")
    if sum_error > tolerance:
        reasons.append(f"SHAP values plus the expected value miss the raw margin by up to {sum_error:.3g}")
    return Check(not reasons, len(matrix), diff, sum_error, tolerance, "; ".join(reasons) or "ok")
