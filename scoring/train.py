"""`yunkai scoring train`: train each scoring model with CatBoost by its recipe, export it to
ONNX, run the parity, reasons and quality gates, and admit the models that pass to the registry with
their model.json.

Flow per model: load data -> split (held-out test rows) -> fit (scoring/recipes.py: early
stopping on a validation split of the training rows, refit) -> metrics and KS cut-off -> ONNX
export (with the recipe's derived features inside the graph) -> parity gate (ONNX vs CatBoost)
-> reasons gate (the SHAP tables of scoring/explain.py vs CatBoost's own SHAP values on the
held-out rows) -> quality gate (scoring/quality.py: no worse than the champion on the same
held-out rows) -> registry (the ONNX graph, model.json, the CatBoost model and its SHAP
tables). A model that fails a gate is not written, and the command exits 1 naming it; the other
models of the run are still trained and gated on their own.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scoring import datasets, derived, explain, metrics, parity, quality, reasons, recipes, registry

TEST_FRACTION = 0.25
SEED_DEFAULT = 7
EXIT_REFUSED = 1  # a gate (parity or quality) refused a model
EXIT_BAD_ARGUMENTS = 2


@dataclass(frozen=True)
class Split:
    test_mask: npt.NDArray[np.bool_]  # over the dataset's rows
    train_x: npt.NDArray[np.float32]
    train_y: npt.NDArray[np.int64]
    test_x: npt.NDArray[np.float32]
    test_y: npt.NDArray[np.int64]


@dataclass(frozen=True)
class Outcome:
    name: str
    admitted: bool
    metadata: dict[str, Any]
    path: Path | None
    parity: parity.ParityResult
    quality: quality.QualityResult | None  # None when the parity or the reasons gate already refused the model
    model: Any  # the fitted CatBoostClassifier, for callers that compare it with the ONNX file
    fitted: recipes.Fitted
    explanation: explain.Check | None = None  # None when the parity gate already refused the model

    @property
    def reason(self) -> str:
        """Why the model was refused, or "ok"."""
        if not self.parity.passed:
            return f"parity gate: {self.parity.reason}"
        if self.explanation is not None and not self.explanation.passed:
            return f"reasons gate: {self.explanation.reason}"
        if self.quality is not None and not self.quality.passed:
            return f"quality gate: {self.quality.reason}"
        return "ok"


def split(data: datasets.Dataset, seed: int, test_fraction: float = TEST_FRACTION) -> Split:
    """Stratified random split, so a rare positive class appears in both halves in proportion."""
    test_mask = recipes.stratified_mask(data.labels, test_fraction, seed)
    return Split(
        test_mask, data.features[~test_mask], data.labels[~test_mask], data.features[test_mask], data.labels[test_mask]
    )


def fingerprint(features: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], source: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return {
        "sha256": digest.hexdigest(),
        "hashed": "float32 training matrix (C order) bytes, then int64 label bytes",
        "rows": len(labels),
        "source": source,
    }


def input_schema(data: datasets.Dataset, train_x: npt.NDArray[np.float32]) -> dict[str, Any]:
    return {
        "input_name": "features",
        "dtype": "float32",
        "shape": [-1, len(data.feature_names)],
        "features": [
            {"name": name, "index": i, "min": float(train_x[:, i].min()), "max": float(train_x[:, i].max())}
            for i, name in enumerate(data.feature_names)
        ],
        "missing_value_policy": "reject: NaN and infinities are invalid input; encode unknown categories as their "
        "'unknown' code. Missing values in the training source were replaced by the medians in `imputed`.",
        "imputed": data.imputed,
        "range_policy": "min/max are the training data's range: values outside are allowed but worth flagging",
    }


def train_one(
    name: str,
    data: datasets.Dataset,
    root: Path,
    version: int,
    iterations: int | None = None,
    seed: int = SEED_DEFAULT,
    tolerance: float = parity.TOLERANCE_MAX_ABS_DIFF,
    auc_tolerance: float = quality.AUC_TOLERANCE,
) -> Outcome:
    """Train, export and gate one model; write it to the registry only if both gates pass.
    `iterations` caps the recipe's tree budget (early stopping may choose fewer)."""
    import catboost
    import onnxruntime

    recipe = recipes.recipe_for(name, iterations)
    parts = split(data, seed)
    fitted = recipes.fit(recipe, parts.train_x, parts.train_y, data.feature_names, seed)
    scores = fitted.scores(parts.test_x, data.feature_names)
    auc = metrics.auc(parts.test_y, scores)
    ks, cutoff = metrics.ks(parts.test_y, scores)

    with tempfile.TemporaryDirectory(prefix=f"yunkai-{name}-") as scratch:
        onnx_file = Path(scratch) / registry.MODEL_FILE
        export_onnx(fitted, data, name, version, onnx_file)
        session = parity.open_session(onnx_file)
        result = parity.check_parity(scores, parity.onnx_probabilities(session, parts.test_x), cutoff, tolerance)
        explainer, explained = explain_model(fitted, data, parts) if result.passed else (None, None)
        gate = None
        if explained is not None and explained.passed:
            gate = quality_gate(name, data, root, parts, session, auc_tolerance)
        metadata = {
            "schema_version": registry.SCHEMA_VERSION,
            "name": name,
            "version": version,
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "target": data.target,
            "positive_class": parity.POSITIVE_CLASS,
            "input_schema": input_schema(data, parts.train_x),
            "categorical_encoding": data.encoding,
            "derived_features": [feature.to_json() for feature in recipe.derived],
            "metrics": {
                "auc": auc,
                "ks": ks,
                "test_rows": len(parts.test_y),
                "test_positive_rate": float(parts.test_y.mean()),
            },
            "cutoff": {
                "value": cutoff,
                "rule": "decline (or flag) when p >= value; approve below",
                "chosen_by": "KS-optimal threshold on held-out scores, placed midway between two adjacent scores",
            },
            "training_data": fingerprint(parts.train_x, parts.train_y, data.source)
            | {"test_fraction": TEST_FRACTION, "split_seed": seed},
            "training": recipe.to_json()
            | {"trees": fitted.trees, "member_trees": list(fitted.member_trees), "seed": seed},
            "reference_histogram": metrics.score_histogram(scores) | {"of": "held-out CatBoost probabilities"},
            "drift_reference": metrics.drift_reference(
                data.feature_names, parts.train_x, parity.onnx_probabilities(session, parts.test_x)
            ),
            "parity": result.to_json(),
            "quality_gate": None if gate is None else gate.to_json(),
            "reasons": None
            if explainer is None or explained is None
            else reasons.describe(name, explainer, explained, derived.names(recipe.derived, data.feature_names)),
            "onnx": parity.describe_onnx(onnx_file),
            "versions": {"catboost": catboost.__version__, "onnxruntime": onnxruntime.__version__},
        }
        if gate is None or not gate.passed:
            return Outcome(name, False, metadata, None, result, gate, fitted.model, fitted, explained)
        assert explainer is not None
        extras = [Path(scratch) / registry.CATBOOST_FILE, Path(scratch) / registry.SHAP_FILE]
        fitted.model.save_model(str(extras[0]))
        explainer.save(extras[1])
        path = registry.write_version(root, name, version, onnx_file, metadata, extras)
    return Outcome(name, True, metadata, path, result, gate, fitted.model, fitted, explained)


def explain_model(
    fitted: recipes.Fitted, data: datasets.Dataset, parts: Split
) -> tuple[explain.Explainer, explain.Check]:
    """The model's SHAP tables, checked against CatBoost's own SHAP values on the held-out rows."""
    matrix = derived.append(parts.test_x, fitted.recipe.derived, data.feature_names)
    explainer = explain.from_catboost(fitted.model, matrix.shape[1])
    return explainer, explain.check(explainer, fitted.model, matrix)


def export_onnx(fitted: recipes.Fitted, data: datasets.Dataset, name: str, version: int, target: Path) -> None:
    """CatBoost's ONNX export, with the recipe's derived features computed inside the graph."""
    import onnx

    catboost_file = target.with_name("catboost.onnx")
    fitted.model.save_model(
        str(catboost_file),
        format="onnx",
        export_parameters={
            "onnx_domain": "ai.catboost",
            "onnx_model_version": version,
            "onnx_doc_string": f"yunkai {name} v{version}: {data.target}",
            "onnx_graph_name": name,
        },
    )
    if not fitted.recipe.derived:
        catboost_file.rename(target)
        return
    graph = derived.prepend_to_onnx(onnx.load(str(catboost_file)), fitted.recipe.derived, data.feature_names)
    onnx.save(graph, str(target))
    catboost_file.unlink()


def quality_gate(
    name: str, data: datasets.Dataset, root: Path, parts: Split, candidate: Any, tolerance: float
) -> quality.QualityResult:
    """Compare the candidate (its ONNX session) with the champion on held-out rows neither trained on."""
    versions = registry.list_versions(root, name)
    if not versions:
        return quality.no_champion()
    roles = registry.read_roles(root, name)  # after a rollback the champion is not the newest version
    champion = roles.champion if roles else versions[-1]
    metadata = registry.load_metadata(root, name, champion)
    if quality.champion_input_names(metadata) != data.feature_names:
        return quality.QualityResult(
            False, champion, None, None, tolerance, 0, "none",
            f"champion v{champion} takes other input features than the candidate; they cannot be compared",
        )  # fmt: skip
    rows_mask = parts.test_mask
    rows = "the candidate's held-out rows (the champion was trained on other data: its training rows are unknown)"
    trained = metadata["training_data"]
    if trained["source"] == data.source:
        theirs = split(data, int(trained["split_seed"]), float(trained["test_fraction"]))
        if fingerprint(theirs.train_x, theirs.train_y, data.source)["sha256"] == trained["sha256"]:
            rows_mask = parts.test_mask & theirs.test_mask
            rows = "rows held out by both the candidate and the champion (same data)"
    x, y = data.features[rows_mask], data.labels[rows_mask]
    return quality.decide(
        y,
        quality.champion_scores(root, name, champion, x),
        parity.onnx_probabilities(candidate, x),
        champion,
        rows,
        tolerance,
    )


def _trees(fitted: recipes.Fitted) -> str:
    if len(fitted.member_trees) < 2:
        return str(fitted.trees)
    return f"{fitted.trees} ({len(fitted.member_trees)} seeds averaged: {'+'.join(map(str, fitted.member_trees))})"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def add_model_argument(parser: argparse.ArgumentParser, verb: str) -> None:
    """--model NAME...: which models to `verb` (default: all)."""
    parser.add_argument(
        "--model",
        dest="models",
        action="extend",
        nargs="+",
        choices=sorted(datasets.LOADERS),
        metavar="NAME",
        help=f"model(s) to {verb} (default: all): {', '.join(sorted(datasets.LOADERS))}",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, required=True, metavar="DIR", help="model registry folder")
    add_model_argument(parser, "train")
    parser.add_argument(
        "--version",
        type=positive_int,
        metavar="V",
        help="version number to write (default: one past each model's newest); an existing version is an error",
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        metavar="N",
        help="cap each model's trees at N (default: its recipe's budget; early stopping may choose fewer)",
    )
    parser.add_argument("--seed", type=int, default=SEED_DEFAULT, help="seed of the split and of CatBoost")


def main(args: argparse.Namespace) -> int:
    root: Path = args.registry
    if root.exists() and not root.is_dir():
        print(f"error: --registry {root} exists and is not a directory", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    names = list(dict.fromkeys(args.models or sorted(datasets.LOADERS)))
    for name in names:
        if args.version is not None and args.version in registry.list_versions(root, name):
            print(f"error: {name} version {args.version} already exists in {root}", file=sys.stderr)
            return EXIT_BAD_ARGUMENTS
    failed = []
    for name in names:
        started = time.monotonic()
        print(f"[{name}] loading data", flush=True)
        data = datasets.LOADERS[name]()
        print(
            f"[{name}] {data.source}: {len(data.labels)} rows, {len(data.feature_names)} features, "
            f"positive rate {data.labels.mean():.3f}; training",
            flush=True,
        )
        version = args.version if args.version is not None else registry.next_version(root, name)
        outcome = train_one(name, data, root, version, args.iterations, args.seed)
        m, p, q = outcome.metadata["metrics"], outcome.parity, outcome.quality
        print(
            f"[{name}] AUC {m['auc']:.4f}  KS {m['ks']:.4f}  cut-off {outcome.metadata['cutoff']['value']:.4f}  "
            f"trees {_trees(outcome.fitted)}  "
            f"parity max|diff| {p.max_abs_diff:.2e} over {p.rows_compared} rows, {p.decision_flips} flips",
            flush=True,
        )
        if outcome.explanation is not None:
            e = outcome.explanation
            print(
                f"[{name}] reasons: SHAP tables vs CatBoost max|diff| {e.max_abs_diff:.2e}, "
                f"sum vs raw margin {e.max_sum_error:.2e} over {e.rows_compared} rows",
                flush=True,
            )
        if q is not None and q.champion_auc is not None and q.candidate_auc is not None:
            print(
                f"[{name}] quality gate: candidate AUC {q.candidate_auc:.4f}, champion v{q.champion_version} "
                f"AUC {q.champion_auc:.4f} on {q.rows_compared} {q.rows}; tolerance {q.tolerance:g}",
                flush=True,
            )
        if outcome.admitted:
            print(f"[{name}] admitted: {outcome.path} ({time.monotonic() - started:.1f} s)", flush=True)
        else:
            print(f"[{name}] REFUSED by the {outcome.reason}; not written", file=sys.stderr, flush=True)
            failed.append(name)
    if failed:
        print(f"error: refused {', '.join(failed)} (see above); nothing written for them", file=sys.stderr)
        return EXIT_REFUSED
    return 0
