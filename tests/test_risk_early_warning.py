"""Early warning on a real store (a book's records on a router and two ledger nodes): current
levels, the follow-up queue with its outcomes, and coverage of a book of borrowers. Each test
has a book of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from clients.ledger import LedgerClient
from clients.records import Conflict, Records
from cluster.commands import LocalCluster
from risk import early_warning as ew
from risk.assessments import AssessmentStore
from tests.conftest import fresh_book

DAY = ew.DAY_MS


def on_ledger(cluster: LocalCluster, scenario: Callable[[AssessmentStore], Awaitable[None]]) -> None:
    """Run `scenario` over an assessments' store of a new book, as the risk server would."""

    async def run() -> None:
        async with await LedgerClient.connect(cluster.address, tls_name="risk") as ledger:
            await scenario(AssessmentStore(Records(ledger, fresh_book())))

    asyncio.run(run())


async def note(store: AssessmentStore, made: dict[str, Any]) -> None:
    """What the behaviour job does with an assessment: its level and follow-up, stored together."""
    await store.write(await ew.updates(store, made))


def assessment(run_id: str, customer: str, level: str, at_ms: int, *reasons: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "customer": customer,
        "warning_level": level,
        "reasons": list(reasons),
        "assessed_at_unix_ms": at_ms,
    }


def test_amber_opens_a_call_red_a_visit_green_nothing_and_a_rerun_opens_nothing_new(cluster: LocalCluster) -> None:
    async def scenario(store: AssessmentStore) -> None:
        for _ in range(2):
            await note(store, assessment("r1", "c1", "amber", 1_000, "EARLY_WARNING_ELEVATED"))
            await note(store, assessment("r1", "c2", "red", 2_000, "EARLY_WARNING_HIGH"))
            await note(store, assessment("r1", "c3", "green", 3_000))
        queue = await ew.open_tasks(store)
        assert [(t["task"], t["kind"], t["reasons"]) for t in queue] == [
            ("r1/c2", "visit", ["EARLY_WARNING_HIGH"]),
            ("r1/c1", "call", ["EARLY_WARNING_ELEVATED"]),
        ]
        assert [t["task"] for t in await ew.open_tasks(store, "call")] == ["r1/c1"]

    on_ledger(cluster, scenario)


def test_an_outcome_closes_a_follow_up_for_good(cluster: LocalCluster) -> None:
    async def scenario(store: AssessmentStore) -> None:
        await note(store, assessment("r1", "c1", "amber", 1_000))
        closed = await ew.record_outcome(store, "r1/c1", "promised_to_pay", "will pay Friday")
        assert (closed["outcome"], closed["note"]) == ("promised_to_pay", "will pay Friday")
        again = await ew.record_outcome(store, "r1/c1", "promised_to_pay", "will pay Friday")  # a repeat
        assert {k: v for k, v in again.items() if k != "_version"} == {
            k: v for k, v in closed.items() if k != "_version"
        }
        with pytest.raises(ew.FollowUpRefused, match="already has the outcome"):
            await ew.record_outcome(store, "r1/c1", "not_reached")
        with pytest.raises(ew.FollowUpRefused, match=r"^outcome: "):
            await ew.record_outcome(store, "r1/c1", "Not Reached!")
        with pytest.raises(ew.FollowUpRefused, match=r"^task: no follow-up"):
            await ew.record_outcome(store, "r9/c1", "not_reached")
        with pytest.raises(ew.FollowUpRefused, match=r"^task: no follow-up"):
            await ew.record_outcome(store, "not a task", "not_reached")
        assert await ew.open_tasks(store) == []
        # The next run's amber opens a new call: each run's warning is followed up.
        await note(store, assessment("r2", "c1", "amber", 5_000))
        assert [t["task"] for t in await ew.open_tasks(store)] == ["r2/c1"]

    on_ledger(cluster, scenario)


def test_the_newest_assessment_is_the_current_level(cluster: LocalCluster) -> None:
    async def scenario(store: AssessmentStore) -> None:
        await note(store, assessment("r2", "c1", "green", 2 * DAY))
        await note(store, assessment("r1", "c1", "red", 1 * DAY))  # an old run, resumed late
        current = await store.get("w/c1")
        assert current is not None and current["level"] == "green"

    on_ledger(cluster, scenario)


def test_coverage_counts_borrowers_with_a_current_assessment(cluster: LocalCluster) -> None:
    async def scenario(store: AssessmentStore) -> None:
        await note(store, assessment("r1", "c1", "green", 10 * DAY))
        await note(store, assessment("r1", "c2", "red", 39 * DAY))
        await note(store, assessment("r1", "c3", "amber", 40 * DAY))
        book = ["c1", "c2", "c3", "c4"]  # c4 never assessed; c1's assessment is 30 days old at day 40
        assert await ew.coverage(store, book, 40 * DAY, 30 * DAY) == {
            "borrowers": 4,
            "assessed_current": 2,
            "coverage": 0.5,
            "by_level": {"green": 0, "amber": 1, "red": 1},
            "max_age_days": 30.0,
        }
        assert (await ew.coverage(store, [], 40 * DAY, 30 * DAY))["coverage"] == 0.0

    on_ledger(cluster, scenario)


def test_a_write_overtaken_by_another_servers_is_refused(cluster: LocalCluster) -> None:
    async def scenario(store: AssessmentStore) -> None:
        await note(store, assessment("r1", "c1", "amber", 1_000))
        mine, theirs = await store.get("t/r1/c1"), await store.get("t/r1/c1")
        assert mine is not None and theirs is not None
        theirs["note"] = "first"
        await store.put("t/r1/c1", theirs)
        mine["note"] = "second"
        with pytest.raises(Conflict):
            await store.put("t/r1/c1", mine)
        stored = await store.get("t/r1/c1")
        assert stored is not None and stored["note"] == "first"

    on_ledger(cluster, scenario)
