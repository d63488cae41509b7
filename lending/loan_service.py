"""yunkai.lending.v1.LoanService: credit lines, drawdowns, repayments, end of day and the GL view.

Owns the I/O around lending/loans.py's decisions. The server holds no state: loans, credit
lines, drawdown asks, period closes and end-of-day checkpoints are the book's records on the
ledger (lending/book.py), each loan in its customer's slot, and a loan's change is committed
together with the transfers that move its money (one CommitRecords: both or neither).
Transfer ids derive from the client's ids (loan_id, repayment_id) or from loan id and
business date, so any step can be retried and replays.

A credit line (ApproveCreditLine, which the risk service calls for an approval) raises the
customer's limits and carries the line's price; a drawdown takes that price unless it names
its own rate within the product's bounds.

Each change is one commit in the customer's slot, the limits too (the limit accounts are
under the customer's hash tag: lending/limits.py's *_transfers):
  - a credit line: the line record with the raises of both limit levels;
  - a drawdown (after claiming the loan id for the customer and opening the loan's accounts):
    the ACTIVE loan and its ask with the limits consumed at both levels, the principal into
    the deposit and the origination fee; a refusal of any of them (the limits, a frozen
    deposit) applies none of them;
  - a repayment: the loan with the repayment, its transfers (fee, penalty, interest,
    principal, the interest trued up at payoff) and the limits its principal frees;
  - end of day: the loan with its accruals and charges, EOD_DAYS_PER_COMMIT days at a time;
  - a write-off: the loan with its write-off transfers.
A retry with the same ids finds its change made (the record says so) and moves nothing.

Several lending processes may serve one book. Each change reads the records it changes and
names their versions when it commits; one that lost a race (`Conflict`: another process
changed the loan meanwhile) is decided again on what is stored now, at most
CONFLICT_RETRIES times (then ABORTED: retry). Within one process, changes of one customer
also run one at a time (a lock per customer), so they do not race each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, timedelta
from typing import NoReturn, TypeVar

import grpc
from prometheus_client import Counter

from clients.ledger import Account, AccountFlags, LedgerClient, ResultCode, Transfer
from clients.records import CommitFailed, Conflict, OtherRolesRecord, Put
from lending import journal, loans as rules
from lending.allocation import allocate
from lending.book import CONFLICT_RETRIES, GL_TAG, Book, ask_key, limits_key, line_key, loan_key
from lending.limits import CreditLimits
from lending.products import ProductStore, ledger_of
from proto import lending_pb2 as pb, risk_pb2
from proto.contract import COMMIT_TRANSFERS_MAX
from serving.session import SessionStub

drawdowns_total = Counter(
    "yunkai_lending_drawdowns_total",
    "Drawdowns asked, by product and outcome (passed, refused_no_line, refused_by_limits): the pass rate's counts",
    ["product", "outcome"],
)

log = logging.getLogger("yunkai.lending")
T = TypeVar("T")

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
# Days of one loan's end of day committed at once: each day makes at most three transfers
# (interest, penalty, a late fee), so a commit stays within what one carries.
EOD_DAYS_PER_COMMIT = COMMIT_TRANSFERS_MAX // 3


class LedgerFailed(RuntimeError):
    """The ledger refused a transfer the loan's state said would pass: UNAVAILABLE, retry with the same id."""


class Contended(RuntimeError):
    """Other lending processes kept changing the same records: ABORTED, retry."""


class LoanService:
    """The operations of yunkai.lending.v1.LoanService over the book's records, the product store and the ledger."""

    def __init__(
        self,
        book: Book,
        products: ProductStore,
        ledger: LedgerClient,
        risk: SessionStub | None = None,
    ) -> None:
        self.book = book
        self.products = products
        self.ledger = ledger
        self.risk = risk  # where loans' outcomes are told (lending serve --risk)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # One close, and one provisioning, at a time in this process (the records guard across processes).
        self._closing = asyncio.Lock()
        self._provisioning = asyncio.Lock()

    def _limits(self, currency: str) -> CreditLimits:
        return CreditLimits(self.ledger, ledger_of(currency))

    def _product(self, code: str, version: int) -> pb.Product:
        return self.products.get(code, version)

    def _book(self, loan: pb.Loan) -> int:
        return ledger_of(self._product(loan.product_code, loan.product_version).parameters.currency)

    async def _transfer(self, transfers: Sequence[Transfer], day: str) -> None:
        """Make the transfers (outside any record commit), each dated `day`: see `dated`."""
        transfers = dated(transfers, day)
        if not transfers:
            return
        results = await self.ledger.create_transfers(transfers)
        for transfer, result in zip(transfers, results, strict=True):
            if not (result.ok or result.code is ResultCode.EXISTS):
                raise LedgerFailed(f"transfer {transfer.id} from {transfer.debit_account_id}: {result.code.name}")

    async def _commit_loan(
        self, loan: pb.Loan, version: int, transfers: Sequence[Transfer] = (), day: str = "", *more: Put
    ) -> None:
        """Store the loan (read at `version`) with its transfers dated `day`, both or neither."""
        assert len(transfers) <= COMMIT_TRANSFERS_MAX, (loan.loan_id, len(transfers))  # see EOD_DAYS_PER_COMMIT
        puts = [Put("loan", loan_key(loan.customer, loan.loan_id), loan, version), *more]
        try:
            await self.book.commit(puts, dated(transfers, day))
        except OtherRolesRecord:
            raise  # a caller of another role wrote it: PERMISSION_DENIED
        except CommitFailed as refused:
            raise LedgerFailed(f"loan {loan.loan_id}: the ledger refused {refused}") from None

    async def _open(self, accounts: Sequence[Account]) -> None:
        results = await self.ledger.create_accounts(accounts)
        for account, result in zip(accounts, results, strict=True):
            # EXISTS_WITH_DIFFERENT_FIELDS: an account another service opened (a deposit, say) is used as it is.
            if result.code not in (ResultCode.OK, ResultCode.EXISTS, ResultCode.EXISTS_WITH_DIFFERENT_FIELDS):
                raise LedgerFailed(f"account {account.id}: {result.code.name}")

    async def _again(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt` (which reads what it changes), again while another process wins the race."""
        for _ in range(CONFLICT_RETRIES):
            try:
                return await attempt()
            except Conflict as lost:
                log.info("a change lost a race; deciding again", extra={"what": what, "reason": str(lost)})
        raise Contended(f"{what}: other lending processes kept changing it; retry")

    # --- credit lines ---------------------------------------------------------------------

    async def approve(self, request: pb.ApproveCreditLineRequest) -> pb.CreditLine:
        rules.check_customer(request.customer)
        rules.check_id("line_id", request.line_id)
        product = await self.products.fetch(request.product_code, request.product_version)
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
            book = ledger_of(p.currency)
            names = rules.Accounts(request.customer, "-", p.code)
            # The limit accounts must be exactly these; the customer's own are used as they
            # stand when another service opened them otherwise (a deposit, say).
            limit_accounts = limits.accounts(request.customer, [p.code])
            own_accounts = [
                Account(names.deposit, book, rules.Code.DEPOSIT, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                Account(names.settle, book, rules.Code.SETTLE),
                Account(names.clearing("int"), book, rules.Code.INTEREST_INCOME),
                Account(names.clearing("pen"), book, rules.Code.PENALTY_INCOME),
                Account(names.clearing("fee"), book, rules.Code.FEE_INCOME),
                Account(names.clearing("loss"), book, rules.Code.LOSS),
            ]
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

            async def store() -> None:
                """The line, with the accounts it needs and the raises that bring both limit
                levels up to what it grants (a replay finds them there and raises nothing): one
                commit. The raises are decided on the limits as read, so the commit also writes
                the customer's limits guard at the version read before them: another process's
                line for the same customer (another product) committed since makes this one a
                Conflict, decided again on the limits it raised, not raised twice. The guard is
                read first, the limits after its answer (read together, the limits could be
                read before another line's commit and the guard after it)."""
                held, guard = await self.book.line_and_limits(line.customer, line.product_code)
                if held is not None and held[0] == line:
                    return  # a replay
                granted = await limits.granted(request.customer, p.code)
                raises = [
                    limits.raise_transfer(request.customer, level, target - now, f"g.{request.line_id}.{tag}")
                    for level, target, tag, now in (
                        (None, request.customer_limit, "c", granted[0]),
                        (p.code, request.product_limit, "p", granted[1]),
                    )
                    if target > now
                ]
                puts = [
                    Put("line", line_key(line.customer, line.product_code), line, held[1] if held is not None else 0),
                    Put("limits", limits_key(line.customer), line.line_id.encode(), guard),
                ]
                accounts = [*limit_accounts, *own_accounts]
                while True:
                    try:
                        await self.book.commit(puts, raises, accounts)
                        return
                    except OtherRolesRecord:
                        raise  # a caller of another role wrote it: PERMISSION_DENIED
                    except CommitFailed as refused:
                        index = _account_index(refused)
                        if index is None:
                            raise rules.LoanRefused(f"line_id: the limit was not raised: {refused}") from None
                        if index < len(limit_accounts):  # no limit can be kept on it: an operator's matter
                            raise rules.LoanRefused(
                                f"customer: the limit accounts of {request.customer} were opened otherwise: {refused}"
                            ) from None
                        del accounts[index]  # the customer's own, opened otherwise: used as it stands

            await self._again(f"credit line of {line.customer} for {line.product_code}", store)
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
        customer, loan_id = request.customer, request.loan_id
        # The line, the loan and its ask are all in the customer's slot: one read.
        wanted = [
            ("line", line_key(customer, request.product_code)),
            ("loan", loan_key(customer, loan_id)),
            ("ask", ask_key(customer, loan_id)),
        ]
        line_record, *first_read = await self.book.read(wanted)
        if line_record is None:
            # The metric's product label only ever names a product of the catalogue (no caller's text).
            known = request.product_code if request.product_code in set(self.products.codes()) else "(unknown)"
            await self.book.count_ask(customer, loan_id, day, "refused_no_line")
            drawdowns_total.labels(known, "refused_no_line").inc()
            raise rules.LoanRefused(
                f"product_code: customer {customer} has no credit line for {request.product_code!r}"
            )
        line = pb.CreditLine.FromString(line_record.value)
        await self.products.have(line.product_code, line.product_version)  # published: its terms never change
        product = self._product(line.product_code, line.product_version)
        # Validates every field before anything changes; the line's price unless the request names a rate.
        loan = rules.new_loan(request, product, line.annual_rate_bps)
        loan.application_id = line.application_id  # its outcome goes to that application's models
        reads = [first_read]  # the first attempt decides on the read above; a retry reads again

        async def draw() -> pb.Loan:
            stored, asked = reads.pop() if reads else await self.book.read(wanted[1:])
            if stored is not None:
                held = pb.Loan.FromString(stored.value)
                different = rules.same_drawdown(held, request)
                if different:
                    raise rules.LoanRefused(f"{different}: loan {loan_id} exists with another {different}")
                return held  # a replay: the loan as it stands
            limits = self._limits(product.parameters.currency)
            _, views = await asyncio.gather(
                self.book.claim_loan_id(loan_id, customer), limits.views(customer, loan.product_code)
            )
            # Refused by the limits as they stand: nothing is opened or written (the commit refuses a race).
            for view in views:
                if view.frozen or view.available < loan.principal:
                    code = ResultCode.CREDIT_ACCOUNT_FROZEN if view.frozen else ResultCode.EXCEEDS_CREDITS
                    await self._refused_by_limits(loan, code)
            return await self._draw(loan, product, asked.version if asked is not None else 0)

        async with self._locks[customer]:
            loan = await self._again(f"loan {loan_id}", draw)
        log.info("drawdown", extra={"loan": loan.loan_id, "customer": loan.customer, "amount": loan.principal})
        return loan

    async def _draw(self, loan: pb.Loan, product: pb.Product, ask_version: int) -> pb.Loan:
        """One commit: the ACTIVE loan, its ask, and its transfers: the limits consumed at both
        levels (lending/limits.py), the principal into the deposit and the origination fee. A
        refusal of a limit transfer is the limits' refusal; of the others, the ledger's (a frozen
        deposit, say); either way nothing of it is applied."""
        currency = product.parameters.currency
        active = pb.Loan()
        active.CopyFrom(loan)
        active.status = pb.ACTIVE
        consume = self._limits(currency).consume_transfers(
            loan.customer, loan.product_code, loan.principal, f"d.{loan.loan_id}"
        )
        tally = pb.DrawdownTally(date=loan.drawdown_date, asked=1, passed=1)
        puts = [
            Put("loan", loan_key(loan.customer, loan.loan_id), active, 0),
            Put("ask", ask_key(loan.customer, loan.loan_id), tally, ask_version),
        ]
        try:
            await self.book.commit(
                puts,
                [*consume, *dated(self._principal(active), loan.drawdown_date)],
                self._loan_accounts(loan, ledger_of(currency)),
            )
        except OtherRolesRecord:
            raise  # a caller of another role wrote it: PERMISSION_DENIED
        except CommitFailed as refused:
            if refused.field.startswith(("transfers[0]", "transfers[1]")):
                await self._refused_by_limits(loan, refused.code)
            raise rules.LoanRefused(f"the ledger refuses the drawdown's {refused}") from None
        drawdowns_total.labels(loan.product_code, "passed").inc()
        return active

    async def _refused_by_limits(self, loan: pb.Loan, code: ResultCode) -> NoReturn:
        await self.book.count_ask(loan.customer, loan.loan_id, loan.drawdown_date, "refused_by_limits")
        drawdowns_total.labels(loan.product_code, "refused_by_limits").inc()
        raise rules.LoanRefused(f"amount: the credit limits refuse {loan.principal} fen: {code.name}")

    def _loan_accounts(self, loan: pb.Loan, book: int) -> list[Account]:
        names = rules.accounts_of(loan)
        return [
            Account(names.principal, book, rules.Code.LOAN),
            Account(names.interest, book, rules.Code.INTEREST_RECEIVABLE),
            Account(names.penalty, book, rules.Code.PENALTY_RECEIVABLE),
            Account(names.fees, book, rules.Code.FEE_RECEIVABLE),
        ]

    def _principal(self, loan: pb.Loan) -> list[Transfer]:
        names, book = rules.accounts_of(loan), self._book(loan)
        transfers = [
            Transfer(f"{loan.loan_id}:d", names.principal, names.deposit, loan.principal, book, rules.Code.DRAWDOWN)
        ]
        fee = loan.schedule[0].fees
        if fee:
            transfers.append(
                Transfer(f"{loan.loan_id}:o", names.fees, names.clearing("fee"), fee, book, rules.Code.CHARGE_FEE)
            )
        return transfers

    # --- queries --------------------------------------------------------------------------

    async def get(self, loan_id: str) -> pb.Loan:
        rules.check_id("loan_id", loan_id)
        return (await self.book.loan(loan_id))[0]

    async def loans_of(self, customer: str) -> list[pb.Loan]:
        rules.check_customer(customer)
        return sorted(await self.book.loans_of(customer), key=lambda loan: loan.loan_id)

    # --- repayments -----------------------------------------------------------------------

    async def repay(self, request: pb.RepayRequest, payoff: bool) -> pb.RepayResponse:
        rules.check_id("loan_id", request.loan_id)
        rules.check_id("repayment_id", request.repayment_id)
        on = rules.parse_date("date", request.date)
        if not payoff and request.amount <= 0:
            raise rules.BadLoanRequest(f"amount: {request.amount} fen must be positive")
        customer = await self.book.customer_of(request.loan_id)
        if customer is None:
            raise rules.LoanNotFound(f"loan_id: no loan {request.loan_id!r}")
        async with self._locks[customer]:
            return await self._again(f"loan {request.loan_id}", lambda: self._repay(request, payoff, on))

    async def _repay(self, request: pb.RepayRequest, payoff: bool, on: date) -> pb.RepayResponse:
        loan, version = await self.book.loan(request.loan_id)
        await self.products.have(loan.product_code, loan.product_version)
        previous = next((r for r in loan.repayments if r.repayment_id == request.repayment_id), None)
        if previous is not None:
            if (
                previous.payoff != payoff
                or previous.date != request.date
                or (not payoff and previous.amount != request.amount)
            ):
                raise rules.LoanRefused(f"repayment_id: {request.repayment_id} was a different repayment")
            return pb.RepayResponse(repayment=_repayment(loan, previous.repayment_id), loan=loan)
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
        transfers = self._repayment_transfers(loan, repayment)
        if repayment.principal:  # the principal repaid frees the limits, in the same commit
            currency = self._product(loan.product_code, loan.product_version).parameters.currency
            transfers += self._limits(currency).restore_transfers(
                loan.customer, loan.product_code, repayment.principal, f"r.{loan.loan_id}.{repayment.repayment_id}"
            )
        repayment.done = True
        loan.repayments.append(repayment)
        try:
            await self._commit_loan(loan, version, transfers, repayment.date)
        except LedgerFailed:  # refused whole: most likely the deposit holds too little (read only then)
            [deposit] = await self.ledger.lookup_accounts([names.deposit])
            held = 0 if deposit is None else deposit.balance - deposit.debits_pending
            if held < applied:
                raise rules.LoanRefused(
                    f"amount: the deposit {names.deposit} holds {held} fen, {applied} are due"
                ) from None
            raise
        return pb.RepayResponse(repayment=_repayment(loan, repayment.repayment_id), loan=loan)

    def _repayment_transfers(self, loan: pb.Loan, repayment: pb.Repayment) -> list[Transfer]:
        """A repayment's transfers, in order: the payoff fee charged (before it is paid, so the
        fee receivable never goes below zero), each part paid, and once the loan is closed the
        interest trued up (which `loan` then counts as accrued)."""
        names, book = rules.accounts_of(loan), self._book(loan)
        prefix = f"{loan.loan_id}:{repayment.repayment_id}"
        transfers = []
        if repayment.fee_charged:
            transfers.append(
                Transfer(
                    f"{loan.loan_id}:e",
                    names.fees,
                    names.clearing("fee"),
                    repayment.fee_charged,
                    book,
                    rules.Code.CHARGE_FEE,
                )
            )
        parts = (
            ("f", repayment.fees, names.fees, rules.Code.REPAY_FEES),
            ("n", repayment.penalty, names.penalty, rules.Code.REPAY_PENALTY),
            ("i", repayment.interest, names.interest, rules.Code.REPAY_INTEREST),
            ("p", repayment.principal, names.principal, rules.Code.REPAY_PRINCIPAL),
        )
        transfers += [
            Transfer(f"{prefix}:{tag}", names.deposit, target, amount, book, code)
            for tag, amount, target, code in parts
            if amount
        ]
        if loan.status == pb.PAID_OFF:
            delta = rules.true_up(loan)  # recognise exactly the interest paid (accruals ran by day, a payoff by days)
            if delta:
                debit, credit = (
                    (names.interest, names.clearing("int")) if delta > 0 else (names.clearing("int"), names.interest)
                )
                transfers.append(Transfer(f"{loan.loan_id}:t", debit, credit, abs(delta), book, rules.Code.TRUE_UP))
                loan.interest_accrued += delta
        return transfers

    # --- write-off ------------------------------------------------------------------------

    async def write_off(self, request: pb.WriteOffRequest) -> pb.Loan:
        rules.check_id("loan_id", request.loan_id)
        on = rules.parse_date("date", request.date)
        loan, _version = await self.book.loan(request.loan_id)
        async with self._locks[loan.customer]:
            loan = await self._again(f"loan {loan.loan_id}", lambda: self._write_off(request.loan_id, on))
        log.info("written off", extra={"loan": loan.loan_id, "amount": loan.written_off})
        return loan

    async def _write_off(self, loan_id: str, on: date) -> pb.Loan:
        loan, version = await self.book.loan(loan_id)
        await self.products.have(loan.product_code, loan.product_version)
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
        transfers = [
            Transfer(f"{loan.loan_id}:w{tag}", loss, account, amount, book, rules.Code.WRITE_OFF)
            for tag, amount, account in parts
            if amount
        ]
        loan.status = pb.WRITTEN_OFF
        loan.written_off = amounts.total
        loan.closed_date = on.isoformat()
        await self._commit_loan(loan, version, transfers, on.isoformat())
        return loan

    # --- end of day -----------------------------------------------------------------------

    async def plan_eod(self, request: pb.EodSlotsRequest) -> pb.EodPlan:
        day = rules.parse_date("date", request.date).isoformat()
        total = await self.ledger.slots_total()
        # Open loans, and closed ones whose outcome the risk server has not been told yet.
        slots = {
            rules.slot_of_customer(loan.customer, total)
            async for loan, _version in self.book.loans()
            if loan.status in rules.OPEN or (self.risk is not None and outcome_of(loan) is not None and to_tell(loan))
        }
        done = sorted(await self.book.checkpoints(day))
        return pb.EodPlan(date=day, slots=sorted(slots | set(done)), slots_done=done)

    async def run_eod_slot(self, request: pb.EodSlotRequest) -> pb.EodSlotResult:
        day = rules.parse_date("date", request.date)
        stamp = day.isoformat()
        total = await self.ledger.slots_total()
        if request.slot >= total:
            raise rules.BadLoanRequest(f"slot: {request.slot} is outside 0..{total - 1}")
        result = pb.EodSlotResult(date=stamp, slot=request.slot)
        if request.slot in await self.book.checkpoints(stamp):
            result.already_done = True
            return result
        found = sorted([loan async for loan, _version in self.book.loans([request.slot])], key=lambda x: x.loan_id)
        for loan in found:
            if loan.status not in rules.OPEN:
                continue
            done, counted = False, False
            while not done:  # a long catch-up commits EOD_DAYS_PER_COMMIT days at a time
                async with self._locks[loan.customer]:
                    step = await self._again(f"loan {loan.loan_id}", functools.partial(self._end_of_day, loan, day))
                if step is None:
                    break
                moved, done = step
                result.transfers += moved
                if not counted:
                    result.loans += 1
                    counted = True
        result.outcomes_reported = await self._report_outcomes(found)
        await self.book.put_checkpoint(stamp, request.slot)
        log.info("end of day", extra={"date": stamp, "slot": request.slot, "loans": result.loans})
        return result

    async def _end_of_day(self, seen: pb.Loan, day: date) -> tuple[int, bool] | None:
        """A loan's days up to `day`, at most EOD_DAYS_PER_COMMIT of them: their accruals and
        charges committed with the loan. The transfers made and whether it reached `day` (None:
        the loan is no longer open)."""
        held = await self.book.loan_of(seen.customer, seen.loan_id)
        assert held is not None, seen.loan_id  # a loan record is never deleted
        loan, version = held
        if loan.status not in rules.OPEN:
            return None
        await self.products.have(loan.product_code, loan.product_version)
        if loan.last_eod_date:
            first = date.fromisoformat(loan.last_eod_date) + timedelta(days=1)
        else:
            first = date.fromisoformat(loan.drawdown_date)
        if (day - first).days >= rules.EOD_CATCH_UP_DAYS_MAX:  # the whole catch-up, not one commit's part
            raise rules.LoanRefused(
                f"date: {loan.loan_id} would catch up more than {rules.EOD_CATCH_UP_DAYS_MAX} days; run earlier dates"
            )
        if day < first:
            return 0, True  # done already (by another process, or a repeated call)
        through = min(day, first + timedelta(days=EOD_DAYS_PER_COMMIT - 1))
        postings = rules.end_of_day(loan, through)
        names, book = rules.accounts_of(loan), self._book(loan)
        receivables = {"int": names.interest, "pen": names.penalty, "fee": names.fees}
        codes = {"int": rules.Code.ACCRUE_INTEREST, "pen": rules.Code.CHARGE_PENALTY, "fee": rules.Code.CHARGE_FEE}
        transfers = [
            Transfer(p.transfer_id, receivables[p.part], names.clearing(p.part), p.amount, book, codes[p.part])
            for p in postings
        ]
        await self._commit_loan(loan, version, transfers, day.isoformat())
        return len(transfers), through == day

    async def _report_outcomes(self, found: Sequence[pb.Loan]) -> int:
        """Tell the risk server (--risk) what became of each loan whose outcome is now known and
        not yet told (`outcome_of`), for the application its credit line was approved for; the
        models that scored the application count it (issue 21's outcome monitoring). A risk
        server that does not answer is asked again at the next end of day."""
        if self.risk is None:
            return 0
        told = 0
        for seen in found:
            held = await self.book.loan_of(seen.customer, seen.loan_id)
            assert held is not None, seen.loan_id
            loan = held[0]
            label = outcome_of(loan)
            if label is None or not to_tell(loan):
                continue
            request = risk_pb2.OutcomeRequest(application_id=loan.application_id, label=label)
            try:
                await self.risk.RecordOutcome(request, timeout=OUTCOME_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                said = {"loan": loan.loan_id, "application_id": loan.application_id, "reason": error.details()}
                if error.code() not in OUTCOME_NEVER_TAKEN:  # down, busy, a certificate to mend: tomorrow
                    log.warning("the risk server did not take a loan's outcome; tried again tomorrow", extra=said)
                    continue
                log.error("the risk server refused a loan's outcome; not told again", extra=said)

            async def mark(loan: pb.Loan = loan) -> None:
                held = await self.book.loan_of(loan.customer, loan.loan_id)
                assert held is not None, loan.loan_id
                stored, version = held
                stored.outcome_reported = True
                await self._commit_loan(stored, version)

            async with self._locks[loan.customer]:
                await self._again(f"loan {loan.loan_id}", mark)
            told += 1
        return told

    # --- the general ledger ---------------------------------------------------------------

    async def gl_map(self) -> dict[str, tuple[str, str]]:
        """Every account lending knows, mapped to its (GL code, name): the customers' lines and
        loans, and each product's provisioning accounts."""
        mapped: dict[str, tuple[str, str]] = {}  # ledger account -> (GL code, name)
        await self.products.load()  # every version a line or loan found below pins
        async for line in self.book.lines():
            code = line.product_code
            gl = self._product(code, line.product_version).parameters.gl
            names = rules.Accounts(line.customer, "-", code)
            mapped[names.deposit] = DEPOSITS_GL
            mapped[names.settle] = SETTLEMENT_GL
            mapped[names.clearing("int")] = (gl.interest_income, "Interest income")
            mapped[names.clearing("pen")] = (gl.penalty_income, "Penalty interest income")
            mapped[names.clearing("fee")] = (gl.fee_income, "Fee income")
            mapped[names.clearing("loss")] = (gl.loss_allowance, "Loan loss allowance")
            allowance, impairment = provision_accounts(code)
            mapped[allowance] = (gl.loss_allowance, "Loan loss allowance")
            mapped[impairment] = IMPAIRMENT_GL
        async for loan, _version in self.book.loans():
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
            report = journal.trial_balance(await journal.read(self.ledger, await self.gl_map()), day)
            closed = (await self.book.closes()).get(day)
            if closed is not None:
                report.closed = True
                report.closed_lines.extend(closed.trial_balance.lines)
            return report
        mapped = await self.gl_map()
        ids = sorted(mapped)
        balances: dict[str, int] = defaultdict(int)  # GL code -> debits - credits
        titles: dict[str, str] = {}
        read = 0
        for start in range(0, len(ids), LOOKUP_BATCH_MAX):
            chunk = ids[start : start + LOOKUP_BATCH_MAX]
            for account_id, account in zip(chunk, await self.ledger.lookup_accounts(chunk), strict=True):
                if account is None:
                    continue  # a product never provisioned has no provisioning accounts yet
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

    async def book_report(self, include_customers: bool) -> pb.BookReport:
        """Lines, loans by status and open loans by overdue bucket per product, and the drawdowns
        asked per business date (`yunkai report`); from the book's records, no balance read."""
        books: dict[str, pb.ProductBook] = {}

        def book_of(code: str, version: int) -> pb.ProductBook:
            if code not in books:
                currency = self._product(code, version).parameters.currency
                books[code] = pb.ProductBook(product_code=code, currency=currency)
            return books[code]

        customers: set[str] = set()
        await self.products.load()
        async for line in self.book.lines():
            book = book_of(line.product_code, line.product_version)
            book.credit_lines += 1
            book.limits_granted += line.product_limit
            customers.add(line.customer)
        async for loan, _version in self.book.loans():
            book = book_of(loan.product_code, loan.product_version)
            status = pb.LoanStatus.Name(loan.status)
            book.loans[status] = book.loans.get(status, 0) + 1
            if loan.status in (pb.ACTIVE, pb.OVERDUE):
                book.open_by_bucket[loan.bucket] = book.open_by_bucket.get(loan.bucket, 0) + 1
                outstanding = book.outstanding_by_bucket.get(loan.bucket, 0)
                book.outstanding_by_bucket[loan.bucket] = outstanding + loan.principal_outstanding
        report = pb.BookReport(products=[books[code] for code in sorted(books)], drawdowns=await self.book.asks())
        if include_customers:
            report.customers.extend(sorted(customers))
        return report

    # --- accounting: the journal, a period's close, loan-loss provisioning -----------------

    async def journal_entries(self, date_from: str, date_to: str) -> pb.JournalResponse:
        first, last = (
            rules.parse_date(name, text).isoformat() if text else ""
            for name, text in (("date_from", date_from), ("date_to", date_to))
        )
        read = await journal.read(self.ledger, await self.gl_map())
        return pb.JournalResponse(entries=journal.entries(read, first, last), accounts=read.accounts)

    async def close_period(self, day_text: str) -> pb.PeriodClose:
        """Store the trial balance as of a business date; no earlier date may be closed after it
        (the close and the last-closed marker are one commit, so two processes cannot both pass)."""
        day = rules.parse_date("date", day_text).isoformat()
        async with self._closing:
            last, version = await self.book.last_closed()
            if day <= last:
                raise rules.LoanRefused(f"date: {day} is not after the last closed period, {last}")
            report = await self.gl_report(day)
            closed = pb.PeriodClose(date=day, trial_balance=report, closed_at_unix_ms=int(time.time() * 1000))
            try:
                await self.book.commit(
                    [
                        Put("close", f"{GL_TAG}:close:{day}", closed, 0),
                        Put("closed", f"{GL_TAG}:closed", day.encode(), version),
                    ]
                )
            except Conflict:
                raise rules.LoanRefused(f"date: another close ran meanwhile; {day} was not closed") from None
        log.info("period closed", extra={"date": day, "total": report.total_debit})
        return closed

    async def provision(self, day_text: str) -> pb.ProvisionResponse:
        """Set each product's loan-loss allowance to its open loans' expected credit loss on a
        business date: one transfer between the product's impairment and allowance accounts,
        dated that day, for the difference (see STAGE_LOSS_BPS). One provisioning at a time (it
        reads the allowance, then moves the difference); the transfer's id names the allowance
        account's total movement so far, which only grows: a retry of the same step is a replay,
        a later step never reuses an id, and two processes provisioning at once make one move
        (the second finds the id taken: EXISTS)."""
        day = rules.parse_date("date", day_text).isoformat()
        async with self._provisioning:
            return await self._provision(day)

    async def _provision(self, day: str) -> pb.ProvisionResponse:
        outstanding: dict[tuple[str, int], list[int]] = {}  # (product, version) -> by stage
        await self.products.load()
        async for loan, _version in self.book.loans():
            if loan.status in (pb.ACTIVE, pb.OVERDUE):
                stages = outstanding.setdefault((loan.product_code, loan.product_version), [0, 0, 0])
                stages[stage_of(loan.bucket) - 1] += loan.principal_outstanding
        by_product: dict[str, tuple[int, list[int]]] = {}
        for (code, version), stages in sorted(outstanding.items()):
            _, summed = by_product.setdefault(code, (version, [0, 0, 0]))
            for i, amount in enumerate(stages):
                summed[i] += amount
        async for line in self.book.lines():
            by_product.setdefault(line.product_code, (line.product_version, [0, 0, 0]))
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


def _account_index(refused: CommitFailed) -> int | None:
    """The index of the account a commit was refused for (EXISTS_WITH_DIFFERENT_FIELDS naming
    accounts[i].<field>), or None when something else refused it."""
    if refused.code is not ResultCode.EXISTS_WITH_DIFFERENT_FIELDS or not refused.field.startswith("accounts["):
        return None
    return int(refused.field[len("accounts[") :].partition("]")[0])


def dated(transfers: Sequence[Transfer], day: str) -> list[Transfer]:
    """The transfers, each dated `day` (the business date, YYYY-MM-DD) in its user_data as
    YYYYMMDD: the journal (lending/journal.py) books it on that date."""
    if not transfers:
        return []
    on = journal.date_data(day)
    return [dataclasses.replace(t, user_data=on) for t in transfers]


def _repayment(loan: pb.Loan, repayment_id: str) -> pb.Repayment:
    return next(r for r in loan.repayments if r.repayment_id == repayment_id)


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
