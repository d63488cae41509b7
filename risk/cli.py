"""`yunkai decide ...` and `yunkai risk get|replay ...`: the decision service's commands, over gRPC.

    yunkai decide --risk HOST:PORT --product SME-TAX-LOAN --applicant '{"customer": "c1",
        "amount_requested_fen": 5000000, "Income": 150, ...}' [--application-id ID] [--flow-version N]
    yunkai risk get --risk HOST:PORT ID
    yunkai risk replay --risk HOST:PORT ID [--rescore]
    yunkai risk behaviour --risk HOST:PORT --run-id R --date YYYY-MM-DD --profiles FILE.jsonl
    yunkai risk followups --risk HOST:PORT [--kind call|visit]
    yunkai risk followup-outcome --risk HOST:PORT TASK --outcome O [--note N]
    yunkai risk coverage --risk HOST:PORT --borrowers FILE.jsonl [--max-age-days N]

`behaviour` is the batch job of behavioural limit management (risk/behaviour.py): it sends the
profiles file (JSON lines: `customer` and the borrower's features from outside the ledger)
to BehaviourService.Assess in chunks under one run id, shows progress on stderr and prints
each stored assessment as a JSON line; a rerun with the same run id changes nothing.

The applicant JSON holds `customer`, `amount_requested_fen` (an integer) and the flow's
numeric fields by name; a field left out is missing data. Each command prints the decision
as JSON; a refusal prints the server's reason (naming the bad field) on stderr and exits 1.
`decide` and `get` also print, on stderr, the principal reasons a credit officer can give:
for each score, up to four of its stored reasons that pushed toward the outcome (toward
decline for a decline or a referral, toward approval for an approval), largest first. The
flows' models score the bad outcome (default), so a reason that raised the score pushed
toward decline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

import serving
from lending.limits import CUSTOMER_PATTERN
from proto import risk_pb2 as pb, risk_pb2_grpc
from risk import repayment

RISK_DEFAULT = "127.0.0.1:7400"
TIMEOUT_S = 10.0
CHUNK_DEFAULT = 500
COVERAGE_PART = 100_000
CHUNK_TIMEOUT_S_PER_BORROWER = 0.1
EXIT_REFUSED = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_PARTIAL = 3  # a batch job that could not do all it should have: the summary says what
CHUNK_ATTEMPTS = 3
CHUNK_RETRY_PAUSE_S = 1.0
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
WHOLE_RUN_REFUSALS = (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION)
DONE_ANSWERS = ("OK", "SUPERSEDED")  # an action taken (or replayed), or made moot by a newer run
PRINCIPAL_REASONS_MAX = 4  # as adverse-action notices give them (e.g. US Regulation B: no more than four)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--risk", default=RISK_DEFAULT, help=f"HOST:PORT of yunkai risk serve (default {RISK_DEFAULT})")
    serving.add_tls_arguments(parser)


def add_decide_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--product", required=True, help="product code, e.g. SME-TAX-LOAN")
    parser.add_argument("--applicant", required=True, help="JSON object: customer, amount_requested_fen, fields")
    parser.add_argument("--application-id", help="idempotency key (default: a new random id)")
    parser.add_argument("--flow-version", type=int, default=0, help="flow version (default: the product's newest)")
    parser.set_defaults(run=decide_main)


def add_risk_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`yunkai risk get|replay`; `serve` is added beside them by cluster/cli.py."""
    for name, text in (("get", "print a stored decision"), ("replay", "re-evaluate a stored decision and compare")):
        sub = actions.add_parser(name, help=text, description=text)
        _common(sub)
        sub.add_argument("application_id")
        if name == "replay":
            sub.add_argument("--rescore", action="store_true", help="also score the application again and compare")
        sub.set_defaults(run=get_main if name == "get" else replay_main)
    text = "write a decision flow for each product of a catalogue that has none (or whose terms changed)"
    derive = actions.add_parser(
        "derive-flows",
        help=text,
        description=f"{text}: risk/derive.py's template over the product's amounts and rate bounds, as the next "
        "version of its flow; hand-written flows are left alone. --check writes nothing and exits 1 if anything "
        "is missing or stale.",
    )
    derive.add_argument("--catalogue", type=Path, help="products TOML (default: the sample catalogue)")
    derive.add_argument("--flows-dir", type=Path, help="flows folder (default: risk/flows)")
    derive.add_argument("--check", action="store_true", help="write nothing; exit 1 if a flow is missing or stale")
    derive.set_defaults(run=derive_main)


def derive_main(args: argparse.Namespace) -> int:
    from risk import derive  # zen-engine and the catalogue reader: only for this command

    return derive.main(args)


def add_behaviour_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`yunkai risk behaviour | followups | followup-outcome | coverage` (BehaviourService)."""
    text = "score existing borrowers and raise, lower, freeze, unfreeze or warn (idempotent per run)"
    job = actions.add_parser(
        "behaviour",
        help=text,
        description="Behavioural limit management: the risk server scores each borrower of --profiles "
        "(early_warning, repayment_willingness) from their profile and their repayment records as of --date, "
        "evaluates the behaviour policy table, records why and applies the action to the customer's limit on "
        "the ledger. A rerun with the same --run-id changes nothing. Each borrower's outcome is printed (the "
        "assessment on stdout; why one was not assessed, on stderr), then what the job did and could not do. "
        f"Exit 0 when every borrower with a credit line was assessed and every action taken, {EXIT_PARTIAL} "
        f"when not (run it again with the same --run-id to finish), {EXIT_REFUSED} when the server refused the "
        f"run, {EXIT_BAD_ARGUMENTS} for bad arguments or profiles.",
    )
    _common(job)
    job.add_argument("--run-id", required=True, help="the run's id, 1-16 of A-Z a-z 0-9 . _ -")
    job.add_argument("--date", required=True, help="business date YYYY-MM-DD the repayment records are read as of")
    job.add_argument(
        "--profiles", type=Path, required=True, help="JSON lines: customer and features from outside the ledger"
    )
    job.add_argument(
        "--chunk", type=int, default=CHUNK_DEFAULT, help=f"borrowers per call (default {CHUNK_DEFAULT}, at most 1,000)"
    )
    job.set_defaults(run=behaviour_main)
    text = "list the open early-warning follow-ups (visits, then calls)"
    follow_ups = actions.add_parser("followups", help=text, description=text)
    _common(follow_ups)
    follow_ups.add_argument("--kind", choices=("call", "visit"), help="only calls or only visits")
    follow_ups.set_defaults(run=followups_main)
    text = "record what a follow-up call or visit found (final once recorded)"
    outcome = actions.add_parser("followup-outcome", help=text, description=text)
    _common(outcome)
    outcome.add_argument("task", help="RUN/CUSTOMER, as `yunkai risk followups` lists it")
    outcome.add_argument("--outcome", required=True, help="what was found, e.g. promised_to_pay, not_reached")
    outcome.add_argument("--note", default="", help="free text, up to 500 characters")
    outcome.set_defaults(run=outcome_main)
    text = "share of a book of borrowers with a current assessment"
    coverage = actions.add_parser("coverage", help=text, description=text)
    _common(coverage)
    coverage.add_argument("--borrowers", type=Path, required=True, help="the book: JSON lines with `customer`")
    coverage.add_argument("--max-age-days", type=float, default=30.0, help="what counts as current (default 30)")
    coverage.set_defaults(run=coverage_main)


def read_profiles(path: Path) -> list[pb.Borrower]:
    """Borrowers of a JSON-lines file, all checked before any is sent (so a bad line 900 does
    not leave the first chunks applied); ValueError naming the file, line and field."""
    borrowers: list[pb.Borrower] = []
    seen: dict[str, int] = {}
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: not JSON: {error}") from None
            if not isinstance(item, dict) or not isinstance(item.get("customer"), str):
                raise ValueError(f"{path}:{number}: customer: missing or not a string")
            customer = item.pop("customer")
            if not CUSTOMER_PATTERN.fullmatch(customer):
                raise ValueError(f"{path}:{number}: customer: {customer!r} is not 1-20 letters and digits")
            if customer in seen:
                raise ValueError(f"{path}:{number}: customer: {customer} is also on line {seen[customer]}")
            seen[customer] = number
            profile = {}
            for name, value in item.items():
                if name in repayment.FEATURES:
                    raise ValueError(f"{path}:{number}: {name}: read from the repayment records, not a profile")
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise ValueError(f"{path}:{number}: {name}: {value!r} is not a finite number")
                profile[name] = float(value)
            borrowers.append(pb.Borrower(customer=customer, profile=profile))
    return borrowers


def decide_request(product: str, applicant_json: str, application_id: str, flow_version: int) -> pb.DecideRequest:
    """The request for an applicant given as JSON; ValueError naming what is wrong."""
    applicant: Any = json.loads(applicant_json)
    if not isinstance(applicant, dict):
        raise ValueError("--applicant: not a JSON object")
    applicant = dict(applicant)
    customer = applicant.pop("customer", "")
    amount = applicant.pop("amount_requested_fen", 0)
    if not isinstance(customer, str):
        raise ValueError("customer: not a string")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise ValueError("amount_requested_fen: not an integer (money is integer fen)")
    fields = {}
    for name, value in applicant.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{name}: {value!r} is not a number")
        fields[name] = float(value)
    return pb.DecideRequest(
        application_id=application_id,
        product=product,
        customer=customer,
        amount_requested_fen=amount,
        fields=fields,
        flow_version=flow_version,
    )


def principal_reasons(decision: pb.Decision) -> list[str]:
    """The lines that tell a credit officer why: per score, up to PRINCIPAL_REASONS_MAX of its
    reasons that pushed toward the decision's outcome, largest first."""
    outcome = pb.Outcome.Name(decision.outcome)
    approved = decision.outcome == pb.APPROVE
    toward, direction = ("approval", pb.LOWERS_SCORE) if approved else ("decline", pb.RAISES_SCORE)
    lines = []
    for score in decision.scores:
        head = f"{outcome}: {score.model} v{score.version} scored {score.score:.4f}"
        if not score.reasons:
            lines.append(f"{head}; no reasons (the model version was trained without them)")
            continue
        chosen = [r for r in score.reasons if r.direction == direction][:PRINCIPAL_REASONS_MAX]
        lines.append(f"{head}; principal reasons toward {toward}:" if chosen else f"{head}; none toward {toward}")
        lines.extend(
            f"  {n}. {r.phrase} ({r.feature} {r.value:g}, {r.contribution:+.3f} log-odds)"
            for n, r in enumerate(chosen, 1)
        )
    return lines


def _call(
    args: argparse.Namespace,
    method: str,
    request: Message,
    stub_class: Any = risk_pb2_grpc.DecisionServiceStub,
    lines: str | None = None,
) -> int:
    """Call `method` and print the reply as JSON, or with `lines`, each item of that repeated
    field as a JSON line; a refusal is printed on stderr (exit 1). A decision's principal
    reasons follow on stderr."""

    async def run() -> Message:
        async with serving.channel(
            args.risk, serving.client_credentials(serving.client_tls(args, "operator")), []
        ) as channel:
            reply: Message = await getattr(stub_class(channel), method)(request, timeout=TIMEOUT_S)
            return reply

    try:
        reply = asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        print(f"refused ({error.code().name}): {error.details()}", file=sys.stderr)
        return EXIT_REFUSED
    if lines is None:
        print(json_format.MessageToJson(reply, preserving_proto_field_name=True, indent=2))
    if isinstance(reply, pb.Decision):
        for line in principal_reasons(reply):
            print(line, file=sys.stderr)
    for item in getattr(reply, lines) if lines else ():
        print(json.dumps(json_format.MessageToDict(item, preserving_proto_field_name=True), sort_keys=True))
    return 0


def decide_main(args: argparse.Namespace) -> int:
    application_id = args.application_id or uuid.uuid4().hex[:20]
    try:
        request = decide_request(args.product, args.applicant, application_id, args.flow_version)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    return _call(args, "Decide", request)


def behaviour_main(args: argparse.Namespace) -> int:
    """The batch job: the book in chunks; each borrower's outcome on its own line (assessed: the
    record on stdout; not assessed: why, on stderr), progress and a summary on stderr. A chunk
    the server does not answer is tried CHUNK_ATTEMPTS times, then its borrowers are counted not
    assessed and the job goes on. Exit 0 when every borrower with a credit line was assessed
    and every action taken; EXIT_PARTIAL when something it should have done was not done."""
    try:
        if not 1 <= args.chunk <= 1_000:
            raise ValueError(f"--chunk: {args.chunk} is not 1 to 1,000")
        borrowers = read_profiles(args.profiles)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    tally = JobTally()

    async def run() -> None:
        async with serving.channel(
            args.risk, serving.client_credentials(serving.client_tls(args, "operator")), []
        ) as channel:
            stub = risk_pb2_grpc.BehaviourServiceStub(channel)
            started = time.monotonic()
            for first in range(0, len(borrowers), args.chunk):
                chunk = borrowers[first : first + args.chunk]
                request = pb.AssessRequest(run_id=args.run_id, date=args.date, borrowers=chunk)
                timeout = TIMEOUT_S + CHUNK_TIMEOUT_S_PER_BORROWER * len(chunk)
                for attempt in range(1, CHUNK_ATTEMPTS + 1):
                    try:
                        reply = await stub.Assess(request, timeout=timeout)
                        break
                    except grpc.aio.AioRpcError as error:
                        if error.code() not in RETRIED or attempt == CHUNK_ATTEMPTS:
                            if error.code() in WHOLE_RUN_REFUSALS:
                                raise  # every chunk would be refused alike: the run's settings are wrong
                            said = f"{error.code().name}: {error.details()}"
                            reply = pb.AssessResponse(
                                not_assessed=[pb.NotAssessed(customer=b.customer, reason=said) for b in chunk]
                            )
                            break
                        await asyncio.sleep(CHUNK_RETRY_PAUSE_S * attempt)
                for assessment in reply.assessments:
                    print(assessment.record_json, flush=True)
                for left in reply.not_assessed:
                    kind = "not a borrower" if left.no_credit_line else "not assessed"
                    print(f"{kind}: {left.customer}: {left.reason}", file=sys.stderr, flush=True)
                tally.add(reply)
                done = first + len(chunk)
                rate = done / max(time.monotonic() - started, 1e-9)
                print(f"assessed {done:,}/{len(borrowers):,} borrowers ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    try:
        asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        print(f"refused ({error.code().name}): {error.details()}", file=sys.stderr)
        print(tally.summary(), file=sys.stderr)
        return EXIT_REFUSED
    print(tally.summary(), file=sys.stderr)
    return EXIT_PARTIAL if tally.undone() else 0


class JobTally:
    """What a batch job did, and what it could not do."""

    def __init__(self) -> None:
        self.actions: dict[tuple[str, str], int] = {}  # (action, the ledger's answer) -> borrowers
        self.no_credit_line = 0
        self.not_assessed = 0

    def add(self, reply: pb.AssessResponse) -> None:
        for assessment in reply.assessments:
            key = (assessment.action, assessment.applied)
            self.actions[key] = self.actions.get(key, 0) + 1
        for left in reply.not_assessed:
            if left.no_credit_line:
                self.no_credit_line += 1
            else:
                self.not_assessed += 1

    def refused_actions(self) -> int:
        return sum(n for (_, applied), n in self.actions.items() if applied not in DONE_ANSWERS)

    def undone(self) -> int:
        return self.not_assessed + self.refused_actions()

    def summary(self) -> str:
        assessed = sum(self.actions.values())
        parts = [f"{action} {n:,} ({applied})" for (action, applied), n in sorted(self.actions.items())]
        return (
            f"done: {assessed:,} assessed ({', '.join(parts) or 'none'}); {self.no_credit_line:,} without a credit"
            f" line (nothing to assess); {self.not_assessed:,} not assessed; {self.refused_actions():,} actions"
            " the ledger refused"
        )


def followups_main(args: argparse.Namespace) -> int:
    request = pb.ListFollowUpsRequest(kind=args.kind or "")
    return _call(args, "ListFollowUps", request, stub_class=risk_pb2_grpc.BehaviourServiceStub, lines="follow_ups")


def outcome_main(args: argparse.Namespace) -> int:
    request = pb.FollowUpOutcome(task=args.task, outcome=args.outcome, note=args.note)
    return _call(args, "RecordFollowUpOutcome", request, stub_class=risk_pb2_grpc.BehaviourServiceStub)


def coverage_main(args: argparse.Namespace) -> int:
    try:
        customers = [str(b.customer) for b in read_profiles(args.borrowers)]
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS

    async def run() -> dict[str, Any]:
        total: dict[str, Any] = {"borrowers": 0, "assessed_current": 0, "by_level": {}}
        async with serving.channel(
            args.risk, serving.client_credentials(serving.client_tls(args, "operator")), []
        ) as channel:
            stub = risk_pb2_grpc.BehaviourServiceStub(channel)
            for first in range(0, max(len(customers), 1), COVERAGE_PART):  # the server takes 200,000 a call
                part = customers[first : first + COVERAGE_PART]
                request = pb.CoverageRequest(customers=part, max_age_days=args.max_age_days)
                reply = await stub.GetCoverage(request, timeout=TIMEOUT_S + len(part) / 10_000)
                total["borrowers"] += reply.borrowers
                total["assessed_current"] += reply.assessed_current
                for level, count in reply.by_level.items():
                    total["by_level"][level] = total["by_level"].get(level, 0) + count
                total["max_age_days"] = reply.max_age_days
        total["coverage"] = total["assessed_current"] / total["borrowers"] if total["borrowers"] else 0.0
        return total

    try:
        print(json.dumps(asyncio.run(run()), sort_keys=True))
    except grpc.aio.AioRpcError as error:
        print(f"refused ({error.code().name}): {error.details()}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def get_main(args: argparse.Namespace) -> int:
    return _call(args, "GetDecision", pb.DecisionRef(application_id=args.application_id))


def replay_main(args: argparse.Namespace) -> int:
    return _call(args, "ReplayDecision", pb.ReplayRequest(application_id=args.application_id, rescore=args.rescore))
