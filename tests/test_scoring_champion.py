"""Champion and challenger, as an operator and a caller see them: `yunkai scoring deploy|promote|
rollback` against a real `yunkai scoring serve` on loopback, over a private copy of the small
credit_risk registry of tests/test_scoring_server.py (version 1: 20 trees, version 2: 30)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from proto import inference_pb2 as pb, inference_pb2_grpc
from scoring import datasets, registry, train
from tests.conftest import channel
from tests.test_scoring_server import (
    MODEL,
    ROOT,
    ScoringServer,
    data,
    expected,
    free_port,
    raw_request,
    refused,
    registry_dir,
)

__all__ = ["data", "registry_dir"]  # fixtures shared with tests/test_scoring_server.py
ROWS = 6


@pytest.fixture
def served(registry_dir: Path, tmp_path: Path) -> Iterator[tuple[ScoringServer, Path]]:
    root = tmp_path / "registry"
    shutil.copytree(registry_dir, root)
    handle = start(root, tmp_path / "scoring.log")
    yield handle, root
    assert handle.stop() == 0


def start(root: Path, log_path: Path) -> ScoringServer:
    metrics_port = free_port()
    handle = ScoringServer(root, log_path, "--metrics-port", str(metrics_port))
    handle.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    return handle


def yunkai(server: ScoringServer, *words: str) -> subprocess.CompletedProcess[str]:
    """A `yunkai scoring ...` command as an operator runs it (TLS material from YUNKAI_TLS_DIR)."""
    command = [sys.executable, "-m", "cluster.cli", "scoring", words[0], "--scoring", server.address, *words[1:]]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def roles(server: ScoringServer, *words: str) -> dict[str, object]:
    done = yunkai(server, *words)
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def scores(server: ScoringServer, rows: np.ndarray) -> tuple[str, np.ndarray]:
    reply = server.stub.ModelInfer(raw_request(rows), timeout=5)
    return reply.model_version, np.frombuffer(reply.raw_output_contents[0], dtype="<f4")


def shadow_lines(log_path: Path, count: int) -> list[dict[str, object]]:
    """The server's `shadow` log lines, once there are `count` (they are written after the answer)."""
    deadline = time.monotonic() + 20
    while True:
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        shadows = [line for line in lines if line.get("message") == "shadow"]
        if len(shadows) >= count or time.monotonic() > deadline:
            return shadows
        time.sleep(0.05)


def test_challenger_scores_in_shadow_then_promote_and_rollback_switch_the_champion_durably(
    served: tuple[ScoringServer, Path], data: datasets.Dataset, tmp_path: Path
) -> None:
    server, root = served
    rows = data.features[:ROWS]
    v1, v2 = expected(root, 1, rows), expected(root, 2, rows)
    assert not np.allclose(v1, v2, atol=1e-4), "the two versions must score differently for this test to mean anything"

    deployed = roles(server, "deploy", MODEL, "1", "--share", "1.0")
    assert deployed == {"model": MODEL, "champion": 2, "challenger": 1, "share": 1.0, "previous": None}
    for _ in range(3):
        version, got = scores(server, rows)
        assert version == "2" and np.allclose(got, v2, atol=1e-6, rtol=0), "callers get the champion's scores"
    shadows = shadow_lines(tmp_path / "scoring.log", 3)
    assert len(shadows) == 3
    for line in shadows:
        assert (line["model"], line["champion"], line["challenger"], line["rows"]) == (MODEL, 2, 1, ROWS)
        assert np.allclose(line["champion_scores"], v2, atol=1e-6, rtol=0)  # type: ignore[arg-type]
        assert np.allclose(line["challenger_scores"], v1, atol=1e-6, rtol=0)  # type: ignore[arg-type]
    shadow_metric = 'yunkai_scoring_shadow_requests_total{challenger="1",champion="2",model="credit_risk",outcome='
    assert server.metric(shadow_metric + '"scored"}') == 3
    assert server.metric('yunkai_scoring_shadow_score_difference_count{challenger="1"') == 3 * ROWS

    promoted = roles(server, "promote", MODEL)
    assert promoted == {"model": MODEL, "champion": 1, "challenger": None, "share": 0.0, "previous": 2}
    version, got = scores(server, rows)
    assert version == "1" and np.allclose(got, v1, atol=1e-6, rtol=0), "the new champion answers"
    assert json.loads((root / MODEL / registry.ROLES_FILE).read_text())["champion"] == 1

    # The promotion survives a restart: the record on disk is what a new server serves.
    assert server.stop() == 0
    server = start(root, tmp_path / "restarted.log")
    try:
        assert scores(server, rows)[0] == "1"
        rolled_back = roles(server, "rollback", MODEL)
        assert rolled_back == {"model": MODEL, "champion": 2, "challenger": None, "share": 0.0, "previous": None}
        version, got = scores(server, rows)
        assert version == "2" and np.allclose(got, v2, atol=1e-6, rtol=0), "the old champion is back"
        assert server.stub.ModelInfer(raw_request(rows, "1"), timeout=5).model_version == "1", "v1 still named"
    finally:
        assert server.stop() == 0


def test_bad_commands_are_refused_naming_what_is_wrong_and_change_nothing(
    served: tuple[ScoringServer, Path], data: datasets.Dataset
) -> None:
    server, root = served
    stub = server.stub
    deploy, promote, rollback = stub.RepositoryModelDeploy, stub.RepositoryModelPromote, stub.RepositoryModelRollback

    unknown_model = refused(deploy, pb.RepositoryModelDeployRequest(model_name="no_such_model", version=1, share=1))
    assert unknown_model.code() == grpc.StatusCode.NOT_FOUND and "no_such_model" in (unknown_model.details() or "")
    unknown_version = refused(deploy, pb.RepositoryModelDeployRequest(model_name=MODEL, version=9, share=1))
    assert unknown_version.code() == grpc.StatusCode.NOT_FOUND and "no version 9" in (unknown_version.details() or "")
    for share in (0.0, 1.5, float("nan")):
        bad_share = refused(deploy, pb.RepositoryModelDeployRequest(model_name=MODEL, version=1, share=share))
        assert bad_share.code() == grpc.StatusCode.INVALID_ARGUMENT and "share" in (bad_share.details() or "")
    itself = refused(deploy, pb.RepositoryModelDeployRequest(model_name=MODEL, version=2, share=1))
    assert itself.code() == grpc.StatusCode.FAILED_PRECONDITION and "already the champion" in (itself.details() or "")
    nothing = refused(promote, pb.RepositoryModelPromoteRequest(model_name=MODEL))
    assert nothing.code() == grpc.StatusCode.FAILED_PRECONDITION and "no challenger" in (nothing.details() or "")
    no_previous = refused(rollback, pb.RepositoryModelRollbackRequest(model_name=MODEL))
    assert no_previous.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no previous champion" in (no_previous.details() or "")

    done = yunkai(server, "promote", "no_such_model")
    assert done.returncode == 1 and "NOT_FOUND" in done.stderr and "no_such_model" in done.stderr

    # Only operators change who serves: a risk server may score, not promote.
    with channel(server.address, "risk") as risk:
        denied = refused(
            inference_pb2_grpc.GRPCInferenceServiceStub(risk).RepositoryModelPromote,
            pb.RepositoryModelPromoteRequest(model_name=MODEL),
        )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED

    assert not (root / MODEL / registry.ROLES_FILE).exists(), "no refused command wrote a record"
    version, got = scores(server, data.features[:ROWS])
    assert version == "2" and np.allclose(got, expected(root, 2, data.features[:ROWS]), atol=1e-6, rtol=0)


def test_a_failing_challenger_costs_the_caller_nothing(
    served: tuple[ScoringServer, Path], tmp_path: Path, data: datasets.Dataset
) -> None:
    """A challenger that cannot score the champion's rows (it takes other features) fails in
    shadow only: counted and logged, while every call gets the champion's answer."""
    server, root = served
    other = tmp_path / "other"
    outcome = train.train_one("repayment_willingness", datasets.LOADERS["repayment_willingness"](), other, 1, 5)
    assert outcome.admitted, outcome.parity.reason
    shutil.copytree(other / "repayment_willingness" / "1", root / MODEL / "3")
    metadata_path = root / MODEL / "3" / registry.METADATA_FILE
    metadata = json.loads(metadata_path.read_text())
    assert len(metadata["input_schema"]["features"]) != len(data.feature_names)
    metadata_path.write_text(json.dumps({**metadata, "name": MODEL, "version": 3}))

    assert roles(server, "deploy", MODEL, "3", "--share", "1")["challenger"] == 3
    rows = data.features[:ROWS]
    for _ in range(3):
        version, got = scores(server, rows)
        assert version == "2" and np.allclose(got, expected(root, 2, rows), atol=1e-6, rtol=0)
    failed = 'yunkai_scoring_shadow_requests_total{challenger="3",champion="2",model="credit_risk",outcome="failed"}'
    deadline = time.monotonic() + 20
    while server.metric(failed) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric(failed) == 3
