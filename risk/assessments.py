"""The behavioural side's durable records, in one RocksDB (rocksdict) under --data-dir, as JSON.

Keys: `a/<run>/<customer>` an assessment (what the behaviour job decided and why, and the
ledger's answer); `w/<customer>` the customer's current warning level (their latest
assessment); `t/<run>/<customer>` a follow-up task (a call or a visit) and its outcome.
Run ids and customers have no '/', so keys never collide. Every write is fsync'd, and records
are checked after they are read (the key says whose they are).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

from rocksdict import WriteBatch

from proto import serving


class AssessmentStore:
    """JSON records by key. Synchronous: one process, one event loop, one write at a time."""

    def __init__(self, data_dir: str) -> None:
        self._db, self._sync = serving.open_store(data_dir, "behaviour")

    def close(self) -> None:
        self._db.close()

    def get(self, key: str) -> dict[str, Any] | None:
        raw: bytes | None = self._db.get(key.encode())
        if raw is None:
            return None
        record: dict[str, Any] = json.loads(raw)
        assert record["key"] == key, (record["key"], key)
        return record

    def put(self, key: str, record: dict[str, Any]) -> None:
        record["key"] = key
        self._db.put(key.encode(), json.dumps(record, sort_keys=True).encode(), self._sync)

    async def write(self, records: dict[str, dict[str, Any]]) -> None:
        """Store records by key in one fsync'd batch, written in a worker thread (the event
        loop keeps serving decisions while the disk syncs)."""
        if not records:
            return
        batch = WriteBatch(raw_mode=True)
        for key, record in records.items():
            record["key"] = key
            batch.put(key.encode(), json.dumps(record, sort_keys=True).encode())
        await asyncio.to_thread(self._db.write, batch, self._sync)

    def scan(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Records whose key starts with `prefix`, in key order."""
        start = prefix.encode()
        for key, value in self._db.items(from_key=start):
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if not key.startswith(start):
                return
            record: dict[str, Any] = json.loads(value)
            assert record["key"] == key.decode(), key
            yield record
