"""How fast `yunkai backup` and `yunkai restore` go on local clusters, under a steady write load.

`python -m loadtest.backup_bench --json backup.json`: a source cluster (--nodes, --replicas,
--slots-total) is filled with --accounts accounts and --transfers transfers through the SDK;
then, while one thread offers --rate transfers/s (batches every 100 ms, whatever the
answers do), a full backup and an incremental one are taken; then the load stops and the
backup is restored into a new cluster of the same shape. Prints and writes what each took:
seconds, slots/s and MB/s (of slot files written or loaded once; a restore loads each slot
into R copies), and what the load saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from clients.ledger import Account, LedgerError, SyncLedgerClient, Transfer
from cluster import backup as backups
from cluster.commands import LocalCluster
from loadtest import report

BATCH = 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--slots-total", type=int, default=4096)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--transfers", type=int, default=40_000)
    parser.add_argument("--rate", type=int, default=500, help="transfers/s offered during the backups (0: none)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="yunkai-backup-bench-") as directory:
        results = run(args, directory)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


def _cluster(directory: str, name: str, args: argparse.Namespace) -> LocalCluster:
    return LocalCluster(
        os.path.join(directory, name),
        args.nodes,
        port=0,
        slots_total=args.slots_total,
        replicas=args.replicas,
        tls_dir=os.path.join(directory, "tls"),
    )


def _batches(count: int) -> Iterator[range]:
    for start in range(0, count, BATCH):
        yield range(start, min(count, start + BATCH))


def _fill(client: SyncLedgerClient, args: argparse.Namespace, rng: random.Random) -> float:
    started = time.monotonic()
    for part in _batches(args.accounts):
        assert all(r.ok for r in client.create_accounts([Account(f"acct-{i}", 156, 1) for i in part]))
    for part in _batches(args.transfers):
        transfers = [
            Transfer(
                f"fill-{i}", f"acct-{rng.randrange(args.accounts)}", f"acct-{rng.randrange(args.accounts)}", 1, 156, 1
            )
            for i in part
        ]
        transfers = [t for t in transfers if t.debit_account_id != t.credit_account_id]
        client.create_transfers(transfers, 60)
    return time.monotonic() - started


class _Load(threading.Thread):
    """`rate` transfers/s in batches every 100 ms, each batch on its own schedule."""

    def __init__(self, client: SyncLedgerClient, rate: int, accounts: int) -> None:
        super().__init__(daemon=True)
        self.client, self.rate, self.accounts = client, rate, accounts
        self.stop = threading.Event()
        self.acked = self.failed = 0
        self.latencies_s: list[float] = []

    def run(self) -> None:
        rng = random.Random(7)
        per_batch = max(1, self.rate // 10)
        due = time.monotonic()
        sequence = 0
        while not self.stop.is_set():
            batch = []
            for _ in range(per_batch):
                sequence += 1
                debit, credit = rng.sample(range(self.accounts), 2)
                batch.append(Transfer(f"load-{sequence}", f"acct-{debit}", f"acct-{credit}", 1, 156, 1))
            try:
                self.client.create_transfers(batch, 10)
                self.acked += len(batch)
            except LedgerError:
                self.failed += len(batch)
            self.latencies_s.append(time.monotonic() - due)
            due += 0.1
            self.stop.wait(max(0.0, due - time.monotonic()))


def _rates(seconds: float, slots: int, size: int) -> dict[str, float]:
    return {
        "seconds": round(seconds, 2),
        "slots": slots,
        "mb": round(size / 1e6, 2),
        "slots_per_s": round(slots / seconds, 1),
        "mb_per_s": round(size / 1e6 / seconds, 2),
    }


def run(args: argparse.Namespace, directory: str) -> dict[str, Any]:
    source = _cluster(directory, "source", args).start()
    target: LocalCluster | None = None
    source.export_identity()
    tls = source.tls("operator")
    into = os.path.join(directory, "backup")
    try:
        with SyncLedgerClient(source.address, timeout_s=60) as client:
            fill_s = _fill(client, args, random.Random(1))
            load = _Load(client, args.rate, args.accounts)
            if args.rate:
                load.start()
                time.sleep(1.0)
            measured: dict[str, Any] = {}
            for kind in ("full", "incremental"):
                started = time.monotonic()
                asyncio.run(backups.backup(source.address, into, tls, argparse.Namespace(full=False), sys.stdout))
                seconds = time.monotonic() - started
                totals = backups.load_manifest(into)["totals"]  # type: ignore[index]
                measured[kind] = {
                    **_rates(seconds, totals["slots_written"], totals["bytes_written"]),
                    "slots_unchanged": totals["slots_unchanged"],
                }
            load.stop.set()
            if args.rate:
                load.join()
        target = _cluster(directory, "target", args).start()
        started = time.monotonic()
        manifest = asyncio.run(backups.restore(into, target.address, tls, argparse.Namespace(), sys.stdout))
        restore_s = time.monotonic() - started
    finally:
        source.stop()
        if target is not None:
            target.stop()
    totals = manifest["totals"]
    latencies = sorted(load.latencies_s)
    return {
        "command": "python -m loadtest.backup_bench "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"),
        # with what else ran on the machine
        "machine": report.machine() | {"load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "data": {"keys": totals["keys"], "mb": round(totals["bytes"] / 1e6, 2), "fill_s": round(fill_s, 1)},
        "load": {
            "offered_per_s": args.rate,
            "acked": load.acked,
            "failed": load.failed,
            "batch_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
            "batch_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        },
        "backup_full": measured["full"],
        "backup_incremental": measured["incremental"],
        "restore": {
            **_rates(restore_s, totals["slots_written"] + totals["slots_unchanged"], totals["bytes"]),
            "copies": args.replicas,
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
