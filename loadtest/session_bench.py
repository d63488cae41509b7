"""What a call costs as a unary call and as a message of a session (serving/session.py).

    python -m loadtest.session_bench [--calls 2000] [--gap-ms 2] [--rounds 3] [--json FILE]

Starts one ledger node with mutual TLS (and a router, unused), opens one account, and has one
caller look it up `--calls` times, `--gap-ms` apart, once as unary LookupAccounts calls and
once on a session, alternating for `--rounds` rounds. Reports each way's latency (p50, p99)
and the CPU both processes spent per call (the caller's from os.times, the node's from
/proc/<pid>/stat), which the machine's other load does not move as it moves latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import uvloop
from hdrh.histogram import HdrHistogram

from cluster.commands import LocalCluster
from loadtest import identities, report
from proto import contract, ledger_pb2 as pb, ledger_pb2_grpc
from serving.session import Session
from serving.transport import role_channel

LOOKUP = f"/{contract.LEDGER_SERVICE}/LookupAccounts"
ACCOUNT = "{bench}:deposit"


def _node_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(call: Callable[[], Awaitable[None]], calls: int, gap_s: float, node_pid: int) -> dict[str, float]:
    histogram = HdrHistogram(1, 60_000_000, 3)  # microseconds
    for _ in range(50):  # warm: the stream or the connection open, the handler's first run
        await call()
    mine, node = os.times(), _node_cpu_s(node_pid)
    for _ in range(calls):
        await asyncio.sleep(gap_s)
        started = time.perf_counter()
        await call()
        histogram.record_value(max(1, int((time.perf_counter() - started) * 1e6)))
    mine_after, node_after = os.times(), _node_cpu_s(node_pid)
    caller_s = (mine_after.user + mine_after.system) - (mine.user + mine.system)
    return {
        "p50_ms": histogram.get_value_at_percentile(50) / 1000,
        "p99_ms": histogram.get_value_at_percentile(99) / 1000,
        # The caller's figure includes its idle sleeps' own cost (a timer and a wake-up).
        "caller_cpu_us_per_call": caller_s / calls * 1e6,
        "node_cpu_us_per_call": (node_after - node) / calls * 1e6,
    }


async def _run(address: str, node_pid: int, calls: int, gap_s: float, rounds: int) -> dict[str, list[dict[str, float]]]:
    request = pb.LookupAccountsRequest(ids=[ACCOUNT])
    data = request.SerializeToString()
    results: dict[str, list[dict[str, float]]] = {"unary": [], "session": []}
    async with role_channel(address, "service") as channel:
        stub = ledger_pb2_grpc.LedgerStub(channel)
        await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=[pb.Account(id=ACCOUNT, ledger=156, code=1)]))
        session = Session(channel, contract.LEDGER_SERVICE)

        async def unary() -> None:
            await stub.LookupAccounts(request, timeout=10)

        async def on_session() -> None:
            await session.call(LOOKUP, data, 10)

        for index in range(rounds):
            for name, call in (("unary", unary), ("session", on_session)):
                measured = await _measure(call, calls, gap_s, node_pid)
                results[name].append(measured)
                print(
                    f"round {index + 1} {name:8s} p50 {measured['p50_ms']:.3f} ms  p99 {measured['p99_ms']:.3f} ms"
                    f"  CPU per call: caller {measured['caller_cpu_us_per_call']:.0f} us,"
                    f" node {measured['node_cpu_us_per_call']:.0f} us",
                    flush=True,
                )
        await session.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.session_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls of each way per round (default 2000)")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="pause between calls, ms (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each way once per round (default 3)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.rounds < 1 or args.gap_ms < 0:
        parser.error("--calls and --rounds must be at least 1, --gap-ms not negative")
    with tempfile.TemporaryDirectory(prefix="yunkai-session-bench-") as work:
        identities.prepare(work)
        cluster = LocalCluster(os.path.join(work, "cluster"), nodes=1, port=0).start()
        try:
            [node] = cluster.nodes
            assert node.process is not None
            results = uvloop.run(_run(node.address, node.process.pid, args.calls, args.gap_ms / 1000, args.rounds))
        finally:
            cluster.stop()
    summary = {
        "calls": args.calls,
        "gap_ms": args.gap_ms,
        "rounds": results,
        "machine": report.machine(),
        "command": " ".join(["python -m loadtest.session_bench", *(argv if argv is not None else sys.argv[1:])]),
    }
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
