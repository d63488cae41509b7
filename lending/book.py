"""The lending book's records, kept on the ledger nodes as slot-local records (node/records.py).

A lending server holds no state of its own: each loan and credit line lives in the slot of
its customer's accounts, is written in the same commit as the transfers it explains, and is
replicated, moved and backed up with that slot. Several `yunkai lending serve` processes
serve one book; each change names the version of the record it read, and a change that lost
a race to another process (`Conflict`) is decided again on what is stored now.

Kinds are the book's name (`--book`), a dash, and one of these:

    loan    {c<customer>}:loan:<loan_id>   lending.v1.Loan, in the customer's slot
    loanid  loan:<loan_id>                 the customer the loan id belongs to (ids are the book's)
    line    {c<customer>}:line:<product>   lending.v1.CreditLine
    limits  {c<customer>}:limits           the line id that last raised the customer's limits
                                           (its version guards "raise to what the line grants",
                                           a read then a write, against another process's)
    ask     {c<customer>}:ask:<loan_id>    lending.v1.DrawdownTally of one drawdown asked: its
                                           latest outcome (a retry of the same loan id counts once)
    close   {gl}:close:<date>              lending.v1.PeriodClose
    closed  {gl}:closed                    the last closed business date (text)
    eod     {eod}:<date>:<slot>            a slot's end of day done on that date
    product {catalogue}:<code>:<version>   lending.v1.Product (lending/products.py), version as 5 digits
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from clients.ledger import LedgerClient
from clients.records import NAME_PATTERN, Conflict, Put, Records
from lending import loans as rules
from proto import lending_pb2 as pb

BOOK_DEFAULT = "book"
OWNERS_KEPT = 200_000  # loan ids whose customer a process keeps (past it, forgotten all at once)
CONFLICT_RETRIES = 5  # decisions taken again after losing a race to another lending process
GL_TAG = "{gl}"
EOD_TAG = "{eod}"


def loan_key(customer: str, loan_id: str) -> str:
    return f"{{c{customer}}}:loan:{loan_id}"


def line_key(customer: str, product: str) -> str:
    return f"{{c{customer}}}:line:{product}"


def limits_key(customer: str) -> str:
    return f"{{c{customer}}}:limits"


def ask_key(customer: str, loan_id: str) -> str:
    return f"{{c{customer}}}:ask:{loan_id}"


class Book(Records):
    """The lending book's records over the ledger SDK."""

    def __init__(self, ledger: LedgerClient, name: str = BOOK_DEFAULT) -> None:
        if not NAME_PATTERN.fullmatch(name):
            raise rules.BadLoanRequest(f"book: {name!r} is not 1-16 of a-z, 0-9")
        super().__init__(ledger, name)
        self._owners: dict[str, str] = {}  # loan id -> customer, as claimed (never changes)

    # --- reads -----------------------------------------------------------------------------

    async def customer_of(self, loan_id: str) -> str | None:
        """Whose loan id it is (None: nobody's). An id never changes hands once claimed, so the
        answer is kept (a bounded number of them) and the next ask costs no read."""
        known = self._owners.get(loan_id)
        if known is None:
            [owner] = await self.read([("loanid", f"loan:{loan_id}")])
            if owner is None:
                return None
            known = owner.value.decode()
            if len(self._owners) >= OWNERS_KEPT:
                self._owners.clear()
            self._owners[loan_id] = known
        return known

    async def loan(self, loan_id: str) -> tuple[pb.Loan, int]:
        """The loan and its version; LoanNotFound if the book has none of that id."""
        customer = await self.customer_of(loan_id)
        if customer is not None:
            held = await self.loan_of(customer, loan_id)
            if held is not None:
                return held
        raise rules.LoanNotFound(f"loan_id: no loan {loan_id!r}")

    async def loan_of(self, customer: str, loan_id: str) -> tuple[pb.Loan, int] | None:
        [record] = await self.read([("loan", loan_key(customer, loan_id))])
        return None if record is None else (pb.Loan.FromString(record.value), record.version)

    async def loans_of(self, customer: str) -> list[pb.Loan]:
        prefix = loan_key(customer, "")
        slot = await self.slot_of(prefix)
        return [pb.Loan.FromString(r.value) async for page in self.scan("loan", [slot], prefix) for r in page]

    async def loans(self, slots: Sequence[int] | None = None) -> AsyncIterator[tuple[pb.Loan, int]]:
        """Every loan of the book (in `slots`), with its version."""
        async for page in self.scan("loan", slots):
            for record in page:
                yield pb.Loan.FromString(record.value), record.version

    async def line(self, customer: str, product: str) -> tuple[pb.CreditLine, int] | None:
        [record] = await self.read([("line", line_key(customer, product))])
        return None if record is None else (pb.CreditLine.FromString(record.value), record.version)

    async def line_and_limits(self, customer: str, product: str) -> tuple[tuple[pb.CreditLine, int] | None, int]:
        """The line (and its version) with the version of the customer's limits guard (0:
        none yet), in one read."""
        line, guard = await self.read([("line", line_key(customer, product)), ("limits", limits_key(customer))])
        held = None if line is None else (pb.CreditLine.FromString(line.value), line.version)
        return held, guard.version if guard is not None else 0

    async def lines(self) -> AsyncIterator[pb.CreditLine]:
        async for page in self.scan("line"):
            for record in page:
                yield pb.CreditLine.FromString(record.value)

    async def asks(self) -> list[pb.DrawdownTally]:
        """The drawdowns asked, summed by business date, oldest first."""
        by_day: dict[str, pb.DrawdownTally] = {}
        async for page in self.scan("ask"):
            for record in page:
                one = pb.DrawdownTally.FromString(record.value)
                day = by_day.setdefault(one.date, pb.DrawdownTally(date=one.date))
                for field in ("asked", "passed", "refused_no_line", "refused_by_limits"):
                    setattr(day, field, getattr(day, field) + getattr(one, field))
        return [by_day[day] for day in sorted(by_day)]

    async def closes(self) -> dict[str, pb.PeriodClose]:
        slot = await self.slot_of(GL_TAG)
        found: dict[str, pb.PeriodClose] = {}
        async for page in self.scan("close", [slot], f"{GL_TAG}:close:"):
            for record in page:
                closed = pb.PeriodClose.FromString(record.value)
                found[closed.date] = closed
        return found

    async def last_closed(self) -> tuple[str, int]:
        """The last closed business date ("" if none) and its marker's version."""
        [record] = await self.read([("closed", f"{GL_TAG}:closed")])
        return ("", 0) if record is None else (record.value.decode(), record.version)

    async def checkpoints(self, day: str) -> set[int]:
        prefix = f"{EOD_TAG}:{day}:"
        slot = await self.slot_of(EOD_TAG)
        return {int(r.key[len(prefix) :]) async for page in self.scan("eod", [slot], prefix) for r in page}

    # --- writes ----------------------------------------------------------------------------

    async def claim_loan_id(self, loan_id: str, customer: str) -> None:
        """Make the loan id this customer's (a retry finds it so); LoanRefused if it is another's."""
        key = f"loan:{loan_id}"
        if self._owners.get(loan_id) == customer:
            return
        try:
            await self.commit([Put("loanid", key, customer.encode(), 0)])
        except Conflict:
            [owner] = await self.read([("loanid", key)])
            if owner is None or owner.value.decode() != customer:
                raise rules.LoanRefused(f"loan_id: {loan_id} is another customer's loan") from None
        self._owners[loan_id] = customer

    async def count_ask(self, customer: str, loan_id: str, day: str, outcome: str) -> None:
        """Record a drawdown ask's latest outcome (a DrawdownTally field); a race is harmless
        (the other writer's outcome stands)."""
        key = ask_key(customer, loan_id)
        [record] = await self.read([("ask", key)])
        tally = pb.DrawdownTally(date=day, asked=1)
        setattr(tally, outcome, 1)
        with contextlib.suppress(Conflict):
            await self.commit([Put("ask", key, tally, record.version if record is not None else 0)])

    async def put_checkpoint(self, day: str, slot: int) -> None:
        with contextlib.suppress(Conflict):  # another process finished the slot's day first
            await self.commit([Put("eod", f"{EOD_TAG}:{day}:{slot}", b"done", 0)])
