"""A service's records on the ledger: the SDK side of slot-local records (node/records.py).

`Records` names a set of records (a lending book, a risk server's decision log) by a prefix
of their kinds, `<name>-<kind>`, so that sets on one ledger never meet; reads, scans and
commits go through the ledger SDK. A commit names the version each record was read at: one
that another writer changed meanwhile raises `Conflict` and nothing of it is applied; one
whose transfer the ledger refused raises `CommitFailed`, and nothing of it is applied either.
A commit whose first attempt was applied but unanswered (and sent again by the routing core)
is recognised as applied, not as a conflict (`Records._applied`): by its bytes, so a writer
whose outcome depends on having been the one that wrote (a lease, a claim) must write bytes
no rival can (a token of its own: gateway/idempotency.py's claims, gateway/webhooks.py's
leases); two rivals writing the same bytes would both be told they won.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from clients.ledger import Account, Commit, LedgerClient, Record, ResultCode, Transfer, Write, slot_of

NAME_PATTERN = re.compile(r"[a-z0-9]{1,16}")  # a set's name: kinds are "<name>-<kind>", at most 32 characters


class Conflict(RuntimeError):
    """Another writer changed a record between this one's read and its commit."""


class CommitFailed(RuntimeError):
    """The ledger refused a commit's transfer or account (`field` names it): nothing of the commit was applied."""

    def __init__(self, code: ResultCode, field: str) -> None:
        super().__init__(f"{field}: {code.name}")
        self.code = code
        self.field = field


class OtherRolesRecord(CommitFailed):
    """A record callers of another role wrote (node/records.py): this caller may not change it."""


@dataclass(frozen=True)
class Put:
    """One record to write in a commit (`version`: the one read, 0 if there was none)."""

    kind: str
    key: str
    value: Message | bytes
    version: int


class Records:
    """A named set of records over the ledger SDK."""

    def __init__(self, ledger: LedgerClient, name: str) -> None:
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"{name!r} is not 1-16 of a-z, 0-9")
        self.ledger = ledger
        self.name = name

    def kind(self, kind: str) -> str:
        return f"{self.name}-{kind}"

    async def read(self, wanted: Sequence[tuple[str, str]]) -> list[Record | None]:
        """Records by (kind, key), in order; None where there is none."""
        return await self.ledger.lookup_records([(self.kind(kind), key) for kind, key in wanted])

    async def scan(
        self, kind: str, slots: Sequence[int] | None = None, prefix: str = "", after: str = ""
    ) -> AsyncIterator[list[Record]]:
        """Every record of `kind` whose key starts with `prefix` (and sorts after `after`, if
        given), in `slots` (all by default)."""
        async for page in self.ledger.scan_records(self.kind(kind), slots, prefix, after=after):
            yield page

    async def slot_of(self, key: str) -> int:
        return slot_of(key, await self.ledger.slots_total())

    async def commit(
        self, puts: Sequence[Put], transfers: Sequence[Transfer] = (), accounts: Sequence[Account] = ()
    ) -> None:
        """Write the records and make the transfers (all in one slot), all of it or none; the
        accounts they need are opened with them (one already there must have the same fields)."""
        writes = [
            Write(
                self.kind(p.kind),
                p.key,
                p.value if isinstance(p.value, bytes) else p.value.SerializeToString(deterministic=True),
                p.version,
            )
            for p in puts
        ]
        [result] = await self.ledger.commit_records([Commit(writes, transfers, accounts)])
        if result.code is ResultCode.OK:
            return
        if result.code is ResultCode.RECORD_VERSION_MISMATCH:
            if await self._applied(writes):
                return
            raise Conflict(f"{result.field} changed since it was read")
        if result.code is ResultCode.RECORD_OF_ANOTHER_ROLE:
            raise OtherRolesRecord(result.code, result.field)
        raise CommitFailed(result.code, result.field)

    async def _applied(self, writes: Sequence[Write]) -> bool:
        """Whether a commit refused for its versions had in fact been applied: the router (or
        the SDK) sends a commit again when a node's answer was lost or WRONG_SLOT said the
        outcome was the new primary's to tell; its first attempt then stands as written, every
        record one version past what was read and holding exactly this commit's value (its
        transfers, idempotent by id, went with it)."""
        stored = await self.ledger.lookup_records([(w.kind, w.key) for w in writes])
        return all(
            found is not None and found.version == w.expected_version + 1 and found.value == w.value
            for w, found in zip(writes, stored, strict=True)
        )
