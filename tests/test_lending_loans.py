"""Loans end to end: a router and two ledger nodes, and `yunkai lending serve --router` as real processes.

Each test has a lending server and a book of its own (`--book`: its loans, lines and
end-of-day checkpoints are apart on the shared cluster), and customers of its own, so the
business dates one test runs never advance another test's loans.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import date, timedelta

import grpc
import pytest

from clients.ledger import Account, AccountChange, ChangeKind, ResultCode, SyncLedgerClient, Transfer
from cluster.commands import LocalCluster
from cluster.local import LendingProcess
from lending import schedule as sched
from lending.limits import LIMIT_LEDGER_BASE
from lending.loan_service import EOD_DAYS_PER_COMMIT, stage_of
from lending.loans import Accounts, slot_of_customer
from lending.products import SAMPLE_CATALOGUE, read_catalogue
from proto import lending_pb2 as pb, lending_pb2_grpc
from router.slots import SLOTS_TOTAL_DEFAULT, slot_of
from tests.conftest import channel, fresh, fresh_book

CNY = 156
LIMIT_CNY = LIMIT_LEDGER_BASE + CNY  # the limit book of CNY (lending/limits.py)
FUNDING_CODE = 3201  # a payment arriving from the rails: settle -> deposit


@pytest.fixture(scope="module")
def ledger(cluster: LocalCluster) -> Iterator[SyncLedgerClient]:
    client = SyncLedgerClient(cluster.address)
    yield client
    client.close()


def line_request(
    customer: str, product: str, customer_limit: int, product_limit: int, line_id: str = "", rate_bps: int = 0
) -> pb.ApproveCreditLineRequest:
    """A credit line of `customer` for `product` (line id L<customer> unless given)."""
    return pb.ApproveCreditLineRequest(
        customer=customer,
        line_id=line_id or f"L{customer}",
        product_code=product,
        customer_limit=customer_limit,
        product_limit=product_limit,
        annual_rate_bps=rate_bps,
    )


class Lending:
    """A lending server with LoanService over the cluster, and blocking stubs."""

    def __init__(self, process: LendingProcess, ledger: SyncLedgerClient) -> None:
        self.process = process
        self.ledger = ledger
        self.channel = channel(process.address, "operator")
        self.products = lending_pb2_grpc.ProductServiceStub(self.channel)
        self.loans = lending_pb2_grpc.LoanServiceStub(self.channel)
        # SME-TAX-LOAN of the sample catalogue under a code of this server's own: 7.20%, 12 months
        # (3..24), 4.30%..12.00%, equal instalments, ACT/360, 3 grace days, penalty 18%, 0.5% origination fee.
        [parameters] = [p for p in read_catalogue(SAMPLE_CATALOGUE) if p.code == "SME-TAX-LOAN"]
        parameters.code = fresh("TAX").replace("-", "")
        draft = self.products.SaveDraft(pb.SaveDraftRequest(parameters=parameters), timeout=10)
        self.product = self.products.PublishProduct(pb.ProductRef(code=draft.code, version=draft.version), timeout=10)
        self.code = self.product.code

    def variant(self, *fees: pb.Fee) -> str:
        """Publish this server's product again under a new code, with other fees; its code."""
        parameters = pb.ProductParameters()
        parameters.CopyFrom(self.product.parameters)
        parameters.code = fresh("FEE").replace("-", "")
        del parameters.fees[:]
        parameters.fees.extend(fees)
        draft = self.products.SaveDraft(pb.SaveDraftRequest(parameters=parameters), timeout=10)
        return str(self.products.PublishProduct(pb.ProductRef(code=draft.code, version=draft.version)).code)

    def customer(
        self, customer_limit: int = 50_000_000, product_limit: int = 30_000_000, product: str | None = None
    ) -> str:
        customer = fresh("c").replace("-", "")
        self.loans.ApproveCreditLine(
            line_request(customer, product or self.code, customer_limit, product_limit), timeout=30
        )
        return customer

    def fund(self, customer: str, amount: int) -> None:
        names = Accounts(customer, "-", self.code)
        [result] = self.ledger.create_transfers(
            [Transfer(fresh("fund"), names.settle, names.deposit, amount, CNY, FUNDING_CODE)]
        )
        assert result.code is ResultCode.OK, result

    def draw(self, customer: str, loan_id: str, amount: int, day: str, product: str = "", **fields: int) -> pb.Loan:
        request = pb.DrawdownRequest(
            customer=customer, loan_id=loan_id, product_code=product or self.code, amount=amount, date=day, **fields
        )
        return self.loans.Drawdown(request, timeout=30)

    def repay(self, loan_id: str, repayment_id: str, amount: int, day: str) -> pb.RepayResponse:
        request = pb.RepayRequest(loan_id=loan_id, repayment_id=repayment_id, amount=amount, date=day)
        return self.loans.Repay(request, timeout=30)

    def payoff(self, loan_id: str, repayment_id: str, day: str) -> pb.RepayResponse:
        return self.loans.PayOff(pb.RepayRequest(loan_id=loan_id, repayment_id=repayment_id, date=day), timeout=30)

    def eod(self, day: str) -> list[pb.EodSlotResult]:
        plan = self.loans.PlanEod(pb.EodSlotsRequest(date=day), timeout=30)
        return [self.loans.RunEodSlot(pb.EodSlotRequest(date=day, slot=s), timeout=60) for s in plan.slots]

    def loan(self, loan_id: str) -> pb.Loan:
        return self.loans.GetLoan(pb.LoanRef(loan_id=loan_id), timeout=10)

    def balance(self, account_id: str) -> int:
        """debits - credits: positive for assets (loans, receivables), negative for deposits and income."""
        [account] = self.ledger.lookup_accounts([account_id])
        assert account is not None, account_id
        return account.debits_posted - account.credits_posted

    def snapshot(self, customers: list[str]) -> tuple[dict[str, tuple[int, int]], list[bytes]]:
        """Every balance lending's accounts hold, and every loan's stored state."""
        loans = [loan for c in customers for loan in self.loans.ListLoans(pb.ListLoansRequest(customer=c)).loans]
        ids: list[str] = []
        for customer in customers:
            names = Accounts(customer, "-", self.code)
            ids += [names.deposit, names.settle, *(names.clearing(p) for p in ("int", "pen", "fee", "loss"))]
        for loan in loans:
            names = Accounts(loan.customer, loan.loan_id, loan.product_code)
            ids += [names.principal, names.interest, names.penalty, names.fees]
        accounts: list[Account | None] = self.ledger.lookup_accounts(ids)
        balances = {i: (a.debits_posted, a.credits_posted) for i, a in zip(ids, accounts, strict=True) if a}
        return balances, [loan.SerializeToString(deterministic=True) for loan in loans]

    def reconnect(self) -> None:
        self.channel.close()
        self.channel = channel(self.process.address, "operator")
        self.products = lending_pb2_grpc.ProductServiceStub(self.channel)
        self.loans = lending_pb2_grpc.LoanServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def lending(
    cluster: LocalCluster, ledger: SyncLedgerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lending]:
    process = LendingProcess(
        str(tmp_path_factory.mktemp("lending")), ["--router", cluster.address, "--book", fresh_book()]
    )
    handle = Lending(process.start(), ledger)
    yield handle
    handle.close()
    assert process.stop() == 0, process.log_tail()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


def terms(amount: int, drawn: date, months: int = 12, rate_bps: int = 720) -> sched.LoanTerms:
    return sched.LoanTerms(amount, rate_bps, months, sched.Method.EQUAL_INSTALMENT, drawn)


def test_drawdown_schedule_and_repayment_allocation_end_to_end(lending: Lending) -> None:
    customer = lending.customer()
    loan = lending.draw(customer, "loan1", 12_000_000, "2026-01-15")
    assert loan.status == pb.ACTIVE and loan.product_version == lending.product.version
    expected = sched.build_schedule(terms(12_000_000, date(2026, 1, 15)))
    assert [(i.due, i.principal, i.interest) for i in loan.schedule] == [
        (i.due.isoformat(), i.principal, i.interest) for i in expected
    ]
    assert loan.schedule[0].fees == 60_000  # 0.5% origination fee, billed with the first instalment
    names = Accounts(customer, "loan1", lending.code)
    assert lending.balance(names.deposit) == -12_000_000  # the principal is in the deposit
    assert lending.balance(names.principal) == 12_000_000
    assert lending.balance(names.clearing("fee")) == -60_000
    # A replayed drawdown answers the loan and moves nothing.
    assert lending.draw(customer, "loan1", 12_000_000, "2026-01-15") == lending.loan("loan1")
    assert lending.balance(names.deposit) == -12_000_000

    # On the first due date the customer pays 100 fen short of the first instalment.
    first = loan.schedule[0]
    owed = first.fees + first.interest + first.principal
    paid = lending.repay("loan1", "r1", owed - 100, "2026-02-15")
    assert (paid.repayment.fees, paid.repayment.penalty) == (60_000, 0)
    assert paid.repayment.interest == first.interest
    assert paid.repayment.principal == first.principal - 100
    assert paid.repayment.unapplied == 0 and paid.repayment.done
    assert paid.loan.principal_outstanding == 12_000_000 - first.principal + 100
    assert lending.balance(names.principal) == 12_000_000 - first.principal + 100
    assert lending.balance(names.fees) == 0
    assert lending.balance(names.deposit) == -12_000_000 + owed - 100
    # The principal repaid restores the limits (lending/limits.py's accounts).
    assert lending.balance(f"{{c{customer}}}:limit:{lending.code}") == -(
        30_000_000 - 12_000_000 + first.principal - 100
    )
    # A replay answers the same repayment and moves nothing; the id with another amount is refused.
    assert lending.repay("loan1", "r1", owed - 100, "2026-02-15") == paid
    with pytest.raises(grpc.RpcError) as caught:
        lending.repay("loan1", "r1", owed, "2026-02-15")
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details().startswith("repayment_id:")
    # Paying more than is due leaves the rest in the deposit.
    rest = lending.repay("loan1", "r2", 1_000, "2026-02-16")
    assert (rest.repayment.principal, rest.repayment.unapplied) == (100, 900)

    listed = cli("loan", "list", "--lending", lending.process.address, "--customer", customer)
    assert listed.returncode == 0, listed.stderr
    assert '"loan_id": "loan1"' in listed.stdout


def test_early_repayment_pays_interest_to_date_and_the_principal_and_closes_the_loan(lending: Lending) -> None:
    customer = lending.customer()
    lending.fund(customer, 1_000_000)
    lending.draw(customer, "early", 10_000_000, "2026-03-10")
    lending.eod("2026-03-20")  # accrues 2026-03-10 .. 2026-03-20: 11 days
    names = Accounts(customer, "early", lending.code)
    accrued = lending.balance(names.interest)
    assert accrued == lending.loan("early").interest_accrued > 0
    paid = lending.payoff("early", "off", "2026-03-25")
    # Interest by actual days from the drawdown up to the day before the payoff (15 days), at 7.20% / 360.
    interest = sched.round_fen(sched.days_interest(10_000_000, 720, 15, sched.DayBasis.ACT_360))
    assert (paid.repayment.fees, paid.repayment.interest, paid.repayment.principal) == (50_000, interest, 10_000_000)
    assert paid.loan.status == pb.PAID_OFF and paid.loan.principal_outstanding == 0
    assert lending.balance(names.principal) == 0
    assert lending.balance(names.interest) == 0  # recognised exactly what was paid (the true-up)
    assert lending.balance(names.clearing("int")) == -interest
    assert lending.balance(f"{{c{customer}}}:limit") == -50_000_000  # the whole limit is back
    assert sum(r.transfers for r in lending.eod("2026-03-26")) == 0  # a closed loan accrues nothing


def test_a_second_end_of_day_for_the_same_date_changes_nothing(lending: Lending) -> None:
    customers = [lending.customer() for _ in range(3)]
    for n, customer in enumerate(customers):
        lending.draw(customer, f"eod{n}", 5_000_000 + n, "2026-04-01")
    address = lending.process.address
    first = cli("eod", "run", "--lending", address, "--date", "2026-05-06")
    assert first.returncode == 0, first.stderr
    assert "done before" in first.stdout and "slot" in first.stdout
    before = lending.snapshot(customers)
    assert all(pb.Loan.FromString(b).bucket == "M1" for b in before[1])  # due 05-01, unpaid, 5 days late
    second = cli("eod", "run", "--lending", address, "--date", "2026-05-06")
    assert second.returncode == 0, second.stderr
    assert "0 loans, 0 transfers" in second.stdout
    assert lending.snapshot(customers) == before
    # Even a slot run again on its own (its checkpoint answers) changes nothing.
    plan = lending.loans.PlanEod(pb.EodSlotsRequest(date="2026-05-06"))
    assert set(plan.slots) == set(plan.slots_done)
    assert all(r.already_done for r in lending.eod("2026-05-06"))
    assert lending.snapshot(customers) == before


def test_overdue_loans_move_through_buckets_are_charged_penalty_and_can_be_written_off(lending: Lending) -> None:
    customer = lending.customer()
    loan = lending.draw(customer, "late", 6_000_000, "2025-01-10", term_months=3)
    first = loan.schedule[0]
    names = Accounts(customer, "late", lending.code)
    states = {}
    for day in ("2025-02-10", "2025-02-13", "2025-02-14", "2025-03-13", "2025-04-13"):
        lending.eod(day)
        current = lending.loan("late")
        states[day] = (pb.LoanStatus.Name(current.status), current.bucket, current.days_past_due)
    assert states == {
        "2025-02-10": ("ACTIVE", "M0", 0),  # due today: not late yet
        "2025-02-13": ("ACTIVE", "M0", 3),  # within the 3 grace days
        "2025-02-14": ("OVERDUE", "M1", 4),
        "2025-03-13": ("OVERDUE", "M2", 31),
        "2025-04-13": ("OVERDUE", "M3", 62),
    }
    late = lending.loan("late")
    # The first day past the grace charged penalty from the due date: 4 days on principal and interest.
    unpaid = first.principal + first.interest
    four_days = sched.round_fen(sched.days_interest(unpaid, 1800, 4, sched.DayBasis.ACT_360))
    assert late.schedule[0].penalty > four_days
    assert lending.balance(names.penalty) == late.penalty_charged == sum(i.penalty for i in late.schedule)
    assert lending.balance(names.clearing("pen")) == -late.penalty_charged

    written = lending.loans.WriteOff(pb.WriteOffRequest(loan_id="late", date="2025-04-14"), timeout=30)
    assert written.status == pb.WRITTEN_OFF
    assert written.written_off == 6_000_000 + late.interest_accrued + late.penalty_charged + first.fees
    for account in (names.principal, names.interest, names.penalty, names.fees):
        assert lending.balance(account) == 0
    assert lending.balance(names.clearing("loss")) == written.written_off
    assert sum(r.transfers for r in lending.eod("2025-04-20")) == 0

    # A current loan is not written off; paying its arrears brings an overdue loan back to M0.
    other = lending.customer()
    lending.fund(other, 10_000_000)
    lending.draw(other, "cured", 3_000_000, "2025-01-10", term_months=3)
    lending.eod("2025-02-20")
    assert lending.loan("cured").bucket == "M1"
    arrears = sum(
        i.fees + i.penalty + i.interest + i.principal for i in lending.loan("cured").schedule if i.due <= "2025-02-21"
    )
    cured = lending.repay("cured", "pay", arrears, "2025-02-21")
    assert (pb.LoanStatus.Name(cured.loan.status), cured.loan.bucket) == ("ACTIVE", "M0")
    with pytest.raises(grpc.RpcError) as caught:
        lending.loans.WriteOff(pb.WriteOffRequest(loan_id="cured", date="2025-02-21"), timeout=30)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_late_payment_and_early_repayment_fees_are_charged_and_paid_first(lending: Lending) -> None:
    product = lending.variant(pb.Fee(kind=pb.LATE_PAYMENT, amount=5_000), pb.Fee(kind=pb.EARLY_REPAYMENT, rate_bps=100))
    customer = lending.customer(product=product)
    lending.fund(customer, 1_000_000)
    loan = lending.draw(customer, "fees", 6_000_000, "2025-01-10", product=product, term_months=3)
    names = Accounts(customer, "fees", product)
    lending.eod("2025-02-13")
    assert lending.loan("fees").schedule[0].fees == 0  # within the grace: no fee yet
    lending.eod("2025-02-14")
    assert lending.loan("fees").schedule[0].fees == 5_000  # fell overdue today: the late-payment fee, once
    lending.eod("2025-02-19")
    assert lending.loan("fees").schedule[0].fees == 5_000
    assert lending.balance(names.fees) == 5_000
    paid = lending.payoff("fees", "off", "2025-02-20")
    # 1% of the principal repaid before its due date (instalments 2 and 3).
    early_fee = (6_000_000 - loan.schedule[0].principal + 50) // 100
    assert paid.repayment.fee_charged == early_fee
    assert paid.repayment.fees == 5_000 + early_fee
    assert paid.loan.status == pb.PAID_OFF
    assert lending.balance(names.fees) == 0
    assert lending.balance(names.clearing("fee")) == -(5_000 + early_fee)
    report = lending.loans.GetGlReport(pb.GlReportRequest(), timeout=30)
    assert report.total_debit == report.total_credit


def test_the_trial_balance_balances_after_drawdowns_repayments_and_an_end_of_day(lending: Lending) -> None:
    customers = [lending.customer() for _ in range(2)]
    for n, customer in enumerate(customers):
        lending.fund(customer, 2_000_000)
        lending.draw(customer, f"tb{n}", 8_000_000, "2026-06-05")
    lending.eod("2026-07-04")
    loan = lending.loan("tb0")
    first = loan.schedule[0]
    lending.repay("tb0", "r1", first.fees + first.interest + first.principal, "2026-07-05")
    lending.eod("2026-07-10")
    lending.payoff("tb1", "off", "2026-07-11")
    report = lending.loans.GetGlReport(pb.GlReportRequest(), timeout=30)
    assert report.total_debit == report.total_credit > 0
    lines = {line.gl_code: line for line in report.lines}
    gl = lending.product.parameters.gl
    assert lines[gl.loan_principal].debit == lending.loan("tb0").principal_outstanding
    assert lines["2011"].credit > 0  # deposits are a liability
    income = sum(lending.loan(i).interest_accrued for i in ("tb0", "tb1"))
    assert lines[gl.interest_income].credit == income
    printed = cli("gl", "report", "--lending", lending.process.address)
    assert printed.returncode == 0, printed.stdout + printed.stderr


BAD_DRAWDOWNS: list[tuple[dict[str, object], str]] = [
    ({"amount": 0}, "amount: 0 fen is outside"),
    ({"loan_id": "bad id!"}, "loan_id: 'bad id!' is not 1-16 characters"),
    ({"date": "2026-13-01"}, "date: '2026-13-01' is not a date"),
    ({"annual_rate_bps": 5_000}, "annual_rate_bps: 5000 is outside 430..1200"),
    ({"term_months": 36}, "term_months: 36 is outside 3..24"),
    ({"repayment_day": 40}, "repayment_day: 40 is outside 1..31"),
    ({"customer": "x y"}, "customer: 'x y' is not 1-20 letters and digits"),
    ({"product_code": "NOPE"}, "product_code: customer"),
]


def test_a_bad_drawdown_is_refused_naming_the_field_and_leaves_nothing_behind(lending: Lending) -> None:
    customer = lending.customer()
    for fields, error in BAD_DRAWDOWNS:
        request = pb.DrawdownRequest(
            customer=customer, loan_id="bad", product_code=lending.code, amount=1_000_000, date="2026-01-05"
        )
        for name, value in fields.items():
            setattr(request, name, value)
        with pytest.raises(grpc.RpcError) as caught:
            lending.loans.Drawdown(request, timeout=30)
        expected = grpc.StatusCode.FAILED_PRECONDITION if "product_code" in fields else grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.code() is expected, fields
        assert caught.value.details().startswith(error), caught.value.details()
    assert list(lending.loans.ListLoans(pb.ListLoansRequest(customer=customer)).loans) == []
    assert lending.ledger.lookup_accounts([Accounts(customer, "bad", lending.code).principal]) == [None]
    assert lending.balance(Accounts(customer, "-", lending.code).deposit) == 0
    assert lending.balance(f"{{c{customer}}}:limit") == -50_000_000  # nothing consumed


def test_a_credit_lines_price_is_its_drawdowns_rate_within_the_products_bounds(lending: Lending) -> None:
    customer = fresh("c").replace("-", "")
    line = line_request(customer, lending.code, 20_000_000, 10_000_000, rate_bps=1201)
    with pytest.raises(grpc.RpcError) as caught:  # above the product's 12.00%: refused, nothing opened
        lending.loans.ApproveCreditLine(line, timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("annual_rate_bps: 1201 is outside 430..1200"), caught.value.details()
    assert lending.ledger.lookup_accounts([f"{{c{customer}}}:limit"]) == [None]
    line.annual_rate_bps = 555
    assert lending.loans.ApproveCreditLine(line, timeout=30).annual_rate_bps == 555
    assert lending.draw(customer, "atline", 1_000_000, "2026-01-05").annual_rate_bps == 555  # the line's price
    named = lending.draw(customer, "named", 1_000_000, "2026-01-05", annual_rate_bps=900)
    assert named.annual_rate_bps == 900  # a drawdown may name its own, within the product's bounds
    # A line approved without a price carries the product's rate (7.20%), and so do its drawdowns.
    plain = lending.customer()
    assert lending.draw(plain, "plain", 1_000_000, "2026-01-05").annual_rate_bps == 720


def test_a_credit_line_uses_a_deposit_opened_otherwise_and_refuses_limit_accounts_opened_otherwise(
    lending: Lending,
) -> None:
    # Another service opened this customer's deposit without the overdraft flag: the line's
    # commit uses it as it stands and opens the rest with the line.
    customer = fresh("c").replace("-", "")
    deposit = Accounts(customer, "-", lending.code).deposit
    [opened] = lending.ledger.create_accounts([Account(deposit, CNY, 2001)])
    assert opened.code is ResultCode.OK
    customer_limit = f"{{c{customer}}}:limit"
    line = line_request(customer, lending.code, 9_000_000, 9_000_000)
    assert lending.loans.ApproveCreditLine(line, timeout=30).customer_limit == 9_000_000
    [held, limit] = lending.ledger.lookup_accounts([deposit, customer_limit])
    assert held is not None and held.flags == 0  # not changed
    assert limit is not None and limit.balance == 9_000_000 and limit.code != 0
    assert lending.draw(customer, "odd", 1_000_000, "2026-01-05").status == pb.ACTIVE
    # A limit account opened otherwise (no flag keeping it from going below zero) is not used.
    other = fresh("c").replace("-", "")
    [loose] = lending.ledger.create_accounts([Account(f"{{c{other}}}:limit", LIMIT_CNY, 2)])
    assert loose.code is ResultCode.OK
    line.customer, line.line_id = other, f"L{other}"
    with pytest.raises(grpc.RpcError) as refused:
        lending.loans.ApproveCreditLine(line, timeout=30)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert str(refused.value.details()).startswith(f"customer: the limit accounts of {other} were opened otherwise")
    assert lending.ledger.lookup_accounts([Accounts(other, "-", lending.code).deposit]) == [None]


def test_two_lending_processes_opening_lines_of_one_customer_at_once_raise_its_limit_once(
    cluster: LocalCluster, ledger: SyncLedgerClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A line raises the customer's limit to what it grants, decided on the limits as read:
    two processes deciding at once for two products of one customer must not both raise it."""
    book = fresh_book()
    processes = [
        LendingProcess(str(tmp_path_factory.mktemp("lending")), ["--router", cluster.address, "--book", book])
        for _ in range(2)
    ]
    handles = [Lending(process.start(), ledger) for process in processes]  # each publishes a product
    try:
        customers = [fresh("c").replace("-", "") for _ in range(12)]
        for customer in customers:
            asks = [
                handle.loans.ApproveCreditLine.future(
                    line_request(customer, handle.code, 8_000_000, 5_000_000, line_id=f"L{index}{customer}"), timeout=30
                )
                for index, handle in enumerate(handles)
            ]
            assert [ask.result().customer_limit for ask in asks] == [8_000_000, 8_000_000]
        for customer in customers:
            assert handles[0].balance(f"{{c{customer}}}:limit") == -8_000_000, customer  # raised once
            for handle in handles:
                assert handle.balance(f"{{c{customer}}}:limit:{handle.code}") == -5_000_000
    finally:
        for handle in handles:
            handle.close()
        for process in processes:
            assert process.stop() == 0, process.log_tail()


def test_refusals_by_the_limits_or_the_loan_state_are_clear_and_change_nothing(lending: Lending) -> None:
    customer = lending.customer(customer_limit=20_000_000, product_limit=10_000_000)
    with pytest.raises(grpc.RpcError) as caught:
        lending.draw(customer, "big", 10_000_001, "2026-01-05")
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details().startswith("amount: the credit limits refuse")
    assert list(lending.loans.ListLoans(pb.ListLoansRequest(customer=customer)).loans) == []
    assert lending.ledger.lookup_accounts([Accounts(customer, "big", lending.code).principal]) == [None]
    with pytest.raises(grpc.RpcError) as caught:
        lending.loans.GetLoan(pb.LoanRef(loan_id="nosuchloan"), timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "loan_id: no loan 'nosuchloan'"
    lending.draw(customer, "ok", 1_000_000, "2026-01-05")
    for amount, day, field in ((-5, "2026-02-05", "amount:"), (100, "2025-12-31", "date:"), (100, "x", "date:")):
        with pytest.raises(grpc.RpcError) as caught:
            lending.repay("ok", "bad", amount, day)
        assert caught.value.details().startswith(field), caught.value.details()
    names = Accounts(customer, "ok", lending.code)
    [spent] = lending.ledger.create_transfers(
        [Transfer("spent", names.deposit, names.settle, 990_000, CNY, FUNDING_CODE)]
    )
    assert spent.ok
    with pytest.raises(grpc.RpcError) as caught:
        lending.repay("ok", "poor", 100_000, "2026-02-05")  # the deposit holds 10,000 fen
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert list(lending.loan("ok").repayments) == []


def test_end_of_day_partitions_loans_by_the_ledger_slot_of_their_customer() -> None:
    for customer in ("42", "c7", "ABCdef123", "x" * 20):
        names = Accounts(customer, "loan", "P")
        for slots_total in (1, 16, SLOTS_TOTAL_DEFAULT):
            slot = slot_of_customer(customer, slots_total)
            assert slot == slot_of(names.deposit, slots_total) == slot_of(names.clearing("int"), slots_total)


def test_end_of_day_resumes_after_a_restart_from_its_checkpoints(lending: Lending) -> None:
    customers = [lending.customer() for _ in range(4)]
    for n, customer in enumerate(customers):
        lending.draw(customer, f"rs{n}", 2_000_000, "2026-08-03")
    plan = lending.loans.PlanEod(pb.EodSlotsRequest(date="2026-08-10"))
    assert len(plan.slots) >= 2 and list(plan.slots_done) == []
    first = lending.loans.RunEodSlot(pb.EodSlotRequest(date="2026-08-10", slot=plan.slots[0]), timeout=60)
    assert first.loans >= 1 and first.transfers >= 1
    # kill -9 between slots: loans and the checkpoint are durable, the rest of the run resumes.
    lending.process.kill()
    lending.process.start()
    lending.reconnect()
    assert list(lending.loans.PlanEod(pb.EodSlotsRequest(date="2026-08-10")).slots_done) == [plan.slots[0]]
    resumed = cli("eod", "run", "--lending", lending.process.address, "--date", "2026-08-10")
    assert resumed.returncode == 0, resumed.stderr
    assert "1 done before" in resumed.stdout
    loans = [lending.loan(f"rs{n}") for n in range(4)]
    assert {loan.last_eod_date for loan in loans} == {"2026-08-10"}
    # Every loan accrued 2026-08-03 .. 2026-08-10 exactly once.
    for loan in loans:
        names = Accounts(loan.customer, loan.loan_id, loan.product_code)
        assert lending.balance(names.interest) == loan.interest_accrued > 0
    assert len({loan.interest_accrued for loan in loans}) == 1


def test_the_dated_journal_closes_periods_and_provisions_losses_by_stage(lending: Lending) -> None:
    """Transfers carry their business date; the trial balance as of any date balances and counts
    only what was dated by then; a closed period keeps its stored trial balance; provisioning
    sets the allowance to the stage-weighted loss, once per change of the book."""
    customer = lending.customer()
    loan = lending.draw(customer, "dated", 6_000_000, "2026-01-05", term_months=3)
    first = loan.schedule[0]
    lending.fund(customer, 10_000_000)  # no business date: booked on its ledger timestamp's day (today)
    lending.repay("dated", "feb", first.principal + first.interest + first.fees, "2026-02-05")

    def report(as_of: str) -> pb.GlReport:
        return lending.loans.GetGlReport(pb.GlReportRequest(as_of=as_of), timeout=60)

    def line(r: pb.GlReport, code: str) -> tuple[int, int]:
        found = [(x.debit, x.credit) for x in r.lines if x.gl_code == code]
        return found[0] if found else (0, 0)

    loans_gl = lending.product.parameters.gl.loan_principal
    january, february = report("2026-01-31"), report("2026-02-28")
    for r in (january, february):
        assert r.total_debit == r.total_credit > 0 and not r.closed
    assert line(january, loans_gl) == (6_000_000, 0)  # drawn, not yet repaid
    assert line(february, loans_gl) == (6_000_000 - first.principal, 0)
    assert line(report("2026-01-04"), loans_gl) == (0, 0)  # before the drawdown
    # Through every date, the journal says what the balances say now.
    everything, now = report("9999-12-31"), lending.loans.GetGlReport(pb.GlReportRequest(), timeout=60)
    assert [(x.gl_code, x.debit, x.credit) for x in everything.lines if x.debit or x.credit] == [
        (x.gl_code, x.debit, x.credit) for x in now.lines if x.debit or x.credit
    ]
    journal = lending.loans.GetJournal(pb.JournalRequest(date_from="2026-01-05", date_to="2026-01-05"), timeout=60)
    assert {(e.gl_code, e.debit) for e in journal.entries if e.debit} >= {(loans_gl, 6_000_000)}
    assert {e.date for e in journal.entries} == {"2026-01-05"}

    # Closing January stores its trial balance; an earlier date cannot be closed after it.
    closed = lending.loans.ClosePeriod(pb.ClosePeriodRequest(date="2026-01-31"), timeout=60)
    assert list(closed.trial_balance.lines) == list(january.lines)
    with pytest.raises(grpc.RpcError) as refused:
        lending.loans.ClosePeriod(pb.ClosePeriodRequest(date="2026-01-15"), timeout=60)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "date: 2026-01-15 is not after the last closed period, 2026-01-31"
    # A drawdown dated into the closed month after its close: the report shows both.
    lending.draw(customer, "backdated", 1_000_000, "2026-01-20", term_months=3)
    reopened = report("2026-01-31")
    assert reopened.closed and list(reopened.closed_lines) == list(january.lines)
    assert line(reopened, loans_gl) == (7_000_000, 0) and line(january, loans_gl) == (6_000_000, 0)

    def expected_allowance() -> int:
        rates = {1: 100, 2: 1_500, 3: 6_000}
        book = [lending.loan(name) for name in ("dated", "backdated")]
        return sum(
            loan.principal_outstanding * rates[stage_of(loan.bucket)] // 10_000
            for loan in book
            if loan.status in (pb.ACTIVE, pb.OVERDUE)
        )

    # Provisioning: both loans are 90+ days past due by June (stage 3).
    lending.eod("2026-06-10")
    late, other = lending.loan("dated"), lending.loan("backdated")
    assert (late.bucket, other.bucket) == ("M4", "M4")
    provisioned = lending.loans.Provision(pb.ProvisionRequest(date="2026-06-10"), timeout=60)
    [product] = provisioned.products
    assert product.stage3_outstanding == late.principal_outstanding + other.principal_outstanding
    assert product.stage1_outstanding == product.stage2_outstanding == 0
    assert product.allowance == product.posted == expected_allowance() > 0
    again = lending.loans.Provision(pb.ProvisionRequest(date="2026-06-10"), timeout=60)
    assert [(p.allowance, p.posted) for p in again.products] == [(product.allowance, 0)]
    allowance_gl = lending.product.parameters.gl.loss_allowance
    may = report("2026-06-10")
    assert may.total_debit == may.total_credit
    assert line(may, "6702") == (product.allowance, 0)  # the impairment expense
    assert line(report("2026-06-09"), "6702") == (0, 0)
    assert line(may, allowance_gl)[1] >= product.allowance
    # Paid off, the first loan leaves the book: its part of the allowance is released.
    lending.fund(customer, 20_000_000)
    assert lending.payoff("dated", "off", "2026-06-11").loan.status == pb.PAID_OFF
    released = lending.loans.Provision(pb.ProvisionRequest(date="2026-06-11"), timeout=60).products[0]
    assert released.allowance == expected_allowance()
    assert released.posted == released.allowance - product.allowance < 0


def test_a_long_catch_up_commits_in_parts_and_a_longer_one_is_refused(lending: Lending) -> None:
    customer = lending.customer()
    lending.draw(customer, "long1", 1_000_000, "2026-01-15")
    day = (date(2026, 1, 15) + timedelta(days=380)).isoformat()  # more days than one commit carries
    assert EOD_DAYS_PER_COMMIT < 380
    moved = sum(r.transfers for r in lending.eod(day))
    after = lending.loan("long1")
    assert after.last_eod_date == day and after.status == pb.OVERDUE
    names = Accounts(customer, "long1", lending.code)
    # The record and the money agree across the parts: every accrual and charge counted once.
    assert lending.balance(names.interest) == after.interest_accrued - sum(r.interest for r in after.repayments)
    assert lending.balance(names.penalty) == after.penalty_charged
    assert moved > 381  # an interest accrual every day, and penalties once overdue
    assert lending.eod(day)[0].already_done  # the day is checkpointed once its parts are all in
    other = lending.customer()
    lending.draw(other, "long2", 1_000_000, "2026-01-15")
    with pytest.raises(grpc.RpcError) as refused:
        lending.eod((date(2026, 1, 15) + timedelta(days=401)).isoformat())
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "would catch up more than 400 days" in str(refused.value.details())


def test_a_drawdown_the_ledger_refuses_applies_nothing_and_a_repeat_makes_it(lending: Lending) -> None:
    customer = lending.customer()
    deposit = Accounts(customer, "-", lending.code).deposit
    [frozen] = lending.ledger.change_accounts([AccountChange(fresh("fz"), deposit, ChangeKind.FREEZE)])
    assert frozen.code is ResultCode.OK
    with pytest.raises(grpc.RpcError) as refused:
        lending.draw(customer, "held1", 2_000_000, "2026-01-15")
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "CREDIT_ACCOUNT_FROZEN" in str(refused.value.details())
    # One commit, refused whole: no loan, no limit consumed, no money moved.
    with pytest.raises(grpc.RpcError) as missing:
        lending.loan("held1")
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    drawn = f"{{c{customer}}}:limit:drawn"
    assert lending.ledger.lookup_accounts([drawn])[0].credits_posted == 0  # type: ignore[union-attr]
    assert lending.ledger.lookup_accounts([Accounts(customer, "held1", lending.code).principal]) == [None]
    [thawed] = lending.ledger.change_accounts([AccountChange(fresh("th"), deposit, ChangeKind.UNFREEZE)])
    assert thawed.code is ResultCode.OK
    done = lending.draw(customer, "held1", 2_000_000, "2026-01-15")
    assert done.status == pb.ACTIVE and lending.loan("held1") == done
    assert lending.balance(Accounts(customer, "held1", lending.code).principal) == 2_000_000
    assert lending.ledger.lookup_accounts([drawn])[0].credits_posted == 2_000_000  # type: ignore[union-attr]
