"""`yunkai bench-lending`: the lending journey as a business runs it, open loop (issue 18's benchmark).

It trains credit_risk into a temporary registry and starts, on loopback, a cluster of `--nodes`
ledger nodes keeping `--replicas` copies, a scoring node, a lending server (the sample
catalogue's SME-TAX-LOAN published) and a risk server. Then it offers `--rate` business
operations per second for `--duration` seconds (loadtest/openloop.py's schedule): journeys of a
new customer each, started on schedule at rate / 3, each

    decide  (scored, decided, stored; an approval opens the credit line in lending)
    draw    (an approved customer draws 10,000 CNY on the line: limits, loan record, principal)
    repay   (the first instalment, on its due date, from the deposit the loan paid into)

one after another. A step's latency counts from when it could start: the journey's due time
for decide, the previous step's answer for the others. Applicants are the credit data's rows
the model approves (scored once before the run), so every journey runs its three steps.
It reports each step's p50/p99, the business operations per second achieved, and whether the
driver kept up. With `--lending-servers N` and `--risk-servers M`, N lending and M risk
processes serve the one book (its records are on the ledger: lending/book.py, risk/store.py);
journey i goes to lending server i mod N and risk server i mod M (each risk server opens
credit lines through its own lending server).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop

from cluster.commands import LocalCluster
from cluster.local import LendingProcess, RiskProcess, ServiceProcess, start_business
from loadtest import identities, openloop, report
from proto import lending_pb2 as lpb, lending_pb2_grpc, risk_pb2 as rpb
from serving.session import SessionStub
from serving.transport import role_channel

PRODUCT = "SME-TAX-LOAN"
AMOUNT_REQUESTED_FEN = 5_000_000
DRAWN_FEN = 1_000_000
DRAWN_ON = "2026-01-15"
STEPS = ("decide", "draw", "repay")
START_MARGIN_S = 0.5
STEP_TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=300.0, help="business operations per second (default 300)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of offered load (default 10)")
    parser.add_argument("--nodes", type=int, default=3, help="ledger nodes (default 3)")
    parser.add_argument("--replicas", type=int, default=3, help="copies of each slot (default 3)")
    parser.add_argument(
        "--lending-servers",
        default="1",
        help="lending processes serving the book (default 1); a list (1,2) runs each in turn, the same load",
    )
    parser.add_argument("--risk-servers", type=int, default=1, help="risk processes serving the book (default 1)")
    parser.add_argument("--json", help="write the results here")


def main(args: argparse.Namespace) -> int:
    try:
        counts = [int(n) for n in str(args.lending_servers).split(",")]
    except ValueError:
        counts = []
    if args.rate <= 0 or args.duration <= 0 or not 1 <= args.replicas <= args.nodes:
        print("yunkai bench-lending: --rate and --duration must be positive, --replicas 1 to --nodes")
        return 2
    if not counts or not all(1 <= n <= 16 for n in counts) or not 1 <= args.risk_servers <= 16:
        print("yunkai bench-lending: --lending-servers is 1 to 16 (or a list: 1,2), --risk-servers 1 to 16")
        return 2
    from scoring import datasets, train  # heavy (catboost, pandas): only here

    work = tempfile.mkdtemp(prefix="yunkai-bench-lending-")
    registry = os.path.join(work, "models")
    print(f"training credit_risk into {registry} ...", flush=True)
    data = datasets.credit_risk()
    assert train.train_one("credit_risk", data, Path(registry), 1).admitted
    applicants = [dict(zip(data.feature_names, map(float, row), strict=True)) for row in data.features]
    del data
    gc.collect()
    gc.freeze()  # the training data is not garbage: keep the driver's collections short
    identities.prepare(work)
    runs: list[dict[str, Any]] = []
    try:
        for count in counts:  # each on a cluster of its own, one after another, the same offered load
            runs.append(_run(args, count, os.path.join(work, f"run-{len(runs)}"), registry, applicants))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = runs[0] if len(runs) == 1 else {"runs": runs}
    report.record(args, result)
    for run in runs:
        steps = ", ".join(
            f"{step} p50 {k['p50_ms']:.1f} ms p99 {k['p99_ms']:.1f} ms" for step, k in run["by_step"].items()
        )
        verdict = "kept up" if run["driver_kept_up"] else f"did not keep up ({run['late_sends']} late sends)"
        print(
            f"lending journeys, {run['lending_processes']} lending and {run['risk_processes']} risk processes:"
            f" offered {run['offered_per_s']:,.0f} operations/s for {args.duration:g} s, achieved"
            f" {run['achieved_per_s']:,.0f}/s, errors {run['errors']} {run['error_samples']}; {steps};"
            f" journeys p99 {run['journey_p99_ms']:.1f} ms; the driver {verdict}"
        )
    return 0 if all(run["errors"] == 0 for run in runs) else 1


def _run(
    args: argparse.Namespace, lending_servers: int, work: str, registry: str, applicants: list[dict[str, float]]
) -> dict[str, Any]:
    """One configuration: a cluster, the business services (`lending_servers` lending
    processes, --risk-servers risk processes), the offered load; its result."""
    load_average = os.getloadavg()
    cluster = LocalCluster(os.path.join(work, "cluster"), nodes=args.nodes, port=0, replicas=args.replicas)
    started: list[ServiceProcess] = []
    try:
        cluster.start()
        scoring, lending, risk = start_business(cluster.address, registry, work, started)
        lendings, risks = [lending.address], [risk.address]
        quiet = ["--log-level", "WARNING"]
        for index in range(1, lending_servers):
            more = LendingProcess(os.path.join(work, f"lending-{index}"), ["--router", cluster.address, *quiet])
            started.append(more.start())
            lendings.append(more.address)
        for index in range(1, args.risk_servers):
            upstream = ["--scoring", scoring.address, "--router", cluster.address]
            upstream += ["--lending", lendings[index % len(lendings)]]
            more_risk = RiskProcess(os.path.join(work, f"risk-{index}"), [*upstream, *quiet])
            started.append(more_risk.start())
            risks.append(more_risk.address)
        result = uvloop.run(_bench(args, lendings, risks, scoring.address, applicants))
    finally:
        for process in reversed(started):
            process.stop()
        cluster.stop()
    return result | {
        "nodes": args.nodes,
        "replicas": args.replicas,
        "lending_processes": lending_servers,
        "risk_processes": args.risk_servers,
        "load_average_at_start": [round(x, 2) for x in load_average],
    }


async def _approved(scoring: str, applicants: list[dict[str, float]]) -> list[dict[str, float]]:
    """The applicants SME-TAX-LOAN's newest flow approves automatically (credit_risk below 0.3)."""
    from clients.scoring import ScoringClient

    async with ScoringClient(scoring) as client:
        scores = await client.score("credit_risk", applicants, version=1)
    return [row for row, score in zip(applicants, scores, strict=True) if score < 0.3 and row["Records"] != 1.0]


async def _bench(
    args: argparse.Namespace, lendings: list[str], risks: list[str], scoring: str, applicants: list[dict[str, float]]
) -> dict[str, Any]:
    from lending.products import SAMPLE_CATALOGUE, read_catalogue

    async with role_channel(lendings[0], "operator") as as_operator:  # the product, as the bank publishes it
        products = lending_pb2_grpc.ProductServiceStub(as_operator)
        [parameters] = [p for p in read_catalogue(SAMPLE_CATALOGUE) if p.code == PRODUCT]
        draft = await products.SaveDraft(lpb.SaveDraftRequest(parameters=parameters), timeout=10)
        await products.PublishProduct(lpb.ProductRef(code=draft.code, version=draft.version), timeout=10)
    approved = await _approved(scoring, applicants)
    run = f"{time.time_ns() // 1_000_000 % 1_000_000:06d}"
    steps = openloop.Recorder()
    start = openloop.clock() + START_MARGIN_S
    journeys = args.rate / len(STEPS)
    async with contextlib.AsyncExitStack() as channels:
        to_risks = [await channels.enter_async_context(role_channel(a, "service")) for a in risks]
        to_lendings = [await channels.enter_async_context(role_channel(a, "service")) for a in lendings]
        # As an internal service calls them: on sessions (serving/session.py).
        all_decisions = [SessionStub(c, rpb.DESCRIPTOR.services_by_name["DecisionService"].full_name) for c in to_risks]
        all_loans = [SessionStub(c, lpb.DESCRIPTOR.services_by_name["LoanService"].full_name) for c in to_lendings]

        async def journey(index: int) -> tuple[str, str | None]:
            decisions = all_decisions[index % len(all_decisions)]
            loans = all_loans[index % len(all_loans)]
            customer = f"j{run}x{index}"
            ask = rpb.DecideRequest(
                application_id=f"a{run}-{index}",
                product=PRODUCT,
                customer=customer,
                amount_requested_fen=AMOUNT_REQUESTED_FEN,
                fields=approved[index % len(approved)],
            )
            draw = lpb.DrawdownRequest(
                customer=customer, loan_id=f"l{run}x{index}", product_code=PRODUCT, amount=DRAWN_FEN, date=DRAWN_ON
            )
            step, due = "decide", index / journeys  # a step's latency counts from when it could start
            try:
                decision = await decisions.Decide(ask, timeout=STEP_TIMEOUT_S)
                if not decision.credit_line_opened:
                    outcome = rpb.Outcome.Name(decision.outcome)
                    steps.done(step, due, openloop.clock() - start, f"not approved with a line: {outcome}")
                    return "journey", "not approved"
                now = openloop.clock() - start
                steps.done(step, due, now, None)
                step, due = "draw", now
                loan = await loans.Drawdown(draw, timeout=STEP_TIMEOUT_S)
                now = openloop.clock() - start
                steps.done(step, due, now, None)
                step, due = "repay", now
                first = loan.schedule[0]
                owed = first.principal + first.interest + first.fees
                repay = lpb.RepayRequest(loan_id=loan.loan_id, repayment_id="r1", amount=owed, date=first.due)
                await loans.Repay(repay, timeout=STEP_TIMEOUT_S)
                steps.done(step, due, openloop.clock() - start, None)
            except grpc.aio.AioRpcError as error:
                steps.done(step, due, openloop.clock() - start, f"{error.code().name}: {error.details()}")
                return "journey", error.code().name
            return "journey", None

        journeys_recorder = await openloop.drive(
            journey, rate=journeys, duration_s=args.duration, start=start, worker=0, procs=1
        )
    summary = steps.summary(args.rate, args.duration)
    journeys_summary = journeys_recorder.summary(journeys, args.duration)
    return {
        "product": PRODUCT,
        "offered_per_s": args.rate,
        "achieved_per_s": summary["achieved_per_s"],
        "errors": summary["errors"],
        "error_samples": summary["error_samples"],
        "by_step": {step: summary["by_kind"][step] for step in STEPS if step in summary["by_kind"]},
        "journeys": journeys_summary["ops"],
        "journey_p99_ms": journeys_summary["p99_ms"],
        "late_sends": journeys_summary["late_sends"],
        "driver_kept_up": journeys_summary["driver_kept_up"],
        "approvable_applicants": len(approved),
    }
