"""One ledger over many nodes: the router, the SDK, the shard map and fencing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.ledger import (
    Account,
    AccountChange,
    AccountFlags,
    AccountStatus,
    ChangeKind,
    LedgerClient,
    Result,
    ResultCode,
    SyncLedgerClient,
    Transfer,
    TransferFlags,
    TransferState,
)
from cluster.commands import LocalCluster
from cluster.local import NodeProcess, ProcessFailed, RouterProcess
from proto import cluster_pb2, cluster_pb2_grpc, ledger_pb2 as pb, ledger_pb2_grpc
from router.routing import Coalescer
from router.shardmap import ShardMap
from tests.conftest import channel, fresh

CNY = 156


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = LocalCluster(str(tmp_path_factory.mktemp("cluster")), nodes=3, port=0).start()
    yield running
    running.stop()


def customer(tag: str) -> tuple[str, str]:
    """A customer's deposit and loan accounts: one hash tag, so one slot."""
    return f"{{{tag}}}:deposit", f"{{{tag}}}:loan"


def test_sdk_enums_mirror_the_proto() -> None:
    assert {c.name: c.value for c in ResultCode} == dict(pb.ResultCode.items())
    assert {f"TRANSFER_{s.name}": s.value for s in TransferState} == dict(pb.TransferState.items())
    assert {s.name: s.value for s in AccountStatus} == dict(pb.AccountStatus.items())
    assert {k.name: k.value for k in ChangeKind} == dict(pb.ChangeKind.items())


def test_a_value_a_newer_server_sends_is_unknown_not_an_error() -> None:
    """A rolling upgrade: a node newer than this SDK answers a result code it does not know (as
    STORED_DATA_INCONSISTENT was to the last version). It reads as UNKNOWN_<n>, after the call
    acted, instead of raising ValueError in the caller."""
    newer = pb.EventResult(code=200, state=77)
    result = Result.from_proto(newer)
    assert (result.code.name, int(result.code), result.ok) == ("UNKNOWN_200", 200, False)
    assert (result.state.name, int(result.state)) == ("UNKNOWN_77", 77)
    assert ResultCode(1) is ResultCode.OK and len(ResultCode) == len(pb.ResultCode.items())


def test_a_lone_call_goes_at_once_and_calls_behind_one_in_flight_go_together() -> None:
    """Batching costs nothing when idle: a coalescer with nothing in flight sends on the loop's
    next turn (calls of that turn together), not `delay_s` later; behind a request in flight,
    calls gather into the next one. (The coalescer's logic alone: `send` stands for the node.)"""

    async def main() -> list[list[int]]:
        sent: list[list[int]] = []
        release = asyncio.Event()

        async def send(events: list[int], fence: dict[int, int]) -> list[int]:
            sent.append(list(events))
            if len(sent) == 1:
                await release.wait()
            return [event * 10 for event in events]

        coalescer = Coalescer(send, events_max=100, delay_s=30.0, inflight_max=1)
        first, second = coalescer.submit([1], {}), coalescer.submit([2], {})  # one turn: one request
        await asyncio.sleep(0.05)
        assert sent == [[1, 2]]  # not 30 s later
        third, fourth = coalescer.submit([3], {}), coalescer.submit([4, 5], {})
        await asyncio.sleep(0.05)
        assert sent == [[1, 2]]  # behind the request in flight
        release.set()
        assert await asyncio.gather(first, second, third, fourth) == [[10], [20], [30], [40, 50]]
        return sent

    assert asyncio.run(main()) == [[1, 2], [3, 4, 5]]


def test_the_router_seeds_a_balanced_map_and_reports_status(cluster: LocalCluster) -> None:
    with channel(cluster.address, "operator") as to_router:
        status = cluster_pb2_grpc.ClusterStub(to_router).Status(cluster_pb2.StatusRequest(), timeout=10)
    assert status.slots_total == 4096
    assert sorted(n.slots for n in status.nodes) == [1365, 1365, 1366]
    assert all(n.reachable and n.slots_owned == n.slots for n in status.nodes)
    printed = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "cluster", "status", "--router", cluster.address, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert {n["address"] for n in json.loads(printed.stdout)["nodes"]} == {n.address for n in cluster.nodes}


def test_step_down_needs_replicas_and_says_so_through_the_cli(cluster: LocalCluster) -> None:
    node = cluster.nodes[0].address
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "cluster", "step-down", "--router", cluster.address, "--address", node],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "FAILED_PRECONDITION: step-down needs replicas" in done.stderr, done.stderr
    with channel(cluster.address, "operator") as to_router:
        stub = cluster_pb2_grpc.ClusterStub(to_router)
        assert stub.Resume(cluster_pb2.ResumeRequest(address=node), timeout=10).state == cluster_pb2.NODE_ACTIVE
        with pytest.raises(grpc.RpcError) as refused:
            stub.StepDown(cluster_pb2.StepDownRequest(address="no-port"), timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "address: 'no-port' is not HOST:PORT"


@pytest.mark.parametrize("via_router", [False, True])
def test_the_sdk_opens_accounts_moves_money_and_reads_history(cluster: LocalCluster, via_router: bool) -> None:
    async def scenario() -> None:
        async with await LedgerClient.connect(cluster.address, via_router=via_router) as ledger:
            tags = [fresh("c") for _ in range(12)]  # spread over the three nodes
            accounts = []
            for tag in tags:
                deposit, loan = customer(tag)
                accounts += [
                    Account(deposit, CNY, 2001, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                    Account(loan, CNY, 1301),
                ]
            assert [r.code for r in await ledger.create_accounts(accounts)] == [ResultCode.OK] * 24
            transfers = [
                Transfer(f"draw-{t}", customer(t)[1], customer(t)[0], 1000 + i, CNY, 1) for i, t in enumerate(tags)
            ]
            results = await ledger.create_transfers(transfers)
            assert all(r.ok and r.state is TransferState.POSTED for r in results)
            assert [r.code for r in await ledger.create_transfers(transfers)] == [ResultCode.EXISTS] * 12
            deposits = await ledger.lookup_accounts([customer(t)[0] for t in tags] + ["nobody"])
            assert [a.balance if a else None for a in deposits] == [1000 + i for i in range(12)] + [None]
            hold = Transfer(
                "hold", customer(tags[0])[0], customer(tags[0])[1], 600, CNY, 2, flags=TransferFlags.PENDING
            )
            post = Transfer(
                "post", customer(tags[0])[0], pending_id="hold", flags=TransferFlags.POST_PENDING, amount=250
            )
            assert [r.code for r in await ledger.create_transfers([hold, post])] == [ResultCode.OK, ResultCode.OK]
            page = await ledger.get_account_transfers(customer(tags[0])[0], newest_first=True)
            assert [(t.id, t.state) for t in page.transfers] == [
                ("post", TransferState.POSTED),
                ("hold", TransferState.PENDING),
                (f"draw-{tags[0]}", TransferState.POSTED),
            ]
            [looked] = await ledger.lookup_transfers([(customer(tags[0])[0], "hold")])
            assert looked is not None and (looked.state, looked.amount_posted) == (TransferState.POSTED, 250)
            freeze = AccountChange(fresh("chg"), customer(tags[1])[0], ChangeKind.FREEZE)
            assert (await ledger.change_accounts([freeze]))[0].ok
            [blocked] = await ledger.create_transfers(
                [Transfer("late", customer(tags[1])[1], customer(tags[1])[0], 1, CNY, 1)]
            )
            assert blocked.code is ResultCode.CREDIT_ACCOUNT_FROZEN

    asyncio.run(scenario())


def test_a_client_with_a_stale_map_is_corrected_and_never_applies_twice(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        async with await LedgerClient.connect(cluster.address) as ledger:
            real = ledger._maps.current()
            tags = [fresh("s") for _ in range(9)]
            accounts = [Account(a, CNY, 1) for t in tags for a in customer(t)]
            assert all(r.ok for r in await ledger.create_accounts(accounts))
            # A stale map: every slot on the wrong node, and at an older version and epoch.
            nodes = sorted(real.nodes)
            wrong = tuple(nodes[(nodes.index(owner) + 1) % len(nodes)] for owner in real.owners)
            ledger._maps._map = ShardMap(0, wrong, tuple(e - 1 for e in real.epochs), dict(real.nodes))
            transfers = [Transfer(f"stale-{t}", customer(t)[1], customer(t)[0], 7, CNY, 1) for t in tags]
            assert [r.code for r in await ledger.create_transfers(transfers)] == [ResultCode.OK] * 9
            assert ledger._maps.current().version == real.version  # refreshed from the router
            assert [a.balance for a in await ledger.lookup_accounts([customer(t)[0] for t in tags])] == [7] * 9
            # Fenced with an old epoch on the right node: still refused, then corrected.
            ledger._maps._map = ShardMap(0, real.owners, tuple(e - 1 for e in real.epochs), dict(real.nodes))
            assert [r.code for r in await ledger.create_transfers(transfers)] == [ResultCode.EXISTS] * 9
            assert [a.balance for a in await ledger.lookup_accounts([customer(t)[0] for t in tags])] == [7] * 9

    asyncio.run(scenario())


def test_callers_that_find_their_map_stale_together_share_the_fetch(cluster: LocalCluster) -> None:
    """Hundreds of calls retrying at once (a node failed) refresh the SDK's map with a few
    fetches, not one each in turn (which held the last of 300 callers for 6-9 s)."""

    async def scenario() -> tuple[int, list[int]]:
        async with await LedgerClient.connect(cluster.address) as ledger:
            maps = ledger._maps
            seen = maps.current().version
            fetched = 0
            fetch = maps.fetch

            async def counted() -> ShardMap:
                nonlocal fetched
                fetched += 1
                return await fetch()

            maps.fetch = counted  # type: ignore[method-assign]  # the real fetch, counted
            versions = await asyncio.gather(*(maps.refresh(seen) for _ in range(200)))
            return fetched, [m.version for m in versions]

    fetched, versions = asyncio.run(scenario())
    assert 1 <= fetched <= 2, fetched  # one in flight when the rest ask: they take the next, or it
    assert set(versions) == {versions[0]}


def test_a_refresh_never_waits_on_a_fetch_that_has_ended(cluster: LocalCluster) -> None:
    """A fetch ends and its callbacks are queued; a caller that refreshes before they run must
    start a new fetch, not await the ended one again and again (that spun the SDK's loop
    forever and hung every call, as a node failed over under load)."""

    async def scenario() -> int:
        async with await LedgerClient.connect(cluster.address) as ledger:
            maps = ledger._maps
            seen = maps.current().version
            ended: asyncio.Future[ShardMap] = asyncio.get_running_loop().create_future()
            ended.set_result(maps.current())
            maps._fetching = ended  # ended, not yet cleared by its callback
            maps._fetches_started += 1
            fresh = await asyncio.wait_for(maps.refresh(seen), 10)
            return fresh.version

    assert asyncio.run(scenario()) >= 1


def test_a_retry_pause_ends_when_the_router_has_a_newer_map(cluster: LocalCluster) -> None:
    """The SDK's pause between retries (`newer`) ends as soon as the routers hold a newer map
    (their WatchShardMap stream says so), and lasts its whole length when they do not: after
    a failover, callers go on at once instead of up to a backoff later."""

    async def scenario() -> tuple[int, int, float, int, float]:
        async with await LedgerClient.connect(cluster.address) as ledger:
            maps = ledger._maps
            real = maps.current()
            loop = asyncio.get_running_loop()
            behind = ShardMap(real.version - 1, real.owners, real.epochs, dict(real.nodes))
            maps._map = behind  # the SDK one version behind the routers
            started = loop.time()
            caught_up = await maps.newer(behind.version, 60)
            took_s = loop.time() - started
            started = loop.time()
            same = await maps.newer(real.version, 0.3)
            return real.version, same.version, loop.time() - started, caught_up.version, took_s

    real, same, waited_s, caught_up, took_s = asyncio.run(scenario())
    assert same == real and waited_s >= 0.29, (same, real, waited_s)  # nothing newer: the whole pause
    assert caught_up == real and took_s < 30, (caught_up, real, took_s)  # pushed, not timed out


def test_the_router_refuses_a_malformed_batch_before_any_node_applies_part(cluster: LocalCluster) -> None:
    with SyncLedgerClient(cluster.address) as ledger:
        tags = [fresh("m") for _ in range(6)]
        assert all(r.ok for r in ledger.create_accounts([Account(a, CNY, 1) for t in tags for a in customer(t)]))
    good = [
        pb.Transfer(
            id=f"g{t}", debit_account_id=customer(t)[1], credit_account_id=customer(t)[0], amount=1, ledger=CNY, code=1
        )
        for t in tags
    ]
    bad = pb.Transfer(
        id="bad",
        debit_account_id=customer(tags[0])[1],
        credit_account_id=customer(tags[0])[0],
        amount=1,
        ledger=CNY,
        code=1,
        flags=1 << 7,
    )
    with channel(cluster.address, "service") as to_router:
        stub = ledger_pb2_grpc.LedgerStub(to_router)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[*good, bad]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "transfers[6].flags: unknown bits 0x80" in str(caught.value.details())
        looked = stub.LookupAccounts(pb.LookupAccountsRequest(ids=[customer(t)[0] for t in tags]), timeout=10)
        assert [r.account.credits_posted for r in looked.results] == [0] * 6
        with pytest.raises(grpc.RpcError) as caught:
            stub.LookupAccounts(pb.LookupAccountsRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_restarted_router_keeps_its_map_and_clients_carry_on(tmp_path: Path) -> None:
    running = LocalCluster(str(tmp_path), nodes=2, port=0).start()
    try:
        assert running.router is not None
        with SyncLedgerClient(running.address) as ledger:
            deposit, loan = customer("r1")
            ledger.create_accounts([Account(deposit, CNY, 1), Account(loan, CNY, 1)])
            assert ledger.create_transfers([Transfer("a", loan, deposit, 5, CNY, 1)])[0].ok
            before = ledger._run(ledger._client._maps.fetch())
            running.router.stop()
            # Smart clients do not need the router to keep working.
            assert ledger.create_transfers([Transfer("b", loan, deposit, 5, CNY, 1)])[0].ok
            running.router.start()
            after = ledger._run(ledger._client._maps.fetch())
            # The same map, stored once more by the restarted controller under its new term.
            assert (after.owners, after.epochs, after.cluster_id) == (before.owners, before.epochs, before.cluster_id)
            assert (after.version, after.term) == (before.version + 1, before.term + 1)
            with SyncLedgerClient(running.address, via_router=True) as routed:
                assert routed.create_transfers([Transfer("c", loan, deposit, 5, CNY, 1)])[0].ok
                account = routed.lookup_accounts([deposit])[0]
                assert account is not None and account.balance == 15
    finally:
        running.stop()


def test_a_router_given_standalone_nodes_says_why_it_cannot_adopt_them(tmp_path: Path) -> None:
    # Two nodes started without --join each own every slot at epoch 1: a map that gives
    # half of them to the other node would take slots away without moving their data.
    first, second = NodeProcess(str(tmp_path / "a")).start(), NodeProcess(str(tmp_path / "b")).start()
    try:
        router = RouterProcess(str(tmp_path / "r"), ["--nodes", f"{first.address},{second.address}"])
        with pytest.raises(ProcessFailed, match="start cluster nodes with --join"):
            router.start()
    finally:
        first.stop()
        second.stop()


def test_watch_shard_map_sends_the_current_map_to_a_new_watcher(cluster: LocalCluster) -> None:
    with channel(cluster.address, "service") as to_router:
        stream = cluster_pb2_grpc.ClusterStub(to_router).WatchShardMap(
            cluster_pb2.WatchShardMapRequest(known_version=0), timeout=10
        )
        first = next(iter(stream))
        stream.cancel()
    watched = ShardMap.from_proto(first)
    assert watched.version >= 1 and set(watched.nodes) == {n.address for n in cluster.nodes}
