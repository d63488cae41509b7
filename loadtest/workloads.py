"""What `yunkai bench` sends: the scenarios' operation mixes, over the SDK or to PostgreSQL.

A run has `customers` customers, each with a deposit and a loan account that share a slot
by hash tag (`{c<run>-42}:deposit`, `{c<run>-42}:loan`). Until lending exists (issue 7) a
drawdown is a transfer from the customer's loan account to their deposit account and a
repayment the reverse. Kinds of operation:

  drawdown, repayment   one transfer within a customer (single-slot)
  payment               one transfer between two customers' deposits (other slots, often
                        another node: the durable outbox); `--cross-slot F` makes that
                        share of the write scenario's transfers payments
  balance               look one account up
  history               the newest 10 transfers of one account (one RPC: not batched)
  application           a credit application: score one row with `credit_risk`, and open
                        the new customer's two accounts when the score approves
  score                 one-row `credit_risk` inference alone

Every operation is one caller's call; the SDK coalesces concurrent calls into batches per
node, as it does for any service. `Target` implementations own their connections and turn
one operation into (kind, error or None); the PostgreSQL peer answers the write scenario's
transfers in postgres_peer.py, which builds on this module (bench.py picks the target).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from clients.ledger import Account, LedgerClient, LedgerError, ResultCode, Transfer
from clients.scoring import ScoringClient
from loadtest.openloop import Outcomes

LEDGER = 156  # CNY, in fen
CODE_DEPOSIT, CODE_LOAN = 2001, 1301
CODE_DRAWDOWN, CODE_REPAYMENT, CODE_PAYMENT = 1, 2, 3
MODEL = "credit_risk"
APPROVE_BELOW = 0.5  # probability of default under which an application opens accounts
WARMUP_CUSTOMERS = 256  # looked up before the run: enough to reach every node

MIXES: dict[str, dict[str, float]] = {
    "write": {"drawdown": 0.5, "repayment": 0.5},
    "query": {"balance": 1.0},
    # A partner platform's day: queries far outnumber writes.
    "mixed": {"balance": 0.75, "history": 0.04, "drawdown": 0.09, "repayment": 0.09, "application": 0.03},
    "scoring": {"score": 1.0},
    # The write load while a node is added (issue 4's benchmark: writes are what a move pauses).
    "scale": {"drawdown": 0.5, "repayment": 0.5},
}
SCENARIOS = tuple(MIXES)
TRANSFER_KINDS = ("drawdown", "repayment", "payment")


@dataclass(frozen=True)
class Plan:
    """Everything a driver process needs to know about the run (it crosses processes)."""

    scenario: str
    rate: float
    duration_s: float
    procs: int
    start: float  # clock() of operation 0
    run: str  # makes this run's account ids unique
    series: str  # makes this run's (or sweep probe's) transfer ids unique
    customers: int
    cross_slot: float
    timeout_s: float
    router: str | None = None
    via_router: bool = False
    scoring: str | None = None
    postgres: str | None = None  # conninfo: the PostgreSQL peer is the target
    postgres_pool: int = 32
    batch_due: bool = False  # send the operations due together as one SDK call per kind (openloop.drive)
    inflight_max: int = 20_000  # per driver (openloop.drive)


def deposit(run: str, customer: int) -> str:
    return f"{{c{run}-{customer}}}:deposit"


def loan(run: str, customer: int) -> str:
    return f"{{c{run}-{customer}}}:loan"


def accounts_of(run: str, customers: int) -> list[Account]:
    """Every customer's deposit and loan accounts (created before the measured run)."""
    accounts = []
    for c in range(customers):
        accounts.append(Account(deposit(run, c), LEDGER, CODE_DEPOSIT))
        accounts.append(Account(loan(run, c), LEDGER, CODE_LOAN))
    return accounts


class Target(Protocol):
    async def operation(self, index: int) -> tuple[str, str | None]: ...

    async def close(self) -> None: ...


class Chooser:
    """Picks each operation's kind and customer; seeded per driver, so runs repeat."""

    def __init__(self, plan: Plan, worker: int) -> None:
        mix = dict(MIXES[plan.scenario])
        if plan.scenario == "write" and plan.cross_slot > 0:
            mix = {k: v * (1 - plan.cross_slot) for k, v in mix.items()} | {"payment": plan.cross_slot}
        self.kinds = list(mix)
        self.weights = list(mix.values())
        self.rng = random.Random(worker)
        self.customers = plan.customers

    def kind(self) -> str:
        return self.rng.choices(self.kinds, self.weights)[0]

    def customer(self) -> int:
        return self.rng.randrange(self.customers)

    def amount(self) -> int:
        return 100 * self.rng.randrange(1, 50_000)


class YunkaiTarget:
    """Operations over the SDK (smart routing by default, or through the router)."""

    def __init__(self, plan: Plan, worker: int, ledger: LedgerClient | None, scoring: ScoringClient | None) -> None:
        self.plan = plan
        self.choose = Chooser(plan, worker)
        self.ledger = ledger
        self.scoring = scoring
        self.features: list[str] = []

    @staticmethod
    async def open(plan: Plan, worker: int) -> YunkaiTarget:
        kinds = set(MIXES[plan.scenario])
        ledger = None
        if kinds - {"score"}:
            assert plan.router is not None
            ledger = await LedgerClient.connect(plan.router, via_router=plan.via_router, timeout_s=plan.timeout_s)
        scoring = None
        if kinds & {"score", "application"}:
            assert plan.scoring is not None
            scoring = ScoringClient(plan.scoring, deadline_s=plan.timeout_s)  # as YUNKAI_TLS_DIR's service
        target = YunkaiTarget(plan, worker, ledger, scoring)
        # Warm up before the clock starts: channels to every node, the model's metadata.
        if ledger is not None:
            await ledger.lookup_accounts([deposit(plan.run, c) for c in range(min(plan.customers, WARMUP_CUSTOMERS))])
        if scoring is not None:
            target.features = await scoring.features_of(MODEL)
            await scoring.score(MODEL, [dict.fromkeys(target.features, 0.0)])
        return target

    async def close(self) -> None:
        if self.ledger is not None:
            await self.ledger.close()
        if self.scoring is not None:
            await self.scoring.close()

    async def operation(self, index: int) -> tuple[str, str | None]:
        kind = self.choose.kind()
        try:
            return kind, await self._run(kind, index)
        except Exception as error:  # a refused or timed-out call of the system under test
            return kind, _error_name(error)

    def group(self, indices: list[int]) -> list[Awaitable[Outcomes]]:
        """The operations due together: their transfers as one SDK call, their balance queries
        as another, the rest one call each."""
        transfers: list[tuple[int, str, Transfer]] = []
        lookups: list[tuple[int, str]] = []
        calls: list[Awaitable[Outcomes]] = []
        for index in indices:
            kind = self.choose.kind()
            if kind in TRANSFER_KINDS:
                transfers.append((index, kind, self._transfer(kind, index)))
            elif kind == "balance":
                lookups.append((index, deposit(self.plan.run, self.choose.customer())))
            else:
                calls.append(self._alone(index, kind))
        if transfers:
            calls.append(self._transfers(transfers))
        if lookups:
            calls.append(self._lookups(lookups))
        return calls

    async def _alone(self, index: int, kind: str) -> Outcomes:
        try:
            return [(index, kind, await self._run(kind, index))]
        except Exception as error:
            return [(index, kind, _error_name(error))]

    async def _transfers(self, items: list[tuple[int, str, Transfer]]) -> Outcomes:
        assert self.ledger is not None
        try:
            results = await self.ledger.create_transfers([transfer for _, _, transfer in items])
        except Exception as error:
            return [(index, kind, _error_name(error)) for index, kind, _ in items]
        return [
            (index, kind, _transfer_error(result.code)) for (index, kind, _), result in zip(items, results, strict=True)
        ]

    async def _lookups(self, items: list[tuple[int, str]]) -> Outcomes:
        assert self.ledger is not None
        try:
            accounts = await self.ledger.lookup_accounts([account_id for _, account_id in items])
        except Exception as error:
            return [(index, "balance", _error_name(error)) for index, _ in items]
        return [
            (index, "balance", None if account is not None else "ACCOUNT_NOT_FOUND")
            for (index, _), account in zip(items, accounts, strict=True)
        ]

    def _transfer(self, kind: str, index: int) -> Transfer:
        run, c = self.plan.run, self.choose.customer()
        if kind == "drawdown":
            debit, credit, code = loan(run, c), deposit(run, c), CODE_DRAWDOWN
        elif kind == "repayment":
            debit, credit, code = deposit(run, c), loan(run, c), CODE_REPAYMENT
        else:
            other = (c + 1 + self.choose.rng.randrange(self.plan.customers - 1)) % self.plan.customers
            debit, credit, code = deposit(run, c), deposit(run, other), CODE_PAYMENT
        return Transfer(f"t{self.plan.series}.{index}", debit, credit, self.choose.amount(), LEDGER, code)

    async def _run(self, kind: str, index: int) -> str | None:
        if kind in TRANSFER_KINDS:
            assert self.ledger is not None
            [result] = await self.ledger.create_transfers([self._transfer(kind, index)])
            return _transfer_error(result.code)
        run, c = self.plan.run, self.choose.customer()
        if kind == "balance":
            assert self.ledger is not None
            [account] = await self.ledger.lookup_accounts([deposit(run, c)])
            return None if account is not None else "ACCOUNT_NOT_FOUND"
        if kind == "history":
            assert self.ledger is not None
            await self.ledger.get_account_transfers(deposit(run, c), limit=10, newest_first=True)
            return None
        assert self.scoring is not None
        row = {name: self.choose.rng.random() for name in self.features}
        [probability] = await self.scoring.score(MODEL, [row])
        if kind == "score" or probability >= APPROVE_BELOW:
            return None
        assert self.ledger is not None
        tag = f"a{self.plan.series}.{index}"
        results = await self.ledger.create_accounts(
            [Account(f"{{{tag}}}:deposit", LEDGER, CODE_DEPOSIT), Account(f"{{{tag}}}:loan", LEDGER, CODE_LOAN)]
        )
        wrong = [r.code.name for r in results if not r.ok]
        return wrong[0] if wrong else None


def _error_name(error: Exception) -> str:
    """What went wrong with a call, for the error count: the SDK's or gRPC's status, else the type."""
    if isinstance(error, LedgerError):
        return str(error.code.name)
    code = getattr(error, "code", None)
    return str(code().name) if callable(code) else type(error).__name__


def _transfer_error(code: ResultCode) -> str | None:
    """A transfer's outcome as the harness counts it. Every operation's id is its own, so
    EXISTS (the same transfer, same fields) can only be the SDK's retry of an attempt that was
    applied but not answered (its node died after committing and replicating it): done once,
    as asked. EXISTS_WITH_DIFFERENT_FIELDS stays an error."""
    return None if code is ResultCode.OK or code is ResultCode.EXISTS else code.name
