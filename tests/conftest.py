"""Fixtures: real node processes on loopback, in temporary directories, speaking mutual TLS.

The session makes one development CA (serving/certs.py) in a temporary directory and sets
YUNKAI_TLS_DIR to it before any test runs: every process a test starts and every SDK client
it opens finds its certificate there, as in production. Tests that call a server's raw
stubs open their channel with `channel(address, role)`, as the role that may call it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cluster.commands import LocalCluster
from cluster.local import EtcdProcess, NodeProcess
from proto import ledger_pb2 as pb, ledger_pb2_grpc, node_pb2_grpc
from serving import certs
from serving.tls import INSECURE_ENV, TLS_DIR_ENV, Tls

# The business servers (scoring, lending, risk) as fixtures any test module may ask for.
pytest_plugins = ("tests.business",)

_session_tls: list[str] = []

# `YUNKAI_LONG_TESTS=1 make test` runs the longer version of the scenarios that have one (a
# cluster's full 4,096 slots moved instead of 256, ...): the suite's own versions keep
# `make test` under its 20 minutes on a 2-core machine (README, "Developing").
LONG = os.environ.get("YUNKAI_LONG_TESTS") == "1"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.pop(INSECURE_ENV, None)
    directory = tempfile.mkdtemp(prefix="yunkai-test-tls-")
    certs.init(directory)
    os.environ[TLS_DIR_ENV] = directory
    _session_tls.append(directory)


def pytest_unconfigure(config: pytest.Config) -> None:
    for directory in _session_tls:
        shutil.rmtree(directory, ignore_errors=True)


def tls(role: str = "service") -> Tls:
    """The session's certificate of `role` (named after it)."""
    return Tls.load(os.environ[TLS_DIR_ENV], role)


def channel(address: str, role: str = "service", options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A blocking channel to `address`, presenting the certificate of `role`."""
    return grpc.secure_channel(address, tls(role).channel_credentials(), options=options)


def aio_channel(address: str, role: str = "service", options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    """An asyncio channel to `address`, presenting the certificate of `role`."""
    return grpc.aio.secure_channel(address, tls(role).channel_credentials(), options=options)


_ids = itertools.count(1)


def fresh(prefix: str) -> str:
    """An id no other test in this session uses."""
    return f"{prefix}-{next(_ids)}"


def fresh_book() -> str:
    """A lending book's name no other test uses (`lending serve --book`: its records are its own)."""
    return f"t{next(_ids)}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A router and two ledger nodes for one test module (a module may define its own)."""
    running = LocalCluster(str(tmp_path_factory.mktemp("cluster")), nodes=2, port=0).start()
    yield running
    running.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A throwaway etcd on loopback for one test (cluster/install-etcd.sh installs it; .ci/run does)."""
    process = EtcdProcess(str(tmp_path / "etcd-data"), str(tmp_path / "etcd.log"), os.environ[TLS_DIR_ENV]).start()
    yield process
    process.stop()


class NodeHandle:
    """A running node with blocking stubs (as a router: it may call the ledger and the Node service)."""

    def __init__(self, process: NodeProcess) -> None:
        self.process = process
        self.channel = channel(process.address, "router")
        self.ledger = ledger_pb2_grpc.LedgerStub(self.channel)
        self.admin = node_pb2_grpc.NodeStub(self.channel)

    def reconnect(self) -> None:
        self.channel.close()
        self.channel = channel(self.process.address, "router")
        self.ledger = ledger_pb2_grpc.LedgerStub(self.channel)
        self.admin = node_pb2_grpc.NodeStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    # Small helpers tests read better with.
    def accounts(self, *accounts: pb.Account) -> list[int]:
        reply = self.ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=accounts), timeout=30)
        return [r.code for r in reply.results]

    def transfers(self, *transfers: pb.Transfer) -> list[pb.EventResult]:
        reply = self.ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=transfers), timeout=30)
        return list(reply.results)

    def account(self, account_id: str) -> pb.Account:
        reply = self.ledger.LookupAccounts(pb.LookupAccountsRequest(ids=[account_id]), timeout=30)
        assert reply.results[0].code == pb.OK, reply
        return reply.results[0].account

    def transfer(self, debit_account_id: str, transfer_id: str) -> pb.TransferResult:
        reply = self.ledger.LookupTransfers(
            pb.LookupTransfersRequest(keys=[pb.TransferKey(debit_account_id=debit_account_id, id=transfer_id)]),
            timeout=30,
        )
        return reply.results[0]


def start_node(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> NodeHandle:
    return NodeHandle(NodeProcess(str(tmp_path_factory.mktemp("node")), extra).start())


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHandle]:
    """One node shared by a module's tests (each test uses fresh ids)."""
    handle = start_node(tmp_path_factory)
    yield handle
    handle.close()
    assert handle.process.stop() == 0, handle.process.log_tail()
