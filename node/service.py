"""The node's gRPC surface: the public Ledger service and the internal Node service.

Ledger handlers take the raw request bytes so that a message that does not parse gets a
clear INVALID_ARGUMENT instead of gRPC's generic deserialisation failure. Each handler
checks the request as a whole (batch size, malformations, fence) before anything is
queued, so a bad request changes nothing; answers stateless failures (ID_INVALID, ...)
and fencing (WRONG_SLOT) itself; and hands the rest to the engine, which answers once
the events are durable. Reads are served from committed state without the engine.

Writes (and credit legs) for a slot frozen by a move wait until the move ends, at most the
caller's deadline less a margin (HOLD_S_MAX without one), while the request's other events
go ahead; then they are submitted, or answered WRONG_SLOT naming the slot's new owner.
Reads of a frozen slot wait likewise, so that no read misses a write its new owner took.
The Node service's move calls are node/slotmove.py's protocol.

A transfer whose credit account lives on another node is answered IN_FLIGHT by the engine
(node/outbox.py); CreateTransfers then waits for its outcome within the caller's deadline
(less a margin, at most `in_flight_wait_s`; that long when the caller set none) and
answers the outcome if it arrives in time, else IN_FLIGHT. The internal ApplyCreditLegs
applies the legs other nodes' relays send, fenced and through the same group commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from node import metrics, outbox, state_machine as sm
from node.engine import Engine, Overloaded
from node.slotmove import MoveError
from node.storage import account_slot
from proto import ledger_pb2 as pb, node_pb2, node_pb2_grpc
from proto.serving import BadRequest, parse_request

LEDGER_SERVICE = "yunkai.ledger.v1.Ledger"
HISTORY_PAGE_DEFAULT = 100
IN_FLIGHT_WAIT_S_DEFAULT = 3.0
# Kept from the caller's deadline to build and send the answer after waiting: a fixed part
# and a share of what remains (a loaded node is slower to answer).
IN_FLIGHT_WAIT_MARGIN_S = 0.05
IN_FLIGHT_WAIT_MARGIN_SHARE = 0.1
HOLD_S_MAX = 5.0

E = TypeVar("E")


def _hold_budget_s(context: grpc.aio.ServicerContext) -> float:
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return HOLD_S_MAX
    return max(0.0, min(HOLD_S_MAX, remaining * (1 - IN_FLIGHT_WAIT_MARGIN_SHARE) - IN_FLIGHT_WAIT_MARGIN_S))


async def submit_holding(
    engine: Engine,
    submit: Callable[[Sequence[tuple[E, int, int]]], Awaitable[list[sm.Result]]],
    queued: Sequence[tuple[E, int, int]],
    context: grpc.aio.ServicerContext,
) -> list[sm.Result]:
    """Submit `queued`, holding the events of frozen slots until their move ends."""
    if not engine.frozen_slots():  # the hot path: no move is freezing anything
        return await submit(queued)
    slots = engine.slots
    held = [i for i, (_event, slot, _epoch) in enumerate(queued) if slots[slot].frozen]
    if not held:
        return await submit(queued)
    results: list[sm.Result | None] = [None] * len(queued)
    ready = [i for i, (_event, slot, _epoch) in enumerate(queued) if not slots[slot].frozen]
    ready_results = submit([queued[i] for i in ready]) if ready else None  # queued now, awaited below
    await engine.wait_thawed({queued[i][1] for i in held}, _hold_budget_s(context))
    again: list[int] = []
    for i in held:
        _event, slot, epoch = queued[i]
        if slots[slot].frozen or not engine.serves(slot, epoch):
            results[i] = sm.Result(pb.WRONG_SLOT)
        else:
            again.append(i)
    if again:
        for i, result in zip(again, await submit([queued[i] for i in again]), strict=True):
            results[i] = result
    if ready_results is not None:
        for i, result in zip(ready, await ready_results, strict=True):
            results[i] = result
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def _fence(fence: pb.Fence) -> dict[int, int] | None:
    if not fence.slots and not fence.epochs:
        return None
    if len(fence.slots) != len(fence.epochs):
        raise BadRequest(f"fence: {len(fence.slots)} slots but {len(fence.epochs)} epochs")
    return dict(zip(fence.slots, fence.epochs, strict=True))


class LedgerService:
    """Handlers of yunkai.ledger.v1.Ledger over an Engine."""

    def __init__(self, engine: Engine, in_flight_wait_s: float = IN_FLIGHT_WAIT_S_DEFAULT) -> None:
        self.engine = engine
        self.storage = engine.storage
        self.slots_total = engine.slots_total
        self.batch_events_max = engine.limits.batch_events_max
        self.in_flight_wait_s = in_flight_wait_s

    # --- plumbing --------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]] = {
            "CreateAccounts": self.create_accounts,
            "CreateTransfers": self.create_transfers,
            "LookupAccounts": self.lookup_accounts,
            "LookupTransfers": self.lookup_transfers,
            "GetAccountTransfers": self.get_account_transfers,
            "ChangeAccounts": self.change_accounts,
        }
        handlers = {name: grpc.unary_unary_rpc_method_handler(self._wrap(name, fn)) for name, fn in methods.items()}
        return grpc.method_handlers_generic_handler(LEDGER_SERVICE, handlers)

    def _wrap(
        self, name: str, fn: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        latency = metrics.request_latency_s.labels(name)

        async def handle(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = time.perf_counter()
            try:
                reply = await fn(data, context)
            except BadRequest as error:
                metrics.requests_total.labels(name, "INVALID_ARGUMENT").inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            except Overloaded as error:
                metrics.requests_total.labels(name, "RESOURCE_EXHAUSTED").inc()
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
            metrics.requests_total.labels(name, "OK").inc()
            latency.observe(time.perf_counter() - started)
            return reply

        return handle

    def _check_batch(self, field: str, count: int) -> None:
        if count == 0:
            raise BadRequest(f"{field}: the batch is empty")
        if count > self.batch_events_max:
            raise BadRequest(f"{field}: {count} events, more than the limit of {self.batch_events_max}")

    def _route(
        self,
        field: str,
        events: Sequence[E],
        key_of: Callable[[E], str],
        malformed: Callable[[E], str | None],
        validate: Callable[[E], sm.Result | None],
        fence: dict[int, int] | None,
    ) -> tuple[list[sm.Result | None], list[tuple[E, int, int]], list[int]]:
        """Answer what can be answered before commit; return the rest to submit."""
        self._check_batch(field, len(events))
        for index, event in enumerate(events):
            reason = malformed(event)
            if reason is not None:
                raise BadRequest(f"{field}[{index}].{reason}")
        results: list[sm.Result | None] = [None] * len(events)
        submit: list[tuple[E, int, int]] = []
        positions: list[int] = []
        serves = self.engine.serves
        total = self.slots_total
        for index, event in enumerate(events):
            # The state machine's own stateless checks, answered here so that an event
            # with an invalid id never needs a slot; the committer applies the rest.
            invalid = validate(event)
            if invalid is not None:
                results[index] = invalid
                continue
            slot = account_slot(key_of(event), total)
            epoch = 0
            if fence is not None:
                fenced = fence.get(slot)
                if fenced is None:
                    raise BadRequest(f"fence: does not name slot {slot} of {field}[{index}]")
                epoch = fenced
            if not serves(slot, epoch):
                results[index] = sm.Result(pb.WRONG_SLOT)
                continue
            submit.append((event, slot, epoch))
            positions.append(index)
        return results, submit, positions

    def _fill(self, method: str, out: Any, slots: list[int], results: Sequence[sm.Result]) -> None:
        """Append one EventResult per result to the response's repeated field `out`."""
        add = out.add
        wrong_slot = pb.WRONG_SLOT
        for slot, r in zip(slots, results, strict=True):
            result = add(code=r.code, field=r.field, timestamp=r.timestamp, state=r.state)
            if r.code == wrong_slot:
                result.redirect.CopyFrom(self.engine.redirect(slot))
        counter = metrics.events_total
        for code in {r.code for r in results}:
            counter.labels(method, pb.ResultCode.Name(code)).inc(sum(1 for r in results if r.code == code))

    async def _write(
        self,
        kind: _WriteKind[E],
        events: Sequence[E],
        fence_message: pb.Fence,
        submit: Callable[[Sequence[tuple[E, int, int]]], Awaitable[list[sm.Result]]],
        out: Any,
        context: grpc.aio.ServicerContext,
        settle: Callable[[Sequence[E], list[sm.Result]], Awaitable[None]] | None = None,
    ) -> None:
        fence = _fence(fence_message)
        results, queued, positions = self._route(kind.field, events, kind.key_of, kind.malformed, kind.validate, fence)
        metrics.request_events.labels(kind.method).observe(len(events))
        if queued:
            answers = await submit_holding(self.engine, submit, queued, context)
            for position, result in zip(positions, answers, strict=True):
                results[position] = result
        final: list[sm.Result] = []
        slots: list[int] = []
        for event, r in zip(events, results, strict=True):
            assert r is not None
            final.append(r)
            slots.append(account_slot(kind.key_of(event), self.slots_total) if r.code == pb.WRONG_SLOT else 0)
        if settle is not None and queued:
            await settle(events, final)
        self._fill(kind.method, out, slots, final)

    # --- writes -----------------------------------------------------------------------------

    async def create_transfers(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = parse_request(pb.CreateTransfersRequest, data)
        response = pb.CreateTransfersResponse()
        await self._write(
            _TRANSFERS,
            request.transfers,
            request.fence,
            self.engine.submit_transfers,
            response.results,
            context,
            lambda transfers, results: self._settle(transfers, results, context),
        )
        return response.SerializeToString()

    async def _settle(
        self, transfers: Sequence[pb.Transfer], results: list[sm.Result], context: grpc.aio.ServicerContext
    ) -> None:
        """Replace IN_FLIGHT results by the outcomes that arrive within the caller's deadline."""
        in_flight = pb.IN_FLIGHT
        positions = [index for index, r in enumerate(results) if r.code == in_flight]
        if not positions:
            return
        remaining = context.time_remaining()
        budget = self.in_flight_wait_s
        if remaining is not None:
            budget = min(budget, remaining * (1 - IN_FLIGHT_WAIT_MARGIN_SHARE) - IN_FLIGHT_WAIT_MARGIN_S)
        if budget <= 0:
            return
        relay = self.engine.relay
        futures = [relay.wait_for(transfers[i].debit_account_id, transfers[i].id) for i in positions]
        try:
            await asyncio.wait(futures, timeout=budget)
        finally:
            for future in futures:
                future.cancel()  # those still waiting; a settled one keeps its result
        for index, future in zip(positions, futures, strict=True):
            if not future.cancelled():
                results[index] = outbox.settled_result(future.result(), isinstance(results[index], outbox.Accepted))

    async def create_accounts(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = parse_request(pb.CreateAccountsRequest, data)
        response = pb.CreateAccountsResponse()
        await self._write(
            _ACCOUNTS, request.accounts, request.fence, self.engine.submit_accounts, response.results, context
        )
        return response.SerializeToString()

    async def change_accounts(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = parse_request(pb.ChangeAccountsRequest, data)
        response = pb.ChangeAccountsResponse()
        await self._write(
            _CHANGES, request.changes, request.fence, self.engine.submit_changes, response.results, context
        )
        return response.SerializeToString()

    # --- reads ------------------------------------------------------------------------------

    def _read_slot(self, account_id: str, fence: dict[int, int] | None, where: str) -> tuple[int, bool]:
        slot = account_slot(account_id, self.slots_total)
        epoch = 0
        if fence is not None:
            fenced = fence.get(slot)
            if fenced is None:
                raise BadRequest(f"fence: does not name slot {slot} of {where}")
            epoch = fenced
        return slot, self.engine.serves(slot, epoch) and not self.engine.slots[slot].frozen

    async def _hold_reads(self, account_ids: Iterable[str], context: grpc.aio.ServicerContext) -> None:
        """Reads of a frozen slot wait for its move to end, as writes do: once the move
        commits, its target may take writes that this node would not see. (Still frozen
        after the wait: answered WRONG_SLOT by _read_slot.)"""
        if self.engine.frozen_slots():
            total = self.slots_total
            slots = {account_slot(a, total) for a in account_ids if sm.id_valid(a)}
            await self.engine.wait_thawed(slots, _hold_budget_s(context))

    async def lookup_accounts(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = parse_request(pb.LookupAccountsRequest, data)
        self._check_batch("ids", len(request.ids))
        fence = _fence(request.fence)
        await self._hold_reads(request.ids, context)
        response = pb.LookupAccountsResponse()
        add = response.results.add
        account_entry = self.storage.account_entry
        for index, account_id in enumerate(request.ids):
            if not sm.id_valid(account_id):
                add(code=pb.ID_INVALID)
                continue
            slot, served = self._read_slot(account_id, fence, f"ids[{index}]")
            if not served:
                add(code=pb.WRONG_SLOT, redirect=self.engine.redirect(slot))
                continue
            entry = account_entry(account_id)
            if entry is None:
                add(code=pb.ACCOUNT_NOT_FOUND)
            else:
                add(code=pb.OK, account=entry[0])
        metrics.request_events.labels("LookupAccounts").observe(len(request.ids))
        return response.SerializeToString()

    async def lookup_transfers(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = parse_request(pb.LookupTransfersRequest, data)
        self._check_batch("keys", len(request.keys))
        fence = _fence(request.fence)
        await self._hold_reads((key.debit_account_id for key in request.keys), context)
        response = pb.LookupTransfersResponse()
        for index, key in enumerate(request.keys):
            result = response.results.add()
            if not sm.id_valid(key.debit_account_id) or not sm.id_valid(key.id):
                result.code = pb.ID_INVALID
                continue
            slot, served = self._read_slot(key.debit_account_id, fence, f"keys[{index}]")
            if not served:
                result.code = pb.WRONG_SLOT
                result.redirect.CopyFrom(self.engine.redirect(slot))
                continue
            raw = self.storage.transfer_bytes(key.debit_account_id, key.id)
            if raw is None:
                result.code = pb.TRANSFER_NOT_FOUND
            else:
                result.code = pb.OK
                result.transfer.MergeFromString(raw)
        metrics.request_events.labels("LookupTransfers").observe(len(request.keys))
        return response.SerializeToString()

    async def get_account_transfers(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = parse_request(pb.GetAccountTransfersRequest, data)
        if request.limit > self.batch_events_max:
            raise BadRequest(f"limit: {request.limit} is more than the limit of {self.batch_events_max}")
        response = pb.GetAccountTransfersResponse()
        if not sm.id_valid(request.account_id):
            response.code = pb.ID_INVALID
            return response.SerializeToString()
        fence = _fence(request.fence)
        await self._hold_reads([request.account_id], context)
        slot, served = self._read_slot(request.account_id, fence, "account_id")
        if not served:
            response.code = pb.WRONG_SLOT
            response.redirect.CopyFrom(self.engine.redirect(slot))
            return response.SerializeToString()
        if self.storage.account_entry(request.account_id) is None:
            response.code = pb.ACCOUNT_NOT_FOUND
            return response.SerializeToString()
        events, next_cursor = self.storage.history(
            request.account_id, request.cursor, request.newest_first, request.limit or HISTORY_PAGE_DEFAULT
        )
        response.code = pb.OK
        for raw in events:
            response.transfers.add().MergeFromString(raw)
        response.next_cursor = next_cursor
        return response.SerializeToString()


def _debit_of(transfer: pb.Transfer) -> str:
    return transfer.debit_account_id


def _id_of(account: pb.Account) -> str:
    return account.id


def _account_of(change: pb.AccountChange) -> str:
    return change.account_id


@dataclass(frozen=True)
class _WriteKind(Generic[E]):
    """How a write method's events are named, routed and checked."""

    method: str
    field: str
    key_of: Callable[[E], str]  # the account id whose slot the event belongs to
    malformed: Callable[[E], str | None]
    validate: Callable[[E], sm.Result | None]


_TRANSFERS = _WriteKind[pb.Transfer](
    "CreateTransfers", "transfers", _debit_of, sm.malformed_transfer, sm.validate_transfer
)
_ACCOUNTS = _WriteKind[pb.Account]("CreateAccounts", "accounts", _id_of, sm.malformed_account, sm.validate_account)
_CHANGES = _WriteKind[pb.AccountChange](
    "ChangeAccounts", "changes", _account_of, sm.malformed_change, sm.validate_change
)


class NodeService(node_pb2_grpc.NodeServicer):
    """The internal yunkai.node.v1.Node service: the slot table and credit legs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def GetSlots(  # noqa: N802 (gRPC method name)
        self, request: node_pb2.GetSlotsRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.GetSlotsResponse:
        return self.engine.slot_table()

    async def AssignSlots(  # noqa: N802
        self, request: node_pb2.AssignSlotsRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.AssignSlotsResponse:
        error = self.engine.assign_slots(request)
        if error is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, error)
        return node_pb2.AssignSlotsResponse(slots_owned=sum(1 for a in self.engine.slots if a.owned))

    async def ApplyCreditLegs(  # noqa: N802
        self, request: node_pb2.ApplyCreditLegsRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.ApplyCreditLegsResponse:
        started = time.perf_counter()
        try:
            response = await self._apply_credit_legs(request, context)
        except BadRequest as error:
            metrics.requests_total.labels("ApplyCreditLegs", "INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except Overloaded as error:
            metrics.requests_total.labels("ApplyCreditLegs", "RESOURCE_EXHAUSTED").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        metrics.requests_total.labels("ApplyCreditLegs", "OK").inc()
        metrics.request_latency_s.labels("ApplyCreditLegs").observe(time.perf_counter() - started)
        return response

    async def _apply_credit_legs(
        self, request: node_pb2.ApplyCreditLegsRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.ApplyCreditLegsResponse:
        engine = self.engine
        legs = request.legs
        if not legs:
            raise BadRequest("legs: the batch is empty")
        if len(legs) > engine.limits.batch_events_max:
            raise BadRequest(f"legs: {len(legs)} legs, more than the limit of {engine.limits.batch_events_max}")
        fence = _fence(request.fence)
        if fence is None:
            raise BadRequest("fence: credit legs are always fenced")
        for index, leg in enumerate(legs):
            reason = outbox.malformed_leg(leg)
            if reason is not None:
                raise BadRequest(f"legs[{index}].{reason}")
        slots: list[int] = []
        submit: list[tuple[node_pb2.CreditLeg, int, int]] = []
        positions: list[int] = []
        results: list[sm.Result | None] = [None] * len(legs)
        for index, leg in enumerate(legs):
            slot = account_slot(leg.credit_account_id, engine.slots_total)
            epoch = fence.get(slot)
            if not epoch:
                raise BadRequest(f"fence: does not name slot {slot} of legs[{index}] at an epoch")
            slots.append(slot)
            if not engine.serves(slot, epoch):
                results[index] = sm.Result(pb.WRONG_SLOT)
                continue
            submit.append((leg, slot, epoch))
            positions.append(index)
        if submit:
            answers = await submit_holding(engine, engine.submit_credit_legs, submit, context)
            for position, result in zip(positions, answers, strict=True):
                results[position] = result
        response = node_pb2.ApplyCreditLegsResponse()
        for slot, r in zip(slots, results, strict=True):
            assert r is not None
            added = response.results.add(code=r.code, timestamp=r.timestamp)
            if r.code == pb.WRONG_SLOT:
                added.redirect.CopyFrom(engine.redirect(slot))
        metrics.request_events.labels("ApplyCreditLegs").observe(len(legs))
        return response

    # --- slot moves (node/slotmove.py) -----------------------------------------------------

    async def PrepareImport(  # noqa: N802
        self, request: node_pb2.PrepareImportRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.PrepareImportResponse:
        moves = self.engine.moves
        await _move(context, _now(moves.prepare_import, request.migration_id, request.slot, request.source))
        return node_pb2.PrepareImportResponse()

    async def ImportSlot(  # noqa: N802
        self, request_iterator: AsyncIterator[node_pb2.SlotChunk], context: grpc.aio.ServicerContext
    ) -> node_pb2.ImportSlotResponse:
        return await _move(context, self.engine.moves.import_slot(request_iterator))

    async def StartExport(  # noqa: N802
        self, request: node_pb2.StartExportRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.StartExportResponse:
        return await _move(context, self.engine.moves.start_export(request.migration_id, request.slot, request.target))

    async def FreezeSlot(  # noqa: N802
        self, request: node_pb2.FreezeSlotRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.FreezeSlotResponse:
        return await _move(context, self.engine.moves.freeze(request.migration_id, request.slot))

    async def AbortMove(  # noqa: N802
        self, request: node_pb2.AbortMoveRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.AbortMoveResponse:
        was_active = await _move(context, _now(self.engine.moves.abort, request.migration_id, request.slot))
        return node_pb2.AbortMoveResponse(was_active=was_active)


T = TypeVar("T")


async def _now(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


async def _move(context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
    """A move call's answer; a MoveError (a stale id, a slot in the wrong state) is the
    controller's FAILED_PRECONDITION, with the reason."""
    try:
        return await call
    except MoveError as error:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        raise AssertionError("abort raises") from error
