"""The contract of the public ledger API that every process checks the same way.

The table of the Ledger service's methods (what each carries, which account id decides an
event's slot) that the node, the router and the SDK all serve or call from; what a
well-formed request is (flags known and not contradictory, ledger-assigned fields left
unset, limits non-negative, cursors and page sizes in range) and what a valid id is. A
router refuses a malformed batch whole before forwarding any part of it; a node refuses it
before applying any part.
Business outcomes (result codes) are the state machine's, in node/state_machine.py; this
module only says what may be asked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from proto import ledger_pb2 as pb

E = TypeVar("E")

LEDGER_SERVICE = "yunkai.ledger.v1.Ledger"

ID_LENGTH_MAX = 64
# The most events in one request, by default (`--batch-events-max` of a node and a router): a
# router never merges callers' events into a request larger than a node takes.
BATCH_EVENTS_MAX_DEFAULT = 8192
HISTORY_PAGE_DEFAULT = 100  # a history page's size when the request's limit is 0
# A history cursor is a ledger timestamp (ns, int64: node/clock.py): one past it must still
# fit the 8 bytes of a history key (node/keys.py), which 2^64 - 1 + 1 did not.
HISTORY_CURSOR_MAX = (1 << 63) - 1
_ID_RE = re.compile(r"[A-Za-z0-9._:{}-]{1,64}")

# Transfer flags.
PENDING = pb.PENDING
POST_PENDING = pb.POST_PENDING
VOID_PENDING = pb.VOID_PENDING
TRANSFER_FLAGS_ALL = PENDING | POST_PENDING | VOID_PENDING

# Account flags.
DEBITS_MUST_NOT_EXCEED_CREDITS = pb.DEBITS_MUST_NOT_EXCEED_CREDITS
CREDITS_MUST_NOT_EXCEED_DEBITS = pb.CREDITS_MUST_NOT_EXCEED_DEBITS
NO_HISTORY = pb.NO_HISTORY
ACCOUNT_FLAGS_ALL = DEBITS_MUST_NOT_EXCEED_CREDITS | CREDITS_MUST_NOT_EXCEED_DEBITS | NO_HISTORY


def id_valid(value: str) -> bool:
    """1-64 characters of [A-Za-z0-9._:-{}]."""
    return _ID_RE.fullmatch(value) is not None


def malformed_transfer(t: pb.Transfer) -> str | None:
    """Why a transfer is not a well-formed request (a message naming the field), or None."""
    if t.flags & ~TRANSFER_FLAGS_ALL:
        return f"flags: unknown bits 0x{t.flags & ~TRANSFER_FLAGS_ALL:x}"
    if t.flags & (t.flags - 1):
        return "flags: PENDING, POST_PENDING and VOID_PENDING are mutually exclusive"
    if t.timestamp or t.state or t.result or t.amount_posted:
        for name in ("timestamp", "state", "result", "amount_posted"):
            if getattr(t, name):
                return f"{name}: set by the ledger, not the caller"
    if t.timeout_s and not t.flags & PENDING:
        return "timeout_s: only a PENDING transfer has a timeout"
    if t.pending_id and not t.flags & (POST_PENDING | VOID_PENDING):
        return "pending_id: only POST_PENDING and VOID_PENDING transfers name a pending transfer"
    return None


def malformed_account(a: pb.Account) -> str | None:
    """Why an account is not a well-formed creation request, or None."""
    if a.flags & ~ACCOUNT_FLAGS_ALL:
        return f"flags: unknown bits 0x{a.flags & ~ACCOUNT_FLAGS_ALL:x}"
    both = DEBITS_MUST_NOT_EXCEED_CREDITS | CREDITS_MUST_NOT_EXCEED_DEBITS
    if a.flags & both == both:
        return "flags: DEBITS_MUST_NOT_EXCEED_CREDITS and CREDITS_MUST_NOT_EXCEED_DEBITS are mutually exclusive"
    for name in ("debits_posted", "credits_posted", "debits_pending", "credits_pending"):
        if getattr(a, name):
            return f"{name}: a new account starts at zero; balances change only by transfers"
    for name in ("status", "timestamp"):
        if getattr(a, name):
            return f"{name}: set by the ledger, not the caller"
    if a.overdraft_limit < 0:
        return "overdraft_limit: must not be negative"
    return None


_CHANGE_KINDS = frozenset((pb.FREEZE, pb.UNFREEZE, pb.CLOSE, pb.SET_OVERDRAFT_LIMIT))


def malformed_change(c: pb.AccountChange) -> str | None:
    """Why an account change is not a well-formed request, or None."""
    if c.kind not in _CHANGE_KINDS:
        return f"kind: {c.kind} is not one of FREEZE, UNFREEZE, CLOSE, SET_OVERDRAFT_LIMIT"
    for name in ("timestamp", "result"):
        if getattr(c, name):
            return f"{name}: set by the ledger, not the caller"
    if c.overdraft_limit < 0:
        return "overdraft_limit: must not be negative"
    if c.overdraft_limit and c.kind != pb.SET_OVERDRAFT_LIMIT:
        return "overdraft_limit: only SET_OVERDRAFT_LIMIT carries a limit"
    return None


def malformed_fence(f: pb.Fence) -> str | None:
    """Why a request's fence is not well formed, or None."""
    if len(f.slots) != len(f.epochs):
        return f"fence: {len(f.slots)} slots but {len(f.epochs)} epochs"
    return None


def malformed_history(r: pb.GetAccountTransfersRequest, limit_max: int) -> str | None:
    """Why a history page request is not well formed (`limit_max`: the server's batch limit), or None."""
    if r.limit > limit_max:
        return f"limit: {r.limit} is outside 0..{limit_max} (0 means {HISTORY_PAGE_DEFAULT})"
    if r.cursor > HISTORY_CURSOR_MAX:
        return f"cursor: {r.cursor} is outside 0..{HISTORY_CURSOR_MAX} (0, or a previous page's next_cursor)"
    return None


# The longest identity the ledger stamps on an event (`created_by`): spiffe://yunkai/, a role,
# "/", a name of at most 63 characters (serving/tls.py, which checks it fits).
CREATED_BY_LENGTH_MAX = 96


def _largest_event_bytes() -> int:
    """The most bytes one well-formed event or its result takes on the wire: ids at their
    longest, every number at its widest (ledger-assigned fields included, as results carry
    them). A batch limit times this must fit a message (checked once where limits are set)."""
    longest = "x" * ID_LENGTH_MAX
    wide = (1 << 63) - 1
    transfer = pb.Transfer(
        id=longest,
        debit_account_id=longest,
        credit_account_id=longest,
        amount=wide,
        ledger=(1 << 32) - 1,
        code=(1 << 32) - 1,
        flags=(1 << 32) - 1,
        pending_id=longest,
        timeout_s=(1 << 32) - 1,
        user_data=(1 << 64) - 1,
        timestamp=(1 << 64) - 1,
        state=pb.TRANSFER_IN_FLIGHT,
        result=pb.ACCOUNT_HAS_PENDING_TRANSFERS,
        amount_posted=wide,
        created_by="x" * CREATED_BY_LENGTH_MAX,
    )
    account = pb.Account(
        id=longest,
        ledger=(1 << 32) - 1,
        code=(1 << 32) - 1,
        flags=(1 << 32) - 1,
        debits_posted=wide,
        credits_posted=wide,
        debits_pending=wide,
        credits_pending=wide,
        overdraft_limit=wide,
        status=pb.CLOSED,
        user_data=(1 << 64) - 1,
        timestamp=(1 << 64) - 1,
        created_by="x" * CREATED_BY_LENGTH_MAX,
    )
    redirect = pb.SlotRedirect(slot=(1 << 32) - 1, epoch=(1 << 63) - 1, owner="x" * 255)
    transfer_result = pb.TransferResult(code=pb.ACCOUNT_HAS_PENDING_TRANSFERS, transfer=transfer, redirect=redirect)
    account_result = pb.AccountResult(code=pb.ACCOUNT_HAS_PENDING_TRANSFERS, account=account, redirect=redirect)
    framing = 16  # a repeated field's tag and length, and the fence's share
    return max(transfer_result.ByteSize(), account_result.ByteSize()) + framing


EVENT_BYTES_MAX = _largest_event_bytes()


# --- the Ledger service's methods --------------------------------------------------------------


@dataclass(frozen=True)
class LedgerMethod(Generic[E]):
    """One method of yunkai.ledger.v1.Ledger. A batched method carries its events in the
    repeated field `field` and answers one result per event, in order; `key_of` is the
    account id whose slot an event belongs to; `malformed` says why an event is not a
    well-formed request (None: every value may be asked)."""

    name: str
    request: type[Message]
    response: type[Message]
    field: str
    key_of: Callable[[E], str]
    malformed: Callable[[E], str | None] | None
    writes: bool
    # An event that names its slot itself (a scan of one slot): (event, slots_total) -> slot.
    slot_named: Callable[[E, int], int] | None = None

    def events(self, request: Any) -> Any:
        """The request's repeated field of events."""
        return getattr(request, self.field)


def _transfer_key(t: pb.Transfer) -> str:
    return t.debit_account_id


def _account_key(a: pb.Account) -> str:
    return a.id


def _change_key(c: pb.AccountChange) -> str:
    return c.account_id


def _id_key(account_id: str) -> str:
    return account_id


def _lookup_key(k: pb.TransferKey) -> str:
    return k.debit_account_id


def _history_key(r: pb.GetAccountTransfersRequest) -> str:
    return r.account_id


CREATE_ACCOUNTS = LedgerMethod[pb.Account](
    "CreateAccounts",
    pb.CreateAccountsRequest,
    pb.CreateAccountsResponse,
    "accounts",
    _account_key,
    malformed_account,
    writes=True,
)
CREATE_TRANSFERS = LedgerMethod[pb.Transfer](
    "CreateTransfers",
    pb.CreateTransfersRequest,
    pb.CreateTransfersResponse,
    "transfers",
    _transfer_key,
    malformed_transfer,
    writes=True,
)
CHANGE_ACCOUNTS = LedgerMethod[pb.AccountChange](
    "ChangeAccounts",
    pb.ChangeAccountsRequest,
    pb.ChangeAccountsResponse,
    "changes",
    _change_key,
    malformed_change,
    writes=True,
)
LOOKUP_ACCOUNTS = LedgerMethod[str](
    "LookupAccounts", pb.LookupAccountsRequest, pb.LookupAccountsResponse, "ids", _id_key, None, writes=False
)
LOOKUP_TRANSFERS = LedgerMethod[pb.TransferKey](
    "LookupTransfers", pb.LookupTransfersRequest, pb.LookupTransfersResponse, "keys", _lookup_key, None, writes=False
)
# Not batched: one account's history page (the request itself is its one "event").
GET_ACCOUNT_TRANSFERS = LedgerMethod[pb.GetAccountTransfersRequest](
    "GetAccountTransfers",
    pb.GetAccountTransfersRequest,
    pb.GetAccountTransfersResponse,
    "",
    _history_key,
    None,
    writes=False,
)


# --- slot-local records (node/records.py) ------------------------------------------------------

RECORD_VALUE_BYTES_MAX = 65_536
COMMIT_WRITES_MAX = 64
COMMIT_TRANSFERS_MAX = 1_024  # a loan's end of day catching up a year: 3 postings a day
COMMIT_ACCOUNTS_MAX = 64  # a credit line opens 13 (its limit and customer accounts)
SCAN_LIMIT_MAX = 1_000
SCAN_LIMIT_DEFAULT = 100
_KIND_RE = re.compile(r"[a-z0-9_-]{1,32}")


def kind_valid(kind: str) -> bool:
    """1-32 characters of [a-z0-9_-]: a record's kind."""
    return _KIND_RE.fullmatch(kind) is not None


def malformed_commit(c: pb.Commit) -> str | None:
    """Why a commit is not a well-formed request (naming the field), or None. Ids are checked
    by the node (ID_INVALID names the field), as for transfers."""
    if not 1 <= len(c.writes) <= COMMIT_WRITES_MAX:
        return f"writes: {len(c.writes)} writes; a commit has 1 to {COMMIT_WRITES_MAX}"
    if len(c.transfers) > COMMIT_TRANSFERS_MAX:
        return f"transfers: {len(c.transfers)} transfers; a commit has at most {COMMIT_TRANSFERS_MAX}"
    if len(c.accounts) > COMMIT_ACCOUNTS_MAX:
        return f"accounts: {len(c.accounts)} accounts; a commit opens at most {COMMIT_ACCOUNTS_MAX}"
    seen: set[tuple[str, str]] = set()
    for index, write in enumerate(c.writes):
        record = write.record
        if not kind_valid(record.kind):
            return f"writes[{index}].record.kind: {record.kind[:40]!r} is not 1-32 of [a-z0-9_-]"
        if len(record.value) > RECORD_VALUE_BYTES_MAX:
            return f"writes[{index}].record.value: {len(record.value)} bytes, more than {RECORD_VALUE_BYTES_MAX}"
        for name in ("version", "timestamp"):
            if getattr(record, name):
                return f"writes[{index}].record.{name}: set by the ledger, not the caller"
        if (record.kind, record.key) in seen:
            return f"writes[{index}]: the commit writes {record.kind} {record.key[:64]!r} twice"
        seen.add((record.kind, record.key))
    for index, account in enumerate(c.accounts):
        reason = malformed_account(account)
        if reason is not None:
            return f"accounts[{index}].{reason}"
    for index, transfer in enumerate(c.transfers):
        reason = malformed_transfer(transfer)
        if reason is not None:
            return f"transfers[{index}].{reason}"
        if transfer.timeout_s:
            return f"transfers[{index}].timeout_s: a commit's pending transfers do not expire"
        if not transfer.credit_account_id:
            return f"transfers[{index}].credit_account_id: a commit's transfers name both accounts"
    return None


def malformed_scan(s: pb.RecordScan, slots_total: int) -> str | None:
    if s.slot >= slots_total:
        return f"slot: {s.slot} is outside 0..{slots_total - 1}"
    if not kind_valid(s.kind):
        return f"kind: {s.kind[:40]!r} is not 1-32 of [a-z0-9_-]"
    if s.limit > SCAN_LIMIT_MAX:
        return f"limit: {s.limit} is outside 0..{SCAN_LIMIT_MAX} (0 means {SCAN_LIMIT_DEFAULT})"
    if s.after and not id_valid(s.after):
        return "after: not a record key (1-64 of [A-Za-z0-9._:{}-])"
    if s.prefix and not id_valid(s.prefix):
        return "prefix: not the start of a record key (1-64 of [A-Za-z0-9._:{}-])"
    return None


def _commit_key(c: pb.Commit) -> str:
    return c.writes[0].record.key if c.writes else ""


def _record_key(k: pb.RecordKey) -> str:
    return k.key


def _scan_key(s: pb.RecordScan) -> str:
    return ""


def _scan_slot(s: pb.RecordScan, slots_total: int) -> int:
    return s.slot


COMMIT_RECORDS = LedgerMethod[pb.Commit](
    "CommitRecords",
    pb.CommitRecordsRequest,
    pb.CommitRecordsResponse,
    "commits",
    _commit_key,
    malformed_commit,
    writes=True,
)
LOOKUP_RECORDS = LedgerMethod[pb.RecordKey](
    "LookupRecords", pb.LookupRecordsRequest, pb.LookupRecordsResponse, "keys", _record_key, None, writes=False
)
# Malformed scans (a slot out of range) are refused by the server that knows the slot count.
SCAN_RECORDS = LedgerMethod[pb.RecordScan](
    "ScanRecords",
    pb.ScanRecordsRequest,
    pb.ScanRecordsResponse,
    "scans",
    _scan_key,
    None,
    writes=False,
    slot_named=_scan_slot,
)

BATCHED = (
    CREATE_ACCOUNTS,
    CREATE_TRANSFERS,
    CHANGE_ACCOUNTS,
    LOOKUP_ACCOUNTS,
    LOOKUP_TRANSFERS,
    COMMIT_RECORDS,
    LOOKUP_RECORDS,
    SCAN_RECORDS,
)
LEDGER_METHODS = (*BATCHED, GET_ACCOUNT_TRANSFERS)
