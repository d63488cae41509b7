"""The quality gate, derived features inside the ONNX graph, and the cross-validation report:
real CatBoost models (small: tens of trees), real ONNX files, real registries on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cluster import cli
from scoring import datasets, derived, evaluate, parity, quality, recipes, registry, train

ITERATIONS = 40
FEW_ITERATIONS = 2  # two trees: a model clearly worse than one of forty


@pytest.fixture(scope="module")
def credit() -> datasets.Dataset:
    return datasets.credit_risk()


@pytest.fixture(scope="module")
def champion_registry(credit: datasets.Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    outcome = train.train_one("credit_risk", credit, root, 1, iterations=ITERATIONS)
    assert outcome.admitted and outcome.quality == quality.no_champion()
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "registry"
    shutil.copytree(root, target)
    return target


def test_gate_refuses_a_model_with_far_fewer_trees_and_writes_nothing(
    credit: datasets.Dataset, champion_registry: Path, tmp_path: Path
) -> None:
    root = _copy(champion_registry, tmp_path)
    outcome = train.train_one("credit_risk", credit, root, 2, iterations=FEW_ITERATIONS)
    assert outcome.parity.passed and outcome.quality is not None
    assert not outcome.admitted and outcome.path is None
    gate = outcome.quality
    assert gate.champion_version == 1 and gate.champion_auc is not None and gate.candidate_auc is not None
    assert gate.candidate_auc < gate.champion_auc - quality.AUC_TOLERANCE
    assert gate.rows_compared == outcome.metadata["metrics"]["test_rows"]  # same seed: the same held-out rows
    assert f"{gate.champion_auc:.4f}" in outcome.reason and f"{gate.candidate_auc:.4f}" in outcome.reason
    assert registry.list_versions(root, "credit_risk") == [1]
    assert [p.name for p in (root / "credit_risk").iterdir()] == ["1"]


def test_gate_compares_with_the_recorded_champion_not_the_newest_version(
    credit: datasets.Dataset, champion_registry: Path, tmp_path: Path
) -> None:
    # A weak version 2 that was rolled back (written past the gate here): version 1 is champion again.
    root = _copy(champion_registry, tmp_path)
    weak = tmp_path / "weak"
    assert train.train_one("credit_risk", credit, weak, 2, iterations=FEW_ITERATIONS).admitted
    (weak / "credit_risk" / "2").rename(root / "credit_risk" / "2")
    registry.write_roles(root, "credit_risk", registry.Roles(champion=1))
    outcome = train.train_one("credit_risk", credit, root, 3, iterations=FEW_ITERATIONS)
    assert outcome.quality is not None and outcome.quality.champion_version == 1
    assert not outcome.admitted, "a model as weak as the rolled-back one is refused against the champion"


def test_a_champion_trained_on_other_data_is_compared_on_all_the_candidates_held_out_rows(
    credit: datasets.Dataset, champion_registry: Path, tmp_path: Path
) -> None:
    # One training row's age changed: the same split (labels alone decide it), other training data.
    first_training_row = int(np.flatnonzero(~train.split(credit, train.SEED_DEFAULT).test_mask)[0])
    features = credit.features.copy()
    features[first_training_row, credit.feature_names.index("Age")] += 1
    changed = datasets.Dataset(credit.source, credit.target, credit.feature_names, features, credit.labels)
    root = _copy(champion_registry, tmp_path)
    outcome = train.train_one("credit_risk", changed, root, 2, iterations=ITERATIONS)
    gate = outcome.quality
    assert gate is not None and "unknown" in gate.rows
    assert gate.rows_compared == outcome.metadata["metrics"]["test_rows"]
    assert gate.champion_auc is not None and gate.passed == outcome.admitted


def test_gate_admits_an_equal_model_and_records_the_comparison(
    credit: datasets.Dataset, champion_registry: Path, tmp_path: Path
) -> None:
    root = _copy(champion_registry, tmp_path)
    outcome = train.train_one("credit_risk", credit, root, 2, iterations=ITERATIONS)
    assert outcome.admitted and outcome.path is not None
    recorded = json.loads((outcome.path / "model.json").read_text())["quality_gate"]
    assert recorded["passed"] and recorded["champion_version"] == 1
    assert recorded["candidate_auc"] == pytest.approx(recorded["champion_auc"], abs=1e-6)
    assert recorded["tolerance"] == quality.AUC_TOLERANCE


def test_gate_compares_another_split_only_on_rows_both_models_held_out(
    credit: datasets.Dataset, champion_registry: Path, tmp_path: Path
) -> None:
    root = _copy(champion_registry, tmp_path)
    outcome = train.train_one("credit_risk", credit, root, 2, iterations=ITERATIONS, seed=8)
    gate = outcome.quality
    assert gate is not None and "both" in gate.rows
    both = train.split(credit, 8).test_mask & train.split(credit, train.SEED_DEFAULT).test_mask
    assert gate.rows_compared == int(both.sum()) < outcome.metadata["metrics"]["test_rows"]


def test_decision_needs_enough_rows_of_each_class_and_honours_the_tolerance() -> None:
    labels = np.array([0, 1] * 100)
    good = labels + np.linspace(0.0, 0.5, 200)  # separates the classes perfectly
    noisy = good.copy()
    noisy[:4] = noisy[:4][::-1]  # a few mistakes: AUC 0.98
    assert quality.decide(labels, good, noisy, 1, "test", tolerance=0.03).passed
    refused = quality.decide(labels, good, noisy, 1, "test", tolerance=0.0)
    assert not refused.passed and "champion v1" in refused.reason
    too_few = quality.decide(labels[:50], good[:50], good[:50], 3, "test")
    assert not too_few.passed and "only 50 held-out rows" in too_few.reason


def test_cli_exits_1_naming_the_model_and_both_aucs_when_the_gate_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["scoring", "train", "--registry", str(tmp_path), "--model", "credit_risk", "--iterations"]
    assert cli.main([*argv, str(ITERATIONS)]) == 0
    capsys.readouterr()
    assert cli.main([*argv, str(FEW_ITERATIONS)]) == train.EXIT_REFUSED
    err = capsys.readouterr().err
    gate = "[credit_risk] REFUSED by the quality gate: candidate AUC"
    assert gate in err and "champion v1 AUC" in err and "refused credit_risk" in err
    assert registry.list_versions(tmp_path, "credit_risk") == [1]


def test_derived_features_are_computed_inside_the_onnx_graph(tmp_path: Path) -> None:
    data = datasets.marketing_response()
    outcome = train.train_one("marketing_response", data, tmp_path, 1, iterations=30)
    assert outcome.admitted and outcome.parity.passed, outcome.reason
    meta = registry.load_metadata(tmp_path, "marketing_response")
    assert [d["name"] for d in meta["derived_features"]] == ["policies_total", "contributions_total"]
    assert meta["onnx"]["nodes"] == ["Constant", "MatMul", "Concat", "TreeEnsembleClassifier", "ZipMap"]
    session = parity.open_session(registry.model_path(tmp_path, "marketing_response"))
    assert session.get_inputs()[0].shape[1] == len(data.feature_names) == 85
    rows = train.split(data, train.SEED_DEFAULT).test_x[:200]
    wide = derived.append(rows, outcome.fitted.recipe.derived, data.feature_names)
    policies = [data.feature_names.index(f"A{kind}") for kind in recipes.CARAVAN_POLICY_KINDS.split()]
    assert np.array_equal(wide[:, 85], rows[:, policies].sum(axis=1))
    assert np.allclose(parity.onnx_probabilities(session, rows), outcome.model.predict_proba(wide)[:, 1], atol=1e-5)
    # The server's graph without ZipMap still finds its tensor behind the derived columns.
    tensor_session, output = parity.open_tensor_session(registry.model_path(tmp_path, "marketing_response"))
    assert np.allclose(
        parity.tensor_probabilities(tensor_session, output, rows),
        outcome.fitted.scores(rows, data.feature_names),
        atol=1e-5,
    )


def test_a_derived_feature_of_an_unknown_column_is_refused() -> None:
    with pytest.raises(ValueError, match="no_such_column"):
        derived.weights([derived.Sum("total", ("a", "no_such_column"))], ["a", "b"])


def test_cv_report_has_per_fold_auc_and_ks_for_baseline_and_ours_on_the_same_folds(
    credit: datasets.Dataset,
) -> None:
    report = evaluate.cross_validate("credit_risk", credit, folds=3, iterations=20)
    assert len(report.baseline) == len(report.ours) == len(report.ours_trees) == 3
    for scores in (*report.baseline, *report.ours, report.held_out_baseline, report.held_out_ours):
        assert 0.6 < scores.auc <= 1.0 and 0.0 < scores.ks <= 1.0
    assert report.training_rows + report.held_out_rows == len(credit.labels)
    text = evaluate.format_report(report)
    assert text.count("\n") >= 6 and "CV AUC  baseline" in text and "held-out AUC" in text
    for fold, (base, ours) in enumerate(zip(report.baseline, report.ours, strict=True)):
        assert f"{fold:>6}  {base.auc:>12.4f}  {ours.auc:>9.4f}" in text


def test_folds_are_stratified_and_a_class_too_small_for_them_is_refused() -> None:
    labels = np.array([1] * 30 + [0] * 270)
    ids = evaluate.fold_ids(labels, 5, seed=1)
    for fold in range(5):
        assert int(labels[ids == fold].sum()) == 6 and int((ids == fold).sum()) == 60
    with pytest.raises(ValueError, match="3 folds"):
        evaluate.fold_ids(np.array([1, 1, 0, 0, 0]), 3, seed=1)


def test_cli_evaluate_prints_the_comparison(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "cv.json"
    argv = ["scoring", "evaluate", "--model", "credit_risk", "--folds", "2", "--iterations", "10"]
    assert cli.main([*argv, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "credit_risk" in out and "CV AUC  baseline" in out and "held-out AUC  baseline" in out
    assert len(json.loads(out_json.read_text())[0]["ours"]) == 2


def test_cli_evaluate_refuses_a_single_fold(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["scoring", "evaluate", "--folds", "1"])
    assert exit_info.value.code == 2 and "between 2 and 20" in capsys.readouterr().err
