"""Where the controller keeps the shard map: a store with compare-and-swap.

The interface is two calls: `load()` returns the stored map (or None), and
`compare_and_swap(expected_version, new_map)` stores `new_map` only if the stored map's
version is still `expected_version`, atomically. The controller makes every change with
one such call, so two controllers (or a controller that restarted) can never both win.

LocalMetastore, the one-host implementation, keeps the map in one file. A swap takes an
exclusive lock on a sibling lock file (so several processes on a host may share it),
checks the version, writes a temporary file, fsyncs it, renames it over the map and
fsyncs the directory: after a crash the file holds either the old map or the new one.
An etcd implementation (a transaction comparing the key's mod revision) comes when a
cluster outgrows one controller host.
"""

from __future__ import annotations

import fcntl
import os
from typing import Protocol

from proto import cluster_pb2
from router.shardmap import ShardMap


class Metastore(Protocol):
    def load(self) -> ShardMap | None: ...
    def compare_and_swap(self, expected_version: int, new_map: ShardMap) -> bool: ...


class LocalMetastore:
    """The shard map in `<directory>/shardmap.pb`, fsync'd, swapped under a file lock."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.path = os.path.join(directory, "shardmap.pb")
        self._lock_path = os.path.join(directory, "shardmap.lock")

    def load(self) -> ShardMap | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return ShardMap.from_proto(cluster_pb2.ShardMap.FromString(data))

    def _stored_version(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                return int(cluster_pb2.ShardMap.FromString(handle.read()).version)
        except FileNotFoundError:
            return 0

    def compare_and_swap(self, expected_version: int, new_map: ShardMap) -> bool:
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
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            return True
