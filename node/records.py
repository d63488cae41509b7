"""Slot-local records: a service's own records kept in the slot of their key (DESIGN section 8).

What it is for. Lending keeps each loan and credit line in the slot of the customer's
accounts, so that a loan's state and the money it moves are one commit, replicated and
moved with the slot, and no lending process holds state of its own (several serve one book).
The ledger does not read a record's value; it keeps it, versions it, and commits it.

Protocol (CommitRecords; one `Commit` is one event of the group commit):

  1. Stateless checks, answered before the engine (`check`): every write's key, every
     account's creation (node/state_machine.py's validate_account) and every transfer's ids
     are valid (ID_INVALID, LEDGER_MUST_NOT_BE_ZERO, ... naming the field); every key, every
     account and both accounts of every transfer are in the slot of the first write's key
     (NOT_IN_COMMIT_SLOT naming the field). The request's shape was checked by
     proto/contract.py's malformed_commit.
  2. In the committer, in the cycle's order (`apply`): each write's expected_version is the
     stored record's version now, 0 meaning "absent" (else RECORD_VERSION_MISMATCH naming
     writes[i]), and a record that exists was last written by a caller of the writer's role
     (else RECORD_OF_ANOTHER_ROLE: lending's records are lending's, risk's are risk's, whatever
     their kinds say); then the accounts are opened and the transfers applied, in order, to a
     scratch copy of the cycle's state (`_Scratch`), each with its own timestamp: an account
     missing is created, one there already with the same fields is used as it is (EXISTS);
     if an account or a transfer answers anything but OK or EXISTS, that is the commit's
     answer (field accounts[i].<field> or transfers[i]) and nothing of the commit is applied:
     the scratch is dropped, no rejection is journaled, no account is opened. Otherwise the
     same accounts and transfers are applied for real, with the same timestamps (the state
     machine is deterministic: the same state and inputs give the same outcomes), and each
     record is stored with version + 1, the commit's timestamp and the caller's identity.
     The accounts' timestamps come first, then the transfers', then the records'.
  3. The cycle's WriteBatch carries the records with the transfers (node/overlay.py): one
     fsync, one replication entry, one answer after both. A record is never deleted: a
     service marks one closed in its value.

A caller that lost an answer reads the record again (LookupRecords): the write is there
(its version moved) or not; transfers are idempotent by id, so a commit retried with the
record's new version and the same transfers answers EXISTS for them and moves no money twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from node import keys, state_machine as sm
from node.keys import account_slot
from node.overlay import Overlay
from proto import ledger_pb2 as pb

_SETTLED = frozenset((pb.OK, pb.EXISTS))


def weight(commit: pb.Commit) -> int:
    """The events a commit counts as against a node's queue and a cycle's bounds: one, and one
    per account it opens and per transfer it makes."""
    return 1 + len(commit.accounts) + len(commit.transfers)


def check(commit: pb.Commit, slots_total: int) -> tuple[int, sm.Result | None]:
    """The commit's slot, and its stateless refusal (None: it goes to the committer)."""
    first = commit.writes[0].record.key
    if not sm.id_valid(first):
        return 0, sm.Result(pb.ID_INVALID, "writes[0].record.key")
    slot = account_slot(first, slots_total)
    for index, write in enumerate(commit.writes):
        key = write.record.key
        if not sm.id_valid(key):
            return slot, sm.Result(pb.ID_INVALID, f"writes[{index}].record.key")
        if account_slot(key, slots_total) != slot:
            return slot, sm.Result(pb.NOT_IN_COMMIT_SLOT, f"writes[{index}].record.key")
    for index, account in enumerate(commit.accounts):
        invalid = sm.validate_account(account)
        if invalid is not None:
            return slot, sm.Result(invalid.code, f"accounts[{index}].{invalid.field}" if invalid.field else "")
        if account_slot(account.id, slots_total) != slot:
            return slot, sm.Result(pb.NOT_IN_COMMIT_SLOT, f"accounts[{index}].id")
    for index, transfer in enumerate(commit.transfers):
        invalid = sm.validate_transfer(transfer)
        if invalid is not None:
            return slot, sm.Result(invalid.code, f"transfers[{index}].{invalid.field}" if invalid.field else "")
        for side in ("debit_account_id", "credit_account_id"):
            if account_slot(getattr(transfer, side), slots_total) != slot:
                return slot, sm.Result(pb.NOT_IN_COMMIT_SLOT, f"transfers[{index}].{side}")
    return slot, None


def apply(overlay: Overlay, commit: pb.Commit, slot: int, timestamps: Sequence[int]) -> sm.Result:
    """Step 2 of the protocol; `timestamps`: one per account, one per transfer and one for the
    records, unique and increasing (the ledger clock's next values)."""
    opened = len(commit.accounts)
    assert len(timestamps) == opened + len(commit.transfers) + 1, (len(timestamps), opened, len(commit.transfers))
    stored: list[pb.Record | None] = []
    for index, write in enumerate(commit.writes):
        raw = overlay.get_record(keys.record_key(slot, write.record.kind, write.record.key))
        record = pb.Record.FromString(raw) if raw is not None else None
        if (record.version if record is not None else 0) != write.expected_version:
            return sm.Result(pb.RECORD_VERSION_MISMATCH, f"writes[{index}]")
        if record is not None and role_of(record.updated_by) != role_of(write.record.updated_by):
            return sm.Result(pb.RECORD_OF_ANOTHER_ROLE, f"writes[{index}]")
        stored.append(record)
    if commit.transfers or commit.accounts:
        scratch = _Scratch(overlay)
        for index, (account, at) in enumerate(zip(commit.accounts, timestamps, strict=False)):
            result = sm.apply_account(scratch, account, at)
            if result.code not in _SETTLED:  # EXISTS_WITH_DIFFERENT_FIELDS
                return sm.Result(result.code, f"accounts[{index}].{result.field}")
        moves = timestamps[opened:]
        for index, (transfer, at) in enumerate(zip(commit.transfers, moves, strict=False)):
            result = sm.apply_transfer(scratch, _copy(transfer), at)
            if result.code not in _SETTLED:
                return sm.Result(result.code, f"transfers[{index}]" + (f".{result.field}" if result.field else ""))
    for account, at in zip(commit.accounts, timestamps, strict=False):
        result = sm.apply_account(overlay, account, at)
        assert result.code in _SETTLED, (result, account)  # as the scratch run said
    for transfer, at in zip(commit.transfers, timestamps[opened:], strict=False):
        result = sm.apply_transfer(overlay, transfer, at)
        # Step 2's determinism: the scratch run said this transfer passes.
        assert result.code in _SETTLED, (result, transfer)
    at = timestamps[-1]
    for write, before in zip(commit.writes, stored, strict=True):
        record = pb.Record()
        record.CopyFrom(write.record)
        record.version = (before.version if before is not None else 0) + 1
        record.timestamp = at
        overlay.put_record(keys.record_key(slot, record.kind, record.key), record.SerializeToString())
    return sm.Result(pb.OK, timestamp=at)


def role_of(identity: str) -> str:
    """The role of an identity as records are stamped with it (spiffe://yunkai/<role>/<name>;
    "" under --insecure, where every caller is the same nobody)."""
    return identity.removeprefix("spiffe://yunkai/").partition("/")[0]


def _copy(transfer: pb.Transfer) -> pb.Transfer:
    copy = pb.Transfer()
    copy.CopyFrom(transfer)
    return copy


class _Scratch:
    """A `sm.Store` over the cycle's overlay whose writes go nowhere: records read through
    are copies (the state machine mutates what it reads), records written stay here."""

    def __init__(self, overlay: Overlay) -> None:
        self._overlay = overlay
        self._accounts: dict[str, pb.Account] = {}
        self._creations: dict[str, pb.Account] = {}
        self._transfers: dict[tuple[str, str], pb.Transfer] = {}
        self._changes: dict[tuple[str, str], pb.AccountChange] = {}

    def get_account(self, account_id: str) -> pb.Account | None:
        account = self._accounts.get(account_id)
        if account is None:
            found = self._overlay.get_account(account_id)
            if found is None:
                return None
            account = pb.Account()
            account.CopyFrom(found)
            self._accounts[account_id] = account
        return account

    def put_account(self, account: pb.Account) -> None:
        self._accounts[account.id] = account

    def get_account_creation(self, account_id: str) -> pb.Account | None:
        creation = self._creations.get(account_id)
        return creation if creation is not None else self._overlay.get_account_creation(account_id)

    def put_account_creation(self, account: pb.Account) -> None:
        self._creations[account.id] = account

    def get_transfer(self, debit_account_id: str, transfer_id: str) -> pb.Transfer | None:
        transfer = self._transfers.get((debit_account_id, transfer_id))
        if transfer is None:
            found = self._overlay.get_transfer(debit_account_id, transfer_id)
            if found is None:
                return None
            transfer = _copy(found)
            self._transfers[(debit_account_id, transfer_id)] = transfer
        return transfer

    def put_transfer(self, transfer: pb.Transfer) -> None:
        self._transfers[(transfer.debit_account_id, transfer.id)] = transfer

    def append_history(self, account: pb.Account, transfer: pb.Transfer) -> None:
        pass  # the real run writes history

    def get_change(self, account_id: str, change_id: str) -> pb.AccountChange | None:
        change = self._changes.get((account_id, change_id))
        return change if change is not None else self._overlay.get_change(account_id, change_id)

    def put_change(self, change: pb.AccountChange) -> None:
        self._changes[(change.account_id, change.id)] = change

    def pending_expiry_set(self, transfer: pb.Transfer, expires_at: int) -> None:
        pass  # commits' transfers carry no timeout (contract.malformed_commit)

    def pending_expiry_clear(self, transfer: pb.Transfer, expires_at: int) -> None:
        pass
