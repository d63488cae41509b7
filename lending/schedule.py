"""Repayment schedules: pure arithmetic on integer fen and integer basis points.

Owns the money arithmetic of a loan: due dates, the three repayment methods, the first
period's stub, early repayment, grace, overdue buckets, penalty and daily accrual. No I/O.

Conventions (each is a choice a product cannot change today; the reasons are beside them):

- Money is an int of fen. Rates are ints of basis points per year (720 = 7.20%). Every
  figure is computed exactly with `fractions.Fraction` and rounded to the fen once, by
  `round_fen`: half up (四舍五入), the rule customers and every bank's calculator apply,
  so a customer can reproduce each figure of their statement. Floats never appear.
- Rates: the monthly rate is annual / 12 and the daily rate is annual / 360 (or / 365 for
  a product on ACT/365). Source: People's Bank of China, 人民币利率管理规定 (1999): 月利率 =
  年利率 ÷ 12, 日利率 = 年利率 ÷ 360; a period of whole months earns principal × months ×
  monthly rate, odd days earn principal × days × daily rate; days count from the drawdown
  (or last due) date up to the day before repayment (算头不算尾), i.e. `(end - start).days`.
  Leap years therefore enter through the calendar only: February 2028 has 29 days, so a
  stub or an accrual across it is one day longer; the daily rate does not change.
- Due dates fall on the repayment day of each month, clamped to the month's last day
  (day 31 falls on Feb 29 in 2028, Feb 28 in 2027). Without a repayment day the loan is
  anchored on its drawdown day and every period, the first included, is a whole month.
  With one, the first due date is that day of the next month, and the first period is a
  stub paid by actual days (the 逐笔计息法 for odd days); the others are whole months.
- The last instalment absorbs every rounding remainder, so principal sums exactly.
- Equal instalment (等额本息): payment = P·r·(1+r)^n / ((1+r)^n − 1), r the monthly rate,
  rounded once; each period's interest is the balance × r, its principal the rest.
  Equal principal (等额本金): P // n a period (floor, so the last is never smaller), plus
  interest on the balance. Interest only: interest each period, the principal in a bullet.
- Grace: a payment within `grace_days` after the due date is on time: no penalty, not
  overdue. After the grace, the instalment is overdue from its due date: days past due
  and penalty count from the due date, the grace is not deducted. The penalty rate applies
  to the overdue principal and interest alike (PBOC 银发[2003]251号: overdue principal
  bears the penalty rate, and unpaid interest compounds at it).
- Overdue buckets are the industry's months past due: M1 is 1-30 days, M2 31-60, ...
"""

from __future__ import annotations

import calendar
import enum
from dataclasses import dataclass
from datetime import date
from fractions import Fraction

BPS = 10_000  # basis points in 1
MONTHS_PER_YEAR = 12
TERM_MONTHS_MAX = 360
# Above 36% a year no Chinese court enforces interest; product policy sets tighter bounds.
ANNUAL_RATE_BPS_MAX = 3_600
PRINCIPAL_MAX = 100_000_000_000  # 1 billion yuan in fen: far above any small-business loan
DAYS_IN_BUCKET = 30


class ScheduleError(ValueError):
    """Terms that make no schedule; the message starts with the parameter's name."""


class Method(enum.StrEnum):
    EQUAL_INSTALMENT = "equal_instalment"
    EQUAL_PRINCIPAL = "equal_principal"
    INTEREST_ONLY = "interest_only"


class DayBasis(enum.IntEnum):
    """Days in the year that divides the annual rate for a day's interest."""

    ACT_360 = 360
    ACT_365 = 365


class Keep(enum.StrEnum):
    """What a partial early repayment keeps: the term (instalments fall) or the instalment (term shortens)."""

    TERM = "term"
    INSTALMENT = "instalment"


def round_fen(amount: Fraction) -> int:
    """An exact non-negative amount of fen rounded half up to a whole fen (四舍五入)."""
    assert amount >= 0, amount
    whole, rest = divmod(amount.numerator, amount.denominator)
    return whole + (1 if 2 * rest >= amount.denominator else 0)


def monthly_rate(annual_rate_bps: int) -> Fraction:
    return Fraction(annual_rate_bps, BPS * MONTHS_PER_YEAR)


def days_interest(balance: int, annual_rate_bps: int, days: int, basis: DayBasis) -> Fraction:
    """Exact interest on `balance` for `days` days at the daily rate annual / basis."""
    return Fraction(balance * annual_rate_bps * days, BPS * int(basis))


def month_day(year: int, month: int, day: int) -> date:
    """`day` of the month, or the month's last day when it is shorter."""
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def add_months(start: date, months: int, day: int | None = None) -> date:
    """The date `months` months after `start`, on `day` (default start's day), clamped to the month's end."""
    index = start.year * MONTHS_PER_YEAR + start.month - 1 + months
    return month_day(index // MONTHS_PER_YEAR, index % MONTHS_PER_YEAR + 1, day or start.day)


@dataclass(frozen=True, slots=True)
class LoanTerms:
    """What a schedule is computed from (a loan's contract terms)."""

    principal: int  # fen
    annual_rate_bps: int
    term_months: int
    method: Method
    drawdown: date
    repayment_day: int | None = None  # 1..31; None: the drawdown's day, no stub
    day_basis: DayBasis = DayBasis.ACT_360


@dataclass(frozen=True, slots=True)
class Instalment:
    number: int  # 1-based, continuing across a recalculation
    start: date  # interest runs from start (included) to due (excluded)
    due: date
    principal: int  # fen
    interest: int  # fen
    balance_after: int  # principal outstanding once this instalment is paid
    whole_month: bool  # False: a stub, interest by actual days

    @property
    def days(self) -> int:
        return (self.due - self.start).days

    @property
    def total(self) -> int:
        return self.principal + self.interest


@dataclass(frozen=True, slots=True)
class EarlyRepayment:
    """What a customer pays on `on` to repay early, and the schedule that remains."""

    on: date
    principal: int  # fen repaid now
    interest: int  # fen accrued since the last due date on the whole balance, paid now
    schedule: list[Instalment]  # the instalments left; empty when the loan is repaid

    @property
    def total(self) -> int:
        return self.principal + self.interest


def check_terms(terms: LoanTerms) -> None:
    """ScheduleError naming the first parameter out of range."""
    if not 1 <= terms.principal <= PRINCIPAL_MAX:
        raise ScheduleError(f"principal: {terms.principal} fen is outside 1..{PRINCIPAL_MAX}")
    if not 0 <= terms.annual_rate_bps <= ANNUAL_RATE_BPS_MAX:
        raise ScheduleError(f"annual_rate_bps: {terms.annual_rate_bps} is outside 0..{ANNUAL_RATE_BPS_MAX}")
    if not 1 <= terms.term_months <= TERM_MONTHS_MAX:
        raise ScheduleError(f"term_months: {terms.term_months} is outside 1..{TERM_MONTHS_MAX}")
    if terms.repayment_day is not None and not 1 <= terms.repayment_day <= 31:
        raise ScheduleError(f"repayment_day: {terms.repayment_day} is outside 1..31")
    if terms.method is Method.EQUAL_PRINCIPAL and terms.principal < terms.term_months:
        raise ScheduleError(
            f"principal: {terms.principal} fen is less than one fen for each of {terms.term_months} months"
        )


def due_dates(terms: LoanTerms) -> list[date]:
    """The due date of each instalment, in order."""
    if terms.repayment_day is None:
        return [add_months(terms.drawdown, k) for k in range(1, terms.term_months + 1)]
    return [add_months(terms.drawdown, k, terms.repayment_day) for k in range(1, terms.term_months + 1)]


def build_schedule(terms: LoanTerms) -> list[Instalment]:
    """The loan's instalments, from drawdown to the last due date."""
    check_terms(terms)
    dues = due_dates(terms)
    first_whole = dues[0] == add_months(terms.drawdown, 1)
    return _amortise(terms, terms.principal, terms.drawdown, dues, first_whole, number=1, payment=None)


def _amortise(
    terms: LoanTerms,
    balance: int,
    start: date,
    dues: list[date],
    first_whole: bool,
    number: int,
    payment: int | None,
) -> list[Instalment]:
    """Instalments repaying `balance` from `start` over `dues`.

    `payment` fixes the equal instalment (or, for equal principal, the principal per period)
    instead of spreading the balance over every due date: the loan then ends early.
    """
    rate = monthly_rate(terms.annual_rate_bps)
    periods = len(dues)
    if terms.method is Method.EQUAL_INSTALMENT and payment is None:
        payment = annuity_payment(balance, terms.annual_rate_bps, periods)
    if terms.method is Method.EQUAL_PRINCIPAL and payment is None:
        payment = balance // periods
    schedule: list[Instalment] = []
    for index, due in enumerate(dues):
        whole = index > 0 or first_whole
        regular = round_fen(balance * rate)
        interest = (
            regular
            if whole
            else round_fen(days_interest(balance, terms.annual_rate_bps, (due - start).days, terms.day_basis))
        )
        if terms.method is Method.EQUAL_INSTALMENT:
            assert payment is not None
            # A stub changes what the first instalment's interest is, not how much principal it repays.
            principal = payment - regular
        elif terms.method is Method.EQUAL_PRINCIPAL:
            assert payment is not None
            principal = payment
        else:
            principal = 0
        assert principal >= 0, (principal, payment, regular)
        last = index == periods - 1 or principal >= balance
        if last:
            principal = balance
        balance -= principal
        schedule.append(Instalment(number + index, start, due, principal, interest, balance, whole))
        start = due
        if last:
            break
    return schedule


def annuity_payment(principal: int, annual_rate_bps: int, periods: int) -> int:
    """The equal instalment repaying `principal` over `periods` months: P·r·(1+r)^n / ((1+r)^n − 1)."""
    assert periods >= 1
    rate = monthly_rate(annual_rate_bps)
    if rate == 0:
        return round_fen(Fraction(principal, periods))
    growth = (1 + rate) ** periods
    return round_fen(principal * rate * growth / (growth - 1))


def early_repayment(
    terms: LoanTerms, paid: int, on: date, principal: int | None = None, keep: Keep = Keep.TERM
) -> EarlyRepayment:
    """Repay `principal` (None: all of it) on `on`, after `paid` instalments were paid on time.

    Interest on the whole outstanding balance from the last due date (or drawdown) to `on`
    is due now, by actual days. The rest is re-amortised from `on` over the remaining due
    dates: the next period is a stub from `on` (unless `on` is the period's first day).
    """
    schedule = build_schedule(terms)
    if not 0 <= paid < len(schedule):
        raise ScheduleError(f"paid: {paid} instalments paid; the loan has {len(schedule)}, so 0..{len(schedule) - 1}")
    start = schedule[paid].start
    balance = schedule[paid - 1].balance_after if paid else terms.principal
    if not start <= on < schedule[paid].due:
        raise ScheduleError(f"on: {on} is not in the current period, {start} to the day before {schedule[paid].due}")
    if principal is None:
        principal = balance
    if not 1 <= principal <= balance:
        raise ScheduleError(f"principal: {principal} fen is outside 1..{balance}, the balance outstanding")
    interest = round_fen(days_interest(balance, terms.annual_rate_bps, (on - start).days, terms.day_basis))
    remaining = balance - principal
    if remaining == 0:
        return EarlyRepayment(on, principal, interest, [])
    payment: int | None = None
    if keep is Keep.INSTALMENT:
        if terms.method is Method.INTEREST_ONLY:
            raise ScheduleError("keep: an interest-only loan has no instalment to keep; keep the term")
        if terms.method is Method.EQUAL_INSTALMENT:
            payment = annuity_payment(terms.principal, terms.annual_rate_bps, terms.term_months)
        else:
            payment = terms.principal // terms.term_months
    first_whole = on == start and schedule[paid].whole_month
    dues = [i.due for i in schedule[paid:]]
    rest = _amortise(terms, remaining, on, dues, first_whole, number=paid + 1, payment=payment)
    return EarlyRepayment(on, principal, interest, rest)


# --- overdue ------------------------------------------------------------------------------


def days_past_due(due: date, on: date) -> int:
    """Days an instalment due on `due` and still unpaid on `on` is late (0 on or before the due date)."""
    return max(0, (on - due).days)


def is_overdue(due: date, on: date, grace_days: int) -> bool:
    """Unpaid on `on` and past the grace: grace days after the due date are still on time."""
    return days_past_due(due, on) > grace_days


def overdue_bucket(days_late: int) -> str:
    """M0 (current), then M1 for 1-30 days past due, M2 for 31-60, and so on."""
    assert days_late >= 0
    return f"M{-(-days_late // DAYS_IN_BUCKET)}"


def penalty(overdue_amount: int, penalty_rate_bps: int, due: date, on: date, grace_days: int, basis: DayBasis) -> int:
    """Penalty interest on an overdue amount unpaid on `on`: none within the grace, from the due date after it."""
    if not is_overdue(due, on, grace_days):
        return 0
    return round_fen(days_interest(overdue_amount, penalty_rate_bps, days_past_due(due, on), basis))


def accrual_for_day(balance: int, annual_rate_bps: int, start: date, day: date, basis: DayBasis) -> int:
    """Interest accrued on `day` (start <= day) in a period that began on `start`, in whole fen.

    Each day books the growth of the period's rounded running total, not a rounded daily
    figure, so the days of a period sum exactly to its interest by actual days.
    """
    assert start <= day
    elapsed = (day - start).days
    before = round_fen(days_interest(balance, annual_rate_bps, elapsed, basis))
    return round_fen(days_interest(balance, annual_rate_bps, elapsed + 1, basis)) - before
