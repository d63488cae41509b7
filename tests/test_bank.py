"""Jepsen's bank test over a cluster: a router, three nodes, and callers of every kind at once.

56 accounts (16 customers with two accounts in one slot by hash tag, 24 single accounts, half
of them DEBITS_MUST_NOT_EXCEED_CREDITS) are funded by a bank account (one per node in the
same_node variants), then six callers send random batches of 1..30 transfers: three with raw
gRPC stubs through the router, three with the SDK's smart clients straight to the nodes (two
of them share one client, whose routing core coalesces their calls). Transfers are same-slot,
cross-slot on one node, and, in the cross_node variants, between nodes; about a quarter are
pending, later posted or voided. A watcher reads every balance throughout, through the router
and through the SDK. One test runs calm; the other kills nodes with SIGKILL (one of them for
longer than a node waits for a credit leg) and restarts the router under load, and kills a
node once more when the callers are quiet. The checks are tests/bank.py's: every acknowledged
transfer exactly once with the right final state, totals conserved, no flagged account
overdrawn, balances equal to what the stored transfers add up to, histories complete.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from clients.ledger import SyncLedgerClient
from cluster.commands import LocalCluster
from cluster.local import ServiceProcess
from node.ledger_service import IN_FLIGHT_WAIT_S_DEFAULT
from tests.bank import (
    CALL_TIMEOUT_S,
    BankRun,
    Load,
    Report,
    Sdk,
    Stub,
    Transport,
    cluster_accounts,
    fetch_shard_map,
)

pytestmark = pytest.mark.timeout(180)

NODES = 3
CUSTOMERS = 16  # two accounts each, in one slot
SINGLES = 24
FUNDING = 5_000  # low enough that flagged accounts often meet their limit
ROUTER_CALLERS = 3
BATCH_EVENTS_MAX = 30
SAME_SLOT_SHARE = 0.3
CROSS_NODE_SHARE = 0.3
LOAD_S = 6.0  # without chaos
CLIENT_GIVE_UP_S = 60.0

# The same_node variants keep every transfer on one node (each node has its own bank): when
# only a cross_node variant fails, the outbox (node/outbox.py) is the suspect.
SHARES = [pytest.param(0.0, id="same_node"), pytest.param(CROSS_NODE_SHARE, id="cross_node")]


@contextmanager
def running_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(str(tmp_path_factory.mktemp("bank")), nodes=NODES, port=0).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _processes(cluster: LocalCluster) -> list[ServiceProcess]:
    assert cluster.router is not None
    return [cluster.router, *cluster.nodes]


def _logs(cluster: LocalCluster) -> str:
    return cluster.log_tails(20)


def _bank_run(cluster: LocalCluster, cross_node_share: float, seed: int, sdks: list[SyncLedgerClient]) -> BankRun:
    """The run's accounts and callers: raw stubs through the router, and SDK smart clients."""
    shared, own = sdks
    accounts = cluster_accounts(
        fetch_shard_map(cluster.address), CUSTOMERS, SINGLES, FUNDING, bank_per_node=cross_node_share == 0
    )
    transports: list[Transport] = [Stub(cluster.address, retries_inside=True) for _ in range(ROUTER_CALLERS)]
    transports += [Sdk(shared, "sdk shared"), Sdk(shared, "sdk shared"), Sdk(own, "sdk")]
    return BankRun(
        address=cluster.address,
        accounts=accounts,
        transports=transports,
        watchers=[Stub(cluster.address, retries_inside=True), Sdk(own, "sdk")],
        seed=seed,
        load=Load(
            batch_events_max=BATCH_EVENTS_MAX,
            same_slot_share=SAME_SLOT_SHARE,
            cross_node_share=cross_node_share,
            give_up_s=CLIENT_GIVE_UP_S,
        ),
        load_s=LOAD_S,
    )


@contextmanager
def sdk_clients(cluster: LocalCluster) -> Iterator[list[SyncLedgerClient]]:
    clients: list[SyncLedgerClient] = []
    try:
        for _ in range(2):
            clients.append(SyncLedgerClient(cluster.address, timeout_s=CALL_TIMEOUT_S))
        yield clients
    finally:
        for client in clients:
            client.close()


def _assert_clean(report: Report, cluster: LocalCluster) -> None:
    assert not report.problems, report.explain(_logs(cluster))
    codes = {f"{p.kind} {p.address}": p.stop() for p in _processes(cluster)}
    assert set(codes.values()) == {0}, f"not every process stopped cleanly: {codes}\n{_logs(cluster)}"


@pytest.mark.parametrize("cross_node_share", SHARES)
def test_bank_conserves_money_with_concurrent_callers_over_three_nodes(
    tmp_path_factory: pytest.TempPathFactory, cross_node_share: float
) -> None:
    seed = random.randrange(1 << 32)
    with running_cluster(tmp_path_factory) as cluster, sdk_clients(cluster) as sdks:
        report = _bank_run(cluster, cross_node_share, seed, sdks).run()
        _assert_clean(report, cluster)


@pytest.mark.parametrize("cross_node_share", SHARES)
def test_bank_survives_kill_9_of_a_node_and_a_router_restart(
    tmp_path_factory: pytest.TempPathFactory, cross_node_share: float
) -> None:
    seed = random.randrange(1 << 32)
    faults: list[str] = []
    with running_cluster(tmp_path_factory) as cluster, sdk_clients(cluster) as sdks:
        router = cluster.router
        assert router is not None

        def kill_and_restart(victim: ServiceProcess, down_s: float) -> None:
            victim.kill()
            time.sleep(down_s)
            victim.start()  # same port and data dir; raises with the log tail if it fails
            faults.append(f"kill -9 node {victim.address}, down {down_s:.1f}s")

        def chaos(rng: random.Random) -> None:
            first, second = rng.sample(cluster.nodes, 2)
            time.sleep(rng.uniform(0.5, 1.5))
            # Down longer than a node waits for a credit leg's outcome, so callers of the
            # other nodes get IN_FLIGHT, and their outboxes hold legs for it.
            kill_and_restart(first, IN_FLIGHT_WAIT_S_DEFAULT + rng.uniform(0.5, 1.5))
            time.sleep(rng.uniform(0.5, 1.5))
            code = router.stop()  # SIGTERM: it finishes what it has in flight
            time.sleep(rng.uniform(0.0, 0.3))
            router.start()
            faults.append(f"router restart (stopped with {code})")
            time.sleep(rng.uniform(0.5, 1.5))
            kill_and_restart(second, rng.uniform(0.0, 0.3))

        def crash_when_idle(rng: random.Random) -> None:
            # Acknowledged work, and credit legs still on their way, must survive a crash too.
            kill_and_restart(rng.choice(cluster.nodes), 0.0)

        run = _bank_run(cluster, cross_node_share, seed, sdks)
        run.chaos = chaos
        run.after_load = crash_when_idle
        report = run.run()
        print(faults)
        assert len(faults) == 4, faults
        assert "router restart (stopped with 0)" in faults, faults  # SIGTERM: a clean stop
        _assert_clean(report, cluster)
