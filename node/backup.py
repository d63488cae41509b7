"""Backups and restores, the node's half: a consistent cut of the slots it leads; a slot loaded into a new cluster.

The operator's command (cluster/backup.py) drives it; this module is what each node does.
Every call is an operator's (serving/authz.py) and audited.

Why a cut needs the cluster's help
  A slot's own history is one sequence, so a view of one slot's range opened in one step of
  the event loop is that slot's state between two group commits. But a transfer across
  nodes (node/outbox.py) is a message: its debit slot sends a credit leg (the IN_FLIGHT
  batch with its outbox entry), the credit slot receives it (applies the leg, with its
  applied-leg record), and the debit slot receives the answer (posts or voids, deleting the
  entry). Views of the slots opened at different instants are a consistent cut (Chandy and
  Lamport) only if no receive is in the cut whose send is not: a credit with no debit, or a
  debit posted whose credit is missing, would unbalance the books for good. A send in the
  cut whose receive is not is harmless: the outbox entry is in the debit slot's range, and
  the restored cluster's relay re-drives it (the credit side answers a leg it has applied
  with its stored result, so nothing applies twice).

The protocol (messages of node.v1.Node; `B` is the backup's id)
  HoldCreditLegs(B, hold_ms)  From now until ReleaseCreditLegs(B), or hold_ms at most (then
                         the hold lapses by itself: a vanished operator holds nothing for
                         long), every ApplyCreditLegs waits before it submits its legs.
                         Answered once every ApplyCreditLegs already submitted has committed
                         (and replicated): from then on this node receives no leg, and so
                         sends no answer, until the hold ends. A hold for another id is
                         refused while this one lasts.
  CutSlots(B, previous)  Refused unless B holds legs here. Waits until no batch of a slot
                         it leads awaits its followers (a cut holds only what survives a
                         failover), then in one step of the event loop opens a view of every
                         slot it leads (a RocksDB iterator pins what it opens on) and records
                         each one's SlotVersion. A slot whose (epoch, seq) equals `previous`,
                         replicated at both, is reported unchanged and not kept: with
                         followers every batch written to a slot advances its seq, and a
                         configuration change advances its epoch. The views are kept for
                         ReadCut, at most CUT_TTL_S; a newer cut replaces an older one.
  ReleaseCreditLegs(B)   Ends the hold; answers whether it was still held (not lapsed).
  ReadCut(B, slots)      Streams each slot's keys from its view; a slot the previous backup
                         has but whose seq says nothing (no followers, or never written) is
                         digested first (a second view opened at the cut) and, when the
                         digest is the previous one, sent as `unchanged` alone.

  The operator holds every primary's legs, and only once every hold is answered cuts every
  primary, then releases every hold, and keeps the round only if every release answers
  `was_held` and every slot was cut by its primary at the epoch of the shard map read after
  the round (else the round is tried again). Then no leg was received anywhere between the
  first cut and the last, and every receive before a cut had its send before every cut:
  the cut is consistent. Every transfer acknowledged before the first hold was sent is in
  it (it was durable on its slot's primary, and every primary since has it).

  The hold delays cross-node transfers' credit legs for the round's length (a few round
  trips); writes within a node, reads, and the legs' senders go on.

Restore (into a new, empty cluster; the operator loads every slot before finishing any)
  RestoreSlot(stream)    Slots into their copies here (primary or follower), one after
                         another: each refused unless this node leads or follows it and its
                         range is empty. Keys are checked to be the slot's, and records as a
                         move checks them (node/peerdata.py), and put as they come; once a
                         slot is whole, each account's debits_pending against its pendings
                         and transfers in flight. A slot's last chunk carries the key count, the digest they
                         must add up to and the backup's ledger clock (raised here, so
                         nothing is stamped behind the restored history). The stream's end
                         makes its slots and the clock durable with one fsync; a mismatch or
                         a broken stream deletes what the stream wrote. The old cluster's
                         replication (epoch, seq) key is not written: the slot's copies keep
                         this cluster's own.
  FinishRestore(slots)   The restored slots this node leads are taken up as if moved in:
                         their books counted, outbox entries loaded (and re-driven: the
                         credit legs in flight at the cut complete) and pending expiries
                         loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message
from rocksdict import WriteBatch

import serving
from node import keys, metrics
from node.changelog import MASK, key_digest
from node.clock import too_far_ahead
from node.engine import Engine
from node.identity import Identity
from node.peerdata import held_problem, stored_problem
from node.slotmove import CHUNK_BYTES_MAX, CHUNK_KEYS_MAX
from node.slots import SlotTable
from node.storage import Storage
from proto import node_pb2
from serving import BadRequest, Context, Refused, parse_request

log = logging.getLogger("yunkai.node.backup")

BACKUP_ID_BYTES_MAX = 128
HOLD_MS_MIN, HOLD_MS_MAX = 10, 30_000
CUT_TTL_S = 900.0  # a cut's views pin RocksDB files and memtables: dropped after this
SETTLE_WAIT_S = 2.0  # longest a cut waits for the slots' last batch to reach their followers
RESTORING_SLOTS_MAX = 4096  # slots of unfinished RestoreSlot streams on one node


class BackupError(Refused):
    """A backup or restore step this node cannot take now (FAILED_PRECONDITION, with why)."""


@dataclass
class _Kept:
    """One slot of a cut: its version and the views opened at the cut."""

    version: node_pb2.SlotVersion
    items: Iterator[tuple[bytes, bytes]]
    digest_items: Iterator[tuple[bytes, bytes]] | None  # a second view, digested first (known before)
    previous_digest: int = 0


@dataclass
class _Cut:
    backup_id: str
    taken_at: float  # monotonic
    slots: dict[int, _Kept] = field(default_factory=dict)


class LegHold:
    """The hold on incoming credit legs (HoldCreditLegs .. ReleaseCreditLegs)."""

    def __init__(self) -> None:
        self.backup_id = ""
        self._until = 0.0  # monotonic
        self._released = asyncio.Event()
        self._released.set()
        self._inside = 0  # ApplyCreditLegs calls admitted and not yet answered
        self._idle = asyncio.Event()
        self._idle.set()

    def holding(self, backup_id: str = "") -> bool:
        """Whether legs are held now (for `backup_id`, when named)."""
        held = bool(self.backup_id) and time.monotonic() < self._until
        return held and (not backup_id or backup_id == self.backup_id)

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Around the submission of credit legs: waits while a hold lasts (bounded by it)."""
        while self.holding():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self._until - time.monotonic())):
                    await self._released.wait()
        self._inside += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inside -= 1
            assert self._inside >= 0
            if not self._inside:
                self._idle.set()

    async def hold(self, backup_id: str, hold_ms: int) -> float:
        """Hold legs; returns once those already admitted are answered (seconds waited)."""
        if self.holding() and self.backup_id != backup_id:
            left_ms = (self._until - time.monotonic()) * 1000
            raise BackupError(f"backup {self.backup_id!r} holds credit legs here for {left_ms:.0f} ms more")
        self.backup_id = backup_id
        self._until = time.monotonic() + hold_ms / 1000
        self._released.clear()
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(hold_ms / 1000):
                await self._idle.wait()
        if not self._idle.is_set() or not self.holding(backup_id):
            self.release(backup_id)
            raise BackupError(f"credit legs submitted before the hold did not commit within {hold_ms} ms")
        return time.monotonic() - started

    def release(self, backup_id: str) -> bool:
        """End the hold of `backup_id`; whether it was still held."""
        was_held = self.holding(backup_id)
        if self.backup_id == backup_id:
            self.backup_id = ""
            self._until = 0.0
            self._released.set()
        return was_held


class Backups:
    """A node's half of backups and restores: the Node service's backup methods."""

    def __init__(self, engine: Engine, slots: SlotTable, storage: Storage, identity: Identity) -> None:
        self._engine = engine
        self._slots = slots
        self._storage = storage
        self._identity = identity
        self.legs = LegHold()
        self._cut: _Cut | None = None
        self._restoring: set[int] = set()
        self._restored: set[int] = set()
        self._received: dict[int, tuple[int, int, int]] = {}  # slot -> (digest, keys, keys written)

    def handler(self) -> grpc.GenericRpcHandler:
        """The backup methods of yunkai.node.v1.Node (node/node_service.py serves the others)."""
        methods: dict[str, serving.Handler] = {
            "HoldCreditLegs": self._hold,
            "CutSlots": self._cut_slots,
            "ReleaseCreditLegs": self._release,
            "FinishRestore": self._finish_restore,
        }
        streams = {
            "ReadCut": grpc.unary_stream_rpc_method_handler(self._read_cut),
            "RestoreSlot": grpc.stream_unary_rpc_method_handler(self._restore_slot),
        }
        return serving.unary_service(
            "yunkai.node.v1.Node", methods, (), metrics.requests_total, metrics.request_latency_s, log, streams
        )

    # --- the cut ----------------------------------------------------------------------------

    async def _hold(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.HoldCreditLegsRequest, data)
        _check_backup_id(request.backup_id)
        if not HOLD_MS_MIN <= request.hold_ms <= HOLD_MS_MAX:
            raise BadRequest(f"hold_ms: {request.hold_ms} is not {HOLD_MS_MIN} to {HOLD_MS_MAX}")
        waited_s = await self.legs.hold(request.backup_id, request.hold_ms)
        return node_pb2.HoldCreditLegsResponse(waited_ms=int(waited_s * 1000))

    async def _release(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.ReleaseCreditLegsRequest, data)
        _check_backup_id(request.backup_id)
        return node_pb2.ReleaseCreditLegsResponse(was_held=self.legs.release(request.backup_id))

    async def _cut_slots(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.CutSlotsRequest, data)
        _check_backup_id(request.backup_id)
        previous: dict[int, node_pb2.SlotVersion] = {}
        for index, version in enumerate(request.previous):
            if version.slot >= self._slots.slots_total:
                raise BadRequest(f"previous[{index}].slot: {version.slot} is not below {self._slots.slots_total}")
            previous[version.slot] = version
        if not self.legs.holding(request.backup_id):
            raise BackupError(f"backup {request.backup_id!r} does not hold credit legs here (never, or lapsed)")
        await self._engine.settled(set(self._slots.owned()), SETTLE_WAIT_S)
        # From here to the return, no await: the views are opened in one step of the loop.
        led = self._slots.owned()
        busy = [slot for slot in led if self._engine.awaiting_followers(slot)]
        if busy:
            raise BackupError(f"slots {busy[:10]} still await their followers after {SETTLE_WAIT_S:g} s")
        if not self.legs.holding(request.backup_id):
            raise BackupError(f"the hold of backup {request.backup_id!r} lapsed before the cut")
        cut = _Cut(request.backup_id, time.monotonic())
        reply = node_pb2.CutSlotsResponse(clock_ns=self._engine.clock.last, node_id=self._identity.node_id)
        for slot in led:
            entry = self._slots[slot]
            version = node_pb2.SlotVersion(
                slot=slot,
                epoch=entry.epoch,
                seq_epoch=entry.seq_epoch,
                seq=entry.seq,
                replicated=bool(entry.followers),
            )
            reply.slots.append(version)
            before = previous.get(slot)
            if before is not None and _unchanged(before, version):
                reply.unchanged.append(slot)
                continue
            # Known before: digested first, and sent only if it changed (an empty slot's digest is 0).
            second = self._storage.slot_items(slot) if before is not None else None
            known = before.digest if before is not None else 0
            cut.slots[slot] = _Kept(version, self._storage.slot_items(slot), second, known)
        self._cut = cut  # a newer cut replaces an older one (its operator gave up, or restarted)
        log.info(
            "slots cut for a backup",
            extra={"backup_id": cut.backup_id, "slots": len(led), "kept": len(cut.slots)},
        )
        return reply

    async def _read_cut(self, data: bytes, context: Context) -> AsyncIterator[bytes]:
        try:
            request = parse_request(node_pb2.ReadCutRequest, data)
            _check_backup_id(request.backup_id)
            cut = self._cut
            if cut is None or cut.backup_id != request.backup_id:
                raise BackupError(f"no cut of backup {request.backup_id!r} here (never taken, replaced, or expired)")
            if time.monotonic() - cut.taken_at > CUT_TTL_S:
                self._cut = None
                raise BackupError(f"the cut of backup {request.backup_id!r} is older than {CUT_TTL_S:g} s: dropped")
            for slot in request.slots:
                kept = cut.slots.pop(slot, None)
                if kept is None:
                    raise BackupError(f"slot {slot} is not in backup {request.backup_id!r}'s cut here (or was read)")
                async for chunk in _slot_chunks(slot, kept):
                    yield chunk.SerializeToString()
        except Refused as error:
            log.info("backup read refused", extra={"status": error.code.name, "reason": str(error)})
            await context.abort(error.code, str(error))

    # --- restore ----------------------------------------------------------------------------

    async def _restore_slot(self, chunks: AsyncIterator[bytes], context: Context) -> bytes:
        current: int | None = None  # the slot whose chunks are arriving
        done: list[int] = []  # complete and checked, durable once the stream ends
        written = 0
        try:
            async for raw in chunks:
                chunk = parse_request(node_pb2.RestoreChunk, raw)
                if current is None:
                    current = self._begin_restore(chunk.slot)
                elif chunk.slot != current:
                    raise BadRequest(f"slot: {chunk.slot} before the last chunk of slot {current}")
                count = self._restore_chunk(current, chunk)
                if count is not None:
                    done.append(current)
                    written += count
                    current = None
            if current is not None or not done:
                raise BadRequest("the stream ended without a slot's last chunk")
            # One fsync for the stream: everything written for its slots before it is durable too.
            self._storage.put_now(keys.CLOCK, self._engine.clock.last.to_bytes(8, "big"))
            self._storage.forget_accounts()
            self._restored.update(done)
            return node_pb2.RestoreSlotResponse(keys=written, slots=len(done)).SerializeToString()
        except BaseException as error:
            for slot in [*done, *([] if current is None else [current])]:
                self._undo_restore(slot)
            if not isinstance(error, Refused):
                raise
            log.info("restore refused", extra={"slot": current, "status": error.code.name, "reason": str(error)})
            await context.abort(error.code, str(error))
            raise  # abort raises; this line is for the type checker
        finally:
            self._restoring.difference_update(done)
            if current is not None:
                self._restoring.discard(current)

    def _begin_restore(self, slot: int) -> int:
        if slot >= self._slots.slots_total:
            raise BadRequest(f"slot: {slot} is not below {self._slots.slots_total}")
        entry = self._slots[slot]
        if not (entry.owned or entry.following):
            raise BackupError(
                f"slot {slot} is neither led nor followed by this node (the shard map changed? restore again"
                " into a new cluster)"
            )
        if slot in self._restoring:
            raise BackupError(f"slot {slot} is being restored here by another stream")
        if len(self._restoring) >= RESTORING_SLOTS_MAX:
            raise BackupError(f"{RESTORING_SLOTS_MAX} slots are being restored here already")
        if slot in self._restored or any(key != keys.seq_key(slot) for key, _value in self._storage.slot_items(slot)):
            raise BackupError(f"slot {slot} already holds data here: a restore goes into a new, empty cluster")
        self._restoring.add(slot)
        self._received[slot] = (0, 0, 0)
        return slot

    def _restore_chunk(self, slot: int, chunk: node_pb2.RestoreChunk) -> int | None:
        """Write one chunk (unsynced: the stream's end syncs); on the last one check the totals.
        The number of keys written once the slot is complete, else None."""
        begin, end = keys.slot_range(slot)
        seq_key = keys.seq_key(slot)
        digest, count, written = self._received[slot]
        batch = WriteBatch(raw_mode=True)
        total = self._slots.slots_total
        for index, op in enumerate(chunk.ops):
            if op.deleted or not begin <= op.key < end:
                raise BadRequest(f"ops[{index}]: not a put of a key of slot {slot}")
            if problem := stored_problem(op.key, op.value, total):
                raise BadRequest(f"ops[{index}]: {problem}")
            digest += key_digest(op.key, op.value)
            count += 1
            if op.key != seq_key:
                batch.put(op.key, op.value)
                written += 1
        digest &= MASK
        self._received[slot] = (digest, count, written)
        self._storage.write_unsynced(batch)
        if not chunk.last:
            return None
        if chunk.keys != count or chunk.digest != digest:
            raise BackupError(
                f"slot {slot}: received {count} keys with digest {digest:016x}, the backup says {chunk.keys} keys"
                f" with digest {chunk.digest:016x}"
            )
        if ahead := too_far_ahead(chunk.clock_ns):
            raise BadRequest(f"slot {slot}'s last chunk: {ahead}")
        if problem := held_problem(self._storage.slot_items(slot)):
            raise BadRequest(f"slot {slot}: {problem}")
        self._engine.clock.raise_to(chunk.clock_ns)  # made durable with the stream's slots
        del self._received[slot]
        return written

    def _undo_restore(self, slot: int) -> None:
        """Delete what a failed restore wrote into the slot (its own seq key stays)."""
        self._received.pop(slot, None)
        if slot in self._restored:
            return
        seq_key = keys.seq_key(slot)
        kept = self._storage.get(seq_key)
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(*keys.slot_range(slot))
        if kept is not None:
            batch.put(seq_key, kept)
        self._storage.write(batch)
        self._storage.forget_accounts()

    async def _finish_restore(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.FinishRestoreRequest, data)
        missing = [slot for slot in request.slots if slot not in self._restored]
        if missing:
            raise BackupError(f"slots {missing[:10]} were not restored into this node")
        led = [slot for slot in request.slots if self._slots[slot].owned]
        entries = self._engine.adopt(led)
        log.warning("restored slots taken up", extra={"slots_led": len(led), "outbox_entries": entries})
        return node_pb2.FinishRestoreResponse(slots_led=len(led), outbox_entries=entries)


def _check_backup_id(backup_id: str) -> None:
    if not backup_id or len(backup_id.encode()) > BACKUP_ID_BYTES_MAX:
        raise BadRequest(f"backup_id: 1 to {BACKUP_ID_BYTES_MAX} bytes")


def _unchanged(before: node_pb2.SlotVersion, now: node_pb2.SlotVersion) -> bool:
    """Whether a slot is the same as at the previous backup, without reading it: both times
    with followers at one epoch (so every batch in between advanced seq), and seq the same."""
    same = (before.epoch, before.seq_epoch, before.seq) == (now.epoch, now.seq_epoch, now.seq)
    return same and before.replicated and now.replicated and now.seq > 0


async def _slot_chunks(slot: int, kept: _Kept) -> AsyncIterator[node_pb2.BackupChunk]:
    """One slot of a cut as chunks: its keys, then the last chunk with their count and digest."""
    if kept.digest_items is not None:
        digest = count = 0
        for key, value in kept.digest_items:
            digest = (digest + key_digest(key, value)) & MASK
            count += 1
            if count % CHUNK_KEYS_MAX == 0:
                await asyncio.sleep(0)  # a large slot does not stall the node's loop
        if digest == kept.previous_digest:
            yield node_pb2.BackupChunk(slot=slot, last=True, keys=count, digest=digest, unchanged=True)
            return
    digest = count = size = 0
    chunk = node_pb2.BackupChunk(slot=slot)
    for key, value in kept.items:
        chunk.ops.add(key=key, value=value)
        digest = (digest + key_digest(key, value)) & MASK
        count += 1
        size += len(key) + len(value)
        if len(chunk.ops) >= CHUNK_KEYS_MAX or size >= CHUNK_BYTES_MAX:
            yield chunk
            chunk = node_pb2.BackupChunk(slot=slot)
            size = 0
    if chunk.ops:
        yield chunk
    yield node_pb2.BackupChunk(slot=slot, last=True, keys=count, digest=digest)
