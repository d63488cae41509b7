"""Behavioural features read off a borrower's repayment records (the lending server's loans).

The behaviour models were trained on public or synthetic data (scoring/datasets.py); their
repayment columns are fed from the customer's loans as of a business date, like this:

- `late_payments_12m` (early_warning; synthetic: late instalments on credit in the last 12
  months): instalments due in the 12 months up to the date (after date - 365 days) that were
  late: their principal and interest were not fully paid by the end of their grace days
  (paid later, or still unpaid once the grace days are over).
- `months_on_book` (early_warning; synthetic: months the business has borrowed from us):
  whole months from the customer's first drawdown to the date.
- `LateApril` (repayment_willingness; the card data's "paid late in April", the month
  before the one it predicts): 1.0 if an instalment due in the month up to the date was
  late, or if any instalment is unpaid past its grace days on the date; else 0.0.
- `BillApril` (repayment_willingness; the card data's April statement amount): principal
  and interest of the instalments due in the month up to the date, in thousands of yuan
  (fen / 100,000). Fees are left out: a late fee lands on the record only when end of day
  runs past the grace days, so counting it would make the feature depend on when end of
  day ran. The card data's unit is the source's, so this scale is a stand-in: a model
  trained on our own repayment history would replace it.

When an instalment was paid is replayed from the loan's repayments: each repayment records
how much of it went to interest and to principal, and lending/allocation.py spreads each
part over the instalments due on the repayment's date (all of them for a payoff), earliest
due first; the same spreading is replayed here. Repayments after the date, and loans drawn
after it or never drawn (PENDING), are not looked at, so the features as of a date do not
change when later records arrive. A closed loan's instalments due after it closed are not
owed (a payoff settled them; a write-off gave up on them); those of a written-off loan due
before and unpaid count as unpaid. An instalment that owes no principal and no interest (a
0% interest-only loan's) is paid on its due date. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from lending.schedule import add_months, is_overdue
from proto import lending_pb2 as pb

FEATURES = ("late_payments_12m", "months_on_book", "LateApril", "BillApril")
WINDOW_DAYS = 365
FEN_PER_THOUSAND_YUAN = 100_000


class BadHistory(ValueError):
    """A loan from the lending server that does not add up (a repayment of more than its
    schedule owed, a date that does not parse): its borrower is not assessed on it."""


def _date(loan: pb.Loan, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadHistory(f"loan {loan.loan_id}: date {text[:20]!r} is not YYYY-MM-DD") from None


@dataclass(frozen=True)
class Instalment:
    """One instalment's facts as of the date: when it fell due, its grace, when it was paid."""

    due: date
    grace_days: int
    billed_fen: int
    paid_on: date | None  # the day its principal and interest were fully paid; None: not (yet) paid


def instalments_of(loan: pb.Loan, as_of: date) -> list[Instalment]:
    """The loan's instalments due on or before `as_of`, with the day each was paid (replayed)."""
    if loan.status == pb.PENDING or _date(loan, loan.drawdown_date) > as_of:
        return []
    closed = _date(loan, loan.closed_date) if loan.status in (pb.PAID_OFF, pb.WRITTEN_OFF) else None
    schedule = sorted(loan.schedule, key=lambda i: (i.due, i.number))
    # Principal and interest each instalment owes, taken down as repayments are replayed.
    left = {i.number: [i.interest, i.principal] for i in schedule}
    paid_on = {i.number: _date(loan, i.due) for i in schedule if i.interest == i.principal == 0}
    for repayment in loan.repayments:
        on = _date(loan, repayment.date)
        if on > as_of:
            continue
        due = [i for i in schedule if repayment.payoff or _date(loan, i.due) <= on]
        for part, amount in ((0, repayment.interest), (1, repayment.principal)):
            for instalment in due:
                share = min(amount, left[instalment.number][part])
                left[instalment.number][part] -= share
                amount -= share
            if amount:
                what = ("interest", "principal")[part]
                raise BadHistory(
                    f"loan {loan.loan_id}: repayment {repayment.repayment_id} pays {amount} fen more {what} than its"
                    " schedule owed"
                )
        for instalment in due:
            if instalment.number not in paid_on and left[instalment.number] == [0, 0]:
                paid_on[instalment.number] = on
    facts = []
    for i in schedule:
        due_day = _date(loan, i.due)
        if due_day > as_of or (closed is not None and due_day > closed):
            continue
        facts.append(Instalment(due_day, loan.grace_days, i.principal + i.interest, paid_on.get(i.number)))
    return facts


def late(instalment: Instalment, as_of: date) -> bool:
    """Paid after its grace days, or still unpaid once they are over (lending/schedule.py's rule)."""
    return is_overdue(instalment.due, instalment.paid_on or as_of, instalment.grace_days)


def features(loans: Sequence[pb.Loan], as_of: date) -> dict[str, float]:
    """The repayment features (FEATURES) of a customer's loans as of a business date."""
    drawn = [_date(loan, loan.drawdown_date) for loan in loans if loan.status != pb.PENDING]
    drawn = [day for day in drawn if day <= as_of]
    facts = [fact for loan in loans for fact in instalments_of(loan, as_of)]
    year_ago = as_of - timedelta(days=WINDOW_DAYS)
    month_ago = add_months(as_of, -1)
    last_month = [fact for fact in facts if fact.due > month_ago]
    overdue_now = any(fact.paid_on is None and late(fact, as_of) for fact in facts)
    return {
        "late_payments_12m": float(sum(1 for fact in facts if fact.due > year_ago and late(fact, as_of))),
        "months_on_book": float(_whole_months(min(drawn), as_of)) if drawn else 0.0,
        "LateApril": 1.0 if overdue_now or any(late(fact, as_of) for fact in last_month) else 0.0,
        "BillApril": sum(fact.billed_fen for fact in last_month) / FEN_PER_THOUSAND_YUAN,
    }


def _whole_months(start: date, end: date) -> int:
    months = (end.year - start.year) * 12 + end.month - start.month
    return months if add_months(start, months) <= end else months - 1
