"""Credit decisions end to end, on real processes: a scoring server with a trained credit_risk model,
a router and two ledger nodes, a lending server, and `yunkai risk serve` deciding applications,
storing them, opening approved credit lines in the lending service (which a drawdown then uses,
at the decided price), and replaying stored decisions exactly."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.ledger import LedgerClient, Transfer
from clients.scoring import ScoringClient
from cluster.commands import LocalCluster
from cluster.local import LendingProcess, RiskProcess, ScoringProcess
from lending.limits import BadLimitRequest, CreditLimits, LevelView
from lending.loans import Accounts
from lending.products import SAMPLE_CATALOGUE, read_catalogue
from proto import inference_pb2, inference_pb2_grpc, lending_pb2 as lpb, lending_pb2_grpc, risk_pb2 as pb, risk_pb2_grpc
from risk.server import line_id_of
from tests.conftest import aio_channel, channel, fresh

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = "SME-TAX-LOAN"
CNY = 156
AMOUNT_FEN = 5_000_000


def stub(risk: RiskProcess) -> risk_pb2_grpc.DecisionServiceStub:
    return risk_pb2_grpc.DecisionServiceStub(channel(risk.address, "operator"))


def request(fields: dict[str, float], amount_fen: int = AMOUNT_FEN) -> pb.DecideRequest:
    return pb.DecideRequest(
        application_id=fresh("app"),
        product=PRODUCT,
        customer=fresh("c").replace("-", ""),
        amount_requested_fen=amount_fen,
        fields=fields,
    )


def views(cluster: LocalCluster, customer: str) -> tuple[LevelView, LevelView]:
    async def look() -> tuple[LevelView, LevelView]:
        async with await LedgerClient.connect(cluster.address) as ledger:
            limits = CreditLimits(ledger, CNY)
            return await limits.view(customer), await limits.view(customer, PRODUCT)

    return asyncio.run(look())


def test_an_approved_application_opens_its_credit_line_once_and_draws_at_the_decided_price(
    risk: RiskProcess, cluster: LocalCluster, lending: LendingProcess, applicants: dict[str, dict[str, float]]
) -> None:
    decisions = stub(risk)
    application = request(applicants["safe"])
    decision = decisions.Decide(application, timeout=30)
    assert decision.outcome == pb.APPROVE
    assert decision.limit_fen == AMOUNT_FEN and decision.reason_codes == ["LOW_DEFAULT_RISK"]
    assert 430 <= decision.price_bps < 730  # the product's lowest rate plus a low risk's premium
    assert [(s.model, s.version) for s in decision.scores] == [("credit_risk", 1)]
    assert decision.flow_version == 2 and decision.credit_line_opened
    assert decision.credit_line_id == line_id_of(application.application_id)
    opened = LevelView(AMOUNT_FEN, 0, 0, AMOUNT_FEN, False)
    assert views(cluster, application.customer) == (opened, opened)
    # The same application again: the stored decision, and the line is not granted twice.
    assert decisions.Decide(application, timeout=30) == decision
    assert views(cluster, application.customer) == (opened, opened)
    # The customer draws on that line at the decided price, without naming a rate.
    loans = lending_pb2_grpc.LoanServiceStub(channel(lending.address, "operator"))
    drawn = loans.Drawdown(
        lpb.DrawdownRequest(
            customer=application.customer,
            loan_id=fresh("d").replace("-", "")[:16],
            product_code=PRODUCT,
            amount=2_000_000,
            date="2026-01-15",
        ),
        timeout=30,
    )
    assert (drawn.status, drawn.annual_rate_bps, drawn.principal) == (lpb.ACTIVE, decision.price_bps, 2_000_000)
    assert views(cluster, application.customer)[1] == LevelView(AMOUNT_FEN, 2_000_000, 0, AMOUNT_FEN - 2_000_000, False)
    # Another request under a used application id is refused, and changes nothing.
    other = pb.DecideRequest()
    other.CopyFrom(application)
    other.amount_requested_fen += 1
    with pytest.raises(grpc.RpcError) as refused:
        decisions.Decide(other, timeout=30)
    assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert decisions.GetDecision(pb.DecisionRef(application_id=application.application_id), timeout=30) == decision


def test_every_product_decides_real_applicants_and_opens_lines_within_its_bounds(
    risk: RiskProcess, lending: LendingProcess, applicants: dict[str, dict[str, float]]
) -> None:
    """The catalogue's 22 products, each with its flow (hand-written or derived): the credit
    data's safest applicant is approved and its line opened at a price the product allows, the
    medium one too (dearer), the riskiest declined."""
    loans = lending_pb2_grpc.LoanServiceStub(channel(lending.address, "operator"))
    for p in read_catalogue(SAMPLE_CATALOGUE):
        amount = 2 * p.amount_min
        decided = {}
        for kind in ("safe", "medium", "risky"):
            application = request(applicants[kind], amount)
            application.product = p.code
            decided[kind] = stub(risk).Decide(application, timeout=30)
        safe, medium, risky = decided["safe"], decided["medium"], decided["risky"]
        assert (safe.outcome, safe.limit_fen, safe.credit_line_opened) == (pb.APPROVE, amount, True), p.code
        assert (medium.outcome, medium.credit_line_opened) == (pb.APPROVE, True), p.code
        assert safe.price_bps <= medium.price_bps, p.code
        assert (risky.outcome, risky.credit_line_opened) == (pb.DECLINE, False), p.code
        drawn = loans.Drawdown(
            lpb.DrawdownRequest(
                customer=safe.customer,
                loan_id=fresh("d").replace("-", "")[:16],
                product_code=p.code,
                amount=p.amount_min,
                date="2026-01-15",
            ),
            timeout=30,
        )
        assert (drawn.status, drawn.annual_rate_bps) == (lpb.ACTIVE, safe.price_bps), p.code


def test_a_line_the_lending_service_refuses_is_named_and_the_decision_kept(
    risk: RiskProcess, cluster: LocalCluster, applicants: dict[str, dict[str, float]]
) -> None:
    """Flow v1 priced a medium risk above the product's 12.00%: the lending service refuses
    that line (FAILED_PRECONDITION naming the rate), the approval stays stored, nothing opens."""
    application = request(applicants["medium"])
    application.flow_version = 1
    with pytest.raises(grpc.RpcError) as refused:
        stub(risk).Decide(application, timeout=30)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "annual_rate_bps" in refused.value.details() and "430..1200" in refused.value.details()
    stored = stub(risk).GetDecision(pb.DecisionRef(application_id=application.application_id), timeout=30)
    assert stored.outcome == pb.APPROVE and stored.price_bps > 1200 and not stored.credit_line_opened
    with pytest.raises(BadLimitRequest, match="has no limit accounts"):
        views(cluster, application.customer)
    # The same applicant under the newest flow: priced within the bounds, and the line opens.
    again = request(applicants["medium"])
    decision = stub(risk).Decide(again, timeout=30)
    assert decision.reason_codes == ["MEDIUM_DEFAULT_RISK"] and 880 <= decision.price_bps <= 1180
    assert decision.credit_line_opened


def test_a_declined_application_opens_nothing(
    risk: RiskProcess, cluster: LocalCluster, applicants: dict[str, dict[str, float]]
) -> None:
    application = request(applicants["risky"])
    decision = stub(risk).Decide(application, timeout=30)
    assert (decision.outcome, decision.limit_fen, list(decision.reason_codes)) == (
        pb.DECLINE,
        0,
        ["HIGH_DEFAULT_RISK"],
    )
    assert not decision.credit_line_opened
    with pytest.raises(BadLimitRequest, match="has no limit accounts"):
        views(cluster, application.customer)


def test_a_decision_stores_the_reasons_behind_its_score(
    risk: RiskProcess, scoring: ScoringProcess, applicants: dict[str, dict[str, float]]
) -> None:
    decisions = stub(risk)
    declined = decisions.Decide(request(applicants["risky"]), timeout=30)
    assert declined.outcome == pb.DECLINE
    [score] = declined.scores
    assert len(score.reasons) == 10

    # The applicant's own SHAP contributions: the same the scoring server gives for this row,
    # adding up (with the expected margin and the rest) to the log-odds of the stored score.
    async def explain() -> list[tuple[float, Any]]:
        async with ScoringClient(scoring.address) as client:
            return await client.score_with_reasons("credit_risk", [applicants["risky"]], 1, 10)

    [(probability, why)] = asyncio.run(explain())
    assert probability == score.score
    assert [(r.feature, r.contribution, r.phrase) for r in score.reasons] == [
        (r.feature, r.contribution, r.phrase) for r in why.reasons
    ]
    margin = score.expected_margin + sum(r.contribution for r in score.reasons) + score.others_margin
    assert abs(1 / (1 + math.exp(-margin)) - score.score) <= 1e-5
    toward_decline = [r for r in score.reasons if r.direction == pb.RAISES_SCORE]
    assert toward_decline and all(r.contribution > 0 for r in toward_decline)
    assert margin > score.expected_margin, "a declined applicant's features raised the risk on balance"
    assert all(r.value == applicants["risky"][r.feature] for r in score.reasons)
    stored = decisions.GetDecision(pb.DecisionRef(application_id=declined.application_id), timeout=30)
    assert stored == declined


def test_missing_data_is_refused_or_referred_as_the_flow_says(
    risk: RiskProcess, applicants: dict[str, dict[str, float]]
) -> None:
    decisions = stub(risk)
    without_age = {k: v for k, v in applicants["safe"].items() if k != "Age"}
    with pytest.raises(grpc.RpcError) as refused:
        decisions.Decide(request(without_age), timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "Age: missing, and SME-TAX-LOAN v2 requires it"
    with pytest.raises(grpc.RpcError) as out_of_range:
        decisions.Decide(request(applicants["safe"] | {"Age": 150.0}), timeout=30)
    assert out_of_range.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert out_of_range.value.details().startswith("Age: 150 is outside")
    without_income = {k: v for k, v in applicants["safe"].items() if k != "Income"}
    referred = decisions.Decide(request(without_income), timeout=30)
    assert (referred.outcome, list(referred.reason_codes), list(referred.scores)) == (
        pb.REFER,
        ["MISSING_INCOME"],
        [],
    )


def test_a_stored_decision_survives_a_lost_risk_host_and_every_server_of_the_book_replays_it(
    risk: RiskProcess,
    scoring: ScoringProcess,
    cluster: LocalCluster,
    lending: LendingProcess,
    applicants: dict[str, dict[str, float]],
    tmp_path: Path,
) -> None:
    decided = [
        stub(risk).Decide(request(applicants[kind], amount), timeout=30)
        for kind, amount in (("safe", 77_777_777), ("risky", AMOUNT_FEN))
    ]
    assert decided[0].reason_codes == ["LOW_DEFAULT_RISK", "LIMIT_CAPPED"]
    assert all(len(decision.scores[0].reasons) == 10 for decision in decided)
    second = RiskProcess(
        str(tmp_path / "second"),
        ["--scoring", scoring.address, "--router", cluster.address, "--lending", lending.address],
    ).start()
    try:
        # One application sent to both servers at once: decided once (the decision log is the
        # book's records on the ledger), both answer the same decision.
        same = request(applicants["safe"])
        with ThreadPoolExecutor(2) as both:
            answers = list(both.map(lambda server: stub(server).Decide(same, timeout=30), (risk, second)))
        assert answers[0] == answers[1] and answers[0].credit_line_opened
        decided.append(answers[0])
        # The first server's host is lost with its disk: nothing of the log was on it.
        risk.kill()
        shutil.rmtree(risk.data_dir)
        risk.start()
        for server in (risk, second):
            check_replays(stub(server), decided)
    finally:
        assert second.stop() == 0, second.log_tail()


def check_replays(decisions: risk_pb2_grpc.DecisionServiceStub, decided: list[pb.Decision]) -> None:
    """Each decision is stored as it was answered and replays exactly, rescored too."""
    for decision in decided:
        ref = pb.DecisionRef(application_id=decision.application_id)
        assert decisions.GetDecision(ref, timeout=30) == decision
        replay = decisions.ReplayDecision(pb.ReplayRequest(application_id=decision.application_id), timeout=30)
        assert replay.identical and replay.stored == decision and not replay.rescored
        rescored = decisions.ReplayDecision(
            pb.ReplayRequest(application_id=decision.application_id, rescore=True), timeout=30
        )
        assert rescored.identical and rescored.scores_identical and list(rescored.rescored) == list(decision.scores)
        assert (replay.outcome, replay.limit_fen, replay.price_bps, replay.reason_codes) == (
            decision.outcome,
            decision.limit_fen,
            decision.price_bps,
            decision.reason_codes,
        )
        table_input = json.loads(decision.table_input_json)
        assert table_input["scores"]["credit_risk"] == decision.scores[0].score
    with pytest.raises(grpc.RpcError) as missing:
        decisions.GetDecision(pb.DecisionRef(application_id="never"), timeout=30)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND


def test_yunkai_decide_prints_the_decision(risk: RiskProcess, applicants: dict[str, dict[str, float]]) -> None:
    applicant = {"customer": "cliapplicant1", "amount_requested_fen": 3_000_000, **applicants["safe"]}
    command = [sys.executable, "-m", "cluster.cli", "decide", "--risk", risk.address, "--product", PRODUCT]
    done = subprocess.run(
        [*command, "--applicant", json.dumps(applicant), "--application-id", "cli-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert (printed["outcome"], printed["limit_fen"], printed["credit_line_opened"]) == ("APPROVE", "3000000", True)
    assert len(printed["scores"][0]["reasons"]) == 10
    assert "APPROVE: credit_risk v1 scored" in done.stderr and "principal reasons toward approval:" in done.stderr
    assert "\n  1. " in done.stderr
    risky = {"customer": "cliapplicant2", "amount_requested_fen": 3_000_000, **applicants["risky"]}
    declined = subprocess.run(
        [*command, "--applicant", json.dumps(risky), "--application-id", "cli-2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert declined.returncode == 0 and json.loads(declined.stdout)["outcome"] == "DECLINE", declined.stderr
    got = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "risk", "get", "--risk", risk.address, "cli-2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 0 and json.loads(got.stdout) == json.loads(declined.stdout), got.stderr
    lines = got.stderr.splitlines()
    assert lines[0].startswith("DECLINE: credit_risk v1 scored")
    assert lines[0].endswith("; principal reasons toward decline:")
    assert 1 <= len(lines[1:]) <= 4 and all(line.startswith(f"  {n}. ") for n, line in enumerate(lines[1:], 1))
    replayed = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "risk", "replay", "--risk", risk.address, "cli-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replayed.returncode == 0 and json.loads(replayed.stdout)["identical"] is True, replayed.stderr
    bad = subprocess.run(
        [*command, "--applicant", json.dumps(applicant | {"Age": "old"})],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "Age: 'old' is not a number" in bad.stderr


def test_concurrent_applications_are_each_decided_once_and_all_stored(
    risk: RiskProcess, cluster: LocalCluster, applicants: dict[str, dict[str, float]]
) -> None:
    distinct = [request(applicants["safe" if i % 2 else "risky"]) for i in range(40)]
    repeated = request(applicants["safe"])

    async def decide_all() -> list[pb.Decision]:
        async with aio_channel(risk.address, "operator") as to_risk:
            decisions = risk_pb2_grpc.DecisionServiceStub(to_risk)
            calls = [decisions.Decide(r, timeout=30) for r in [*distinct, *[repeated] * 10]]
            return list(await asyncio.gather(*calls))

    answers = asyncio.run(decide_all())
    assert [a.application_id for a in answers[:40]] == [r.application_id for r in distinct]
    assert [a.outcome for a in answers[:40]] == [pb.APPROVE if i % 2 else pb.DECLINE for i in range(40)]
    assert all(a == answers[40] for a in answers[40:])  # one decision for the repeated application
    granted = LevelView(AMOUNT_FEN, 0, 0, AMOUNT_FEN, False)
    assert views(cluster, repeated.customer) == (granted, granted)
    decisions = stub(risk)
    for request_sent, answer in zip(distinct, answers, strict=False):
        assert decisions.GetDecision(pb.DecisionRef(application_id=request_sent.application_id), timeout=30) == answer


def test_bench_risk_offers_decisions_and_writes_json(risk: RiskProcess, tmp_path: Path) -> None:
    out = tmp_path / "risk.json"
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "bench-risk", "--risk", risk.address, "--rate", "20", "--duration", "1",
         "--throughput-s", "0.5", "--concurrency", "2", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (result["ops"], result["errors"], sum(result["outcomes"].values())) == (20, 0, 20)
    assert sum(second["achieved_per_s"] for second in result["per_second"]) == 20
    assert result["command"].startswith("yunkai bench-risk") and result["decisions_per_s"] > 0


def test_yunkai_report_counts_decisions_drawdowns_and_the_book(
    risk: RiskProcess, lending: LendingProcess, applicants: dict[str, dict[str, float]]
) -> None:
    """The measures move by exactly what happened: two approvals and a decline of one product,
    a drawdown that passes, one the limits refuse and one without a credit line."""
    product, day = "SME-GREEN", "2026-03-02"
    command = [sys.executable, "-m", "cluster.cli", "report", "--lending", lending.address, "--risk", risk.address]

    def report() -> dict[str, Any]:
        done = subprocess.run([*command, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        measures: dict[str, Any] = json.loads(done.stdout)
        return measures

    def of(rows: list[dict[str, Any]], key: str, value: str) -> dict[str, Any]:
        return next((row for row in rows if row[key] == value), {})

    before = report()
    approved = []
    for kind in ("safe", "medium", "risky"):
        application = request(applicants[kind], 20_000_000)
        application.product = product
        decision = stub(risk).Decide(application, timeout=30)
        if decision.outcome == pb.APPROVE:
            approved.append(decision)
    assert len(approved) == 2
    loans = lending_pb2_grpc.LoanServiceStub(channel(lending.address, "operator"))

    def draw(customer: str, amount: int) -> grpc.StatusCode:
        ask = lpb.DrawdownRequest(
            customer=customer,
            loan_id=fresh("r").replace("-", ""),
            product_code=product,
            amount=amount,
            date=day,
        )
        try:
            loans.Drawdown(ask, timeout=30)
        except grpc.RpcError as refused:
            return refused.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    assert draw(approved[0].customer, 10_000_000) is grpc.StatusCode.OK
    assert draw(approved[1].customer, approved[1].limit_fen + 1) is grpc.StatusCode.FAILED_PRECONDITION
    assert draw("nolinecustomer1", 10_000_000) is grpc.StatusCode.FAILED_PRECONDITION
    after = report()

    def delta(rows: str, key: str, value: str, field: str) -> int:
        new, old = of(after[rows], key, value).get(field, 0), of(before[rows], key, value).get(field, 0)
        return int(new) - int(old)

    moved = {f: delta("decisions", "product", product, f) for f in ("decided", "approved", "declined", "lines_opened")}
    assert moved == {"decided": 3, "approved": 2, "declined": 1, "lines_opened": 2}
    assert of(after["decisions"], "product", product)["approval_rate"] == pytest.approx(
        int(of(after["decisions"], "product", product)["approved"])
        / int(of(after["decisions"], "product", product)["decided"])
    )
    drawn = {f: delta("drawdowns", "date", day, f) for f in ("asked", "passed", "refused_by_limits", "refused_no_line")}
    assert drawn == {"asked": 3, "passed": 1, "refused_by_limits": 1, "refused_no_line": 1}
    assert after["drawdown_pass_rate"] == pytest.approx(after["drawdowns_passed"] / after["drawdowns_asked"])
    book = of(after["book"], "product_code", product)
    assert (
        int(book["loans"]["ACTIVE"])
        - int(of(before["book"], "product_code", product).get("loans", {}).get("ACTIVE", 0))
        == 1
    )
    assert int(book["credit_lines"]) >= 2 and int(book["open_by_bucket"]["M0"]) >= 1
    assert after["early_warning"]["borrowers"] >= before["early_warning"]["borrowers"] + 2
    text = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "drawdowns:" in text.stdout and "pass rate" in text.stdout and product in text.stdout


def test_loans_outcomes_reach_the_models_that_scored_their_applications(
    risk: RiskProcess,
    lending: LendingProcess,
    scoring: ScoringProcess,
    cluster: LocalCluster,
    applicants: dict[str, dict[str, float]],
) -> None:
    """End of day tells the risk server what became of each loan (repaid: 0; 90 days past due: 1)
    for the application its line was approved for, once; credit_risk's outcome book counts them."""
    loans = lending_pb2_grpc.LoanServiceStub(channel(lending.address, "operator"))
    to_scoring = inference_pb2_grpc.GRPCInferenceServiceStub(channel(scoring.address, "operator"))

    def outcomes() -> tuple[int, int]:
        reply = to_scoring.ModelMonitor(inference_pb2.ModelMonitorRequest(model_name="credit_risk"), timeout=10)
        [version] = [v for v in reply.versions if v.version == 1]
        return version.outcome_positives, version.outcome_negatives

    def eod(day: str) -> int:
        plan = loans.PlanEod(lpb.EodSlotsRequest(date=day), timeout=30)
        done = [loans.RunEodSlot(lpb.EodSlotRequest(date=day, slot=s), timeout=60) for s in plan.slots]
        return sum(r.outcomes_reported for r in done)

    before = outcomes()
    decided = {}
    for kind in ("safe", "medium"):
        decision = stub(risk).Decide(request(applicants[kind]), timeout=30)
        assert decision.credit_line_opened, decision
        loan_id = fresh("o").replace("-", "")[:16]
        drawn = loans.Drawdown(
            lpb.DrawdownRequest(
                customer=decision.customer, loan_id=loan_id, product_code=PRODUCT, amount=2_000_000, date="2027-01-15"
            ),
            timeout=30,
        )
        decided[kind] = (decision, drawn)
    # The safe one pays off early (funded from outside the loan); the medium one never pays.
    safe, safe_loan = decided["safe"]
    names = Accounts(safe.customer, "-", PRODUCT)

    async def fund() -> None:
        async with await LedgerClient.connect(cluster.address) as ledger:
            [funded] = await ledger.create_transfers(
                [Transfer(fresh("fund"), names.settle, names.deposit, 1_000_000, CNY, 1)]
            )
            assert funded.ok, funded

    asyncio.run(fund())
    paid = loans.PayOff(lpb.RepayRequest(loan_id=safe_loan.loan_id, repayment_id="off", date="2027-01-20"), timeout=30)
    assert paid.loan.status == lpb.PAID_OFF
    # Loans of the module's other tests (drawn in 2026, never repaid) are told as defaults on the
    # same end of day; the one repaid loan is this test's.
    assert eod("2027-01-20") >= 1
    assert loans.GetLoan(lpb.LoanRef(loan_id=safe_loan.loan_id), timeout=10).outcome_reported
    told = outcomes()
    assert told[1] == before[1] + 1 and told[0] >= before[0]
    medium_loan = decided["medium"][1]
    assert not loans.GetLoan(lpb.LoanRef(loan_id=medium_loan.loan_id), timeout=10).outcome_reported
    assert eod("2027-05-20") == 1  # the medium one is 94 days past due: a default
    assert outcomes() == (told[0] + 1, told[1])
    assert eod("2027-05-21") == 0  # each loan is told once
