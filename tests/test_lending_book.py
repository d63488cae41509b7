"""One lending book, two lending servers, a replicated ledger (R = 3), real processes.

The book's records (its catalogue, credit lines and loans) live in the customers' slots on
the ledger nodes (lending/book.py), so: either server answers for any loan; the same payoff
sent to both at once is applied once (the loser of the race re-reads and answers the same);
a lending server killed with its disk deleted, and a ledger node killed with its disk
deleted, lose no acknowledged drawdown or repayment; and every loan's state agrees with the
money its accounts hold.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from clients.ledger import ResultCode, SyncLedgerClient, Transfer
from cluster.local import LendingProcess
from lending.loans import Accounts
from lending.products import SAMPLE_CATALOGUE, read_catalogue
from proto import lending_pb2 as pb, lending_pb2_grpc
from tests.conftest import channel, fresh
from tests.test_replicated_cluster import fully_replicated, lose_disk, replicated

pytestmark = pytest.mark.timeout(360)

CNY = 156
FUNDING_CODE = 3201
FUNDED = 100_000_000
CUSTOMERS = 8
ROUNDS_MIN = 3
GIVE_UP_S = 90.0
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class Servers:
    """The lending servers callers may use; a server that is away is replaced in the list."""

    processes: list[LendingProcess]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stub(self, index: int) -> tuple[grpc.Channel, lending_pb2_grpc.LoanServiceStub]:
        with self.lock:
            address = self.processes[index % len(self.processes)].address
        to = channel(address, "operator")
        return to, lending_pb2_grpc.LoanServiceStub(to)

    def call(self, index: int, method: str, request: Message) -> Message:
        """The call on server `index`, retried (on the next server) with the same ids while
        servers or nodes are away: an acknowledged answer, or the test fails."""
        deadline = time.monotonic() + GIVE_UP_S
        while True:
            to, stub = self.stub(index)
            try:
                reply: Message = getattr(stub, method)(request, timeout=15)
                return reply
            except grpc.RpcError as error:
                if error.code() not in RETRIED or time.monotonic() > deadline:
                    raise
            finally:
                to.close()
            index += 1
            time.sleep(0.1)


@dataclass
class Acknowledged:
    loans: dict[str, pb.Loan] = field(default_factory=dict)  # loan id -> as the drawdown answered
    payoffs: dict[str, pb.Repayment] = field(default_factory=dict)  # loan id -> its payoff's repayment
    lock: threading.Lock = field(default_factory=threading.Lock)


def test_two_servers_serve_one_book_through_a_lost_lending_host_and_a_lost_ledger_disk(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    with replicated(tmp_path / "cluster") as cluster, SyncLedgerClient(cluster.address, timeout_s=10) as ledger:
        args = ["--router", cluster.address, "--log-level", "WARNING"]
        first = LendingProcess(str(tmp_path / "lending-a"), args).start()
        second = LendingProcess(str(tmp_path / "lending-b"), args).start()
        servers = Servers([first, second])
        started = [first, second]
        try:
            with channel(first.address, "operator") as to_first:
                products = lending_pb2_grpc.ProductServiceStub(to_first)
                [parameters] = [p for p in read_catalogue(SAMPLE_CATALOGUE) if p.code == "SME-TAX-LOAN"]
                draft = products.SaveDraft(pb.SaveDraftRequest(parameters=parameters), timeout=10)
                products.PublishProduct(pb.ProductRef(code=draft.code, version=draft.version), timeout=10)
            customers = [fresh("c").replace("-", "") for _ in range(CUSTOMERS)]
            for index, customer in enumerate(customers):  # lines opened through both servers
                approve = pb.ApproveCreditLineRequest(
                    customer=customer,
                    line_id=f"L{customer}",
                    product_code="SME-TAX-LOAN",
                    customer_limit=200_000_000,
                    product_limit=200_000_000,
                )
                servers.call(index, "ApproveCreditLine", approve)
                names = Accounts(customer, "-", "SME-TAX-LOAN")
                [funded] = ledger.create_transfers(
                    [Transfer(f"fund-{customer}", names.settle, names.deposit, FUNDED, CNY, FUNDING_CODE)]
                )
                assert funded.code is ResultCode.OK, funded
            done = Acknowledged()
            chaos_over = threading.Event()
            notes: list[str] = []

            def customer_load(index: int, customer: str) -> None:
                rounds = 0
                while rounds < ROUNDS_MIN or not chaos_over.is_set():
                    loan_id = f"{customer[-6:]}r{rounds}"
                    draw = pb.DrawdownRequest(
                        customer=customer,
                        loan_id=loan_id,
                        product_code="SME-TAX-LOAN",
                        amount=1_000_000 + 1_000 * rounds,
                        date="2026-03-02",
                    )
                    loan = servers.call(index + rounds, "Drawdown", draw)
                    assert isinstance(loan, pb.Loan)
                    with done.lock:
                        done.loans[loan_id] = loan
                    if rounds % 2 == 0:
                        # The same payoff to both servers at once: one wins, the other answers the same.
                        payoff = pb.RepayRequest(loan_id=loan_id, repayment_id=f"p{rounds}", date="2026-03-09")
                        with ThreadPoolExecutor(2) as both:
                            answers = list(both.map(servers.call, (0, 1), ("PayOff",) * 2, (payoff,) * 2))
                        assert isinstance(answers[0], pb.RepayResponse) and isinstance(answers[1], pb.RepayResponse)
                        assert answers[0].repayment == answers[1].repayment, answers
                        with done.lock:
                            done.payoffs[loan_id] = answers[0].repayment
                    rounds += 1

            def chaos() -> None:
                time.sleep(rng.uniform(0.5, 1.0))
                doomed = servers.processes[0]
                doomed.kill()
                shutil.rmtree(doomed.data_dir)
                replacement = LendingProcess(str(tmp_path / "lending-c"), args).start()
                started.append(replacement)
                with servers.lock:
                    servers.processes[0] = replacement
                notes.append("a lending server lost with its disk, another started")
                time.sleep(rng.uniform(0.3, 0.8))
                victim = rng.choice(cluster.nodes)
                lose_disk(cluster, victim)
                fully_replicated(cluster)
                notes.append(f"ledger node {victim.address} lost with its disk, repaired to R")
                chaos_over.set()

            with ThreadPoolExecutor(CUSTOMERS + 1) as pool:
                futures = [pool.submit(customer_load, i, c) for i, c in enumerate(customers)]
                futures.append(pool.submit(chaos))
                for future in futures:
                    future.result()
            assert len(notes) == 2, notes
            check_book(servers, ledger, customers, done, seed)
        finally:
            for process in started:
                process.stop()


def check_book(servers: Servers, ledger: SyncLedgerClient, customers: list[str], done: Acknowledged, seed: int) -> None:
    """Every acknowledged loan and payoff is in the book once, on whichever server is asked,
    and every loan's accounts hold what its record says; the trial balance balances."""
    why = f"(seed {seed})"
    listed: dict[str, pb.Loan] = {}
    for index, customer in enumerate(customers):
        reply = servers.call(index, "ListLoans", pb.ListLoansRequest(customer=customer))
        assert isinstance(reply, pb.ListLoansResponse)
        listed |= {loan.loan_id: loan for loan in reply.loans}
    assert sorted(listed) == sorted(done.loans), why
    ids: list[str] = []
    for loan in listed.values():
        names = Accounts(loan.customer, loan.loan_id, loan.product_code)
        ids += [names.principal, names.fees]
    balances = {
        account_id: account for account_id, account in zip(ids, ledger.lookup_accounts(ids), strict=True) if account
    }
    for loan_id, loan in listed.items():
        drawn = done.loans[loan_id]
        assert (loan.customer, loan.principal, loan.drawdown_date) == (
            drawn.customer,
            drawn.principal,
            drawn.drawdown_date,
        ), why
        names = Accounts(loan.customer, loan.loan_id, loan.product_code)
        principal = balances[names.principal]
        # The record and the money agree: what was lent less what was repaid.
        assert principal.debits_posted == loan.principal, (loan_id, why)
        assert principal.debits_posted - principal.credits_posted == loan.principal_outstanding, (loan_id, why)
        if loan_id in done.payoffs:
            assert loan.status == pb.PAID_OFF, (loan_id, why)
            assert [r.repayment_id for r in loan.repayments] == [done.payoffs[loan_id].repayment_id], why
            assert loan.repayments[0] == done.payoffs[loan_id], why
        else:
            assert loan.status == pb.ACTIVE and not loan.repayments, (loan_id, why)
    for customer in customers:
        mine = [loan for loan in listed.values() if loan.customer == customer]
        repaid = sum(r.amount - r.unapplied for loan in mine for r in loan.repayments)
        [deposit] = ledger.lookup_accounts([Accounts(customer, "-", "SME-TAX-LOAN").deposit])
        assert deposit is not None
        assert deposit.balance == FUNDED + sum(loan.principal for loan in mine) - repaid, (customer, why)
    report = servers.call(1, "GetGlReport", pb.GlReportRequest())
    assert isinstance(report, pb.GlReport)
    assert report.total_debit == report.total_credit > 0, why
