"""Who may call what, enforced in one place: the method table and the gate every server runs.

ALLOWED is the table: each method of every yunkai service, and the roles (serving/tls.py)
allowed to call it. The Gate is a server interceptor in front of every handler of every
server (serving/bootstrap.py installs it). For each call it:

  1. finds the caller's identity in its client certificate (its one spiffe:// URI SAN, which
     the TLS handshake verified against the CA; gRPC names it `peer_spiffe_id`, and never
     takes it from a common name or a DNS name); none, or not a yunkai one → UNAUTHENTICATED.
     A caller with no certificate at all never gets this far: mutual TLS refuses the handshake (gRPC Python
     can require a client certificate but cannot request one optionally), which the caller
     sees as UNAVAILABLE;
  2. looks the method up: not in the table, or the role not allowed → PERMISSION_DENIED
     (a method nobody listed is nobody's);
  3. takes a token from the caller's bucket (CallerLimits): empty → RESOURCE_EXHAUSTED with
     `retry-after-ms` in the trailing metadata; server-streaming calls also count against
     the caller's open streams (at most `streams_per_caller_max`);
  4. runs the handler with the caller in `CALLER` (a context variable handlers read to stamp
     what they store), within the server's maximum deadline (`deadline_s_max`, for callers
     other than the cluster's own nodes and routers, whose slot copies may take longer):
     DEADLINE_EXCEEDED beyond it;
  5. for a method in AUDITED (every admin call, every call that moves money or changes an
     account, a product, a model or a credit line, and reads of applicants' data), records
     the caller, the method, the ids the request names, and the outcome in the server's
     audit log (serving/audit.py) before the answer leaves. Calls this gate refuses (no
     identity, wrong role) are audited too, at most one entry per caller and method a second
     (the entry counts those it stands for), so that no caller can fill the disk with
     refusals; calls over their rate are not audited one by one. Every refusal of the gate
     is counted (yunkai_gate_refused_total by method and status). An audit
     log that cannot be written fails the call UNAVAILABLE (fail closed); what the handler
     had already done stays done, and attributed: the ledger stamps every event with its
     caller (`created_by`).

A router forwards a caller's ledger calls with its own certificate and names the caller in
the `yunkai-caller` metadata; the gate believes that name only from a router. With
--insecure there are no identities: the gate lets every call through as ANONYMOUS (the
server logged that choice when it started).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import grpc
from google.protobuf import descriptor_pool, message, message_factory
from prometheus_client import Counter

from serving.audit import IDS_LISTED_MAX, AuditLog, AuditUnavailable
from serving.session import SESSION_NAME, STREAMS_CAP_METADATA, Unary, answer_calls
from serving.tls import Identity

log = logging.getLogger("yunkai.authz")
REFUSED = Counter("yunkai_gate_refused_total", "Calls the gate refused, by method and status", ["method", "status"])
CALLER_METADATA = "yunkai-caller"
_REFUSALS_AUDITED_EVERY_S = 1.0
_REFUSALS_TRACKED_MAX = 65_536  # (caller, method) pairs remembered; past it, forgotten all at once
_CALLERS_TRACKED_MAX = 65_536  # callers' buckets kept; past it, every bucket starts full again
_SESSION_SUFFIX = f"/{SESSION_NAME}"
_SESSION_METHODS_KEPT = 64  # a session's method lookups remembered (a caller may name any method)
RETRY_AFTER_METADATA = "retry-after-ms"
ANONYMOUS = Identity("service", "anonymous")

NODE, ROUTER, OPERATOR = "node", "router", "operator"
SCORING, LENDING, RISK, SERVICE, PARTNER = "scoring", "lending", "risk", "service", "partner"
GATEWAY = "gateway"
EVERYONE = frozenset({NODE, ROUTER, OPERATOR, SCORING, LENDING, RISK, SERVICE, PARTNER, GATEWAY})
_LEDGER_WRITERS = frozenset({SERVICE, LENDING, RISK, ROUTER})
_LEDGER_READERS = _LEDGER_WRITERS | {OPERATOR}
# Slot-local records are the business services' own (node/records.py): lending, risk and the
# partner gateway write and read them, a router forwards them, an operator reads them.
_RECORD_WRITERS = frozenset({LENDING, RISK, GATEWAY, ROUTER})
_RECORD_READERS = _RECORD_WRITERS | {OPERATOR}
_MAP_READERS = frozenset({SERVICE, LENDING, RISK, GATEWAY, ROUTER, OPERATOR, NODE})
_CONTROLLER = frozenset({ROUTER})
_MODEL_USERS = frozenset({RISK, SERVICE, LENDING, OPERATOR})


def _service(name: str, methods: Mapping[str, frozenset[str]], sessions: bool = False) -> dict[str, frozenset[str]]:
    """The service's methods; with `sessions`, its Session method too (serving/session.py),
    open to every role allowed some method of it (each call on it is checked as itself)."""
    table = {f"/{name}/{method}": roles for method, roles in methods.items()}
    if sessions:
        table[f"/{name}/{SESSION_NAME}"] = frozenset().union(*methods.values())
    return table


# method -> the roles allowed to call it. Who is behind each role: node and router are the
# cluster's own processes (a router is also the controller); operator is a person or script
# running `yunkai cluster|product|loan|eod|risk|partner ...`; service is an internal
# application using the SDK; lending, risk and scoring are those servers calling others;
# gateway is the open platform's partner gateway (gateway/), which calls the journey's
# methods for partners; partner names the gateway's own callers, who never reach these
# services directly.
ALLOWED: dict[str, frozenset[str]] = {
    **_service(
        "yunkai.ledger.v1.Ledger",
        {
            # The partner gateway, facing the internet, gets only what the journey uses: opening a
            # customer's deposit, moving what a partner collected into it, reading balances and
            # statements (no account changes, no transfer lookups).
            "CreateAccounts": _LEDGER_WRITERS | {GATEWAY},
            "CreateTransfers": _LEDGER_WRITERS | {GATEWAY},
            "ChangeAccounts": _LEDGER_WRITERS,
            "LookupAccounts": _LEDGER_READERS | {GATEWAY},
            "LookupTransfers": _LEDGER_READERS,
            "GetAccountTransfers": _LEDGER_READERS | {GATEWAY},
            "CommitRecords": _RECORD_WRITERS,
            "LookupRecords": _RECORD_READERS,
            "ScanRecords": _RECORD_READERS,
        },
        sessions=True,
    ),
    **_service(
        "yunkai.node.v1.Node",
        {
            "GetSlots": frozenset({ROUTER, NODE, OPERATOR}),
            "AssignSlots": _CONTROLLER,
            "PrepareImport": _CONTROLLER,
            "StartExport": _CONTROLLER,
            "FreezeSlot": _CONTROLLER,
            "AbortMove": _CONTROLLER,
            "SilentFollowers": _CONTROLLER,
            "ApplyCreditLegs": frozenset({NODE}),
            "ImportSlot": frozenset({NODE}),
            "Replicate": frozenset({NODE}),
            # Backups and restores (node/backup.py): an operator's, never a service's.
            "HoldCreditLegs": frozenset({OPERATOR}),
            "CutSlots": frozenset({OPERATOR}),
            "ReleaseCreditLegs": frozenset({OPERATOR}),
            "ReadCut": frozenset({OPERATOR}),
            "RestoreSlot": frozenset({OPERATOR}),
            "FinishRestore": frozenset({OPERATOR}),
        },
        sessions=True,
    ),
    **_service(
        "yunkai.cluster.v1.Cluster",
        {
            "GetShardMap": _MAP_READERS,
            "WatchShardMap": _MAP_READERS,
            "Status": frozenset({OPERATOR, ROUTER}),
            # A router forwards an operator's change to the controller (it checked the operator).
            "AddNode": frozenset({OPERATOR, ROUTER}),
            "DrainNode": frozenset({OPERATOR, ROUTER}),
            "Rebalance": frozenset({OPERATOR, ROUTER}),
            # A planned restart's steps (a router forwards them to the controller, as the jobs).
            "StepDown": frozenset({OPERATOR, ROUTER}),
            "Resume": frozenset({OPERATOR, ROUTER}),
        },
    ),
    **_service(
        "inference.GRPCInferenceService",
        {
            "ServerLive": _MODEL_USERS,
            "ServerReady": _MODEL_USERS,
            "ModelReady": _MODEL_USERS,
            "ServerMetadata": _MODEL_USERS,
            "ModelMetadata": _MODEL_USERS,
            "ModelInfer": _MODEL_USERS,
            "RepositoryIndex": frozenset({OPERATOR, RISK}),
            "RepositoryModelLoad": frozenset({OPERATOR}),
            "RepositoryModelUnload": frozenset({OPERATOR}),
            "RepositoryModelDeploy": frozenset({OPERATOR}),
            "RepositoryModelPromote": frozenset({OPERATOR}),
            "RepositoryModelRollback": frozenset({OPERATOR}),
            # Outcomes come from whoever learns of repayments: the lending and risk servers, a
            # service's job, an operator's file; the monitoring report is the operators'.
            "ModelOutcome": frozenset({OPERATOR, LENDING, RISK, SERVICE}),
            "ModelMonitor": frozenset({OPERATOR}),
        },
    ),
    **_service(
        "yunkai.lending.v1.ProductService",
        {
            "SaveDraft": frozenset({OPERATOR}),
            "PublishProduct": frozenset({OPERATOR}),
            "RetireProduct": frozenset({OPERATOR}),
            "GetProduct": frozenset({OPERATOR, SERVICE, RISK, LENDING}),
            "ListProducts": frozenset({OPERATOR, SERVICE, RISK, LENDING}),
        },
    ),
    **_service(
        "yunkai.lending.v1.LoanService",
        {
            "ApproveCreditLine": frozenset({RISK, OPERATOR}),
            "Drawdown": frozenset({SERVICE, OPERATOR, GATEWAY}),
            "Repay": frozenset({SERVICE, OPERATOR, GATEWAY}),
            "PayOff": frozenset({SERVICE, OPERATOR}),
            "WriteOff": frozenset({OPERATOR}),
            "PlanEod": frozenset({OPERATOR}),
            "RunEodSlot": frozenset({OPERATOR}),
            "GetLoan": frozenset({SERVICE, OPERATOR, RISK, GATEWAY}),
            "ListLoans": frozenset({SERVICE, OPERATOR, RISK}),
            "GetGlReport": frozenset({OPERATOR}),
            "GetBookReport": frozenset({OPERATOR}),
            "GetJournal": frozenset({OPERATOR}),
            "ClosePeriod": frozenset({OPERATOR}),
            "Provision": frozenset({OPERATOR}),
        },
        sessions=True,
    ),
    **_service(
        "yunkai.risk.v1.DecisionService",
        {
            "Decide": frozenset({SERVICE, OPERATOR, GATEWAY}),
            # A decision holds the applicant's personal data: only who decides and who reviews.
            "GetDecision": frozenset({SERVICE, OPERATOR, GATEWAY}),
            "ReplayDecision": frozenset({OPERATOR}),
            "GetDecisionReport": frozenset({OPERATOR}),
            "RecordOutcome": frozenset({LENDING, OPERATOR}),
        },
        sessions=True,
    ),
    **_service(
        "yunkai.risk.v1.BehaviourService",
        {
            "Assess": frozenset({OPERATOR}),
            "ListFollowUps": frozenset({OPERATOR, SERVICE}),
            "RecordFollowUpOutcome": frozenset({OPERATOR, SERVICE}),
            "GetCoverage": frozenset({OPERATOR}),
        },
    ),
    **_service(
        "yunkai.gateway.v1.Partners",
        {
            "RegisterPartner": frozenset({OPERATOR}),
            "ListPartners": frozenset({OPERATOR}),
            "AddApp": frozenset({OPERATOR}),
            "RotateSecret": frozenset({OPERATOR}),
            "Revoke": frozenset({OPERATOR}),
            "SetWebhook": frozenset({OPERATOR}),
        },
    ),
    **_service("grpc.health.v1.Health", {"Check": EVERYONE, "Watch": EVERYONE, "List": EVERYONE}),
    # Registered only with --reflection (serving/bootstrap.py).
    **_service("grpc.reflection.v1alpha.ServerReflection", {"ServerReflectionInfo": EVERYONE}),
}

# What the audit log records (see the module): every method that changes something a caller
# owns or the cluster's shape, or reads an applicant's personal data.
AUDITED: frozenset[str] = frozenset(
    method
    for method in ALLOWED
    if method.rpartition("/")[2]
    in {
        # the ledger
        "CreateAccounts",
        "CreateTransfers",
        "ChangeAccounts",
        "CommitRecords",
        # a node's slots, moves and the money other nodes send it
        "AssignSlots",
        "PrepareImport",
        "StartExport",
        "FreezeSlot",
        "AbortMove",
        "ImportSlot",
        "ApplyCreditLegs",
        # backups read every slot; restores write them
        "HoldCreditLegs",
        "CutSlots",
        "ReleaseCreditLegs",
        "ReadCut",
        "RestoreSlot",
        "FinishRestore",
        # the cluster's shape
        "AddNode",
        "DrainNode",
        "Rebalance",
        "StepDown",
        "Resume",
        # models
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "RepositoryModelDeploy",
        "RepositoryModelPromote",
        "RepositoryModelRollback",
        "ModelOutcome",  # customers' repayment outcomes, and what a model's AUC is judged on
        # the open platform's partners, their apps and secrets
        "RegisterPartner",
        "AddApp",
        "RotateSecret",
        "Revoke",
        "SetWebhook",
        # products
        "SaveDraft",
        "PublishProduct",
        "RetireProduct",
        # loans
        "ApproveCreditLine",
        "Drawdown",
        "Repay",
        "PayOff",
        "WriteOff",
        "PlanEod",
        "RunEodSlot",
        "ClosePeriod",
        "Provision",
        # loans and follow-ups: customers' data
        "GetBookReport",  # with include_customers, every borrower's id
        "GetLoan",
        "ListLoans",
        "ListFollowUps",
        # decisions: they open credit lines and hold applicants' data
        "Decide",
        "GetDecision",
        "ReplayDecision",
        "RecordOutcome",
        "Assess",
        "RecordFollowUpOutcome",
    }
)

CALLER: contextvars.ContextVar[Identity] = contextvars.ContextVar("yunkai_caller", default=ANONYMOUS)


def caller() -> Identity:
    """Who the current call is from (the gate set it); ANONYMOUS under --insecure."""
    return CALLER.get()


@dataclass(frozen=True)
class CallerLimits:
    """What one caller may use of a server. Defaults are sized so that one service can use a
    whole node (docs/benchmarks.md: about 20,000 transfers/s in a few thousand calls/s) but
    a runaway caller cannot take every other caller's share; the cluster's own processes
    (nodes, routers) are not limited by each other."""

    calls_per_s: float = 20_000.0
    burst_calls: float = 40_000.0
    streams_per_caller_max: int = 64
    deadline_s_max: float = 600.0
    exempt_roles: frozenset[str] = frozenset({NODE, ROUTER})


class _Bucket:
    """A token bucket: `rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("tokens", "updated")

    def __init__(self, burst: float) -> None:
        self.tokens = burst
        self.updated = time.monotonic()

    def take(self, rate: float, burst: float) -> float:
        """0 if a token was taken, else the seconds until one will be there."""
        now = time.monotonic()
        self.tokens = min(burst, self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


# The entry the gate would write for a call this process makes to itself without the network
# (a node applying its own credit legs, node/relay.py): (method, request, status, detail).
AuditOwn = Callable[[str, message.Message, grpc.StatusCode, str], Awaitable[None]]


async def audit_nothing(method: str, request: message.Message, status: grpc.StatusCode, detail: str) -> None:
    """An AuditOwn for a process without an audit log (tests that build a service by hand)."""


class Gate(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type stubs
    """Authentication, authorization and per-caller limits for every call (see the module)."""

    def __init__(
        self,
        secure: bool,
        limits: CallerLimits | None = None,
        allowed: Mapping[str, frozenset[str]] = ALLOWED,
        audit: AuditLog | None = None,
    ) -> None:
        self.secure = secure
        self.limits = limits or CallerLimits()
        self.allowed = allowed
        self.audit = audit
        self._buckets: dict[str, _Bucket] = {}
        self._refusals: dict[tuple[str, str], tuple[float, int]] = {}
        self._streams: dict[str, int] = {}
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def auditing_own(self, caller_uri: str) -> AuditOwn:
        """Audit calls this process makes to itself as `caller_uri` (its own identity), as the
        gate audits a call that came over the network: an audited method only, the same entry;
        AuditUnavailable (the log cannot take it) fails the call as UNAVAILABLE fails a remote one."""

        async def record(method: str, request: message.Message, status: grpc.StatusCode, detail: str) -> None:
            if self.audit is not None and method in AUDITED:
                await self.audit.record(caller_uri, method, _ids(method, request), status, detail)

        return record

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = str(handler_call_details.method)
        if handler.stream_stream is not None and method.endswith(_SESSION_SUFFIX):
            return self._session(method, continuation, handler_call_details)
        return self._wrapped_handler(method, handler)

    def _wrapped_handler(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _session(
        self,
        method: str,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """A session of the service (serving/session.py): the stream is admitted as any
        stream is, and each of its calls is the service's unary method behind this gate."""
        service = method[1:].rpartition("/")[0]
        prefix = f"/{service}/"
        # The server finds a method's handler by details of the type it made for the stream
        # (grpc's own class, which it checks): the same type, naming the call's method.
        make_details, metadata = type(details), details.invocation_metadata

        async def behavior(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            found: dict[str, Unary | None] = {}

            async def lookup(inner: str) -> Unary | None:
                if inner in found:
                    return found[inner]
                unary: Unary | None = None
                if inner.startswith(prefix) and inner != method:
                    handler = await continuation(make_details(inner, metadata))
                    if handler is not None and handler.unary_unary is not None and _takes_bytes(handler):
                        unary = self._wrapped_handler(inner, handler).unary_unary
                if len(found) < _SESSION_METHODS_KEPT:
                    found[inner] = unary
                return unary

            async for answer in answer_calls(requests, context, service, lookup):
                yield answer

        roles = self.allowed.get(method, frozenset())
        return grpc.stream_stream_rpc_method_handler(
            self._server_stream(method, roles, behavior, refusals_audited=True)
        )

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        roles = self.allowed.get(method, frozenset())
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, roles, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._server_stream(method, roles, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, roles, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            self._server_stream(method, roles, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, method: str, roles: frozenset[str], behavior: Any) -> Callable[..., Awaitable[Any]]:
        deadline_s_max = self.limits.deadline_s_max
        exempt = self.limits.exempt_roles
        audit = self.audit if method in AUDITED else None

        async def run(who: Identity, request: Any, context: grpc.aio.ServicerContext) -> Any:
            remaining = context.time_remaining()
            if who.role in exempt or (remaining is not None and remaining <= deadline_s_max):
                return await behavior(request, context)
            try:
                async with asyncio.timeout(deadline_s_max):
                    return await behavior(request, context)
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"over this server's longest call, {deadline_s_max:g} s"
                )

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            who = await self._admit(method, roles, context, audit)
            token = CALLER.set(who)
            try:
                if audit is None:
                    return await run(who, request, context)
                try:
                    reply = await run(who, request, context)
                except BaseException as error:
                    code, detail = _outcome(error, context)
                    await _audited(audit, context, who.uri, method, _ids(method, request), code, detail)
                    raise
                await _audited(audit, context, who.uri, method, _ids(method, request), grpc.StatusCode.OK, "")
                return reply
            finally:
                CALLER.reset(token)

        return checked

    def _server_stream(
        self, method: str, roles: frozenset[str], behavior: Any, refusals_audited: bool = False
    ) -> Callable[..., Any]:
        """`refusals_audited`: the gate's refusals of the stream are audited even though the
        stream is not (a session's: each of its calls is)."""
        streams_max = self.limits.streams_per_caller_max
        audit = self.audit if method in AUDITED else None
        admit_audit = self.audit if refusals_audited else audit

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            who = await self._admit(method, roles, context, admit_audit)
            if audit is None:
                async with contextlib.aclosing(streamed(who, request, context)) as replies:
                    async for reply in replies:
                        yield reply
                return
            # An audited stream (a backup's read of every slot) is recorded once, when it ends.
            try:
                async with contextlib.aclosing(streamed(who, request, context)) as replies:
                    async for reply in replies:
                        yield reply
            except BaseException as error:
                code, detail = _outcome(error, context)
                await _audited(audit, context, who.uri, method, _ids(method, request), code, detail)
                raise
            await _audited(audit, context, who.uri, method, _ids(method, request), grpc.StatusCode.OK, "")

        async def streamed(who: Identity, request: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
            key = who.uri
            limited = self.secure and who.role not in self.limits.exempt_roles
            if limited and self._streams.get(key, 0) >= streams_max:
                REFUSED.labels(method, grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
                context.set_trailing_metadata(((STREAMS_CAP_METADATA, str(streams_max)),))
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{key} has {streams_max} streams open here already: close one first",
                )
            self._streams[key] = self._streams.get(key, 0) + 1
            token = CALLER.set(who)
            try:
                if inspect.isasyncgenfunction(behavior):
                    async for reply in behavior(request, context):
                        yield reply
                else:
                    await behavior(request, context)
            finally:
                left = self._streams[key] - 1
                if left:
                    self._streams[key] = left
                else:
                    del self._streams[key]
                # A stream whose caller went away mid-send is left suspended by gRPC and closed
                # later by the event loop's generator finalizer, in another context: there is
                # nothing of ours to undo there, and raising would skip nothing now but log an
                # error ("Task exception was never retrieved") for every such stream.
                with contextlib.suppress(ValueError):
                    CALLER.reset(token)

        return checked

    async def _admit(
        self, method: str, roles: frozenset[str], context: grpc.aio.ServicerContext, audit: AuditLog | None = None
    ) -> Identity:
        if not self.secure:
            return ANONYMOUS
        who = _identity(context)
        if who is None:
            await self._refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "no yunkai identity: a client certificate with a spiffe://yunkai/<role>/<name> URI is required",
                audit,
                "",
                method,
            )
        assert who is not None
        if who.role not in roles:
            why = f"{who.uri} may not call {method}"
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, why, audit, who.uri, method)
        if who.role not in self.limits.exempt_roles:
            await self._take(who, context, method)
        if who.role == ROUTER:
            who = _forwarded_for(context) or who
        return who

    async def _take(self, who: Identity, context: grpc.aio.ServicerContext, method: str) -> None:
        limits = self.limits
        bucket = self._buckets.get(who.uri)
        if bucket is None:
            if len(self._buckets) >= _CALLERS_TRACKED_MAX:
                self._buckets.clear()  # identities are the CA's to issue; past this many, start over
            bucket = self._buckets[who.uri] = _Bucket(limits.burst_calls)
        wait_s = bucket.take(limits.calls_per_s, limits.burst_calls)
        if wait_s > 0:
            wait_ms = max(1, int(wait_s * 1000))
            context.set_trailing_metadata(((RETRY_AFTER_METADATA, str(wait_ms)),))
            REFUSED.labels(method, grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{who.uri} is over {limits.calls_per_s:,.0f} calls/s here: retry in {wait_ms} ms",
            )

    async def _refuse(
        self,
        context: grpc.aio.ServicerContext,
        code: grpc.StatusCode,
        why: str,
        audit: AuditLog | None,
        caller_uri: str,
        method: str,
    ) -> None:
        """Refuse the call (the gate's own refusals); audited when the method is, at most once a
        second per (caller, method), the entry saying how many refusals it stands for."""
        REFUSED.labels(method, code.name).inc()
        if audit is not None:
            key = (caller_uri, method)
            now = time.monotonic()
            last, unaudited = self._refusals.get(key, (-_REFUSALS_AUDITED_EVERY_S, 0))
            if now - last >= _REFUSALS_AUDITED_EVERY_S:
                if len(self._refusals) >= _REFUSALS_TRACKED_MAX:
                    self._refusals.clear()
                self._refusals[key] = (now, 0)
                detail = why if not unaudited else f"{why} (and {unaudited} more refused since the last entry)"
                await _audited(audit, context, caller_uri, method, (), code, detail)
            else:
                self._refusals[key] = (last, unaudited + 1)
        await context.abort(code, why)


def _takes_bytes(handler: grpc.RpcMethodHandler) -> bool:
    """A handler a session can carry: it takes and gives bytes (serving/handlers.py's do)."""
    return handler.request_deserializer is None and handler.response_serializer is None


async def _audited(
    audit: AuditLog,
    context: grpc.aio.ServicerContext,
    caller_uri: str,
    method: str,
    ids: Sequence[str],
    code: grpc.StatusCode,
    detail: str,
) -> None:
    """Record the call; if the log cannot take it, the call fails UNAVAILABLE (the log's own
    error, its path and the OS's reason, is logged by the server, not told to the caller)."""
    try:
        await audit.record(caller_uri, method, ids, code, detail)
    except AuditUnavailable as error:
        log.error("audit log unavailable", extra={"method": method, "error": str(error)})
        await context.abort(grpc.StatusCode.UNAVAILABLE, "this server cannot audit the call now: try another or later")


def _outcome(error: BaseException, context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str]:
    """How a handler that raised `error` answers: what it aborted with, else a failure."""
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code, str(context.details() or "")
    if isinstance(error, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "over the server's longest deadline"
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the caller went away"
    return grpc.StatusCode.UNKNOWN, type(error).__name__


class _Ids(Sequence[str]):
    """The ids a request names: the first IDS_LISTED_MAX of them, and how many in all."""

    def __init__(self, listed: list[str], count: int) -> None:
        self._listed, self._count = listed, count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        return self._listed[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._listed)


_ITEM_KEYS = ("id", "transfer_id", "loan_id", "line_id", "repayment_id", "application_id", "code", "customer")
_ITEM_OWNERS = ("debit_account_id", "account_id")
_REQUEST_TYPES: dict[str, type[message.Message] | None] = {}


def _ids(method: str, request: Any) -> Sequence[str]:
    """What an audited request names: each of its scalar fields (`name=value`), and each item
    of its repeated fields (an item by its id, with its account when it has one)."""
    parsed = _parse(method, request)
    if parsed is None:
        return ()
    listed: list[str] = []
    count = 0
    for field, value in parsed.ListFields():
        if field.is_repeated:
            count += len(value)
            room = max(0, IDS_LISTED_MAX - len(listed))
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                listed.extend(f"{field.name}.{key}" for key in sorted(value)[:room])  # a map: its keys
            elif field.message_type is None:
                listed.extend(str(v) for v in value[:room])
            else:
                listed.extend(_item(item) for item in value[:room])
        elif field.message_type is None:
            count += 1
            if len(listed) < IDS_LISTED_MAX:
                listed.append(f"{field.name}={value}")
    return _Ids(listed, max(count, len(listed)))


def _item(item: message.Message) -> str:
    fields = item.DESCRIPTOR.fields_by_name
    key = next((str(getattr(item, k)) for k in _ITEM_KEYS if k in fields and getattr(item, k)), "")
    owner = next((str(getattr(item, k)) for k in _ITEM_OWNERS if k in fields and getattr(item, k)), "")
    return f"{owner}/{key}" if owner and key and owner != key else key or owner


def _parse(method: str, request: Any) -> message.Message | None:
    """The request as a message: handlers of our services take raw bytes (serving/handlers.py)."""
    if isinstance(request, message.Message):
        return request
    if not isinstance(request, bytes):
        return None  # a stream: its ids are its messages', not audited one by one
    kind = _REQUEST_TYPES.get(method, ...)
    if kind is ...:
        kind = _REQUEST_TYPES[method] = _request_type(method)
    if kind is None:
        return None
    try:
        return kind.FromString(request)
    except message.DecodeError:
        return None  # the handler refuses it; the entry says so, with no ids


def _request_type(method: str) -> type[message.Message] | None:
    service, _, name = method.lstrip("/").rpartition("/")
    try:
        found = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
    except KeyError:
        return None
    if found is None:
        return None
    return message_factory.GetMessageClass(found.input_type)


def _identity(context: grpc.aio.ServicerContext) -> Identity | None:
    """The caller's yunkai identity: its certificate's one SPIFFE URI SAN (gRPC sets
    peer_spiffe_id only for exactly one), never a common name or a DNS name spelled like one."""
    names: list[bytes] = context.auth_context().get("peer_spiffe_id") or []
    return Identity.parse(names[0].decode("utf-8", "replace")) if len(names) == 1 else None


def _forwarded_for(context: grpc.aio.ServicerContext) -> Identity | None:
    for key, value in context.invocation_metadata() or ():
        if key == CALLER_METADATA:
            return Identity.parse(value if isinstance(value, str) else value.decode("utf-8", "replace"))
    return None


Metadata = tuple[tuple[str, str], ...]


def forwarded_metadata() -> Metadata:
    """Metadata a router adds to a call it makes for the current caller."""
    who = CALLER.get()
    return () if who is ANONYMOUS else ((CALLER_METADATA, who.uri),)
