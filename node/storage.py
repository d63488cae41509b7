"""The node's RocksDB: committed reads, range reads, and durable batch writes.

Only committed data is ever in RocksDB: the engine writes a group's WriteBatch with
sync=True and then publishes it here. Keys are node/keys.py's; this module never builds
one of its own.

Shared fsyncs (`write_soon`): a follower's replicated batches wait, for two turns of the
event loop at most, for others to share their fsync: the batches handed in meanwhile (two
primaries' streams woken together, say) are written in order without sync and the last with
sync=True, which makes every one of them durable (RocksDB syncs its write-ahead log up to
that write); any synced write of the node's own (`write`, `put_now`, `delete_now`) and
`flush()` take them the same way, ahead of its own. Each batch's `then` runs right after
that fsync, before anything else can run: what it records (a slot's seq) is never seen
ahead of the data, nor applied after a later table change. Nothing reads a batch still
waiting: they are writes to slots this node follows, and whatever reads those (a promotion)
calls `flush()` first.

RocksDB's background threads (memtable flushes, compactions) run at the lowest CPU priority
(`yield_background_cpu`). At R = 3 every node holds the same bytes, so all of them flush at
the same moment; at the normal priority those flushes took the two cores from the event loops
and each one was a second of p99 spikes (docs/benchmarks.md, "What a follower's checks and
RocksDB's flushes cost R = 3"). This is what RocksDB's own `Env::LowerThreadPoolCPUPriority`
is for (its wiki, "Thread Pool"); rocksdict does not expose it, so the threads, named
"rocksdb:<pool><n>" by RocksDB, are reniced on Linux. They still run whenever a core is free,
and a flush starved for long stalls writes (RocksDB's write stall) rather than losing any.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, RdictIter, WriteBatch, WriteOptions

from node import keys
from node.keys import account_key_of, account_slot, history_prefix_of
from proto import contract, ledger_pb2 as pb, node_pb2
from serving.files import private_dir

log = logging.getLogger("yunkai.node.storage")

BACKGROUND_NICE = 19  # the lowest CPU priority: background work runs on what serving leaves


def yield_background_cpu(nice: int = BACKGROUND_NICE) -> int:
    """Give this process's RocksDB background threads the CPU priority `nice` (see the module);
    the number of threads changed. Linux only (elsewhere, or if /proc cannot be read: 0)."""
    changed = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm", encoding="ascii", errors="replace") as comm:
                if not comm.read().startswith("rocksdb:"):
                    continue
            if os.getpriority(os.PRIO_PROCESS, int(task)) != nice:
                os.setpriority(os.PRIO_PROCESS, int(task), nice)  # a thread's id: Linux's per-thread nice
                changed += 1
        except OSError as error:  # the thread ended meanwhile, or this kernel refuses
            log.debug("a RocksDB thread's priority left as it was", extra={"thread": task, "error": str(error)})
    return changed


class Storage:
    """Committed state: RocksDB plus a bounded cache of committed accounts."""

    def __init__(self, data_dir: str, slots_total: int, account_cache_max: int = 1_000_000) -> None:
        private_dir(data_dir)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.increase_parallelism(2)
        table = BlockBasedOptions()
        # Most point reads of a new transfer's key miss: a bloom filter answers them
        # without reading blocks. 10 bits/key is RocksDB's usual ~1% false positives.
        table.set_bloom_filter(10, False)
        table.set_block_cache(Cache(256 * 1024 * 1024))
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(64 * 1024 * 1024)
        # Point reads of a new transfer's key miss in the memtable too: a whole-key bloom
        # filter there saves the skiplist walk (RocksDB's memtable_whole_key_filtering).
        options.set_memtable_prefix_bloom_ratio(0.1)
        options.set_memtable_whole_key_filtering(True)
        self.db = Rdict(os.path.join(data_dir, "rocksdb"), options)
        yield_background_cpu()  # its threads start with the first database a process opens
        self.slots_total = slots_total
        self._sync = WriteOptions()
        self._sync.sync = True
        # Batches waiting to share an fsync (see the module): (batch, then, done).
        self._soon: list[tuple[WriteBatch, Callable[[], None], asyncio.Future[None]]] = []
        self._flush_scheduled = False
        # id -> (committed account, its serialized bytes). Entries are never mutated:
        # writers copy, and publish() replaces whole entries after the batch is durable.
        self._accounts: dict[str, tuple[pb.Account, bytes]] = {}
        self._account_cache_max = account_cache_max

    def close(self) -> None:
        self.db.close()

    # --- node metadata -----------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """One committed value by its key (node/keys.py), or None."""
        value = self.db.get(key)
        return None if value is None else bytes(value)

    def put_now(self, key: bytes, value: bytes) -> None:
        """Write one value durably, outside the group commit (startup, admin)."""
        batch = WriteBatch(raw_mode=True)
        batch.put(key, value)
        self._write_synced(batch)

    def delete_now(self, key: bytes) -> None:
        """Delete one key durably, outside the group commit."""
        batch = WriteBatch(raw_mode=True)
        batch.delete(key)
        self._write_synced(batch)

    # --- ranges --------------------------------------------------------------------------

    def items(self, begin: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The committed (key, value) pairs in [begin, end), in key order. The view is
        RocksDB's as of the call (the iterator is opened before this returns), so a caller can
        pair it exactly with whatever it starts in the same step of the event loop."""
        it = self.db.iter()
        it.seek(begin)
        return _walk(it, end)

    def slot_items(self, slot: int) -> Iterator[tuple[bytes, bytes]]:
        """Every committed key of a slot's range, opened now (see `items`)."""
        return self.items(*keys.slot_range(slot))

    # --- committed reads ---------------------------------------------------------------

    def account_entry(self, account_id: str) -> tuple[pb.Account, bytes] | None:
        """The committed account and its bytes (never mutate the account)."""
        entry = self._accounts.get(account_id)
        if entry is not None:
            return entry
        raw = self.db.get(account_key_of(account_id, self.slots_total))
        if raw is None:
            return None
        data = bytes(raw)
        account = pb.Account.FromString(data)
        assert account.id == account_id, (account.id, account_id)
        entry = (account, data)
        self._cache_account(account_id, entry)
        return entry

    def account_creation(self, account_id: str) -> pb.Account | None:
        raw = self.db.get(keys.creation_key(account_slot(account_id, self.slots_total), account_id))
        return None if raw is None else pb.Account.FromString(bytes(raw))

    def transfer(self, debit_account_id: str, transfer_id: str) -> pb.Transfer | None:
        # Not through transfer_bytes: every new transfer's id is looked up here (one call less).
        slot = account_slot(debit_account_id, self.slots_total)
        raw = self.db.get(keys.transfer_key(slot, debit_account_id, transfer_id))
        if raw is None:
            return None
        transfer = pb.Transfer.FromString(bytes(raw))
        assert transfer.debit_account_id == debit_account_id and transfer.id == transfer_id
        return transfer

    def transfer_bytes(self, debit_account_id: str, transfer_id: str) -> bytes | None:
        slot = account_slot(debit_account_id, self.slots_total)
        raw = self.db.get(keys.transfer_key(slot, debit_account_id, transfer_id))
        return None if raw is None else bytes(raw)

    def change(self, account_id: str, change_id: str) -> pb.AccountChange | None:
        raw = self.db.get(keys.change_key(account_slot(account_id, self.slots_total), account_id, change_id))
        return None if raw is None else pb.AccountChange.FromString(bytes(raw))

    def history(self, account_id: str, cursor: int, newest_first: bool, limit: int) -> tuple[list[bytes], int]:
        """Up to `limit` history events of an account after `cursor` (a timestamp, 0 =
        from the start chosen), and the cursor of the next page (0 if none)."""
        # A caller's cursor is checked where the request is parsed (contract.malformed_history):
        # one past it must fit a history key's 8 bytes.
        assert 0 <= cursor <= contract.HISTORY_CURSOR_MAX, cursor
        prefix = history_prefix_of(account_id, self.slots_total)
        it = self.db.iter()
        if newest_first:
            start = cursor - 1 if cursor else (1 << 64) - 1
            if start < 0:
                return [], 0
            it.seek_for_prev(keys.history_key(prefix, start))
        else:
            it.seek(keys.history_key(prefix, cursor + 1 if cursor else 0))
        events: list[bytes] = []
        last = 0
        while it.valid():
            timestamp = keys.history_timestamp(prefix, bytes(it.key()))
            if timestamp is None:
                break
            if len(events) == limit:
                return events, last
            events.append(bytes(it.value()))
            last = timestamp
            if newest_first:
                it.prev()
            else:
                it.next()
        return events, 0

    def pending_expiries(self, slots: Iterable[int]) -> Iterator[tuple[int, int, str, str]]:
        """(expires_at, slot, debit_account_id, transfer_id) of the slots' expiring pendings."""
        for slot in slots:
            prefix = keys.expiry_prefix(slot)
            for key, _value in self.items(prefix, keys.slot_range(slot)[1]):
                if not key.startswith(prefix):
                    break
                expires_at, debit, transfer_id = keys.parse_expiry(prefix, key)
                yield expires_at, slot, debit, transfer_id

    def slot_accounts(self, slot: int) -> Iterator[pb.Account]:
        """Every committed account of a slot (a recount of node/books.py: startup, a slot gained)."""
        for _key, value in self.items(*keys.account_range(slot)):
            yield pb.Account.FromString(value)

    def outbox_entry(self, key: bytes) -> node_pb2.CreditLeg | None:
        raw = self.db.get(key)
        return None if raw is None else node_pb2.CreditLeg.FromString(bytes(raw))

    def outbox_entries(self, slots: Iterable[int]) -> Iterator[tuple[bytes, node_pb2.CreditLeg]]:
        """(key, leg) of every outbox entry of the slots."""
        for slot in slots:
            prefix = keys.outbox_prefix(slot)
            for key, value in self.items(prefix, keys.slot_range(slot)[1]):
                if not key.startswith(prefix):
                    break
                yield key, node_pb2.CreditLeg.FromString(value)

    def applied_leg(self, key: bytes) -> node_pb2.AppliedLeg | None:
        raw = self.db.get(key)
        return None if raw is None else node_pb2.AppliedLeg.FromString(bytes(raw))

    # --- writes -------------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> None:
        """Write a batch durably (fsync'd WAL) before returning.

        Called on the event loop itself: rocksdict holds the GIL for the whole write
        (measured: a spinning thread got 2% of its solo rate during 80k-key writes), so a
        writer thread would only add GIL hand-offs and make each write ~3x slower. Batches
        waiting in `write_soon` go first, in the same fsync."""
        self._write_synced(batch)

    def write_soon(self, batch: WriteBatch, then: Callable[[], None]) -> asyncio.Future[None]:
        """Write `batch` durably, sharing its fsync (see the module): the future is done once
        it is, and `then` has run right after that fsync. On the event loop only."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._soon.append((batch, then, done))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # Two turns: handlers woken on the same turn as this one hand theirs in first.
            loop.call_soon(loop.call_soon, self._flush_scheduled_now)
        return done

    def flush(self) -> None:
        """Make every batch waiting in `write_soon` durable now (before reading what they write)."""
        if self._soon:
            self._write_synced(None)

    def write_unsynced(self, batch: WriteBatch) -> None:
        """Write without waiting for the disk: only for a slot being staged by a move, which
        is made durable by a later synced write before anything depends on it."""
        self.flush()
        self.db.write(batch)

    def _flush_scheduled_now(self) -> None:
        self._flush_scheduled = False
        if self._soon:
            with contextlib.suppress(Exception):  # each waiting writer gets the error from its future
                self._write_synced(None)

    def _write_synced(self, batch: WriteBatch | None) -> None:
        """The batches waiting in `write_soon`, then `batch`, with one fsync at the last."""
        waiting, self._soon = self._soon, []
        batches = [each for each, _then, _done in waiting]
        if batch is not None:
            batches.append(batch)
        try:
            for each in batches[:-1]:
                self.db.write(each)
            self.db.write(batches[-1], self._sync)
        except BaseException as error:
            for _batch, _then, done in waiting:
                if not done.done():
                    done.set_exception(error)
            raise
        for _batch, then, done in waiting:
            then()
            if not done.done():
                done.set_result(None)

    def forget_accounts(self) -> None:
        """Drop every cached account: a slot's range was replaced or deleted by a move."""
        self._accounts.clear()

    def publish_accounts(self, accounts: dict[str, tuple[pb.Account, bytes]]) -> None:
        """Make durably written accounts visible to reads."""
        cache = self._accounts
        cache.update(accounts)
        excess = len(cache) - self._account_cache_max
        if excess > 0:  # oldest first; every entry is committed, so any may go
            for account_id in list(itertools.islice(cache, excess)):
                del cache[account_id]

    def _cache_account(self, account_id: str, entry: tuple[pb.Account, bytes]) -> None:
        cache = self._accounts
        if account_id not in cache and len(cache) >= self._account_cache_max:
            del cache[next(iter(cache))]  # oldest first; every entry is committed
        cache[account_id] = entry


def _walk(it: RdictIter, end: bytes) -> Iterator[tuple[bytes, bytes]]:
    while it.valid():
        key = bytes(it.key())
        if key >= end:
            return
        yield key, bytes(it.value())
        it.next()
