"""The dated journal: general-ledger entries by business date, read off the ledger's history, away
from the transaction path (DESIGN section 8, "accounting kept apart from transactions").

Protocol
  * Dating. Every transfer the lending server makes carries its business date (the drawdown's,
    the repayment's, the end of day's, the write-off's, the provision's) in `user_data` as the
    number YYYYMMDD (`date_data`). A transfer without one (made by someone else: a customer
    paying into a deposit, say) is booked on the UTC date of its ledger timestamp.
  * Reading. For each account lending maps to a GL code (lending/loan_service.py `gl_map`), its
    whole history is read page by page (the ledger's GetAccountTransfers), at most
    READS_IN_FLIGHT accounts at a time. A posted transfer is booked once on each side: as a
    debit of its debit account's GL code and a credit of its credit account's. A side whose
    account lending does not map goes to SUSPENSE_GL, so the journal balances whatever moved.
    Lending's own accounts take single-phase transfers only; a transfer in another state is
    not booked.
  * Entries. (business date, GL code) -> debits and credits of that day. The trial balance as
    of a date D sums the entries dated D or before; each GL code's balance is shown on its
    debit or credit side, and the two sides' totals are equal (`trial_balance` asserts it:
    every booked transfer added the same amount to both).
Nothing here writes: a period's close (loan_service.py) stores what this computed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import grpc

from clients.ledger import LedgerClient, LedgerError, Transfer, TransferState
from proto import lending_pb2 as pb

READS_IN_FLIGHT = 16
PAGE = 1_000
SUSPENSE_GL = ("9999", "Accounts outside lending (suspense)")


def date_data(day: str) -> int:
    """A business date (YYYY-MM-DD) as a transfer's user_data: YYYYMMDD."""
    parsed = date.fromisoformat(day)
    return parsed.year * 10_000 + parsed.month * 100 + parsed.day


def business_day(transfer: Transfer) -> str:
    """The business date a transfer is booked on (see the module)."""
    data = transfer.user_data
    if 19_000_101 <= data <= 99_991_231:
        try:
            return date(data // 10_000, data // 100 % 100, data % 100).isoformat()
        except ValueError:
            pass  # not a date: someone else's user_data
    return datetime.fromtimestamp(transfer.timestamp / 1e9, UTC).date().isoformat()


@dataclass
class Journal:
    """Debits and credits by (business date, GL code), and each code's name."""

    entries: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # -> [debit, credit]
    names: dict[str, str] = field(default_factory=dict)
    accounts: int = 0  # ledger accounts read
    transfers: int = 0  # transfer sides booked

    def book(self, day: str, gl: tuple[str, str], debit: int, credit: int) -> None:
        entry = self.entries.setdefault((day, gl[0]), [0, 0])
        entry[0] += debit
        entry[1] += credit
        self.names.setdefault(gl[0], gl[1])
        self.transfers += 1

    def days(self) -> list[str]:
        return sorted({day for day, _code in self.entries})


async def read(ledger: LedgerClient, mapped: Mapping[str, tuple[str, str]]) -> Journal:
    """The journal of every transfer that touched a mapped account (see the module)."""
    journal = Journal()
    reading = asyncio.Semaphore(READS_IN_FLIGHT)

    async def account(account_id: str) -> list[Transfer]:
        taken: list[Transfer] = []
        async with reading:
            cursor = 0
            while True:
                try:
                    page = await ledger.get_account_transfers(account_id, limit=PAGE, cursor=cursor)
                except LedgerError as error:
                    if error.code is grpc.StatusCode.NOT_FOUND and not taken:
                        return taken  # not opened yet (a loan still PENDING, a product never provisioned)
                    raise
                taken.extend(page.transfers)
                if not page.next_cursor:
                    return taken
                cursor = page.next_cursor

    ids = sorted(mapped)
    histories = await asyncio.gather(*(account(account_id) for account_id in ids))
    seen: set[tuple[str, str, str]] = set()  # (side, debit account, id): each side booked once
    for account_id, history in zip(ids, histories, strict=True):
        journal.accounts += 1
        for transfer in history:
            if transfer.state is not TransferState.POSTED:
                continue
            day = business_day(transfer)
            for side, own, other in (
                ("debit", transfer.debit_account_id, transfer.credit_account_id),
                ("credit", transfer.credit_account_id, transfer.debit_account_id),
            ):
                key = (side, transfer.debit_account_id, transfer.id)
                if key in seen:
                    continue
                if own == account_id or (own not in mapped and other == account_id):
                    seen.add(key)
                    gl = mapped.get(own, SUSPENSE_GL)
                    amount = transfer.amount
                    journal.book(day, gl, amount if side == "debit" else 0, amount if side == "credit" else 0)
    return journal


def trial_balance(journal: Journal, as_of: str) -> pb.GlReport:
    """The balances of the entries dated `as_of` or before ("" for all), by GL code."""
    net: dict[str, int] = {}
    for (day, code), (debit, credit) in journal.entries.items():
        if not as_of or day <= as_of:
            net[code] = net.get(code, 0) + debit - credit
    report = pb.GlReport(accounts=journal.accounts, as_of=as_of)
    for code in sorted(net):
        balance = net[code]
        report.lines.append(
            pb.GlLine(gl_code=code, name=journal.names[code], debit=max(balance, 0), credit=max(-balance, 0))
        )
    report.total_debit = sum(line.debit for line in report.lines)
    report.total_credit = sum(line.credit for line in report.lines)
    assert report.total_debit == report.total_credit, report  # every booked transfer: both sides
    return report


def entries(journal: Journal, date_from: str, date_to: str) -> list[pb.JournalEntry]:
    """The journal's entries dated within [date_from, date_to] ("" for no bound), by date and code."""
    return [
        pb.JournalEntry(date=day, gl_code=code, name=journal.names[code], debit=debit, credit=credit)
        for (day, code), (debit, credit) in sorted(journal.entries.items())
        if (not date_from or day >= date_from) and (not date_to or day <= date_to)
    ]
