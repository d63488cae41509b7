"""Growing and shrinking a cluster online: slot moves (node/slotmove.py, router/migration.py).

The bank test (tests/bank.py) runs while `yunkai cluster add-node` and `drain-node` move
slots, and while processes are killed with SIGKILL at each point of a move (the router
pauses there through its fault-point hook, and the test kills the source, the target or the
router itself). Every run ends with the bank checks (every acknowledged transfer exactly
once, totals conserved, balances equal to their transfers, histories complete) and a look
into each node's RocksDB: every key lives on its slot's owner only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from rocksdict import Options, Rdict

from cluster.commands import LocalCluster
from cluster.local import NodeProcess, ServiceProcess
from node.changelog import key_digest
from node.keys import account_key, slot_of_key
from proto import cluster_pb2, ledger_pb2 as pb, ledger_pb2_grpc, node_pb2, node_pb2_grpc
from router.shardmap import ShardMap
from router.slots import SLOTS_TOTAL_DEFAULT, slot_of
from tests.bank import BankRun, fetch_shard_map
from tests.conftest import LONG, channel
from tests.test_bank import _assert_clean, _bank_run, _logs, sdk_clients

pytestmark = pytest.mark.timeout(240)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_SLOTS = 256  # the crash tests move S/2 slots: fewer make each run short
PAUSE_S = 3.0


def yunkai(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout_s
    )


def add_node(router: str, node: str, *extra: str) -> None:
    done = yunkai("cluster", "add-node", "--router", router, "--address", node, *extra)
    assert done.returncode == 0, f"add-node exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def keys_off_their_owner(processes: list[NodeProcess], shard_map: ShardMap) -> list[str]:
    """Every key in a node's RocksDB whose slot the map gives to another node (run after
    the nodes have stopped)."""
    problems: list[str] = []
    for node in processes:
        db = Rdict(os.path.join(node.data_dir, "rocksdb"), Options(raw_mode=True))
        try:
            foreign: dict[int, int] = {}
            for raw in db.keys():  # noqa: SIM118 (rocksdict iterates its keys here, not a dict)
                slot = slot_of_key(bytes(raw))
                if slot is None:  # node metadata
                    continue
                if shard_map.owners[slot] != node.address:
                    foreign[slot] = foreign.get(slot, 0) + 1
            problems += [
                f"{node.address} still holds {count} keys of slot {slot}, owned by {shard_map.owners[slot]}"
                for slot, count in sorted(foreign.items())
            ]
        finally:
            db.close()
    return problems


def wait_for_log(process: ServiceProcess, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(process.log_path, errors="replace") as handle:
            if text in handle.read():
                return
        time.sleep(0.05)
    raise AssertionError(f"{process.kind} {process.address} never logged {text!r}:\n{process.log_tail()}")


@contextmanager
def cluster_of(tmp_path_factory: pytest.TempPathFactory, nodes: int, **options: object) -> Iterator[LocalCluster]:
    cluster = LocalCluster(str(tmp_path_factory.mktemp("grow")), nodes=nodes, port=0, **options).start()  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.stop()


def moving(run: BankRun) -> BankRun:
    """The bank run, told that slots move under it (any transfer may cross nodes for a while)."""
    run.accounts = dataclasses.replace(run.accounts, slots_move=True)
    return run


def test_add_node_then_drain_node_while_the_bank_test_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Three nodes grow to four and shrink back to three under the bank test: every slot of
    the drained node moves (256 slots; YUNKAI_LONG_TESTS=1: the default 4,096, ~100 s)."""
    seed = random.randrange(1 << 32)
    slots_total = SLOTS_TOTAL_DEFAULT if LONG else SMALL_SLOTS
    with cluster_of(tmp_path_factory, 3, slots_total=slots_total) as cluster, sdk_clients(cluster) as sdks:
        fourth = cluster.new_node("node-4")
        drained = cluster.nodes[0]
        moved: list[str] = []

        def grow_then_shrink(rng: random.Random) -> None:
            time.sleep(rng.uniform(0.3, 0.8))
            fourth.start()
            cluster.nodes.append(fourth)
            add_node(cluster.address, fourth.address)
            moved.append("added")
            status = fetch_shard_map(cluster.address).counts()
            assert sorted(status.values()) == [slots_total // 4] * 4, status
            done = yunkai("cluster", "drain-node", "--router", cluster.address, "--address", drained.address)
            assert done.returncode == 0, f"drain-node exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            moved.append("drained")

        run = moving(_bank_run(cluster, 0.3, seed, sdks))
        run.chaos = grow_then_shrink
        report = run.run()
        assert moved == ["added", "drained"], moved
        final = fetch_shard_map(cluster.address)
        assert drained.address not in final.nodes
        share, extra = divmod(slots_total, 3)  # 4,096: 1,365, 1,365 and 1,366
        assert sorted(final.counts().values()) == [share] * (3 - extra) + [share + 1] * extra, final.counts()
        _assert_clean(report, cluster)
        assert not keys_off_their_owner(cluster.nodes, final)


POINTS = ["recorded", "copied", "frozen", "committed"]
VICTIMS = ["source", "target", "router"]


@pytest.mark.parametrize("victim", VICTIMS)
@pytest.mark.parametrize("point", POINTS)
def test_a_kill_9_at_any_point_of_a_move_loses_and_doubles_nothing(
    tmp_path_factory: pytest.TempPathFactory, point: str, victim: str
) -> None:
    """One node and a joining one: the first wave of add-node pauses at `point`, where the
    source, the target or the router is killed and restarted; add-node then finishes."""
    seed = random.randrange(1 << 32)
    pause = {"YUNKAI_MOVE_PAUSE_AT": point, "YUNKAI_MOVE_PAUSE_S": str(PAUSE_S)}
    with (
        cluster_of(tmp_path_factory, 1, slots_total=SMALL_SLOTS, router_env=pause) as cluster,
        sdk_clients(cluster) as sdks,
    ):
        assert cluster.router is not None
        source, target = cluster.nodes[0], cluster.new_node("node-2")
        process = {"source": source, "target": target, "router": cluster.router}[victim]
        notes: list[str] = []

        def crash_during_a_move(rng: random.Random) -> None:
            target.start()
            cluster.nodes.append(target)
            started = yunkai(
                "cluster", "add-node", "--router", cluster.address, "--address", target.address, "--no-wait"
            )
            assert started.returncode == 0, started.stderr
            assert cluster.router is not None
            wait_for_log(cluster.router, "paused at a fault point")
            process.kill()
            if victim == "router":
                cluster.router.env = {}  # the restarted router does not pause again
            time.sleep(rng.uniform(0.1, 0.5))
            process.start()
            notes.append(f"kill -9 {victim} at {point}")
            if victim == "source" and point == "committed":
                notes.append(refused_on_the_old_owner(cluster.address, source))
            add_node(cluster.address, target.address)  # resumes (or follows) the job to its end

        run = moving(_bank_run(cluster, 0.0, seed, sdks))
        run.chaos = crash_during_a_move
        report = run.run()
        assert notes[0] == f"kill -9 {victim} at {point}", notes
        final = fetch_shard_map(cluster.address)
        assert sorted(final.counts().values()) == [SMALL_SLOTS // 2] * 2, final.counts()
        assert not final.migrations, final.migrations
        _assert_clean(report, cluster)
        assert not keys_off_their_owner(cluster.nodes, final), _logs(cluster)


def refused_on_the_old_owner(router: str, source: NodeProcess) -> str:
    """The source restarted after the commit and before learning of it: a write for a slot
    it lost, sent to it with its old epoch, is never applied there."""
    shard_map = fetch_shard_map(router)
    lost = next(slot for slot, epoch in enumerate(shard_map.epochs) if epoch == 2)  # moved by the first wave
    assert shard_map.owners[lost] != source.address
    debit = next(f"probe-{i}" for i in range(100_000) if slot_of(f"probe-{i}", SMALL_SLOTS) == lost)
    transfer = pb.Transfer(id="stale", debit_account_id=debit, credit_account_id="x", amount=1, ledger=1, code=1)
    with channel(source.address, "router") as to_source:
        stub = ledger_pb2_grpc.LedgerStub(to_source)
        request = pb.CreateTransfersRequest(transfers=[transfer], fence=pb.Fence(slots=[lost], epochs=[1]))
        result = stub.CreateTransfers(request, timeout=10).results[0]
        assert result.code == pb.WRONG_SLOT, pb.ResultCode.Name(result.code)
        key = pb.TransferKey(debit_account_id=debit, id="stale")
        looked = stub.LookupTransfers(pb.LookupTransfersRequest(keys=[key]), timeout=10)
        assert looked.results[0].code == pb.WRONG_SLOT
    return f"slot {lost}: a stale write to the old owner was refused"


def test_stream_messages_of_an_aborted_move_are_refused_and_change_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with cluster_of(tmp_path_factory, 2, slots_total=SMALL_SLOTS) as cluster:
        source, target = cluster.nodes
        shard_map = fetch_shard_map(cluster.address)
        slot = shard_map.slots_of(source.address)[0]
        term = shard_map.term  # the controller's: older terms are refused as a deposed controller's
        key, value = account_key(slot, "planted"), b"not an account"
        # The controller's steps as a router, the source's stream as a node.
        with channel(target.address, "router") as as_controller, channel(target.address, "node") as as_source:
            node = node_pb2_grpc.NodeStub(as_controller)
            source_stub = node_pb2_grpc.NodeStub(as_source)

            def stream(migration_id: str, *chunks: node_pb2.SlotChunk) -> grpc.RpcError | node_pb2.ImportSlotResponse:
                try:
                    return source_stub.ImportSlot(iter(chunks), timeout=10)
                except grpc.RpcError as error:
                    return error

            def chunk(migration_id: str, **fields: object) -> node_pb2.SlotChunk:
                return node_pb2.SlotChunk(migration_id=migration_id, slot=slot, **fields)  # type: ignore[arg-type]

            planted = chunk("old", ops=[node_pb2.KeyOp(key=key, value=value)])
            node.PrepareImport(
                node_pb2.PrepareImportRequest(
                    migration_id="old", slot=slot, source=source.address, controller_term=term
                )
            )
            assert node.AbortMove(
                node_pb2.AbortMoveRequest(migration_id="old", slot=slot, controller_term=term)
            ).was_active
            refused = stream("old", planted, chunk("old", last=True, digest=key_digest(key, value)))
            assert isinstance(refused, grpc.RpcError)
            assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "'old' is not staged here" in str(refused.details())

            # A newer move of the slot: the old id's messages are still refused...
            node.PrepareImport(
                node_pb2.PrepareImportRequest(
                    migration_id="new", slot=slot, source=source.address, controller_term=term
                )
            )
            refused = stream("old", planted)
            assert isinstance(refused, grpc.RpcError) and "superseded" in str(refused.details())
            # ...and left nothing: the new stream's digest counts only its own key.
            mine_id = next(f"mine-{n}" for n in range(100_000) if slot_of(f"mine-{n}", SMALL_SLOTS) == slot)
            mine, account = account_key(slot, mine_id), pb.Account(id=mine_id, ledger=1, code=1).SerializeToString()
            staged = stream(
                "new",
                chunk("new", ops=[node_pb2.KeyOp(key=mine, value=account)]),
                chunk("new", last=True, digest=key_digest(mine, account)),
            )
            assert isinstance(staged, node_pb2.ImportSlotResponse), staged
            assert staged.keys == 1
            # One stream per move: a replay of the whole stream is refused too.
            replay = stream("new", chunk("new", last=True, digest=key_digest(mine, account)))
            assert isinstance(replay, grpc.RpcError) and "already had its stream" in str(replay.details())
            assert node.AbortMove(
                node_pb2.AbortMoveRequest(migration_id="new", slot=slot, controller_term=term)
            ).was_active
        # The target never served the slot, and the source still does.
        assert fetch_shard_map(cluster.address).owners[slot] == source.address


def test_an_add_node_interrupted_by_its_router_is_resumed_by_the_restarted_controller(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pause = {"YUNKAI_MOVE_PAUSE_AT": "recorded", "YUNKAI_MOVE_PAUSE_S": "30"}
    with cluster_of(tmp_path_factory, 2, slots_total=SMALL_SLOTS, router_env=pause) as cluster:
        assert cluster.router is not None
        before = fetch_shard_map(cluster.address)
        third = cluster.new_node("node-3").start()
        cluster.nodes.append(third)
        started = yunkai("cluster", "add-node", "--router", cluster.address, "--address", third.address, "--no-wait")
        assert started.returncode == 0, started.stderr
        job_id = re.search(r"^job (\w+): add-node", started.stdout, re.M).group(1)  # type: ignore[union-attr]
        wait_for_log(cluster.router, "paused at a fault point")
        cluster.router.kill()  # kill -9 in the middle of a wave: its recorded moves are aborted at restart
        cluster.router.env = {}
        cluster.router.start()
        # The job is in the map: the restarted controller resumes it and finishes the add-node.
        deadline = time.monotonic() + 120
        state = ""
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = json.loads(yunkai("cluster", "status", "--router", cluster.address, "--json").stdout)
            state = next(job["state"] for job in status["jobs"] if job["id"] == job_id)
            if state != "running":
                break
            time.sleep(0.5)
        assert state == "done", status
        after = fetch_shard_map(cluster.address)
        assert sorted(after.counts().values()) == [85, 85, 86], after.counts()
        moved = [slot for slot in range(SMALL_SLOTS) if before.owners[slot] != after.owners[slot]]
        assert moved and all(after.owners[slot] == third.address for slot in moved)
        assert after.nodes[third.address] == cluster_pb2.NODE_ACTIVE and not after.migrations
        assert after.term == before.term + 1  # the restarted controller's
        codes = [p.stop() for p in [cluster.router, *cluster.nodes]]
        assert codes == [0, 0, 0, 0], codes
        assert not keys_off_their_owner(cluster.nodes, after)
