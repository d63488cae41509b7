"""The partners' HTTPS/JSON API (FastAPI): tokens, the journey's routes, and what every call goes through.

Every route under /v1 belongs to one API group (its scope, gateway/registry.py SCOPES) and
runs, in order: the bearer token (401), the scope (403), the registry's word on the app
(401 if revoked or its secret rotated), the quotas (429), for a POST the Idempotency-Key
(400, 409, 422, or the stored answer), then the handler; the answer is audited. Bad input
is 400 naming the field (FastAPI's validation, answered in this API's error shape), and
changes nothing. Errors are `{"error": CODE, "message": TEXT}`.

yunkai's services answer in gRPC; `_call` maps their refusals: INVALID_ARGUMENT 400,
NOT_FOUND 404, FAILED_PRECONDITION and ALREADY_EXISTS 409, anything else 503 (retry with
the same Idempotency-Key: the ids below make every step apply once).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, TypeVar

import grpc
from fastapi import Depends, FastAPI, Form, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clients.ledger import Account, AccountFlags, LedgerClient, LedgerError, ResultCode, Transfer
from clients.records import CommitFailed, Conflict, Put, Records
from gateway import docs, h5
from gateway.idempotency import (
    KEY as IDEMPOTENCY_KEY,
    Answer,
    Busy,
    Claimed,
    Idempotency,
    Mismatch,
    Replay,
    request_sha256,
)
from gateway.quotas import Quotas, QuotaStoreDown
from gateway.registry import SCOPES, Client, Registry, partner_tag
from gateway.tokens import InvalidToken, Tokens
from gateway.watcher import loan_key, watch_customer, watch_loan
from gateway.webhooks import LOG_LIMIT_MAX, Webhooks
from lending.allocation import allocate
from lending.loans import Accounts, Code, dues_on
from proto import lending_pb2 as lpb, risk_pb2 as rpb
from serving.audit import AuditLog, AuditUnavailable
from serving.session import SessionStub

log = logging.getLogger("yunkai.gateway")
T = TypeVar("T")

API_VERSION = "1.0.0"
LEDGER = 156  # the partners' books are in CNY (ISO 4217 156), as the catalogue's products
CALL_TIMEOUT_S = 30.0
DOCUMENT_BYTES_MAX = 32 * 1024
DOCUMENTS_MAX = 4
STATEMENT_LIMIT_MAX = 200
# A partner's ids, before the gateway puts its partner id in front (gateway/__init__.py).
CUSTOMER_REF = r"^[A-Za-z0-9]{1,16}$"
APPLICATION_REF = r"^[A-Za-z0-9._-]{1,27}$"
LOAN_REF = r"^[A-Za-z0-9_-]{1,12}$"
REPAYMENT_REF = r"^[A-Za-z0-9_-]{1,16}$"
DATE = r"^\d{4}-\d{2}-\d{2}$"
# What each HTTP status is in the audit log's gRPC vocabulary (serving/audit.py).
_AUDIT_STATUS = {
    200: grpc.StatusCode.OK,
    201: grpc.StatusCode.OK,
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    422: grpc.StatusCode.ALREADY_EXISTS,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


class ApiError(Exception):
    """An answer other than success: its status, code and message (and headers)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# --- the models: what partners send and get (they make /openapi.json) --------------------------


class ErrorBody(BaseModel):
    error: str
    message: str


class TokenBody(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    scope: str


class CustomerIn(BaseModel):
    customer_ref: str = Field(pattern=CUSTOMER_REF, description="the partner's id of the customer")
    name: str = Field(min_length=1, max_length=64)


class CustomerOut(BaseModel):
    customer_ref: str
    name: str
    onboarded_unix_ms: int
    deposit_balance_fen: int = Field(description="what the customer's deposit account holds, in fen")


class DocumentIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    content_base64: str = Field(max_length=DOCUMENT_BYTES_MAX * 4 // 3 + 4)


class DocumentOut(BaseModel):
    name: str
    sha256: str
    bytes: int


class ApplicationIn(BaseModel):
    application_ref: str = Field(pattern=APPLICATION_REF)
    customer_ref: str = Field(pattern=CUSTOMER_REF)
    product: str = Field(min_length=1, max_length=32, description="a product code, e.g. SME-TAX-LOAN")
    amount_requested_fen: int = Field(gt=0, le=10**12)
    fields: dict[str, float] = Field(default_factory=dict, description="the application's data, by field name")
    documents: list[DocumentIn] = Field(default_factory=list, max_length=DOCUMENTS_MAX)


class DecisionOut(BaseModel):
    application_ref: str
    customer_ref: str
    product: str
    outcome: str = Field(description="APPROVE, DECLINE or REFER")
    limit_fen: int
    price_bps: int
    reason_codes: list[str]
    credit_line_opened: bool
    documents: list[DocumentOut]


class AgreementIn(BaseModel):
    customer_ref: str = Field(pattern=CUSTOMER_REF)
    document_base64: str = Field(min_length=1, max_length=DOCUMENT_BYTES_MAX * 4 // 3 + 4)


class AgreementOut(BaseModel):
    loan_ref: str
    customer_ref: str
    sha256: str
    signed_unix_ms: int


class DrawdownIn(BaseModel):
    loan_ref: str = Field(pattern=LOAN_REF)
    customer_ref: str = Field(pattern=CUSTOMER_REF)
    product: str = Field(min_length=1, max_length=32)
    amount_fen: int = Field(gt=0, le=10**12)
    date: str = Field(pattern=DATE, description="the business date of the drawdown")
    annual_rate_bps: int = Field(default=0, ge=0, le=100_000, description="0: the credit line's price")
    term_months: int = Field(default=0, ge=0, le=600, description="0: the product's term")


class InstalmentOut(BaseModel):
    number: int
    due: str
    principal_fen: int
    interest_fen: int
    fees_fen: int
    paid_fen: int


class LoanOut(BaseModel):
    loan_ref: str
    customer_ref: str
    product: str
    status: str
    principal_fen: int
    principal_outstanding_fen: int
    annual_rate_bps: int
    term_months: int
    drawdown_date: str
    agreement_sha256: str
    schedule: list[InstalmentOut]


class RepaymentIn(BaseModel):
    repayment_ref: str = Field(pattern=REPAYMENT_REF)
    amount_fen: int = Field(gt=0, le=10**12)
    date: str = Field(pattern=DATE)


class RepaymentOut(BaseModel):
    loan_ref: str
    repayment_ref: str
    amount_fen: int
    principal_fen: int
    interest_fen: int
    fees_fen: int
    penalty_fen: int
    loan_status: str
    principal_outstanding_fen: int


class MovementOut(BaseModel):
    id: str
    amount_fen: int
    direction: str = Field(description="in (credited to the deposit) or out")
    timestamp_unix_ns: int


class StatementOut(BaseModel):
    customer_ref: str
    deposit_balance_fen: int
    movements: list[MovementOut]


class DeliveryOut(BaseModel):
    state: str = Field(description="pending, delivered or failed")
    attempts: int
    last: str = Field(description="the last attempt's answer: 2xx, HTTP <status> or why there was none")
    next_ms: int
    url: str


class EventOut(BaseModel):
    id: str
    type: str = Field(description="decision, drawdown, repayment, overdue, freeze or unfreeze")
    created_unix_ms: int
    data: dict[str, Any]
    delivery: DeliveryOut | None = Field(description="to this app's webhook; none if it had none then")


class EventsOut(BaseModel):
    events: list[EventOut]


# --- the gateway's parts, and what every call goes through ------------------------------------


@dataclass
class Gateway:
    """What the routes use: the registry, tokens, quotas and idempotency, yunkai's services."""

    ledger: LedgerClient
    registry: Registry
    tokens: Tokens
    quotas: Quotas
    risk: SessionStub
    loans: SessionStub
    webhooks: Webhooks
    audit: AuditLog | None = None
    # Who the ledger says opened the accounts this gateway opens (its identity's prefix; with
    # --insecure, the anonymous caller's): an account another channel opened is not a partner's.
    opened_by: str = "spiffe://yunkai/gateway/"

    def __post_init__(self) -> None:
        self.records: Records = self.registry.records
        self.idempotency = Idempotency(self.records)
        self._collecting: set[str] = set()  # partners whose collection account is open


@dataclass(frozen=True)
class Caller:
    client: Client
    only_customer: str = ""  # a customer's session (the hosted pages): that customer alone
    page: Mapping[str, Any] | None = None  # the session's product, data and amount bound

    @property
    def partner(self) -> str:
        return self.client.partner_id

    def customer(self, ref: str) -> str:
        """yunkai's id of the partner's customer `ref` (404 in a session of another customer)."""
        self.check_customer(ref)
        return f"{self.partner}{ref}"

    def check_customer(self, ref: str) -> None:
        if self.only_customer and ref != self.only_customer:
            raise ApiError(404, "not_found", f"customer {ref}: not onboarded")


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "invalid_token", "an Authorization: Bearer <token> header is required", _challenge(""))
    return token.strip()


def _challenge(error: str, description: str = "", scope: str = "") -> dict[str, str]:
    """RFC 6750 section 3's WWW-Authenticate header."""
    parts = ['Bearer realm="yunkai"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append('error_description="{}"'.format(description.replace('"', "'")))
    if scope:
        parts.append(f'scope="{scope}"')
    return {"WWW-Authenticate": ", ".join(parts)}


def _caller(scope: str) -> Callable[[Request], Awaitable[Caller]]:
    assert scope in SCOPES, scope

    async def authorize(request: Request) -> Caller:
        gateway: Gateway = request.app.state.gateway
        try:
            claims = gateway.tokens.check(_bearer(request))
        except InvalidToken as error:
            raise ApiError(401, "invalid_token", str(error), _challenge("invalid_token", str(error))) from None
        if scope not in claims.scopes:
            message = f"this route needs the scope {scope!r}; the token has {sorted(claims.scopes)}"
            raise ApiError(403, "insufficient_scope", message, _challenge("insufficient_scope", message, scope))
        client = await _call(gateway.registry.client(claims.client_id))
        if client is None or client.revoked or client.secret_version != claims.secret_version:
            message = "the app is revoked, or its secret was rotated since this token was issued"
            raise ApiError(401, "invalid_token", message, _challenge("invalid_token", message))
        if not claims.scopes <= set(client.scopes):  # a token never holds more than its app does now
            message = "the token names scopes its app does not have"
            raise ApiError(401, "invalid_token", message, _challenge("invalid_token", message))
        session = f"/customer:{claims.customer_ref}" if claims.customer_ref else ""
        request.state.caller = f"partner:{client.partner_id}/app:{client.client_id}{session}"
        try:
            over = await gateway.quotas.take(client)
        except QuotaStoreDown as error:
            log.error("quota store down: calls refused", extra={"reason": str(error)})
            raise ApiError(503, "unavailable", "quotas cannot be counted now; retry later") from None
        if over is not None:
            window, wait_s = over
            what = f"{client.rate_per_s} calls a second" if window == "rate" else f"{client.daily_quota} calls a day"
            raise ApiError(429, "rate_limited", f"over the app's {what}", {"Retry-After": str(wait_s)})
        return Caller(client, claims.customer_ref, claims.page)

    return authorize


# What the routes ask for, by API group (module-level: FastAPI resolves the annotations here).
CustomersCaller = Annotated[Caller, Depends(_caller("customers"))]
StatementsCaller = Annotated[Caller, Depends(_caller("statements"))]
EventsCaller = Annotated[Caller, Depends(_caller("events"))]
ApplicationsCaller = Annotated[Caller, Depends(_caller("applications"))]
LoansCaller = Annotated[Caller, Depends(_caller("loans"))]
RepaymentsCaller = Annotated[Caller, Depends(_caller("repayments"))]
CustomerRef = Annotated[str, Path(pattern=CUSTOMER_REF)]
LoanRef = Annotated[str, Path(pattern=LOAN_REF)]


async def _call(call: Awaitable[T]) -> T:
    """A call to one of yunkai's services, its refusals as this API's errors."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        code, details = error.code(), error.details() or ""
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise ApiError(400, "invalid_request", details) from None
        if code == grpc.StatusCode.NOT_FOUND:
            raise ApiError(404, "not_found", details) from None
        if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
            raise ApiError(409, "refused", details) from None
        log.warning("a service did not answer", extra={"code": code.name, "details": details})
        raise ApiError(503, "unavailable", "a service behind the gateway did not answer; retry") from None
    except (LedgerError, CommitFailed) as error:
        raise ApiError(503, "unavailable", f"the ledger did not answer; retry ({error})") from None


def _name(enum: Any, value: int) -> str:
    """An enum value's name in a risk or lending reply; a value this gateway does not know (a
    newer server's, during an upgrade) is UNKNOWN_<n>, not an error after the call has acted."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return f"UNKNOWN_{value}"


def _decode(text: str, field: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_request", f"{field}: not base64") from None
    if len(data) > DOCUMENT_BYTES_MAX:
        raise ApiError(400, "invalid_request", f"{field}: {len(data)} bytes, at most {DOCUMENT_BYTES_MAX}")
    return data


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def _error(error: ApiError) -> JSONResponse:
    body = ErrorBody(error=error.code, message=error.message).model_dump()
    return JSONResponse(body, status_code=error.status, headers=error.headers)


async def _once(
    request: Request,
    caller: Caller,
    key: str | None,
    run: Callable[[T], Awaitable[Response]],
    ahead: Callable[[], Awaitable[T]],
) -> Response:
    """A POST under its Idempotency-Key (gateway/idempotency.py): `ahead()`, the call's first reads
    (nothing that changes anything), runs beside the claim; `run` gets what they found once the
    key is this call's. A read's refusal (an ApiError) is the call's answer, as if `run` raised it."""
    if key is None or not IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(400, "invalid_request", "Idempotency-Key: a header of 1-64 of A-Z a-z 0-9 . _ : - is required")
    gateway: Gateway = request.app.state.gateway
    digest = request_sha256(request.method, request.url.path, await request.body())
    read = asyncio.ensure_future(ahead())
    try:
        outcome = await _call(gateway.idempotency.claim(caller.client.client_id, caller.only_customer, key, digest))
    except BaseException:
        _discard(read)
        raise
    if not isinstance(outcome, Claimed):
        _discard(read)
    if isinstance(outcome, Mismatch):
        raise ApiError(422, "idempotency_key_reused", f"Idempotency-Key {key} was used for another request")
    if isinstance(outcome, Busy):
        message = f"a request with Idempotency-Key {key} is still running"
        raise ApiError(409, "in_progress", message, {"Retry-After": str(outcome.retry_after_s)})
    if isinstance(outcome, Replay):
        return Response(
            outcome.answer.body,
            status_code=outcome.answer.status,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    assert isinstance(outcome, Claimed)
    request.state.claim = outcome.key  # what a rerun of this request finds in the records it made
    # Anything but an ApiError (a bug, the call cancelled) leaves the key claimed: a retry after
    # CLAIM_HELD_S runs the call again, as after a gateway that died.
    try:
        response = await run(await read)
    except ApiError as error:
        response = _error(error)
    answer = Answer(response.status_code, bytes(response.body))
    if 200 <= response.status_code < 300:
        # Stored while the caller is answered: what it is answered for is durable already, and
        # a replay meanwhile waits for the stored answer (gateway/idempotency.py).
        gateway.idempotency.answer_soon(outcome, answer)
    else:
        # The key is released before the refusal is answered: a retry, with its body mended or
        # not, runs again at once (it would meet the unanswered claim otherwise: 422 or a wait).
        await _call(gateway.idempotency.answer(outcome, answer))
    return response


async def _all(*calls: Awaitable[Any]) -> list[Any]:
    """The calls' results, the calls made at once. If any raised, the first of them *in this
    order* is raised: a check listed first (is this the partner's customer?) is answered before
    what the reads after it found (an account that does not exist)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _discard(read: asyncio.Future[Any]) -> None:
    """A read made ahead whose result is not wanted: stopped, and what it raised not reported."""
    if not read.done():
        read.cancel()
    elif not read.cancelled():
        read.exception()


# --- the application ---------------------------------------------------------------------------


def build(gateway: Gateway) -> FastAPI:
    """The API over `gateway`."""
    api = FastAPI(
        title="yunkai open platform",
        version=API_VERSION,
        description="The lending journey for partners: onboard customers, apply for credit, sign, draw down,"
        " repay, read balances and statements. OAuth2 client credentials at /oauth/token; every POST takes an"
        " Idempotency-Key.",
        docs_url=None,
        redoc_url=None,
    )
    api.state.gateway = gateway
    _errors(api)
    _audit(api)
    _token_route(api)
    _customer_routes(api)
    _application_routes(api)
    _loan_routes(api)
    _event_routes(api)
    _h5_routes(api)

    @api.get("/docs", include_in_schema=False)
    async def read_docs() -> HTMLResponse:
        return HTMLResponse(docs.page(api.openapi()))

    return api


def _errors(api: FastAPI) -> None:
    @api.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error(error)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:5]]
        return _error(ApiError(400, "invalid_request", "; ".join(problems)))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "invalid_request")
        return _error(ApiError(error.status_code, code, str(error.detail)))


def _audit(api: FastAPI) -> None:
    api.add_middleware(Audited)


class Audited:
    """Every partner call (/v1, /oauth) audited before its answer leaves: the caller the token
    named, the route, the ids in its path, the outcome. A plain ASGI middleware: Starlette's
    `@app.middleware("http")` (BaseHTTPMiddleware) runs each call's app in a task of its own
    and copies its answer through a stream, which cost a fifth of a call's CPU here
    (docs/benchmarks.md). An audit log that cannot be written turns the answer into 503."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(("/v1/", "/oauth/")):
            await self.app(scope, receive, send)
            return
        refused = False

        async def audited(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start":
                gateway: Gateway = scope["app"].state.gateway
                if gateway.audit is not None:
                    refused = not await _audited(gateway.audit, scope, int(message["status"]))
                if refused:
                    body = ErrorBody(error="unavailable", message="the call could not be audited; retry")
                    content = body.model_dump_json().encode()
                    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
                    await send({"type": "http.response.start", "status": 503, "headers": headers})
                    await send({"type": "http.response.body", "body": content})
                    return
            if not refused:  # else the app's own answer is dropped: the 503 went instead
                await send(message)

        await self.app(scope, receive, audited)


async def _audited(audit: AuditLog, scope: Scope, status: int) -> bool:
    """Record one call; False if the audit log cannot take it."""
    route = scope.get("route")
    path = getattr(route, "path", scope["path"])
    ids = [str(v) for v in scope.get("path_params", {}).values()]
    caller = str(scope.get("state", {}).get("caller", ""))
    code = _AUDIT_STATUS.get(status, grpc.StatusCode.INTERNAL)
    try:
        await audit.record(caller, f"{scope['method']} {path}", ids, code, f"HTTP {status}")
    except AuditUnavailable as error:
        log.error("audit log unavailable: call answered 503", extra={"reason": str(error)})
        return False
    return True


def _token_route(api: FastAPI) -> None:
    @api.post(
        "/oauth/token", response_model=TokenBody, responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}}
    )
    async def token(
        request: Request,
        grant_type: Annotated[str, Form()],
        scope: Annotated[str, Form()] = "",
        client_id: Annotated[str, Form()] = "",
        client_secret: Annotated[str, Form()] = "",
    ) -> Response:
        """OAuth2 client credentials (RFC 6749 section 4.4): the client id and secret by HTTP Basic or
        as form fields; `scope`, if given, a space-separated subset of the app's scopes."""
        gateway: Gateway = request.app.state.gateway
        if grant_type != "client_credentials":
            raise ApiError(400, "unsupported_grant_type", "grant_type: only client_credentials")
        basic = _basic(request)
        if basic is not None:
            client_id, client_secret = basic
        address = request.client.host if request.client is not None else ""
        try:
            wait_s = await gateway.quotas.take_token_attempt(client_id, address)
        except QuotaStoreDown:
            raise ApiError(503, "unavailable", "token requests cannot be counted now; retry later") from None
        if wait_s is not None:
            raise ApiError(429, "rate_limited", "too many token requests", {"Retry-After": str(wait_s)})
        client = await _call(gateway.registry.authenticate(client_id, client_secret)) if client_id else None
        if client is None or client.revoked:
            raise ApiError(401, "invalid_client", "unknown client, wrong secret, or revoked", _basic_challenge())
        request.state.caller = f"partner:{client.partner_id}/app:{client.client_id}"
        wanted = tuple(scope.split()) if scope else client.scopes
        if set(wanted) - set(client.scopes):
            raise ApiError(400, "invalid_scope", f"scope: the app has {list(client.scopes)}")
        issued = gateway.tokens.issue(client, wanted)
        body = TokenBody(access_token=issued, expires_in=gateway.tokens.ttl_s, scope=" ".join(wanted))
        return Response(body.model_dump_json(), media_type="application/json", headers={"Cache-Control": "no-store"})


def _basic(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, ValueError):
        message = "Authorization: Basic credentials not decodable"
        raise ApiError(401, "invalid_client", message, _basic_challenge()) from None
    return client_id, secret


def _basic_challenge() -> dict[str, str]:
    return {"WWW-Authenticate": 'Basic realm="yunkai"'}


# --- customers and statements --------------------------------------------------------------------


def _customer_key(customer: str) -> str:
    return f"{{c{customer}}}:gw"


async def _customer(gateway: Gateway, caller: Caller, ref: str) -> dict[str, Any]:
    [found] = await _call(gateway.records.read([("customer", _customer_key(caller.customer(ref)))]))
    if found is None:
        raise ApiError(404, "not_found", f"customer {ref}: not onboarded")
    stored: dict[str, Any] = json.loads(found.value)
    return stored


async def _deposit_balance(gateway: Gateway, customer: str) -> int:
    [deposit] = await _call(gateway.ledger.lookup_accounts([Accounts(customer, "", "").deposit]))
    return 0 if deposit is None else deposit.credits_posted - deposit.debits_posted


def _customer_routes(api: FastAPI) -> None:

    @api.post("/v1/customers", status_code=201, response_model=CustomerOut, responses=_ERRORS, tags=["customers"])
    async def onboard(
        request: Request,
        body: CustomerIn,
        caller: CustomersCaller,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Onboard a customer: its deposit account is opened on the ledger."""

        gateway: Gateway = request.app.state.gateway
        customer = caller.customer(body.customer_ref)
        deposit = Account(
            Accounts(customer, "", "").deposit, LEDGER, Code.DEPOSIT, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        )

        async def run(found: list[Account | None]) -> Response:
            [existing] = found
            if existing is not None and not existing.created_by.startswith(gateway.opened_by):
                # yunkai's id of the partner's customer was taken by another channel: not the partner's.
                raise ApiError(409, "exists", f"customer {body.customer_ref}: that id cannot be used; choose another")
            stored = {
                "ref": body.customer_ref,
                "name": body.name,
                "onboarded_unix_ms": int(time.time() * 1000),
                "by": request.state.claim,
            }
            try:
                await _call(
                    gateway.records.commit([Put("customer", _customer_key(customer), json.dumps(stored).encode(), 0)])
                )
            except Conflict:
                stored = await _customer(gateway, caller, body.customer_ref)
                if stored.get("by") != request.state.claim:  # not this request's own earlier attempt
                    raise ApiError(409, "exists", f"customer {body.customer_ref} is onboarded already") from None
            onboarded_ms = int(stored["onboarded_unix_ms"])
            # Two commits in two slots, each safe to repeat: together, not one after the other.
            [opened], _watched = await _call(
                asyncio.gather(
                    gateway.ledger.create_accounts([deposit]), watch_customer(gateway.records, caller.partner, customer)
                )
            )
            if opened.code not in (ResultCode.OK, ResultCode.EXISTS):
                raise ApiError(409, "refused", f"the deposit account was not opened: {opened.code.name}")
            out = CustomerOut(
                customer_ref=body.customer_ref,
                name=body.name,
                onboarded_unix_ms=onboarded_ms,
                # Opened by this call: nothing has moved yet. Opened before (a rerun): as it is now.
                deposit_balance_fen=0 if opened.code == ResultCode.OK else await _deposit_balance(gateway, customer),
            )
            return _json(out, 201)

        return await _once(
            request, caller, idempotency_key, run, lambda: _call(gateway.ledger.lookup_accounts([deposit.id]))
        )

    @api.get("/v1/customers/{customer_ref}", response_model=CustomerOut, responses=_ERRORS, tags=["customers"])
    async def read_customer(request: Request, customer_ref: CustomerRef, caller: CustomersCaller) -> Response:
        gateway: Gateway = request.app.state.gateway
        customer = caller.customer(customer_ref)  # 404 in another customer's session, before any read
        # Both at once: the balance is answered only if the customer is the partner's.
        stored, balance = await _all(_customer(gateway, caller, customer_ref), _deposit_balance(gateway, customer))
        out = CustomerOut(
            customer_ref=customer_ref,
            name=stored["name"],
            onboarded_unix_ms=stored["onboarded_unix_ms"],
            deposit_balance_fen=balance,
        )
        return _json(out)

    @api.get(
        "/v1/customers/{customer_ref}/statement", response_model=StatementOut, responses=_ERRORS, tags=["statements"]
    )
    async def statement(
        request: Request,
        customer_ref: CustomerRef,
        caller: StatementsCaller,
        limit: Annotated[int, Query(ge=1, le=STATEMENT_LIMIT_MAX)] = 50,
    ) -> Response:
        """The deposit account's movements, newest first."""
        gateway: Gateway = request.app.state.gateway
        customer = caller.customer(customer_ref)  # 404 in another customer's session, before any read
        deposit = Accounts(customer, "", "").deposit
        # All three at once: the movements and balance are answered only if the customer is the partner's.
        _stored, page, balance = await _all(
            _customer(gateway, caller, customer_ref),
            _call(gateway.ledger.get_account_transfers(deposit, limit=limit, newest_first=True)),
            _deposit_balance(gateway, customer),
        )
        movements = [
            MovementOut(
                id=t.id,
                amount_fen=t.amount,
                direction="in" if t.credit_account_id == deposit else "out",
                timestamp_unix_ns=t.timestamp,
            )
            for t in page.transfers
        ]
        return _json(StatementOut(customer_ref=customer_ref, deposit_balance_fen=balance, movements=movements))


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 422, 429, 503)
}


# --- applications -------------------------------------------------------------------------------


def _application_key(application_id: str) -> str:
    return f"{{a{application_id}}}:app"


def _decision(decision: rpb.Decision, ref: str, customer_ref: str, documents: list[DocumentOut]) -> DecisionOut:
    return DecisionOut(
        application_ref=ref,
        customer_ref=customer_ref,
        product=decision.product,
        outcome=_name(rpb.Outcome, decision.outcome),
        limit_fen=decision.limit_fen,
        price_bps=decision.price_bps,
        reason_codes=list(decision.reason_codes),
        credit_line_opened=decision.credit_line_opened,
        documents=documents,
    )


def _application_routes(api: FastAPI) -> None:

    @api.post("/v1/applications", status_code=201, response_model=DecisionOut, responses=_ERRORS, tags=["applications"])
    async def apply(
        request: Request,
        body: ApplicationIn,
        caller: ApplicationsCaller,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Apply for credit: the documents are kept (each one's SHA-256 is answered), the application is
        decided, and an approval opens the customer's credit line at the decided limit and price."""

        gateway: Gateway = request.app.state.gateway

        async def run(_customer_found: dict[str, Any]) -> Response:
            if caller.page is not None:  # a customer's session: the partner's data, not the browser's
                if body.product != caller.page.get("product") or body.fields != caller.page.get("fields", {}):
                    raise ApiError(400, "invalid_request", "product, fields: a session applies with its own")
                if body.amount_requested_fen > int(caller.page.get("amount_max_fen", 0)):
                    raise ApiError(400, "invalid_request", "amount_requested_fen: over the session's bound")
            application_id = f"{caller.partner}-{body.application_ref}"
            documents, puts = [], []
            for index, document in enumerate(body.documents):
                data = _decode(document.content_base64, f"documents[{index}].content_base64")
                digest = hashlib.sha256(data).hexdigest()
                documents.append(DocumentOut(name=document.name, sha256=digest, bytes=len(data)))
                puts.append(Put("doc", f"{{a{application_id}}}:doc:{index}", data, 0))
            kept = {
                "customer_ref": body.customer_ref,
                "documents": [d.model_dump() for d in documents],
                "by": request.state.claim,
            }
            puts.append(Put("application", _application_key(application_id), json.dumps(kept).encode(), 0))
            try:
                await _call(gateway.records.commit(puts))
            except Conflict:
                [found] = await _call(gateway.records.read([("application", _application_key(application_id))]))
                if found is None or json.loads(found.value).get("by") != request.state.claim:
                    raise ApiError(409, "exists", f"application {body.application_ref} exists already") from None
            decided = await _call(
                gateway.risk.Decide(
                    rpb.DecideRequest(
                        application_id=application_id,
                        product=body.product,
                        customer=caller.customer(body.customer_ref),
                        amount_requested_fen=body.amount_requested_fen,
                        fields=body.fields,
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
            )
            out = _decision(decided, body.application_ref, body.customer_ref, documents)
            told = out.model_dump(include={"application_ref", "customer_ref", "product", "outcome", "limit_fen"})
            await _call(gateway.webhooks.emit(caller.partner, "decision", f"decision.{application_id}", told))
            return _json(out, 201)

        return await _once(request, caller, idempotency_key, run, lambda: _customer(gateway, caller, body.customer_ref))

    @api.get("/v1/applications/{application_ref}", response_model=DecisionOut, responses=_ERRORS, tags=["applications"])
    async def read_application(
        request: Request,
        application_ref: Annotated[str, Path(pattern=APPLICATION_REF)],
        caller: ApplicationsCaller,
    ) -> Response:
        gateway: Gateway = request.app.state.gateway
        application_id = f"{caller.partner}-{application_ref}"
        [found] = await _call(gateway.records.read([("application", _application_key(application_id))]))
        if found is None:
            raise ApiError(404, "not_found", f"application {application_ref}: none")
        kept = json.loads(found.value)
        caller.check_customer(kept["customer_ref"])
        decided = await _call(
            gateway.risk.GetDecision(rpb.DecisionRef(application_id=application_id), timeout=CALL_TIMEOUT_S)
        )
        documents = [DocumentOut(**d) for d in kept["documents"]]
        return _json(_decision(decided, application_ref, kept["customer_ref"], documents))


# --- loans: agreement, drawdown, repayment --------------------------------------------------------


def _agreement_key(loan_id: str) -> str:
    return f"{{l{loan_id}}}:agreement"


def _loan(loan: lpb.Loan, caller: Caller, ref: str, agreement: str) -> LoanOut:
    return LoanOut(
        loan_ref=ref,
        customer_ref=loan.customer.removeprefix(caller.partner),
        product=loan.product_code,
        status=_name(lpb.LoanStatus, loan.status),
        principal_fen=loan.principal,
        principal_outstanding_fen=loan.principal_outstanding,
        annual_rate_bps=loan.annual_rate_bps,
        term_months=loan.term_months,
        drawdown_date=loan.drawdown_date,
        agreement_sha256=agreement,
        schedule=[
            InstalmentOut(
                number=i.number,
                due=i.due,
                principal_fen=i.principal,
                interest_fen=i.interest,
                fees_fen=i.fees,
                paid_fen=i.paid_principal + i.paid_interest + i.paid_fees + i.paid_penalty,
            )
            for i in loan.schedule
        ],
    )


async def _agreement(gateway: Gateway, loan_id: str) -> dict[str, Any] | None:
    [found] = await _call(gateway.records.read([("agreement", _agreement_key(loan_id))]))
    return None if found is None else dict(json.loads(found.value))


async def _get_loan(gateway: Gateway, loan_id: str, ref: str, partner_id: str) -> lpb.Loan:
    """A loan this gateway drew for the partner (its record in the partner's slot says so: a loan
    of another channel under the same id is not the partner's), else 404."""

    async def drawn() -> None:
        [record] = await gateway.records.read([("ploan", loan_key(partner_id, loan_id))])
        if record is None:
            raise ApiError(404, "not_found", f"loan {ref}: none")

    async def get() -> lpb.Loan:
        try:
            loan: lpb.Loan = await gateway.loans.GetLoan(lpb.LoanRef(loan_id=loan_id), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise ApiError(404, "not_found", f"loan {ref}: none") from None
            raise
        return loan

    # Both at once; the loan is answered only if the partner's record says the partner drew it.
    loan: lpb.Loan
    _drawn, loan = await _all(drawn(), get())
    return loan


def _loan_routes(api: FastAPI) -> None:

    @api.put("/v1/loans/{loan_ref}/agreement", response_model=AgreementOut, responses=_ERRORS, tags=["loans"])
    async def sign(request: Request, loan_ref: LoanRef, body: AgreementIn, caller: LoansCaller) -> Response:
        """The customer's signed loan agreement for the loan about to be drawn: its SHA-256 is kept with the
        loan. The same document again answers the same; another one is refused (409)."""
        gateway: Gateway = request.app.state.gateway
        data = _decode(body.document_base64, "document_base64")
        loan_id = f"{caller.partner}{loan_ref}"
        digest = hashlib.sha256(data).hexdigest()
        _stored, kept = await _all(_customer(gateway, caller, body.customer_ref), _agreement(gateway, loan_id))
        if kept is None:
            kept = {"customer_ref": body.customer_ref, "sha256": digest, "signed_unix_ms": int(time.time() * 1000)}
            try:
                await _call(
                    gateway.records.commit(
                        [
                            Put("agreement", _agreement_key(loan_id), json.dumps(kept).encode(), 0),
                            Put("agreementdoc", f"{{l{loan_id}}}:agreement:doc", data, 0),
                        ]
                    )
                )
            except Conflict:
                kept = await _agreement(gateway, loan_id)
                assert kept is not None  # a record is never deleted
        if (kept["sha256"], kept["customer_ref"]) != (digest, body.customer_ref):
            raise ApiError(409, "refused", f"loan {loan_ref} has another signed agreement ({kept['sha256'][:12]}...)")
        return _json(AgreementOut(loan_ref=loan_ref, **kept))

    @api.post("/v1/loans", status_code=201, response_model=LoanOut, responses=_ERRORS, tags=["loans"])
    async def draw(
        request: Request,
        body: DrawdownIn,
        caller: LoansCaller,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Draw down on the customer's credit line, once its agreement is signed; the principal goes to the
        customer's deposit."""

        gateway: Gateway = request.app.state.gateway
        loan_id = f"{caller.partner}{body.loan_ref}"

        async def run(kept: dict[str, Any] | None) -> Response:
            if caller.page is not None and (body.annual_rate_bps or body.term_months):
                raise ApiError(400, "invalid_request", "annual_rate_bps, term_months: a session takes the line's")
            if kept is None or kept["customer_ref"] != body.customer_ref:
                raise ApiError(409, "refused", f"loan {body.loan_ref}: the customer has not signed its agreement")
            loan = await _call(
                gateway.loans.Drawdown(
                    lpb.DrawdownRequest(
                        customer=caller.customer(body.customer_ref),
                        loan_id=loan_id,
                        product_code=body.product,
                        amount=body.amount_fen,
                        date=body.date,
                        annual_rate_bps=body.annual_rate_bps,
                        term_months=body.term_months,
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
            )
            out = _loan(loan, caller, body.loan_ref, kept["sha256"])
            data = out.model_dump(include={"loan_ref", "customer_ref", "product", "principal_fen", "drawdown_date"})
            await _call(  # two commits, each safe to repeat: together
                asyncio.gather(
                    watch_loan(gateway.records, caller.partner, loan_id, loan.customer),
                    gateway.webhooks.emit(caller.partner, "drawdown", f"drawdown.{loan_id}", data),
                )
            )
            return _json(out, 201)

        return await _once(request, caller, idempotency_key, run, lambda: _agreement(gateway, loan_id))

    @api.get("/v1/loans/{loan_ref}", response_model=LoanOut, responses=_ERRORS, tags=["loans"])
    async def read_loan(request: Request, loan_ref: LoanRef, caller: LoansCaller) -> Response:
        gateway: Gateway = request.app.state.gateway
        loan_id = f"{caller.partner}{loan_ref}"

        async def checked() -> lpb.Loan:
            loan = await _call(_get_loan(gateway, loan_id, loan_ref, caller.partner))
            caller.check_customer(loan.customer.removeprefix(caller.partner))  # before the agreement's own error
            return loan

        loan, kept = await _all(checked(), _agreement(gateway, loan_id))
        return _json(_loan(loan, caller, loan_ref, "" if kept is None else kept["sha256"]))

    @api.post(
        "/v1/loans/{loan_ref}/repayments",
        status_code=201,
        response_model=RepaymentOut,
        responses=_ERRORS,
        tags=["repayments"],
    )
    async def repay(
        request: Request,
        loan_ref: LoanRef,
        body: RepaymentIn,
        caller: RepaymentsCaller,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        """A repayment the partner collected: the amount moves from the partner's collection account to the
        customer's deposit, and repays the loan from there. If nothing is due, the amount stays in the deposit
        (409)."""

        gateway: Gateway = request.app.state.gateway
        loan_id = f"{caller.partner}{loan_ref}"

        async def run(loan: lpb.Loan) -> Response:
            caller.check_customer(loan.customer.removeprefix(caller.partner))
            _repayable(loan, loan_ref, body)  # before any money moves: a refusal moves none
            collection = await _collection_account(gateway, caller.partner)
            deposit = Accounts(loan.customer, "", "").deposit
            funding = Transfer(
                f"{loan_id}:{body.repayment_ref}:in", collection, deposit, body.amount_fen, LEDGER, Code.DEPOSIT
            )
            [moved] = await _call(gateway.ledger.create_transfers([funding]))
            if moved.code not in (ResultCode.OK, ResultCode.EXISTS):
                raise ApiError(409, "refused", f"the collected amount was not moved: {moved.code.name}")
            paid = await _call(
                gateway.loans.Repay(
                    lpb.RepayRequest(
                        loan_id=loan_id, repayment_id=body.repayment_ref, amount=body.amount_fen, date=body.date
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
            )
            out = RepaymentOut(
                loan_ref=loan_ref,
                repayment_ref=body.repayment_ref,
                amount_fen=paid.repayment.amount,
                principal_fen=paid.repayment.principal,
                interest_fen=paid.repayment.interest,
                fees_fen=paid.repayment.fees,
                penalty_fen=paid.repayment.penalty,
                loan_status=_name(lpb.LoanStatus, paid.loan.status),
                principal_outstanding_fen=paid.loan.principal_outstanding,
            )
            event_id = f"repayment.{loan_id}.{body.repayment_ref}"
            data = out.model_dump(include={"loan_ref", "repayment_ref", "amount_fen", "loan_status"})
            await _call(gateway.webhooks.emit(caller.partner, "repayment", event_id, data))
            return _json(out, 201)

        return await _once(
            request, caller, idempotency_key, run, lambda: _call(_get_loan(gateway, loan_id, loan_ref, caller.partner))
        )


def _h5_routes(api: FastAPI) -> None:
    @api.post(
        "/v1/h5/sessions", status_code=201, response_model=h5.SessionOut, responses=_ERRORS, tags=["applications"]
    )
    async def open_session(request: Request, body: h5.SessionIn, caller: ApplicationsCaller) -> Response:
        """A customer's session on the hosted HTML5 pages (gateway/h5.py): the page's URL, to open in the
        customer's browser or a WebView. The page applies, shows the decision, signs and draws for that
        customer alone, in the partner's brand."""
        gateway: Gateway = request.app.state.gateway
        if caller.only_customer:
            raise ApiError(403, "insufficient_scope", "a customer's session cannot open sessions")
        await _customer(gateway, caller, body.customer_ref)
        scopes = tuple(scope for scope in h5.SESSION_SCOPES if scope in caller.client.scopes)
        page = {
            "product": body.product,
            "fields": body.fields,
            "brand": {"name": body.brand_name, "colour": body.brand_colour},
            "amount_max_fen": body.amount_max_fen,
        }
        token = gateway.tokens.issue_session(caller.client, body.customer_ref, scopes, page, h5.SESSION_TTL_S)
        return _json(h5.SessionOut(url=f"/h5/journey#session={token}", expires_in=h5.SESSION_TTL_S), 201)

    @api.get("/h5/journey", include_in_schema=False)
    async def journey() -> HTMLResponse:
        headers = {
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": h5.CONTENT_SECURITY_POLICY,
        }
        return HTMLResponse(h5.PAGE, headers=headers)


def _event_routes(api: FastAPI) -> None:
    @api.get("/v1/events", response_model=EventsOut, responses=_ERRORS, tags=["events"])
    async def events(
        request: Request, caller: EventsCaller, limit: Annotated[int, Query(ge=1, le=LOG_LIMIT_MAX)] = 50
    ) -> Response:
        """The partner's latest events, newest first, each with its delivery to this app's webhook (attempts,
        the last answer, delivered or failed): the delivery log."""
        gateway: Gateway = request.app.state.gateway
        found = await _call(gateway.webhooks.log(caller.partner, caller.client.client_id, limit))
        return _json(EventsOut(events=[EventOut(**e) for e in found]))


def _repayable(loan: lpb.Loan, ref: str, body: RepaymentIn) -> None:
    """What lending would refuse of this repayment, refused first (409 or 400), so that the
    collected amount moves into the deposit only for a repayment that will apply: the loan
    open, the date on or after its drawdown, something of it due then (lending/loans.py)."""
    if loan.status not in (lpb.ACTIVE, lpb.OVERDUE):
        raise ApiError(409, "refused", f"loan {ref} is {_name(lpb.LoanStatus, loan.status)}: nothing to repay")
    try:
        on = date.fromisoformat(body.date)
    except ValueError:
        raise ApiError(400, "invalid_request", f"date {body.date!r}: not a date") from None
    if on < date.fromisoformat(loan.drawdown_date):
        raise ApiError(409, "refused", f"date {body.date}: before loan {ref} was drawn ({loan.drawdown_date})")
    _paid, unapplied = allocate(body.amount_fen, dues_on(loan, on))
    if unapplied == body.amount_fen:
        raise ApiError(409, "refused", f"date {body.date}: nothing of loan {ref} is due then")


async def _collection_account(gateway: Gateway, partner: str) -> str:
    """The partner's collection account (what it collected from customers and owes the bank), opened once."""
    account_id = f"{partner_tag(partner)}:collect"
    if partner not in gateway._collecting:
        [opened] = await _call(gateway.ledger.create_accounts([Account(account_id, LEDGER, Code.DEPOSIT)]))
        if opened.code not in (ResultCode.OK, ResultCode.EXISTS):
            raise ApiError(503, "unavailable", f"the partner's collection account: {opened.code.name}")
        gateway._collecting.add(partner)
    return account_id
