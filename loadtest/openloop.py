"""The open-loop driver of `yunkai bench`: sends at a fixed rate, whatever the answers do.

Operation i of a run is due at `start + i / rate`. A driver process owns every `procs`-th
operation (i = worker, worker + procs, ...) and issues each one at its due time (within a
tick, `TICK_S`), as its own task, whether or not earlier ones have answered: a slow answer
delays nobody else's send.
Latency counts from the due time, not from the send, so a send the driver could not issue
on time (its loop was busy) shows up in the latency instead of silently lowering the rate:
that is what removes coordinated omission. Sends issued more than `LATE_MS` after their due
time are also counted (`late_sends`); a run whose driver sent more than LATE_SHARE_MAX of its
operations late did not keep up (`driver_kept_up`): its latencies are partly the driver's.
Even a driver that keeps up sends a little after the due time (its loop wakes on whole
milliseconds, `TICK_S`), so each answer's latency from the send is kept too (`from_send_*`):
the system's own share, below the headline figures by about the issue lag (`issue_lag_*`).

`Recorder` keeps HDR histograms (microseconds) per operation kind and per second of due
time, counts per second of completion, and travels between processes as plain data
(`encode`), so a parent can merge its drivers' recorders (`merge`) and summarise (`summary`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

LATENCY_US_MAX = 120_000_000  # two minutes: anything slower is recorded as this
LATE_MS = 5.0  # a send issued later than this after its due time counts as late
# A run's driver kept up when at most this share of its sends were late: above it, its
# latencies include the load generator's own delay, and a result says so.
LATE_SHARE_MAX = 0.01
INFLIGHT_MAX_DEFAULT = 20_000  # operations of one driver awaiting answers (2 s of 10,000/s)
SHED = "SHED_INFLIGHT_MAX"
clock = time.monotonic  # CLOCK_MONOTONIC on Linux: one clock for every process of a run
# The shortest wait the driver asks its loop for. uvloop keeps timers in whole milliseconds
# (libuv's uv_timer_start takes milliseconds) and rounds a shorter delay to 0: a driver that
# slept `due - now` between sends due 0.5 ms apart (over 2,000/s per process) woke at once,
# over and over, and spent a whole core spinning (measured: 260,000 wake-ups a second, 0.96 s
# of CPU per second, for sleep(0.0005); 800 and 0.06 s for sleep(0.001)). What falls due
# within the tick goes out together when the loop wakes; its latency still counts from its
# own due time.
TICK_S = 0.001


def histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_US_MAX, 3)


@dataclass
class Recorder:
    """What one or more drivers saw: latencies per kind and per second, counts per second."""

    by_kind: dict[str, HdrHistogram] = field(default_factory=dict)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    by_second: dict[int, HdrHistogram] = field(default_factory=dict)  # by second of due time
    sent_by_second: dict[int, int] = field(default_factory=dict)
    errors_by_second: dict[int, int] = field(default_factory=dict)
    done_by_second: dict[int, int] = field(default_factory=dict)  # successes, by second of completion
    issue_lag: HdrHistogram = field(default_factory=histogram)
    from_send: HdrHistogram = field(default_factory=histogram)  # answer - send, where the send is known
    late_sends: int = 0
    last_done_s: float = 0.0  # seconds after the start of the run
    error_samples: list[str] = field(default_factory=list)

    def sent(self, due_s: float, lag_s: float) -> None:
        second = int(due_s)
        self.sent_by_second[second] = self.sent_by_second.get(second, 0) + 1
        self.issue_lag.record_value(_us(lag_s))
        if lag_s * 1000 > LATE_MS:
            self.late_sends += 1

    def done(self, kind: str, due_s: float, done_s: float, error: str | None, sent_s: float | None = None) -> None:
        """An answer: its latency from the due time, and from the send when `sent_s` says it."""
        latency_us = _us(done_s - due_s)
        if sent_s is not None:
            self.from_send.record_value(_us(done_s - sent_s))
        kind_histogram = self.by_kind.get(kind)
        if kind_histogram is None:
            kind_histogram = self.by_kind[kind] = histogram()
            self.errors_by_kind[kind] = 0
        kind_histogram.record_value(latency_us)
        second = int(due_s)
        second_histogram = self.by_second.get(second)
        if second_histogram is None:
            second_histogram = self.by_second[second] = histogram()
        second_histogram.record_value(latency_us)
        if error is None:
            finished = int(done_s)
            self.done_by_second[finished] = self.done_by_second.get(finished, 0) + 1
        else:
            self.errors_by_kind[kind] += 1
            self.errors_by_second[second] = self.errors_by_second.get(second, 0) + 1
            if len(self.error_samples) < 5:
                self.error_samples.append(f"{kind}: {error}")
        self.last_done_s = max(self.last_done_s, done_s)

    def encode(self) -> dict[str, Any]:
        """Plain data (histograms as HDR's compressed encoding) to send to another process."""
        return {
            "by_kind": {k: h.encode() for k, h in self.by_kind.items()},
            "errors_by_kind": self.errors_by_kind,
            "by_second": {s: h.encode() for s, h in self.by_second.items()},
            "sent_by_second": self.sent_by_second,
            "errors_by_second": self.errors_by_second,
            "done_by_second": self.done_by_second,
            "issue_lag": self.issue_lag.encode(),
            "from_send": self.from_send.encode(),
            "late_sends": self.late_sends,
            "last_done_s": self.last_done_s,
            "error_samples": self.error_samples,
        }

    def merge(self, encoded: dict[str, Any]) -> None:
        for kind, data in encoded["by_kind"].items():
            self.by_kind.setdefault(kind, histogram()).decode_and_add(data)
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + encoded["errors_by_kind"][kind]
        for second, data in encoded["by_second"].items():
            self.by_second.setdefault(int(second), histogram()).decode_and_add(data)
        for name in ("sent_by_second", "errors_by_second", "done_by_second"):
            mine: dict[int, int] = getattr(self, name)
            for second, count in encoded[name].items():
                mine[int(second)] = mine.get(int(second), 0) + count
        self.issue_lag.decode_and_add(encoded["issue_lag"])
        self.from_send.decode_and_add(encoded["from_send"])
        self.late_sends += encoded["late_sends"]
        self.last_done_s = max(self.last_done_s, encoded["last_done_s"])
        self.error_samples = (self.error_samples + encoded["error_samples"])[:5]

    def summary(self, rate: float, duration_s: float) -> dict[str, Any]:
        """The run's figures: overall, per kind, and per second."""
        total = histogram()
        for kind_histogram in self.by_kind.values():
            total.add(kind_histogram)
        ops = total.get_total_count()
        sent = sum(self.sent_by_second.values())
        errors = sum(self.errors_by_kind.values())
        # The run lasts until its last answer: a system that falls behind answers after the
        # schedule ends, and its achieved rate is lower than the offered one.
        elapsed_s = max(duration_s, self.last_done_s)
        seconds = range(0, max([int(duration_s) - 1, *self.by_second, *self.done_by_second]) + 1)
        per_second = []
        for second in seconds:
            second_histogram = self.by_second.get(second)
            per_second.append(
                {
                    "t_s": second,
                    "offered_per_s": self.sent_by_second.get(second, 0),
                    "achieved_per_s": self.done_by_second.get(second, 0),
                    "p50_ms": _ms(second_histogram, 50),
                    "p99_ms": _ms(second_histogram, 99),
                    "p999_ms": _ms(second_histogram, 99.9),
                    "max_ms": second_histogram.get_max_value() / 1000 if second_histogram else None,
                    "errors": self.errors_by_second.get(second, 0),
                }
            )
        return {
            "offered_per_s": rate,
            "duration_s": duration_s,
            "ops": ops,
            "ops_ok": ops - errors,
            "errors": errors,
            "achieved_per_s": (ops - errors) / elapsed_s if elapsed_s else 0.0,
            "elapsed_s": elapsed_s,
            "p50_ms": _ms(total, 50),
            "p99_ms": _ms(total, 99),
            "p999_ms": _ms(total, 99.9),
            "max_ms": total.get_max_value() / 1000 if ops else None,
            "late_sends": self.late_sends,
            "issue_lag_p50_ms": self.issue_lag.get_value_at_percentile(50) / 1000,
            "issue_lag_p99_ms": self.issue_lag.get_value_at_percentile(99) / 1000,
            "from_send_p50_ms": _ms(self.from_send, 50),
            "from_send_p99_ms": _ms(self.from_send, 99),
            "driver_kept_up": self.late_sends <= LATE_SHARE_MAX * sent,
            "error_samples": self.error_samples,
            "by_kind": {
                kind: {
                    "ops": h.get_total_count(),
                    "errors": self.errors_by_kind[kind],
                    "p50_ms": _ms(h, 50),
                    "p99_ms": _ms(h, 99),
                    "p999_ms": _ms(h, 99.9),
                }
                for kind, h in sorted(self.by_kind.items())
            },
            "per_second": per_second,
        }


def _us(seconds: float) -> int:
    return min(LATENCY_US_MAX, max(1, int(seconds * 1e6)))


def _ms(h: HdrHistogram | None, percentile: float) -> float | None:
    if h is None or h.get_total_count() == 0:
        return None
    return float(h.get_value_at_percentile(percentile)) / 1000


Operation = Callable[[int], Awaitable[tuple[str, str | None]]]
"""Runs operation number i; answers (its kind, None or what went wrong). Must not raise for
an outcome of the system under test (a refusal, a deadline): that is an error to count."""

Outcomes = list[tuple[int, str, str | None]]  # (operation number, kind, None or what went wrong)
Group = Callable[[list[int]], list[Awaitable[Outcomes]]]
"""Runs operations that fell due together as a few calls (one per kind of call); each
awaitable answers for the operations of its call, as soon as that call is answered."""


async def drive(
    operation: Operation,
    *,
    rate: float,
    duration_s: float,
    start: float,
    worker: int,
    procs: int,
    group: Group | None = None,
    inflight_max: int = INFLIGHT_MAX_DEFAULT,
) -> Recorder:
    """Issue this driver's share of `rate * duration_s` operations on schedule from `start`
    (a `clock()` value), wait for every answer, and return what was recorded.

    With `group`, the operations that are due when the loop wakes (its wake-ups are at
    least `TICK_S` apart) go out together through `group`, the way the SDK's coalescer would merge
    those callers' calls anyway, without one task and one SDK call per operation; each
    operation's latency still counts from its own due time.

    At most `inflight_max` operations wait for answers: one due beyond that is not sent and
    counts as an error (`SHED_INFLIGHT_MAX`), so a system that stops answering cannot make the
    driver grow without bound and fall behind its own schedule."""
    recorder = Recorder()
    total = int(rate * duration_s)
    inflight = 0

    async def one(index: int, due: float, sent: float) -> None:
        nonlocal inflight
        try:
            kind, error = await operation(index)
        finally:
            inflight -= 1
        recorder.done(kind, due - start, clock() - start, error, sent - start)

    async def together(call: Awaitable[Outcomes], sent: float) -> None:
        nonlocal inflight
        outcomes = await call
        inflight -= len(outcomes)
        for index, kind, error in outcomes:
            recorder.done(kind, index / rate, clock() - start, error, sent - start)

    index = worker
    async with asyncio.TaskGroup() as tasks:
        while index < total:
            now = clock()
            due = start + index / rate
            if due > now:
                await asyncio.sleep(max(due - now, TICK_S))
                continue
            # Everything already due goes out now: each on its own task, or grouped.
            burst = []
            while index < total and (due := start + index / rate) <= now:
                recorder.sent(due - start, now - due)
                if inflight >= inflight_max:
                    recorder.done("shed", due - start, now - start, SHED)
                    index += procs
                    continue
                inflight += 1
                if group is None:
                    tasks.create_task(one(index, due, now))
                else:
                    burst.append(index)
                index += procs
            if group is not None:
                for call in group(burst):
                    tasks.create_task(together(call, now))
    return recorder
