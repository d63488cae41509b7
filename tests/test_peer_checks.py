"""Peers are checked, not trusted: forged credit legs on real nodes, and the books that show it.

A peer's ApplyCreditLegs is checked against what the credit node holds (node/outbox.py,
transition C): a leg naming a debit slot the node leads itself must be in its own outbox, a
post or void must resolve a reservation the node holds, once, with the same amounts. Each
refusal is that leg's own result, changes nothing, and leaves the node serving. Each node's
trial balance and the cluster's (node/books.py) are read as an operator reads them: GetSlots
and `yunkai cluster status`. The forged legs are sent as a node would send them: over a
channel with a node's certificate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest

from cluster.commands import LocalCluster
from node.keys import account_slot
from proto import cluster_pb2, cluster_pb2_grpc, ledger_pb2 as pb, ledger_pb2_grpc, node_pb2, node_pb2_grpc
from router.shardmap import ShardMap
from router.slots import slot_of
from serving import certs
from serving.tls import Tls
from tests.conftest import NodeHandle, channel, fresh
from tests.test_outbox import CODE, LEDGER, SLOTS, Pair, balances, eventually, on, resolve, transfer

pytestmark = pytest.mark.timeout(180)

FORGED_FEN = 5_000_000
SENT_AGAIN = 3  # each forged leg is sent this often: a refusal must not depend on its first time


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    cluster = Pair(tmp_path_factory)
    yield cluster
    assert cluster.close() == [0, 0], [n.process.log_tail() for n in cluster.nodes]


# --- forging legs ---------------------------------------------------------------------------------


def leg_of(
    kind: node_pb2.LegKind.ValueType,
    debit: str,
    transfer_id: str,
    credit: str,
    amount: int = 0,
    reserved: int = 0,
    pending_id: str = "",
) -> node_pb2.CreditLeg:
    """A well-formed leg, with the event a debit node would build for its kind (node/outbox.py)."""
    event = pb.Transfer(
        id=transfer_id, debit_account_id=debit, credit_account_id=credit, amount=amount, ledger=LEDGER, code=CODE
    )
    if kind == node_pb2.LEG_RESERVE:
        event.flags = pb.PENDING
    elif kind == node_pb2.LEG_POST:
        event.flags, event.pending_id = pb.POST_PENDING, pending_id
    elif kind == node_pb2.LEG_RELEASE:
        event.flags, event.pending_id, event.amount = pb.VOID_PENDING, pending_id, reserved
    plain = kind in (node_pb2.LEG_CREDIT, node_pb2.LEG_RESERVE)
    return node_pb2.CreditLeg(
        kind=kind,
        debit_account_id=debit,
        transfer_id=transfer_id,
        credit_account_id=credit,
        ledger=LEDGER if plain else 0,
        amount=amount,
        reserved=reserved,
        pending_id=pending_id,
        event=event,
    )


class Peer:
    """Another cluster process calling a node's Node service with a node's certificate."""

    def __init__(self, node: NodeHandle) -> None:
        self.channel = channel(node.process.address, "node")
        self.stub = node_pb2_grpc.NodeStub(self.channel)

    def send(self, leg: node_pb2.CreditLeg) -> pb.EventResult:
        slot = account_slot(leg.credit_account_id, SLOTS)
        request = node_pb2.ApplyCreditLegsRequest(legs=[leg], fence=pb.Fence(slots=[slot], epochs=[1]))
        results = self.stub.ApplyCreditLegs(request, timeout=10).results
        assert len(results) == 1, results
        return results[0]

    def refused(self, leg: node_pb2.CreditLeg) -> tuple[int, str]:
        """(code, field) of a leg sent SENT_AGAIN times: every answer the same."""
        answers = {(r.code, r.field) for r in (self.send(leg) for _ in range(SENT_AGAIN))}
        assert len(answers) == 1, answers
        return answers.pop()

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def peers(pair: Pair) -> Iterator[list[Peer]]:
    opened = [Peer(node) for node in pair.nodes]
    yield opened
    for peer in opened:
        peer.close()


# --- books ----------------------------------------------------------------------------------------


def books_of(node: NodeHandle) -> node_pb2.Books:
    return node.admin.GetSlots(node_pb2.GetSlotsRequest(summary=True), timeout=10).books


def pair_balanced(pair: Pair) -> list[node_pb2.Books] | None:
    """Both nodes' books once nothing is in flight, if they balance on each node and together."""
    books = [books_of(node) for node in pair.nodes]
    if any(b.legs_in_flight for b in books):
        return None
    assert [b.imbalance for b in books] == ["0", "0"], books
    assert sum(int(b.debits) for b in books) == sum(int(b.credits) for b in books), books
    assert sum(int(b.position) for b in books) == 0, books
    return books


def open_accounts(pair: Pair, *account_ids: str) -> None:
    pair.open(*(pb.Account(id=a, ledger=LEDGER, code=CODE) for a in account_ids))


def two_slots_on(index: int, prefix: str) -> tuple[str, str]:
    """Two fresh accounts of node `index`, in different slots (their events take one batch there)."""
    first = on(index, prefix)
    while True:
        second = on(index, prefix)
        if account_slot(second, SLOTS) != account_slot(first, SLOTS):
            return first, second


# --- forged legs ----------------------------------------------------------------------------------


def test_a_forged_credit_from_a_debit_account_that_does_not_exist_is_refused_and_the_books_balance(
    pair: Pair, peers: list[Peer]
) -> None:
    credit, debit = on(1, "c"), on(1, "d")
    open_accounts(pair, credit, debit)
    ghost = on(1, "ghost")  # never opened; its slot is the credit node's own
    leg = leg_of(node_pb2.LEG_CREDIT, ghost, fresh("t"), credit, amount=FORGED_FEN)
    assert peers[1].refused(leg) == (pb.DEBIT_ACCOUNT_NOT_FOUND, "debit_account_id")
    # A debit account that exists, on the same node, whose outbox never held such a leg.
    unsent = leg_of(node_pb2.LEG_CREDIT, debit, fresh("t"), credit, amount=FORGED_FEN)
    assert peers[1].refused(unsent) == (pb.TRANSFER_NOT_FOUND, "transfer_id")

    assert balances(pair.account(credit)) == (0, 0, 0, 0)
    assert pair.history(credit) == []
    books = eventually(lambda: pair_balanced(pair), "the books settle")
    assert all(int(b.credits) < FORGED_FEN for b in books)
    # The node still serves, and a real transfer between the same accounts moves money once.
    assert [(r.code, r.state) for r in pair.send(transfer("real", debit, credit, 7))] == [(pb.OK, pb.TRANSFER_POSTED)]
    assert balances(pair.account(credit)) == (0, 7, 0, 0)


def test_a_forged_post_or_void_with_no_reservation_is_refused_and_the_node_keeps_serving(
    pair: Pair, peers: list[Peer]
) -> None:
    # A pending between two slots of one node: its reservation is journaled there as if a leg
    # had made it, and a forged POST of it used to drain it (the real post then failed an
    # assert in the committer and stopped the node, every time).
    debit, credit = two_slots_on(1, "p")
    remote = on(0, "r")
    open_accounts(pair, debit, credit, remote)
    pending = transfer("hold", debit, credit, 500, pb.PENDING)
    assert [(r.code, r.state) for r in pair.send(pending)] == [(pb.OK, pb.TRANSFER_PENDING)]

    own_post = leg_of(node_pb2.LEG_POST, debit, fresh("r"), credit, amount=500, reserved=500, pending_id="hold")
    own_void = leg_of(node_pb2.LEG_RELEASE, debit, fresh("v"), credit, reserved=500, pending_id="hold")
    for forged in (own_post, own_void):
        assert peers[1].refused(forged) == (pb.TRANSFER_NOT_FOUND, "transfer_id")
    # From a debit slot the other node leads, naming a pending the credit node never reserved.
    for kind, amount in ((node_pb2.LEG_POST, 40), (node_pb2.LEG_RELEASE, 0)):
        forged = leg_of(kind, remote, fresh("x"), credit, amount=amount, reserved=40, pending_id=fresh("nothing"))
        assert peers[1].refused(forged) == (pb.PENDING_TRANSFER_NOT_FOUND, "pending_id")
    assert balances(pair.account(credit)) == (0, 0, 0, 500)

    # The node is alive and serves: the real post, then a plain transfer.
    post = resolve("post", pending, pb.POST_PENDING, 300)
    assert [(r.code, r.state) for r in pair.send(post)] == [(pb.OK, pb.TRANSFER_POSTED)]
    assert balances(pair.account(debit)) == (300, 0, 0, 0)
    assert balances(pair.account(credit)) == (0, 300, 0, 0)
    assert [r.code for r in pair.send(transfer("after", debit, credit, 1))] == [pb.OK]
    # Once posted, the reservation cannot be resolved again by any leg.
    assert peers[1].refused(own_void)[0] == pb.TRANSFER_NOT_FOUND
    eventually(lambda: pair_balanced(pair), "the books settle")


def test_legs_with_amounts_that_do_not_match_are_refused_and_move_nothing(pair: Pair, peers: list[Peer]) -> None:
    debit, credit = on(0, "d"), on(1, "c")
    open_accounts(pair, debit, credit)
    pending = transfer("p", debit, credit, 300, pb.PENDING)
    assert [(r.code, r.state) for r in pair.send(pending)] == [(pb.OK, pb.TRANSFER_PENDING)]
    assert balances(pair.account(credit)) == (0, 0, 0, 300)

    # A post of the real reservation that names another reserved amount.
    short = leg_of(node_pb2.LEG_POST, debit, fresh("r"), credit, amount=100, reserved=299, pending_id="p")
    assert peers[1].refused(short) == (pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS, "reserved")
    # The reservation's own key, replayed with another amount.
    again = leg_of(node_pb2.LEG_RESERVE, debit, "p", credit, amount=301)
    assert peers[1].refused(again) == (pb.EXISTS_WITH_DIFFERENT_FIELDS, "amount")
    # A credit whose history entry says another amount than the leg moves: not well formed.
    lying = leg_of(node_pb2.LEG_CREDIT, debit, fresh("t"), credit, amount=10)
    lying.event.amount = FORGED_FEN
    with pytest.raises(grpc.RpcError) as caught:
        peers[1].send(lying)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert balances(pair.account(credit)) == (0, 0, 0, 300)

    # Posted for real, the reservation is resolved: a void of it after is refused, once and again.
    post = resolve("p-post", pending, pb.POST_PENDING)
    assert [(r.code, r.state) for r in pair.send(post)] == [(pb.OK, pb.TRANSFER_POSTED)]
    assert balances(pair.account(credit)) == (0, 300, 0, 0)
    late = leg_of(node_pb2.LEG_RELEASE, debit, fresh("v"), credit, reserved=300, pending_id="p")
    assert peers[1].refused(late) == (pb.PENDING_TRANSFER_ALREADY_POSTED, "pending_id")
    assert balances(pair.account(credit)) == (0, 300, 0, 0)
    assert [t.id for t in pair.history(credit)] == ["p", "p-post"]
    eventually(lambda: pair_balanced(pair), "the books settle")


# --- the cluster's books --------------------------------------------------------------------------


def account_on(shard_map: ShardMap, address: str, prefix: str) -> str:
    """A fresh account id whose slot the node at `address` owns by `shard_map`."""
    while True:
        account_id = fresh(prefix)
        if shard_map.owners[slot_of(account_id, shard_map.slots_total)] == address:
            return account_id


def status_of(cluster: LocalCluster) -> cluster_pb2.StatusResponse:
    with channel(cluster.address, "operator") as to_router:
        reply: cluster_pb2.StatusResponse = cluster_pb2_grpc.ClusterStub(to_router).Status(
            cluster_pb2.StatusRequest(), timeout=10
        )
    return reply


def test_the_books_balance_across_cross_node_transfers_and_cluster_status_shows_them(cluster: LocalCluster) -> None:
    with channel(cluster.address, "service") as to_router:
        shard_map = ShardMap.from_proto(
            cluster_pb2_grpc.ClusterStub(to_router).GetShardMap(cluster_pb2.GetShardMapRequest(), timeout=10)
        )
        first, second = sorted(shard_map.nodes)
        a1, a2 = account_on(shard_map, first, "b"), account_on(shard_map, first, "b")
        b1, b2 = account_on(shard_map, second, "b"), account_on(shard_map, second, "b")
        ledger = ledger_pb2_grpc.LedgerStub(to_router)
        opened = ledger.CreateAccounts(
            pb.CreateAccountsRequest(accounts=[pb.Account(id=a, ledger=LEDGER, code=CODE) for a in (a1, a2, b1, b2)]),
            timeout=10,
        )
        assert [r.code for r in opened.results] == [pb.OK] * 4

        def send(*transfers: pb.Transfer) -> None:
            for t in transfers:  # one at a time: a post must find its pending reserved
                reply = ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=[t]), timeout=10)
                assert [r.code for r in reply.results] == [pb.OK], (t, reply)

        send(
            transfer("x1", a1, b1, 100),  # across, both ways
            transfer("x2", b2, a2, 40),
            transfer("x3", a1, a2, 5),  # on one node
            transfer("x4", a2, b2, 70, pb.PENDING),  # a reservation across, posted in part
            resolve("x4-post", transfer("x4", a2, b2, 70), pb.POST_PENDING, 50),
            transfer("x5", b1, a1, 30, pb.PENDING),  # and one voided
            resolve("x5-void", transfer("x5", b1, a1, 30), pb.VOID_PENDING),
            transfer("x6", b1, a2, 9, pb.PENDING),  # and one left standing: pending counts too
        )

    def balanced() -> cluster_pb2.StatusResponse | None:
        status = status_of(cluster)
        return status if status.books.state == cluster_pb2.BOOKS_BALANCED else None

    status = eventually(balanced, "every leg settles and the cluster's books balance")
    moved = 100 + 40 + 5 + 50 + 9
    assert (status.books.debits, status.books.credits) == (str(moved), str(moved))
    books = {n.address: n.books for n in status.nodes}
    assert set(books) == {first, second}
    assert [b.imbalance for b in books.values()] == ["0", "0"]
    # Each node holds one side of the cross-node legs: its position is what the other owes it.
    # first: +100 (x1) -40 (x2) +50 (x4 posted) -9 (x6 reserved for it) = +101
    assert (int(books[first].position), int(books[second].position)) == (101, -101)

    printed = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "cluster", "status", "--router", cluster.address, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(printed.stdout)
    assert shown["books"]["state"] == "balanced"
    assert (shown["books"]["debits"], shown["books"]["credits"]) == (moved, moved)
    assert sorted(n["books"]["position"] for n in shown["nodes"]) == [-101, 101]
    table = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "cluster", "status", "--router", cluster.address],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"books: balanced: sum of debits = sum of credits = {moved:,} fen" in table.stdout


def test_a_node_cannot_credit_for_a_debit_slot_another_node_leads(cluster: LocalCluster) -> None:
    """The shard map records each node's certificate identity; a credit node applies a leg only
    from the identity of its debit slot's primary. Another node of the cluster, or a node
    certificate the cluster has never seen, cannot move money out of accounts it does not lead."""
    assert cluster.tls_dir is not None
    with channel(cluster.address, "service") as to_router:
        reply = cluster_pb2_grpc.ClusterStub(to_router).GetShardMap(cluster_pb2.GetShardMapRequest(), timeout=10)
    shard_map = ShardMap.from_proto(reply)
    names = {node.address: f"node-{i}" for i, node in enumerate(cluster.nodes, 1)}  # LocalCluster's certificates
    assert dict(shard_map.spiffe_ids) == {a: f"spiffe://yunkai/node/{n}" for a, n in names.items()}
    for node in cluster.nodes:
        with channel(node.address, "operator") as to_node:
            reported = node_pb2_grpc.NodeStub(to_node).GetSlots(node_pb2.GetSlotsRequest(summary=True), timeout=10)
        assert reported.spiffe_id == shard_map.spiffe_ids[node.address]
    first, second = sorted(shard_map.nodes)
    debit, credit = account_on(shard_map, first, "s"), account_on(shard_map, second, "s")
    with channel(cluster.address, "service") as to_router:
        opened = ledger_pb2_grpc.LedgerStub(to_router).CreateAccounts(
            pb.CreateAccountsRequest(accounts=[pb.Account(id=a, ledger=LEDGER, code=CODE) for a in (debit, credit)]),
            timeout=10,
        )
    assert [r.code for r in opened.results] == [pb.OK, pb.OK]
    before = status_of(cluster).books
    slot = slot_of(credit, shard_map.slots_total)
    forged = node_pb2.ApplyCreditLegsRequest(
        legs=[leg_of(node_pb2.LEG_CREDIT, debit, fresh("t"), credit, amount=FORGED_FEN)],
        fence=pb.Fence(slots=[slot], epochs=[shard_map.epochs[slot]]),
    )
    certs.issue(cluster.tls_dir, "node", "rogue")
    # The credit node's own certificate, and a node certificate no map names: neither leads the debit slot.
    for name in (names[second], "rogue"):
        credentials = Tls.load(cluster.tls_dir, name).channel_credentials()
        with grpc.secure_channel(second, credentials) as to_credit_node:
            stub = node_pb2_grpc.NodeStub(to_credit_node)
            for _ in range(SENT_AGAIN):
                (result,) = stub.ApplyCreditLegs(forged, timeout=10).results
                assert (result.code, result.field) == (pb.DEBIT_ACCOUNT_NOT_FOUND, "sender"), name
    with channel(cluster.address, "service") as to_router:
        looked = ledger_pb2_grpc.LedgerStub(to_router).LookupAccounts(
            pb.LookupAccountsRequest(ids=[credit]), timeout=10
        )
    assert (looked.results[0].code, looked.results[0].account.credits_posted) == (pb.OK, 0)
    after = eventually(
        lambda: (s := status_of(cluster).books).state == cluster_pb2.BOOKS_BALANCED and s, "the books balance"
    )
    assert (after.debits, after.credits) == (before.debits, before.credits)
