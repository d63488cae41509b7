"""What a yunkai process writes to disk is its user's alone: directories 0700, files 0600;
and `fsync_path`, the one way we make a file, or a directory's entries, durable by path.

Ledger data, shard maps, loans and decisions are nobody else's business on a shared host.
`private_files` sets the process umask (every file and directory created afterwards, by us or
by RocksDB, leaves out group and others); `private_dir` also makes a data directory, or
tightens one that exists, to 0700, which keeps out everyone else even from files written
before the umask was set.
"""

from __future__ import annotations

import logging
import os
import stat

UMASK = 0o077
DIR_MODE = 0o700

log = logging.getLogger("yunkai.files")


def private_files() -> None:
    """From now on, files this process creates are 0600 and directories 0700 (at most)."""
    os.umask(UMASK)


def private_dir(path: str) -> None:
    """`path` created or tightened to 0700, and `private_files` in force: call it before a
    server or tool opens its data directory."""
    private_files()
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & ~DIR_MODE:
        try:
            os.chmod(path, DIR_MODE)
        except OSError:  # not ours (a mount point), or read-only: the operator decides who reads it
            log.warning("cannot make the data directory private", extra={"path": path, "mode": oct(mode)})


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync what `path` names: a file's data, or a directory's entries (after a create, a
    rename or an unlink in it, so that the change itself survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
