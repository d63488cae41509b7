"""Early warning: each borrower's current warning level, a follow-up queue, and coverage.

- Level: every assessment of the behaviour job (risk/behaviour.py) becomes the customer's
  current level (green, amber, red) with when and why; a newer assessment replaces it.
- Follow-ups: an amber assessment opens a call, a red one a visit, one task per run and
  customer (`<run>/<customer>`: a rerun opens nothing new). A task is open until its outcome
  is recorded; an outcome, once recorded, is final (recording the same again is a no-op;
  another is refused), so the queue is an audit trail of who was contacted and what was found.
- Coverage: of a book of borrowers, the share whose current assessment is younger than a
  maximum age, and how they split by level. Borrowers never assessed count against it.

Served by yunkai.risk.v1.BehaviourService (risk/server.py): ListFollowUps,
RecordFollowUpOutcome, GetCoverage; `yunkai risk followups | followup-outcome | coverage`
(risk/cli.py) call them.
"""

from __future__ import annotations

import re
import time
from typing import Any

from risk.assessments import VERSION, AssessmentStore

KINDS = {"amber": "call", "red": "visit"}
OUTCOME_PATTERN = re.compile(r"[a-z][a-z_]{0,31}")
TASK_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,16}/[A-Za-z0-9]{1,20}")  # <run id>/<customer>
NOTE_CHARS_MAX = 500
MAX_AGE_DAYS_DEFAULT = 30
DAY_MS = 86_400_000


class FollowUpRefused(ValueError):
    """The outcome cannot be recorded; the message says why (naming the field)."""


class TaskNotFound(FollowUpRefused):
    """No follow-up under that task."""


class OutcomeFinal(FollowUpRefused):
    """The follow-up already has another outcome."""


def now_ms() -> int:
    return int(time.time() * 1000)


async def updates(store: AssessmentStore, assessment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The writes that make `assessment` the customer's current level (if newer) and open its
    follow-up (once): key -> record, for the caller to store (with the assessment)."""
    customer, run_id = assessment["customer"], assessment["run_id"]
    writes: dict[str, dict[str, Any]] = {}
    level_key = f"w/{customer}"
    task_key = f"t/{run_id}/{customer}"
    current, task = await store.get_many([level_key, task_key])
    if current is None or current["assessed_at_unix_ms"] <= assessment["assessed_at_unix_ms"]:
        writes[level_key] = {
            **({VERSION: current[VERSION]} if current is not None else {}),
            "customer": customer,
            "level": assessment["warning_level"],
            "reasons": assessment["reasons"],
            "run_id": run_id,
            "assessed_at_unix_ms": assessment["assessed_at_unix_ms"],
        }
    kind = KINDS.get(assessment["warning_level"])
    if kind is not None and task is None:
        writes[task_key] = {
            "task": f"{run_id}/{customer}",
            "customer": customer,
            "kind": kind,
            "level": assessment["warning_level"],
            "reasons": assessment["reasons"],
            "opened_at_unix_ms": assessment["assessed_at_unix_ms"],
            "outcome": None,
            "note": "",
            "closed_at_unix_ms": None,
        }
    return writes


async def open_tasks(store: AssessmentStore, kind: str | None = None) -> list[dict[str, Any]]:
    """Open follow-ups, visits (red) before calls (amber), oldest first."""
    tasks = [t async for t in store.tasks() if t["outcome"] is None and (kind is None or t["kind"] == kind)]
    return sorted(tasks, key=lambda t: (t["kind"] != "visit", t["opened_at_unix_ms"], t["task"]))


async def record_outcome(store: AssessmentStore, task: str, outcome: str, note: str = "") -> dict[str, Any]:
    """Close a follow-up with what was found; final once recorded."""
    if not OUTCOME_PATTERN.fullmatch(outcome):
        raise FollowUpRefused(f"outcome: {outcome!r} is not a lower_case code of up to 32 characters")
    if len(note) > NOTE_CHARS_MAX:
        raise FollowUpRefused(f"note: longer than {NOTE_CHARS_MAX} characters")
    record = await store.get(f"t/{task}") if TASK_PATTERN.fullmatch(task) else None
    if record is None:
        raise TaskNotFound(f"task: no follow-up {task!r}")
    if record["outcome"] is not None:
        if (record["outcome"], record["note"]) == (outcome, note):
            return record  # a repeat
        raise OutcomeFinal(f"task: {task} already has the outcome {record['outcome']!r}")
    record.update(outcome=outcome, note=note, closed_at_unix_ms=now_ms())
    await store.put(f"t/{task}", record)  # Conflict if another server closed it meanwhile: ask again
    return record


async def coverage(store: AssessmentStore, customers: list[str], as_of_ms: int, max_age_ms: int) -> dict[str, Any]:
    """Share of `customers` with a current assessment (younger than max_age_ms at as_of_ms)."""
    by_level = {"green": 0, "amber": 0, "red": 0}
    current = 0
    for level in await store.get_many([f"w/{customer}" for customer in customers]):
        if level is not None and as_of_ms - level["assessed_at_unix_ms"] < max_age_ms:
            current += 1
            by_level[level["level"]] += 1
    return {
        "borrowers": len(customers),
        "assessed_current": current,
        "coverage": current / len(customers) if customers else 0.0,
        "by_level": by_level,
        "max_age_days": max_age_ms / DAY_MS,
    }
