"""Schedule arithmetic against cases computed by hand (the working is beside each figure).

Conventions under test (lending/schedule.py): fen and basis points, monthly rate = annual/12,
daily rate = annual/360 (ACT/360), rounding half up to the fen once per figure, the last
instalment absorbs the remainder.
"""

from __future__ import annotations

import re
from datetime import date
from fractions import Fraction

import pytest

from lending.schedule import (
    DayBasis,
    Keep,
    LoanTerms,
    Method,
    ScheduleError,
    accrual_for_day,
    annuity_payment,
    build_schedule,
    due_dates,
    early_repayment,
    is_overdue,
    overdue_bucket,
    penalty,
    round_fen,
)

YUAN = 100  # fen
P120K = 120_000 * YUAN  # 12,000,000 fen


def terms(method: Method = Method.EQUAL_INSTALMENT, **changes: object) -> LoanTerms:
    values: dict[str, object] = {
        "principal": P120K,
        "annual_rate_bps": 720,
        "term_months": 12,
        "method": method,
        "drawdown": date(2027, 1, 15),
    }
    values.update(changes)
    return LoanTerms(**values)  # type: ignore[arg-type]


def test_rounding_is_half_up_to_the_fen() -> None:
    assert [round_fen(Fraction(n, 10)) for n in (14, 15, 25, 16)] == [1, 2, 3, 2]


def test_equal_instalment_120k_at_7_2_percent_over_12_months() -> None:
    # r = 7.2% / 12 = 0.006; (1.006)^12 = 1.0744241677...
    # A = 12,000,000 × 0.006 × 1.0744241677 / 0.0744241677 = 1,039,427.68 → 1,039,428 fen (10,394.28 yuan)
    assert annuity_payment(P120K, 720, 12) == 1_039_428
    schedule = build_schedule(terms(Method.EQUAL_INSTALMENT))
    assert len(schedule) == 12 and all(i.whole_month for i in schedule)
    # 1: interest 12,000,000 × 0.006 = 72,000; principal 1,039,428 − 72,000 = 967,428; balance 11,032,572
    # 2: interest 11,032,572 × 0.006 = 66,195.43 → 66,195; principal 973,233; balance 10,059,339
    assert [(i.interest, i.principal, i.balance_after) for i in schedule[:2]] == [
        (72_000, 967_428, 11_032_572),
        (66_195, 973_233, 10_059_339),
    ]
    # 12: balance 1,033,224 is all repaid; interest 1,033,224 × 0.006 = 6,199.34 → 6,199;
    # the last instalment is 1,039,423: five fen of rounding absorbed.
    last = schedule[-1]
    assert (last.principal, last.interest, last.total, last.balance_after) == (1_033_224, 6_199, 1_039_423, 0)
    assert all(i.total == 1_039_428 for i in schedule[:-1])
    assert sum(i.principal for i in schedule) == P120K
    assert sum(i.interest for i in schedule) == 473_131
    assert [i.due for i in schedule[:3]] == [date(2027, 2, 15), date(2027, 3, 15), date(2027, 4, 15)]


def test_equal_instalment_remainder_falls_on_the_last_instalment() -> None:
    # 100,000.00 yuan at 12% over 3 months: r = 0.01, (1.01)^3 = 1.030301
    # A = 10,000,000 × 0.01 × 1.030301 / 0.030301 = 3,400,221.11 → 3,400,221
    # 1: interest 100,000; principal 3,300,221; balance 6,699,779
    # 2: interest 66,997.79 → 66,998; principal 3,333,223; balance 3,366,556
    # 3: interest 33,665.56 → 33,666; principal 3,366,556 (all of it); total 3,400,222
    schedule = build_schedule(terms(Method.EQUAL_INSTALMENT, principal=10_000_000, annual_rate_bps=1200, term_months=3))
    assert [(i.principal, i.interest, i.balance_after) for i in schedule] == [
        (3_300_221, 100_000, 6_699_779),
        (3_333_223, 66_998, 3_366_556),
        (3_366_556, 33_666, 0),
    ]
    assert [i.total for i in schedule] == [3_400_221, 3_400_221, 3_400_222]


def test_equal_principal_120k_at_7_2_percent_over_12_months() -> None:
    # principal 12,000,000 / 12 = 1,000,000 a month; interest = balance × 0.006:
    # 72,000, 66,000, 60,000, ... 6,000; total 6,000 × (12 + 11 + ... + 1) = 6,000 × 78 = 468,000
    schedule = build_schedule(terms(Method.EQUAL_PRINCIPAL))
    assert all(i.principal == 1_000_000 for i in schedule)
    assert [i.interest for i in schedule] == [6_000 * k for k in range(12, 0, -1)]
    assert sum(i.interest for i in schedule) == 468_000


def test_equal_principal_remainder_falls_on_the_last_instalment() -> None:
    # 1,000.00 yuan over 3 months: 100,000 // 3 = 33,333, then 100,000 − 2 × 33,333 = 33,334
    schedule = build_schedule(terms(Method.EQUAL_PRINCIPAL, principal=100_000, term_months=3))
    assert [i.principal for i in schedule] == [33_333, 33_333, 33_334]


def test_interest_only_pays_the_principal_in_a_bullet() -> None:
    # interest 12,000,000 × 0.006 = 72,000 each month; the 12th also repays 12,000,000
    schedule = build_schedule(terms(Method.INTEREST_ONLY))
    assert [i.total for i in schedule] == [72_000] * 11 + [12_072_000]
    assert [i.balance_after for i in schedule] == [P120K] * 11 + [0]


def test_due_dates_fall_on_feb_29_in_2028_and_feb_28_in_2027() -> None:
    leap = due_dates(terms(Method.EQUAL_PRINCIPAL, drawdown=date(2028, 1, 31), term_months=4))
    assert leap == [date(2028, 2, 29), date(2028, 3, 31), date(2028, 4, 30), date(2028, 5, 31)]
    common = due_dates(terms(Method.EQUAL_PRINCIPAL, drawdown=date(2027, 1, 31), term_months=2))
    assert common == [date(2027, 2, 28), date(2027, 3, 31)]
    # Anchored on the drawdown day, the first period is a whole month even when February is short.
    assert build_schedule(terms(Method.INTEREST_ONLY, drawdown=date(2028, 1, 31)))[0].interest == 72_000


def test_a_first_period_stub_across_feb_29_2028_counts_the_leap_day() -> None:
    # Drawdown 10 Feb, repayment day 5: first due 5 March. 2028: 19 days to 29 Feb + 5 = 24 days;
    # 2027: 18 + 5 = 23 days. Interest 12,000,000 × 7.2% × 24 / 360 = 57,600; × 23 / 360 = 55,200.
    leap = build_schedule(terms(Method.INTEREST_ONLY, drawdown=date(2028, 2, 10), repayment_day=5))
    common = build_schedule(terms(Method.INTEREST_ONLY, drawdown=date(2027, 2, 10), repayment_day=5))
    assert (leap[0].due, leap[0].days, leap[0].interest, leap[0].whole_month) == (date(2028, 3, 5), 24, 57_600, False)
    assert (common[0].days, common[0].interest) == (23, 55_200)
    assert leap[1].whole_month and leap[1].interest == 72_000
    # An equal instalment loan with the same stub repays the same principal in its first
    # instalment as without it (1,039,428 − 72,000 = 967,428); only the interest follows the days.
    annuity = build_schedule(terms(Method.EQUAL_INSTALMENT, drawdown=date(2028, 2, 10), repayment_day=5))
    assert (annuity[0].principal, annuity[0].interest) == (967_428, 57_600)
    assert annuity[1].total == 1_039_428 and sum(i.principal for i in annuity) == P120K


def test_act_365_divides_the_annual_rate_by_365() -> None:
    # 24 days at 7.3% on 12,000,000: 12,000,000 × 0.073 × 24 / 365 = 57,600
    stub = build_schedule(
        terms(
            Method.INTEREST_ONLY,
            annual_rate_bps=730,
            drawdown=date(2028, 2, 10),
            repayment_day=5,
            day_basis=DayBasis.ACT_365,
        )
    )[0]
    assert stub.interest == 57_600


def test_early_repayment_keeping_the_term_lowers_the_instalments() -> None:
    # Equal principal, drawdown 15 Jan 2028; two instalments paid (15 Feb, 15 Mar): balance 10,000,000.
    # On 25 Mar (10 days in) repay 4,000,000: interest now 10,000,000 × 7.2% × 10 / 360 = 20,000.
    # 6,000,000 over the 10 due dates left: 600,000 each. Next period 25 Mar → 15 Apr, 21 days:
    # 6,000,000 × 7.2% × 21 / 360 = 25,200; the one after is whole: 5,400,000 × 0.006 = 32,400.
    loan = terms(Method.EQUAL_PRINCIPAL, drawdown=date(2028, 1, 15))
    repaid = early_repayment(loan, paid=2, on=date(2028, 3, 25), principal=4_000_000)
    assert (repaid.principal, repaid.interest, repaid.total) == (4_000_000, 20_000, 4_020_000)
    assert [i.number for i in repaid.schedule] == list(range(3, 13))
    assert all(i.principal == 600_000 for i in repaid.schedule)
    assert (repaid.schedule[0].days, repaid.schedule[0].interest) == (21, 25_200)
    assert repaid.schedule[1].interest == 32_400


def test_early_repayment_keeping_the_instalment_shortens_the_term() -> None:
    # Same loan and prepayment; 1,000,000 a month still: 6,000,000 takes six due dates, 15 Apr to 15 Sep.
    loan = terms(Method.EQUAL_PRINCIPAL, drawdown=date(2028, 1, 15))
    repaid = early_repayment(loan, paid=2, on=date(2028, 3, 25), principal=4_000_000, keep=Keep.INSTALMENT)
    assert [i.due for i in repaid.schedule] == [date(2028, m, 15) for m in range(4, 10)]
    assert all(i.principal == 1_000_000 for i in repaid.schedule)
    annuity = terms(Method.EQUAL_INSTALMENT, drawdown=date(2028, 1, 15))
    shorter = early_repayment(annuity, paid=2, on=date(2028, 3, 15), principal=4_000_000, keep=Keep.INSTALMENT)
    assert all(i.total == 1_039_428 for i in shorter.schedule[:-1]) and len(shorter.schedule) < 10
    assert shorter.schedule[0].whole_month  # repaid on the period's first day: no stub
    assert sum(i.principal for i in shorter.schedule) == build_schedule(annuity)[1].balance_after - 4_000_000


def test_repaying_everything_early_charges_interest_by_actual_days_across_feb_29() -> None:
    # Equal instalment from 31 Jan 2028; the first instalment (due 29 Feb) paid: balance 11,032,572.
    # Repaid in full on 10 Mar: 29 Feb → 10 Mar is 10 days; 11,032,572 × 7.2% × 10 / 360 = 22,065.14 → 22,065.
    loan = terms(Method.EQUAL_INSTALMENT, drawdown=date(2028, 1, 31))
    repaid = early_repayment(loan, paid=1, on=date(2028, 3, 10))
    assert (repaid.principal, repaid.interest, repaid.schedule) == (11_032_572, 22_065, [])


def test_grace_days_charge_no_penalty_and_then_penalty_runs_from_the_due_date() -> None:
    # 1,072,000 due 29 Feb 2028, 3 grace days, penalty rate 10.8% (7.2% × 1.5).
    due = date(2028, 2, 29)
    assert not is_overdue(due, date(2028, 3, 3), grace_days=3)
    assert penalty(1_072_000, 1080, due, date(2028, 3, 3), 3, DayBasis.ACT_360) == 0
    # On 4 March, 4 days past due: 1,072,000 × 10.8% × 4 / 360 = 1,286.4 → 1,286
    assert is_overdue(due, date(2028, 3, 4), grace_days=3)
    assert penalty(1_072_000, 1080, due, date(2028, 3, 4), 3, DayBasis.ACT_360) == 1_286


def test_overdue_buckets_are_thirty_day_months() -> None:
    assert [overdue_bucket(d) for d in (0, 1, 30, 31, 60, 61, 181)] == ["M0", "M1", "M1", "M2", "M2", "M3", "M7"]


def test_daily_accruals_sum_exactly_to_the_period_interest() -> None:
    # 12,345 fen at 7.2%: 2.469 fen a day. Running totals 2.469 → 2, 4.938 → 5, 7.407 → 7: books 2, 3, 2.
    # 31 days: 76.539 → 77 in all, however the days fell.
    start = date(2028, 2, 15)
    days = [
        accrual_for_day(12_345, 720, start, date.fromordinal(start.toordinal() + k), DayBasis.ACT_360)
        for k in range(31)
    ]
    assert days[:3] == [2, 3, 2] and sum(days) == 77


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"principal": 0}, "principal: 0 fen is outside"),
        ({"annual_rate_bps": 250_000}, "annual_rate_bps: 250000 is outside 0..3600"),
        ({"term_months": 0}, "term_months: 0 is outside 1..360"),
        ({"repayment_day": 32}, "repayment_day: 32 is outside 1..31"),
        ({"principal": 5, "method": Method.EQUAL_PRINCIPAL}, "principal: 5 fen is less than one fen for each"),
    ],
)
def test_bad_terms_name_the_parameter(change: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(message)):
        build_schedule(terms(**{"method": Method.EQUAL_INSTALMENT, **change}))


def test_bad_early_repayments_name_the_parameter() -> None:
    loan = terms(Method.INTEREST_ONLY, drawdown=date(2028, 1, 15))
    with pytest.raises(ScheduleError, match=re.escape("on: 2028-03-15 is not in the current period")):
        early_repayment(loan, paid=1, on=date(2028, 3, 15))
    with pytest.raises(ScheduleError, match=re.escape("principal: 12000001 fen is outside 1..12000000")):
        early_repayment(loan, paid=1, on=date(2028, 3, 1), principal=12_000_001)
    with pytest.raises(ScheduleError, match=re.escape("keep: an interest-only loan has no instalment")):
        early_repayment(loan, paid=1, on=date(2028, 3, 1), principal=1, keep=Keep.INSTALMENT)
    with pytest.raises(ScheduleError, match=re.escape("paid: 12 instalments paid")):
        early_repayment(loan, paid=12, on=date(2029, 1, 20))
