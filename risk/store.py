"""The decision log: every decision, durably, with what it was decided on, on the ledger's nodes.

Each decision is two slot-local records (node/records.py, through clients/records.py) under
the key `app:<application_id>`, in that key's slot: kind "decision", the Decision (inputs,
model versions and scores, flow version and hash, outputs), and kind "request", the
DecideRequest it answered, so a repeated request can be told from a different one under the
same id. Both are one commit, replicated to the slot's followers before the caller is
answered; a decision is rewritten only to mark its credit line opened. Records are checked
after they are read (the key says whose they are).

No risk server holds the log: several serve one (each decision's commit names version 0,
so of two servers deciding one application at once, the second finds the first's decision
and answers as for a repeat). Concurrent decisions share the nodes' group commits (the SDK
coalesces commits to one node into one request).
"""

from __future__ import annotations

from datetime import UTC, datetime

from clients.records import Conflict, Put, Records
from proto import risk_pb2 as pb


class DecisionLogDamaged(RuntimeError):
    """A stored record is not where its key says, or half of a decision is missing."""


def _key(application_id: str) -> str:
    return f"app:{application_id}"


class DecisionStore:
    """Stored decisions by application id, over a set of records on the ledger."""

    def __init__(self, records: Records) -> None:
        self._records = records

    async def get(self, application_id: str) -> tuple[pb.DecideRequest, pb.Decision] | None:
        held = await self._get(application_id)
        return None if held is None else (held[0], held[1])

    async def _get(self, application_id: str) -> tuple[pb.DecideRequest, pb.Decision, int] | None:
        key = _key(application_id)
        decision_record, request_record = await self._records.read([("decision", key), ("request", key)])
        if decision_record is None:
            return None
        if request_record is None:
            raise DecisionLogDamaged(f"decision {application_id} has no request")
        decision = pb.Decision.FromString(decision_record.value)
        request = pb.DecideRequest.FromString(request_record.value)
        if not decision.application_id == request.application_id == application_id:
            raise DecisionLogDamaged(f"the records under {key} are of {decision.application_id}")
        return request, decision, decision_record.version

    async def put(self, request: pb.DecideRequest, decision: pb.Decision) -> None:
        """Store a new decision durably; Conflict if the application was decided meanwhile."""
        assert request.application_id == decision.application_id
        key = _key(decision.application_id)
        await self._records.commit([Put("decision", key, decision, 0), Put("request", key, request, 0)])

    async def mark_opened(self, decision: pb.Decision, line_id: str, version: int = 0) -> None:
        """Record that the decision's credit line is open (`decision` is changed to say so);
        `version`: the stored decision's, if the caller knows it is `decision` (it just stored
        it), which saves reading it first."""
        for attempt in range(3):
            if attempt == 0 and version:
                stored = pb.Decision()
                stored.CopyFrom(decision)
            else:
                held = await self._get(decision.application_id)
                if held is None:
                    raise DecisionLogDamaged(f"decision {decision.application_id} is not stored")
                _request, stored, version = held
            if stored.credit_line_opened:
                break
            stored.credit_line_opened = True
            stored.credit_line_id = line_id
            try:
                await self._records.commit([Put("decision", _key(decision.application_id), stored, version)])
                break
            except Conflict:
                continue  # another risk server marked or changed it: read again
        else:
            raise Conflict(f"decision {decision.application_id} kept changing under its marking; retry")
        decision.credit_line_opened = True
        decision.credit_line_id = line_id

    async def report(self, date_from: str, date_to: str) -> list[pb.ProductDecisions]:
        """Decisions counted per product and outcome, decided between the two UTC dates
        (YYYY-MM-DD, inclusive; "" for no bound): a scan of every slot's decisions."""
        counts: dict[str, pb.ProductDecisions] = {}
        async for page in self._records.scan("decision"):
            for record in page:
                decision = pb.Decision.FromString(record.value)
                day = datetime.fromtimestamp(decision.decided_at_unix_ms / 1000, UTC).date().isoformat()
                if (date_from and day < date_from) or (date_to and day > date_to):
                    continue
                counted = counts.setdefault(decision.product, pb.ProductDecisions(product=decision.product))
                counted.decided += 1
                if decision.outcome == pb.APPROVE:
                    counted.approved += 1
                    counted.limits_approved += decision.limit_fen
                    counted.lines_opened += decision.credit_line_opened
                elif decision.outcome == pb.DECLINE:
                    counted.declined += 1
                else:
                    counted.referred += 1
        return [counts[product] for product in sorted(counts)]
