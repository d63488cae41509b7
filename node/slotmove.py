"""Slot moves, the node's half: the change log, the source's export and the target's import.

The controller (router/migration.py) drives a move of slot s from source A to target B,
one migration id per attempt. This module is what A and B do (DESIGN section 6).

States on a node (node.v1.MoveRole; the durable ones are kept under `FF FF move:<slot>`)
  source  EXPORTING  A streams s to B and follows s in its change log; still serves s.
                     In memory only: a restart forgets it, and the move then fails.
          FROZEN     A holds every write to s (durable). Only the commit (A learns
                     through AssignSlots that s is no longer its own) or an abort ends it,
                     so a restarted A never takes a write for a slot it may have lost.
  target  IMPORTING  B stages s's range and refuses requests for s (it does not own s).
          IMPORTED   The whole range is staged, durable and checked; B serves s as soon as
                     AssignSlots names it the owner.

Messages (node.v1.Node), each carrying the migration id
  PrepareImport(id, s, A)   B: drop whatever s's range holds; record IMPORTING(id).
                            Refused if B owns s.
  StartExport(id, s, B)     A: in one step of the event loop (so no batch falls between
                            them) open an iterator over s's range (RocksDB pins the view it
                            opens on) and start following s in the change log. Open the
                            stream ImportSlot to B; send the snapshot as chunks of seq 0,
                            then the change log's entries (seq 1, 2, ...). Answer once the
                            backlog is empty.
  ImportSlot(stream)        B applies each chunk in order: snapshot chunks as they come;
                            log entries idempotently by seq (an entry at or below the last
                            applied seq is skipped, a gap fails the stream). One stream per
                            migration id; a chunk naming another id than B's staged one
                            (an aborted or superseded move) is refused and changes nothing.
  FreezeSlot(id, s)         A: mark s frozen and record FROZEN(id) durably; wait until
                            every command queued before that is committed (a barrier in the
                            committer's mailbox); ship the remaining log entries and a last
                            chunk with the seq and digest. B checks the digest, records
                            IMPORTED(id) with sync=True (which makes everything it staged
                            durable), and answers; A compares the digests and answers.
  AbortMove(id, s)          Either side forgets the move: B deletes the range and the
                            record; A stops following s and, if frozen for id, unfreezes.
                            Sent by the controller only after the abort is recorded.
  AssignSlots (commit)      B gaining s with IMPORTED: drop the record, load s's pending
                            expiries and outbox entries, serve. A losing s: drop FROZEN,
                            delete s's range (in the same durable batch as the new table),
                            forget s's outbox entries (B re-drives them; the credit side's
                            applied-leg records moved with s, so nothing applies twice), and
                            answer the writes held for s with WRONG_SLOT naming B.

What a frozen slot means on A (node/engine.py, node/service.py)
  * Client writes and credit legs for s wait (up to the caller's deadline) and are then
    submitted, or answered WRONG_SLOT if s has moved; results of A's own relay for s's
    outbox wait likewise; pending expiries in s wait.
  * Once the barrier has passed, s is sealed: no batch writes a key of s (asserted on
    every commit), and a transfer on A whose credit account is in s goes through the
    outbox: its leg follows s to wherever it ends up. (Before the seal such credits are
    applied in A's batches and go into the log like any write.)
  * A pending transfer between two slots of one node journals its reservation in the
    credit slot (node/outbox.py, journal_local_reserve), so that a post or void of it
    sent as a leg after the credit slot moved finds the reservation there.

The change log
  Each batch the committer writes that touches a followed slot adds one entry per such slot:
  the next per-slot sequence number and the slot's puts and deletes, in order. It is kept in
  memory, and only for the slots being exported: a move that fails restarts from a new
  snapshot. (Replicas would follow the same log, durably; not built yet.)

The digest
  The slot range's digest is the sum, mod 2**64, of blake2b-64(len(key) | key | value) over
  its keys. Both sides keep it incrementally: the snapshot's keys add up, and each log entry
  changes it by the new values minus the old ones (read before the entry is applied). Equal
  digests at the last seq mean B staged the same keys and values as A holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from rocksdict import WriteBatch

from node import metrics
from node.storage import NODE_META, Storage, slot_prefix
from proto import node_pb2, node_pb2_grpc, serving

if TYPE_CHECKING:
    from node.engine import Engine

log = logging.getLogger("yunkai.node.slotmove")

_MASK = (1 << 64) - 1
CHUNK_KEYS_MAX = 2048
CHUNK_BYTES_MAX = 1 << 20
LOG_ENTRIES_MAX = 200_000  # a target that falls this far behind fails the move
STREAM_TIMEOUT_S = 600.0
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]

Op = tuple[bytes, bytes | None]  # (key, value), value None: deleted


class MoveError(Exception):
    """A move cannot go on (a clear message for the controller; it aborts the move)."""


class StaleMove(MoveError):
    """A message names a migration this node is not (or no longer) taking part in."""


def key_digest(key: bytes, value: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(len(key).to_bytes(2, "big") + key + value, digest_size=8).digest(), "big")


def digest_change(ops: Iterable[Op], old_value: Callable[[bytes], bytes | None]) -> int:
    """How applying `ops` in order changes a range's digest, given each key's value before."""
    change = 0
    seen: dict[bytes, bytes | None] = {}
    for key, value in ops:
        before = seen[key] if key in seen else old_value(key)
        if before is not None:
            change -= key_digest(key, before)
        if value is not None:
            change += key_digest(key, value)
        seen[key] = value
    return change & _MASK


def range_digest(storage: Storage, slot: int) -> tuple[int, int]:
    """The digest and key count of a slot's whole range as committed (tests, checks)."""
    digest = keys = 0
    prefix = slot_prefix(slot)
    it = storage.db.iter()
    it.seek(prefix)
    while it.valid():
        key = bytes(it.key())
        if not key.startswith(prefix):
            break
        digest = (digest + key_digest(key, bytes(it.value()))) & _MASK
        keys += 1
        it.next()
    return digest, keys


def slot_range(slot: int) -> tuple[bytes, bytes]:
    """[begin, end) of a slot's keys: node metadata (FF FF) is past every slot."""
    assert slot + 1 < 0xFFFF, slot
    return slot_prefix(slot), slot_prefix(slot + 1)


def move_key(slot: int) -> bytes:
    return NODE_META + b"move:" + str(slot).encode()


@dataclass
class _Followed:
    seq: int = 0
    digest: int = 0  # the change of the digest since the snapshot
    entries: deque[tuple[int, list[Op]]] = field(default_factory=deque)
    grew: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False


class ChangeLog:
    """Per-slot log of committed writes, kept while something follows the slot."""

    def __init__(self) -> None:
        self._followed: dict[int, _Followed] = {}
        # Slots frozen past their barrier: no batch may write them (asserted).
        self.sealed: set[int] = set()

    def watching(self) -> bool:
        return bool(self._followed or self.sealed)

    def follows(self, slot: int) -> bool:
        return slot in self._followed

    def follow(self, slot: int) -> _Followed:
        assert slot not in self._followed, slot
        followed = self._followed[slot] = _Followed()
        return followed

    def unfollow(self, slot: int) -> None:
        self._followed.pop(slot, None)

    def capture(self, ops: Sequence[Op], old_value: Callable[[bytes], bytes | None]) -> None:
        """A batch about to be written (the committer calls this just before the write;
        a failed write stops the node, so nothing captured is left unwritten)."""
        by_slot: dict[int, list[Op]] = {}
        for op in ops:
            slot = int.from_bytes(op[0][:2], "big")
            assert slot not in self.sealed, f"a write to slot {slot} after it was frozen: {op[0]!r}"
            if slot in self._followed:
                by_slot.setdefault(slot, []).append(op)
        for slot, slot_ops in by_slot.items():
            followed = self._followed[slot]
            followed.seq += 1
            followed.digest = (followed.digest + digest_change(slot_ops, old_value)) & _MASK
            if len(followed.entries) >= LOG_ENTRIES_MAX:
                followed.overflowed = True
                followed.entries.clear()
            if not followed.overflowed:
                followed.entries.append((followed.seq, slot_ops))
            followed.grew.set()


@dataclass
class _Export:
    migration_id: str
    slot: int
    target: str
    followed: _Followed
    call: grpc.aio.StreamUnaryCall[node_pb2.SlotChunk, node_pb2.ImportSlotResponse]
    digest: int = 0  # the snapshot's
    sent_seq: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Import:
    record: node_pb2.SlotMove
    streamed: bool = False  # one stream per migration id
    snapshot_keys: int = 0


class SlotMoves:
    """A node's exports and imports: what the controller's Node.* move calls do."""

    def __init__(self, engine: Engine, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._engine = engine
        self._storage = engine.storage
        self._credentials = credentials
        self.changelog = engine.changelog
        self._exports: dict[int, _Export] = {}
        self._imports: dict[int, _Import] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.stopping = False  # the node is shutting down: no stream writes any more
        for record in self.durable_records():
            if record.role in (node_pb2.IMPORTING, node_pb2.IMPORTED):
                self._imports[record.slot] = _Import(record, streamed=True)  # a new stream needs a new id

    # --- durable records -------------------------------------------------------------------

    def durable_records(self) -> list[node_pb2.SlotMove]:
        records = []
        prefix = NODE_META + b"move:"
        it = self._storage.db.iter()
        it.seek(prefix)
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            records.append(node_pb2.SlotMove.FromString(bytes(it.value())))
            it.next()
        return records

    def report(self) -> list[node_pb2.SlotMove]:
        """Every move this node takes part in, for GetSlots (the controller reconciles them)."""
        moves = [
            node_pb2.SlotMove(
                slot=e.slot, migration_id=e.migration_id, role=node_pb2.EXPORTING, peer=e.target, last_seq=e.sent_seq
            )
            for e in self._exports.values()
            if not self._engine.slots[e.slot].frozen
        ]
        moves.extend(self._engine.frozen_records())
        moves.extend(i.record for i in self._imports.values())
        return moves

    def _write_record(self, record: node_pb2.SlotMove, batch: WriteBatch | None = None) -> None:
        own = batch is None
        batch = batch if batch is not None else WriteBatch(raw_mode=True)
        batch.put(move_key(record.slot), record.SerializeToString())
        if own:
            self._storage.write(batch)

    # --- target -------------------------------------------------------------------------

    def prepare_import(self, migration_id: str, slot: int, source: str) -> None:
        self._check_slot(slot)
        if self._engine.slots[slot].owned:
            raise MoveError(f"slot {slot} is owned by this node: it cannot be a move's target")
        record = node_pb2.SlotMove(slot=slot, migration_id=migration_id, role=node_pb2.IMPORTING, peer=source)
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(*slot_range(slot))
        self._write_record(record, batch)
        self._storage.write(batch)
        self._imports[slot] = _Import(record)
        log.debug("import prepared", extra={"slot": slot, "migration_id": migration_id, "source": source})

    async def import_slot(self, chunks: AsyncIterator[node_pb2.SlotChunk]) -> node_pb2.ImportSlotResponse:
        current: _Import | None = None
        async for chunk in chunks:
            if self.stopping:
                raise MoveError("the node is shutting down")
            staged = self._imports.get(chunk.slot)
            if staged is None or staged.record.migration_id != chunk.migration_id:
                raise StaleMove(
                    f"slot {chunk.slot}: migration {chunk.migration_id!r} is not staged here"
                    + (f" (staged: {staged.record.migration_id!r})" if staged else "")
                    + "; it was aborted or superseded"
                )
            if current is None:
                if staged.streamed or staged.record.role != node_pb2.IMPORTING:
                    raise StaleMove(f"slot {chunk.slot}: migration {chunk.migration_id!r} already had its stream")
                staged.streamed = True
                current = staged
            elif staged is not current:
                raise MoveError("one stream carries one slot")
            if chunk.last:
                return await self._finish_import(current, chunk)
            self._apply_chunk(current, chunk)
        raise MoveError("the stream ended without its last chunk")

    def _apply_chunk(self, staged: _Import, chunk: node_pb2.SlotChunk) -> None:
        record = staged.record
        prefix = slot_prefix(record.slot)
        if any(not op.key.startswith(prefix) for op in chunk.ops):
            raise MoveError(f"slot {record.slot}: a chunk names a key outside the slot")
        batch = WriteBatch(raw_mode=True)
        if chunk.seq == 0:
            if record.last_seq:
                raise MoveError(f"slot {record.slot}: a snapshot chunk after log entry {record.last_seq}")
            digest = record.digest
            for op in chunk.ops:
                if op.deleted:
                    raise MoveError(f"slot {record.slot}: a snapshot chunk with a delete")
                batch.put(op.key, op.value)
                digest += key_digest(op.key, op.value)
            record.digest = digest & _MASK
            staged.snapshot_keys += len(chunk.ops)
        else:
            if chunk.seq <= record.last_seq:
                return  # applied already: log entries are idempotent by seq
            if chunk.seq != record.last_seq + 1:
                raise MoveError(f"slot {record.slot}: log entry {chunk.seq} after {record.last_seq} (a gap)")
            ops: list[Op] = [(op.key, None if op.deleted else op.value) for op in chunk.ops]
            record.digest = (record.digest + digest_change(ops, self._storage.raw_get)) & _MASK
            for key, value in ops:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            record.last_seq = chunk.seq
        self._storage.write_unsynced(batch)

    async def _finish_import(self, staged: _Import, chunk: node_pb2.SlotChunk) -> node_pb2.ImportSlotResponse:
        record = staged.record
        if chunk.seq != record.last_seq or chunk.digest != record.digest:
            raise MoveError(
                f"slot {record.slot}: staged seq {record.last_seq} digest {record.digest:016x}, the source has"
                f" seq {chunk.seq} digest {chunk.digest:016x}: the copies differ"
            )
        imported = node_pb2.SlotMove()
        imported.CopyFrom(record)
        imported.role = node_pb2.IMPORTED
        # Synced in the committer's next group commit (shared with the wave's other imports),
        # which makes everything staged before it durable too: one WAL.
        await self._engine.barrier([(move_key(record.slot), imported.SerializeToString())])
        if self._imports.get(record.slot) is not staged:
            if record.slot not in self._imports:  # aborted meanwhile: the record written is stale
                self._storage.write(_deletion(move_key(record.slot)))
            raise StaleMove(f"slot {record.slot}: migration {record.migration_id!r} was aborted meanwhile")
        record.role = node_pb2.IMPORTED
        log.debug(
            "import staged",
            extra={"slot": record.slot, "migration_id": record.migration_id, "seq": record.last_seq},
        )
        return node_pb2.ImportSlotResponse(last_seq=record.last_seq, digest=record.digest, keys=staged.snapshot_keys)

    def imported(self, slot: int) -> node_pb2.SlotMove | None:
        staged = self._imports.get(slot)
        return None if staged is None else staged.record

    def forget_import(self, slot: int, batch: WriteBatch) -> None:
        """The slot is this node's now (AssignSlots): its staging record goes in `batch`."""
        batch.delete(move_key(slot))
        self._imports.pop(slot, None)

    # --- source ---------------------------------------------------------------------------

    async def start_export(self, migration_id: str, slot: int, target: str) -> node_pb2.StartExportResponse:
        self._check_slot(slot)
        engine = self._engine
        actor = engine.slots[slot]
        if not actor.owned:
            raise MoveError(f"slot {slot} is not owned by this node (owner {actor.owner!r} at epoch {actor.epoch})")
        if actor.frozen:
            raise MoveError(f"slot {slot} is frozen for another move")
        old = self._exports.get(slot)
        if old is not None:
            if old.migration_id == migration_id:
                raise MoveError(f"slot {slot}: migration {migration_id!r} was started already")
            self._stop_export(old)  # superseded: the controller moved on
        channel = self._channel(target)
        stub = node_pb2_grpc.NodeStub(channel)
        # One step of the loop: the iterator's view and the log's first entry meet exactly.
        it = self._storage.db.iter()
        followed = self.changelog.follow(slot)
        call = stub.ImportSlot(timeout=STREAM_TIMEOUT_S)
        export = self._exports[slot] = _Export(migration_id, slot, target, followed, call)
        started = time.perf_counter()
        try:
            async with export.lock:
                keys, size = await self._send_snapshot(export, it)
                await self._send_log(export)
        except BaseException:
            if self._exports.get(slot) is export:
                self._stop_export(export)
            raise
        metrics.move_snapshot_s.observe(time.perf_counter() - started)
        log.debug("export caught up", extra={"slot": slot, "migration_id": migration_id, "keys": keys, "bytes": size})
        return node_pb2.StartExportResponse(keys=keys, bytes=size, seq=export.sent_seq)

    async def _send_snapshot(self, export: _Export, it: object) -> tuple[int, int]:
        prefix = slot_prefix(export.slot)
        it.seek(prefix)  # type: ignore[attr-defined]
        keys = size = 0
        digest = 0
        chunk = node_pb2.SlotChunk(migration_id=export.migration_id, slot=export.slot)
        chunk_bytes = 0
        while it.valid():  # type: ignore[attr-defined]
            key = bytes(it.key())  # type: ignore[attr-defined]
            if not key.startswith(prefix):
                break
            value = bytes(it.value())  # type: ignore[attr-defined]
            chunk.ops.add(key=key, value=value)
            digest += key_digest(key, value)
            keys += 1
            chunk_bytes += len(key) + len(value)
            if len(chunk.ops) >= CHUNK_KEYS_MAX or chunk_bytes >= CHUNK_BYTES_MAX:
                await self._write(export, chunk)
                size += chunk_bytes
                chunk = node_pb2.SlotChunk(migration_id=export.migration_id, slot=export.slot)
                chunk_bytes = 0
            it.next()  # type: ignore[attr-defined]
        if chunk.ops:
            await self._write(export, chunk)
            size += chunk_bytes
        export.digest = digest & _MASK
        return keys, size

    async def _send_log(self, export: _Export) -> None:
        followed = export.followed
        if followed.overflowed:
            raise MoveError(f"slot {export.slot}: the target fell more than {LOG_ENTRIES_MAX} batches behind")
        while followed.entries:
            seq, ops = followed.entries.popleft()
            chunk = node_pb2.SlotChunk(migration_id=export.migration_id, slot=export.slot, seq=seq)
            for key, value in ops:
                if value is None:
                    chunk.ops.add(key=key, deleted=True)
                else:
                    chunk.ops.add(key=key, value=value)
            await self._write(export, chunk)
            export.sent_seq = seq
        followed.grew.clear()

    async def _write(self, export: _Export, chunk: node_pb2.SlotChunk) -> None:
        if self._exports.get(export.slot) is not export:
            raise StaleMove(f"slot {export.slot}: migration {export.migration_id!r} was aborted")
        try:
            await export.call.write(chunk)
        except grpc.aio.AioRpcError as error:
            raise MoveError(f"slot {export.slot}: the stream to {export.target} failed: {error.details()}") from error
        except asyncio.InvalidStateError as error:
            raise MoveError(f"slot {export.slot}: the stream to {export.target} ended early") from error

    async def freeze(self, migration_id: str, slot: int) -> node_pb2.FreezeSlotResponse:
        self._check_slot(slot)
        export = self._exports.get(slot)
        if export is None or export.migration_id != migration_id:
            raise StaleMove(f"slot {slot}: migration {migration_id!r} is not exporting here")
        engine = self._engine
        record = node_pb2.SlotMove(slot=slot, migration_id=migration_id, role=node_pb2.FROZEN, peer=export.target)
        engine.freeze(slot, record)
        started = time.perf_counter()
        async with export.lock:
            # The FROZEN record is durable with the barrier's group commit (one fsync for the
            # freezes of a whole wave), before anything is shipped or answered.
            await engine.barrier([(move_key(slot), record.SerializeToString())])
            if engine.frozen_for(slot) != migration_id:
                if engine.frozen_for(slot) is None:  # aborted meanwhile: the record written is stale
                    self._storage.write(_deletion(move_key(slot)))
                raise StaleMove(f"slot {slot}: migration {migration_id!r} was aborted while freezing")
            engine.seal(slot)
            self.changelog.unfollow(slot)
            await self._send_log(export)
            digest = (export.digest + export.followed.digest) & _MASK
            last = node_pb2.SlotChunk(
                migration_id=migration_id, slot=slot, seq=export.followed.seq, last=True, digest=digest
            )
            await self._write(export, last)
            try:
                await export.call.done_writing()
                reply: node_pb2.ImportSlotResponse = await export.call
            except grpc.aio.AioRpcError as error:
                raise MoveError(f"slot {slot}: {export.target} did not stage the slot: {error.details()}") from error
            finally:
                self._exports.pop(slot, None)
        if reply.last_seq != export.followed.seq or reply.digest != digest:
            raise MoveError(
                f"slot {slot}: {export.target} staged seq {reply.last_seq} digest {reply.digest:016x},"
                f" this node has seq {export.followed.seq} digest {digest:016x}"
            )
        metrics.move_tail_s.observe(time.perf_counter() - started)
        log.debug("slot frozen and shipped", extra={"slot": slot, "migration_id": migration_id, "seq": reply.last_seq})
        return node_pb2.FreezeSlotResponse(last_seq=reply.last_seq, digest=digest)

    def _stop_export(self, export: _Export) -> None:
        self._exports.pop(export.slot, None)
        self.changelog.unfollow(export.slot)
        export.call.cancel()

    # --- either side --------------------------------------------------------------------

    def abort(self, migration_id: str, slot: int) -> bool:
        self._check_slot(slot)
        active = False
        export = self._exports.get(slot)
        if export is not None and export.migration_id == migration_id:
            self._stop_export(export)
            active = True
        if self._engine.thaw(slot, migration_id):
            self.changelog.sealed.discard(slot)
            active = True
        staged = self._imports.get(slot)
        if staged is not None and staged.record.migration_id == migration_id:
            batch = WriteBatch(raw_mode=True)
            batch.delete_range(*slot_range(slot))
            batch.delete(move_key(slot))
            self._storage.write(batch)
            del self._imports[slot]
            active = True
        if active:
            log.info("move aborted", extra={"slot": slot, "migration_id": migration_id})
        return active

    def _check_slot(self, slot: int) -> None:
        if slot >= self._engine.slots_total:
            raise MoveError(f"slot {slot} is not below slots_total {self._engine.slots_total}")

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = serving.channel(address, self._credentials, _CHANNEL_OPTIONS)
        return channel

    async def close(self) -> None:
        for export in list(self._exports.values()):
            self._stop_export(export)
        for channel in self._channels.values():
            await channel.close()


def _deletion(key: bytes) -> WriteBatch:
    batch = WriteBatch(raw_mode=True)
    batch.delete(key)
    return batch
