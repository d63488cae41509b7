"""Where the shard map is kept: a store with compare-and-swap, watched by every router.

The interface:
  load()                               the stored map, or None
  compare_and_swap(expected, new_map)  store `new_map` only if the stored map's version is
                                       still `expected` (0: none stored yet), atomically;
                                       True if it was stored
  watch(known_version)                 each map stored from now on with a version above
                                       `known_version` (the current one first, if newer)
The controller makes every change with one swap, so two controllers (or one that restarted,
or a deposed one that woke up) can never both win; the other routers follow the map by
watching it.

LocalMetastore keeps the map in one file on one host (`<dir>/shardmap.pb`): a swap takes an
exclusive lock on a sibling lock file, checks the version, writes a temporary file, fsyncs
it, renames it over the map and fsyncs the directory, so after a crash the file holds either
the old map or the new one. Its watchers poll the file. Only one controller may use a
directory (router/leadership.py holds its lock for the controller's life).

EtcdMetastore keeps it under one etcd key (`<prefix>/shardmap`): a swap is one transaction
comparing the key's mod_revision with the revision at which the expected version was read
(or, for the first map, that the key does not exist); watchers use etcd's watch.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Protocol

from proto import cluster_pb2
from router.etcd import PUT, Etcd
from router.shardmap import ShardMap
from serving.files import fsync_path, private_dir

log = logging.getLogger("yunkai.router.metastore")

POLL_S = 0.05
_REVISIONS_KEPT = 64


class Metastore(Protocol):
    async def load(self) -> ShardMap | None: ...
    async def compare_and_swap(self, expected_version: int, new_map: ShardMap) -> bool: ...
    def watch(self, known_version: int) -> AsyncIterator[ShardMap]: ...
    async def close(self) -> None: ...


def _parse(data: bytes, where: str) -> ShardMap:
    try:
        return ShardMap.from_proto(cluster_pb2.ShardMap.FromString(data))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


class LocalMetastore:
    """The shard map in `<directory>/shardmap.pb`, fsync'd, swapped under a file lock."""

    def __init__(self, directory: str) -> None:
        private_dir(directory)
        self.directory = directory
        self.path = os.path.join(directory, "shardmap.pb")
        self._lock_path = os.path.join(directory, "shardmap.lock")

    async def load(self) -> ShardMap | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return _parse(data, self.path)

    def _stored_version(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                return int(cluster_pb2.ShardMap.FromString(handle.read()).version)
        except FileNotFoundError:
            return 0

    async def compare_and_swap(self, expected_version: int, new_map: ShardMap) -> bool:
        assert new_map.version > expected_version, (expected_version, new_map.version)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._stored_version() != expected_version:
                return False
            temporary = self.path + ".tmp"
            with open(temporary, "wb") as handle:
                handle.write(new_map.to_proto().SerializeToString())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
            fsync_path(self.directory)
            return True

    async def watch(self, known_version: int) -> AsyncIterator[ShardMap]:
        seen: tuple[int, int] | None = None
        while True:
            try:
                stat = os.stat(self.path)
                stamp = (stat.st_mtime_ns, stat.st_ino)
            except FileNotFoundError:
                stamp = None
            if stamp is not None and stamp != seen:
                seen = stamp
                stored = await self.load()
                if stored is not None and stored.version > known_version:
                    known_version = stored.version
                    yield stored
            await asyncio.sleep(POLL_S)

    async def close(self) -> None:
        return None


class EtcdMetastore:
    """The shard map under `<prefix>/shardmap` in etcd, swapped by one transaction."""

    def __init__(self, etcd: Etcd, prefix: str) -> None:
        self.etcd = etcd
        self.key = f"{prefix}/shardmap".encode()
        self._revisions: OrderedDict[int, int] = OrderedDict()  # map version -> the key's mod_revision

    def _remember(self, version: int, revision: int) -> None:
        self._revisions[version] = revision
        while len(self._revisions) > _REVISIONS_KEPT:
            self._revisions.popitem(last=False)

    async def load(self) -> ShardMap | None:
        stored = await self.etcd.get(self.key)
        if stored is None:
            return None
        data, revision = stored
        shard_map = _parse(data, f"etcd {self.key.decode()}")
        self._remember(shard_map.version, revision)
        return shard_map

    async def compare_and_swap(self, expected_version: int, new_map: ShardMap) -> bool:
        assert new_map.version > expected_version, (expected_version, new_map.version)
        revision = 0
        if expected_version:
            known = self._revisions.get(expected_version)
            if known is None:
                stored = await self.load()
                if stored is None or stored.version != expected_version:
                    return False
                known = self._revisions[expected_version]
            revision = known
        written = await self.etcd.put_if(self.key, new_map.to_proto().SerializeToString(), revision)
        if written:
            self._remember(new_map.version, written)
        return written > 0

    async def watch(self, known_version: int) -> AsyncIterator[ShardMap]:
        while True:
            stored = await self._load_quietly()
            start = 0
            if stored is not None:
                start = self._revisions[stored.version] + 1
                if stored.version > known_version:
                    known_version = stored.version
                    yield stored
            async for event in self.etcd.watch(self.key, start_revision=start):
                if event.type != PUT:
                    continue
                try:
                    shard_map = _parse(bytes(event.kv.value), f"etcd {self.key.decode()}")
                except ValueError as error:
                    log.error("a stored shard map does not parse; ignored", extra={"error": str(error)})
                    continue
                self._remember(shard_map.version, int(event.kv.mod_revision))
                if shard_map.version > known_version:
                    known_version = shard_map.version
                    yield shard_map

    async def _load_quietly(self) -> ShardMap | None:
        while True:
            try:
                return await self.load()
            except Exception as error:  # etcd unreachable: routing goes on from the cached map
                log.warning("cannot read the shard map from etcd; retrying", extra={"error": str(error)})
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self.etcd.close()
