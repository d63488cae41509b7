"""Ledger timestamps: unique, increasing nanoseconds, never behind a previous run nor a primary's."""

from __future__ import annotations

import time


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
