"""Idempotency-Key records: a POST's stored answer, per app and key (the protocol is in
gateway/__init__.py, "Safe retries").

One record a key, `idem:<SHA-256 of the client id, the session's customer and the key>` (so
it is short whatever the key, spread over the slots, and a customer's session never meets its
app's keys or another session's), holding the request's SHA-256, when it was claimed and, once
answered, the status and body.

Claiming is a commit expecting no record, made before anything is read: a new key (nearly every
POST) takes one round trip; only when that commit finds a record is it read and judged.

Answering is a commit of the claimed version, made *after* the answer is sent (`answer_soon`):
what the caller was answered for is durable by then (the call's own commits downstream), and
the stored answer serves replays only. A replay that finds the claim still unanswered waits
up to ANSWER_WAIT_S for the answer (reading again after ANSWER_POLL_S) before it is told Busy,
so a retry made right after an answer gets that answer. A refusal (not 2xx) releases the key
before it is answered (gateway/api.py `_once`), so a retry with a mended body runs at once. If the process dies
before the answer is stored, the key stays claimed: a retry gets Busy until CLAIM_HELD_S, then
runs the call again, which is safe for the reason a dead gateway's claim is (gateway/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass

import grpc

from clients.ledger import LedgerError
from clients.records import CommitFailed, Conflict, Put, Records

log = logging.getLogger("yunkai.gateway")

KEY = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# A claim not answered for this long (its gateway died) may be taken again: longer than a POST's
# calls downstream can take together (a decision, its commits, the event: each CALL_TIMEOUT_S at most).
CLAIM_HELD_S = 150.0
BODY_BYTES_MAX = 48 * 1024  # an answer kept (the record holds 64 KiB)
# A replay of a call answered a moment ago waits this long for its stored answer (one commit).
ANSWER_WAIT_S = 2.0
ANSWER_POLL_S = (0.01, 0.2)  # the first pause between reads, doubled up to the second


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


@dataclass(frozen=True)
class Claimed:
    """This call holds the key: run it, then `answer`."""

    key: str
    version: int
    request_sha256: str
    claimed_ms: int


@dataclass(frozen=True)
class Replay:
    """The key was answered before: this is the answer."""

    answer: Answer


@dataclass(frozen=True)
class Mismatch:
    """The key was used for another request."""


@dataclass(frozen=True)
class Busy:
    """Another call holds the key and has not answered yet."""

    retry_after_s: int


def request_sha256(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"%s %s\n%s" % (method.encode(), path.encode(), body)).hexdigest()


class Idempotency:
    def __init__(self, records: Records) -> None:
        self.records = records
        self._storing: set[asyncio.Task[None]] = set()  # answers being stored (answer_soon)

    async def claim(
        self, client_id: str, session_customer: str, key: str, digest: str
    ) -> Claimed | Replay | Mismatch | Busy:
        named = hashlib.sha256(f"{client_id}\0{session_customer}\0{key}".encode()).hexdigest()[:40]
        record_key = f"idem:{named}"
        version = 0  # a new key: claimed without a read first
        waited_until = time.monotonic() + ANSWER_WAIT_S
        pause, pause_max = ANSWER_POLL_S
        for _attempt in range(3):
            now_ms = int(time.time() * 1000)
            # The nonce: two claims of the same request in the same millisecond differ, so the
            # loser's commit is never taken for its own (clients/records.py reads a conflict back).
            claim = {"sha256": digest, "claimed_ms": now_ms, "status": 0, "body": "", "nonce": secrets.token_hex(8)}
            try:
                await self.records.commit([Put("idem", record_key, json.dumps(claim).encode(), version)])
            except Conflict:
                pass  # a record is there (or changed since it was read): look at it
            else:
                return Claimed(record_key, version + 1, digest, now_ms)
            while True:
                [found] = await self.records.read([("idem", record_key)])
                if found is None:
                    version = 0  # cannot be (records are not deleted), but then: claim it
                    break
                stored = json.loads(found.value)
                now_ms = int(time.time() * 1000)
                if not stored["sha256"]:
                    version = found.version  # released after a refusal: free for any request
                    break
                if stored["sha256"] != digest:
                    return Mismatch()
                if stored["status"]:
                    return Replay(Answer(stored["status"], stored["body"].encode()))
                held_s = (now_ms - stored["claimed_ms"]) / 1000
                if held_s >= CLAIM_HELD_S:
                    version = found.version  # its gateway died before answering: run it again
                    break
                if time.monotonic() >= waited_until:
                    return Busy(max(1, int(CLAIM_HELD_S - held_s)))
                await asyncio.sleep(pause)  # answered a moment ago, or still running
                pause = min(2 * pause, pause_max)
        return Busy(1)

    async def answer(self, claimed: Claimed, answer: Answer) -> None:
        """Keep a success under the claimed key; after a refusal, release the key (a retry runs
        the call again: what it lacked may be there by then). A body too large to keep is not
        kept: the key stays claimed, and a retry after CLAIM_HELD_S runs the call again."""
        if not 200 <= answer.status < 300:
            stored = {"sha256": "", "claimed_ms": 0, "status": 0, "body": ""}  # released
        elif len(answer.body) > BODY_BYTES_MAX:
            return
        else:
            stored = {
                "sha256": claimed.request_sha256,
                "claimed_ms": claimed.claimed_ms,
                "status": answer.status,
                "body": answer.body.decode(),
            }
        try:
            await self.records.commit([Put("idem", claimed.key, json.dumps(stored).encode(), claimed.version)])
        except Conflict:
            # The claim was taken again meanwhile (this call outran CLAIM_HELD_S): the other
            # run answers for the key. This call's own answer still stands (the same ids below).
            log.warning("an idempotency claim was taken over before its answer", extra={"key": claimed.key})

    def answer_soon(self, claimed: Claimed, answer: Answer) -> None:
        """`answer`, while the caller is answered: a task this object keeps until it ends (its
        failure is logged; `drain` waits for the rest at stop)."""
        task = asyncio.create_task(self.answer(claimed, answer))
        self._storing.add(task)
        task.add_done_callback(functools.partial(self._stored, claimed.key))

    def _stored(self, key: str, task: asyncio.Task[None]) -> None:
        self._storing.discard(task)
        if task.cancelled():
            log.warning("an idempotency answer was not stored: cancelled at stop", extra={"key": key})
        elif isinstance(error := task.exception(), (grpc.aio.AioRpcError, LedgerError, CommitFailed)):
            # The key stays claimed: a retry is Busy until CLAIM_HELD_S, then runs the call again.
            log.warning("an idempotency answer was not stored", extra={"key": key, "reason": repr(error)})
        elif error is not None:
            log.error("an idempotency answer failed", exc_info=error, extra={"key": key})

    async def drain(self, timeout_s: float) -> None:
        """At stop: wait, at most `timeout_s`, for the answers still being stored."""
        if self._storing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await asyncio.wait(set(self._storing))
