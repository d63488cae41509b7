"""Is CatBoost's ZipMap output slower to serve than the plain probability tensor under it?

`python -m loadtest.onnx_outputs MODEL.onnx`: builds a copy of the graph without the
ZipMap node (its input, `probability_tensor`, becomes the output), checks that both give
identical probabilities, and times onnxruntime (one intra-op thread, as the server runs)
for 1-row and 4,096-row calls, including turning each output into an array of
positive-class probabilities, which is what the server does with it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort

from scoring.parity import without_zipmap


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _per_call_s(call: Callable[[], object], calls: int) -> float:
    for _ in range(max(1, calls // 10)):
        call()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls


def main(path: str) -> None:
    model = onnx.load(path)
    stripped, tensor = without_zipmap(model)
    zipped, plain = _session(model), _session(stripped)
    width = zipped.get_inputs()[0].shape[1]
    rng = np.random.default_rng(1)
    for rows, calls in ((1, 5000), (4096, 100)):
        x = rng.random((rows, width), dtype=np.float32)

        def from_zipmap(x: np.ndarray = x) -> np.ndarray:
            maps = zipped.run(["probabilities"], {"features": x})[0]
            return np.fromiter((m[1] for m in maps), np.float64, count=len(maps))

        def from_tensor(x: np.ndarray = x) -> np.ndarray:
            return np.asarray(plain.run([tensor], {"features": x})[0][:, 1], dtype=np.float64)

        assert np.array_equal(from_zipmap(), from_tensor()), "the two outputs differ"
        for name, call in (("zipmap", from_zipmap), ("tensor", from_tensor)):
            per = _per_call_s(call, calls)
            print(f"{rows:5d} rows  {name}: {per * 1e6:9.1f} µs per call, {rows / per:12,.0f} rows/s")


if __name__ == "__main__":
    main(sys.argv[1])
