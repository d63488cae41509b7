"""Sessions: many unary calls of one service on one gRPC stream, both ends of it.

Why. On this 2-core VM a unary call costs each end about twice what a message on an open
stream does (a scratch ping-pong, grpcio 1.85 with TLS and uvloop, 3,000 exchanges 2 ms
apart: unary 1.29 ms p50 and 0.72 / 0.79 ms of CPU on the caller / server per call; a
stream's message and its answer 0.41 ms p50 and 0.34 / 0.26 ms; back to back 0.67 against
0.31 ms): a call opens an HTTP/2 stream, runs the server's interceptor and its handler
task, and ends the stream with trailers, each a completion the poller thread hands to the
event loop. A node answering a caller's writes and reads one call each spends most of its
CPU there (docs/benchmarks.md, issue 17).

Protocol (proto/session.proto)
  A service that offers sessions has `Session(stream Call) returns (stream Answer)`. A caller
  opens one stream per server and caller identity (a router forwarding for several callers
  opens one per caller: the stream's metadata names it, serving/authz.py) and sends Calls,
  each naming one unary method of the same service, its serialized request, an id unique
  among the stream's unanswered calls, and its timeout: what is left of the caller's deadline
  when the Call is written (a Call whose caller gave up is not written), which the server
  counts from when it reads it. The server answers each Call with an Answer of the same id,
  in any order: code 0 with the reply, or a gRPC status code with its detail and trailing
  metadata. A caller cannot cancel one call: given up, its answer is dropped when it comes.
  * Each call is checked and audited exactly as the same unary call would be (the gate,
    serving/authz.py): the stream's caller must be allowed the method, each call takes a token
    of the caller's rate, each audited call gets its own entry, and the server's longest
    deadline applies. Opening the stream needs a role allowed some method of the service.
  * A Call naming no unary method of the service (or `Session` itself) is answered
    UNIMPLEMENTED; the stream goes on. Bytes that are not a Call, or an id already open, end
    the stream with INVALID_ARGUMENT (the caller is broken: its open calls are answered
    first, unless it went away).
  * A server holds at most CALLS_OPEN_MAX calls of one stream at once, from reading a Call to
    sending its Answer, and reads no more until one is sent (HTTP/2's flow control then holds
    the caller back, and a caller that reads no answers gets no more calls read).
  * The stream's end cancels the server's open calls, as a unary call's end does; the
    server's stop stops reading and ends the stream once the open calls are answered; a
    caller that half-closes the stream (a retired stream: Session retires one after
    STREAM_AGE_S_MAX, within the server's connection age) has its open calls answered, then
    the stream ends OK. The caller fails every call left unanswered when its stream ends
    with UNAVAILABLE, which says nothing of the call's outcome: a write is retried with the
    same ids, as after a broken connection.
  * A server that does not offer sessions (an older one, during a rolling upgrade) answers the
    stream UNIMPLEMENTED before any Answer: the caller then makes unary calls to it for
    UNSUPPORTED_RETRY_S (`Session.supported` is False, and `call` raises Unsupported for the
    calls it held). A stream the gate refuses before any Answer (UNAUTHENTICATED,
    PERMISSION_DENIED, RESOURCE_EXHAUSTED over the caller's rate) refuses every call it held
    with that status: none of them ran; such refusals are audited as the session's. Refused
    for the caller's open streams there (RESOURCE_EXHAUSTED with STREAMS_CAP_METADATA), its
    calls go unary.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from prometheus_client import Counter

from proto import session_pb2 as pb
from serving.streams import open_ended

log = logging.getLogger("yunkai.session")
calls_total = Counter("yunkai_session_calls_total", "Calls answered on sessions (server), by method", ["method"])

# As many as a connection's unary calls (serving/transport.py STREAMS_PER_CONNECTION_MAX): what
# a caller that reads no answers can make a server hold.
CALLS_OPEN_MAX = 256
SESSIONS_KEPT = 64  # sessions a stub or a router keeps (one per metadata) before idle ones are closed
STREAM_AGE_S_MAX = 600.0  # servers end a connection an hour after it opened, with 15 minutes' grace
UNSUPPORTED_RETRY_S = 60.0
TIMEOUT_MS_MAX = 2**32 - 1
STREAMS_CAP_METADATA = "yunkai-streams-max"  # on the gate's refusal of a stream over the caller's cap
SESSION_NAME = "Session"
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_REFUSED_WHOLE = frozenset(
    (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED)
)

Metadata = Sequence[tuple[str, str]]
# A unary method behind the gate: (request bytes, the call's context) -> reply bytes.
Unary = Callable[[bytes, Any], Awaitable[bytes]]
# The service's unary method by its full name, None if it has none by that name.
Lookup = Callable[[str], Awaitable[Unary | None]]


def session_method(service: str) -> str:
    """The full name of `service`'s session method ("yunkai.ledger.v1.Ledger" -> ...)."""
    return f"/{service}/{SESSION_NAME}"


# --- the server's end --------------------------------------------------------------------


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class CallContext:
    """What a unary handler reads of its call, for one call of a session: the stream's
    identity and metadata, the call's own deadline, status and trailing metadata."""

    __slots__ = ("_auth", "_code", "_deadline", "_details", "_stream", "trailing")

    def __init__(self, stream: grpc.aio.ServicerContext, auth: Any, deadline: float | None) -> None:
        self._stream, self._auth, self._deadline = stream, auth, deadline
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self.trailing: tuple[tuple[str, str], ...] = ()

    def auth_context(self) -> Any:
        return self._auth

    def invocation_metadata(self) -> Any:
        return self._stream.invocation_metadata()

    def peer(self) -> str:
        return str(self._stream.peer())

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()) -> None:
        self._code, self._details = code, details
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise _Aborted(code, details)

    def set_trailing_metadata(self, metadata: Metadata) -> None:
        self.trailing = tuple(metadata)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details


class _StreamBroken(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


async def answer_calls(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext, service: str, lookup: Lookup
) -> AsyncIterator[bytes]:
    """The server's end of one session: each Call read from `requests` run by the unary
    method `lookup` finds, its Answer yielded when it ends (see the module's docstring)."""
    loop = asyncio.get_running_loop()
    auth = context.auth_context()
    answers: asyncio.Queue[bytes | _StreamBroken | None] = asyncio.Queue()
    room = asyncio.Semaphore(CALLS_OPEN_MAX)
    open_ids: set[int] = set()
    working: set[asyncio.Task[None]] = set()
    reading = True

    async def run(call: pb.Call) -> None:
        answer = pb.Answer(id=call.id)
        deadline = loop.time() + call.timeout_ms / 1000 if call.timeout_ms else None
        inner = CallContext(context, auth, deadline)
        unary: Unary | None = None
        try:
            unary = await lookup(call.method)  # unknown names are counted as one label, not each
            if unary is None:
                answer.code = grpc.StatusCode.UNIMPLEMENTED.value[0]
                answer.detail = f"{call.method or '(no method)'}: not a unary method of {service}"
            else:
                timeout = asyncio.timeout_at(deadline)
                try:
                    async with timeout:
                        answer.reply = await unary(call.request, inner)
                except TimeoutError:
                    if not timeout.expired():
                        raise
                    answer.code = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
                    answer.detail = "Deadline Exceeded"
        except _Aborted as aborted:
            answer.code, answer.detail = aborted.code.value[0], aborted.details
            answer.trailing.extend(pb.Pair(key=k, value=v) for k, v in inner.trailing)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the session ends: nobody to answer
            answer.code, answer.detail = grpc.StatusCode.CANCELLED.value[0], "the call was cancelled"
        except Exception:  # a bug in the handler: answered as gRPC answers one, and logged
            log.exception("session call failed", extra={"method": call.method})
            answer.code, answer.detail = grpc.StatusCode.UNKNOWN.value[0], "Unexpected error in the handler"
        finally:
            open_ids.discard(call.id)
        calls_total.labels(call.method if unary is not None else "unknown").inc()
        answers.put_nowait(answer.SerializeToString())

    def ended(task: asyncio.Task[None]) -> None:
        working.discard(task)
        if not reading and not working:
            answers.put_nowait(None)

    async def read() -> None:
        nonlocal reading
        try:
            with open_ended():  # the server's stop stops the reading; the open calls are answered
                async for data in requests:
                    try:
                        call = pb.Call.FromString(data)
                    except DecodeError as error:
                        raise _StreamBroken(f"a session message is not a Call: {error}") from None
                    if call.id in open_ids:
                        raise _StreamBroken(f"call id {call.id} is already open on this session")
                    await room.acquire()
                    open_ids.add(call.id)
                    task = loop.create_task(run(call))
                    working.add(task)
                    task.add_done_callback(ended)
        except _StreamBroken as broken:
            answers.put_nowait(broken)
        finally:
            reading = False
            if not working:
                answers.put_nowait(None)

    reader = loop.create_task(read())
    broken: _StreamBroken | None = None
    try:
        while (answer := await answers.get()) is not None:
            if isinstance(answer, _StreamBroken):
                broken = broken or answer
                continue
            yield answer
            room.release()  # once sent: a caller that reads no answers gets no more calls read
    finally:
        reader.cancel()
        for task in list(working):
            task.cancel()
    if broken is not None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, broken.why)


# --- the caller's end --------------------------------------------------------------------


class Unsupported(Exception):
    """The server offers no sessions: make the call as a unary call."""


def rpc_error(code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> Exception:
    """The error (grpc.aio.AioRpcError) a unary call answered `code` would have raised."""
    error: Exception = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)
    return error


class _Queued(NamedTuple):
    id: int
    method: str
    request: bytes
    deadline: float | None  # the caller's, in the loop's time


class _Stream:
    """One stream of a session: the gRPC call, what is to be written on it, the ids it carries."""

    __slots__ = ("answered", "call", "ids", "opened", "outbox")

    def __init__(self, call: Any, opened: float) -> None:
        self.call, self.opened = call, opened
        self.outbox: asyncio.Queue[_Queued | None] = asyncio.Queue()  # None: write no more
        self.ids: set[int] = set()
        self.answered = False


class Session:
    """The caller's end of one session with one server (see the module's docstring).

    `call` sends one call and returns its reply bytes, or raises grpc.aio.AioRpcError as the
    unary call would have (UNAVAILABLE when the stream ended before its answer), or
    Unsupported. The stream opens with the first call and again after it ends, and is
    retired after STREAM_AGE_S_MAX (its calls answered, it ends; later calls take a new one),
    well within the server's connection age (serving/transport.py) after which gRPC would
    cut it. One task writes each stream's calls in turn, each with what is left of its
    caller's deadline (one whose caller gave up is not sent): a caller's deadline never cuts
    a write short, which would end the stream for every caller on it."""

    def __init__(self, channel: grpc.aio.Channel, service: str, metadata: Metadata = ()) -> None:
        self._open = channel.stream_stream(session_method(service))
        self._metadata = tuple(metadata) or None
        self._current: _Stream | None = None
        self._streams: set[_Stream] = set()  # the current one, and retired ones still answering
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[int, asyncio.Future[pb.Answer]] = {}
        self._ids = itertools.count(1)
        self._answered = False  # the server has answered a call: it offers sessions
        self._unsupported_until = -math.inf  # time.monotonic(): unary calls until then
        self._closed = False

    @property
    def supported(self) -> bool:
        """Whether calls go on the session (False for UNSUPPORTED_RETRY_S after the server said
        it offers none: an older server, which an upgrade may replace)."""
        return time.monotonic() >= self._unsupported_until

    def idle(self) -> bool:
        return not self._waiting

    async def call(self, method: str, request: bytes, timeout_s: float | None) -> bytes:
        if not self.supported:
            raise Unsupported(method)
        if self._closed:
            raise rpc_error(grpc.StatusCode.CANCELLED, "the session is closed")
        loop = asyncio.get_running_loop()
        now = loop.time()
        stream = self._current
        if stream is not None and now - stream.opened > STREAM_AGE_S_MAX:
            self._current = None
            stream.outbox.put_nowait(None)  # retired: it ends once its calls are answered
            stream = None
        stream = stream or self._start(now)
        call_id = next(self._ids)
        waiting: asyncio.Future[pb.Answer] = loop.create_future()
        self._waiting[call_id] = waiting
        stream.ids.add(call_id)
        stream.outbox.put_nowait(_Queued(call_id, method, request, None if timeout_s is None else now + timeout_s))
        try:
            async with asyncio.timeout(timeout_s):
                answer = await waiting
        except TimeoutError:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            self._waiting.pop(call_id, None)
            stream.ids.discard(call_id)
        if answer.code == 0:
            return answer.reply
        code = _CODES.get(answer.code, grpc.StatusCode.UNKNOWN)
        raise rpc_error(code, answer.detail, [(p.key, p.value) for p in answer.trailing])

    def _start(self, now: float) -> _Stream:
        stream = _Stream(self._open(metadata=self._metadata), now)
        self._current = stream
        self._streams.add(stream)
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self._write(stream))
        for task in (writer, loop.create_task(self._read(stream, writer))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return stream

    async def _write(self, stream: _Stream) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (queued := await stream.outbox.get()) is not None:
                if queued.id not in self._waiting:
                    continue  # its caller gave up (or was failed): not sent
                timeout_ms = 0
                if queued.deadline is not None:
                    left_s = queued.deadline - loop.time()
                    if left_s <= 0:
                        continue  # the caller's own timeout answers it
                    timeout_ms = min(TIMEOUT_MS_MAX, max(1, math.ceil(left_s * 1000)))
                call = pb.Call(id=queued.id, method=queued.method, request=queued.request, timeout_ms=timeout_ms)
                await stream.call.write(call.SerializeToString())
            await stream.call.done_writing()  # retired: the server answers what it read, then ends
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as error:
            # The stream ended under the write: its reader fails what was open.
            log.debug("session write failed", extra={"error": str(error)})

    async def _read(self, stream: _Stream, writer: asyncio.Task[None]) -> None:
        code, details, trailing = grpc.StatusCode.UNAVAILABLE, "the session ended", ()
        try:
            async for data in stream.call:
                answer = pb.Answer.FromString(data)
                self._answered = stream.answered = True
                waiting = self._waiting.get(answer.id)
                if waiting is not None and not waiting.done():
                    waiting.set_result(answer)
            code, details = await stream.call.code(), str(await stream.call.details() or "")
        except grpc.aio.AioRpcError as error:
            code, details, trailing = error.code(), str(error.details() or ""), tuple(error.trailing_metadata() or ())
        except DecodeError as error:
            stream.call.cancel()
            details = f"the server sent an answer that does not parse: {error}"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            code, details = grpc.StatusCode.CANCELLED, "the session was closed"  # its call, cancelled here
        finally:
            if self._current is stream:
                self._current = None
            self._streams.discard(stream)
            writer.cancel()
        failure = self._failure(stream, code, details, trailing)
        for call_id in list(stream.ids):
            waiting = self._waiting.get(call_id)
            if waiting is not None and not waiting.done():
                waiting.set_exception(failure)

    def _failure(self, stream: _Stream, code: grpc.StatusCode, details: str, trailing: Metadata) -> BaseException:
        """What the calls left open on `stream` are failed with, now that it ended with `code`."""
        if code is grpc.StatusCode.UNIMPLEMENTED and not self._answered:
            self._unsupported_until = time.monotonic() + UNSUPPORTED_RETRY_S
            return Unsupported(details)
        if not stream.answered and code in _REFUSED_WHOLE:
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED and any(k == STREAMS_CAP_METADATA for k, _ in trailing):
                # The gate's cap on this caller's open streams there: these calls go unary.
                return Unsupported(details)
            # The gate refused the stream (no identity, a role allowed no method of the
            # service, over the caller's rate): no call ran, and each is refused alike.
            return rpc_error(code, details, trailing)
        # Whatever the stream ended with, it is not the calls' own answer.
        return rpc_error(grpc.StatusCode.UNAVAILABLE, f"the session ended ({code.name}: {details})")

    def abandon(self) -> None:
        """Close the streams now, failing what is open (UNAVAILABLE); `close` waits for it."""
        self._closed = True
        for stream in list(self._streams):
            stream.call.cancel()

    async def close(self) -> None:
        self.abandon()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class SessionStub:
    """A stub of `service` (its full name, "yunkai.lending.v1.LoanService") whose unary
    methods travel on sessions: `await stub.Method(request, timeout=..., metadata=...)` as
    with the generated stub, one session per distinct metadata. A call goes unary where the
    server offers no sessions, or where it asks for more than a timeout and metadata."""

    def __init__(self, channel: grpc.aio.Channel, service: str) -> None:
        found = descriptor_pool.Default().FindServiceByName(service)
        self._replies = {
            m.name: message_factory.GetMessageClass(m.output_type)
            for m in found.methods
            if not m.client_streaming and not m.server_streaming
        }
        self._channel, self._service = channel, service
        self._offered = SESSION_NAME in found.methods_by_name  # by this version of the protocol
        self._sessions: dict[Metadata, Session] = {}

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        reply_type = self._replies.get(name)
        if reply_type is None:
            raise AttributeError(f"{self._service} has no unary method {name}")
        full = f"/{self._service}/{name}"
        unary = self._channel.unary_unary(
            full, request_serializer=_serialize, response_deserializer=reply_type.FromString
        )

        async def call(
            request: Message, timeout: float | None = None, metadata: Metadata | None = None, **rest: Any
        ) -> Any:
            if self._offered and not rest:
                session = self._session(tuple(metadata or ()))
                if session.supported:
                    try:
                        return reply_type.FromString(await session.call(full, request.SerializeToString(), timeout))
                    except Unsupported:
                        pass  # an older server: unary, as every later call
            return await unary(request, timeout=timeout, metadata=metadata, **rest)

        setattr(self, name, call)  # found once
        return call

    def _session(self, metadata: Metadata) -> Session:
        found = self._sessions.get(metadata)
        if found is None:
            if len(self._sessions) >= SESSIONS_KEPT:  # callers come and go: their streams too
                for idle in [k for k, s in self._sessions.items() if s.idle()]:
                    self._sessions.pop(idle).abandon()
            found = self._sessions[metadata] = Session(self._channel, self._service, metadata)
        return found

    async def close(self) -> None:
        """Close its sessions (the channel is the caller's)."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
