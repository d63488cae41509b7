"""Derived features that live inside the exported model: each is the sum of a group of raw
features, appended after them, and the ONNX graph computes it itself (MatMul by a 0/1 matrix,
Concat), so callers keep sending only the raw features that model.json's input schema names.

Sums of the small integer codes these groups hold are exact in float32, so the graph's
derived columns equal the ones CatBoost trained on, and the parity gate checks the whole path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

RAW_INPUT = "features"  # the input callers send, as CatBoost names it
TREES_INPUT = "features_with_derived"  # what the tree ensemble reads once derived columns are appended
ONNX_OPSET = 8  # the default-domain opset MatMul and Concat are taken from; CatBoost's IR version 3 allows it


@dataclass(frozen=True)
class Sum:
    """A derived feature: the sum of the raw features named in `of`."""

    name: str
    of: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sum_of": list(self.of)}


def weights(derived: Sequence[Sum], raw_names: Sequence[str]) -> npt.NDArray[np.float32]:
    """The [raw, derived] 0/1 matrix whose product with a row gives its derived features."""
    index = {name: i for i, name in enumerate(raw_names)}
    matrix = np.zeros((len(raw_names), len(derived)), dtype=np.float32)
    for column, feature in enumerate(derived):
        missing = [name for name in feature.of if name not in index]
        if missing or not feature.of:
            raise ValueError(f"derived feature {feature.name!r} sums unknown or no raw features: {missing}")
        for name in feature.of:
            matrix[index[name], column] = 1.0
    return matrix


def append(
    features: npt.NDArray[np.float32], derived: Sequence[Sum], raw_names: Sequence[str]
) -> npt.NDArray[np.float32]:
    """Raw features with the derived columns appended: what CatBoost trains and predicts on."""
    assert features.ndim == 2 and features.shape[1] == len(raw_names), features.shape
    if not derived:
        return features
    extra = features.astype(np.float32) @ weights(derived, raw_names)
    return np.ascontiguousarray(np.hstack([features, extra]), dtype=np.float32)


def names(derived: Sequence[Sum], raw_names: Sequence[str]) -> list[str]:
    return [*raw_names, *(feature.name for feature in derived)]


def prepend_to_onnx(model: Any, derived: Sequence[Sum], raw_names: Sequence[str]) -> Any:
    """A copy of CatBoost's ONNX model whose input is the raw features only: the graph appends
    the derived columns itself before the tree ensemble reads them."""
    import onnx
    from onnx import helper, numpy_helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    if not derived:
        return result
    graph = result.graph
    (source,) = [i for i in graph.input if i.name == RAW_INPUT]
    assert source.type.tensor_type.shape.dim[1].dim_value == len(raw_names) + len(derived), "trees' width"
    for node in graph.node:
        node.input[:] = [TREES_INPUT if name == RAW_INPUT else name for name in node.input]
    # A Constant node, not an initializer: IR version 3 would also want initializers listed as inputs.
    matrix = numpy_helper.from_array(weights(derived, raw_names), "derived_weights")
    prologue = [
        helper.make_node("Constant", [], ["derived_weights"], name="derived_weights", value=matrix),
        helper.make_node("MatMul", [RAW_INPUT, "derived_weights"], ["derived_columns"], name="derived_sums"),
        helper.make_node("Concat", [RAW_INPUT, "derived_columns"], [TREES_INPUT], name="derived_append", axis=1),
    ]
    nodes = [*prologue, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    source.type.tensor_type.shape.dim[1].dim_value = len(raw_names)
    if not any(op.domain in ("", "ai.onnx") for op in result.opset_import):
        result.opset_import.append(helper.make_opsetid("", ONNX_OPSET))
    onnx.checker.check_model(result)
    return result
