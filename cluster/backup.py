"""`yunkai backup` and `yunkai restore`: an online, consistent backup of every slot; a new cluster loaded from one.

The node's half and the protocol (why legs are held across the cut, what a cut is) are
node/backup.py's. This module owns the backup directory and the operator's side.

The backup point
  A backup's `backup_point` is the wall-clock instant (this host's) just before its first
  HoldCreditLegs is sent. Every transfer, account and change acknowledged to its caller
  before it is in the backup, exactly once; a cross-node transfer acknowledged IN_FLIGHT is
  in it with its outbox entry, and completes once restored. Writes acknowledged after it
  may be in it or not (those committed before their slot's cut are); `cut_done` bounds them.

A backup directory
  manifest.json                     the newest complete backup; written last, by an atomic
                                    rename, so a backup that fails leaves the previous one
  manifests/<backup_id>.json        every backup's manifest, kept (each one is restorable while
                                    the slot files it names are there)
  slots/<slot:05>.<backup_id>.ykslot  one slot's keys at a cut, written once, never changed

  A manifest (JSON): format, backup_id, previous (the backup it was incremental to),
  backup_point and cut_done (ns and ISO 8601), cluster_id, slots_total, replicas, the shard map
  at the cut (version, nodes, each slot's primary, followers and epoch), clock_ns (the highest
  ledger clock of the cut: a restored node never stamps behind it), and per slot: file,
  sha256, bytes, keys, digest (node/changelog.py's range digest), epoch, seq_epoch, seq,
  replicated, primary, written_by. `body_sha256` is the SHA-256 of the rest (canonical JSON):
  an edited or truncated manifest is refused.

  A slot file: b"YKSLOT1\\n", the slot (4 bytes big-endian), then per key in key order
  len(key) (4 BE), key, len(value) (4 BE), value; then 0xFFFFFFFF, the key count (8 BE) and the
  digest (8 BE). The digest is checked twice: against the node's as the file is written, and
  by the node that loads it.

Incremental
  A backup into a directory that holds one is incremental to it, per slot: a slot the node
  reports unchanged is not read at all (with followers, its (epoch, seq) is the same: no batch
  was written to it since), and a slot without followers whose digest is the previous one is
  read and digested on its node but not sent; either way its file is not rewritten and the new
  manifest names the old file. Every other slot is written whole: there are no sub-slot deltas,
  so a slot with one new transfer costs its whole range.

Restore
  Into a new, empty cluster (`yunkai cluster up`, or nodes and routers started by hand) with
  the backup's slots_total and any number of nodes and copies: every file is checked against
  the manifest first (nothing is loaded from a damaged backup), then each slot is loaded into
  every copy its new configuration has (RestoreSlot), then every node takes up the slots it
  leads (FinishRestore) and re-drives their outbox; the command waits until the books
  balance with no credit leg in flight. Keep callers away until it says done.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import struct
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

import grpc

import serving
from node.changelog import MASK, key_digest
from node.keys import slot_range
from node.slotmove import CHUNK_BYTES_MAX, CHUNK_KEYS_MAX
from proto import cluster_pb2, cluster_pb2_grpc, node_pb2, node_pb2_grpc
from router.shardmap import ShardMap
from serving.files import fsync_path

T = TypeVar("T")

FORMAT = "yunkai-backup/1"
MANIFEST = "manifest.json"
SLOT_MAGIC = b"YKSLOT1\n"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_END = 0xFFFFFFFF
ROUNDS_MAX = 5  # cut rounds tried before giving up (a move or failover under way spoils one)
ROUND_PAUSE_S = 0.5
HOLD_MS_DEFAULT = 5000
CALL_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 3600.0
RESTORE_STREAMS_MAX = 6  # RestoreSlot streams at once
RESTORE_SLOTS_PER_STREAM = 64
DRAIN_WAIT_S_DEFAULT = 120.0
READY_WAIT_S = 60.0  # a new cluster's nodes learning their slots
PROGRESS_EVERY_S = 0.5
SYNC_THREADS = 32
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", serving.MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", serving.MESSAGE_BYTES_MAX),
]


class BadBackup(Exception):
    """The backup directory is not one this command can use (the message names the file)."""


class Failed(Exception):
    """The backup or restore cannot go on (the message says why and what to do)."""


class _RoundFailed(Exception):
    """This cut round is spoiled (a hold lapsed, a slot changed hands): try another."""


# --- the command line -------------------------------------------------------------------------

_BACKUP_EPILOG = """\
examples:
  yunkai backup --router 127.0.0.1:7000 --to /backups/yunkai          # full the first time, incremental after
  yunkai backup --router 10.0.0.10:7000,10.0.0.20:7000 --to /backups/yunkai --full

The backup point (in the manifest): every transfer acknowledged before it is in the backup,
exactly once. Run it while the cluster serves: cross-node credit legs wait for a few round
trips while every primary opens its view; nothing else pauses. Exit 0 when the manifest is
written; 1 if the backup failed (the previous backup in DIR is untouched); 2 for bad usage.
"""

_RESTORE_EPILOG = """\
examples:
  yunkai cluster up --nodes 3 --data-dir /var/lib/yunkai-restored --port 7100 &   # a new, empty cluster
  yunkai restore --from /backups/yunkai --router 127.0.0.1:7100

The new cluster needs the backup's slots_total (yunkai node/router --slots-total) and may have
any number of nodes and copies. Every slot file is checked against the manifest before
anything is loaded; a damaged backup is refused naming the file. Exit 0 once every slot is
loaded and the books balance; 1 if the restore failed (start a new empty cluster and run it
again); 2 for bad usage.
"""


def add_backup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = textwrap.fill(parser.description or "", 100)
    parser.epilog = _BACKUP_EPILOG
    parser.add_argument(
        "--router",
        default="127.0.0.1:7000",
        help="HOST:PORT of a router, or several, comma-separated: the shard map comes from the first that"
        " answers (default 127.0.0.1:7000); the slots are read from their primaries directly",
    )
    parser.add_argument("--to", required=True, metavar="DIR", help="the backup directory (made if missing)")
    parser.add_argument(
        "--full", action="store_true", help="read and write every slot, ignoring the previous backup in DIR"
    )
    parser.add_argument(
        "--hold-ms",
        type=int,
        default=HOLD_MS_DEFAULT,
        help=f"longest a node holds incoming credit legs for the cut (default {HOLD_MS_DEFAULT}; the cut takes"
        " a few round trips, and a hold that lapses spoils the round, which is tried again)",
    )
    serving.add_tls_arguments(parser)


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = textwrap.fill(parser.description or "", 100)
    parser.epilog = _RESTORE_EPILOG
    parser.add_argument("--from", dest="source", required=True, metavar="DIR", help="a directory `yunkai backup` wrote")
    parser.add_argument(
        "--router",
        default="127.0.0.1:7000",
        help="HOST:PORT of a router of the new, empty cluster, or several, comma-separated (default 127.0.0.1:7000)",
    )
    parser.add_argument(
        "--manifest",
        metavar="BACKUP_ID",
        help="restore that backup (DIR/manifests/BACKUP_ID.json) instead of the newest (DIR/manifest.json)",
    )
    parser.add_argument(
        "--drain-wait-s",
        type=float,
        default=DRAIN_WAIT_S_DEFAULT,
        help="how long to wait for the restored outbox to drain and the books to balance"
        f" (default {DRAIN_WAIT_S_DEFAULT:g}; 0: do not wait)",
    )
    serving.add_tls_arguments(parser)


def backup_main(args: argparse.Namespace) -> int:
    if not 100 <= args.hold_ms <= 30_000:
        print("yunkai backup: --hold-ms must be 100 to 30000", file=sys.stderr)
        return 2
    return _run("backup", lambda: backup(args.router, args.to, serving.client_tls(args, "operator"), args))


def restore_main(args: argparse.Namespace) -> int:
    return _run("restore", lambda: restore(args.source, args.router, serving.client_tls(args, "operator"), args))


def _run(name: str, work: Callable[[], Coroutine[Any, Any, object]]) -> int:
    try:
        asyncio.run(work())
    except (BadBackup, Failed, grpc.aio.AioRpcError, BaseExceptionGroup) as error:
        print(f"\nyunkai {name}: {_why(error)}", file=sys.stderr)
        return 1
    return 0


def _why(error: BaseException) -> str:
    """What to tell the operator: the first of a group's failures (concurrent calls), plainly."""
    while isinstance(error, BaseExceptionGroup):
        ours = [e for e in error.exceptions if isinstance(e, BadBackup | Failed | BaseExceptionGroup)]
        error = (ours or list(error.exceptions))[0]
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    if not isinstance(error, BadBackup | Failed):
        raise error
    return str(error)


# --- slot files ---------------------------------------------------------------------------------


class SlotWriter:
    """One slot file being written: a temporary name until `finish` checks and renames it."""

    def __init__(self, directory: str, slot: int, backup_id: str) -> None:
        self.slot = slot
        self.name = os.path.join("slots", f"{slot:05d}.{backup_id}.ykslot")
        self.path = os.path.join(directory, self.name)
        self._temporary = self.path + ".partial"
        self._file = open(self._temporary, "wb")  # noqa: SIM115 (closed by finish or abandon)
        self._sha = hashlib.sha256()
        self._begin, self._end = slot_range(slot)
        self.keys = 0
        self.digest = 0
        self.bytes = 0
        self._write(SLOT_MAGIC + _U32.pack(slot))

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha.update(data)
        self.bytes += len(data)

    def add(self, key: bytes, value: bytes) -> None:
        if not self._begin <= key < self._end:
            raise Failed(f"slot {self.slot}: the node sent key {key[:20]!r}, not one of the slot's")
        self._write(_U32.pack(len(key)) + key + _U32.pack(len(value)) + value)
        self.keys += 1
        self.digest = (self.digest + key_digest(key, value)) & MASK

    def finish(self, keys: int, digest: int) -> str:
        """Check the node's count and digest and give the file its name; its sha256. Not synced
        here: `sync_files` syncs a backup's files together (one fsync each took 2.7 ms here,
        4096 of them in parallel 0.3 ms each), before any manifest names them."""
        if (keys, digest) != (self.keys, self.digest):
            self.abandon()
            raise Failed(
                f"slot {self.slot}: received {self.keys} keys with digest {self.digest:016x}, the node says"
                f" {keys} with {digest:016x}"
            )
        self._write(_U32.pack(_END) + _U64.pack(keys) + _U64.pack(digest))
        self._file.close()
        os.replace(self._temporary, self.path)
        return self._sha.hexdigest()

    def abandon(self) -> None:
        self._file.close()
        if os.path.exists(self._temporary):
            os.unlink(self._temporary)


def sync_files(paths: Sequence[str], directory: str) -> None:
    """fsync every file in `paths` (several at once: the disk merges them), then `directory`."""

    with ThreadPoolExecutor(SYNC_THREADS) as pool:
        list(pool.map(fsync_path, paths))
    fsync_path(directory)


def read_slot_file(path: str, slot: int) -> Iterator[tuple[bytes, bytes]]:
    """The keys of a slot file, checked as they are read (BadBackup names the file)."""
    begin, end = slot_range(slot)
    with open(path, "rb") as handle:
        head = handle.read(len(SLOT_MAGIC) + 4)
        if head[: len(SLOT_MAGIC)] != SLOT_MAGIC or _U32.unpack(head[len(SLOT_MAGIC) :])[0] != slot:
            raise BadBackup(f"{path}: not a slot file of slot {slot}")
        count = digest = 0
        while True:
            length = _read_u32(handle, path)
            if length == _END:
                tail = handle.read(16)
                if len(tail) != 16 or handle.read(1):
                    raise BadBackup(f"{path}: damaged after its last key")
                if (_U64.unpack(tail[:8])[0], _U64.unpack(tail[8:])[0]) != (count, digest):
                    raise BadBackup(f"{path}: its keys do not add up to its own count and digest")
                return
            key = _read_exactly(handle, length, path)
            value = _read_exactly(handle, _read_u32(handle, path), path)
            if not begin <= key < end:
                raise BadBackup(f"{path}: holds a key outside slot {slot}")
            count += 1
            digest = (digest + key_digest(key, value)) & MASK
            yield key, value


def _read_u32(handle: Any, path: str) -> int:
    value: int = _U32.unpack(_read_exactly(handle, 4, path))[0]
    return value


def _read_exactly(handle: Any, size: int, path: str) -> bytes:
    data: bytes = handle.read(size)
    if len(data) != size:
        raise BadBackup(f"{path}: truncated")
    return data


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# --- manifests ----------------------------------------------------------------------------------


def load_manifest(directory: str, backup_id: str | None = None) -> dict[str, Any] | None:
    """The newest manifest in `directory` (or backup `backup_id`'s); None if there is none."""
    path = os.path.join(directory, MANIFEST if backup_id is None else os.path.join("manifests", f"{backup_id}.json"))
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(text)
    except ValueError as error:
        raise BadBackup(f"{path}: not JSON ({error}): the manifest is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadBackup(f"{path}: not a {FORMAT} manifest")
    body = {k: v for k, v in manifest.items() if k != "body_sha256"}
    if manifest.get("body_sha256") != _body_sha256(body):
        raise BadBackup(f"{path}: its body_sha256 does not match its content: the manifest was edited or damaged")
    slots = manifest.get("slots")
    total = manifest.get("slots_total")
    listed = [s.get("slot") for s in slots] if isinstance(slots, list) else None
    if not isinstance(total, int) or listed != list(range(total)):
        raise BadBackup(f"{path}: does not list slots 0 to slots_total - 1 in order")
    return manifest


def _body_sha256(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(directory: str, manifest: dict[str, Any]) -> None:
    """manifests/<id>.json, then manifest.json, each by an atomic rename of a synced file."""
    manifest["body_sha256"] = _body_sha256(manifest)
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    for name in (os.path.join("manifests", f"{manifest['backup_id']}.json"), MANIFEST):
        path = os.path.join(directory, name)
        with open(path + ".partial", "wb") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(path + ".partial", path)
    fsync_path(directory)


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns % 10**9 // 10**6:03d}Z"


# --- talking to the cluster ---------------------------------------------------------------------


class _Cluster:
    """Channels to the routers (the shard map) and to the nodes (everything else)."""

    def __init__(self, routers: str, tls: serving.Tls | None) -> None:
        self.routers = [a.strip() for a in routers.split(",") if a.strip()]
        if not self.routers:
            raise Failed("--router names no router")
        self._credentials = serving.client_credentials(tls)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        found = self._channels.get(address)
        if found is None:
            found = self._channels[address] = serving.channel(address, self._credentials, _CHANNEL_OPTIONS)
        return found

    def node(self, address: str) -> node_pb2_grpc.NodeStub:
        return node_pb2_grpc.NodeStub(self.channel(address))

    def router(self, address: str) -> cluster_pb2_grpc.ClusterStub:
        return cluster_pb2_grpc.ClusterStub(self.channel(address))

    async def shard_map(self) -> ShardMap:
        failures = []
        for address in self.routers:
            try:
                reply = await self.router(address).GetShardMap(cluster_pb2.GetShardMapRequest(), timeout=CALL_TIMEOUT_S)
                return ShardMap.from_proto(reply)
            except grpc.aio.AioRpcError as error:
                failures.append(f"{address}: {error.code().name} {error.details()}")
        raise Failed(f"no router answered with the shard map: {'; '.join(failures)}")

    async def status(self) -> cluster_pb2.StatusResponse | None:
        for address in self.routers:
            try:
                reply: cluster_pb2.StatusResponse = await self.router(address).Status(
                    cluster_pb2.StatusRequest(), timeout=CALL_TIMEOUT_S
                )
                return reply
            except grpc.aio.AioRpcError:
                continue
        return None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


async def _each(addresses: Sequence[str], call: Callable[[str], Awaitable[T]]) -> dict[str, T | str]:
    """`call` on every address at once: each one's reply, or why it failed."""
    results: dict[str, T | str] = {}

    async def one(address: str) -> None:
        try:
            results[address] = await call(address)
        except grpc.aio.AioRpcError as error:
            results[address] = f"{error.code().name}: {error.details()}"

    async with asyncio.TaskGroup() as tasks:
        for address in addresses:
            tasks.create_task(one(address))
    return results


def _failures(results: Mapping[str, object]) -> list[str]:
    return [f"{address}: {result}" for address, result in results.items() if isinstance(result, str)]


class _Progress:
    """One line of progress every PROGRESS_EVERY_S on a terminal (every 5 s elsewhere)."""

    def __init__(self, what: str, total: int, out: TextIO, unit: str = "slots") -> None:
        self.what, self.total, self.out, self.unit = what, total, out, unit
        self.done = self.skipped = self.bytes = 0
        self.started = time.monotonic()
        self._shown = 0.0
        self._tty = out.isatty()

    def step(self, size: int = 0, skipped: bool = False) -> None:
        self.done += 1
        self.skipped += skipped
        self.bytes += size
        now = time.monotonic()
        if self.done == self.total or now - self._shown >= (PROGRESS_EVERY_S if self._tty else 5.0):
            self._shown = now
            print(("\r" if self._tty else "") + self.line(), end="" if self._tty else "\n", file=self.out, flush=True)

    def line(self) -> str:
        elapsed = max(1e-3, time.monotonic() - self.started)
        unchanged = f" ({self.skipped} unchanged)" if self.skipped else ""
        return (
            f"{self.what} {self.done}/{self.total} {self.unit}{unchanged}, {self.bytes / 1e6:.1f} MB,"
            f" {self.done / elapsed:.1f} {self.unit}/s, {self.bytes / 1e6 / elapsed:.1f} MB/s    "
        )

    def finish(self) -> float:
        if self._tty:
            print(file=self.out)
        return time.monotonic() - self.started


# --- backup -------------------------------------------------------------------------------------


@dataclass
class _Round:
    shard_map: ShardMap  # read after the cut: every slot was cut by its primary at its epoch
    versions: dict[int, node_pb2.SlotVersion]
    unchanged: set[int]
    clock_ns: int
    cut_done_ns: int
    node_ids: dict[str, str] = field(default_factory=dict)


async def backup(routers: str, directory: str, tls: serving.Tls | None, args: Any, out: TextIO = sys.stdout) -> str:
    """Take a backup into `directory`; its id."""
    os.makedirs(os.path.join(directory, "slots"), exist_ok=True)
    os.makedirs(os.path.join(directory, "manifests"), exist_ok=True)
    previous = None if getattr(args, "full", False) else load_manifest(directory)
    cluster = _Cluster(routers, tls)
    try:
        shard_map = await cluster.shard_map()
        if previous is not None and (previous["cluster_id"], previous["slots_total"]) != (
            shard_map.cluster_id,
            shard_map.slots_total,
        ):
            raise Failed(
                f"{directory} holds backups of cluster {previous['cluster_id']} ({previous['slots_total']} slots),"
                f" not of {shard_map.cluster_id} ({shard_map.slots_total} slots): use another directory"
            )
        known = _previous_versions(directory, previous)
        backup_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        point_ns = time.time_ns()
        kind = f"incremental to {previous['backup_id']}" if previous is not None else "full"
        print(f"backup {backup_id} ({kind}) of cluster {shard_map.cluster_id}: backup point {_iso(point_ns)}", file=out)
        cut = await _cut(cluster, shard_map, backup_id, known, int(getattr(args, "hold_ms", HOLD_MS_DEFAULT)), out)
        entries = await _read(cluster, directory, backup_id, cut, previous, out)
    finally:
        await cluster.close()
    manifest = _manifest(backup_id, previous, point_ns, cut, entries)
    write_manifest(directory, manifest)
    totals = manifest["totals"]
    print(
        f"done: backup {backup_id}: {totals['slots_written']} slots written, {totals['slots_unchanged']} unchanged,"
        f" {totals['keys']} keys, {totals['bytes'] / 1e6:.1f} MB in all; manifest {os.path.join(directory, MANIFEST)}",
        file=out,
    )
    return backup_id


def _previous_versions(directory: str, previous: Mapping[str, Any] | None) -> list[node_pb2.SlotVersion]:
    """What the previous backup recorded of each slot whose file is still there, whole."""
    if previous is None:
        return []
    known = []
    for entry in previous["slots"]:
        path = os.path.join(directory, entry["file"])
        if os.path.isfile(path) and os.path.getsize(path) == entry["bytes"]:
            known.append(
                node_pb2.SlotVersion(
                    slot=entry["slot"],
                    epoch=entry["epoch"],
                    seq_epoch=entry["seq_epoch"],
                    seq=entry["seq"],
                    replicated=entry["replicated"],
                    digest=int(entry["digest"], 16),
                )
            )
    return known


async def _cut(
    cluster: _Cluster,
    shard_map: ShardMap,
    backup_id: str,
    known: Sequence[node_pb2.SlotVersion],
    hold_ms: int,
    out: TextIO,
) -> _Round:
    """Rounds of hold, cut, release until one is consistent (node/backup.py), at most ROUNDS_MAX."""
    why = ""
    for attempt in range(1, ROUNDS_MAX + 1):
        try:
            started = time.monotonic()
            cut = await _round(cluster, shard_map, backup_id, known, hold_ms)
            print(
                f"cut {len(cut.versions)} slots on {len(set(cut.shard_map.owners))} primaries in"
                f" {(time.monotonic() - started) * 1000:.0f} ms ({len(cut.unchanged)} unchanged since the last backup)",
                file=out,
            )
            return cut
        except _RoundFailed as error:
            why = str(error)
            print(f"cut round {attempt} spoiled ({why}); trying again", file=out, flush=True)
            await asyncio.sleep(ROUND_PAUSE_S * attempt)
            shard_map = await cluster.shard_map()
    raise Failed(f"no consistent cut in {ROUNDS_MAX} rounds; the last: {why} (a move or failover under way?)")


async def _round(
    cluster: _Cluster, shard_map: ShardMap, backup_id: str, known: Sequence[node_pb2.SlotVersion], hold_ms: int
) -> _Round:
    primaries = sorted(set(shard_map.owners))
    hold = node_pb2.HoldCreditLegsRequest(backup_id=backup_id, hold_ms=hold_ms)
    request = node_pb2.CutSlotsRequest(backup_id=backup_id, previous=known)
    release = node_pb2.ReleaseCreditLegsRequest(backup_id=backup_id)
    cuts: dict[str, node_pb2.CutSlotsResponse | str] = {}
    try:
        held = await _each(primaries, lambda a: cluster.node(a).HoldCreditLegs(hold, timeout=CALL_TIMEOUT_S))
        if _failures(held):
            raise _RoundFailed(f"hold refused: {'; '.join(_failures(held))}")
        # Only once every primary holds its legs does any cut begin.
        cuts = await _each(primaries, lambda a: cluster.node(a).CutSlots(request, timeout=CALL_TIMEOUT_S))
        if _failures(cuts):
            raise _RoundFailed(f"cut refused: {'; '.join(_failures(cuts))}")
    finally:
        released = await _each(primaries, lambda a: cluster.node(a).ReleaseCreditLegs(release, timeout=CALL_TIMEOUT_S))
    lapsed = [a for a, r in released.items() if isinstance(r, str) or not r.was_held]
    if lapsed:
        raise _RoundFailed(f"the hold lapsed on {', '.join(lapsed)} before every cut was taken (--hold-ms)")
    after = await cluster.shard_map()
    versions: dict[int, node_pb2.SlotVersion] = {}
    unchanged: set[int] = set()
    for address, reply in cuts.items():
        assert not isinstance(reply, str)
        mine = {v.slot for v in reply.slots if v.slot < after.slots_total and after.owners[v.slot] == address}
        versions.update((v.slot, v) for v in reply.slots if v.slot in mine)
        unchanged.update(slot for slot in reply.unchanged if slot in mine)
    for slot in range(after.slots_total):
        cut = versions.get(slot)
        if cut is None or cut.epoch != after.epochs[slot]:
            raise _RoundFailed(f"slot {slot} changed hands during the cut (now {after.owners[slot]})")
    return _Round(
        after,
        versions,
        unchanged,
        max(r.clock_ns for r in cuts.values() if not isinstance(r, str)),
        time.time_ns(),
        {a: r.node_id for a, r in cuts.items() if not isinstance(r, str)},
    )


async def _read(
    cluster: _Cluster,
    directory: str,
    backup_id: str,
    cut: _Round,
    previous: Mapping[str, Any] | None,
    out: TextIO,
) -> dict[int, dict[str, Any]]:
    """Read every slot not unchanged from its primary's cut into its file; each slot's manifest entry."""
    old = {entry["slot"]: entry for entry in previous["slots"]} if previous is not None else {}
    entries: dict[int, dict[str, Any]] = {}
    progress = _Progress("backed up", cut.shard_map.slots_total, out)
    for slot in sorted(cut.unchanged):
        entries[slot] = _entry(old[slot], cut.versions[slot], cut.shard_map.owners[slot])
        progress.step(skipped=True)
    by_node: dict[str, list[int]] = {}
    for slot in range(cut.shard_map.slots_total):
        if slot not in cut.unchanged:
            by_node.setdefault(cut.shard_map.owners[slot], []).append(slot)

    async def read_node(address: str, slots: list[int]) -> None:
        stream = cluster.node(address).ReadCut(
            node_pb2.ReadCutRequest(backup_id=backup_id, slots=slots), timeout=STREAM_TIMEOUT_S
        )
        writer: SlotWriter | None = None
        try:
            async for chunk in stream:
                if writer is None and not chunk.unchanged:
                    writer = SlotWriter(directory, chunk.slot, backup_id)
                if writer is not None and writer.slot != chunk.slot:
                    raise Failed(f"{address} sent slot {chunk.slot} while slot {writer.slot} was unfinished")
                if not chunk.last:
                    assert writer is not None
                    for op in chunk.ops:
                        writer.add(op.key, op.value)
                    continue
                version = cut.versions[chunk.slot]
                if chunk.unchanged:
                    if chunk.slot not in old:
                        raise Failed(f"{address} says slot {chunk.slot} is unchanged, but no backup here has it")
                    entries[chunk.slot] = _entry(old[chunk.slot], version, address)
                    progress.step(skipped=True)
                    continue
                assert writer is not None
                sha = writer.finish(chunk.keys, chunk.digest)
                entries[chunk.slot] = {
                    "slot": chunk.slot,
                    "file": writer.name,
                    "sha256": sha,
                    "bytes": writer.bytes,
                    "keys": writer.keys,
                    "digest": f"{writer.digest:016x}",
                    "written_by": backup_id,
                    **_version_fields(version, address),
                }
                progress.step(writer.bytes)
                writer = None
        except grpc.aio.AioRpcError as error:
            raise Failed(f"reading the cut from {address}: {error.code().name}: {error.details()}") from None
        finally:
            if writer is not None:
                writer.abandon()

    async with asyncio.TaskGroup() as tasks:
        for address, slots in by_node.items():
            tasks.create_task(read_node(address, slots))
    missing = sorted(set(range(cut.shard_map.slots_total)) - set(entries))
    if missing:
        raise Failed(f"slots {missing[:10]} were not sent by their primaries")
    written = [os.path.join(directory, e["file"]) for e in entries.values() if e["written_by"] == backup_id]
    await asyncio.to_thread(sync_files, written, os.path.join(directory, "slots"))
    elapsed = progress.finish()
    print(f"read {progress.bytes / 1e6:.1f} MB in {elapsed:.1f} s", file=out)
    return entries


def _version_fields(version: node_pb2.SlotVersion, primary: str) -> dict[str, Any]:
    return {
        "epoch": version.epoch,
        "seq_epoch": version.seq_epoch,
        "seq": version.seq,
        "replicated": version.replicated,
        "primary": primary,
    }


def _entry(old: Mapping[str, Any], version: node_pb2.SlotVersion, primary: str) -> dict[str, Any]:
    """An unchanged slot's entry: the previous backup's file, at the version just cut."""
    return {**old, **_version_fields(version, primary)}


def _manifest(
    backup_id: str,
    previous: Mapping[str, Any] | None,
    point_ns: int,
    cut: _Round,
    entries: Mapping[int, dict[str, Any]],
) -> dict[str, Any]:
    m = cut.shard_map
    slots = [entries[slot] for slot in range(m.slots_total)]
    written = [e for e in slots if e["written_by"] == backup_id]
    return {
        "format": FORMAT,
        "backup_id": backup_id,
        "previous": previous["backup_id"] if previous is not None else None,
        "backup_point_ns": point_ns,
        "backup_point": _iso(point_ns),
        "cut_done_ns": cut.cut_done_ns,
        "cut_done": _iso(cut.cut_done_ns),
        "cluster_id": m.cluster_id,
        "slots_total": m.slots_total,
        "replicas": m.replicas,
        "clock_ns": cut.clock_ns,
        "shard_map": {
            "version": m.version,
            "nodes": {
                address: {"id": m.ids.get(address) or cut.node_ids.get(address, ""), "zone": m.zones.get(address, "")}
                for address in sorted(m.nodes)
            },
            "slots": [
                {"primary": m.owners[s], "followers": list(m.followers_of(s)), "epoch": m.epochs[s]}
                for s in range(m.slots_total)
            ],
        },
        "slots": slots,
        "totals": {
            "keys": sum(e["keys"] for e in slots),
            "bytes": sum(e["bytes"] for e in slots),
            "slots_written": len(written),
            "bytes_written": sum(e["bytes"] for e in written),
            "slots_unchanged": len(slots) - len(written),
        },
    }


# --- restore ------------------------------------------------------------------------------------


async def restore(
    directory: str, routers: str, tls: serving.Tls | None, args: Any, out: TextIO = sys.stdout
) -> dict[str, Any]:
    """Load the backup in `directory` into the new, empty cluster behind `routers`; its manifest."""
    manifest = load_manifest(directory, getattr(args, "manifest", None))
    if manifest is None:
        name = MANIFEST if getattr(args, "manifest", None) is None else f"manifests/{args.manifest}.json"
        raise BadBackup(f"{os.path.join(directory, name)} does not exist: not a backup, or no backup finished")
    print(
        f"backup {manifest['backup_id']} of cluster {manifest['cluster_id']}: backup point {manifest['backup_point']},"
        f" {manifest['slots_total']} slots, {manifest['totals']['keys']} keys",
        file=out,
    )
    _check_files(directory, manifest, out)
    cluster = _Cluster(routers, tls)
    try:
        await _wait_ready(cluster, READY_WAIT_S)
        shard_map = await cluster.shard_map()
        if shard_map.slots_total != manifest["slots_total"]:
            raise Failed(
                f"the cluster has {shard_map.slots_total} slots, the backup {manifest['slots_total']}: start the new"
                f" cluster with --slots-total {manifest['slots_total']}"
            )
        slots_of = await _load(cluster, directory, manifest, shard_map, out)
        finished = await _each(
            sorted(slots_of),
            lambda a: cluster.node(a).FinishRestore(
                node_pb2.FinishRestoreRequest(slots=sorted(slots_of[a])), timeout=CALL_TIMEOUT_S
            ),
        )
        if _failures(finished):
            raise Failed(f"taking up the restored slots failed: {'; '.join(_failures(finished))}")
        after = await cluster.shard_map()
        changed = [s for s in range(after.slots_total) if after.members(s) != shard_map.members(s)]
        if changed:
            raise Failed(f"slots {changed[:10]} changed copies during the restore: restore again into a new cluster")
        legs = sum(r.outbox_entries for r in finished.values() if not isinstance(r, str))
        print(f"every slot loaded; {legs} credit legs in flight at the cut are being re-driven", file=out)
        await _drain(cluster, float(getattr(args, "drain_wait_s", DRAIN_WAIT_S_DEFAULT)), out)
    finally:
        await cluster.close()
    return manifest


def _check_files(directory: str, manifest: Mapping[str, Any], out: TextIO) -> None:
    """Every slot file is there with the manifest's size and sha256 (before anything is loaded)."""
    progress = _Progress("checked", manifest["slots_total"], out)
    for entry in manifest["slots"]:
        path = os.path.join(directory, entry["file"])
        if not os.path.isfile(path):
            raise BadBackup(f"{path}: missing (slot {entry['slot']})")
        if os.path.getsize(path) != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise BadBackup(
                f"{path}: its sha256 is not the manifest's (slot {entry['slot']}): the file is damaged; nothing was"
                " restored"
            )
        progress.step(entry["bytes"])
    progress.finish()


async def _load(
    cluster: _Cluster, directory: str, manifest: Mapping[str, Any], shard_map: ShardMap, out: TextIO
) -> dict[str, set[int]]:
    """Every slot into every copy the new cluster has of it; the slots loaded into each node.
    A stream carries up to RESTORE_SLOTS_PER_STREAM slots to one node (one fsync, one audit
    entry there), RESTORE_STREAMS_MAX streams at once."""
    entries = {entry["slot"]: entry for entry in manifest["slots"]}
    wanted: dict[str, list[int]] = {}
    for slot in range(shard_map.slots_total):
        for address in shard_map.members(slot):
            wanted.setdefault(address, []).append(slot)
    streams = [
        (address, slots[start : start + RESTORE_SLOTS_PER_STREAM])
        for address, slots in sorted(wanted.items())
        for start in range(0, len(slots), RESTORE_SLOTS_PER_STREAM)
    ]
    streams.sort(key=lambda stream: stream[1][0])  # every node at once, lowest slots first
    slots_of: dict[str, set[int]] = {}
    copies = sum(len(slots) for slots in wanted.values())
    progress = _Progress("restored", copies, out, unit="slot copies")
    gate = asyncio.Semaphore(RESTORE_STREAMS_MAX)

    async def one(address: str, slots: list[int]) -> None:
        async with gate:
            chunks = _restore_chunks(directory, [entries[slot] for slot in slots], manifest["clock_ns"])
            try:
                await cluster.node(address).RestoreSlot(chunks, timeout=STREAM_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                raise Failed(
                    f"slots {slots[0]}..{slots[-1]} into {address}: {error.code().name}: {error.details()}"
                ) from None
        slots_of.setdefault(address, set()).update(slots)
        for slot in slots:
            progress.step(entries[slot]["bytes"])

    async with asyncio.TaskGroup() as tasks:
        for address, slots in streams:
            tasks.create_task(one(address, slots))
    elapsed = progress.finish()
    print(
        f"loaded {progress.bytes / 1e6:.1f} MB ({copies} slot copies) into {len(slots_of)} nodes in {elapsed:.1f} s",
        file=out,
    )
    return slots_of


async def _restore_chunks(
    directory: str, entries: Sequence[Mapping[str, Any]], clock_ns: int
) -> AsyncIterator[node_pb2.RestoreChunk]:
    for entry in entries:
        slot = entry["slot"]
        chunk = node_pb2.RestoreChunk(slot=slot)
        size = 0
        for key, value in read_slot_file(os.path.join(directory, entry["file"]), slot):
            chunk.ops.add(key=key, value=value)
            size += len(key) + len(value)
            if len(chunk.ops) >= CHUNK_KEYS_MAX or size >= CHUNK_BYTES_MAX:
                yield chunk
                chunk = node_pb2.RestoreChunk(slot=slot)
                size = 0
        chunk.last = True
        chunk.keys = entry["keys"]
        chunk.digest = int(entry["digest"], 16)
        chunk.clock_ns = clock_ns
        yield chunk


async def _wait_ready(cluster: _Cluster, wait_s: float) -> None:
    """Wait until every node of the new cluster is reachable and leads the slots the map gives
    it, with every copy in place (a cluster just started is still assigning them)."""
    deadline = time.monotonic() + wait_s
    why = "no router answered"
    while True:
        status = await cluster.status()
        if status is not None:
            behind = [n.address for n in status.nodes if not n.reachable or n.slots_owned != n.slots]
            if not status.nodes:
                why = "it has no nodes"
            elif behind:
                why = f"nodes {', '.join(behind)} do not lead the slots the map gives them yet"
            elif status.slots_under_replicated or status.migrations:
                why = "slots are still being copied or moved"
            else:
                return
        if time.monotonic() >= deadline:
            raise Failed(f"the new cluster is not ready after {wait_s:g} s: {why}")
        await asyncio.sleep(0.5)


async def _drain(cluster: _Cluster, wait_s: float, out: TextIO) -> None:
    """Wait until the cluster's books balance with no credit leg in flight (router/control.py)."""
    if wait_s <= 0:
        return
    deadline = time.monotonic() + wait_s
    state = "unknown"
    while time.monotonic() < deadline:
        status = await cluster.status()
        if status is not None:
            books = status.books
            state = cluster_pb2.BooksState.Name(books.state).removeprefix("BOOKS_").lower()
            if books.state == cluster_pb2.BOOKS_BALANCED:
                print(f"done: books balanced: sum of debits = sum of credits = {books.debits} fen", file=out)
                return
            if books.state == cluster_pb2.BOOKS_UNBALANCED:
                raise Failed(f"the restored books do not balance: debits {books.debits}, credits {books.credits}")
        await asyncio.sleep(0.5)
    raise Failed(f"the books were still {state} after {wait_s:g} s (legs in flight?): see `yunkai cluster status`")
