"""A node's slots: each slot's lifecycle state, owner and epoch, the legal transitions, and the durable slot table.

This module is the one place a slot's state lives (h11's rule: everything that affects the
state machine is here). Every change of state goes through `Slot.to`, which checks the
transition against TRANSITIONS and asserts: an illegal one is our bug. What a peer asks
for (a slot table, a move step) is checked by the caller first and refused with a typed
error; it never reaches an assert.

States
  ABSENT     Not this node's. The table still records who owns it, at which epoch (for
             WRONG_SLOT redirects and the outbox relay).
  IMPORTING  A move's target is staging the slot's range (node/slotmove.py). Not served.
  IMPORTED   The whole range is staged, durable and checked by digest. Served once a slot
             table names this node its owner (the move's commit).
  SERVING    This node's: reads and writes are served, and applied in this node's batches.
  FROZEN     This node's, its writes held for a move's cutover (the FROZEN record is
             durable). Writes queued before the freeze still commit here, into the change log.
  SEALED     Frozen, and everything queued before the freeze is durable: no batch writes the
             slot any more (asserted at every commit), and a transfer crediting it goes
             through the outbox, whose leg follows the slot to its owner.

Transitions (from -> to: what does it)
  ABSENT    -> SERVING    assigned: a slot table names this node without a move (a new
                          cluster's seed, a standalone node)
  ABSENT    -> IMPORTING  PrepareImport
  IMPORTING -> IMPORTING  PrepareImport of a newer migration (the older one was superseded)
  IMPORTED  -> IMPORTING  likewise
  IMPORTING -> IMPORTED   the move's last chunk matched, and the staging is durable
  IMPORTING -> ABSENT     AbortMove
  IMPORTED  -> ABSENT     AbortMove
  IMPORTED  -> SERVING    the move committed: the table names this node
  SERVING   -> FROZEN     FreezeSlot
  FROZEN    -> SEALED     the freeze's barrier passed
  FROZEN    -> SERVING    AbortMove (thaw)
  SEALED    -> SERVING    AbortMove (thaw)
  SEALED    -> ABSENT     the move committed: the table names the target
  FROZEN    -> ABSENT     taken away by a table while freezing (an operator's AssignSlots)
  SERVING   -> ABSENT     taken away by a table without a move (the data is kept)
  After a restart a slot starts ABSENT and takes the transitions its durable records say:
  a FROZEN record -> SERVING, FROZEN, SEALED (the move may have committed: only the
  controller knows, so it stays sealed until told); IMPORTING and IMPORTED records ->
  IMPORTING (and IMPORTED).

Fencing: a request routed at epoch e for slot s is served only while s is owned here
(SERVING, FROZEN or SEALED) at epoch e (0: unfenced). Requests for a frozen slot are held
by the services until the move ends, then served or answered WRONG_SLOT.

The durable table: the whole table under FF FF slots (node/keys.py), and one newer entry per
slot changed since, under FF FF slot:<slot> (a committed move's delta).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from rocksdict import WriteBatch

from node import keys, metrics
from node.storage import Storage
from proto import ledger_pb2 as pb, node_pb2
from router.slots import SLOTS_TOTAL_MAX

log = logging.getLogger("yunkai.node.slots")


class State(enum.Enum):
    ABSENT = "absent"
    IMPORTING = "importing"
    IMPORTED = "imported"
    SERVING = "serving"
    FROZEN = "frozen"
    SEALED = "sealed"


ABSENT, IMPORTING, IMPORTED, SERVING, FROZEN, SEALED = State

TRANSITIONS: dict[tuple[State, State], str] = {
    (ABSENT, SERVING): "assigned",
    (ABSENT, IMPORTING): "import prepared",
    (IMPORTING, IMPORTING): "import superseded",
    (IMPORTED, IMPORTING): "import superseded",
    (IMPORTING, IMPORTED): "import staged",
    (IMPORTING, ABSENT): "import aborted",
    (IMPORTED, ABSENT): "import aborted",
    (IMPORTED, SERVING): "move committed here",
    (SERVING, FROZEN): "frozen",
    (FROZEN, SEALED): "sealed",
    (FROZEN, SERVING): "thawed",
    (SEALED, SERVING): "thawed",
    (SEALED, ABSENT): "move committed away",
    (FROZEN, ABSENT): "taken away while frozen",
    (SERVING, ABSENT): "taken away",
}

OWNED = frozenset((SERVING, FROZEN, SEALED))
HELD = frozenset((FROZEN, SEALED))
STAGED = frozenset((IMPORTING, IMPORTED))


class Slot:
    """One slot as this node knows it. Its state changes only through `to`, which also keeps
    the booleans the hot paths read (plain attributes: an enum's hash is a Python call)."""

    __slots__ = ("_thawed", "epoch", "frozen", "local", "move", "number", "owned", "owner", "state")

    def __init__(self, number: int) -> None:
        self.number = number
        self.state = ABSENT
        self.owned = False  # SERVING, FROZEN or SEALED
        self.frozen = False  # FROZEN or SEALED: its writes are held
        self.local = False  # SERVING or FROZEN: this node applies writes to it in its own batches
        self.epoch = 0  # the epoch of the slot table's entry (0: none yet)
        self.owner = ""  # the owner's address by the table
        # The move this slot takes part in: the FROZEN record (FROZEN, SEALED), or the
        # staging record (IMPORTING, IMPORTED), whose last_seq and digest grow as it stages.
        self.move: node_pb2.SlotMove | None = None
        self._thawed: asyncio.Event | None = None  # set when a FROZEN or SEALED slot stops being so

    def to(self, state: State) -> None:
        assert (self.state, state) in TRANSITIONS, f"slot {self.number}: {self.state.value} -> {state.value}"
        if self.state in HELD and state not in HELD:
            assert self._thawed is not None
            self._thawed.set()
            self._thawed = None
        elif state in HELD and self.state not in HELD:
            self._thawed = asyncio.Event()
        if state not in HELD and state not in STAGED:
            self.move = None
        self.state = state
        self.owned = state in OWNED
        self.frozen = state in HELD
        self.local = state is SERVING or state is FROZEN

    def thawed(self) -> asyncio.Event | None:
        """An event set when this frozen slot stops being frozen; None if it is not frozen."""
        return self._thawed


@dataclass
class Assignment:
    """What a new slot table changes on this node."""

    gained: list[int] = field(default_factory=list)  # now owned, not before
    lost: list[int] = field(default_factory=list)  # owned before, not now
    moved_in: list[int] = field(default_factory=list)  # gained by a committed move (were IMPORTED)
    moved_out: list[int] = field(default_factory=list)  # lost by a committed move (were frozen)


class SlotTable:
    """Every slot of the node, with the table's version and this node's address."""

    def __init__(self, slots_total: int, self_address: str) -> None:
        assert 0 < slots_total <= SLOTS_TOTAL_MAX, slots_total
        self.slots_total = slots_total
        self.self_address = self_address
        self.map_version = 0
        self._slots = [Slot(number) for number in range(slots_total)]
        self._held = 0  # FROZEN or SEALED slots: 0 on the hot path
        self._sealed = 0

    def __getitem__(self, slot: int) -> Slot:
        return self._slots[slot]

    def __iter__(self) -> Iterator[Slot]:
        return iter(self._slots)

    # --- loading ------------------------------------------------------------------------

    @classmethod
    def load(cls, storage: Storage, self_address: str, join: bool) -> SlotTable:
        """The table as durably recorded; a new data directory owns every slot at epoch 1,
        unless it joins a cluster (then nothing, until the controller assigns it slots)."""
        table = cls(storage.slots_total, self_address)
        raw = storage.get(keys.SLOT_TABLE)
        if raw is None:
            whole = node_pb2.GetSlotsResponse(slots_total=table.slots_total, map_version=0)
            if not join:
                for slot in range(table.slots_total):
                    whole.slots.add(slot=slot, epoch=1, owner=self_address, owned=True)
            storage.put_now(keys.SLOT_TABLE, whole.SerializeToString())
        else:
            whole = node_pb2.GetSlotsResponse.FromString(raw)
        table.map_version = whole.map_version
        entries = {entry.slot: entry for entry in whole.slots}
        for _key, raw_delta in storage.items(keys.SLOT_DELTA_BEGIN, keys.SLOT_DELTA_END):
            delta = node_pb2.GetSlotsResponse.FromString(raw_delta)
            table.map_version = max(table.map_version, delta.map_version)
            for entry in delta.slots:
                older = entries.get(entry.slot)
                assert older is None or entry.epoch >= older.epoch, (entry, older)  # a delta is newer
                entries[entry.slot] = entry
        for entry in entries.values():
            known = table._slots[entry.slot]
            known.epoch, known.owner = entry.epoch, entry.owner
            if entry.owned:
                known.to(SERVING)
        for _key, raw_record in storage.items(keys.MOVE_BEGIN, keys.MOVE_END):
            table._restore_move(node_pb2.SlotMove.FromString(raw_record))
        metrics.slots_owned.set(table.owned_count())
        return table

    def _restore_move(self, record: node_pb2.SlotMove) -> None:
        slot = self._slots[record.slot]
        if record.role == node_pb2.FROZEN:
            # Frozen before the restart: the move may have committed; only the controller knows.
            self.freeze(record.slot, record)
            self.seal(record.slot)
        elif record.role in (node_pb2.IMPORTING, node_pb2.IMPORTED):
            slot.to(IMPORTING)
            slot.move = record
            if record.role == node_pb2.IMPORTED:
                slot.to(IMPORTED)
        else:
            log.error("unknown slot move record ignored", extra={"slot": record.slot, "role": record.role})

    # --- fencing and routing -------------------------------------------------------------

    def serves(self, slot: int, epoch: int) -> bool:
        """Whether this node answers a request for `slot` routed at `epoch` (0: unfenced)."""
        entry = self._slots[slot]
        return entry.owned and (epoch == 0 or epoch == entry.epoch)

    def readable(self, slot: int, epoch: int) -> bool:
        """Whether this node answers a read of `slot` routed at `epoch` now: served and not frozen."""
        entry = self._slots[slot]
        return entry.owned and not entry.frozen and (epoch == 0 or epoch == entry.epoch)

    def local(self, slot: int) -> bool:
        """Whether this node applies writes to `slot` in its own batches right now."""
        return self._slots[slot].local

    def same_batch(self, a: int, b: int) -> bool:
        """Whether one event may write slots `a` and `b` in one batch of this node: both are
        written here now (node/replication.py adds: with the same followers)."""
        if a == b:
            return self._slots[a].local
        slots = self._slots
        return slots[a].local and slots[b].local

    def redirect(self, slot: int) -> pb.SlotRedirect:
        entry = self._slots[slot]
        return pb.SlotRedirect(slot=slot, epoch=entry.epoch, owner=entry.owner)

    def route(self, slot: int) -> tuple[int, str]:
        """(epoch, owner) of a slot by this node's table: where its writes go."""
        entry = self._slots[slot]
        return entry.epoch, entry.owner

    def owned(self) -> list[int]:
        return [slot.number for slot in self._slots if slot.owned]

    def owned_count(self) -> int:
        return sum(1 for slot in self._slots if slot.owned)

    def held_count(self) -> int:
        """How many slots are frozen or sealed now (0 on the hot path: callers check it first)."""
        return self._held

    def sealed_count(self) -> int:
        return self._sealed

    def sealed(self, slot: int) -> bool:
        return self._slots[slot].state is SEALED

    # --- moves: the source -----------------------------------------------------------------

    def freeze(self, slot: int, record: node_pb2.SlotMove) -> None:
        """Hold every new write to `slot` (the caller records the freeze durably)."""
        entry = self._slots[slot]
        entry.to(FROZEN)
        entry.move = record
        self._held += 1
        metrics.slots_frozen.set(self._held)

    def seal(self, slot: int) -> None:
        """The frozen slot's last batch is durable and followed: no batch writes it any more."""
        self._slots[slot].to(SEALED)
        self._sealed += 1

    def frozen_for(self, slot: int) -> str | None:
        """The migration id `slot` is frozen for, if it is."""
        entry = self._slots[slot]
        return entry.move.migration_id if entry.frozen and entry.move is not None else None

    def thaw(self, slot: int) -> None:
        """An aborted move: serve `slot` again."""
        self._unhold(self._slots[slot], SERVING)

    def _unhold(self, entry: Slot, state: State) -> None:
        if entry.state is SEALED:
            self._sealed -= 1
        entry.to(state)
        self._held -= 1
        metrics.slots_frozen.set(self._held)

    async def wait_thawed(self, slots: set[int], timeout_s: float) -> None:
        """Wait (at most timeout_s) until none of `slots` is frozen."""
        events = [event.wait() for slot in slots if (event := self._slots[slot].thawed()) is not None]
        if events:
            started = time.perf_counter()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await asyncio.gather(*events)
            metrics.held_writes_s.observe(time.perf_counter() - started)

    def release_all(self) -> None:
        """The node is stopping: wake everything waiting for a thaw (the slots stay frozen on disk)."""
        for entry in self._slots:
            event = entry.thawed()
            if event is not None:
                event.set()

    # --- moves: the target -----------------------------------------------------------------

    def stage(self, record: node_pb2.SlotMove) -> None:
        """PrepareImport: stage the slot for `record`'s migration (the caller checked it is not owned)."""
        entry = self._slots[record.slot]
        entry.to(IMPORTING)
        entry.move = record

    def staged(self, slot: int) -> node_pb2.SlotMove | None:
        """The staging record of an IMPORTING or IMPORTED slot."""
        entry = self._slots[slot]
        return entry.move if entry.state in STAGED else None

    def mark_imported(self, slot: int) -> None:
        entry = self._slots[slot]
        entry.to(IMPORTED)
        assert entry.move is not None
        entry.move.role = node_pb2.IMPORTED

    def drop_staging(self, slot: int) -> None:
        self._slots[slot].to(ABSENT)

    def move_records(self) -> list[node_pb2.SlotMove]:
        """The records of every frozen or staged slot (the controller reconciles them)."""
        return [entry.move for entry in self._slots if entry.move is not None]

    # --- the table ------------------------------------------------------------------------

    def to_proto(self) -> node_pb2.GetSlotsResponse:
        table = node_pb2.GetSlotsResponse(slots_total=self.slots_total, map_version=self.map_version)
        for entry in self._slots:
            if entry.epoch:
                table.slots.add(slot=entry.number, epoch=entry.epoch, owner=entry.owner, owned=entry.owned)
        return table

    def check(self, request: node_pb2.AssignSlotsRequest) -> str | None:
        """Why a new table cannot be applied (a message for the controller), or None. Nothing changes."""
        if request.base_map_version and self.map_version < request.base_map_version:
            return (
                f"map_version: this node's table is at v{self.map_version}, older than the change's base"
                f" v{request.base_map_version}; send the whole table"
            )
        self_address = request.self_address or self.self_address
        for entry in request.slots:
            if entry.slot >= self.slots_total:
                return f"slots: slot {entry.slot} is not below slots_total {self.slots_total}"
            current = self._slots[entry.slot]
            if entry.epoch < current.epoch or (entry.epoch == current.epoch and entry.owner != current.owner):
                return (
                    f"slots: slot {entry.slot} is at epoch {current.epoch} owned by {current.owner!r};"
                    f" epoch {entry.epoch} owned by {entry.owner!r} would go backwards"
                )
            if entry.owner == self_address and current.state is IMPORTING:
                assert current.move is not None
                return f"slots: slot {entry.slot} is still being staged by migration {current.move.migration_id!r}"
        return None

    def assign(self, request: node_pb2.AssignSlotsRequest, batch: WriteBatch) -> Assignment:
        """Apply a table that passed `check`, and add its durable part to `batch`: the table (or
        its delta), the records of finished moves, and the ranges of slots moved away."""
        assert self.check(request) is None
        self.self_address = request.self_address or self.self_address
        self.map_version = max(self.map_version, request.map_version)
        done = Assignment()
        for entry in request.slots:
            slot = self._slots[entry.slot]
            slot.epoch, slot.owner = entry.epoch, entry.owner
            owned = entry.owner == self.self_address
            if owned and not slot.owned:
                done.gained.append(slot.number)
                if slot.state is IMPORTED:
                    done.moved_in.append(slot.number)
                    batch.delete(keys.move_key(slot.number))
                    slot.to(SERVING)
                else:
                    if slot.state is not ABSENT:  # ABSENT or IMPORTED only: check() refused IMPORTING
                        raise AssertionError(slot.state)
                    slot.to(SERVING)
            elif slot.owned and not owned:
                done.lost.append(slot.number)
                if slot.frozen:
                    # A committed move: the target has the range (checked by digest) and serves it.
                    done.moved_out.append(slot.number)
                    batch.delete_range(*keys.slot_range(slot.number))
                    batch.delete(keys.move_key(slot.number))
                    self._unhold(slot, ABSENT)
                else:
                    slot.to(ABSENT)
        if request.base_map_version:
            for entry in request.slots:
                slot = self._slots[entry.slot]
                delta = node_pb2.GetSlotsResponse(map_version=self.map_version)
                delta.slots.add(slot=slot.number, epoch=slot.epoch, owner=slot.owner, owned=slot.owned)
                batch.put(keys.slot_delta_key(slot.number), delta.SerializeToString())
        else:
            batch.put(keys.SLOT_TABLE, self.to_proto().SerializeToString())
            batch.delete_range(keys.SLOT_DELTA_BEGIN, keys.SLOT_DELTA_END)
        if len(done.moved_out) != len(done.lost):
            # Not by a move (an operator's AssignSlots): keep the data, it may come back.
            log.warning("slots taken away without a move; their data is kept", extra={"slots": len(done.lost)})
        metrics.slots_owned.set(self.owned_count())
        return done
