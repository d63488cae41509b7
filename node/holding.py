"""What the services do with requests for a slot frozen by a move, and with their fences.

A write (or a credit leg) for a frozen slot waits until the move ends, at most the caller's
deadline less a margin (HOLD_S_MAX without one), while the request's other events go
ahead; then it is submitted, or answered WRONG_SLOT naming the slot's new owner if the move
committed. Reads of a frozen slot wait likewise, so that no read misses a write its new
owner took. The hot path pays one comparison: nothing is frozen.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from node import state_machine as sm
from node.slots import SlotTable
from proto import contract, ledger_pb2 as pb
from serving import BadRequest

HOLD_S_MAX = 5.0
# Kept from the caller's deadline to build and send the answer after waiting: a fixed part
# and a share of what remains (a loaded node is slower to answer).
WAIT_MARGIN_S = 0.05
WAIT_MARGIN_SHARE = 0.1

E = TypeVar("E")
Submit = Callable[[Sequence[tuple[E, int, int]]], Awaitable[list[sm.Result]]]


class Deadline(Protocol):
    """What a wait needs of its caller: how long it may still take (a gRPC call's context is one)."""

    def time_remaining(self) -> float | None: ...


class Within:
    """The deadline of a call a node makes to itself, without gRPC (node/relay.py's own legs)."""

    def __init__(self, seconds: float) -> None:
        self._until = time.monotonic() + seconds

    def time_remaining(self) -> float:
        return max(0.0, self._until - time.monotonic())


def wait_budget_s(context: Deadline, longest_s: float) -> float:
    """How long a handler may wait for something and still answer within the caller's deadline."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return longest_s
    return max(0.0, min(longest_s, remaining * (1 - WAIT_MARGIN_SHARE) - WAIT_MARGIN_S))


def fence_of(fence: pb.Fence) -> dict[int, int] | None:
    """The request's fence as {slot: epoch}, or None for an unfenced request."""
    if not fence.slots and not fence.epochs:
        return None
    problem = contract.malformed_fence(fence)
    if problem is not None:
        raise BadRequest(problem)
    return dict(zip(fence.slots, fence.epochs, strict=True))


async def submit_holding(
    slots: SlotTable, submit: Submit[E], queued: Sequence[tuple[E, int, int]], context: Deadline
) -> list[sm.Result]:
    """Submit `queued` (event, slot, epoch), holding the events of frozen slots until their move ends."""
    if not slots.held_count():  # the hot path: no move is freezing anything
        return await submit(queued)
    held = [i for i, (_event, slot, _epoch) in enumerate(queued) if slots[slot].frozen]
    if not held:
        return await submit(queued)
    results: list[sm.Result | None] = [None] * len(queued)
    ready = [i for i, (_event, slot, _epoch) in enumerate(queued) if not slots[slot].frozen]
    ready_results = submit([queued[i] for i in ready]) if ready else None  # queued now, awaited below
    await slots.wait_thawed({queued[i][1] for i in held}, wait_budget_s(context, HOLD_S_MAX))
    again: list[int] = []
    for i in held:
        _event, slot, epoch = queued[i]
        if slots[slot].frozen or not slots.serves(slot, epoch):
            results[i] = sm.Result(pb.WRONG_SLOT)
        else:
            again.append(i)
    if again:
        for i, result in zip(again, await submit([queued[i] for i in again]), strict=True):
            results[i] = result
    if ready_results is not None:
        for i, result in zip(ready, await ready_results, strict=True):
            results[i] = result
    done = [r for r in results if r is not None]
    assert len(done) == len(queued), results
    return done


async def hold_reads(slots: SlotTable, read_slots: set[int], context: Deadline) -> None:
    """Reads of a frozen slot wait for its move to end, as writes do: once the move commits,
    its target may take writes that this node would not see. (Still frozen after the wait:
    the reader answers WRONG_SLOT.)"""
    if slots.held_count():
        await slots.wait_thawed(read_slots, wait_budget_s(context, HOLD_S_MAX))
