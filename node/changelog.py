"""The slot change log and slot digests: what was committed to a slot, in order, and a checksum of its range.

The change log
  Each batch the committer writes that touches a followed slot adds one entry per such slot:
  the slot's next sequence number and its puts and deletes in the batch, in order. The
  committer hands every batch to `capture` just before writing it (a failed write stops the
  node, so nothing captured is left unwritten). A follower reads the entries in order and
  waits on `grew` for more. Entries are kept in memory, only for followed slots, and at
  most LOG_ENTRIES_MAX per slot: past that the follower has fallen too far behind and
  `overflowed` says so (a slot move then fails and starts again from a new snapshot).
  Slot moves (node/slotmove.py) follow a slot from their snapshot to their cutover.

The digest
  A slot range's digest is the sum, mod 2**64, of blake2b-64(len(key) | key | value) over
  its keys. It can be kept incrementally: a snapshot's keys add up, and each log entry
  changes it by its new values minus the old ones (read before the entry is applied).
  Equal digests at the same sequence mean two copies hold the same keys and values.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from node.keys import slot_of_key
from node.storage import Storage

MASK = (1 << 64) - 1
LOG_ENTRIES_MAX = 200_000

Op = tuple[bytes, bytes | None]  # (key, value), value None: deleted


def key_digest(key: bytes, value: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(len(key).to_bytes(2, "big") + key + value, digest_size=8).digest(), "big")


def digest_change(
    ops: Iterable[Op],
    old_value: Callable[[bytes], bytes | None],
    on_change: Callable[[bytes, bytes | None, bytes | None], None] | None = None,
) -> int:
    """How applying `ops` in order changes a range's digest, given each key's value before;
    `on_change(key, before, after)` is told each op with the value it replaces (a move's
    HeldTally), from the same reads."""
    change = 0
    seen: dict[bytes, bytes | None] = {}
    for key, value in ops:
        before = seen[key] if key in seen else old_value(key)
        if on_change is not None:
            on_change(key, before, value)
        if before is not None:
            change -= key_digest(key, before)
        if value is not None:
            change += key_digest(key, value)
        seen[key] = value
    return change & MASK


def range_digest(storage: Storage, slot: int) -> tuple[int, int]:
    """The digest and key count of a slot's whole range as committed (tests, checks)."""
    digest = count = 0
    for key, value in storage.slot_items(slot):
        digest = (digest + key_digest(key, value)) & MASK
        count += 1
    return digest, count


@dataclass
class Followed:
    """One followed slot's log: the last sequence, the digest's change since following
    began, and the entries not yet taken."""

    seq: int = 0
    digest: int = 0
    entries: deque[tuple[int, list[Op]]] = field(default_factory=deque)
    grew: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False


class ChangeLog:
    """Per-slot log of committed writes, kept while something follows the slot."""

    def __init__(self) -> None:
        self._followed: dict[int, Followed] = {}

    def following(self) -> bool:
        """Whether any slot is followed (the committer records its batches only then)."""
        return bool(self._followed)

    def follows(self, slot: int) -> bool:
        return slot in self._followed

    def follow(self, slot: int) -> Followed:
        assert slot not in self._followed, slot
        followed = self._followed[slot] = Followed()
        return followed

    def unfollow(self, slot: int) -> None:
        self._followed.pop(slot, None)

    def capture(self, ops: Sequence[Op], old_value: Callable[[bytes], bytes | None]) -> None:
        """A batch about to be written: append each followed slot's part of it."""
        by_slot: dict[int, list[Op]] = {}
        for op in ops:
            slot = slot_of_key(op[0])
            if slot is not None and slot in self._followed:
                by_slot.setdefault(slot, []).append(op)
        for slot, slot_ops in by_slot.items():
            followed = self._followed[slot]
            followed.seq += 1
            followed.digest = (followed.digest + digest_change(slot_ops, old_value)) & MASK
            if len(followed.entries) >= LOG_ENTRIES_MAX:
                followed.overflowed = True
                followed.entries.clear()
            if not followed.overflowed:
                followed.entries.append((followed.seq, slot_ops))
            followed.grew.set()
