"""Transfers across nodes (the durable outbox): real node pairs on loopback.

Each pair is two `yunkai node --join` processes; every slot below SLOTS/2 is assigned to
the first, the rest to the second, and both learn the whole table (that is how a node
finds the owner of a credit account's slot). Accounts are named so that their slot lands
on the node a test wants. Waits for asynchronous outcomes poll with a bound; no assertion
depends on timing.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import pytest

from node.keys import account_slot
from proto import ledger_pb2 as pb, ledger_pb2_grpc, node_pb2, node_pb2_grpc
from tests.conftest import NodeHandle, channel, fresh, start_node

pytestmark = pytest.mark.timeout(180)

SLOTS = 64
LEDGER = 156
CODE = 1
WAIT_S = 30.0  # bound on every wait for an asynchronous outcome
T = TypeVar("T")


# --- a two-node cluster -------------------------------------------------------------------------


def owner_index(account_id: str) -> int:
    return account_slot(account_id, SLOTS) * 2 // SLOTS


def on(index: int, prefix: str) -> str:
    """A fresh account id whose slot belongs to node `index`."""
    while True:
        account_id = fresh(prefix)
        if owner_index(account_id) == index:
            return account_id


class Pair:
    """Two nodes splitting the slots; helpers send each request to the right node."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, *extra: str) -> None:
        self.nodes = [start_node(tmp_path_factory, "--join", "--slots-total", str(SLOTS), *extra) for _ in range(2)]
        self.assign()

    def assign(self) -> None:
        table = [
            node_pb2.SlotOwnership(slot=slot, epoch=1, owner=self.nodes[slot * 2 // SLOTS].process.address)
            for slot in range(SLOTS)
        ]
        # Each node's certificate identity, as a controller records it: legs are checked against it.
        spiffe_ids = {
            node.process.address: node.admin.GetSlots(node_pb2.GetSlotsRequest(summary=True), timeout=10).spiffe_id
            for node in self.nodes
        }
        for node in self.nodes:
            node.admin.AssignSlots(
                node_pb2.AssignSlotsRequest(
                    map_version=1, self_address=node.process.address, slots=table, spiffe_ids=spiffe_ids
                ),
                timeout=10,
            )

    def node_of(self, account_id: str) -> NodeHandle:
        return self.nodes[owner_index(account_id)]

    def open(self, *accounts: pb.Account) -> None:
        for account in accounts:
            assert self.node_of(account.id).accounts(account) == [pb.OK], account

    def account(self, account_id: str) -> pb.Account:
        return self.node_of(account_id).account(account_id)

    def stored(self, debit_account_id: str, transfer_id: str) -> pb.Transfer:
        result = self.node_of(debit_account_id).transfer(debit_account_id, transfer_id)
        assert result.code == pb.OK, result
        return result.transfer

    def send(self, *transfers: pb.Transfer, timeout: float = 10.0) -> list[pb.EventResult]:
        """One CreateTransfers to the node of the (single) debit account's slot."""
        nodes = {owner_index(t.debit_account_id) for t in transfers}
        assert len(nodes) == 1, "one request goes to one node"
        node = self.nodes[nodes.pop()]
        reply = node.ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=transfers), timeout=timeout)
        return list(reply.results)

    def history(self, account_id: str) -> list[pb.Transfer]:
        reply = self.node_of(account_id).ledger.GetAccountTransfers(
            pb.GetAccountTransfersRequest(account_id=account_id, limit=1000), timeout=10
        )
        assert reply.code == pb.OK and not reply.next_cursor, reply
        return list(reply.transfers)

    def close(self) -> list[int]:
        codes = []
        for node in self.nodes:
            node.close()
            codes.append(node.process.stop())
        return codes


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """One pair shared by the tests that stop no node (each uses fresh accounts)."""
    cluster = Pair(tmp_path_factory)
    yield cluster
    assert cluster.close() == [0, 0], [n.process.log_tail() for n in cluster.nodes]


def eventually(check: Callable[[], T], what: str, timeout_s: float = WAIT_S) -> T:
    """Poll `check` until it returns something true; fail naming `what` after the bound."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what} (last: {value!r})")
        time.sleep(0.05)


def transfer(transfer_id: str, debit: str, credit: str, amount: int, flags: int = 0, **more: int) -> pb.Transfer:
    return pb.Transfer(
        id=transfer_id,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        ledger=LEDGER,
        code=CODE,
        flags=flags,
        **more,
    )


def resolve(transfer_id: str, pending: pb.Transfer, flags: int, amount: int = 0) -> pb.Transfer:
    return pb.Transfer(
        id=transfer_id, debit_account_id=pending.debit_account_id, pending_id=pending.id, flags=flags, amount=amount
    )


def change_account(pair: Pair, account_id: str, change_id: str, kind: int) -> None:
    change = pb.AccountChange(id=change_id, account_id=account_id, kind=kind)
    reply = pair.node_of(account_id).ledger.ChangeAccounts(pb.ChangeAccountsRequest(changes=[change]), timeout=10)
    assert reply.results[0].code == pb.OK, reply


def balances(account: pb.Account) -> tuple[int, int, int, int]:
    return account.debits_posted, account.credits_posted, account.debits_pending, account.credits_pending


def settled(pair: Pair, debit: str, transfer_id: str) -> bool:
    return pair.stored(debit, transfer_id).state != pb.TRANSFER_IN_FLIGHT


# --- the basic cases ------------------------------------------------------------------------------


def test_a_transfer_to_an_account_on_another_node_moves_money_on_both_nodes_once(pair: Pair) -> None:
    debit, credit, neighbour = on(0, "d"), on(1, "c"), on(0, "n")
    pair.open(*(pb.Account(id=a, ledger=LEDGER, code=CODE) for a in (debit, credit, neighbour)))
    # One request mixing a cross-node transfer with a same-node one.
    across = transfer("t1", debit, credit, 100)
    local = transfer("t2", debit, neighbour, 7)
    first = pair.send(across, local)
    assert [(r.code, r.state) for r in first] == [(pb.OK, pb.TRANSFER_POSTED)] * 2

    assert balances(pair.account(debit)) == (107, 0, 0, 0)
    assert balances(pair.account(credit)) == (0, 100, 0, 0)
    assert balances(pair.account(neighbour)) == (0, 7, 0, 0)
    assert pair.stored(debit, "t1").state == pb.TRANSFER_POSTED
    # Each account's history holds the transfer once, as it stands: posted.
    assert [(t.id, t.state) for t in pair.history(credit)] == [("t1", pb.TRANSFER_POSTED)]
    assert sorted((t.id, t.state) for t in pair.history(debit)) == [
        ("t1", pb.TRANSFER_POSTED),
        ("t2", pb.TRANSFER_POSTED),
    ]
    assert pair.history(credit)[0].timestamp == first[0].timestamp

    for _ in range(3):
        again = pair.send(across, local)
        assert [r.code for r in again] == [pb.EXISTS, pb.EXISTS]
        assert [r.timestamp for r in again] == [r.timestamp for r in first]
    assert balances(pair.account(debit)) == (107, 0, 0, 0)
    assert balances(pair.account(credit)) == (0, 100, 0, 0)

    # The other way round, from the second node to the first.
    back = transfer("b1", credit, debit, 40)
    assert [(r.code, r.state) for r in pair.send(back)] == [(pb.OK, pb.TRANSFER_POSTED)]
    assert balances(pair.account(debit)) == (107, 40, 0, 0)
    assert balances(pair.account(credit)) == (40, 100, 0, 0)


def test_a_refusal_on_the_credit_node_rejects_the_transfer_and_releases_its_amount(pair: Pair) -> None:
    debit = on(0, "d")
    frozen, capped, elsewhere, missing = on(1, "f"), on(1, "k"), on(1, "e"), on(1, "m")
    pair.open(
        pb.Account(id=debit, ledger=LEDGER, code=CODE),
        pb.Account(id=frozen, ledger=LEDGER, code=CODE),
        pb.Account(id=capped, ledger=LEDGER, code=CODE, flags=pb.CREDITS_MUST_NOT_EXCEED_DEBITS),
        pb.Account(id=elsewhere, ledger=LEDGER + 1, code=CODE),
    )
    change_account(pair, frozen, "freeze", pb.FREEZE)
    cases = [
        (transfer("r1", debit, missing, 10), pb.CREDIT_ACCOUNT_NOT_FOUND),
        (transfer("r2", debit, frozen, 10), pb.CREDIT_ACCOUNT_FROZEN),
        (transfer("r3", debit, capped, 10), pb.EXCEEDS_DEBITS),
        (transfer("r4", debit, elsewhere, 10), pb.ACCOUNTS_MUST_HAVE_SAME_LEDGER),
        (transfer("r5", debit, missing, 10, pb.PENDING), pb.CREDIT_ACCOUNT_NOT_FOUND),
    ]
    results = pair.send(*(t for t, _ in cases))
    assert [(r.code, r.state) for r in results] == [(code, pb.TRANSFER_REJECTED) for _, code in cases]
    assert balances(pair.account(debit)) == (0, 0, 0, 0)
    for (t, code), result in zip(cases, results, strict=True):
        record = pair.stored(debit, t.id)
        assert (record.state, record.result, record.timestamp) == (pb.TRANSFER_REJECTED, code, result.timestamp)

    # The world changes; the keys keep failing the same way, and move nothing.
    pair.open(pb.Account(id=missing, ledger=LEDGER, code=CODE))
    change_account(pair, frozen, "unfreeze", pb.UNFREEZE)
    again = pair.send(*(t for t, _ in cases))
    assert [r.code for r in again] == [code for _, code in cases]
    assert balances(pair.account(debit)) == (0, 0, 0, 0)
    assert balances(pair.account(missing)) == (0, 0, 0, 0)
    assert balances(pair.account(frozen)) == (0, 0, 0, 0)
    assert pair.history(frozen) == [] and pair.history(missing) == []

    # A refusal on the debit side is answered at once, as on one node.
    flagged = on(0, "g")
    pair.open(pb.Account(id=flagged, ledger=LEDGER, code=CODE, flags=pb.DEBITS_MUST_NOT_EXCEED_CREDITS))
    for _ in range(2):
        assert pair.send(transfer("r6", flagged, missing, 1))[0].code == pb.EXCEEDS_CREDITS
    assert balances(pair.account(flagged)) == (0, 0, 0, 0)


def test_a_pending_across_nodes_is_posted_in_part_or_voided_once(pair: Pair) -> None:
    debit, credit = on(0, "d"), on(1, "c")
    pair.open(pb.Account(id=debit, ledger=LEDGER, code=CODE), pb.Account(id=credit, ledger=LEDGER, code=CODE))

    held = transfer("p1", debit, credit, 100, pb.PENDING)
    assert [(r.code, r.state) for r in pair.send(held)] == [(pb.OK, pb.TRANSFER_PENDING)]
    assert balances(pair.account(debit)) == (0, 0, 100, 0)
    assert balances(pair.account(credit)) == (0, 0, 0, 100)

    post = pair.send(resolve("p1-post", held, pb.POST_PENDING, 60))[0]
    assert (post.code, post.state) == (pb.OK, pb.TRANSFER_POSTED)
    assert balances(pair.account(debit)) == (60, 0, 0, 0)
    assert balances(pair.account(credit)) == (0, 60, 0, 0)
    record = pair.stored(debit, "p1")
    assert (record.state, record.amount_posted) == (pb.TRANSFER_POSTED, 60)
    assert pair.stored(debit, "p1-post").amount == 60
    assert pair.send(resolve("p1-again", held, pb.POST_PENDING))[0].code == pb.PENDING_TRANSFER_ALREADY_POSTED
    assert pair.send(resolve("p1-void", held, pb.VOID_PENDING))[0].code == pb.PENDING_TRANSFER_ALREADY_POSTED
    assert pair.send(resolve("p1-post", held, pb.POST_PENDING, 60))[0].code == pb.EXISTS

    voided = transfer("p2", debit, credit, 30, pb.PENDING)
    assert pair.send(voided)[0].code == pb.OK
    void = pair.send(resolve("p2-void", voided, pb.VOID_PENDING))[0]
    assert (void.code, void.state) == (pb.OK, pb.TRANSFER_POSTED)
    assert pair.stored(debit, "p2").state == pb.TRANSFER_VOIDED
    assert balances(pair.account(debit)) == (60, 0, 0, 0)
    # The credit node releases its half when the leg arrives.
    eventually(lambda: balances(pair.account(credit)) == (0, 60, 0, 0), "the void reaches the credit node")
    assert pair.send(resolve("p2-post", voided, pb.POST_PENDING))[0].code == pb.PENDING_TRANSFER_ALREADY_VOIDED

    # A post the credit node refuses (its account was frozen since the reservation) leaves
    # the pending pending; another post may then resolve it.
    kept = transfer("p3", debit, credit, 20, pb.PENDING)
    assert pair.send(kept)[0].code == pb.OK
    change_account(pair, credit, "freeze", pb.FREEZE)
    refused = pair.send(resolve("p3-post", kept, pb.POST_PENDING))[0]
    assert (refused.code, refused.state) == (pb.CREDIT_ACCOUNT_FROZEN, pb.TRANSFER_REJECTED)
    assert pair.stored(debit, "p3").state == pb.TRANSFER_PENDING
    change_account(pair, credit, "unfreeze", pb.UNFREEZE)
    assert pair.send(resolve("p3-post", kept, pb.POST_PENDING))[0].code == pb.CREDIT_ACCOUNT_FROZEN
    assert pair.send(resolve("p3-post-2", kept, pb.POST_PENDING))[0].code == pb.OK
    assert balances(pair.account(debit)) == (80, 0, 0, 0)
    assert balances(pair.account(credit)) == (0, 80, 0, 0)

    # Both histories hold every event that moved money, once.
    events = ["p1", "p1-post", "p2", "p2-void", "p3", "p3-post-2"]
    assert sorted(t.id for t in pair.history(debit)) == sorted(events)
    assert sorted(t.id for t in pair.history(credit)) == sorted(events)


def test_a_pending_across_nodes_expires_on_both_nodes(pair: Pair) -> None:
    debit, credit = on(0, "d"), on(1, "c")
    pair.open(pb.Account(id=debit, ledger=LEDGER, code=CODE), pb.Account(id=credit, ledger=LEDGER, code=CODE))
    held = transfer("x1", debit, credit, 50, pb.PENDING, timeout_s=1)
    assert pair.send(held)[0].code == pb.OK
    eventually(lambda: pair.stored(debit, "x1").state == pb.TRANSFER_EXPIRED, "the pending expires")
    assert balances(pair.account(debit)) == (0, 0, 0, 0)
    eventually(lambda: balances(pair.account(credit)) == (0, 0, 0, 0), "the expiry reaches the credit node")
    assert pair.send(resolve("x1-post", held, pb.POST_PENDING))[0].code == pb.PENDING_TRANSFER_EXPIRED
    assert [t.state for t in pair.history(credit)] == [pb.TRANSFER_PENDING, pb.TRANSFER_EXPIRED]

    # A post that finds an overdue pending before the sweep expires it just the same.
    late = transfer("x2", debit, credit, 5, pb.PENDING, timeout_s=1)
    assert pair.send(late)[0].code == pb.OK
    time.sleep(1.2)  # only makes it overdue: the outcome is the same whether the sweep or the post comes first
    assert pair.send(resolve("x2-post", late, pb.POST_PENDING))[0].code == pb.PENDING_TRANSFER_EXPIRED
    eventually(lambda: balances(pair.account(credit)) == (0, 0, 0, 0), "the expiry reaches the credit node")
    assert balances(pair.account(debit)) == (0, 0, 0, 0)


def test_credit_legs_are_fenced_checked_and_applied_once(pair: Pair) -> None:
    credit = on(1, "c")
    # A debit account of the other node: the credit node takes that node's word for it (one of
    # its own slots would have to be in its own outbox: tests/test_peer_checks.py).
    debit = on(0, "someone")
    pair.open(pb.Account(id=credit, ledger=LEDGER, code=CODE))
    slot = account_slot(credit, SLOTS)
    event = transfer("l1", debit, credit, 9)
    leg = node_pb2.CreditLeg(
        kind=node_pb2.LEG_CREDIT,
        debit_account_id=debit,
        transfer_id="l1",
        credit_account_id=credit,
        ledger=LEDGER,
        amount=9,
        event=event,
    )
    # Sent as another node sends it (only nodes may call ApplyCreditLegs).
    peers = [channel(node.process.address, "node") for node in pair.nodes]
    admin = node_pb2_grpc.NodeStub(peers[owner_index(credit)])
    request = node_pb2.ApplyCreditLegsRequest(legs=[leg], fence=pb.Fence(slots=[slot], epochs=[1]))
    first = admin.ApplyCreditLegs(request, timeout=10).results[0]
    again = admin.ApplyCreditLegs(request, timeout=10).results[0]
    assert (first.code, again.code, again.timestamp) == (pb.OK, pb.OK, first.timestamp)
    assert pair.account(credit).credits_posted == 9

    stale = node_pb2.ApplyCreditLegsRequest(legs=[leg], fence=pb.Fence(slots=[slot], epochs=[2]))
    wrong = admin.ApplyCreditLegs(stale, timeout=10).results[0]
    assert (wrong.code, wrong.redirect.epoch) == (pb.WRONG_SLOT, 1)
    other = node_pb2_grpc.NodeStub(peers[0]).ApplyCreditLegs(request, timeout=10).results[0]
    assert (other.code, other.redirect.owner) == (pb.WRONG_SLOT, pair.node_of(credit).process.address)

    for broken in (
        node_pb2.ApplyCreditLegsRequest(legs=[leg]),  # unfenced
        node_pb2.ApplyCreditLegsRequest(legs=[node_pb2.CreditLeg(kind=9)], fence=request.fence),
        node_pb2.ApplyCreditLegsRequest(fence=request.fence),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            admin.ApplyCreditLegs(broken, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert pair.account(credit).credits_posted == 9
    for opened in peers:
        opened.close()


def test_a_leg_routed_with_a_stale_epoch_follows_the_redirect(pair: Pair) -> None:
    debit, credit = on(0, "d"), on(1, "c")
    pair.open(pb.Account(id=debit, ledger=LEDGER, code=CODE), pb.Account(id=credit, ledger=LEDGER, code=CODE))
    # The credit node holds the slot at a newer epoch than the debit node's table says.
    credit_node = pair.node_of(credit)
    slot = account_slot(credit, SLOTS)
    credit_node.admin.AssignSlots(
        node_pb2.AssignSlotsRequest(
            map_version=2,
            slots=[node_pb2.SlotOwnership(slot=slot, epoch=2, owner=credit_node.process.address)],
        ),
        timeout=10,
    )
    result = pair.send(transfer("s1", debit, credit, 3))[0]
    assert (result.code, result.state) == (pb.OK, pb.TRANSFER_POSTED)
    assert balances(pair.account(credit)) == (0, 3, 0, 0)


# --- failures -------------------------------------------------------------------------------------


def test_a_credit_node_down_leaves_transfers_in_flight_until_it_returns(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pair = Pair(tmp_path_factory)
    try:
        debit, credit = on(0, "d"), on(1, "c")
        pair.open(pb.Account(id=debit, ledger=LEDGER, code=CODE), pb.Account(id=credit, ledger=LEDGER, code=CODE))
        held = transfer("h", debit, credit, 30, pb.PENDING)
        assert pair.send(held)[0].code == pb.OK

        credit_node = pair.nodes[1]
        assert credit_node.process.stop() == 0
        plain = transfer("t", debit, credit, 100)
        started = time.monotonic()
        answer = pair.send(plain, timeout=2.0)[0]  # answered within the caller's deadline
        assert (answer.code, answer.state) == (pb.IN_FLIGHT, pb.TRANSFER_IN_FLIGHT), time.monotonic() - started
        assert pair.send(plain, timeout=1.0)[0].code == pb.IN_FLIGHT
        # A post in flight claims its pending: no other post or void can resolve it.
        post = pair.send(resolve("h-post", held, pb.POST_PENDING), timeout=1.0)[0]
        assert (post.code, post.state) == (pb.IN_FLIGHT, pb.TRANSFER_IN_FLIGHT)
        assert pair.send(resolve("h-void", held, pb.VOID_PENDING))[0].code == pb.PENDING_TRANSFER_ALREADY_POSTED
        assert pair.stored(debit, "h").state == pb.TRANSFER_PENDING
        assert balances(pair.account(debit)) == (0, 0, 130, 0)

        credit_node.process.start()
        credit_node.reconnect()
        eventually(lambda: settled(pair, debit, "t") and settled(pair, debit, "h-post"), "the outbox drains")
        assert pair.stored(debit, "t").state == pb.TRANSFER_POSTED
        assert pair.stored(debit, "h").state == pb.TRANSFER_POSTED
        assert balances(pair.account(debit)) == (130, 0, 0, 0)
        assert balances(pair.account(credit)) == (0, 130, 0, 0)
        again = pair.send(plain)[0]
        assert (again.code, again.state, again.timestamp) == (pb.EXISTS, pb.TRANSFER_POSTED, answer.timestamp)
        assert sorted(t.id for t in pair.history(credit)) == ["h", "h-post", "t"]
    finally:
        codes = pair.close()
    assert codes == [0, 0]


def test_a_full_outbox_refuses_cross_node_transfers(tmp_path_factory: pytest.TempPathFactory) -> None:
    pair = Pair(tmp_path_factory, "--outbox-max", "3")
    try:
        debit, neighbour, credit = on(0, "d"), on(0, "n"), on(1, "c")
        pair.open(*(pb.Account(id=a, ledger=LEDGER, code=CODE) for a in (debit, neighbour, credit)))
        assert pair.nodes[1].process.stop() == 0
        held = [transfer(f"o{i}", debit, credit, 1) for i in range(3)]
        assert [r.code for r in pair.send(*held, timeout=1.0)] == [pb.IN_FLIGHT] * 3
        with pytest.raises(grpc.RpcError) as caught:
            pair.send(transfer("o3", debit, credit, 1))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert pair.send(transfer("o4", debit, neighbour, 1))[0].code == pb.OK  # same node: unaffected
        pair.nodes[1].process.start()
        eventually(lambda: all(settled(pair, debit, t.id) for t in held), "the outbox drains")
        assert pair.send(transfer("o3", debit, credit, 1))[0].code == pb.OK
        assert balances(pair.account(credit)) == (0, 4, 0, 0)
    finally:
        codes = pair.close()
    assert codes == [0, 0]


def test_kill_9_of_the_debit_node_re_drives_its_outbox_exactly_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    pair = Pair(tmp_path_factory)
    try:
        debit_node, credit_node = pair.nodes
        debits = [on(0, "d") for _ in range(3)]
        credits = [on(1, "c") for _ in range(3)]
        pair.open(*(pb.Account(id=a, ledger=LEDGER, code=CODE) for a in debits + credits))
        rng = random.Random(5)

        def batch(prefix: str, size: int) -> list[pb.Transfer]:
            # All from one debit account, so that the batch is one request to one node.
            debit = rng.choice(debits)
            return [transfer(f"{prefix}{i}", debit, rng.choice(credits), rng.randint(1, 9)) for i in range(size)]

        # 1. Entries that cannot be delivered (the credit node is down) when the debit node dies.
        assert credit_node.process.stop() == 0
        waiting = batch("w", 40)
        assert {r.code for r in pair.send(*waiting, timeout=1.0)} == {pb.IN_FLIGHT}
        debit_node.process.kill()
        credit_node.process.start()
        debit_node.process.start()
        debit_node.reconnect()
        credit_node.reconnect()
        eventually(lambda: all(settled(pair, t.debit_account_id, t.id) for t in waiting), "the outbox re-drives")

        # 2. Kills while legs are on the wire: some applied by the credit node, unanswered.
        sent = list(waiting)
        for round_ in range(4):
            moving = batch(f"k{round_}-", 200)
            sent += moving
            # The kill lands while the node handles this call, or soon after its answer.
            killer = threading.Timer(rng.uniform(0.0, 0.1), debit_node.process.kill)
            killer.start()
            with contextlib.suppress(grpc.RpcError):  # an unknown outcome: the final lookup decides
                pair.send(*moving, timeout=5.0)
            killer.join()
            debit_node.process.kill()  # in case the call finished first
            debit_node.process.start()
            debit_node.reconnect()

        def all_settled() -> bool:
            for t in sent:
                result = debit_node.transfer(t.debit_account_id, t.id)
                if result.code == pb.OK and result.transfer.state == pb.TRANSFER_IN_FLIGHT:
                    return False
            return True

        eventually(all_settled, "every accepted transfer settles")
        posted = Counter[str]()
        credited: dict[str, list[pb.Transfer]] = {account_id: [] for account_id in credits}
        for t in sent:
            result = debit_node.transfer(t.debit_account_id, t.id)
            if result.code == pb.TRANSFER_NOT_FOUND:
                continue  # lost with its unacknowledged request
            assert result.transfer.state == pb.TRANSFER_POSTED, result
            posted[t.debit_account_id] -= t.amount
            posted[t.credit_account_id] += t.amount
            credited[t.credit_account_id].append(t)
        assert sum(1 for t in waiting if debit_node.transfer(t.debit_account_id, t.id).code == pb.OK) == len(waiting)
        for account_id in debits:
            a = pair.account(account_id)
            assert (a.debits_posted, a.debits_pending) == (-posted[account_id], 0), account_id
        for account_id in credits:
            a = pair.account(account_id)
            assert (a.credits_posted, a.credits_pending) == (posted[account_id], 0), account_id
            history = Counter(t.id for t in history_of(pair, account_id))
            assert history == Counter(t.id for t in credited[account_id]), account_id
    finally:
        codes = pair.close()
    assert codes == [0, 0]


# --- the bank test --------------------------------------------------------------------------------

ACCOUNTS_PER_NODE = 15
FUNDING = 10_000
CLIENTS = 4
LOAD_S = 6.0
BATCH_MAX = 20
AMOUNT_MAX = 400
CALL_TIMEOUT_S = 2.0
SHORT_TIMEOUT_S = 0.11  # a quarter of the calls: often answered IN_FLIGHT, sometimes not at all
_RESOLVES = pb.POST_PENDING | pb.VOID_PENDING


@dataclass
class Sent:
    transfer: pb.Transfer
    answers: list[pb.EventResult] = field(default_factory=list)


class BankClient(threading.Thread):
    """Sends random batches to one node at a time: debits from that node's accounts,
    credits to any account, a quarter of them pending, and posts/voids of its pendings."""

    def __init__(self, index: int, pair: Pair, accounts: Sequence[str], seed: int, until: float) -> None:
        super().__init__(name=f"bank-client-{index}", daemon=True)
        self.index = index
        self.accounts = list(accounts)
        self.home = [[a for a in accounts if owner_index(a) == n] for n in (0, 1)]
        self.rng = random.Random(seed)
        self.until = until
        self.channels = [channel(node.process.address, "service") for node in pair.nodes]
        self.stubs = [ledger_pb2_grpc.LedgerStub(channel) for channel in self.channels]
        self.sent: dict[tuple[str, str], Sent] = {}
        self.pool: list[pb.Transfer] = []  # pendings confirmed PENDING, not yet resolved by us
        self.failure: BaseException | None = None
        self._seq = 0

    def run(self) -> None:
        try:
            while time.monotonic() < self.until:
                node = self.rng.randrange(2)
                batch = self._batch(node)
                if self.rng.random() < 0.1 and self.sent:
                    earlier = list(self.sent.values())
                    batch = [s.transfer for s in self.rng.sample(earlier, min(3, len(earlier)))]
                    batch = [t for t in batch if owner_index(t.debit_account_id) == node] or batch[:1]
                    node = owner_index(batch[0].debit_account_id)
                self._send(node, batch)
        except BaseException as error:
            self.failure = error
        finally:
            for channel in self.channels:
                channel.close()

    def _batch(self, node: int) -> list[pb.Transfer]:
        batch: list[pb.Transfer] = []
        for _ in range(self.rng.randint(1, BATCH_MAX)):
            self._seq += 1
            transfer_id = f"b{self.index}-{self._seq}"
            mine = [p for p in self.pool if owner_index(p.debit_account_id) == node]
            roll = self.rng.random()
            if mine and roll < 0.2:
                pending = self.rng.choice(mine)
                self.pool.remove(pending)
                post = self.rng.random() < 0.6
                amount = self.rng.randint(1, pending.amount) if post and self.rng.random() < 0.5 else 0
                batch.append(resolve(transfer_id, pending, pb.POST_PENDING if post else pb.VOID_PENDING, amount))
                continue
            debit = self.rng.choice(self.home[node])
            credit = self.rng.choice([a for a in self.accounts if a != debit])
            flags = pb.PENDING if roll < 0.45 else 0
            batch.append(transfer(transfer_id, debit, credit, self.rng.randint(1, AMOUNT_MAX), flags))
        return batch

    def _send(self, node: int, batch: list[pb.Transfer]) -> None:
        request = pb.CreateTransfersRequest(transfers=batch)
        timeout = SHORT_TIMEOUT_S if self.rng.random() < 0.25 else CALL_TIMEOUT_S
        for t in batch:
            self.sent.setdefault((t.debit_account_id, t.id), Sent(t))
        try:
            reply = self.stubs[node].CreateTransfers(request, timeout=timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED or timeout != SHORT_TIMEOUT_S:  # type: ignore[attr-defined]
                raise
            return  # no answer: the outcome is unknown (a later replay or the final lookup tells)
        assert len(reply.results) == len(batch)
        for t, result in zip(batch, reply.results, strict=True):
            key = (t.debit_account_id, t.id)
            self.sent[key].answers.append(result)
            first = len(self.sent[key].answers) == 1
            if first and t.flags == pb.PENDING and result.code == pb.OK and result.state == pb.TRANSFER_PENDING:
                self.pool.append(t)


def test_concurrent_transfers_across_two_nodes_conserve_money(pair: Pair) -> None:
    seed = random.randrange(1 << 32)
    accounts = [on(n, f"acct{n}") for n in (0, 1) for _ in range(ACCOUNTS_PER_NODE)]
    flagged = set(accounts[::2])
    banks = [on(0, "bank"), on(1, "bank")]
    pair.open(*(pb.Account(id=b, ledger=LEDGER, code=CODE) for b in banks))
    pair.open(
        *(
            pb.Account(id=a, ledger=LEDGER, code=CODE, flags=pb.DEBITS_MUST_NOT_EXCEED_CREDITS if a in flagged else 0)
            for a in accounts
        )
    )
    # Each bank funds every account: half of those transfers cross nodes.
    funding: dict[tuple[str, str], Sent] = {}
    for b in banks:
        transfers = [transfer(f"fund-{a}", b, a, FUNDING) for a in accounts]
        results = pair.send(*transfers, timeout=30)
        assert {r.code for r in results} == {pb.OK}
        funding.update({(b, t.id): Sent(t, [r]) for t, r in zip(transfers, results, strict=True)})

    until = time.monotonic() + LOAD_S
    clients = [BankClient(i, pair, accounts, seed + i, until) for i in range(CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=LOAD_S + 30)
    assert not [c.name for c in clients if c.is_alive()], "clients did not finish"
    assert not [(c.name, c.failure) for c in clients if c.failure], f"seed {seed}"

    sent = dict(funding)
    for client in clients:
        sent.update(client.sent)
    everyone = banks + accounts

    def stored_all() -> dict[tuple[str, str], pb.Transfer] | None:
        found: dict[tuple[str, str], pb.Transfer] = {}
        for n, node in enumerate(pair.nodes):
            keys = [pb.TransferKey(debit_account_id=d, id=i) for d, i in sent if owner_index(d) == n]
            for start in range(0, len(keys), 2000):
                chunk = keys[start : start + 2000]
                reply = node.ledger.LookupTransfers(pb.LookupTransfersRequest(keys=chunk), timeout=30)
                for key, result in zip(chunk, reply.results, strict=True):
                    if result.code == pb.TRANSFER_NOT_FOUND:
                        continue  # sent without an answer and not applied: check_answers decides
                    assert result.code == pb.OK, (key, result)
                    if result.transfer.state == pb.TRANSFER_IN_FLIGHT:
                        return None
                    found[(key.debit_account_id, key.id)] = result.transfer
        return found

    records = eventually(stored_all, "every transfer settles")
    expected = expected_balances(records.values())

    def balances_settled() -> dict[str, pb.Account] | None:
        looked = {a: pair.account(a) for a in everyone}
        return looked if all(balances(looked[a]) == expected.get(a, (0, 0, 0, 0)) for a in everyone) else None

    # Releases of voids travel after the caller's answer: wait until the credit nodes have them.
    looked = eventually(balances_settled, "every account shows what its stored transfers add up to")
    problems = check_answers(sent, records) + check_pendings(records)
    totals = Counter[str]()
    for a in looked.values():
        totals.update(dp=a.debits_posted, cp=a.credits_posted, dq=a.debits_pending, cq=a.credits_pending)
    if totals["dp"] != totals["cp"] or totals["dq"] != totals["cq"]:
        problems.append(f"totals differ: {dict(totals)}")
    for account_id in flagged:
        a = looked[account_id]
        if a.debits_posted + a.debits_pending > a.credits_posted:
            problems.append(f"{account_id} went past its credits: {balances(a)}")
    for account_id in everyone:
        applied = Counter(
            r.id
            for r in records.values()
            if r.state != pb.TRANSFER_REJECTED and account_id in (r.debit_account_id, r.credit_account_id)
        )
        history = Counter(t.id for t in history_of(pair, account_id))
        if history != applied:
            problems.append(f"history of {account_id}: {sorted((history - applied) + (applied - history))[:10]}")
    crossing = sum(1 for r in records.values() if owner_index(r.debit_account_id) != owner_index(r.credit_account_id))
    answered = Counter(pb.ResultCode.Name(s.answers[0].code) if s.answers else "none" for s in sent.values())
    states = Counter(pb.TransferState.Name(r.state) for r in records.values())
    print(f"seed={seed} transfers={len(records)} cross-node={crossing} first answers {dict(answered)} {dict(states)}")
    assert not problems, f"seed {seed}:\n" + "\n".join(problems[:30])


def history_of(pair: Pair, account_id: str) -> list[pb.Transfer]:
    events: list[pb.Transfer] = []
    cursor = 0
    for _ in range(100):
        reply = pair.node_of(account_id).ledger.GetAccountTransfers(
            pb.GetAccountTransfersRequest(account_id=account_id, limit=1000, cursor=cursor), timeout=30
        )
        assert reply.code == pb.OK
        events.extend(reply.transfers)
        if not reply.next_cursor:
            return events
        cursor = reply.next_cursor
    raise AssertionError(f"history of {account_id} is too long")


def expected_balances(records: Iterator[pb.Transfer] | Sequence[pb.Transfer]) -> dict[str, tuple[int, int, int, int]]:
    """What each account must show if no transfer was lost or applied twice."""
    sums: dict[str, list[int]] = {}

    def add(account_id: str, index: int, amount: int) -> None:
        sums.setdefault(account_id, [0, 0, 0, 0])[index] += amount

    for r in records:
        if r.state == pb.TRANSFER_REJECTED:
            continue
        if r.flags in (pb.TRANSFER_FLAG_NONE, pb.POST_PENDING):
            add(r.debit_account_id, 0, r.amount)
            add(r.credit_account_id, 1, r.amount)
        elif r.flags == pb.PENDING and r.state == pb.TRANSFER_PENDING:
            add(r.debit_account_id, 2, r.amount)
            add(r.credit_account_id, 3, r.amount)
    return {a: (s[0], s[1], s[2], s[3]) for a, s in sums.items()}


def check_answers(sent: dict[tuple[str, str], Sent], records: dict[tuple[str, str], pb.Transfer]) -> list[str]:
    """Every answer agrees with the transfer's final record."""
    problems: list[str] = []
    for key, s in sent.items():
        record = records.get(key)
        if record is None:
            if s.answers:
                problems.append(f"{key}: answered {pb.ResultCode.Name(s.answers[0].code)}, but not stored")
            continue
        if not s.answers:
            continue  # never answered: whatever is stored counts
        first, *later = s.answers
        code = first.code
        if code == pb.IN_FLIGHT:
            pass  # any settled outcome is allowed
        elif code == pb.OK:
            if record.state == pb.TRANSFER_REJECTED or record.timestamp != first.timestamp:
                problems.append(f"{key}: answered OK, stored {record}")
        elif record.state != pb.TRANSFER_REJECTED or record.result != code:
            problems.append(f"{key}: answered {pb.ResultCode.Name(code)}, stored {record}")
        if record.state == pb.TRANSFER_REJECTED and record.result not in (pb.EXCEEDS_CREDITS,):
            problems.append(f"{key}: rejected with {pb.ResultCode.Name(record.result)}, which this load cannot cause")
        for answer in later:
            if answer.code not in (pb.EXISTS, pb.IN_FLIGHT, record.result) or answer.timestamp != record.timestamp:
                problems.append(f"{key}: replay answered {pb.ResultCode.Name(answer.code)}, stored {record}")
    return problems


def check_pendings(records: dict[tuple[str, str], pb.Transfer]) -> list[str]:
    """Each pending is resolved at most once, and its state agrees with what resolved it."""
    problems: list[str] = []
    resolutions: dict[tuple[str, str], list[pb.Transfer]] = {}
    for r in records.values():
        if r.flags & _RESOLVES and r.state != pb.TRANSFER_REJECTED:
            resolutions.setdefault((r.debit_account_id, r.pending_id), []).append(r)
    for key, r in records.items():
        if r.flags != pb.PENDING or r.state == pb.TRANSFER_REJECTED:
            continue
        by = resolutions.get(key, [])
        if len(by) > 1:
            problems.append(f"{key}: resolved {len(by)} times")
        elif not by and r.state != pb.TRANSFER_PENDING:
            problems.append(f"{key}: nothing resolved it, yet it is {pb.TransferState.Name(r.state)}")
        elif by and by[0].flags == pb.POST_PENDING and (r.state, r.amount_posted) != (pb.TRANSFER_POSTED, by[0].amount):
            problems.append(f"{key}: posted by {by[0].id} but stored {r}")
        elif by and by[0].flags == pb.VOID_PENDING and r.state != pb.TRANSFER_VOIDED:
            problems.append(f"{key}: voided by {by[0].id} but stored {r}")
    return problems
