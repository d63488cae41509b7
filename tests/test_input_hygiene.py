"""Input hygiene (issue 16): what a caller adds beyond the contract is never stored, a number
out of range is refused naming its field, one caller's batch never fails another caller's
request, no refusal tells a router's caller where the nodes are, and what a process writes
is its user's alone."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from clients.ledger import LedgerClient
from cluster.commands import LocalCluster
from cluster.local import NodeProcess
from proto import ledger_pb2 as pb, ledger_pb2_grpc
from router import routing
from serving import authz
from serving.tls import Identity
from tests.conftest import NodeHandle, channel, fresh

CNY = 156
JUNK_BYTES = 4 * 1024 * 1024
BATCH_EVENTS_MAX = 8192  # the nodes' and the router's default limit
SMALL_BATCH_EVENTS_MAX = 1000


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def with_junk(transfer: pb.Transfer, size_bytes: int = JUNK_BYTES) -> pb.Transfer:
    """The transfer carrying an unknown length-delimited field (number 1000) of `size_bytes`."""
    junk = _varint(1000 << 3 | 2) + _varint(size_bytes) + b"j" * size_bytes
    padded = pb.Transfer.FromString(transfer.SerializeToString() + junk)
    assert padded.ByteSize() > size_bytes  # the field is kept until a server drops it
    return padded


def transfer(transfer_id: str, debit: str, credit: str, amount: int = 1) -> pb.Transfer:
    return pb.Transfer(
        id=transfer_id, debit_account_id=debit, credit_account_id=credit, amount=amount, ledger=CNY, code=1
    )


def open_pair(stub: ledger_pb2_grpc.LedgerStub) -> tuple[str, str]:
    """Two accounts under one hash tag (one slot, so one node)."""
    tag = fresh("hyg")
    debit, credit = f"{{{tag}}}:a", f"{{{tag}}}:b"
    accounts = [pb.Account(id=debit, ledger=CNY, code=1), pb.Account(id=credit, ledger=CNY, code=1)]
    reply = stub.CreateAccounts(pb.CreateAccountsRequest(accounts=accounts), timeout=30)
    assert [r.code for r in reply.results] == [pb.OK, pb.OK]
    return debit, credit


def disk_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(directory) for f in files)


def refusal(call: object, request: object, timeout_s: float = 30) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=timeout_s)  # type: ignore[operator]
    return caught.value


def assert_no_address(details: str, cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        assert node.address not in details and f":{node.port}" not in details, details


@pytest.fixture(scope="module")
def router(cluster: LocalCluster) -> Iterator[ledger_pb2_grpc.LedgerStub]:
    with channel(cluster.address, "service") as to_router:
        yield ledger_pb2_grpc.LedgerStub(to_router)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A router over one node that takes fewer events per request than the router does."""
    running = LocalCluster(
        str(tmp_path_factory.mktemp("small")),
        nodes=1,
        port=0,
        node_args=["--batch-events-max", str(SMALL_BATCH_EVENTS_MAX)],
    ).start()
    yield running
    running.stop()


# --- unknown fields ---------------------------------------------------------------------------


def test_a_transfer_with_a_4mb_unknown_field_is_stored_without_it(node: NodeHandle) -> None:
    debit, credit = open_pair(node.ledger)
    before = disk_bytes(node.process.data_dir)
    ids = [fresh("fat") for _ in range(5)]
    for transfer_id in ids:
        [result] = node.transfers(with_junk(transfer(transfer_id, debit, credit)))
        assert result.code == pb.OK
    looked = node.transfer(debit, ids[0])
    assert looked.code == pb.OK and looked.transfer.ByteSize() < 1024
    page = node.ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=debit), timeout=30)
    assert page.code == pb.OK and [t.id for t in page.transfers] == ids
    assert all(t.ByteSize() < 1024 for t in page.transfers)
    grown = disk_bytes(node.process.data_dir) - before
    assert grown < 1024 * 1024, f"the node's disk grew by {grown} bytes for five 1-fen transfers"


def test_a_transfer_with_an_unknown_field_through_the_router_is_stored_without_it(
    router: ledger_pb2_grpc.LedgerStub,
) -> None:
    debit, credit = open_pair(router)
    transfer_id = fresh("fat")
    reply = router.CreateTransfers(
        pb.CreateTransfersRequest(transfers=[with_junk(transfer(transfer_id, debit, credit))]), timeout=30
    )
    assert reply.results[0].code == pb.OK
    key = pb.TransferKey(debit_account_id=debit, id=transfer_id)
    looked = router.LookupTransfers(pb.LookupTransfersRequest(keys=[key]), timeout=30).results[0]
    assert looked.code == pb.OK and looked.transfer.ByteSize() < 1024
    page = router.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=credit), timeout=30)
    assert page.code == pb.OK and [t.ByteSize() < 1024 for t in page.transfers] == [True]


# --- numbers out of range ---------------------------------------------------------------------

OUT_OF_RANGE = [
    (pb.GetAccountTransfersRequest(cursor=(1 << 64) - 1), "cursor"),
    (pb.GetAccountTransfersRequest(cursor=(1 << 64) - 1, newest_first=True), "cursor"),
    (pb.GetAccountTransfersRequest(cursor=1 << 63), "cursor"),
    (pb.GetAccountTransfersRequest(limit=BATCH_EVENTS_MAX + 1), "limit"),
    (pb.GetAccountTransfersRequest(limit=(1 << 32) - 1), "limit"),
]


def _out_of_range_refused(stub: ledger_pb2_grpc.LedgerStub, account_id: str, cluster: LocalCluster | None) -> None:
    for template, field in OUT_OF_RANGE:
        request = pb.GetAccountTransfersRequest()
        request.CopyFrom(template)
        request.account_id = account_id
        error = refusal(stub.GetAccountTransfers, request)
        details = str(error.details())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (template, error.code(), details)
        assert f"{field}: " in details and "outside 0.." in details, details
        if cluster is not None:
            assert_no_address(details, cluster)
    too_many = [pb.TransferKey(debit_account_id=account_id, id=f"k{i}") for i in range(BATCH_EVENTS_MAX + 1)]
    error = refusal(stub.LookupTransfers, pb.LookupTransfersRequest(keys=too_many))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "keys: " in str(error.details())
    assert f"limit of {BATCH_EVENTS_MAX}" in str(error.details())
    # The server keeps serving, and the largest cursor in range is a page like any other.
    for newest_first in (False, True):
        edge = pb.GetAccountTransfersRequest(account_id=account_id, cursor=(1 << 63) - 1, newest_first=newest_first)
        page = stub.GetAccountTransfers(edge, timeout=30)
        assert page.code == pb.OK and len(page.transfers) == (1 if newest_first else 0)
    page = stub.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=account_id), timeout=30)
    assert page.code == pb.OK and len(page.transfers) == 1


def test_out_of_range_cursors_and_limits_are_refused_by_a_node_naming_the_field(node: NodeHandle) -> None:
    debit, credit = open_pair(node.ledger)
    assert node.transfers(transfer(fresh("t"), debit, credit))[0].code == pb.OK
    _out_of_range_refused(node.ledger, debit, None)


def test_out_of_range_cursors_and_limits_are_refused_by_the_router_naming_the_field(
    cluster: LocalCluster, router: ledger_pb2_grpc.LedgerStub
) -> None:
    debit, credit = open_pair(router)
    reply = router.CreateTransfers(
        pb.CreateTransfersRequest(transfers=[transfer(fresh("t"), debit, credit)]), timeout=30
    )
    assert reply.results[0].code == pb.OK
    _out_of_range_refused(router, debit, cluster)


# --- one caller's batch and another's -----------------------------------------------------------


class Innocents:
    """Callers of one event each, sending again and again until stopped, into the slot (so
    the node, so the coalescer) a neighbour's big batches go to."""

    def __init__(self, stub: ledger_pb2_grpc.LedgerStub, debit: str, credit: str) -> None:
        self.stub, self.debit, self.credit = stub, debit, credit
        self.stop = threading.Event()
        self.answered = 0
        self.failures: list[tuple[grpc.StatusCode, str]] = []
        self._lock = threading.Lock()

    def run(self, caller: int) -> None:
        sent = 0
        while not self.stop.is_set():
            one = transfer(f"inn-{caller}-{sent}-{fresh('i')}", self.debit, self.credit)
            try:
                reply = self.stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[one]), timeout=30)
                outcome = None if reply.results[0].code == pb.OK else (grpc.StatusCode.OK, str(reply.results[0]))
            except grpc.RpcError as error:
                outcome = (error.code(), str(error.details()))
            with self._lock:
                if outcome is None:
                    self.answered += 1
                else:
                    self.failures.append(outcome)
            sent += 1


def _beside_innocents(
    stub: ledger_pb2_grpc.LedgerStub, neighbour: Callable[[str, str], None], callers: int = 24
) -> Innocents:
    """Run `neighbour(debit, credit)` while `callers` innocents send one event each to its slot."""
    debit, credit = open_pair(stub)
    innocents = Innocents(stub, debit, credit)
    with ThreadPoolExecutor(callers) as pool:
        running = [pool.submit(innocents.run, caller) for caller in range(callers)]
        time.sleep(0.3)  # they are flowing
        try:
            neighbour(debit, credit)
        finally:
            innocents.stop.set()
            for future in running:
                future.result()
    return innocents


def test_an_innocent_caller_is_unaffected_by_a_neighbours_full_batch(
    cluster: LocalCluster, router: ledger_pb2_grpc.LedgerStub
) -> None:
    refusals: list[str] = []

    def neighbour(debit: str, credit: str) -> None:
        for round_ in range(4):
            full = [transfer(f"big-{round_}-{i}-{fresh('b')}", debit, credit) for i in range(BATCH_EVENTS_MAX)]
            reply = router.CreateTransfers(pb.CreateTransfersRequest(transfers=full), timeout=60)
            assert [r.code for r in reply.results] == [pb.OK] * BATCH_EVENTS_MAX
            over = [*full, transfer(fresh("over"), debit, credit)]
            error = refusal(router.CreateTransfers, pb.CreateTransfersRequest(transfers=over), 60)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            refusals.append(str(error.details()))

    innocents = _beside_innocents(router, neighbour)
    assert innocents.failures == [], innocents.failures[:5]
    assert innocents.answered >= 24
    for details in refusals:
        assert f"{BATCH_EVENTS_MAX + 1} events, more than the limit of {BATCH_EVENTS_MAX}" in details, details
        assert_no_address(details, cluster)


def test_a_batch_a_node_refuses_fails_its_caller_alone_and_names_no_node_address(small: LocalCluster) -> None:
    refusals: list[str] = []
    with channel(small.address, "service") as to_router:
        stub = ledger_pb2_grpc.LedgerStub(to_router)

        def neighbour(debit: str, credit: str) -> None:
            # Within the router's limit, over the node's: the node refuses it whole.
            for round_ in range(10):
                batch = [transfer(f"over-{round_}-{i}", debit, credit) for i in range(SMALL_BATCH_EVENTS_MAX + 500)]
                error = refusal(stub.CreateTransfers, pb.CreateTransfersRequest(transfers=batch), 60)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
                refusals.append(str(error.details()))

        innocents = _beside_innocents(stub, neighbour)
        assert innocents.failures == [], innocents.failures[:5]
        assert innocents.answered >= 24
        for details in refusals:
            assert f"more than the limit of {SMALL_BATCH_EVENTS_MAX}" in details, details
            assert_no_address(details, small)
        debit = innocents.debit
        page = stub.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=debit, limit=1000), timeout=30)
        assert page.code == pb.OK and not any(t.id.startswith("over-") for t in page.transfers)


# --- files --------------------------------------------------------------------------------------


def _assert_private(directory: str, skip: tuple[str, ...] = ()) -> int:
    """Every directory under `directory` (itself included) is 0700 and every file 0600, but
    those in `skip` (made by the test harness, not the process); the count of files checked."""
    files = 0
    for root, _, names in os.walk(directory):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, (root, oct(os.stat(root).st_mode))
        for name in names:
            path = os.path.join(root, name)
            if path in skip:
                continue
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, (path, oct(os.stat(path).st_mode))
            files += 1
    return files


def test_a_nodes_data_directory_is_0700_and_its_files_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "node-data"
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)  # as an operator's mkdir leaves it
    process = NodeProcess(str(data_dir), log_path=str(tmp_path / "node.log")).start()
    node = NodeHandle(process)
    try:
        debit, credit = open_pair(node.ledger)
        assert node.transfers(transfer(fresh("t"), debit, credit))[0].code == pb.OK
    finally:
        node.close()
        assert process.stop() == 0, process.log_tail()
    assert _assert_private(str(data_dir)) >= 3  # RocksDB's CURRENT, MANIFEST, write-ahead log, ...


def test_a_routers_data_directory_is_0700_and_its_files_0600(cluster: LocalCluster) -> None:
    assert cluster.router is not None
    assert _assert_private(cluster.router.data_dir, skip=(cluster.router.log_path,)) >= 1  # the shard map


def test_coalescers_of_callers_gone_are_dropped(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A router keeps a coalescer per (node, method, caller); callers come and go, and the idle
    ones are dropped past routing.COALESCERS_KEPT, so many callers over time cost no memory."""
    monkeypatch.setattr(routing, "COALESCERS_KEPT", 4)
    with channel(cluster.address, "service") as to_router:
        debit, _credit = open_pair(ledger_pb2_grpc.LedgerStub(to_router))

    async def many_callers() -> int:
        client = await LedgerClient.connect(cluster.address)
        try:
            router = client._routing
            for index in range(20):
                token = authz.CALLER.set(Identity("service", f"passer-{index}"))
                try:
                    (found,) = await router.lookup_accounts([debit], timeout_s=10)
                finally:
                    authz.CALLER.reset(token)
                assert found.code == pb.OK, found
            return len(router._coalescers)
        finally:
            await client.close()

    # One lookup per caller: each caller's coalescer is idle by the time the next caller comes.
    assert asyncio.run(many_callers()) <= 4 + 1
