"""The behavioural side's durable records, in one RocksDB (rocksdict) under --data-dir, as JSON.

Keys: `r/<run>` a run (its business date); `a/<run>/<customer>` an assessment (what the
behaviour job decided and why, and the ledger's answer); `w/<customer>` the customer's
current warning level (their latest assessment); `t/<run>/<customer>` a follow-up task (a
call or a visit) and its outcome. Run ids and customers have no '/', so keys never collide.
Every write is fsync'd, and records are checked after they are read (the key says whose
they are).

Batches (`write`) and long scans (`run`) go to the store's own worker thread, so the event
loop keeps serving decisions meanwhile; a batch, once started, finishes even if its caller
is cancelled (the caller waits for it, so a lock it holds covers the write), and `close`
waits for the worker before closing the database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from rocksdict import WriteBatch

import serving

T = TypeVar("T")


class AssessmentStore:
    """JSON records by key, for one process and one event loop."""

    def __init__(self, data_dir: str) -> None:
        self._db, self._sync = serving.open_store(data_dir, "behaviour")
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="assessments")

    def close(self) -> None:
        self._worker.shutdown(wait=True)  # nothing in flight writes to a closed database
        self._db.close()

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in the store's worker thread; it finishes even if the caller is cancelled."""
        running = asyncio.get_running_loop().run_in_executor(self._worker, work, *args)
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            await running  # the caller's locks must outlive the write
            raise

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
        """Store records by key in one fsync'd batch, in the worker thread."""
        if not records:
            return
        batch = WriteBatch(raw_mode=True)
        for key, record in records.items():
            record["key"] = key
            batch.put(key.encode(), json.dumps(record, sort_keys=True).encode())
        await self.run(self._db.write, batch, self._sync)

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
