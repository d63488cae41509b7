"""`yunkai report`: the business measures of the book, from the lending and risk servers.

    yunkai report --lending HOST:PORT --risk HOST:PORT [--from DATE] [--to DATE] [--json]

What it shows, and where each number comes from:
  decisions       per product: decided, approved, declined, referred, the approval rate
                  (approved / decided) and credit lines opened, between --from and --to
                  (the risk server's decision log, DecisionService.GetDecisionReport)
  drawdowns       per business date: asked, passed, refused (no credit line; the limits),
                  and the drawdown pass rate (用信通过率: passed / asked), counted by the
                  lending server as they happen (LoanService.GetBookReport)
  book            per product: credit lines, loans by status, open loans and their principal
                  outstanding by overdue bucket (M0 current, M1 1-30 days past due, ...)
  early warning   of the customers with a credit line, how many have a current behavioural
                  assessment (coverage) and at which level (BehaviourService.GetCoverage)
Every count is the servers' own; this command only divides. The same measures are Prometheus
metrics: yunkai_risk_decisions_total{product,outcome}, yunkai_lending_drawdowns_total
{product,outcome}, yunkai_lending_loans{product,status}, yunkai_lending_outstanding
{product,bucket} (docs/operations.md has the queries).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import date
from typing import Any

import grpc
from google.protobuf import json_format

import serving
from proto import lending_pb2, lending_pb2_grpc, risk_pb2, risk_pb2_grpc

TIMEOUT_S = 30.0
COVERAGE_PART = 100_000  # customers per GetCoverage call (the server takes 200,000)
COVERAGE_MAX_AGE_DAYS = 30  # an assessment older than this is not current (the server's default too)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lending", required=True, help="HOST:PORT of `yunkai lending serve` (with --router)")
    parser.add_argument("--risk", required=True, help="HOST:PORT of `yunkai risk serve`")
    parser.add_argument("--from", dest="date_from", default="", help="decisions from this UTC date, YYYY-MM-DD")
    parser.add_argument("--to", dest="date_to", default="", help="decisions up to this UTC date, inclusive")
    parser.add_argument("--json", action="store_true", help="print the measures as one JSON object")
    serving.add_tls_arguments(parser)


def main(args: argparse.Namespace) -> int:
    for flag, value in (("--from", args.date_from), ("--to", args.date_to)):
        try:
            if value:
                date.fromisoformat(value)
        except ValueError:
            print(f"yunkai report: {flag}: {value!r} is not a YYYY-MM-DD date", file=sys.stderr)
            return 2
    try:
        measures = asyncio.run(_gather(args))
    except grpc.aio.AioRpcError as error:
        print(f"yunkai report: refused ({error.code().name}): {error.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(measures, indent=2, sort_keys=True))
    else:
        print(render(measures))
    return 0


async def _gather(args: argparse.Namespace) -> dict[str, Any]:
    credentials = serving.client_credentials(serving.client_tls(args, "operator"))
    async with (
        serving.channel(args.lending, credentials, []) as to_lending,
        serving.channel(args.risk, credentials, []) as to_risk,
    ):
        loans = lending_pb2_grpc.LoanServiceStub(to_lending)
        decisions = risk_pb2_grpc.DecisionServiceStub(to_risk)
        behaviour = risk_pb2_grpc.BehaviourServiceStub(to_risk)
        book = await loans.GetBookReport(lending_pb2.BookReportRequest(include_customers=True), timeout=TIMEOUT_S)
        decided = await decisions.GetDecisionReport(
            risk_pb2.DecisionReportRequest(date_from=args.date_from, date_to=args.date_to), timeout=TIMEOUT_S
        )
        by_level: dict[str, int] = {}
        coverage: dict[str, Any] = {"borrowers": 0, "assessed_current": 0, "by_level": by_level}
        customers = list(book.customers)
        for first in range(0, len(customers), COVERAGE_PART):
            part = risk_pb2.CoverageRequest(
                customers=customers[first : first + COVERAGE_PART], max_age_days=COVERAGE_MAX_AGE_DAYS
            )
            reply = await behaviour.GetCoverage(part, timeout=TIMEOUT_S)
            coverage["borrowers"] += reply.borrowers
            coverage["assessed_current"] += reply.assessed_current
            for level, count in reply.by_level.items():
                by_level[level] = by_level.get(level, 0) + count
    return measures_of(book, decided, coverage)


def measures_of(
    book: lending_pb2.BookReport, decided: risk_pb2.DecisionReport, coverage: dict[str, Any]
) -> dict[str, Any]:
    """The report's numbers: the servers' counts, and the rates divided from them (None for 0/0)."""
    decisions = [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in decided.products]
    for counted, product in zip(decisions, decided.products, strict=True):
        counted["approval_rate"] = _rate(product.approved, product.decided)
    drawdowns = [json_format.MessageToDict(t, preserving_proto_field_name=True) for t in book.drawdowns]
    asked = sum(t.asked for t in book.drawdowns)
    passed = sum(t.passed for t in book.drawdowns)
    books = [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in book.products]
    decided_total = sum(p.decided for p in decided.products)
    approved_total = sum(p.approved for p in decided.products)
    return {
        "decisions": decisions,
        "approval_rate": _rate(approved_total, decided_total),
        "drawdowns": drawdowns,
        "drawdowns_asked": asked,
        "drawdowns_passed": passed,
        "drawdown_pass_rate": _rate(passed, asked),
        "book": books,
        "early_warning": coverage | {"coverage": _rate(coverage["assessed_current"], coverage["borrowers"])},
    }


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def render(m: dict[str, Any]) -> str:
    """The measures as text tables."""
    out = [f"decisions (approval rate {_percent(m['approval_rate'])})"]
    out.append(
        f"  {'product':<20} {'decided':>8} {'approved':>9} {'declined':>9} {'referred':>9} {'rate':>7} {'lines':>6}"
    )
    for p in m["decisions"]:
        out.append(
            f"  {p['product']:<20} {int(p.get('decided', 0)):>8,} {int(p.get('approved', 0)):>9,}"
            f" {int(p.get('declined', 0)):>9,} {int(p.get('referred', 0)):>9,} {_percent(p['approval_rate']):>7}"
            f" {int(p.get('lines_opened', 0)):>6,}"
        )
    out.append(
        f"drawdowns: {m['drawdowns_asked']:,} asked, {m['drawdowns_passed']:,} passed"
        f" (pass rate {_percent(m['drawdown_pass_rate'])})"
    )
    out.append(f"  {'date':<12} {'asked':>8} {'passed':>8} {'no line':>8} {'limits':>8}")
    for t in m["drawdowns"]:
        out.append(
            f"  {t['date']:<12} {int(t.get('asked', 0)):>8,} {int(t.get('passed', 0)):>8,}"
            f" {int(t.get('refused_no_line', 0)):>8,} {int(t.get('refused_by_limits', 0)):>8,}"
        )
    out.append("book (open loans and principal outstanding by overdue bucket, minor units)")
    for b in m["book"]:
        statuses = ", ".join(f"{s} {int(n):,}" for s, n in sorted(b.get("loans", {}).items())) or "no loans"
        buckets = ", ".join(
            f"{bucket} {int(b['open_by_bucket'][bucket]):,} loans {int(b['outstanding_by_bucket'][bucket]):,}"
            for bucket in sorted(b.get("open_by_bucket", {}))
        )
        out.append(f"  {b['product_code']:<20} {b['currency']} lines {int(b.get('credit_lines', 0)):,}; {statuses}")
        if buckets:
            out.append(f"  {'':<20} {buckets}")
    ew = m["early_warning"]
    levels = ", ".join(f"{level} {count:,}" for level, count in sorted(ew["by_level"].items())) or "none"
    out.append(
        f"early warning: {ew['assessed_current']:,} of {ew['borrowers']:,} borrowers assessed within"
        f" {COVERAGE_MAX_AGE_DAYS} days (coverage {_percent(ew['coverage'])}); levels: {levels}"
    )
    return "\n".join(out)
