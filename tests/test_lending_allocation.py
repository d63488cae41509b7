"""Repayment allocation against hand-worked cases: fees, penalty, interest, principal; earliest due first."""

from __future__ import annotations

from datetime import date

from lending.allocation import Due, allocate

FIRST = Due(1, date(2028, 2, 29), fees=50, penalty=120, interest=1_000, principal=9_000)
SECOND = Due(2, date(2028, 3, 31), fees=0, penalty=30, interest=900, principal=9_100)


def test_a_short_payment_covers_fees_then_penalty_then_interest_earliest_first() -> None:
    # 1,300: fees 50 (#1) -> 1,250 left; penalty 120 (#1) + 30 (#2) -> 1,100;
    # interest 1,000 (#1) -> 100; interest 100 of #2's 900 -> 0; no principal.
    paid, remainder = allocate(1_300, [SECOND, FIRST])  # order given does not matter
    assert paid == [
        Due(1, FIRST.due, fees=50, penalty=120, interest=1_000),
        Due(2, SECOND.due, penalty=30, interest=100),
    ]
    assert remainder == 0 and sum(p.total for p in paid) == 1_300


def test_principal_comes_last_and_earliest_first() -> None:
    # 12,000: fees 50, penalty 150, interest 1,900 (2,100 in all) -> 9,900 for principal:
    # #1's 9,000 in full, then 900 of #2's 9,100.
    paid, remainder = allocate(12_000, [FIRST, SECOND])
    assert [p.principal for p in paid] == [9_000, 900]
    assert remainder == 0


def test_an_overpayment_returns_the_remainder() -> None:
    # Everything due is 10,170 + 10,030 = 20,200; 25,000 leaves 4,800.
    paid, remainder = allocate(25_000, [FIRST, SECOND])
    assert paid == [FIRST, SECOND] and remainder == 4_800
    assert allocate(0, [FIRST]) == ([Due(1, FIRST.due)], 0)
