"""The contract of the public ledger API that every process checks the same way.

What a well-formed request is (flags known and not contradictory, ledger-assigned
fields left unset, limits non-negative) and what a valid id is. A router refuses a
malformed batch whole before forwarding any part of it; a node refuses it before
applying any part. Business outcomes (result codes) are the state machine's, in
node/state_machine.py; this module only says what may be asked.
"""

from __future__ import annotations

import re

from proto import ledger_pb2 as pb

ID_LENGTH_MAX = 64
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
