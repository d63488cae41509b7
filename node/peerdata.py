"""What a peer sends to be kept as it is (a slot move's chunks, a restore's, a replicated entry's
ops), checked before it is written: the committer, the relay and the readers take back what is
on disk as our own writes and assert what those always are, so a record that is not would stop
the node at the first call or start that reads it. Our own writes always pass."""

from __future__ import annotations

from collections.abc import Iterable

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
    kind = key[keys.SLOT_BYTES : keys.SLOT_BYTES + 1]
    try:
        if kind in (keys.ACCOUNT, keys.CREATION):
            account = pb.Account.FromString(value)
            if kind == keys.CREATION:
                named = keys.creation_key(keys.account_slot(account.id, slots_total), account.id)
            else:
                named = keys.account_key_of(account.id, slots_total)
            if named != key:
                return f"account {account.id!r} is not the one its key names"
            if kind == keys.CREATION:
                return ""
            debits = (account.debits_posted, account.debits_pending)
            credits = (account.credits_posted, account.credits_pending)
            if min(*debits, *credits) < 0:
                return f"account {account.id!r} has a negative balance"
            if sum(debits) > INT64_MAX or sum(credits) > INT64_MAX:
                return f"account {account.id!r}: posted and pending together pass 2^63 - 1"
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
            prefix = keys.expiry_prefix(slot)
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
    pending: dict[str, int] = {}
    held: dict[str, int] = {}
    for key, value in items:
        kind = key[keys.SLOT_BYTES : keys.SLOT_BYTES + 1]
        if kind == keys.ACCOUNT:
            account = pb.Account.FromString(value)
            pending[account.id] = account.debits_pending
        elif kind == keys.TRANSFER:
            transfer = pb.Transfer.FromString(value)
            state = transfer.state
            if state == pb.TRANSFER_PENDING or (state == pb.TRANSFER_IN_FLIGHT and not transfer.flags & RESOLVES):
                debit = transfer.debit_account_id
                held[debit] = held.get(debit, 0) + transfer.amount
    for account_id in sorted(pending.keys() | held.keys()):
        if account_id not in pending:
            return f"transfers of {account_id!r} hold {held[account_id]} of an account that is not there"
        if pending[account_id] != held.get(account_id, 0):
            return (
                f"account {account_id!r} has debits_pending {pending[account_id]}, its pending transfers and"
                f" transfers in flight hold {held.get(account_id, 0)}"
            )
    return ""
