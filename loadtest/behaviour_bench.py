"""`yunkai bench-behaviour`: the behavioural batch job's pace (BehaviourService.Assess in chunks).

It trains early_warning and repayment_willingness into a temporary registry, starts a
scoring node, a router and two ledger nodes, a lending server and a risk server on
loopback, and gives `--borrowers` customers a credit line and a 12-month loan drawn on
2026-01-15; every other customer repays the first instalment on its due date, the rest
miss it. Then it assesses the book as of 2026-03-20 in chunks of `--chunk` under one run
id, one call after another as `yunkai risk behaviour` does, and once more under the same
run id (the idempotent rerun: stored assessments, actions re-applied as ledger replays).
It reports borrowers/s and each chunk's time for both passes, and the actions taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.commands import LocalCluster
from cluster.local import ServiceProcess, start_business
from loadtest import identities, report
from proto import lending_pb2 as lpb, lending_pb2_grpc, risk_pb2 as rpb, risk_pb2_grpc
from serving.transport import role_channel

PRODUCT = "SME-TAX-LOAN"
AS_OF = "2026-03-20"
SETUP_IN_FLIGHT = 32  # lending calls at once while the book is built
AGE = 45.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--borrowers", type=int, default=2_000, help="customers in the book (default 2,000)")
    parser.add_argument("--chunk", type=int, default=500, help="borrowers per Assess call (default 500, at most 1,000)")
    parser.add_argument("--json", help="write the results here")


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.chunk <= 1_000 or args.borrowers < 1:
        print("yunkai bench-behaviour: --chunk must be 1 to 1,000 and --borrowers at least 1")
        return 2
    from scoring import datasets, synthetic, train  # heavy (catboost, pandas): only here

    work = tempfile.mkdtemp(prefix="yunkai-bench-behaviour-")
    registry = os.path.join(work, "models")
    for name in ("early_warning", "repayment_willingness"):
        print(f"training {name} into {registry} ...", flush=True)
        assert train.train_one(name, datasets.LOADERS[name](), Path(registry), 1).admitted
    rows = synthetic.generate(args.borrowers).features
    skip = {"late_payments_12m", "months_on_book"}
    profiles = [
        {n: float(v) for n, v in zip(synthetic.FEATURES, row, strict=True) if n not in skip} | {"AGE": AGE}
        for row in rows
    ]
    load_average = os.getloadavg()
    identities.prepare(work)
    cluster = LocalCluster(os.path.join(work, "cluster"), nodes=2, port=0)
    started: list[ServiceProcess] = []
    try:
        cluster.start()
        _, lending, risk = start_business(cluster.address, registry, work, started)
        result = asyncio.run(_bench(args, lending.address, risk.address, profiles))
    finally:
        for process in reversed(started):
            process.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["load_average_at_start"] = [round(x, 2) for x in load_average]
    report.record(args, result)
    first, again = result["first_pass"], result["rerun"]
    print(
        f"assessed {args.borrowers:,} borrowers in chunks of {args.chunk}: {first['borrowers_per_s']:,.0f}/s "
        f"(chunk p50 {first['chunk_s_p50']:.2f} s, max {first['chunk_s_max']:.2f} s); the idempotent rerun "
        f"{again['borrowers_per_s']:,.0f}/s; actions {result['actions']}"
    )
    return 0


async def _bench(
    args: argparse.Namespace, lending_address: str, risk_address: str, profiles: list[dict[str, float]]
) -> dict[str, Any]:
    from lending.products import SAMPLE_CATALOGUE, read_catalogue

    customers = [f"bh{i}" for i in range(args.borrowers)]
    async with role_channel(lending_address, "operator") as to_lending:
        products = lending_pb2_grpc.ProductServiceStub(to_lending)
        loans = lending_pb2_grpc.LoanServiceStub(to_lending)
        [parameters] = [p for p in read_catalogue(SAMPLE_CATALOGUE) if p.code == PRODUCT]
        draft = await products.SaveDraft(lpb.SaveDraftRequest(parameters=parameters), timeout=10)
        await products.PublishProduct(lpb.ProductRef(code=draft.code, version=draft.version), timeout=10)
        gate = asyncio.Semaphore(SETUP_IN_FLIGHT)

        async def book(index: int, customer: str) -> None:
            async with gate:
                line = lpb.ApproveCreditLineRequest(
                    customer=customer,
                    line_id=f"L{customer}",
                    product_code=PRODUCT,
                    customer_limit=2_000_000,
                    product_limit=2_000_000,
                )
                await loans.ApproveCreditLine(line, timeout=60)
                drawn = lpb.DrawdownRequest(
                    customer=customer, loan_id=f"d{customer}", product_code=PRODUCT, amount=1_000_000, date="2026-01-15"
                )
                loan = await loans.Drawdown(drawn, timeout=60)
                if index % 2 == 0:
                    first = loan.schedule[0]
                    paid = lpb.RepayRequest(
                        loan_id=loan.loan_id,
                        repayment_id=f"r{customer}",
                        amount=first.principal + first.interest + first.fees,
                        date=first.due,
                    )
                    await loans.Repay(paid, timeout=60)

        began = time.monotonic()
        await asyncio.gather(*(book(i, c) for i, c in enumerate(customers)))
        print(f"book of {len(customers):,} borrowers built in {time.monotonic() - began:.1f} s", flush=True)

    actions: dict[str, int] = {}
    async with role_channel(risk_address, "operator") as to_risk:
        stub = risk_pb2_grpc.BehaviourServiceStub(to_risk)

        async def one_pass() -> dict[str, Any]:
            chunk_s = []
            began = time.monotonic()
            for first in range(0, len(customers), args.chunk):
                part = range(first, min(first + args.chunk, len(customers)))
                request = rpb.AssessRequest(
                    run_id="bench",
                    date=AS_OF,
                    borrowers=[rpb.Borrower(customer=customers[i], profile=profiles[i]) for i in part],
                )
                sent = time.monotonic()
                reply = await stub.Assess(request, timeout=600)
                chunk_s.append(time.monotonic() - sent)
                for assessment in reply.assessments:
                    actions[assessment.action] = actions.get(assessment.action, 0) + 1
                    assert json.loads(assessment.record_json)["applied"] == "OK", assessment.record_json
            seconds = time.monotonic() - began
            chunk_s.sort()
            return {
                "seconds": seconds,
                "borrowers_per_s": len(customers) / seconds,
                "chunk_s_p50": chunk_s[len(chunk_s) // 2],
                "chunk_s_max": chunk_s[-1],
            }

        first_pass = await one_pass()
        counted = dict(actions)
        rerun = await one_pass()
    return {
        "borrowers": len(customers),
        "chunk": args.chunk,
        "as_of": AS_OF,
        "first_pass": first_pass,
        "rerun": rerun,
        "actions": counted,
    }
