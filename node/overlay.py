"""One commit cycle's writes: the overlay the committer applies events to, and the WriteBatch it becomes.

The overlay is the state machine's and the outbox's `Store` (node/state_machine.py,
node/outbox.py) during one group commit: reads fall through to committed state, writes stay
in memory until the committer turns them into one WriteBatch (`write_batch`) and writes it
with sync=True. Nothing here is visible to readers before that write.
"""

from __future__ import annotations

from collections.abc import Callable

from rocksdict import WriteBatch

from node import keys, outbox, state_machine as sm
from node.changelog import Op
from node.keys import account_key_of, account_slot, history_prefix_of
from node.storage import Storage
from proto import ledger_pb2 as pb, node_pb2


class Overlay:
    """One commit cycle's uncommitted writes over committed state (a `sm.Store`)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._slots_total = storage.slots_total
        self.accounts: dict[str, pb.Account] = {}  # read-for-write copies
        self.dirty_accounts: dict[str, pb.Account] = {}
        self._committed: dict[str, pb.Account] = {}  # each account read, as committed (never mutated)
        self.creations: dict[str, pb.Account] = {}
        self.transfers: dict[tuple[str, str], pb.Transfer] = {}
        self.changes: dict[tuple[str, str], pb.AccountChange] = {}
        # History is a snapshot of each event, serialized when appended: a record can change
        # again later in the same cycle (a pending posted in the same batch).
        self.history: list[tuple[str, int, bytes]] = []
        self._history_last: tuple[pb.Transfer, bytes] | None = None
        self.expiry_set: list[tuple[int, str, str]] = []
        self.expiry_clear: list[tuple[int, str, str]] = []
        self.outbox: dict[bytes, node_pb2.CreditLeg | None] = {}  # None: deleted
        self.applied_legs: dict[bytes, node_pb2.AppliedLeg] = {}
        self.settled: list[pb.Transfer] = []
        self.records: dict[bytes, bytes] = {}  # node/records.py: key -> ledger.v1.Record
        self.across = 0  # what the cycle's cross-node transitions moved (node/books.py's position)
        # (slot, debits, credits) by which write_batch found each account written moved: node/books.py
        self.moved: list[tuple[int, int, int]] = []

    def get_account(self, account_id: str) -> pb.Account | None:
        account = self.accounts.get(account_id)
        if account is None:
            entry = self._storage.account_entry(account_id)
            if entry is None:
                return None
            account = pb.Account()
            account.CopyFrom(entry[0])
            self.accounts[account_id] = account
            self._committed[account_id] = entry[0]
        return account

    def put_account(self, account: pb.Account) -> None:
        assert account.debits_pending >= 0 and account.credits_pending >= 0, account
        assert account.debits_posted >= 0 and account.credits_posted >= 0, account
        self.accounts[account.id] = account
        self.dirty_accounts[account.id] = account

    def get_account_creation(self, account_id: str) -> pb.Account | None:
        creation = self.creations.get(account_id)
        return creation if creation is not None else self._storage.account_creation(account_id)

    def put_account_creation(self, account: pb.Account) -> None:
        self.creations[account.id] = account

    def get_transfer(self, debit_account_id: str, transfer_id: str) -> pb.Transfer | None:
        transfer = self.transfers.get((debit_account_id, transfer_id))
        return transfer if transfer is not None else self._storage.transfer(debit_account_id, transfer_id)

    def put_transfer(self, transfer: pb.Transfer) -> None:
        self.transfers[(transfer.debit_account_id, transfer.id)] = transfer

    def append_history(self, account: pb.Account, transfer: pb.Transfer) -> None:
        if account.flags & sm.NO_HISTORY:
            return
        # The state machine appends an event's debit and credit entries back to back, with
        # no change between them, so the second reuses the first's bytes.
        last = self._history_last
        if last is not None and last[0] is transfer:
            data = last[1]
        else:
            data = transfer.SerializeToString()
            self._history_last = (transfer, data)
        self.history.append((account.id, transfer.timestamp, data))

    def get_change(self, account_id: str, change_id: str) -> pb.AccountChange | None:
        change = self.changes.get((account_id, change_id))
        return change if change is not None else self._storage.change(account_id, change_id)

    def put_change(self, change: pb.AccountChange) -> None:
        self.changes[(change.account_id, change.id)] = change

    def pending_expiry_set(self, transfer: pb.Transfer, expires_at: int) -> None:
        self.expiry_set.append((expires_at, transfer.debit_account_id, transfer.id))

    def pending_expiry_clear(self, transfer: pb.Transfer, expires_at: int) -> None:
        self.expiry_clear.append((expires_at, transfer.debit_account_id, transfer.id))

    def append_history_at(self, account: pb.Account, event: pb.Transfer, at: int) -> None:
        """A history entry keyed by this node's time `at` rather than the event's own
        timestamp (a cross-node event: the two nodes' clocks are not one sequence)."""
        if not account.flags & sm.NO_HISTORY:
            self.history.append((account.id, at, event.SerializeToString()))

    def get_outbox(self, debit_account_id: str, subject_id: str, kind: int) -> node_pb2.CreditLeg | None:
        key = keys.outbox_key(account_slot(debit_account_id, self._slots_total), debit_account_id, subject_id, kind)
        if key in self.outbox:
            return self.outbox[key]
        return self._storage.outbox_entry(key)

    def _outbox_key(self, leg: node_pb2.CreditLeg) -> bytes:
        slot = account_slot(leg.debit_account_id, self._slots_total)
        return keys.outbox_key(slot, leg.debit_account_id, outbox.subject_of(leg), leg.kind)

    def put_outbox(self, leg: node_pb2.CreditLeg) -> None:
        key = self._outbox_key(leg)
        # Paired with apply_leg_result's check: an entry is written only over nothing.
        assert self.get_outbox(leg.debit_account_id, outbox.subject_of(leg), leg.kind) is None, leg
        self.outbox[key] = leg

    def delete_outbox(self, leg: node_pb2.CreditLeg) -> None:
        self.outbox[self._outbox_key(leg)] = None

    def get_applied_leg(
        self, credit_account_id: str, debit_account_id: str, transfer_id: str, kind: int
    ) -> node_pb2.AppliedLeg | None:
        slot = account_slot(credit_account_id, self._slots_total)
        key = keys.applied_leg_key(slot, debit_account_id, transfer_id, kind)
        applied = self.applied_legs.get(key)
        return applied if applied is not None else self._storage.applied_leg(key)

    def put_applied_leg(self, applied: node_pb2.AppliedLeg) -> None:
        leg = applied.leg
        slot = account_slot(leg.credit_account_id, self._slots_total)
        self.applied_legs[keys.applied_leg_key(slot, leg.debit_account_id, leg.transfer_id, leg.kind)] = applied

    def get_record(self, key: bytes) -> bytes | None:
        """A slot-local record as this cycle left it (node/records.py), serialized."""
        written = self.records.get(key)
        return written if written is not None else self._storage.get(key)

    def put_record(self, key: bytes, value: bytes) -> None:
        self.records[key] = value

    def transfer_settled(self, transfer: pb.Transfer) -> None:
        self.settled.append(transfer)

    def moved_across(self, amount: int) -> None:
        self.across += amount

    def empty(self) -> bool:
        return not (
            self.dirty_accounts
            or self.creations
            or self.transfers
            or self.changes
            or self.outbox
            or self.applied_legs
            or self.records
            or self.expiry_set
            or self.expiry_clear
        )

    def write_batch(
        self, clock_last: int, ops: list[Op] | None = None
    ) -> tuple[WriteBatch, dict[str, tuple[pb.Account, bytes]]]:
        """The cycle's writes as one WriteBatch, and the accounts to publish after it; with
        `ops`, every slot key written is also appended there, in order (for the change log).
        Also lists in `moved` how each account written moves its slot's debits and credits
        (each side posted + pending, as written minus as committed)."""
        total = self._slots_total
        batch = WriteBatch(raw_mode=True)
        published: dict[str, tuple[pb.Account, bytes]] = {}
        put: Callable[[bytes, bytes], None] = batch.put
        delete: Callable[[bytes], None] = batch.delete
        if ops is not None:
            put, delete = _recording(batch, ops)
        committed, moved = self._committed, self.moved
        for account_id, account in self.dirty_accounts.items():
            data = account.SerializeToString()
            key = account_key_of(account_id, total)
            put(key, data)
            published[account_id] = (account, data)
            debits = account.debits_posted + account.debits_pending
            credits = account.credits_posted + account.credits_pending
            before = committed.get(account_id)
            if before is not None:
                debits -= before.debits_posted + before.debits_pending
                credits -= before.credits_posted + before.credits_pending
            if debits or credits:
                moved.append((int.from_bytes(key[: keys.SLOT_BYTES], "big"), debits, credits))
        for account_id, creation in self.creations.items():
            put(keys.creation_key(account_slot(account_id, total), account_id), creation.SerializeToString())
        for (debit_id, transfer_id), transfer in self.transfers.items():
            put(keys.transfer_key(account_slot(debit_id, total), debit_id, transfer_id), transfer.SerializeToString())
        for account_id, timestamp, data in self.history:
            put(keys.history_key(history_prefix_of(account_id, total), timestamp), data)
        for (account_id, change_id), change in self.changes.items():
            put(keys.change_key(account_slot(account_id, total), account_id, change_id), change.SerializeToString())
        for expires_at, debit_id, transfer_id in self.expiry_set:
            put(keys.expiry_key(account_slot(debit_id, total), expires_at, debit_id, transfer_id), b"")
        for expires_at, debit_id, transfer_id in self.expiry_clear:
            delete(keys.expiry_key(account_slot(debit_id, total), expires_at, debit_id, transfer_id))
        for key, leg in self.outbox.items():
            if leg is None:
                delete(key)
            else:
                put(key, leg.SerializeToString())
        for key, applied in self.applied_legs.items():
            put(key, applied.SerializeToString())
        for key, record in self.records.items():
            put(key, record)
        batch.put(keys.CLOCK, clock_last.to_bytes(8, "big"))
        return batch, published


def _recording(batch: WriteBatch, ops: list[Op]) -> tuple[Callable[[bytes, bytes], None], Callable[[bytes], None]]:
    """put and delete that also list each operation in `ops` (only while slots are followed)."""

    def put(key: bytes, value: bytes) -> None:
        batch.put(key, value)
        ops.append((key, value))

    def delete(key: bytes) -> None:
        batch.delete(key)
        ops.append((key, None))

    return put, delete
