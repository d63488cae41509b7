"""The one handler wrapper of every yunkai server, and what a refusal is.

Every method takes the raw request bytes and the call's context (so a request that does not
parse gets a clear INVALID_ARGUMENT from parse_request, not gRPC's generic failure, and the
handler can read the caller's deadline) and returns its reply message. The wrapper answers
a refusal with its status: an exception listed in the service's `Refusals`, or any `Refused`
(which carries its own status). Each answer is counted (requests_total by method and
status, request_latency_s by method); refusals are logged, at most once a second per
method and status (an overloaded server must not also drown in its own logs). Any other
exception is a bug: it fails the call loudly (gRPC answers UNKNOWN and logs the traceback).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from prometheus_client import Counter, Histogram

Context: TypeAlias = grpc.aio.ServicerContext
Handler = Callable[[bytes, Context], Awaitable[Message]]
# (exception types, the status a refusal of that kind is answered with)
Refusals = Sequence[tuple[type[Exception] | tuple[type[Exception], ...], grpc.StatusCode]]

M = TypeVar("M", bound=Message)
_LOG_EVERY_S = 1.0


class StartupError(Exception):
    """The server cannot start as configured (the message says why and what to do)."""


class Refused(Exception):
    """A request this server will not carry out, answered with `code` and the message."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadRequest(Refused):
    """A malformed request: answered with INVALID_ARGUMENT naming the field, nothing applied."""

    code = grpc.StatusCode.INVALID_ARGUMENT


def parse_request(message_type: type[M], data: bytes) -> M:
    """A request from its wire bytes, without the fields our contract does not define;
    BadRequest (not gRPC's generic error) if they do not parse.

    Unknown fields would otherwise ride along through every copy into what is stored and
    forwarded: a 1-fen transfer carrying a 4 MB one was stored whole, and five of them made an
    account's history too large to read. Dropping them (recursively) costs 1.4-2.4 ms per
    8,192 transfers (0.2-0.3 us each, beside ~1 ms to parse them; `python -m timeit` on the
    2-core test VM, protobuf 7.36 upb), under 1% of what a node spends on a transfer."""
    try:
        request = message_type.FromString(data)
    except DecodeError as error:
        raise BadRequest(f"the request is not a valid {message_type.DESCRIPTOR.name}: {error}") from None
    request.DiscardUnknownFields()
    return request


def refusal(error: BaseException, refusals: Refusals) -> grpc.StatusCode | None:
    """The status `error` is answered with, or None if it is not a refusal (a bug)."""
    for kinds, status in refusals:
        if isinstance(error, kinds):
            return status
    if isinstance(error, Refused):
        return error.code
    return None


class _RefusalLog:
    """Refusals logged at most once per `_LOG_EVERY_S` per (method, status), with how many were not."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._last: dict[tuple[str, grpc.StatusCode], tuple[float, int]] = {}

    def __call__(self, method: str, status: grpc.StatusCode, reason: str) -> None:
        now = time.monotonic()
        last, unlogged = self._last.get((method, status), (-_LOG_EVERY_S, 0))
        if now - last < _LOG_EVERY_S:
            self._last[(method, status)] = (last, unlogged + 1)
            return
        self._last[(method, status)] = (now, 0)
        level = logging.ERROR if status == grpc.StatusCode.INTERNAL else logging.INFO
        extra = {"method": method, "status": status.name, "reason": reason, "unlogged_since": unlogged}
        self._log.log(level, "refused", extra=extra)


def unary_service(
    service: str,
    methods: Mapping[str, Handler],
    refusals: Refusals,
    requests_total: Counter,
    request_latency_s: Histogram,
    log: logging.Logger,
    streams: Mapping[str, grpc.RpcMethodHandler] | None = None,
    sessions: bool = False,
) -> grpc.GenericRpcHandler:
    """A service of unary `methods` behind the one wrapper, plus `streams` (handlers of its
    streaming methods, which answer their own refusals with `refusal`), plus with `sessions`
    its method `Session` (serving/session.py), which the gate serves, each of its calls as the
    unary call it carries; a server without the gate answers it UNIMPLEMENTED (callers then
    call unary)."""
    logged = _RefusalLog(log)

    def wrap(name: str, fn: Handler) -> Callable[[bytes, Context], Awaitable[bytes]]:
        latency = request_latency_s.labels(name)
        answered = requests_total.labels(name, grpc.StatusCode.OK.name)

        async def handle(data: bytes, context: Context) -> bytes:
            started = time.perf_counter()
            try:
                reply = await fn(data, context)
            except Exception as error:
                code = refusal(error, refusals)
                if code is None:
                    raise
                requests_total.labels(name, code.name).inc()
                logged(name, code, str(error))
                await context.abort(code, str(error))
            answered.inc()
            latency.observe(time.perf_counter() - started)
            return reply.SerializeToString()

        return handle

    handlers = {name: grpc.unary_unary_rpc_method_handler(wrap(name, fn)) for name, fn in methods.items()}
    overlap = set(handlers) & set(streams or {})
    assert not overlap, overlap
    handlers.update(streams or {})
    if sessions:
        from serving.session import SESSION_NAME  # a server's, not every caller's

        assert SESSION_NAME not in handlers, service

        async def without_gate(requests: AsyncIterator[bytes], context: Context) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "sessions are served behind the gate (serving/authz.py)")

        handlers[SESSION_NAME] = grpc.stream_stream_rpc_method_handler(without_gate)
    return grpc.method_handlers_generic_handler(service, handlers)
