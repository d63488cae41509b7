"""How each scoring model is trained: its tuned CatBoost parameters and derived features (a
`Recipe`), the plain CatBoost baseline it is measured against, and `fit`, which picks the
number of trees by early stopping on a validation split carved from the training rows only,
then refits on all of them.

A recipe may average several seeds (`bag_seeds`): each member is fit as above with its own
CatBoost seed and validation split, and catboost.sum_models adds their trees, weighted 1/K,
into one model of oblivious trees, which exports to ONNX and has SHAP tables like any other.

Recipes were chosen by 5-fold cross-validation on the training rows (`yunkai scoring
evaluate`, docs/models.md); the held-out test rows played no part. What did not help there
is not here: class weights (no gain beyond the fold-to-fold spread, and they would make the
probabilities that telemarketing multiplies by agent skill overstate conversions), ratio
features for credit_risk, feature selection for marketing_response, and CatBoost's own
categorical features (CatBoost cannot export them to ONNX, even one-hot encoded).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scoring import derived

THREADS = 2  # the machine has two cores and also runs latency benchmarks
VALIDATION_FRACTION = 0.2
VALIDATION_SEED_OFFSET = 1  # the validation split's seed differs from the test split's
BAG_SEED_STRIDE = 1000  # bagged members' seeds, far apart so that refits with seed + 1, + 2 share none
CARAVAN_POLICY_KINDS = (
    "WAPART WABEDR WALAND PERSAUT BESAUT MOTSCO VRAAUT AANHANG TRACTOR WERKT BROM LEVEN PERSONG "
    "GEZONG WAOREG BRAND ZEILPL PLEZIER FIETS INBOED BYSTAND"
)


@dataclass(frozen=True)
class Recipe:
    depth: int = 6
    learning_rate: float = 0.03
    l2_leaf_reg: float = 3.0
    iterations_max: int = 3000
    # Stop once the validation log loss has not improved for this many trees (0: no early stopping).
    early_stopping_rounds: int = 200
    derived: tuple[derived.Sum, ...] = ()
    # Seed bagging: this many models, each with its own CatBoost seed and validation split (so its
    # own early-stopped tree count), averaged into one model by catboost.sum_models (weights 1/K).
    # The sum is still one model of oblivious trees: ONNX export and the SHAP tables work as before.
    bag_seeds: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "learning_rate": self.learning_rate,
            "l2_leaf_reg": self.l2_leaf_reg,
            "iterations_max": self.iterations_max,
            "early_stopping_rounds": self.early_stopping_rounds,
            "bag_seeds": self.bag_seeds,
            "validation_fraction": VALIDATION_FRACTION,
            "derived_features": [feature.to_json() for feature in self.derived],
        }


@dataclass(frozen=True)
class Fitted:
    model: Any  # catboost.CatBoostClassifier, refit on all training rows
    recipe: Recipe
    trees: int  # trees in the model: what early stopping chose, summed over a bag's members
    member_trees: tuple[int, ...]  # each bagged member's trees (one entry without bagging)

    def scores(self, features: npt.NDArray[np.float32], raw_names: list[str]) -> npt.NDArray[np.float64]:
        """CatBoost's positive-class probabilities for raw feature rows."""
        matrix = derived.append(features, self.recipe.derived, raw_names)
        return np.asarray(self.model.predict_proba(matrix)[:, 1], dtype=np.float64)


def _caravan_sums() -> tuple[derived.Sum, ...]:
    # CoIL 2000's product-ownership columns: A* count a customer's policies of each of 21 kinds,
    # P* code what they pay for each. Their totals (how many policies, how much premium) are what
    # trees of depth 3 cannot add up themselves; they lift CV AUC by about 0.01 (docs/models.md).
    kinds = CARAVAN_POLICY_KINDS.split()
    assert len(kinds) == 21
    return (
        derived.Sum("policies_total", tuple(f"A{kind}" for kind in kinds)),
        derived.Sum("contributions_total", tuple(f"P{kind}" for kind in kinds)),
    )


RECIPES: Mapping[str, Recipe] = {
    # Five seeds averaged, trees of depth 4: CV AUC 0.8445 against 0.8408 for one seed of depth 6
    # (depth 4 alone 0.8420, five seeds of depth 6 alone 0.8422; docs/models.md).
    "credit_risk": Recipe(depth=4, learning_rate=0.03, bag_seeds=5),
    # 348 buyers among 5,822: shallow, strongly regularised trees overfit less.
    "marketing_response": Recipe(depth=3, learning_rate=0.02, l2_leaf_reg=20.0, derived=_caravan_sums()),
    "repayment_willingness": Recipe(depth=6, learning_rate=0.03),
    "early_warning": Recipe(depth=6, learning_rate=0.03),
}


def recipe_for(name: str, iterations_max: int | None = None) -> Recipe:
    """The model's recipe, with its tree budget capped at `iterations_max` when given."""
    if name not in RECIPES:
        raise KeyError(f"no training recipe for model {name!r} (have {sorted(RECIPES)})")
    recipe = RECIPES[name]
    return recipe if iterations_max is None else replace(recipe, iterations_max=iterations_max)


def stratified_mask(labels: npt.NDArray[np.int64], fraction: float, seed: int) -> npt.NDArray[np.bool_]:
    """True for a random `fraction` of each class's rows, so a rare class appears in proportion."""
    assert 0.0 < fraction < 1.0, fraction
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in (0, 1):
        rows = np.flatnonzero(labels == label)
        rng.shuffle(rows)
        mask[rows[: round(len(rows) * fraction)]] = True
    return mask


def _classifier(recipe: Recipe, iterations: int, seed: int) -> Any:
    import catboost

    return catboost.CatBoostClassifier(
        iterations=iterations,
        depth=recipe.depth,
        learning_rate=recipe.learning_rate,
        l2_leaf_reg=recipe.l2_leaf_reg,
        thread_count=THREADS,
        random_seed=seed,
        verbose=0,
        allow_writing_files=False,
    )


def fit(
    recipe: Recipe, features: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], raw_names: list[str], seed: int
) -> Fitted:
    """Early stopping on a stratified validation split of these rows picks the number of trees;
    the model is then refit on all of them with that many (no row is wasted on validation).
    With `bag_seeds` K > 1, K such models (seeds seed, seed + BAG_SEED_STRIDE, ...) are averaged
    into one by catboost.sum_models."""
    if len(np.unique(labels)) != 2:
        raise ValueError("training rows must hold both classes")
    if recipe.bag_seeds < 1:
        raise ValueError(f"bag_seeds must be >= 1, not {recipe.bag_seeds}")
    matrix = derived.append(features, recipe.derived, raw_names)
    members = [_fit_member(recipe, matrix, labels, seed + BAG_SEED_STRIDE * k) for k in range(recipe.bag_seeds)]
    sizes = tuple(trees for _, trees in members)
    if len(members) == 1:
        return Fitted(members[0][0], recipe, sizes[0], sizes)
    return Fitted(_average([model for model, _ in members]), recipe, sum(sizes), sizes)


def _fit_member(
    recipe: Recipe, matrix: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], seed: int
) -> tuple[Any, int]:
    trees = recipe.iterations_max
    if recipe.early_stopping_rounds:
        validation = stratified_mask(labels, VALIDATION_FRACTION, seed + VALIDATION_SEED_OFFSET)
        probe = _classifier(recipe, recipe.iterations_max, seed)
        probe.fit(
            matrix[~validation],
            labels[~validation],
            eval_set=(matrix[validation], labels[validation]),
            early_stopping_rounds=recipe.early_stopping_rounds,
        )
        trees = int(probe.get_best_iteration()) + 1
    model = _classifier(recipe, trees, seed)
    model.fit(matrix, labels)
    return model, trees


def _average(models: list[Any]) -> Any:
    """One CatBoostClassifier whose raw margin is the mean of the models' margins: their trees
    side by side, leaf values (and biases) weighted 1/K."""
    import catboost

    summed = catboost.sum_models(models, weights=[1.0 / len(models)] * len(models))
    # sum_models keeps each member's training parameters only under "model<i>:params"; the ONNX
    # export reads the loss function (so: a classifier, with probabilities) from "params".
    summed.get_metadata()["params"] = models[0].get_metadata()["params"]
    with tempfile.TemporaryDirectory(prefix="yunkai-bag-") as scratch:
        path = str(Path(scratch) / "bag.cbm")
        summed.save_model(path)
        model = catboost.CatBoostClassifier()
        model.load_model(path)
    return model


def fit_baseline(
    features: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], seed: int, iterations: int | None = None
) -> Any:
    """Plain CatBoost: default parameters (1,000 trees, its own learning rate), raw features."""
    import catboost

    extra = {} if iterations is None else {"iterations": iterations}
    model = catboost.CatBoostClassifier(
        thread_count=THREADS, random_seed=seed, verbose=0, allow_writing_files=False, **extra
    )
    model.fit(features, labels)
    return model
