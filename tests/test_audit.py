"""The audit log (serving/audit.py) and `yunkai audit verify` (cluster/audit.py).

What is recorded concurrently is all there, durable when `record` returns, and chains; each
way of tampering with the file is found at the line it touched; a log is continued across
restarts and refused when its tail does not chain. The entries are checked against the
format as the module's docstring writes it down (json.dumps, sha256), not against its code.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from cluster import audit as audit_cli
from serving import StartupError, audit
from serving.audit import AuditLog, AuditLogBroken, AuditOpenError, AuditUnavailable, Damage

METHOD = "/yunkai.ledger.v1.Ledger/CreateTransfers"
ALICE = "spiffe://yunkai/operator/alice"
FIELDS = ["seq", "time", "caller", "method", "ids", "ids_unlisted", "status", "detail", "prev", "hash"]


def canonical(entry: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True, separators=(",", ":"))


def spelled(entry: dict[str, Any]) -> bytes:
    """A line as the format spells it: the canonical encoding, then the hash before its brace."""
    return f'{canonical(entry)[:-1]},"hash":"{entry["hash"]}"}}\n'.encode()


def rehashed(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "hash": hashlib.sha256(canonical(entry).encode()).hexdigest()}


def write_log(path: Path, count: int) -> AuditLog:
    """A log of `count` entries (transfer-1, transfer-2, ...), closed."""

    async def record() -> AuditLog:
        log = AuditLog(path)
        for n in range(1, count + 1):
            await log.record(ALICE, METHOD, [f"transfer-{n}"], grpc.StatusCode.OK)
        await log.aclose()
        return log

    return asyncio.run(record())


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def entries_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines_of(path)]


def problem_in(path: Path, lines: list[bytes]) -> audit.Problem:
    path.write_bytes(b"".join(lines))
    result = audit.verify(path)
    assert result.problem is not None, result
    return result.problem


# --- recording -------------------------------------------------------------------------------


def test_entries_recorded_concurrently_are_all_durable_share_fsyncs_and_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counted(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counted)
    path = tmp_path / "audit.log"

    async def callers() -> AuditLog:
        log = AuditLog(path)
        await asyncio.gather(*(log.record(ALICE, METHOD, [f"t-{n}"], grpc.StatusCode.OK) for n in range(500)))
        await log.aclose()
        return log

    log = asyncio.run(callers())
    entries = entries_of(path)
    assert sorted(entry["ids"][0] for entry in entries) == sorted(f"t-{n}" for n in range(500))
    assert [entry["seq"] for entry in entries] == list(range(1, 501))
    assert len(fsyncs) < 50  # 500 callers awaiting at once share a handful of fsyncs
    result = audit.verify(path)
    assert result.ok and result.entries == 500 and result.head == log.head == entries[-1]["hash"]


def test_an_entry_is_in_the_file_when_record_returns(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"

    async def record() -> None:
        log = AuditLog(path)
        await log.record(ALICE, METHOD, ["transfer-1"], grpc.StatusCode.OK)
        assert entries_of(path)[-1]["ids"] == ["transfer-1"]  # before any close
        assert log.seq == 1 and log.head == entries_of(path)[-1]["hash"]
        await log.aclose()

    asyncio.run(record())


def test_an_entry_says_who_called_what_on_which_ids_and_how_it_ended_in_the_documented_format(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    ids = [f"transfer-{n}" for n in range(100)] + ["x" * 500]

    async def record() -> None:
        async with AuditLog(path) as log:
            await log.record(ALICE, METHOD, ids, grpc.StatusCode.FAILED_PRECONDITION, "the account is frozen")
            await log.record("", "/yunkai.ledger.v1.Ledger/LookupAccounts", [], grpc.StatusCode.OK)

    asyncio.run(record())
    first, second = entries_of(path)
    assert list(first) == [*sorted(FIELDS[:-1]), "hash"]  # sorted keys, then the hash
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"]), first["time"]
    assert first["caller"] == ALICE and first["method"] == METHOD
    assert first["ids"] == ids[: audit.IDS_LISTED_MAX] and first["ids_unlisted"] == len(ids) - audit.IDS_LISTED_MAX
    assert (first["status"], first["detail"]) == ("FAILED_PRECONDITION", "the account is frozen")
    assert (first["seq"], first["prev"]) == (1, audit.GENESIS)
    assert (second["seq"], second["prev"], second["caller"], second["ids"]) == (2, first["hash"], "", [])
    for entry, line in zip((first, second), lines_of(path), strict=True):
        assert entry["hash"] == hashlib.sha256(canonical(entry).encode()).hexdigest()
        assert line == spelled(entry)


def test_texts_of_any_alphabet_and_any_length_are_escaped_bounded_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    awkward = 'quote " backslash \\ newline \n tab \t nul \x00 é 日本 😀 \u2028'

    async def record() -> None:
        async with AuditLog(path) as log:
            await log.record(awkward * 40, awkward, [awkward, "😀" * 1000], grpc.StatusCode.OK, awkward * 40)

    asyncio.run(record())
    [line] = lines_of(path)
    [entry] = entries_of(path)
    assert line.isascii() and line == spelled(entry)
    assert entry["method"] == awkward
    assert len(entry["caller"]) == audit.TEXT_CHARS_MAX and entry["caller"].endswith("…")
    assert entry["ids"][1] == "😀" * (audit.ID_CHARS_MAX - 1) + "…"
    assert audit.verify(path).ok


def test_a_cancelled_caller_leaves_its_entry_in_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"

    async def record() -> None:
        log = AuditLog(path)
        cancelled = asyncio.create_task(log.record(ALICE, METHOD, ["gone"], grpc.StatusCode.OK))
        await asyncio.sleep(0)  # its entry is queued
        cancelled.cancel()
        await log.record(ALICE, METHOD, ["after"], grpc.StatusCode.OK)
        await log.aclose()

    asyncio.run(record())
    assert [entry["ids"] for entry in entries_of(path)] == [["gone"], ["after"]]
    assert audit.verify(path).ok


def test_a_failed_fsync_is_raised_to_every_waiting_caller_and_refuses_later_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 3)
    durable = path.read_bytes()

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    async def record() -> list[BaseException | None]:
        log = AuditLog(path)
        monkeypatch.setattr(os, "fsync", failing)
        outcomes = await asyncio.gather(
            *(log.record(ALICE, METHOD, [f"t-{n}"], grpc.StatusCode.OK) for n in range(10)), return_exceptions=True
        )
        monkeypatch.undo()  # the disk is back, but the log stays refused
        with pytest.raises(AuditUnavailable):
            await log.record(ALICE, METHOD, ["later"], grpc.StatusCode.OK)
        await log.aclose()
        return outcomes

    outcomes = asyncio.run(record())
    assert all(isinstance(outcome, AuditUnavailable) for outcome in outcomes), outcomes
    assert all(isinstance(outcome.__cause__, OSError) for outcome in outcomes if outcome is not None)
    assert outcomes[0] is not None and outcomes[0].code == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert path.read_bytes() == durable  # cut back to what was durable: a restart continues it
    assert audit.verify(path).entries == 3


def test_more_entries_waiting_than_the_limit_are_refused_not_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "QUEUED_ENTRIES_MAX", 3)
    path = tmp_path / "audit.log"

    async def record() -> list[BaseException | None]:
        log = AuditLog(path)
        outcomes = await asyncio.gather(
            *(log.record(ALICE, METHOD, [f"t-{n}"], grpc.StatusCode.OK) for n in range(5)), return_exceptions=True
        )
        await log.aclose()
        return outcomes

    outcomes = asyncio.run(record())
    assert outcomes[:3] == [None, None, None]
    assert all(isinstance(outcome, AuditUnavailable) for outcome in outcomes[3:])
    assert audit.verify(path).entries == 3


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"

    async def record() -> None:
        log = AuditLog(path)
        waiting = [asyncio.create_task(log.record(ALICE, METHOD, [f"t-{n}"], grpc.StatusCode.OK)) for n in range(5)]
        await asyncio.sleep(0)  # all queued; the writer has not run
        log.close()
        await asyncio.gather(*waiting)
        with pytest.raises(AuditUnavailable):
            await log.record(ALICE, METHOD, ["late"], grpc.StatusCode.OK)

    asyncio.run(record())
    assert audit.verify(path).entries == 5


# --- opening ---------------------------------------------------------------------------------


def test_the_file_is_0600_in_new_directories_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "audit.log"
    old_umask = os.umask(0o022)
    try:
        write_log(path, 1)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    first = write_log(path, 3)
    second = write_log(path, 2)
    entries = entries_of(path)
    assert [entry["seq"] for entry in entries] == [1, 2, 3, 4, 5]
    assert entries[3]["prev"] == first.head == entries[2]["hash"]
    result = audit.verify(path)
    assert result.ok and result.entries == 5 and result.head == second.head


def test_reopening_a_long_log_checks_only_its_tail_and_continues(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 200)
    lines = lines_of(path)
    # 200 lines of ~330 bytes and a 512 KiB window: lengthen the log past it with big entries.
    big = [f"{'x' * 120}-{n}" for n in range(64)]

    async def record() -> None:
        async with AuditLog(path) as log:
            for _ in range(60):
                await log.record(ALICE, METHOD, big, grpc.StatusCode.OK)

    asyncio.run(record())
    assert path.stat().st_size > audit.TAIL_BYTES
    lines = lines_of(path)
    lines[1] = lines[1].replace(b"transfer-2", b"transfer-X")  # outside the window: found by verify only
    path.write_bytes(b"".join(lines))
    write_log(path, 1)
    assert audit.verify(path).problem == audit.Problem(2, 2, Damage.EDITED, "the entry does not match its hash")


@pytest.mark.parametrize("where", ["last", "middle"])
def test_opening_a_log_whose_tail_does_not_chain_is_refused(tmp_path: Path, where: str) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 5)
    lines = lines_of(path)
    index = -1 if where == "last" else 2
    lines[index] = lines[index].replace(b'"OK"', b'"NOT_FOUND"')
    path.write_bytes(b"".join(lines))
    with pytest.raises(AuditLogBroken, match=r"cannot be continued.*edited") as refused:
        AuditLog(path)
    assert isinstance(refused.value, StartupError)  # serving.main exits 2 with the message
    assert path.read_bytes() == b"".join(lines)  # left as evidence


def test_a_log_open_in_one_server_is_refused_to_another(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    first = AuditLog(path)
    try:
        with pytest.raises(AuditOpenError, match="open in another process"):
            AuditLog(path)
    finally:
        first.close()
    AuditLog(path).close()


def test_an_interrupted_write_after_the_last_line_is_not_an_entry_and_is_cut_off_on_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 3)
    whole = path.read_bytes()
    path.write_bytes(whole + lines_of(path)[0][:40])
    result = audit.verify(path)
    assert result.ok and result.entries == 3 and result.torn_bytes == 40
    write_log(path, 1)
    assert path.read_bytes().startswith(whole)
    result = audit.verify(path)
    assert result.ok and result.entries == 4 and result.torn_bytes == 0


# --- verify ----------------------------------------------------------------------------------

EDITS: dict[str, Callable[[Any], Any]] = {
    "seq": lambda seq: seq + 10,
    "time": lambda time: time.replace("T", "T0")[:-1] + "Z",
    "caller": lambda caller: "spiffe://yunkai/operator/mallory",
    "method": lambda method: "/yunkai.ledger.v1.Ledger/LookupAccounts",
    "ids": lambda ids: [*ids, "transfer-999"],
    "ids_unlisted": lambda unlisted: unlisted + 1,
    "status": lambda status: "PERMISSION_DENIED",
    "detail": lambda detail: "nothing happened",
    "prev": lambda prev: "1" * 64,
    "hash": lambda digest: "2" * 64,
}


@pytest.mark.parametrize("field", FIELDS)
def test_editing_any_field_of_an_entry_is_found_at_its_line(tmp_path: Path, field: str) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 5)
    lines = lines_of(path)
    entry = json.loads(lines[2])
    edited = {**entry, field: EDITS[field](entry[field])}
    problem = problem_in(path, [*lines[:2], spelled(edited), *lines[3:]])
    assert (problem.line, problem.damage) == (3, Damage.EDITED), problem


def test_an_entry_edited_and_rehashed_is_found_at_the_next_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 5)
    lines = lines_of(path)
    forged = rehashed({**json.loads(lines[2]), "caller": "spiffe://yunkai/operator/mallory"})
    problem = problem_in(path, [*lines[:2], spelled(forged), *lines[3:]])
    assert (problem.line, problem.seq, problem.damage) == (4, 4, Damage.EDITED), problem
    assert "prev" in problem.detail


def test_reformatting_a_line_is_an_edit(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 5)
    lines = lines_of(path)
    reformatted = json.dumps(json.loads(lines[2])).encode() + b"\n"  # same content, spaces added
    problem = problem_in(path, [*lines[:2], reformatted, *lines[3:]])
    assert (problem.line, problem.damage) == (3, Damage.EDITED), problem


def test_deleting_a_middle_line_is_found_where_it_was(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 5)
    lines = lines_of(path)
    problem = problem_in(path, [*lines[:2], *lines[3:]])
    assert (problem.line, problem.seq, problem.damage) == (3, 4, Damage.REMOVED), problem
    assert "entry 3 is missing" in problem.detail


def test_deleting_the_first_lines_is_found_at_the_top(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 5)
    problem = problem_in(path, lines_of(path)[2:])
    assert (problem.line, problem.seq, problem.damage) == (1, 3, Damage.REMOVED), problem
    assert "entries 1 to 2 are missing" in problem.detail


def test_swapping_two_lines_is_found_at_the_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 5)
    lines = lines_of(path)
    problem = problem_in(path, [lines[0], lines[2], lines[1], *lines[3:]])
    assert (problem.line, problem.seq, problem.damage) == (2, 3, Damage.REORDERED), problem
    assert "at line 3" in problem.detail


def test_a_repeated_line_is_found_where_it_repeats(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 5)
    lines = lines_of(path)
    problem = problem_in(path, [*lines[:3], lines[1], *lines[3:]])
    assert (problem.line, problem.seq, problem.damage) == (4, 2, Damage.REORDERED), problem


@pytest.mark.parametrize(
    "garbage", [b"garbage\n", b"\n", b'{"seq": 3}\n', b"[1, 2]\n", b'{"hash": "' + b"0" * 64 + b'"}\n']
)
def test_a_garbage_line_is_found_at_its_line(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 5)
    lines = lines_of(path)
    inserted = problem_in(path, [*lines[:2], garbage, *lines[2:]])
    assert (inserted.line, inserted.damage) == (3, Damage.UNPARSABLE), inserted
    replaced = problem_in(path, [*lines[:4], garbage])
    assert (replaced.line, replaced.damage) == (5, Damage.UNPARSABLE), replaced


def test_a_rehashed_entry_that_is_not_an_audit_entry_is_unparsable(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 3)
    lines = lines_of(path)
    alien = rehashed({**json.loads(lines[1]), "ids": [1, 2]})
    problem = problem_in(path, [lines[0], spelled(alien), lines[2]])
    assert (problem.line, problem.damage) == (2, Damage.UNPARSABLE), problem


def test_removing_the_tail_is_found_only_against_a_head_kept_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = write_log(path, 5)
    lines = lines_of(path)
    path.write_bytes(b"".join(lines[:3]))
    assert audit.verify(path).ok  # the file alone cannot tell
    problem = audit.verify(path, expect_head=log.head).problem
    assert problem is not None and (problem.line, problem.damage) == (4, Damage.REMOVED), problem
    path.write_bytes(b"".join(lines))
    grown = audit.verify(path, expect_head=json.loads(lines[2])["hash"])  # a head anchored earlier
    assert grown.ok and grown.entries == 5


def test_an_empty_log_verifies_with_the_genesis_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path).close()
    assert audit.verify(path) == audit.VerifyResult(0, audit.GENESIS, None)


# --- yunkai audit verify ---------------------------------------------------------------------


def run_cli(*words: str) -> int:
    parser = argparse.ArgumentParser(prog="yunkai audit verify")
    audit_cli.add_arguments(parser)
    return audit_cli.main(parser.parse_args(list(words)))


def test_verify_command_says_ok_with_the_count_and_head_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.log"
    log = write_log(path, 5)
    assert run_cli(str(path)) == 0
    assert capsys.readouterr().out == f"ok: 5 entries, head {log.head}\n"
    assert run_cli(str(path), "--head", log.head) == 0


def test_verify_command_prints_the_first_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.log"
    log = write_log(path, 5)
    lines = lines_of(path)
    path.write_bytes(b"".join([*lines[:2], *lines[3:]]))
    assert run_cli(str(path)) == 1
    out = capsys.readouterr().out
    assert out.startswith("line 3 (seq 4): removed: ") and "2 entries before it" in out
    path.write_bytes(b"".join(lines[:4]))
    assert run_cli(str(path), "--head", log.head) == 1
    assert "removed" in capsys.readouterr().out


def test_verify_command_exits_2_on_a_missing_file_or_a_bad_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(str(tmp_path / "nowhere.log")) == 2
    assert "no such file" in capsys.readouterr().err
    write_log(tmp_path / "audit.log", 1)
    assert run_cli(str(tmp_path / "audit.log"), "--head", "abc") == 2
    assert "not a SHA-256" in capsys.readouterr().err
    assert run_cli(str(tmp_path)) == 2  # a directory
    assert "cannot read" in capsys.readouterr().err
