"""The node's store shares fsyncs (node/storage.py): batches handed to `write_soon` around the
same turn of the event loop, and a synced write that comes meanwhile, take one fsync between
them; each batch's `then` runs right after it, before its writer is answered.

Real RocksDB in a temporary directory; the fsyncs are RocksDB's own count ("Cumulative WAL:
... syncs" in its `rocksdb.stats`).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from rocksdict import WriteBatch

from node.storage import Storage

SLOTS = 16


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(str(tmp_path / "node"), SLOTS)
    yield store
    store.close()


def wal(storage: Storage) -> tuple[int, int]:
    """(writes, syncs) of the write-ahead log since the store opened."""
    stats = storage.db.property_value("rocksdb.stats") or ""
    found = re.search(r"Cumulative WAL: (\d+) writes, (\d+) syncs", stats)
    assert found is not None, stats
    return int(found[1]), int(found[2])


def batch(key: bytes, value: bytes) -> WriteBatch:
    each = WriteBatch(raw_mode=True)
    each.put(key, value)
    return each


def test_batches_handed_in_on_one_turn_share_one_fsync_and_run_then_before_their_answer(storage: Storage) -> None:
    seen: list[str] = []

    async def write(name: str) -> None:
        await storage.write_soon(batch(name.encode(), b"v"), lambda: seen.append(f"then {name}"))
        seen.append(f"answered {name}")

    async def main() -> None:
        await asyncio.gather(*(write(name) for name in ("a", "b", "c")))

    before = wal(storage)
    asyncio.run(main())
    after = wal(storage)
    assert (after[0] - before[0], after[1] - before[1]) == (3, 1)
    assert seen[:3] == ["then a", "then b", "then c"] and sorted(seen[3:]) == ["answered a", "answered b", "answered c"]
    assert [storage.get(k) for k in (b"a", b"b", b"c")] == [b"v", b"v", b"v"]


def test_a_synced_write_takes_the_waiting_batches_first_in_its_own_fsync(storage: Storage) -> None:
    async def main() -> list[bool]:
        waiting = storage.write_soon(batch(b"k", b"follower"), lambda: None)
        storage.write(batch(b"k", b"own"))  # after the waiting one: it wins
        done = waiting.done()
        await waiting
        return [done]

    before = wal(storage)
    assert asyncio.run(main()) == [True]
    after = wal(storage)
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
    assert storage.get(b"k") == b"own"


def test_flush_makes_the_waiting_batches_durable_at_once(storage: Storage) -> None:
    async def main() -> bool:
        waiting = storage.write_soon(batch(b"f", b"v"), lambda: None)
        storage.flush()
        storage.flush()  # nothing waits: no write
        return waiting.done()

    before = wal(storage)
    assert asyncio.run(main())
    after = wal(storage)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert storage.get(b"f") == b"v"


def test_a_failed_write_reaches_every_writer_waiting_on_it(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "node"), SLOTS)
    storage.db.close()  # every write now fails

    async def main() -> list[str]:
        waiting = [storage.write_soon(batch(k, b"v"), lambda: None) for k in (b"x", b"y")]
        return [type(error).__name__ for error in await asyncio.gather(*waiting, return_exceptions=True)]

    assert asyncio.run(main()) == ["DbClosedError", "DbClosedError"]


def test_rocksdbs_background_threads_run_at_the_lowest_cpu_priority_and_serving_threads_keep_theirs(
    storage: Storage, tmp_path: Path
) -> None:
    """Flushes and compactions yield the CPU to the event loop (node/storage.py): once a store
    is open, every RocksDB thread of the process ("rocksdb:low0", "rocksdb:high0", ...) has nice
    19, and the thread that opened it keeps its own. A second store changes nothing more."""

    def priorities() -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for task in os.listdir("/proc/self/task"):
            name = Path(f"/proc/self/task/{task}/comm").read_text().strip()
            found.setdefault(name, []).append(os.getpriority(os.PRIO_PROCESS, int(task)))
        return found

    background = {name: nices for name, nices in priorities().items() if name.startswith("rocksdb:")}
    assert background, priorities()  # RocksDB starts its pools when the first store opens
    assert all(nice == 19 for nices in background.values() for nice in nices), background
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert own < 19, own
    second = Storage(str(tmp_path / "second"), SLOTS)
    try:
        after = {name: nices for name, nices in priorities().items() if name.startswith("rocksdb:")}
        assert all(nice == 19 for nices in after.values() for nice in nices), after
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
    finally:
        second.close()
