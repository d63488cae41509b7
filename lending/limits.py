"""Unified credit limits kept on the ledger: a customer limit shared by product sub-limits.

Accounts (all under the customer's hash tag, so one slot: every operation below is a
batch to one slot and each of its transfers is atomic), in the currency's limit book
(ledger `LIMIT_LEDGER_BASE + ISO 4217 numeric`, apart from money):

    {c<id>}:limit:source        granted limit comes from here and lowered limit goes back
    {c<id>}:limit               customer limit available  (DEBITS_MUST_NOT_EXCEED_CREDITS)
    {c<id>}:limit:drawn         consumed by drawdowns     (FREEZE here stops drawdowns)
    {c<id>}:limit:repaid        restored by repayments
    {c<id>}:limit:<P>           product P's sub-limit available (same flag)
    {c<id>}:limit:<P>:drawn     consumed under P          (FREEZE here stops P only)
    {c<id>}:limit:<P>:repaid    restored under P

So granted = source's debits - credits, used = drawn - repaid, available = limit's balance
minus what is reserved. A freeze sits on the `drawn` account, not on the limit itself, so
a frozen customer's repayments still restore their limit.

Operations, each journaled on the ledger under ids derived from the caller's operation id
(`op`), and each safe to retry with the same op:

- grant / raise: source -> limit. lower: limit -> source; the flag refuses lowering below
  what is drawn (EXCEEDS_CREDITS), and nothing changes.
- freeze / unfreeze: ChangeAccounts on the `drawn` account of the level.
- consume (a drawdown of A under P), two-phase so that no limit is ever exceeded, however
  many drawdowns race:
    1. reserve: one batch of two PENDING transfers, limit -> drawn and limit:P -> limit:P:drawn;
       a reservation counts against the flag at once (debits_pending), so a concurrent
       drawdown sees it.
    2. both reserved: post both in one batch. Otherwise void whichever was reserved; the
       outcome is the refusal (EXCEEDS_CREDITS, CREDIT_ACCOUNT_FROZEN, ...).
  Reservations expire after RESERVE_TIMEOUT_S, so a caller that dies between the steps
  leaves nothing held. A retry with the same op replays step 1 (the ledger answers each
  transfer's stored state) and finishes the job; if one leg was posted and the other
  expired meanwhile, the posted leg is given back by a compensating restore.
- restore (a repayment of A under P): repaid -> limit and limit:P:repaid -> limit:P in one
  batch. Restorations are bounded by what the loan layer repays, not by these accounts.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from clients.ledger import (
    Account,
    AccountChange,
    AccountFlags,
    AccountStatus,
    ChangeKind,
    LedgerClient,
    Result,
    ResultCode,
    Transfer,
    TransferFlags,
    TransferState,
)

LIMIT_LEDGER_BASE = 100_000  # limit books: 100156 holds CNY limits, apart from money in 156
RESERVE_TIMEOUT_S = 300
CUSTOMER_PATTERN = re.compile(r"[A-Za-z0-9]{1,20}")
OP_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,40}")


class Code(enum.IntEnum):
    """Account codes (account types) and transfer codes of the limit book."""

    SOURCE = 9001
    LIMIT = 9002
    DRAWN = 9003
    REPAID = 9004
    GRANT = 9101
    LOWER = 9102
    CONSUME = 9103
    RESTORE = 9104


class BadLimitRequest(ValueError):
    """A malformed request; the message starts with the parameter's name."""


@dataclass(frozen=True, slots=True)
class Level:
    """The accounts of one level: the customer's (product None) or one product's."""

    customer: str
    product: str | None

    @property
    def limit(self) -> str:
        return f"{{c{self.customer}}}:limit" + (f":{self.product}" if self.product else "")

    @property
    def drawn(self) -> str:
        return f"{self.limit}:drawn"

    @property
    def repaid(self) -> str:
        return f"{self.limit}:repaid"

    @property
    def source(self) -> str:
        return f"{{c{self.customer}}}:limit:source"


@dataclass(frozen=True, slots=True)
class LevelView:
    granted: int
    used: int
    reserved: int
    available: int
    frozen: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an operation ended: OK, or the ledger's reason it was refused."""

    code: ResultCode

    @property
    def ok(self) -> bool:
        return self.code is ResultCode.OK


OK = Outcome(ResultCode.OK)


def _check_names(customer: str, op: str | None = None, product: str | None = None) -> None:
    if not CUSTOMER_PATTERN.fullmatch(customer):
        raise BadLimitRequest(f"customer: {customer!r} is not 1-20 letters and digits")
    if op is not None and not OP_PATTERN.fullmatch(op):
        raise BadLimitRequest(f"op: {op!r} is not 1-40 characters of A-Z, a-z, 0-9, '.', '_', '-'")
    if product is not None and not re.fullmatch(r"[A-Z][A-Z0-9-]{1,23}", product):
        raise BadLimitRequest(f"product: {product!r} is not a product code")


def _check_amount(amount: int) -> None:
    if amount <= 0:
        raise BadLimitRequest(f"amount: {amount} must be positive")


# What a leg left VOIDED or EXPIRED by an earlier attempt of the operation answers.
_REPLAYED = (ResultCode.PENDING_TRANSFER_ALREADY_VOIDED, ResultCode.PENDING_TRANSFER_EXPIRED)


def _refusal(result: Result) -> ResultCode:
    if result.code is ResultCode.EXISTS:
        expired = result.state is TransferState.EXPIRED
        return ResultCode.PENDING_TRANSFER_EXPIRED if expired else ResultCode.PENDING_TRANSFER_ALREADY_VOIDED
    return result.code


def _settled(result: Result) -> bool:
    """The transfer is done: just now, or by an earlier attempt of the same operation."""
    return result.ok or (result.code is ResultCode.EXISTS and result.state is TransferState.POSTED)


class CreditLimits:
    """Credit limits of customers, on the ledger behind `ledger` (an SDK client)."""

    def __init__(self, ledger: LedgerClient, currency_ledger: int) -> None:
        self.ledger = ledger
        self.book = LIMIT_LEDGER_BASE + currency_ledger

    # --- accounts and grants ------------------------------------------------------------

    def accounts(self, customer: str, products: Sequence[str] = ()) -> list[Account]:
        """The customer's limit accounts and those of `products`, to open (all in its slot)."""
        _check_names(customer)
        for product in products:
            _check_names(customer, product=product)
        customer_level = Level(customer, None)
        accounts = [Account(customer_level.source, self.book, Code.SOURCE)]
        for level in [customer_level, *(Level(customer, p) for p in products)]:
            accounts += [
                Account(level.limit, self.book, Code.LIMIT, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                Account(level.drawn, self.book, Code.DRAWN),
                Account(level.repaid, self.book, Code.REPAID),
            ]
        return accounts

    async def open(self, customer: str, products: Sequence[str] = ()) -> list[Result]:
        """Create the customer's limit accounts and those of `products` (EXISTS when they are there)."""
        return await self.ledger.create_accounts(self.accounts(customer, products))

    async def raise_limit(self, customer: str, product: str | None, amount: int, op: str) -> Outcome:
        """Grant `amount` more limit at one level (the first grant is a raise from zero)."""
        [result] = await self.ledger.create_transfers([self.raise_transfer(customer, product, amount, op)])
        return OK if _settled(result) else Outcome(result.code)

    # The transfers of an operation, for a caller that commits them with its own records in one
    # commit of the customer's slot (lending/loan_service.py; node/records.py): all of them
    # or none, so a consumption needs no two phases there.

    def raise_transfer(self, customer: str, product: str | None, amount: int, op: str) -> Transfer:
        _check_names(customer, op, product)
        _check_amount(amount)
        level = Level(customer, product)
        return Transfer(f"{op}:raise", level.source, level.limit, amount, self.book, Code.GRANT)

    def consume_transfers(self, customer: str, product: str, amount: int, op: str) -> list[Transfer]:
        """limit -> drawn at the customer's level and the product's; the limit accounts' flag
        refuses either past what is available (EXCEEDS_CREDITS), a freeze on a drawn account
        refuses it too (CREDIT_ACCOUNT_FROZEN)."""
        _check_names(customer, op, product)
        _check_amount(amount)
        return [
            Transfer(f"{op}:{tag}", level.limit, level.drawn, amount, self.book, Code.CONSUME)
            for tag, level in (("c", Level(customer, None)), ("p", Level(customer, product)))
        ]

    def restore_transfers(self, customer: str, product: str, amount: int, op: str) -> list[Transfer]:
        _check_names(customer, op, product)
        _check_amount(amount)
        return [
            Transfer(f"{op}:{tag}", level.repaid, level.limit, amount, self.book, Code.RESTORE)
            for tag, level in (("c", Level(customer, None)), ("p", Level(customer, product)))
        ]

    async def lower_limit(self, customer: str, product: str | None, amount: int, op: str) -> Outcome:
        """Take `amount` of limit away at one level; refused (EXCEEDS_CREDITS) beyond what is available."""
        _check_names(customer, op, product)
        _check_amount(amount)
        level = Level(customer, product)
        transfer = Transfer(f"{op}:lower", level.limit, level.source, amount, self.book, Code.LOWER)
        [result] = await self.ledger.create_transfers([transfer])
        return OK if _settled(result) else Outcome(result.code)

    async def freeze(self, customer: str, product: str | None, op: str, frozen: bool = True) -> Outcome:
        """Stop (or, frozen=False, allow again) drawdowns at one level; repayments still restore it."""
        _check_names(customer, op, product)
        kind = ChangeKind.FREEZE if frozen else ChangeKind.UNFREEZE
        change = AccountChange(f"{op}:{kind.name.lower()}", Level(customer, product).drawn, kind)
        [result] = await self.ledger.change_accounts([change])
        return OK if result.code in (ResultCode.OK, ResultCode.EXISTS) else Outcome(result.code)

    # --- drawdowns and repayments -------------------------------------------------------

    async def consume(self, customer: str, product: str, amount: int, op: str) -> Outcome:
        """Take `amount` from the customer's limit and product's sub-limit together, or from neither."""
        _check_names(customer, op, product)
        _check_amount(amount)
        levels = [Level(customer, None), Level(customer, product)]
        reserves = [
            Transfer(
                f"{op}:{tag}",
                level.limit,
                level.drawn,
                amount,
                self.book,
                Code.CONSUME,
                flags=TransferFlags.PENDING,
                timeout_s=RESERVE_TIMEOUT_S,
            )
            for tag, level in zip("cp", levels, strict=True)
        ]
        reserved = await self.ledger.create_transfers(reserves)
        held = [r.ok or (r.code is ResultCode.EXISTS and r.state is TransferState.PENDING) for r in reserved]
        posted = [_settled(r) and not h for r, h in zip(reserved, held, strict=True)]
        refusals = [_refusal(r) for r, h, p in zip(reserved, held, posted, strict=True) if not (h or p)]
        if not refusals and any(held):
            # Every leg is reserved (or was posted by an earlier attempt): post the rest in one batch.
            to_post = [
                self._resolution(t, TransferFlags.POST_PENDING) for t, h in zip(reserves, held, strict=True) if h
            ]
            answers = iter(await self.ledger.create_transfers(to_post))
            for index in range(len(reserves)):
                if held[index]:
                    answer = next(answers)
                    held[index], posted[index] = False, _settled(answer)
                    if not posted[index]:
                        refusals.append(answer.code)  # expired meanwhile: the caller took too long
        if not refusals:
            return OK
        # Refused: release what is held, give back what was posted.
        voids = [self._resolution(t, TransferFlags.VOID_PENDING) for t, h in zip(reserves, held, strict=True) if h]
        undos = [
            Transfer(f"{t.id}:undo", level.repaid, level.limit, amount, self.book, Code.RESTORE)
            for t, p, level in zip(reserves, posted, levels, strict=True)
            if p
        ]
        if voids or undos:
            await self.ledger.create_transfers([*voids, *undos])
        # The ledger's own reason first; a leg resolved by an earlier attempt says only how it ended.
        return Outcome(min(refusals, key=lambda code: code in _REPLAYED))

    def _resolution(self, pending: Transfer, flags: TransferFlags) -> Transfer:
        suffix = "post" if flags is TransferFlags.POST_PENDING else "void"
        return Transfer(f"{pending.id}:{suffix}", pending.debit_account_id, pending_id=pending.id, flags=flags)

    async def restore(self, customer: str, product: str, amount: int, op: str) -> Outcome:
        """Give `amount` back to the customer's limit and the product's sub-limit (a repayment of principal)."""
        results = await self.ledger.create_transfers(self.restore_transfers(customer, product, amount, op))
        refusal = next((r.code for r in results if not _settled(r)), None)
        return OK if refusal is None else Outcome(refusal)

    # --- reading ------------------------------------------------------------------------

    async def views(self, customer: str, product: str) -> tuple[LevelView, LevelView]:
        """`view` of the customer's level and the product's, in one read."""
        _check_names(customer, product=product)
        levels = [Level(customer, None), Level(customer, product)]
        found = await self.ledger.lookup_accounts([a for lv in levels for a in (lv.limit, lv.drawn, lv.repaid)])
        if any(account is None for account in found):
            raise BadLimitRequest(f"customer: {customer} has no limit accounts for {product}")
        return _view(*found[:3]), _view(*found[3:])  # type: ignore[arg-type]

    async def granted(self, customer: str, product: str) -> tuple[int, int]:
        """The limit granted at the customer's level and the product's, in one read (`view`'s
        granted); an account not open yet counts as empty (a customer's first credit line
        opens them, in the commit that raises them)."""
        _check_names(customer, product=product)
        levels = [Level(customer, None), Level(customer, product)]
        found = await self.ledger.lookup_accounts([a for lv in levels for a in (lv.limit, lv.drawn, lv.repaid)])
        granted = [
            (limit.credits_posted - limit.debits_posted if limit is not None else 0)
            + (drawn.credits_posted if drawn is not None else 0)
            - (repaid.debits_posted if repaid is not None else 0)
            for limit, drawn, repaid in (found[:3], found[3:])
        ]
        return granted[0], granted[1]

    async def view(self, customer: str, product: str | None = None) -> LevelView:
        """Granted, used, reserved and available limit of one level, and whether it is frozen."""
        _check_names(customer, product=product)
        level = Level(customer, product)
        limit, drawn, repaid = await self.ledger.lookup_accounts([level.limit, level.drawn, level.repaid])
        if limit is None or drawn is None or repaid is None:
            raise BadLimitRequest(
                f"customer: {customer} has no limit accounts" + (f" for {product}" if product else "")
            )
        return _view(limit, drawn, repaid)


def _view(limit: Account, drawn: Account, repaid: Account) -> LevelView:
    used = drawn.credits_posted - repaid.debits_posted
    available = limit.credits_posted - limit.debits_posted - limit.debits_pending
    granted = available + limit.debits_pending + used
    return LevelView(granted, used, limit.debits_pending, available, drawn.status is AccountStatus.FROZEN)
