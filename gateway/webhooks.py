"""Signed webhooks: a partner's events, delivered to each of its apps' URLs, retried, and logged.

Events (EVENT_TYPES) are the gateway's records in the partner's slot, one per event, keyed by
when they happened: `{p<pid>}:ev:<created ms, 13 digits>:<hash of the event id>`. The event id derives
from what happened (`drawdown.<loan>`, `overdue.<loan>.<bucket>`, ...), so an event is
emitted once however many processes see it (the record is committed expecting none).

  emit       decision, drawdown and repayment: by the route that made them, once it has
             succeeded. overdue, freeze and unfreeze: by the watcher, which every
             WATCH_EVERY_S reads the partner's open loans (GetLoan: its overdue bucket) and its
             customers' credit lines (frozen or not) and emits on a change from what its
             record of the loan or customer says (that record updated in the same commit).
  deliver    To every app of the partner with a webhook URL when the event was emitted: a
             POST of the event's JSON with `Yunkai-Signature: t=<unix s>,v1=<hex>`, the
             HMAC-SHA256 of "<t>.<body>" under the app's signing secret (the scheme Stripe
             documents for its webhooks). A 2xx answer is delivered; anything else, or no
             answer within DELIVERY_TIMEOUT_S, is tried again after 1, 2, 4, ... s (at most
             BACKOFF_S_MAX) until ATTEMPTS_MAX, then failed. Each attempt is recorded in the
             event's record (attempts, the last answer, when next), which is the partner's
             delivery log (GET /v1/events).
  lease      A process about to deliver an event commits its lease on it first (the record's
             version): one process delivers each attempt; a process that dies holding it
             leaves it to another after LEASE_S. Each lease carries a token of its own: the
             SDK takes a commit refused for its versions as its own when the record holds
             exactly what it wrote (a first attempt applied but unanswered), so two processes
             leasing one event in the same millisecond wrote the same bytes and both
             delivered. Delivery is at least once: a receiver dedups by the event id.
  secret     An app's signing secret is HMAC-SHA256(token key, "webhook:<client id>:<version>"):
             every gateway process of the deployment derives it, none stores it, and
             SetWebhook's new version retires the old one (a new token key changes
             every app's: docs/operations.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from clients.records import Conflict, Put, Records
from gateway.registry import Registry, partner_tag

log = logging.getLogger("yunkai.gateway.webhooks")
logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per delivery: the event's record keeps it

EVENT_TYPES = ("decision", "drawdown", "repayment", "overdue", "freeze", "unfreeze")
SIGNATURE_HEADER = "Yunkai-Signature"
ATTEMPTS_MAX = 12
BACKOFF_S_MIN, BACKOFF_S_MAX = 1.0, 600.0
DELIVERY_TIMEOUT_S = 5.0
LEASE_S = 30.0
DISPATCH_EVERY_S = 0.5
WATCH_EVERY_S_DEFAULT = 60.0
PARTNERS_FRESH_S = 10.0
REPLAY_WINDOW_S = 24 * 3600  # at start, events this old are still delivered
LOG_LIMIT_MAX = 200
LOG_WINDOWS_S: tuple[float | None, ...] = (3600.0, 86400.0, 30 * 86400.0, None)  # None: the whole history
CURSOR_MARGIN_S = 60.0


def secret_of(token_key: bytes, client_id: str, version: int) -> bytes:
    return hmac.new(token_key, f"webhook:{client_id}:{version}".encode(), hashlib.sha256).digest()


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def event_key(partner_id: str, created_ms: int, event_id: str) -> str:
    return f"{_prefix(partner_id)}{created_ms:013d}:{_digest(event_id)}"


def _digest(event_id: str) -> str:
    """A short name of an event id in record keys (ids can be longer than a key may be)."""
    return hashlib.sha256(event_id.encode()).hexdigest()[:24]


def _prefix(partner_id: str) -> str:
    return f"{partner_tag(partner_id)}:ev:"


class Webhooks:
    """Emitting, delivering and listing a partner's events."""

    def __init__(self, registry: Registry, token_key: bytes, verify: Any = True) -> None:
        self.registry = registry
        self.records: Records = registry.records
        self._token_key = token_key
        self._http = httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_S, verify=verify)
        self._partners: tuple[float, list[str]] = (0.0, [])
        self._after: dict[str, str] = {}  # partner -> the scan's start (the oldest event maybe pending)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def emit(
        self,
        partner_id: str,
        event_type: str,
        event_id: str,
        data: Mapping[str, Any],
        also: Sequence[Put] = (),
    ) -> bool:
        """Record an event for delivery, with `also` (records of the partner's slot) in the same
        commit; False if it was emitted before (its id is taken) or `also` changed meanwhile."""
        assert event_type in EVENT_TYPES, event_type
        apps = await self.registry.apps_fresh(partner_id)  # within REGISTRY_FRESH_S of a new webhook
        now_ms = int(time.time() * 1000)
        record = {
            "id": event_id,
            "type": event_type,
            "created_unix_ms": now_ms,
            "data": dict(data),
            "deliveries": {
                a.client_id: {"attempts": 0, "state": "pending", "next_ms": now_ms, "last": "", "url": a.webhook_url}
                for a in apps
                if a.webhook_url and not a.revoked
            },
            "lease_until_ms": 0,
        }
        marker = f"{partner_tag(partner_id)}:evid:{_digest(event_id)}"
        try:
            await self.records.commit(
                [
                    Put("evid", marker, event_key(partner_id, now_ms, event_id).encode(), 0),
                    Put("event", event_key(partner_id, now_ms, event_id), json.dumps(record).encode(), 0),
                    *also,
                ]
            )
        except Conflict:
            return False  # emitted before, by this process or another
        return True

    async def log(self, partner_id: str, client_id: str, limit: int) -> list[dict[str, Any]]:
        """The partner's latest events, newest first, with this app's deliveries. Read from the
        last LOG_WINDOWS_S[0] on, then from further back only if that held fewer than `limit`
        (events are keyed by when they happened: the newest `limit` are all in any window that
        holds `limit`), so a busy partner's history is not read whole on every call."""
        slot = await self.records.slot_of(partner_tag(partner_id))
        prefix = _prefix(partner_id)
        now_ms = int(time.time() * 1000)
        found: list[bytes] = []
        for window_s in LOG_WINDOWS_S:
            after = "" if window_s is None else f"{prefix}{now_ms - int(window_s * 1000):013d}"
            found = [r.value async for page in self.records.scan("event", [slot], prefix, after) for r in page]
            if len(found) >= limit:
                break
        events = []
        for event in map(json.loads, reversed(found[-limit:])):
            delivery = event["deliveries"].get(client_id)
            events.append({**{k: event[k] for k in ("id", "type", "created_unix_ms", "data")}, "delivery": delivery})
        return events

    async def run(self) -> None:
        """Deliver what is due, every DISPATCH_EVERY_S, until cancelled."""
        while True:
            try:
                await self.dispatch_once()
            except Exception:  # the ledger or the registry did not answer, or a bug: said, and next round
                log.exception("a webhook delivery round failed; next round")
            await asyncio.sleep(DISPATCH_EVERY_S)

    async def dispatch_once(self) -> int:
        """Attempt every delivery that is due; returns how many were attempted."""
        attempted = 0
        for partner_id in await self.partner_ids():
            attempted += await self._dispatch_partner(partner_id)
        return attempted

    async def partner_ids(self) -> list[str]:
        fetched, ids = self._partners
        if time.monotonic() - fetched > PARTNERS_FRESH_S:
            ids = [p.partner_id for p in await self.registry.list() if not p.revoked]
            self._partners = (time.monotonic(), ids)
        return ids

    async def _dispatch_partner(self, partner_id: str) -> int:
        slot = await self.records.slot_of(partner_tag(partner_id))
        prefix = _prefix(partner_id)
        after = self._after.get(partner_id) or event_key(partner_id, int((time.time() - REPLAY_WINDOW_S) * 1000), "")
        oldest_open, last = "", after
        attempted = 0
        now_ms = int(time.time() * 1000)
        # From the cursor on, not the partner's whole history: the node starts past `after[:-1]`
        # (every key from `after` on sorts after it), and the few keys between are skipped here.
        async for page in self.records.scan("event", [slot], prefix=prefix, after=after[:-1]):
            for record in page:
                if record.key < after:
                    continue
                event = json.loads(record.value)
                open_deliveries = [d for d in event["deliveries"].values() if d["state"] == "pending"]
                if open_deliveries and not oldest_open:
                    oldest_open = record.key
                due = [d for d in open_deliveries if d["next_ms"] <= now_ms]
                if due and event["lease_until_ms"] <= now_ms:
                    attempted += await self._deliver(record.key, record.version, event)
                last = record.key
        # Never past CURSOR_MARGIN_S ago: an event committed late with an earlier time (a slow
        # emit, another host's clock) is still found.
        margin = event_key(partner_id, int((time.time() - CURSOR_MARGIN_S) * 1000), "")
        self._after[partner_id] = min(oldest_open or last, margin)
        return attempted

    async def _deliver(self, key: str, version: int, event: dict[str, Any]) -> int:
        now_ms = int(time.time() * 1000)
        # Long enough for every attempt of this round, one after another, to run out its timeout.
        lease_s = LEASE_S + (DELIVERY_TIMEOUT_S + 1) * len(event["deliveries"])
        event["lease_until_ms"] = now_ms + int(lease_s * 1000)
        event["lease_token"] = secrets.token_hex(8)  # this lease's bytes are no other process's
        try:
            await self.records.commit([Put("event", key, json.dumps(event).encode(), version)])
        except Conflict:
            return 0  # another process took it
        body = json.dumps({k: event[k] for k in ("id", "type", "created_unix_ms", "data")}).encode()
        attempted = 0
        for client_id, delivery in event["deliveries"].items():
            if delivery["state"] != "pending" or delivery["next_ms"] > now_ms:
                continue
            attempted += 1
            delivery["attempts"] += 1
            outcome = await self._post(client_id, body)
            if outcome is None:
                delivery["state"], delivery["last"], delivery["delivered_ms"] = (
                    "delivered",
                    "2xx",
                    int(time.time() * 1000),
                )
            else:
                delivery["last"] = outcome
                if delivery["attempts"] >= ATTEMPTS_MAX:
                    delivery["state"] = "failed"
                else:
                    backoff_s = min(BACKOFF_S_MAX, BACKOFF_S_MIN * 2 ** (delivery["attempts"] - 1))
                    delivery["next_ms"] = int(time.time() * 1000 + backoff_s * 1000)
        event["lease_until_ms"] = 0
        try:
            await self.records.commit([Put("event", key, json.dumps(event).encode(), version + 1)])
        except Conflict:  # our lease ran out and another process took the event: its record stands
            log.warning("a webhook lease ran out before its attempts were recorded", extra={"event": event["id"]})
        return attempted

    async def _post(self, client_id: str, body: bytes) -> str | None:
        """One attempt, to the app's webhook URL now: None if the receiver took it (2xx), else
        what went wrong."""
        app = await self.registry.client(client_id)
        if app is None or app.revoked:
            return "the app is revoked"
        if not app.webhook_url:
            return "the app has no webhook URL now"
        url = app.webhook_url
        secret = secret_of(self._token_key, client_id, app.webhook_version)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, int(time.time()), body)}
        try:
            reply = await self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as error:
            return f"no answer: {type(error).__name__}"
        return None if 200 <= reply.status_code < 300 else f"HTTP {reply.status_code}"
