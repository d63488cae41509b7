"""Behavioural limit management: score existing borrowers and act on their limits on the ledger.

`yunkai risk behaviour --run-id R --borrowers FILE.jsonl --scoring A --router A --data-dir D`
(the batch job), and `BehaviourJob.run(event_id, [borrower])` (the per-event path: one
borrower, the event's id as the run id). Until the loan layer keeps repayment records on the
ledger (issue 7), a borrower's behavioural features come in the borrowers file, one JSON
object a line: {"customer": "...", <early_warning and repayment_willingness features>}.

Protocol of a run, per borrower (the policy is the JDM table `risk/flows/BEHAVIOUR/<v>.json`,
evaluated by zen-engine, with the models it pins):

1. If the run already assessed this borrower, its stored assessment is used as it is (no new
   scores, no new reading of the ledger): a rerun re-applies the same action, which the ledger
   answers as a replay. So a run is idempotent however often it is repeated or resumed.
2. Otherwise: score the borrower with the pinned models, read the customer's limit from the
   ledger (granted, used, available, frozen), evaluate the table -> action (freeze, unfreeze,
   raise, lower, warn, none), amount in fen, warning level, reason codes; store the
   assessment (why, on what, by which flow) before acting.
3. Apply the action through lending/limits.py under the operation id `bh-<run>-<customer>`
   (so a repeat is a replay, never a second action), and store the ledger's answer with it.
   `warn` and `none` change nothing on the ledger; the assessment and level are the record.
4. Hand the assessment to early warning (risk/early_warning.py): the customer's current
   level, and a follow-up call (amber) or visit (red), once per run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zen

from clients.ledger import LedgerClient
from clients.scoring import ScoringClient
from lending.limits import CUSTOMER_PATTERN, OK, BadLimitRequest, CreditLimits, LevelView, Outcome
from proto import serving
from risk import early_warning
from risk.assessments import AssessmentStore

FLOWS_DIR = Path(__file__).resolve().parent / "flows" / "BEHAVIOUR"
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,16}")
ACTIONS = ("freeze", "unfreeze", "raise", "lower", "warn", "none")
LEVELS = ("green", "amber", "red")
BORROWERS_MAX = 100_000  # one run's file: fail fast on anything bigger, it is not one run
CURRENCY_LEDGER_CNY = 156


class BadBorrower(ValueError):
    """A borrower line is malformed; the message names the line and the field."""


class PolicyError(RuntimeError):
    """The behaviour table decided something outside its contract: a policy bug."""


@dataclass(frozen=True)
class Borrower:
    customer: str
    features: dict[str, float]


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


class BehaviourJob:
    """One policy applied to borrowers, run by run."""

    def __init__(self, scoring: ScoringClient, limits: CreditLimits, store: AssessmentStore, policy: Policy) -> None:
        self.scoring = scoring
        self.limits = limits
        self.store = store
        self.policy = policy

    async def run(self, run_id: str, borrowers: list[Borrower]) -> list[dict[str, Any]]:
        """Assess and act on each borrower once per run (the module's protocol); the records, in order."""
        if not RUN_ID_PATTERN.fullmatch(run_id):
            raise BadBorrower(f"run_id: {run_id!r} is not 1-16 of A-Z a-z 0-9 . _ -")
        if len({b.customer for b in borrowers}) != len(borrowers):
            raise BadBorrower("customer: a borrower appears twice in one run")
        records: dict[str, dict[str, Any]] = {}
        for borrower in borrowers:
            stored = self.store.get(f"a/{run_id}/{borrower.customer}")
            if stored is not None:
                records[borrower.customer] = stored
        new = [b for b in borrowers if b.customer not in records]
        scores = await self._score(new)
        for borrower, borrower_scores in zip(new, scores, strict=True):
            try:
                view = await self.limits.view(borrower.customer)
            except BadLimitRequest:
                raise BadBorrower(f"customer: {borrower.customer} has no credit line") from None
            context = table_input(borrower_scores, view)
            record = {
                "run_id": run_id,
                "customer": borrower.customer,
                "policy_version": self.policy.version,
                "policy_sha256": self.policy.sha256,
                "models": [list(m) for m in self.policy.models],
                "input": context,
                **decide(self.policy, context),
                "applied": None,
                "assessed_at_unix_ms": early_warning.now_ms(),
            }
            self.store.put(f"a/{run_id}/{borrower.customer}", record)  # why, before acting
            records[borrower.customer] = record
        for borrower in borrowers:
            record = records[borrower.customer]
            record["applied"] = (await self._apply(record)).code.name
            self.store.put(f"a/{run_id}/{borrower.customer}", record)
            early_warning.note_assessment(self.store, record)
        return [records[b.customer] for b in borrowers]

    async def _score(self, borrowers: list[Borrower]) -> list[dict[str, float]]:
        if not borrowers:
            return []
        per_model = []
        for name, version in self.policy.models:
            names = await self.scoring.features_of(name, version)
            for borrower in borrowers:
                missing = [n for n in names if n not in borrower.features]
                if missing:
                    raise BadBorrower(f"{missing[0]}: missing for customer {borrower.customer} (model {name})")
            rows = [{n: b.features[n] for n in names} for b in borrowers]
            per_model.append(await self.scoring.score(name, rows, version))
        return [
            {name: per_model[m][i] for m, (name, _) in enumerate(self.policy.models)} for i in range(len(borrowers))
        ]

    async def _apply(self, record: dict[str, Any]) -> Outcome:
        customer, action, amount = record["customer"], record["action"], record["amount_fen"]
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


def read_borrowers(path: Path) -> list[Borrower]:
    borrowers: list[Borrower] = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if len(borrowers) >= BORROWERS_MAX:
                raise BadBorrower(f"{path}: more than {BORROWERS_MAX} borrowers in one run")
            try:
                item = json.loads(line)
            except ValueError as error:
                raise BadBorrower(f"{path}:{number}: not JSON: {error}") from None
            customer = item.pop("customer", None) if isinstance(item, dict) else None
            if not isinstance(customer, str) or not CUSTOMER_PATTERN.fullmatch(customer):
                raise BadBorrower(f"{path}:{number}: customer: {customer!r} is not 1-20 letters and digits")
            features = {}
            for name, value in item.items():
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise BadBorrower(f"{path}:{number}: {name}: {value!r} is not a finite number")
                features[name] = float(value)
            borrowers.append(Borrower(customer, features))
    return borrowers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", required=True, help="the run's id: a rerun with the same id changes nothing")
    parser.add_argument("--borrowers", type=Path, required=True, help="JSON lines: customer and features")
    parser.add_argument("--scoring", required=True, help="HOST:PORT of yunkai scoring serve")
    parser.add_argument("--router", required=True, help="HOST:PORT of the ledger's router")
    parser.add_argument("--data-dir", required=True, help="directory of the assessments' RocksDB")
    parser.add_argument("--policy-version", type=int, help="behaviour policy version (default: the newest)")
    parser.add_argument("--tls-ca", help="PEM root certificates: call the services over TLS, trusting these roots")


def main(args: argparse.Namespace) -> int:
    try:
        borrowers = read_borrowers(args.borrowers)
        policy = load_policy(args.policy_version)
    except (BadBorrower, PolicyError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    async def run() -> list[dict[str, Any]]:
        store = AssessmentStore(args.data_dir)
        try:
            credentials = serving.client_credentials(args.tls_ca)
            async with (
                ScoringClient(args.scoring, credentials=credentials) as scoring,
                await LedgerClient.connect(args.router, tls_ca=args.tls_ca) as ledger,
            ):
                job = BehaviourJob(scoring, CreditLimits(ledger, CURRENCY_LEDGER_CNY), store, policy)
                return await job.run(args.run_id, borrowers)
        finally:
            store.close()

    try:
        records = asyncio.run(run())
    except BadBorrower as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for record in records:
        print(json.dumps(record, sort_keys=True))
    return 0
