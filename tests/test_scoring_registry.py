"""The on-disk registry and the metric functions its model.json records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scoring import metrics, registry


def _metadata(name: str, version: int) -> dict[str, object]:
    return {"schema_version": registry.SCHEMA_VERSION, "name": name, "version": version}


def test_versions_are_written_whole_listed_in_order_and_never_overwritten(tmp_path: Path) -> None:
    onnx_file = tmp_path / "source.onnx"
    onnx_file.write_bytes(b"not really onnx")
    root = tmp_path / "models"
    for version in (1, 2, 10):
        registry.write_version(root, "credit_risk", version, onnx_file, _metadata("credit_risk", version))
    # A staging folder left by a crashed writer is not a version.
    (root / "credit_risk" / ".11.abc.tmp").mkdir()
    assert registry.list_models(root) == ["credit_risk"]
    assert registry.list_versions(root, "credit_risk") == [1, 2, 10]
    assert registry.next_version(root, "credit_risk") == 11
    assert registry.load_metadata(root, "credit_risk")["version"] == 10
    assert registry.load_metadata(root, "credit_risk", 2)["version"] == 2
    assert registry.model_path(root, "credit_risk", 1).read_bytes() == b"not really onnx"
    with pytest.raises(registry.RegistryError, match="already exists"):
        registry.write_version(root, "credit_risk", 2, onnx_file, _metadata("credit_risk", 2))
    assert json.loads((root / "credit_risk" / "2" / "model.json").read_text())["version"] == 2
    with pytest.raises(registry.RegistryError, match="no version 3"):
        registry.load_metadata(root, "credit_risk", 3)
    with pytest.raises(registry.RegistryError, match="no versions"):
        registry.load_metadata(root, "early_warning")
    with pytest.raises(registry.RegistryError, match="must match"):
        registry.list_versions(root, "../etc")


def test_auc_matches_pairwise_counting_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # rounding makes ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert metrics.auc(y, s) == pytest.approx(pairwise)


def test_ks_of_separated_classes_is_one_with_a_cutoff_between_them() -> None:
    ks, cutoff = metrics.ks([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert ks == 1.0 and 0.2 < cutoff < 0.8
    assert metrics.ks([0, 1, 0, 1], [0.1, 0.1, 0.2, 0.2])[0] == 0.0
