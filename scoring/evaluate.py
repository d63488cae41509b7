"""`yunkai scoring evaluate`: how good each model's recipe is, against plain CatBoost.

Cross-validation runs on the training rows only (the split `yunkai scoring train` makes, so
the held-out test rows never inform a choice): stratified folds, the same folds for the
baseline (CatBoost with default parameters on the raw features) and for ours (the model's
recipe, scoring/recipes.py), AUC and KS per fold, then mean and standard deviation. Then each
is fit once on all training rows and scored on the held-out rows, the figure the registry
records. `--retrain-seeds N` refits ours with N CatBoost seeds on the same rows: the spread
of held-out AUC that retraining alone causes (what the quality gate's tolerance must allow).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scoring import datasets, metrics, recipes, train

FOLDS_DEFAULT = 5
FOLDS_MAX = 20
FOLD_SEED_OFFSET = 2  # fold assignment's seed differs from the test split's and the validation split's
SEEDS_MAX = 50


@dataclass(frozen=True)
class Scores:
    auc: float
    ks: float


@dataclass(frozen=True)
class Report:
    name: str
    source: str
    folds: int
    seed: int
    training_rows: int
    held_out_rows: int
    baseline: list[Scores]  # per fold
    ours: list[Scores]  # per fold, on the same folds
    ours_trees: list[int]  # trees early stopping chose in each fold
    held_out_baseline: Scores
    held_out_ours: Scores
    retrain_aucs: list[float]  # held-out AUC of ours refit with other CatBoost seeds (empty unless asked)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fold_ids(labels: npt.NDArray[np.int64], folds: int, seed: int) -> npt.NDArray[np.int64]:
    """Stratified fold of each row: each class's rows, shuffled, dealt to the folds in turn."""
    positives = int(labels.sum())
    if not 2 <= folds <= min(positives, len(labels) - positives):
        raise ValueError(f"{folds} folds need at least {folds} rows of each class and folds >= 2")
    rng = np.random.default_rng(seed)
    ids = np.empty(len(labels), dtype=np.int64)
    for label in (0, 1):
        rows = np.flatnonzero(labels == label)
        rng.shuffle(rows)
        ids[rows] = np.arange(len(rows)) % folds
    return ids


def _scores(labels: npt.NDArray[np.int64], probabilities: npt.NDArray[np.float64]) -> Scores:
    return Scores(metrics.auc(labels, probabilities), metrics.ks(labels, probabilities)[0])


def _baseline_scores(model: Any, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    return np.asarray(model.predict_proba(features)[:, 1], dtype=np.float64)


def cross_validate(
    name: str,
    data: datasets.Dataset,
    folds: int = FOLDS_DEFAULT,
    seed: int = train.SEED_DEFAULT,
    iterations: int | None = None,
    retrain_seeds: int = 0,
) -> Report:
    """Baseline and recipe on the same stratified folds of the training rows, then on the held-out rows.
    `iterations` caps both models' trees (for a quick look; the published figures use none)."""
    recipe = recipes.recipe_for(name, iterations)
    parts = train.split(data, seed)
    x, y, names = parts.train_x, parts.train_y, data.feature_names
    ids = fold_ids(y, folds, seed + FOLD_SEED_OFFSET)
    baseline, ours, trees = [], [], []
    for fold in range(folds):
        fit_rows, score_rows = ids != fold, ids == fold
        plain = recipes.fit_baseline(x[fit_rows], y[fit_rows], seed, iterations)
        baseline.append(_scores(y[score_rows], _baseline_scores(plain, x[score_rows])))
        fitted = recipes.fit(recipe, x[fit_rows], y[fit_rows], names, seed)
        ours.append(_scores(y[score_rows], fitted.scores(x[score_rows], names)))
        trees.append(fitted.trees)
    plain = recipes.fit_baseline(x, y, seed, iterations)
    fitted = recipes.fit(recipe, x, y, names, seed)
    retrain_aucs = [
        metrics.auc(parts.test_y, recipes.fit(recipe, x, y, names, seed + k).scores(parts.test_x, names))
        for k in range(1, retrain_seeds + 1)
    ]
    return Report(
        name=name,
        source=data.source,
        folds=folds,
        seed=seed,
        training_rows=len(y),
        held_out_rows=len(parts.test_y),
        baseline=baseline,
        ours=ours,
        ours_trees=trees,
        held_out_baseline=_scores(parts.test_y, _baseline_scores(plain, parts.test_x)),
        held_out_ours=_scores(parts.test_y, fitted.scores(parts.test_x, names)),
        retrain_aucs=retrain_aucs,
    )


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def format_report(report: Report) -> str:
    lines = [
        f"{report.name} ({report.source}): {report.folds}-fold stratified CV on {report.training_rows} training "
        f"rows (seed {report.seed}), then {report.held_out_rows} held-out rows",
        f"  {'fold':>6}  {'baseline AUC':>12}  {'ours AUC':>9}  {'baseline KS':>11}  {'ours KS':>8}  {'trees':>5}",
    ]
    for fold, (base, ours, trees) in enumerate(zip(report.baseline, report.ours, report.ours_trees, strict=True)):
        lines.append(f"  {fold:>6}  {base.auc:>12.4f}  {ours.auc:>9.4f}  {base.ks:>11.4f}  {ours.ks:>8.4f}  {trees:>5}")
    base_auc, ours_auc = [s.auc for s in report.baseline], [s.auc for s in report.ours]
    base_ks, ours_ks = [s.ks for s in report.baseline], [s.ks for s in report.ours]
    lines += [
        f"  CV AUC  baseline {_mean_sd(base_auc)}  ours {_mean_sd(ours_auc)}  (mean ± sd over folds)",
        f"  CV KS   baseline {_mean_sd(base_ks)}  ours {_mean_sd(ours_ks)}",
        f"  held-out AUC  baseline {report.held_out_baseline.auc:.4f}  ours {report.held_out_ours.auc:.4f};  "
        f"KS  baseline {report.held_out_baseline.ks:.4f}  ours {report.held_out_ours.ks:.4f}",
    ]
    if report.retrain_aucs:
        aucs = report.retrain_aucs
        lines.append(
            f"  ours refit with {len(aucs)} other CatBoost seeds: held-out AUC {_mean_sd(aucs)}, "
            f"range {min(aucs):.4f}-{max(aucs):.4f}"
        )
    return "\n".join(lines)


def _bounded_int(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train.add_model_argument(parser, "evaluate")
    parser.add_argument("--folds", type=_bounded_int(2, FOLDS_MAX), default=FOLDS_DEFAULT, help="CV folds")
    parser.add_argument("--seed", type=int, default=train.SEED_DEFAULT, help="seed of the split, folds and CatBoost")
    parser.add_argument(
        "--iterations", type=train.positive_int, metavar="N", help="cap both models' trees at N (quick look only)"
    )
    parser.add_argument(
        "--retrain-seeds",
        type=_bounded_int(0, SEEDS_MAX),
        default=0,
        metavar="N",
        help="also refit ours with N other CatBoost seeds and report the held-out AUC spread",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the reports as JSON to FILE")


def main(args: argparse.Namespace) -> int:
    names = list(dict.fromkeys(args.models or sorted(datasets.LOADERS)))
    reports = []
    for name in names:
        report = cross_validate(
            name, datasets.LOADERS[name](), args.folds, args.seed, args.iterations, args.retrain_seeds
        )
        print(format_report(report), flush=True)
        reports.append(report.to_json())
    if args.json is not None:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
