"""How many audit entries per second one server's audit log (serving/audit.py) makes durable.

    python -m loadtest.audit_bench [--callers 200] [--duration 5] [--dir DIR] [--json FILE]

`--callers` coroutines on one uvloop event loop each record an entry, wait until it is
fsync'd, and record the next, for `--duration` seconds: the closed loop of a server whose
every money-moving call waits for its audit entry. Reports entries/s, fsyncs/s, entries per
fsync, the latency of `record` (HDR histogram) and the process's CPU time per entry (the
figure other load on the machine does not move); then checks the file with verify().
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

import grpc
import uvloop
from hdrh.histogram import HdrHistogram
from prometheus_client import REGISTRY

from loadtest import report
from serving import audit

METHOD = "/yunkai.ledger.v1.Ledger/CreateTransfers"
CALLER = "spiffe://yunkai/service/router"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--callers", type=int, default=200, help="concurrent awaiting callers (default 200)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds to run (default 5)")
    parser.add_argument("--ids", type=int, default=2, help="ids named per entry (default 2)")
    parser.add_argument("--dir", help="directory of the log file (default: a new temporary directory)")
    parser.add_argument("--json", help="write the results here")


def main(args: argparse.Namespace) -> int:
    directory = args.dir or tempfile.mkdtemp(prefix="yunkai-bench-audit-")
    path = os.path.join(directory, f"audit-{os.getpid()}.log")
    result = uvloop.run(_bench(args, path))
    verified = audit.verify(path)
    result.update(verified_entries=verified.entries, verified_ok=verified.ok, machine=report.machine())
    result["command"] = " ".join(["python -m loadtest.audit_bench", *sys.argv[1:]])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    print(
        f"{args.callers} callers: {result['entries_per_s']:,.0f} entries/s, {result['fsyncs_per_s']:,.0f} fsyncs/s"
        f" ({result['entries_per_fsync']:.1f} entries each); record p50 {result['p50_ms']:.2f} ms,"
        f" p99 {result['p99_ms']:.2f} ms; {result['cpu_us_per_entry']:.1f} CPU µs/entry;"
        f" verify: {verified.entries} entries, {'ok' if verified.ok else 'BROKEN'}"
    )
    return 0 if verified.ok and verified.entries == result["entries"] else 1


async def _bench(args: argparse.Namespace, path: str) -> dict[str, object]:
    latency_us = HdrHistogram(1, 60_000_000, 3)
    ids = [f"transfer-{n:08d}" for n in range(args.ids)]
    clock = time.perf_counter
    entries = 0
    log = audit.AuditLog(path)
    fsyncs_before = _fsyncs()
    deadline = clock() + args.duration

    async def caller() -> None:
        nonlocal entries
        while (began := clock()) < deadline:
            await log.record(CALLER, METHOD, ids, grpc.StatusCode.OK, "")
            latency_us.record_value(max(1, int((clock() - began) * 1e6)))
            entries += 1

    started, cpu_started = clock(), time.process_time()
    async with asyncio.TaskGroup() as tasks:
        for _ in range(args.callers):
            tasks.create_task(caller())
    seconds, cpu_s = clock() - started, time.process_time() - cpu_started
    await log.aclose()
    fsyncs = _fsyncs() - fsyncs_before
    return {
        "callers": args.callers,
        "seconds": round(seconds, 3),
        "entries": entries,
        "entries_per_s": entries / seconds,
        "fsyncs_per_s": fsyncs / seconds,
        "entries_per_fsync": entries / max(1, fsyncs),
        "cpu_us_per_entry": cpu_s / max(1, entries) * 1e6,  # the process's, all threads: immune to other load
        "p50_ms": latency_us.get_value_at_percentile(50) / 1000,
        "p99_ms": latency_us.get_value_at_percentile(99) / 1000,
        "file_bytes": os.path.getsize(path),
    }


def _fsyncs() -> int:
    """Batches written so far in this process (the count of the batch-size histogram)."""
    value = REGISTRY.get_sample_value("yunkai_audit_batch_entries_count")
    return int(value or 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m loadtest.audit_bench", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
