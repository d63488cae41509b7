"""Behavioural limit management: score existing borrowers and act on their limits on the ledger.

`BehaviourJob.run(run_id, as_of, borrowers)` serves yunkai.risk.v1.BehaviourService.Assess
(risk/server.py): the batch job (`yunkai risk behaviour`, risk/cli.py) sends its book in
chunks under one run id, the per-event path one borrower under the event's id. A borrower's
features are their profile (what the bank knows from outside the ledger: tax, invoices,
court records, the owner's age; sent with the request) and their repayment features, read
from their loans on the lending server as of the run's business date (risk/repayment.py);
the profile may not carry a repayment feature (the records are the only source of those).

Protocol of a run, per borrower (the policy is the JDM table `risk/flows/BEHAVIOUR/<v>.json`,
evaluated by zen-engine, with the models it pins). One run at a time per customer (a lock
per customer, taken in order); the whole request is checked and read before anything is
written, so a refused request (malformed, or an upstream that did not answer) changes
nothing. One borrower's own problem fails nobody else: a customer without a credit line (not
a borrower: nothing to assess) or whose profile lacks a feature a model needs is answered
`NotAssessed` with the reason, nothing stored for them (a later call of the same run, with
the profile mended, assesses them), and the others are assessed:

1. If the run already assessed this borrower, its stored assessment is used as it is (no new
   scores, no new reading of the ledger): a rerun re-applies the same action, which the ledger
   answers as a replay. So a run is idempotent however often it is repeated or resumed. A
   rerun as of another date is refused (RunConflict): a run has one date.
2. Otherwise: read the customer's loans and compute the repayment features as of the date,
   score the borrower with the pinned models, read the customer's limit from the ledger
   (granted, used, available, frozen), evaluate the table -> action (freeze, unfreeze, raise,
   lower, warn, none), amount in fen, warning level, reason codes; store the call's new
   assessments (why, on what, by which flow) on the ledger before acting (risk/assessments.py:
   one commit per slot, replicated).
3. Apply the actions through lending/limits.py under the operation ids `bh-<run>-<customer>`
   (so a repeat is a replay, never a second action), and store the ledger's answers with
   them, with step 4's level and follow-up, the same way.
   `warn` and `none` change nothing on the ledger; the assessment and level are the record.
4. Hand the assessment to early warning (risk/early_warning.py): the customer's current
   level, and a follow-up call (amber) or visit (red), once per run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import zen

from clients.scoring import ScoringClient
from lending.limits import CUSTOMER_PATTERN, OK, BadLimitRequest, CreditLimits, LevelView, Outcome
from proto import lending_pb2
from risk import early_warning, repayment
from risk.assessments import AssessmentStore
from risk.locks import KeyedLocks

FLOWS_DIR = Path(__file__).resolve().parent / "flows" / "BEHAVIOUR"
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,16}")
ACTIONS = ("freeze", "unfreeze", "raise", "lower", "warn", "none")
LEVELS = ("green", "amber", "red")
BORROWERS_PER_CALL_MAX = 1_000  # one Assess call; the batch job sends its book in chunks
# An assessment stores the profile it used (a record of at most 64 KiB on the ledger): 256
# fields of up to 64 characters fit several times over.
PROFILE_FIELDS_MAX = 256
PROFILE_NAME_CHARS_MAX = 64
READS_IN_FLIGHT_MAX = 32  # loan histories (and limits) asked for at once, per call
SUPERSEDED = "SUPERSEDED"  # `applied` of an action a newer assessment made moot before it took effect

T = TypeVar("T")
LoansOf = Callable[[str], Awaitable[Sequence[lending_pb2.Loan]]]
"""A customer's loans (the lending server's ListLoans)."""


class BadBorrower(ValueError):
    """A borrower or the request is malformed; the message names the field (and the customer)."""


class RunConflict(Exception):
    """The run already assessed a borrower as of another date."""


class PolicyError(RuntimeError):
    """The behaviour table decided something outside its contract: a policy bug."""


@dataclass(frozen=True)
class Borrower:
    customer: str
    profile: dict[str, float]  # features from outside the ledger, by the models' names


@dataclass(frozen=True)
class NotAssessed:
    """A borrower the call left alone, and why (naming the field)."""

    customer: str
    reason: str
    no_credit_line: bool  # not a borrower: there was nothing to assess


@dataclass(frozen=True)
class Policy:
    version: int
    sha256: str
    models: tuple[tuple[str, int], ...]
    decision: Any  # the compiled zen.ZenDecision


def load_policy(version: int | None = None, root: Path = FLOWS_DIR) -> Policy:
    versions = sorted(int(p.stem) for p in root.glob("*.json") if p.stem.isdigit())
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise PolicyError(f"no behaviour policy version {chosen} (has {versions})")
    text = (root / f"{chosen}.json").read_text()
    meta = json.loads(text)["yunkai"]
    models = tuple((str(m["name"]), int(m["version"])) for m in meta["models"])
    return Policy(chosen, hashlib.sha256(text.encode()).hexdigest(), models, zen.ZenEngine().create_decision(text))


def table_input(scores: dict[str, float], view: LevelView) -> dict[str, Any]:
    """Everything the behaviour table reads."""
    return {
        "scores": dict(scores),
        "limit": {
            "granted_fen": view.granted,
            "used_fen": view.used,
            "available_fen": view.available,
            "frozen": view.frozen,
            "used_share": view.used / view.granted if view.granted else 0.0,
        },
    }


def decide(policy: Policy, context: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the table and check its output: {action, amount_fen, warning_level, reasons}."""
    result = policy.decision.evaluate(context)["result"]
    action, amount, level, reasons = (result.get(k) for k in ("action", "amount_fen", "warning_level", "reasons"))
    if action not in ACTIONS or level not in LEVELS:
        raise PolicyError(f"behaviour v{policy.version}: action {action!r}, level {level!r} on {context}")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise PolicyError(f"behaviour v{policy.version}: amount_fen {amount!r} is not a non-negative integer")
    if (action in ("raise", "lower")) != (amount > 0):
        raise PolicyError(f"behaviour v{policy.version}: {action} with amount {amount}")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise PolicyError(f"behaviour v{policy.version}: reasons {reasons!r}")
    return {"action": action, "amount_fen": amount, "warning_level": level, "reasons": reasons}


def check(run_id: str, borrowers: Sequence[Borrower]) -> None:
    """Refuse a malformed request (BadBorrower naming the field) before anything is read or written."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise BadBorrower(f"run_id: {run_id!r} is not 1-16 of A-Z a-z 0-9 . _ -")
    if not 1 <= len(borrowers) <= BORROWERS_PER_CALL_MAX:
        raise BadBorrower(f"borrowers: {len(borrowers)} in one call, 1 to {BORROWERS_PER_CALL_MAX} are accepted")
    if len({b.customer for b in borrowers}) != len(borrowers):
        raise BadBorrower("customer: a borrower appears twice in one call")
    for borrower in borrowers:
        if not CUSTOMER_PATTERN.fullmatch(borrower.customer):
            raise BadBorrower(f"customer: {borrower.customer!r} is not 1-20 letters and digits")
        if len(borrower.profile) > PROFILE_FIELDS_MAX:
            raise BadBorrower(
                f"profile: {len(borrower.profile)} fields for {borrower.customer}, more than {PROFILE_FIELDS_MAX}"
            )
        for name, value in borrower.profile.items():
            if len(name) > PROFILE_NAME_CHARS_MAX:
                raise BadBorrower(f"profile: a field name of {len(name)} characters (customer {borrower.customer})")
            if name in repayment.FEATURES:
                raise BadBorrower(
                    f"{name}: read from {borrower.customer}'s repayment records, not given in the profile"
                )
            if not math.isfinite(value):
                raise BadBorrower(f"{name}: {value!r} is not a finite number (customer {borrower.customer})")


async def _all(work: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Await all; on the first failure cancel the rest and raise that failure (not a group)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(w) for w in work]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


class BehaviourJob:
    """One policy applied to borrowers, run by run (the module's protocol)."""

    def __init__(
        self, scoring: ScoringClient, limits: CreditLimits, loans_of: LoansOf, store: AssessmentStore, policy: Policy
    ) -> None:
        self.scoring = scoring
        self.limits = limits
        self.loans_of = loans_of
        self.store = store
        self.policy = policy
        self.locks = KeyedLocks()

    async def run(
        self, run_id: str, as_of: date, borrowers: Sequence[Borrower]
    ) -> tuple[list[dict[str, Any]], list[NotAssessed]]:
        """Assess and act on each borrower once per run: the records of those assessed, and
        those not assessed with why, each in the borrowers' order."""
        check(run_id, borrowers)
        async with AsyncExitStack() as held:
            for customer in sorted(b.customer for b in borrowers):  # in order: two calls never deadlock
                await held.enter_async_context(self.locks.hold(customer))
            return await self._run(run_id, as_of, borrowers)

    async def _run(
        self, run_id: str, as_of: date, borrowers: Sequence[Borrower]
    ) -> tuple[list[dict[str, Any]], list[NotAssessed]]:
        day = as_of.isoformat()
        run = await self.store.get(f"r/{run_id}")
        if run is not None and run["date"] != day:
            raise RunConflict(f"run_id: {run_id} is a run as of {run['date']}, not {day}")
        records: dict[str, dict[str, Any]] = {}
        found = await self.store.get_many([f"a/{run_id}/{b.customer}" for b in borrowers])
        for borrower, stored in zip(borrowers, found, strict=True):
            if stored is not None:
                # Records written before runs kept their date (the file-fed job) have none.
                if stored.get("date", day) != day:
                    raise RunConflict(
                        f"run_id: {run_id} assessed {borrower.customer} as of {stored['date']}, not {day}"
                    )
                records[borrower.customer] = stored
        new = [b for b in borrowers if b.customer not in records]
        # Read and decide everything first: a refusal (an upstream that does not answer, a policy
        # error) changes nothing, and the other reads of the call are cancelled.
        reading = asyncio.Semaphore(READS_IN_FLIGHT_MAX)

        async def loans_of(customer: str) -> Sequence[lending_pb2.Loan]:
            async with reading:
                return await self.loans_of(customer)

        async def view(customer: str) -> LevelView | None:
            async with reading:
                return await self._view(customer)

        skipped: dict[str, NotAssessed] = {}
        lines: dict[str, LevelView] = {}
        for borrower, line in zip(new, await _all(view(b.customer) for b in new), strict=True):
            if line is None:
                reason = f"customer: {borrower.customer} has no credit line"
                skipped[borrower.customer] = NotAssessed(borrower.customer, reason, no_credit_line=True)
            else:
                lines[borrower.customer] = line
        new = [b for b in new if b.customer in lines]
        histories = await _all(loans_of(b.customer) for b in new)
        everything = []
        for borrower, history in zip(new, histories, strict=True):
            try:
                derived_one = repayment.features(history, as_of)
            except repayment.BadHistory as error:  # lending's loans do not add up: this borrower only
                reason = f"loans: {borrower.customer}'s from the lending server: {error}"
                skipped[borrower.customer] = NotAssessed(borrower.customer, reason, no_credit_line=False)
                continue
            everything.append((borrower, derived_one, borrower.profile | derived_one))
        for borrower, _, row in everything:
            missing = await self._missing(row)
            if missing:
                reason = f"{missing[1]}: missing from {borrower.customer}'s profile (model {missing[0]})"
                skipped[borrower.customer] = NotAssessed(borrower.customer, reason, no_credit_line=False)
        kept = [each for each in everything if each[0].customer not in skipped]
        new = [b for b, _, _ in kept]
        derived, features = [d for _, d, _ in kept], [row for _, _, row in kept]
        views = [lines[b.customer] for b in new]
        scores = await self._score(new, features)
        assessed: dict[str, dict[str, Any]] = {}
        if run is None:
            assessed[f"r/{run_id}"] = {"run_id": run_id, "date": day}
        for borrower, used, from_records, borrower_scores, view_of in zip(
            new, features, derived, scores, views, strict=True
        ):
            context = table_input(borrower_scores, view_of)
            assessed[f"a/{run_id}/{borrower.customer}"] = records[borrower.customer] = {
                "run_id": run_id,
                "customer": borrower.customer,
                "date": day,
                "policy_version": self.policy.version,
                "policy_sha256": self.policy.sha256,
                "models": [list(m) for m in self.policy.models],
                "features": used,
                "repayment_features": sorted(from_records),
                "input": context,
                **decide(self.policy, context),
                "applied": None,
                "assessed_at_unix_ms": early_warning.now_ms(),
            }
        # Why, before acting: stored durably, one commit per slot (a Conflict, another risk server
        # assessing the same customers at once, leaves this call to be repeated; a repeat reuses
        # what was stored and applies each action once, by its op id).
        await self.store.write(assessed)
        ordered = [records[b.customer] for b in borrowers if b.customer in records]
        outcomes = await asyncio.gather(*(self._apply(record) for record in ordered), return_exceptions=True)
        done: dict[str, dict[str, Any]] = {}
        for record, outcome in zip(ordered, outcomes, strict=True):
            if isinstance(outcome, Outcome | str):
                record["applied"] = outcome if isinstance(outcome, str) else outcome.code.name
                done[f"a/{run_id}/{record['customer']}"] = record
                if record["applied"] != SUPERSEDED:  # a superseded assessment is history, not the level
                    done |= await early_warning.updates(self.store, record)
        await self.store.write(done)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:  # the ledger did not answer: a repeat of the call applies the rest
            raise next((o for o in failed if not isinstance(o, asyncio.CancelledError)), failed[0])
        return ordered, [skipped[b.customer] for b in borrowers if b.customer in skipped]

    async def _view(self, customer: str) -> LevelView | None:
        """The customer's limit, or None without a credit line (no limit accounts)."""
        try:
            return await self.limits.view(customer)
        except BadLimitRequest:
            return None

    async def _missing(self, row: dict[str, float]) -> tuple[str, str] | None:
        """(model, feature) of the first feature a pinned model needs that `row` lacks, or None."""
        for name, version in self.policy.models:
            missing = [n for n in await self.scoring.features_of(name, version) if n not in row]
            if missing:
                return name, missing[0]
        return None

    async def _score(self, borrowers: list[Borrower], features: list[dict[str, float]]) -> list[dict[str, float]]:
        if not borrowers:
            return []
        per_model = []
        for name, version in self.policy.models:
            names = await self.scoring.features_of(name, version)
            per_model.append(await self.scoring.score(name, [{n: row[n] for n in names} for row in features], version))
        return [
            {name: per_model[m][i] for m, (name, _) in enumerate(self.policy.models)} for i in range(len(borrowers))
        ]

    async def _apply(self, record: dict[str, Any]) -> Outcome | str:
        """Apply the record's action (a replay if it was applied before); SUPERSEDED instead when
        it never took effect and a newer assessment of the customer has been made since: an old
        run resumed late must not act against what a newer run decided."""
        customer, action, amount = record["customer"], record["action"], record["amount_fen"]
        if record["applied"] != "OK":
            current = await self.store.get(f"w/{customer}")
            if (
                current is not None
                and current["run_id"] != record["run_id"]
                and current["assessed_at_unix_ms"] > record["assessed_at_unix_ms"]
            ):
                return SUPERSEDED
        op = f"bh-{record['run_id']}-{customer}"
        if action == "freeze":
            return await self.limits.freeze(customer, None, op)
        if action == "unfreeze":
            return await self.limits.freeze(customer, None, op, frozen=False)
        if action == "raise":
            return await self.limits.raise_limit(customer, None, amount, op)
        if action == "lower":
            return await self.limits.lower_limit(customer, None, amount, op)
        return OK  # warn, none: the stored assessment is the whole action
