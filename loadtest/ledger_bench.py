"""`yunkai bench-node` and `yunkai bench-cluster`: durable transfers/s and lookups/s.

A closed-loop saturation benchmark: `--concurrency` async callers each send a batch of
`--batch` events, wait for the answer, and send the next, for `--duration` seconds after
a warm-up. It reports events/s and per-batch latency percentiles from an HDR histogram.
`bench-node` measures one standalone node; `bench-cluster` a router and `--nodes` nodes
(the load goes through the router, which speaks the same Ledger API). Accounts come in
customer pairs that share a slot by hash tag (`{cN}:a`, `{cN}:b`); `--cross-slot F` makes
that fraction of transfers go between different customers (other slots, often other
nodes), the rest within one customer. With `--batch 1` every transfer is its own RPC.
The open-loop, fixed-rate harness of issue 6 builds on this.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Sequence

import grpc
import uvloop
from hdrh.histogram import HdrHistogram

from clients.ledger import RouterMapSource, Routers
from cluster.commands import LocalCluster
from cluster.local import NodeProcess
from loadtest import identities, report
from proto import ledger_pb2 as pb, ledger_pb2_grpc
from router.routing import LedgerRouter
from serving.tls import resolve_tls
from serving.transport import client_credentials, role_channel

LEDGER = 156


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", dest="target", help="HOST:PORT of a running node (default: start one)")
    parser.set_defaults(nodes=0, cross_slot=1.0, smart=False, router_workers=1)
    _add_common(parser)


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--router", dest="target", help="HOST:PORT of a running router (default: start a cluster)")
    parser.add_argument("--nodes", type=int, default=2, help="nodes of the cluster it starts (default 2)")
    parser.add_argument(
        "--smart",
        action="store_true",
        help="route in the load generator with the SDK's routing core, straight to the nodes (the router only"
        " serves the shard map)",
    )
    parser.add_argument(
        "--cross-slot", type=float, default=0.5, help="fraction of transfers between customers (default 0.5)"
    )
    parser.add_argument(
        "--router-workers",
        type=int,
        default=1,
        help="worker processes of the router it starts (`yunkai router --workers`; default 1); each caller has its"
        " own connection, so the kernel spreads them over the workers",
    )
    _add_common(parser)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", choices=["transfers", "lookups"], default="transfers")
    parser.add_argument("--accounts", type=int, default=10_000, help="accounts to create first (default 10,000)")
    parser.add_argument("--batch", type=int, default=1000, help="events per request (default 1000)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    parser.add_argument(
        "--no-history", action="store_true", help="open the accounts with NO_HISTORY (measures what history costs)"
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext everywhere (no mutual TLS, no identities): to measure what TLS costs",
    )


def main(args: argparse.Namespace) -> int:
    started: NodeProcess | LocalCluster | None = None
    address = args.target
    identities.prepare(tempfile.mkdtemp(prefix="yunkai-bench-tls-"), args.insecure)
    if address is None:
        data_dir = tempfile.mkdtemp(prefix="yunkai-bench-")
        if args.nodes == 0:
            started = NodeProcess(data_dir, ["--log-level", "WARNING"]).start()
        else:
            workers = ["--workers", str(args.router_workers)] if args.router_workers > 1 else []
            started = LocalCluster(data_dir, args.nodes, port=0, router_args=workers).start()
        address = started.address
    try:
        result = uvloop.run(_bench(args, address))
    finally:
        if started is not None:
            started.stop()
    report.record(args, result)
    print(
        f"{args.workload}: {result['events_per_s']:,.0f} events/s over {result['seconds']:.1f}s; batch of"
        f" {args.batch}: p50 {result['batch_p50_ms']:.2f} ms, p99 {result['batch_p99_ms']:.2f} ms,"
        f" p99.9 {result['batch_p999_ms']:.2f} ms; errors {result['errors']}"
    )
    return 0 if result["errors"] == 0 else 1


async def _bench(args: argparse.Namespace, address: str) -> dict[str, object]:
    # One connection per caller (a local subchannel pool: gRPC would otherwise share one
    # connection between channels to the same address), so that router workers sharing a
    # port each get some (SO_REUSEPORT spreads connections, not calls).
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    channels = [role_channel(address, "service", options) for _ in range(max(1, args.concurrency))]
    try:
        return await _run(args, address, channels)
    finally:
        for channel in channels:
            await channel.close()


async def _run(args: argparse.Namespace, address: str, channels: list[grpc.aio.Channel]) -> dict[str, object]:
    stubs = [ledger_pb2_grpc.LedgerStub(channel) for channel in channels]
    stub = stubs[0]
    smart: LedgerRouter | None = None
    routers: Routers | None = None
    if args.smart:
        credentials = client_credentials(resolve_tls(None, "service", False, "service"))
        routers = Routers(address, credentials)
        maps = RouterMapSource(routers, 10.0)
        await maps.fetch()
        smart = LedgerRouter(maps, credentials=credentials)

    async def create_transfers(number: int, transfers: list[pb.Transfer]) -> Sequence[pb.EventResult]:
        if smart is not None:
            return await smart.create_transfers(transfers, 30.0)
        request = pb.CreateTransfersRequest(transfers=transfers)
        reply = await stubs[number % len(stubs)].CreateTransfers(request, timeout=30)
        return reply.results  # type: ignore[no-any-return]

    async def lookup_accounts(number: int, ids: list[str]) -> Sequence[pb.AccountResult]:
        if smart is not None:
            return await smart.lookup_accounts(ids, 30.0)
        reply = await stubs[number % len(stubs)].LookupAccounts(pb.LookupAccountsRequest(ids=ids), timeout=30)
        return reply.results  # type: ignore[no-any-return]

    run = f"{time.time_ns():x}"
    customers = max(1, args.accounts // 2)
    ids = [f"{{b{run}-{c}}}:{side}" for c in range(customers) for side in "ab"]
    flags = pb.NO_HISTORY if args.no_history else 0
    for start in range(0, len(ids), 4096):
        reply = await stub.CreateAccounts(
            pb.CreateAccountsRequest(
                accounts=[pb.Account(id=i, ledger=LEDGER, code=1, flags=flags) for i in ids[start : start + 4096]]
            )
        )
        assert all(r.code == pb.OK for r in reply.results)

    histogram = HdrHistogram(1, 60_000_000, 3)  # microseconds
    counters = {"events": 0, "errors": 0}
    measuring = asyncio.Event()
    deadline = time.monotonic() + args.warmup + args.duration
    sequence = iter(range(1 << 62))
    rng = random.Random(7)

    def transfers_batch() -> list[pb.Transfer]:
        transfers = []
        for _ in range(args.batch):
            if rng.random() < args.cross_slot:
                debit, credit = rng.sample(ids, 2)
            else:
                pair = 2 * rng.randrange(customers)
                debit, credit = (ids[pair], ids[pair + 1]) if rng.random() < 0.5 else (ids[pair + 1], ids[pair])
            transfers.append(
                pb.Transfer(
                    id=f"t{next(sequence)}",
                    debit_account_id=debit,
                    credit_account_id=credit,
                    amount=1 + rng.randrange(1000),
                    ledger=LEDGER,
                    code=1,
                )
            )
        return transfers

    lookup_batches = [rng.sample(ids, min(args.batch, len(ids))) for _ in range(64)]

    async def caller(number: int) -> None:
        turn = number
        while time.monotonic() < deadline:
            started = time.perf_counter()
            if args.workload == "transfers":
                transfer_results = await create_transfers(number, transfers_batch())
                ok = all(r.code == pb.OK for r in transfer_results)
                events = len(transfer_results)
            else:
                lookup_results = await lookup_accounts(number, lookup_batches[turn % len(lookup_batches)])
                ok = all(r.code == pb.OK for r in lookup_results)
                events = len(lookup_results)
            turn += 1
            if measuring.is_set():
                histogram.record_value(max(1, int((time.perf_counter() - started) * 1e6)))
                counters["events"] += events
                counters["errors"] += 0 if ok else 1

    async def clock() -> float:
        await asyncio.sleep(args.warmup)
        measuring.set()
        began = time.monotonic()
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        return time.monotonic() - began

    async with asyncio.TaskGroup() as tasks:
        timer = tasks.create_task(clock())
        for number in range(args.concurrency):
            tasks.create_task(caller(number))
    seconds = timer.result()
    if smart is not None:
        await smart.close()
    if routers is not None:
        await routers.close()
    return {
        "workload": args.workload,
        "target": "node"
        if args.nodes == 0
        else f"{'smart client' if args.smart else 'router'} ({args.router_workers} workers) + {args.nodes} nodes",
        "router_workers": args.router_workers,
        "cross_slot": args.cross_slot if args.workload == "transfers" else None,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "accounts": args.accounts,
        "history": not args.no_history,
        "seconds": seconds,
        "events": counters["events"],
        "events_per_s": counters["events"] / seconds,
        "errors": counters["errors"],
        "batch_p50_ms": histogram.get_value_at_percentile(50) / 1000,
        "batch_p99_ms": histogram.get_value_at_percentile(99) / 1000,
        "batch_p999_ms": histogram.get_value_at_percentile(99.9) / 1000,
    }
