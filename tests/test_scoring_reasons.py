"""The reasons behind a score (scoring/explain.py, scoring/reasons.py): a real `yunkai scoring
serve` process on loopback over a freshly trained credit_risk registry, checked against
CatBoost's own SHAP values and raw margins from the CatBoost model the registry keeps."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import catboost
import grpc
import numpy as np
import pytest

from cluster.local import ScoringProcess
from proto import inference_pb2 as pb, inference_pb2_grpc
from scoring import datasets, explain, reasons, registry, train
from tests.conftest import channel

MODEL = "credit_risk"
ROWS = 64


@pytest.fixture(scope="module")
def data() -> datasets.Dataset:
    return datasets.credit_risk()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, data: datasets.Dataset) -> Path:
    """Version 1 trained with reasons; version 2 the same model as a version trained before
    reasons existed would be stored (no SHAP tables, no CatBoost model, no `reasons` section)."""
    folder = tmp_path_factory.mktemp("reasons") / "models"
    assert train.train_one(MODEL, data, folder, 1, iterations=200).admitted
    old = folder / MODEL / "2"
    shutil.copytree(folder / MODEL / "1", old)
    (old / registry.SHAP_FILE).unlink()
    (old / registry.CATBOOST_FILE).unlink()
    metadata = json.loads((old / registry.METADATA_FILE).read_text())
    del metadata["reasons"]
    (old / registry.METADATA_FILE).write_text(json.dumps(metadata | {"version": 2}))
    return folder


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ScoringProcess]:
    process = ScoringProcess(str(root), ["--log-level", "WARNING"]).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def stub(server: ScoringProcess) -> inference_pb2_grpc.GRPCInferenceServiceStub:
    return inference_pb2_grpc.GRPCInferenceServiceStub(channel(server.address, "operator"))


@pytest.fixture(scope="module")
def held_out(data: datasets.Dataset) -> np.ndarray:
    return train.split(data, train.SEED_DEFAULT).test_x[:ROWS]


def infer(
    stub: inference_pb2_grpc.GRPCInferenceServiceStub, rows: np.ndarray, version: str, reasons_max: int = 0
) -> pb.ModelInferResponse:
    tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=list(rows.shape))
    request = pb.ModelInferRequest(
        model_name=MODEL,
        model_version=version,
        inputs=[tensor],
        raw_input_contents=[rows.astype("<f4").tobytes()],
        reasons_max=reasons_max,
    )
    reply: pb.ModelInferResponse = stub.ModelInfer(request, timeout=10)
    return reply


def served_scores(reply: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(reply.raw_output_contents[0], dtype="<f4").astype(np.float64)


def refusal(stub: inference_pb2_grpc.GRPCInferenceServiceStub, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        infer(stub, *args)  # type: ignore[arg-type]
    return caught.value


def test_reasons_are_catboosts_shap_values_and_add_up_to_the_served_score(
    stub: inference_pb2_grpc.GRPCInferenceServiceStub, root: Path, data: datasets.Dataset, held_out: np.ndarray
) -> None:
    reply = infer(stub, held_out, "1", reasons.REASONS_MAX)
    served = served_scores(reply)
    model = catboost.CatBoostClassifier()
    model.load_model(str(registry.version_dir(root, MODEL, 1) / registry.CATBOOST_FILE))
    shap = model.get_feature_importance(catboost.Pool(held_out), type="ShapValues")
    raw = model.predict(held_out, prediction_type="RawFormulaVal")
    width = len(data.feature_names)
    # CatBoost's SHAP values are exact for its trees, and the ONNX graph served scores as CatBoost does.
    assert np.allclose(shap.sum(axis=1), raw, rtol=0, atol=1e-9)
    assert np.allclose(1 / (1 + np.exp(-raw)), served, rtol=0, atol=1e-5)
    phrases = json.loads(reasons.PHRASES_FILE.read_text())[MODEL]
    names = {f: {code: name for name, code in e["codes"].items()} for f, e in data.encoding.items()}
    assert len(reply.reasons) == ROWS
    for row, values, contributions, margin, score, why in zip(
        held_out, shap[:, :width], shap, raw, served, reply.reasons, strict=True
    ):
        # This applicant's own top contributions, largest |SHAP| first: not a global ranking.
        ranked = sorted(range(width), key=lambda j: (-abs(values[j]), j))[: reasons.REASONS_MAX]
        assert [r.feature for r in why.reasons] == [data.feature_names[j] for j in ranked if values[j] != 0]
        for reason, j in zip(why.reasons, ranked, strict=False):
            assert abs(reason.contribution - values[j]) <= 1e-9
            assert reason.HasField("value") and reason.value == row[j]
            up = reason.contribution > 0
            assert reason.direction == (pb.RAISES_SCORE if up else pb.LOWERS_SCORE)
            category = names.get(reason.feature, {}).get(int(row[j]), "unknown")
            phrase = phrases[reason.feature]["raises" if up else "lowers"].replace("{category}", category)
            assert reason.phrase == phrase
        assert abs(why.expected_margin - contributions[width]) <= 1e-9
        total = why.expected_margin + sum(r.contribution for r in why.reasons) + why.others_margin
        assert abs(total - margin) <= 1e-9 and abs(1 / (1 + np.exp(-total)) - score) <= 1e-5
    assert any(r.direction == pb.RAISES_SCORE for why in reply.reasons for r in why.reasons)
    categories = {r.phrase for why in reply.reasons for r in why.reasons if r.feature == "Home"}
    assert {"Type of residence (owner)", "Type of residence (rent)"} <= categories, categories
    assert {len(why.reasons) for why in reply.reasons} == {reasons.REASONS_MAX}


def test_a_call_that_does_not_ask_for_reasons_gets_none_and_the_same_scores(
    stub: inference_pb2_grpc.GRPCInferenceServiceStub, held_out: np.ndarray
) -> None:
    plain = infer(stub, held_out, "1")
    assert len(plain.reasons) == 0
    few = infer(stub, held_out, "1", 3)
    assert {len(why.reasons) for why in few.reasons} == {3}
    assert np.array_equal(served_scores(plain), served_scores(few))
    metadata = {v: stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL, version=v), timeout=10) for v in "12"}
    assert (metadata["1"].reasons_max, metadata["2"].reasons_max) == (reasons.REASONS_MAX, 0)


def test_bad_reasons_requests_are_refused_clearly_and_the_server_keeps_serving(
    stub: inference_pb2_grpc.GRPCInferenceServiceStub, held_out: np.ndarray
) -> None:
    too_many = refusal(stub, held_out[:1], "1", reasons.REASONS_MAX + 1)
    assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert too_many.details() == "reasons_max: 11 is outside 1 to 10 (0 asks for no reasons)"
    rows = np.repeat(held_out[:1], reasons.ROWS_MAX + 1, axis=0)
    too_long = refusal(stub, rows, "1", 1)
    assert too_long.code() == grpc.StatusCode.INVALID_ARGUMENT and "up to 1024 rows" in (too_long.details() or "")
    unexplained = refusal(stub, held_out[:1], "2", 1)
    assert unexplained.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 2 was trained without reasons" in (unexplained.details() or "")
    # The version without reasons still scores, and the one with them still explains.
    assert np.array_equal(served_scores(infer(stub, held_out, "2")), served_scores(infer(stub, held_out, "1")))
    assert len(infer(stub, held_out[:2], "1", 2).reasons) == 2


def test_a_version_whose_reasons_do_not_add_up_to_its_scores_is_not_loaded(
    stub: inference_pb2_grpc.GRPCInferenceServiceStub, root: Path, held_out: np.ndarray
) -> None:
    tampered = root / MODEL / "3"
    shutil.copytree(root / MODEL / "1", tampered)
    try:
        tables = explain.load(tampered / registry.SHAP_FILE)
        tables.leaf_shap[:] *= 1.5
        tables.save(tampered / registry.SHAP_FILE)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "do not add up to the served scores" in (refused.value.details() or "")
    finally:
        shutil.rmtree(tampered)
    assert len(infer(stub, held_out[:1], "1", 1).reasons) == 1, "the versions that served before still serve"


def test_derived_features_are_reasons_under_their_own_names(tmp_path: Path) -> None:
    data = datasets.marketing_response()
    outcome = train.train_one("marketing_response", data, tmp_path, 1, iterations=60)
    assert outcome.admitted and outcome.explanation is not None, outcome.reason
    assert outcome.explanation.passed and outcome.explanation.max_abs_diff <= 1e-9
    metadata = registry.load_metadata(tmp_path, "marketing_response", 1)
    served = reasons.load(registry.version_dir(tmp_path, "marketing_response", 1), metadata)
    assert served is not None and served.feature_names[-2:] == ["policies_total", "contributions_total"]
    rows = train.split(data, train.SEED_DEFAULT).test_x[:200]
    derived_reasons = [
        (row, reason)
        for row, why in zip(rows, served.top(rows, reasons.REASONS_MAX), strict=True)
        for reason in why.reasons
        if reason.feature == "policies_total"
    ]
    assert derived_reasons, "the number of policies held explains some of these customers' scores"
    kinds = next(f for f in outcome.fitted.recipe.derived if f.name == "policies_total").of
    for row, reason in derived_reasons:
        assert reason.value == sum(float(row[data.feature_names.index(k)]) for k in kinds)
        assert reason.phrase in ("Holds many insurance policies", "Holds few insurance policies")
