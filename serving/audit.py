"""The audit log: who called which method on what, and how it ended; one line per call,
append-only, hash-chained, and fsync'd before the call's `record` returns.

File format
  JSON lines, ASCII, one entry per line, each line ended by "\\n". An entry is an object:
    seq           1 for the first entry, then one more than the line before
    time          when it was recorded: UTC, ISO 8601 with milliseconds ("2026-03-01T12:00:00.123Z")
    caller        the caller's identity ("spiffe://yunkai/operator/alice"), "" for none
    method        the full gRPC method name ("/yunkai.ledger.v1.Ledger/CreateTransfers")
    ids           the ids the call names: the first IDS_LISTED_MAX of them
    ids_unlisted  how many more it named (0 if none)
    status        the name of the gRPC status it was answered with ("OK", "UNAVAILABLE", ...)
    detail        a short detail of the answer ("" for none)
    prev          the `hash` of the entry before; GENESIS (64 zeros) for the first
    hash          SHA-256, in lowercase hex, of the entry's canonical encoding
  The canonical encoding of an entry is the entry without `hash` as
  json.dumps(sort_keys=True, separators=(",", ":")) writes it (non-ASCII as \\u escapes).
  Its line is that encoding with `,"hash":"<hex>"` put before the closing brace, so each
  line has exactly one spelling: reformatting a line is an edit like any other. Texts are
  cut to ID_CHARS_MAX and TEXT_CHARS_MAX characters (the last one then "…"), so no line is
  longer than LINE_BYTES_MAX.

The chain
  Each entry's hash covers its `prev`, so each entry vouches for all those before it. An
  entry edited in place (its hash no longer matches), edited and re-hashed (the next line's
  `prev` no longer matches), removed from the middle (`seq` jumps), moved (`seq` goes out of
  order) or replaced by garbage breaks the chain at that line, and `verify` names the first
  such line. Not found from the file alone: entries removed from the tail (what is left is a
  valid, shorter chain) or a chain rewritten from some entry on with every hash recomputed.
  What finds both is a head kept elsewhere: `AuditLog.head` (the hash of the newest durable
  entry) copied off the host now and then (another machine, a ticket, a shipped log line)
  and checked with `verify(path, expect_head=HEAD)`: the file must still contain that entry.

Writing (group commit)
  `record` builds and hashes its entry at once (the chain's order is the order of calls;
  the encoding is written out by hand, and verify checks it against the json module's),
  appends it to the queue and waits. One writer task at a time, started on the loop's next
  turn, takes what is queued (at most BATCH_ENTRIES_MAX), writes it with one write and one
  fsync, on the event loop, and answers every entry of the batch; records made until the
  writer runs go in its batch, so concurrent callers share fsyncs. A caller cancelled while
  waiting does not take its entry back: the chain already counts on it. More than
  QUEUED_ENTRIES_MAX entries waiting is refused (AuditUnavailable), not queued.
  On the loop, not in a worker thread: the loop stops for the fsync (as a node's group
  commit does), but the thread's hand-offs cost more here. `python -m loadtest.audit_bench`
  on the 2-CPU VM: 1 caller 0.29 ms p50 and 155 µs of CPU per entry (thread: 0.51 ms, 338
  µs); 200 callers 41,771 entries/s at 20.5 µs per entry (thread: 31,363 at 26.7 µs). Under
  a replicated cluster's write load the thread's batch took 7-9 ms to come back against
  1.4 ms on the loop (docs/benchmarks.md).

Failure
  A failed write or fsync is raised (AuditUnavailable, caused by the OSError) to every caller
  of its batch and of every batch after it, and the log refuses every later record: after a
  failed fsync what reached the disk is unknown (a retried fsync can succeed without having
  written anything), and an entry chained onto a lost one would break the chain. The writer
  cuts the file back to its last durable byte, so a restart continues a valid chain.

Opening
  `AuditLog(path)` creates the file (mode 0600, and its missing parent directories 0700) or
  continues it: it checks the entries in the file's last TAIL_BYTES (each one's hash, and
  their links and sequence) and continues from the last one; it refuses a file that fails
  this (AuditLogBroken, a StartupError) and a file another process holds open. Checking the
  whole file is `yunkai audit verify`'s job; its cost grows with the file. Bytes after the
  last "\\n" are a write interrupted by a crash, which no caller was answered for: they are
  not part of the log (verify reports them, and opening cuts them off).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from json.encoder import encode_basestring_ascii
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple

import grpc
from prometheus_client import Histogram

from serving.files import fsync_path
from serving.handlers import Refused, StartupError

GENESIS = "0" * 64
IDS_LISTED_MAX = 64
ID_CHARS_MAX = 128
TEXT_CHARS_MAX = 256  # caller, method and detail each
# A character is at most 12 bytes once escaped (an astral one is two \uXXXX escapes); 512
# bytes cover the keys, the numbers, the time, the status name and both hashes.
LINE_BYTES_MAX = 128 * 1024
TAIL_BYTES = 4 * LINE_BYTES_MAX
BATCH_ENTRIES_MAX = 4096
QUEUED_ENTRIES_MAX = 65536
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700

assert 12 * (IDS_LISTED_MAX * ID_CHARS_MAX + 3 * TEXT_CHARS_MAX) + 3 * IDS_LISTED_MAX + 512 <= LINE_BYTES_MAX
assert TAIL_BYTES >= 2 * LINE_BYTES_MAX + 1  # the window holds one whole entry whatever its alignment
assert BATCH_ENTRIES_MAX <= QUEUED_ENTRIES_MAX

_FIELDS: dict[str, type] = {
    "seq": int,
    "time": str,
    "caller": str,
    "method": str,
    "ids": list,
    "ids_unlisted": int,
    "status": str,
    "detail": str,
    "prev": str,
    "hash": str,
}
_ENTRY_FIELDS = {name: kind for name, kind in _FIELDS.items() if name != "hash"}  # what the hash covers
_STATUS_NAMES = {code: code.name for code in grpc.StatusCode}  # StatusCode.name costs a lookup through enum
_HASH = re.compile(r"[0-9a-f]{64}")
# The canonical encoding. One encoder made once: json.dumps with arguments builds one per call.
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_escape = encode_basestring_ascii  # a JSON string literal, non-ASCII as \uXXXX escapes

log = logging.getLogger("yunkai.audit")

fsync_latency_s = Histogram(
    "yunkai_audit_fsync_latency_seconds",
    "Duration of one audit batch's write and fsync",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
batch_entries = Histogram(
    "yunkai_audit_batch_entries", "Entries per audit fsync", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
)


class AuditUnavailable(Refused):
    """The audit log cannot take an entry (it failed, is closed, or is overloaded): the call
    is answered UNAVAILABLE, since a call this server cannot audit is one it does not answer OK."""

    code = grpc.StatusCode.UNAVAILABLE


class AuditOpenError(StartupError):
    """The audit log cannot be opened (the message says why and what to do)."""


class AuditLogBroken(AuditOpenError):
    """The audit log's last entries do not chain: refused rather than continued."""


class Damage(StrEnum):
    EDITED = "edited"
    REMOVED = "removed"
    REORDERED = "reordered"
    UNPARSABLE = "unparsable"


@dataclass(frozen=True)
class Problem:
    """The first place the chain breaks: `line` (1-based) and the `seq` it carries, if any."""

    line: int
    seq: int | None
    damage: Damage
    detail: str

    def __str__(self) -> str:
        seq = "" if self.seq is None else f" (seq {self.seq})"
        return f"line {self.line}{seq}: {self.damage}: {self.detail}"


@dataclass(frozen=True)
class VerifyResult:
    """`entries` good entries from the top, and the hash of the last of them (`head`);
    `problem` if the chain breaks after them; `torn_bytes` of an interrupted write after the
    last line (not part of the log)."""

    entries: int
    head: str
    problem: Problem | None
    torn_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


def is_hash(text: str) -> bool:
    return _HASH.fullmatch(text) is not None


# --- entries -----------------------------------------------------------------------------


def _bounded(text: str, chars_max: int) -> str:
    return text if len(text) <= chars_max else text[: chars_max - 1] + "…"


class _UtcClock:
    """The time now in UTC, ISO 8601 with milliseconds, formatted once a millisecond (a busy
    log records dozens of entries in one)."""

    def __init__(self) -> None:
        self._ms, self._text = -1, ""

    def __call__(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            second, rest = divmod(ms, 1000)
            self._ms, self._text = ms, f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{rest:03d}Z"
        return self._text


def _body(
    seq: int, at: str, caller: str, method: str, ids: list[str], unlisted: int, status: str, detail: str, prev: str
) -> bytes:
    """An entry's canonical encoding, written out by hand: five times cheaper than the json
    module's (sort_keys), with which it agrees byte for byte (each string is escaped by the
    json module's own function, the keys are in sorted order, and verify re-encodes every
    line with the json module, so a difference would be found on the first entry)."""
    return (
        f'{{"caller":{_escape(caller)},"detail":{_escape(detail)},"ids":[{",".join(map(_escape, ids))}],'
        f'"ids_unlisted":{unlisted},"method":{_escape(method)},"prev":"{prev}","seq":{seq},'
        f'"status":"{status}","time":"{at}"}}'
    ).encode()


def _line(body: bytes, digest: str) -> bytes:
    return b'%s,"hash":"%s"}\n' % (body[:-1], digest.encode())


@dataclass(frozen=True, slots=True)
class _Entry:
    seq: int
    prev: str
    hash: str


class _Damaged(Exception):
    def __init__(self, damage: Damage, detail: str, seq: int | None = None) -> None:
        super().__init__(detail)
        self.damage, self.detail, self.seq = damage, detail, seq


def _read_entry(line: bytes) -> _Entry:
    """The entry `line` (ended by "\\n") holds, checked against its own hash; _Damaged if not."""
    if len(line) > LINE_BYTES_MAX:
        raise _Damaged(Damage.UNPARSABLE, f"longer than {LINE_BYTES_MAX} bytes")
    if not line.isascii():
        raise _Damaged(Damage.UNPARSABLE, "not ASCII")
    try:
        value = json.loads(line.decode("ascii"))
    except (ValueError, RecursionError):
        raise _Damaged(Damage.UNPARSABLE, "not a JSON line") from None
    if type(value) is not dict or value.keys() != _FIELDS.keys() or type(value["hash"]) is not str:
        fields = sorted(value) if type(value) is dict else type(value).__name__
        raise _Damaged(Damage.UNPARSABLE, f"not an audit entry (its fields: {fields})")
    seq = value["seq"] if type(value["seq"]) is int else None
    digest: str = value.pop("hash")
    body = _encode(value).encode()
    if hashlib.sha256(body).hexdigest() != digest:
        raise _Damaged(Damage.EDITED, "the entry does not match its hash", seq)
    if _line(body, digest) != line:
        raise _Damaged(Damage.EDITED, "the line is not in its canonical form (reformatted)", seq)
    _check_fields(value, seq)
    assert seq is not None
    return _Entry(seq, value["prev"], digest)


def _check_fields(value: dict[str, Any], seq: int | None) -> None:
    """The fields of a well-hashed entry, which only an entry forged with a recomputed hash
    fails. Exact types, as json.loads makes them (a bool is no int here)."""
    for name, kind in _ENTRY_FIELDS.items():
        if type(value[name]) is not kind:
            raise _Damaged(Damage.UNPARSABLE, f"not an audit entry ({name} is not a {kind.__name__})", seq)
    if not all(type(each) is str for each in value["ids"]):
        raise _Damaged(Damage.UNPARSABLE, "not an audit entry (an id is not a str)", seq)
    if seq is None or seq < 1 or value["ids_unlisted"] < 0 or not is_hash(value["prev"]):
        raise _Damaged(Damage.UNPARSABLE, "not an audit entry (bad seq, ids_unlisted or prev)", seq)


def _link(expected_seq: int, expected_prev: str, entry: _Entry) -> _Damaged | None:
    """Why `entry` cannot follow an entry of seq `expected_seq - 1` and hash `expected_prev`."""
    if entry.seq == expected_seq:
        if entry.prev == expected_prev:
            return None
        return _Damaged(
            Damage.EDITED,
            "its prev is not the hash of the entry before it: one of the two was edited and its hash recomputed",
            entry.seq,
        )
    if entry.seq > expected_seq:
        missing = (
            f"entry {expected_seq} is"
            if entry.seq == expected_seq + 1
            else f"entries {expected_seq} to {entry.seq - 1} are"
        )
        return _Damaged(Damage.REMOVED, f"seq {expected_seq} expected: {missing} missing", entry.seq)
    return _Damaged(Damage.REORDERED, f"seq {entry.seq} follows seq {expected_seq - 1}", entry.seq)


# --- verify ------------------------------------------------------------------------------


def verify(path: str | os.PathLike[str], expect_head: str | None = None) -> VerifyResult:
    """Walk the log at `path` from its first line: each entry against its hash, its `prev`
    against the hash before it, its `seq` against the one before it. Reports the first line
    where the chain breaks; OSError if the file cannot be read.

    Entries removed from the tail leave a valid, shorter chain: the file alone cannot show
    it. `expect_head`, a head recorded earlier (AuditLog.head), must be the hash of an entry
    of the file (or GENESIS): the log may have grown since, but not lost that entry."""
    assert expect_head is None or is_hash(expect_head), expect_head
    seq, head, number, anchored = 0, GENESIS, 0, expect_head in (None, GENESIS)
    with open(path, "rb") as file:
        while line := file.readline(LINE_BYTES_MAX + 1):
            if not line.endswith(b"\n"):
                if len(line) > LINE_BYTES_MAX:
                    problem = Problem(number + 1, None, Damage.UNPARSABLE, f"longer than {LINE_BYTES_MAX} bytes")
                    return VerifyResult(seq, head, problem)
                return VerifyResult(seq, head, _unanchored(number, expect_head, anchored), torn_bytes=len(line))
            number += 1
            try:
                entry = _read_entry(line)
                damaged = _link(seq + 1, head, entry)
            except _Damaged as error:
                damaged = error
            if damaged is not None:
                if damaged.damage is Damage.REMOVED:
                    damaged = _moved(file, number, seq + 1, damaged.seq) or damaged
                return VerifyResult(seq, head, Problem(number, damaged.seq, damaged.damage, damaged.detail))
            seq, head = entry.seq, entry.hash
            anchored = anchored or head == expect_head
    return VerifyResult(seq, head, _unanchored(number, expect_head, anchored))


def _moved(file: BinaryIO, number: int, seq: int, found: int | None) -> _Damaged | None:
    """If the entry of `seq`, expected at line `number` (which holds seq `found`), is
    further down: it was moved, not removed."""
    for later, line in enumerate(iter(lambda: file.readline(LINE_BYTES_MAX + 1), b""), start=number + 1):
        with contextlib.suppress(ValueError, RecursionError):
            value = json.loads(line)
            if isinstance(value, dict) and value.get("seq") == seq:
                return _Damaged(Damage.REORDERED, f"seq {seq} expected, and it is at line {later}", found)
    return None


def _unanchored(lines: int, expect_head: str | None, anchored: bool) -> Problem | None:
    if anchored:
        return None
    detail = (
        f"no entry has the expected head {expect_head}: entries were removed from the tail, or the chain was rewritten"
    )
    return Problem(lines + 1, None, Damage.REMOVED, detail)


# --- the log -----------------------------------------------------------------------------


class _Queued(NamedTuple):
    seq: int
    line: bytes
    hash: str
    done: asyncio.Future[None]


class AuditLog:
    """The audit log at `path`, open for appending (see the module's docstring).

    One event loop records to it; `seq` and `head` are those of the newest durable entry."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd, self._size, self.seq, self.head = _open(self.path)
        self._write_error: OSError | None = None  # no write after a failed one (see the module's docstring)
        self._seq, self._head = self.seq, self.head  # of the newest entry, durable or not
        self._clock = _UtcClock()
        self._queued: list[_Queued] = []
        self._taken: list[_Queued] = []  # the writer's batch, in flight
        self._writer: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closed = False

    async def record(
        self, caller: str, method: str, ids: Sequence[str], status: grpc.StatusCode, detail: str = ""
    ) -> None:
        """Append an entry and return once it is durable; AuditUnavailable if it cannot be."""
        if self._failure is not None or self._closed or len(self._queued) >= QUEUED_ENTRIES_MAX:
            raise self._unavailable()
        assert not isinstance(ids, str), ids  # a str is a sequence of one-letter ids
        listed = [each if len(each) <= ID_CHARS_MAX else _bounded(each, ID_CHARS_MAX) for each in ids[:IDS_LISTED_MAX]]
        body = _body(
            self._seq + 1,
            self._clock(),
            _bounded(caller, TEXT_CHARS_MAX),
            _bounded(method, TEXT_CHARS_MAX),
            listed,
            len(ids) - len(listed),
            _STATUS_NAMES[status],
            _bounded(detail, TEXT_CHARS_MAX),
            self._head,
        )
        digest = hashlib.sha256(body).hexdigest()
        line = _line(body, digest)
        assert len(line) <= LINE_BYTES_MAX, len(line)
        self._seq, self._head = self._seq + 1, digest
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queued.append(_Queued(self._seq, line, digest, done))
        if self._writer is None:
            # The writer ends when the queue is empty; what it fails with reaches the callers
            # of every entry it took or left queued.
            self._writer = loop.create_task(self._write_queued())
        # Not shielded: cancelling a caller cancels only its own future, and its entry stays
        # queued (the chain counts on it).
        await done

    def _unavailable(self) -> AuditUnavailable:
        if self._failure is not None:
            error = AuditUnavailable(f"the audit log {self.path} failed at seq {self.seq + 1}: {self._failure!r}")
            error.__cause__ = self._failure
            return error
        if self._closed:
            return AuditUnavailable(f"the audit log {self.path} is closed")
        return AuditUnavailable(f"{len(self._queued)} audit entries wait for the disk; retry with backoff")

    async def _write_queued(self) -> None:
        try:
            while self._queued and self._failure is None:
                self._taken = self._queued[:BATCH_ENTRIES_MAX]
                del self._queued[:BATCH_ENTRIES_MAX]
                started = time.perf_counter()
                self._write(self._taken)
                fsync_latency_s.observe(time.perf_counter() - started)
                batch_entries.observe(len(self._taken))
                for entry in self._taken:
                    if not entry.done.done():
                        entry.done.set_result(None)
                self._taken = []
        except BaseException as error:  # a write error, a cancelled writer or a bug: nobody waits forever
            self._fail(error)
            if not isinstance(error, OSError):
                raise
        finally:
            self._writer = None

    def _write(self, entries: Sequence[_Queued]) -> None:
        """Append those of `entries` not yet written, durably; on failure, cut the file back
        to its last durable byte. From the writer, or from close()."""
        entries = [entry for entry in entries if entry.seq > self.seq]
        if not entries:
            return
        if self._write_error is not None:
            raise self._write_error
        assert self._fd >= 0 and entries[0].seq == self.seq + 1, (self._fd, entries[0].seq, self.seq)
        data = b"".join(entry.line for entry in entries)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as error:
            self._write_error = error
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)
        self.seq, self.head = entries[-1].seq, entries[-1].hash

    def _fail(self, error: BaseException) -> None:
        """Answer every entry not yet durable with `error`, and refuse every later one."""
        if self._failure is None:
            log.error("audit log failed", extra={"path": str(self.path), "seq": self.seq + 1, "error": repr(error)})
            self._failure = error
        failed, self._taken, self._queued = self._taken + self._queued, [], []
        for entry in failed:
            if not entry.done.done():
                entry.done.set_exception(self._unavailable())

    async def aclose(self) -> None:
        """Refuse new entries, wait for those queued to be durable, and close the file."""
        self._closed = True
        while self._writer is not None:
            await asyncio.wait([self._writer])
        self.close()

    def close(self) -> None:
        """Refuse new entries, write those not yet written (after a write in flight, if any)
        and close the file. From the event loop's thread, or once it has stopped; in a
        running loop, aclose() does the same without blocking it."""
        self._closed = True
        if self._fd < 0:
            return
        pending = self._taken + self._queued
        if pending and self._failure is None:
            try:
                self._write(pending)
            except OSError as error:
                self._fail(error)
        self._taken, self._queued = [], []
        for entry in pending:
            if not entry.done.done():
                entry.done.set_result(None)
        os.close(self._fd)
        self._fd = -1

    async def __aenter__(self) -> AuditLog:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()


# --- opening -----------------------------------------------------------------------------


def _open(path: Path) -> tuple[int, int, int, str]:
    """The file descriptor of the log at `path` (created if missing), its size, and the seq and
    hash of its last entry, once its tail is checked."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    try:
        made = _make_directories(path.parent)
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
            os.fchmod(fd, FILE_MODE)  # exactly, whatever the umask
            made.append(path)
        except FileExistsError:
            fd = os.open(path, flags)
    except OSError as error:
        raise AuditOpenError(f"cannot open the audit log {path}: {error.strerror or error}") from error
    try:
        for name in made:  # so each new name survives a crash
            fsync_path(name.parent)
        _check_and_lock(fd, path)
        size, seq, head = _continue(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, size, seq, head


def _make_directories(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents, each DIRECTORY_MODE; those created, top first."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    made: list[Path] = []
    for each in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(each, DIRECTORY_MODE)
            made.append(each)
    return made


def _check_and_lock(fd: int, path: Path) -> None:
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        raise AuditOpenError(f"the audit log {path} is not a regular file")
    if status.st_mode & 0o077:
        log.warning("audit log open to group or others: made 0600", extra={"path": str(path)})
        os.fchmod(fd, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AuditOpenError(
            f"the audit log {path} is open in another process: each server needs its own audit log"
        ) from None


def _continue(fd: int, path: Path) -> tuple[int, int, str]:
    """Check the last entries of the log (the file's last TAIL_BYTES), cut off an interrupted
    write after them, and return the file's size and the last entry's seq and hash."""
    size = os.fstat(fd).st_size
    start = max(0, size - TAIL_BYTES)
    tail = os.pread(fd, size - start, start)
    end = tail.rfind(b"\n") + 1
    torn_bytes = size - (start + end)
    if torn_bytes > LINE_BYTES_MAX:
        raise _broken(path, f"it ends in {torn_bytes} bytes that are no entry")
    if torn_bytes:
        log.warning("audit log ends in an interrupted write: cut off", extra={"path": str(path), "bytes": torn_bytes})
        os.ftruncate(fd, size - torn_bytes)
        os.fsync(fd)
        size -= torn_bytes
    lines = [line + b"\n" for line in tail[:end].split(b"\n")[:-1]]
    if start > 0:
        lines = lines[1:]  # the window may begin inside a line
    seq, head = (0, GENESIS) if start == 0 else (-1, "")
    for line in lines:
        try:
            entry = _read_entry(line)
            damaged = None if seq < 0 else _link(seq + 1, head, entry)
        except _Damaged as error:
            damaged = error
        if damaged is not None:
            at = "" if damaged.seq is None else f" at seq {damaged.seq}"
            raise _broken(path, f"its chain breaks{at}: {damaged.damage}: {damaged.detail}")
        seq, head = entry.seq, entry.hash
    if seq < 0:
        raise _broken(path, f"its last {TAIL_BYTES} bytes hold no whole entry")
    return size, seq, head


def _broken(path: Path, why: str) -> AuditLogBroken:
    return AuditLogBroken(
        f"the audit log {path} cannot be continued: {why}. `yunkai audit verify {path}` finds the first bad line;"
        " keep the file as evidence and start the server on a new one"
    )
