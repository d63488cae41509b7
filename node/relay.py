"""The outbox relay: delivers the credit legs of cross-node transfers and wakes their callers.

The protocol is node/outbox.py's; this is its I/O. Delivery rules:
  * Only durable entries are sent. The engine hands the relay each batch's new outbox
    entries after the batch is written, and every entry of its slots at startup, so a leg
    is re-driven after any restart (kill -9 included) and never sent for a debit that the
    disk does not have. An entry that does not pair with its transfers (`load`: only data a
    move or a restore brought, or a damaged disk) is left alone and counted
    (yunkai_node_outbox_entries_not_loaded_total): its transfer stays in flight.
  * A leg goes to the owner of its credit account's slot in this node's slot table (every
    node learns every slot's owner through AssignSlots), or in a WRONG_SLOT redirect that
    names a newer epoch than the table's, fenced with that epoch.
  * Legs for one owner travel together: at most `legs_per_rpc_max` per ApplyCreditLegs,
    at most `legs_in_flight_max` in all, each call with a deadline.
  * A leg without a final result (the call failed, WRONG_SLOT, no known owner) is tried
    again after a jittered exponential backoff. That is always safe: the credit node
    applies a leg once and answers every replay with the stored result.
  * A final result is queued for the committer (node/engine.py), which takes the queue at
    its next cycle and applies each result (outbox.apply_leg_result; one whose debit account
    no longer holds what the leg holds, only a peer's data, is left alone and counted like an
    entry not loaded: `outbox.unsettleable`): the transfer settles
    and the entry is deleted in one batch; the entry leaves memory once that batch is
    durable, and callers waiting for the transfer are woken then.
  * A leg whose credit slot this node leads itself (the two slots are not writable in one
    batch: node/slots.py `same_batch`, when they have followers) is not sent over gRPC to
    this node's own address: it goes to `deliver_own`'s function (node/node_service.py
    `apply_own_legs`), which checks, applies and audits it as ApplyCreditLegs would, under the
    same deadline, with the same results, failures and retries (counted by the relay's own
    metrics, legs sent and failed, not by the gRPC server's request metrics, which they never
    reach). The owner is still read from the table (or a redirect) at each attempt: a leg of a
    slot that moved goes over the network.
Channels to other nodes use the node's own certificate (mutual TLS, serving/tls.py) when it has
them, else plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import grpc

import serving
from node import keys, metrics, state_machine as sm
from node.keys import account_slot
from node.outbox import LEG_OUTCOMES_OF, SENDER_FIELD, malformed_leg, subject_of
from node.storage import Storage
from proto import ledger_pb2 as pb, node_pb2

_NODE_SERVICE = node_pb2.DESCRIPTOR.services_by_name["Node"].full_name
log = logging.getLogger("yunkai.node.relay")

# Reconnect quickly to a node that comes back: gRPC's default backoff grows to 120 s.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]
_WARN_EVERY_S = 10.0
# A route learned from a credit node's redirect (WRONG_SLOT, the slot's newer owner) is used
# for this long unless the table catches up first: a redirect is a peer's word, and one naming
# an epoch far ahead (a broken or forged one) must not pin the slot's legs for good.
_LEARNED_FRESH_S = 10.0

RouteFn = Callable[[int], tuple[int, str]]
OwnLegs = Callable[[node_pb2.ApplyCreditLegsRequest], Awaitable[node_pb2.ApplyCreditLegsResponse]]


@dataclass(frozen=True)
class RelayLimits:
    legs_per_rpc_max: int = 1024
    legs_in_flight_max: int = 4096
    rpc_timeout_s: float = 5.0
    backoff_s_min: float = 0.05
    backoff_s_max: float = 1.0


_READY, _SENT, _SETTLING, _BACKOFF = range(4)


class _Entry:
    """One outbox entry in memory: the leg and where it is in its delivery."""

    __slots__ = ("attempts", "key", "leg", "state")

    def __init__(self, key: bytes, leg: node_pb2.CreditLeg) -> None:
        self.key = key
        self.leg = leg
        self.state = _READY
        self.attempts = 0


class TakenResult(NamedTuple):
    """A leg's final result, as the credit node answered it, for the entry that was sent."""

    entry: _Entry
    code: sm.Code

    @property
    def leg(self) -> node_pb2.CreditLeg:
        return self.entry.leg


class Relay:
    """The outbox entries of this node's slots, their delivery, and the callers waiting."""

    def __init__(
        self,
        storage: Storage,
        route: RouteFn,
        on_results: Callable[[], None],
        limits: RelayLimits,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        assert 0 < limits.legs_per_rpc_max <= limits.legs_in_flight_max, limits
        assert 0 < limits.backoff_s_min <= limits.backoff_s_max, limits
        self._storage = storage
        self._credentials = credentials
        self._slots_total = storage.slots_total
        self._route = route
        self._on_results = on_results
        self._results: list[TakenResult] = []
        self.limits = limits
        self._entries: dict[bytes, _Entry] = {}
        self._ready: deque[_Entry] = deque()
        self._backoff: list[tuple[float, int, _Entry]] = []  # heap of (due, tie-break, entry)
        self._tie = itertools.count()
        self._learned: dict[int, tuple[int, str, float]] = {}  # slot -> (epoch, owner, when) from redirects
        self._stubs: dict[str, tuple[grpc.aio.Channel, serving.SessionStub]] = {}
        self._waiters: dict[tuple[str, str], list[asyncio.Future[pb.Transfer]]] = {}
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._warned_at: dict[str, float] = {}
        self._rng = random.Random()
        self._own: tuple[Callable[[], str], OwnLegs] | None = None

    def deliver_own(self, address: Callable[[], str], apply: OwnLegs) -> None:
        """Legs for the owner `address()` (this node) go to `apply`, not over gRPC (see the module)."""
        self._own = (address, apply)

    def __len__(self) -> int:
        return len(self._entries)

    # --- entries, from the engine ---------------------------------------------------------

    def load(self, entries: Iterable[tuple[bytes, node_pb2.CreditLeg]], moved_in: bool = False) -> None:
        """Every outbox entry of some slots, checked against its transfers: the node's slots
        at startup, and slots that moved onto this node. An entry that does not pair with them
        is logged and left alone (its transfer stays in flight: an operator's to look at), not
        asserted: a disk holds what moves and restores brought from peers as well as our own
        writes, and a node that stopped at every start over one entry would serve nothing."""
        held: dict[str, int] = {}  # debit account -> what its loaded legs hold of its debits_pending
        for key, leg in entries:
            problem = _loaded_problem(self._storage, key, leg, held)
            if problem is not None:
                log.error("outbox entry not loaded", extra={"problem": problem, "moved_in": moved_in})
                metrics.outbox_entries_not_loaded.inc()
                continue
            self._add(key, leg)
        metrics.outbox_entries.set(len(self._entries))
        self._wake.set()  # also when a slot moved in while the relay sleeps
        if self._entries:
            log.info("outbox reloaded", extra={"entries": len(self._entries)})

    def committed(self, outbox: Mapping[bytes, node_pb2.CreditLeg | None], settled: Sequence[pb.Transfer]) -> None:
        """A batch is durable: send its new entries, forget its deleted ones, wake callers."""
        for key, leg in outbox.items():
            if leg is None:
                self._entries.pop(key, None)
            else:
                self._add(key, leg)
        for transfer in settled:
            for future in self._waiters.pop((transfer.debit_account_id, transfer.id), ()):
                if not future.done():
                    future.set_result(transfer)
        metrics.outbox_entries.set(len(self._entries))
        self._wake.set()

    def take_results(self) -> list[TakenResult]:
        """The final results received since the last call (the committer's, each cycle)."""
        taken, self._results = self._results, []
        return taken

    def current(self, result: TakenResult) -> bool:
        """Whether the entry a result answers is still the one this relay delivers."""
        return self._entries.get(result.entry.key) is result.entry

    def discard(self, result: TakenResult) -> None:
        """A result that will not be applied here (its debit slot moved away)."""
        if self.current(result):
            del self._entries[result.entry.key]
        metrics.outbox_entries.set(len(self._entries))

    def forget_slot(self, slot: int) -> None:
        """A debit slot moved away: its entries moved with it and its new owner drives them.
        (A leg of it already sent is answered as usual; its result then finds the slot gone.)"""
        prefix = keys.slot_prefix(slot)
        for key in [key for key in self._entries if key.startswith(prefix)]:
            del self._entries[key]
        metrics.outbox_entries.set(len(self._entries))

    def _add(self, key: bytes, leg: node_pb2.CreditLeg) -> None:
        entry = _Entry(key, leg)
        self._entries[key] = entry
        self._ready.append(entry)

    # --- callers --------------------------------------------------------------------------

    def wait_for(self, debit_account_id: str, transfer_id: str) -> asyncio.Future[pb.Transfer]:
        """A future of the transfer's record once it is no longer IN_FLIGHT (committed);
        cancelled if this node no longer has the transfer (its slot moved away)."""
        future: asyncio.Future[pb.Transfer] = asyncio.get_running_loop().create_future()
        record = self._storage.transfer(debit_account_id, transfer_id)
        if record is None:
            # It was answered IN_FLIGHT, and its debit slot has moved to another node since
            # (node/slotmove.py): the outcome is the new owner's to tell. Cancelled: no outcome.
            future.cancel()
            return future
        if record.state != pb.TRANSFER_IN_FLIGHT:
            future.set_result(record)
            return future
        key = (debit_account_id, transfer_id)
        self._waiters.setdefault(key, []).append(future)
        future.add_done_callback(functools.partial(self._forget, key))
        return future

    def _forget(self, key: tuple[str, str], future: asyncio.Future[pb.Transfer]) -> None:
        waiters = self._waiters.get(key)
        if waiters is not None and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[key]

    # --- delivery -------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled (the engine cancels it once the committer has stopped)."""
        try:
            async with asyncio.TaskGroup() as sends:
                while True:
                    self._wake.clear()
                    self._dispatch(sends)
                    if self._in_flight >= self.limits.legs_in_flight_max or not self._backoff:
                        await self._wake.wait()
                        continue
                    delay = self._backoff[0][0] - time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, delay)):
                            await self._wake.wait()
        finally:
            stubs = list(self._stubs.values())
            self._stubs.clear()
            for channel, stub in stubs:
                await stub.close()
                await channel.close()

    def _dispatch(self, sends: asyncio.TaskGroup) -> None:
        now = time.monotonic()
        heap = self._backoff
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)[2]
            if entry.state == _BACKOFF and self._entries.get(entry.key) is entry:
                entry.state = _READY
                self._ready.append(entry)
        groups: dict[str, _Group] = {}
        room = self.limits.legs_in_flight_max - self._in_flight
        while self._ready and room > 0:
            entry = self._ready.popleft()
            if entry.state != _READY or self._entries.get(entry.key) is not entry:
                continue  # settled (or replaced) meanwhile
            slot = account_slot(entry.leg.credit_account_id, self._slots_total)
            epoch, owner = self._owner_of(slot)
            if not owner or not epoch:
                metrics.legs_failed.labels("NO_OWNER").inc()
                self._warn(f"slot {slot}", "no known owner for the credit slot", 1)
                self._retry(entry, now)
                continue
            entry.state = _SENT
            room -= 1
            self._in_flight += 1
            group = groups.setdefault(owner, _Group())
            group.add(entry, slot, epoch)
            if len(group.entries) >= self.limits.legs_per_rpc_max:
                sends.create_task(self._send(owner, groups.pop(owner)))
        for owner, group in groups.items():
            sends.create_task(self._send(owner, group))

    def _owner_of(self, slot: int) -> tuple[int, str]:
        epoch, owner = self._route(slot)
        learned = self._learned.get(slot)
        if learned is not None:
            learned_epoch, learned_owner, when = learned
            if learned_epoch > epoch and time.monotonic() - when < _LEARNED_FRESH_S:
                return learned_epoch, learned_owner
            del self._learned[slot]  # the table caught up, or the redirect is stale
        return epoch, owner

    def _learn(self, slot: int, redirect: pb.SlotRedirect) -> None:
        if redirect.slot == slot and redirect.owner and redirect.epoch > self._owner_of(slot)[0]:
            self._learned[slot] = (redirect.epoch, redirect.owner, time.monotonic())

    def _retry(self, entry: _Entry, now: float) -> None:
        entry.attempts += 1
        limits = self.limits
        pause = serving.backoff_s(entry.attempts - 1, limits.backoff_s_min, limits.backoff_s_max, self._rng)
        entry.state = _BACKOFF
        heapq.heappush(self._backoff, (now + pause, next(self._tie), entry))

    def _stub(self, owner: str) -> serving.SessionStub:
        pair = self._stubs.get(owner)
        if pair is None:
            channel = serving.channel(owner, self._credentials, _CHANNEL_OPTIONS)
            pair = (channel, serving.SessionStub(channel, _NODE_SERVICE))  # legs on one stream per owner
            self._stubs[owner] = pair
        return pair[1]

    def _warn(self, about: str, message: str, legs: int, error: BaseException | None = None) -> None:
        now = time.monotonic()
        if now - self._warned_at.get(about, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._warned_at[about] = now
            extra = {"to": about, "reason": message, "legs": legs}
            log.warning("credit legs not delivered", extra=extra, exc_info=error)

    async def _send(self, owner: str, group: _Group) -> None:
        request = node_pb2.ApplyCreditLegsRequest(
            legs=[entry.leg for entry in group.entries], fence=pb.Fence(slots=group.slots, epochs=group.epochs)
        )
        started = time.perf_counter()
        reply: node_pb2.ApplyCreditLegsResponse | None = None
        failure = ""
        own = self._own is not None and owner == self._own[0]()
        try:
            if own:
                assert self._own is not None
                async with asyncio.timeout(self.limits.rpc_timeout_s):
                    reply = await self._own[1](request)
            else:
                reply = await self._stub(owner).ApplyCreditLegs(request, timeout=self.limits.rpc_timeout_s)
        except grpc.aio.AioRpcError as error:
            failure = error.code().name
            self._warn(owner, f"{failure}: {error.details()}", len(group.entries))
        except Exception as error:  # this node's own legs: what a handler would have answered as an error
            if not own:
                raise
            # A refusal carries the status the gRPC path would have answered (node_service.py
            # apply_own_legs); anything else is a bug, logged with its stack.
            expected = isinstance(error, (TimeoutError, serving.Refused))
            if isinstance(error, TimeoutError):
                failure = "DEADLINE_EXCEEDED"
            elif isinstance(error, serving.Refused):
                failure = error.code.name
            else:
                failure = type(error).__name__
            self._warn(owner, f"its own legs: {failure}: {error}", len(group.entries), None if expected else error)
        finally:
            self._in_flight -= len(group.entries)
            self._wake.set()
        now = time.monotonic()
        if reply is not None and len(reply.results) != len(group.entries):
            log.error("ApplyCreditLegs answered the wrong number of results", extra={"to": owner})
            reply, failure = None, "BAD_REPLY"
        if reply is None:
            metrics.legs_failed.labels(failure).inc(len(group.entries))
            for entry in group.entries:
                self._retry(entry, now)
            return
        metrics.leg_round_trip_s.observe(time.perf_counter() - started)
        metrics.legs_sent.inc(len(group.entries))
        final = 0
        for entry, slot, result in zip(group.entries, group.slots, reply.results, strict=True):
            if result.code in LEG_OUTCOMES_OF[entry.leg.kind]:
                entry.state = _SETTLING
                self._results.append(TakenResult(entry, result.code))
                final += 1
                continue
            if result.code == pb.WRONG_SLOT:
                self._learn(slot, result.redirect)
            elif result.code == pb.DEBIT_ACCOUNT_NOT_FOUND and result.field == SENDER_FIELD:
                # The credit node's table names another primary for the debit slot: it has not
                # heard of a move or failover yet (or this node has lost the slot; then the
                # entry is forgotten with it).
                self._warn(owner, "its table names another primary for the debit slot", 1)
            else:
                # A refusal of a leg this node sent (the credit node found it breaks the protocol),
                # or a result no leg of its kind can have (a peer's bad answer): never applied.
                log.error(
                    "unexpected credit leg result",
                    extra={
                        "to": owner,
                        "code": _code_name(result.code),
                        "field": result.field,
                        "kind": node_pb2.LegKind.Name(entry.leg.kind),
                    },
                )
            metrics.legs_failed.labels(_code_name(result.code)).inc()
            self._retry(entry, now)
        if final:
            self._on_results()


def _code_name(code: int) -> str:
    """A result code's name; a number a peer sent that is none (its answers are not trusted)."""
    try:
        return pb.ResultCode.Name(code)
    except ValueError:
        return str(code)


class _Group:
    """Legs bound for one owner in one ApplyCreditLegs call, with their fence."""

    __slots__ = ("entries", "epochs", "slots")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.slots: list[int] = []
        self.epochs: list[int] = []

    def add(self, entry: _Entry, slot: int, epoch: int) -> None:
        self.entries.append(entry)
        self.slots.append(slot)
        self.epochs.append(epoch)


def _loaded_problem(storage: Storage, key: bytes, leg: node_pb2.CreditLeg, held: dict[str, int]) -> str | None:
    """Why an entry read back does not pair with its key, its debit account and the transfers it
    was written with (what node/outbox.py's apply_leg_result asserts when its result comes), or
    None. `held` sums, per debit account, what the legs loaded so far hold of its debits_pending:
    together they may not hold more than it has (each result takes its part back)."""
    malformed = malformed_leg(leg)  # as a credit node would refuse it, every time it is sent
    if malformed is not None:
        return f"leg {leg}: {malformed}"
    slot = account_slot(leg.debit_account_id, storage.slots_total)
    if key != keys.outbox_key(slot, leg.debit_account_id, subject_of(leg), leg.kind):
        return f"key {key!r} does not name leg {leg}"
    transfer = storage.transfer(leg.debit_account_id, leg.transfer_id)
    if transfer is None:
        return f"no transfer for leg {leg}"
    if leg.kind == node_pb2.LEG_RELEASE:
        pending = storage.transfer(leg.debit_account_id, leg.pending_id)
        if pending is None or pending.state not in (pb.TRANSFER_VOIDED, pb.TRANSFER_EXPIRED):
            return f"a RELEASE of a pending that is not voided or expired: {leg} {pending}"
        return None
    if transfer.state != pb.TRANSFER_IN_FLIGHT:
        return f"leg {leg} of a transfer that is not in flight: {transfer}"
    entry = storage.account_entry(leg.debit_account_id)
    if entry is None:
        return f"no debit account for leg {leg}"
    holds = leg.amount
    if leg.kind == node_pb2.LEG_POST:
        pending = storage.transfer(leg.debit_account_id, leg.pending_id)
        if pending is None or pending.state != pb.TRANSFER_PENDING:
            return f"a POST of a pending that is not pending: {leg} {pending}"
        if pending.amount != leg.reserved:
            return f"a POST reserving {leg.reserved} of a pending of {pending.amount}: {leg}"
        if (leg.event.id, leg.event.timestamp, leg.event.amount) != (transfer.id, transfer.timestamp, leg.amount):
            return f"a POST whose event is not its transfer: {leg} {transfer}"
        holds = pending.amount
    elif leg.amount != transfer.amount:
        return f"leg {leg} of {leg.amount} for a transfer of {transfer.amount}"
    else:
        sent = node_pb2.LEG_RESERVE if transfer.flags & sm.PENDING else node_pb2.LEG_CREDIT
        if (leg.kind, leg.credit_account_id, leg.ledger) != (sent, transfer.credit_account_id, transfer.ledger):
            return f"leg {leg} is not the one transfer {transfer.id!r} sends"
    debit = entry[0]
    total = held.get(leg.debit_account_id, 0) + holds
    if total > debit.debits_pending:
        return f"legs holding {total} of {leg.debit_account_id}'s debits_pending {debit.debits_pending}"
    if debit.debits_posted + debit.debits_pending > sm.INT64_MAX:  # a credit settled would overflow
        return f"{leg.debit_account_id}'s debits posted and pending add up past int64"
    held[leg.debit_account_id] = total
    return None
