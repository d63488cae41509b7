"""Jepsen's bank test, adapted: a random-transfer load against any Ledger endpoint, and its checks.

A `BankRun` opens accounts (half of them DEBITS_MUST_NOT_EXCEED_CREDITS), funds each from a
bank account, then runs client threads that send batches of random transfers (plain, pending,
and posts or voids of pendings they saw acknowledged) through a `Transport`: raw gRPC stubs to
a node or a router, or the SDK. A request without an answer has an unknown outcome; the client
resends the very same batch until it gets one (or gives the batch up), so idempotency decides
what the retry means. Clients also replay whole batches already answered. Meanwhile a watcher
reads every balance again and again, and optional chaos (kill -9, restarts) runs.

Afterwards the run waits, bounded, for quiescence (no transfer IN_FLIGHT, no credit leg still
travelling), looks up every id it ever sent and every account, and lists every problem:
  1. each stored transfer is the one that was sent, in a state its kind allows;
  2. every answer agrees with what is stored: nothing acknowledged is lost, OK is answered at
     most once, replays answer EXISTS or the original failure, every answer names the stored
     timestamp (nothing applied twice), IN_FLIGHT only for cross-node transfers, and it resolved;
  3. pendings agree with the posts and voids that resolve them, each resolved at most once;
  4. money is conserved: sum(debits_posted) == sum(credits_posted), and the same for pending;
  5. no flagged account is overdrawn, in any read during the run or after it;
  6. every balance is what the stored transfers add up to, and every account's history holds
     each applied transfer exactly once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc

from clients.ledger import Account, LedgerError, Result, SyncLedgerClient, Transfer
from proto import cluster_pb2, cluster_pb2_grpc, ledger_pb2 as pb, ledger_pb2_grpc
from router.shardmap import ShardMap
from router.slots import slot_of
from tests.conftest import channel

T = TypeVar("T")

LEDGER = 1
CODE = 1
CALL_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
LOOKUP_CHUNK = 500
HISTORY_PAGE = 1000
HISTORY_PAGES_MAX = 1000
PROBLEMS_MAX = 2000  # a broken run stops collecting here; the first ones say enough
BANK_SEARCH_MAX = 100_000  # candidate ids tried to find a bank account on every node

_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]
# gRPC errors that mean the request itself is wrong (a bug here or in the server), not that
# the server went away: they are never retried.
_FATAL = frozenset(
    (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    )
)
_RESOLVES = pb.POST_PENDING | pb.VOID_PENDING
_KIND_NAMES: dict[int, str] = {pb.PENDING: "pending", pb.POST_PENDING: "post", pb.VOID_PENDING: "void"}


def code_name(code: int) -> str:
    return pb.ResultCode.Name(code)


def state_name(state: int) -> str:
    return pb.TransferState.Name(state)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- the accounts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accounts:
    """The accounts of a run, and where they live."""

    customers: tuple[str, ...]  # the accounts the load moves money between
    flagged: frozenset[str]  # DEBITS_MUST_NOT_EXCEED_CREDITS
    bank_of: Mapping[str, str]  # customer -> the bank account that funds it
    funding: int  # what each customer gets from its bank before the load starts
    pairs: tuple[tuple[str, str], ...] = ()  # two accounts of one customer: one slot
    node_of: Mapping[str, str] = field(default_factory=dict)  # account -> its slot's owner; empty: one node
    slot_of: Mapping[str, int] = field(default_factory=dict)
    # Slots move during the run: any transfer may cross nodes (or meet a frozen slot) for a while.
    slots_move: bool = False

    @property
    def banks(self) -> list[str]:
        return sorted(set(self.bank_of.values()))

    @property
    def all_ids(self) -> list[str]:
        return [*self.banks, *self.customers]

    def cross_node(self, debit: str, credit: str) -> bool:
        if self.slots_move:
            return debit != credit
        return bool(self.node_of) and self.node_of[debit] != self.node_of[credit]


def single_node_accounts(count: int, funding: int) -> Accounts:
    """`acct-0 .. acct-<count-1>`, the even ones flagged, all funded by `bank`; one node."""
    ids = tuple(f"acct-{i}" for i in range(count))
    return Accounts(
        customers=ids,
        flagged=frozenset(a for i, a in enumerate(ids) if i % 2 == 0),
        bank_of=dict.fromkeys(ids, "bank"),
        funding=funding,
    )


def cluster_accounts(shard_map: ShardMap, customers: int, singles: int, funding: int, bank_per_node: bool) -> Accounts:
    """Customers with two accounts in one slot (`{cN}:a`, `{cN}:b`, by hash tag) and single
    accounts (`sN`), every other one flagged, placed by the shard map. With `bank_per_node`
    each node has its own bank account, which funds the accounts of that node (no funding
    transfer crosses nodes); otherwise one `bank` funds them all."""
    pairs = tuple((f"{{c{i}}}:a", f"{{c{i}}}:b") for i in range(customers))
    ids = tuple([a for pair in pairs for a in pair] + [f"s{i}" for i in range(singles)])
    total = shard_map.slots_total

    def owner(account_id: str) -> str:
        return shard_map.owners[slot_of(account_id, total)]

    if bank_per_node:
        bank_on: dict[str, str] = {}
        for k in range(BANK_SEARCH_MAX):
            bank_on.setdefault(owner(f"bank-{k}"), f"bank-{k}")
            if len(bank_on) == len(set(shard_map.owners)):
                break
        assert len(bank_on) == len(set(shard_map.owners)), f"no bank id found for every node: {bank_on}"
        bank_of = {a: bank_on[owner(a)] for a in ids}
    else:
        bank_of = dict.fromkeys(ids, "bank")
    located = [*ids, *set(bank_of.values())]
    assert all(slot_of(a, total) == slot_of(b, total) for a, b in pairs), "hash tags put a customer in one slot"
    return Accounts(
        customers=ids,
        flagged=frozenset(a for i, a in enumerate(ids) if i % 2 == 0),
        bank_of=bank_of,
        funding=funding,
        pairs=pairs,
        node_of={a: owner(a) for a in located},
        slot_of={a: slot_of(a, total) for a in located},
    )


def fetch_shard_map(router: str) -> ShardMap:
    with channel(router, "service") as to_router:
        reply = cluster_pb2_grpc.ClusterStub(to_router).GetShardMap(
            cluster_pb2.GetShardMapRequest(), timeout=READ_TIMEOUT_S
        )
    return ShardMap.from_proto(reply)


# --- the load's shape -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What the clients send, and the bounds on every loop of theirs."""

    batch_events_max: int = 50
    amount_max: int = 500
    # Shares of new plain and pending transfers by where their two accounts live; the rest
    # are two accounts of different slots on one node (with one node: any two accounts).
    same_slot_share: float = 0.0
    cross_node_share: float = 0.0
    replay_share: float = 0.1  # batches that replay an answered batch
    resolve_share: float = 0.2  # events that post or void an acknowledged pending (when there is one)
    pending_share: float = 0.25  # events that are new pendings
    give_up_s: float = 90.0  # hard bound on every client loop, from the start of the load
    batches_max: int = 100_000  # per client
    deliveries_max: int = 1000  # of one batch
    abandon_after_error: float = 0.25  # how often a client gives a batch without an answer up


class Pairs:
    """Chooses the debit and credit accounts of a new transfer by the load's shares."""

    def __init__(self, accounts: Accounts, load: Load) -> None:
        self.accounts = accounts
        self.load = load
        ids = accounts.customers
        self.uniform = not accounts.node_of
        if self.uniform:
            assert load.same_slot_share == 0 and load.cross_node_share == 0, "shares need to know where accounts live"
            return
        node, slot = accounts.node_of, accounts.slot_of
        self.local = {a: [b for b in ids if node[b] == node[a] and slot[b] != slot[a]] for a in ids}
        self.remote = {a: [b for b in ids if node[b] != node[a]] for a in ids}
        self.local_debits = [a for a in ids if self.local[a]]
        self.remote_debits = [a for a in ids if self.remote[a]]
        local_share = 1.0 - load.same_slot_share - load.cross_node_share
        assert local_share >= 0, load
        assert not load.same_slot_share or accounts.pairs, "same-slot transfers need pairs"
        assert not load.cross_node_share or self.remote_debits, "cross-node transfers need two nodes"
        assert not local_share or self.local_debits, "no two accounts of different slots share a node"

    def pick(self, rng: random.Random) -> tuple[str, str]:
        if self.uniform:
            debit, credit = rng.sample(self.accounts.customers, 2)
            return debit, credit
        roll = rng.random()
        if roll < self.load.same_slot_share:
            debit, credit = rng.choice(self.accounts.pairs)
            return (debit, credit) if rng.random() < 0.5 else (credit, debit)
        if roll < self.load.same_slot_share + self.load.cross_node_share:
            debit = rng.choice(self.remote_debits)
            return debit, rng.choice(self.remote[debit])
        debit = rng.choice(self.local_debits)
        return debit, rng.choice(self.local[debit])


# --- transports -----------------------------------------------------------------------------------


class Unanswered(Exception):
    """A call got no answer: its outcome is unknown."""

    def __init__(self, status: grpc.StatusCode, detail: str) -> None:
        super().__init__(f"{status.name}: {detail}")
        self.status = status


class Transport(Protocol):
    """How a client reaches the ledger."""

    name: str
    # It may resend a request itself (the router, the SDK): the answer to a first delivery
    # may then be EXISTS, when an earlier try of its own was applied but not answered.
    retries_inside: bool

    def create_transfers(self, transfers: Sequence[pb.Transfer], timeout_s: float) -> list[pb.EventResult]: ...
    def lookup_accounts(self, ids: Sequence[str], timeout_s: float) -> list[pb.AccountResult]: ...
    def reconnect(self) -> None: ...
    def close(self) -> None: ...


def _unanswered(error: grpc.RpcError, what: str) -> Unanswered:
    status = error.code()
    if status in _FATAL:
        raise AssertionError(f"{what} failed with {status}: {error}") from error
    return Unanswered(status, str(error.details()))


class Stub:
    """Raw gRPC stubs to one Ledger endpoint: a node, or a router."""

    def __init__(self, address: str, *, retries_inside: bool = False) -> None:
        self.address = address
        self.name = f"stub {address}"
        self.retries_inside = retries_inside
        self._channel = channel(address, "service", _CHANNEL_OPTIONS)
        self._stub = ledger_pb2_grpc.LedgerStub(self._channel)

    def create_accounts(self, accounts: Sequence[pb.Account], timeout_s: float) -> list[pb.EventResult]:
        reply = self._stub.CreateAccounts(pb.CreateAccountsRequest(accounts=accounts), timeout=timeout_s)
        return list(reply.results)

    def create_transfers(self, transfers: Sequence[pb.Transfer], timeout_s: float) -> list[pb.EventResult]:
        try:
            reply = self._stub.CreateTransfers(pb.CreateTransfersRequest(transfers=transfers), timeout=timeout_s)
        except grpc.RpcError as error:
            raise _unanswered(error, "CreateTransfers") from error
        return list(reply.results)

    def lookup_accounts(self, ids: Sequence[str], timeout_s: float) -> list[pb.AccountResult]:
        try:
            reply = self._stub.LookupAccounts(pb.LookupAccountsRequest(ids=ids), timeout=timeout_s)
        except grpc.RpcError as error:
            raise _unanswered(error, "LookupAccounts") from error
        return list(reply.results)

    def lookup_transfers(self, keys: Sequence[pb.TransferKey], timeout_s: float) -> list[pb.TransferResult]:
        reply = self._stub.LookupTransfers(pb.LookupTransfersRequest(keys=keys), timeout=timeout_s)
        return list(reply.results)

    def history(self, account_id: str, cursor: int, timeout_s: float) -> pb.GetAccountTransfersResponse:
        request = pb.GetAccountTransfersRequest(account_id=account_id, limit=HISTORY_PAGE, cursor=cursor)
        reply: pb.GetAccountTransfersResponse = self._stub.GetAccountTransfers(request, timeout=timeout_s)
        return reply

    def reconnect(self) -> None:
        self._channel.close()
        self._channel = channel(self.address, "service", _CHANNEL_OPTIONS)
        self._stub = ledger_pb2_grpc.LedgerStub(self._channel)

    def close(self) -> None:
        self._channel.close()


class Sdk:
    """The SDK (clients/ledger.py); several clients may share one SyncLedgerClient, whose
    routing core then coalesces their calls. The owner of the client closes it."""

    retries_inside = True

    def __init__(self, client: SyncLedgerClient, name: str) -> None:
        self.client = client
        self.name = name

    def create_transfers(self, transfers: Sequence[pb.Transfer], timeout_s: float) -> list[pb.EventResult]:
        try:
            results = self.client.create_transfers([Transfer.from_proto(t) for t in transfers], timeout_s)
        except LedgerError as error:
            if error.code in _FATAL:
                raise AssertionError(f"CreateTransfers failed: {error}") from error
            raise Unanswered(error.code, str(error)) from error
        return [_event_result(r) for r in results]

    def lookup_accounts(self, ids: Sequence[str], timeout_s: float) -> list[pb.AccountResult]:
        try:
            accounts = self.client.lookup_accounts(ids, timeout_s)
        except LedgerError as error:
            if error.code in _FATAL:
                raise AssertionError(f"LookupAccounts failed: {error}") from error
            raise Unanswered(error.code, str(error)) from error
        return [_account_result(account_id, a) for account_id, a in zip(ids, accounts, strict=True)]

    def reconnect(self) -> None:
        pass  # the SDK reconnects and refreshes its map by itself

    def close(self) -> None:
        pass


def _event_result(r: Result) -> pb.EventResult:
    return pb.EventResult(code=r.code.value, field=r.field, timestamp=r.timestamp, state=r.state.value)  # type: ignore[arg-type]


def _account_result(account_id: str, a: Account | None) -> pb.AccountResult:
    if a is None:
        return pb.AccountResult(code=pb.ACCOUNT_NOT_FOUND)
    account = pb.Account(
        id=a.id,
        ledger=a.ledger,
        code=a.code,
        flags=int(a.flags),
        debits_posted=a.debits_posted,
        credits_posted=a.credits_posted,
        debits_pending=a.debits_pending,
        credits_pending=a.credits_pending,
        overdraft_limit=a.overdraft_limit,
        status=a.status.value,  # type: ignore[arg-type]
        user_data=a.user_data,
        timestamp=a.timestamp,
    )
    assert a.id == account_id, (a.id, account_id)
    return pb.AccountResult(code=pb.OK, account=account)


# --- clients --------------------------------------------------------------------------------------


@dataclass
class Sent:
    """One transfer id the run sent, and everything that happened to its deliveries."""

    transfer: pb.Transfer
    # In order, one per delivery: the answer, or the gRPC status name of a delivery without one.
    events: list[pb.EventResult | str] = field(default_factory=list)
    # The transport may have resent it on its own, so its first answer may be EXISTS.
    exists_first_ok: bool = False

    def acks(self) -> list[pb.EventResult]:
        return [e for e in self.events if isinstance(e, pb.EventResult)]

    def first_delivery_answered_exists(self) -> bool:
        first = self.events[0] if self.events else None
        return isinstance(first, pb.EventResult) and first.code == pb.EXISTS

    def errors_before_first_ack(self) -> int:
        count = 0
        for event in self.events:
            if isinstance(event, pb.EventResult):
                break
            count += 1
        return count


class Client(threading.Thread):
    """Streams CreateTransfers batches; retries a batch without an answer exactly as it was."""

    def __init__(
        self,
        index: int,
        transport: Transport,
        pairs: Pairs,
        load: Load,
        seed: int,
        stop: threading.Event,
        abort: threading.Event,
        give_up_at: float,
        exists_first_ok: bool,
    ) -> None:
        super().__init__(name=f"bank-client-{index} ({transport.name})", daemon=True)
        self.index = index
        self.transport = transport
        self.pairs = pairs
        self.load = load
        self.rng = random.Random(seed)
        self.stop = stop
        self.abort = abort
        self.give_up_at = give_up_at
        self.exists_first_ok = exists_first_ok
        self.sent: dict[str, Sent] = {}
        self.answered_batches: list[list[pb.Transfer]] = []
        self.pool: list[pb.Transfer] = []  # pendings acknowledged OK or EXISTS, not yet posted or voided
        self.stats: Counter[str] = Counter()
        self.failure: BaseException | None = None
        self._seq = 0

    def run(self) -> None:
        try:
            for _ in range(self.load.batches_max):
                if self.stop.is_set() or self.abort.is_set() or time.monotonic() >= self.give_up_at:
                    break
                if self.answered_batches and self.rng.random() < self.load.replay_share:
                    self._send(self.rng.choice(self.answered_batches), replay=True)
                else:
                    self._send(self._new_batch(), replay=False)
        except BaseException as error:  # reported by the run, with the thread's name
            self.failure = error
        finally:
            self.transport.close()

    # --- batches ------------------------------------------------------------------------------

    def _new_batch(self) -> list[pb.Transfer]:
        batch = []
        load = self.load
        for _ in range(self.rng.randint(1, load.batch_events_max)):
            self._seq += 1
            transfer_id = f"c{self.index}-{self._seq}"
            roll = self.rng.random()
            if self.pool and roll < load.resolve_share:
                pending = self.pool.pop(self.rng.randrange(len(self.pool)))
                batch.append(self._resolution(transfer_id, pending))
            else:
                pending_roll = roll < load.resolve_share + load.pending_share
                batch.append(self._transfer(transfer_id, pb.PENDING if pending_roll else pb.TRANSFER_FLAG_NONE))
        return batch

    def _transfer(self, transfer_id: str, flags: int) -> pb.Transfer:
        debit, credit = self.pairs.pick(self.rng)
        return pb.Transfer(
            id=transfer_id,
            debit_account_id=debit,
            credit_account_id=credit,
            amount=self.rng.randint(1, self.load.amount_max),
            ledger=LEDGER,
            code=CODE,
            flags=flags,
            user_data=self.rng.randrange(1 << 32),
        )

    def _resolution(self, transfer_id: str, pending: pb.Transfer) -> pb.Transfer:
        post = self.rng.random() < 0.5
        transfer = pb.Transfer(
            id=transfer_id,
            debit_account_id=pending.debit_account_id,
            pending_id=pending.id,
            flags=pb.POST_PENDING if post else pb.VOID_PENDING,
            user_data=self.rng.randrange(1 << 32),
        )
        if self.rng.random() < 0.5:
            transfer.credit_account_id = pending.credit_account_id
        if post and self.rng.random() < 0.5:
            transfer.amount = self.rng.randint(1, pending.amount)  # partial (or whole) post
        return transfer

    # --- delivery -----------------------------------------------------------------------------

    def _send(self, batch: list[pb.Transfer], replay: bool) -> None:
        if not replay:
            for transfer in batch:
                self.sent[transfer.id] = Sent(transfer, exists_first_ok=self.exists_first_ok)
        backoff_s = 0.05
        self.stats["replayed batches" if replay else "batches"] += 1
        for _ in range(self.load.deliveries_max):
            try:
                results = self.transport.create_transfers(batch, CALL_TIMEOUT_S)
            except Unanswered as error:
                for transfer in batch:
                    self.sent[transfer.id].events.append(error.status.name)
                self.stats[f"rpc {error.status.name}"] += 1
                if self.abort.is_set() or time.monotonic() >= self.give_up_at:
                    self.stats["batches left unknown"] += 1
                    return
                if self.rng.random() < self.load.abandon_after_error:
                    # A client that gives up: its transfers stay unknown until the final lookup.
                    self.stats["batches abandoned"] += 1
                    return
                time.sleep(backoff_s * (0.5 + self.rng.random()))
                backoff_s = min(backoff_s * 2, 0.5)
                self.transport.reconnect()
                continue
            assert len(results) == len(batch), results
            for transfer, result in zip(batch, results, strict=True):
                self.sent[transfer.id].events.append(result)
                self.stats[f"answered {code_name(result.code)}"] += 1
            if not replay:
                self.answered_batches.append(batch)
                for transfer, result in zip(batch, results, strict=True):
                    if transfer.flags == pb.PENDING and result.code in (pb.OK, pb.EXISTS):
                        self.pool.append(transfer)
            return
        self.stats["batches left unknown"] += 1


class Watcher(threading.Thread):
    """Reads every balance again and again while the load runs: each read of an account (atomic
    on its node) must show it exists, no negative amount, and a flagged one within its limit."""

    def __init__(
        self,
        readers: Sequence[Transport],
        accounts: Accounts,
        stop: threading.Event,
        give_up_at: float,
        pause_s: float = 0.05,
        rounds_max: int = 100_000,
    ) -> None:
        super().__init__(name="bank-watcher", daemon=True)
        self.readers = list(readers)
        self.accounts = accounts
        self.stop = stop
        self.give_up_at = give_up_at
        self.pause_s = pause_s
        self.rounds_max = rounds_max
        self.problems: list[str] = []
        self.stats: Counter[str] = Counter()
        self.first_read = threading.Event()  # set after the first read with an answer
        self.failure: BaseException | None = None

    def run(self) -> None:
        ids = self.accounts.all_ids
        try:
            for round_ in range(self.rounds_max):
                if self.stop.is_set() or time.monotonic() >= self.give_up_at:
                    return
                reader = self.readers[round_ % len(self.readers)]
                try:
                    results = reader.lookup_accounts(ids, CALL_TIMEOUT_S)
                except Unanswered as error:
                    self.stats[f"reads {error.status.name}"] += 1
                    reader.reconnect()
                    self.stop.wait(self.pause_s)
                    continue
                self.stats["reads"] += 1
                if len(self.problems) < PROBLEMS_MAX:
                    self.problems += [
                        f"read {round_} via {reader.name}: {p}" for p in read_problems(ids, results, self.accounts)
                    ]
                self.first_read.set()
                self.stop.wait(self.pause_s)
        except BaseException as error:  # reported by the run
            self.failure = error
        finally:
            for reader in self.readers:
                reader.close()


def read_problems(ids: Sequence[str], results: Sequence[pb.AccountResult], accounts: Accounts) -> list[str]:
    problems: list[str] = []
    if len(results) != len(ids):
        return [f"{len(ids)} ids got {len(results)} results"]
    for account_id, result in zip(ids, results, strict=True):
        if result.code != pb.OK:
            problems.append(f"account {account_id}: {code_name(result.code)}")
            continue
        a = result.account
        amounts = [a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending]
        if min(amounts) < 0:
            problems.append(f"account {account_id}: a negative amount in {amounts}")
        if account_id in accounts.flagged and a.debits_posted + a.debits_pending > a.credits_posted + a.overdraft_limit:
            problems.append(
                f"account {account_id} (DEBITS_MUST_NOT_EXCEED_CREDITS): debits_posted {a.debits_posted}"
                f" + debits_pending {a.debits_pending} > credits_posted {a.credits_posted}"
                f" + overdraft_limit {a.overdraft_limit}"
            )
    return problems


# --- reading the ledger back ----------------------------------------------------------------------


def lookup_transfers(reader: Stub, sent: Sequence[Sent]) -> dict[str, pb.TransferResult]:
    found: dict[str, pb.TransferResult] = {}
    for chunk in chunks(sent, LOOKUP_CHUNK):
        keys = [pb.TransferKey(debit_account_id=s.transfer.debit_account_id, id=s.transfer.id) for s in chunk]
        results = reader.lookup_transfers(keys, READ_TIMEOUT_S)
        assert len(results) == len(keys)
        for key, result in zip(keys, results, strict=True):
            found[key.id] = result
    return found


def lookup_accounts(reader: Stub, ids: Sequence[str]) -> dict[str, pb.AccountResult]:
    found: dict[str, pb.AccountResult] = {}
    for chunk in chunks(ids, LOOKUP_CHUNK):
        results = reader.lookup_accounts(chunk, READ_TIMEOUT_S)
        assert len(results) == len(chunk)
        found.update(zip(chunk, results, strict=True))
    return found


def history_ids(reader: Stub, account_id: str) -> list[str]:
    ids: list[str] = []
    cursor = 0
    for _ in range(HISTORY_PAGES_MAX):
        reply = reader.history(account_id, cursor, READ_TIMEOUT_S)
        assert reply.code == pb.OK, f"history of {account_id}: {code_name(reply.code)}"
        ids.extend(t.id for t in reply.transfers)
        if not reply.next_cursor:
            return ids
        cursor = reply.next_cursor
    raise AssertionError(f"history of {account_id} has more than {HISTORY_PAGES_MAX} pages")


def await_quiescence(
    reader: Stub, sent: dict[str, Sent], ids: Sequence[str], wait_s_max: float, pause_s: float = 0.1
) -> tuple[int, list[str]]:
    """Waits, bounded, until no transfer the run sent is IN_FLIGHT and no credit leg is still
    travelling: then the pending totals agree (a void's RELEASE leg leaves no IN_FLIGHT transfer
    behind, but holds the credit account's credits_pending until it lands). Returns the rounds
    it took, and a problem if it never got there."""
    found = lookup_transfers(reader, list(sent.values()))
    waiting = [sent[i] for i, r in found.items() if r.code == pb.OK and r.transfer.state == pb.TRANSFER_IN_FLIGHT]
    deadline = time.monotonic() + wait_s_max
    rounds_max = int(wait_s_max / pause_s) + 1
    totals: Counter[str] = Counter()
    for round_ in range(rounds_max):
        if not waiting:
            totals = _totals(lookup_accounts(reader, ids))
            if totals["debits_pending"] == totals["credits_pending"]:
                return round_, []
        if time.monotonic() >= deadline:
            break
        time.sleep(pause_s)
        if waiting:
            found = lookup_transfers(reader, waiting)
            waiting = [sent[i] for i, r in found.items() if r.transfer.state == pb.TRANSFER_IN_FLIGHT]
    return rounds_max, [
        f"not quiescent after {wait_s_max}s: {len(waiting)} transfers still IN_FLIGHT"
        f" {[s.transfer.id for s in waiting[:10]]}, pending totals {dict(totals)}"
    ]


def _totals(looked: Mapping[str, pb.AccountResult]) -> Counter[str]:
    totals: Counter[str] = Counter()
    for result in looked.values():
        a = result.account
        totals.update(
            debits_posted=a.debits_posted,
            credits_posted=a.credits_posted,
            debits_pending=a.debits_pending,
            credits_pending=a.credits_pending,
        )
    return totals


# --- the checks -----------------------------------------------------------------------------------


def _credit_of(s: Sent, sent: Mapping[str, Sent]) -> str:
    """The account a transfer credits: a post or void credits its pending's credit account."""
    if s.transfer.flags & _RESOLVES:
        return sent[s.transfer.pending_id].transfer.credit_account_id
    return s.transfer.credit_account_id


def check_transfers(
    sent: dict[str, Sent], found: dict[str, pb.TransferResult], accounts: Accounts
) -> tuple[list[str], dict[str, pb.Transfer]]:
    """Checks (1) and (2); returns the problems and the stored record of every id the ledger has."""
    problems: list[str] = []
    records: dict[str, pb.Transfer] = {}
    for transfer_id, s in sent.items():
        t = s.transfer
        acks = s.acks()
        looked = found[transfer_id]
        if looked.code == pb.TRANSFER_NOT_FOUND:
            if acks:
                problems.append(
                    f"{transfer_id}: acknowledged {code_name(acks[0].code)} but LookupTransfers finds nothing"
                )
            continue
        if looked.code != pb.OK:
            problems.append(f"{transfer_id}: LookupTransfers answered {code_name(looked.code)}")
            continue
        record = looked.transfer
        records[transfer_id] = record

        # The stored record is the transfer that was sent.
        resolves = bool(t.flags & _RESOLVES)
        compared = ["debit_account_id", "flags", "pending_id", "user_data", "timeout_s"]
        if not resolves:
            compared += ["credit_account_id", "amount", "ledger", "code"]
        elif t.credit_account_id:
            compared.append("credit_account_id")
        for name in compared:
            if getattr(record, name) != getattr(t, name):
                problems.append(f"{transfer_id}: stored {name}={getattr(record, name)!r}, sent {getattr(t, name)!r}")

        # Only failure this load can meet: a flagged account without enough credit.
        if record.state == pb.TRANSFER_REJECTED and not (
            record.result == pb.EXCEEDS_CREDITS and not resolves and t.debit_account_id in accounts.flagged
        ):
            problems.append(
                f"{transfer_id}: stored REJECTED with {code_name(record.result)}, which this load cannot cause"
            )
        # The states each kind may end in (no pending here has a timeout, so none expires).
        allowed = (
            {pb.TRANSFER_PENDING, pb.TRANSFER_POSTED, pb.TRANSFER_VOIDED}
            if t.flags == pb.PENDING
            else {pb.TRANSFER_POSTED}
        )
        if record.state not in allowed | {pb.TRANSFER_REJECTED}:
            problems.append(f"{transfer_id}: stored {state_name(record.state)}, which it cannot end in")

        if not acks:
            continue  # unknown outcome: whatever is stored counts, and was checked above
        problems += _check_answers(s, record, accounts.cross_node(t.debit_account_id, _credit_of(s, sent)))
    return problems, records


def _check_answers(s: Sent, record: pb.Transfer, cross_node: bool) -> list[str]:
    """Every answer to one transfer id agrees with its stored record. The first answer that is
    not IN_FLIGHT is its outcome: OK or EXISTS for a stored success, the stored failure for a
    rejection; every later answer repeats it (EXISTS after OK); only IN_FLIGHT may come before."""
    problems: list[str] = []
    transfer_id = s.transfer.id
    acks = s.acks()
    in_flight = [i for i, a in enumerate(acks) if a.code == pb.IN_FLIGHT]
    settled = [i for i, a in enumerate(acks) if a.code != pb.IN_FLIGHT]
    if in_flight and not cross_node:
        problems.append(f"{transfer_id}: answered IN_FLIGHT, but both its accounts live on one node")
    if in_flight and settled and in_flight[-1] > settled[0]:
        problems.append(f"{transfer_id}: answered IN_FLIGHT after its outcome {code_name(acks[settled[0]].code)}")
    if s.first_delivery_answered_exists() and not s.exists_first_ok:
        problems.append(f"{transfer_id}: its first delivery was answered EXISTS")
    if settled:
        original = acks[settled[0]]
        if original.code == pb.OK and settled[0] != 0:
            problems.append(f"{transfer_id}: answered OK after IN_FLIGHT (a replay answers EXISTS)")
        if original.code in (pb.OK, pb.EXISTS):
            if record.state == pb.TRANSFER_REJECTED:
                problems.append(f"{transfer_id}: acknowledged {code_name(original.code)} but stored REJECTED")
            replay_code = pb.EXISTS
        else:
            if record.state != pb.TRANSFER_REJECTED or record.result != original.code:
                problems.append(
                    f"{transfer_id}: acknowledged {code_name(original.code)} but stored {state_name(record.state)}"
                    f" with result {code_name(record.result)}"
                )
            replay_code = original.code
        for later in acks[settled[0] + 1 :]:
            if later.code != replay_code:
                problems.append(
                    f"{transfer_id}: a replay answered {code_name(later.code)} after {code_name(original.code)}"
                    f" (expected {code_name(replay_code)})"
                )
    oks = sum(1 for a in acks if a.code == pb.OK)
    if oks > 1:
        problems.append(f"{transfer_id}: answered OK {oks} times")
    for ack in acks:
        if ack.timestamp != record.timestamp:
            problems.append(
                f"{transfer_id}: answered {code_name(ack.code)} at timestamp {ack.timestamp}, stored at"
                f" {record.timestamp} (applied again?)"
            )
    return problems


def check_pendings(sent: dict[str, Sent], records: dict[str, pb.Transfer]) -> list[str]:
    """Check (3): each pending's state agrees with the post or void of it that is stored."""
    problems: list[str] = []
    resolutions: dict[tuple[str, str], list[pb.Transfer]] = {}
    for record in records.values():
        if record.flags & _RESOLVES and record.state != pb.TRANSFER_REJECTED:
            resolutions.setdefault((record.debit_account_id, record.pending_id), []).append(record)
    for transfer_id, record in records.items():
        if record.flags != pb.PENDING or record.state == pb.TRANSFER_REJECTED:
            continue
        resolved_by = resolutions.get((record.debit_account_id, transfer_id), [])
        if len(resolved_by) > 1:
            problems.append(f"{transfer_id}: resolved {len(resolved_by)} times: {[r.id for r in resolved_by]}")
            continue
        if not resolved_by:
            if record.state != pb.TRANSFER_PENDING:
                problems.append(f"{transfer_id}: nothing posted or voided it, yet it is {state_name(record.state)}")
            continue
        resolution = resolved_by[0]
        for name in ("credit_account_id", "ledger", "code"):
            if getattr(resolution, name) != getattr(record, name):
                problems.append(f"{resolution.id}: resolves {transfer_id} but its {name} differs from the pending's")
        if resolution.flags == pb.POST_PENDING:
            requested = sent[resolution.id].transfer.amount
            expected_amount = requested or record.amount
            if record.state != pb.TRANSFER_POSTED or record.amount_posted != resolution.amount:
                problems.append(
                    f"{transfer_id}: posted by {resolution.id} ({resolution.amount}) but stored"
                    f" {state_name(record.state)} with amount_posted {record.amount_posted}"
                )
            if resolution.amount != expected_amount:
                problems.append(f"{resolution.id}: posts {resolution.amount}, requested {requested} of {record.amount}")
        elif record.state != pb.TRANSFER_VOIDED or record.amount_posted != 0:
            problems.append(f"{transfer_id}: voided by {resolution.id} but stored {state_name(record.state)}")
    # A post or void acknowledged OK or EXISTS (or IN_FLIGHT, and then stored as a success)
    # must have resolved its pending.
    for s in sent.values():
        acks = s.acks()
        if not (s.transfer.flags & _RESOLVES and acks):
            continue
        stored = records.get(s.transfer.id)
        succeeded = stored is not None and stored.state != pb.TRANSFER_REJECTED
        if acks[0].code in (pb.OK, pb.EXISTS) or succeeded:
            pending = records.get(s.transfer.pending_id)
            want = pb.TRANSFER_POSTED if s.transfer.flags == pb.POST_PENDING else pb.TRANSFER_VOIDED
            if pending is None or pending.state != want:
                got = "missing" if pending is None else state_name(pending.state)
                problems.append(f"{s.transfer.id}: acknowledged, but its pending {s.transfer.pending_id} is {got}")
    return problems


def expected_balances(records: dict[str, pb.Transfer]) -> dict[str, list[int]]:
    """debits_posted, credits_posted, debits_pending, credits_pending of each account, from
    the transfers the ledger stores: what the account must show if nothing is lost or doubled."""
    balances: dict[str, list[int]] = {}

    def add(account_id: str, index: int, amount: int) -> None:
        balances.setdefault(account_id, [0, 0, 0, 0])[index] += amount

    for record in records.values():
        if record.state == pb.TRANSFER_REJECTED:
            continue
        if record.flags == pb.TRANSFER_FLAG_NONE or record.flags == pb.POST_PENDING:
            # A post is stored with the pending's accounts and the amount it moved.
            add(record.debit_account_id, 0, record.amount)
            add(record.credit_account_id, 1, record.amount)
        elif record.flags == pb.PENDING and record.state == pb.TRANSFER_PENDING:
            add(record.debit_account_id, 2, record.amount)
            add(record.credit_account_id, 3, record.amount)
        # A posted or voided pending, and a void, move nothing by themselves.
    return balances


def check_accounts(reader: Stub, accounts: Accounts, records: dict[str, pb.Transfer]) -> list[str]:
    """Checks (4), (5) and (6)."""
    account_ids = accounts.all_ids
    problems: list[str] = []
    looked = lookup_accounts(reader, account_ids)
    found: dict[str, pb.Account] = {}
    for account_id, result in looked.items():
        if result.code != pb.OK:
            problems.append(f"account {account_id}: LookupAccounts answered {code_name(result.code)}")
        else:
            found[account_id] = result.account
    if problems:
        return problems

    totals = _totals(looked)
    if totals["debits_posted"] != totals["credits_posted"]:
        problems.append(f"posted totals differ: debits {totals['debits_posted']}, credits {totals['credits_posted']}")
    if totals["debits_pending"] != totals["credits_pending"]:
        problems.append(
            f"pending totals differ: debits {totals['debits_pending']}, credits {totals['credits_pending']}"
        )
    problems += [f"final read: {p}" for p in read_problems(account_ids, list(looked.values()), accounts)]

    expected = expected_balances(records)
    for account_id, a in found.items():
        want = expected.get(account_id, [0, 0, 0, 0])
        have = [a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending]
        if have != want:
            problems.append(
                f"account {account_id}: [debits_posted, credits_posted, debits_pending, credits_pending] is {have},"
                f" the stored transfers add up to {want}"
            )

    applied_events: dict[str, Counter[str]] = {account_id: Counter() for account_id in account_ids}
    for record in records.values():
        if record.state != pb.TRANSFER_REJECTED:
            applied_events[record.debit_account_id][record.id] += 1
            applied_events[record.credit_account_id][record.id] += 1
    for account_id in account_ids:
        history = Counter(history_ids(reader, account_id))
        doubled = sorted(i for i, n in history.items() if n > 1)
        missing = sorted(applied_events[account_id] - history)
        extra = sorted(history - applied_events[account_id])
        if doubled or missing or extra:
            problems.append(
                f"account {account_id} history: doubled {doubled[:10]}, missing {missing[:10]}, unknown {extra[:10]}"
            )
    return problems


# --- a run ----------------------------------------------------------------------------------------


@dataclass
class Report:
    """What a run found: `problems` is empty when every check held."""

    seed: int
    problems: list[str]
    summary: str
    sent: dict[str, Sent]
    records: dict[str, pb.Transfer]

    def explain(self, logs: str = "") -> str:
        shown = "\n".join(self.problems[:40])
        more = f"\n... and {len(self.problems) - 40} more" if len(self.problems) > 40 else ""
        return f"seed {self.seed}: {len(self.problems)} problems\n{shown}{more}\n{self.summary}\n{logs}"


@dataclass
class BankRun:
    """One bank test: set up, load (with chaos), quiesce, check."""

    address: str  # a Ledger endpoint (node or router) for setup and the final reads
    accounts: Accounts
    transports: Sequence[Transport]  # one client thread each
    seed: int
    load: Load = field(default_factory=Load)
    watchers: Sequence[Transport] = ()  # readers the balance watcher takes turns with (closed by it)
    load_s: float = 3.0  # how long the load runs when there is no chaos
    # Runs while the clients do (kill -9, restarts, ...); the load goes on `load_after_chaos_s` more.
    chaos: Callable[[random.Random], None] | None = None
    load_after_chaos_s: float = 1.0
    # Runs once the clients are quiet, before anything is read back (another crash, say).
    after_load: Callable[[random.Random], None] | None = None
    quiescence_wait_s_max: float = 30.0
    setup_timeout_s: float = 30.0

    def run(self) -> Report:
        rng = random.Random(self.seed)
        stop, watcher_stop, abort = threading.Event(), threading.Event(), threading.Event()
        funding = self._set_up()
        give_up_at = time.monotonic() + self.load.give_up_s
        pairs = Pairs(self.accounts, self.load)
        chaotic = self.chaos is not None or self.after_load is not None
        clients = [
            Client(
                i,
                transport,
                pairs,
                self.load,
                self.seed + i + 1,
                stop,
                abort,
                give_up_at,
                exists_first_ok=transport.retries_inside and chaotic,
            )
            for i, transport in enumerate(self.transports)
        ]
        watcher = Watcher(self.watchers, self.accounts, watcher_stop, give_up_at) if self.watchers else None
        started = time.monotonic()
        try:
            if watcher is not None:
                watcher.start()
                # At least one read before any chaos (the first one meets a healthy ledger).
                assert watcher.first_read.wait(self.setup_timeout_s), f"no balance read: {watcher.stats}"
            for client in clients:
                client.start()
            if self.chaos is not None:
                self.chaos(rng)
                time.sleep(self.load_after_chaos_s)
            else:
                time.sleep(self.load_s)
            stop.set()
            for client in clients:
                client.join(timeout=max(1.0, give_up_at - time.monotonic() + 10))
            assert not [c.name for c in clients if c.is_alive()], "clients did not finish"
            failures = [f"{c.name}: {c.failure!r}" for c in clients if c.failure is not None]
            assert not failures, failures
        finally:
            abort.set()
            stop.set()
            watcher_stop.set()
            for client in clients:
                client.join(timeout=10)
            if watcher is not None:
                watcher.join(timeout=CALL_TIMEOUT_S + 5)
        load_s = time.monotonic() - started
        problems: list[str] = []
        if watcher is not None:
            assert not watcher.is_alive(), "the watcher did not finish"
            assert watcher.failure is None, f"the watcher failed: {watcher.failure!r}"
            problems += watcher.problems

        if self.after_load is not None:
            self.after_load(rng)

        sent: dict[str, Sent] = dict(funding)
        for client in clients:
            assert not sent.keys() & client.sent.keys(), "transfer ids must be unique in a run"
            sent.update(client.sent)
        reader = Stub(self.address)
        try:
            quiet_at = time.monotonic()
            rounds, unquiet = await_quiescence(reader, sent, self.accounts.all_ids, self.quiescence_wait_s_max)
            quiet_s = time.monotonic() - quiet_at
            problems += unquiet
            found = lookup_transfers(reader, list(sent.values()))
            transfer_problems, records = check_transfers(sent, found, self.accounts)
            problems += transfer_problems
            problems += check_pendings(sent, records)
            problems += check_accounts(reader, self.accounts, records)
        finally:
            reader.close()

        stats: Counter[str] = Counter()
        for client in clients:
            stats.update(client.stats)
        if watcher is not None:
            stats.update(watcher.stats)
        summary = self._summary(sent, records, stats, load_s, rounds, quiet_s)
        print(summary)
        return Report(self.seed, problems, summary, sent, records)

    def _set_up(self) -> dict[str, Sent]:
        """Opens every account and funds every customer from its bank; returns the funding."""
        accounts = self.accounts
        opened = [pb.Account(id=bank, ledger=LEDGER, code=CODE) for bank in accounts.banks] + [
            pb.Account(
                id=a, ledger=LEDGER, code=CODE, flags=pb.DEBITS_MUST_NOT_EXCEED_CREDITS if a in accounts.flagged else 0
            )
            for a in accounts.customers
        ]
        funding = [
            pb.Transfer(
                id=f"fund-{a}",
                debit_account_id=accounts.bank_of[a],
                credit_account_id=a,
                amount=accounts.funding,
                ledger=LEDGER,
                code=CODE,
            )
            for a in accounts.customers
        ]
        setup = Stub(self.address)
        try:
            codes = [r.code for r in setup.create_accounts(opened, self.setup_timeout_s)]
            assert codes == [pb.OK] * len(opened), [code_name(c) for c in codes]
            results = setup.create_transfers(funding, self.setup_timeout_s)
        finally:
            setup.close()
        for t, r in zip(funding, results, strict=True):
            # A cross-node funding transfer may still be on its way; the final checks see it land.
            may_fly = accounts.cross_node(t.debit_account_id, t.credit_account_id)
            assert r.code == pb.OK or (may_fly and r.code == pb.IN_FLIGHT), (t, r)
        return {t.id: Sent(t, [r]) for t, r in zip(funding, results, strict=True)}

    def _where(self, debit: str, credit: str) -> str:
        accounts = self.accounts
        if not accounts.node_of:
            return "one node"
        if accounts.cross_node(debit, credit):
            return "cross node"
        return "same slot" if accounts.slot_of[debit] == accounts.slot_of[credit] else "cross slot, same node"

    def _summary(
        self,
        sent: dict[str, Sent],
        records: dict[str, pb.Transfer],
        stats: Counter[str],
        load_s: float,
        rounds: int,
        quiet_s: float,
    ) -> str:
        unknown = [s for s in sent.values() if not s.acks()]
        retried = [s for s in sent.values() if s.acks() and s.errors_before_first_ack()]
        kinds: Counter[str] = Counter()
        for s in sent.values():
            t = s.transfer
            kinds[_KIND_NAMES.get(t.flags, "plain")] += 1
            kinds[self._where(t.debit_account_id, _credit_of(s, sent))] += 1
        return (
            f"seed={self.seed} load_s={load_s:.1f} sent={len(sent)} {dict(sorted(kinds.items()))} stored={len(records)}"
            f" acked_ok={sum(1 for s in sent.values() if s.acks() and s.acks()[0].code == pb.OK)}"
            f" unknown={len(unknown)} (stored {sum(1 for s in unknown if s.transfer.id in records)})"
            f" first_delivery_answered_exists={sum(1 for s in sent.values() if s.first_delivery_answered_exists())}"
            f" answered_after_lost_delivery={len(retried)}"
            f" (EXISTS {sum(1 for s in retried if s.acks()[0].code == pb.EXISTS)})"
            f" quiescence_rounds={rounds} quiescence_s={quiet_s:.1f} {dict(sorted(stats.items()))}"
        )
