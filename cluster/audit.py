"""`yunkai audit verify PATH [--head HASH]`: check a server's audit log (serving/audit.py).

Walks the whole file and prints `ok: N entries, head <hash>` (exit 0), or the first line
where the chain breaks and how (edited, removed, reordered, unparsable; exit 1). A file that
cannot be read, or a --head that is not a SHA-256 in hex, exits 2. With --head, a head
recorded earlier (copied off the server), the file must still contain that entry: the one
way to find entries removed from the tail, which leave a valid shorter chain.
"""

from __future__ import annotations

import argparse
import sys

from serving import audit

EXIT_BROKEN = 1
EXIT_CANNOT_READ = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the audit log file")
    parser.add_argument(
        "--head",
        metavar="HASH",
        help="a head hash recorded earlier (the server's AuditLog.head): the log must contain that entry",
    )


def main(args: argparse.Namespace) -> int:
    head: str | None = args.head
    if head is not None and not audit.is_hash(head):
        print(f"yunkai audit verify: --head {head!r} is not a SHA-256 in lowercase hex", file=sys.stderr)
        return EXIT_CANNOT_READ
    try:
        result = audit.verify(args.path, expect_head=head)
    except FileNotFoundError:
        print(f"yunkai audit verify: {args.path}: no such file", file=sys.stderr)
        return EXIT_CANNOT_READ
    except OSError as error:
        print(f"yunkai audit verify: {args.path}: cannot read it: {error.strerror or error}", file=sys.stderr)
        return EXIT_CANNOT_READ
    if result.problem is not None:
        print(result.problem)
        print(f"the {result.entries} entries before it chain, up to head {result.head}")
        return EXIT_BROKEN
    print(f"ok: {result.entries} entries, head {result.head}")
    if result.torn_bytes:
        print(f"after them: {result.torn_bytes} bytes of an interrupted write (no entry; the server drops them)")
    return 0
