"""A small asyncio client of etcd's v3 API: what the control plane needs, over several endpoints.

The messages and stubs are aetcd's generated ones (aetcd.rpc); this module only opens the
channels and says what each call means here:

  get(key)                     value and mod_revision (None: no such key)
  get_prefix(prefix)           every (key, value, create_revision), oldest creation first
  put_if(key, value, revision) one transaction: put only if the key's mod_revision is still
                               `revision` (0: only if the key does not exist); the new
                               mod_revision if it did, else 0
  put_lease(key, value, lease) put only if the key does not exist, attached to a lease
  delete(key)
  grant(ttl_s) / keep_alive(lease) / revoke(lease)
  watch(key, prefix, start)    an async iterator of (event type, KeyValue), from a revision

Endpoints: etcd's members all answer (a follower forwards writes to the leader), so a call
goes to the current endpoint and, when that one is unavailable, to the next, within the
call's deadline. Every call has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from aetcd import rpc

import serving

log = logging.getLogger("yunkai.router.etcd")

T = TypeVar("T")

CALL_TIMEOUT_S = 5.0
PUT, DELETE = 0, 1  # rpc.Event.EventType
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class EtcdUnavailable(Exception):
    """No etcd endpoint answered within the deadline."""


def parse_endpoints(url: str) -> tuple[list[str], str]:
    """`etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` -> (endpoints, key prefix, default /yunkai)."""
    if not url.startswith("etcd://"):
        raise ValueError(f"{url!r}: an etcd metastore is etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
    rest = url[len("etcd://") :]
    hosts, _, prefix = rest.partition("/")
    endpoints = [h.strip() for h in hosts.split(",") if h.strip()]
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{url!r}: {endpoint!r} is not HOST:PORT")
    if not endpoints:
        raise ValueError(f"{url!r}: no endpoint")
    return endpoints, "/" + (prefix.strip("/") or "yunkai")


def range_end(prefix: bytes) -> bytes:
    """The end of the key range of everything starting with `prefix` (etcd's convention)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # every key


class Etcd:
    """A connection to an etcd cluster through any of its endpoints."""

    def __init__(self, endpoints: Sequence[str], credentials: grpc.ChannelCredentials | None = None) -> None:
        assert endpoints
        self.endpoints = list(endpoints)
        self._credentials = credentials
        self._current = 0
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self) -> grpc.aio.Channel:
        endpoint = self.endpoints[self._current]
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = serving.channel(endpoint, self._credentials, _CHANNEL_OPTIONS)
        return channel

    def kv(self) -> Any:
        return rpc.KVStub(self._channel())

    def leases(self) -> Any:
        return rpc.LeaseStub(self._channel())

    def watches(self) -> Any:
        return rpc.WatchStub(self._channel())

    async def call(self, attempt: Callable[[], Awaitable[T]], timeout_s: float = CALL_TIMEOUT_S) -> T:
        """`attempt()` on the current endpoint, then on the next ones while they are
        unavailable, until `timeout_s` has passed (EtcdUnavailable)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        tries = 0
        while True:
            try:
                return await attempt()
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                self._current = (self._current + 1) % len(self.endpoints)
                pause = serving.backoff_s(tries // len(self.endpoints), 0.05, 1.0)
                tries += 1
                if loop.time() + pause >= deadline:
                    raise EtcdUnavailable(
                        f"etcd at {', '.join(self.endpoints)} did not answer in {timeout_s:.1f}s: {error.details()}"
                    ) from error
                await asyncio.sleep(pause)

    # --- keys -------------------------------------------------------------------------------

    async def get(self, key: bytes, timeout_s: float = CALL_TIMEOUT_S) -> tuple[bytes, int] | None:
        async def attempt() -> Any:
            return await self.kv().Range(rpc.RangeRequest(key=key), timeout=timeout_s)

        reply = await self.call(attempt, timeout_s)
        if not reply.kvs:
            return None
        kv = reply.kvs[0]
        return bytes(kv.value), int(kv.mod_revision)

    async def get_prefix(self, prefix: bytes, timeout_s: float = CALL_TIMEOUT_S) -> tuple[list[Any], int]:
        """The keys under `prefix`, oldest creation first, and the store's revision then."""
        request = rpc.RangeRequest(
            key=prefix,
            range_end=range_end(prefix),
            sort_order=rpc.RangeRequest.SortOrder.ASCEND,
            sort_target=rpc.RangeRequest.SortTarget.CREATE,
        )

        async def attempt() -> Any:
            return await self.kv().Range(request, timeout=timeout_s)

        reply = await self.call(attempt, timeout_s)
        return list(reply.kvs), int(reply.header.revision)

    async def put_if(self, key: bytes, value: bytes, revision: int, timeout_s: float = CALL_TIMEOUT_S) -> int:
        """Put `value` only if `key`'s mod_revision is `revision` (0: only if it does not exist);
        the key's new mod_revision, or 0 if it was not put."""
        if revision:
            compare = rpc.Compare(
                key=key,
                target=rpc.Compare.CompareTarget.MOD,
                result=rpc.Compare.CompareResult.EQUAL,
                mod_revision=revision,
            )
        else:
            compare = rpc.Compare(
                key=key,
                target=rpc.Compare.CompareTarget.CREATE,
                result=rpc.Compare.CompareResult.EQUAL,
                create_revision=0,
            )
        request = rpc.TxnRequest(
            compare=[compare], success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))]
        )

        async def attempt() -> Any:
            return await self.kv().Txn(request, timeout=timeout_s)

        reply = await self.call(attempt, timeout_s)
        return int(reply.header.revision) if reply.succeeded else 0

    async def put_lease(self, key: bytes, value: bytes, lease: int, timeout_s: float = CALL_TIMEOUT_S) -> int:
        """Create `key` attached to `lease` unless it exists; its create_revision either way."""
        compare = rpc.Compare(
            key=key, target=rpc.Compare.CompareTarget.CREATE, result=rpc.Compare.CompareResult.EQUAL, create_revision=0
        )
        request = rpc.TxnRequest(
            compare=[compare],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )

        async def attempt() -> Any:
            return await self.kv().Txn(request, timeout=timeout_s)

        reply = await self.call(attempt, timeout_s)
        if reply.succeeded:
            return int(reply.header.revision)
        kvs = reply.responses[0].response_range.kvs
        return int(kvs[0].create_revision) if kvs else 0

    async def delete(self, key: bytes, timeout_s: float = CALL_TIMEOUT_S) -> None:
        async def attempt() -> Any:
            return await self.kv().DeleteRange(rpc.DeleteRangeRequest(key=key), timeout=timeout_s)

        await self.call(attempt, timeout_s)

    # --- leases -------------------------------------------------------------------------------

    async def grant(self, ttl_s: int, timeout_s: float = CALL_TIMEOUT_S) -> int:
        async def attempt() -> Any:
            return await self.leases().LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl_s), timeout=timeout_s)

        reply = await self.call(attempt, timeout_s)
        if reply.error:
            raise EtcdUnavailable(f"etcd refused a lease: {reply.error}")
        return int(reply.ID)

    async def keep_alive(self, lease: int, timeout_s: float) -> int:
        """Renew a lease once; its remaining TTL (0: the lease is gone)."""

        async def attempt() -> Any:
            answered = asyncio.get_running_loop().create_future()
            call = self.leases().LeaseKeepAlive(
                _then_wait(rpc.LeaseKeepAliveRequest(ID=lease), answered), timeout=timeout_s
            )
            try:
                async for reply in call:
                    return reply
                return None
            finally:
                answered.cancel()
                call.cancel()

        reply = await self.call(attempt, timeout_s)
        return 0 if reply is None else int(reply.TTL)

    async def revoke(self, lease: int, timeout_s: float = CALL_TIMEOUT_S) -> None:
        async def attempt() -> Any:
            return await self.leases().LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease), timeout=timeout_s)

        await self.call(attempt, timeout_s)

    # --- watches ----------------------------------------------------------------------------

    async def watch(self, key: bytes, prefix: bool = False, start_revision: int = 0) -> AsyncIterator[Any]:
        """Each event on `key` (or under it, with `prefix`) from `start_revision` on, until the
        caller stops iterating. A broken stream is reopened (on the next endpoint if need
        be) from the revision after the last event seen."""
        next_revision = start_revision
        while True:
            create = rpc.WatchCreateRequest(key=key, start_revision=next_revision)
            if prefix:
                create.range_end = range_end(key)
            held = asyncio.get_running_loop().create_future()
            call = self.watches().Watch(_then_wait(rpc.WatchRequest(create_request=create), held))
            try:
                async for reply in call:
                    if reply.compact_revision:
                        # The history we asked for is gone: start from now (callers re-read state).
                        next_revision = 0
                        break
                    for event in reply.events:
                        next_revision = int(event.kv.mod_revision) + 1
                        yield event
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                self._current = (self._current + 1) % len(self.endpoints)
                await asyncio.sleep(0.2)
            finally:
                held.cancel()
                call.cancel()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


async def _then_wait(request: Any, until: asyncio.Future[None]) -> AsyncIterator[Any]:
    """A request stream of one message that stays open until `until` is done: etcd ends a
    watch (and a keep-alive stream) when its client closes the sending side."""
    yield request
    with contextlib.suppress(asyncio.CancelledError):
        await until
