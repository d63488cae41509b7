"""Idempotency-Key records: a POST's stored answer, per app and key (the protocol is in
gateway/__init__.py, "Safe retries").

One record a key, `idem:<SHA-256 of the client id, the session's customer and the key>` (so
it is short whatever the key, spread over the slots, and a customer's session never meets its
app's keys or another session's), holding the request's SHA-256, when it was claimed and, once
answered, the status and body. Claiming is a commit expecting no record; answering, a commit
of the claimed version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass

from clients.records import Conflict, Put, Records

log = logging.getLogger("yunkai.gateway")

KEY = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# A claim not answered for this long (its gateway died) may be taken again: longer than a POST's
# calls downstream can take together (a decision, its commits, the event: each CALL_TIMEOUT_S at most).
CLAIM_HELD_S = 150.0
BODY_BYTES_MAX = 48 * 1024  # an answer kept (the record holds 64 KiB)


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

    async def claim(
        self, client_id: str, session_customer: str, key: str, digest: str
    ) -> Claimed | Replay | Mismatch | Busy:
        named = hashlib.sha256(f"{client_id}\0{session_customer}\0{key}".encode()).hexdigest()[:40]
        record_key = f"idem:{named}"
        for _attempt in range(3):
            [found] = await self.records.read([("idem", record_key)])
            now_ms = int(time.time() * 1000)
            version = 0
            if found is not None:
                stored = json.loads(found.value)
                if not stored["sha256"]:
                    version = found.version  # released after a refusal: free for any request
                elif stored["sha256"] != digest:
                    return Mismatch()
                elif stored["status"]:
                    return Replay(Answer(stored["status"], stored["body"].encode()))
                elif (now_ms - stored["claimed_ms"]) / 1000 < CLAIM_HELD_S:
                    return Busy(max(1, int(CLAIM_HELD_S - (now_ms - stored["claimed_ms"]) / 1000)))
                else:
                    version = found.version  # its gateway died before answering: run it again
            claim = {"sha256": digest, "claimed_ms": now_ms, "status": 0, "body": ""}
            try:
                await self.records.commit([Put("idem", record_key, json.dumps(claim).encode(), version)])
            except Conflict:
                continue  # another call claimed or answered it meanwhile: look again
            return Claimed(record_key, version + 1, digest, now_ms)
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
