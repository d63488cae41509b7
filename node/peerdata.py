"""What a peer sends to be kept as it is (a slot move's chunks, a restore's, a replicated entry's
ops), checked before it is written: the committer, the relay and the readers take back what is
on disk as our own writes and assert what those always are, so a record that is not would stop
the node at the first call or start that reads it. Our own writes always pass."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from google.protobuf.message import DecodeError

from node import keys
from node.state_machine import INT64_MAX, POST_PENDING, VOID_PENDING, expires_at
from proto import ledger_pb2 as pb, node_pb2

RESOLVES = POST_PENDING | VOID_PENDING


def stored_problem(key: bytes, value: bytes, slots_total: int) -> str:
    """Why a key and value a peer sends (a move's chunk, a restore's, a replicated entry's op)
    cannot be taken ("" if they can): the committer and the relay read them back as our own
    writes and assert what those always are, so one that is not would stop the node at the
    first call or start that reads it.
    Checked: each record parses as its kind's message and sits under the key its own ids make
    (a record under another's key is resolved against one account and written under another);
    an account's balances are not negative and posted and pending together stay within
    2^63 - 1 (every write of it asserts so: node/overlay.py); a pending's deadline fits an
    expiry key; an expiry key parses. Kinds this version does not read are taken as they come.
    Our own writes always pass."""
    slot = keys.slot_of_key(key)
    if slot is None or len(key) <= keys.SLOT_BYTES:
        return ""  # not a slot's record (the range check is the caller's)
    return _record_problem(key, key[keys.SLOT_BYTES : keys.SLOT_BYTES + 1], value, slots_total)


def ops_problem(slot: int, ops: Sequence[node_pb2.KeyOp], slots_total: int) -> str:
    """Why a peer's ops for `slot` (a replicated entry's, a move's chunk's) cannot be taken
    ("" if they can): a key outside the slot's range, or a put `stored_problem` refuses.
    A follower runs this on every write it copies (at R = 3 it was 12% of a node's time at
    its highest rate), so it is `stored_problem` in one pass without its per-key slot lookup,
    and a history entry whose bytes already passed as a transfer in these ops (each holds its
    transfer's record) is not parsed again."""
    begin, end = keys.slot_range(slot)
    start, stop = keys.SLOT_BYTES, keys.SLOT_BYTES + 1
    history, transfer = keys.HISTORY, keys.TRANSFER
    transfers: set[bytes] = set()  # values that parsed as a transfer here
    for op in ops:
        key = op.key
        if not begin <= key < end:
            return "a key outside the slot"
        if op.deleted or len(key) <= start:
            continue
        kind, value = key[start:stop], op.value
        if kind == history and value in transfers:
            continue
        if problem := _record_problem(key, kind, value, slots_total):
            return problem
        if kind in (transfer, history):
            transfers.add(value)
    return ""


def _record_problem(key: bytes, kind: bytes, value: bytes, slots_total: int) -> str:
    """`stored_problem` of a key in a slot's range, whose kind byte is `kind`."""
    try:
        if kind == keys.ACCOUNT or kind == keys.CREATION:
            account = pb.Account.FromString(value)
            account_id = account.id
            if kind == keys.CREATION:
                named = keys.creation_key(keys.account_slot(account_id, slots_total), account_id)
            else:
                named = keys.account_key_of(account_id, slots_total)
            if named != key:
                return f"account {account_id!r} is not the one its key names"
            if kind == keys.CREATION:
                return ""
            debits_posted, debits_pending = account.debits_posted, account.debits_pending
            credits_posted, credits_pending = account.credits_posted, account.credits_pending
            if debits_posted < 0 or debits_pending < 0 or credits_posted < 0 or credits_pending < 0:
                return f"account {account_id!r} has a negative balance"
            if debits_posted + debits_pending > INT64_MAX or credits_posted + credits_pending > INT64_MAX:
                return f"account {account_id!r}: posted and pending together pass 2^63 - 1"
        elif kind == keys.TRANSFER:
            transfer = pb.Transfer.FromString(value)
            debit = transfer.debit_account_id
            if keys.transfer_key(keys.account_slot(debit, slots_total), debit, transfer.id) != key:
                return f"transfer {transfer.id!r} of {debit!r} is not the one its key names"
            if expires_at(transfer) >= 1 << 64:
                return f"transfer {transfer.id!r}: its deadline does not fit an expiry key"
        elif kind == keys.HISTORY:
            pb.Transfer.FromString(value)
        elif kind == keys.CHANGE:
            change = pb.AccountChange.FromString(value)
            owner = change.account_id
            if keys.change_key(keys.account_slot(owner, slots_total), owner, change.id) != key:
                return f"account change {change.id!r} of {owner!r} is not the one its key names"
        elif kind == keys.OUTBOX:
            leg = node_pb2.CreditLeg.FromString(value)
            debit = leg.debit_account_id
            named = keys.outbox_key(
                keys.account_slot(debit, slots_total), debit, leg.pending_id or leg.transfer_id, leg.kind
            )
            if named != key:
                return f"outbox entry {leg.transfer_id!r} of {debit!r} is not the one its key names"
        elif kind == keys.APPLIED_LEG:
            node_pb2.AppliedLeg.FromString(value)
        elif kind == keys.RECORD:
            pb.Record.FromString(value)
        elif kind == keys.EXPIRY:
            prefix = keys.expiry_prefix(int.from_bytes(key[: keys.SLOT_BYTES], "big"))
            if len(key) <= len(prefix) + 8 or b"\x00" not in key[len(prefix) + 8 :]:
                return "an expiry key that does not parse"
            keys.parse_expiry(prefix, key)
        elif kind == keys.SEQ and len(value) != 16:
            return "a replication seq that is not 16 bytes"
    except (DecodeError, UnicodeDecodeError, ValueError, OverflowError) as error:
        return f"a {kind.decode(errors='replace')!r} record that does not parse ({type(error).__name__})"
    return ""


def held_problem(items: Iterable[tuple[bytes, bytes]]) -> str:
    """Why a whole slot's accounts do not hold what its transfers claim ("" if they do): each
    account's debits_pending must be exactly the amounts of its pending transfers and of its
    transfers in flight to other nodes (plain or pending, not a post or void: a post in flight
    claims its pending's hold). That is what every claim on it adds up to in our own writes
    (tests/test_protocols.py checks it over the outbox protocol); one claim checked alone lets a
    peer's account hold one claim's worth for two. `items`: the slot's records, every one of
    which passed `stored_problem`."""
    tally = HeldTally()
    for key, value in items:
        tally.change(key, None, value)
    return tally.problem()


class HeldTally:
    """`held_problem` kept up to date as a slot's records arrive one change at a time (a move's
    import: its snapshot, then the source's log entries, each overwriting or deleting what is
    staged), so that the check when the last chunk is in costs nothing inside the move's write
    freeze: each change moves one account's two sums, and the accounts whose sums differ are
    kept as a set. Every value passed in passed `stored_problem`."""

    def __init__(self) -> None:
        self._pending: dict[str, int] = {}  # account id -> its debits_pending
        self._held: dict[str, int] = {}  # account id -> what its transfers claim
        self._off: set[str] = set()  # accounts whose two sums differ (or claims without an account)

    def change(self, key: bytes, old: bytes | None, new: bytes | None) -> None:
        """The record at `key` went from `old` to `new` (None: absent)."""
        kind = key[keys.SLOT_BYTES : keys.SLOT_BYTES + 1]
        if kind == keys.ACCOUNT:
            account = pb.Account.FromString(new if new is not None else old or b"")
            if new is None:
                self._pending.pop(account.id, None)
            else:
                self._pending[account.id] = account.debits_pending
            self._check(account.id)
        elif kind == keys.TRANSFER:
            for value, sign in ((old, -1), (new, 1)):
                if value is not None:
                    transfer = pb.Transfer.FromString(value)
                    if claim := _claim(transfer):
                        debit = transfer.debit_account_id
                        self._held[debit] = self._held.get(debit, 0) + sign * claim
                        self._check(debit)

    def _check(self, account_id: str) -> None:
        pending, held = self._pending.get(account_id), self._held.get(account_id, 0)
        if held == 0:
            self._held.pop(account_id, None)
        if pending == held or (pending is None and held == 0):
            self._off.discard(account_id)
        else:
            self._off.add(account_id)

    def problem(self) -> str:
        """Why the records as they stand do not hold what they claim ("" if they do), naming
        the first account in order."""
        if not self._off:
            return ""
        account_id = min(self._off)
        held = self._held.get(account_id, 0)
        if account_id not in self._pending:
            return f"transfers of {account_id!r} hold {held} of an account that is not there"
        return (
            f"account {account_id!r} has debits_pending {self._pending[account_id]}, its pending transfers and"
            f" transfers in flight hold {held}"
        )


def _claim(transfer: pb.Transfer) -> int:
    """What a stored transfer holds of its debit account's debits_pending."""
    state = transfer.state
    if state == pb.TRANSFER_PENDING or (state == pb.TRANSFER_IN_FLIGHT and not transfer.flags & RESOLVES):
        return transfer.amount
    return 0
