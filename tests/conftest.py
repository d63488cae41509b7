"""Fixtures: real node processes on loopback, in temporary directories."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cluster.commands import LocalCluster
from cluster.local import EtcdProcess, NodeProcess
from proto import ledger_pb2 as pb, ledger_pb2_grpc, node_pb2_grpc

_ids = itertools.count(1)


def fresh(prefix: str) -> str:
    """An id no other test in this session uses."""
    return f"{prefix}-{next(_ids)}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A router and two ledger nodes for one test module (a module may define its own)."""
    running = LocalCluster(str(tmp_path_factory.mktemp("cluster")), nodes=2, port=0).start()
    yield running
    running.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A throwaway etcd on loopback for one test (cluster/install-etcd.sh installs it; .ci/run does)."""
    process = EtcdProcess(str(tmp_path / "etcd-data"), str(tmp_path / "etcd.log")).start()
    yield process
    process.stop()


class NodeHandle:
    """A running node with blocking stubs."""

    def __init__(self, process: NodeProcess) -> None:
        self.process = process
        self.channel = grpc.insecure_channel(process.address)
        self.ledger = ledger_pb2_grpc.LedgerStub(self.channel)
        self.admin = node_pb2_grpc.NodeStub(self.channel)

    def reconnect(self) -> None:
        self.channel.close()
        self.channel = grpc.insecure_channel(self.process.address)
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
