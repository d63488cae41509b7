"""Events nobody calls the gateway for: a partner's loans going overdue, its customers' credit lines frozen or unfrozen.

The gateway keeps, in each partner's slot, a record of every loan it drew for the partner
(`{p<pid>}:loan:<loan id>`: the customer, the overdue bucket last seen and the overdue episode,
whether it is closed)
and of every customer it onboarded (`{p<pid>}:cust:<customer>`: frozen or not as last seen,
and how many times that changed). Every WATCH_EVERY_S a process reads each open loan from the
lending service and each customer's credit line from the ledger (lending/limits.py), and on a
change emits the event (gateway/webhooks.py: once, by its id, whichever processes see it) in
one commit with the record of what it saw (of the version it read: a process that lost the race
to another leaves it be, and nothing is emitted without being recorded, or the reverse).

One process a round per partner: before looking at a partner's loans and customers, a watcher
takes the partner's round lease (`{p<pid>}:watch`: which watcher holds it, until when), one
commit of the version it read. It takes a lease that is free, lapsed, unreadable or its own
(renewing it), for two rounds' sleep and its last round's length, so the holder comes back
before its lease lapses and keeps the partner; a lease another watcher holds, or a commit that
lost the race, skips the partner this round. So the gateway processes of one deployment do not
each ask lending about every loan; when the holder dies its lease lapses within
2 x WATCH_EVERY_S and a round, and another process takes the partner at its next round.
The lease only saves work: two watchers at once (hosts' clocks apart, a round far longer
than the last) emit nothing twice, by the event ids and the versions above.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from clients.ledger import LedgerClient, LedgerError, Record
from clients.records import Conflict, Put, Records
from gateway.registry import partner_tag
from gateway.webhooks import Webhooks
from lending.limits import BadLimitRequest, CreditLimits
from proto import lending_pb2 as lpb
from serving.session import SessionStub

log = logging.getLogger("yunkai.gateway.watcher")

_Look = Callable[[str, str, int, dict[str, Any]], Awaitable[int]]  # partner, key, version, what was seen

CLOSED = (lpb.PAID_OFF, lpb.WRITTEN_OFF)
CALL_TIMEOUT_S = 10.0
LOOKS_AT_ONCE_MAX = 32


def loan_key(partner_id: str, loan_id: str) -> str:
    return f"{partner_tag(partner_id)}:loan:{loan_id}"


def customer_key(partner_id: str, customer: str) -> str:
    return f"{partner_tag(partner_id)}:cust:{customer}"


async def watch_loan(records: Records, partner_id: str, loan_id: str, customer: str) -> None:
    """Start watching a loan just drawn (a drawdown retried finds it watched: nothing more)."""
    seen = {"customer": customer, "bucket": "", "closed": False}
    with contextlib.suppress(Conflict):  # watched already
        await records.commit([Put("ploan", loan_key(partner_id, loan_id), json.dumps(seen).encode(), 0)])


async def watch_customer(records: Records, partner_id: str, customer: str) -> None:
    seen = {"frozen": False, "changes": 0}
    with contextlib.suppress(Conflict):  # watched already
        await records.commit([Put("pcust", customer_key(partner_id, customer), json.dumps(seen).encode(), 0)])


class Watcher:
    def __init__(
        self,
        webhooks: Webhooks,
        ledger: LedgerClient,
        loans: SessionStub,
        ledger_id: int,
        every_s: float,
    ) -> None:
        self.webhooks = webhooks
        self.records = webhooks.records
        self.limits = CreditLimits(ledger, ledger_id)
        self.loans = loans
        self.every_s = every_s
        self.name = secrets.token_hex(8)  # this watcher, in the round leases it holds
        self.round_s = 0.0  # how long the last round took
        self.looked = 0  # records looked at, all rounds

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.watch_once()
            except (LedgerError, grpc.aio.AioRpcError) as error:
                log.warning("watching partners' loans and lines failed; next round", extra={"reason": repr(error)})
            except Exception:
                log.exception("watching partners' loans and lines failed (a bug); next round")

    async def watch_once(self) -> int:
        """One look at every partner's loans and customers; the events emitted. The records of
        a page are looked at concurrently (at most LOOKS_AT_ONCE_MAX calls out at a time): a
        round over 2,000 loans took 11-13 s one after another and 2.9-4.7 s so (a scratch
        timing on loopback, 2 cores shared with a test run). At that pace a round over 100,000
        loans still outlasts WATCH_EVERY_S: a bank-sized book needs lending to say which loans
        changed at its end of day rather than the watcher asking each one."""
        started = time.monotonic()
        at_once = asyncio.Semaphore(LOOKS_AT_ONCE_MAX)
        emitted = 0
        for partner_id in await self.webhooks.partner_ids():
            emitted += await self.watch_partner(partner_id, at_once)
        self.round_s = time.monotonic() - started
        return emitted

    async def watch_partner(self, partner_id: str, at_once: asyncio.Semaphore | None = None) -> int:
        """One look at a partner's loans and customers if this watcher takes the partner's round
        lease (else nothing: another one watches it); the events emitted."""
        if not await self.take_round(partner_id):
            return 0
        at_once = at_once or asyncio.Semaphore(LOOKS_AT_ONCE_MAX)
        emitted = 0
        slot = await self.records.slot_of(partner_tag(partner_id))
        for kind, what, look in (("ploan", "loan", self._loan), ("pcust", "cust", self._customer)):
            async for page in self.records.scan(kind, [slot], prefix=f"{partner_tag(partner_id)}:{what}:"):
                looks = (self._look(at_once, look, partner_id, record) for record in page)
                emitted += sum(await asyncio.gather(*looks))
        return emitted

    async def take_round(self, partner_id: str) -> bool:
        """Take (or renew) the partner's round lease: False if another watcher holds it, or
        took it first (see the module)."""
        key = f"{partner_tag(partner_id)}:watch"
        [held] = await self.records.read([("watch", key)])
        now_ms = int(time.time() * 1000)
        if held is not None and _holder(held.value, now_ms) not in ("", self.name):
            return False
        lease = {"by": self.name, "until_ms": now_ms + int((2 * self.every_s + self.round_s) * 1000)}
        try:
            await self.records.commit([Put("watch", key, json.dumps(lease).encode(), held.version if held else 0)])
        except Conflict:
            return False  # another watcher took it meanwhile
        return True

    async def _look(self, at_once: asyncio.Semaphore, look: _Look, partner_id: str, record: Record) -> int:
        async with at_once:
            try:
                return await look(partner_id, record.key, record.version, json.loads(record.value))
            except (LedgerError, grpc.aio.AioRpcError) as error:  # this one next round; the others now
                log.warning("not watched this round", extra={"key": record.key, "reason": repr(error)})
                return 0
            except Exception:  # a bug, or a record it cannot read: the rest of the page goes on
                log.exception("not watched this round (a bug)", extra={"key": record.key})
                return 0
            finally:
                self.looked += 1

    async def _loan(self, partner_id: str, key: str, version: int, seen: dict[str, Any]) -> int:
        """A loan's overdue episodes: each time it falls overdue (episode + 1) and each bucket it
        reaches in an episode is one event; the record of what was seen changes in its commit."""
        if seen["closed"]:
            return 0
        loan_id = key.rsplit(":", 1)[1]
        loan = await self.loans.GetLoan(lpb.LoanRef(loan_id=loan_id), timeout=CALL_TIMEOUT_S)
        overdue = loan.days_past_due > 0
        episode = seen.get("episode", 0) + (1 if overdue and not seen["bucket"] else 0)
        changed = {
            **seen,
            "bucket": loan.bucket if overdue else "",
            "episode": episode,
            "closed": loan.status in CLOSED,
        }
        if changed == seen:
            return 0
        update = Put("ploan", key, json.dumps(changed).encode(), version)
        if overdue and loan.bucket != seen["bucket"]:
            data = {
                "loan_ref": loan_id.removeprefix(partner_id),
                "customer_ref": loan.customer.removeprefix(partner_id),
                "bucket": loan.bucket,
                "days_past_due": loan.days_past_due,
                "principal_outstanding_fen": loan.principal_outstanding,
                "as_of": loan.last_eod_date,
            }
            event_id = f"overdue.{loan_id}.{episode}.{loan.bucket}"
            return int(await self.webhooks.emit(partner_id, "overdue", event_id, data, also=[update]))
        await _record(self.records, update)
        return 0

    async def _customer(self, partner_id: str, key: str, version: int, seen: dict[str, Any]) -> int:
        """A customer's credit line frozen or unfrozen: one event a change, with the record of
        what was seen in its commit."""
        customer = key.rsplit(":", 1)[1]
        try:
            view = await self.limits.view(customer)
        except BadLimitRequest:
            return 0  # no credit line yet: nothing to freeze
        if view.frozen == seen["frozen"]:
            return 0
        changes = seen["changes"] + 1
        kind = "freeze" if view.frozen else "unfreeze"
        data = {"customer_ref": customer.removeprefix(partner_id), "granted_fen": view.granted}
        update = Put("pcust", key, json.dumps({"frozen": view.frozen, "changes": changes}).encode(), version)
        return int(await self.webhooks.emit(partner_id, kind, f"{kind}.{customer}.{changes}", data, also=[update]))


def _holder(value: bytes, now_ms: int) -> str:
    """Who holds a round lease now ("" if it has lapsed, or cannot be read: another version's,
    or broken, which the next take overwrites)."""
    try:
        lease = json.loads(value)
        by, until_ms = lease["by"], lease["until_ms"]
    except (ValueError, TypeError, KeyError):
        return ""
    return by if isinstance(by, str) and isinstance(until_ms, int) and until_ms > now_ms else ""


async def _record(records: Records, update: Put) -> None:
    with contextlib.suppress(Conflict):  # another process saw the same and recorded it first
        await records.commit([update])
