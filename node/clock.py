"""Ledger timestamps: unique, increasing nanoseconds, never behind a previous run nor a primary's."""

from __future__ import annotations

import time

# A clock a peer sends (a primary's with its batches, a backup's with its last chunk) this far
# past this host's is refused: a broken host, or a forged value that would pin every later
# timestamp past 2**63 (history keys and paging hold 8 bytes).
CLOCK_AHEAD_MAX_NS = 600 * 10**9


def too_far_ahead(clock_ns: int) -> str:
    """Why a peer's clock is refused ("" if it is not)."""
    if clock_ns > time.time_ns() + CLOCK_AHEAD_MAX_NS:
        return f"clock_ns {clock_ns} is more than {CLOCK_AHEAD_MAX_NS // 10**9} s past this host's clock"
    return ""


class Clock:
    """The node's ledger clock; its last value is written with every batch (node/keys.py CLOCK)."""

    def __init__(self, last: int) -> None:
        self.last = last

    def next(self) -> int:
        now = time.time_ns()
        self.last = now if now > self.last else self.last + 1
        return self.last

    def raise_to(self, at_least: int) -> None:
        """Never stamp behind `at_least` (a primary's clock, shipped with its batches)."""
        self.last = max(self.last, at_least)
