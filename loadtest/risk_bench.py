"""`yunkai bench-risk`: full credit decisions (scoring plus rules plus the durable decision log) over gRPC.

Issue 8's benchmark, on loopback:
  1. Open loop (loadtest/openloop.py, the driver of `yunkai bench`): Decide calls at `--rate`
     per second for `--duration` seconds, each on its own schedule whatever the answers do;
     latency counts from when the call was due; HDR histograms overall and per second. Each
     call is a new application (a new id), so each is scored on the scoring server, evaluated
     by the SME-TAX-LOAN table and fsync'd to the decision log.
  2. Throughput: `--concurrency` callers sending Decide back to back for 5 s.
Without `--risk` it trains credit_risk into a temporary registry, starts a one-node ledger (the
decision log's records live there, replicated as they would be in a cluster), `yunkai scoring
serve` and `yunkai risk serve` (without a lending server: opening credit lines is the lending
benchmark's, `yunkai bench-lending`).
Applicants are the first rows of the credit_risk training data, so the outcomes are a real mix.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import grpc
import uvloop

from cluster.commands import LocalCluster
from cluster.local import RiskProcess, ScoringProcess
from loadtest import openloop, report
from proto import risk_pb2 as pb, risk_pb2_grpc
from scoring import datasets
from serving.transport import role_channel

PRODUCT = "SME-TAX-LOAN"
APPLICANTS = 256
WARM_UP_CALLS = 50
START_MARGIN_S = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--risk", help="HOST:PORT of a running risk server (default: start scoring and risk)")
    parser.add_argument("--rate", type=int, default=200, help="decisions per second offered (default 200)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the open loop (default 10)")
    parser.add_argument("--concurrency", type=int, default=8, help="callers, throughput part (default 8)")
    parser.add_argument("--throughput-s", type=float, default=5.0, help="seconds of the throughput part")
    parser.add_argument("--json", help="write the results here")


def main(args: argparse.Namespace) -> int:
    processes: list[RiskProcess | ScoringProcess] = []
    address = args.risk
    cluster: LocalCluster | None = None
    try:
        if address is None:
            work = tempfile.mkdtemp(prefix="yunkai-bench-risk-")
            cluster = LocalCluster(os.path.join(work, "cluster"), nodes=1, port=0).start()
            cluster.export_identity()
            registry = os.path.join(work, "models")
            print(f"training credit_risk into {registry} ...", flush=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cluster.cli",
                    "scoring",
                    "train",
                    "--registry",
                    registry,
                    "--model",
                    "credit_risk",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            scoring = ScoringProcess(registry, ["--log-level", "WARNING"]).start()
            processes.append(scoring)
            risk = RiskProcess(
                os.path.join(work, "risk"),
                ["--scoring", scoring.address, "--router", cluster.address, "--log-level", "WARNING"],
            )
            processes.append(risk.start())
            address = risk.address
        result = uvloop.run(_bench(args, address))
    finally:
        for process in reversed(processes):
            process.stop()
        if cluster is not None:
            cluster.stop()
    report.record(args, result)
    per_second: list[dict[str, Any]] = result["per_second"]  # type: ignore[assignment]
    worst = max(per_second, key=lambda second: second["p99_ms"] or 0.0)
    print(
        f"Decide at {result['offered_per_s']:,}/s (latency from each call's due time): p50 {result['p50_ms']:.2f} ms,"
        f" p99 {result['p99_ms']:.2f} ms, p99.9 {result['p999_ms']:.2f} ms, max {result['max_ms']:.2f} ms, errors "
        f"{result['errors']} ({result['error_samples']}); worst second p99 {worst['p99_ms']:.2f} ms at "
        f"t={worst['t_s']} s; closed loop x{args.concurrency}: {result['decisions_per_s']:,.0f} decisions/s, "
        f"outcomes {result['outcomes']}"
    )
    return 0 if result["errors"] == 0 else 1


def _applicants() -> list[dict[str, float]]:
    data = datasets.credit_risk()
    return [dict(zip(data.feature_names, map(float, row), strict=True)) for row in data.features[:APPLICANTS]]


async def _bench(args: argparse.Namespace, address: str) -> dict[str, object]:
    applicants = _applicants()
    gc.collect()
    gc.freeze()  # the training data (pandas) is not garbage: keep the driver's collections short
    run = f"{int(time.time()) % 100_000}"
    outcomes: dict[str, int] = {}

    def request(index: int) -> pb.DecideRequest:
        return pb.DecideRequest(
            application_id=f"b{run}-{index}",
            product=PRODUCT,
            customer=f"bench{index % 1000}",
            amount_requested_fen=5_000_000,
            fields=applicants[index % len(applicants)],
        )

    async with role_channel(address, "service") as channel:
        stub = risk_pb2_grpc.DecisionServiceStub(channel)
        for index in range(WARM_UP_CALLS):  # the channels, the model session and the table
            await stub.Decide(request(index), timeout=10)

        async def decide(index: int) -> tuple[str, str | None]:
            try:
                decision = await stub.Decide(request(WARM_UP_CALLS + index), timeout=5)
            except grpc.aio.AioRpcError as error:
                return "decide", error.code().name
            name = pb.Outcome.Name(decision.outcome)
            outcomes[name] = outcomes.get(name, 0) + 1
            return "decide", None

        # 1. Open loop (loadtest/openloop.py): latency counts from each call's due time.
        recorder = await openloop.drive(
            decide,
            rate=args.rate,
            duration_s=args.duration,
            start=openloop.clock() + START_MARGIN_S,
            worker=0,
            procs=1,
        )
        summary = recorder.summary(args.rate, args.duration)

        # 2. Closed loop: callers back to back.
        first = WARM_UP_CALLS + int(args.rate * args.duration)
        done = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.throughput_s

        async def caller(lane: int) -> None:
            nonlocal done
            index = 0
            while loop.time() < deadline:
                await stub.Decide(request(first + lane * 1_000_000 + index), timeout=10)
                index += 1
                done += 1

        began = loop.time()
        async with asyncio.TaskGroup() as tasks:
            for lane in range(args.concurrency):
                tasks.create_task(caller(lane))
        decisions_per_s = done / (loop.time() - began)

    return {
        "product": PRODUCT,
        **summary,
        "outcomes": outcomes,
        "concurrency": args.concurrency,
        "decisions_per_s": decisions_per_s,
    }
