"""Behavioural limit management on real processes: a scoring server with early_warning and
repayment_willingness, a router and two nodes, a lending server keeping the loans, and a risk
server whose BehaviourService reads each borrower's repayment records from the lending server.

A borrower who stops paying is frozen (and can draw no more); once they have repaid on time
for a year they are unfrozen; a good borrower using their limit gets a raise; every run is
idempotent, and a refused request changes nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from clients.ledger import LedgerClient
from clients.records import Records
from clients.scoring import ScoringClient
from cluster.commands import LocalCluster
from cluster.local import LendingProcess, RiskProcess, ScoringProcess
from lending.limits import CreditLimits, LevelView
from lending.products import SAMPLE_CATALOGUE, read_catalogue
from proto import lending_pb2 as lpb, lending_pb2_grpc, risk_pb2 as pb, risk_pb2_grpc
from risk.assessments import AssessmentStore
from scoring import synthetic, train
from scoring.datasets import LOADERS
from tests.conftest import channel, fresh

ROOT = Path(__file__).resolve().parent.parent
CNY = 156
LIMIT_FEN = 2_000_000
REPAYMENT_FEATURES = ("late_payments_12m", "months_on_book")  # early_warning's, read from the loans
AGE = 45.0  # the owner's age: repayment_willingness's only profile feature


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringProcess]:
    registry = tmp_path_factory.mktemp("scoring") / "models"
    for name in ("early_warning", "repayment_willingness"):
        assert train.train_one(name, LOADERS[name](), registry, 1, iterations=400).admitted
    server = ScoringProcess(str(registry), ["--log-level", "WARNING"]).start()
    yield server
    server.stop()


class Lending:
    """A lending server with a product of its own (SME-TAX-LOAN's terms: 7.20%, 3 grace days)."""

    def __init__(self, process: LendingProcess) -> None:
        self.process = process
        self.channel = channel(process.address, "operator")
        self.loans = lending_pb2_grpc.LoanServiceStub(self.channel)
        products = lending_pb2_grpc.ProductServiceStub(self.channel)
        [parameters] = [p for p in read_catalogue(SAMPLE_CATALOGUE) if p.code == "SME-TAX-LOAN"]
        parameters.code = fresh("BH").replace("-", "")
        draft = products.SaveDraft(lpb.SaveDraftRequest(parameters=parameters), timeout=10)
        self.code = products.PublishProduct(lpb.ProductRef(code=draft.code, version=draft.version), timeout=10).code

    def customer(self) -> str:
        customer = fresh("b").replace("-", "")
        line = lpb.ApproveCreditLineRequest(
            customer=customer,
            line_id=f"L{customer}",
            product_code=self.code,
            customer_limit=LIMIT_FEN,
            product_limit=LIMIT_FEN,
        )
        self.loans.ApproveCreditLine(line, timeout=30)
        return customer

    def draw(self, customer: str, amount: int, day: str, term_months: int) -> lpb.Loan:
        request = lpb.DrawdownRequest(
            customer=customer,
            loan_id=fresh("l").replace("-", ""),
            product_code=self.code,
            amount=amount,
            date=day,
            term_months=term_months,
        )
        return self.loans.Drawdown(request, timeout=30)

    def repay(self, loan: lpb.Loan, numbers: range, day: str) -> None:
        """Pay instalments `numbers` (what they owe) on `day`."""
        owed = sum(i.principal + i.interest + i.fees for i in loan.schedule if i.number in numbers)
        request = lpb.RepayRequest(
            loan_id=loan.loan_id, repayment_id=fresh("r").replace("-", ""), amount=owed, date=day
        )
        paid = self.loans.Repay(request, timeout=30).repayment
        assert paid.unapplied == 0 and paid.amount == owed, paid


@pytest.fixture(scope="module")
def lending(tmp_path_factory: pytest.TempPathFactory, cluster: LocalCluster) -> Iterator[Lending]:
    process = LendingProcess(str(tmp_path_factory.mktemp("lending")), ["--router", cluster.address]).start()
    yield Lending(process)
    process.stop()


@pytest.fixture(scope="module")
def risk(
    tmp_path_factory: pytest.TempPathFactory, scoring: ScoringProcess, cluster: LocalCluster, lending: Lending
) -> Iterator[RiskProcess]:
    server = RiskProcess(
        str(tmp_path_factory.mktemp("risk")),
        ["--scoring", scoring.address, "--router", cluster.address, "--lending", lending.process.address],
    ).start()
    yield server
    server.stop()


def scores(scoring: ScoringProcess, model: str, rows: list[dict[str, float]]) -> list[float]:
    async def score() -> list[float]:
        async with ScoringClient(scoring.address) as client:
            return await client.score(model, rows, 1)

    return asyncio.run(score())


@pytest.fixture(scope="module")
def profiles(scoring: ScoringProcess) -> dict[str, dict[str, float]]:
    """Real businesses of the synthetic book, chosen with the trained models.

    `wavering`: deteriorates (early_warning >= 0.45) with 4 late instalments in half a year on
    book, and is well below 0.15 with a clean year after 19 months. `model`: early_warning
    < 0.03 with a clean first month on book. The owner's age keeps repayment_willingness low
    while no instalment is late."""
    data = synthetic.generate(2_000)
    rows = [dict(zip(synthetic.FEATURES, map(float, r), strict=True)) for r in data.features]
    late = scores(scoring, "early_warning", [r | {"late_payments_12m": 4.0, "months_on_book": 6.0} for r in rows])
    clean = scores(scoring, "early_warning", [r | {"late_payments_12m": 0.0, "months_on_book": 19.0} for r in rows])
    first = scores(scoring, "early_warning", [r | {"late_payments_12m": 0.0, "months_on_book": 1.0} for r in rows])
    wavering = [i for i in range(len(rows)) if late[i] >= 0.45 and clean[i] < 0.1]
    model = [i for i in range(len(rows)) if first[i] < 0.03]
    assert wavering and model, (max(np.array(late) - np.array(clean)), min(first))
    bills = (0.4, 0.5, 1.2, 1.5)  # thousands of yuan billed in the month before each test's date
    willing = scores(scoring, "repayment_willingness", [{"LateApril": 0.0, "BillApril": b, "AGE": AGE} for b in bills])
    assert max(willing) < 0.2, willing

    def profile(i: int) -> dict[str, float]:
        return {k: v for k, v in rows[i].items() if k not in REPAYMENT_FEATURES} | {"AGE": AGE}

    return {"wavering": profile(wavering[0]), "model": profile(model[0])}


def assess(risk: RiskProcess, run_id: str, day: str, *borrowers: tuple[str, dict[str, float]]) -> list[dict[str, Any]]:
    with channel(risk.address, "operator") as to_risk:
        request = pb.AssessRequest(
            run_id=run_id, date=day, borrowers=[pb.Borrower(customer=c, profile=p) for c, p in borrowers]
        )
        reply = risk_pb2_grpc.BehaviourServiceStub(to_risk).Assess(request, timeout=60)
    for assessment in reply.assessments:
        record = json.loads(assessment.record_json)
        assert (assessment.action, assessment.applied, dict(assessment.features)) == (
            record["action"], record["applied"], record["features"],
        )  # fmt: skip
    return [json.loads(a.record_json) for a in reply.assessments]


def cli(risk: RiskProcess, action: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "risk", action, "--risk", risk.address, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def view(cluster: LocalCluster, customer: str) -> LevelView:
    async def read() -> LevelView:
        async with await LedgerClient.connect(cluster.address) as client:
            return await CreditLimits(client, CNY).view(customer)

    return asyncio.run(read())


def test_a_borrower_who_stops_paying_is_frozen_and_unfrozen_after_a_year_on_time(
    tmp_path: Path, risk: RiskProcess, lending: Lending, cluster: LocalCluster, profiles: dict[str, dict[str, float]]
) -> None:
    customer = lending.customer()
    loan = lending.draw(customer, 1_000_000, "2026-01-15", term_months=24)
    for number in (1, 2):  # February and March on their due dates; April to July never
        lending.repay(loan, range(number, number + 1), loan.schedule[number - 1].due)
    borrower = (customer, profiles["wavering"])

    [frozen] = assess(risk, "r1", "2026-07-20", borrower)
    assert (frozen["action"], frozen["warning_level"], frozen["reasons"], frozen["applied"]) == (
        "freeze", "red", ["EARLY_WARNING_HIGH"], "OK",
    )  # fmt: skip
    assert {k: frozen["features"][k] for k in ("late_payments_12m", "months_on_book", "LateApril")} == {
        "late_payments_12m": 4.0, "months_on_book": 6.0, "LateApril": 1.0,
    }  # fmt: skip
    assert frozen["input"]["scores"]["early_warning"] >= 0.4 and frozen["date"] == "2026-07-20"
    assert view(cluster, customer).frozen
    with pytest.raises(grpc.RpcError) as refused:
        lending.draw(customer, 100_000, "2026-07-21", term_months=12)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
    # The same run again, even after the records changed: the stored assessment, re-applied as a replay.
    lending.repay(loan, range(3, 7), "2026-07-25")  # the arrears, caught up
    assert assess(risk, "r1", "2026-07-20", borrower) == [frozen]
    with pytest.raises(grpc.RpcError) as refused:  # a run has one date
        assess(risk, "r1", "2026-07-25", borrower)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS, refused.value.details()
    assert "run_id: r1 is a run as of 2026-07-20, not 2026-07-25" in str(refused.value.details())
    # Early warning: a red level opens a visit, once, whose outcome is recorded; the book is covered.
    [visit] = [json.loads(line) for line in cli(risk, "followups").splitlines()]
    assert (visit["task"], visit["kind"], visit["reason_codes"]) == (f"r1/{customer}", "visit", ["EARLY_WARNING_HIGH"])
    closed = json.loads(cli(risk, "followup-outcome", visit["task"], "--outcome", "visited_tax_arrears_found"))
    assert closed["outcome"] == "visited_tax_arrears_found"
    assert f"r1/{customer}" not in cli(risk, "followups")
    book = tmp_path / "book.jsonl"
    book.write_text(json.dumps({"customer": customer}) + "\n" + '{"customer": "never1"}\n')
    covered = json.loads(cli(risk, "coverage", "--borrowers", str(book)))
    assert (covered["borrowers"], covered["assessed_current"], covered["by_level"]["red"]) == (2, 1, 1)

    for number in range(7, 20):  # August 2026 to August 2027, each on its due date
        lending.repay(loan, range(number, number + 1), loan.schedule[number - 1].due)
    as_of = (date.fromisoformat(loan.schedule[18].due) + timedelta(days=5)).isoformat()  # 2027-08-20
    [thawed] = assess(risk, "r2", as_of, borrower)
    assert (thawed["action"], thawed["warning_level"], thawed["reasons"], thawed["applied"]) == (
        "unfreeze", "green", ["RECOVERED"], "OK",
    )  # fmt: skip
    assert (thawed["features"]["late_payments_12m"], thawed["input"]["limit"]["frozen"]) == (0.0, True)
    assert not view(cluster, customer).frozen
    for run_id, record in (("r2", thawed), ("r1", frozen)):  # an old run replayed later does not re-freeze
        assert assess(risk, run_id, record["date"], borrower) == [record]
    assert not view(cluster, customer).frozen
    # A crash between r1's two batches would have left its freeze stored but not applied
    # (kill -9 of the risk server, as if): resumed after r2, it must not freeze him again.
    risk.kill()

    async def unapply() -> None:  # what r1 had stored before its second batch
        async with await LedgerClient.connect(cluster.address, tls_name="risk") as ledger:
            store = AssessmentStore(Records(ledger, "book"))
            stored = await store.get(f"a/r1/{customer}")
            assert stored is not None
            stored["applied"] = None
            await store.put(f"a/r1/{customer}", stored)

    asyncio.run(unapply())
    risk.start()
    [resumed] = assess(risk, "r1", "2026-07-20", borrower)
    assert (resumed["action"], resumed["applied"]) == ("freeze", "SUPERSEDED")
    assert not view(cluster, customer).frozen
    assert json.loads(cli(risk, "coverage", "--borrowers", str(book)))["by_level"]["green"] == 1


def test_a_good_borrower_using_their_limit_gets_a_raise_once_through_the_batch_job(
    tmp_path: Path, risk: RiskProcess, lending: Lending, cluster: LocalCluster, profiles: dict[str, dict[str, float]]
) -> None:
    customer = lending.customer()
    loan = lending.draw(customer, 1_400_000, "2026-01-15", term_months=12)
    lending.repay(loan, range(1, 2), "2026-02-15")
    used = view(cluster, customer).used
    assert used > LIMIT_FEN // 2, used
    book = tmp_path / "profiles.jsonl"
    book.write_text(json.dumps({"customer": customer, **profiles["model"]}) + "\n")
    job = [sys.executable, "-m", "cluster.cli", "risk", "behaviour", "--risk", risk.address, "--run-id", "g1"]
    job += ["--date", "2026-02-20", "--profiles", str(book)]
    for _ in range(2):
        done = subprocess.run(job, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "assessed 1/1 borrowers" in done.stderr, done.stderr
        [raised] = [json.loads(line) for line in done.stdout.splitlines()]
        assert (raised["action"], raised["amount_fen"], raised["reasons"], raised["applied"]) == (
            "raise", LIMIT_FEN // 5, ["GOOD_BEHAVIOUR_HIGH_USE"], "OK",
        )  # fmt: skip
        assert raised["features"]["months_on_book"] == 1.0 and raised["repayment_features"] == [
            "BillApril", "LateApril", "late_payments_12m", "months_on_book",
        ]  # fmt: skip
    assert view(cluster, customer).granted == LIMIT_FEN + LIMIT_FEN // 5
    book.write_text('{"customer": "c1", "AGE": "forty"}\n')
    done = subprocess.run(job, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "profiles.jsonl:1: AGE: 'forty' is not a finite number" in done.stderr, done.stderr
    for lines, said in (
        ('{"customer": "c1", "AGE": 40}\n{"customer": "c1", "AGE": 41}\n', "profiles.jsonl:2: customer: c1 is also"),
        ('{"customer": "c1", "months_on_book": 3}\n', "profiles.jsonl:1: months_on_book: read from the repayment"),
    ):
        book.write_text(lines)
        done = subprocess.run(job, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and said in done.stderr, done.stderr


def test_bad_requests_are_refused_naming_the_field_and_change_nothing(
    risk: RiskProcess, lending: Lending, cluster: LocalCluster, profiles: dict[str, dict[str, float]]
) -> None:
    customer = lending.customer()
    before = view(cluster, customer)
    good = profiles["model"]
    cases = [
        ("bad/run", "2026-02-20", [(customer, good)], "run_id: "),
        ("x1", "2026-02-30", [(customer, good)], "date: "),
        ("x1", "0001-01-15", [(customer, good)], "date: 0001-01-15 is not between"),
        ("x1", "2026-02-20", [(customer, good), (customer, good)], "customer: a borrower appears twice"),
        ("x1", "2026-02-20", [(customer, good | {"late_payments_12m": 0.0})], "late_payments_12m: read from"),
        ("x1", "2026-02-20", [], "borrowers: 0 in one call"),
    ]
    with channel(risk.address, "operator") as to_risk:
        stub = risk_pb2_grpc.BehaviourServiceStub(to_risk)
        for run_id, day, borrowers, message in cases:
            request = pb.AssessRequest(
                run_id=run_id, date=day, borrowers=[pb.Borrower(customer=c, profile=p) for c, p in borrowers]
            )
            with pytest.raises(grpc.RpcError) as refused:
                stub.Assess(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (message, refused.value.details())
            assert message in refused.value.details()
        assert stub.ListFollowUps(pb.ListFollowUpsRequest(kind="visit"), timeout=10) is not None
        with pytest.raises(grpc.RpcError) as refused:
            stub.RecordFollowUpOutcome(pb.FollowUpOutcome(task="r9/nobody", outcome="not_reached"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert view(cluster, customer) == before
    # Nothing was stored: had a refused call stored the customer's assessment as of 2026-02-20,
    # the run could not assess them as of another date now (ALREADY_EXISTS).
    [fresh_record] = assess(risk, "x1", "2026-02-21", (customer, good))
    assert (fresh_record["date"], fresh_record["customer"]) == ("2026-02-21", customer)
    # A run has one date, for the customers of its later chunks too.
    other = lending.customer()
    with pytest.raises(grpc.RpcError) as refused:
        assess(risk, "x1", "2026-02-22", (other, good))
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS, refused.value.details()
    assert "run_id: x1 is a run as of 2026-02-21, not 2026-02-22" in str(refused.value.details())
    assert assess(risk, "x1", "2026-02-21", (other, good))[0]["customer"] == other


def test_one_borrowers_problem_fails_nobody_else_and_the_job_says_what_it_did(
    tmp_path: Path, risk: RiskProcess, lending: Lending, profiles: dict[str, dict[str, float]]
) -> None:
    good, ageless = lending.customer(), lending.customer()
    without_age = {k: v for k, v in profiles["model"].items() if k != "AGE"}
    book = [(good, profiles["model"]), ("nobody1", profiles["model"]), (ageless, without_age)]
    with channel(risk.address, "operator") as to_risk:
        stub = risk_pb2_grpc.BehaviourServiceStub(to_risk)
        request = pb.AssessRequest(
            run_id="p1", date="2026-02-20", borrowers=[pb.Borrower(customer=c, profile=p) for c, p in book]
        )
        reply = stub.Assess(request, timeout=60)
        assert [a.customer for a in reply.assessments] == [good]
        assert [(n.customer, n.reason, n.no_credit_line) for n in reply.not_assessed] == [
            ("nobody1", "customer: nobody1 has no credit line", True),
            (ageless, f"AGE: missing from {ageless}'s profile (model repayment_willingness)", False),
        ]
        # Nothing was stored for the borrower left alone: the same run assesses them once mended.
        mended = pb.AssessRequest(
            run_id="p1", date="2026-02-20", borrowers=[pb.Borrower(customer=ageless, profile=profiles["model"])]
        )
        again = stub.Assess(mended, timeout=60)
        assert [a.customer for a in again.assessments] == [ageless] and not again.not_assessed
    # The batch job: every borrower's outcome, a summary, and exit 3 while one was not assessed.
    path = tmp_path / "book.jsonl"
    job = [sys.executable, "-m", "cluster.cli", "risk", "behaviour", "--risk", risk.address, "--date", "2026-02-20"]
    job += ["--profiles", str(path), "--chunk", "2"]
    other = lending.customer()
    path.write_text("".join(json.dumps({"customer": c, **p}) + "\n" for c, p in [*book[:2], (other, without_age)]))
    done = subprocess.run([*job, "--run-id", "p2"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert [json.loads(line)["customer"] for line in done.stdout.splitlines()] == [good]
    assert "not a borrower: nobody1: customer: nobody1 has no credit line" in done.stderr
    assert f"not assessed: {other}: AGE: missing from {other}'s profile" in done.stderr
    assert "done: 1 assessed (" in done.stderr and "1 without a credit line (nothing to assess); 1 not assessed;" in (
        done.stderr
    )
    # Mended, the same run finishes: those assessed before are answered from the run's record.
    path.write_text("".join(json.dumps({"customer": c, **profiles["model"]}) + "\n" for c in (good, "nobody1", other)))
    done = subprocess.run([*job, "--run-id", "p2"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "done: 2 assessed (" in done.stderr and "; 0 not assessed; 0 actions the ledger refused" in done.stderr


def test_bench_behaviour_assesses_a_book_twice_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "behaviour.json"
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "bench-behaviour", "--borrowers", "20", "--chunk", "8",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert (result["borrowers"], sum(result["actions"].values())) == (20, 20)
    assert result["first_pass"]["borrowers_per_s"] > 0 and result["rerun"]["borrowers_per_s"] > 0
    assert result["command"].startswith("yunkai bench-behaviour")


def test_a_ledger_outage_is_unavailable_and_changes_nothing(
    tmp_path: Path, scoring: ScoringProcess, profiles: dict[str, dict[str, float]]
) -> None:
    """A cluster of its own, whose only node is killed: Assess answers UNAVAILABLE (repeat the
    call), not an unhandled error, and stores nothing, so the repeat assesses afresh."""
    ledger = LocalCluster(str(tmp_path / "cluster"), nodes=1, port=0).start()
    started: list[Any] = [ledger]
    try:
        lending = Lending(LendingProcess(str(tmp_path / "lending"), ["--router", ledger.address]).start())
        started.append(lending.process)
        risk = RiskProcess(
            str(tmp_path / "risk"),
            ["--scoring", scoring.address, "--router", ledger.address, "--lending", lending.process.address],
        ).start()
        started.append(risk)
        customer = lending.customer()
        [node] = ledger.nodes
        node.kill()
        with pytest.raises(grpc.RpcError) as refused:
            assess(risk, "o1", "2026-02-20", (customer, profiles["model"]))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        assert "the ledger or the lending server" in str(refused.value.details())
        node.start()
        [record] = assess(risk, "o1", "2026-02-21", (customer, profiles["model"]))  # no run o1 was stored
        assert (record["date"], record["applied"]) == ("2026-02-21", "OK")
    finally:
        for process in reversed(started):
            process.stop()
