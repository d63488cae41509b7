"""The business servers tests share (a pytest plugin, conftest.py's pytest_plugins): a scoring
server with a trained credit_risk model, a lending server with the sample catalogue published,
and a risk server over both and the module's cluster, each once per test module, and the real
applicants the model finds safest, riskiest and of medium risk."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from clients.scoring import ScoringClient
from cluster.commands import LocalCluster
from cluster.local import LendingProcess, RiskProcess, ScoringProcess
from lending.products import SAMPLE_CATALOGUE, read_catalogue
from proto import lending_pb2 as lpb, lending_pb2_grpc
from scoring import datasets, train
from tests.conftest import channel


@pytest.fixture(scope="module")
def credit_data() -> datasets.Dataset:
    return datasets.credit_risk()


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory, credit_data: datasets.Dataset) -> Iterator[ScoringProcess]:
    registry = tmp_path_factory.mktemp("scoring") / "models"
    assert train.train_one("credit_risk", credit_data, registry, 1, iterations=200).admitted
    server = ScoringProcess(str(registry), ["--log-level", "WARNING"]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def risk_port() -> int:
    """The risk server's port, known before it starts: the lending server tells it loans' outcomes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def lending(
    tmp_path_factory: pytest.TempPathFactory, cluster: LocalCluster, risk_port: int
) -> Iterator[LendingProcess]:
    """A lending server with the whole sample catalogue published (SME-TAX-LOAN: 4.30-12.00% a year)."""
    server = LendingProcess(
        str(tmp_path_factory.mktemp("lending")), ["--router", cluster.address, "--risk", f"127.0.0.1:{risk_port}"]
    ).start()
    products = lending_pb2_grpc.ProductServiceStub(channel(server.address, "operator"))
    for parameters in read_catalogue(SAMPLE_CATALOGUE):
        draft = products.SaveDraft(lpb.SaveDraftRequest(parameters=parameters), timeout=10)
        products.PublishProduct(lpb.ProductRef(code=draft.code, version=draft.version), timeout=10)
    yield server
    assert server.stop() == 0, server.log_tail()


@pytest.fixture(scope="module")
def risk(
    tmp_path_factory: pytest.TempPathFactory,
    scoring: ScoringProcess,
    cluster: LocalCluster,
    lending: LendingProcess,
    risk_port: int,
) -> Iterator[RiskProcess]:
    server = RiskProcess(
        str(tmp_path_factory.mktemp("risk")),
        ["--scoring", scoring.address, "--router", cluster.address, "--lending", lending.address],
    )
    server.port = risk_port
    server.start()
    yield server
    assert server.stop() == 0, server.log_tail()


@pytest.fixture(scope="module")
def applicants(scoring: ScoringProcess, credit_data: datasets.Dataset) -> dict[str, dict[str, float]]:
    """The real applicants the model finds safest and riskiest, and one of medium risk."""
    rows = [dict(zip(credit_data.feature_names, map(float, row), strict=True)) for row in credit_data.features[:400]]

    async def score() -> list[float]:
        async with ScoringClient(scoring.address) as client:
            return await client.score("credit_risk", rows, version=1)

    scores = asyncio.run(score())
    ranked = sorted(range(len(rows)), key=scores.__getitem__)
    assert scores[ranked[0]] < 0.1 and scores[ranked[-1]] >= 0.5, (scores[ranked[0]], scores[ranked[-1]])
    medium = next(i for i in ranked if 0.12 <= scores[i] < 0.24)
    return {"safe": rows[ranked[0]], "risky": rows[ranked[-1]], "medium": rows[medium]}
