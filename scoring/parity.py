"""The ONNX parity gate: run an exported model in onnxruntime and decide whether its
probabilities match CatBoost's closely enough to be admitted to the registry.

`check_parity` is a pure decision over two probability arrays; the onnxruntime calls are a thin
shell around it. CatBoost's ONNX graph is TreeEnsembleClassifier -> ZipMap: input `features`
float32 [N, F]; outputs `label` int64 [N] and `probabilities`, a sequence of {class: probability}
maps (seq(map(int64, tensor(float)))). `describe_onnx` records what a given file actually has.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

TOLERANCE_MAX_ABS_DIFF = 1e-5
POSITIVE_CLASS = 1


@dataclass(frozen=True)
class ParityResult:
    passed: bool
    max_abs_diff: float
    rows_compared: int
    decision_flips: int  # rows where `p >= cutoff` differs between the two runtimes
    tolerance: float
    cutoff: float
    reason: str  # why it failed, or "ok"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(
    reference: npt.ArrayLike,
    candidate: npt.ArrayLike,
    cutoff: float,
    tolerance: float = TOLERANCE_MAX_ABS_DIFF,
) -> ParityResult:
    """Admit the candidate only if every probability is within `tolerance` of the reference
    and no row's decline decision (`p >= cutoff`) differs."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    cand = np.asarray(candidate, dtype=np.float64).ravel()
    assert ref.shape == cand.shape and len(ref) > 0, f"cannot compare {ref.shape} with {cand.shape}"
    if not np.all(np.isfinite(cand)):
        return ParityResult(False, float("inf"), len(ref), -1, tolerance, cutoff, "candidate has non-finite scores")
    max_abs_diff = float(np.max(np.abs(ref - cand)))
    flips = int(np.count_nonzero((ref >= cutoff) != (cand >= cutoff)))
    reasons = []
    if max_abs_diff > tolerance:
        reasons.append(f"max abs diff {max_abs_diff:.3g} > tolerance {tolerance:.3g}")
    if flips:
        reasons.append(f"{flips} decision(s) flip at cut-off {cutoff:.6g}")
    return ParityResult(not reasons, max_abs_diff, len(ref), flips, tolerance, cutoff, "; ".join(reasons) or "ok")


def open_session(path: Path) -> Any:
    """An onnxruntime session with one intra-op thread, as the server will run it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_probabilities(session: Any, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Positive-class probabilities from a CatBoost ONNX session (unpacks the ZipMap output)."""
    input_name = session.get_inputs()[0].name
    outputs = session.run(["probabilities"], {input_name: np.ascontiguousarray(features, dtype=np.float32)})
    maps = outputs[0]
    assert len(maps) == len(features)
    return np.fromiter((row[POSITIVE_CLASS] for row in maps), dtype=np.float64, count=len(maps))


def open_tensor_session(path: Path) -> tuple[Any, str]:
    """A session of the model without its ZipMap node, and the name of its output: the
    plain [N, 2] probability tensor the ZipMap consumed. Served instead of the ZipMap
    because it is 7-10% faster in onnxruntime with identical values
    (`python -m loadtest.onnx_outputs MODEL.onnx`, docs/benchmarks.md)."""
    import onnx
    import onnxruntime as ort

    stripped, output = without_zipmap(onnx.load(str(path)))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(stripped.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, output


def without_zipmap(model: Any) -> tuple[Any, str]:
    """A copy of an ONNX model whose output is the tensor its ZipMap node consumed."""
    import onnx

    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    zipmap = next(n for n in stripped.graph.node if n.op_type == "ZipMap")
    tensor = zipmap.input[0]
    stripped.graph.node.remove(zipmap)
    for output in [o for o in stripped.graph.output if o.name in zipmap.output]:
        stripped.graph.output.remove(output)
    stripped.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    return stripped, tensor


def tensor_probabilities(session: Any, output: str, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Positive-class probabilities from a session made by open_tensor_session."""
    input_name = session.get_inputs()[0].name
    probabilities = session.run([output], {input_name: np.ascontiguousarray(features, dtype=np.float32)})[0]
    assert probabilities.shape == (len(features), 2), probabilities.shape
    return np.ascontiguousarray(probabilities[:, POSITIVE_CLASS], dtype=np.float32)


def describe_onnx(path: Path) -> dict[str, Any]:
    """What the graph takes and emits, from the file itself (for model.json)."""
    import onnx

    model = onnx.load(str(path))
    session = open_session(path)
    return {
        "inputs": [{"name": i.name, "type": i.type, "shape": [str(d) for d in i.shape]} for i in session.get_inputs()],
        "outputs": [
            {"name": o.name, "type": o.type, "shape": [str(d) for d in o.shape]} for o in session.get_outputs()
        ],
        "nodes": [node.op_type for node in model.graph.node],
        "opsets": {(op.domain or "ai.onnx"): op.version for op in model.opset_import},
        "ir_version": model.ir_version,
        "probability_output": "probabilities: seq(map(int64 class -> float)); class 1 is the positive class",
    }
