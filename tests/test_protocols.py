"""Deterministic, in-process tests of the node's cross-node protocols (DESIGN sections 5, 6 and 10).

Two hypothesis state machines drive the production code over real RocksDB stores (`Storage`
in temporary directories) with no process, socket or timer. The test supplies only the
transport (queues that reorder, duplicate and drop) and the committer's loop, so a protocol
bug shows as a failing, shrunk example within seconds.

1. The durable outbox (node/outbox.py). Two nodes split S = 8 slots (A: 0-3, B: 4-7). Each
   commits with the real steps of node/engine.py's committer (`_apply_leg_results`,
   `_apply_transfer`, `_expire_due`, `_commit`) and keeps its outbox in the real relay's
   bookkeeping (node/relay.py: `committed`, `take_results`, `current`); a leg travels to the
   other node as a message, is applied there behind the fence by `outbox.apply_credit_leg`,
   and its result travels back. Clients open accounts (limits, flags, another ledger),
   freeze, unfreeze and close them, send plain and pending transfers within and across
   nodes, post and void them, replay them, and let pendings expire on a virtual clock; a node
   may restart (kill -9) between any two steps and reload its outbox from disk. After every
   step: no balance is negative; each account's debits_pending is exactly what
   its in-flight and pending transfers hold, and its credits_pending lies between what the
   debit side says is surely and possibly reserved; the money credited but not yet posted on
   the debit side is exactly the amount of the outbox entries whose leg was applied; an
   outbox entry exists exactly while its transfer is IN_FLIGHT (a RELEASE: while its pending
   is voided or expired); the relay holds exactly the durable outbox; every transfer's record
   agrees with its first answer, and every replay answers the stored outcome; no leg is ever
   refused as a protocol violation (legs are applied as the engine applies them, with its
   check of the debit slot's owner); each node's trial balance holds (node/books.py: its
   imbalance is 0 and its sums are its accounts'). At quiescence (everything delivered, both
   outboxes empty; in a rule and at the end of every example): the nodes' positions add up to
   0, Σ debits_posted = Σ credits_posted,
   every account's posted and pending balances are what the final records of its transfers
   add up to, every transfer exists once, on its debit node, in a final state, and a replay
   of each answers its stored outcome and moves nothing.
2. The slot change log and digests (node/changelog.py) under a slot move (node/slotmove.py).
   A source node commits random batches through the same committer while it exports one
   slot: the real `SlotMoves.start_export` opens the snapshot and follows the slot in one
   step, then streams it one chunk per step while batches keep committing; the chunks reach
   the target's real `SlotMoves._apply_chunk` through a queue that reorders and duplicates
   the log entries. After every step: the source's range digest is the snapshot's plus the
   change log's incremental digest; the target's staged digest is the digest of what it
   staged, and once the snapshot is in, what it staged is the source's range as of the last
   log entry it applied; an entry after a gap is refused and changes nothing. At the end
   the real `SlotMoves.freeze` ships the tail, the target's real `_finish_import` compares
   seq and digest, and both ranges are equal, key for key.

An AssertionError raised inside production code is a protocol bug, never something to
weaken here. Private members of node/engine.py, node/relay.py and node/slotmove.py are used
on purpose: they are the code under test, driven one step at a time instead of by their
asyncio loops.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import random
import re
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, TypeVar
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from node import (
    clock as clock_module,
    engine as engine_module,
    keys,
    metrics,
    outbox,
    peerdata,
    slotmove,
    state_machine as sm,
)
from node.changelog import MASK, ChangeLog, Followed, key_digest, range_digest
from node.engine import Engine, Limits
from node.keys import account_slot
from node.overlay import Overlay
from node.relay import _SETTLING, Relay, RelayLimits, TakenResult, _Entry
from node.slotmove import MoveError, SlotMoves
from node.slots import IMPORTED, SEALED, SlotTable
from node.storage import Storage
from proto import ledger_pb2 as pb, node_pb2

# A passing run takes seconds; a failing one spends up to five minutes (hypothesis' own cap)
# shrinking its example, since each example opens two RocksDB stores.
pytestmark = pytest.mark.timeout(600)

SLOTS_TOTAL = 8
LEDGER = 1
OTHER_LEDGER = 2
CODE = 1
NS_PER_S = 1_000_000_000
# RocksDB directories go to a RAM-backed file system where there is one: opening and closing two
# stores per example is most of an example's time, and nothing here depends on the disk.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
ROUNDS_MAX = 20  # delivery rounds a drain may take before the test calls it stuck
RESOLVES = sm.POST_PENDING | sm.VOID_PENDING


def ids_in(slots: range | list[int], count: int, prefix: str) -> list[str]:
    """The first `count` ids `<prefix>0`, `<prefix>1`, ... whose slot is one of `slots`."""
    found: list[str] = []
    for number in itertools.count():
        candidate = f"{prefix}{number}"
        if account_slot(candidate, SLOTS_TOTAL) in slots:
            found.append(candidate)
            if len(found) == count:
                return found
    raise AssertionError("unreachable")


def copy_of(message: Any) -> Any:
    duplicate = type(message)()
    duplicate.CopyFrom(message)
    return duplicate


def name_of(code: int) -> str:
    return pb.ResultCode.Name(code)


def bucket(count: int) -> str:
    """A count as a coarse range, for hypothesis' statistics."""
    for low, high in ((0, 0), (1, 4), (5, 9), (10, 29)):
        if count <= high:
            return f"{low}-{high}" if high else "0"
    return "30+"


# Account specs: (flags, overdraft_limit, ledger). Limits make EXCEEDS_CREDITS / EXCEEDS_DEBITS
# reachable on either side of a cross-node transfer; another ledger makes the ledger checks so.
AccountSpec = tuple[int, int, int]
ACCOUNT_SPECS = st.tuples(
    st.sampled_from((0, 0, 0, sm.DEBITS_MUST_NOT_EXCEED_CREDITS, sm.CREDITS_MUST_NOT_EXCEED_DEBITS)),
    st.sampled_from((0, 40, 200)),
    st.sampled_from((LEDGER,) * 7 + (OTHER_LEDGER,)),
)
# One account in six is not opened at the start.
MAYBE_ACCOUNT_SPECS = st.tuples(st.integers(0, 5), ACCOUNT_SPECS).map(lambda drawn: None if drawn[0] == 0 else drawn[1])
TRANSFER_KINDS = ("plain", "plain", "pending", "pending with timeout")
RESOLVE_AMOUNTS = ("all", "the pending's", "part", "more")
PICK = st.integers(0, 1 << 16)  # an index into a list the machine holds (taken modulo its length)


class VirtualTime:
    """Stands in for the `time` module inside node/engine.py and node/clock.py: the ledger clock
    (`Clock.next`) and the expiry sweep (`_expire_due`) read `time_ns`, which moves only when a
    rule says so."""

    def __init__(self) -> None:
        self.now_ns = 1_700_000_000 * NS_PER_S

    def time_ns(self) -> int:
        return self.now_ns

    @staticmethod
    def perf_counter() -> float:
        return time.perf_counter()


T = TypeVar("T")


def run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits to its end (Engine._commit of a cycle without followers
    awaits nothing), outside any event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise AssertionError("the coroutine waited: a cycle with followers needs an event loop")


# --- one node in-process ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LegDelivery:
    """A credit leg as the credit node's ApplyCreditLegs takes it: fenced at `epoch`; its final
    result goes back to `debit_node` for the relay entry `entry` that was sent."""

    leg: node_pb2.CreditLeg
    epoch: int
    debit_node: str
    entry: _Entry


Event = pb.Account | pb.AccountChange | pb.Transfer | LegDelivery


class NetworkRelay(Relay):
    """node/relay.py's relay with the test's network in place of gRPC: its bookkeeping (entries
    added by `committed`, results handed to the committer by `take_results`, `current`) is the
    real one; `run` is never started, the test sends and answers the entries instead."""

    def undelivered(self) -> list[_Entry]:
        """The entries still waiting for a final result (the relay would send or retry them)."""
        return [entry for entry in self._entries.values() if entry.state != _SETTLING]

    def answered(self, entry: _Entry, code: sm.Code) -> None:
        """A final result arrived for `entry`. The real relay has one call per entry at a time and
        takes one result from it; a further copy here is the network's duplicate of a call whose
        answer was already taken, which the real relay never sees."""
        if entry.state == _SETTLING:
            return
        entry.state = _SETTLING
        self._results.append(TakenResult(entry, code))

    def legs(self) -> dict[bytes, node_pb2.CreditLeg]:
        return {key: entry.leg for key, entry in self._entries.items()}


class Node:
    """A node in-process: a real Storage, SlotTable and Engine, a mailbox, and `commit`, one cycle
    of Engine._commit_loop (without the futures that answer callers)."""

    def __init__(self, name: str, directory: str, owners: dict[int, str]) -> None:
        self.name = name
        self.storage = Storage(directory, SLOTS_TOTAL)
        self.changelog = ChangeLog()
        self.slots = SlotTable.load(self.storage, name, join=True)
        self.engine = Engine(self.storage, self.slots, self.changelog, Limits())
        self.relay = NetworkRelay(self.storage, self.slots.route, lambda: None, RelayLimits())
        self.engine.relay = self.relay
        table = [node_pb2.SlotOwnership(slot=slot, epoch=1, owner=owner) for slot, owner in sorted(owners.items())]
        error = self.engine.assign_slots(node_pb2.AssignSlotsRequest(map_version=1, self_address=name, slots=table))
        assert error is None, error
        # After a restart, as Engine.__init__ does for its own relay: every durable entry, checked
        # against its transfer. The relay logs and leaves alone one that does not pair (a disk
        # holds what peers brought too); here every entry is our own, so every one must load.
        entries = list(self.storage.outbox_entries(self.slots.owned()))
        self.relay.load(entries)
        assert set(self.relay.legs()) == {key for key, _leg in entries}, "an entry of our own did not load"
        self.mailbox: list[Event] = []

    def commit(self) -> list[tuple[Event, sm.Result]]:
        """Apply the credit nodes' results, then the mailbox, then due expiries, to one overlay,
        and write it durably, in the order and with the calls of Engine._commit_loop."""
        events, self.mailbox = self.mailbox, []
        engine = self.engine
        overlay = Overlay(self.storage)
        engine._apply_leg_results(overlay)
        outcomes = [(event, self._apply(overlay, event)) for event in events]
        engine._expire_due(overlay)
        if not overlay.empty():
            failed = run_to_end(engine._commit(overlay, []))
            assert not failed, failed  # no followers here: nothing fails
        return outcomes

    def _apply(self, overlay: Overlay, event: Event) -> sm.Result:
        """One event as the services check it and Engine._apply applies it: the request's
        checks, the fence, then the state machine or the outbox."""
        clock = self.engine.clock
        if isinstance(event, LegDelivery):
            leg = event.leg
            assert outbox.malformed_leg(leg) is None, leg  # our own debit node wrote it
            if not self.slots.serves(account_slot(leg.credit_account_id, SLOTS_TOTAL), event.epoch):
                return sm.Result(pb.WRONG_SLOT)
            return self.engine._apply_credit_leg(overlay, leg, clock.next())
        if isinstance(event, pb.Transfer):
            assert sm.malformed_transfer(event) is None and sm.validate_transfer(event) is None, event
            assert self.slots.serves(account_slot(event.debit_account_id, SLOTS_TOTAL), 0), event
            return self.engine._apply_transfer(overlay, event, clock.next())
        if isinstance(event, pb.Account):
            assert sm.malformed_account(event) is None and sm.validate_account(event) is None, event
            assert self.slots.serves(account_slot(event.id, SLOTS_TOTAL), 0), event
            return sm.apply_account(overlay, event, clock.next())
        assert sm.validate_change(event) is None, event
        assert self.slots.serves(account_slot(event.account_id, SLOTS_TOTAL), 0), event
        return sm.apply_change(overlay, event, clock.next())

    def account(self, account_id: str) -> pb.Account | None:
        """The committed account; the published copy readers get must be the durable one."""
        entry = self.storage.account_entry(account_id)
        durable = self.storage.get(keys.account_key_of(account_id, SLOTS_TOTAL))
        assert (entry is None) == (durable is None), (account_id, entry, durable)
        if entry is None:
            return None
        assert entry[1] == durable, (account_id, entry[0])
        return entry[0]

    def outbox(self) -> dict[bytes, node_pb2.CreditLeg]:
        return dict(self.storage.outbox_entries(self.slots.owned()))

    def check_books(self) -> None:
        """node/books.py's equation holds, and its sums are what the accounts add up to."""
        books = self.engine.books
        assert books.imbalance == 0, (self.name, books.debits, books.credits, books.position)
        debits = credits = 0
        for slot in self.slots.owned():
            for account in self.storage.slot_accounts(slot):
                debits += account.debits_posted + account.debits_pending
                credits += account.credits_posted + account.credits_pending
        assert (books.debits, books.credits) == (debits, credits), (self.name, books.debits, books.credits)

    def idle(self, now_ns: int) -> bool:
        """Nothing to commit, nothing in the outbox, and no expiry due for which the engine's
        ticker (Engine._expiry_ticker) would wake the committer: a node that would sleep."""
        expiries = self.engine._expiries
        return not (self.mailbox or len(self.relay) or (expiries and expiries[0][0] <= now_ns))


# --- clients, shared by both machines --------------------------------------------------------------

TransferKey = tuple[str, str]  # (debit_account_id, transfer_id)


def replay_answer(record: pb.Transfer) -> int:
    """What a replay of a stored transfer answers (node/state_machine.py step 6, node/outbox.py)."""
    if record.state == pb.TRANSFER_IN_FLIGHT:
        return pb.IN_FLIGHT
    if record.state == pb.TRANSFER_REJECTED:
        return record.result
    return pb.EXISTS


class LedgerMachine(RuleBasedStateMachine):
    """Clients of in-process nodes: accounts, transfers, posts and voids, account changes,
    replays and the clock. Subclasses build the nodes and say which node owns an account."""

    accounts: list[str]  # the pool the rules pick from (some are opened only by a rule)
    committers: list[str]  # the nodes the `commit` rule may run

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="yunkai-protocols-", dir=SCRATCH)
        self.clock = VirtualTime()
        self._patches: list[Any] = [
            mock.patch.object(engine_module, "time", self.clock),
            mock.patch.object(clock_module, "time", self.clock),
        ]
        for patch in self._patches:
            patch.start()
        self.nodes: dict[str, Node] = {}
        self.requests: dict[TransferKey, pb.Transfer] = {}  # every transfer sent, as first sent
        self.answers: dict[TransferKey, sm.Result] = {}  # the first answer of each applied one
        self.pendings: list[TransferKey] = []
        self._numbers = itertools.count(1)

    def node_of(self, account_id: str) -> str:
        raise NotImplementedError

    def close(self) -> None:
        for node in self.nodes.values():
            node.storage.close()
        for patch in reversed(self._patches):
            patch.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- sending requests -----------------------------------------------------------------------

    def submit(self, event: Event, commit: bool) -> None:
        if isinstance(event, pb.Transfer):
            account_id = event.debit_account_id
        elif isinstance(event, pb.Account):
            account_id = event.id
        else:
            assert isinstance(event, pb.AccountChange)
            account_id = event.account_id
        name = self.node_of(account_id)
        self.nodes[name].mailbox.append(event)
        if commit:
            self.commit_node(name)

    def commit_node(self, name: str) -> None:
        replays: list[tuple[TransferKey, sm.Result]] = []
        for applied, result in self.nodes[name].commit():
            if isinstance(applied, LegDelivery):
                self.leg_answered(applied, result)
            elif isinstance(applied, pb.Transfer):
                key = (applied.debit_account_id, applied.id)
                if key in self.answers:
                    replays.append((key, result))
                else:
                    self.first_answer(key, result)
        # A replay is checked against the record once durable: nothing in the rest of its cycle
        # changes what a replay answers (results are applied first; expiries, posts and voids
        # only move a pending between states that all answer EXISTS).
        for key, result in replays:
            record = self.record(key)
            assert record is not None, key
            expected = replay_answer(record)
            assert result.code == expected, (
                f"a replay of {key} answered {name_of(result.code)}; its record says {name_of(expected)}: {record}"
            )
        self.committed(name)

    def committed(self, name: str) -> None:
        """Called after each cycle of node `name` (subclasses watch what it wrote)."""

    def leg_answered(self, delivery: LegDelivery, result: sm.Result) -> None:
        raise AssertionError(f"no legs travel in this machine: {delivery}")

    def first_answer(self, key: TransferKey, result: sm.Result) -> None:
        assert result.code not in (pb.EXISTS, pb.EXISTS_WITH_DIFFERENT_FIELDS), (key, result)
        # Only an event that was just accepted into the outbox is Accepted (its caller then
        # gets OK, not EXISTS, when it settles).
        assert (result.code == pb.IN_FLIGHT) == isinstance(result, outbox.Accepted), (key, result)
        self.answers[key] = result
        event(f"first answer {name_of(result.code)}")

    def record(self, key: TransferKey) -> pb.Transfer | None:
        debit, transfer_id = key
        return self.nodes[self.node_of(debit)].storage.transfer(debit, transfer_id)

    def records(self) -> dict[TransferKey, pb.Transfer]:
        """The record of every transfer applied so far (each one is stored or journaled)."""
        records: dict[TransferKey, pb.Transfer] = {}
        for key in self.answers:
            record = self.record(key)
            assert record is not None, f"{key} was answered {self.answers[key]} but is not stored"
            records[key] = record
        return records

    def account_at(self, index: int) -> str:
        return self.accounts[index % len(self.accounts)]

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._numbers)}"

    def check_first_answers(self, records: dict[TransferKey, pb.Transfer]) -> None:
        """Every record agrees with the first answer its transfer got."""
        for key, record in records.items():
            first = self.answers[key].code
            if first == pb.OK:
                assert record.state not in (pb.TRANSFER_REJECTED, pb.TRANSFER_IN_FLIGHT), (key, record)
            elif first != pb.IN_FLIGHT:
                assert record.state == pb.TRANSFER_REJECTED and record.result == first, (key, name_of(first), record)

    # --- rules ----------------------------------------------------------------------------------

    def open(self, account_id: str, spec: AccountSpec, commit: bool) -> None:
        flags, limit, ledger = spec
        self.submit(pb.Account(id=account_id, ledger=ledger, code=CODE, flags=flags, overdraft_limit=limit), commit)

    @rule(account=PICK, spec=ACCOUNT_SPECS, commit=st.booleans())
    def open_account(self, account: int, spec: AccountSpec, commit: bool) -> None:
        self.open(self.account_at(account), spec, commit)

    @rule(
        batch=st.lists(
            st.tuples(PICK, PICK, st.integers(1, 60), st.sampled_from(TRANSFER_KINDS), st.integers(1, 3)),
            min_size=1,
            max_size=3,
        ),
        commit=st.booleans(),
    )
    def transfer(self, batch: list[tuple[int, int, int, str, int]], commit: bool) -> None:
        """1-3 plain or pending transfers, each within a node or across (committed together when
        their debit accounts share a node)."""
        for debit, credit, amount, kind, timeout_s in batch:
            debit_id = self.account_at(debit)
            credit_id = self.account_at(credit)
            if credit_id == debit_id:
                credit_id = self.account_at(credit + 1)
            t = pb.Transfer(
                id=self.new_id("t"),
                debit_account_id=debit_id,
                credit_account_id=credit_id,
                amount=amount,
                ledger=LEDGER,
                code=CODE,
                flags=sm.PENDING if kind != "plain" else 0,
                timeout_s=timeout_s if kind == "pending with timeout" else 0,
            )
            key = (debit_id, t.id)
            self.requests[key] = t
            if t.flags & sm.PENDING:
                self.pendings.append(key)
            self.submit(copy_of(t), commit=False)
        if commit:
            for name in self.committers:
                self.commit_node(name)

    @precondition(lambda self: bool(self.pendings))
    @rule(
        batch=st.lists(
            st.tuples(PICK, st.booleans(), st.sampled_from(RESOLVE_AMOUNTS), st.booleans()), min_size=1, max_size=2
        ),
        confirmed=st.booleans(),
        commit=st.booleans(),
    )
    def resolve(self, batch: list[tuple[int, bool, str, bool]], confirmed: bool, commit: bool) -> None:
        """Posts or voids of pending transfers: of any (`confirmed` False) or of one its client
        has seen PENDING; two in a batch may resolve the same one."""
        candidates = self.pendings
        if confirmed:
            candidates = [key for key in self.pendings if self.state_of(key) == pb.TRANSFER_PENDING] or candidates
        for pick, void, amount, name_credit in batch:
            debit_id, pending_id = candidates[pick % len(candidates)]
            pending = self.requests[(debit_id, pending_id)]
            amounts = {"all": 0, "the pending's": pending.amount, "part": max(1, pending.amount // 2)}
            t = pb.Transfer(
                id=self.new_id("r"),
                debit_account_id=debit_id,
                credit_account_id=pending.credit_account_id if name_credit else "",
                pending_id=pending_id,
                amount=amounts.get(amount, pending.amount + 1),
                flags=sm.VOID_PENDING if void else sm.POST_PENDING,
            )
            self.requests[(debit_id, t.id)] = t
            self.submit(copy_of(t), commit=False)
        if commit:
            self.commit_node(self.node_of(debit_id))

    def state_of(self, key: TransferKey) -> int:
        record = self.record(key)
        return pb.TRANSFER_STATE_UNSPECIFIED if record is None else record.state

    @rule(
        account=PICK,
        kind=st.sampled_from((pb.FREEZE, pb.UNFREEZE, pb.FREEZE, pb.UNFREEZE, pb.CLOSE)),
        commit=st.booleans(),
    )
    def change_account(self, account: int, kind: pb.ChangeKind, commit: bool) -> None:
        change = pb.AccountChange(id=self.new_id("c"), account_id=self.account_at(account), kind=kind)
        self.submit(change, commit)

    @precondition(lambda self: bool(self.requests))
    @rule(pick=PICK, commit=st.booleans())
    def replay(self, pick: int, commit: bool) -> None:
        request = list(self.requests.values())[pick % len(self.requests)]
        self.submit(copy_of(request), commit)

    @rule(seconds=st.integers(1, 3))
    def advance_time(self, seconds: int) -> None:
        self.clock.now_ns += seconds * NS_PER_S

    @rule(which=st.integers(0, 1))
    def commit(self, which: int) -> None:
        self.commit_node(self.committers[which % len(self.committers)])


# --- 1. the durable outbox ---------------------------------------------------------------------

OWNERS = {"A": range(0, 4), "B": range(4, 8)}
OWNER_OF_SLOT = {slot: name for name, slots in OWNERS.items() for slot in slots}
# Three accounts per node, opened at the start unless the example says otherwise (then transfers
# with them fail DEBIT_ACCOUNT_NOT_FOUND or CREDIT_ACCOUNT_NOT_FOUND until a rule opens them).
OUTBOX_ACCOUNTS = {name: ids_in(slots, 3, name.lower()) for name, slots in OWNERS.items()}


@dataclass(frozen=True)
class LegMessage:
    """A leg on its way from the debit node's relay to the owner of its credit slot."""

    debit_node: str
    credit_node: str
    entry: _Entry
    leg: node_pb2.CreditLeg
    epoch: int


@dataclass(frozen=True)
class ResultMessage:
    """A leg's final result on its way back to the debit node."""

    debit_node: str
    entry: _Entry
    code: sm.Code


Message = LegMessage | ResultMessage


class OutboxMachine(LedgerMachine):
    """Two nodes and the network between them; see the module docstring, part 1."""

    def __init__(self) -> None:
        super().__init__()
        self.accounts = [account_id for ids in OUTBOX_ACCOUNTS.values() for account_id in ids]
        self.committers = sorted(OWNERS)
        self.network: list[Message] = []
        self.violations: list[str] = []
        try:
            for name in OWNERS:
                self.nodes[name] = Node(name, os.path.join(self.directory, name), OWNER_OF_SLOT)
        except BaseException:
            self.close()
            raise

    def node_of(self, account_id: str) -> str:
        return OWNER_OF_SLOT[account_slot(account_id, SLOTS_TOTAL)]

    def teardown(self) -> None:
        try:
            # An example that already failed is not drained: its own failure is the report.
            if sys.exc_info()[0] is None:
                self.quiesce()
        finally:
            self.close()

    @initialize(specs=st.lists(MAYBE_ACCOUNT_SPECS, min_size=6, max_size=6))
    def open_accounts(self, specs: list[AccountSpec | None]) -> None:
        for account_id, spec in zip(self.accounts, specs, strict=True):
            if spec is not None:
                self.open(account_id, spec, commit=False)
        for name in self.committers:
            self.commit_node(name)

    # --- the transport ----------------------------------------------------------------------------

    def send(self, debit_node: str, entry: _Entry) -> None:
        """What the relay does with an entry: route its leg by the slot table and send it."""
        leg = node_pb2.CreditLeg.FromString(entry.leg.SerializeToString())  # what the wire carries
        epoch, owner = self.nodes[debit_node].slots.route(account_slot(leg.credit_account_id, SLOTS_TOTAL))
        self.network.append(LegMessage(debit_node, owner, entry, leg, epoch))

    def deliver(self, message: Message) -> None:
        if isinstance(message, LegMessage):
            delivery = LegDelivery(message.leg, message.epoch, message.debit_node, message.entry)
            self.nodes[message.credit_node].mailbox.append(delivery)
        else:
            self.nodes[message.debit_node].relay.answered(message.entry, message.code)

    def leg_answered(self, delivery: LegDelivery, result: sm.Result) -> None:
        event(f"leg {node_pb2.LegKind.Name(delivery.leg.kind)} answered {name_of(result.code)}")
        if result.code in outbox.LEG_OUTCOMES:
            self.network.append(ResultMessage(delivery.debit_node, delivery.entry, result.code))
        else:  # WRONG_SLOT cannot happen with one table, and the rest are protocol refusals
            self.violations.append(f"leg refused {name_of(result.code)}: {delivery.leg}")

    def undelivered(self) -> list[tuple[str, _Entry]]:
        return [(name, entry) for name, node in self.nodes.items() for entry in node.relay.undelivered()]

    @precondition(lambda self: bool(self.undelivered()))
    @rule(pick=PICK)
    def send_leg(self, pick: int) -> None:
        """The relay sends (or, after a loss, re-sends) an entry that has no final result yet."""
        entries = self.undelivered()
        self.send(*entries[pick % len(entries)])

    @precondition(lambda self: bool(self.network))
    @rule(pick=PICK, commit=st.booleans())
    def deliver_message(self, pick: int, commit: bool) -> None:
        """Any message may overtake the others."""
        message = self.network.pop(pick % len(self.network))
        self.deliver(message)
        if commit and isinstance(message, LegMessage):
            self.commit_node(message.credit_node)

    @precondition(lambda self: bool(self.network))
    @rule(pick=PICK)
    def duplicate_message(self, pick: int) -> None:
        self.network.append(self.network[pick % len(self.network)])

    @precondition(lambda self: bool(self.network))
    @rule(pick=PICK)
    def drop_message(self, pick: int) -> None:
        del self.network[pick % len(self.network)]

    @rule(which=st.integers(0, 1))
    def restart(self, which: int) -> None:
        """A node stops at once (kill -9) and starts again from its data directory: what was not
        durable is gone (its mailbox, the relay's memory and the results it had not applied yet);
        its outbox is reloaded and re-driven, and answers to legs its old relay sent are no longer
        `current`. A client request lost in the mailbox was never answered: it is forgotten."""
        name = self.committers[which % len(self.committers)]
        node = self.nodes[name]
        for lost in node.mailbox:
            if isinstance(lost, pb.Transfer) and (lost.debit_account_id, lost.id) not in self.answers:
                key = (lost.debit_account_id, lost.id)
                self.requests.pop(key, None)
                if key in self.pendings:
                    self.pendings.remove(key)
        node.storage.close()
        self.nodes[name] = Node(name, os.path.join(self.directory, name), OWNER_OF_SLOT)
        event("restarted a node")

    @rule(seed=st.integers(0, 1 << 16))
    def relay_round(self, seed: int) -> None:
        """Both relays send every entry without a result; the network delivers everything in a
        random order; both nodes commit. (Progress, so that posts, voids and expiries find their
        pendings confirmed; the rules above make the adversarial interleavings.)"""
        order = random.Random(seed)
        for name, entry in self.undelivered():
            self.send(name, entry)
        order.shuffle(self.network)
        while self.network:
            self.deliver(self.network.pop())
        for name in order.sample(self.committers, len(self.committers)):
            self.commit_node(name)

    @rule()
    def settle(self) -> None:
        self.quiesce()

    # --- quiescence --------------------------------------------------------------------------------

    def quiesce(self) -> None:
        """Deliver everything, the relays re-sending what has no result, until both outboxes are
        empty; then check what must hold at quiescence."""
        for _round in range(ROUNDS_MAX):
            for name in self.committers:
                self.commit_node(name)
            if not self.network and all(node.idle(self.clock.now_ns) for node in self.nodes.values()):
                break
            for name, entry in self.undelivered():
                self.send(name, entry)
            while self.network:
                self.deliver(self.network.pop(0))
        else:
            raise AssertionError(f"not quiescent after {ROUNDS_MAX} rounds; violations: {self.violations}")
        self.check_quiescent()

    def check_quiescent(self) -> None:
        for node in self.nodes.values():
            assert node.outbox() == {} and len(node.relay) == 0, (node.name, node.outbox())
        records = self.records()
        debits_posted = credits_posted = 0
        for account_id in self.accounts:
            account = self.nodes[self.node_of(account_id)].account(account_id)
            if account is None:
                continue
            debits_posted += account.debits_posted
            credits_posted += account.credits_posted
            # What the final records say, one record at a time: a plain transfer or a post moved
            # its amount once, a pending in state PENDING holds its amount on both sides.
            expected = pb.Account(id=account_id)
            for r in records.values():
                posts = r.state == pb.TRANSFER_POSTED and not r.flags & (sm.PENDING | sm.VOID_PENDING)
                holds = r.state == pb.TRANSFER_PENDING
                if r.debit_account_id == account_id:
                    expected.debits_posted += r.amount if posts else 0
                    expected.debits_pending += r.amount if holds else 0
                if r.credit_account_id == account_id:
                    expected.credits_posted += r.amount if posts else 0
                    expected.credits_pending += r.amount if holds else 0
            balances = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")
            assert [getattr(account, b) for b in balances] == [getattr(expected, b) for b in balances], (
                account,
                expected,
            )
        assert debits_posted == credits_posted, (debits_posted, credits_posted)
        # node/books.py's cluster equation: with no leg in flight the positions cancel out.
        assert sum(node.engine.books.position for node in self.nodes.values()) == 0
        for key, record in records.items():
            assert record.state != pb.TRANSFER_IN_FLIGHT, record
            event(f"settled {pb.TransferState.Name(record.state)}")
            other = next(name for name in self.nodes if name != self.node_of(key[0]))
            assert self.nodes[other].storage.transfer(*key) is None, (other, record)
        self.replay_everything()

    def replay_everything(self) -> None:
        """Every transfer sent, sent again: each answers its stored outcome (checked in
        commit_node) and nothing moves."""
        before = {account_id: self.nodes[self.node_of(account_id)].account(account_id) for account_id in self.accounts}
        stored = self.records()
        for request in self.requests.values():
            self.submit(copy_of(request), commit=False)
        for name in self.committers:
            self.commit_node(name)
        after = {account_id: self.nodes[self.node_of(account_id)].account(account_id) for account_id in self.accounts}
        assert before == after
        assert self.records() == stored

    # --- invariants ---------------------------------------------------------------------------------

    @invariant()
    def outbox_protocol_holds(self) -> None:
        """Every invariant of part 1 of the module docstring, over one read of both nodes."""
        assert not self.violations, self.violations
        records = self.records()
        self.check_first_answers(records)
        legs: dict[tuple[str, str, int], node_pb2.CreditLeg] = {}
        for node in self.nodes.values():
            durable = node.outbox()
            assert node.relay.legs() == durable, f"{node.name}'s relay does not hold its durable outbox"
            for leg in durable.values():
                legs[(leg.debit_account_id, outbox.subject_of(leg), leg.kind)] = leg
        accounts = {
            account_id: self.nodes[self.node_of(account_id)].account(account_id) for account_id in self.accounts
        }
        opened = {account_id: account for account_id, account in accounts.items() if account is not None}
        for node in self.nodes.values():
            node.check_books()
        self.check_entries_match_states(records, legs)
        self.check_balances_covered(records, legs, opened)
        self.check_credited_money_in_the_outbox(legs, opened)

    def check_entries_match_states(
        self, records: dict[TransferKey, pb.Transfer], legs: dict[tuple[str, str, int], node_pb2.CreditLeg]
    ) -> None:
        """An outbox entry exists exactly while its transfer is IN_FLIGHT; a RELEASE, while its
        pending is voided or expired."""
        for (debit, transfer_id), record in records.items():
            if record.state != pb.TRANSFER_IN_FLIGHT:
                continue
            if record.flags & sm.POST_PENDING:
                entry = legs.get((debit, record.pending_id, node_pb2.LEG_POST))
                assert entry is not None and entry.transfer_id == transfer_id, (record, entry)
            else:
                leg_kind = node_pb2.LEG_RESERVE if record.flags & sm.PENDING else node_pb2.LEG_CREDIT
                assert (debit, transfer_id, leg_kind) in legs, record
        for (debit, subject, kind), leg in legs.items():
            subject_record = records[(debit, subject)]
            if kind == node_pb2.LEG_RELEASE:
                assert subject_record.state in (pb.TRANSFER_VOIDED, pb.TRANSFER_EXPIRED), (leg, subject_record)
            elif kind == node_pb2.LEG_POST:
                assert subject_record.state == pb.TRANSFER_PENDING, (leg, subject_record)
                assert records[(debit, leg.transfer_id)].state == pb.TRANSFER_IN_FLIGHT, leg
            else:
                assert subject_record.state == pb.TRANSFER_IN_FLIGHT, (leg, subject_record)

    def check_balances_covered(
        self,
        records: dict[TransferKey, pb.Transfer],
        legs: dict[tuple[str, str, int], node_pb2.CreditLeg],
        accounts: dict[str, pb.Account],
    ) -> None:
        """No balance is negative; debits_pending is exactly what the account's in-flight and
        pending transfers hold; credits_pending lies between what is surely and possibly reserved."""
        for account_id, account in accounts.items():
            balances = (account.debits_posted, account.credits_posted, account.debits_pending, account.credits_pending)
            assert min(balances) >= 0, account
            held = surely = possibly = 0
            for (debit, transfer_id), r in records.items():
                if r.debit_account_id == account_id and (
                    r.state == pb.TRANSFER_PENDING or (r.state == pb.TRANSFER_IN_FLIGHT and not r.flags & RESOLVES)
                ):
                    held += r.amount
                if r.credit_account_id != account_id or not r.flags & sm.PENDING:
                    continue
                # The credit side reserves when its RESERVE is applied, before the debit side
                # learns it, and releases when a POST or RELEASE is applied, before or after.
                claimed = (debit, transfer_id, node_pb2.LEG_POST) in legs
                releasing = (debit, transfer_id, node_pb2.LEG_RELEASE) in legs
                if r.state == pb.TRANSFER_PENDING and not claimed:
                    surely += r.amount
                if r.state in (pb.TRANSFER_IN_FLIGHT, pb.TRANSFER_PENDING) or (
                    releasing and r.state in (pb.TRANSFER_VOIDED, pb.TRANSFER_EXPIRED)
                ):
                    possibly += r.amount
            assert account.debits_pending == held, (account, held)
            assert surely <= account.credits_pending <= possibly, (account, surely, possibly)

    def check_credited_money_in_the_outbox(
        self, legs: dict[tuple[str, str, int], node_pb2.CreditLeg], accounts: dict[str, pb.Account]
    ) -> None:
        """Σ credits_posted - Σ debits_posted is exactly the amount of the CREDIT and POST
        entries whose leg the credit node has applied OK (the debit side posts on the result)."""
        posted = sum(account.credits_posted - account.debits_posted for account in accounts.values())
        applied = 0
        for leg in legs.values():
            if leg.kind not in (node_pb2.LEG_CREDIT, node_pb2.LEG_POST):
                continue
            credit_slot = account_slot(leg.credit_account_id, SLOTS_TOTAL)
            key = keys.applied_leg_key(credit_slot, leg.debit_account_id, leg.transfer_id, leg.kind)
            result = self.nodes[OWNER_OF_SLOT[credit_slot]].storage.applied_leg(key)
            if result is not None and result.code == pb.OK:
                applied += leg.amount
        assert posted == applied, (posted, applied)


OUTBOX_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    # One failure, shrunk to the smallest example of any of them: far quicker than shrinking
    # each distinct failure (an example opens two RocksDB stores).
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)


# Collected by pytest as unittest cases (so that `--hypothesis-show-statistics` shows the events
# above: which outcomes and leg results each run reached).
TestCrossNodeTransfersSettleExactlyOnceOverALossyNetwork = OutboxMachine.TestCase
TestCrossNodeTransfersSettleExactlyOnceOverALossyNetwork.settings = OUTBOX_SETTINGS


# --- 2. the slot change log, digests and a slot move's import -------------------------------------

MOVED_SLOT = 6
MIGRATION_ID = "m-1"
CHUNK_KEYS_MAX = 3  # small, so that the snapshot takes several chunks and writes fall between them
DELIVERIES_MAX = 2000  # deliveries of the tail in random order before the harness re-sends it in order
# Three accounts in the moved slot, two elsewhere: transfers between them write the slot's
# accounts, transfers, history, expiry index (puts and deletes) and applied-leg journal.
MOVE_ACCOUNTS = ids_in([MOVED_SLOT], 3, "m") + ids_in([1], 1, "n") + ids_in([3], 1, "q")


@types.coroutine
def _pause() -> Generator[None, None, None]:
    """Suspend the coroutine that awaits this: the test's `send(None)` resumes it (and under
    asyncio it is `sleep(0)`)."""
    yield


class ImportStream:
    """The ImportSlot call as the exporter sees it (grpc.aio's StreamUnaryCall): each chunk written
    goes on the machine's queue and suspends the exporter, so the test decides what happens
    between two chunks; awaiting the call runs the target's end of the stream."""

    def __init__(self, machine: SlotMoveMachine) -> None:
        self.machine = machine

    async def write(self, chunk: node_pb2.SlotChunk) -> None:
        self.machine.shipped(node_pb2.SlotChunk.FromString(chunk.SerializeToString()))
        await _pause()

    async def done_writing(self) -> None:
        return None

    def cancel(self) -> bool:
        self.machine.export_cancelled = True  # the export failed: its own error is the report
        return True

    def __await__(self) -> Generator[Any, None, node_pb2.ImportSlotResponse]:
        return self.machine.import_rest().__await__()


class ImportChannel:
    """Just enough of a grpc.aio channel for node_pb2_grpc.NodeStub: only ImportSlot is called."""

    def __init__(self, stream: ImportStream) -> None:
        self.stream = stream

    def unary_unary(self, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        return self._unexpected

    def stream_unary(self, *args: Any, **kwargs: Any) -> Callable[..., ImportStream]:
        return lambda **call: self.stream

    def stream_stream(self, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        return self._unexpected

    def unary_stream(self, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        return self._unexpected

    def _unexpected(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the exporter calls only ImportSlot")


class SlotMoveMachine(LedgerMachine):
    """A source node exporting MOVED_SLOT to a target while it commits; see the module docstring, part 2."""

    def __init__(self) -> None:
        super().__init__()
        self.accounts = list(MOVE_ACCOUNTS)
        self.committers = ["source"]
        self._patches.append(mock.patch.object(slotmove, "CHUNK_KEYS_MAX", CHUNK_KEYS_MAX))
        self._patches[-1].start()
        try:
            owners = dict.fromkeys(range(SLOTS_TOTAL), "source")
            for name in ("source", "target"):
                self.nodes[name] = Node(name, os.path.join(self.directory, name), owners)
        except BaseException:
            self.close()
            raise
        self.source, self.target = self.nodes["source"], self.nodes["target"]
        self.source_moves = SlotMoves(self.source.engine, self.source.slots, self.source.storage, self.source.changelog)
        self.target_moves = SlotMoves(self.target.engine, self.target.slots, self.target.storage, self.target.changelog)
        # The exporter's channel to the target (SlotMoves keeps one per address): the test's stream.
        self.source_moves._channels["target"] = ImportChannel(ImportStream(self))
        self.exporter: Coroutine[Any, Any, node_pb2.StartExportResponse] | None = None
        self.exported: node_pb2.StartExportResponse | None = None
        self.wire: list[node_pb2.SlotChunk] = []  # chunks shipped and not yet applied
        self.log_shipped: list[node_pb2.SlotChunk] = []  # every log entry shipped (for duplicates)
        self.last_chunk: node_pb2.SlotChunk | None = None
        self.snapshot_staged = 0  # snapshot keys the target staged
        self.at_seq: dict[int, dict[bytes, bytes]] = {}  # the source's range after each log entry; 0: the snapshot
        self.rng = random.Random(0)
        self.export_cancelled = False
        self.log: Followed | None = None
        self.source_commits = 0
        self.start_after = 0

    def node_of(self, account_id: str) -> str:
        return "source"

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is None:  # an example that already failed keeps its own report
                self.finish_move()
        finally:
            self.close()

    @initialize(
        specs=st.lists(MAYBE_ACCOUNT_SPECS, min_size=5, max_size=5),
        start_after=st.integers(0, 12),
        seed=st.integers(0, 1 << 16),
    )
    def open_accounts(self, specs: list[AccountSpec | None], start_after: int, seed: int) -> None:
        self.start_after = start_after  # source commits before the export starts
        self.rng = random.Random(seed)  # the order the tail arrives in at the end
        for account_id, spec in zip(self.accounts, specs, strict=True):
            if spec is not None:
                self.open(account_id, spec, commit=False)
        self.commit_node("source")

    # --- the source -------------------------------------------------------------------------------

    def followed(self) -> Followed:
        """The change log's record of the moved slot (kept past the freeze, which stops following)."""
        assert self.log is not None
        return self.log

    def committed(self, name: str) -> None:
        self.source_commits += 1
        if not self.at_seq:
            if self.source_commits > self.start_after:
                self.start_export()
            return
        seq = self.followed().seq
        if seq not in self.at_seq:
            assert seq == max(self.at_seq) + 1, (seq, sorted(self.at_seq))  # one entry per batch
            self.at_seq[seq] = dict(self.source.storage.slot_items(MOVED_SLOT))

    def shipped(self, chunk: node_pb2.SlotChunk) -> None:
        assert (chunk.migration_id, chunk.slot) == (MIGRATION_ID, MOVED_SLOT), chunk
        if chunk.last:
            assert self.last_chunk is None, chunk
            self.last_chunk = chunk
            return
        self.wire.append(chunk)
        if chunk.seq:
            self.log_shipped.append(chunk)

    def step_exporter(self) -> None:
        assert self.exporter is not None
        try:
            self.exporter.send(None)
        except StopIteration as done:
            self.exporter = None
            self.exported = done.value
            assert self.exported is not None and self.exported.keys == len(self.at_seq[0]), self.exported

    def start_export(self) -> None:
        self.target_moves.prepare_import(MIGRATION_ID, MOVED_SLOT, "source")
        # No batch commits before the exporter's first step, which opens its snapshot and follows
        # the slot (and ships at most one chunk): the range now is the snapshot's.
        self.at_seq[0] = dict(self.source.storage.slot_items(MOVED_SLOT))
        self.exporter = self.source_moves.start_export(MIGRATION_ID, MOVED_SLOT, "target")
        self.step_exporter()
        self.log = self.source_moves._exports[MOVED_SLOT].followed
        assert self.log.seq == 0

    @precondition(lambda self: self.exporter is not None)
    @rule()
    def export_step(self) -> None:
        self.step_exporter()

    # --- the target ---------------------------------------------------------------------------------

    def staged(self) -> node_pb2.SlotMove:
        record = self.target.slots.staged(MOVED_SLOT)
        assert record is not None
        return record

    def staged_state(self) -> tuple[int, int, dict[bytes, bytes]]:
        record = self.staged()
        return record.last_seq, record.digest, dict(self.target.storage.slot_items(MOVED_SLOT))

    def deliverable(self) -> list[int]:
        """The queued chunks that may arrive next: the snapshot's in any order (the keys of a
        snapshot commute); log entries, in any order and again, once the snapshot is in (one
        stream carries the snapshot before the log)."""
        snapshot = [index for index, chunk in enumerate(self.wire) if chunk.seq == 0]
        return snapshot or list(range(len(self.wire)))

    def apply_chunk(self, index: int) -> None:
        """The target takes queued chunk `index` with SlotMoves._apply_chunk (private: it is the
        import's rule for one chunk, which import_slot runs for each chunk of its stream)."""
        chunk = self.wire[index]
        before = self.staged_state()
        if chunk.seq > before[0] + 1:
            with pytest.raises(MoveError, match="a gap"):
                self.target_moves._apply_chunk(self.staged(), chunk)
            assert self.staged_state() == before, "a refused entry changed the staging"
            event("log entry after a gap refused")
            return  # it stays queued: the harness delivers it again after the entries before it
        del self.wire[index]
        staged = self.target_moves._apply_chunk(self.staged(), chunk)
        if chunk.seq == 0:
            assert staged == len(chunk.ops), (staged, chunk)
            self.snapshot_staged += staged
        elif chunk.seq <= before[0]:
            assert self.staged_state() == before, f"entry {chunk.seq} applied twice"
            event("log entry applied already skipped")
        else:
            assert self.staged().last_seq == chunk.seq

    @precondition(lambda self: bool(self.wire))
    @rule(pick=PICK)
    def deliver_chunk(self, pick: int) -> None:
        choices = self.deliverable()
        self.apply_chunk(choices[pick % len(choices)])

    @precondition(lambda self: bool(self.log_shipped))
    @rule(pick=PICK)
    def duplicate_entry(self, pick: int) -> None:
        self.wire.append(self.log_shipped[pick % len(self.log_shipped)])

    async def import_rest(self) -> node_pb2.ImportSlotResponse:
        """The target's end of the stream, once the source has shipped its tail: the queued
        chunks arrive in a random order, some twice, until none is left; then the last chunk,
        which the real `_finish_import` checks."""
        for _delivery in range(DELIVERIES_MAX):
            if not self.wire:
                break
            self.apply_chunk(self.rng.choice(self.deliverable()))
            if self.log_shipped and self.rng.random() < 0.2:
                self.wire.append(self.rng.choice(self.log_shipped))
        while self.wire:  # the harness re-sends in order
            first = min(range(len(self.wire)), key=lambda index: self.wire[index].seq)
            waiting = len(self.wire)
            self.apply_chunk(first)
            assert len(self.wire) < waiting, f"log entry {self.staged().last_seq + 1} was never shipped"
        assert self.last_chunk is not None
        return await self.target_moves._finish_import(self.staged(), self.last_chunk, self.snapshot_staged)

    # --- the end of the move --------------------------------------------------------------------------

    def finish_move(self) -> None:
        if not self.at_seq:
            self.start_export()
        while self.exporter is not None:
            self.step_exporter()
        reply = asyncio.run(self.freeze())
        assert not self.export_cancelled
        source = dict(self.source.storage.slot_items(MOVED_SLOT))
        target = dict(self.target.storage.slot_items(MOVED_SLOT))
        assert target == source, {key: (source.get(key), target.get(key)) for key in source.keys() ^ target.keys()}
        digest, _count = range_digest(self.source.storage, MOVED_SLOT)
        assert range_digest(self.target.storage, MOVED_SLOT)[0] == digest == reply.digest
        # The log may have grown during the freeze (writes queued before it, expiries), past at_seq.
        assert reply.last_seq == self.followed().seq and self.snapshot_staged == len(self.at_seq[0]), reply
        assert self.source.slots[MOVED_SLOT].state is SEALED
        assert self.target.slots[MOVED_SLOT].state is IMPORTED
        event(f"moved: snapshot of {bucket(len(self.at_seq[0]))} keys, {bucket(self.followed().seq)} log entries")

    async def freeze(self) -> node_pb2.FreezeSlotResponse:
        """The real FreezeSlot on the source, with both committers running (its barrier, and the
        target's in _finish_import, wait for a group commit)."""
        try:
            async with asyncio.TaskGroup() as tasks:
                for node in (self.source, self.target):
                    tasks.create_task(node.engine.run())
                try:
                    return await self.source_moves.freeze(MIGRATION_ID, MOVED_SLOT)
                finally:
                    for node in (self.source, self.target):
                        node.engine.stop()
        except ExceptionGroup as group:
            if len(group.exceptions) == 1:  # report the failure itself, not the task group's wrapper
                raise group.exceptions[0] from None
            raise

    # --- invariants ------------------------------------------------------------------------------------

    @invariant()
    def slot_copies_agree(self) -> None:
        """The source's range digest is the snapshot's plus the change log's; the target's staged
        digest is the digest of what it staged, and once the snapshot is in, what it staged is the
        source's range as of the last log entry it applied."""
        self.check_first_answers(self.records())
        if not self.at_seq:
            return
        snapshot = sum(key_digest(key, value) for key, value in self.at_seq[0].items()) & MASK
        assert range_digest(self.source.storage, MOVED_SLOT)[0] == (snapshot + self.followed().digest) & MASK
        last_seq, digest, staged = self.staged_state()
        assert digest == sum(key_digest(key, value) for key, value in staged.items()) & MASK, last_seq
        if self.snapshot_staged == len(self.at_seq[0]):
            assert staged == self.at_seq[last_seq], last_seq


MOVE_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    # One failure, shrunk to the smallest example of any of them: far quicker than shrinking
    # each distinct failure (an example opens two RocksDB stores).
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)


TestAMovedSlotArrivesWholeThroughALogThatReordersAndDuplicates = SlotMoveMachine.TestCase
TestAMovedSlotArrivesWholeThroughALogThatReordersAndDuplicates.settings = MOVE_SETTINGS


def test_a_redirect_naming_an_epoch_far_ahead_routes_a_slots_legs_only_for_a_while(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A credit node's WRONG_SLOT redirect teaches the relay the slot's newer owner (node/relay.py
    `_learn`); it is a peer's word, so a redirect naming an epoch far past the table's (broken or
    forged) routes the slot's legs elsewhere only until it is stale, then the table's owner again."""
    import node.relay as relay_module

    node = Node("debit", str(tmp_path / "debit"), {slot: "debit" for slot in range(SLOTS_TOTAL)})
    try:
        monkeypatch.setattr(relay_module, "_LEARNED_FRESH_S", 0.2)
        table = node.relay._owner_of(3)
        node.relay._learn(3, pb.SlotRedirect(slot=3, owner="elsewhere", epoch=2**63))
        assert node.relay._owner_of(3) == (2**63, "elsewhere")
        time.sleep(0.3)
        assert node.relay._owner_of(3) == table
    finally:
        node.storage.close()


def test_a_moved_in_outbox_entry_its_account_cannot_settle_is_left_alone_not_asserted(tmp_path: Any) -> None:
    """Outbox entries of a slot that moved in are a peer's data (node/relay.py `load`): one whose
    amount is not its transfer's, or legs holding more than the debit account has pending, would
    trip apply_leg_result's asserts when the credit node answers; such an entry is logged and not
    loaded, and one that pairs is loaded."""
    node = Node("debit", str(tmp_path / "debit"), {slot: "debit" for slot in range(SLOTS_TOTAL)})
    try:
        debit, slot = "acct-m", account_slot("acct-m", SLOTS_TOTAL)
        node.storage.put_now(
            keys.account_key(slot, debit), pb.Account(id=debit, ledger=1, code=1, debits_pending=10).SerializeToString()
        )

        def in_flight(transfer_id: str, amount: int, leg_amount: int) -> tuple[bytes, node_pb2.CreditLeg]:
            transfer = pb.Transfer(
                id=transfer_id, debit_account_id=debit, credit_account_id="acct-c", amount=amount, ledger=1, code=1,
                state=pb.TRANSFER_IN_FLIGHT, timestamp=1,
            )  # fmt: skip
            node.storage.put_now(keys.transfer_key(slot, debit, transfer_id), transfer.SerializeToString())
            leg = node_pb2.CreditLeg(
                kind=node_pb2.LEG_CREDIT, debit_account_id=debit, transfer_id=transfer_id, credit_account_id="acct-c",
                amount=leg_amount, ledger=1, event=transfer,
            )  # fmt: skip
            return keys.outbox_key(slot, debit, outbox.subject_of(leg), leg.kind), leg

        fits, mismatched, too_much = in_flight("t-fits", 6, 6), in_flight("t-odd", 3, 4), in_flight("t-more", 5, 5)
        negative = in_flight("t-neg", -3, -3)  # would make room for another leg's hold
        # A POST whose reservation is not its pending's amount (4 of a pending of 2).
        held = pb.Transfer(
            id="p-held", debit_account_id=debit, credit_account_id="acct-c", amount=2, ledger=1, code=1,
            flags=sm.PENDING, state=pb.TRANSFER_PENDING, timestamp=1,
        )  # fmt: skip
        node.storage.put_now(keys.transfer_key(slot, debit, "p-held"), held.SerializeToString())
        post = pb.Transfer(
            id="t-post", debit_account_id=debit, credit_account_id="acct-c", amount=2, ledger=1, code=1,
            flags=sm.POST_PENDING, pending_id="p-held", state=pb.TRANSFER_IN_FLIGHT, timestamp=2,
        )  # fmt: skip
        node.storage.put_now(keys.transfer_key(slot, debit, "t-post"), post.SerializeToString())
        post_leg = node_pb2.CreditLeg(
            kind=node_pb2.LEG_POST, debit_account_id=debit, transfer_id="t-post", credit_account_id="acct-c",
            amount=2, reserved=4, pending_id="p-held", ledger=1, event=post,
        )  # fmt: skip
        posted = (keys.outbox_key(slot, debit, outbox.subject_of(post_leg), post_leg.kind), post_leg)
        node.relay.load([negative, fits, mismatched, too_much, posted], moved_in=True)
        # -3 is no amount; 6 of 10 held; 4 is not 3; 6 + 5 > 10; 4 reserved of a pending of 2
        assert set(node.relay.legs()) == {fits[0]}
    finally:
        node.storage.close()


def test_an_expiry_key_earlier_than_its_pendings_deadline_expires_it_at_the_deadline_not_before(
    tmp_path: Any,
) -> None:
    """A slot's expiry keys come with it when it moves in (a peer's data): a key naming a time
    before its pending's deadline would have the committer release the reservation early (an
    assert stopped the node instead). It is taken at the pending's own deadline."""
    node = Node("debit", str(tmp_path / "debit"), {slot: "debit" for slot in range(SLOTS_TOTAL)})
    try:
        node.mailbox = [pb.Account(id=i, ledger=1, code=1) for i in ("acct-e", "acct-f")]
        node.commit()

        def pending_of(transfer_id: str) -> pb.Transfer:
            return pb.Transfer(
                id=transfer_id, debit_account_id="acct-e", credit_account_id="acct-f", amount=5, ledger=1, code=1,
                flags=sm.PENDING, timeout_s=1,
            )  # fmt: skip

        node.mailbox = [pending_of("p-early")]
        [(_, result)] = node.commit()
        assert result.code == pb.OK, result
        stored = node.storage.transfer("acct-e", "p-early")
        assert stored is not None
        deadline = sm.expires_at(stored)
        slot = account_slot("acct-e", SLOTS_TOTAL)
        heapq.heappush(node.engine._expiries, (deadline - 10**9, slot, "acct-e", "p-early"))  # as if loaded
        node.commit()
        still = node.storage.transfer("acct-e", "p-early")
        assert still is not None and still.state == pb.TRANSFER_PENDING, still
        time.sleep(max(0.0, (deadline - time.time_ns()) / 1e9) + 0.05)
        node.commit()
        expired = node.storage.transfer("acct-e", "p-early")
        assert expired is not None and expired.state == pb.TRANSFER_EXPIRED, expired
        # A pending whose debit account does not hold its amount (a peer's data) is not expired
        # (the release would drive the account's pending negative): logged, and the node commits on.
        node.mailbox = [pending_of("p-unheld")]
        node.commit()
        debit_key = keys.account_key(account_slot("acct-e", SLOTS_TOTAL), "acct-e")
        emptied = node.storage.account_entry("acct-e")
        assert emptied is not None
        unheld = pb.Account()
        unheld.CopyFrom(emptied[0])
        unheld.debits_pending = 0
        node.storage.put_now(debit_key, unheld.SerializeToString())
        node.storage.forget_accounts()
        time.sleep(1.1)
        node.commit()
        kept = node.storage.transfer("acct-e", "p-unheld")
        assert kept is not None and kept.state == pb.TRANSFER_PENDING, kept
        node.mailbox = [pb.Account(id="acct-g", ledger=1, code=1)]
        [(_, opened)] = node.commit()
        assert opened.code == pb.OK, opened
    finally:
        node.storage.close()


def debit_node_and_remote(tmp_path: Any) -> tuple[Node, str]:
    """Node "debit", leading every slot but one, which "credit" leads, and an account id in that
    slot (apart from acct-p's and acct-q's): a transfer or pending from acct-p to it goes
    through the outbox."""
    here = {account_slot(account_id, SLOTS_TOTAL) for account_id in ("acct-p", "acct-q")}
    remote = next(f"acct-r{n}" for n in itertools.count() if account_slot(f"acct-r{n}", SLOTS_TOTAL) not in here)
    owners = dict.fromkeys(range(SLOTS_TOTAL), "debit")
    owners[account_slot(remote, SLOTS_TOTAL)] = "credit"
    return Node("debit", str(tmp_path / "debit"), owners), remote


def test_a_post_or_void_of_a_pending_its_accounts_do_not_hold_is_refused_not_asserted(tmp_path: Any) -> None:
    """A slot that moved in or was restored is a peer's data: a pending whose accounts do not
    hold its amount, or in a state this version does not know, tripped the resolution's asserts
    at a client's post or void and stopped the node (at every retry). Such a post or void is
    refused STORED_DATA_INCONSISTENT, nothing changes, it is counted, and the node commits on;
    the same where the pending's credit account is on another node (node/outbox.py), and for
    the replay of a post in flight whose outbox entry is missing."""
    debit, credit = "acct-p", "acct-q"

    def pending(transfer_id: str, amount: int) -> pb.Transfer:
        return pb.Transfer(
            id=transfer_id, debit_account_id=debit, credit_account_id=credit, amount=amount, ledger=1, code=1,
            flags=sm.PENDING,
        )  # fmt: skip

    node, remote = debit_node_and_remote(tmp_path)
    refused_before = metrics.events_on_inconsistent_data._value.get()
    try:
        node.mailbox = [pb.Account(id=i, ledger=1, code=1) for i in (debit, credit)]
        node.commit()
        node.mailbox = [pending("p1", 5)]
        [(_, reserved)] = node.commit()
        assert reserved.code == pb.OK, reserved

        def damage(account_id: str, **fields: int) -> None:
            account = node.account(account_id)
            assert account is not None
            changed = pb.Account()
            changed.CopyFrom(account)
            for name, value in fields.items():
                setattr(changed, name, value)
            node.storage.put_now(keys.account_key_of(account_id, SLOTS_TOTAL), changed.SerializeToString())
            node.storage.forget_accounts()

        def resolve(transfer_id: str, pending_id: str, flags: int) -> sm.Result:
            node.mailbox = [pb.Transfer(id=transfer_id, debit_account_id=debit, pending_id=pending_id, flags=flags)]
            [(_, result)] = node.commit()
            return result

        def unchanged(pending_id: str) -> None:
            pending = node.storage.transfer(debit, pending_id)
            assert pending is not None and pending.state == pb.TRANSFER_PENDING, pending

        # The debit account does not hold the pending (its debits_pending lost): post and void refused.
        damage(debit, debits_pending=0)
        for transfer_id, flags in (("post-1", sm.POST_PENDING), ("void-1", sm.VOID_PENDING)):
            result = resolve(transfer_id, "p1", flags)
            assert (result.code, result.field) == (pb.STORED_DATA_INCONSISTENT, "pending_id"), result
            assert node.storage.transfer(debit, transfer_id) is None  # not journaled: a retry may pass once mended
        unchanged("p1")
        account = node.account(debit)
        assert account is not None and (account.debits_pending, account.debits_posted) == (0, 0), account
        # The debit mended, the credit account does not hold it.
        damage(debit, debits_pending=5)
        damage(credit, credits_pending=4)
        assert resolve("post-2", "p1", sm.POST_PENDING).code == pb.STORED_DATA_INCONSISTENT
        unchanged("p1")
        # Both mended, but a post would take the debit account's posted past 2^63 - 1.
        damage(credit, credits_pending=5)
        damage(debit, debits_posted=sm.INT64_MAX - 1)
        assert resolve("post-8", "p1", sm.POST_PENDING).code == pb.STORED_DATA_INCONSISTENT
        unchanged("p1")
        # Mended: the post goes through.
        damage(debit, debits_posted=0)
        assert resolve("post-3", "p1", sm.POST_PENDING).code == pb.OK

        # A state this version does not know.
        node.mailbox = [pending("p2", 2)]
        assert node.commit()[0][1].code == pb.OK
        odd = node.storage.transfer(debit, "p2")
        assert odd is not None
        odd.state = 99  # type: ignore[assignment]  # an open enum: a newer version's value
        slot = account_slot(debit, SLOTS_TOTAL)
        node.storage.put_now(keys.transfer_key(slot, debit, "p2"), odd.SerializeToString())
        assert resolve("void-2", "p2", sm.VOID_PENDING).code == pb.STORED_DATA_INCONSISTENT

        # Pendings whose credit account is on another node (node/outbox.py's resolve_pending):
        # only the debit's half is here, and only it is asked for.
        def remote_pending(transfer_id: str, amount: int) -> None:
            node.storage.put_now(
                keys.transfer_key(slot, debit, transfer_id),
                pb.Transfer(
                    id=transfer_id, debit_account_id=debit, credit_account_id=remote, amount=amount, ledger=1,
                    code=1, flags=sm.PENDING, state=pb.TRANSFER_PENDING, timestamp=1,
                ).SerializeToString(),
            )  # fmt: skip

        remote_pending("p3", 7)
        remote_pending("p4", 2)
        assert resolve("post-4", "p3", sm.POST_PENDING).code == pb.STORED_DATA_INCONSISTENT  # debit holds 2, not 7
        unchanged("p3")
        sent = resolve("post-6", "p4", sm.POST_PENDING)
        assert sent.code == pb.IN_FLIGHT, sent  # held by the debit: its post leg goes to the credit node
        # The replay of a post in flight whose outbox entry is not there, through the outbox and
        # where the pending's credit account is here (a stored post in flight is the outbox's alone).
        node.mailbox = [pending("p5", 1)]
        assert node.commit()[0][1].code == pb.OK
        for post_id, pending_id in (("post-5", "p3"), ("post-7", "p5")):
            node.storage.put_now(
                keys.transfer_key(slot, debit, post_id),
                pb.Transfer(
                    id=post_id, debit_account_id=debit, pending_id=pending_id, flags=sm.POST_PENDING,
                    state=pb.TRANSFER_IN_FLIGHT, timestamp=2,
                ).SerializeToString(),
            )  # fmt: skip
            result = resolve(post_id, pending_id, sm.POST_PENDING)
            assert (result.code, result.field) == (pb.STORED_DATA_INCONSISTENT, "id"), (post_id, result)
        # A post or void in a CommitRecords commit: the commit is refused whole, and counted.
        damage(debit, debits_pending=0)
        void = pb.Transfer(
            id="void-3", debit_account_id=debit, credit_account_id=credit, pending_id="p5", flags=sm.VOID_PENDING
        )
        commit = pb.Commit(
            writes=[pb.RecordWrite(record=pb.Record(kind="note", key=debit, value=b"x"))], transfers=[void]
        )
        overlay = Overlay(node.storage)
        refused = node.engine._apply_commit(overlay, commit, node.engine.clock.next())
        assert (refused.code, refused.field) == (pb.STORED_DATA_INCONSISTENT, "transfers[0].pending_id"), refused
        assert overlay.empty()

        assert metrics.events_on_inconsistent_data._value.get() - refused_before == 9
        # A journaled refusal naming another ledger than its pending's, replayed after the pending
        # went missing: answered as first (the field it named is no longer known), not asserted.
        other_ledger = pb.Transfer(
            id="void-4", debit_account_id=debit, pending_id="p5", ledger=9, flags=sm.VOID_PENDING
        )
        node.mailbox = [other_ledger]
        [(_, first)] = node.commit()
        assert (first.code, first.field) == (pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS, "ledger"), first
        node.storage.delete_now(keys.transfer_key(slot, debit, "p5"))
        node.mailbox = [other_ledger]
        [(_, replayed)] = node.commit()
        assert replayed.code == pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS, replayed
        node.mailbox = [pb.Account(id="acct-s", ledger=1, code=1)]
        assert node.commit()[0][1].code == pb.OK  # the node commits on
    finally:
        node.storage.close()


def test_a_moved_in_record_no_write_of_ours_could_leave_is_refused_at_the_import(tmp_path: Any) -> None:
    """A record a move brings that the committer or the relay would trip on when it reads it
    back (an account with a negative balance or past 2^63 - 1 stops the first transfer touching
    it; one that does not parse, or sits under another record's key, stops the read that finds
    it; a pending whose deadline does not fit an expiry key stops its expiry): the chunk is
    refused (the move fails and is aborted) and nothing of it is staged; records as our writes
    leave them are taken."""
    target = Node("target", str(tmp_path / "target"), dict.fromkeys(range(SLOTS_TOTAL), "source"))
    moves = SlotMoves(target.engine, target.slots, target.storage, target.changelog)
    try:
        account_id = "acct-mv"
        slot = account_slot(account_id, SLOTS_TOTAL)
        key = keys.account_key(slot, account_id)
        moves.prepare_import("m1", slot, "source")
        record = target.slots.staged(slot)
        assert record is not None

        def chunk(value: bytes, at: bytes = key) -> node_pb2.SlotChunk:
            return node_pb2.SlotChunk(migration_id="m1", slot=slot, seq=0, ops=[node_pb2.KeyOp(key=at, value=value)])

        other = next(f"acct-o{n}" for n in itertools.count() if account_slot(f"acct-o{n}", SLOTS_TOTAL) != slot)
        transfer_key = keys.transfer_key(slot, account_id, "t1")
        outbox_key = keys.outbox_key(slot, account_id, "t1", node_pb2.LEG_CREDIT)

        def transfer(**fields: Any) -> bytes:
            return pb.Transfer(
                debit_account_id=account_id, id="t1", amount=1, ledger=1, code=1, **fields
            ).SerializeToString()

        refused: dict[str, tuple[bytes, bytes, str]] = {
            "negative": (
                key,
                pb.Account(id=account_id, ledger=1, code=1, credits_posted=-1).SerializeToString(),
                "negative",
            ),
            "past int64": (
                key,
                pb.Account(
                    id=account_id, ledger=1, code=1, debits_posted=sm.INT64_MAX, debits_pending=1
                ).SerializeToString(),
                "2^63",
            ),
            "another account's key": (key, pb.Account(id=other, ledger=1, code=1).SerializeToString(), "its key names"),
            "an account's bytes": (key, b"\xff\xff\xff", "does not parse"),
            "another transfer's key": (keys.transfer_key(slot, account_id, "t2"), transfer(), "its key names"),
            "a deadline past 2^64": (
                transfer_key,
                transfer(flags=sm.PENDING, timeout_s=2**32 - 1, timestamp=2**64 - 1),
                "deadline",
            ),
            "a history entry's bytes": (
                keys.history_prefix(slot, account_id) + bytes(8),
                b"\xff\xff",
                "does not parse",
            ),
            "another entry's outbox key": (
                keys.outbox_key(slot, account_id, "t2", node_pb2.LEG_CREDIT),
                node_pb2.CreditLeg(
                    kind=node_pb2.LEG_CREDIT, debit_account_id=account_id, transfer_id="t1"
                ).SerializeToString(),
                "its key names",
            ),
            "an expiry key": (keys.expiry_prefix(slot) + b"\x01", b"", "does not parse"),
        }
        for name, (at, value, why) in refused.items():
            with pytest.raises(MoveError, match=f"slot {slot}: .*{re.escape(why)}"):
                moves._apply_chunk(record, chunk(value, at))
            assert target.storage.get(at) is None, name
        fine = {
            key: pb.Account(id=account_id, ledger=1, code=1, debits_posted=sm.INT64_MAX - 5, debits_pending=5),
            transfer_key: pb.Transfer(
                debit_account_id=account_id, id="t1", credit_account_id=other, amount=1, ledger=1, code=1,
                flags=sm.PENDING, timeout_s=2**32 - 1, timestamp=time.time_ns(),
            ),
            outbox_key: node_pb2.CreditLeg(kind=node_pb2.LEG_CREDIT, debit_account_id=account_id, transfer_id="t1"),
        }  # fmt: skip
        for at, message in fine.items():
            assert moves._apply_chunk(record, chunk(message.SerializeToString(), at)) == 1
            assert target.storage.get(at) == message.SerializeToString()
    finally:
        target.storage.close()


def test_a_peers_ops_are_refused_record_by_record_and_a_history_entry_is_parsed_unless_its_transfer_passed() -> None:
    """`peerdata.ops_problem` (a follower's check of every write it copies, and a move's of each
    chunk) refuses what `stored_problem` refuses record by record and a key outside the slot,
    and takes what our writes leave. It parses a history entry only if its bytes are not those
    of a transfer already taken in the same ops, so garbage under a history key is refused
    wherever it stands, and a history entry holding a transfer's bytes is taken without one."""
    account_id = "acct-ops"
    slot = account_slot(account_id, SLOTS_TOTAL)
    other_slot = (slot + 1) % SLOTS_TOTAL
    account = pb.Account(id=account_id, ledger=1, code=1, debits_posted=5).SerializeToString()
    transfer = pb.Transfer(debit_account_id=account_id, id="t1", amount=5, ledger=1, code=1).SerializeToString()
    history = keys.history_prefix(slot, account_id)

    def put(key: bytes, value: bytes) -> node_pb2.KeyOp:
        return node_pb2.KeyOp(key=key, value=value)

    taken = [
        put(keys.account_key(slot, account_id), account),
        put(keys.creation_key(slot, account_id), account),
        put(keys.transfer_key(slot, account_id, "t1"), transfer),
        put(history + bytes(7) + b"\x01", transfer),
        put(history + bytes(7) + b"\x02", transfer),
        node_pb2.KeyOp(key=keys.transfer_key(slot, account_id, "gone"), deleted=True),
        put(keys.seq_key(slot), bytes(16)),
    ]
    assert peerdata.ops_problem(slot, taken, SLOTS_TOTAL) == ""
    negative = pb.Account(id=account_id, ledger=1, code=1, credits_posted=-1).SerializeToString()
    refused: dict[str, tuple[list[node_pb2.KeyOp], str]] = {
        "garbage under a history key after a transfer": (
            [put(keys.transfer_key(slot, account_id, "t1"), transfer), put(history + bytes(8), b"\xff\xff")],
            "does not parse",
        ),
        "garbage under a history key alone": ([put(history + bytes(8), b"\xff\xff")], "does not parse"),
        "a transfer's bytes under another transfer's key": (
            [put(keys.transfer_key(slot, account_id, "t2"), transfer)],
            "its key names",
        ),
        "a negative account after good records": (
            [*taken, put(keys.account_key(slot, account_id), negative)],
            "negative",
        ),
        "a key of another slot": ([put(keys.account_key(other_slot, account_id), account)], "outside the slot"),
        "a deletion of another slot's key": (
            [node_pb2.KeyOp(key=keys.account_key(other_slot, account_id), deleted=True)],
            "outside the slot",
        ),
    }
    for name, (ops, why) in refused.items():
        problem = peerdata.ops_problem(slot, ops, SLOTS_TOTAL)
        assert why in problem, (name, problem)
        singles = [peerdata.stored_problem(op.key, op.value, SLOTS_TOTAL) for op in ops if not op.deleted]
        assert why == "outside the slot" or problem in singles, (name, problem, singles)


def test_a_moved_in_slot_whose_accounts_do_not_hold_what_their_transfers_claim_is_refused_at_its_last_chunk(
    tmp_path: Any,
) -> None:
    """Each record of a move may pass its own checks while the slot as a whole does not add up:
    an account's debits_pending must be exactly what its pending transfers and its transfers in
    flight (not a post or void in flight) claim, or a leg settles from another claim's hold. The
    target keeps the two sums per account up to date as the snapshot and the log entries arrive
    (node/peerdata.py HeldTally) and refuses the move at the last chunk, naming the account;
    a log entry that makes the slot add up again is taken."""
    target = Node("target", str(tmp_path / "target"), dict.fromkeys(range(SLOTS_TOTAL), "source"))
    moves = SlotMoves(target.engine, target.slots, target.storage, target.changelog)
    try:
        owner = "acct-hold"
        slot = account_slot(owner, SLOTS_TOTAL)
        stranger = next(f"acct-s{n}" for n in itertools.count() if account_slot(f"acct-s{n}", SLOTS_TOTAL) == slot)
        moves.prepare_import("m1", slot, "source")
        record = target.slots.staged(slot)
        assert record is not None

        def account(account_id: str, pending: int) -> tuple[bytes, bytes]:
            message = pb.Account(id=account_id, ledger=1, code=1, debits_pending=pending)
            return keys.account_key(slot, account_id), message.SerializeToString()

        def transfer(
            debit: str, transfer_id: str, amount: int, state: pb.TransferState, flags: int = 0
        ) -> tuple[bytes, bytes]:
            message = pb.Transfer(
                id=transfer_id, debit_account_id=debit, credit_account_id="acct-far", amount=amount, ledger=1,
                code=1, state=state, flags=flags, timestamp=1,
            )  # fmt: skip
            return keys.transfer_key(slot, debit, transfer_id), message.SerializeToString()

        def apply(seq: int, *ops: tuple[bytes, bytes | None]) -> None:
            chunk = node_pb2.SlotChunk(migration_id="m1", slot=slot, seq=seq)
            for key, value in ops:
                chunk.ops.add(key=key, deleted=True) if value is None else chunk.ops.add(key=key, value=value)
            moves._apply_chunk(record, chunk)

        def refusal() -> str:
            """What the last chunk is answered, if the import refuses it (else it goes on to the
            committer, which this test does not run)."""
            last = node_pb2.SlotChunk(migration_id="m1", slot=slot, seq=record.last_seq, digest=record.digest)
            last.last = True
            with pytest.raises(MoveError) as refused:
                run_to_end(moves._finish_import(record, last, 0))
            return str(refused.value)

        def adds_up() -> bool:
            tally = moves._tally(record)
            assert tally is not None
            return tally.problem() == "" and peerdata.held_problem(target.storage.slot_items(slot)) == ""

        # The snapshot: 5 held, a pending of 3 and a transfer in flight of 2 claim it; a post in
        # flight (it claims its pending's hold) and a posted transfer claim nothing more.
        apply(
            0,
            account(owner, 5),
            transfer(owner, "p1", 3, pb.TRANSFER_PENDING),
            transfer(owner, "f1", 2, pb.TRANSFER_IN_FLIGHT),
            transfer(owner, "post-p1", 3, pb.TRANSFER_IN_FLIGHT, sm.POST_PENDING),
            transfer(owner, "t0", 7, pb.TRANSFER_POSTED),
        )
        assert adds_up()
        # The transfer in flight settles, but the account still holds its 2.
        apply(1, transfer(owner, "f1", 2, pb.TRANSFER_POSTED))
        refused = refusal()
        assert f"slot {slot}: account {owner!r} has debits_pending 5" in refused and "hold 3" in refused, refused
        # The next entry releases it (as our own commit writes both in one batch): it adds up.
        apply(2, account(owner, 3), transfer(owner, "f1", 2, pb.TRANSFER_POSTED))
        assert adds_up()
        # A pending of an account the slot does not have.
        apply(3, transfer(stranger, "p9", 4, pb.TRANSFER_PENDING))
        assert f"transfers of {stranger!r} hold 4 of an account that is not there" in refusal()
        # Deleted again (a log entry's delete), the slot adds up.
        apply(4, (keys.transfer_key(slot, stranger, "p9"), None))
        assert adds_up()
        # A staging without its tally (this process did not see it begin) is read whole instead.
        apply(5, account(owner, 4))
        tallied = refusal()
        del moves._tallies[slot]
        assert refusal() == tallied and f"account {owner!r} has debits_pending 4" in tallied, tallied
    finally:
        target.storage.close()


def test_an_outbox_entry_left_alone_is_never_written_over(tmp_path: Any) -> None:
    """The relay leaves alone an outbox entry that does not pair with its transfer (a peer's
    data). A client's new transfer whose leg would take that entry's key, or a void (or the
    expiry) of a pending that such an entry already releases, tripped put_outbox's assert and
    stopped the node; each is refused STORED_DATA_INCONSISTENT (the expiry left alone and
    counted), nothing changes, and the node commits on."""
    debit = "acct-p"
    slot = account_slot(debit, SLOTS_TOTAL)
    node, remote = debit_node_and_remote(tmp_path)
    refused_before = metrics.events_on_inconsistent_data._value.get()
    unexpired_before = metrics.pendings_not_expired._value.get()
    try:
        held = pb.Account(id=debit, ledger=1, code=1, credits_posted=100, debits_pending=3)
        node.storage.put_now(keys.account_key(slot, debit), held.SerializeToString())
        orphan = node_pb2.CreditLeg(
            kind=node_pb2.LEG_CREDIT, debit_account_id=debit, transfer_id="t-orphan", credit_account_id=remote,
            amount=1, ledger=1,
        )  # fmt: skip
        node.storage.put_now(keys.outbox_key(slot, debit, "t-orphan", node_pb2.LEG_CREDIT), orphan.SerializeToString())
        new = pb.Transfer(id="t-orphan", debit_account_id=debit, credit_account_id=remote, amount=1, ledger=1, code=1)
        node.mailbox = [new]
        [(_, result)] = node.commit()
        assert (result.code, result.field) == (pb.STORED_DATA_INCONSISTENT, "id"), result
        assert node.storage.transfer(debit, "t-orphan") is None
        assert node.account(debit) == held
        # An entry of the other kind at the id: a pending left alone, then a plain transfer.
        reserve = node_pb2.CreditLeg(
            kind=node_pb2.LEG_RESERVE, debit_account_id=debit, transfer_id="t-other", credit_account_id=remote,
            amount=1, ledger=1,
            event=pb.Transfer(
                id="t-other", debit_account_id=debit, credit_account_id=remote, amount=1, ledger=1, code=1,
                flags=sm.PENDING, state=pb.TRANSFER_PENDING, timestamp=1,
            ),
        )  # fmt: skip
        assert outbox.malformed_leg(reserve) is None  # well formed: only its transfer says it is not T's
        node.storage.put_now(keys.outbox_key(slot, debit, "t-other", node_pb2.LEG_RESERVE), reserve.SerializeToString())
        node.mailbox = [
            pb.Transfer(id="t-other", debit_account_id=debit, credit_account_id=remote, amount=1, ledger=1, code=1)
        ]
        [(_, other_kind)] = node.commit()
        assert (other_kind.code, other_kind.field) == (pb.STORED_DATA_INCONSISTENT, "id"), other_kind
        # Were such a transfer in flight, the relay would not load the entry of the wrong kind.
        in_flight = pb.Transfer(
            id="t-other", debit_account_id=debit, credit_account_id=remote, amount=1, ledger=1, code=1,
            state=pb.TRANSFER_IN_FLIGHT, timestamp=1,
        )  # fmt: skip
        node.storage.put_now(keys.transfer_key(slot, debit, "t-other"), in_flight.SerializeToString())
        before = set(node.relay.legs())
        node.relay.load([(keys.outbox_key(slot, debit, "t-other", node_pb2.LEG_RESERVE), reserve)], moved_in=True)
        assert set(node.relay.legs()) == before  # a RESERVE for a transfer that is not pending

        # A pending on another node, long overdue, whose release is in the outbox already.
        pending = pb.Transfer(
            id="p7", debit_account_id=debit, credit_account_id=remote, amount=3, ledger=1, code=1, flags=sm.PENDING,
            timeout_s=1, state=pb.TRANSFER_PENDING, timestamp=1,
        )  # fmt: skip
        node.storage.put_now(keys.transfer_key(slot, debit, "p7"), pending.SerializeToString())
        release = node_pb2.CreditLeg(
            kind=node_pb2.LEG_RELEASE, debit_account_id=debit, transfer_id="v-old", credit_account_id=remote,
            amount=3, ledger=1, reserved=3, pending_id="p7",
        )  # fmt: skip
        node.storage.put_now(keys.outbox_key(slot, debit, "p7", node_pb2.LEG_RELEASE), release.SerializeToString())
        node.mailbox = [pb.Transfer(id="v-new", debit_account_id=debit, pending_id="p7", flags=sm.VOID_PENDING)]
        [(_, voided)] = node.commit()
        assert (voided.code, voided.field) == (pb.STORED_DATA_INCONSISTENT, "pending_id"), voided
        # The expiry sweep finds it due, and leaves it.
        node.storage.put_now(keys.expiry_key(slot, sm.expires_at(pending), debit, "p7"), b"")
        node.engine._load_expiries([slot])
        node.commit()
        kept = node.storage.transfer(debit, "p7")
        assert kept is not None and kept.state == pb.TRANSFER_PENDING, kept
        assert node.account(debit) == held
        assert metrics.events_on_inconsistent_data._value.get() - refused_before == 3
        assert metrics.pendings_not_expired._value.get() - unexpired_before == 1
        node.mailbox = [pb.Account(id="acct-z", ledger=1, code=1)]
        assert node.commit()[0][1].code == pb.OK  # the node commits on
    finally:
        node.storage.close()


def test_a_legs_result_its_debit_account_no_longer_holds_is_left_alone_not_asserted(tmp_path: Any) -> None:
    """A peer's account may hold one claim's worth for two: an in-flight leg and a pending of 10
    each with debits_pending 10 pass every check alone (the relay's load, the void's). The void
    goes first and releases the 10; the leg's result then found nothing to take it back from
    and tripped apply_leg_result's assert. It is left alone (the transfer stays in flight),
    counted, and the node commits on."""
    debit, credit = "acct-p", "acct-q"
    node, remote = debit_node_and_remote(tmp_path)
    left_before = metrics.outbox_entries_not_loaded._value.get()
    try:
        slot, credit_slot = account_slot(debit, SLOTS_TOTAL), account_slot(credit, SLOTS_TOTAL)
        accounts = {
            keys.account_key(slot, debit): pb.Account(id=debit, ledger=1, code=1, credits_posted=50, debits_pending=10),
            keys.account_key(credit_slot, credit): pb.Account(id=credit, ledger=1, code=1, credits_pending=10),
        }
        for key, account in accounts.items():
            node.storage.put_now(key, account.SerializeToString())
        sent = pb.Transfer(
            id="t-leg", debit_account_id=debit, credit_account_id=remote, amount=10, ledger=1, code=1,
            state=pb.TRANSFER_IN_FLIGHT, timestamp=1,
        )  # fmt: skip
        node.storage.put_now(keys.transfer_key(slot, debit, "t-leg"), sent.SerializeToString())
        event = pb.Transfer()
        event.CopyFrom(sent)
        event.state = pb.TRANSFER_POSTED
        leg = node_pb2.CreditLeg(
            kind=node_pb2.LEG_CREDIT, debit_account_id=debit, transfer_id="t-leg", credit_account_id=remote,
            amount=10, ledger=1, event=event,
        )  # fmt: skip
        leg_key = keys.outbox_key(slot, debit, "t-leg", node_pb2.LEG_CREDIT)
        node.storage.put_now(leg_key, leg.SerializeToString())
        pending = pb.Transfer(
            id="p-both", debit_account_id=debit, credit_account_id=credit, amount=10, ledger=1, code=1,
            flags=sm.PENDING, state=pb.TRANSFER_PENDING, timestamp=1,
        )  # fmt: skip
        node.storage.put_now(keys.transfer_key(slot, debit, "p-both"), pending.SerializeToString())
        node.storage.forget_accounts()
        node.relay.load([(leg_key, leg)], moved_in=True)
        assert set(node.relay.legs()) == {leg_key}  # 10 of 10 held: it fits alone

        node.mailbox = [pb.Transfer(id="v-both", debit_account_id=debit, pending_id="p-both", flags=sm.VOID_PENDING)]
        [(_, voided)] = node.commit()
        assert voided.code == pb.OK, voided  # 10 of 10 held: it fits alone too
        [entry] = node.relay.undelivered()
        node.relay.answered(entry, pb.OK)
        node.commit()
        kept = node.storage.transfer(debit, "t-leg")
        assert kept is not None and kept.state == pb.TRANSFER_IN_FLIGHT, kept
        assert node.outbox() == {leg_key: leg}  # left on disk
        assert metrics.outbox_entries_not_loaded._value.get() - left_before == 1
        node.mailbox = [pb.Account(id="acct-z", ledger=1, code=1)]
        assert node.commit()[0][1].code == pb.OK  # the node commits on
    finally:
        node.storage.close()


def test_a_post_whose_id_is_a_transfer_in_flight_is_answered_as_a_replay_not_refused(tmp_path: Any) -> None:
    """A post or void whose id is taken by a plain transfer still in flight to another node is
    another transfer at that key: EXISTS_WITH_DIFFERENT_FIELDS, as anywhere else. The outbox
    took any transfer in flight at a post's id for a post in flight and asserted its POST entry
    (a client's call stopped the node), and then for a moment took it for damaged data."""
    debit, credit = "acct-p", "acct-q"
    node, remote = debit_node_and_remote(tmp_path)
    refused_before = metrics.events_on_inconsistent_data._value.get()
    try:
        node.mailbox = [pb.Account(id=i, ledger=1, code=1) for i in (debit, credit)]
        node.commit()
        node.mailbox = [
            pb.Transfer(id="x", debit_account_id=debit, credit_account_id=remote, amount=2, ledger=1, code=1),
            pb.Transfer(
                id="p-here", debit_account_id=debit, credit_account_id=credit, amount=3, ledger=1, code=1,
                flags=sm.PENDING,
            ),
        ]  # fmt: skip
        assert [result.code for _, result in node.commit()] == [pb.IN_FLIGHT, pb.OK]
        slot = account_slot(debit, SLOTS_TOTAL)
        there = pb.Transfer(
            id="p-there", debit_account_id=debit, credit_account_id=remote, amount=1, ledger=1, code=1,
            flags=sm.PENDING, state=pb.TRANSFER_PENDING, timestamp=1,
        )  # fmt: skip
        node.storage.put_now(keys.transfer_key(slot, debit, "p-there"), there.SerializeToString())
        for pending_id in ("p-here", "p-there"):  # its credit account here, and on the other node
            node.mailbox = [pb.Transfer(id="x", debit_account_id=debit, pending_id=pending_id, flags=sm.POST_PENDING)]
            [(_, result)] = node.commit()
            assert result.code == pb.EXISTS_WITH_DIFFERENT_FIELDS, (pending_id, result)
        assert metrics.events_on_inconsistent_data._value.get() == refused_before
        kept = node.storage.transfer(debit, "p-here")
        assert kept is not None and kept.state == pb.TRANSFER_PENDING, kept
    finally:
        node.storage.close()
