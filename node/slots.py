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
  FOLLOWING  A follower of the slot's primary (node/replication.py): its range takes only the
             primary's replicated batches, in order. Not served.

A slot this node serves as primary (SERVING, FROZEN, SEALED) may have followers, from the
table: its writes are then replicated before they are answered, and it is served only while
its lease holds (every follower acknowledged within the lease) and, just after a promotion,
once the old primary's lease has surely lapsed (`serve_after`).

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
  SERVING   -> ABSENT     taken away by a table without a move (failed over: its data is
                          dropped when the table says so, else kept)
  SEALED    -> SERVING    also: a move committed that keeps this node primary (a follower
                          was added or replaced)
  ABSENT    -> FOLLOWING  assigned as a follower of a slot that is empty everywhere (a new
                          cluster's seed)
  IMPORTED  -> FOLLOWING  a move committed that makes this node a follower (repair)
  FOLLOWING -> SERVING    promoted: the table names this follower the primary (failover)
  FOLLOWING -> ABSENT     released from the configuration (its range is dropped)
  After a restart a slot starts ABSENT and takes the transitions its durable records say:
  a FROZEN record -> SERVING, FROZEN, SEALED (the move may have committed: only the
  controller knows, so it stays sealed until told); IMPORTING and IMPORTED records ->
  IMPORTING (and IMPORTED).

Fencing: a request routed at epoch e for slot s is served only while s is owned here
(SERVING, FROZEN or SEALED) at epoch e (0: unfenced). Requests for a frozen slot are held
by the services until the move ends, then served or answered WRONG_SLOT.

The durable table: the whole table under FF FF slots (node/keys.py), and one newer entry per
slot changed since, under FF FF slot:<slot> (a committed move's delta).

Who the primaries are on the wire: the table also keeps each node's certificate identity by
address (AssignSlotsRequest.spiffe_ids, from the shard map, stored under FF FF spiffe_ids),
and this node's own. `primary_spiffe_id` says which identity may send credit legs of a
slot's debit accounts (node/node_service.py checks each leg's sender against it).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from rocksdict import WriteBatch

from node import keys, metrics
from node.storage import Storage
from proto import ledger_pb2 as pb, node_pb2
from router.slots import SLOTS_TOTAL_MAX
from serving import tls

log = logging.getLogger("yunkai.node.slots")


class State(enum.Enum):
    ABSENT = "absent"
    IMPORTING = "importing"
    IMPORTED = "imported"
    SERVING = "serving"
    FROZEN = "frozen"
    SEALED = "sealed"
    FOLLOWING = "following"


ABSENT, IMPORTING, IMPORTED, SERVING, FROZEN, SEALED, FOLLOWING = State

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
    (ABSENT, FOLLOWING): "assigned as a follower",
    (IMPORTED, FOLLOWING): "joined as a follower",
    (FOLLOWING, SERVING): "promoted",
    (FOLLOWING, ABSENT): "released",
}

OWNED = frozenset((SERVING, FROZEN, SEALED))
HELD = frozenset((FROZEN, SEALED))
STAGED = frozenset((IMPORTING, IMPORTED))


class Slot:
    """One slot as this node knows it. Its state changes only through `to`, which also keeps
    the booleans the hot paths read (plain attributes: an enum's hash is a Python call)."""

    __slots__ = (
        "_thawed",
        "epoch",
        "followers",
        "following",
        "frozen",
        "local",
        "move",
        "number",
        "owned",
        "owner",
        "seq",
        "seq_epoch",
        "serve_after",
        "state",
    )

    def __init__(self, number: int) -> None:
        self.number = number
        self.state = ABSENT
        self.owned = False  # SERVING, FROZEN or SEALED
        self.frozen = False  # FROZEN or SEALED: its writes are held
        self.local = False  # SERVING or FROZEN: this node applies writes to it in its own batches
        self.following = False  # FOLLOWING
        self.epoch = 0  # the epoch of the slot table's entry (0: none yet)
        self.owner = ""  # the owner's (the primary's) address by the table
        self.followers: tuple[str, ...] = ()  # the configuration's followers by the table
        self.seq_epoch = 0  # how far this node's copy is: the last replicated batch's epoch
        self.seq = 0  # and sequence (node/replication.py)
        self.serve_after = 0.0  # monotonic time a promoted slot may be served from (0: now)
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
        self.following = state is FOLLOWING

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
    promoted: list[tuple[int, str]] = field(default_factory=list)  # (slot, old primary): followers made primary
    kept: list[int] = field(default_factory=list)  # sealed slots whose move committed with this node still primary
    released: list[int] = field(default_factory=list)  # followed before, not now


class SlotTable:
    """Every slot of the node, with the table's version and this node's address."""

    def __init__(self, slots_total: int, self_address: str, spiffe_id: str = "") -> None:
        assert 0 < slots_total <= SLOTS_TOTAL_MAX, slots_total
        self.slots_total = slots_total
        self.self_address = self_address
        self.spiffe_id = spiffe_id  # this node's certificate identity ("" under --insecure)
        self.spiffe_ids: dict[str, str] = {}  # every node's, by address, as the controller last said
        self.map_version = 0
        self._slots = [Slot(number) for number in range(slots_total)]
        self._held = 0  # FROZEN or SEALED slots: 0 on the hot path
        self._sealed = 0
        self._follower_nodes: frozenset[str] = frozenset()  # followers of the slots this node leads
        # Whether a slot's followers have acknowledged within the lease (node/replication.py
        # sets it; without replication every lease holds).
        self.lease_ok: Callable[[int, tuple[str, ...]], bool] = _always
        # When a slot promoted here from an old primary may be served (node/replication.py).
        self.promotion_wait_until: Callable[[str], float] = _now

    def __getitem__(self, slot: int) -> Slot:
        return self._slots[slot]

    def __iter__(self) -> Iterator[Slot]:
        return iter(self._slots)

    def entries(self) -> Sequence[Slot]:
        """Every slot, indexed by number (for loops over many slots: no call per slot)."""
        return self._slots

    # --- loading ------------------------------------------------------------------------

    @classmethod
    def load(cls, storage: Storage, self_address: str, join: bool, spiffe_id: str = "") -> SlotTable:
        """The table as durably recorded; a new data directory owns every slot at epoch 1,
        unless it joins a cluster (then nothing, until the controller assigns it slots)."""
        table = cls(storage.slots_total, self_address, spiffe_id)
        raw_ids = storage.get(keys.SPIFFE_IDS)
        if raw_ids is not None:
            table.spiffe_ids = dict(node_pb2.NodeSpiffeIds.FromString(raw_ids).by_address)
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
            known.epoch, known.owner, known.followers = entry.epoch, entry.owner, tuple(entry.followers)
            if entry.owned:
                # With followers, it serves again only once they acknowledge it (its lease): a
                # follower promoted while it was down refuses it.
                known.to(SERVING)
            elif entry.following:
                known.to(FOLLOWING)
        table._recount()
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
        """Whether this node answers a request for `slot` routed at `epoch` (0: unfenced): it
        is the primary at that epoch, holding its lease (with followers), not waiting out a
        promotion."""
        entry = self._slots[slot]
        if not entry.owned or (epoch and epoch != entry.epoch):
            return False
        if entry.serve_after:
            if time.monotonic() < entry.serve_after:
                return False  # the old primary's lease may not have lapsed yet
            entry.serve_after = 0.0
        return not entry.followers or self.lease_ok(slot, entry.followers)

    def readable(self, slot: int, epoch: int) -> bool:
        """Whether this node answers a read of `slot` routed at `epoch` now: served and not frozen."""
        entry = self._slots[slot]
        return self.serves(slot, epoch) and not entry.frozen

    def local(self, slot: int) -> bool:
        """Whether this node applies writes to `slot` in its own batches right now."""
        return self._slots[slot].local

    def same_batch(self, a: int, b: int) -> bool:
        """Whether one event may write slots `a` and `b` in one batch of this node: both are
        written here now, and neither has followers. Two replicated slots never share an event,
        even with the same followers: their configurations change apart (the controller fails
        one over and keeps the other: a silent follower, a plan cut short by `_still`), and the
        event would then keep one half and lose the other (tests/test_replication.py). Between
        them it goes through the outbox (node/outbox.py), which holds across any two
        configurations."""
        slots = self._slots
        if a == b:
            return slots[a].local
        return slots[a].local and slots[b].local and not slots[a].followers and not slots[b].followers

    def follower_nodes(self) -> frozenset[str]:
        """The nodes that follow some slot this node is primary of."""
        return self._follower_nodes

    def _recount(self) -> None:
        self._follower_nodes = frozenset(f for slot in self._slots if slot.owned for f in slot.followers)

    def redirect(self, slot: int) -> pb.SlotRedirect:
        entry = self._slots[slot]
        return pb.SlotRedirect(slot=slot, epoch=entry.epoch, owner=entry.owner)

    def primary_spiffe_id(self, slot: int) -> str | None:
        """The certificate identity of the slot's primary by this table (None if unknown)."""
        owner = self._slots[slot].owner
        if owner and owner == self.self_address:
            return self.spiffe_id or None
        return self.spiffe_ids.get(owner)

    def spiffe_ids_change(self, request: node_pb2.AssignSlotsRequest) -> bool:
        """Whether `request` names the nodes' identities otherwise than this table has them."""
        return bool(request.spiffe_ids) and dict(request.spiffe_ids) != self.spiffe_ids

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

    def to_proto(self, summary: bool = False) -> node_pb2.GetSlotsResponse:
        """The table; with `summary`, only its version and counts (no per-slot list)."""
        table = node_pb2.GetSlotsResponse(
            slots_total=self.slots_total,
            map_version=self.map_version,
            owned_count=self.owned_count(),
            following_count=sum(1 for slot in self._slots if slot.following),
        )
        if summary:
            return table
        for entry in self._slots:
            if entry.epoch:
                table.slots.add(
                    slot=entry.number,
                    epoch=entry.epoch,
                    owner=entry.owner,
                    owned=entry.owned,
                    followers=entry.followers,
                    following=entry.following,
                    seq_epoch=entry.seq_epoch,
                    seq=entry.seq,
                )
        return table

    def learn_spiffe_ids(self, request: node_pb2.AssignSlotsRequest, batch: WriteBatch) -> None:
        """Take the identities `request` names (if it names any), durably with `batch`."""
        if self.spiffe_ids_change(request):
            self.spiffe_ids = dict(request.spiffe_ids)
            batch.put(keys.SPIFFE_IDS, node_pb2.NodeSpiffeIds(by_address=self.spiffe_ids).SerializeToString())

    def check(self, request: node_pb2.AssignSlotsRequest) -> str | None:
        """Why a new table cannot be applied (a message for the controller), or None. Nothing changes."""
        if request.base_map_version and self.map_version < request.base_map_version:
            return (
                f"map_version: this node's table is at v{self.map_version}, older than the change's base"
                f" v{request.base_map_version}; send the whole table"
            )
        self_address = request.self_address or self.self_address
        for address, uri in request.spiffe_ids.items():
            named = tls.Identity.parse(uri)
            if not address or named is None or named.role != "node":
                return f"spiffe_ids: {address[:100]!r} -> {uri[:100]!r} is not a node's identity"
        if len({entry.slot for entry in request.slots}) != len(request.slots):
            return "slots: a slot named twice"
        # A replicated cluster: a slot that had a configuration is only ever led with its data.
        replicated = request.drop_released or any(entry.followers for entry in request.slots)
        for entry in request.slots:
            if entry.slot >= self.slots_total:
                return f"slots: slot {entry.slot} is not below slots_total {self.slots_total}"
            current = self._slots[entry.slot]
            if entry.epoch < current.epoch or (entry.epoch == current.epoch and entry.owner != current.owner):
                return (
                    f"slots: slot {entry.slot} is at epoch {current.epoch} owned by {current.owner!r};"
                    f" epoch {entry.epoch} owned by {entry.owner!r} would go backwards"
                )
            leads = entry.owner == self_address
            follows = self_address in entry.followers
            if (leads and follows) or len(set(entry.followers)) != len(entry.followers):
                return f"slots: slot {entry.slot}: a node twice in one configuration"
            if (leads or follows) and current.state is IMPORTING:
                assert current.move is not None
                return f"slots: slot {entry.slot} is still being staged by migration {current.move.migration_id!r}"
            if follows and current.owned:
                return f"slots: slot {entry.slot}: this node is its primary and cannot become a follower in place"
            if follows and not current.following and current.state is not IMPORTED and current.epoch:
                return (
                    f"slots: slot {entry.slot}: this node may follow it only with a copy (a move), or from a new"
                    " cluster's seed"
                )
            if leads and not current.owned and current.state is ABSENT and current.epoch and replicated:
                return f"slots: slot {entry.slot}: this node may lead it only with a copy (a move) or as its follower"
        return None

    def assign(self, request: node_pb2.AssignSlotsRequest, batch: WriteBatch) -> Assignment:
        """Apply a table that passed `check`, and add its durable part to `batch`: the table (or
        its delta), the records of finished moves, and the ranges of slots moved away or (with
        `drop_released`) released."""
        assert self.check(request) is None
        self.self_address = request.self_address or self.self_address
        self.learn_spiffe_ids(request, batch)
        self.map_version = max(self.map_version, request.map_version)
        done = Assignment()
        for entry in request.slots:
            slot = self._slots[entry.slot]
            old_owner, old_epoch = slot.owner, slot.epoch
            slot.epoch, slot.owner, slot.followers = entry.epoch, entry.owner, tuple(entry.followers)
            leads = entry.owner == self.self_address
            follows = self.self_address in slot.followers
            if leads and not slot.owned:
                done.gained.append(slot.number)
                if slot.state is IMPORTED:
                    done.moved_in.append(slot.number)
                    batch.delete(keys.move_key(slot.number))
                elif slot.state is FOLLOWING:
                    done.promoted.append((slot.number, old_owner))
                    slot.serve_after = self.promotion_wait_until(old_owner)
                else:
                    assert slot.state is ABSENT, slot.state  # check() refused the rest
                slot.to(SERVING)
            elif follows and not slot.following:
                if slot.state is IMPORTED:
                    done.moved_in.append(slot.number)
                    batch.delete(keys.move_key(slot.number))
                else:
                    assert slot.state is ABSENT, slot.state  # check() refused the rest
                slot.to(FOLLOWING)
            elif slot.owned and not leads:
                done.lost.append(slot.number)
                if slot.frozen:
                    # A committed move: the target has the range (checked by digest) and serves it.
                    done.moved_out.append(slot.number)
                    batch.delete_range(*keys.slot_range(slot.number))
                    batch.delete(keys.move_key(slot.number))
                    self._unhold(slot, ABSENT)
                else:
                    if request.drop_released:
                        batch.delete_range(*keys.slot_range(slot.number))
                    slot.to(ABSENT)
            elif slot.following and not follows:
                done.released.append(slot.number)
                if request.drop_released:
                    batch.delete_range(*keys.slot_range(slot.number))
                slot.to(ABSENT)
            elif leads and slot.frozen and entry.epoch > old_epoch:
                # A move committed that keeps this node primary (it added or replaced a follower).
                done.kept.append(slot.number)
                batch.delete(keys.move_key(slot.number))
                self._unhold(slot, SERVING)
        if request.base_map_version:
            for entry in request.slots:
                slot = self._slots[entry.slot]
                delta = node_pb2.GetSlotsResponse(map_version=self.map_version)
                delta.slots.add(
                    slot=slot.number,
                    epoch=slot.epoch,
                    owner=slot.owner,
                    owned=slot.owned,
                    followers=slot.followers,
                    following=slot.following,
                )
                batch.put(keys.slot_delta_key(slot.number), delta.SerializeToString())
        else:
            batch.put(keys.SLOT_TABLE, self.to_proto().SerializeToString())
            batch.delete_range(keys.SLOT_DELTA_BEGIN, keys.SLOT_DELTA_END)
        if len(done.moved_out) != len(done.lost) and not request.drop_released:
            # Not by a move, in a cluster without replicas (an operator's AssignSlots): keep the
            # data, it may come back.
            log.warning("slots taken away without a move; their data is kept", extra={"slots": len(done.lost)})
        self._recount()
        metrics.slots_owned.set(self.owned_count())
        return done


def _always(slot: int, followers: tuple[str, ...]) -> bool:
    return True


def _now(old_primary: str) -> float:
    return time.monotonic()
