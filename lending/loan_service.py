"""yunkai.lending.v1.LoanService: credit lines, drawdowns, repayments, end of day and the GL view.

Owns the loan store (contracts, schedules, states, end-of-day checkpoints in the lending
server's RocksDB) and the I/O around lending/loans.py's decisions: every movement of money
is a ledger transfer through the SDK, with an id derived from the client's id (loan_id,
repayment_id) or from loan id and business date, so any step can be retried and replays.

A credit line (ApproveCreditLine, which the risk service calls for an approval) raises the
customer's limits and carries the line's price; a drawdown takes that price unless it names
its own rate within the product's bounds.

Order of a drawdown: consume the limits (lending/limits.py, op `d.<loan>`), store the loan
PENDING, open its accounts, move the principal (and charge the origination fee), store it
ACTIVE. A repayment is stored with its allocation (done=false) before its transfers and
marked done after them: a retry with the same repayment_id finishes what a crash left.
Changes of one customer run one at a time (a lock per customer); end of day takes the same
lock loan by loan, so a repayment never interleaves with that loan's end of day.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import date

import grpc
from prometheus_client import Counter
from rocksdict import WriteBatch

import serving
from clients.ledger import Account, AccountFlags, LedgerClient, Result, ResultCode, Transfer, TransferState
from lending import journal, loans as rules
from lending.allocation import allocate
from lending.limits import CreditLimits
from lending.products import ProductStore, ledger_of
from proto import lending_pb2 as pb, risk_pb2, risk_pb2_grpc

drawdowns_total = Counter(
    "yunkai_lending_drawdowns_total",
    "Drawdowns asked, by product and outcome (passed, refused_no_line, refused_by_limits): the pass rate's counts",
    ["product", "outcome"],
)

log = logging.getLogger("yunkai.lending")

OUTCOME_TIMEOUT_S = 10.0
# The risk server's answers that will never change for a loan (no such decision, not approved,
# malformed): the loan is marked told. Any other refusal is tried again the next end of day.
OUTCOME_NEVER_TAKEN = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS)
LOOKUP_BATCH_MAX = 1_000  # accounts per LookupAccounts call of the GL report (the node takes 8,192 events)
# GL codes of the balances no product maps (chart of accounts of the Chinese enterprise
# accounting standards, 企业会计准则应用指南 附录: 2011 吸收存款, 3001 清算资金往来, 1221 其他应收款).
DEPOSITS_GL = ("2011", "Customer deposits")
SETTLEMENT_GL = ("3001", "Clearing funds (payments in transit)")
FEES_RECEIVABLE_GL = ("1221", "Fees receivable")
IMPAIRMENT_GL = ("6702", "Credit impairment losses")  # 信用减值损失 (CAS 22, the financial instruments standard)
# Expected credit loss by IFRS 9 stage, of the principal outstanding: stage 1 (up to 30 days past
# due: 12-month losses), stage 2 (31-90 days: a significant increase in credit risk, IFRS 9
# 5.5.11's 30-day presumption; lifetime losses), stage 3 (over 90 days: credit-impaired, B5.5.37's
# 90-day presumption of default). The rates are this sample bank's parameters, not a standard's.
STAGE_LOSS_BPS = (100, 1_500, 6_000)


class LedgerFailed(RuntimeError):
    """The ledger refused a transfer the loan's state said would pass: UNAVAILABLE, retry with the same id."""


def _settled(result: Result) -> bool:
    return result.ok or (result.code is ResultCode.EXISTS and result.state is TransferState.POSTED)


class LoanStore:
    """Loans, credit lines and end-of-day checkpoints, durable in RocksDB (one fsync'd write per change).

    Everything is also held in memory: the server looks loans up by id, by customer and by
    slot; a lending server holds at most the loans of the customers it serves.
    """

    def __init__(self, data_dir: str) -> None:
        self._db, self._sync = serving.open_store(data_dir, "loans")
        self.loans: dict[str, pb.Loan] = {}
        self.by_customer: defaultdict[str, set[str]] = defaultdict(set)  # customer -> loan ids
        self.lines: dict[tuple[str, str], pb.CreditLine] = {}
        self.checkpoints: set[tuple[str, int]] = set()
        self.tallies: dict[str, pb.DrawdownTally] = {}  # business date -> drawdowns asked that day
        self.closes: dict[str, pb.PeriodClose] = {}  # business date -> its close
        for key, value in self._db.items():
            assert isinstance(key, bytes), key  # raw mode: keys are bytes
            kind, _, name = key.decode().partition("/")
            if kind == "loan":
                loan = pb.Loan.FromString(value)
                assert loan.loan_id == name, key  # the record is where its key says
                self.loans[name] = loan
                self.by_customer[loan.customer].add(name)
            elif kind == "line":
                line = pb.CreditLine.FromString(value)
                assert name == f"{line.customer}/{line.product_code}", key
                self.lines[(line.customer, line.product_code)] = line
            elif kind == "close":
                closed = pb.PeriodClose.FromString(value)
                assert closed.date == name, key
                self.closes[name] = closed
            elif kind == "tally":
                tally = pb.DrawdownTally.FromString(value)
                assert tally.date == name, key
                self.tallies[name] = tally
            else:
                assert kind == "eod", key
                day, _, slot = name.partition("/")
                self.checkpoints.add((day, int(slot)))

    def close(self) -> None:
        self._db.close()

    def put_loan(self, loan: pb.Loan) -> None:
        stored = pb.Loan()
        stored.CopyFrom(loan)
        self._db.put(f"loan/{loan.loan_id}".encode(), stored.SerializeToString(), self._sync)
        self.loans[loan.loan_id] = stored
        self.by_customer[loan.customer].add(loan.loan_id)

    def delete_loan(self, loan_id: str) -> None:
        self._db.delete(f"loan/{loan_id}".encode(), self._sync)
        removed = self.loans.pop(loan_id, None)
        if removed is not None:
            self.by_customer[removed.customer].discard(loan_id)
            if not self.by_customer[removed.customer]:
                del self.by_customer[removed.customer]

    def count_drawdown(self, day: str, outcome: str, product: str, loan: pb.Loan | None = None) -> None:
        """Count a drawdown asked on `day` (`outcome`: a DrawdownTally field: passed,
        refused_no_line or refused_by_limits), with the loan it made, in one fsync'd write."""
        tally = pb.DrawdownTally(date=day)
        if day in self.tallies:
            tally.CopyFrom(self.tallies[day])
        tally.asked += 1
        setattr(tally, outcome, getattr(tally, outcome) + 1)
        assert tally.asked == tally.passed + tally.refused_no_line + tally.refused_by_limits, tally
        batch = WriteBatch(raw_mode=True)
        batch.put(f"tally/{day}".encode(), tally.SerializeToString())
        stored = None
        if loan is not None:
            stored = pb.Loan()
            stored.CopyFrom(loan)
            batch.put(f"loan/{loan.loan_id}".encode(), stored.SerializeToString())
        self._db.write(batch, self._sync)
        self.tallies[day] = tally
        if stored is not None:
            self.loans[stored.loan_id] = stored
            self.by_customer[stored.customer].add(stored.loan_id)
        drawdowns_total.labels(product, outcome).inc()

    def put_close(self, closed: pb.PeriodClose) -> None:
        self._db.put(f"close/{closed.date}".encode(), closed.SerializeToString(), self._sync)
        self.closes[closed.date] = closed

    def put_line(self, line: pb.CreditLine) -> None:
        self._db.put(f"line/{line.customer}/{line.product_code}".encode(), line.SerializeToString(), self._sync)
        self.lines[(line.customer, line.product_code)] = line

    def put_checkpoint(self, day: str, slot: int) -> None:
        self._db.put(f"eod/{day}/{slot}".encode(), b"done", self._sync)
        self.checkpoints.add((day, slot))

    def loan(self, loan_id: str) -> pb.Loan:
        """A copy of the stored loan (callers change copies, then store them)."""
        stored = self.loans.get(loan_id)
        if stored is None:
            raise rules.LoanNotFound(f"loan_id: no loan {loan_id!r}")
        copy = pb.Loan()
        copy.CopyFrom(stored)
        return copy


class LoanService:
    """The operations of yunkai.lending.v1.LoanService over a LoanStore, the product store and the ledger."""

    def __init__(
        self,
        store: LoanStore,
        products: ProductStore,
        ledger: LedgerClient,
        slots_total: int,
        risk: risk_pb2_grpc.DecisionServiceStub | None = None,
    ) -> None:
        self.store = store
        self.products = products
        self.ledger = ledger
        self.slots_total = slots_total
        self.risk = risk  # where loans' outcomes are told (lending serve --risk)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # One close, and one provisioning, at a time: each reads, decides and writes across awaits.
        self._closing = asyncio.Lock()
        self._provisioning = asyncio.Lock()

    def _limits(self, currency: str) -> CreditLimits:
        return CreditLimits(self.ledger, ledger_of(currency))

    def _product(self, code: str, version: int) -> pb.Product:
        return self.products.get(code, version)

    def _book(self, loan: pb.Loan) -> int:
        return ledger_of(self._product(loan.product_code, loan.product_version).parameters.currency)

    async def _transfer(self, transfers: Sequence[Transfer], day: str) -> None:
        """Make the transfers, each dated `day` (the business date, YYYY-MM-DD) in its user_data
        as YYYYMMDD: the journal (lending/journal.py) books it on that date."""
        dated = journal.date_data(day)
        transfers = [dataclasses.replace(t, user_data=dated) for t in transfers]
        if not transfers:
            return
        results = await self.ledger.create_transfers(transfers)
        for transfer, result in zip(transfers, results, strict=True):
            if not _settled(result):
                raise LedgerFailed(f"transfer {transfer.id} from {transfer.debit_account_id}: {result.code.name}")

    async def _open(self, accounts: Sequence[Account]) -> None:
        results = await self.ledger.create_accounts(accounts)
        for account, result in zip(accounts, results, strict=True):
            # EXISTS_WITH_DIFFERENT_FIELDS: an account another service opened (a deposit, say) is used as it is.
            if result.code not in (ResultCode.OK, ResultCode.EXISTS, ResultCode.EXISTS_WITH_DIFFERENT_FIELDS):
                raise LedgerFailed(f"account {account.id}: {result.code.name}")

    # --- credit lines ---------------------------------------------------------------------

    async def approve(self, request: pb.ApproveCreditLineRequest) -> pb.CreditLine:
        rules.check_customer(request.customer)
        rules.check_id("line_id", request.line_id)
        product = self._product(request.product_code, request.product_version)
        if product.state != pb.PUBLISHED:
            raise rules.LoanRefused(f"product_version: {product.code} v{product.version} is not published")
        p = product.parameters
        if not p.amount_min <= request.product_limit <= p.amount_max:
            raise rules.BadLoanRequest(
                f"product_limit: {request.product_limit} fen is outside {p.amount_min}..{p.amount_max}, "
                f"the bounds of {p.code}"
            )
        rate = rules.line_rate(p, request.annual_rate_bps)  # BadLoanRequest naming the field if out of bounds
        if request.customer_limit < request.product_limit:
            raise rules.BadLoanRequest(
                f"customer_limit: {request.customer_limit} fen is below the product_limit {request.product_limit}"
            )
        async with self._locks[request.customer]:
            limits = self._limits(p.currency)
            results = await limits.open(request.customer, [p.code])
            if any(r.code not in (ResultCode.OK, ResultCode.EXISTS) for r in results):
                raise LedgerFailed(f"limit accounts of {request.customer}: {[r.code.name for r in results]}")
            book = ledger_of(p.currency)
            names = rules.Accounts(request.customer, "-", p.code)
            await self._open(
                [
                    Account(names.deposit, book, rules.Code.DEPOSIT, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                    Account(names.settle, book, rules.Code.SETTLE),
                    Account(names.clearing("int"), book, rules.Code.INTEREST_INCOME),
                    Account(names.clearing("pen"), book, rules.Code.PENALTY_INCOME),
                    Account(names.clearing("fee"), book, rules.Code.FEE_INCOME),
                    Account(names.clearing("loss"), book, rules.Code.LOSS),
                ]
            )
            # A line raises the limits up to what it grants (a replay finds them there and raises nothing).
            for level, target, tag in (
                (None, request.customer_limit, "c"),
                (p.code, request.product_limit, "p"),
            ):
                granted = (await limits.view(request.customer, level)).granted
                if target > granted:
                    outcome = await limits.raise_limit(
                        request.customer, level, target - granted, f"g.{request.line_id}.{tag}"
                    )
                    if not outcome.ok:
                        raise rules.LoanRefused(f"line_id: the limit was not raised: {outcome.code.name}")
            line = pb.CreditLine(
                customer=request.customer,
                line_id=request.line_id,
                product_code=p.code,
                product_version=product.version,
                customer_limit=request.customer_limit,
                product_limit=request.product_limit,
                annual_rate_bps=rate,
                application_id=request.application_id,
            )
            self.store.put_line(line)
        log.info(
            "credit line approved",
            extra={"customer": line.customer, "product": line.product_code, "annual_rate_bps": line.annual_rate_bps},
        )
        return line

    # --- drawdowns ------------------------------------------------------------------------

    async def drawdown(self, request: pb.DrawdownRequest) -> pb.Loan:
        rules.check_customer(request.customer)
        rules.check_id("loan_id", request.loan_id)
        day = rules.parse_date("date", request.date).isoformat()  # a well-formed ask counts on its business date
        line = self.store.lines.get((request.customer, request.product_code))
        if line is None:
            # The metric's product label only ever names a product of the catalogue (no caller's text).
            known = request.product_code if request.product_code in set(self.products.codes()) else "(unknown)"
            self.store.count_drawdown(day, "refused_no_line", known)
            raise rules.LoanRefused(
                f"product_code: customer {request.customer} has no credit line for {request.product_code!r}"
            )
        product = self._product(line.product_code, line.product_version)
        # Validates every field before anything changes; the line's price unless the request names a rate.
        loan = rules.new_loan(request, product, line.annual_rate_bps)
        loan.application_id = line.application_id  # its outcome goes to that application's models
        async with self._locks[request.customer]:
            stored = self.store.loans.get(request.loan_id)
            if stored is not None:
                different = rules.same_drawdown(stored, request)
                if different:
                    raise rules.LoanRefused(f"{different}: loan {request.loan_id} exists with another {different}")
                if stored.status != pb.PENDING:
                    return self.store.loan(request.loan_id)
                loan = self.store.loan(request.loan_id)
            outcome = await self._limits(product.parameters.currency).consume(
                loan.customer, loan.product_code, loan.principal, f"d.{loan.loan_id}"
            )
            if not outcome.ok:
                if stored is not None:
                    self.store.delete_loan(loan.loan_id)
                self.store.count_drawdown(loan.drawdown_date, "refused_by_limits", loan.product_code)
                raise rules.LoanRefused(f"amount: the credit limits refuse {loan.principal} fen: {outcome.code.name}")
            self.store.put_loan(loan)  # PENDING: the limit is consumed, the money not yet moved
            await self._move_principal(loan, ledger_of(product.parameters.currency))
            loan.status = pb.ACTIVE
            self.store.count_drawdown(
                loan.drawdown_date, "passed", loan.product_code, loan
            )  # ACTIVE and counted: one write
        log.info("drawdown", extra={"loan": loan.loan_id, "customer": loan.customer, "amount": loan.principal})
        return loan

    async def _move_principal(self, loan: pb.Loan, book: int) -> None:
        names = rules.accounts_of(loan)
        await self._open(
            [
                Account(names.principal, book, rules.Code.LOAN),
                Account(names.interest, book, rules.Code.INTEREST_RECEIVABLE),
                Account(names.penalty, book, rules.Code.PENALTY_RECEIVABLE),
                Account(names.fees, book, rules.Code.FEE_RECEIVABLE),
            ]
        )
        transfers = [
            Transfer(f"{loan.loan_id}:d", names.principal, names.deposit, loan.principal, book, rules.Code.DRAWDOWN)
        ]
        fee = loan.schedule[0].fees
        if fee:
            transfers.append(
                Transfer(f"{loan.loan_id}:o", names.fees, names.clearing("fee"), fee, book, rules.Code.CHARGE_FEE)
            )
        await self._transfer(transfers, loan.drawdown_date)

    # --- queries --------------------------------------------------------------------------

    def get(self, loan_id: str) -> pb.Loan:
        rules.check_id("loan_id", loan_id)
        return self.store.loan(loan_id)

    def list(self, customer: str) -> list[pb.Loan]:
        rules.check_customer(customer)
        return [self.store.loan(i) for i in sorted(self.store.by_customer.get(customer, ()))]

    # --- repayments -----------------------------------------------------------------------

    async def repay(self, request: pb.RepayRequest, payoff: bool) -> pb.RepayResponse:
        rules.check_id("loan_id", request.loan_id)
        rules.check_id("repayment_id", request.repayment_id)
        on = rules.parse_date("date", request.date)
        if not payoff and request.amount <= 0:
            raise rules.BadLoanRequest(f"amount: {request.amount} fen must be positive")
        loan = self.store.loan(request.loan_id)  # LoanNotFound: NOT_FOUND
        async with self._locks[loan.customer]:
            loan = self.store.loan(request.loan_id)
            previous = next((r for r in loan.repayments if r.repayment_id == request.repayment_id), None)
            if previous is not None:
                if (
                    previous.payoff != payoff
                    or previous.date != request.date
                    or (not payoff and previous.amount != request.amount)
                ):
                    raise rules.LoanRefused(f"repayment_id: {request.repayment_id} was a different repayment")
                if not previous.done:
                    await self._settle(loan, previous)
                return pb.RepayResponse(
                    repayment=self._repayment(request.loan_id, previous.repayment_id),
                    loan=self.store.loan(loan.loan_id),
                )
            for unfinished in [r for r in loan.repayments if not r.done]:
                await self._settle(loan, unfinished)  # a crash left it half made: finish it before the next
            if loan.status not in rules.OPEN:
                raise rules.LoanRefused(f"loan_id: {loan.loan_id} is {pb.LoanStatus.Name(loan.status)}")
            if on < date.fromisoformat(loan.drawdown_date):
                raise rules.BadLoanRequest(f"date: {on} is before the drawdown on {loan.drawdown_date}")
            fee_charged = 0
            if payoff:
                dues, fee_charged = rules.payoff_dues(loan, on)
                amount = sum(d.total for d in dues)
            else:
                dues, amount = rules.dues_on(loan, on), request.amount
            paid, unapplied = allocate(amount, dues)
            applied = amount - unapplied
            if applied == 0:
                raise rules.LoanRefused(f"date: nothing of {loan.loan_id} is due on {on}")
            names = rules.accounts_of(loan)
            [deposit] = await self.ledger.lookup_accounts([names.deposit])
            available = 0 if deposit is None else deposit.balance - deposit.debits_pending
            if available < applied:
                raise rules.LoanRefused(f"amount: the deposit {names.deposit} holds {available} fen, {applied} are due")
            repayment = pb.Repayment(
                repayment_id=request.repayment_id,
                date=on.isoformat(),
                amount=amount if payoff else request.amount,
                fees=sum(d.fees for d in paid),
                penalty=sum(d.penalty for d in paid),
                interest=sum(d.interest for d in paid),
                principal=sum(d.principal for d in paid),
                unapplied=unapplied,
                payoff=payoff,
                fee_charged=fee_charged,
            )
            rules.apply_paid(loan, paid)
            if rules.fully_repaid(loan):
                loan.status = pb.PAID_OFF
                loan.closed_date = on.isoformat()
            else:
                rules.classify(loan, on)
            loan.repayments.append(repayment)
            self.store.put_loan(loan)  # the intent, done=false: a retry finishes the transfers below
            await self._settle(loan, repayment)
            return pb.RepayResponse(
                repayment=self._repayment(loan.loan_id, repayment.repayment_id), loan=self.store.loan(loan.loan_id)
            )

    def _repayment(self, loan_id: str, repayment_id: str) -> pb.Repayment:
        return next(r for r in self.store.loans[loan_id].repayments if r.repayment_id == repayment_id)

    async def _settle(self, loan: pb.Loan, repayment: pb.Repayment) -> None:
        """Make a stored repayment's transfers, restore the limits, and mark it done (each step replays)."""
        names, book = rules.accounts_of(loan), self._book(loan)
        prefix = f"{loan.loan_id}:{repayment.repayment_id}"
        if repayment.fee_charged:  # charged before it is paid, so the fee receivable never goes below zero
            await self._transfer(
                [
                    Transfer(
                        f"{loan.loan_id}:e",
                        names.fees,
                        names.clearing("fee"),
                        repayment.fee_charged,
                        book,
                        rules.Code.CHARGE_FEE,
                    )
                ],
                repayment.date,
            )
        parts = (
            ("f", repayment.fees, names.fees, rules.Code.REPAY_FEES),
            ("n", repayment.penalty, names.penalty, rules.Code.REPAY_PENALTY),
            ("i", repayment.interest, names.interest, rules.Code.REPAY_INTEREST),
            ("p", repayment.principal, names.principal, rules.Code.REPAY_PRINCIPAL),
        )
        await self._transfer(
            [
                Transfer(f"{prefix}:{tag}", names.deposit, target, amount, book, code)
                for tag, amount, target, code in parts
                if amount
            ],
            repayment.date,
        )
        if repayment.principal:
            currency = self._product(loan.product_code, loan.product_version).parameters.currency
            outcome = await self._limits(currency).restore(
                loan.customer, loan.product_code, repayment.principal, f"r.{loan.loan_id}.{repayment.repayment_id}"
            )
            if not outcome.ok:
                raise LedgerFailed(f"restoring the limits of {loan.loan_id}: {outcome.code.name}")
        if loan.status == pb.PAID_OFF:
            await self._true_up(loan, book, repayment.date)
        for stored in loan.repayments:
            if stored.repayment_id == repayment.repayment_id:
                stored.done = True
        self.store.put_loan(loan)

    async def _true_up(self, loan: pb.Loan, book: int, day: str) -> None:
        """Once the loan is closed, recognise exactly the interest paid (accruals ran by day, a payoff by days)."""
        names = rules.accounts_of(loan)
        delta = rules.true_up(loan)
        if delta > 0:
            transfer = Transfer(
                f"{loan.loan_id}:t", names.interest, names.clearing("int"), delta, book, rules.Code.TRUE_UP
            )
        elif delta < 0:
            transfer = Transfer(
                f"{loan.loan_id}:t", names.clearing("int"), names.interest, -delta, book, rules.Code.TRUE_UP
            )
        else:
            return
        await self._transfer([transfer], day)
        loan.interest_accrued += delta

    # --- write-off ------------------------------------------------------------------------

    async def write_off(self, request: pb.WriteOffRequest) -> pb.Loan:
        rules.check_id("loan_id", request.loan_id)
        on = rules.parse_date("date", request.date)
        loan = self.store.loan(request.loan_id)
        async with self._locks[loan.customer]:
            loan = self.store.loan(request.loan_id)
            if loan.status == pb.WRITTEN_OFF:
                return loan
            if loan.status != pb.OVERDUE:
                raise rules.LoanRefused(
                    f"loan_id: only an OVERDUE loan is written off; {loan.loan_id} is {pb.LoanStatus.Name(loan.status)}"
                )
            amounts = rules.write_off_amounts(loan)
            names, book = rules.accounts_of(loan), self._book(loan)
            loss = names.clearing("loss")
            parts = (
                ("p", amounts.principal, names.principal),
                ("i", amounts.interest, names.interest),
                ("n", amounts.penalty, names.penalty),
                ("f", amounts.fees, names.fees),
            )
            await self._transfer(
                [
                    Transfer(f"{loan.loan_id}:w{tag}", loss, account, amount, book, rules.Code.WRITE_OFF)
                    for tag, amount, account in parts
                    if amount
                ],
                on.isoformat(),
            )
            loan.status = pb.WRITTEN_OFF
            loan.written_off = amounts.total
            loan.closed_date = on.isoformat()
            self.store.put_loan(loan)
        log.info("written off", extra={"loan": loan.loan_id, "amount": amounts.total})
        return loan

    # --- end of day -----------------------------------------------------------------------

    def slot_of_loan(self, loan: pb.Loan) -> int:
        return rules.slot_of_customer(loan.customer, self.slots_total)

    def plan_eod(self, request: pb.EodSlotsRequest) -> pb.EodPlan:
        day = rules.parse_date("date", request.date).isoformat()
        # Open loans, and closed ones whose outcome the risk server has not been told yet.
        slots = sorted(
            {
                self.slot_of_loan(loan)
                for loan in self.store.loans.values()
                if loan.status in rules.OPEN
                or (self.risk is not None and outcome_of(loan) is not None and to_tell(loan))
            }
        )
        done = sorted({slot for d, slot in self.store.checkpoints if d == day})
        return pb.EodPlan(date=day, slots=sorted(set(slots) | set(done)), slots_done=done)

    async def run_eod_slot(self, request: pb.EodSlotRequest) -> pb.EodSlotResult:
        day = rules.parse_date("date", request.date)
        stamp = day.isoformat()
        if request.slot >= self.slots_total:
            raise rules.BadLoanRequest(f"slot: {request.slot} is outside 0..{self.slots_total - 1}")
        result = pb.EodSlotResult(date=stamp, slot=request.slot)
        if (stamp, request.slot) in self.store.checkpoints:
            result.already_done = True
            return result
        ids = sorted(i for i, loan in self.store.loans.items() if self.slot_of_loan(loan) == request.slot)
        for loan_id in ids:
            customer = self.store.loans[loan_id].customer
            async with self._locks[customer]:
                loan = self.store.loan(loan_id)
                if loan.status not in rules.OPEN:
                    continue
                result.loans += 1
                postings = rules.end_of_day(loan, day)
                names, book = rules.accounts_of(loan), self._book(loan)
                receivables = {"int": names.interest, "pen": names.penalty, "fee": names.fees}
                codes = {
                    "int": rules.Code.ACCRUE_INTEREST,
                    "pen": rules.Code.CHARGE_PENALTY,
                    "fee": rules.Code.CHARGE_FEE,
                }
                transfers = [
                    Transfer(p.transfer_id, receivables[p.part], names.clearing(p.part), p.amount, book, codes[p.part])
                    for p in postings
                ]
                # Transfers first, then the loan: a crash between replays the same ids and amounts.
                await self._transfer(transfers, stamp)
                self.store.put_loan(loan)
                result.transfers += len(transfers)
        result.outcomes_reported = await self._report_outcomes(ids)
        self.store.put_checkpoint(stamp, request.slot)
        log.info("end of day", extra={"date": stamp, "slot": request.slot, "loans": result.loans})
        return result

    async def _report_outcomes(self, loan_ids: Sequence[str]) -> int:
        """Tell the risk server (--risk) what became of each loan whose outcome is now known and
        not yet told (`outcome_of`), for the application its credit line was approved for; the
        models that scored the application count it (issue 21's outcome monitoring). A risk
        server that does not answer is asked again at the next end of day."""
        if self.risk is None:
            return 0
        told = 0
        for loan_id in loan_ids:
            loan = self.store.loans[loan_id]
            label = outcome_of(loan)
            if label is None or not to_tell(loan):
                continue
            request = risk_pb2.OutcomeRequest(application_id=loan.application_id, label=label)
            try:
                await self.risk.RecordOutcome(request, timeout=OUTCOME_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                said = {"loan": loan_id, "application_id": loan.application_id, "reason": error.details()}
                if error.code() not in OUTCOME_NEVER_TAKEN:  # down, busy, a certificate to mend: tomorrow
                    log.warning("the risk server did not take a loan's outcome; tried again tomorrow", extra=said)
                    continue
                log.error("the risk server refused a loan's outcome; not told again", extra=said)
            async with self._locks[loan.customer]:
                stored = self.store.loan(loan_id)
                stored.outcome_reported = True
                self.store.put_loan(stored)
            told += 1
        return told

    # --- the general ledger ---------------------------------------------------------------

    def gl_map(self) -> dict[str, tuple[str, str]]:
        """Every account lending knows, mapped to its (GL code, name): the customers' lines and
        loans, and each product's provisioning accounts."""
        mapped: dict[str, tuple[str, str]] = {}  # ledger account -> (GL code, name)
        for (customer, code), line in sorted(self.store.lines.items()):
            gl = self._product(code, line.product_version).parameters.gl
            names = rules.Accounts(customer, "-", code)
            mapped[names.deposit] = DEPOSITS_GL
            mapped[names.settle] = SETTLEMENT_GL
            mapped[names.clearing("int")] = (gl.interest_income, "Interest income")
            mapped[names.clearing("pen")] = (gl.penalty_income, "Penalty interest income")
            mapped[names.clearing("fee")] = (gl.fee_income, "Fee income")
            mapped[names.clearing("loss")] = (gl.loss_allowance, "Loan loss allowance")
            allowance, impairment = provision_accounts(code)
            mapped[allowance] = (gl.loss_allowance, "Loan loss allowance")
            mapped[impairment] = IMPAIRMENT_GL
        for loan in self.store.loans.values():
            gl = self._product(loan.product_code, loan.product_version).parameters.gl
            names = rules.accounts_of(loan)
            mapped[names.principal] = (gl.loan_principal, "Loans")
            mapped[names.interest] = (gl.interest_receivable, "Interest receivable")
            mapped[names.penalty] = (gl.interest_receivable, "Interest receivable")
            mapped[names.fees] = FEES_RECEIVABLE_GL
        return mapped

    async def gl_report(self, as_of: str = "") -> pb.GlReport:
        """The trial balance: of the accounts' balances now (read from the ledger, off its write
        path), or with `as_of`, of the dated journal's entries through that business date."""
        if as_of:
            day = rules.parse_date("as_of", as_of).isoformat()
            report = journal.trial_balance(await journal.read(self.ledger, self.gl_map()), day)
            closed = self.store.closes.get(day)
            if closed is not None:
                report.closed = True
                report.closed_lines.extend(closed.trial_balance.lines)
            return report
        mapped = self.gl_map()
        ids = sorted(mapped)
        balances: dict[str, int] = defaultdict(int)  # GL code -> debits - credits
        titles: dict[str, str] = {}
        read = 0
        for start in range(0, len(ids), LOOKUP_BATCH_MAX):
            chunk = ids[start : start + LOOKUP_BATCH_MAX]
            for account_id, account in zip(chunk, await self.ledger.lookup_accounts(chunk), strict=True):
                if account is None:
                    continue  # a loan still PENDING has no accounts yet
                read += 1
                gl_code, title = mapped[account_id]
                balances[gl_code] += account.debits_posted - account.credits_posted
                titles.setdefault(gl_code, title)
        report = pb.GlReport(accounts=read)
        for gl_code in sorted(balances):
            net = balances[gl_code]
            report.lines.append(
                pb.GlLine(gl_code=gl_code, name=titles[gl_code], debit=max(net, 0), credit=max(-net, 0))
            )
        report.total_debit = sum(line.debit for line in report.lines)
        report.total_credit = sum(line.credit for line in report.lines)
        return report

    # --- the book, as the business reads it ---------------------------------------------

    def book_report(self, include_customers: bool) -> pb.BookReport:
        """Lines, loans by status and open loans by overdue bucket per product, and the drawdowns
        asked per business date (`yunkai report`); from the store, no ledger read."""
        books: dict[str, pb.ProductBook] = {}

        def book_of(code: str, version: int) -> pb.ProductBook:
            if code not in books:
                currency = self._product(code, version).parameters.currency
                books[code] = pb.ProductBook(product_code=code, currency=currency)
            return books[code]

        # Copies: Prometheus calls this from its own thread while the loop changes the store.
        for (_customer, code), line in list(self.store.lines.items()):
            book = book_of(code, line.product_version)
            book.credit_lines += 1
            book.limits_granted += line.product_limit
        for loan in list(self.store.loans.values()):
            book = book_of(loan.product_code, loan.product_version)
            status = pb.LoanStatus.Name(loan.status)
            book.loans[status] = book.loans.get(status, 0) + 1
            if loan.status in (pb.ACTIVE, pb.OVERDUE):
                book.open_by_bucket[loan.bucket] = book.open_by_bucket.get(loan.bucket, 0) + 1
                outstanding = book.outstanding_by_bucket.get(loan.bucket, 0)
                book.outstanding_by_bucket[loan.bucket] = outstanding + loan.principal_outstanding
        report = pb.BookReport(
            products=[books[code] for code in sorted(books)],
            drawdowns=[tally for _day, tally in sorted(list(self.store.tallies.items()))],
        )
        if include_customers:
            report.customers.extend(sorted({customer for customer, _code in list(self.store.lines)}))
        return report

    # --- accounting: the journal, a period's close, loan-loss provisioning -----------------

    async def journal_entries(self, date_from: str, date_to: str) -> pb.JournalResponse:
        first, last = (
            rules.parse_date(name, text).isoformat() if text else ""
            for name, text in (("date_from", date_from), ("date_to", date_to))
        )
        read = await journal.read(self.ledger, self.gl_map())
        return pb.JournalResponse(entries=journal.entries(read, first, last), accounts=read.accounts)

    async def close_period(self, day_text: str) -> pb.PeriodClose:
        """Store the trial balance as of a business date; no earlier date may be closed after it."""
        day = rules.parse_date("date", day_text).isoformat()
        async with self._closing:  # one close at a time: the order check holds across the journal read
            last = max(self.store.closes, default="")
            if day <= last:
                raise rules.LoanRefused(f"date: {day} is not after the last closed period, {last}")
            report = await self.gl_report(day)
            closed = pb.PeriodClose(date=day, trial_balance=report, closed_at_unix_ms=int(time.time() * 1000))
            self.store.put_close(closed)
        log.info("period closed", extra={"date": day, "total": report.total_debit})
        return closed

    async def provision(self, day_text: str) -> pb.ProvisionResponse:
        """Set each product's loan-loss allowance to its open loans' expected credit loss on a
        business date: one transfer between the product's impairment and allowance accounts,
        dated that day, for the difference (see STAGE_LOSS_BPS). One provisioning at a time (it
        reads the allowance, then moves the difference); the transfer's id names the allowance
        account's total movement so far, which only grows: a retry of the same step is a replay,
        and a later step never reuses an id."""
        day = rules.parse_date("date", day_text).isoformat()
        async with self._provisioning:
            return await self._provision(day)

    async def _provision(self, day: str) -> pb.ProvisionResponse:
        outstanding: dict[tuple[str, int], list[int]] = {}  # (product, version) -> by stage
        for loan in self.store.loans.values():
            if loan.status in (pb.ACTIVE, pb.OVERDUE):
                stages = outstanding.setdefault((loan.product_code, loan.product_version), [0, 0, 0])
                stages[stage_of(loan.bucket) - 1] += loan.principal_outstanding
        by_product: dict[str, tuple[int, list[int]]] = {}
        for (code, version), stages in sorted(outstanding.items()):
            _, summed = by_product.setdefault(code, (version, [0, 0, 0]))
            for i, amount in enumerate(stages):
                summed[i] += amount
        for (_customer, code), line in self.store.lines.items():
            by_product.setdefault(code, (line.product_version, [0, 0, 0]))
        reply = pb.ProvisionResponse(date=day)
        for code, (version, stages) in sorted(by_product.items()):
            book = ledger_of(self._product(code, version).parameters.currency)
            allowance, impairment = provision_accounts(code)
            await self._open(
                [Account(allowance, book, rules.Code.LOSS), Account(impairment, book, rules.Code.IMPAIRMENT)]
            )
            target = sum(amount * bps // 10_000 for amount, bps in zip(stages, STAGE_LOSS_BPS, strict=True))
            [held] = await self.ledger.lookup_accounts([allowance])
            assert held is not None, allowance
            before = held.credits_posted - held.debits_posted
            moved_so_far = held.credits_posted + held.debits_posted
            delta = target - before
            if delta:
                debit, credit = (impairment, allowance) if delta > 0 else (allowance, impairment)
                step = Transfer(f"prov:{moved_so_far}", debit, credit, abs(delta), book, rules.Code.PROVISION)
                await self._transfer([step], day)
            reply.products.append(
                pb.ProductProvision(
                    product_code=code,
                    stage1_outstanding=stages[0],
                    stage2_outstanding=stages[1],
                    stage3_outstanding=stages[2],
                    allowance=target,
                    posted=delta,
                )
            )
        log.info("provisioned", extra={"date": day, "products": len(reply.products)})
        return reply


def provision_accounts(product_code: str) -> tuple[str, str]:
    """A product's loan-loss allowance and credit-impairment expense accounts (their own slot)."""
    return f"{{gl-{product_code}}}:allowance", f"{{gl-{product_code}}}:impairment"


def stage_of(bucket: str) -> int:
    """IFRS 9 stage of an overdue bucket: M0-M1 1, M2-M3 2, M4 and beyond 3 (see STAGE_LOSS_BPS)."""
    months = int(bucket.removeprefix("M"))
    return 1 if months <= 1 else 2 if months <= 3 else 3


def to_tell(loan: pb.Loan) -> bool:
    """Whether the risk server is still to be told this loan's outcome (it has an application)."""
    return bool(loan.application_id) and not loan.outcome_reported


def outcome_of(loan: pb.Loan) -> int | None:
    """What a loan says of its application: 0 repaid, 1 defaulted (written off, or 90 days past
    due: stage 3, the IFRS 9 presumption of default), None while it is still running."""
    if loan.status == pb.PAID_OFF:
        return 0
    if loan.status == pb.WRITTEN_OFF or (loan.status == pb.OVERDUE and stage_of(loan.bucket) == 3):
        return 1
    return None
