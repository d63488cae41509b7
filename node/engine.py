"""The committer: the only writer of a node's ledger state, in group commits.

Protocol (DESIGN section 4):
  * Writes enter one bounded mailbox (RESOURCE_EXHAUSTED when full) and are applied by one
    committer task, in arrival order, to an overlay over committed state (node/overlay.py).
    Events of one slot are therefore applied in order, by one writer, without locks; events
    of different slots interleave deterministically.
  * Every event is fenced again when it is applied (node/slots.py): ownership may have
    changed while it queued. A refused one is answered WRONG_SLOT.
  * Where a transfer goes is decided once, when it is applied, from the slot table then:
    a credit account in a slot this node writes (`Slot.local`) is credited in the same
    batch by the state machine; any other goes through the outbox (node/outbox.py). The
    outbox is bounded: a request that could add entries past `outbox_entries_max` is
    refused whole when it is submitted (RESOURCE_EXHAUSTED).
  * The outbox relay (node/relay.py, run beside the committer) queues the credit nodes'
    final answers; each cycle takes them and applies them (outbox.apply_leg_result) with
    the rest. An answer for a frozen debit slot waits until the slot thaws; one for a slot
    no longer owned here is dropped, as its new owner re-drives the entry.
  * Each cycle the committer turns the overlay into one RocksDB WriteBatch, writes it with
    sync=True, and only then publishes the new state to readers and resolves every waiting
    caller. Nothing is acknowledged before it is durable; reads see committed state only.
    The written batch moves the node's trial balance (node/books.py): its account changes,
    checked against what its cross-node transitions reported.
  * Pending transfers with a timeout are expired by the same committer, so expiry is just
    another event in the slot's order; expiries of a frozen slot wait for it to thaw.
  * Slot moves (node/slotmove.py): the committer hands each batch to the change log just
    before writing it, while any slot is followed, and asserts that no batch writes a sealed
    slot. `barrier()` returns once everything queued before it is durable.
  * Replicated slots (node/replication.py): a cycle that writes slots with followers gives
    each its next sequence, writes locally, ships the entries and waits, before answering
    anyone, until every follower of each slot's current configuration has them; reads of
    those slots wait too (`settled`). A slot this node is no longer the primary of when the
    wait ends failed: its events are answered WRONG_SLOT (the new primary tells their fate).
  * If a durable write fails, the node stops (fail-stop): continuing could acknowledge
    state that is not on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from rocksdict import WriteBatch

import serving
from node import keys, metrics, outbox, records, state_machine as sm
from node.books import Books
from node.changelog import ChangeLog, Op
from node.clock import Clock
from node.keys import account_slot
from node.overlay import Overlay
from node.relay import Relay, RelayLimits, TakenResult
from node.replication import Replicator, parse_seq, seq_value
from node.slots import SlotTable
from node.storage import Storage
from proto import contract, ledger_pb2 as pb, node_pb2

log = logging.getLogger("yunkai.node.engine")

E = TypeVar("E")
ApplyFn = Callable[[Overlay, E, int], sm.Result]
_RESOLVES = sm.POST_PENDING | sm.VOID_PENDING
_EXPIRY_TICK_S = 0.1


class Overloaded(Exception):
    """The mailbox or the outbox is full: the caller should back off (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Limits:
    batch_events_max: int = contract.BATCH_EVENTS_MAX_DEFAULT
    queue_events_max: int = 65536
    commit_events_max: int = 16384
    expiries_per_commit_max: int = 4096
    outbox_entries_max: int = 65536

    def __post_init__(self) -> None:
        # Checked once, at start (the server refuses bad flags before this, with a message).
        # A queue smaller than a batch is allowed: such a batch is always refused
        # RESOURCE_EXHAUSTED, which tests use to fill the queue cheaply.
        assert self.batch_events_max > 0 and self.queue_events_max > 0 and self.commit_events_max > 0, self
        assert self.expiries_per_commit_max > 0 and self.outbox_entries_max > 0, self
        assert self.batch_events_max * contract.EVENT_BYTES_MAX <= serving.MESSAGE_BYTES_MAX, self


@dataclass
class _Command(Generic[E]):
    apply: ApplyFn[E] | None  # None: a barrier
    events: Sequence[tuple[E, int, int]]  # (event, slot, fenced epoch or 0)
    future: asyncio.Future[list[sm.Result]]
    outbox_reserved: int = 0  # outbox entries its events may add (counted against the bound)
    meta_puts: Sequence[tuple[bytes, bytes]] = ()  # node metadata written in the same batch
    weight: int = 0  # events it counts as against the queue and a cycle's bounds (a commit: records.weight)


class Engine:
    """A node's mailbox, committer and expiry sweep, and the outbox relay it supervises."""

    def __init__(
        self,
        storage: Storage,
        slots: SlotTable,
        changelog: ChangeLog,
        limits: Limits,
        relay_limits: RelayLimits | None = None,
        peer_credentials: grpc.ChannelCredentials | None = None,
        replicator: Replicator | None = None,
        clock: Clock | None = None,
    ) -> None:
        assert slots.slots_total == storage.slots_total, (slots.slots_total, storage.slots_total)
        self.storage = storage
        self.slots = slots
        self.changelog = changelog
        self.limits = limits
        self.slots_total = storage.slots_total
        self.clock = clock if clock is not None else load_clock(storage)
        self._mailbox: deque[_Command[object]] = deque()
        self._queued_events = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._expiries: list[tuple[int, int, str, str]] = []  # heap of (at, slot, debit, id)
        self._outbox_reserved = 0  # entries that queued commands may still add
        self._held_results: list[TakenResult] = []  # leg results of frozen debit slots
        self.replicator = replicator
        self._in_flight: frozenset[int] = frozenset()  # slots of the cycle awaiting its followers
        self._flushed = asyncio.Event()  # set whenever no cycle awaits its followers
        self._flushed.set()
        # The last cycle, if its followers may not have it (node/replication.py 1b): shipped
        # again before anything else is committed, and its slots' reads wait until then.
        self._resume = replicator.unfinished(storage.get(keys.REPLICATING)) if replicator is not None else {}
        if self._resume:
            self._in_flight = frozenset(self._resume)
            self._flushed.clear()
        self._load_expiries(slots.owned())
        self.books = Books(storage)  # node/books.py: counted once here, then kept by each commit
        self.books.count(slots.owned())
        self.relay = Relay(storage, slots.route, self._wake.set, relay_limits or RelayLimits(), peer_credentials)
        self.relay.load(storage.outbox_entries(slots.owned()))

    # --- writes ---------------------------------------------------------------------------

    # Events reach the submit_* methods already through the state machine's stateless
    # validate_* checks and the fence (the services answer those themselves).

    def submit_transfers(self, events: Sequence[tuple[pb.Transfer, int, int]]) -> asyncio.Future[list[sm.Result]]:
        # Bound the outbox before queueing: count every event that may add an entry (a
        # credit account in a slot not written here, or a post/void naming none, whose
        # pending's may be). Where each event goes is decided when it is applied.
        local, total = self.slots.local, self.slots_total
        legs = 0
        for transfer, _slot, _epoch in events:
            credit = transfer.credit_account_id
            if not credit or not local(account_slot(credit, total)):
                legs += 1
        if legs and len(self.relay) + self._outbox_reserved + legs > self.limits.outbox_entries_max:
            raise Overloaded(
                f"the outbox holds {len(self.relay)} credit legs for other nodes ({self._outbox_reserved} more"
                f" queued) and the limit is {self.limits.outbox_entries_max}; retry with backoff"
            )
        return self._submit(self._apply_transfer, events, outbox_reserved=legs)

    def submit_accounts(self, events: Sequence[tuple[pb.Account, int, int]]) -> asyncio.Future[list[sm.Result]]:
        return self._submit(sm.apply_account, events)

    def submit_changes(self, events: Sequence[tuple[pb.AccountChange, int, int]]) -> asyncio.Future[list[sm.Result]]:
        return self._submit(sm.apply_change, events)

    def submit_commits(self, events: Sequence[tuple[pb.Commit, int, int]]) -> asyncio.Future[list[sm.Result]]:
        """Slot-local record commits (node/records.py), past `records.check`; each weighs as
        much as the events it applies."""
        weight = sum(records.weight(commit) for commit, _slot, _epoch in events)
        return self._submit(self._apply_commit, events, weight=weight)

    def submit_credit_legs(
        self, events: Sequence[tuple[node_pb2.CreditLeg, int, int]]
    ) -> asyncio.Future[list[sm.Result]]:
        """Legs other nodes' relays sent (well formed, fenced at their credit slots)."""
        return self._submit(self._apply_credit_leg, events)

    async def barrier(self, meta_puts: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """Return once every command queued before this call is durable (or answered), and
        `meta_puts` too: node metadata written in the same group commit, so that concurrent
        callers share one fsync."""
        assert all(keys.slot_of_key(key) is None for key, _value in meta_puts), meta_puts
        await self._submit(None, [], bounded=False, meta_puts=meta_puts)

    def replicating(self) -> bool:
        """Whether a cycle awaits its followers now (0 cost on the hot path otherwise)."""
        return bool(self._in_flight)

    async def settled(self, slots: set[int], timeout_s: float) -> None:
        """Return once no write to `slots` awaits its followers (reads read only what survives),
        or after `timeout_s` (the reader then answers WRONG_SLOT for those still waiting)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._in_flight and not self._in_flight.isdisjoint(slots):
                    await self._flushed.wait()

    def awaiting_followers(self, slot: int) -> bool:
        return slot in self._in_flight

    def outcome(self, debit_account_id: str, transfer_id: str) -> asyncio.Future[pb.Transfer]:
        """The transfer's record once it is no longer IN_FLIGHT; cancelled if this node no
        longer has it (its slot moved away: the outcome is the new owner's to tell)."""
        return self.relay.wait_for(debit_account_id, transfer_id)

    def _submit(
        self,
        apply: ApplyFn[E] | None,
        events: Sequence[tuple[E, int, int]],
        outbox_reserved: int = 0,
        bounded: bool = True,
        meta_puts: Sequence[tuple[bytes, bytes]] = (),
        weight: int = 0,
    ) -> asyncio.Future[list[sm.Result]]:
        if self._stopping:
            raise Overloaded("the node is shutting down")
        weight = weight or len(events)
        if bounded and self._queued_events + weight > self.limits.queue_events_max:
            raise Overloaded(
                f"{self._queued_events} events are queued for commit and the limit is"
                f" {self.limits.queue_events_max}; retry with backoff"
            )
        future: asyncio.Future[list[sm.Result]] = asyncio.get_running_loop().create_future()
        command: _Command[E] = _Command(apply, events, future, outbox_reserved, meta_puts, weight)
        self._mailbox.append(command)  # type: ignore[arg-type]  # the mailbox holds every kind of event
        self._outbox_reserved += outbox_reserved
        self._queued_events += weight
        metrics.queue_events.set(self._queued_events)
        self._wake.set()
        return future

    # --- slot table -----------------------------------------------------------------------

    def assign_slots(self, request: node_pb2.AssignSlotsRequest) -> str | None:
        """Apply a new slot table (node/slots.py); an error message, and no change, if the
        request is not one this node can take (an epoch going backwards, ...).

        Slots gained by a committed move were staged by it (IMPORTED): their outbox entries
        and pending expiries are loaded and they are served from now on. Slots lost by a
        committed move are deleted in the same durable batch as the new table, and the
        writes held for them are answered WRONG_SLOT. A slot taken away without a move keeps
        its data."""
        self.storage.flush()  # replicated batches still waiting for their fsync land under the old table
        error = self.slots.check(request)
        if error is not None:
            return error
        self_address = request.self_address or self.slots.self_address
        if (
            request.base_map_version
            and not request.slots
            and self_address == self.slots.self_address
            and not self.slots.spiffe_ids_change(request)
        ):
            # A map change that moves no slot (a move recorded or forgotten): nothing to store.
            # The version is kept in memory only; after a restart the controller sends the table.
            self.slots.map_version = max(self.slots.map_version, request.map_version)
            return None
        batch = WriteBatch(raw_mode=True)
        done = self.slots.assign(request, batch)
        self.storage.write(batch)
        self.books.drop(done.lost)
        self.books.count(done.gained)
        if self.replicator is not None:
            self.replicator.configured()
        if done.moved_in or done.lost:
            self.storage.forget_accounts()
        for slot in done.lost:
            self.relay.forget_slot(slot)
            self.changelog.unfollow(slot)
        for slot in done.moved_in:
            # A copy made by a move carries the slot's replication (epoch, seq) in its range.
            value = self.storage.get(keys.seq_key(slot))
            if value is not None:
                self.slots[slot].seq_epoch, self.slots[slot].seq = parse_seq(value)
        promoted = [slot for slot, _old in done.promoted]
        if promoted:
            log.warning("promoted to primary", extra={"slots": len(promoted)})
            self.storage.forget_accounts()
        arrived = [slot for slot in done.moved_in if self.slots[slot].owned] + promoted
        if arrived:
            self.relay.load(self.storage.outbox_entries(arrived), moved_in=True)
            self._load_expiries(arrived)
        if done.gained or done.lost or done.kept:
            self._wake.set()  # expiries and leg results held for the slots
            log.debug(
                "slot table changed",
                extra={"gained": len(done.gained), "lost": len(done.lost), "moved_in": len(done.moved_in)},
            )
        return None

    def adopt(self, slots: Sequence[int]) -> int:
        """Slots led here whose ranges were written outside the committer (a restore:
        node/backup.py), taken up as if moved in: their books counted, their outbox entries
        loaded (the relay re-drives them) and their pending expiries. Returns the entries loaded."""
        assert all(self.slots[slot].owned for slot in slots), slots
        self.storage.forget_accounts()
        self.books.count(slots)
        before = len(self.relay)
        self.relay.load(self.storage.outbox_entries(slots), moved_in=True)
        self._load_expiries(slots)
        self._wake.set()
        return len(self.relay) - before

    def thaw(self, slot: int, migration_id: str) -> bool:
        """An aborted move: serve `slot` again. False if it is not frozen for that move."""
        if self.slots.frozen_for(slot) != migration_id:
            return False
        self.storage.delete_now(keys.move_key(slot))
        self.slots.thaw(slot)
        self._wake.set()  # expiries and leg results held for it
        return True

    # --- the committer --------------------------------------------------------------------

    async def run(self) -> None:
        """Commit until stop() is called and the mailbox is drained; relay the outbox meanwhile."""
        async with asyncio.TaskGroup() as tasks:
            ticker = tasks.create_task(self._expiry_ticker())
            relay = tasks.create_task(self.relay.run())
            heartbeats = tasks.create_task(self.replicator.run()) if self.replicator is not None else None
            if self._resume:
                await self._ship_again()
            await self._commit_loop()
            ticker.cancel()
            relay.cancel()
            if heartbeats is not None:
                heartbeats.cancel()

    async def _ship_again(self) -> None:
        assert self.replicator is not None
        entries, self._resume = self._resume, {}
        try:
            failed = await self.replicator.replicate(entries)
        finally:
            self._in_flight = frozenset()
            self._flushed.set()
        log.warning("shipped the last cycle again at startup", extra={"slots": len(entries), "failed": len(failed)})

    def stop(self) -> None:
        """Refuse new writes; run() returns once everything queued is committed."""
        self._stopping = True
        self._wake.set()
        if self.replicator is not None:
            self.replicator.stop()
        self.slots.release_all()  # held callers stop waiting (the slots stay frozen on disk)

    async def _expiry_ticker(self) -> None:
        while True:
            await asyncio.sleep(_EXPIRY_TICK_S)
            if self._expiries and self._expiries[0][0] <= time.time_ns():
                self._wake.set()

    async def _commit_loop(self) -> None:
        while not (self._stopping and not self._mailbox):
            await self._wake.wait()
            self._wake.clear()
            commands: list[_Command[object]] = []
            taken = 0
            while self._mailbox and taken < self.limits.commit_events_max:
                command = self._mailbox.popleft()
                commands.append(command)
                taken += command.weight
            if self._mailbox:
                self._wake.set()  # more than one cycle's worth is waiting
            overlay = Overlay(self.storage)
            settled = self._apply_leg_results(overlay)
            outcomes = [self._apply(overlay, command) for command in commands]
            expired = self._expire_due(overlay)
            meta_puts = [put for command in commands for put in command.meta_puts]
            if not overlay.empty() or meta_puts:
                failed = await self._commit(overlay, meta_puts)
                if failed:
                    self._fail(commands, outcomes, failed)
            self._queued_events -= taken
            self._outbox_reserved -= sum(command.outbox_reserved for command in commands)
            assert self._queued_events >= 0 and self._outbox_reserved >= 0, (self._queued_events, self._outbox_reserved)
            metrics.queue_events.set(self._queued_events)
            metrics.commit_events.observe(taken + settled + expired)
            metrics.pending_expiries.set(len(self._expiries))
            for command, results in zip(commands, outcomes, strict=True):
                if not command.future.done():  # the caller may have been cancelled
                    command.future.set_result(results)

    async def _commit(self, overlay: Overlay, meta_puts: Sequence[tuple[bytes, bytes]]) -> set[int]:
        """Write the cycle durably (and to the followers of its replicated slots), then make it
        visible: readers, the relay, the expiry heap. Returns the slots that failed."""
        replicating = self.replicator is not None and bool(self.slots.follower_nodes())
        recording = self.changelog.following() or self.slots.sealed_count() > 0 or replicating
        ops: list[Op] | None = [] if recording else None
        batch, published = overlay.write_batch(self.clock.last, ops)
        by_slot: dict[int, tuple[int, int, list[Op]]] = {}
        if ops:
            self._check_unsealed(ops)
            if replicating:
                by_slot = self._entries(ops, batch)
            if self.changelog.following():
                self.changelog.capture(ops, self.storage.get)
        for key, value in meta_puts:
            batch.put(key, value)
        entries: dict[int, bytes] = {}
        if by_slot:
            assert self.replicator is not None
            entries = self.replicator.encode(by_slot)
            batch.put(keys.REPLICATING, self.replicator.record(entries))
        started = time.perf_counter()
        self.storage.write(batch)
        metrics.fsync_latency_s.observe(time.perf_counter() - started)
        # Before any wait: a slot lost meanwhile leaves the books with this batch in its sums.
        self.books.committed(overlay.moved, overlay.across)
        failed: set[int] = set()
        if entries:
            for slot, (epoch, seq, _ops) in by_slot.items():
                self.slots[slot].seq_epoch, self.slots[slot].seq = epoch, seq
            assert self.replicator is not None
            self._in_flight = frozenset(entries)
            self._flushed.clear()
            started = time.perf_counter()
            try:
                failed = await self.replicator.replicate(entries)
            finally:
                self._in_flight = frozenset()
                self._flushed.set()
            metrics.replication_wait_s.observe(time.perf_counter() - started)
        total = self.slots_total
        if failed:
            published = {a: e for a, e in published.items() if account_slot(a, total) not in failed}
        self.storage.publish_accounts(published)
        for expires_at, debit_id, transfer_id in overlay.expiry_set:
            slot = account_slot(debit_id, total)
            if slot not in failed:
                heapq.heappush(self._expiries, (expires_at, slot, debit_id, transfer_id))
        if overlay.outbox or overlay.settled:
            outbox_changes, settled = overlay.outbox, overlay.settled
            if failed:
                outbox_changes = {k: v for k, v in outbox_changes.items() if keys.slot_of_key(k) not in failed}
                settled = [t for t in settled if account_slot(t.debit_account_id, total) not in failed]
            self.relay.committed(outbox_changes, settled)
        return failed

    def _entries(self, ops: list[Op], batch: WriteBatch) -> dict[int, tuple[int, int, list[Op]]]:
        """The cycle's replication entries (slot -> epoch, seq, its ops) for the slots this node
        leads with followers; each one's next (epoch, seq) is written in the batch too."""
        by_slot: dict[int, list[Op]] = {}
        slots = self.slots
        for op in ops:
            slot = keys.slot_of_key(op[0])
            if slot is not None and slots[slot].followers and slots[slot].owned:
                by_slot.setdefault(slot, []).append(op)
        entries: dict[int, tuple[int, int, list[Op]]] = {}
        for slot, slot_ops in by_slot.items():
            entry = slots[slot]
            seq = entry.seq + 1
            key, value = keys.seq_key(slot), seq_value(entry.epoch, seq)
            batch.put(key, value)
            slot_ops.append((key, value))
            ops.append((key, value))
            entries[slot] = (entry.epoch, seq, slot_ops)
        return entries

    def _fail(self, commands: Sequence[_Command[object]], outcomes: list[list[sm.Result]], failed: set[int]) -> None:
        """Answer WRONG_SLOT for every event that wrote a failed slot: this node is no longer its
        primary, and whether the write survived is the new primary's to tell."""
        total = self.slots_total
        for command, results in zip(commands, outcomes, strict=True):
            if command.apply is None:
                continue
            for index, (event, slot, _epoch) in enumerate(command.events):
                touched = slot in failed
                if not touched and isinstance(event, pb.Transfer) and event.credit_account_id:
                    touched = account_slot(event.credit_account_id, total) in failed
                if touched:
                    results[index] = sm.Result(pb.WRONG_SLOT)

    def _check_unsealed(self, ops: Sequence[Op]) -> None:
        if not self.slots.sealed_count():
            return
        for key, _value in ops:
            slot = keys.slot_of_key(key)
            assert slot is None or not self.slots.sealed(slot), f"a write to slot {slot} after its seal: {key!r}"

    def _apply(self, overlay: Overlay, command: _Command[object]) -> list[sm.Result]:
        apply = command.apply
        if apply is None:
            return []
        results: list[sm.Result] = []
        serves = self.slots.serves
        clock = self.clock
        for event, slot, epoch in command.events:
            if not serves(slot, epoch):
                results.append(sm.Result(pb.WRONG_SLOT))
                continue
            results.append(apply(overlay, event, clock.next()))
        return results

    def _apply_transfer(self, overlay: Overlay, t: pb.Transfer, timestamp: int) -> sm.Result:
        """A transfer where its credit account is written now: here, in this batch, by the
        state machine; elsewhere, through the outbox. (The hot path: a plain transfer whose
        credit slot is written in the same batch as its debit slot.)"""
        total, same_batch = self.slots_total, self.slots.same_batch
        if not t.flags & _RESOLVES:
            debit_slot = account_slot(t.debit_account_id, total)
            credit_slot = account_slot(t.credit_account_id, total)
            if not same_batch(debit_slot, credit_slot):
                accepted = outbox.accept_transfer(overlay, t, timestamp)
                if accepted.code == pb.STORED_DATA_INCONSISTENT:
                    _refused_inconsistent(overlay, t)
                return accepted
            result = sm.apply_transfer(overlay, t, timestamp)
            if t.flags & sm.PENDING and result.code == pb.OK and credit_slot != debit_slot:
                outbox.journal_local_reserve(overlay, t, timestamp)
            return result
        result = self._resolve(overlay, t, timestamp)
        if result.code == pb.STORED_DATA_INCONSISTENT:
            _refused_inconsistent(overlay, t)
        return result

    def _resolve(self, overlay: Overlay, t: pb.Transfer, timestamp: int) -> sm.Result:
        """A post or void: by the state machine where the pending's credit account is written
        in this batch, else through the outbox."""
        total, same_batch = self.slots_total, self.slots.same_batch
        pending = overlay.get_transfer(t.debit_account_id, t.pending_id)
        if pending is None:
            return sm.apply_transfer(overlay, t, timestamp)
        debit_slot = account_slot(t.debit_account_id, total)
        credit_slot = account_slot(pending.credit_account_id, total)
        if not same_batch(debit_slot, credit_slot) or outbox.crossing(overlay, pending) or _in_flight(overlay, t):
            return outbox.resolve_pending(overlay, t, timestamp)
        was_pending = pending.state == pb.TRANSFER_PENDING
        result = sm.apply_transfer(overlay, t, timestamp)
        if was_pending and credit_slot != debit_slot:  # resolved now (posted, voided or found overdue)?
            after = overlay.get_transfer(t.debit_account_id, t.pending_id)
            assert after is not None, t  # a transfer record is never deleted
            outbox.journal_local_resolution(overlay, after, t.id)
        return result

    def _apply_commit(self, overlay: Overlay, commit: pb.Commit, timestamp: int) -> sm.Result:
        slot = account_slot(commit.writes[0].record.key, self.slots_total)
        timestamps = [timestamp, *(self.clock.next() for _ in range(len(commit.accounts) + len(commit.transfers)))]
        result = records.apply(overlay, commit, slot, timestamps)
        if result.code == pb.STORED_DATA_INCONSISTENT:  # field: "transfers[<index>]...", the post or void refused
            _refused_inconsistent(overlay, commit.transfers[int(result.field[len("transfers[") :].split("]")[0])])
        return result

    def _apply_credit_leg(self, overlay: Overlay, leg: node_pb2.CreditLeg, timestamp: int) -> sm.Result:
        """C (node/outbox.py) with what this node's table says of the leg's debit slot now: it is
        this node's own (the leg must then be in its outbox), or another node leads it."""
        debit = self.slots[account_slot(leg.debit_account_id, self.slots_total)]
        if not debit.owned and (not debit.owner or debit.owner == self.slots.self_address):
            return sm.Result(pb.DEBIT_ACCOUNT_NOT_FOUND, "debit_account_id")
        return outbox.apply_credit_leg(overlay, leg, timestamp, debit_here=debit.owned)

    def _apply_leg_results(self, overlay: Overlay) -> int:
        """The credit nodes' answers the relay has (and those held for slots now thawed)."""
        taken = self._held_results + self.relay.take_results()
        self._held_results = []
        applied = 0
        for result in taken:
            slot = self.slots[account_slot(result.leg.debit_account_id, self.slots_total)]
            if not slot.owned or not self.relay.current(result):
                self.relay.discard(result)  # the slot moved away: its new owner drives the entry
            elif slot.frozen:
                self._held_results.append(result)  # settles after the move: here if it aborts
            elif problem := outbox.unsettleable(overlay, result.leg):
                # A peer's data: counted, and left alone by this process only. Its entry stays on
                # disk, and a start or a move-in loads it again if the legs then fit the account
                # (node/relay.py `_loaded_problem` counts the legs, not the local pendings).
                leg = result.leg
                log.error(
                    "a leg's result left unsettled",
                    extra={"debit": leg.debit_account_id, "transfer": leg.transfer_id, "problem": problem},
                )
                metrics.outbox_entries_not_loaded.inc()
                self.relay.discard(result)
            else:
                outbox.apply_leg_result(overlay, outbox.LegResult(result.leg, result.code), self.clock.next())
                applied += 1
        return applied

    def _expire_due(self, overlay: Overlay) -> int:
        expired = 0
        now = time.time_ns()
        heap = self._expiries
        total, same_batch = self.slots_total, self.slots.same_batch
        held: list[tuple[int, int, str, str]] = []
        while heap and heap[0][0] <= now and expired < self.limits.expiries_per_commit_max:
            due = heapq.heappop(heap)
            _at, slot, debit_id, transfer_id = due
            if not self.slots[slot].owned:
                continue
            if self.slots[slot].frozen:
                held.append(due)  # expires after the move: here if it aborts, else on the target
                continue
            pending = overlay.get_transfer(debit_id, transfer_id)
            if pending is None:
                continue
            deadline = sm.expires_at(pending)
            if deadline != _at:
                # A key that does not name its pending's deadline (one moved in from a peer):
                # replaced by the pending's own, if it still has one to come.
                overlay.pending_expiry_clear(pending, _at)
                if deadline and pending.state == pb.TRANSFER_PENDING:
                    overlay.pending_expiry_set(pending, deadline)
                continue
            credit_slot = account_slot(pending.credit_account_id, total)
            local = same_batch(slot, credit_slot) and not outbox.crossing(overlay, pending)
            unpaired = _unexpirable(overlay, pending, local)
            if unpaired:  # a moved-in pending its accounts cannot release: left alone, counted
                log.error("a pending not expired", extra={"transfer": transfer_id, "problem": unpaired})
                metrics.pendings_not_expired.inc()
                continue
            if local:
                done = sm.expire_pending(overlay, pending, self.clock.next())
                if done and credit_slot != slot:
                    outbox.journal_local_resolution(overlay, pending, pending.id)
            else:
                done = outbox.expire_pending(overlay, pending, self.clock.next())
            expired += done
        for due in held:
            heapq.heappush(heap, due)
        return expired

    def _load_expiries(self, slots: Sequence[int]) -> None:
        for expiry in self.storage.pending_expiries(slots):
            heapq.heappush(self._expiries, expiry)
        metrics.pending_expiries.set(len(self._expiries))


def _in_flight(overlay: Overlay, t: pb.Transfer) -> bool:
    """Whether `t`'s id is a post already in flight (only node/outbox.py makes those, and only
    it finds the outbox entry that answers the replay)."""
    stored = overlay.get_transfer(t.debit_account_id, t.id)
    return stored is not None and stored.state == pb.TRANSFER_IN_FLIGHT and bool(stored.flags & sm.POST_PENDING)


def _refused_inconsistent(overlay: Overlay, t: pb.Transfer) -> None:
    """Log and count a transfer refused STORED_DATA_INCONSISTENT, saying what does not add up."""
    pending = overlay.get_transfer(t.debit_account_id, t.pending_id) if t.pending_id else None
    if not t.flags & _RESOLVES:
        problem = "an outbox entry without its transfer is at its key"
    elif _in_flight(overlay, t):
        problem = "a post in flight without its outbox entry"
    elif pending is None:
        problem = "its pending is not there"
    elif pending.state != pb.TRANSFER_PENDING:
        problem = f"its pending's state {pending.state} is not one this version knows"
    else:  # the debit's half first: the only half where the credit account is on another node
        problem = outbox.inconsistent(overlay, pending) or sm.unheld(overlay, pending)
    log.error(
        "a transfer refused: the stored data it needs does not add up",
        extra={"debit": t.debit_account_id, "transfer": t.id, "pending": t.pending_id, "problem": problem},
    )
    metrics.events_on_inconsistent_data.inc()


def _unexpirable(overlay: Overlay, pending: pb.Transfer, local: bool) -> str:
    """Why a pending's stored data cannot take its expiry ("" if it can): node/state_machine.py
    `unheld`, or node/outbox.py `inconsistent` where its credit account is on another node, for
    a pending still to release (the expiry of any other is a no-op)."""
    if pending.state != pb.TRANSFER_PENDING:
        return ""
    return sm.unheld(overlay, pending) if local else outbox.inconsistent(overlay, pending)


def load_clock(storage: Storage) -> Clock:
    """The ledger clock as durably recorded (never behind what was stamped before)."""
    raw = storage.get(keys.CLOCK)
    return Clock(int.from_bytes(raw, "big") if raw else 0)
