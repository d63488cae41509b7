"""The shard map one router process routes with, and who is waiting for a newer one.

Every router holds one: the controller offers each map it stores, the others offer each map
they see stored (router/control.py follows the metastore). A map is taken only if it is
newer than the one held. Routing reads `current()`; a router that meets WRONG_SLOT calls
`refresh`, which asks the control plane (through `on_stale`) to look for a newer map or to
check the nodes now; WatchShardMap streams and retries pausing in `newer` wake on each new
version.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

from proto import cluster_pb2
from router import metrics
from router.shardmap import ShardMap


class MapView:
    def __init__(self) -> None:
        self._map: ShardMap | None = None
        self._changed = asyncio.Condition()
        self._ready = asyncio.Event()
        # What a stale map should trigger (set by the control plane): check the nodes or the metastore.
        self.on_stale: Callable[[int], Awaitable[None]] | None = None

    def current(self) -> ShardMap:
        assert self._map is not None, "no shard map yet"
        return self._map

    def ready(self) -> bool:
        return self._map is not None

    async def wait_ready(self) -> ShardMap:
        await self._ready.wait()
        return self.current()

    async def offer(self, shard_map: ShardMap) -> bool:
        """Take `shard_map` if it is newer than the one held; True if it was taken."""
        if self._map is not None and shard_map.version <= self._map.version:
            return False
        self._map = shard_map
        metrics.map_version.set(shard_map.version)
        _export(shard_map)
        self._ready.set()
        async with self._changed:
            self._changed.notify_all()
        return True

    async def refresh(self, seen_version: int) -> ShardMap:
        """A map newer than `seen_version` if one can be had now (else the current one)."""
        if self.current().version <= seen_version and self.on_stale is not None:
            await self.on_stale(seen_version)
        return self.current()

    async def newer(self, seen_version: int, timeout_s: float) -> ShardMap:
        """A map newer than `seen_version` as soon as one is offered, else the current one
        after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(functools.partial(self._newer_than, seen_version))
        return self.current()

    async def watch(self, known_version: int) -> AsyncIterator[ShardMap]:
        """Each map newer than `known_version`, as it appears."""
        await self._ready.wait()
        while True:
            current = self.current()
            if current.version > known_version:
                known_version = current.version
                yield current
                continue
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._newer_than, known_version))

    def _newer_than(self, version: int) -> bool:
        return self.current().version > version


def _export(shard_map: ShardMap) -> None:
    """The map's health as gauges (router/metrics.py): nodes by state, slots short of copies."""
    counts = Counter(shard_map.nodes.values())
    for state in cluster_pb2.NodeState.values():
        if state:
            metrics.nodes.labels(state=cluster_pb2.NodeState.Name(state).removeprefix("NODE_")).set(counts[state])
    metrics.slots_under_replicated.set(len(shard_map.under_replicated()))
    metrics.slots_without_copy.set(len(shard_map.without_copy()))
