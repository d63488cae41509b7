"""Loans as pure decisions: contracts from products, what is due, end-of-day steps, payoffs, accounts.

Owns the rules of a loan's life that need no I/O: validating a drawdown against its pinned
product version, the ledger accounts and transfer ids of a loan, what a repayment or a payoff
pays, the day-by-day accrual, penalty and overdue classification, and a write-off's amounts.
lending/loan_service.py is the thin shell that stores loans and moves the money.

States (pb.LoanStatus):

    (none) --drawdown--> PENDING --money moved--> ACTIVE <--eod / repay--> OVERDUE
    ACTIVE/OVERDUE --everything repaid, or payoff--> PAID_OFF
    OVERDUE --write-off--> WRITTEN_OFF

Accounting (accrual basis): end of day debits the loan's interest (penalty) receivable and
credits the slot-local income clearing account of the product; a repayment debits the deposit
and credits the receivable (or the principal account). When a loan closes, one true-up
transfer makes the interest recognised equal to the interest the customer paid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from fractions import Fraction

from clients.ledger import slot_of
from lending import schedule as sched
from lending.allocation import Due
from proto import lending_pb2 as pb

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,16}")
CUSTOMER_PATTERN = re.compile(r"[A-Za-z0-9]{1,20}")  # the same as lending/limits.py: the hash tag {c<customer>}
EOD_CATCH_UP_DAYS_MAX = 400  # one end of day never processes more than this many days of one loan
OPEN = (pb.ACTIVE, pb.OVERDUE)


class BadLoanRequest(ValueError):
    """A malformed request: INVALID_ARGUMENT; the message starts with the field's name."""


class LoanNotFound(LookupError):
    """No loan with the id: NOT_FOUND."""


class LoanRefused(RuntimeError):
    """A well-formed request the loan's state or the limits refuse: FAILED_PRECONDITION."""


class Code:
    """Account codes (account types, numbered after the GL code they roll up to) and transfer codes."""

    DEPOSIT = 2011
    SETTLE = 3001
    LOAN = 1303
    INTEREST_RECEIVABLE = 1132
    PENALTY_RECEIVABLE = 1133
    FEE_RECEIVABLE = 1221
    INTEREST_INCOME = 6011
    PENALTY_INCOME = 6012
    FEE_INCOME = 6021
    LOSS = 1304
    IMPAIRMENT = 6702
    # transfers
    DRAWDOWN = 3101
    REPAY_FEES = 3102
    REPAY_PENALTY = 3103
    REPAY_INTEREST = 3104
    REPAY_PRINCIPAL = 3105
    ACCRUE_INTEREST = 3111
    CHARGE_PENALTY = 3112
    CHARGE_FEE = 3113
    TRUE_UP = 3114
    WRITE_OFF = 3121
    PROVISION = 3131


@dataclass(frozen=True, slots=True)
class Accounts:
    """The ledger accounts of one loan, all under the customer's hash tag (one slot)."""

    customer: str
    loan_id: str
    product: str

    @property
    def tag(self) -> str:
        return f"{{c{self.customer}}}"

    @property
    def deposit(self) -> str:
        return f"{self.tag}:deposit"

    @property
    def settle(self) -> str:
        return f"{self.tag}:settle"

    @property
    def principal(self) -> str:
        return f"{self.tag}:loan:{self.loan_id}"

    @property
    def interest(self) -> str:
        return f"{self.principal}:int"

    @property
    def penalty(self) -> str:
        return f"{self.principal}:pen"

    @property
    def fees(self) -> str:
        return f"{self.principal}:fee"

    def clearing(self, part: str) -> str:
        """Income (int, pen, fee) or write-off (loss) clearing of the product, in the customer's slot."""
        return f"{self.tag}:clr:{self.product}:{part}"


def accounts_of(loan: pb.Loan) -> Accounts:
    return Accounts(loan.customer, loan.loan_id, loan.product_code)


def slot_of_customer(customer: str, slots_total: int) -> int:
    """The ledger slot of every account of `customer` (they share the hash tag `{c<id>}`)."""
    return slot_of(f"{{c{customer}}}:deposit", slots_total)


# --- parsing ---------------------------------------------------------------------------


def parse_date(field: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadLoanRequest(f"{field}: {text!r} is not a date YYYY-MM-DD") from None


def check_id(field: str, value: str) -> None:
    if not ID_PATTERN.fullmatch(value):
        raise BadLoanRequest(f"{field}: {value!r} is not 1-16 characters of A-Z, a-z, 0-9, '_', '-'")


def check_customer(customer: str) -> None:
    if not CUSTOMER_PATTERN.fullmatch(customer):
        raise BadLoanRequest(f"customer: {customer!r} is not 1-20 letters and digits")


# --- contracts -------------------------------------------------------------------------

METHODS = {
    pb.EQUAL_INSTALMENT: sched.Method.EQUAL_INSTALMENT,
    pb.EQUAL_PRINCIPAL: sched.Method.EQUAL_PRINCIPAL,
    pb.INTEREST_ONLY: sched.Method.INTEREST_ONLY,
}
BASES = {pb.ACT_360: sched.DayBasis.ACT_360, pb.ACT_365: sched.DayBasis.ACT_365}


def terms_of(loan: pb.Loan) -> sched.LoanTerms:
    return sched.LoanTerms(
        principal=loan.principal,
        annual_rate_bps=loan.annual_rate_bps,
        term_months=loan.term_months,
        method=METHODS[loan.repayment_method],
        drawdown=date.fromisoformat(loan.drawdown_date),
        repayment_day=loan.repayment_day or None,
        day_basis=BASES[loan.day_count],
    )


def fee_of(fees: Sequence[pb.Fee], kind: int, base: int) -> int:
    """The fee of `kind` on `base` fen: a fixed amount, or its rate rounded half up once (schedule.round_fen)."""
    for fee in fees:
        if fee.kind == kind:
            return fee.amount or sched.round_fen(Fraction(base * fee.rate_bps, sched.BPS))
    return 0


def _override(p: pb.ProductParameters, name: str, asked: int, default: int, low: int, high: int) -> int:
    if asked == 0:
        return default
    if name not in p.overridable:
        raise BadLoanRequest(f"{name}: {p.code} does not let a loan choose its own {name}")
    if not low <= asked <= high:
        raise BadLoanRequest(f"{name}: {asked} is outside {low}..{high}, the bounds of {p.code}")
    return asked


def line_rate(p: pb.ProductParameters, asked: int) -> int:
    """A credit line's price (annual bps): the product's for 0 (or asked exactly), else `asked`
    within its override bounds."""
    if asked == p.annual_rate_bps:
        return asked
    return _override(p, "annual_rate_bps", asked, p.annual_rate_bps, p.annual_rate_bps_min, p.annual_rate_bps_max)


def new_loan(request: pb.DrawdownRequest, product: pb.Product, line_rate_bps: int = 0) -> pb.Loan:
    """The contract and schedule of a drawdown under `product` (its pinned version); BadLoanRequest if malformed.
    Its rate: the request's (within the product's bounds), else the line's price, else the product's."""
    check_customer(request.customer)
    check_id("loan_id", request.loan_id)
    drawn = parse_date("date", request.date)
    p = product.parameters
    if not 1 <= request.amount <= p.amount_max:
        raise BadLoanRequest(f"amount: {request.amount} fen is outside 1..{p.amount_max}, the bounds of {p.code}")
    default_rate = line_rate_bps or p.annual_rate_bps
    rate = _override(
        p, "annual_rate_bps", request.annual_rate_bps, default_rate, p.annual_rate_bps_min, p.annual_rate_bps_max
    )
    term = _override(p, "term_months", request.term_months, p.term_months, p.term_months_min, p.term_months_max)
    if request.repayment_day > 31:
        raise BadLoanRequest(f"repayment_day: {request.repayment_day} is outside 1..31 (0: the drawdown's day)")
    loan = pb.Loan(
        loan_id=request.loan_id,
        customer=request.customer,
        product_code=product.code,
        product_version=product.version,
        principal=request.amount,
        annual_rate_bps=rate,
        term_months=term,
        repayment_method=p.repayment_method,
        day_count=p.day_count,
        grace_days=p.grace_days,
        penalty_rate_bps=p.penalty_rate_bps,
        drawdown_date=drawn.isoformat(),
        repayment_day=request.repayment_day,
        status=pb.PENDING,
        principal_outstanding=request.amount,
        bucket="M0",
        fees=p.fees,
    )
    try:
        instalments = sched.build_schedule(terms_of(loan))
    except sched.ScheduleError as error:
        raise BadLoanRequest(str(error)) from None
    for i in instalments:
        loan.schedule.append(
            pb.Instalment(
                number=i.number,
                start=i.start.isoformat(),
                due=i.due.isoformat(),
                principal=i.principal,
                interest=i.interest,
            )
        )
    # The origination fee is billed with the first instalment (the product says how much).
    loan.schedule[0].fees = fee_of(p.fees, pb.ORIGINATION, request.amount)
    return loan


def same_drawdown(loan: pb.Loan, request: pb.DrawdownRequest) -> str | None:
    """The first field in which a repeated drawdown differs from the stored loan, or None."""
    asked = {
        "customer": request.customer,
        "product_code": request.product_code,
        "amount": request.amount,
        "date": request.date,
        "repayment_day": request.repayment_day,
    }
    stored = {
        "customer": loan.customer,
        "product_code": loan.product_code,
        "amount": loan.principal,
        "date": loan.drawdown_date,
        "repayment_day": loan.repayment_day,
    }
    if request.annual_rate_bps:
        asked["annual_rate_bps"], stored["annual_rate_bps"] = request.annual_rate_bps, loan.annual_rate_bps
    if request.term_months:
        asked["term_months"], stored["term_months"] = request.term_months, loan.term_months
    return next((name for name in asked if asked[name] != stored[name]), None)


# --- what is owed ----------------------------------------------------------------------


def owed(i: pb.Instalment) -> Due:
    return Due(
        i.number,
        date.fromisoformat(i.due),
        fees=i.fees - i.paid_fees,
        penalty=i.penalty - i.paid_penalty,
        interest=i.interest - i.paid_interest,
        principal=i.principal - i.paid_principal,
    )


def dues_on(loan: pb.Loan, on: date) -> list[Due]:
    """What the instalments due on or before `on` still owe."""
    return [owed(i) for i in loan.schedule if date.fromisoformat(i.due) <= on and owed(i).total > 0]


def apply_paid(loan: pb.Loan, paid: list[Due]) -> None:
    """Record an allocation (from lending/allocation.py) on the loan's instalments."""
    by_number = {i.number: i for i in loan.schedule}
    for part in paid:
        i = by_number[part.number]
        i.paid_fees += part.fees
        i.paid_penalty += part.penalty
        i.paid_interest += part.interest
        i.paid_principal += part.principal
        loan.principal_outstanding -= part.principal
    assert loan.principal_outstanding >= 0, loan


def payoff_dues(loan: pb.Loan, on: date) -> tuple[list[Due], int]:
    """Everything a full early repayment on `on` pays, and the early-repayment fee it charges.

    The arrears, then interest to `on` and all principal left, and the product's
    EARLY_REPAYMENT fee on the principal repaid before its due date (billed with the current
    instalment).

    The current period's interest runs by actual days from its start to the day before `on`
    (schedule.early_repayment, the PBOC's 算头不算尾). The unbilled instalments are rewritten to
    what the payoff charges them: the current one its interest to date, the later ones none.
    """
    dues = dues_on(loan, on)
    unbilled = [i for i in loan.schedule if date.fromisoformat(i.due) > on]
    if not unbilled:
        return dues, 0
    current = unbilled[0]
    early = sched.early_repayment(terms_of(loan), paid=current.number - 1, on=on)
    assert early.principal == sum(i.principal for i in unbilled), (early, loan.loan_id)
    for i in unbilled:
        i.interest = early.interest if i is current else 0
    fee = fee_of(loan.fees, pb.EARLY_REPAYMENT, early.principal)
    current.fees += fee
    return dues + [owed(i) for i in unbilled if owed(i).total > 0], fee


def interest_paid(loan: pb.Loan) -> int:
    return sum(i.paid_interest for i in loan.schedule)


def fully_repaid(loan: pb.Loan) -> bool:
    return all(owed(i).total == 0 for i in loan.schedule)


# --- end of day ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Posting:
    """One ledger transfer end of day makes: `part` is int (accrual), pen (penalty) or fee (late payment)."""

    part: str
    amount: int
    transfer_id: str


def interest_earned(loan: pb.Loan, through: date) -> int:
    """Contract interest earned from drawdown to the end of `through`, in whole fen.

    Each instalment's interest (what the schedule bills: whole months at the monthly rate,
    stubs by actual days) is spread evenly over the days of its period and rounded on the
    running total, so the days of a period sum exactly to what is billed on its due date.
    """
    total = 0
    for i in loan.schedule:
        start, due = date.fromisoformat(i.start), date.fromisoformat(i.due)
        days = (due - start).days
        elapsed = min(max((through - start).days + 1, 0), days)
        total += sched.round_fen(Fraction(i.interest * elapsed, days))
    return total


def classify(loan: pb.Loan, on: date) -> None:
    """Overdue bucket, days past due and status (ACTIVE/OVERDUE) as of the end of `on`."""
    late = [
        sched.days_past_due(date.fromisoformat(i.due), on)
        for i in loan.schedule
        if date.fromisoformat(i.due) <= on and owed(i).total > 0
    ]
    worst = max(late, default=0)
    overdue = worst > loan.grace_days
    loan.days_past_due = worst
    loan.bucket = sched.overdue_bucket(worst) if overdue else "M0"
    if loan.status in OPEN:
        loan.status = pb.OVERDUE if overdue else pb.ACTIVE


def end_of_day(loan: pb.Loan, business_date: date) -> list[Posting]:
    """Advance an open loan's end of day to `business_date`, day by day; the transfers to make.

    Each day accrues that day's interest and charges penalty on every instalment unpaid past
    its grace (schedule.penalty's rule: from the due date once the grace is over, then day by
    day), then classifies. Ids derive from loan id and date, so a repeated day moves nothing.
    """
    if loan.status not in OPEN:
        return []
    drawn = date.fromisoformat(loan.drawdown_date)
    first = date.fromisoformat(loan.last_eod_date) + timedelta(days=1) if loan.last_eod_date else drawn
    if business_date < first:
        return []
    if (business_date - first).days >= EOD_CATCH_UP_DAYS_MAX:
        raise LoanRefused(
            f"date: {loan.loan_id} would catch up more than {EOD_CATCH_UP_DAYS_MAX} days; run earlier dates"
        )
    basis = BASES[loan.day_count]
    postings: list[Posting] = []
    day = first
    while day <= business_date:
        stamp = day.strftime("%Y%m%d")
        accrued = interest_earned(loan, day) - interest_earned(loan, day - timedelta(days=1))
        if accrued > 0:
            postings.append(Posting("int", accrued, f"{loan.loan_id}:a:{stamp}"))
            loan.interest_accrued += accrued
        charged = fees = 0
        for i in loan.schedule:
            due = date.fromisoformat(i.due)
            unpaid = (i.principal - i.paid_principal) + (i.interest - i.paid_interest)
            if unpaid <= 0 or not sched.is_overdue(due, day, loan.grace_days):
                continue
            late = sched.days_past_due(due, day)
            # The first day past the grace charges every day since the due date (the grace is not deducted).
            days = late if late == loan.grace_days + 1 else 1
            amount = sched.round_fen(sched.days_interest(unpaid, loan.penalty_rate_bps, days, basis))
            i.penalty += amount
            charged += amount
            if late == loan.grace_days + 1:  # the product's LATE_PAYMENT fee: once per instalment that falls overdue
                fee = fee_of(loan.fees, pb.LATE_PAYMENT, unpaid)
                i.fees += fee
                fees += fee
        if fees:
            postings.append(Posting("fee", fees, f"{loan.loan_id}:f:{stamp}"))
        if charged:
            postings.append(Posting("pen", charged, f"{loan.loan_id}:p:{stamp}"))
            loan.penalty_charged += charged
        classify(loan, day)
        day += timedelta(days=1)
    loan.last_eod_date = business_date.isoformat()
    return postings


# --- closing ---------------------------------------------------------------------------


def true_up(loan: pb.Loan) -> int:
    """Interest still to recognise (negative: to reverse) so that recognised equals paid, when a loan closes."""
    return interest_paid(loan) - loan.interest_accrued


@dataclass(frozen=True, slots=True)
class WriteOff:
    principal: int
    interest: int
    penalty: int
    fees: int

    @property
    def total(self) -> int:
        return self.principal + self.interest + self.penalty + self.fees


def write_off_amounts(loan: pb.Loan) -> WriteOff:
    """What is left on each receivable of the loan: the write-off moves it to the loss clearing account."""
    return WriteOff(
        principal=loan.principal_outstanding,
        interest=max(0, loan.interest_accrued - interest_paid(loan)),
        penalty=loan.penalty_charged - sum(i.paid_penalty for i in loan.schedule),
        fees=sum(i.fees - i.paid_fees for i in loan.schedule),
    )
