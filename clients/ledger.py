"""The ledger SDK: a typed async client (and a thin sync wrapper) for yunkai.

    async with await LedgerClient.connect("127.0.0.1:7000") as ledger:
        await ledger.create_accounts([Account("{c42}:deposit", ledger=156, code=2001)])
        [result] = await ledger.create_transfers([Transfer("t1", "bank:funding", "{c42}:deposit", 500, 156, 1)])
        assert result.code is ResultCode.OK

By default the client is smart: it fetches the shard map from the router once, then
sends each batch straight to the nodes that own its slots, coalescing concurrent calls per
node (the routing core in router/routing.py), and refreshes the map when a node answers
WRONG_SLOT. With `via_router=True` every call goes through the router instead. Either way
every call has a deadline (`timeout_s`), UNAVAILABLE is retried with jittered backoff
within it, and writes are safe to retry: resend the same ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import threading
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

import serving
from proto import cluster_pb2, cluster_pb2_grpc, contract, ledger_pb2 as pb, ledger_pb2_grpc
from proto.contract import LedgerMethod
from router.routing import CHANNEL_OPTIONS, NO_LIVE_COPY, LedgerRouter, RoutingError
from router.shardmap import ShardMap
from router.slots import slot_of as slot_of
from serving.tls import Tls, resolve_tls  # re-exported: where an account lives (group work by slot)

T = TypeVar("T")
log = logging.getLogger("yunkai.clients.ledger")
TIMEOUT_DEFAULT_S = 10.0
_ROUTER_AWAY = frozenset((grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))


class _Open(enum.IntEnum):
    """An enum of proto/ledger.proto, open as proto3's enums are: a value this version does not
    know (a newer server's, during a rolling upgrade) is UNKNOWN_<n>, not a ValueError raised
    after the call has acted."""

    @classmethod
    def _missing_(cls, value: object) -> Self | None:
        if not isinstance(value, int):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member


# The enums mirror proto/ledger.proto value for value (tests/test_router.py checks that they do).
class ResultCode(_Open):
    RESULT_CODE_UNSPECIFIED = 0
    OK = 1
    EXISTS = 2
    EXISTS_WITH_DIFFERENT_FIELDS = 3
    ID_INVALID = 4
    ACCOUNTS_MUST_BE_DIFFERENT = 5
    AMOUNT_MUST_BE_POSITIVE = 6
    LEDGER_MUST_NOT_BE_ZERO = 7
    CODE_MUST_NOT_BE_ZERO = 8
    DEBIT_ACCOUNT_NOT_FOUND = 9
    CREDIT_ACCOUNT_NOT_FOUND = 10
    ACCOUNTS_MUST_HAVE_SAME_LEDGER = 11
    EXCEEDS_CREDITS = 12
    EXCEEDS_DEBITS = 13
    DEBIT_ACCOUNT_FROZEN = 14
    CREDIT_ACCOUNT_FROZEN = 15
    DEBIT_ACCOUNT_CLOSED = 16
    CREDIT_ACCOUNT_CLOSED = 17
    PENDING_TRANSFER_NOT_FOUND = 18
    PENDING_TRANSFER_ALREADY_POSTED = 19
    PENDING_TRANSFER_ALREADY_VOIDED = 20
    PENDING_TRANSFER_EXPIRED = 21
    EXCEEDS_PENDING_TRANSFER_AMOUNT = 22
    OVERFLOW = 23
    IN_FLIGHT = 24
    WRONG_SLOT = 25
    ACCOUNT_NOT_FOUND = 26
    TRANSFER_NOT_FOUND = 27
    PENDING_TRANSFER_HAS_DIFFERENT_FIELDS = 28
    ACCOUNT_CLOSED = 29
    ACCOUNT_ALREADY_FROZEN = 30
    ACCOUNT_NOT_FROZEN = 31
    ACCOUNT_HAS_PENDING_TRANSFERS = 32
    RECORD_NOT_FOUND = 33
    RECORD_VERSION_MISMATCH = 34
    NOT_IN_COMMIT_SLOT = 35
    RECORD_OF_ANOTHER_ROLE = 36
    STORED_DATA_INCONSISTENT = 37  # the node's data for the event does not add up: nothing changed


class TransferState(_Open):
    STATE_UNSPECIFIED = 0
    POSTED = 1
    PENDING = 2
    VOIDED = 3
    REJECTED = 4
    IN_FLIGHT = 5
    EXPIRED = 6


class AccountStatus(_Open):
    ACCOUNT_STATUS_UNSPECIFIED = 0
    ACTIVE = 1
    FROZEN = 2
    CLOSED = 3


class ChangeKind(_Open):
    CHANGE_KIND_UNSPECIFIED = 0
    FREEZE = 1
    UNFREEZE = 2
    CLOSE = 3
    SET_OVERDRAFT_LIMIT = 4


class AccountFlags(enum.IntFlag):
    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = pb.DEBITS_MUST_NOT_EXCEED_CREDITS
    CREDITS_MUST_NOT_EXCEED_DEBITS = pb.CREDITS_MUST_NOT_EXCEED_DEBITS
    NO_HISTORY = pb.NO_HISTORY


class TransferFlags(enum.IntFlag):
    NONE = 0
    PENDING = pb.PENDING
    POST_PENDING = pb.POST_PENDING
    VOID_PENDING = pb.VOID_PENDING


class LedgerError(Exception):
    """A call failed as a whole (bad request, deadline, overload); `code` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


@dataclass(slots=True)
class Account:
    id: str
    ledger: int
    code: int
    flags: AccountFlags = AccountFlags.NONE
    overdraft_limit: int = 0
    user_data: int = 0
    # Set by the ledger:
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0
    status: AccountStatus = field(default=AccountStatus.ACCOUNT_STATUS_UNSPECIFIED)
    timestamp: int = 0
    created_by: str = ""  # the identity that opened it

    @property
    def balance(self) -> int:
        """credits_posted - debits_posted: what a deposit account holds."""
        return self.credits_posted - self.debits_posted

    def to_proto(self) -> pb.Account:
        """The creation request for this account (ledger-assigned fields left out)."""
        return pb.Account(
            id=self.id,
            ledger=self.ledger,
            code=self.code,
            flags=int(self.flags),
            overdraft_limit=self.overdraft_limit,
            user_data=self.user_data,
        )

    @staticmethod
    def from_proto(a: pb.Account) -> Account:
        return Account(
            a.id,
            a.ledger,
            a.code,
            AccountFlags(a.flags),
            a.overdraft_limit,
            a.user_data,
            a.debits_posted,
            a.credits_posted,
            a.debits_pending,
            a.credits_pending,
            AccountStatus(a.status),
            a.timestamp,
            a.created_by,
        )


@dataclass(slots=True)
class Transfer:
    id: str
    debit_account_id: str
    credit_account_id: str = ""
    amount: int = 0
    ledger: int = 0
    code: int = 0
    flags: TransferFlags = TransferFlags.NONE
    pending_id: str = ""
    timeout_s: int = 0
    user_data: int = 0
    # Set by the ledger:
    timestamp: int = 0
    state: TransferState = field(default=TransferState.STATE_UNSPECIFIED)
    result: ResultCode = field(default=ResultCode.RESULT_CODE_UNSPECIFIED)
    amount_posted: int = 0
    created_by: str = ""  # the identity that made it

    def to_proto(self) -> pb.Transfer:
        """The request for this transfer (ledger-assigned fields left out)."""
        return pb.Transfer(
            id=self.id,
            debit_account_id=self.debit_account_id,
            credit_account_id=self.credit_account_id,
            amount=self.amount,
            ledger=self.ledger,
            code=self.code,
            flags=int(self.flags),
            pending_id=self.pending_id,
            timeout_s=self.timeout_s,
            user_data=self.user_data,
        )

    @staticmethod
    def from_proto(t: pb.Transfer) -> Transfer:
        return Transfer(
            t.id,
            t.debit_account_id,
            t.credit_account_id,
            t.amount,
            t.ledger,
            t.code,
            TransferFlags(t.flags),
            t.pending_id,
            t.timeout_s,
            t.user_data,
            t.timestamp,
            TransferState(t.state),
            ResultCode(t.result),
            t.amount_posted,
            t.created_by,
        )


@dataclass(slots=True)
class AccountChange:
    id: str
    account_id: str
    kind: ChangeKind
    overdraft_limit: int = 0
    user_data: int = 0

    def to_proto(self) -> pb.AccountChange:
        return pb.AccountChange(
            id=self.id,
            account_id=self.account_id,
            kind=int(self.kind),  # type: ignore[arg-type]
            overdraft_limit=self.overdraft_limit,
            user_data=self.user_data,
        )


@dataclass(slots=True, frozen=True)
class Result:
    """The outcome of one event."""

    code: ResultCode
    field: str = ""  # which field, for EXISTS_WITH_DIFFERENT_FIELDS and ID_INVALID
    timestamp: int = 0
    state: TransferState = TransferState.STATE_UNSPECIFIED

    @property
    def ok(self) -> bool:
        return self.code is ResultCode.OK

    @staticmethod
    def from_proto(r: pb.EventResult) -> Result:
        return Result(ResultCode(r.code), r.field, r.timestamp, TransferState(r.state))


@dataclass(slots=True, frozen=True)
class Record:
    """A slot-local record (node/records.py): a service's own value kept in the slot of `key`."""

    kind: str
    key: str
    value: bytes
    # Set by the ledger:
    version: int = 0
    timestamp: int = 0
    updated_by: str = ""

    @staticmethod
    def from_proto(r: pb.Record) -> Record:
        return Record(r.kind, r.key, r.value, r.version, r.timestamp, r.updated_by)


@dataclass(slots=True, frozen=True)
class Write:
    """Store `value` as record (kind, key) if its version is `expected_version` (0: absent)."""

    kind: str
    key: str
    value: bytes
    expected_version: int = 0

    def to_proto(self) -> pb.RecordWrite:
        return pb.RecordWrite(
            record=pb.Record(kind=self.kind, key=self.key, value=self.value), expected_version=self.expected_version
        )


@dataclass(slots=True, frozen=True)
class Commit:
    """Writes and transfers in one slot, applied all together or not at all, with the accounts
    they need opened first (one already there with the same fields is used; with other
    fields, it refuses the commit: EXISTS_WITH_DIFFERENT_FIELDS)."""

    writes: Sequence[Write]
    transfers: Sequence[Transfer] = ()
    accounts: Sequence[Account] = ()

    def to_proto(self) -> pb.Commit:
        return pb.Commit(
            writes=[w.to_proto() for w in self.writes],
            transfers=[t.to_proto() for t in self.transfers],
            accounts=[a.to_proto() for a in self.accounts],
        )


SCAN_SLOTS_PER_CALL = 512  # slots asked per ScanRecords round (the routing core splits them by node)


@dataclass(slots=True, frozen=True)
class HistoryPage:
    transfers: list[Transfer]
    next_cursor: int  # 0: no more pages


class Routers:
    """The routers a client may use, in order: calls go to the current one and move on to the
    next when it is unavailable (any router serves the map and routes)."""

    def __init__(self, addresses: str, credentials: grpc.ChannelCredentials | None) -> None:
        self.addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        if not self.addresses:
            raise ValueError(f"{addresses!r}: no router address")
        self._channels = [serving.channel(a, credentials, CHANNEL_OPTIONS) for a in self.addresses]
        self._current = 0

    @property
    def current(self) -> str:
        return self.addresses[self._current]

    def cluster(self) -> cluster_pb2_grpc.ClusterStub:
        return cluster_pb2_grpc.ClusterStub(self._channels[self._current])

    def ledger(self) -> ledger_pb2_grpc.LedgerStub:
        return ledger_pb2_grpc.LedgerStub(self._channels[self._current])

    def next(self) -> None:
        self._current = (self._current + 1) % len(self.addresses)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def _seen(ended: asyncio.Future[None]) -> None:
    """A map watch ends when its router goes away (the next pause opens another): that error
    is expected; anything else is a bug, logged rather than lost with the task."""
    if ended.cancelled():
        return
    error = ended.exception()
    if error is not None and not isinstance(error, grpc.aio.AioRpcError):
        log.error("the shard map watch failed", exc_info=error)


class RouterMapSource:
    """The shard map as the routers serve it, refreshed on demand (from the next router when
    one is away).

    Refreshes are shared: however many callers find their map stale at once (a node failed,
    hundreds of calls retry), one fetch is in flight at a time, and each caller takes the
    first fetch that started after it asked (one already under way may have left before the
    map changed). One at a time, each caller fetching for itself, 300 callers took 6-9 s to
    get through a failover (GetShardMap of 4,096 slots is ~20 ms).

    A retry's pause (`newer`) ends as soon as a newer map is known: while callers wait, one
    WatchShardMap stream follows the current router, which pushes each version the moment it
    is stored (a failover's callers go on at once instead of up to a backoff later). The
    stream stays open until the client closes or the router goes away (the next pause opens
    another).
    """

    def __init__(self, routers: Routers, timeout_s: float) -> None:
        self._routers = routers
        self._timeout_s = timeout_s
        self._map: ShardMap | None = None
        self._fetching: asyncio.Future[ShardMap] | None = None
        self._fetches_started = 0
        self._changed = asyncio.Condition()
        self._watching: asyncio.Future[None] | None = None

    def current(self) -> ShardMap:
        assert self._map is not None, "fetch() first"
        return self._map

    def known(self) -> ShardMap | None:
        """The map fetched last, if any (a via-router client fetches none until asked)."""
        return self._map

    async def fetch(self) -> ShardMap:
        """The newest map the routers serve; the last router's error if none answers."""
        for attempt in range(len(self._routers.addresses)):
            try:
                reply = await self._routers.cluster().GetShardMap(
                    cluster_pb2.GetShardMapRequest(), timeout=self._timeout_s
                )
                break
            except grpc.aio.AioRpcError as error:
                if error.code() not in _ROUTER_AWAY or attempt == len(self._routers.addresses) - 1:
                    raise
                self._routers.next()
        await self._take(ShardMap.from_proto(reply))
        return self.current()

    async def newer(self, seen_version: int, timeout_s: float) -> ShardMap:
        """A map newer than `seen_version` as soon as the routers have one, else the current
        one after `timeout_s`."""
        if self.current().version <= seen_version:
            self._follow()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s), self._changed:
                    await self._changed.wait_for(functools.partial(self._newer_than, seen_version))
        return self.current()

    async def close(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._watching

    def _follow(self) -> None:
        """Keep one WatchShardMap stream open (started again if the last one ended)."""
        if self._watching is None or self._watching.done():
            self._watching = asyncio.ensure_future(self._watch(self.current().version))
            self._watching.add_done_callback(_seen)

    async def _watch(self, known_version: int) -> None:
        stream = self._routers.cluster().WatchShardMap(cluster_pb2.WatchShardMapRequest(known_version=known_version))
        async for reply in stream:
            await self._take(ShardMap.from_proto(reply))

    async def _take(self, fetched: ShardMap) -> None:
        if self._map is None or fetched.version >= self._map.version:
            self._map = fetched
            async with self._changed:
                self._changed.notify_all()

    def _newer_than(self, version: int) -> bool:
        return self.current().version > version

    async def refresh(self, seen_version: int) -> ShardMap:
        """A map newer than `seen_version`, or, if the routers have none, the newest they serve."""
        asked_after = self._fetches_started  # fetches started before this caller asked
        while self._map is None or self._map.version <= seen_version:
            # A fetch that has ended is never waited on again: its callback clearing it may not
            # have run yet, and awaiting a done future does not yield (the loop would spin).
            if self._fetching is None or self._fetching.done():
                self._fetches_started += 1
                self._fetching = asyncio.ensure_future(self.fetch())
                self._fetching.add_done_callback(self._fetched)
            fetching, number = self._fetching, self._fetches_started
            try:
                fetched = await asyncio.shield(fetching)  # a caller that gives up leaves it to the others
            except grpc.aio.AioRpcError:
                return self.current()  # the router is away: keep routing with what we know
            if number > asked_after:
                return fetched  # started after the caller asked: what the routers serve now
        return self._map

    def _fetched(self, fetching: asyncio.Future[ShardMap]) -> None:
        if self._fetching is fetching:
            self._fetching = None
        if not fetching.cancelled():
            fetching.exception()  # seen here: a caller that gave up may have left it unawaited


class LedgerClient:
    """Async client of the yunkai ledger. Create with `await LedgerClient.connect(router)`."""

    def __init__(
        self, router: str, via_router: bool, timeout_s: float, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self.router_address = router
        self.via_router = via_router
        self.timeout_s = timeout_s
        self._routers = Routers(router, credentials)
        self._maps = RouterMapSource(self._routers, timeout_s)
        self._routing = LedgerRouter(self._maps, credentials=credentials)

    @staticmethod
    async def connect(
        router: str,
        *,
        via_router: bool = False,
        timeout_s: float = TIMEOUT_DEFAULT_S,
        tls_dir: str | None = None,
        tls_name: str = "service",
        insecure: bool = False,
        tls: Tls | None = None,
    ) -> LedgerClient:
        """A client of the cluster behind `router`: one HOST:PORT or several, comma-separated
        (the next is used when one is away). Mutual TLS as `tls_name` from `tls_dir` (or
        YUNKAI_TLS_DIR), or with `tls` already loaded; plaintext only with `insecure`."""
        if tls is None:
            tls = resolve_tls(tls_dir, tls_name, insecure, "service")
        client = LedgerClient(router, via_router, timeout_s, serving.client_credentials(tls))
        if not via_router:
            try:
                await client._maps.fetch()
            except grpc.aio.AioRpcError as error:
                await client.close()
                raise LedgerError(
                    error.code(), f"cannot fetch the shard map from {router}: {error.details()}"
                ) from None
        return client

    async def close(self) -> None:
        await self._maps.close()
        await self._routing.close()
        await self._routers.close()

    async def __aenter__(self) -> LedgerClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    # --- calls ------------------------------------------------------------------------------

    async def create_accounts(self, accounts: Sequence[Account], timeout_s: float | None = None) -> list[Result]:
        events = [a.to_proto() for a in accounts]
        results = await self._batched(contract.CREATE_ACCOUNTS, events, timeout_s)
        return [Result.from_proto(r) for r in results]

    async def create_transfers(self, transfers: Sequence[Transfer], timeout_s: float | None = None) -> list[Result]:
        events = [t.to_proto() for t in transfers]
        results = await self._batched(contract.CREATE_TRANSFERS, events, timeout_s)
        return [Result.from_proto(r) for r in results]

    async def change_accounts(self, changes: Sequence[AccountChange], timeout_s: float | None = None) -> list[Result]:
        events = [c.to_proto() for c in changes]
        results = await self._batched(contract.CHANGE_ACCOUNTS, events, timeout_s)
        return [Result.from_proto(r) for r in results]

    async def lookup_accounts(self, ids: Sequence[str], timeout_s: float | None = None) -> list[Account | None]:
        """The accounts, in order; None where an id names no account."""
        results = await self._batched(contract.LOOKUP_ACCOUNTS, list(ids), timeout_s)
        return [Account.from_proto(r.account) if r.code == pb.OK else None for r in results]

    async def lookup_transfers(
        self, keys: Sequence[tuple[str, str]], timeout_s: float | None = None
    ) -> list[Transfer | None]:
        """Transfers by (debit_account_id, id), in order; None where there is none."""
        events = [pb.TransferKey(debit_account_id=d, id=i) for d, i in keys]
        results = await self._batched(contract.LOOKUP_TRANSFERS, events, timeout_s)
        return [Transfer.from_proto(r.transfer) if r.code == pb.OK else None for r in results]

    async def get_account_transfers(
        self,
        account_id: str,
        *,
        limit: int = 100,
        newest_first: bool = False,
        cursor: int = 0,
        timeout_s: float | None = None,
    ) -> HistoryPage:
        request = pb.GetAccountTransfersRequest(
            account_id=account_id, limit=limit, newest_first=newest_first, cursor=cursor
        )
        timeout = timeout_s or self.timeout_s
        if self.via_router:
            reply = await self._via_router(contract.GET_ACCOUNT_TRANSFERS.name, request, timeout)
        else:
            reply = await self._guard(self._routing.get_account_transfers(request, timeout))
        if reply.code != pb.OK:
            raise LedgerError(grpc.StatusCode.NOT_FOUND, f"{account_id}: {pb.ResultCode.Name(reply.code)}")
        return HistoryPage([Transfer.from_proto(t) for t in reply.transfers], reply.next_cursor)

    # --- slot-local records -------------------------------------------------------------------

    async def commit_records(self, commits: Sequence[Commit], timeout_s: float | None = None) -> list[Result]:
        """Each commit's outcome: OK, or why nothing of it was applied (node/records.py)."""
        results = await self._batched(contract.COMMIT_RECORDS, [c.to_proto() for c in commits], timeout_s)
        return [Result.from_proto(r) for r in results]

    async def lookup_records(
        self, keys: Sequence[tuple[str, str]], timeout_s: float | None = None
    ) -> list[Record | None]:
        """Records by (kind, key), in order; None where there is none."""
        events = [pb.RecordKey(kind=kind, key=key) for kind, key in keys]
        results = await self._batched(contract.LOOKUP_RECORDS, events, timeout_s)
        for (kind, key), r in zip(keys, results, strict=True):
            if r.code not in (pb.OK, pb.RECORD_NOT_FOUND):
                raise LedgerError(grpc.StatusCode.INVALID_ARGUMENT, f"{kind} {key!r}: {pb.ResultCode.Name(r.code)}")
        return [Record.from_proto(r.record) if r.code == pb.OK else None for r in results]

    async def slots_total(self) -> int:
        """The cluster's slot count (S), from the shard map."""
        known = self._maps.known()
        return (known if known is not None else await self._maps.fetch()).slots_total

    async def scan_records(
        self,
        kind: str,
        slots: Sequence[int] | None = None,
        prefix: str = "",
        timeout_s: float | None = None,
        after: str = "",
    ) -> AsyncIterator[list[Record]]:
        """Every record of `kind` (whose key starts with `prefix`, and sorts after `after` if
        given) in `slots` (all the cluster's by default), a round of pages at a time; each
        slot's in key order. Records written meanwhile may or may not appear."""
        if slots is None:
            slots = range(await self.slots_total())
        todo = [
            pb.RecordScan(slot=slot, kind=kind, limit=contract.SCAN_LIMIT_MAX, prefix=prefix, after=after)
            for slot in slots
        ]
        while todo:
            asked, todo = todo[:SCAN_SLOTS_PER_CALL], todo[SCAN_SLOTS_PER_CALL:]
            pages = await self._batched(contract.SCAN_RECORDS, asked, timeout_s)
            found: list[Record] = []
            for scan, page in zip(asked, pages, strict=True):
                found.extend(Record.from_proto(r) for r in page.records)
                if page.more:
                    todo.append(
                        pb.RecordScan(
                            slot=scan.slot,
                            kind=kind,
                            after=page.next_after or scan.after,
                            limit=scan.limit,
                            prefix=prefix,
                        )
                    )
            yield found

    # --- plumbing ---------------------------------------------------------------------------

    async def _batched(self, method: LedgerMethod[Any], events: list[Any], timeout_s: float | None) -> list[Any]:
        timeout = timeout_s or self.timeout_s
        if not events:
            return []
        if self.via_router:
            reply = await self._via_router(method.name, method.request(**{method.field: events}), timeout)
            return list(reply.results)
        return await self._guard(self._routing.route(method, events, timeout))

    async def _guard(self, call: Coroutine[Any, Any, T]) -> T:
        try:
            return await call
        except RoutingError as error:
            raise LedgerError(error.code, str(error)) from None

    async def _via_router(self, method: str, request: Any, timeout_s: float) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        attempt = 0
        while True:
            call = getattr(self._routers.ledger(), method)
            try:
                return await call(request, timeout=max(0.001, deadline - loop.time()))
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or NO_LIVE_COPY in str(error.details()):
                    raise LedgerError(error.code(), str(error.details())) from None
                self._routers.next()  # this router is away: try the next
                attempt += 1
                pause = serving.backoff_s(attempt, 0.01, 0.5)
                if loop.time() + pause >= deadline:
                    raise LedgerError(error.code(), f"the router stayed unavailable: {error.details()}") from None
                await asyncio.sleep(pause)


class SyncLedgerClient:
    """The same client for code without an event loop: each call blocks until answered."""

    def __init__(
        self,
        router: str,
        *,
        via_router: bool = False,
        timeout_s: float = TIMEOUT_DEFAULT_S,
        tls_dir: str | None = None,
        tls_name: str = "service",
        insecure: bool = False,
    ) -> None:
        tls = resolve_tls(tls_dir, tls_name, insecure, "service")  # before the thread: a TlsError is the caller's
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="yunkai-sdk", daemon=True)
        self._thread.start()
        self._client = self._run(
            LedgerClient.connect(router, via_router=via_router, timeout_s=timeout_s, tls=tls, insecure=tls is None)
        )

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def create_accounts(self, accounts: Sequence[Account], timeout_s: float | None = None) -> list[Result]:
        return self._run(self._client.create_accounts(accounts, timeout_s))

    def create_transfers(self, transfers: Sequence[Transfer], timeout_s: float | None = None) -> list[Result]:
        return self._run(self._client.create_transfers(transfers, timeout_s))

    def change_accounts(self, changes: Sequence[AccountChange], timeout_s: float | None = None) -> list[Result]:
        return self._run(self._client.change_accounts(changes, timeout_s))

    def lookup_accounts(self, ids: Sequence[str], timeout_s: float | None = None) -> list[Account | None]:
        return self._run(self._client.lookup_accounts(ids, timeout_s))

    def lookup_transfers(
        self, keys: Sequence[tuple[str, str]], timeout_s: float | None = None
    ) -> list[Transfer | None]:
        return self._run(self._client.lookup_transfers(keys, timeout_s))

    def get_account_transfers(self, account_id: str, **options: Any) -> HistoryPage:
        return self._run(self._client.get_account_transfers(account_id, **options))

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def __enter__(self) -> SyncLedgerClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
