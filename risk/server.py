"""The risk process: `yunkai risk serve --router HOST:PORT --scoring HOST:PORT --data-dir D --port P`.

Serves yunkai.risk.v1.DecisionService with the shared plumbing of proto/serving.py (settings
from flags, YUNKAI_RISK_* and `[risk]` in a TOML file; JSON logs; health and reflection;
graceful stop on SIGTERM).

Decide, for one application (the flow's own protocol is in risk/flow.py):
  1. a stored decision under the application id answers a repeat of the same request (and a
     different request under that id is ALREADY_EXISTS); concurrent repeats wait for the first;
  2. check the application against the product's flow (INVALID_ARGUMENT naming a bad field);
  3. score it on the scoring server with the models the flow pins, at their pinned versions,
     with the reasons behind each score (the REASONS_ASKED largest SHAP contributions,
     scoring/reasons.py; none from a model version trained without them, logged once);
  4. evaluate the flow's decision table;
  5. store the decision on the ledger's nodes (risk/store.py: replicated, in the slot of its
     application id) before anything acts on it; of two risk servers deciding one application
     at once, the second finds the first's decision and answers it as a repeat;
  6. with --lending, an approval opens the credit line in the lending service
     (LoanService.ApproveCreditLine): the decided limit at the customer's and the product's
     level and the decided price, under a line id derived from the application id
     (`line_id_of`), so a retry opens it once; the stored decision is then marked
     `credit_line_opened` with that id, and the customer's drawdowns take the line's price.
     If the lending service does not answer meanwhile, the caller gets UNAVAILABLE and
     repeats the same request, which finishes the opening; if it refuses the line (the
     product is not published, or the flow decided outside the product's bounds: a policy
     bug), FAILED_PRECONDITION with its reason, the decision stored as decided.
Nothing but step 5 writes; a refused request changes nothing.

It also serves yunkai.risk.v1.BehaviourService (BehaviourServiceHandler below): behavioural
assessments (risk/behaviour.py has their protocol; they need --router for the limits and
--lending for the borrowers' repayment records) and early warning's follow-ups and coverage
(risk/early_warning.py), over the assessments' records on the ledger (risk/assessments.py).
The process keeps nothing but its audit log: several serve one book.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from prometheus_client import Counter, Histogram

import serving
from clients.ledger import LedgerClient, LedgerError
from clients.records import NAME_PATTERN, CommitFailed, Conflict as RecordConflict, OtherRolesRecord, Records
from clients.scoring import BadScoringReply, ScoringClient
from lending.limits import CUSTOMER_PATTERN, CreditLimits
from proto import inference_pb2, lending_pb2, lending_pb2_grpc, risk_pb2 as pb
from risk import behaviour, early_warning, flow
from risk.assessments import AssessmentStore, as_stored
from risk.locks import KeyedLocks
from risk.store import DecisionStore
from serving import BadRequest, Context, parse_request

log = logging.getLogger("yunkai.risk")

DECISION_SERVICE = "yunkai.risk.v1.DecisionService"
LOAN_SERVICE = lending_pb2.DESCRIPTOR.services_by_name["LoanService"].full_name
BEHAVIOUR_SERVICE = "yunkai.risk.v1.BehaviourService"
LENDING_TIMEOUT_S = 10.0
CUSTOMERS_PER_COVERAGE_MAX = 200_000  # ~4.4 MB of ids: well inside a message; the CLI sends a book in parts
DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
YEAR_MIN, YEAR_MAX = 1970, 9998  # business dates, with room for a year's window either side
APPLICATION_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,32}")
CURRENCY_LEDGER_CNY = 156  # the ISO 4217 numeric code of the limit book credit lines are granted in
OUTCOMES: dict[str, pb.Outcome] = {"approve": pb.APPROVE, "decline": pb.DECLINE, "refer": pb.REFER}
# Reasons stored with each score: the scoring server's most (10). A credit officer gives the few
# that pushed toward the outcome (`yunkai decide` prints four); the rest stay for the record.
REASONS_ASKED = 10

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 7400,
    "data_dir": None,
    "scoring": None,
    "router": None,
    "lending": None,
    "flows_dir": None,
    "metrics_port": None,
    "log_level": "INFO",
    "book": "book",
}

requests_total = Counter("yunkai_risk_requests_total", "Risk RPCs answered", ["method", "status"])
request_latency_s = Histogram(
    "yunkai_risk_request_latency_seconds",
    "RPC latency in the server",
    ["method"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
decisions_total = Counter("yunkai_risk_decisions_total", "Decisions made", ["product", "outcome"])


class Conflict(Exception):
    """Another request was decided under this application id."""


class NotFound(Exception):
    """No decision under this application id."""


class NotConfigured(Exception):
    """The server was started without what this call needs (a flag names it)."""


class UpstreamUnavailable(Exception):
    """The scoring server, the ledger or the lending server did not answer in time: repeat the call."""


class UpstreamRefused(Exception):
    """The scoring server, the ledger or the lending server refused a call (e.g. a model or a
    service is missing there): repeating will not help until that is put right."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serving.add_common_arguments(parser)
    parser.add_argument("--data-dir", help="the server's own directory: its audit log (required)")
    parser.add_argument("--scoring", help="HOST:PORT of `yunkai scoring serve` (required)")
    parser.add_argument(
        "--router",
        help="HOST:PORT of the ledger's router (required): its nodes keep the decision log and the behavioural"
        " records; behavioural assessments move limits there",
    )
    parser.add_argument(
        "--book",
        help="the book whose decisions and assessments these are: kept apart from other books' on the ledger"
        " (default book, as `lending serve --book`)",
    )
    parser.add_argument(
        "--lending",
        help="HOST:PORT of `yunkai lending serve`: approvals open their credit lines there, and behavioural"
        " assessments read repayment records there",
    )
    parser.add_argument("--flows-dir", help="folder of <product>/<version>.json flows (default: risk/flows)")


def main(args: argparse.Namespace) -> int:
    return serving.main(args, command="risk serve", section="risk", defaults=DEFAULTS, check=_check, serve=_serve)


def _check(settings: dict[str, Any]) -> str | None:
    for name in ("data_dir", "scoring", "router"):
        if not settings[name]:
            return f"--{name.replace('_', '-')} is required (or YUNKAI_RISK_{name.upper()})"
    if not NAME_PATTERN.fullmatch(str(settings["book"])):
        return f"--book {settings['book']!r}: a book's name is 1-16 of a-z, 0-9"
    return None


async def _serve(settings: dict[str, Any]) -> None:
    services = [DECISION_SERVICE, BEHAVIOUR_SERVICE]
    await serving.serve(
        settings, role="risk", services=services, app=lambda server, port: _risk(settings, server), log=log
    )


@contextlib.asynccontextmanager
async def _risk(settings: dict[str, Any], server: grpc.aio.Server) -> AsyncIterator[Mapping[str, object]]:
    """Decisions over the scoring server, credit lines in the lending server (--lending),
    behavioural assessments over the lending server's records (--router and --lending)."""
    credentials_out = serving.client_credentials(settings["tls"])
    ledger = await LedgerClient.connect(str(settings["router"]), tls=settings["tls"], insecure=settings["tls"] is None)
    scoring = ScoringClient(str(settings["scoring"]), credentials=credentials_out, insecure=settings["tls"] is None)
    lending = serving.channel(str(settings["lending"]), credentials_out, []) if settings["lending"] else None
    try:
        records = Records(ledger, str(settings["book"]))
        store = DecisionStore(records)
        assessments = AssessmentStore(records)
        limits = CreditLimits(ledger, CURRENCY_LEDGER_CNY)
        flows = flow.Flows(Path(settings["flows_dir"])) if settings["flows_dir"] else flow.Flows()
        if lending is None:
            log.warning("started without --lending: approvals are stored but open no credit line")
        lines = serving.SessionStub(lending, LOAN_SERVICE) if lending is not None else None
        service = DecisionService(store, flows, scoring, lines)
        job = None
        if lending is not None:
            job = behaviour.BehaviourJob(scoring, limits, loans_reader(lending), assessments, behaviour.load_policy())
        server.add_generic_rpc_handlers([service.handler(), BehaviourServiceHandler(assessments, job).handler()])
        yield {"data_dir": settings["data_dir"], "scoring": settings["scoring"], "router": settings["router"]}
    finally:
        await scoring.close()
        await ledger.close()
        if lending is not None:
            await lending.close()


def outcome_of(result: flow.Outcome) -> pb.Outcome:
    return OUTCOMES[result.decision]


# How each refusal is answered; anything else is a bug and fails the call loudly. A flow that
# breaks its own rules (a fractional limit, an approval without one) is INTERNAL, logged as an error.
# The decision log and the behavioural records are on the ledger (risk/store.py, risk/assessments.py):
# a ledger that did not answer, or refused a commit, is a call to repeat; another risk server that
# changed the same record meanwhile (RecordConflict) is a call to repeat on what is stored now.
LOG_ON_LEDGER: serving.Refusals = (
    (OtherRolesRecord, grpc.StatusCode.PERMISSION_DENIED),
    ((LedgerError, CommitFailed), grpc.StatusCode.UNAVAILABLE),
    (RecordConflict, grpc.StatusCode.ABORTED),
)
REFUSALS: serving.Refusals = (
    ((BadRequest, flow.BadApplication), grpc.StatusCode.INVALID_ARGUMENT),
    ((NotFound, flow.FlowNotFound), grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    # The scoring server or the lending server did not answer (or answered what no scoring server
    # should): nothing decided, or the opening to finish.
    ((UpstreamUnavailable, grpc.aio.AioRpcError, BadScoringReply), grpc.StatusCode.UNAVAILABLE),
    (UpstreamRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (flow.FlowError, grpc.StatusCode.INTERNAL),
    *LOG_ON_LEDGER,
)

BEHAVIOUR_REFUSALS: serving.Refusals = (
    (early_warning.TaskNotFound, grpc.StatusCode.NOT_FOUND),
    (early_warning.OutcomeFinal, grpc.StatusCode.FAILED_PRECONDITION),
    ((BadRequest, behaviour.BadBorrower, early_warning.FollowUpRefused), grpc.StatusCode.INVALID_ARGUMENT),
    (behaviour.RunConflict, grpc.StatusCode.ALREADY_EXISTS),
    ((NotConfigured, UpstreamRefused), grpc.StatusCode.FAILED_PRECONDITION),
    # The scoring server, the ledger or the lending server did not answer (or the scoring server
    # answered what it should not): repeat the call.
    ((UpstreamUnavailable, BadScoringReply), grpc.StatusCode.UNAVAILABLE),
    (behaviour.PolicyError, grpc.StatusCode.INTERNAL),
    *LOG_ON_LEDGER,
)
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# An application is stored twice (the request, and its fields again in the decision's table
# input) in records of at most contract.RECORD_VALUE_BYTES_MAX: a quarter each leaves room.
APPLICATION_BYTES_MAX = 16_384


class DecisionService:
    """yunkai.risk.v1.DecisionService over a decision store, the flows, a scoring client and the
    lending service (credit lines)."""

    def __init__(
        self,
        store: DecisionStore,
        flows: flow.Flows,
        scoring: ScoringClient,
        lending: serving.SessionStub | None,
    ) -> None:
        self.store = store
        self.flows = flows
        self.scoring = scoring
        self.lending = lending
        self.deciding = KeyedLocks()
        self.unexplained: set[tuple[str, int]] = set()  # model versions without reasons, logged once each

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, serving.Handler] = {
            "Decide": self.decide,
            "GetDecision": self.get,
            "ReplayDecision": self.replay,
            "GetDecisionReport": self.report,
            "RecordOutcome": self.record_outcome,
        }
        return serving.unary_service(
            DECISION_SERVICE, methods, REFUSALS, requests_total, request_latency_s, log, sessions=True
        )

    async def decide(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.DecideRequest, data)
        _check_request(request)
        # One decision at a time per application id: repeats wait for the first and get its answer.
        async with self.deciding.hold(request.application_id):
            return await self._decide(request)

    async def _decide(self, request: pb.DecideRequest) -> pb.Decision:
        stored = await self.store.get(request.application_id)
        if stored is not None:
            return await self._repeat(request, *stored)
        chosen = self.flows.get(request.product, request.flow_version or None)
        features = {pin.name: await self.scoring.features_of(pin.name, pin.version) for pin in chosen.models}
        prepared = flow.prepare(chosen, request.amount_requested_fen, dict(request.fields), features)
        pins = [pin for pin in chosen.models if pin.name in prepared.rows]
        scored = await asyncio.gather(
            *(self._score(p.name, p.version, prepared.rows[p.name], request.application_id) for p in pins)
        )
        scores = {pin.name: result.score for pin, result in zip(pins, scored, strict=True)}
        table_input = flow.context(request.amount_requested_fen, prepared, scores)
        result = flow.evaluate(chosen, table_input)
        decision = pb.Decision(
            application_id=request.application_id,
            product=chosen.product,
            customer=request.customer,
            flow_version=chosen.version,
            flow_sha256=chosen.sha256,
            outcome=outcome_of(result),
            limit_fen=result.limit_fen,
            price_bps=result.price_bps,
            reason_codes=result.reasons,
            scores=scored,
            table_input_json=json.dumps(table_input, sort_keys=True),
            decided_at_unix_ms=int(time.time() * 1000),
        )
        try:
            await self.store.put(request, decision)
        except RecordConflict:  # another risk server decided it meanwhile: its decision stands
            stored = await self.store.get(request.application_id)
            assert stored is not None, request.application_id  # a decision is never deleted
            return await self._repeat(request, *stored)
        decisions_total.labels(chosen.product, result.decision).inc()
        log.info(
            "decided",
            extra={
                "application_id": request.application_id,
                "product": chosen.product,
                "flow_version": chosen.version,
                "outcome": result.decision,
                "limit_fen": result.limit_fen,
                "reasons": list(result.reasons),
            },
        )
        await self._open_credit_line(decision, stored_version=1)
        return decision

    async def _repeat(self, request: pb.DecideRequest, stored: pb.DecideRequest, decision: pb.Decision) -> pb.Decision:
        """A request for an application already decided: the stored decision, if it is the same request."""
        if stored != request:
            raise Conflict(f"application_id: {request.application_id} was decided for another request")
        await self._open_credit_line(decision)
        return decision

    async def _score(self, model: str, version: int, row: dict[str, float], application_id: str = "") -> pb.ModelScore:
        """One row's score by a pinned model version, with the reasons behind it if it has them;
        under the application's id (none for a replay's rescoring), so that the scoring server
        keeps it for the application's outcome to join (RecordOutcome)."""
        count = min(REASONS_ASKED, await self.scoring.reasons_max_of(model, version))
        if count == 0:
            if (model, version) not in self.unexplained:
                self.unexplained.add((model, version))
                log.warning("scored without reasons: retrain the version", extra={"model": model, "version": version})
            [score] = await self.scoring.score(model, [row], version, request_id=application_id)
            return pb.ModelScore(model=model, version=version, score=score)
        [(score, why)] = await self.scoring.score_with_reasons(model, [row], version, count, request_id=application_id)
        return pb.ModelScore(
            model=model,
            version=version,
            score=score,
            reasons=[score_reason(reason) for reason in why.reasons],
            expected_margin=why.expected_margin,
            others_margin=why.others_margin,
        )

    async def _open_credit_line(self, decision: pb.Decision, stored_version: int = 0) -> None:
        """An approval's credit line in the lending service, at the decided limit and price (step 6)."""
        if self.lending is None or decision.outcome != pb.APPROVE or decision.credit_line_opened:
            return
        line = lending_pb2.ApproveCreditLineRequest(
            customer=decision.customer,
            line_id=line_id_of(decision.application_id),
            product_code=decision.product,
            customer_limit=decision.limit_fen,
            product_limit=decision.limit_fen,
            annual_rate_bps=decision.price_bps,
            application_id=decision.application_id,
        )
        try:
            await self.lending.ApproveCreditLine(line, timeout=LENDING_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            said = f"{error.code().name}: {error.details()}"
            if error.code() in RETRYABLE:
                raise UpstreamUnavailable(f"credit line: the lending server did not answer: {said}") from None
            log.error("credit line refused", extra={"application_id": decision.application_id, "reason": said})
            raise UpstreamRefused(f"credit line: the lending server refused {line.line_id}: {said}") from None
        await self.store.mark_opened(decision, line.line_id, stored_version)
        log.info(
            "credit line opened",
            extra={
                "application_id": decision.application_id,
                "line_id": line.line_id,
                "limit_fen": decision.limit_fen,
                "price_bps": decision.price_bps,
            },
        )

    async def get(self, data: bytes, context: Context) -> Message:
        return (await self._stored(data))[1]

    async def record_outcome(self, data: bytes, context: Context) -> Message:
        """Tell each model that scored an application what became of it, with the score stored
        in its decision (joined even if the scoring server no longer keeps the row's own)."""
        ask = parse_request(pb.OutcomeRequest, data)
        if ask.label not in (0, 1):
            raise BadRequest(f"label: {ask.label}; 1 for a default, 0 for a repaid loan")
        _, decision = await self._lookup(ask.application_id)
        if decision.outcome != pb.APPROVE:
            raise Conflict(f"application_id: {ask.application_id} was not approved: no loan has an outcome")
        reply = pb.OutcomeReply()
        for score in decision.scores:
            try:
                [result] = await self.scoring.record_outcomes(
                    score.model, [(ask.application_id, 0, ask.label)], kept=[(score.version, score.score)]
                )
            except grpc.aio.AioRpcError as error:
                said = f"{error.code().name}: {error.details()}"
                if error.code() in RETRYABLE:
                    raise UpstreamUnavailable(f"the scoring server did not answer: {said}") from None
                raise UpstreamRefused(f"the scoring server refused the outcome: {said}") from None
            reply.results.append(result)
        log.info("outcome recorded", extra={"application_id": ask.application_id, "label": ask.label})
        return reply

    async def report(self, data: bytes, context: Context) -> Message:
        ask = parse_request(pb.DecisionReportRequest, data)
        for field in ("date_from", "date_to"):
            value = getattr(ask, field)
            if value and not (DATE_PATTERN.fullmatch(value) and _is_date(value)):
                raise BadRequest(f"{field}: {value!r} is not a YYYY-MM-DD date")
        products = await self.store.report(ask.date_from, ask.date_to)
        return pb.DecisionReport(products=products)

    async def replay(self, data: bytes, context: Context) -> Message:
        ask = parse_request(pb.ReplayRequest, data)
        _, decision = await self._lookup(ask.application_id)
        chosen = self.flows.get(decision.product, decision.flow_version)
        if chosen.sha256 != decision.flow_sha256:
            raise flow.FlowError(
                f"flow {decision.product} v{decision.flow_version} changed since the decision "
                f"(sha256 {chosen.sha256[:12]} != {decision.flow_sha256[:12]}): published flows must not change"
            )
        table_input = json.loads(decision.table_input_json)
        result = flow.evaluate(chosen, table_input)
        replayed = (outcome_of(result), result.limit_fen, result.price_bps, list(result.reasons))
        original = (decision.outcome, decision.limit_fen, decision.price_bps, list(decision.reason_codes))
        reply = pb.ReplayResponse(
            stored=decision,
            outcome=replayed[0],
            limit_fen=replayed[1],
            price_bps=replayed[2],
            reason_codes=replayed[3],
            identical=replayed == original,
        )
        if ask.rescore:
            application = table_input["application"]
            for stored in decision.scores:
                names = await self.scoring.features_of(stored.model, stored.version)
                row = {n: application[n] for n in names}
                reply.rescored.append(await self._score(stored.model, stored.version, row))
            reply.scores_identical = [s.score for s in reply.rescored] == [s.score for s in decision.scores]
        return reply

    async def _stored(self, data: bytes) -> tuple[pb.DecideRequest, pb.Decision]:
        return await self._lookup(parse_request(pb.DecisionRef, data).application_id)

    async def _lookup(self, application_id: str) -> tuple[pb.DecideRequest, pb.Decision]:
        if not APPLICATION_ID_PATTERN.fullmatch(application_id):
            raise BadRequest(f"application_id: {application_id!r} is not 1-32 of A-Z a-z 0-9 . _ -")
        stored = await self.store.get(application_id)
        if stored is None:
            raise NotFound(f"application_id: no decision for {application_id}")
        return stored


def score_reason(reason: inference_pb2.ScoreReason) -> pb.ScoreReason:
    """The scoring server's reason as the decision stores it."""
    return pb.ScoreReason(
        feature=reason.feature,
        value=reason.value,
        contribution=reason.contribution,
        direction=inference_pb2.ReasonDirection.Name(reason.direction),  # the same names in both protos
        phrase=reason.phrase,
    )


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def line_id_of(application_id: str) -> str:
    """The credit line an approval opens: one per application, within the lending service's
    line id (1-16 of A-Z a-z 0-9 _ -). "a" and 15 hex digits of the id's SHA-256: 60 bits,
    so two applications of one customer and product collide with odds of about 2^-60."""
    return "a" + hashlib.sha256(application_id.encode()).hexdigest()[:15]


def _check_request(request: pb.DecideRequest) -> None:
    if not APPLICATION_ID_PATTERN.fullmatch(request.application_id):
        raise BadRequest(f"application_id: {request.application_id!r} is not 1-32 of A-Z a-z 0-9 . _ -")
    if not request.product:
        raise BadRequest("product: missing")
    if not CUSTOMER_PATTERN.fullmatch(request.customer):
        raise BadRequest(f"customer: {request.customer!r} is not 1-20 letters and digits")
    if request.amount_requested_fen <= 0:
        raise BadRequest(f"amount_requested_fen: {request.amount_requested_fen} must be positive")
    size = request.ByteSize()
    if size > APPLICATION_BYTES_MAX:  # it is stored with its decision, a record of at most 64 KiB
        raise BadRequest(f"fields: the application is {size:,} bytes, more than {APPLICATION_BYTES_MAX:,}")


def loans_reader(channel: grpc.aio.Channel) -> behaviour.LoansOf:
    """A customer's loans from the lending server (LoanService.ListLoans)."""
    stub = lending_pb2_grpc.LoanServiceStub(channel)

    async def loans_of(customer: str) -> list[lending_pb2.Loan]:
        reply = await stub.ListLoans(lending_pb2.ListLoansRequest(customer=customer), timeout=LENDING_TIMEOUT_S)
        return list(reply.loans)

    return loans_of


class BehaviourServiceHandler:
    """yunkai.risk.v1.BehaviourService over the assessments' store and the behaviour job (None:
    the server has no --router or no --lending, and Assess is refused)."""

    def __init__(self, store: AssessmentStore, job: behaviour.BehaviourJob | None) -> None:
        self.store = store
        self.job = job

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, serving.Handler] = {
            "Assess": self.assess,
            "ListFollowUps": self.list_follow_ups,
            "RecordFollowUpOutcome": self.record_outcome,
            "GetCoverage": self.coverage,
        }
        return serving.unary_service(
            BEHAVIOUR_SERVICE, methods, BEHAVIOUR_REFUSALS, requests_total, request_latency_s, log
        )

    async def assess(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.AssessRequest, data)
        if self.job is None:
            raise NotConfigured("Assess: the risk server was started without --router and --lending (both needed)")
        try:
            if not DATE_PATTERN.fullmatch(request.date):
                raise ValueError(request.date)
            as_of = date.fromisoformat(request.date)
        except ValueError:
            raise BadRequest(f"date: {request.date!r} is not a YYYY-MM-DD business date") from None
        if not YEAR_MIN <= as_of.year <= YEAR_MAX:
            raise BadRequest(f"date: {request.date} is not between {YEAR_MIN} and {YEAR_MAX}")
        borrowers = [behaviour.Borrower(b.customer, dict(b.profile)) for b in request.borrowers]
        try:
            records, left = await self.job.run(request.run_id, as_of, borrowers)
        except (grpc.aio.AioRpcError, LedgerError) as error:
            code = error.code if isinstance(error, LedgerError) else error.code()
            said = str(error) if isinstance(error, LedgerError) else f"{code.name}: {error.details()}"
            if code in RETRYABLE:
                raise UpstreamUnavailable(f"the scoring server, the ledger or the lending server: {said}") from None
            raise UpstreamRefused(f"the scoring server, the ledger or the lending server refused: {said}") from None
        log.info("assessed", extra={"run_id": request.run_id, "borrowers": len(records), "not_assessed": len(left)})
        return pb.AssessResponse(
            assessments=[assessment_message(record) for record in records],
            not_assessed=[
                pb.NotAssessed(customer=n.customer, reason=n.reason, no_credit_line=n.no_credit_line) for n in left
            ],
        )

    async def list_follow_ups(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.ListFollowUpsRequest, data)
        if request.kind not in ("", *early_warning.KINDS.values()):
            raise BadRequest(f"kind: {request.kind!r} is not call, visit or empty")
        tasks = await early_warning.open_tasks(self.store, request.kind or None)
        return pb.ListFollowUpsResponse(follow_ups=[follow_up_message(task) for task in tasks])

    async def record_outcome(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.FollowUpOutcome, data)
        task = await early_warning.record_outcome(self.store, request.task, request.outcome, request.note)
        return follow_up_message(task)

    async def coverage(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.CoverageRequest, data)
        days = request.max_age_days or early_warning.MAX_AGE_DAYS_DEFAULT
        if not 0 < days <= 36_500:
            raise BadRequest(f"max_age_days: {request.max_age_days} is not between 0 and 36,500")
        if len(request.customers) > CUSTOMERS_PER_COVERAGE_MAX:
            raise BadRequest(f"customers: more than {CUSTOMERS_PER_COVERAGE_MAX:,} in one call")
        bad = next((c for c in request.customers if not CUSTOMER_PATTERN.fullmatch(c)), None)
        if bad is not None:
            raise BadRequest(f"customers: {bad!r} is not 1-20 letters and digits")
        found = await early_warning.coverage(  # up to 200,000 reads, a thousand a call
            self.store, list(request.customers), early_warning.now_ms(), int(days * early_warning.DAY_MS)
        )
        return pb.Coverage(
            borrowers=found["borrowers"],
            assessed_current=found["assessed_current"],
            coverage=found["coverage"],
            by_level=found["by_level"],
            max_age_days=found["max_age_days"],
        )


def assessment_message(record: dict[str, Any]) -> pb.Assessment:
    pins = dict((name, version) for name, version in record["models"])
    return pb.Assessment(
        run_id=record["run_id"],
        customer=record["customer"],
        date=record.get("date", ""),  # records the file-fed job wrote before BehaviourService have none
        action=record["action"],
        amount_fen=record["amount_fen"],
        warning_level=record["warning_level"],
        reason_codes=record["reasons"],
        applied=record["applied"],
        policy_version=record["policy_version"],
        policy_sha256=record["policy_sha256"],
        scores=[
            pb.ModelScore(model=name, version=pins[name], score=score)
            for name, score in record["input"]["scores"].items()
        ],
        features=record.get("features", {}),
        record_json=json.dumps(as_stored(record), sort_keys=True),
    )


def follow_up_message(task: dict[str, Any]) -> pb.FollowUp:
    return pb.FollowUp(
        task=task["task"],
        customer=task["customer"],
        kind=task["kind"],
        level=task["level"],
        reason_codes=task["reasons"],
        opened_at_unix_ms=task["opened_at_unix_ms"],
        outcome=task["outcome"] or "",
        note=task["note"],
        closed_at_unix_ms=task["closed_at_unix_ms"] or 0,
    )
