"""Slot moves, the node's half: the change log, the source's export and the target's import.

The controller (router/migration.py) drives a move of slot s from source A to target B,
one migration id per attempt. This module is what A and B do (DESIGN section 6).

States (node/slots.py holds them, with their legal transitions)
  source  SERVING    A streams s to B while following s in the change log (node/changelog.py);
                     the export is in memory only: a restart forgets it, and the move fails.
          FROZEN     A holds every new write to s; the FROZEN record (FF FF move:<s>) is durable.
          SEALED     Everything queued before the freeze is durable and shipped. Only the commit
                     (A learns through AssignSlots that s is no longer its own) or an abort ends
                     it, so a restarted A never takes a write for a slot it may have lost.
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
                            (an aborted or superseded move) is refused and changes nothing,
                            and so is one with a key outside s or a record no write of ours
                            could have left (node/peerdata.py: one that does not parse or
                            sits under another's key, a negative balance, ...).
  FreezeSlot(id, s)         A: mark s frozen and record FROZEN(id) durably; wait until
                            every command queued before that is committed (a barrier in the
                            committer's mailbox); ship the remaining log entries and a last
                            chunk with the seq and digest. B checks the digest and that
                            the staged accounts hold exactly what their transfers claim
                            (node/peerdata.py HeldTally, kept up chunk by chunk so the
                            check costs nothing here), records IMPORTED(id) with sync=True
                            (which makes everything it staged durable), and answers; A
                            compares the digests and answers.
  AbortMove(id, s)          Either side forgets the move: B deletes the range and the
                            record; A stops following s and, if frozen for id, unfreezes.
                            Sent by the controller only after the abort is recorded.
  AssignSlots (commit)      B gaining s with IMPORTED: drop the record, load s's pending
                            expiries and outbox entries, serve. A losing s: drop FROZEN,
                            delete s's range (in the same durable batch as the new table),
                            forget s's outbox entries (B re-drives them; the credit side's
                            applied-leg records moved with s, so nothing applies twice), and
                            answer the writes held for s with WRONG_SLOT naming B.

What a frozen slot means on A (node/engine.py, node/holding.py)
  * Client writes and credit legs for s wait (up to the caller's deadline) and are then
    submitted, or answered WRONG_SLOT if s has moved; results of A's own relay for s's
    outbox wait likewise; pending expiries in s wait.
  * Once sealed, no batch writes a key of s (asserted on every commit), and a transfer on A
    whose credit account is in s goes through the outbox: its leg follows s to wherever it
    ends up. (Before the seal such credits are applied in A's batches and go into the log
    like any write.)
  * A pending transfer between two slots of one node journals its reservation in the
    credit slot (node/outbox.py, journal_local_reserve), so that a post or void of it
    sent as a leg after the credit slot moved finds the reservation there.

The change log and the digest are node/changelog.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
from rocksdict import WriteBatch

import serving
from node import keys, metrics
from node.changelog import MASK, ChangeLog, Followed, Op, digest_change, key_digest
from node.engine import Engine
from node.peerdata import HeldTally, held_problem, ops_problem
from node.slots import SERVING, SlotTable
from node.storage import Storage
from proto import node_pb2, node_pb2_grpc

log = logging.getLogger("yunkai.node.slotmove")

CHUNK_KEYS_MAX = 2048
CHUNK_BYTES_MAX = 1 << 20
STREAM_TIMEOUT_S = 600.0
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", serving.MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", serving.MESSAGE_BYTES_MAX),
]
# A chunk's keys and values with their framing must fit one message.
assert CHUNK_BYTES_MAX * 2 <= serving.MESSAGE_BYTES_MAX


class MoveError(Exception):
    """A move cannot go on (a clear message for the controller; it aborts the move)."""


class StaleMove(MoveError):
    """A message names a migration this node is not (or no longer) taking part in."""


@dataclass
class _Export:
    migration_id: str
    slot: int
    target: str
    followed: Followed
    call: grpc.aio.StreamUnaryCall[node_pb2.SlotChunk, node_pb2.ImportSlotResponse]
    digest: int = 0  # the snapshot's
    sent_seq: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SlotMoves:
    """A node's exports and imports: what the controller's Node.* move calls do."""

    def __init__(
        self,
        engine: Engine,
        slots: SlotTable,
        storage: Storage,
        changelog: ChangeLog,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._engine = engine
        self._slots = slots
        self._storage = storage
        self._changelog = changelog
        self._credentials = credentials
        self._exports: dict[int, _Export] = {}
        # Migration ids whose ImportSlot stream has begun: one stream per id. Staging found
        # after a restart had its stream already (a new stream needs a new id).
        self._streamed = {record.migration_id for record in slots.move_records() if record.role != node_pb2.FROZEN}
        # slot -> (migration id, what its staged accounts hold and their transfers claim), kept up
        # as chunks arrive (node/peerdata.py HeldTally): checked when the last one is in.
        self._tallies: dict[int, tuple[str, HeldTally]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.stopping = False  # the node is shutting down: no stream writes any more

    def report(self) -> list[node_pb2.SlotMove]:
        """Every move this node takes part in, for GetSlots (the controller reconciles them)."""
        moves = [
            node_pb2.SlotMove(
                slot=e.slot, migration_id=e.migration_id, role=node_pb2.EXPORTING, peer=e.target, last_seq=e.sent_seq
            )
            for e in self._exports.values()
            if not self._slots[e.slot].frozen
        ]
        moves.extend(self._slots.move_records())
        return moves

    # --- target -------------------------------------------------------------------------

    def prepare_import(self, migration_id: str, slot: int, source: str) -> None:
        self._check_slot(slot)
        if self._slots[slot].owned:
            raise MoveError(f"slot {slot} is owned by this node: it cannot be a move's target")
        if self._slots[slot].following:
            # A copy that leaves its configuration is dropped before it is copied again (repair).
            raise MoveError(f"slot {slot} is followed by this node: it cannot be a move's target")
        record = node_pb2.SlotMove(slot=slot, migration_id=migration_id, role=node_pb2.IMPORTING, peer=source)
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(*keys.slot_range(slot))
        batch.put(keys.move_key(slot), record.SerializeToString())
        self._storage.write(batch)
        self._slots.stage(record)
        self._streamed.discard(migration_id)  # a new staging takes a new stream
        self._tallies[slot] = (migration_id, HeldTally())
        log.debug("import prepared", extra={"slot": slot, "migration_id": migration_id, "source": source})

    async def import_slot(self, chunks: AsyncIterator[node_pb2.SlotChunk]) -> node_pb2.ImportSlotResponse:
        record: node_pb2.SlotMove | None = None
        snapshot_keys = 0
        async for chunk in chunks:
            if self.stopping:
                raise MoveError("the node is shutting down")
            self._check_slot(chunk.slot)
            staged = self._slots.staged(chunk.slot)
            if staged is None or staged.migration_id != chunk.migration_id:
                raise StaleMove(
                    f"slot {chunk.slot}: migration {chunk.migration_id!r} is not staged here"
                    + (f" (staged: {staged.migration_id!r})" if staged else "")
                    + "; it was aborted or superseded"
                )
            if record is None:
                if staged.migration_id in self._streamed or staged.role != node_pb2.IMPORTING:
                    raise StaleMove(f"slot {chunk.slot}: migration {chunk.migration_id!r} already had its stream")
                self._streamed.add(staged.migration_id)
                record = staged
            elif staged is not record:
                raise MoveError("one stream carries one slot")
            if chunk.last:
                return await self._finish_import(record, chunk, snapshot_keys)
            snapshot_keys += self._apply_chunk(record, chunk)
        raise MoveError("the stream ended without its last chunk")

    def _apply_chunk(self, record: node_pb2.SlotMove, chunk: node_pb2.SlotChunk) -> int:
        """Stage one chunk (unsynced: the IMPORTED record's synced write makes it durable);
        the number of snapshot keys it held."""
        if problem := ops_problem(record.slot, chunk.ops, self._storage.slots_total):
            raise MoveError(f"slot {record.slot}: {problem}")
        tally = self._tally(record)
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
                if tally is not None:
                    tally.change(op.key, None, op.value)
            record.digest = digest & MASK
            self._storage.write_unsynced(batch)
            return len(chunk.ops)
        if chunk.seq <= record.last_seq:
            return 0  # applied already: log entries are idempotent by seq
        if chunk.seq != record.last_seq + 1:
            raise MoveError(f"slot {record.slot}: log entry {chunk.seq} after {record.last_seq} (a gap)")
        ops: list[Op] = [(op.key, None if op.deleted else op.value) for op in chunk.ops]
        changed = digest_change(ops, self._storage.get, tally.change if tally is not None else None)
        record.digest = (record.digest + changed) & MASK
        for key, value in ops:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        record.last_seq = chunk.seq
        self._storage.write_unsynced(batch)
        return 0

    async def _finish_import(
        self, record: node_pb2.SlotMove, chunk: node_pb2.SlotChunk, snapshot_keys: int
    ) -> node_pb2.ImportSlotResponse:
        if chunk.seq != record.last_seq or chunk.digest != record.digest:
            raise MoveError(
                f"slot {record.slot}: staged seq {record.last_seq} digest {record.digest:016x}, the source has"
                f" seq {chunk.seq} digest {chunk.digest:016x}: the copies differ"
            )
        tally = self._tally(record)
        # A staging this process did not see from its start has no tally: read the slot whole.
        problem = tally.problem() if tally is not None else held_problem(self._storage.slot_items(record.slot))
        if problem:
            raise MoveError(f"slot {record.slot}: {problem}")
        self._tallies.pop(record.slot, None)
        imported = node_pb2.SlotMove()
        imported.CopyFrom(record)
        imported.role = node_pb2.IMPORTED
        # Synced in the committer's next group commit (shared with the wave's other imports),
        # which makes everything staged before it durable too: one WAL.
        await self._engine.barrier([(keys.move_key(record.slot), imported.SerializeToString())])
        if self._slots.staged(record.slot) is not record:
            if self._slots.staged(record.slot) is None:  # aborted meanwhile: the record written is stale
                self._storage.delete_now(keys.move_key(record.slot))
            raise StaleMove(f"slot {record.slot}: migration {record.migration_id!r} was aborted meanwhile")
        self._slots.mark_imported(record.slot)
        log.debug(
            "import staged",
            extra={"slot": record.slot, "migration_id": record.migration_id, "seq": record.last_seq},
        )
        return node_pb2.ImportSlotResponse(last_seq=record.last_seq, digest=record.digest, keys=snapshot_keys)

    def _tally(self, record: node_pb2.SlotMove) -> HeldTally | None:
        kept = self._tallies.get(record.slot)
        return kept[1] if kept is not None and kept[0] == record.migration_id else None

    # --- source ---------------------------------------------------------------------------

    async def start_export(self, migration_id: str, slot: int, target: str) -> node_pb2.StartExportResponse:
        self._check_slot(slot)
        entry = self._slots[slot]
        if not entry.owned:
            raise MoveError(f"slot {slot} is not owned by this node (owner {entry.owner!r} at epoch {entry.epoch})")
        if entry.frozen:
            raise MoveError(f"slot {slot} is frozen for another move")
        old = self._exports.get(slot)
        if old is not None:
            if old.migration_id == migration_id:
                raise MoveError(f"slot {slot}: migration {migration_id!r} was started already")
            self._stop_export(old)  # superseded: the controller moved on
        stub = node_pb2_grpc.NodeStub(self._channel(target))
        # One step of the loop: the snapshot's view and the log's first entry meet exactly.
        snapshot = self._storage.slot_items(slot)
        followed = self._changelog.follow(slot)
        call = stub.ImportSlot(timeout=STREAM_TIMEOUT_S)
        export = self._exports[slot] = _Export(migration_id, slot, target, followed, call)
        started = time.perf_counter()
        try:
            async with export.lock:
                count, size = await self._send_snapshot(export, snapshot)
                await self._send_log(export)
        except BaseException:
            if self._exports.get(slot) is export:
                self._stop_export(export)
            raise
        metrics.move_snapshot_s.observe(time.perf_counter() - started)
        log.debug("export caught up", extra={"slot": slot, "migration_id": migration_id, "keys": count, "bytes": size})
        return node_pb2.StartExportResponse(keys=count, bytes=size, seq=export.sent_seq)

    async def _send_snapshot(self, export: _Export, snapshot: Iterator[tuple[bytes, bytes]]) -> tuple[int, int]:
        count = size = 0
        digest = 0
        chunk = node_pb2.SlotChunk(migration_id=export.migration_id, slot=export.slot)
        chunk_bytes = 0
        for key, value in snapshot:
            chunk.ops.add(key=key, value=value)
            digest += key_digest(key, value)
            count += 1
            chunk_bytes += len(key) + len(value)
            if len(chunk.ops) >= CHUNK_KEYS_MAX or chunk_bytes >= CHUNK_BYTES_MAX:
                await self._write(export, chunk)
                size += chunk_bytes
                chunk = node_pb2.SlotChunk(migration_id=export.migration_id, slot=export.slot)
                chunk_bytes = 0
        if chunk.ops:
            await self._write(export, chunk)
            size += chunk_bytes
        export.digest = digest & MASK
        return count, size

    async def _send_log(self, export: _Export) -> None:
        followed = export.followed
        if followed.overflowed:
            raise MoveError(f"slot {export.slot}: the target fell too many batches behind the change log")
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
        except asyncio.InvalidStateError as error:  # the target ended the call: say what it answered
            ended = await _ending(export.call)
            raise MoveError(f"slot {export.slot}: the stream to {export.target} ended early{ended}") from error

    async def freeze(self, migration_id: str, slot: int) -> node_pb2.FreezeSlotResponse:
        self._check_slot(slot)
        export = self._exports.get(slot)
        if export is None or export.migration_id != migration_id:
            raise StaleMove(f"slot {slot}: migration {migration_id!r} is not exporting here")
        if self._slots[slot].state is not SERVING:
            # Frozen already (a FreezeSlot repeated while the first one waits), or lost since
            # the export began: only a slot served here can be frozen.
            raise MoveError(f"slot {slot} is {self._slots[slot].state.value} here: it cannot be frozen")
        record = node_pb2.SlotMove(slot=slot, migration_id=migration_id, role=node_pb2.FROZEN, peer=export.target)
        self._slots.freeze(slot, record)
        started = time.perf_counter()
        async with export.lock:
            # The FROZEN record is durable with the barrier's group commit (one fsync for the
            # freezes of a whole wave), before anything is shipped or answered.
            await self._engine.barrier([(keys.move_key(slot), record.SerializeToString())])
            if self._slots.frozen_for(slot) != migration_id:
                if self._slots.frozen_for(slot) is None:  # aborted meanwhile: the record written is stale
                    self._storage.delete_now(keys.move_key(slot))
                raise StaleMove(f"slot {slot}: migration {migration_id!r} was aborted while freezing")
            self._slots.seal(slot)
            self._changelog.unfollow(slot)
            await self._send_log(export)
            digest = (export.digest + export.followed.digest) & MASK
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
        self._changelog.unfollow(export.slot)
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
            active = True
        staged = self._slots.staged(slot)
        if staged is not None and staged.migration_id == migration_id:
            batch = WriteBatch(raw_mode=True)
            batch.delete_range(*keys.slot_range(slot))
            batch.delete(keys.move_key(slot))
            self._storage.write(batch)
            self._slots.drop_staging(slot)
            self._tallies.pop(slot, None)
            active = True
        if active:
            log.info("move aborted", extra={"slot": slot, "migration_id": migration_id})
        return active

    def _check_slot(self, slot: int) -> None:
        if slot >= self._slots.slots_total:
            raise MoveError(f"slot {slot} is not below slots_total {self._slots.slots_total}")

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = serving.channel(address, self._credentials, _CHANNEL_OPTIONS)
        return channel

    async def close(self) -> None:
        self.stopping = True
        for export in list(self._exports.values()):
            self._stop_export(export)
        for channel in self._channels.values():
            await channel.close()


async def _ending(call: grpc.aio.StreamUnaryCall[node_pb2.SlotChunk, node_pb2.ImportSlotResponse]) -> str:
    """How a call the target ended was answered (its refusal, for the controller to pass on),
    or "" if that is not known within a second."""
    try:
        async with asyncio.timeout(1.0):
            code, details = await call.code(), await call.details()
    except (TimeoutError, grpc.RpcError):
        return ""
    if code == grpc.StatusCode.CANCELLED:
        return ""  # this side gave the move up (an abort): nothing the target said
    return f": the target answered {code.name}: {details}"
