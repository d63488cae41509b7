"""Which slot an account lives in: the stable hash every yunkai process agrees on.

slot = CRC-32(routing key, UTF-8) mod S. CRC-32 is the IEEE 802.3 polynomial that zlib
implements (the same in every language and process, unlike Python's salted `hash()`).
The routing key is the whole account id, or only the part inside the first `{...}` when
the id has one with at least one character inside: Redis Cluster's hash tags
(cluster-spec.md, "Hash tags"), so `{c42}:deposit` and `{c42}:loan` share a slot.
"""

from __future__ import annotations

import zlib

SLOTS_TOTAL_DEFAULT = 4096
SLOTS_TOTAL_MAX = 65535  # slots are stored as two big-endian bytes in every key


def routing_key(account_id: str) -> str:
    """The part of an account id that decides its slot (Redis Cluster hash-tag rule)."""
    start = account_id.find("{")
    if start >= 0:
        end = account_id.find("}", start + 1)
        if end > start + 1:
            return account_id[start + 1 : end]
    return account_id


def slot_of(account_id: str, slots_total: int) -> int:
    """The slot of an account id, in [0, slots_total)."""
    return zlib.crc32(routing_key(account_id).encode()) % slots_total
