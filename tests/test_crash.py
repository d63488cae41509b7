"""Durability under kill -9: SIGKILL a node again and again while clients stream transfers.

Four client threads send batches of random transfers (plain, pending, and posts/voids of
pendings the node acknowledged) to one node while the test kills it with SIGKILL at random
moments and restarts it on the same port and data directory. A request that fails with a
gRPC error has an unknown outcome; the client resends the very same batch until it gets an
answer, so idempotency decides what the retry means. Clients also replay whole batches the
node already answered.

Afterwards (one more kill -9 once the clients are quiet, so everything acknowledged must
survive a crash too) the test looks up every transfer id it ever sent and every account,
and proves: nothing acknowledged was lost, nothing was applied twice, replays answer
EXISTS or the original failure, and money is conserved to the unit.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import pytest

from proto import ledger_pb2 as pb
from proto import ledger_pb2_grpc
from tests.conftest import NodeHandle, start_node

pytestmark = pytest.mark.timeout(300)

LEDGER = 1
CODE = 1
ACCOUNTS = 40
FUNDING = 20_000  # what the bank credits every account before the load starts
AMOUNT_MAX = 500
BATCH_MAX = 50
CLIENTS = 4
KILLS_UNDER_LOAD = 6
CALL_TIMEOUT_S = 5.0
ABANDON_AFTER_ERROR = 0.25  # how often a client gives a batch without an answer up instead of resending it
LOAD_AFTER_LAST_RESTART_S = 1.0
CLIENT_GIVE_UP_S = 90.0  # hard bound on every client loop, from the start of the load
LOOKUP_CHUNK = 500

T = TypeVar("T")
BANK = "bank"
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]
# gRPC errors that mean the request itself is wrong (a bug here or in the node), not that
# the node went away: they are never retried.
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


def _code(code: int) -> str:
    return pb.ResultCode.Name(code)


def _state(state: int) -> str:
    return pb.TransferState.Name(state)


@dataclass
class Sent:
    """One transfer id the test sent, and everything that happened to its deliveries."""

    transfer: pb.Transfer
    # In order, one per delivery: the answer, or the gRPC status name of a delivery without one.
    events: list[pb.EventResult | str] = field(default_factory=list)

    def acks(self) -> list[pb.EventResult]:
        return [e for e in self.events if isinstance(e, pb.EventResult)]

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
        address: str,
        accounts: Sequence[str],
        seed: int,
        stop: threading.Event,
        abort: threading.Event,
        give_up_at: float,
    ) -> None:
        super().__init__(name=f"crash-client-{index}", daemon=True)
        self.index = index
        self.address = address
        self.accounts = list(accounts)
        self.rng = random.Random(seed)
        self.stop = stop
        self.abort = abort
        self.give_up_at = give_up_at
        self.sent: dict[str, Sent] = {}
        self.answered_batches: list[list[pb.Transfer]] = []
        self.pool: list[pb.Transfer] = []  # pendings the node acknowledged, not yet posted or voided
        self.stats: Counter[str] = Counter()
        self.failure: BaseException | None = None
        self._seq = 0
        self._channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._stub = ledger_pb2_grpc.LedgerStub(self._channel)

    def run(self) -> None:
        try:
            while not self.stop.is_set() and not self.abort.is_set() and time.monotonic() < self.give_up_at:
                if self.answered_batches and self.rng.random() < 0.1:
                    self._send(self.rng.choice(self.answered_batches), replay=True)
                else:
                    self._send(self._new_batch(), replay=False)
        except BaseException as error:  # reported by the test, with the thread's name
            self.failure = error
        finally:
            self._channel.close()

    # --- batches ------------------------------------------------------------------------------

    def _new_batch(self) -> list[pb.Transfer]:
        batch = []
        for _ in range(self.rng.randint(1, BATCH_MAX)):
            self._seq += 1
            transfer_id = f"c{self.index}-{self._seq}"
            roll = self.rng.random()
            if self.pool and roll < 0.2:
                pending = self.pool.pop(self.rng.randrange(len(self.pool)))
                batch.append(self._resolution(transfer_id, pending))
            else:
                batch.append(self._transfer(transfer_id, pb.PENDING if roll < 0.45 else pb.TRANSFER_FLAG_NONE))
        return batch

    def _transfer(self, transfer_id: str, flags: int) -> pb.Transfer:
        debit, credit = self.rng.sample(self.accounts, 2)
        return pb.Transfer(
            id=transfer_id,
            debit_account_id=debit,
            credit_account_id=credit,
            amount=self.rng.randint(1, AMOUNT_MAX),
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
                self.sent[transfer.id] = Sent(transfer)
        request = pb.CreateTransfersRequest(transfers=batch)
        backoff = 0.05
        self.stats["replayed batches" if replay else "batches"] += 1
        while True:
            try:
                reply = self._stub.CreateTransfers(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as error:
                status = error.code()  # type: ignore[attr-defined]
                if status in _FATAL:
                    raise AssertionError(f"CreateTransfers failed with {status}: {error}") from error
                for transfer in batch:
                    self.sent[transfer.id].events.append(status.name)
                self.stats[f"rpc {status.name}"] += 1
                if self.abort.is_set() or time.monotonic() >= self.give_up_at:
                    self.stats["batches left unknown"] += 1
                    return
                if self.rng.random() < ABANDON_AFTER_ERROR:
                    # A client that gives up: its transfers stay unknown until the final lookup.
                    self.stats["batches abandoned"] += 1
                    return
                time.sleep(backoff * (0.5 + self.rng.random()))
                backoff = min(backoff * 2, 0.5)
                self._reconnect()
                continue
            assert len(reply.results) == len(batch), reply
            for transfer, result in zip(batch, reply.results, strict=True):
                self.sent[transfer.id].events.append(result)
            if not replay:
                self.answered_batches.append(batch)
                for transfer, result in zip(batch, reply.results, strict=True):
                    if transfer.flags == pb.PENDING and result.code in (pb.OK, pb.EXISTS):
                        self.pool.append(transfer)
            return

    def _reconnect(self) -> None:
        self._channel.close()
        self._channel = grpc.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
        self._stub = ledger_pb2_grpc.LedgerStub(self._channel)


# --- reading the node back ------------------------------------------------------------------------


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _lookup_transfers(node: NodeHandle, sent: Sequence[Sent]) -> dict[str, pb.TransferResult]:
    found: dict[str, pb.TransferResult] = {}
    for chunk in _chunks(sent, LOOKUP_CHUNK):
        keys = [pb.TransferKey(debit_account_id=s.transfer.debit_account_id, id=s.transfer.id) for s in chunk]
        reply = node.ledger.LookupTransfers(pb.LookupTransfersRequest(keys=keys), timeout=30)
        assert len(reply.results) == len(keys)
        for key, result in zip(keys, reply.results, strict=True):
            found[key.id] = result
    return found


def _lookup_accounts(node: NodeHandle, ids: Sequence[str]) -> dict[str, pb.AccountResult]:
    reply = node.ledger.LookupAccounts(pb.LookupAccountsRequest(ids=ids), timeout=30)
    assert len(reply.results) == len(ids)
    return dict(zip(ids, reply.results, strict=True))


def _history_ids(node: NodeHandle, account_id: str, pages_max: int = 1000) -> list[str]:
    ids: list[str] = []
    cursor = 0
    for _ in range(pages_max):
        reply = node.ledger.GetAccountTransfers(
            pb.GetAccountTransfersRequest(account_id=account_id, limit=1000, cursor=cursor), timeout=30
        )
        assert reply.code == pb.OK, f"history of {account_id}: {_code(reply.code)}"
        ids.extend(t.id for t in reply.transfers)
        if not reply.next_cursor:
            return ids
        cursor = reply.next_cursor
    raise AssertionError(f"history of {account_id} has more than {pages_max} pages")


# --- the checks ---------------------------------------------------------------------------------


def _check_transfers(
    sent: dict[str, Sent], found: dict[str, pb.TransferResult], flagged: set[str]
) -> tuple[list[str], dict[str, pb.Transfer]]:
    """Checks (1) and (2): every answer agrees with what the node stores; returns the problems
    and the stored records of every id the node has."""
    problems: list[str] = []
    records: dict[str, pb.Transfer] = {}
    for transfer_id, s in sent.items():
        t = s.transfer
        acks = s.acks()
        looked = found[transfer_id]
        if looked.code == pb.TRANSFER_NOT_FOUND:
            if acks:
                problems.append(f"{transfer_id}: acknowledged {_code(acks[0].code)} but LookupTransfers finds nothing")
            continue
        if looked.code != pb.OK:
            problems.append(f"{transfer_id}: LookupTransfers answered {_code(looked.code)}")
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

        # Only failure this workload can meet: a flagged account without enough credit.
        if record.state == pb.TRANSFER_REJECTED and not (
            record.result == pb.EXCEEDS_CREDITS and not resolves and t.debit_account_id in flagged
        ):
            problems.append(f"{transfer_id}: stored REJECTED with {_code(record.result)}, which this load cannot cause")

        if not acks:
            continue  # unknown outcome: whatever is stored counts, and was checked above
        original = acks[0]
        if original.code == pb.EXISTS and s.errors_before_first_ack() == 0:
            problems.append(f"{transfer_id}: its first delivery was answered EXISTS")
        if original.code in (pb.OK, pb.EXISTS):
            if record.state == pb.TRANSFER_REJECTED:
                problems.append(f"{transfer_id}: acknowledged {_code(original.code)} but stored REJECTED")
            replay_code = pb.EXISTS
        else:
            if record.state != pb.TRANSFER_REJECTED or record.result != original.code:
                problems.append(
                    f"{transfer_id}: acknowledged {_code(original.code)} but stored {_state(record.state)}"
                    f" with result {_code(record.result)}"
                )
            replay_code = original.code
        for later in acks[1:]:
            if later.code != replay_code:
                problems.append(
                    f"{transfer_id}: a replay answered {_code(later.code)} after {_code(original.code)}"
                    f" (expected {_code(replay_code)})"
                )
        oks = sum(1 for a in acks if a.code == pb.OK)
        if oks > 1:
            problems.append(f"{transfer_id}: answered OK {oks} times")
        for ack in acks:
            if ack.timestamp != record.timestamp:
                problems.append(
                    f"{transfer_id}: answered {_code(ack.code)} at timestamp {ack.timestamp}, stored at"
                    f" {record.timestamp} (applied again?)"
                )
    return problems, records


def _check_pendings(sent: dict[str, Sent], records: dict[str, pb.Transfer]) -> list[str]:
    """Each pending's state agrees with the post or void of it that the node stores."""
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
                problems.append(f"{transfer_id}: nothing posted or voided it, yet it is {_state(record.state)}")
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
                    f" {_state(record.state)} with amount_posted {record.amount_posted}"
                )
            if resolution.amount != expected_amount:
                problems.append(f"{resolution.id}: posts {resolution.amount}, requested {requested} of {record.amount}")
        elif record.state != pb.TRANSFER_VOIDED or record.amount_posted != 0:
            problems.append(f"{transfer_id}: voided by {resolution.id} but stored {_state(record.state)}")
    # A post or void acknowledged OK (or EXISTS) must have resolved its pending.
    for s in sent.values():
        acks = s.acks()
        if s.transfer.flags & _RESOLVES and acks and acks[0].code in (pb.OK, pb.EXISTS):
            pending = records.get(s.transfer.pending_id)
            want = pb.TRANSFER_POSTED if s.transfer.flags == pb.POST_PENDING else pb.TRANSFER_VOIDED
            if pending is None or pending.state != want:
                got = "missing" if pending is None else _state(pending.state)
                problems.append(f"{s.transfer.id}: acknowledged, but its pending {s.transfer.pending_id} is {got}")
    return problems


def _expected_balances(records: dict[str, pb.Transfer]) -> dict[str, list[int]]:
    """debits_posted, credits_posted, debits_pending, credits_pending of each account, from
    the transfers the node stores: what the account must show if nothing is lost or doubled."""
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


def _check_accounts(
    node: NodeHandle, account_ids: list[str], flagged: set[str], records: dict[str, pb.Transfer]
) -> list[str]:
    """Checks (3), (4) and (5), and that each account's history holds every applied event once."""
    problems: list[str] = []
    looked = _lookup_accounts(node, account_ids)
    accounts: dict[str, pb.Account] = {}
    for account_id, result in looked.items():
        if result.code != pb.OK:
            problems.append(f"account {account_id}: LookupAccounts answered {_code(result.code)}")
        else:
            accounts[account_id] = result.account
    if problems:
        return problems

    totals = Counter[str]()
    for a in accounts.values():
        totals.update(
            debits_posted=a.debits_posted,
            credits_posted=a.credits_posted,
            debits_pending=a.debits_pending,
            credits_pending=a.credits_pending,
        )
    if totals["debits_posted"] != totals["credits_posted"]:
        problems.append(f"posted totals differ: debits {totals['debits_posted']}, credits {totals['credits_posted']}")
    if totals["debits_pending"] != totals["credits_pending"]:
        problems.append(
            f"pending totals differ: debits {totals['debits_pending']}, credits {totals['credits_pending']}"
        )

    for account_id in sorted(flagged):
        a = accounts[account_id]
        if a.debits_posted + a.debits_pending > a.credits_posted:
            problems.append(
                f"account {account_id} (DEBITS_MUST_NOT_EXCEED_CREDITS): debits_posted {a.debits_posted}"
                f" + debits_pending {a.debits_pending} > credits_posted {a.credits_posted}"
            )

    expected = _expected_balances(records)
    for account_id, a in accounts.items():
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
        history = Counter(_history_ids(node, account_id))
        doubled = sorted(i for i, n in history.items() if n > 1)
        missing = sorted(applied_events[account_id] - history)
        extra = sorted(history - applied_events[account_id])
        if doubled or missing or extra:
            problems.append(
                f"account {account_id} history: doubled {doubled[:10]}, missing {missing[:10]}, unknown {extra[:10]}"
            )
    return problems


# --- the test -----------------------------------------------------------------------------------


def _setup_accounts(node: NodeHandle) -> tuple[list[str], set[str], dict[str, Sent]]:
    ids = [f"acct-{i}" for i in range(ACCOUNTS)]
    flagged = {account_id for i, account_id in enumerate(ids) if i % 2 == 0}
    accounts = [pb.Account(id=BANK, ledger=LEDGER, code=CODE)] + [
        pb.Account(id=a, ledger=LEDGER, code=CODE, flags=pb.DEBITS_MUST_NOT_EXCEED_CREDITS if a in flagged else 0)
        for a in ids
    ]
    assert node.accounts(*accounts) == [pb.OK] * len(accounts)
    funding = [
        pb.Transfer(
            id=f"fund-{a}", debit_account_id=BANK, credit_account_id=a, amount=FUNDING, ledger=LEDGER, code=CODE
        )
        for a in ids
    ]
    results = node.transfers(*funding)
    assert [r.code for r in results] == [pb.OK] * len(funding), results
    sent = {t.id: Sent(t, [r]) for t, r in zip(funding, results, strict=True)}
    return ids, flagged, sent


def _report(problems: list[str], node: NodeHandle, seed: int) -> str:
    shown = "\n".join(problems[:40])
    more = f"\n... and {len(problems) - 40} more" if len(problems) > 40 else ""
    return f"seed {seed}: {len(problems)} problems\n{shown}{more}\nnode log tail:\n{node.process.log_tail(40)}"


def test_kill_9_loses_no_acknowledged_transfer_and_conserves_money(tmp_path_factory: pytest.TempPathFactory) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    node = start_node(tmp_path_factory)
    stop, abort = threading.Event(), threading.Event()
    clients: list[Client] = []
    try:
        account_ids, flagged, funding = _setup_accounts(node)
        give_up_at = time.monotonic() + CLIENT_GIVE_UP_S
        clients = [
            Client(i, node.process.address, account_ids, seed + i + 1, stop, abort, give_up_at) for i in range(CLIENTS)
        ]
        for client in clients:
            client.start()

        kills = 0
        for _ in range(KILLS_UNDER_LOAD):
            time.sleep(rng.uniform(0.2, 1.5))
            node.process.kill()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.2))
            node.process.start()  # same port and data dir; raises with the log tail if it fails
        time.sleep(LOAD_AFTER_LAST_RESTART_S)
        stop.set()
        for client in clients:
            client.join(timeout=max(1.0, give_up_at - time.monotonic() + 10))
        assert not [c.name for c in clients if c.is_alive()], "clients did not finish"
        failures = [f"{c.name}: {c.failure!r}" for c in clients if c.failure is not None]
        assert not failures, failures

        # Everything acknowledged so far must also survive one more crash, taken while idle.
        node.process.kill()
        kills += 1
        node.process.start()
        node.reconnect()

        sent: dict[str, Sent] = dict(funding)
        for client in clients:
            sent.update(client.sent)
        found = _lookup_transfers(node, list(sent.values()))
        problems, records = _check_transfers(sent, found, flagged)
        problems += _check_pendings(sent, records)
        problems += _check_accounts(node, [BANK, *account_ids], flagged, records)

        stats: Counter[str] = Counter()
        for client in clients:
            stats.update(client.stats)
        unknown = [s for s in sent.values() if not s.acks()]
        retried = [s for s in sent.values() if s.acks() and s.errors_before_first_ack()]
        print(
            f"seed={seed} kills={kills} sent={len(sent)} stored={len(records)}"
            f" acked_ok={sum(1 for s in sent.values() if s.acks() and s.acks()[0].code == pb.OK)}"
            f" unknown={len(unknown)} (stored {sum(1 for s in unknown if s.transfer.id in records)})"
            f" answered_after_lost_delivery={len(retried)}"
            f" (EXISTS {sum(1 for s in retried if s.acks()[0].code == pb.EXISTS)}) {dict(stats)}"
        )
        assert kills >= 5
        assert not problems, _report(problems, node, seed)
    finally:
        abort.set()
        stop.set()
        for client in clients:
            client.join(timeout=10)
        node.close()
        code = node.process.stop()
    assert code == 0, f"the node did not stop cleanly ({code}):\n{node.process.log_tail()}"
