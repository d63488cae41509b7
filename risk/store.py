"""The decision log: every decision, durably, with what it was decided on (RocksDB via rocksdict).

Keys (raw bytes): `d/<application_id>` -> the Decision (inputs, model versions and scores,
flow version and hash, outputs); `r/<application_id>` -> the DecideRequest it answered, so a
repeated request can be told from a different one under the same id. Both go in one
fsync'd batch before the caller is answered; a decision is rewritten only to mark its credit
line opened. Records are checked after they are read (the key says whose they are).

Group commit: `put` queues the decision and waits; one writer at a time takes everything
queued, writes it as one batch with one fsync in a worker thread (so the event loop keeps
serving while the disk syncs), and answers every waiter. Under load, one fsync carries many
decisions; alone, a decision waits for its own fsync only. At most DECISIONS_PER_BATCH_MAX go
in one batch.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from rocksdict import WriteBatch

import serving
from proto import risk_pb2 as pb

DECISIONS_PER_BATCH_MAX = 512


def _key(kind: str, application_id: str) -> bytes:
    return f"{kind}/{application_id}".encode()


class DecisionStore:
    """Stored decisions by application id. Synchronous: one event loop calls it, one write at a time."""

    def __init__(self, data_dir: str) -> None:
        self._db, self._sync = serving.open_store(data_dir, "decisions")
        self._queued: list[tuple[pb.DecideRequest, pb.Decision, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    def close(self) -> None:
        self._db.close()

    def get(self, application_id: str) -> tuple[pb.DecideRequest, pb.Decision] | None:
        decision_bytes: bytes | None = self._db.get(_key("d", application_id))
        if decision_bytes is None:
            return None
        decision = pb.Decision.FromString(decision_bytes)
        request_bytes = self._db.get(_key("r", application_id))
        assert request_bytes is not None, f"decision {application_id} has no request"
        request = pb.DecideRequest.FromString(request_bytes)
        assert decision.application_id == request.application_id == application_id, application_id
        return request, decision

    async def put(self, request: pb.DecideRequest, decision: pb.Decision) -> None:
        """Store a decision durably (returns once it is fsync'd; raises what the write raised)."""
        assert request.application_id == decision.application_id
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((request, decision, done))
        if self._writer is None:
            # The writer outlives no waiter: it ends when the queue is empty, and hands any
            # failure to every decision it was writing (each waiter raises it).
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())
        await asyncio.shield(done)  # a cancelled caller must not cancel the others' write

    async def _write_queued(self) -> None:
        try:
            while self._queued:
                taken = self._queued[:DECISIONS_PER_BATCH_MAX]
                del self._queued[:DECISIONS_PER_BATCH_MAX]
                batch = WriteBatch(raw_mode=True)
                for request, decision, _ in taken:
                    batch.put(_key("r", request.application_id), request.SerializeToString(deterministic=True))
                    batch.put(_key("d", decision.application_id), decision.SerializeToString(deterministic=True))
                try:
                    await asyncio.to_thread(self._db.write, batch, self._sync)
                except Exception as error:
                    for _, _, done in taken:
                        done.set_exception(error)
                    continue
                for _, _, done in taken:
                    done.set_result(None)
        finally:
            self._writer = None

    def mark_opened(self, decision: pb.Decision, line_id: str) -> None:
        decision.credit_line_opened = True
        decision.credit_line_id = line_id
        self._db.put(_key("d", decision.application_id), decision.SerializeToString(deterministic=True), self._sync)

    def report(self, date_from: str, date_to: str) -> list[pb.ProductDecisions]:
        """Decisions counted per product and outcome, decided between the two UTC dates
        (YYYY-MM-DD, inclusive; "" for no bound). A scan of the log: call it off the event loop."""
        counts: dict[str, pb.ProductDecisions] = {}
        for key, value in self._db.items(from_key=b"d/"):
            assert isinstance(key, bytes), key
            if not key.startswith(b"d/"):
                break
            decision = pb.Decision.FromString(value)
            day = datetime.fromtimestamp(decision.decided_at_unix_ms / 1000, UTC).date().isoformat()
            if (date_from and day < date_from) or (date_to and day > date_to):
                continue
            counted = counts.setdefault(decision.product, pb.ProductDecisions(product=decision.product))
            counted.decided += 1
            if decision.outcome == pb.APPROVE:
                counted.approved += 1
                counted.limits_approved += decision.limit_fen
                counted.lines_opened += decision.credit_line_opened
            elif decision.outcome == pb.DECLINE:
                counted.declined += 1
            else:
                assert decision.outcome == pb.REFER, decision.outcome
                counted.referred += 1
        return [counts[product] for product in sorted(counts)]
