"""Early warning on a real store (RocksDB in a temporary folder): current levels, the follow-up
queue with its outcomes, and coverage of a book of borrowers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from risk import early_warning as ew
from risk.assessments import AssessmentStore

DAY = ew.DAY_MS


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AssessmentStore]:
    opened = AssessmentStore(str(tmp_path))
    yield opened
    opened.close()


def note(store: AssessmentStore, made: dict[str, Any]) -> None:
    """What the behaviour job does with an assessment: its level and follow-up, in one batch."""
    asyncio.run(store.write(ew.updates(store, made)))


def assessment(run_id: str, customer: str, level: str, at_ms: int, *reasons: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "customer": customer,
        "warning_level": level,
        "reasons": list(reasons),
        "assessed_at_unix_ms": at_ms,
    }


def test_amber_opens_a_call_red_a_visit_green_nothing_and_a_rerun_opens_nothing_new(store: AssessmentStore) -> None:
    for _ in range(2):
        note(store, assessment("r1", "c1", "amber", 1_000, "EARLY_WARNING_ELEVATED"))
        note(store, assessment("r1", "c2", "red", 2_000, "EARLY_WARNING_HIGH"))
        note(store, assessment("r1", "c3", "green", 3_000))
    queue = ew.open_tasks(store)
    assert [(t["task"], t["kind"], t["reasons"]) for t in queue] == [
        ("r1/c2", "visit", ["EARLY_WARNING_HIGH"]),
        ("r1/c1", "call", ["EARLY_WARNING_ELEVATED"]),
    ]
    assert [t["task"] for t in ew.open_tasks(store, "call")] == ["r1/c1"]


def test_an_outcome_closes_a_follow_up_for_good(store: AssessmentStore) -> None:
    note(store, assessment("r1", "c1", "amber", 1_000))
    closed = ew.record_outcome(store, "r1/c1", "promised_to_pay", "will pay Friday")
    assert (closed["outcome"], closed["note"]) == ("promised_to_pay", "will pay Friday")
    assert ew.record_outcome(store, "r1/c1", "promised_to_pay", "will pay Friday") == closed  # a repeat
    with pytest.raises(ew.FollowUpRefused, match="already has the outcome"):
        ew.record_outcome(store, "r1/c1", "not_reached")
    with pytest.raises(ew.FollowUpRefused, match=r"^outcome: "):
        ew.record_outcome(store, "r1/c1", "Not Reached!")
    with pytest.raises(ew.FollowUpRefused, match=r"^task: no follow-up"):
        ew.record_outcome(store, "r9/c1", "not_reached")
    assert ew.open_tasks(store) == []
    # The next run's amber opens a new call: each run's warning is followed up.
    note(store, assessment("r2", "c1", "amber", 5_000))
    assert [t["task"] for t in ew.open_tasks(store)] == ["r2/c1"]


def test_the_newest_assessment_is_the_current_level(store: AssessmentStore) -> None:
    note(store, assessment("r2", "c1", "green", 2 * DAY))
    note(store, assessment("r1", "c1", "red", 1 * DAY))  # an old run, resumed late
    assert store.get("w/c1") is not None and store.get("w/c1")["level"] == "green"  # type: ignore[index]


def test_coverage_counts_borrowers_with_a_current_assessment(store: AssessmentStore) -> None:
    note(store, assessment("r1", "c1", "green", 10 * DAY))
    note(store, assessment("r1", "c2", "red", 39 * DAY))
    note(store, assessment("r1", "c3", "amber", 40 * DAY))
    book = ["c1", "c2", "c3", "c4"]  # c4 never assessed; c1's assessment is 30 days old at day 40
    assert ew.coverage(store, book, 40 * DAY, 30 * DAY) == {
        "borrowers": 4,
        "assessed_current": 2,
        "coverage": 0.5,
        "by_level": {"green": 0, "amber": 1, "red": 1},
        "max_age_days": 30.0,
    }
    assert ew.coverage(store, [], 40 * DAY, 30 * DAY)["coverage"] == 0.0
