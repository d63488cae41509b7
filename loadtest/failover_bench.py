"""`yunkai bench-failover`: how long a cluster has no controller after its controller's router dies.

It starts a throwaway etcd, two routers electing a controller through it (`--lease-ttl`),
and `--nodes` ledger nodes; then, for `--rounds` rounds, kills the controller's router with
SIGKILL and measures the time until the other router reports itself the controller (polling
Status every 20 ms), restarts the killed router (it rejoins as a follower), and waits a
moment. Throughout, callers offer `--rate` single-customer transfers per second, open loop,
half through the SDK's smart client (both routers for the map) and half through the routers
(the SDK with `via_router`, which moves to the other router when one stops answering), each
call with a `--timeout-ms` deadline. It reports each round's failover time and, per caller
kind, the calls that failed and the latency percentiles (from each call's due time, so a
stall shows up). Every transfer id is fresh, so EXISTS can only mean that an attempt whose
answer was lost (its router died) was applied: it counts as a success. Writes JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from typing import Any

import grpc
import uvloop

from clients.ledger import Account, LedgerClient, LedgerError, Transfer
from cluster.commands import LocalCluster
from loadtest import identities, openloop, report
from proto import cluster_pb2, cluster_pb2_grpc
from serving.transport import sync_role_channel

LEDGER = 156
CUSTOMERS = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="controllers killed, one after the other (default 3)")
    parser.add_argument("--lease-ttl", type=int, default=3, help="the routers' --lease-ttl in seconds (default 3)")
    parser.add_argument("--nodes", type=int, default=2, help="ledger nodes (default 2)")
    parser.add_argument("--rate", type=float, default=200.0, help="transfers offered per second (default 200)")
    parser.add_argument("--timeout-ms", type=int, default=5000, help="each call's deadline (default 5000)")
    parser.add_argument("--json", help="write the results here")


def main(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.rate <= 0:
        print("yunkai bench-failover: --rounds and --rate must be positive")
        return 2
    data_dir = tempfile.mkdtemp(prefix="yunkai-failover-")
    identities.prepare(data_dir)
    cluster = LocalCluster(
        data_dir, args.nodes, port=0, routers=2, router_args=["--lease-ttl", str(args.lease_ttl)]
    ).start()
    try:
        result = uvloop.run(_bench(args, cluster))
    finally:
        cluster.stop()
    report.record(args, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine",)}, indent=2))
    return 0


def _leader(address: str) -> str:
    with sync_role_channel(address, "operator") as channel:
        status = cluster_pb2_grpc.ClusterStub(channel).Status(cluster_pb2.StatusRequest(), timeout=2)
    return str(status.leader)


async def _bench(args: argparse.Namespace, cluster: LocalCluster) -> dict[str, Any]:
    timeout_s = args.timeout_ms / 1000
    smart = await LedgerClient.connect(cluster.addresses, timeout_s=timeout_s)
    routed = await LedgerClient.connect(cluster.addresses, via_router=True, timeout_s=timeout_s)
    run = f"{time.time_ns():x}"
    accounts = [Account(f"{{f{run}-{c}}}:{side}", LEDGER, 1) for c in range(CUSTOMERS) for side in "ab"]
    assert all(r.ok for r in await smart.create_accounts(accounts))
    recorder = openloop.Recorder()
    stop = asyncio.Event()
    sequence = iter(range(1 << 62))
    loop_started = openloop.clock()

    async def one(kind: str, client: LedgerClient, due: float) -> None:
        number = next(sequence)
        customer = number % CUSTOMERS
        transfer = Transfer(f"x{run}-{number}", f"{{f{run}-{customer}}}:a", f"{{f{run}-{customer}}}:b", 1, LEDGER, 1)
        error: str | None = None
        try:
            [result] = await client.create_transfers([transfer])
            if not result.ok and result.code.name != "EXISTS":
                error = result.code.name
        except LedgerError as failure:
            error = failure.code.name
        recorder.done(kind, due - loop_started, openloop.clock() - loop_started, error)

    async def offer() -> None:
        interval = 1 / args.rate
        due = openloop.clock()
        pending: set[asyncio.Task[None]] = set()
        turn = 0
        while not stop.is_set():
            await asyncio.sleep(max(0.0, due - openloop.clock()))
            kind, client = ("smart", smart) if turn % 2 == 0 else ("via router", routed)
            task = asyncio.ensure_future(one(kind, client, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            recorder.sent(due - loop_started, openloop.clock() - due)
            turn += 1
            due += interval
        await asyncio.gather(*pending)

    rounds: list[dict[str, Any]] = []

    def chaos() -> None:
        time.sleep(2.0)
        for _ in range(args.rounds):
            leader = _leader(cluster.addresses.split(",")[0]) or _leader(cluster.addresses.split(",")[1])
            victim = next(r for r in cluster.routers if r.address == leader)
            survivor = next(r for r in cluster.routers if r is not victim)
            victim.kill()
            killed = time.monotonic()
            while True:
                try:
                    if _leader(survivor.address) == survivor.address:
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.02)
            rounds.append({"killed": victim.address, "failover_s": round(time.monotonic() - killed, 3)})
            victim.start()
            time.sleep(3.0)

    offering = asyncio.ensure_future(offer())
    await asyncio.to_thread(chaos)
    stop.set()
    await offering
    await smart.close()
    await routed.close()
    summary = recorder.summary(args.rate, openloop.clock() - loop_started)
    summary.pop("per_second", None)
    return {
        "lease_ttl_s": args.lease_ttl,
        "rate": args.rate,
        "timeout_ms": args.timeout_ms,
        "rounds": rounds,
        "failover_s_max": max(r["failover_s"] for r in rounds),
        "calls": summary,
    }
