"""What do the reasons behind a score cost to compute: CatBoost's own SHAP values, or the
per-leaf tables the scoring server serves them from (scoring/explain.py)?

`python -m loadtest.reasons_cost REGISTRY [--model credit_risk] [--version N]` reads a version
the registry keeps with its CatBoost model (model.cbm) and SHAP tables (shap.npz), takes the
model's held-out rows (the split model.json records), checks both give the same SHAP values,
and times, on one thread: CatBoost's `get_feature_importance(type="ShapValues")` for one row
a call and for 1,024 rows in a call; the tables' top 10 reasons for one row (what a Score
call with reasons_max=10 adds); the tables for 1,024 rows; and the served ONNX graph for one
row, for scale. Medians over many calls.

Then, over gRPC: it starts `yunkai scoring serve` on the registry (mutual TLS from
YUNKAI_TLS_DIR, as every benchmark) and makes `--calls` one-row ModelInfer calls one after
another, alternating without reasons and with reasons_max=10 on the same rows, so both kinds
see the same machine; it prints the p50 and p99 of each and the p50 difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hdrh.histogram import HdrHistogram

from cluster.local import ScoringProcess
from proto import inference_pb2 as pb, inference_pb2_grpc
from scoring import datasets, derived, parity, reasons, registry, train
from serving.transport import sync_role_channel

ROWS_BATCH = 1_024
CALLS_DEFAULT = 2_000


def _median_s(call: Callable[[], object], calls: int) -> float:
    call()  # warm up
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str]) -> int:
    import catboost

    parser = argparse.ArgumentParser(prog="python -m loadtest.reasons_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("registry", type=Path)
    parser.add_argument("--model", default="credit_risk", choices=sorted(datasets.LOADERS))
    parser.add_argument("--version", type=int, help="default: the newest")
    parser.add_argument("--calls", type=int, default=CALLS_DEFAULT, help=f"gRPC calls of each kind ({CALLS_DEFAULT})")
    args = parser.parse_args(argv)
    folder = registry.version_dir(args.registry, args.model, args.version)
    metadata = registry.load_metadata(args.registry, args.model, int(folder.name))
    served = reasons.load(folder, metadata)
    if served is None:
        print(f"error: {folder} was trained without reasons", file=sys.stderr)
        return 1
    model = catboost.CatBoostClassifier()
    model.load_model(str(folder / registry.CATBOOST_FILE))
    data = datasets.LOADERS[args.model]()
    trained = metadata["training_data"]
    rows = train.split(data, int(trained["split_seed"]), float(trained["test_fraction"])).test_x[:ROWS_BATCH]
    matrix = derived.append(rows, served.derived, served.raw_names)

    def catboost_shap(block: np.ndarray) -> np.ndarray:
        pool = catboost.Pool(block)
        return np.asarray(model.get_feature_importance(pool, type="ShapValues", thread_count=1))

    difference = np.max(np.abs(catboost_shap(matrix)[:, :-1] - served.explainer.contributions(matrix)))
    session, output = parity.open_tensor_session(folder / registry.MODEL_FILE)
    trees, width = served.explainer.split_feature.shape[0], len(served.feature_names)
    print(f"{args.model} v{folder.name}: {trees} trees, {width} features, {len(rows)} held-out rows")
    print(f"max |tables - CatBoost| over those rows: {difference:.2e} (log-odds)")
    one = rows[:1]
    for name, call, calls, count in (
        ("CatBoost ShapValues, 1 row a call", lambda: catboost_shap(matrix[:1]), 200, 1),
        (f"CatBoost ShapValues, {len(rows)} rows a call", lambda: catboost_shap(matrix), 5, len(rows)),
        ("tables, top 10 reasons of 1 row", lambda: served.top(one, 10), 2000, 1),
        (f"tables, SHAP of {len(rows)} rows a call", lambda: served.explainer.contributions(matrix), 20, len(rows)),
        ("ONNX score of 1 row (the served graph)", lambda: parity.tensor_probabilities(session, output, one), 2000, 1),
    ):
        per_call_s = _median_s(call, calls)
        print(f"  {name:44s} {per_call_s * 1e3:9.3f} ms a call, {per_call_s / count * 1e6:9.1f} µs a row")
    server = ScoringProcess(str(args.registry), ["--log-level", "WARNING"]).start()
    try:
        _calls(server.address, args.model, int(folder.name), rows[:64], args.calls)
    finally:
        server.stop()
    return 0


def _calls(address: str, model: str, version: int, rows: np.ndarray, calls: int) -> None:
    """One-row ModelInfer calls in turn, without and with reasons; p50/p99 of each."""
    with sync_role_channel(address, "operator") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        latency_us = {asked: HdrHistogram(1, 60_000_000, 3) for asked in (0, 10)}
        for index in range(calls * 2 + 100):
            asked = 10 * (index % 2)
            row = rows[(index // 2) % len(rows)][None, :]
            tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, row.shape[1]])
            request = pb.ModelInferRequest(
                model_name=model,
                model_version=str(version),
                inputs=[tensor],
                raw_input_contents=[row.astype("<f4").tobytes()],
                reasons_max=asked,
            )
            started = time.perf_counter()
            reply = stub.ModelInfer(request, timeout=10)
            elapsed_us = (time.perf_counter() - started) * 1e6
            assert len(reply.reasons) == (1 if asked else 0)
            if index >= 100:  # the first calls warm up the channel and the server
                latency_us[asked].record_value(max(1, int(elapsed_us)))
    p50 = {asked: histogram.get_value_at_percentile(50) / 1000 for asked, histogram in latency_us.items()}
    for asked, histogram in latency_us.items():
        p99 = histogram.get_value_at_percentile(99) / 1000
        print(f"  gRPC one-row ModelInfer, reasons_max={asked:<2d}     p50 {p50[asked]:.3f} ms, p99 {p99:.3f} ms")
    print(f"  reasons add {(p50[10] - p50[0]) * 1000:.0f} µs to a call's p50 ({calls} calls of each, in turn)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
