"""The node's key layout (DESIGN section 4): every RocksDB key a node reads or writes is built here.

Everything of a slot lives under `<slot:2 bytes BE>`, so a slot is one contiguous range
to snapshot, stream, replicate and delete. Node metadata lives under FF FF, past every
slot (which is why a cluster has at most 0xFFFF slots: slot 0xFFFF's prefix would be it).

    <slot> A <account_id>                          account (current balances), pb.Account
    <slot> O <account_id>                          account as opened (for create replays)
    <slot> T <debit_account_id> 00 <transfer_id>   transfer, pb.Transfer
    <slot> H <account_id> 00 <timestamp:8 BE>      history event, pb.Transfer as of then
    <slot> C <account_id> 00 <change_id>           account change journal, pb.AccountChange
    <slot> X <expires_at:8 BE> <debit> 00 <id>     pending transfer expiry index
    <slot> B <debit> 00 <subject> 00 <kind:1>      outbox entry (debit slot), node.v1.CreditLeg
    <slot> L <debit> 00 <transfer_id> 00 <kind:1>  applied credit leg (credit slot), node.v1.AppliedLeg
    <slot> S                                       the slot's replication epoch and sequence (8 BE each)
    <slot> R <kind> 00 <key>                       a slot-local record, ledger.v1.Record (node/records.py)
    FF FF clock                                    the last ledger timestamp (8 BE)
    FF FF slots_total                              S, fixed for the data directory's life (4 BE)
    FF FF slots                                    the whole slot table, node.v1.GetSlotsResponse
    FF FF slot:<slot>                              one slot's entry newer than the whole table
    FF FF move:<slot>                              a slot move this node takes part in, node.v1.SlotMove
    FF FF node_id                                  this node's id (node/identity.py)
    FF FF cluster_id                               the cluster it joined
    FF FF term                                     the newest controller term it has seen (8 BE)

The outbox and applied-leg records are node/outbox.py's; `kind` is the LegKind number.
Ids never contain 00 (node/state_machine.py's id rule), so it separates the parts.
"""

from __future__ import annotations

import functools

from router.slots import SLOTS_TOTAL_MAX, slot_of

SLOT_BYTES = 2
NODE_META = b"\xff\xff"
_U64 = 8

# The relationship between the cluster's slot limit and this layout, checked once: the
# highest slot's range must end at or before the metadata.
assert int.from_bytes(NODE_META, "big") >= SLOTS_TOTAL_MAX, SLOTS_TOTAL_MAX

ACCOUNT = b"A"
CREATION = b"O"
TRANSFER = b"T"
HISTORY = b"H"
CHANGE = b"C"
EXPIRY = b"X"
OUTBOX = b"B"
APPLIED_LEG = b"L"
SEQ = b"S"
RECORD = b"R"

CLOCK = NODE_META + b"clock"
REPLICATING = NODE_META + b"replicating"  # the last replicated cycle's entries (node/replication.py)
SLOTS_TOTAL = NODE_META + b"slots_total"
SLOT_TABLE = NODE_META + b"slots"
# A delta of the slot table (a committed move) is stored as one key per changed slot over the
# last whole table, instead of rewriting all S entries (~3 ms at S = 4096, on the freeze's path).
SLOT_DELTA_BEGIN = NODE_META + b"slot:"
SLOT_DELTA_END = NODE_META + b"slot;"
SPIFFE_IDS = NODE_META + b"spiffe_ids"  # the nodes' certificate identities, by address (node.v1.NodeSpiffeIds)
NODE_ID = NODE_META + b"node_id"
CLUSTER_ID = NODE_META + b"cluster_id"
TERM = NODE_META + b"term"
MOVE_BEGIN = NODE_META + b"move:"
MOVE_END = NODE_META + b"move;"


# --- slots ----------------------------------------------------------------------------------


def slot_prefix(slot: int) -> bytes:
    assert 0 <= slot < SLOTS_TOTAL_MAX, slot
    return slot.to_bytes(SLOT_BYTES, "big")


def slot_range(slot: int) -> tuple[bytes, bytes]:
    """[begin, end) of a slot's keys; the last slot's range ends where the metadata begins."""
    return slot_prefix(slot), (slot + 1).to_bytes(SLOT_BYTES, "big")


def slot_of_key(key: bytes) -> int | None:
    """The slot whose range holds `key`, or None for node metadata."""
    if key.startswith(NODE_META):
        return None
    return int.from_bytes(key[:SLOT_BYTES], "big")


@functools.lru_cache(maxsize=1 << 18)
def account_slot(account_id: str, slots_total: int) -> int:
    """`slot_of`, memoised: a node needs an account's slot several times per event."""
    return slot_of(account_id, slots_total)


# --- records of a slot ----------------------------------------------------------------------
# The builders below run several times per event: they inline the prefix (slot_prefix's
# range assert costs ~5% of a transfer); slot numbers reach them from account_slot, in range.


def account_key(slot: int, account_id: str) -> bytes:
    return slot.to_bytes(SLOT_BYTES, "big") + ACCOUNT + account_id.encode()


def account_range(slot: int) -> tuple[bytes, bytes]:
    """[begin, end) of a slot's accounts (A sorts just before B)."""
    prefix = slot_prefix(slot)
    return prefix + ACCOUNT, prefix + bytes([ACCOUNT[0] + 1])


@functools.lru_cache(maxsize=1 << 18)
def account_key_of(account_id: str, slots_total: int) -> bytes:
    """`account_key` for an id, memoised: every transfer writes two accounts."""
    return account_key(slot_of(account_id, slots_total), account_id)


def creation_key(slot: int, account_id: str) -> bytes:
    return slot.to_bytes(SLOT_BYTES, "big") + CREATION + account_id.encode()


def transfer_key(slot: int, debit_account_id: str, transfer_id: str) -> bytes:
    return slot.to_bytes(SLOT_BYTES, "big") + TRANSFER + debit_account_id.encode() + b"\x00" + transfer_id.encode()


def history_prefix(slot: int, account_id: str) -> bytes:
    return slot.to_bytes(SLOT_BYTES, "big") + HISTORY + account_id.encode() + b"\x00"


@functools.lru_cache(maxsize=1 << 18)
def history_prefix_of(account_id: str, slots_total: int) -> bytes:
    """`history_prefix` for an id, memoised: every transfer appends to two histories."""
    return history_prefix(slot_of(account_id, slots_total), account_id)


def history_key(prefix: bytes, timestamp: int) -> bytes:
    """An entry of the history whose `history_prefix` is `prefix`."""
    return prefix + timestamp.to_bytes(_U64, "big")


def history_timestamp(prefix: bytes, key: bytes) -> int | None:
    """The timestamp of a history key under `prefix`, or None if the key is not one."""
    if not key.startswith(prefix) or len(key) != len(prefix) + _U64:
        return None
    return int.from_bytes(key[len(prefix) :], "big")


def change_key(slot: int, account_id: str, change_id: str) -> bytes:
    return slot.to_bytes(SLOT_BYTES, "big") + CHANGE + account_id.encode() + b"\x00" + change_id.encode()


def expiry_prefix(slot: int) -> bytes:
    return slot.to_bytes(SLOT_BYTES, "big") + EXPIRY


def expiry_key(slot: int, expires_at: int, debit_account_id: str, transfer_id: str) -> bytes:
    return (
        expiry_prefix(slot)
        + expires_at.to_bytes(_U64, "big")
        + debit_account_id.encode()
        + b"\x00"
        + transfer_id.encode()
    )


def parse_expiry(prefix: bytes, key: bytes) -> tuple[int, str, str]:
    """(expires_at, debit_account_id, transfer_id) of an expiry key under `expiry_prefix`."""
    rest = key[len(prefix) :]
    debit, _, transfer_id = rest[_U64:].partition(b"\x00")
    return int.from_bytes(rest[:_U64], "big"), debit.decode(), transfer_id.decode()


def outbox_prefix(slot: int) -> bytes:
    return slot.to_bytes(SLOT_BYTES, "big") + OUTBOX


def outbox_key(slot: int, debit_account_id: str, subject_id: str, kind: int) -> bytes:
    return (
        outbox_prefix(slot)
        + debit_account_id.encode()
        + b"\x00"
        + subject_id.encode()
        + b"\x00"
        + kind.to_bytes(1, "big")
    )


def applied_leg_key(slot: int, debit_account_id: str, transfer_id: str, kind: int) -> bytes:
    return (
        slot.to_bytes(SLOT_BYTES, "big")
        + APPLIED_LEG
        + debit_account_id.encode()
        + b"\x00"
        + transfer_id.encode()
        + b"\x00"
        + kind.to_bytes(1, "big")
    )


def record_prefix(slot: int, kind: str) -> bytes:
    """Where a slot's records of one kind begin (kinds never contain 00)."""
    return slot.to_bytes(SLOT_BYTES, "big") + RECORD + kind.encode() + b"\x00"


def record_key(slot: int, kind: str, key: str) -> bytes:
    return record_prefix(slot, kind) + key.encode()


def seq_key(slot: int) -> bytes:
    """The slot's replication (epoch, seq): node/replication.py."""
    return slot_prefix(slot) + SEQ


# --- node metadata --------------------------------------------------------------------------


def slot_delta_key(slot: int) -> bytes:
    return SLOT_DELTA_BEGIN + str(slot).encode()


def move_key(slot: int) -> bytes:
    return MOVE_BEGIN + str(slot).encode()
