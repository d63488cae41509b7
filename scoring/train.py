"""`yunkai scoring train`: train each scoring model with CatBoost, export it to ONNX, run the
parity gate, and admit the models that pass to the registry with their model.json.

Flow per model: load data -> split (held-out test rows) -> fit -> metrics and KS cut-off ->
ONNX export -> parity gate -> registry. A model that fails the gate is not written, and the
command exits 1 naming it.
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

from scoring import datasets, metrics, parity, registry

TEST_FRACTION = 0.25
SEED_DEFAULT = 7
ITERATIONS_DEFAULT = 200
DEPTH = 6
LEARNING_RATE = 0.1
THREADS = 2
EXIT_PARITY_FAILED = 1
EXIT_BAD_ARGUMENTS = 2


@dataclass(frozen=True)
class Split:
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
    model: Any  # the fitted CatBoostClassifier, for callers that compare it with the ONNX file


def split(data: datasets.Dataset, seed: int, test_fraction: float = TEST_FRACTION) -> Split:
    """Stratified random split, so a rare positive class appears in both halves in proportion."""
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(data.labels), dtype=bool)
    for label in (0, 1):
        rows = np.flatnonzero(data.labels == label)
        rng.shuffle(rows)
        test_mask[rows[: round(len(rows) * test_fraction)]] = True
    return Split(data.features[~test_mask], data.labels[~test_mask], data.features[test_mask], data.labels[test_mask])


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
    iterations: int = ITERATIONS_DEFAULT,
    seed: int = SEED_DEFAULT,
    tolerance: float = parity.TOLERANCE_MAX_ABS_DIFF,
) -> Outcome:
    """Train, export and gate one model; write it to the registry only if the gate passes."""
    import catboost
    import onnxruntime

    parts = split(data, seed)
    model = catboost.CatBoostClassifier(
        iterations=iterations,
        depth=DEPTH,
        learning_rate=LEARNING_RATE,
        thread_count=THREADS,
        random_seed=seed,
        verbose=0,
        allow_writing_files=False,
    )
    model.fit(parts.train_x, parts.train_y)
    scores = model.predict_proba(parts.test_x)[:, 1]
    auc = metrics.auc(parts.test_y, scores)
    ks, cutoff = metrics.ks(parts.test_y, scores)

    with tempfile.TemporaryDirectory(prefix=f"yunkai-{name}-") as scratch:
        onnx_file = Path(scratch) / registry.MODEL_FILE
        model.save_model(
            str(onnx_file),
            format="onnx",
            export_parameters={
                "onnx_domain": "ai.catboost",
                "onnx_model_version": version,
                "onnx_doc_string": f"yunkai {name} v{version}: {data.target}",
                "onnx_graph_name": name,
            },
        )
        session = parity.open_session(onnx_file)
        result = parity.check_parity(scores, parity.onnx_probabilities(session, parts.test_x), cutoff, tolerance)
        metadata = {
            "schema_version": registry.SCHEMA_VERSION,
            "name": name,
            "version": version,
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "target": data.target,
            "positive_class": parity.POSITIVE_CLASS,
            "input_schema": input_schema(data, parts.train_x),
            "categorical_encoding": data.encoding,
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
            "training": {"iterations": iterations, "depth": DEPTH, "learning_rate": LEARNING_RATE, "seed": seed},
            "reference_histogram": metrics.score_histogram(scores) | {"of": "held-out CatBoost probabilities"},
            "parity": result.to_json(),
            "onnx": parity.describe_onnx(onnx_file),
            "versions": {"catboost": catboost.__version__, "onnxruntime": onnxruntime.__version__},
        }
        if not result.passed:
            return Outcome(name, False, metadata, None, result, model)
        path = registry.write_version(root, name, version, onnx_file, metadata)
    return Outcome(name, True, metadata, path, result, model)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, required=True, metavar="DIR", help="model registry folder")
    parser.add_argument(
        "--model",
        dest="models",
        action="extend",
        nargs="+",
        choices=sorted(datasets.LOADERS),
        metavar="NAME",
        help=f"model(s) to train (default: all): {', '.join(sorted(datasets.LOADERS))}",
    )
    parser.add_argument(
        "--version",
        type=positive_int,
        metavar="V",
        help="version number to write (default: one past each model's newest); an existing version is an error",
    )
    parser.add_argument(
        "--iterations", type=positive_int, default=ITERATIONS_DEFAULT, help="CatBoost boosting iterations"
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
        m, p = outcome.metadata["metrics"], outcome.parity
        print(
            f"[{name}] AUC {m['auc']:.4f}  KS {m['ks']:.4f}  cut-off {outcome.metadata['cutoff']['value']:.4f}  "
            f"parity max|diff| {p.max_abs_diff:.2e} over {p.rows_compared} rows, {p.decision_flips} flips",
            flush=True,
        )
        if outcome.admitted:
            print(f"[{name}] admitted: {outcome.path} ({time.monotonic() - started:.1f} s)", flush=True)
        else:
            print(f"[{name}] REFUSED by the parity gate: {p.reason}; not written", file=sys.stderr, flush=True)
            failed.append(name)
    if failed:
        print(f"error: parity gate refused {', '.join(failed)}", file=sys.stderr)
        return EXIT_PARITY_FAILED
    return 0
