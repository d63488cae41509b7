"""`yunkai bench-gateway`: Locust HTTP users run the partner journey through the gateway (issue 19's benchmark).

It trains credit_risk into a temporary registry and starts, on loopback, a cluster of --nodes
ledger nodes keeping --replicas copies, scoring, lending (SME-TAX-LOAN published) and risk, a
Redis, and --gateways gateway processes sharing one HTTPS port; registers a partner and an app
(its rate and quota out of the way); then runs Locust (loadtest/gateway_locustfile.py) headless
for each --rate, with --users users each offering rate / users calls a second. Users start a
few a second (each first onboards, applies, signs and draws: four writes; started together
they were a burst far above the offered rate, whose tail the p99 then measured), so that their
start adds at most half the offered rate; the statistics count --duration seconds from when the
last user started (Locust's --reset-stats). It reports, per rate, the calls a second achieved,
failures, and p50/p99 per call and overall (Locust's own statistics), and the highest rate
whose p99 held --p99-target-ms.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc

from cluster.commands import LocalCluster
from cluster.local import GatewayProcess, RedisProcess, ServiceProcess, free_port, start_business
from loadtest import identities, report
from proto import gateway_pb2 as gpb, gateway_pb2_grpc, lending_pb2 as lpb, lending_pb2_grpc
from serving.transport import sync_role_channel

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = "SME-TAX-LOAN"
APPROVE_BELOW = 0.3
SETUP_CALLS = 4  # a user's start: onboard, apply, agreement, drawdown
STARTS_SHARE = 0.5  # users start so that their setup calls add at most this share of the offered rate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", default="200", help="calls a second to offer; a list (200,400,800) runs each")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per rate (default 30)")
    parser.add_argument("--users", type=int, default=40, help="Locust users (default 40)")
    parser.add_argument("--gateways", type=int, default=2, help="gateway processes on one port (default 2)")
    parser.add_argument("--nodes", type=int, default=3, help="ledger nodes (default 3)")
    parser.add_argument("--replicas", type=int, default=3, help="copies of each slot (default 3)")
    parser.add_argument("--p99-target-ms", type=float, default=100.0, help="the p99 a rate must hold (default 100)")
    parser.add_argument("--json", help="write the results here")


def main(args: argparse.Namespace) -> int:
    try:
        rates = [float(r) for r in str(args.rate).split(",")]
    except ValueError:
        rates = []
    if not rates or min(rates) <= 0 or args.duration <= 0 or not 1 <= args.users <= 2000:
        print("yunkai bench-gateway: --rate (a list of positive rates), --duration > 0, --users 1 to 2000")
        return 2
    if not 1 <= args.gateways <= 16 or not 1 <= args.replicas <= args.nodes:
        print("yunkai bench-gateway: --gateways 1 to 16, --replicas 1 to --nodes")
        return 2
    from scoring import datasets, train  # heavy (catboost, pandas): only here

    work = tempfile.mkdtemp(prefix="yunkai-bench-gateway-")
    registry = os.path.join(work, "models")
    print(f"training credit_risk into {registry} ...", flush=True)
    data = datasets.credit_risk()
    assert train.train_one("credit_risk", data, Path(registry), 1).admitted
    applicants = [dict(zip(data.feature_names, map(float, row), strict=True)) for row in data.features]
    identities.prepare(work)
    cluster = LocalCluster(os.path.join(work, "cluster"), nodes=args.nodes, port=0, replicas=args.replicas)
    started: list[ServiceProcess] = []
    redis = RedisProcess(os.path.join(work, "redis"))
    runs: list[dict[str, Any]] = []
    try:
        cluster.start()
        scoring, lending, risk = start_business(cluster.address, registry, work, started)
        _publish(lending.address)
        approved = _approved(scoring.address, applicants)
        applicants_file = os.path.join(work, "approved.json")
        Path(applicants_file).write_text(json.dumps(approved))
        redis.start()
        port = free_port()
        upstream = ["--router", cluster.address, "--risk", risk.address, "--lending", lending.address]
        shared = [*upstream, "--token-key", os.path.join(work, "token.key"), "--quota-store", redis.url]
        gateways = [
            GatewayProcess(os.path.join(work, f"gateway{i}"), port, [*shared, "--log-level", "WARNING"])
            for i in range(args.gateways)
        ]
        for gateway in gateways:
            started.append(gateway.start())
        client_id, secret = _app(gateways[0].address)
        for rate in rates:
            print(f"offering {rate:,.0f} calls/s for {args.duration:g} s with {args.users} users ...", flush=True)
            runs.append(
                _locust(args, rate, f"https://{gateways[0].http_address}", client_id, secret, applicants_file, work)
            )
    finally:
        for process in reversed(started):
            process.stop()
        redis.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    held = [r["offered_per_s"] for r in runs if r["p99_ms"] <= args.p99_target_ms and r["failures"] == 0]
    result: dict[str, Any] = {
        "gateways": args.gateways,
        "nodes": args.nodes,
        "replicas": args.replicas,
        "users": args.users,
        "p99_target_ms": args.p99_target_ms,
        "highest_rate_held": max(held, default=0.0),
        "runs": runs,
    }
    report.record(args, result)
    for run in runs:
        calls = ", ".join(f"{n} p50 {c['p50_ms']:.0f}/p99 {c['p99_ms']:.0f} ms" for n, c in run["by_call"].items())
        print(
            f"offered {run['offered_per_s']:,.0f}/s: achieved {run['achieved_per_s']:,.0f}/s, failures"
            f" {run['failures']}, p50 {run['p50_ms']:.0f} ms, p99 {run['p99_ms']:.0f} ms ({calls})"
        )
        for sample in run["failure_samples"]:
            print(f"  failed: {sample}")
    print(f"highest rate with p99 <= {args.p99_target_ms:g} ms and no failure: {result['highest_rate_held']:,.0f}/s")
    return 0 if all(r["failures"] == 0 for r in runs) else 1


def _publish(lending: str) -> None:
    from lending.products import SAMPLE_CATALOGUE, read_catalogue

    with sync_role_channel(lending, "operator") as channel:
        products = lending_pb2_grpc.ProductServiceStub(channel)
        [parameters] = [p for p in read_catalogue(SAMPLE_CATALOGUE) if p.code == PRODUCT]
        draft = products.SaveDraft(lpb.SaveDraftRequest(parameters=parameters), timeout=10)
        products.PublishProduct(lpb.ProductRef(code=draft.code, version=draft.version), timeout=10)


def _approved(scoring: str, applicants: list[dict[str, float]]) -> list[dict[str, float]]:
    """The applicants SME-TAX-LOAN's flow approves automatically (credit_risk below 0.3)."""
    import asyncio

    from clients.scoring import ScoringClient

    async def score() -> list[float]:
        async with ScoringClient(scoring) as client:
            return await client.score("credit_risk", applicants, version=1)

    scores = asyncio.run(score())
    return [row for row, s in zip(applicants, scores, strict=True) if s < APPROVE_BELOW and row["Records"] != 1.0]


def _app(admin: str) -> tuple[str, str]:
    with sync_role_channel(admin, "operator") as channel:
        partners = gateway_pb2_grpc.PartnersStub(channel)
        try:
            partners.RegisterPartner(gpb.RegisterPartnerRequest(partner_id="bnch", name="Bench"), timeout=30)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        scopes = ["customers", "applications", "loans", "repayments", "statements", "events"]
        request = gpb.AddAppRequest(partner_id="bnch", app="load", scopes=scopes, rate_per_s=100_000)
        credentials = partners.AddApp(request, timeout=30)
    return credentials.app.client_id, credentials.client_secret


def _locust(
    args: argparse.Namespace, rate: float, host: str, client_id: str, secret: str, applicants: str, work: str
) -> dict[str, Any]:
    prefix = os.path.join(work, f"locust-{rate:g}")
    env = {
        **os.environ,
        "YUNKAI_BENCH_APP": f"{client_id}:{secret}",
        "YUNKAI_BENCH_APPLICANTS": applicants,
        "YUNKAI_BENCH_RATE_PER_USER": str(rate / args.users),
    }
    locust = Path(sys.executable).parent / "locust"
    spawn_per_s = max(1.0, rate * STARTS_SHARE / SETUP_CALLS)
    ramp_s = args.users / spawn_per_s
    command = [
        str(locust), "--headless", "-f", str(ROOT / "loadtest" / "gateway_locustfile.py"), "-u", str(args.users),
        "-r", f"{spawn_per_s:g}", "-t", f"{ramp_s + args.duration:.0f}s", "--reset-stats", "--host", host,
        "--csv", prefix, "--only-summary", "--stop-timeout", "10", "--loglevel", "WARNING",
    ]  # fmt: skip
    subprocess.run(command, env=env, check=False, capture_output=True, timeout=ramp_s + args.duration + 300)
    return _stats(f"{prefix}_stats.csv", rate, args.duration)


def _stats(path: str, rate: float, duration: float) -> dict[str, Any]:
    """Locust's per-call statistics (its CSV), without the start-up calls (token)."""
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    by_call: dict[str, dict[str, float]] = {}
    total: dict[str, str] = {}
    for row in rows:
        if row["Name"] == "Aggregated":
            total = row
        elif row["Name"] != "token":
            by_call[row["Name"]] = {
                "count": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "p50_ms": float(row["50%"]),
                "p99_ms": float(row["99%"]),
            }
    failures: list[str] = []
    failures_path = path.replace("_stats.csv", "_failures.csv")
    if os.path.exists(failures_path):
        with open(failures_path) as handle:
            failures = [f"{r['Occurrences']}x {r['Name']}: {r['Error'][:160]}" for r in csv.DictReader(handle)]
    return {
        "failure_samples": failures[:10],
        "offered_per_s": rate,
        "achieved_per_s": round(int(total["Request Count"]) / duration, 1),
        "failures": int(total["Failure Count"]),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "by_call": by_call,
    }
