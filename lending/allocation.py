"""Repayment allocation: how a payment is split over what a loan has due. Pure; integer fen.

Order: fees, then penalty, then interest, then principal (issue 7), each across every
instalment due, the earliest due date first. The loan contract states this order; it
refines the PRC Civil Code's default: art. 561 (a payment short of the whole debt goes to
costs, then interest, then principal, unless agreed otherwise) and art. 560 (among debts
due, the one that fell due first is paid first). Penalty interest ranks before contractual
interest so that the amount growing fastest is stopped first.
Whatever exceeds everything due is returned as the remainder: whether it prepays
principal or goes back to the customer is the caller's decision, not this module's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date

PARTS = ("fees", "penalty", "interest", "principal")  # in order of allocation


@dataclass(frozen=True, slots=True)
class Due:
    """What one instalment still owes (fen); an allocation says what a payment covered, in the same shape."""

    number: int
    due: date
    fees: int = 0
    penalty: int = 0
    interest: int = 0
    principal: int = 0

    @property
    def total(self) -> int:
        return self.fees + self.penalty + self.interest + self.principal


def allocate(amount: int, dues: Sequence[Due]) -> tuple[list[Due], int]:
    """Split `amount` over `dues`: what each instalment's parts receive, and the remainder."""
    assert amount >= 0, amount
    assert all(getattr(d, part) >= 0 for d in dues for part in PARTS), dues
    ordered = sorted(dues, key=lambda d: (d.due, d.number))
    paid = {d.number: Due(d.number, d.due) for d in ordered}
    left = amount
    for part in PARTS:
        for owed in ordered:
            if left == 0:
                break
            share = min(left, getattr(owed, part))
            if share:
                paid[owed.number] = replace(paid[owed.number], **{part: share})
                left -= share
    return [paid[d.number] for d in ordered], left
