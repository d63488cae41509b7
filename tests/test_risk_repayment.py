"""Repayment features (risk/repayment.py) on hand-made loan records: lateness replayed from
repayments, the 12-month window, the last month, payoffs, write-offs and as-of dates."""

from __future__ import annotations

from datetime import date

import pytest

from proto import lending_pb2 as pb
from risk.repayment import BadHistory, features

# Four monthly instalments of 100 principal + 10 interest, due on the 10th, 3 grace days.
DUES = ("2026-02-10", "2026-03-10", "2026-04-10", "2026-05-10")


def loan(*repayments: tuple[str, int, int], status: int = pb.ACTIVE, closed: str = "", payoff: str = "") -> pb.Loan:
    """A loan drawn on 2026-01-10; repayments as (date, interest, principal) in the order they were made."""
    made = pb.Loan(
        loan_id="l1",
        customer="c1",
        drawdown_date="2026-01-10",
        grace_days=3,
        status=status,
        closed_date=closed,
        schedule=[pb.Instalment(number=n, due=due, principal=100, interest=10) for n, due in enumerate(DUES, 1)],
    )
    for number, (day, interest, principal) in enumerate(repayments):
        made.repayments.append(
            pb.Repayment(
                repayment_id=f"r{number}", date=day, interest=interest, principal=principal, payoff=day == payoff
            )
        )
    return made


def test_an_on_time_payer_has_no_late_instalment_and_last_month_bill() -> None:
    paid = loan(("2026-02-10", 10, 100), ("2026-03-12", 10, 100))  # the second within its grace
    assert features([paid], date(2026, 3, 20)) == {
        "late_payments_12m": 0.0,
        "months_on_book": 2.0,
        "LateApril": 0.0,
        "BillApril": 110 / 100_000,  # the instalment due 2026-03-10, in thousands of yuan
    }


def test_missed_instalments_are_late_once_their_grace_is_over() -> None:
    missed = loan(("2026-02-10", 10, 100))
    assert features([missed], date(2026, 3, 13))["late_payments_12m"] == 0.0  # the last day of grace
    on = features([missed], date(2026, 4, 14))
    assert (on["late_payments_12m"], on["LateApril"]) == (2.0, 1.0)


def test_a_late_payment_stays_late_after_catching_up_but_the_last_month_can_be_clean() -> None:
    caught_up = loan(("2026-02-10", 10, 100), ("2026-03-20", 10, 100), ("2026-04-10", 10, 100))
    on = features([caught_up], date(2026, 4, 30))
    assert (on["late_payments_12m"], on["LateApril"]) == (1.0, 0.0)


def test_each_part_is_spread_over_the_dues_earliest_due_first() -> None:
    # On 2026-03-12 February's and March's instalments are due: 20 interest covers both, 100
    # principal covers February's only, so February is paid then (late) and March, paid on
    # 03-25, is late too. Spread latest first, March would be on time and February late.
    two = loan(("2026-03-12", 20, 100), ("2026-03-25", 0, 100))
    assert features([two], date(2026, 3, 25))["late_payments_12m"] == 2.0
    # An instalment is paid when its last fen is: half on its due date, half after its grace, is late.
    halves = loan(("2026-02-10", 10, 50), ("2026-02-20", 0, 50))
    assert features([halves], date(2026, 2, 25))["late_payments_12m"] == 1.0
    assert features([halves], date(2026, 2, 12))["late_payments_12m"] == 0.0  # within its grace


def test_features_as_of_a_date_ignore_later_records() -> None:
    # As of 03-12 March's instalment is unpaid within its grace: the repayment of 03-20,
    # after its grace, has not happened yet.
    record = loan(("2026-02-10", 10, 100), ("2026-03-20", 10, 100))
    assert features([record], date(2026, 3, 12)) == {
        "late_payments_12m": 0.0,
        "months_on_book": 2.0,
        "LateApril": 0.0,
        "BillApril": 110 / 100_000,
    }
    assert features([record], date(2026, 3, 20))["late_payments_12m"] == 1.0
    assert features([record], date(2025, 12, 31)) == {
        "late_payments_12m": 0.0,
        "months_on_book": 0.0,
        "LateApril": 0.0,
        "BillApril": 0.0,
    }


def test_fees_are_not_billed_and_instalments_owing_nothing_are_never_late() -> None:
    with_fees = loan(("2026-02-10", 10, 100))
    with_fees.schedule[1].fees = 5_000  # a late fee end of day may or may not have charged yet
    assert features([with_fees], date(2026, 3, 12))["BillApril"] == 110 / 100_000
    free = loan()
    for instalment in free.schedule[:3]:  # a 0% interest-only loan's instalments before the bullet
        instalment.principal = instalment.interest = 0
    on = features([free], date(2026, 4, 30))
    assert (on["late_payments_12m"], on["LateApril"], on["BillApril"]) == (0.0, 0.0, 0.0)


def test_a_payoff_settles_everything_and_a_write_off_ends_what_is_owed() -> None:
    paid_off = loan(
        ("2026-02-10", 10, 100), ("2026-02-20", 5, 300), status=pb.PAID_OFF, closed="2026-02-20", payoff="2026-02-20"
    )
    paid_off.schedule[1].interest, paid_off.schedule[2].interest, paid_off.schedule[3].interest = 5, 0, 0
    for day in (date(2026, 3, 15), date(2026, 6, 1)):  # nothing is owed or billed after a payoff
        on = features([paid_off], day)
        assert (on["late_payments_12m"], on["LateApril"], on["BillApril"]) == (0.0, 0.0, 0.0)
    written_off = loan(status=pb.WRITTEN_OFF, closed="2026-03-20")
    on = features([written_off], date(2026, 6, 1))
    assert (on["late_payments_12m"], on["LateApril"]) == (2.0, 1.0)  # February's and March's, never paid


def test_the_window_is_twelve_months_and_pending_loans_do_not_count() -> None:
    missed = loan()
    assert features([missed], date(2026, 12, 1))["late_payments_12m"] == 4.0
    assert features([missed], date(2027, 3, 15))["late_payments_12m"] == 2.0  # April's and May's
    assert features([missed], date(2027, 3, 15))["months_on_book"] == 14.0
    pending = loan()
    pending.status = pb.PENDING
    assert features([pending], date(2026, 12, 1))["late_payments_12m"] == 0.0
    assert features([], date(2026, 12, 1))["months_on_book"] == 0.0


def test_loans_from_lending_that_do_not_add_up_are_refused_by_name_not_asserted() -> None:
    """The loans come from the lending server's reply: a repayment of more than its schedule owed,
    or a date that does not parse, is a BadHistory naming the loan (its borrower is reported not
    assessed by the behaviour job), not an assert that fails the whole call."""
    overpaid = loan(("2026-02-10", 10, 250))  # 250 of principal against 100 due by then
    with pytest.raises(BadHistory, match="loan l1: repayment r0 pays 150 fen more principal"):
        features([overpaid], date(2026, 3, 20))
    garbled = loan(("2026-02-10", 10, 100))
    garbled.repayments[0].date = "10/02/2026"
    with pytest.raises(BadHistory, match="loan l1: date '10/02/2026'"):
        features([garbled], date(2026, 3, 20))
