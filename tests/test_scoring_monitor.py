"""Monitoring, as an operator and the lending side see it: windowed drift (PSI per feature and on
the score) and AUC on outcomes, from a real `yunkai scoring serve` on loopback over the small
credit_risk registry of tests/test_scoring_server.py (version 1: 20 trees, version 2: 30), through
the gRPC calls, the Prometheus gauges and `yunkai scoring report|outcome`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients.scoring import ScoringClient
from proto import inference_pb2 as pb, inference_pb2_grpc
from scoring import datasets, monitor, registry
from tests.conftest import channel
from tests.test_scoring_server import MODEL, ROOT, ScoringServer, data, free_port, raw_request, refused, registry_dir

__all__ = ["data", "registry_dir"]  # fixtures shared with tests/test_scoring_server.py
WINDOW_ROWS = 1000  # the server's --drift-window-rows; PSI is reported from 500 (the default minimum)
ROWS_MIN = 500
CLASS_MIN = 50  # outcomes of each label before an AUC (scoring/monitor.py)
SHIFTED = "Amount"


@pytest.fixture(scope="module")
def server(registry_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringServer]:
    metrics_port = free_port()
    flags = ["--metrics-port", str(metrics_port), "--drift-window-rows", str(WINDOW_ROWS)]
    handle = ScoringServer(registry_dir, tmp_path_factory.mktemp("logs") / "scoring.log", *flags)
    handle.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    yield handle
    assert handle.stop() == 0, "the server did not stop cleanly on SIGTERM"


def infer(server: ScoringServer, rows: np.ndarray, version: str = "", call_id: str = "") -> np.ndarray:
    request = raw_request(rows, version)
    request.id = call_id
    reply = server.stub.ModelInfer(request, timeout=10)
    return np.frombuffer(reply.raw_output_contents[0], dtype="<f4")


def monitored(server: ScoringServer, version: int) -> pb.VersionMonitor:
    reply: pb.ModelMonitorResponse = server.stub.ModelMonitor(pb.ModelMonitorRequest(model_name=MODEL), timeout=10)
    [found] = [v for v in reply.versions if v.version == version]
    return found


def gauges(server: ScoringServer, name: str, version: int) -> dict[str, float]:
    """The samples of gauge `name` for the version, by their full label set."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    mine = f'model="{MODEL}",version="{version}"'
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and mine in line
    }


def yunkai(server: ScoringServer, *words: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cluster.cli", "scoring", words[0], "--scoring", server.address, *words[1:]]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The share of (positive, negative) pairs the score orders right, ties counting one half."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = sum(float((p > negatives).sum()) + 0.5 * float((p == negatives).sum()) for p in positives)
    return wins / (len(positives) * len(negatives))


def test_drift_is_reported_from_the_minimum_sample_and_flags_only_the_shifted_feature(
    server: ScoringServer, data: datasets.Dataset
) -> None:
    rng = np.random.default_rng(21)
    reference = data.features[rng.choice(len(data.labels), WINDOW_ROWS, replace=False)]
    for part in np.split(reference[:400], 4):
        infer(server, part, version="1")
    below = monitored(server, 1)
    assert below.window_rows == 400 and below.window_rows_min == ROWS_MIN
    assert not below.HasField("score_psi") and not below.features, "no PSI below the minimum sample"
    assert gauges(server, "yunkai_scoring_drift_window_rows", 1) == {
        f'yunkai_scoring_drift_window_rows{{model="{MODEL}",version="1"}}': 400.0
    }
    assert not gauges(server, "yunkai_scoring_drift_psi", 1) and not gauges(
        server, "yunkai_scoring_drift_feature_psi", 1
    )

    infer(server, reference[400:], version="1")
    stable = monitored(server, 1)
    assert stable.window_rows == WINDOW_ROWS and stable.features_binned
    assert sorted(f.name for f in stable.features) == sorted(data.feature_names)
    assert all(f.psi < 0.1 for f in stable.features), [(f.name, f.psi) for f in stable.features]
    assert stable.score_psi < 0.1
    assert len(gauges(server, "yunkai_scoring_drift_feature_psi", 1)) == len(data.feature_names)

    shifted = data.features[rng.choice(len(data.labels), WINDOW_ROWS)].copy()
    shifted[:, data.feature_names.index(SHIFTED)] *= 3  # loans three times the size of the reference's
    infer(server, shifted, version="1")
    drifted = monitored(server, 1)
    assert drifted.window_rows == WINDOW_ROWS, "the window holds the newest rows only"
    assert drifted.features[0].name == SHIFTED and drifted.features[0].psi > 0.25, "worst first"
    others = {f.name: f.psi for f in drifted.features[1:]}
    assert all(psi < 0.1 for psi in others.values()), others
    psi_gauge = gauges(server, "yunkai_scoring_drift_feature_psi", 1)
    [amount] = [value for labels, value in psi_gauge.items() if f'feature="{SHIFTED}"' in labels]
    assert amount == pytest.approx(drifted.features[0].psi)

    done = yunkai(server, "report", "--model", MODEL)
    assert done.returncode == 0, done.stderr
    block = done.stdout.split(f"{MODEL} v1")[1].split(f"{MODEL} v")[0]
    lines = [line.split() for line in block.splitlines()]
    assert [SHIFTED, f"{drifted.features[0].psi:.4f}", "MAJOR"] in lines
    assert "not enough data: 0 of label 1, 0 of label 0; 50 of each needed" in block
    as_json = json.loads(yunkai(server, "report", "--model", MODEL, "--json").stdout)
    [v1] = [v for v in as_json["versions"] if v["version"] == 1]
    assert v1["features"][0] == {"name": SHIFTED, "psi": round(drifted.features[0].psi, 6), "flag": "MAJOR"}
    assert v1["window"]["rows"] == WINDOW_ROWS and v1["outcomes"]["auc"] is None


def test_outcomes_joined_to_kept_scores_give_the_auc_of_a_pairwise_count(
    server: ScoringServer, data: datasets.Dataset
) -> None:
    rng = np.random.default_rng(5)
    positives = rng.choice(np.flatnonzero(data.labels == 1), 60, replace=False)
    negatives = rng.choice(np.flatnonzero(data.labels == 0), 90, replace=False)
    chosen = rng.permutation(np.concatenate([positives, negatives]))
    labels = data.labels[chosen]
    scores = infer(server, data.features[chosen], call_id="application-7")  # the champion, version 2

    def report(rows: range) -> list[int]:
        outcomes = [pb.ModelOutcomeRequest.Outcome(id="application-7", row=r, label=int(labels[r])) for r in rows]
        reply = server.stub.ModelOutcome(pb.ModelOutcomeRequest(model_name=MODEL, outcomes=outcomes), timeout=10)
        return list(reply.results)

    assert report(range(40)) == [pb.OUTCOME_RECORDED] * 40
    early = monitored(server, 2)
    assert early.outcome_positives + early.outcome_negatives == 40 and not early.HasField("outcome_auc")
    assert not gauges(server, "yunkai_scoring_outcome_auc", 2)

    assert report(range(40, len(chosen))) == [pb.OUTCOME_RECORDED] * (len(chosen) - 40)
    full = monitored(server, 2)
    assert (full.outcome_positives, full.outcome_negatives) == (60, 90)
    want = pairwise_auc(labels, scores)
    assert full.outcome_auc == pytest.approx(want, abs=1e-12)
    assert gauges(server, "yunkai_scoring_outcome_auc", 2) == {
        f'yunkai_scoring_outcome_auc{{model="{MODEL}",version="2"}}': pytest.approx(want, abs=1e-12)
    }
    counted = gauges(server, "yunkai_scoring_outcome_rows", 2)
    assert sorted(counted.values()) == [60.0, 90.0]

    # A repeated outcome changes nothing; a contradicting one is refused per outcome and kept out.
    again = pb.ModelOutcomeRequest.Outcome(id="application-7", row=0, label=int(labels[0]))
    other = pb.ModelOutcomeRequest.Outcome(id="application-7", row=1, label=1 - int(labels[1]))
    reply = server.stub.ModelOutcome(pb.ModelOutcomeRequest(model_name=MODEL, outcomes=[again, other]), timeout=10)
    assert list(reply.results) == [pb.OUTCOME_EXISTS, pb.OUTCOME_CONFLICTS]
    assert monitored(server, 2).outcome_auc == full.outcome_auc


def test_bad_outcomes_and_reports_are_refused_clearly_and_the_server_keeps_serving(
    server: ScoringServer, data: datasets.Dataset
) -> None:
    rows = data.features[:3]
    infer(server, rows, call_id="decision-42")
    outcome, request = pb.ModelOutcomeRequest.Outcome, pb.ModelOutcomeRequest
    call = server.stub.ModelOutcome

    unknown_model = refused(call, request(model_name="no_such_model", outcomes=[outcome(id="decision-42", label=1)]))
    assert unknown_model.code() == grpc.StatusCode.NOT_FOUND and "no_such_model" in (unknown_model.details() or "")
    bad_label = refused(
        call,
        request(
            model_name=MODEL, outcomes=[outcome(id="decision-42", label=1), outcome(id="decision-42", row=1, label=2)]
        ),
    )
    assert bad_label.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outcomes[1]" in (bad_label.details() or "") and "label 2" in (bad_label.details() or "")
    no_id = refused(call, request(model_name=MODEL, outcomes=[outcome(label=0)]))
    assert no_id.code() == grpc.StatusCode.INVALID_ARGUMENT and "id" in (no_id.details() or "")
    assert refused(call, request(model_name=MODEL)).code() == grpc.StatusCode.INVALID_ARGUMENT

    unknown = call(request(model_name=MODEL, outcomes=[outcome(id="nobody", label=1)]), timeout=10)
    assert list(unknown.results) == [pb.OUTCOME_UNKNOWN_SCORE]
    done = yunkai(server, "outcome", MODEL, "nobody", "1")
    assert done.returncode == 1 and "no kept score for id 'nobody' row 0" in done.stderr
    # The refused call recorded nothing: its good outcome is new now.
    done = yunkai(server, "outcome", MODEL, "decision-42", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"recorded": 1, "exists": 0, "unknown_score": 0, "conflicts": 0}
    done = yunkai(server, "outcome", MODEL, "decision-42", "2", "--row", "1")
    assert done.returncode == 1 and "INVALID_ARGUMENT" in done.stderr and "label 2" in done.stderr

    monitor_unknown = refused(server.stub.ModelMonitor, pb.ModelMonitorRequest(model_name="no_such_model"))
    assert monitor_unknown.code() == grpc.StatusCode.NOT_FOUND
    with channel(server.address, "service") as as_service:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(as_service)
        assert refused(stub.ModelMonitor, pb.ModelMonitorRequest()).code() == grpc.StatusCode.PERMISSION_DENIED
        assert len(stub.ModelInfer(raw_request(rows), timeout=5).raw_output_contents) == 1, "still serving"


def test_a_service_scores_with_a_request_id_and_reports_outcomes_through_the_sdk(
    server: ScoringServer, data: datasets.Dataset
) -> None:
    dicts = [dict(zip(data.feature_names, map(float, row), strict=True)) for row in data.features[:2]]

    async def run() -> list[str]:
        async with ScoringClient(server.address) as client:  # the `service` identity
            await client.score(MODEL, dicts, request_id="loan-application-9")
            return await client.record_outcomes(
                MODEL, [("loan-application-9", 1, 0), ("loan-application-9", 1, 0), ("loan-application-10", 0, 1)]
            )

    assert asyncio.run(run()) == ["recorded", "exists", "unknown_score"]


def test_a_version_trained_before_feature_bins_were_stored_still_measures_score_drift(
    registry_dir: Path, data: datasets.Dataset
) -> None:
    metadata = registry.load_metadata(registry_dir, MODEL, 1)
    del metadata["drift_reference"]
    reference = monitor.Reference.from_metadata(metadata)
    assert reference.features == () and reference.bins == len(metadata["reference_histogram"]["fractions"])
    window = monitor.DriftWindow(reference, WINDOW_ROWS, ROWS_MIN)
    rows = data.features[:ROWS_MIN]
    window.add(rows, np.full(len(rows), 0.99, dtype=np.float32), np.zeros(len(rows)))
    psi = window.psi()
    assert psi is not None and psi.shape == (1,) and psi[0] > 0.25, "every score in one bin: a major shift"


def test_an_outcome_with_the_score_its_caller_kept_joins_without_a_kept_score(server: ScoringServer) -> None:
    """A decision stores its scores: an outcome months later carries (version, score), which
    counts where the server keeps no score for the row (it restarted, or the row is old)."""
    outcome, request = pb.ModelOutcomeRequest.Outcome, pb.ModelOutcomeRequest
    call = server.stub.ModelOutcome
    before = monitored(server, 2)
    kept = outcome(id="stored-decision-1", row=0, label=1, version=2, score=0.83)
    assert list(call(request(model_name=MODEL, outcomes=[kept]), timeout=10).results) == [pb.OUTCOME_RECORDED]
    assert list(call(request(model_name=MODEL, outcomes=[kept]), timeout=10).results) == [pb.OUTCOME_EXISTS]
    after = monitored(server, 2)
    assert (after.outcome_positives, after.outcome_negatives) == (
        before.outcome_positives + 1,
        before.outcome_negatives,
    )
    for bad, said in (
        (outcome(id="stored-decision-2", label=0, version=2), "needs both version and score"),
        (outcome(id="stored-decision-2", label=0, version=2, score=1.5), "is not a probability"),
    ):
        error = refused(call, request(model_name=MODEL, outcomes=[bad]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and said in (error.details() or ""), error.details()
    assert monitored(server, 2).outcome_positives == after.outcome_positives  # nothing of the refused calls counted
    # A version no longer loaded (loans outlive model versions): the outcome counts nowhere, no refusal.
    gone = outcome(id="stored-decision-3", label=1, version=9, score=0.5)
    assert list(call(request(model_name=MODEL, outcomes=[gone]), timeout=10).results) == [pb.OUTCOME_UNKNOWN_SCORE]
