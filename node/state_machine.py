"""The ledger's state machine: pure decisions on accounts, transfers and account changes.

Everything here is deterministic and free of I/O: each `create_*` function reads and
writes records through a `Store` (an in-memory dict in tests, the node's overlay over
RocksDB in production) and returns a result code. Nothing is mutated unless the event
succeeds, or unless it is a stateful failure that is journaled so that the same id keeps
failing the same way.

Idempotency (DESIGN section 2). A transfer is keyed by (debit_account_id, id), an account
change by (account_id, id), an account by its id. A replay with identical fields answers
EXISTS (or, for a journaled failure, the same failure code); with any field different,
EXISTS_WITH_DIFFERENT_FIELDS naming the first differing field. As with Stripe's
idempotency keys, a request that fails *stateless* validation (an invalid id, a zero
amount, ...) stores nothing: the same input fails the same way by construction. A
*stateful* failure (an account missing, frozen, a limit exceeded, ...) is journaled as a
REJECTED record, so a retry after the world changed still answers the original failure.
One exception: STORED_DATA_INCONSISTENT (the node's own data for the event does not add up)
is not journaled, since the request is not what is wrong: a retry once it is mended passes.

Order of precedence for CreateTransfers, checked top to bottom; the first that applies
is the result:
  1. ID_INVALID                      id, debit_account_id, credit_account_id (may be empty
                                     on post/void), pending_id (post/void); `field` says which
  2. ACCOUNTS_MUST_BE_DIFFERENT
  3. AMOUNT_MUST_BE_POSITIVE         amount <= 0; post/void: amount < 0 (0 means "all")
  4. LEDGER_MUST_NOT_BE_ZERO         not for post/void (they inherit the pending's)
  5. CODE_MUST_NOT_BE_ZERO           not for post/void
  --- stateless checks end: nothing above is journaled ---
  6. EXISTS, EXISTS_WITH_DIFFERENT_FIELDS, or the journaled failure of this key (IN_FLIGHT
     for a cross-node transfer not yet resolved: see node/outbox.py)
  7. post/void: PENDING_TRANSFER_NOT_FOUND (also while a cross-node pending's reservation
     is not yet confirmed), PENDING_TRANSFER_HAS_DIFFERENT_FIELDS (a credit account, ledger
     or code other than the pending's, or a void of part of its amount),
     PENDING_TRANSFER_ALREADY_POSTED (also while a cross-node post of it is in flight),
     PENDING_TRANSFER_ALREADY_VOIDED, PENDING_TRANSFER_EXPIRED (already expired, or
     overdue: then it expires now), EXCEEDS_PENDING_TRANSFER_AMOUNT (a post, or a void,
     of more than the pending amount). Between "already expired" and "overdue":
     STORED_DATA_INCONSISTENT, not journaled: the pending's accounts do not hold its amount,
     or a post of it would pass 2^63 - 1, or its state is not one this version knows
     (`unheld`: never our own writes; data a move or a restore brought; node/outbox.py
     adds its own for cross-node transfers: A1, A3)
  8. DEBIT_ACCOUNT_NOT_FOUND, CREDIT_ACCOUNT_NOT_FOUND
  9. ACCOUNTS_MUST_HAVE_SAME_LEDGER  the two accounts' ledgers differ, or the transfer's
                                     ledger is not theirs
 10. DEBIT_ACCOUNT_CLOSED, CREDIT_ACCOUNT_CLOSED, DEBIT_ACCOUNT_FROZEN,
     CREDIT_ACCOUNT_FROZEN           not for void: releasing a reservation is always allowed
 11. OVERFLOW                        any balance, or pending + posted, past 2^63 - 1
 12. EXCEEDS_CREDITS, EXCEEDS_DEBITS not for post/void: the reservation already passed them
 13. OK

CreateAccounts: ID_INVALID, LEDGER_MUST_NOT_BE_ZERO, CODE_MUST_NOT_BE_ZERO, then EXISTS /
EXISTS_WITH_DIFFERENT_FIELDS (against the creation record, so a later change of the
overdraft limit does not make a replay differ), then OK.

ChangeAccounts: ID_INVALID (id, account_id), then EXISTS / EXISTS_WITH_DIFFERENT_FIELDS /
the journaled failure, ACCOUNT_NOT_FOUND, ACCOUNT_CLOSED, then per kind:
ACCOUNT_ALREADY_FROZEN (freeze), ACCOUNT_NOT_FROZEN (unfreeze),
ACCOUNT_HAS_PENDING_TRANSFERS (close), then OK.

Two-phase transfers. PENDING reserves: debits_pending and credits_pending grow by the
amount. POST_PENDING moves `amount` (0 = all) of it to posted and releases the rest;
VOID_PENDING releases it all; each resolves the pending transfer once. A pending transfer
with timeout_s > 0 expires at its timestamp + timeout_s: from then on it is EXPIRED (its
reservation released), whether the node's expiry sweep or a late post/void finds it first.
Post and void transfers are stored with state POSTED (the event itself took effect) and
resolved: the pending's credit account, ledger and code, and the amount they moved or
released. A replay that leaves those fields empty is resolved the same way first.

Transfers whose credit account lives on another node follow the same order, split
between the two nodes; node/outbox.py specifies how.

Request-level malformations (unknown flag bits, several flags at once, ledger-assigned
fields set by the caller, ...) are not business outcomes: `malformed_*` name them and the
service answers INVALID_ARGUMENT for the whole request, before anything is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from proto import ledger_pb2 as pb

# The API contract's vocabulary, re-exported: the state machine's callers use it as sm.*.
from proto.contract import (
    ACCOUNT_FLAGS_ALL as ACCOUNT_FLAGS_ALL,
    CREDITS_MUST_NOT_EXCEED_DEBITS as CREDITS_MUST_NOT_EXCEED_DEBITS,
    DEBITS_MUST_NOT_EXCEED_CREDITS as DEBITS_MUST_NOT_EXCEED_CREDITS,
    ID_LENGTH_MAX as ID_LENGTH_MAX,
    NO_HISTORY as NO_HISTORY,
    PENDING as PENDING,
    POST_PENDING as POST_PENDING,
    TRANSFER_FLAGS_ALL as TRANSFER_FLAGS_ALL,
    VOID_PENDING as VOID_PENDING,
    id_valid as id_valid,
    malformed_account as malformed_account,
    malformed_change as malformed_change,
    malformed_transfer as malformed_transfer,
)

INT64_MAX = (1 << 63) - 1
Code = pb.ResultCode  # the generated enum type (an int)
NANOS_PER_SECOND = 1_000_000_000


class Store(Protocol):
    """What the state machine reads and writes. Getters return records the caller may
    mutate and then hand back with the matching put; nothing counts until it is put."""

    def get_account(self, account_id: str) -> pb.Account | None: ...
    def put_account(self, account: pb.Account) -> None: ...
    def get_account_creation(self, account_id: str) -> pb.Account | None: ...
    def put_account_creation(self, account: pb.Account) -> None: ...
    def get_transfer(self, debit_account_id: str, transfer_id: str) -> pb.Transfer | None: ...
    def put_transfer(self, transfer: pb.Transfer) -> None: ...
    def append_history(self, account: pb.Account, transfer: pb.Transfer) -> None: ...
    def get_change(self, account_id: str, change_id: str) -> pb.AccountChange | None: ...
    def put_change(self, change: pb.AccountChange) -> None: ...
    def pending_expiry_set(self, transfer: pb.Transfer, expires_at: int) -> None: ...
    def pending_expiry_clear(self, transfer: pb.Transfer, expires_at: int) -> None: ...


class Result:
    """The outcome of one event: a code, the field it names, and the stored record's
    timestamp and state (for transfers)."""

    __slots__ = ("code", "field", "state", "timestamp")

    def __init__(self, code: Code, field: str = "", timestamp: int = 0, state: int = 0) -> None:
        self.code = code
        self.field = field
        self.timestamp = timestamp
        self.state = state

    def __repr__(self) -> str:
        name = pb.ResultCode.Name(self.code)
        return f"Result({name}, field={self.field!r}, timestamp={self.timestamp}, state={self.state})"


def expires_at(transfer: pb.Transfer) -> int:
    """When a pending transfer expires (ledger ns), or 0 if never."""
    if transfer.timeout_s == 0:
        return 0
    return transfer.timestamp + transfer.timeout_s * NANOS_PER_SECOND


def debits_past_limit(account: pb.Account, debits_total: int) -> bool:
    """Whether debits of `debits_total` (pending and posted, the new amount counted) break an
    account's DEBITS_MUST_NOT_EXCEED_CREDITS rule: more than its credits posted plus its
    overdraft limit. (EXCEEDS_CREDITS, on one node or across two.)"""
    return bool(account.flags & DEBITS_MUST_NOT_EXCEED_CREDITS) and (
        debits_total > account.credits_posted + account.overdraft_limit
    )


def credits_past_limit(account: pb.Account, credits_total: int) -> bool:
    """The mirror rule, CREDITS_MUST_NOT_EXCEED_DEBITS (EXCEEDS_DEBITS)."""
    return bool(account.flags & CREDITS_MUST_NOT_EXCEED_DEBITS) and (
        credits_total > account.debits_posted + account.overdraft_limit
    )


# --- stateless checks -------------------------------------------------------------------


def validate_transfer(t: pb.Transfer) -> Result | None:
    """Steps 1-5 of the precedence: the stateless checks. None when they all pass."""
    resolves = t.flags & (POST_PENDING | VOID_PENDING)
    if not id_valid(t.id):
        return Result(pb.ID_INVALID, "id")
    if not id_valid(t.debit_account_id):
        return Result(pb.ID_INVALID, "debit_account_id")
    if not (resolves and not t.credit_account_id) and not id_valid(t.credit_account_id):
        return Result(pb.ID_INVALID, "credit_account_id")
    if resolves and not id_valid(t.pending_id):
        return Result(pb.ID_INVALID, "pending_id")
    if t.debit_account_id == t.credit_account_id:
        return Result(pb.ACCOUNTS_MUST_BE_DIFFERENT)
    if resolves:
        if t.amount < 0:
            return Result(pb.AMOUNT_MUST_BE_POSITIVE)
        return None
    if t.amount <= 0:
        return Result(pb.AMOUNT_MUST_BE_POSITIVE)
    if t.ledger == 0:
        return Result(pb.LEDGER_MUST_NOT_BE_ZERO)
    if t.code == 0:
        return Result(pb.CODE_MUST_NOT_BE_ZERO)
    return None


def validate_account(a: pb.Account) -> Result | None:
    """The stateless checks of an account creation."""
    if not id_valid(a.id):
        return Result(pb.ID_INVALID, "id")
    if a.ledger == 0:
        return Result(pb.LEDGER_MUST_NOT_BE_ZERO)
    if a.code == 0:
        return Result(pb.CODE_MUST_NOT_BE_ZERO)
    return None


def validate_change(c: pb.AccountChange) -> Result | None:
    """The stateless checks of an account change."""
    if not id_valid(c.id):
        return Result(pb.ID_INVALID, "id")
    if not id_valid(c.account_id):
        return Result(pb.ID_INVALID, "account_id")
    return None


# --- replays ----------------------------------------------------------------------------

_TRANSFER_INPUT_FIELDS = (
    "credit_account_id",
    "amount",
    "ledger",
    "code",
    "flags",
    "pending_id",
    "timeout_s",
    "user_data",
)
_ACCOUNT_INPUT_FIELDS = ("ledger", "code", "flags", "overdraft_limit", "user_data")
_CHANGE_INPUT_FIELDS = ("kind", "overdraft_limit", "user_data")


def _first_difference(stored: object, incoming: object, fields: tuple[str, ...]) -> str:
    for name in fields:
        if getattr(stored, name) != getattr(incoming, name):
            return name
    return ""


def replay_transfer(store: Store, stored: pb.Transfer, request: pb.Transfer) -> Result:
    """The answer to a transfer whose key is already stored."""
    incoming = request
    if stored.state != pb.TRANSFER_REJECTED and stored.flags & (POST_PENDING | VOID_PENDING):
        # A post/void is stored resolved (the pending's accounts, ledger, code and amount
        # filled in). A replay that leaves those empty means the same thing, so it is
        # resolved the same way before comparing.
        incoming = pb.Transfer()
        incoming.CopyFrom(request)
        for name in ("credit_account_id", "ledger", "code", "amount"):
            if not getattr(incoming, name):
                setattr(incoming, name, getattr(stored, name))
    differing = _first_difference(stored, incoming, _TRANSFER_INPUT_FIELDS)
    if differing:
        return Result(pb.EXISTS_WITH_DIFFERENT_FIELDS, differing, stored.timestamp, stored.state)
    if stored.state == pb.TRANSFER_REJECTED:
        return Result(stored.result, rejection_field(store, stored), stored.timestamp, stored.state)
    if stored.state == pb.TRANSFER_IN_FLIGHT:
        return Result(pb.IN_FLIGHT, "", stored.timestamp, stored.state)
    return Result(pb.EXISTS, "", stored.timestamp, stored.state)


def rejection_field(store: Store, rejected: pb.Transfer) -> str:
    """The field a journaled rejection named when it was first answered, derived again for
    its replays (the record keeps the code, not the field): the pending's credit account,
    ledger and code never change, so the first one the request contradicted is still it."""
    if rejected.result == pb.ACCOUNTS_MUST_HAVE_SAME_LEDGER:
        return "ledger"
    if rejected.result == pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS:
        pending = store.get_transfer(rejected.debit_account_id, rejected.pending_id)
        if pending is None:  # found when it was refused, never deleted: a moved-in slot without it
            return ""
        for name in ("credit_account_id", "ledger", "code"):
            value = getattr(rejected, name)
            if value and value != getattr(pending, name):
                return name
        return "amount"
    return ""


# --- transfers --------------------------------------------------------------------------


def reject(store: Store, t: pb.Transfer, code: Code, timestamp: int, field: str = "") -> Result:
    """Journal a stateful failure so that the key keeps failing the same way."""
    record = pb.Transfer()
    record.CopyFrom(t)
    record.timestamp = timestamp
    record.state = pb.TRANSFER_REJECTED
    record.result = code
    store.put_transfer(record)
    return Result(code, field, timestamp, pb.TRANSFER_REJECTED)


def create_transfer(store: Store, t: pb.Transfer, timestamp: int) -> Result:
    """Apply one transfer event at ledger time `timestamp` (unique and increasing)."""
    invalid = validate_transfer(t)
    if invalid is not None:
        return invalid
    return apply_transfer(store, t, timestamp)


def apply_transfer(store: Store, t: pb.Transfer, timestamp: int) -> Result:
    """Steps 6-13 for a transfer that passed `validate_transfer` (the node validates
    before queueing, so the committer does not repeat the stateless checks)."""
    stored = store.get_transfer(t.debit_account_id, t.id)
    if stored is not None:
        return replay_transfer(store, stored, t)

    if t.flags & (POST_PENDING | VOID_PENDING):
        return _resolve_pending(store, t, timestamp)

    debit = store.get_account(t.debit_account_id)
    if debit is None:
        return reject(store, t, pb.DEBIT_ACCOUNT_NOT_FOUND, timestamp)
    credit = store.get_account(t.credit_account_id)
    if credit is None:
        return reject(store, t, pb.CREDIT_ACCOUNT_NOT_FOUND, timestamp)
    if debit.ledger != credit.ledger or t.ledger != debit.ledger:
        return reject(store, t, pb.ACCOUNTS_MUST_HAVE_SAME_LEDGER, timestamp, "ledger")
    status_code = _status_check(debit, credit)
    if status_code:
        return reject(store, t, status_code, timestamp)

    amount = t.amount
    pending = bool(t.flags & PENDING)
    if pending:
        debit_after = debit.debits_pending + amount
        credit_after = credit.credits_pending + amount
    else:
        debit_after = debit.debits_posted + amount
        credit_after = credit.credits_posted + amount
    debit_total = debit.debits_pending + debit.debits_posted + amount
    credit_total = credit.credits_pending + credit.credits_posted + amount
    if debit_after > INT64_MAX or credit_after > INT64_MAX or debit_total > INT64_MAX or credit_total > INT64_MAX:
        return reject(store, t, pb.OVERFLOW, timestamp)
    if debits_past_limit(debit, debit_total):
        return reject(store, t, pb.EXCEEDS_CREDITS, timestamp)
    if credits_past_limit(credit, credit_total):
        return reject(store, t, pb.EXCEEDS_DEBITS, timestamp)

    if pending:
        debit.debits_pending = debit_after
        credit.credits_pending = credit_after
    else:
        debit.debits_posted = debit_after
        credit.credits_posted = credit_after
    record = pb.Transfer()
    record.CopyFrom(t)
    record.timestamp = timestamp
    record.state = pb.TRANSFER_PENDING if pending else pb.TRANSFER_POSTED
    store.put_account(debit)
    store.put_account(credit)
    store.put_transfer(record)
    store.append_history(debit, record)
    store.append_history(credit, record)
    if pending and record.timeout_s:
        store.pending_expiry_set(record, expires_at(record))
    return Result(pb.OK, "", timestamp, record.state)


def _status_check(debit: pb.Account, credit: pb.Account) -> Code:
    if debit.status == pb.CLOSED:
        return pb.DEBIT_ACCOUNT_CLOSED
    if credit.status == pb.CLOSED:
        return pb.CREDIT_ACCOUNT_CLOSED
    if debit.status == pb.FROZEN:
        return pb.DEBIT_ACCOUNT_FROZEN
    if credit.status == pb.FROZEN:
        return pb.CREDIT_ACCOUNT_FROZEN
    return pb.RESULT_CODE_UNSPECIFIED


def resolved_record(t: pb.Transfer, pending: pb.Transfer, amount: int, timestamp: int) -> pb.Transfer:
    record = pb.Transfer()
    record.CopyFrom(t)
    record.credit_account_id = pending.credit_account_id
    record.ledger = pending.ledger
    record.code = pending.code
    record.amount = amount
    record.timestamp = timestamp
    record.state = pb.TRANSFER_POSTED
    return record


S = TypeVar("S", bound=Store)


def resolution_refused(
    store: S,
    t: pb.Transfer,
    pending: pb.Transfer | None,
    timestamp: int,
    expire: Callable[[S, pb.Transfer, int], bool],
    claimed: bool = False,
    inconsistent: Callable[[S, pb.Transfer], str] | None = None,
) -> Result | None:
    """Step 7 for a post/void `t` of `pending` (journaled when it fails), or None when
    `t` may resolve it. An overdue pending is expired with `expire` first. `claimed`:
    a cross-node post of it is in flight (node/outbox.py). `inconsistent`: why a PENDING
    pending's stored data does not add up, "" if it does (default: `unheld`, its credit
    account written in the same batch)."""
    if pending is None or not pending.flags & PENDING or pending.state in (pb.TRANSFER_REJECTED, pb.TRANSFER_IN_FLIGHT):
        return reject(store, t, pb.PENDING_TRANSFER_NOT_FOUND, timestamp)
    for name in ("credit_account_id", "ledger", "code"):
        value = getattr(t, name)
        if value and value != getattr(pending, name):
            return reject(store, t, pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS, timestamp, name)
    if t.flags & VOID_PENDING and 0 < t.amount < pending.amount:
        # A void releases the whole reservation; naming part of it names another amount.
        return reject(store, t, pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS, timestamp, "amount")
    if pending.state == pb.TRANSFER_POSTED or claimed:
        return reject(store, t, pb.PENDING_TRANSFER_ALREADY_POSTED, timestamp)
    if pending.state == pb.TRANSFER_VOIDED:
        return reject(store, t, pb.PENDING_TRANSFER_ALREADY_VOIDED, timestamp)
    if pending.state == pb.TRANSFER_EXPIRED:
        return reject(store, t, pb.PENDING_TRANSFER_EXPIRED, timestamp)
    if pending.state != pb.TRANSFER_PENDING or (inconsistent or unheld)(store, pending):
        # Not journaled: the caller's request is not what is wrong, and nothing changes.
        return Result(pb.STORED_DATA_INCONSISTENT, "pending_id")
    deadline = expires_at(pending)
    if deadline and timestamp >= deadline:
        expired = expire(store, pending, timestamp)
        assert expired, pending
        return reject(store, t, pb.PENDING_TRANSFER_EXPIRED, timestamp)
    if (t.amount or pending.amount) > pending.amount:
        return reject(store, t, pb.EXCEEDS_PENDING_TRANSFER_AMOUNT, timestamp)
    return None


def _resolve_pending(store: Store, t: pb.Transfer, timestamp: int) -> Result:
    pending = store.get_transfer(t.debit_account_id, t.pending_id)
    refused = resolution_refused(store, t, pending, timestamp, expire_pending)
    if refused is not None:
        return refused
    assert pending is not None
    deadline = expires_at(pending)
    void = bool(t.flags & VOID_PENDING)
    amount = t.amount or pending.amount

    debit = store.get_account(pending.debit_account_id)
    credit = store.get_account(pending.credit_account_id)
    # A pending transfer holds a reservation on both accounts; they cannot have vanished.
    assert debit is not None and credit is not None, pending
    if not void:
        status_code = _status_check(debit, credit)
        if status_code:
            return reject(store, t, status_code, timestamp)
    assert debit.debits_pending >= pending.amount and credit.credits_pending >= pending.amount, pending
    debit.debits_pending -= pending.amount
    credit.credits_pending -= pending.amount
    if not void:
        debit.debits_posted += amount
        credit.credits_posted += amount
        assert debit.debits_posted <= INT64_MAX and credit.credits_posted <= INT64_MAX
    pending.state = pb.TRANSFER_VOIDED if void else pb.TRANSFER_POSTED
    pending.amount_posted = 0 if void else amount
    record = resolved_record(t, pending, amount, timestamp)
    store.put_account(debit)
    store.put_account(credit)
    store.put_transfer(pending)
    store.put_transfer(record)
    store.append_history(debit, record)
    store.append_history(credit, record)
    if deadline:
        store.pending_expiry_clear(pending, deadline)
    return Result(pb.OK, "", timestamp, record.state)


def unheld(store: Store, pending: pb.Transfer, local: bool = True) -> str:
    """Why the accounts of a PENDING transfer do not hold its reservation ("" when they do):
    what resolving or expiring it asserts of them. Always "" for a node's own writes; a slot
    that moved in or was restored brings a peer's. `local`: its credit account is written in
    the same batch (else only the debit's half is here: node/outbox.py)."""
    amount = pending.amount
    if amount <= 0:
        return f"its amount {amount} is not positive"
    debit = store.get_account(pending.debit_account_id)
    if debit is None or debit.debits_pending < amount:
        return f"the debit account does not hold its {amount} pending"
    if debit.debits_posted > INT64_MAX - amount:
        return f"the debit account's debits_posted {debit.debits_posted} would pass 2^63 - 1"
    if local:
        credit = store.get_account(pending.credit_account_id)
        if credit is None or credit.credits_pending < amount:
            return f"the credit account does not hold its {amount} pending"
        if credit.credits_posted > INT64_MAX - amount:
            return f"the credit account's credits_posted {credit.credits_posted} would pass 2^63 - 1"
    return ""


def expire_pending(store: Store, pending: pb.Transfer, timestamp: int) -> bool:
    """Release an overdue pending transfer's reservation. False if it was already resolved."""
    if pending.state != pb.TRANSFER_PENDING:
        return False
    deadline = expires_at(pending)
    assert deadline and timestamp >= deadline, (pending, timestamp)
    debit = store.get_account(pending.debit_account_id)
    credit = store.get_account(pending.credit_account_id)
    assert debit is not None and credit is not None, pending
    assert debit.debits_pending >= pending.amount and credit.credits_pending >= pending.amount, pending
    debit.debits_pending -= pending.amount
    credit.credits_pending -= pending.amount
    pending.state = pb.TRANSFER_EXPIRED
    store.put_account(debit)
    store.put_account(credit)
    store.put_transfer(pending)
    event = pb.Transfer()
    event.CopyFrom(pending)
    event.timestamp = timestamp  # the history entry is the expiry event, at its own time
    store.append_history(debit, event)
    store.append_history(credit, event)
    store.pending_expiry_clear(pending, deadline)
    return True


# --- accounts ---------------------------------------------------------------------------


def create_account(store: Store, a: pb.Account, timestamp: int) -> Result:
    """Open one account at ledger time `timestamp`."""
    invalid = validate_account(a)
    if invalid is not None:
        return invalid
    return apply_account(store, a, timestamp)


def apply_account(store: Store, a: pb.Account, timestamp: int) -> Result:
    """An account creation that passed `validate_account`."""
    creation = store.get_account_creation(a.id)
    if creation is not None:
        differing = _first_difference(creation, a, _ACCOUNT_INPUT_FIELDS)
        if differing:
            return Result(pb.EXISTS_WITH_DIFFERENT_FIELDS, differing, creation.timestamp)
        return Result(pb.EXISTS, "", creation.timestamp)
    account = pb.Account()
    account.CopyFrom(a)
    account.status = pb.ACTIVE
    account.timestamp = timestamp
    store.put_account_creation(account)
    store.put_account(account)
    return Result(pb.OK, "", timestamp)


def change_account(store: Store, c: pb.AccountChange, timestamp: int) -> Result:
    """Apply one account change (freeze, unfreeze, close, set overdraft limit)."""
    invalid = validate_change(c)
    if invalid is not None:
        return invalid
    return apply_change(store, c, timestamp)


def apply_change(store: Store, c: pb.AccountChange, timestamp: int) -> Result:
    """An account change that passed `validate_change`."""
    stored = store.get_change(c.account_id, c.id)
    if stored is not None:
        differing = _first_difference(stored, c, _CHANGE_INPUT_FIELDS)
        if differing:
            return Result(pb.EXISTS_WITH_DIFFERENT_FIELDS, differing, stored.timestamp)
        if stored.result != pb.OK:
            return Result(stored.result, "", stored.timestamp)
        return Result(pb.EXISTS, "", stored.timestamp)

    account = store.get_account(c.account_id)
    code: Code = pb.OK
    if account is None:
        code = pb.ACCOUNT_NOT_FOUND
    elif account.status == pb.CLOSED:
        code = pb.ACCOUNT_CLOSED
    elif c.kind == pb.FREEZE and account.status == pb.FROZEN:
        code = pb.ACCOUNT_ALREADY_FROZEN
    elif c.kind == pb.UNFREEZE and account.status != pb.FROZEN:
        code = pb.ACCOUNT_NOT_FROZEN
    elif c.kind == pb.CLOSE and (account.debits_pending or account.credits_pending):
        code = pb.ACCOUNT_HAS_PENDING_TRANSFERS

    record = pb.AccountChange()
    record.CopyFrom(c)
    record.timestamp = timestamp
    record.result = code
    store.put_change(record)
    if code != pb.OK:
        return Result(code, "", timestamp)
    assert account is not None
    if c.kind == pb.FREEZE:
        account.status = pb.FROZEN
    elif c.kind == pb.UNFREEZE:
        account.status = pb.ACTIVE
    elif c.kind == pb.CLOSE:
        account.status = pb.CLOSED
    else:
        account.overdraft_limit = c.overdraft_limit
    store.put_account(account)
    return Result(pb.OK, "", timestamp)
