"""A cluster across several "hosts": each node and the router in a network namespace of its own
(`ip netns`, created and removed by the test; tests/test_partition.py's Switch), each with its own
address on one bridge, each with a certificate naming that address. The SDK on this host opens
accounts and moves money through them, then a new host's node is added with `yunkai cluster
add-node`, as an operator would on real hosts (README, "Running a cluster across hosts").

Needs root (network namespaces); CI runs as root. Everything is removed afterwards."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.ledger import Account, SyncLedgerClient, Transfer
from cluster.commands import LocalCluster
from cluster.local import RouterProcess, ServiceProcess
from proto import cluster_pb2
from serving import certs
from tests.bank import fetch_shard_map
from tests.conftest import tls
from tests.test_partition import Switch
from tests.test_replicated_cluster import CNY, LEASE_MS, R, S, fully_replicated, wait_for

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
    ),
]

ROOT = Path(__file__).resolve().parent.parent
HOSTS = 5  # three nodes, the router, and the node added later


def host(switch: Switch, process: ServiceProcess, i: int, role: str) -> None:
    """`process` runs on host i: in its namespace, at its address, with a certificate for it."""
    process.host, process.launcher = switch.address(i), ["ip", "netns", "exec", switch.namespace(i)]
    name = f"{role}-{switch.address(i)}"
    certs.issue(tls().directory, role, name, [switch.address(i)])
    process.extra_args += ["--tls-name", name]


class HostedCluster(LocalCluster):
    """LocalCluster with its router on a host of its own."""

    switch: Switch

    def router_process(self, index: int) -> RouterProcess:
        router = super().router_process(index)
        host(self.switch, router, 3, "router")
        return router


@pytest.fixture
def switch() -> Iterator[Switch]:
    made = Switch(HOSTS)
    made.create()
    try:
        yield made
    finally:
        made.remove()


def test_a_cluster_across_hosts_serves_and_takes_a_new_hosts_node(tmp_path: Path, switch: Switch) -> None:
    cluster = HostedCluster(
        str(tmp_path), nodes=3, port=0, slots_total=S, replicas=R, node_args=["--lease-ms", str(LEASE_MS)]
    )
    cluster.switch = switch
    for i, node in enumerate(cluster.nodes):
        host(switch, node, i, "node")
    cluster.start()
    try:
        router = cluster.address
        assert router.startswith(switch.address(3)), router
        shard_map = fully_replicated(cluster)
        assert {a.rpartition(":")[0] for a in shard_map.nodes} == {switch.address(i) for i in range(3)}
        with SyncLedgerClient(router, timeout_s=10) as sdk:
            tags = [f"h{random.randrange(10**9)}x{i}" for i in range(12)]
            accounts = [Account(f"{{{t}}}:{side}", CNY, 1) for t in tags for side in "ab"]
            assert all(r.ok for r in sdk.create_accounts(accounts))
            moved = [
                Transfer(f"t{i}", f"{{{t}}}:a", f"{{{tags[-1 - i]}}}:b", 100 + i, CNY, 1) for i, t in enumerate(tags)
            ]
            assert all(r.ok for r in sdk.create_transfers(moved))

            # A new host: its node joins, and add-node moves its share onto it while the cluster serves.
            fourth = cluster.new_node("node-4")
            host(switch, fourth, 4, "node")
            fourth.start()
            cluster.nodes.append(fourth)
            added = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cluster.cli",
                    "cluster",
                    "add-node",
                    "--router",
                    router,
                    "--address",
                    fourth.address,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert added.returncode == 0, added.stdout + added.stderr + cluster.log_tails(20)
            final = wait_for(lambda m: m.running_job() is None and not m.migrations, "add-node done", cluster)
            assert final.nodes[fourth.address] == cluster_pb2.NODE_ACTIVE
            assert final.slots_with(fourth.address), "the new host holds copies"
            assert all(len(final.members(slot)) == R for slot in range(S))
            # Every account reads back from wherever its slot lives now, money conserved.
            read = sdk.lookup_accounts([a.id for a in accounts])
            assert all(a is not None for a in read)
            assert (
                sum(a.debits_posted for a in read if a)
                == sum(a.credits_posted for a in read if a)
                == sum(t.amount for t in moved)
            )
        assert {a.rpartition(":")[0] for a in fetch_shard_map(router).nodes} == {
            switch.address(i) for i in (0, 1, 2, 4)
        }
    finally:
        cluster.stop()
