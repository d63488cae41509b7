"""The node's RocksDB: key layout, committed reads, and durable batch writes.

Key layout (DESIGN section 4): everything of a slot lives under `<slot:2 bytes BE>` so a
slot is one contiguous range to snapshot, stream and delete.

    <slot> A <account_id>                          account (current balances), pb.Account
    <slot> O <account_id>                          account as opened (for create replays)
    <slot> T <debit_account_id> 00 <transfer_id>   transfer, pb.Transfer
    <slot> H <account_id> 00 <timestamp:8 BE>      history event, pb.Transfer as of then
    <slot> C <account_id> 00 <change_id>           account change journal, pb.AccountChange
    <slot> X <expires_at:8 BE> <debit> 00 <id>     pending transfer expiry index
    <slot> B <debit> 00 <subject> 00 <kind:1>      outbox entry (debit slot), node.v1.CreditLeg
    <slot> L <debit> 00 <transfer_id> 00 <kind:1>  applied credit leg (credit slot), node.v1.AppliedLeg
    FF FF <name>                                   node metadata (clock, slot table,
                                                   slot moves: node/slotmove.py)

The outbox and applied-leg records are node/outbox.py's; `kind` is the LegKind number.

Ids never contain 00, so it separates the parts. Only committed data is ever in RocksDB:
the engine writes a group's WriteBatch with sync=True and then publishes it here.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Iterable, Iterator

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteOptions

from proto import ledger_pb2 as pb, node_pb2
from router.slots import slot_of

NODE_META = b"\xff\xff"
_U64 = 8


@functools.lru_cache(maxsize=1 << 18)
def account_slot(account_id: str, slots_total: int) -> int:
    """`slot_of`, memoised: a node needs an account's slot several times per event."""
    return slot_of(account_id, slots_total)


@functools.lru_cache(maxsize=1 << 18)
def account_key_of(account_id: str, slots_total: int) -> bytes:
    """`account_key` for an id, memoised: every transfer writes two accounts."""
    return account_key(slot_of(account_id, slots_total), account_id)


@functools.lru_cache(maxsize=1 << 18)
def history_prefix_of(account_id: str, slots_total: int) -> bytes:
    """`history_prefix` for an id, memoised: every transfer appends to two histories."""
    return history_prefix(slot_of(account_id, slots_total), account_id)


def slot_prefix(slot: int) -> bytes:
    return slot.to_bytes(2, "big")


def account_key(slot: int, account_id: str) -> bytes:
    return slot.to_bytes(2, "big") + b"A" + account_id.encode()


def creation_key(slot: int, account_id: str) -> bytes:
    return slot.to_bytes(2, "big") + b"O" + account_id.encode()


def transfer_key(slot: int, debit_account_id: str, transfer_id: str) -> bytes:
    return slot.to_bytes(2, "big") + b"T" + debit_account_id.encode() + b"\x00" + transfer_id.encode()


def history_prefix(slot: int, account_id: str) -> bytes:
    return slot.to_bytes(2, "big") + b"H" + account_id.encode() + b"\x00"


def change_key(slot: int, account_id: str, change_id: str) -> bytes:
    return slot.to_bytes(2, "big") + b"C" + account_id.encode() + b"\x00" + change_id.encode()


def expiry_key(slot: int, expires_at: int, debit_account_id: str, transfer_id: str) -> bytes:
    return (
        slot.to_bytes(2, "big")
        + b"X"
        + expires_at.to_bytes(_U64, "big")
        + debit_account_id.encode()
        + b"\x00"
        + transfer_id.encode()
    )


def outbox_key(slot: int, debit_account_id: str, subject_id: str, kind: int) -> bytes:
    return (
        slot.to_bytes(2, "big")
        + b"B"
        + debit_account_id.encode()
        + b"\x00"
        + subject_id.encode()
        + b"\x00"
        + kind.to_bytes(1, "big")
    )


def applied_leg_key(slot: int, debit_account_id: str, transfer_id: str, kind: int) -> bytes:
    return (
        slot.to_bytes(2, "big")
        + b"L"
        + debit_account_id.encode()
        + b"\x00"
        + transfer_id.encode()
        + b"\x00"
        + kind.to_bytes(1, "big")
    )


class Storage:
    """Committed state: RocksDB plus a bounded cache of committed accounts."""

    def __init__(self, data_dir: str, slots_total: int, account_cache_max: int = 1_000_000) -> None:
        os.makedirs(data_dir, exist_ok=True)
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
        self.slots_total = slots_total
        self._sync = WriteOptions()
        self._sync.sync = True
        # id -> (committed account, its serialized bytes). Entries are never mutated:
        # writers copy, and publish() replaces whole entries after the batch is durable.
        self._accounts: dict[str, tuple[pb.Account, bytes]] = {}
        self._account_cache_max = account_cache_max

    def close(self) -> None:
        self.db.close()

    # --- node metadata -----------------------------------------------------------------

    def meta_get(self, name: str) -> bytes | None:
        value = self.db.get(NODE_META + name.encode())
        return None if value is None else bytes(value)

    def meta_range(self, begin: bytes, end: bytes) -> Iterator[bytes]:
        """The values of the metadata keys in [begin, end)."""
        it = self.db.iter()
        it.seek(begin)
        while it.valid() and bytes(it.key()) < end:
            yield bytes(it.value())
            it.next()

    def meta_put_now(self, name: str, value: bytes) -> None:
        """Write one metadata value durably, outside the group commit (startup, admin)."""
        batch = WriteBatch(raw_mode=True)
        batch.put(NODE_META + name.encode(), value)
        self.db.write(batch, self._sync)

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
        raw = self.db.get(creation_key(account_slot(account_id, self.slots_total), account_id))
        return None if raw is None else pb.Account.FromString(bytes(raw))

    def transfer(self, debit_account_id: str, transfer_id: str) -> pb.Transfer | None:
        slot = account_slot(debit_account_id, self.slots_total)
        raw = self.db.get(transfer_key(slot, debit_account_id, transfer_id))
        if raw is None:
            return None
        transfer = pb.Transfer.FromString(bytes(raw))
        assert transfer.debit_account_id == debit_account_id and transfer.id == transfer_id
        return transfer

    def transfer_bytes(self, debit_account_id: str, transfer_id: str) -> bytes | None:
        slot = account_slot(debit_account_id, self.slots_total)
        raw = self.db.get(transfer_key(slot, debit_account_id, transfer_id))
        return None if raw is None else bytes(raw)

    def change(self, account_id: str, change_id: str) -> pb.AccountChange | None:
        raw = self.db.get(change_key(account_slot(account_id, self.slots_total), account_id, change_id))
        return None if raw is None else pb.AccountChange.FromString(bytes(raw))

    def history(self, account_id: str, cursor: int, newest_first: bool, limit: int) -> tuple[list[bytes], int]:
        """Up to `limit` history events of an account after `cursor` (a timestamp, 0 =
        from the start chosen), and the cursor of the next page (0 if none)."""
        prefix = history_prefix_of(account_id, self.slots_total)
        it = self.db.iter()
        if newest_first:
            start = cursor - 1 if cursor else (1 << 64) - 1
            if start < 0:
                return [], 0
            it.seek_for_prev(prefix + start.to_bytes(_U64, "big"))
        else:
            it.seek(prefix + (cursor + 1 if cursor else 0).to_bytes(_U64, "big"))
        events: list[bytes] = []
        last = 0
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix) or len(key) != len(prefix) + _U64:
                break
            if len(events) == limit:
                return events, last
            events.append(bytes(it.value()))
            last = int.from_bytes(key[len(prefix) :], "big")
            if newest_first:
                it.prev()
            else:
                it.next()
        return events, 0

    def pending_expiries(self, slots: Iterable[int]) -> Iterator[tuple[int, int, str, str]]:
        """(expires_at, slot, debit_account_id, transfer_id) of the slots' expiring pendings."""
        it = self.db.iter()
        for slot in slots:
            prefix = slot_prefix(slot) + b"X"
            it.seek(prefix)
            while it.valid():
                key = bytes(it.key())
                if not key.startswith(prefix):
                    break
                rest = key[len(prefix) :]
                debit, _, transfer_id = rest[_U64:].partition(b"\x00")
                yield int.from_bytes(rest[:_U64], "big"), slot, debit.decode(), transfer_id.decode()
                it.next()

    def outbox_entry(self, key: bytes) -> node_pb2.CreditLeg | None:
        raw = self.db.get(key)
        return None if raw is None else node_pb2.CreditLeg.FromString(bytes(raw))

    def outbox_entries(self, slots: Iterable[int]) -> Iterator[tuple[bytes, node_pb2.CreditLeg]]:
        """(key, leg) of every outbox entry of the slots."""
        it = self.db.iter()
        for slot in slots:
            prefix = slot_prefix(slot) + b"B"
            it.seek(prefix)
            while it.valid():
                key = bytes(it.key())
                if not key.startswith(prefix):
                    break
                yield key, node_pb2.CreditLeg.FromString(bytes(it.value()))
                it.next()

    def applied_leg(self, key: bytes) -> node_pb2.AppliedLeg | None:
        raw = self.db.get(key)
        return None if raw is None else node_pb2.AppliedLeg.FromString(bytes(raw))

    # --- writes -------------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> None:
        """Write a batch durably (fsync'd WAL) before returning.

        Called on the event loop itself: rocksdict holds the GIL for the whole write
        (measured: a spinning thread got 2% of its solo rate during 80k-key writes), so a
        writer thread would only add GIL hand-offs and make each write ~3x slower."""
        self.db.write(batch, self._sync)

    def write_unsynced(self, batch: WriteBatch) -> None:
        """Write without waiting for the disk: only for a slot being staged by a move, which
        is made durable by a later synced write before anything depends on it."""
        self.db.write(batch)

    def raw_get(self, key: bytes) -> bytes | None:
        value = self.db.get(key)
        return None if value is None else bytes(value)

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
