"""Slot actors and group commit: the only writer of a node's ledger state.

Protocol (DESIGN section 4):
  * A slot actor is the per-slot state a node keeps: whether it owns the slot, and at
    which epoch. Requests are fenced against it
    when they arrive and again when they are applied.
  * Writes enter one bounded mailbox (RESOURCE_EXHAUSTED when full) and are applied by one
    committer task, in arrival order, to an in-memory overlay over committed state. Events
    of one slot are therefore applied in order, by one writer, without locks; events of
    different slots interleave deterministically.
  * Each cycle the committer turns the overlay into one RocksDB WriteBatch, writes it with
    sync=True, and only then publishes the new state to readers and resolves every waiting caller. Nothing is
    acknowledged before it is durable; reads see committed state only.
  * Pending transfers with a timeout are expired by the same committer, so expiry is just
    another event in the slot's order.
  * If a durable write fails, the node stops (fail-stop): continuing could acknowledge
    state that is not on disk.
  * A transfer whose credit account's slot this node does not own when the committer
    applies it goes through the outbox (node/outbox.py): its debit half and its outbox
    entry commit here, the relay (node/relay.py, supervised by run()) delivers the credit
    leg, and the leg's result comes back through the mailbox. Everything else commits in
    one batch, whatever its slots. The outbox is bounded: a request that could add
    entries past `outbox_entries_max` is refused whole (RESOURCE_EXHAUSTED).
  * Slot moves (node/slotmove.py): a slot being exported is followed by the change log,
    which the committer feeds with each batch's writes to it just before the write. A
    frozen slot takes no new writes of its own: they wait upstream (node/service.py, the
    relay's results, the expiry sweep), and `barrier()` returns once everything queued
    before the freeze is durable; the slot is then sealed, and from then on a credit
    account in it counts as remote (its leg goes through the outbox and follows the slot).
    The slot table's batch that takes a slot away also deletes its range.
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

from node import metrics, outbox, state_machine as sm
from node.relay import Relay, RelayLimits
from node.slotmove import ChangeLog, Op, SlotMoves, move_key, slot_range
from node.storage import (
    Storage,
    account_key_of,
    account_slot,
    applied_leg_key,
    change_key,
    creation_key,
    expiry_key,
    history_prefix_of,
    outbox_key,
    transfer_key,
)
from proto import ledger_pb2 as pb, node_pb2

log = logging.getLogger("yunkai.node.engine")

E = TypeVar("E")
ApplyFn = Callable[["Overlay", E, int], sm.Result]
_RESOLVES = sm.POST_PENDING | sm.VOID_PENDING

_CLOCK_KEY = "clock"
_SLOTS_KEY = "slots"
# A delta of the slot table (a committed move) is stored as one key per changed slot over the
# last whole table, instead of rewriting all S entries (~3 ms at S = 4096, on the freeze's path).
_SLOT_DELTA_PREFIX = b"\xff\xffslot:"
_SLOT_DELTA_END = b"\xff\xffslot;"


class Overloaded(Exception):
    """The mailbox is full: the caller should back off (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Limits:
    batch_events_max: int = 8192
    queue_events_max: int = 65536
    commit_events_max: int = 16384
    expiries_per_commit_max: int = 4096
    outbox_entries_max: int = 65536


class Clock:
    """Ledger timestamps: unique, increasing nanoseconds, never behind a previous run."""

    def __init__(self, last: int) -> None:
        self.last = last

    def next(self) -> int:
        now = time.time_ns()
        self.last = now if now > self.last else self.last + 1
        return self.last


class SlotActor:
    __slots__ = ("epoch", "frozen", "owned", "owner", "slot")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.epoch = 0
        self.owner = ""
        self.owned = False
        self.frozen = False  # writes held for a move (node/slotmove.py)


class Overlay:
    """One commit cycle's uncommitted writes over committed state (a `sm.Store`)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._slots_total = storage.slots_total
        self.accounts: dict[str, pb.Account] = {}  # read-for-write copies
        self.dirty_accounts: dict[str, pb.Account] = {}
        self.creations: dict[str, pb.Account] = {}
        self.transfers: dict[tuple[str, str], pb.Transfer] = {}
        self.changes: dict[tuple[str, str], pb.AccountChange] = {}
        # History is a snapshot of each event, serialized when appended: a record can change
        # again later in the same cycle (a pending posted in the same batch).
        self.history: list[tuple[str, int, bytes]] = []
        self._history_last: tuple[pb.Transfer, bytes] | None = None
        self.expiry_set: list[tuple[int, str, str]] = []
        self.expiry_clear: list[tuple[int, str, str]] = []
        self.outbox: dict[bytes, node_pb2.CreditLeg | None] = {}  # None: deleted
        self.applied_legs: dict[bytes, node_pb2.AppliedLeg] = {}
        self.settled: list[pb.Transfer] = []

    def get_account(self, account_id: str) -> pb.Account | None:
        account = self.accounts.get(account_id)
        if account is None:
            entry = self._storage.account_entry(account_id)
            if entry is None:
                return None
            account = pb.Account()
            account.CopyFrom(entry[0])
            self.accounts[account_id] = account
        return account

    def put_account(self, account: pb.Account) -> None:
        assert account.debits_pending >= 0 and account.credits_pending >= 0, account
        assert account.debits_posted >= 0 and account.credits_posted >= 0, account
        self.accounts[account.id] = account
        self.dirty_accounts[account.id] = account

    def get_account_creation(self, account_id: str) -> pb.Account | None:
        creation = self.creations.get(account_id)
        return creation if creation is not None else self._storage.account_creation(account_id)

    def put_account_creation(self, account: pb.Account) -> None:
        self.creations[account.id] = account

    def get_transfer(self, debit_account_id: str, transfer_id: str) -> pb.Transfer | None:
        transfer = self.transfers.get((debit_account_id, transfer_id))
        return transfer if transfer is not None else self._storage.transfer(debit_account_id, transfer_id)

    def put_transfer(self, transfer: pb.Transfer) -> None:
        self.transfers[(transfer.debit_account_id, transfer.id)] = transfer

    def append_history(self, account: pb.Account, transfer: pb.Transfer) -> None:
        if account.flags & sm.NO_HISTORY:
            return
        # The state machine appends an event's debit and credit entries back to back, with
        # no change between them, so the second reuses the first's bytes.
        last = self._history_last
        if last is not None and last[0] is transfer:
            data = last[1]
        else:
            data = transfer.SerializeToString()
            self._history_last = (transfer, data)
        self.history.append((account.id, transfer.timestamp, data))

    def get_change(self, account_id: str, change_id: str) -> pb.AccountChange | None:
        change = self.changes.get((account_id, change_id))
        return change if change is not None else self._storage.change(account_id, change_id)

    def put_change(self, change: pb.AccountChange) -> None:
        self.changes[(change.account_id, change.id)] = change

    def pending_expiry_set(self, transfer: pb.Transfer, expires_at: int) -> None:
        self.expiry_set.append((expires_at, transfer.debit_account_id, transfer.id))

    def pending_expiry_clear(self, transfer: pb.Transfer, expires_at: int) -> None:
        self.expiry_clear.append((expires_at, transfer.debit_account_id, transfer.id))

    def append_history_at(self, account: pb.Account, event: pb.Transfer, at: int) -> None:
        """A history entry keyed by this node's time `at` rather than the event's own
        timestamp (a cross-node event: the two nodes' clocks are not one sequence)."""
        if not account.flags & sm.NO_HISTORY:
            self.history.append((account.id, at, event.SerializeToString()))

    def get_outbox(self, debit_account_id: str, subject_id: str, kind: int) -> node_pb2.CreditLeg | None:
        key = outbox_key(account_slot(debit_account_id, self._slots_total), debit_account_id, subject_id, kind)
        if key in self.outbox:
            return self.outbox[key]
        return self._storage.outbox_entry(key)

    def _outbox_key(self, leg: node_pb2.CreditLeg) -> bytes:
        slot = account_slot(leg.debit_account_id, self._slots_total)
        return outbox_key(slot, leg.debit_account_id, outbox.subject_of(leg), leg.kind)

    def put_outbox(self, leg: node_pb2.CreditLeg) -> None:
        key = self._outbox_key(leg)
        # Paired with apply_leg_result's check: an entry is written only over nothing.
        assert self.get_outbox(leg.debit_account_id, outbox.subject_of(leg), leg.kind) is None, leg
        self.outbox[key] = leg

    def delete_outbox(self, leg: node_pb2.CreditLeg) -> None:
        self.outbox[self._outbox_key(leg)] = None

    def get_applied_leg(
        self, credit_account_id: str, debit_account_id: str, transfer_id: str, kind: int
    ) -> node_pb2.AppliedLeg | None:
        slot = account_slot(credit_account_id, self._slots_total)
        key = applied_leg_key(slot, debit_account_id, transfer_id, kind)
        applied = self.applied_legs.get(key)
        return applied if applied is not None else self._storage.applied_leg(key)

    def put_applied_leg(self, applied: node_pb2.AppliedLeg) -> None:
        leg = applied.leg
        slot = account_slot(leg.credit_account_id, self._slots_total)
        self.applied_legs[applied_leg_key(slot, leg.debit_account_id, leg.transfer_id, leg.kind)] = applied

    def transfer_settled(self, transfer: pb.Transfer) -> None:
        self.settled.append(transfer)

    def empty(self) -> bool:
        return not (
            self.dirty_accounts or self.creations or self.transfers or self.changes or self.outbox or self.applied_legs
        )

    def write_batch(
        self, clock_last: int, ops: list[Op] | None = None
    ) -> tuple[WriteBatch, dict[str, tuple[pb.Account, bytes]]]:
        """The cycle's writes as one WriteBatch, and the accounts to publish after it; with
        `ops`, every slot key written is also appended there, in order (the change log's)."""
        total = self._slots_total
        batch = WriteBatch(raw_mode=True)
        published: dict[str, tuple[pb.Account, bytes]] = {}
        if ops is not None:
            batch = _Recording(batch, ops)  # type: ignore[assignment]
        put = batch.put
        for account_id, account in self.dirty_accounts.items():
            data = account.SerializeToString()
            put(account_key_of(account_id, total), data)
            published[account_id] = (account, data)
        for account_id, creation in self.creations.items():
            batch.put(creation_key(account_slot(account_id, total), account_id), creation.SerializeToString())
        for (debit_id, transfer_id), transfer in self.transfers.items():
            put(transfer_key(account_slot(debit_id, total), debit_id, transfer_id), transfer.SerializeToString())
        for account_id, timestamp, data in self.history:
            put(history_prefix_of(account_id, total) + timestamp.to_bytes(8, "big"), data)
        for (account_id, change_id), change in self.changes.items():
            slot = account_slot(account_id, total)
            batch.put(change_key(slot, account_id, change_id), change.SerializeToString())
        for expires_at, debit_id, transfer_id in self.expiry_set:
            batch.put(expiry_key(account_slot(debit_id, total), expires_at, debit_id, transfer_id), b"")
        for expires_at, debit_id, transfer_id in self.expiry_clear:
            batch.delete(expiry_key(account_slot(debit_id, total), expires_at, debit_id, transfer_id))
        for key, leg in self.outbox.items():
            if leg is None:
                batch.delete(key)
            else:
                put(key, leg.SerializeToString())
        for key, applied in self.applied_legs.items():
            put(key, applied.SerializeToString())
        if ops is not None:
            batch = batch.batch  # type: ignore[attr-defined]
        batch.put(b"\xff\xff" + _CLOCK_KEY.encode(), clock_last.to_bytes(8, "big"))
        return batch, published


class _Recording:
    """A WriteBatch that also lists its operations (only while slots are followed)."""

    __slots__ = ("batch", "ops")

    def __init__(self, batch: WriteBatch, ops: list[Op]) -> None:
        self.batch = batch
        self.ops = ops

    def put(self, key: bytes, value: bytes) -> None:
        self.batch.put(key, value)
        self.ops.append((key, value))

    def delete(self, key: bytes) -> None:
        self.batch.delete(key)
        self.ops.append((key, None))


@dataclass
class _Command(Generic[E]):
    apply: ApplyFn[E]
    events: Sequence[tuple[E, int, int]]  # (event, slot, fenced epoch or 0)
    future: asyncio.Future[list[sm.Result]]
    outbox_reserved: int = 0  # outbox entries its events may add (counted against the bound)
    meta_puts: Sequence[tuple[bytes, bytes]] = ()  # node metadata written in the same batch


class Engine:
    """Owns a node's slot table, mailbox, committer, expiry sweep and outbox relay."""

    def __init__(
        self,
        storage: Storage,
        limits: Limits,
        self_address: str,
        join: bool = False,
        relay_limits: RelayLimits | None = None,
        peer_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.storage = storage
        self.limits = limits
        self.slots_total = storage.slots_total
        self.self_address = self_address
        clock_raw = storage.meta_get(_CLOCK_KEY)
        self.clock = Clock(int.from_bytes(clock_raw, "big") if clock_raw else 0)
        self.slots = [SlotActor(s) for s in range(self.slots_total)]
        self.map_version = 0
        self._mailbox: deque[_Command[object]] = deque()
        self._queued_events = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._expiries: list[tuple[int, int, str, str]] = []  # heap of (at, slot, debit, id)
        self._outbox_reserved = 0  # entries that queued commands may still add
        self.changelog = ChangeLog()
        self._frozen: dict[int, tuple[node_pb2.SlotMove, asyncio.Event]] = {}
        self._load_slot_table(join)
        self._load_expiries()
        self.relay = Relay(
            storage, self._route, self.submit_leg_results, relay_limits or RelayLimits(), peer_credentials
        )
        self.relay.load(storage.outbox_entries(actor.slot for actor in self.slots if actor.owned))
        self.moves = SlotMoves(self, peer_credentials)
        for record in self.moves.durable_records():
            if record.role == node_pb2.FROZEN:
                # Frozen before a restart: the move may have committed; only the controller knows.
                self.freeze(record.slot, record)
                self.seal(record.slot)

    # --- slot table ----------------------------------------------------------------------

    def _load_slot_table(self, join: bool) -> None:
        raw = self.storage.meta_get(_SLOTS_KEY)
        if raw is None:
            table = node_pb2.GetSlotsResponse(slots_total=self.slots_total, map_version=0)
            if not join:
                # A node started alone owns every slot at epoch 1. A node started to join a
                # cluster owns nothing until the controller assigns it slots.
                for slot in range(self.slots_total):
                    table.slots.add(slot=slot, epoch=1, owner=self.self_address, owned=True)
            self.storage.meta_put_now(_SLOTS_KEY, table.SerializeToString())
        else:
            table = node_pb2.GetSlotsResponse.FromString(raw)
        self.map_version = table.map_version
        for entry in table.slots:
            actor = self.slots[entry.slot]
            actor.epoch, actor.owner, actor.owned = entry.epoch, entry.owner, entry.owned
        for raw_delta in self.storage.meta_range(_SLOT_DELTA_PREFIX, _SLOT_DELTA_END):
            delta = node_pb2.GetSlotsResponse.FromString(raw_delta)
            self.map_version = max(self.map_version, delta.map_version)
            for entry in delta.slots:
                actor = self.slots[entry.slot]
                assert entry.epoch >= actor.epoch, (entry, actor.epoch)  # a delta is newer than the table
                actor.epoch, actor.owner, actor.owned = entry.epoch, entry.owner, entry.owned
        metrics.slots_owned.set(sum(1 for a in self.slots if a.owned))

    def slot_table(self, moves: bool = True) -> node_pb2.GetSlotsResponse:
        table = node_pb2.GetSlotsResponse(slots_total=self.slots_total, map_version=self.map_version)
        for a in self.slots:
            if a.epoch:
                table.slots.add(slot=a.slot, epoch=a.epoch, owner=a.owner, owned=a.owned)
        if moves:
            table.moves.extend(self.moves.report())
        return table

    def assign_slots(self, request: node_pb2.AssignSlotsRequest) -> str | None:
        """Apply new ownership; an error message (and no change) if any epoch regresses.

        Slots gained by a move were staged by it (IMPORTED): they are served from now on.
        Slots lost by a move (frozen here) are deleted in the same durable batch as the new
        table, and the writes held for them are answered WRONG_SLOT. A slot taken away
        without a move keeps its data."""
        if request.base_map_version and self.map_version < request.base_map_version:
            return (
                f"map_version: this node's table is at v{self.map_version}, older than the change's base"
                f" v{request.base_map_version}; send the whole table"
            )
        self_address = request.self_address or self.self_address
        if request.base_map_version and not request.slots and self_address == self.self_address:
            # A map change that moves no slot (a move recorded or forgotten): nothing to store.
            # The version is kept in memory only; after a restart the controller sends the table.
            self.map_version = max(self.map_version, request.map_version)
            return None
        gained: list[int] = []
        lost: list[int] = []
        for entry in request.slots:
            if entry.slot >= self.slots_total:
                return f"slots: slot {entry.slot} is not below slots_total {self.slots_total}"
            actor = self.slots[entry.slot]
            if entry.epoch < actor.epoch or (entry.epoch == actor.epoch and entry.owner != actor.owner):
                return (
                    f"slots: slot {entry.slot} is at epoch {actor.epoch} owned by {actor.owner!r};"
                    f" epoch {entry.epoch} owned by {entry.owner!r} would go backwards"
                )
            owned = entry.owner == self_address
            if owned and not actor.owned:
                staged = self.moves.imported(entry.slot)
                if staged is not None and staged.role != node_pb2.IMPORTED:
                    return f"slots: slot {entry.slot} is still being staged by migration {staged.migration_id!r}"
                gained.append(entry.slot)
            elif actor.owned and not owned:
                lost.append(entry.slot)
        self.self_address = self_address
        for entry in request.slots:
            actor = self.slots[entry.slot]
            actor.epoch, actor.owner = entry.epoch, entry.owner
            actor.owned = entry.owner == self.self_address
        self.map_version = max(self.map_version, request.map_version)
        for command in self._mailbox:
            if command.apply is sm.apply_transfer:  # queued as all-local under the old table
                command.apply = self._apply_transfer  # type: ignore[assignment]
        batch = WriteBatch(raw_mode=True)
        if request.base_map_version:
            for entry in request.slots:
                actor = self.slots[entry.slot]
                delta = node_pb2.GetSlotsResponse(map_version=self.map_version)
                delta.slots.add(slot=actor.slot, epoch=actor.epoch, owner=actor.owner, owned=actor.owned)
                batch.put(_SLOT_DELTA_PREFIX + str(entry.slot).encode(), delta.SerializeToString())
        else:
            batch.put(b"\xff\xff" + _SLOTS_KEY.encode(), self.slot_table(moves=False).SerializeToString())
            batch.delete_range(_SLOT_DELTA_PREFIX, _SLOT_DELTA_END)
        moved_in = [slot for slot in gained if self.moves.imported(slot) is not None]
        for slot in moved_in:
            self.moves.forget_import(slot, batch)
        moved_out = [slot for slot in lost if slot in self._frozen]
        for slot in moved_out:
            # A committed move: the target has the range (checked by digest) and serves it.
            batch.delete_range(*slot_range(slot))
            batch.delete(move_key(slot))
        if len(moved_out) != len(lost):
            # Not by a move (an operator's AssignSlots): keep the data, it may come back.
            log.warning("slots taken away without a move; their data is kept", extra={"slots": len(lost)})
        self.storage.write(batch)
        if moved_in or lost:
            self.storage.forget_accounts()
        for slot in lost:
            self.relay.forget_slot(slot)
            self.changelog.sealed.discard(slot)
            self.changelog.unfollow(slot)
            self._release_frozen(slot)
        if moved_in:
            self.relay.load(self.storage.outbox_entries(moved_in))
            for expiry in self.storage.pending_expiries(moved_in):
                heapq.heappush(self._expiries, expiry)
            metrics.pending_expiries.set(len(self._expiries))
            self._wake.set()
        if gained or lost:
            log.debug("slot table changed", extra={"gained": len(gained), "lost": len(lost), "moved_in": len(moved_in)})
        metrics.slots_owned.set(sum(1 for a in self.slots if a.owned))
        return None

    # --- frozen slots (node/slotmove.py) ---------------------------------------------------

    def freeze(self, slot: int, record: node_pb2.SlotMove) -> None:
        """Hold every new write to `slot` (the caller has recorded the freeze durably)."""
        actor = self.slots[slot]
        assert actor.owned and not actor.frozen, (slot, actor.owned, actor.frozen)
        actor.frozen = True
        self._frozen[slot] = (record, asyncio.Event())
        metrics.slots_frozen.set(len(self._frozen))

    def thaw(self, slot: int, migration_id: str) -> bool:
        """An aborted move: serve `slot` again. False if it is not frozen for that move."""
        frozen = self._frozen.get(slot)
        if frozen is None or frozen[0].migration_id != migration_id:
            return False
        self.storage.write(_delete(move_key(slot)))
        self._release_frozen(slot)
        return True

    def _release_frozen(self, slot: int) -> None:
        frozen = self._frozen.pop(slot, None)
        self.slots[slot].frozen = False
        if frozen is not None:
            frozen[1].set()
        metrics.slots_frozen.set(len(self._frozen))
        self._wake.set()  # expiries held for it

    def frozen_slots(self) -> int:
        """How many slots are frozen now (0 on the hot path: reads check it first)."""
        return len(self._frozen)

    def frozen_for(self, slot: int) -> str | None:
        """The migration id `slot` is frozen for, if it is."""
        frozen = self._frozen.get(slot)
        return None if frozen is None else frozen[0].migration_id

    def frozen_records(self) -> list[node_pb2.SlotMove]:
        return [record for record, _event in self._frozen.values()]

    async def wait_thawed(self, slots: set[int], timeout_s: float) -> None:
        """Wait (at most timeout_s) until none of `slots` is frozen."""
        events = [self._frozen[slot][1].wait() for slot in slots if slot in self._frozen]
        if events:
            started = time.perf_counter()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await asyncio.gather(*events)
            metrics.held_writes_s.observe(time.perf_counter() - started)

    async def barrier(self, meta_puts: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """Return once every command queued before this call is durable (or answered), and
        `meta_puts` too: written in the same group commit, so that concurrent callers share
        one fsync."""
        await self._submit(_nothing, [], bounded=False, meta_puts=meta_puts)

    def seal(self, slot: int) -> None:
        """The frozen slot's last batch is durable and followed: from now on no batch writes it
        (asserted by the change log), so transfers crediting it go through the outbox."""
        assert self.slots[slot].frozen, slot
        self.changelog.sealed.add(slot)
        for command in self._mailbox:
            if command.apply is sm.apply_transfer:  # queued as all-local before the seal
                command.apply = self._apply_transfer  # type: ignore[assignment]

    def _local(self, slot: int) -> bool:
        """Whether this node applies writes to `slot` in its own batches right now. A frozen
        slot still is until it is sealed: writes queued before its freeze, and the credit
        sides of transfers, go into its change log and travel with it."""
        return self.slots[slot].owned and slot not in self.changelog.sealed

    def redirect(self, slot: int) -> pb.SlotRedirect:
        actor = self.slots[slot]
        return pb.SlotRedirect(slot=slot, epoch=actor.epoch, owner=actor.owner)

    def _route(self, slot: int) -> tuple[int, str]:
        actor = self.slots[slot]
        return actor.epoch, actor.owner

    def serves(self, slot: int, epoch: int) -> bool:
        """Whether this node applies a request for `slot` routed at `epoch` (0: unfenced)."""
        actor = self.slots[slot]
        return actor.owned and (epoch == 0 or epoch == actor.epoch)

    # --- writes ---------------------------------------------------------------------------

    # Events reach the submit_* methods already through the state machine's stateless
    # validate_* checks (the service answers those itself); the committer applies the rest.

    def submit_transfers(self, events: Sequence[tuple[pb.Transfer, int, int]]) -> asyncio.Future[list[sm.Result]]:
        # Bound the outbox before queueing: count every event that may add an entry (a
        # credit account on another node, or a post/void naming none, whose pending's may
        # be). Where each event goes is decided again, for good, when it is applied.
        local, total = self._local, self.slots_total
        legs = 0
        pendings = False
        for transfer, _slot, _epoch in events:
            credit = transfer.credit_account_id
            if not credit or not local(account_slot(credit, total)):
                legs += 1
            pendings = pendings or bool(transfer.flags & sm.PENDING)
        if legs and len(self.relay) + self._outbox_reserved + legs > self.limits.outbox_entries_max:
            raise Overloaded(
                f"the outbox holds {len(self.relay)} credit legs for other nodes ({self._outbox_reserved} more"
                f" queued) and the limit is {self.limits.outbox_entries_max}; retry with backoff"
            )
        # A command with no event that can leave the node, and no pending (whose reservation
        # _apply_transfer journals when it spans two slots), skips the router (about 1 us an
        # event); assign_slots re-routes it if ownership changes while it is queued.
        apply = self._apply_transfer if legs or pendings else sm.apply_transfer
        return self._submit(apply, events, outbox_reserved=legs)

    def submit_accounts(self, events: Sequence[tuple[pb.Account, int, int]]) -> asyncio.Future[list[sm.Result]]:
        return self._submit(sm.apply_account, events)

    def submit_changes(self, events: Sequence[tuple[pb.AccountChange, int, int]]) -> asyncio.Future[list[sm.Result]]:
        return self._submit(sm.apply_change, events)

    def submit_credit_legs(
        self, events: Sequence[tuple[node_pb2.CreditLeg, int, int]]
    ) -> asyncio.Future[list[sm.Result]]:
        """Legs other nodes' relays sent (well formed, fenced at their credit slots)."""
        return self._submit(outbox.apply_credit_leg, events)

    def submit_leg_results(
        self, events: Sequence[tuple[outbox.LegResult, int, int]]
    ) -> asyncio.Future[list[sm.Result]] | None:
        """The relay's final leg results; None once the node is stopping (they are re-driven
        after the restart). Not held to the queue limit: the outbox bound holds them."""
        if self._stopping:
            return None
        if any(self.slots[slot].frozen for _event, slot, _epoch in events):
            return asyncio.ensure_future(self._leg_results_after_thaw(events))
        return self._submit(outbox.apply_leg_result, events, bounded=False)

    async def _leg_results_after_thaw(self, events: Sequence[tuple[outbox.LegResult, int, int]]) -> list[sm.Result]:
        """Results for a frozen debit slot wait for the move's end; if the slot moved, they
        are answered WRONG_SLOT and its new owner re-drives the entries."""
        slots = {slot for _event, slot, _epoch in events}
        while any(self.slots[slot].frozen for slot in slots) and not self._stopping:
            await self.wait_thawed(slots, 1.0)
        if self._stopping:
            return [sm.Result(pb.WRONG_SLOT)] * len(events)  # re-driven after the restart
        return await self._submit(outbox.apply_leg_result, events, bounded=False)

    def _submit(
        self,
        apply: ApplyFn[E],
        events: Sequence[tuple[E, int, int]],
        outbox_reserved: int = 0,
        bounded: bool = True,
        meta_puts: Sequence[tuple[bytes, bytes]] = (),
    ) -> asyncio.Future[list[sm.Result]]:
        if self._stopping:
            raise Overloaded("the node is shutting down")
        if bounded and self._queued_events + len(events) > self.limits.queue_events_max:
            raise Overloaded(
                f"{self._queued_events} events are queued for commit and the limit is"
                f" {self.limits.queue_events_max}; retry with backoff"
            )
        future: asyncio.Future[list[sm.Result]] = asyncio.get_running_loop().create_future()
        self._mailbox.append(_Command(apply, events, future, outbox_reserved, meta_puts))  # type: ignore[arg-type]
        self._outbox_reserved += outbox_reserved
        self._queued_events += len(events)
        metrics.queue_events.set(self._queued_events)
        self._wake.set()
        return future

    # --- the committer --------------------------------------------------------------------

    async def run(self) -> None:
        """Commit until stop() is called and the mailbox is drained; relay the outbox meanwhile."""
        async with asyncio.TaskGroup() as tasks:
            ticker = tasks.create_task(self._expiry_ticker())
            relay = tasks.create_task(self.relay.run())
            await self._commit_loop()
            ticker.cancel()
            relay.cancel()
        await self.moves.close()

    def stop(self) -> None:
        """Refuse new writes; run() returns once everything queued is committed."""
        self._stopping = True
        self.moves.stopping = True
        self._wake.set()
        for _record, thawed in self._frozen.values():
            thawed.set()  # held callers stop waiting (the slot stays frozen on disk)

    async def _expiry_ticker(self) -> None:
        while True:
            await asyncio.sleep(0.1)
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
                taken += len(command.events)
            if self._mailbox:
                self._wake.set()  # more than one cycle's worth is waiting
            overlay = Overlay(self.storage)
            outcomes = [self._apply(overlay, command) for command in commands]
            new_expiries = self._expire_due(overlay)
            meta_puts = [put for command in commands for put in command.meta_puts]
            if not overlay.empty() or meta_puts:
                changelog = self.changelog
                ops: list[Op] | None = [] if changelog.watching() else None
                batch, published = overlay.write_batch(self.clock.last, ops)
                if ops:
                    changelog.capture(ops, self.storage.raw_get)
                for key, value in meta_puts:
                    assert key.startswith(b"\xff\xff"), key  # node metadata only: no slot's keys
                    batch.put(key, value)
                started = time.perf_counter()
                self.storage.write(batch)
                metrics.fsync_latency_s.observe(time.perf_counter() - started)
                self.storage.publish_accounts(published)
                for expires_at, debit_id, transfer_id in overlay.expiry_set:
                    slot = account_slot(debit_id, self.slots_total)
                    heapq.heappush(self._expiries, (expires_at, slot, debit_id, transfer_id))
                if overlay.outbox or overlay.settled:
                    self.relay.committed(overlay.outbox, overlay.settled)
            self._queued_events -= taken
            self._outbox_reserved -= sum(command.outbox_reserved for command in commands)
            metrics.queue_events.set(self._queued_events)
            metrics.commit_events.observe(taken + new_expiries)
            metrics.pending_expiries.set(len(self._expiries))
            for command, results in zip(commands, outcomes, strict=True):
                if not command.future.done():  # the caller may have been cancelled
                    command.future.set_result(results)

    def _apply(self, overlay: Overlay, command: _Command[object]) -> list[sm.Result]:
        results: list[sm.Result] = []
        slots = self.slots
        apply = command.apply
        clock = self.clock
        for event, slot, epoch in command.events:
            actor = slots[slot]
            # Fenced again at apply time: ownership may have changed while it queued.
            if not actor.owned or (epoch and epoch != actor.epoch):
                results.append(sm.Result(pb.WRONG_SLOT))
                continue
            results.append(apply(overlay, event, clock.next()))
        return results

    def _apply_transfer(self, overlay: Overlay, t: pb.Transfer, timestamp: int) -> sm.Result:
        """Route a transfer by where its credit account lives now: here, in one batch by the
        state machine; elsewhere, through the outbox."""
        local, total = self._local, self.slots_total
        if not t.flags & _RESOLVES:
            credit_slot = account_slot(t.credit_account_id, total)
            if not local(credit_slot):
                return outbox.accept_transfer(overlay, t, timestamp)
            result = sm.apply_transfer(overlay, t, timestamp)
            if t.flags & sm.PENDING and result.code == pb.OK and credit_slot != account_slot(t.debit_account_id, total):
                outbox.journal_local_reserve(overlay, t, timestamp)
            return result
        pending = overlay.get_transfer(t.debit_account_id, t.pending_id)
        if pending is None or (
            local(account_slot(pending.credit_account_id, total)) and not outbox.crossing(overlay, pending)
        ):
            return sm.apply_transfer(overlay, t, timestamp)
        return outbox.resolve_pending(overlay, t, timestamp)

    def _expire_due(self, overlay: Overlay) -> int:
        expired = 0
        now = time.time_ns()
        heap = self._expiries
        slots, total, local = self.slots, self.slots_total, self._local
        held: list[tuple[int, int, str, str]] = []
        while heap and heap[0][0] <= now and expired < self.limits.expiries_per_commit_max:
            due = heapq.heappop(heap)
            _at, slot, debit_id, transfer_id = due
            if not slots[slot].owned:
                continue
            if slots[slot].frozen:
                held.append(due)  # expires after the move: here if it aborts, else on the target
                continue
            pending = overlay.get_transfer(debit_id, transfer_id)
            if pending is None:
                continue
            if local(account_slot(pending.credit_account_id, total)) and not outbox.crossing(overlay, pending):
                done = sm.expire_pending(overlay, pending, self.clock.next())
            else:
                done = outbox.expire_pending(overlay, pending, self.clock.next())
            expired += done
        for due in held:
            heapq.heappush(heap, due)
        return expired

    def _load_expiries(self) -> None:
        owned = (actor.slot for actor in self.slots if actor.owned)
        self._expiries.extend(self.storage.pending_expiries(owned))
        heapq.heapify(self._expiries)
        metrics.pending_expiries.set(len(self._expiries))


def _nothing(overlay: Overlay, event: object, timestamp: int) -> sm.Result:
    raise AssertionError("a barrier has no events")


def _delete(key: bytes) -> WriteBatch:
    batch = WriteBatch(raw_mode=True)
    batch.delete(key)
    return batch
