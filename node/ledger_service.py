"""The node's public yunkai.ledger.v1.Ledger service.

Each handler checks the request as a whole (batch size, malformations, fence) before
anything is queued, so a bad request changes nothing; answers the stateless failures
(ID_INVALID, ...) and fencing (WRONG_SLOT) itself; and hands the rest to the engine, which
answers once the events are durable. Reads are served from committed state without the
engine. Requests for a slot frozen by a move are held until it ends (node/holding.py).

A transfer whose credit account lives on another node is answered IN_FLIGHT by the engine
(node/outbox.py); CreateTransfers then waits for its outcome within the caller's deadline
(less a margin, at most `in_flight_wait_s`; that long when the caller set none) and
answers the outcome if it arrives in time, else IN_FLIGHT.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

import serving
from node import keys, metrics, outbox, records, state_machine as sm
from node.engine import Engine, Overloaded
from node.holding import HOLD_S_MAX, Submit, fence_of, hold_reads, submit_holding, wait_budget_s
from node.keys import account_slot
from node.slots import SlotTable
from node.storage import Storage
from proto import contract, ledger_pb2 as pb
from serving import BadRequest, Context, parse_request
from serving.authz import ANONYMOUS, caller

log = logging.getLogger("yunkai.node.ledger")

IN_FLIGHT_WAIT_S_DEFAULT = 3.0
# What one ScanRecords reply carries of records' values at most (its pages then say `more`):
# far under a message's limit, whatever the pages asked.
SCAN_REPLY_BYTES_MAX = 4 * 1024 * 1024

E = TypeVar("E")

# The state machine's stateless checks of each write method's events (answered here, so
# that an event with an invalid id never needs a slot).
_VALIDATE: dict[str, Callable[[Any], sm.Result | None]] = {
    contract.CREATE_TRANSFERS.name: sm.validate_transfer,
    contract.CREATE_ACCOUNTS.name: sm.validate_account,
    contract.CHANGE_ACCOUNTS.name: sm.validate_change,
}


class LedgerService:
    """Handlers of yunkai.ledger.v1.Ledger over a node's engine, slot table and storage."""

    def __init__(
        self,
        engine: Engine,
        slots: SlotTable,
        storage: Storage,
        in_flight_wait_s: float = IN_FLIGHT_WAIT_S_DEFAULT,
    ) -> None:
        self.engine = engine
        self.slots = slots
        self.storage = storage
        self.slots_total = storage.slots_total
        self.batch_events_max = engine.limits.batch_events_max
        self.in_flight_wait_s = in_flight_wait_s

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, serving.Handler] = {
            contract.CREATE_ACCOUNTS.name: self.create_accounts,
            contract.CREATE_TRANSFERS.name: self.create_transfers,
            contract.CHANGE_ACCOUNTS.name: self.change_accounts,
            contract.LOOKUP_ACCOUNTS.name: self.lookup_accounts,
            contract.LOOKUP_TRANSFERS.name: self.lookup_transfers,
            contract.GET_ACCOUNT_TRANSFERS.name: self.get_account_transfers,
            contract.COMMIT_RECORDS.name: self.commit_records,
            contract.LOOKUP_RECORDS.name: self.lookup_records,
            contract.SCAN_RECORDS.name: self.scan_records,
        }
        assert set(methods) == {m.name for m in contract.LEDGER_METHODS}, methods
        refusals: serving.Refusals = ((Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),)
        return serving.unary_service(
            contract.LEDGER_SERVICE,
            methods,
            refusals,
            metrics.requests_total,
            metrics.request_latency_s,
            log,
            sessions=True,
        )

    # --- checks ---------------------------------------------------------------------------

    def _check_batch(self, field: str, count: int) -> None:
        if count == 0:
            raise BadRequest(f"{field}: the batch is empty")
        if count > self.batch_events_max:
            raise BadRequest(f"{field}: {count} events, more than the limit of {self.batch_events_max}")

    @staticmethod
    def _fenced_epoch(slot: int, fence: dict[int, int] | None, field: str, index: int) -> int:
        """The epoch the request routed `slot` with (0: unfenced); `field[index]` names the
        event in the refusal of a fence that leaves its slot out (index -1: the field alone)."""
        if fence is None:
            return 0
        epoch = fence.get(slot)
        if epoch is None:
            where = f"{field}[{index}]" if index >= 0 else field
            raise BadRequest(f"fence: does not name slot {slot} of {where}")
        return epoch

    def _route(
        self, method: contract.LedgerMethod[E], events: Sequence[E], fence: dict[int, int] | None
    ) -> tuple[list[sm.Result | None], list[tuple[E, int, int]], list[int]]:
        """Answer what can be answered before commit; return the rest to submit and where it goes."""
        self._check_batch(method.field, len(events))
        malformed = method.malformed
        assert malformed is not None
        for index, event in enumerate(events):
            reason = malformed(event)
            if reason is not None:
                raise BadRequest(f"{method.field}[{index}].{reason}")
        validate = _VALIDATE[method.name]
        results: list[sm.Result | None] = [None] * len(events)
        submit: list[tuple[E, int, int]] = []
        positions: list[int] = []
        serves, total, key_of = self.slots.serves, self.slots_total, method.key_of
        for index, event in enumerate(events):
            invalid = validate(event)
            if invalid is not None:
                results[index] = invalid
                continue
            slot = account_slot(key_of(event), total)
            epoch = self._fenced_epoch(slot, fence, method.field, index)
            if not serves(slot, epoch):
                results[index] = sm.Result(pb.WRONG_SLOT)
                continue
            submit.append((event, slot, epoch))
            positions.append(index)
        return results, submit, positions

    # --- writes -----------------------------------------------------------------------------

    async def _write(
        self,
        method: contract.LedgerMethod[E],
        events: Sequence[E],
        fence: pb.Fence,
        submit: Submit[E],
        context: Context,
    ) -> list[sm.Result]:
        _stamp(events)
        results, queued, positions = self._route(method, events, fence_of(fence))
        metrics.request_events.labels(method.name).observe(len(events))
        if queued:
            answers = await submit_holding(self.slots, submit, queued, context)
            for position, result in zip(positions, answers, strict=True):
                results[position] = result
        done = [r for r in results if r is not None]
        assert len(done) == len(events), results
        return done

    def _fill(
        self, method: str, out: Any, events: Sequence[E], key_of: Callable[[E], str], results: Sequence[sm.Result]
    ) -> None:
        """Append one EventResult per result to the response's repeated field `out`."""
        add = out.add
        wrong_slot = pb.WRONG_SLOT
        for event, r in zip(events, results, strict=True):
            result = add(code=r.code, field=r.field, timestamp=r.timestamp, state=r.state)
            if r.code == wrong_slot:
                result.redirect.CopyFrom(self.slots.redirect(account_slot(key_of(event), self.slots_total)))
        counter = metrics.events_total
        for code in {r.code for r in results}:
            counter.labels(method, pb.ResultCode.Name(code)).inc(sum(1 for r in results if r.code == code))

    async def create_transfers(self, data: bytes, context: Context) -> Message:
        method = contract.CREATE_TRANSFERS
        request = parse_request(pb.CreateTransfersRequest, data)
        results = await self._write(method, request.transfers, request.fence, self.engine.submit_transfers, context)
        await self._settle(request.transfers, results, context)
        response = pb.CreateTransfersResponse()
        self._fill(method.name, response.results, request.transfers, method.key_of, results)
        return response

    async def _settle(self, transfers: Sequence[pb.Transfer], results: list[sm.Result], context: Context) -> None:
        """Replace IN_FLIGHT results by the outcomes that arrive within the caller's deadline."""
        in_flight = pb.IN_FLIGHT
        positions = [index for index, r in enumerate(results) if r.code == in_flight]
        if not positions:
            return
        budget = wait_budget_s(context, self.in_flight_wait_s)
        if budget <= 0:
            return
        futures = [self.engine.outcome(transfers[i].debit_account_id, transfers[i].id) for i in positions]
        try:
            await asyncio.wait(futures, timeout=budget)
        finally:
            for future in futures:
                future.cancel()  # those still waiting; a settled one keeps its result
        for index, future in zip(positions, futures, strict=True):
            if not future.cancelled():
                results[index] = outbox.settled_result(future.result(), isinstance(results[index], outbox.Accepted))

    async def create_accounts(self, data: bytes, context: Context) -> Message:
        method = contract.CREATE_ACCOUNTS
        request = parse_request(pb.CreateAccountsRequest, data)
        results = await self._write(method, request.accounts, request.fence, self.engine.submit_accounts, context)
        response = pb.CreateAccountsResponse()
        self._fill(method.name, response.results, request.accounts, method.key_of, results)
        return response

    async def change_accounts(self, data: bytes, context: Context) -> Message:
        method = contract.CHANGE_ACCOUNTS
        request = parse_request(pb.ChangeAccountsRequest, data)
        results = await self._write(method, request.changes, request.fence, self.engine.submit_changes, context)
        response = pb.ChangeAccountsResponse()
        self._fill(method.name, response.results, request.changes, method.key_of, results)
        return response

    # --- reads ------------------------------------------------------------------------------

    def _readable(self, account_id: str, fence: dict[int, int] | None, field: str, index: int) -> bool:
        """Whether this node answers a read of the account now (else WRONG_SLOT)."""
        slot = account_slot(account_id, self.slots_total)
        readable = self.slots.readable(slot, self._fenced_epoch(slot, fence, field, index))
        return readable and not self.engine.awaiting_followers(slot)

    def _redirect(self, account_id: str) -> pb.SlotRedirect:
        return self.slots.redirect(account_slot(account_id, self.slots_total))

    async def _hold_reads(self, account_ids: Sequence[str], context: Context) -> None:
        """Reads of a frozen slot wait for its move to end; reads of a slot whose last write
        awaits its followers wait for them (nobody reads a write that may not survive)."""
        if self.slots.held_count() or self.engine.replicating():
            total = self.slots_total
            await self._hold_slots({account_slot(a, total) for a in account_ids if sm.id_valid(a)}, context)

    async def _hold_slots(self, read_slots: set[int], context: Context) -> None:
        if self.slots.held_count() or self.engine.replicating():
            await hold_reads(self.slots, read_slots, context)
            if self.engine.replicating():
                await self.engine.settled(read_slots, wait_budget_s(context, HOLD_S_MAX))

    async def lookup_accounts(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.LookupAccountsRequest, data)
        self._check_batch("ids", len(request.ids))
        fence = fence_of(request.fence)
        await self._hold_reads(request.ids, context)
        response = pb.LookupAccountsResponse()
        add = response.results.add
        account_entry = self.storage.account_entry
        readable = self._readable
        for index, account_id in enumerate(request.ids):
            if not sm.id_valid(account_id):
                add(code=pb.ID_INVALID)
                continue
            if not readable(account_id, fence, "ids", index):
                add(code=pb.WRONG_SLOT, redirect=self._redirect(account_id))
                continue
            entry = account_entry(account_id)
            if entry is None:
                add(code=pb.ACCOUNT_NOT_FOUND)
            else:
                add(code=pb.OK, account=entry[0])
        metrics.request_events.labels(contract.LOOKUP_ACCOUNTS.name).observe(len(request.ids))
        return response

    async def lookup_transfers(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.LookupTransfersRequest, data)
        self._check_batch("keys", len(request.keys))
        fence = fence_of(request.fence)
        await self._hold_reads([key.debit_account_id for key in request.keys], context)
        response = pb.LookupTransfersResponse()
        for index, key in enumerate(request.keys):
            result = response.results.add()
            if not sm.id_valid(key.debit_account_id) or not sm.id_valid(key.id):
                result.code = pb.ID_INVALID
                continue
            if not self._readable(key.debit_account_id, fence, "keys", index):
                result.code = pb.WRONG_SLOT
                result.redirect.CopyFrom(self._redirect(key.debit_account_id))
                continue
            raw = self.storage.transfer_bytes(key.debit_account_id, key.id)
            if raw is None:
                result.code = pb.TRANSFER_NOT_FOUND
            else:
                result.code = pb.OK
                result.transfer.MergeFromString(raw)
        metrics.request_events.labels(contract.LOOKUP_TRANSFERS.name).observe(len(request.keys))
        return response

    async def get_account_transfers(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.GetAccountTransfersRequest, data)
        problem = contract.malformed_history(request, self.batch_events_max)
        if problem is not None:
            raise BadRequest(problem)
        response = pb.GetAccountTransfersResponse()
        if not sm.id_valid(request.account_id):
            response.code = pb.ID_INVALID
            return response
        fence = fence_of(request.fence)
        await self._hold_reads([request.account_id], context)
        if not self._readable(request.account_id, fence, "account_id", -1):
            response.code = pb.WRONG_SLOT
            response.redirect.CopyFrom(self._redirect(request.account_id))
            return response
        if self.storage.account_entry(request.account_id) is None:
            response.code = pb.ACCOUNT_NOT_FOUND
            return response
        events, next_cursor = self.storage.history(
            request.account_id, request.cursor, request.newest_first, request.limit or contract.HISTORY_PAGE_DEFAULT
        )
        response.code = pb.OK
        for raw in events:
            response.transfers.add().MergeFromString(raw)
        response.next_cursor = next_cursor
        return response

    # --- slot-local records (node/records.py) ---------------------------------------------

    async def commit_records(self, data: bytes, context: Context) -> Message:
        method = contract.COMMIT_RECORDS
        request = parse_request(pb.CommitRecordsRequest, data)
        commits = request.commits
        self._check_batch("commits", len(commits))
        for index, commit in enumerate(commits):
            reason = contract.malformed_commit(commit)
            if reason is not None:
                raise BadRequest(f"commits[{index}].{reason}")
        weight = sum(records.weight(commit) for commit in commits)
        if weight > self.engine.limits.queue_events_max:  # never queued: it would be refused as busy forever
            raise BadRequest(
                f"commits: {len(commits)} commits weigh {weight} events (one each, one per account and transfer), more"
                f" than this node queues ({self.engine.limits.queue_events_max}); send fewer at once"
            )
        fence = fence_of(request.fence)
        uri = _caller_uri()
        results: list[sm.Result | None] = [None] * len(commits)
        submit: list[tuple[pb.Commit, int, int]] = []
        positions: list[int] = []
        for index, commit in enumerate(commits):
            for write in commit.writes:
                write.record.updated_by = uri
            for transfer in commit.transfers:
                transfer.created_by = uri
            for account in commit.accounts:
                account.created_by = uri
            slot, refused = records.check(commit, self.slots_total)
            if refused is not None:
                results[index] = refused
                continue
            epoch = self._fenced_epoch(slot, fence, "commits", index)
            if not self.slots.serves(slot, epoch):
                results[index] = sm.Result(pb.WRONG_SLOT)
                continue
            submit.append((commit, slot, epoch))
            positions.append(index)
        metrics.request_events.labels(method.name).observe(len(commits))
        if submit:
            answers = await submit_holding(self.slots, self.engine.submit_commits, submit, context)
            for position, result in zip(positions, answers, strict=True):
                results[position] = result
        done = [r for r in results if r is not None]
        assert len(done) == len(commits), results
        response = pb.CommitRecordsResponse()
        self._fill(method.name, response.results, commits, method.key_of, done)
        return response

    async def lookup_records(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.LookupRecordsRequest, data)
        self._check_batch("keys", len(request.keys))
        fence = fence_of(request.fence)
        await self._hold_reads([k.key for k in request.keys], context)
        response = pb.LookupRecordsResponse()
        total = self.slots_total
        for index, wanted in enumerate(request.keys):
            result = response.results.add()
            if not sm.id_valid(wanted.key) or not contract.kind_valid(wanted.kind):
                result.code = pb.ID_INVALID
                continue
            if not self._readable(wanted.key, fence, "keys", index):
                result.code = pb.WRONG_SLOT
                result.redirect.CopyFrom(self._redirect(wanted.key))
                continue
            raw = self.storage.get(keys.record_key(account_slot(wanted.key, total), wanted.kind, wanted.key))
            if raw is None:
                result.code = pb.RECORD_NOT_FOUND
            else:
                result.code = pb.OK
                result.record.MergeFromString(raw)
        metrics.request_events.labels(contract.LOOKUP_RECORDS.name).observe(len(request.keys))
        return response

    async def scan_records(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.ScanRecordsRequest, data)
        self._check_batch("scans", len(request.scans))
        for index, scan in enumerate(request.scans):
            reason = contract.malformed_scan(scan, self.slots_total)
            if reason is not None:
                raise BadRequest(f"scans[{index}].{reason}")
        fence = fence_of(request.fence)
        await self._hold_slots({scan.slot for scan in request.scans}, context)
        response = pb.ScanRecordsResponse()
        spent = 0
        for index, scan in enumerate(request.scans):
            page = response.results.add()
            epoch = self._fenced_epoch(scan.slot, fence, "scans", index)
            if not self.slots.readable(scan.slot, epoch) or self.engine.awaiting_followers(scan.slot):
                page.code = pb.WRONG_SLOT
                page.redirect.CopyFrom(self.slots.redirect(scan.slot))
                continue
            page.code = pb.OK
            kind = keys.record_prefix(scan.slot, scan.kind)
            prefix = kind + scan.prefix.encode()
            begin = max(prefix, kind + scan.after.encode() + b"\x00") if scan.after else prefix
            limit = scan.limit or contract.SCAN_LIMIT_DEFAULT
            for key, raw in self.storage.items(begin, kind[:-1] + b"\x01"):
                if not key.startswith(prefix):
                    break
                if len(page.records) == limit or (spent and spent + len(raw) > SCAN_REPLY_BYTES_MAX):
                    page.more = True
                    break
                page.records.add().MergeFromString(raw)
                spent += len(raw)
            if page.records:
                page.next_after = page.records[-1].key  # else, with more: ask again from `after`
        metrics.request_events.labels(contract.SCAN_RECORDS.name).observe(len(request.scans))
        return response


def _caller_uri() -> str:
    who = caller()
    return "" if who is ANONYMOUS else who.uri


def _stamp(events: Sequence[Any]) -> None:
    """Each event made by the current caller carries who it is (the gate authenticated it, or
    the router that forwarded it named it: serving/authz.py); whatever a caller wrote there is
    replaced. Replays compare only their inputs (node/state_machine.py), so a retry by another
    identity still answers EXISTS."""
    uri = _caller_uri()
    for event in events:
        event.created_by = uri
