"""Routing core: send ledger events to the nodes that own their slots, fenced and batched.

Used by the router's server and by the SDK alike (DESIGN section 3). For each call:

  1. Route: each event's slot (from its account id) and the slot's owner and epoch come
     from the current shard map. Events are grouped by owner node.
  2. Coalesce: each (node, method) has a Coalescer that merges the events of concurrent
     callers into one request (flushed at `events_max`, or `delay_s` after the first event
     when the node has no request of ours in flight, or as soon as one completes), with a
     fence naming every slot's epoch. At most `inflight_max` requests per node are in
     flight; beyond that, events wait and batches grow (backpressure, not more RPCs).
  3. Split: the node answers one result per event, in order; each caller gets its own.
  4. Refuse: a slot whose primary the map marks LOST or DOWN (the controller found no
     follower to fail it over to) has no live copy: the call is refused UNAVAILABLE naming the
     slot, at once.
  5. Retry: events answered WRONG_SLOT, or sent to a node that is UNAVAILABLE (its slots may
     have failed over), are routed again after the map is refreshed, with jittered
     exponential backoff, within the caller's deadline. Writes are idempotent by id, so a
     retry can only answer EXISTS (or the journaled outcome) for what a lost reply had
     already applied. Any other error of a node (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...)
     ends the call with that error; parts already sent to other nodes may have been applied,
     and a retry with the same ids is safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc

import serving
from proto import contract, ledger_pb2 as pb, ledger_pb2_grpc
from proto.contract import LedgerMethod
from router import metrics
from router.shardmap import DOWN, LOST, ShardMap
from router.slots import slot_of

E = TypeVar("E")

# A node that refuses connections (UNAVAILABLE) or does not answer one attempt in time
# (DEADLINE_EXCEEDED of that attempt: stopped, cut off) is tried again, after a fresh look
# at the map: its slots may have failed over.
RETRYABLE = frozenset((grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))
ATTEMPT_TIMEOUT_S = 3.0  # one call to a node; the caller's deadline bounds all attempts
NO_LIVE_COPY = "has no live copy"
_GONE = frozenset((LOST, DOWN))  # in the refusal of a slot whose owner is lost: not worth retrying
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


class RoutingError(serving.Refused):
    """The call could not complete within its deadline; `code` says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message, code)


class Coalescer:
    """Merges concurrent callers' events for one (node, method) into few requests."""

    def __init__(
        self,
        send: Callable[[list[Any], dict[int, int]], Awaitable[Sequence[Any]]],
        events_max: int,
        delay_s: float,
        inflight_max: int,
    ) -> None:
        self._send = send
        self._events_max = events_max
        self._delay_s = delay_s
        self._inflight_max = inflight_max
        self._events: list[Any] = []
        self._fence: dict[int, int] = {}
        self._waiters: list[tuple[int, int, asyncio.Future[list[Any]]]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, events: list[Any], fence: dict[int, int]) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        # A caller routed with another epoch for a slot already in this batch (the map
        # changed between them): send what is gathered first, so each request has one fence.
        if any(self._fence.get(slot, epoch) != epoch for slot, epoch in fence.items()):
            self._flush()
        self._waiters.append((len(self._events), len(events), future))
        self._events.extend(events)
        self._fence.update(fence)
        if len(self._events) >= self._events_max:
            self._flush()
        elif self._timer is None and len(self._inflight) < self._inflight_max:
            self._timer = asyncio.get_running_loop().call_later(self._delay_s, self._flush_if_room)
        return future

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
        self._events, self._fence, self._waiters = [], {}, []
        task = asyncio.get_running_loop().create_task(self._deliver(events, fence, waiters))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._events and len(self._inflight) < self._inflight_max:
            self._flush()  # what gathered while the node was busy goes now

    async def _deliver(
        self, events: list[Any], fence: dict[int, int], waiters: list[tuple[int, int, asyncio.Future[list[Any]]]]
    ) -> None:
        # Every outcome, success or error, reaches every waiter: nothing fails unseen.
        try:
            results = await self._send(events, fence)
            if len(results) != len(events):
                raise RoutingError(grpc.StatusCode.INTERNAL, f"{len(events)} events got {len(results)} results")
        except BaseException as error:  # handed to the callers
            for _, _, future in waiters:
                if not future.done():
                    future.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        for offset, count, future in waiters:
            if not future.done():
                future.set_result(list(results[offset : offset + count]))

    async def close(self) -> None:
        self._flush()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)


class LedgerRouter:
    """Routes batched Ledger calls to the owning nodes of their slots."""

    def __init__(
        self,
        maps: MapSource,
        *,
        events_max: int = 4096,
        delay_s: float = 0.001,
        inflight_max: int = 4,
        rpc_timeout_s: float = ATTEMPT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.maps = maps
        self._events_max = events_max
        self._delay_s = delay_s
        self._inflight_max = inflight_max
        self._rpc_timeout_s = rpc_timeout_s
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, ledger_pb2_grpc.LedgerStub] = {}
        self._coalescers: dict[tuple[str, str], Coalescer] = {}

    def stub(self, address: str) -> ledger_pb2_grpc.LedgerStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = serving.channel(address, self._credentials, CHANNEL_OPTIONS)
            self._channels[address] = channel
            stub = self._stubs[address] = ledger_pb2_grpc.LedgerStub(channel)
        return stub

    def _coalescer(self, address: str, method: LedgerMethod[Any]) -> Coalescer:
        key = (address, method.name)
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
                reply = await call(request, timeout=timeout_s)
                return reply.results  # type: ignore[no-any-return]  # every batched response has results

            coalescer = Coalescer(send, self._events_max, self._delay_s, self._inflight_max)
            self._coalescers[key] = coalescer
        return coalescer

    async def close(self) -> None:
        for coalescer in self._coalescers.values():
            await coalescer.close()
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

    async def route(self, method: LedgerMethod[E], events: Sequence[E], timeout_s: float) -> list[Any]:
        """Each event's result from the node that owns its slot, in order (see the module's docstring)."""
        assert method in contract.BATCHED, method
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        results: list[Any] = [None] * len(events)
        todo = list(range(len(events)))
        attempt = 0
        while todo:
            shard_map = self.maps.current()
            groups: dict[str, tuple[list[int], list[E], dict[int, int]]] = {}
            total = shard_map.slots_total
            for index in todo:
                event = events[index]
                slot = slot_of(method.key_of(event), total)
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
            futures = [self._coalescer(o, method).submit(groups[o][1], groups[o][2]) for o in owners]
            remaining = deadline - loop.time()
            try:
                outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), remaining)
            except TimeoutError:
                raise RoutingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"{method.name}: no answer within {timeout_s:.3f}s"
                ) from None
            todo, stale, unavailable = [], False, ""
            for owner, outcome in zip(owners, outcomes, strict=True):
                indices = groups[owner][0]
                if isinstance(outcome, grpc.aio.AioRpcError):
                    if outcome.code() not in RETRYABLE:
                        raise RoutingError(outcome.code(), f"{owner}: {outcome.details()}") from outcome
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
                why = f"{unavailable} is unavailable" if unavailable else "slots kept moving (WRONG_SLOT)"
                code = grpc.StatusCode.UNAVAILABLE if unavailable else grpc.StatusCode.DEADLINE_EXCEEDED
                raise RoutingError(code, f"{method.name}: {len(todo)} events not answered in {timeout_s:.3f}s: {why}")
            await asyncio.sleep(pause)
            todo.sort()
        assert all(r is not None for r in results)
        return results

    async def get_account_transfers(
        self, request: pb.GetAccountTransfersRequest, timeout_s: float
    ) -> pb.GetAccountTransfersResponse:
        """One account's history page, from its slot's owner (retried like the rest)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        attempt = 0
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
                    fenced, timeout=max(0.001, min(self._rpc_timeout_s, deadline - loop.time()))
                )
                if reply.code != pb.WRONG_SLOT:
                    return reply
                retry = "WRONG_SLOT"
                await self.maps.refresh(shard_map.version)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:
                    raise RoutingError(error.code(), f"{owner}: {error.details()}") from error
                retry = f"{owner} is unavailable ({error.code().name})"
                await self.maps.refresh(shard_map.version)
            attempt += 1
            pause = serving.backoff_s(attempt, BACKOFF_FIRST_S, BACKOFF_MAX_S)
            if loop.time() + pause >= deadline:
                raise RoutingError(grpc.StatusCode.UNAVAILABLE, f"GetAccountTransfers: {retry} for {timeout_s:.3f}s")
            await asyncio.sleep(pause)


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
        f"{method}: slot {slot} {NO_LIVE_COPY}: its primary, node {shard_map.ids.get(owner, '?')} at {owner}, {how},"
        " and no follower holds it; it is served again when that node is back",
    )
