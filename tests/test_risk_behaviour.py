"""Behavioural limit management on real processes: a scoring server with early_warning and
repayment_willingness, a router and two nodes, and `yunkai risk behaviour` runs that freeze a
deteriorating borrower, unfreeze them after recovery and raise a good one, each run idempotent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients.ledger import LedgerClient
from clients.scoring import ScoringClient
from cluster.commands import LocalCluster
from cluster.local import ScoringProcess
from lending.limits import CreditLimits, LevelView
from scoring import datasets, synthetic, train
from tests.conftest import fresh

ROOT = Path(__file__).resolve().parent.parent
CNY = 156
PRODUCT = "SME-TAX-LOAN"
GRANTED_FEN = 1_000_000


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringProcess]:
    registry = tmp_path_factory.mktemp("scoring") / "models"
    for name in ("early_warning", "repayment_willingness"):
        assert train.train_one(name, datasets.LOADERS[name](), registry, 1, iterations=60).admitted
    server = ScoringProcess(str(registry), ["--log-level", "WARNING"]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = LocalCluster(str(tmp_path_factory.mktemp("cluster")), nodes=2, port=0).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def profiles(scoring: ScoringProcess) -> dict[str, dict[str, float]]:
    """Real feature rows: a deteriorating business, a recovered one, and a model borrower."""
    data = synthetic.generate(2_000)
    order = np.argsort(data.probabilities)
    worst, best = (
        dict(zip(synthetic.FEATURES, map(float, data.features[i]), strict=True)) for i in (order[-1], order[0])
    )
    cards = datasets.repayment_willingness()
    rows = [dict(zip(cards.feature_names, map(float, r), strict=True)) for r in cards.features[:300]]

    async def score() -> tuple[list[float], list[float]]:
        async with ScoringClient(scoring.address) as client:
            return await client.score("early_warning", [worst, best], 1), await client.score(
                "repayment_willingness", rows, 1
            )

    early, willingness = asyncio.run(score())
    assert early[0] >= 0.4 and early[1] < 0.05, early
    payer = rows[int(np.argmin(willingness))]
    assert min(willingness) < 0.2, min(willingness)
    return {"deteriorating": worst | payer, "recovered": best | payer}


def run_job(
    tmp: Path, run_id: str, borrowers: list[dict[str, Any]], scoring: ScoringProcess, cluster: LocalCluster
) -> list[dict[str, Any]]:
    path = tmp / f"{run_id}.jsonl"
    path.write_text("".join(json.dumps(b) + "\n" for b in borrowers))
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "risk", "behaviour", "--run-id", run_id, "--borrowers", str(path),
         "--scoring", scoring.address, "--router", cluster.address, "--data-dir", str(tmp / "risk")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def yunkai(tmp: Path, action: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "risk", action, "--data-dir", str(tmp / "risk"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def ledger(cluster: LocalCluster, work: Any) -> Any:
    async def main() -> Any:
        async with await LedgerClient.connect(cluster.address) as client:
            return await work(CreditLimits(client, CNY))

    return asyncio.run(main())


def open_line(cluster: LocalCluster, drawn_fen: int = 0) -> str:
    customer = fresh("b").replace("-", "")

    async def work(limits: CreditLimits) -> None:
        assert all(r.ok for r in await limits.open(customer, [PRODUCT]))
        assert (await limits.raise_limit(customer, None, GRANTED_FEN, "grant")).ok
        assert (await limits.raise_limit(customer, PRODUCT, GRANTED_FEN, "grant-p")).ok
        if drawn_fen:
            assert (await limits.consume(customer, PRODUCT, drawn_fen, "draw")).ok

    ledger(cluster, work)
    return customer


def view(cluster: LocalCluster, customer: str) -> LevelView:
    async def work(limits: CreditLimits) -> LevelView:
        return await limits.view(customer)

    result: LevelView = ledger(cluster, work)
    return result


def test_a_deteriorating_borrower_is_frozen_then_unfrozen_after_recovery_each_run_once(
    tmp_path: Path, scoring: ScoringProcess, cluster: LocalCluster, profiles: dict[str, dict[str, float]]
) -> None:
    customer = open_line(cluster)
    [frozen] = run_job(tmp_path, "r1", [{"customer": customer, **profiles["deteriorating"]}], scoring, cluster)
    assert (frozen["action"], frozen["warning_level"], frozen["reasons"], frozen["applied"]) == (
        "freeze", "red", ["EARLY_WARNING_HIGH"], "OK",
    )  # fmt: skip
    assert frozen["input"]["scores"]["early_warning"] >= 0.4 and frozen["policy_version"] == 1
    assert view(cluster, customer).frozen
    # The same run again, even with other data: the stored assessment, re-applied as a replay.
    again = run_job(tmp_path, "r1", [{"customer": customer, **profiles["recovered"]}], scoring, cluster)
    assert again == [frozen]
    assert view(cluster, customer) == LevelView(GRANTED_FEN, 0, 0, GRANTED_FEN, True)
    # Early warning: a red level opens a visit, once, whose outcome is recorded; the book is covered.
    [visit] = [json.loads(line) for line in yunkai(tmp_path, "followups").splitlines()]
    assert (visit["task"], visit["kind"], visit["reasons"]) == (f"r1/{customer}", "visit", ["EARLY_WARNING_HIGH"])
    yunkai(tmp_path, "followup-outcome", visit["task"], "--outcome", "visited_tax_arrears_found")
    assert yunkai(tmp_path, "followups") == ""
    (tmp_path / "book.jsonl").write_text(json.dumps({"customer": customer}) + "\n" + '{"customer": "never1"}\n')
    covered = json.loads(yunkai(tmp_path, "coverage", "--borrowers", str(tmp_path / "book.jsonl")))
    assert (covered["coverage"], covered["by_level"]["red"]) == (0.5, 1)

    [thawed] = run_job(tmp_path, "r2", [{"customer": customer, **profiles["recovered"]}], scoring, cluster)
    assert (thawed["action"], thawed["warning_level"], thawed["reasons"], thawed["applied"]) == (
        "unfreeze", "green", ["RECOVERED"], "OK",
    )  # fmt: skip
    assert thawed["input"]["limit"]["frozen"] is True
    assert not view(cluster, customer).frozen
    for run_id, record in (("r2", thawed), ("r1", frozen)):  # an old run replayed later does not re-freeze
        assert run_job(tmp_path, run_id, [{"customer": customer, **profiles["recovered"]}], scoring, cluster) == [
            record
        ]
    assert view(cluster, customer) == LevelView(GRANTED_FEN, 0, 0, GRANTED_FEN, False)


def test_a_good_borrower_using_their_limit_gets_a_raise_once(
    tmp_path: Path, scoring: ScoringProcess, cluster: LocalCluster, profiles: dict[str, dict[str, float]]
) -> None:
    customer = open_line(cluster, drawn_fen=600_000)
    for _ in range(2):
        [raised] = run_job(tmp_path, "r1", [{"customer": customer, **profiles["recovered"]}], scoring, cluster)
        assert (raised["action"], raised["amount_fen"], raised["reasons"], raised["applied"]) == (
            "raise", 200_000, ["GOOD_BEHAVIOUR_HIGH_USE"], "OK",
        )  # fmt: skip
    assert view(cluster, customer) == LevelView(1_200_000, 600_000, 0, 600_000, False)
