"""Routing core: send ledger events to the nodes that own their slots, fenced and batched.

Used by the router's server and by the SDK alike (DESIGN section 3). For each call:

  1. Route: each event's slot (from its account id) and the slot's owner and epoch come
     from the current shard map. Events are grouped by owner node.
  2. Coalesce: each (node, method, caller identity) has a Coalescer that merges the events of
     concurrent calls into one request (flushed at `events_max`; when the node has no request of
     ours in flight, on the loop's next turn, so that a lone call waits for nothing and calls
     of the same turn still go together; while one is in flight, `delay_s` after the first
     event, or as soon as one completes), with a fence naming every slot's epoch. At most
     `inflight_max` requests of one coalescer are in flight; beyond that, events wait and
     batches grow (backpressure, not more RPCs); what all callers together may ask of a node
     is bounded by the node (its queue limit answers RESOURCE_EXHAUSTED) and by each caller's
     rate at the router's gate. Idle coalescers are dropped once there are more than
     COALESCERS_KEPT (callers come and go). A request never grows past a node's limits:
     `events_max` events (at most the node's `batch_events_max`) and MERGE_BYTES_MAX bytes of
     callers' requests; a caller whose events would take it past either starts the next
     request, and one caller's events for one node beyond `batch_events_max` are refused
     INVALID_ARGUMENT before anything is sent.
     Each request travels on the node's session for that caller identity (one stream,
     serving/session.py's SessionStub: a message costs the node less than a call), or as a
     unary call to a node that offers none.
  3. Split: the node answers one result per event, in order; each caller gets its own. A
     merged request the node refuses whole as malformed (INVALID_ARGUMENT, so none of it was
     applied: a limit or a check this process does not share) is sent again caller by
     caller, so that one caller's bad batch is refused to that caller alone.
  4. Refuse: a slot whose primary the map marks LOST or DOWN (the controller found no
     follower to fail it over to) has no live copy: the call is refused UNAVAILABLE naming the
     slot, at once.
  5. Retry: events answered WRONG_SLOT, or sent to a node that is UNAVAILABLE (its slots may
     have failed over), are routed again after the map is refreshed, with jittered
     exponential backoff, within the caller's deadline; a pause ends early when a newer map
     arrives (a failover's callers go on as soon as the map names the new primaries, not
     up to BACKOFF_MAX_S later). Writes are idempotent by id, so a
     retry can only answer EXISTS (or the journaled outcome) for what a lost reply had
     already applied. Any other error of a node (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...)
     ends the call with that error; parts already sent to other nodes may have been applied,
     and a retry with the same ids is safe.

Errors name a node by its id, never by its address: a router's callers have no business
knowing where the nodes are.

In a router, each request to a node names the identity of the callers it carries (metadata
`yunkai-caller`, which a node believes only from a router: serving/authz.py), so that what a
node stores and audits is attributed to who asked; that is why callers of different
identities are never merged. In the SDK there is no such caller: the client's own
certificate is the identity.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

import serving
from proto import contract, ledger_pb2 as pb
from proto.contract import LedgerMethod
from router import metrics
from router.shardmap import DOWN, LOST, ShardMap
from router.slots import SLOTS_TOTAL_MAX, slot_of
from serving.authz import Metadata, forwarded_metadata
from serving.session import SessionStub

E = TypeVar("E")

# A node that refuses connections (UNAVAILABLE) or does not answer one attempt in time
# (DEADLINE_EXCEEDED of that attempt: stopped, cut off) is tried again, after a fresh look
# at the map: its slots may have failed over.
RETRYABLE = frozenset((grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))
ATTEMPT_TIMEOUT_S = 3.0  # one call to a node; the caller's deadline bounds all attempts
COALESCERS_KEPT = 1024  # (node, method, caller) coalescers kept before idle ones are dropped
NO_LIVE_COPY = "has no live copy"
_GONE = frozenset((LOST, DOWN))  # in the refusal of a slot whose owner is lost: not worth retrying
# What a node accepts in one message, less the largest fence (every slot and its epoch, as
# varints of at most 5 and 10 bytes): callers' requests are merged only within it.
MERGE_BYTES_MAX = serving.MESSAGE_BYTES_MAX - SLOTS_TOTAL_MAX * 15
assert MERGE_BYTES_MAX > serving.MESSAGE_BYTES_MAX // 2, MERGE_BYTES_MAX
BACKOFF_FIRST_S = 0.01
BACKOFF_MAX_S = 0.5
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class MapSource(Protocol):
    """Where a router or client gets its shard map."""

    def current(self) -> ShardMap: ...

    async def refresh(self, seen_version: int) -> ShardMap:
        """A map newer than `seen_version` if one exists now (else the current one)."""
        ...

    async def newer(self, seen_version: int, timeout_s: float) -> ShardMap:
        """A map newer than `seen_version` as soon as there is one, else the current one
        after `timeout_s` (a retry's pause that ends when the map moves on)."""
        ...


class RoutingError(serving.Refused):
    """The call could not complete within its deadline; `code` says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message, code)


@dataclass(frozen=True)
class _Waiter:
    """One caller's part of a request: `count` events from `offset`, routed with `fence`."""

    offset: int
    count: int
    fence: dict[int, int]
    future: asyncio.Future[list[Any]]


class Coalescer:
    """Merges concurrent callers' events for one (node, method) into few requests, each within
    the node's limits; a request the node refuses whole as malformed goes again caller by caller."""

    def __init__(
        self,
        send: Callable[[list[Any], dict[int, int]], Awaitable[Sequence[Any]]],
        events_max: int,
        delay_s: float,
        inflight_max: int,
        bytes_max: int = MERGE_BYTES_MAX,
    ) -> None:
        assert events_max > 0 and delay_s >= 0 and inflight_max > 0 and bytes_max > 0
        self._send = send
        self._events_max = events_max
        self._bytes_max = bytes_max
        self._delay_s = delay_s
        self._inflight_max = inflight_max
        self._events: list[Any] = []
        self._bytes = 0  # of the callers' requests whose events are gathered (an upper bound)
        self._fence: dict[int, int] = {}
        self._waiters: list[_Waiter] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Handle | None = None

    def submit(self, events: list[Any], fence: dict[int, int], size_bytes: int = 0) -> asyncio.Future[list[Any]]:
        """The results of a caller's `events` (routed with `fence`; `size_bytes`: the size of
        the caller's request, 0 if unknown), once the node answers them."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self._events and not self._joins(events, fence, size_bytes):
            self._flush()
        self._waiters.append(_Waiter(len(self._events), len(events), fence, future))
        self._events.extend(events)
        self._fence.update(fence)
        self._bytes += size_bytes
        if len(self._events) >= self._events_max or self._bytes >= self._bytes_max:
            self._flush()
        elif self._timer is None and len(self._inflight) < self._inflight_max:
            loop = asyncio.get_running_loop()
            if self._inflight:  # under load: gather for delay_s
                self._timer = loop.call_later(self._delay_s, self._flush_if_room)
            else:  # idle: batching costs nothing
                self._timer = loop.call_soon(self._flush_if_room)
        return future

    def _joins(self, events: list[Any], fence: dict[int, int], size_bytes: int) -> bool:
        """Whether a caller's events may join those gathered: the request stays within the
        node's limits, and keeps one fence (a caller that routed with another epoch for a slot
        already in it, the map having changed between them, waits for the next request)."""
        if len(self._events) + len(events) > self._events_max or self._bytes + size_bytes > self._bytes_max:
            return False
        return all(self._fence.get(slot, epoch) == epoch for slot, epoch in fence.items())

    def _flush_if_room(self) -> None:
        self._timer = None
        if len(self._inflight) < self._inflight_max:
            self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._events:
            return
        events, fence, waiters = self._events, self._fence, self._waiters
        self._events, self._fence, self._waiters, self._bytes = [], {}, [], 0
        task = asyncio.get_running_loop().create_task(self._deliver(events, fence, waiters))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._events and len(self._inflight) < self._inflight_max:
            self._flush()  # what gathered while the node was busy goes now

    async def _deliver(self, events: list[Any], fence: dict[int, int], waiters: list[_Waiter]) -> None:
        # Every outcome, success or error, reaches every waiter: nothing fails unseen.
        try:
            results = await self._send(events, fence)
            if len(results) != len(events):
                raise RoutingError(grpc.StatusCode.INTERNAL, f"{len(events)} events got {len(results)} results")
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT and len(waiters) > 1:
                await self._deliver_alone(events, waiters)
            else:
                _fail(waiters, error)
            return
        except BaseException as error:  # handed to the callers
            _fail(waiters, error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        for w in waiters:
            if not w.future.done():
                w.future.set_result(list(results[w.offset : w.offset + w.count]))

    async def _deliver_alone(self, events: list[Any], waiters: list[_Waiter]) -> None:
        """Each caller's events of a merged request the node refused whole, sent again on their
        own: the node applied none of it (it checks a request whole first), and whoever made it
        malformed gets the refusal alone. Rare: the router checks what the node checks, with the
        same limits unless they were configured apart."""
        metrics.retries_total.labels("refused_merge").inc(len(events))
        await asyncio.gather(
            *(
                self._deliver(events[w.offset : w.offset + w.count], w.fence, [_Waiter(0, w.count, w.fence, w.future)])
                for w in waiters
            )
        )

    def idle(self) -> bool:
        """Nothing gathered, nothing in flight: dropping it loses nothing."""
        return not self._events and not self._inflight and self._timer is None

    async def close(self) -> None:
        self._flush()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)


def _fail(waiters: list[_Waiter], error: BaseException) -> None:
    for w in waiters:
        if not w.future.done():
            w.future.set_exception(error)


class LedgerRouter:
    """Routes batched Ledger calls to the owning nodes of their slots."""

    def __init__(
        self,
        maps: MapSource,
        *,
        events_max: int = 4096,
        batch_events_max: int = contract.BATCH_EVENTS_MAX_DEFAULT,
        delay_s: float = 0.001,
        inflight_max: int = 4,
        rpc_timeout_s: float = ATTEMPT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`events_max`: the most events merged into one request to a node, and never more
        than `batch_events_max`, the most a node takes in one request (its --batch-events-max;
        the default is the nodes' default)."""
        assert events_max > 0 and batch_events_max > 0, (events_max, batch_events_max)
        self.maps = maps
        self._events_max = min(events_max, batch_events_max)
        self._batch_events_max = batch_events_max
        self._delay_s = delay_s
        self._inflight_max = inflight_max
        self._rpc_timeout_s = rpc_timeout_s
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, SessionStub] = {}
        self._coalescers: dict[tuple[str, str, Metadata], Coalescer] = {}

    def stub(self, address: str) -> SessionStub:
        """The node's Ledger calls, on its sessions (one per caller identity)."""
        stub = self._stubs.get(address)
        if stub is None:
            channel = serving.channel(address, self._credentials, CHANNEL_OPTIONS)
            self._channels[address] = channel
            stub = self._stubs[address] = SessionStub(channel, contract.LEDGER_SERVICE)
        return stub

    def _coalescer(self, address: str, method: LedgerMethod[Any], on_behalf: Metadata) -> Coalescer:
        key = (address, method.name, on_behalf)
        coalescer = self._coalescers.get(key)
        if coalescer is None:
            call = getattr(self.stub(address), method.name)
            timeout_s = self._rpc_timeout_s

            batch_events = metrics.node_batch_events.labels(method.name)

            async def send(events: list[Any], fence: dict[int, int]) -> Sequence[Any]:
                batch_events.observe(len(events))
                request = method.request(
                    **{method.field: events}, fence=pb.Fence(slots=list(fence), epochs=list(fence.values()))
                )
                reply = await call(request, timeout=timeout_s, metadata=on_behalf or None)
                return reply.results  # type: ignore[no-any-return]  # every batched response has results

            coalescer = Coalescer(send, self._events_max, self._delay_s, self._inflight_max)
            if len(self._coalescers) >= COALESCERS_KEPT:
                self._coalescers = {k: c for k, c in self._coalescers.items() if not c.idle()}
            self._coalescers[key] = coalescer
        return coalescer

    async def close(self) -> None:
        for coalescer in self._coalescers.values():
            await coalescer.close()
        for stub in self._stubs.values():
            await stub.close()
        for channel in self._channels.values():
            await channel.close()

    # --- batched calls --------------------------------------------------------------------

    async def create_transfers(self, transfers: Sequence[pb.Transfer], timeout_s: float) -> list[pb.EventResult]:
        return await self.route(contract.CREATE_TRANSFERS, transfers, timeout_s)

    async def create_accounts(self, accounts: Sequence[pb.Account], timeout_s: float) -> list[pb.EventResult]:
        return await self.route(contract.CREATE_ACCOUNTS, accounts, timeout_s)

    async def change_accounts(self, changes: Sequence[pb.AccountChange], timeout_s: float) -> list[pb.EventResult]:
        return await self.route(contract.CHANGE_ACCOUNTS, changes, timeout_s)

    async def lookup_accounts(self, ids: Sequence[str], timeout_s: float) -> list[pb.AccountResult]:
        return await self.route(contract.LOOKUP_ACCOUNTS, ids, timeout_s)

    async def lookup_transfers(self, keys: Sequence[pb.TransferKey], timeout_s: float) -> list[pb.TransferResult]:
        return await self.route(contract.LOOKUP_TRANSFERS, keys, timeout_s)

    async def route(
        self, method: LedgerMethod[E], events: Sequence[E], timeout_s: float, size_bytes: int = 0
    ) -> list[Any]:
        """Each event's result from the node that owns its slot, in order (see the module's
        docstring). `size_bytes`: the size of the caller's request, if known (0: not known)."""
        assert method in contract.BATCHED, method
        on_behalf = forwarded_metadata()  # read here, in the caller's context, not in a flush task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        results: list[Any] = [None] * len(events)
        todo = list(range(len(events)))
        attempt = 0
        while todo:
            shard_map = self.maps.current()
            groups: dict[str, tuple[list[int], list[E], dict[int, int]]] = {}
            total = shard_map.slots_total
            named = method.slot_named
            for index in todo:
                event = events[index]
                if named is None:
                    slot = slot_of(method.key_of(event), total)
                else:
                    slot = named(event, total)
                    if slot >= total:
                        raise RoutingError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"{method.field}[{index}].slot: {slot} is outside 0..{total - 1}",
                        )
                owner = shard_map.owners[slot]
                if shard_map.nodes[owner] in _GONE:
                    raise _no_copy(method.name, slot, owner, shard_map)
                group = groups.get(owner)
                if group is None:
                    group = groups[owner] = ([], [], {})
                group[0].append(index)
                group[1].append(event)
                group[2][slot] = shard_map.epochs[slot]
            owners = list(groups)
            self._check_sizes(method, [len(groups[o][1]) for o in owners])
            futures = [
                self._coalescer(o, method, on_behalf).submit(groups[o][1], groups[o][2], size_bytes) for o in owners
            ]
            remaining = deadline - loop.time()
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
                # arrives as the gather completes (the caller then runs on, cancelled: a lending
                # server's stop waited out its book count's 60 s sleep; fixed in 3.12, gh-86296).
                async with asyncio.timeout(remaining):
                    outcomes = await asyncio.gather(*futures, return_exceptions=True)
            except TimeoutError:
                raise RoutingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"{method.name}: no answer within {timeout_s:.3f}s"
                ) from None
            todo, stale, unavailable = [], False, ""
            for owner, outcome in zip(owners, outcomes, strict=True):
                indices = groups[owner][0]
                if isinstance(outcome, grpc.aio.AioRpcError):
                    if outcome.code() not in RETRYABLE:
                        raise _refused(outcome, owner, shard_map) from outcome
                    todo.extend(indices)
                    unavailable = owner
                    continue
                if isinstance(outcome, BaseException):
                    raise outcome
                for index, result in zip(indices, outcome, strict=True):
                    if result.code == pb.WRONG_SLOT:
                        todo.append(index)
                        stale = True
                    else:
                        results[index] = result
            if not todo:
                break
            metrics.retries_total.labels("wrong_slot" if stale else "unavailable").inc(len(todo))
            attempt += 1
            # A node that is away may have had its slots failed over to their followers: a
            # newer map says where they are now (WRONG_SLOT says so for certain).
            await self.maps.refresh(shard_map.version)
            pause = serving.backoff_s(attempt, BACKOFF_FIRST_S, BACKOFF_MAX_S)
            if loop.time() + pause >= deadline:
                why = (
                    f"{_name(unavailable, shard_map)} is unavailable"
                    if unavailable
                    else "slots kept moving (WRONG_SLOT)"
                )
                code = grpc.StatusCode.UNAVAILABLE if unavailable else grpc.StatusCode.DEADLINE_EXCEEDED
                raise RoutingError(code, f"{method.name}: {len(todo)} events not answered in {timeout_s:.3f}s: {why}")
            await self.maps.newer(shard_map.version, pause)
            todo.sort()
        assert all(r is not None for r in results)
        return results

    def _check_sizes(self, method: LedgerMethod[Any], counts: list[int]) -> None:
        """A caller's events for one node beyond what a node takes are refused to that caller,
        before any part of its batch is sent (never merged, never failing anyone else's)."""
        largest = max(counts)
        if largest > self._batch_events_max:
            raise RoutingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method.field}: {largest} events for one node, more than the limit of {self._batch_events_max}",
            )

    async def get_account_transfers(
        self, request: pb.GetAccountTransfersRequest, timeout_s: float
    ) -> pb.GetAccountTransfersResponse:
        """One account's history page, from its slot's owner (retried like the rest)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        attempt = 0
        on_behalf = forwarded_metadata()
        while True:
            shard_map = self.maps.current()
            slot = slot_of(request.account_id, shard_map.slots_total)
            owner = shard_map.owners[slot]
            if shard_map.nodes[owner] in _GONE:
                raise _no_copy("GetAccountTransfers", slot, owner, shard_map)
            fenced = pb.GetAccountTransfersRequest()
            fenced.CopyFrom(request)
            fenced.fence.CopyFrom(pb.Fence(slots=[slot], epochs=[shard_map.epochs[slot]]))
            retry = ""
            try:
                reply: pb.GetAccountTransfersResponse = await self.stub(owner).GetAccountTransfers(
                    fenced,
                    timeout=max(0.001, min(self._rpc_timeout_s, deadline - loop.time())),
                    metadata=on_behalf or None,
                )
                if reply.code != pb.WRONG_SLOT:
                    return reply
                retry = "WRONG_SLOT"
                await self.maps.refresh(shard_map.version)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:
                    raise _refused(error, owner, shard_map) from error
                retry = f"{_name(owner, shard_map)} is unavailable ({error.code().name})"
                await self.maps.refresh(shard_map.version)
            attempt += 1
            pause = serving.backoff_s(attempt, BACKOFF_FIRST_S, BACKOFF_MAX_S)
            if loop.time() + pause >= deadline:
                raise RoutingError(grpc.StatusCode.UNAVAILABLE, f"GetAccountTransfers: {retry} for {timeout_s:.3f}s")
            await self.maps.newer(shard_map.version, pause)


def _no_copy(method: str, slot: int, owner: str, shard_map: ShardMap) -> RoutingError:
    """A slot whose primary is lost or down with no follower to take its place: refused loudly,
    never retried or served empty."""
    how = (
        "lost its data directory (the process there now is another node)"
        if shard_map.nodes[owner] == LOST
        else "is down"
    )
    return RoutingError(
        grpc.StatusCode.UNAVAILABLE,
        f"{method}: slot {slot} {NO_LIVE_COPY}: its primary, {_name(owner, shard_map)}, {how},"
        " and no follower holds it; it is served again when that node is back",
    )


def _name(address: str, shard_map: ShardMap) -> str:
    """A node as errors name it: by its id, never its address."""
    node_id = shard_map.ids.get(address)
    return f"node {node_id}" if node_id else "a ledger node (id not yet known)"


def _refused(error: grpc.aio.AioRpcError, owner: str, shard_map: ShardMap) -> RoutingError:
    """A node's final refusal, passed on with its status and reason, every node's address in
    it (gRPC's own reasons may carry one) replaced by the node's name."""
    details = str(error.details() or error.code().name)
    for address in shard_map.nodes:
        details = details.replace(address, _name(address, shard_map))
    return RoutingError(error.code(), f"{_name(owner, shard_map)}: {details}")
