"""The behavioural side's durable records, on the ledger's nodes as slot-local records, as JSON.

Keys, as callers name them, and where each lives (node/records.py, via clients/records.py):

    r/<run>             a run (its business date)              kind run,    key run:<run>
    a/<run>/<customer>  an assessment (what the behaviour job  kind assess, key {c<customer>}:<run>
                        decided and why, the ledger's answer)
    w/<customer>        the customer's current warning level   kind level,  key {c<customer>}:w
                        (their latest assessment)
    t/<run>/<customer>  a follow-up task (a call or a visit)   kind task,   key {c<customer>}:<run>
                        and its outcome

A customer's records live in the slot of their accounts (hash tag {c<customer>}), so they
are replicated and moved with them, and no risk server keeps any. Run ids and customers have
no '/', so keys never collide. Every record read carries the version it was read at
(`VERSION`, not stored); a write names it, so a write that another risk server's write
overtook meanwhile is refused (`Conflict`: decide again) instead of overwriting it. Records
are checked after they are read (the key says whose they are).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from clients.records import Conflict, Put, Records

VERSION = "_version"  # in a record read: the version a write of it names (never stored)
READ_BATCH_MAX = 1_000  # keys per LookupRecords call


class AssessmentsDamaged(RuntimeError):
    """A stored record is not where its key says."""


def place(key: str) -> tuple[str, str]:
    """(kind, record key) of a caller's key; ValueError for a key of no known shape."""
    parts = key.split("/")
    match parts:
        case ["r", run]:
            return "run", f"run:{run}"
        case ["a", run, customer]:
            return "assess", f"{{c{customer}}}:{run}"
        case ["w", customer]:
            return "level", f"{{c{customer}}}:w"
        case ["t", run, customer]:
            return "task", f"{{c{customer}}}:{run}"
    raise ValueError(f"{key!r} is not a key of the assessments' store")


class AssessmentStore:
    """JSON records by key, over a set of records on the ledger."""

    def __init__(self, records: Records) -> None:
        self._records = records

    async def get(self, key: str) -> dict[str, Any] | None:
        [found] = await self.get_many([key])
        return found

    async def get_many(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        """The records by key, in order (None where there is none)."""
        found: list[dict[str, Any] | None] = []
        for start in range(0, len(keys), READ_BATCH_MAX):
            chunk = keys[start : start + READ_BATCH_MAX]
            read = await self._records.read([place(key) for key in chunk])
            for key, record in zip(chunk, read, strict=True):
                found.append(None if record is None else _loaded(key, record.value, record.version))
        return found

    async def put(self, key: str, record: dict[str, Any]) -> None:
        await self.write({key: record})

    async def write(self, records: dict[str, dict[str, Any]]) -> None:
        """Store records by key, each naming the version it was read at (0: new); one commit
        per slot, concurrently. Conflict if one was changed meanwhile: the others may stand."""
        by_slot: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        for key, record in records.items():
            slot = await self._records.slot_of(place(key)[1])
            by_slot.setdefault(slot, []).append((key, record))

        async def commit(group: list[tuple[str, dict[str, Any]]]) -> None:
            puts = []
            for key, record in group:
                record["key"] = key
                stored = as_stored(record)
                kind, record_key = place(key)
                puts.append(Put(kind, record_key, json.dumps(stored, sort_keys=True).encode(), record.get(VERSION, 0)))
            await self._records.commit(puts)
            for _key, record in group:
                record[VERSION] = record.get(VERSION, 0) + 1

        outcomes = await asyncio.gather(*(commit(group) for group in by_slot.values()), return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise next((o for o in failed if isinstance(o, Conflict)), failed[0])

    async def tasks(self) -> AsyncIterator[dict[str, Any]]:
        """Every follow-up (t/<run>/<customer>), from every slot."""
        async for page in self._records.scan("task"):
            for record in page:
                customer, _, run = record.key.partition("}:")
                yield _loaded(f"t/{run}/{customer.removeprefix('{c')}", record.value, record.version)


def as_stored(record: dict[str, Any]) -> dict[str, Any]:
    """The record as it is stored and shown: without the version it was read at."""
    return {name: value for name, value in record.items() if name != VERSION}


def _loaded(key: str, value: bytes, version: int) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(value)
    if record.get("key") != key:
        raise AssessmentsDamaged(f"the record under {key} says it is {record.get('key')!r}")
    record[VERSION] = version
    return record
