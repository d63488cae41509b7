"""The node's internal yunkai.node.v1.Node service: its slot table, credit legs from other nodes, slot moves.

Everything here arrives from another cluster process and is checked like a client's
request: a message that does not parse, a malformed leg, an unfenced leg or a table that
would move an epoch backwards is refused with a status naming what is wrong, and changes
nothing. A well-formed leg that contradicts what this node holds (node/outbox.py, C) is
refused alone, in its own result, with a code and the field; the other legs of its call go
ahead. Nothing a peer sends reaches an assert: those guard this node's own invariants. The
move calls are node/slotmove.py's protocol. GetSlots also carries the node's trial balance
(node/books.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import Message

import serving
from node import metrics, outbox, state_machine as sm
from node.backup import LegHold
from node.engine import Engine, Overloaded
from node.holding import Deadline, Within, fence_of, submit_holding
from node.identity import Identity
from node.keys import account_slot
from node.replication import Replica, ReplicaRefused
from node.slotmove import MoveError, SlotMoves
from node.slots import SlotTable
from proto import ledger_pb2 as pb, node_pb2
from serving import BadRequest, Context, Refused, authz, parse_request
from serving.audit import AuditUnavailable

log = logging.getLogger("yunkai.node.internal")

NODE_SERVICE = "yunkai.node.v1.Node"
APPLY_CREDIT_LEGS = f"/{NODE_SERVICE}/ApplyCreditLegs"
IN_PROCESS = "in-process"  # the audit detail of a call a node made to itself without gRPC

REFUSALS: serving.Refusals = (
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    # A stale migration id, a slot in the wrong state: the controller aborts the move.
    (MoveError, grpc.StatusCode.FAILED_PRECONDITION),
    # A replication call from a node this one's table marks down.
    (ReplicaRefused, grpc.StatusCode.FAILED_PRECONDITION),
)


class NodeService:
    """Handlers of yunkai.node.v1.Node over a node's engine, slot table and slot moves."""

    def __init__(
        self,
        engine: Engine,
        slots: SlotTable,
        moves: SlotMoves,
        identity: Identity,
        replica: Replica,
        zone: str = "",
        legs: LegHold | None = None,
        audit_own: authz.AuditOwn | None = None,
    ) -> None:
        self.zone = zone
        self.audit_own = audit_own or authz.audit_nothing  # the gate's entry for a call to itself
        self.legs = legs or LegHold()  # a backup's hold on the legs this node receives (node/backup.py)
        self.engine = engine
        self.slots = slots
        self.moves = moves
        self.identity = identity
        self.replica = replica

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, serving.Handler] = {
            "GetSlots": self.get_slots,
            "AssignSlots": self.assign_slots,
            "ApplyCreditLegs": self.apply_credit_legs,
            "PrepareImport": self.prepare_import,
            "StartExport": self.start_export,
            "FreezeSlot": self.freeze_slot,
            "AbortMove": self.abort_move,
            "SilentFollowers": self.silent_followers,
        }
        streams = {
            "ImportSlot": grpc.stream_unary_rpc_method_handler(self.import_slot),
            "Replicate": grpc.stream_stream_rpc_method_handler(self.replicate),
        }
        return serving.unary_service(
            NODE_SERVICE,
            methods,
            REFUSALS,
            metrics.requests_total,
            metrics.request_latency_s,
            log,
            streams,
            sessions=True,
        )

    # --- the slot table -------------------------------------------------------------------

    async def get_slots(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.GetSlotsRequest, data)
        table = self.slots.to_proto(request.summary)
        table.moves.extend(self.moves.report())
        table.node_id = self.identity.node_id
        table.cluster_id = self.identity.cluster_id
        table.controller_term = self.identity.term
        table.zone = self.zone
        table.spiffe_id = self.slots.spiffe_id
        table.books.CopyFrom(self.engine.books.to_proto(len(self.engine.relay)))
        return table

    async def assign_slots(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.AssignSlotsRequest, data)
        error = self.identity.refusal(request.controller_term, request.cluster_id, request.node_id)
        error = error or self.slots.check(request)
        if error is not None:
            raise Refused(error)
        self.identity.accept(request.controller_term, request.cluster_id)
        self.replica.down = frozenset(request.down_nodes)
        error = self.engine.assign_slots(request)
        if error is not None:
            raise Refused(error)
        return node_pb2.AssignSlotsResponse(slots_owned=self.slots.owned_count())

    # --- credit legs (node/outbox.py, transition C) ------------------------------------------

    async def apply_credit_legs(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.ApplyCreditLegsRequest, data)
        sender = authz.caller()
        uri = None if sender is authz.ANONYMOUS else sender.uri
        return await self._apply_legs(request, uri, context, context.peer())

    async def apply_own_legs(self, request: node_pb2.ApplyCreditLegsRequest) -> node_pb2.ApplyCreditLegsResponse:
        """Legs this node sends to itself (its debit slot and the credit slot both led here, but
        not writable in one batch: node/slots.py `same_batch`), without gRPC (node/relay.py):
        checked and applied as ApplyCreditLegs would, sender included (this node's identity
        must still be the debit slot's primary by its table), within the relay's call deadline,
        and audited as the gate audits the call, its detail saying it was made in-process. What a
        gRPC caller would see as a status (a full queue, an audit log that cannot take the entry)
        is raised as Refused with that status, so the relay counts and retries it alike."""
        deadline = Within(self.engine.relay.limits.rpc_timeout_s)
        sender = self.slots.spiffe_id or None  # under --insecure the network path checks no sender either
        try:
            response = await self._apply_legs(request, sender, deadline, "this node")
        except Overloaded as error:
            await self._audit_own(request, grpc.StatusCode.RESOURCE_EXHAUSTED, f"{IN_PROCESS}: {error}")
            raise Refused(str(error), grpc.StatusCode.RESOURCE_EXHAUSTED) from error
        except BaseException as error:
            status = serving.refusal(error, REFUSALS) or grpc.StatusCode.UNKNOWN
            if isinstance(error, asyncio.CancelledError):  # the relay's deadline passed
                status = grpc.StatusCode.CANCELLED
            await self._audit_own(request, status, f"{IN_PROCESS}: {error}")
            raise
        await self._audit_own(request, grpc.StatusCode.OK, IN_PROCESS)
        return response

    async def _audit_own(self, request: node_pb2.ApplyCreditLegsRequest, status: grpc.StatusCode, detail: str) -> None:
        try:
            await self.audit_own(APPLY_CREDIT_LEGS, request, status, detail)
        except AuditUnavailable as error:  # as the gate answers a call it cannot audit
            raise Refused(str(error), grpc.StatusCode.UNAVAILABLE) from error

    async def _apply_legs(
        self, request: node_pb2.ApplyCreditLegsRequest, sender: str | None, deadline: Deadline, peer: str
    ) -> node_pb2.ApplyCreditLegsResponse:
        legs = request.legs
        limit = self.engine.limits.batch_events_max
        if not legs:
            raise BadRequest("legs: the batch is empty")
        if len(legs) > limit:
            raise BadRequest(f"legs: {len(legs)} legs, more than the limit of {limit}")
        fence = fence_of(request.fence)
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
            slot = account_slot(leg.credit_account_id, self.slots.slots_total)
            epoch = fence.get(slot)
            if not epoch:
                raise BadRequest(f"fence: does not name slot {slot} of legs[{index}] at an epoch")
            slots.append(slot)
            if not self.slots.serves(slot, epoch):
                results[index] = sm.Result(pb.WRONG_SLOT)
                continue
            if sender is not None and not self._sent_by_debit_primary(leg, sender):
                results[index] = sm.Result(pb.DEBIT_ACCOUNT_NOT_FOUND, outbox.SENDER_FIELD)
                continue
            submit.append((leg, slot, epoch))
            positions.append(index)
        if submit:
            async with self.legs.admit():  # waits while a backup's cut holds incoming legs
                answers = await submit_holding(self.slots, self.engine.submit_credit_legs, submit, deadline)
            for position, result in zip(positions, answers, strict=True):
                results[position] = result
        response = node_pb2.ApplyCreditLegsResponse()
        for leg, slot, r in zip(legs, slots, results, strict=True):
            assert r is not None
            added = response.results.add(code=r.code, field=r.field, timestamp=r.timestamp)
            if r.code == pb.WRONG_SLOT:
                added.redirect.CopyFrom(self.slots.redirect(slot))
            elif r.code in outbox.PROTOCOL_REFUSALS:
                log.warning(
                    "a credit leg that breaks the outbox protocol was refused",
                    extra={"code": pb.ResultCode.Name(r.code), "field": r.field, "leg": str(leg)[:500], "peer": peer},
                )
        metrics.request_events.labels("ApplyCreditLegs").observe(len(legs))
        return response

    def _sent_by_debit_primary(self, leg: node_pb2.CreditLeg, sender: str) -> bool:
        """Whether the node that sent `leg` is its debit slot's primary by this node's table: no
        other node's certificate may speak for that slot's accounts (node/outbox.py, C)."""
        debit_slot = account_slot(leg.debit_account_id, self.slots.slots_total)
        return self.slots.primary_spiffe_id(debit_slot) == sender

    # --- replication (node/replication.py) ----------------------------------------------------

    async def replicate(self, requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        """A primary's link (node/replication.py): each request written and answered in order.
        A request that does not parse, or is refused whole, ends the stream."""
        sender = authz.caller()
        uri = "" if sender is authz.ANONYMOUS else sender.uri
        with serving.open_ended():  # the link stays open while the primary keeps it: a stop ends it
            async for data in requests:
                try:
                    reply = await self.replica.apply(parse_request(node_pb2.ReplicateRequest, data), uri)
                except (BadRequest, ReplicaRefused) as error:
                    code = serving.refusal(error, REFUSALS)
                    assert code is not None
                    log.info("a replication request was refused", extra={"status": code.name, "reason": str(error)})
                    await context.abort(code, str(error))
                yield reply.SerializeToString()

    async def silent_followers(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.SilentFollowersRequest, data)
        if request.silent_after_ms == 0:
            raise BadRequest("silent_after_ms must be positive")
        replicator = self.engine.replicator
        followers = replicator.silent(request.silent_after_ms / 1000) if replicator is not None else []
        return node_pb2.SilentFollowersResponse(followers=followers)

    # --- slot moves (node/slotmove.py) -----------------------------------------------------

    async def prepare_import(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.PrepareImportRequest, data)
        self._fence(request.controller_term)
        self.moves.prepare_import(request.migration_id, request.slot, request.source)
        return node_pb2.PrepareImportResponse()

    def _fence(self, term: int) -> None:
        """A move step from a deposed controller is refused; a newer term is recorded first."""
        error = self.identity.refusal(term)
        if error is not None:
            raise Refused(error)
        self.identity.accept(term)

    async def import_slot(self, chunks: AsyncIterator[bytes], context: Context) -> bytes:
        try:
            reply = await self.moves.import_slot(parse_request(node_pb2.SlotChunk, raw) async for raw in chunks)
        except Exception as error:
            code = serving.refusal(error, REFUSALS)
            if code is None:
                raise
            log.info("import refused", extra={"status": code.name, "reason": str(error)})
            await context.abort(code, str(error))
        return reply.SerializeToString()

    async def start_export(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.StartExportRequest, data)
        self._fence(request.controller_term)
        return await self.moves.start_export(request.migration_id, request.slot, request.target)

    async def freeze_slot(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.FreezeSlotRequest, data)
        self._fence(request.controller_term)
        return await self.moves.freeze(request.migration_id, request.slot)

    async def abort_move(self, data: bytes, context: Context) -> Message:
        request = parse_request(node_pb2.AbortMoveRequest, data)
        self._fence(request.controller_term)
        return node_pb2.AbortMoveResponse(was_active=self.moves.abort(request.migration_id, request.slot))
