"""Backups and restores across real processes (node/backup.py, cluster/backup.py).

A source cluster of three nodes keeping R = 3 copies (S = 64) serves the bank test's callers
(tests/bank.py: plain, pending, posted and voided transfers, a third of them across nodes)
while `yunkai backup` takes a backup; the backup is restored into a new cluster of another
shape (two nodes, R = 2), whose outbox re-drives the legs in flight at the cut. Then:
every transfer acknowledged before the backup point is there exactly once, as stored at
the source; nothing is there the source never stored; the books balance and every balance
is what its stored transfers add up to. Also: a second backup rewrites only the slots that
changed, a damaged backup is refused naming the file, and only operators may take one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from cluster.cli import main as yunkai
from cluster.commands import LocalCluster
from node.changelog import MASK, key_digest
from proto import ledger_pb2 as pb, ledger_pb2_grpc, node_pb2, node_pb2_grpc
from router.slots import slot_of
from tests.bank import (
    BankRun,
    Load,
    Stub,
    Transport,
    check_accounts,
    cluster_accounts,
    fetch_shard_map,
    lookup_transfers,
)
from tests.conftest import NodeHandle, channel

pytestmark = pytest.mark.timeout(300)

S = 64
LEASE_MS = 600
_COMPARED = ("id", "debit_account_id", "credit_account_id", "amount", "pending_id", "flags", "timestamp", "user_data")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        str(tmp_path_factory.mktemp("source")),
        nodes=3,
        port=0,
        slots_total=S,
        replicas=3,
        node_args=["--lease-ms", str(LEASE_MS)],
    ).start()
    yield cluster
    cluster.stop()


class Recording:
    """A transport that notes each transfer's first answer (an acknowledgement) as it arrives."""

    def __init__(self, inner: Stub, acked: dict[str, int], lock: threading.Lock) -> None:
        self.inner, self.acked, self.lock = inner, acked, lock
        self.name, self.retries_inside = inner.name, inner.retries_inside

    def create_transfers(self, transfers: Sequence[pb.Transfer], timeout_s: float) -> list[pb.EventResult]:
        results = self.inner.create_transfers(transfers, timeout_s)
        with self.lock:
            for transfer, result in zip(transfers, results, strict=True):
                self.acked.setdefault(transfer.id, result.code)
        return results

    def lookup_accounts(self, ids: Sequence[str], timeout_s: float) -> list[pb.AccountResult]:
        return self.inner.lookup_accounts(ids, timeout_s)

    def reconnect(self) -> None:
        self.inner.reconnect()

    def close(self) -> None:
        self.inner.close()


def backup(router: str, directory: Path, *extra: str) -> int:
    return yunkai(["backup", "--router", router, "--to", str(directory), *extra])


def manifest(directory: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((directory / "manifest.json").read_text())
    return loaded


def test_a_backup_under_load_restores_into_a_new_cluster_with_every_acknowledged_transfer_once(
    source: LocalCluster, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 32)
    accounts = cluster_accounts(fetch_shard_map(source.address), 8, 12, 5_000, bank_per_node=False)
    acked: dict[str, int] = {}
    lock = threading.Lock()
    transports: list[Transport] = [Recording(Stub(source.address, retries_inside=True), acked, lock) for _ in range(3)]
    before: dict[str, int] = {}
    directory = tmp_path / "backup"

    def back_up_under_load(rng: random.Random) -> None:
        time.sleep(rng.uniform(0.8, 1.5))
        with lock:
            before.update(acked)  # acknowledged before the backup point
        assert backup(source.address, directory) == 0

    run = BankRun(
        address=source.address,
        accounts=dataclasses.replace(accounts, slots_move=True),
        transports=transports,
        seed=seed,
        load=Load(batch_events_max=20, same_slot_share=0.3, cross_node_share=0.4, give_up_s=120.0),
        chaos=back_up_under_load,
        load_after_chaos_s=1.0,
    )
    report = run.run()
    assert not report.problems, report.explain(source.log_tails(20))
    assert before, "nothing was acknowledged before the backup"
    written = manifest(directory)
    assert written["slots_total"] == S and written["previous"] is None

    with _started(tmp_path) as restored:
        assert yunkai(["restore", "--from", str(directory), "--router", restored.address]) == 0
        reader = Stub(restored.address)
        try:
            found = lookup_transfers(reader, list(report.sent.values()))
            records = {i: r.transfer for i, r in found.items() if r.code == pb.OK}
            problems = check_accounts(reader, accounts, records)
        finally:
            reader.close()
    stored = report.records  # the source's, after its own load quiesced
    missing = [i for i in before if i in stored and i not in records]
    assert not missing, f"acknowledged before the backup point, not restored: {missing[:20]}"
    differ = [
        i for i in before if i in stored and any(getattr(records[i], f) != getattr(stored[i], f) for f in _COMPARED)
    ]
    assert not differ, f"restored otherwise than stored: {[(records[i], stored[i]) for i in differ[:3]]}"
    invented = [i for i, r in records.items() if i not in stored or r.timestamp != stored[i].timestamp]
    assert not invented, f"restored, never stored by the source: {invented[:20]}"
    assert not [i for i, r in records.items() if r.state == pb.TRANSFER_IN_FLIGHT], "the restored outbox did not drain"
    assert not problems, problems[:20]
    print(f"{len(before)} acknowledged before the backup point, {len(records)} of {len(stored)} restored")


def _started(tmp_path: Path) -> _Running:
    return _Running(LocalCluster(str(tmp_path / "restored"), nodes=2, port=0, slots_total=S, replicas=2))


class _Running:
    """A cluster started for a `with` block and stopped after it."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def __enter__(self) -> LocalCluster:
        return self.cluster.start()

    def __exit__(self, *_exc: object) -> None:
        self.cluster.stop()


def test_a_second_backup_rewrites_only_the_slots_that_changed(source: LocalCluster, tmp_path: Path) -> None:
    directory = tmp_path / "backup"
    assert backup(source.address, directory) == 0
    first = manifest(directory)
    files = sorted(os.listdir(directory / "slots"))
    assert len(files) == S

    assert backup(source.address, directory) == 0
    second = manifest(directory)
    assert second["previous"] == first["backup_id"]
    assert second["totals"] == {**first["totals"], "slots_written": 0, "bytes_written": 0, "slots_unchanged": S}  # type: ignore[dict-item]
    assert sorted(os.listdir(directory / "slots")) == files, "an unchanged slot's file was written again"

    account = "{incremental}:a"
    with channel(source.address) as to_router:
        ledger = ledger_pb2_grpc.LedgerStub(to_router)
        opened = ledger.CreateAccounts(
            pb.CreateAccountsRequest(
                accounts=[pb.Account(id=account, ledger=1, code=1), pb.Account(id="{incremental}:b", ledger=1, code=1)]
            ),
            timeout=10,
        )
        assert [r.code for r in opened.results] == [pb.OK, pb.OK]
    assert backup(source.address, directory) == 0
    third = manifest(directory)
    written = [e["slot"] for e in third["slots"] if e["written_by"] == third["backup_id"]]  # type: ignore[attr-defined, index]
    assert written == [slot_of(account, S)], written
    assert len(os.listdir(directory / "slots")) == S + 1
    assert (directory / "manifests" / f"{first['backup_id']}.json").exists()


def test_without_followers_an_unchanged_slot_is_digested_on_its_node_and_not_sent(tmp_path: Path) -> None:
    single = LocalCluster(str(tmp_path / "single"), nodes=2, port=0, slots_total=S, replicas=1)
    with _Running(single) as cluster:
        directory = tmp_path / "backup"
        assert backup(cluster.address, directory) == 0
        assert backup(cluster.address, directory) == 0
        assert manifest(directory)["totals"]["slots_written"] == 0  # type: ignore[index]
        with channel(cluster.address) as to_router:
            reply = ledger_pb2_grpc.LedgerStub(to_router).CreateAccounts(
                pb.CreateAccountsRequest(accounts=[pb.Account(id="single", ledger=1, code=1)]), timeout=10
            )
            assert reply.results[0].code == pb.OK
        assert backup(cluster.address, directory) == 0
        last = manifest(directory)
        written = [e["slot"] for e in last["slots"] if e["written_by"] == last["backup_id"]]  # type: ignore[attr-defined, index]
        assert written == [slot_of("single", S)], written
        assert not any(e["replicated"] for e in last["slots"])  # type: ignore[attr-defined, index]


def test_a_damaged_backup_is_refused_naming_the_file_and_nothing_is_restored(
    source: LocalCluster, tmp_path: Path
) -> None:
    directory = tmp_path / "backup"
    assert backup(source.address, directory) == 0
    entry = max(manifest(directory)["slots"], key=lambda e: e["bytes"])  # type: ignore[call-overload]
    damaged = directory / entry["file"]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    # The real command line; the router is never reached (files are checked first).
    refused = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "restore", "--from", str(directory), "--router", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1, refused
    assert str(damaged) in refused.stderr and "sha256" in refused.stderr, refused.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    assert yunkai(["restore", "--from", str(empty), "--router", "127.0.0.1:1"]) == 1
    shutil.copytree(directory, tmp_path / "edited")
    text = (tmp_path / "edited" / "manifest.json").read_text()
    (tmp_path / "edited" / "manifest.json").write_text(text.replace('"replicas": 3', '"replicas": 2'))
    assert yunkai(["restore", "--from", str(tmp_path / "edited"), "--router", "127.0.0.1:1"]) == 1

    # A cluster that holds data is no restore target: refused, and its data left as it was.
    assert backup(source.address, tmp_path / "again") == 0
    assert yunkai(["restore", "--from", str(tmp_path / "again"), "--router", source.address]) == 1
    assert backup(source.address, tmp_path / "again") == 0
    assert manifest(tmp_path / "again")["totals"]["slots_written"] == 0  # type: ignore[index]


def test_only_an_operator_may_back_up_and_every_backup_call_is_audited(source: LocalCluster, tmp_path: Path) -> None:
    primary = fetch_shard_map(source.address).owners[0]
    for role in ("service", "router", "node"):
        with channel(primary, role) as to_node:
            stub = node_pb2_grpc.NodeStub(to_node)
            with pytest.raises(grpc.RpcError) as refused:
                stub.HoldCreditLegs(node_pb2.HoldCreditLegsRequest(backup_id="x", hold_ms=100), timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, (role, refused.value)
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.ReadCut(node_pb2.ReadCutRequest(backup_id="x", slots=[0]), timeout=10))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, (role, refused.value)
    assert backup(source.address, tmp_path / "service", "--tls-name", "service") == 1
    assert not (tmp_path / "service" / "manifest.json").exists()

    assert backup(source.address, tmp_path / "operator") == 0
    node = next(n for n in source.nodes if n.address == primary)
    lines = [json.loads(line) for line in Path(node.data_dir, "audit.log").read_text().splitlines()]
    methods = {(line.get("method", ""), line.get("caller", ""), line.get("status", "")) for line in lines}
    for method in ("HoldCreditLegs", "CutSlots", "ReleaseCreditLegs", "ReadCut"):
        name = f"/yunkai.node.v1.Node/{method}"
        assert any(m == name and "/operator/" in c and s == "OK" for m, c, s in methods), (method, methods)
        assert any(m == name and "/service/" in c and s == "PERMISSION_DENIED" for m, c, s in methods) or method in (
            "CutSlots",
            "ReleaseCreditLegs",
        ), (method, methods)


def test_a_restore_whose_clock_is_far_past_this_hosts_is_refused_and_the_node_stamps_on_from_its_own(
    tmp_path: Path,
) -> None:
    """A backup's last chunk carries the ledger clock its slot was written under. One far past
    this host's (a forged or broken backup) would pin every later timestamp there, past what
    history keys hold: refused by name, nothing restored, and the node goes on serving."""
    target = LocalCluster(str(tmp_path / "target"), nodes=1, port=0, slots_total=S).start()
    try:
        node = NodeHandle(target.nodes[0])
        with channel(node.process.address, "operator") as operator:
            restore = node_pb2_grpc.NodeStub(operator).RestoreSlot
            ahead = node_pb2.RestoreChunk(slot=5, last=True, keys=0, digest=0, clock_ns=2**63)
            with pytest.raises(grpc.RpcError) as refused:
                restore(iter([ahead]), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
            assert "clock_ns" in str(refused.value.details()), refused.value.details()
        assert node.accounts(pb.Account(id="clk-a", ledger=1, code=1), pb.Account(id="clk-b", ledger=1, code=1)) == [
            pb.OK,
            pb.OK,
        ]
        [moved] = node.transfers(
            pb.Transfer(id="t1", debit_account_id="clk-a", credit_account_id="clk-b", amount=7, ledger=1, code=1)
        )
        assert moved.code == pb.OK, moved
        stamped = node.transfer("clk-a", "t1").transfer.timestamp
        assert 0 < stamped < time.time_ns() + 60 * 10**9, stamped
        node.channel.close()
    finally:
        target.stop()


def test_a_restored_account_no_write_of_ours_could_leave_is_refused_and_nothing_is_restored(tmp_path: Path) -> None:
    """An account in a backup with a negative balance (a forged or broken file whose digest was
    made to match) would stop the committer at the first transfer touching it, and one whose
    pending no transfer claims would let a later claim's hold settle another: the restore is
    refused naming it, nothing of the slot is written, and the node serves the slot empty."""
    target = LocalCluster(str(tmp_path / "target"), nodes=1, port=0, slots_total=S).start()
    try:
        node = NodeHandle(target.nodes[0])
        account_id = next(f"neg-{n}" for n in range(10_000) if slot_of(f"neg-{n}", S) == 5)
        key = (5).to_bytes(2, "big") + b"A" + account_id.encode()
        negative = pb.Account(id=account_id, ledger=1, code=1, debits_posted=-10)
        value = negative.SerializeToString()
        chunk = node_pb2.RestoreChunk(
            slot=5, ops=[node_pb2.KeyOp(key=key, value=value)], last=True, keys=1, digest=key_digest(key, value) & MASK
        )  # its count and digest add up: only the account is wrong
        with channel(node.process.address, "operator") as operator:
            with pytest.raises(grpc.RpcError) as refused:
                node_pb2_grpc.NodeStub(operator).RestoreSlot(iter([chunk]), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
            assert "negative balance" in str(refused.value.details()), refused.value.details()
            # Each record well formed, but the account's pending is held by no transfer of the
            # slot (a pending or a transfer in flight): checked once the slot is whole.
            unclaimed = pb.Account(id=account_id, ledger=1, code=1, credits_posted=20, debits_pending=5)
            value = unclaimed.SerializeToString()
            whole = node_pb2.RestoreChunk(
                slot=5,
                ops=[node_pb2.KeyOp(key=key, value=value)],
                last=True,
                keys=1,
                digest=key_digest(key, value) & MASK,
            )
            with pytest.raises(grpc.RpcError) as refused:
                node_pb2_grpc.NodeStub(operator).RestoreSlot(iter([whole]), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
            assert "debits_pending 5" in str(refused.value.details()), refused.value.details()
        assert node.accounts(
            pb.Account(id=account_id, ledger=1, code=1), pb.Account(id="neg-other", ledger=1, code=1)
        ) == [
            pb.OK,
            pb.OK,
        ]  # the account was not restored: it is created afresh
        [moved] = node.transfers(
            pb.Transfer(id="t1", debit_account_id=account_id, credit_account_id="neg-other", amount=3, ledger=1, code=1)
        )
        assert moved.code == pb.OK, moved
        node.channel.close()
    finally:
        target.stop()
