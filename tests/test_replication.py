"""Replicated slots, node by node (node/replication.py): what a primary acknowledges is on its followers.

Two or three real nodes on loopback, given slot tables directly (AssignSlots, as the
controller would): a primary and its followers. Writes acknowledged by the primary survive its
kill -9 on the follower promoted in its place; a follower refuses a deposed primary; a primary
whose followers stop acknowledging stops serving within its lease; a follower takes a primary's
stream only from the certificate the table names for it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from node import keys
from node.keys import account_slot
from proto import ledger_pb2 as pb, node_pb2, node_pb2_grpc
from serving import certs
from serving.bootstrap import STOP_GRACE_S
from serving.tls import TLS_DIR_ENV, Tls
from tests.conftest import NodeHandle, fresh, start_node

LEDGER = 156
S = 4096
LEASE_MS = 500
FORGED_FEN = 5_000_000


def table(
    epoch: int, primary: str, followers: list[str], ids: dict[str, str], down: list[str] | None = None
) -> node_pb2.AssignSlotsRequest:
    """The whole slot table with one configuration for every slot, and the nodes' identities
    (`ids`: a follower takes a primary's stream only from the certificate the table names)."""
    return node_pb2.AssignSlotsRequest(
        map_version=epoch,
        slots=[node_pb2.SlotOwnership(slot=slot, epoch=epoch, owner=primary, followers=followers) for slot in range(S)],
        drop_released=True,
        down_nodes=down or [],
        spiffe_ids=ids,
    )


def identities(handles: list[NodeHandle]) -> dict[str, str]:
    """Each node's address -> the identity its certificate proves (as the controller learns it)."""
    summary = node_pb2.GetSlotsRequest(summary=True)
    return {n.process.address: n.admin.GetSlots(summary, timeout=5).spiffe_id for n in handles}


def assign(node: NodeHandle, request: node_pb2.AssignSlotsRequest, self_address: str) -> None:
    request = node_pb2.AssignSlotsRequest.FromString(request.SerializeToString())
    request.self_address = self_address
    node.admin.AssignSlots(request, timeout=10)


@contextmanager
def nodes(
    tmp_path_factory: pytest.TempPathFactory, count: int, names: list[str] | None = None
) -> Iterator[list[NodeHandle]]:
    """`count` nodes; with `names`, each with its own certificate (else all share the session's "node")."""
    extra = [["--tls-name", name] for name in names] if names else [[] for _ in range(count)]
    for name in names or ():
        certs.issue(os.environ[TLS_DIR_ENV], "node", name)
    handles = [start_node(tmp_path_factory, "--join", "--lease-ms", str(LEASE_MS), *extra[i]) for i in range(count)]
    try:
        yield handles
    finally:
        for handle in handles:
            handle.close()
            handle.process.stop()


def wait_served(node: NodeHandle, account_id: str, timeout_s: float = 10.0) -> pb.AccountResult:
    deadline = time.monotonic() + timeout_s
    while True:
        result = node.ledger.LookupAccounts(pb.LookupAccountsRequest(ids=[account_id]), timeout=5).results[0]
        if result.code != pb.WRONG_SLOT or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_writes_acknowledged_by_a_killed_primary_are_on_the_follower_promoted_in_its_place(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with nodes(tmp_path_factory, 3) as (a, b, c):
        addresses = [n.process.address for n in (a, b, c)]
        ids = identities([a, b, c])
        first = table(1, addresses[0], addresses[1:], ids)
        for node, address in zip((a, b, c), addresses, strict=True):
            assign(node, first, address)
        bank, customers = fresh("bank"), [fresh("c") for _ in range(20)]
        assert wait_served(a, bank).code == pb.ACCOUNT_NOT_FOUND  # a holds its lease
        for node, owned, following in ((a, S, 0), (b, 0, S)):
            # The summary the controller asks for every second: counts, no per-slot list.
            summary = node.admin.GetSlots(node_pb2.GetSlotsRequest(summary=True), timeout=5)
            whole = node.admin.GetSlots(node_pb2.GetSlotsRequest(), timeout=5)
            assert (summary.owned_count, summary.following_count, len(summary.slots)) == (owned, following, 0)
            assert sum(s.owned for s in whole.slots) == owned and sum(s.following for s in whole.slots) == following
        accounts = [pb.Account(id=i, ledger=LEDGER, code=1) for i in [bank, *customers]]
        assert {r.code for r in a.ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=accounts)).results} == {pb.OK}
        sent = [
            pb.Transfer(id=f"t{i}", debit_account_id=bank, credit_account_id=customers[i % 20], amount=i + 1,
                        ledger=LEDGER, code=1)
            for i in range(200)
        ]  # fmt: skip
        results = a.ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=sent), timeout=10).results
        assert {r.code for r in results} == {pb.OK}
        a.process.kill()  # no goodbye: what it acknowledged must be on its followers
        second = table(2, addresses[1], [addresses[2]], ids, down=[addresses[0]])
        for node, address in ((b, addresses[1]), (c, addresses[2])):
            assign(node, second, address)
        looked = wait_served(b, bank)
        assert looked.code == pb.OK, looked
        assert looked.account.debits_posted == sum(t.amount for t in sent)
        replays = b.ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=sent), timeout=10).results
        assert {r.code for r in replays} == {pb.EXISTS}
        for r, first_answer in zip(replays, results, strict=True):
            assert r.timestamp == first_answer.timestamp  # the same stored transfer, not a new one
        # The new primary's writes reach its follower too, with timestamps after the old primary's.
        more = pb.Transfer(id="after", debit_account_id=bank, credit_account_id=customers[0], amount=7,
                           ledger=LEDGER, code=1)  # fmt: skip
        answer = b.ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=[more]), timeout=10).results[0]
        assert answer.code == pb.OK and answer.timestamp > max(r.timestamp for r in results)
        b.process.kill()
        third = table(3, addresses[2], [], ids, down=addresses[:2])
        assign(c, third, addresses[2])
        looked = wait_served(c, bank)
        assert looked.code == pb.OK and looked.account.debits_posted == sum(t.amount for t in sent) + 7


def test_a_follower_refuses_a_deposed_primary_which_then_stops_serving(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with nodes(tmp_path_factory, 2) as (a, b):
        addresses, ids = led_by_first(a, b)
        account = fresh("z")
        assert wait_served(a, account).code == pb.ACCOUNT_NOT_FOUND  # a holds its lease
        assert a.accounts(pb.Account(id=account, ledger=LEDGER, code=1)) == [pb.OK]
        # The controller makes b the primary (a is cut off from it, say) and tells b only.
        assign(b, table(2, addresses[1], [], ids, down=[addresses[0]]), addresses[1])
        t = pb.Transfer(id="late", debit_account_id=account, credit_account_id=fresh("y"), amount=1, ledger=LEDGER,
                        code=1)  # fmt: skip
        # a cannot replicate a write any more (b refuses it): not acknowledged ...
        with pytest.raises(grpc.RpcError) as caught:
            a.ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=[t]), timeout=1.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # ... and once its lease has lapsed it serves no read either.
        time.sleep(LEASE_MS / 1000 * 1.5)
        stale = a.ledger.LookupAccounts(pb.LookupAccountsRequest(ids=[account]), timeout=5).results[0]
        assert stale.code == pb.WRONG_SLOT
        served = wait_served(b, account)
        assert served.code == pb.OK
        slot = account_slot(account, S)
        assert b.admin.GetSlots(node_pb2.GetSlotsRequest(), timeout=5).slots[slot].owned


def test_a_follower_takes_a_primarys_stream_only_from_the_certificate_its_table_names(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Another node of the cluster, or a node certificate no table names, cannot write a slot's
    copies by naming its primary: the stream is refused whole, the copy does not move, and the
    real primary's next write still reaches it (were the forged entry taken, that write's seq
    would be taken for a resend and skipped). Entries the primary's own certificate sends are
    checked too: a slot twice in a call, an older epoch, a record no write of ours leaves."""
    names = [fresh("node-r") for _ in range(3)]
    with nodes(tmp_path_factory, 3, names) as (a, b, c):
        addresses = [n.process.address for n in (a, b, c)]
        ids = identities([a, b, c])
        assert ids == {address: f"spiffe://yunkai/node/{name}" for address, name in zip(addresses, names, strict=True)}
        first = table(1, addresses[0], [addresses[1]], ids)
        for node, address in zip((a, b, c), addresses, strict=True):
            assign(node, first, address)
        account, other = fresh("f"), fresh("g")
        assert wait_served(a, account).code == pb.ACCOUNT_NOT_FOUND
        assert a.accounts(*(pb.Account(id=i, ledger=LEDGER, code=1) for i in (account, other))) == [pb.OK, pb.OK]
        slot = account_slot(account, S)
        copy = b.admin.GetSlots(node_pb2.GetSlotsRequest(), timeout=5).slots[slot]
        assert copy.following and copy.seq > 0
        forged_account = pb.Account(id=account, ledger=LEDGER, code=1, credits_posted=FORGED_FEN)
        entry = node_pb2.ReplicaEntry(slot=slot, epoch=1, seq=copy.seq + 1)
        entry.ops.add(key=keys.account_key(slot, account), value=forged_account.SerializeToString())
        forged = node_pb2.ReplicateRequest(primary=addresses[0], lease_ms=LEASE_MS, entries=[entry])
        certs.issue(os.environ[TLS_DIR_ENV], "node", "rogue-r")
        for name in (names[2], "rogue-r"):
            credentials = Tls.load(os.environ[TLS_DIR_ENV], name).channel_credentials()
            with grpc.secure_channel(addresses[1], credentials) as to_follower, pytest.raises(grpc.RpcError) as caught:
                list(node_pb2_grpc.NodeStub(to_follower).Replicate(iter([forged]), timeout=10))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name
            assert f"spiffe://yunkai/node/{name}" in (caught.value.details() or ""), caught.value.details()
        # The primary's own certificate does not make any entry good: one slot named twice in a
        # call (both would pass against the copy as it stands: two batches under one seq) is
        # refused whole; an entry at an epoch older than the copy's last batch is refused.
        credentials = Tls.load(os.environ[TLS_DIR_ENV], names[0]).channel_credentials()
        twice = node_pb2.ReplicateRequest(primary=addresses[0], lease_ms=LEASE_MS, entries=[entry, entry])
        older = node_pb2.ReplicaEntry(slot=slot, epoch=0, seq=copy.seq + 1, ops=entry.ops)
        with grpc.secure_channel(addresses[1], credentials) as to_follower:
            with pytest.raises(grpc.RpcError) as caught:
                list(node_pb2_grpc.NodeStub(to_follower).Replicate(iter([twice]), timeout=10))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value
            assert "named twice" in (caught.value.details() or ""), caught.value.details()
            request = node_pb2.ReplicateRequest(primary=addresses[0], lease_ms=LEASE_MS, entries=[older])
            [reply] = list(node_pb2_grpc.NodeStub(to_follower).Replicate(iter([request]), timeout=10))
            assert not reply.results[0].ok and "older" in reply.results[0].refusal, reply
            # ...and an entry in order holding an account no write of ours leaves (promoted, the
            # copy would stop at the first transfer touching it) is refused (node/peerdata.py).
            negative = pb.Account(id=account, ledger=LEDGER, code=1, debits_posted=-1)
            bad = node_pb2.ReplicaEntry(slot=slot, epoch=1, seq=copy.seq + 1)
            bad.ops.add(key=keys.account_key(slot, account), value=negative.SerializeToString())
            request = node_pb2.ReplicateRequest(primary=addresses[0], lease_ms=LEASE_MS, entries=[bad])
            [reply] = list(node_pb2_grpc.NodeStub(to_follower).Replicate(iter([request]), timeout=10))
            assert not reply.results[0].ok and "negative balance" in reply.results[0].refusal, reply
        after = b.admin.GetSlots(node_pb2.GetSlotsRequest(), timeout=5).slots[slot]
        assert (after.seq_epoch, after.seq) == (copy.seq_epoch, copy.seq)
        paid = pb.Transfer(id=fresh("t"), debit_account_id=other, credit_account_id=account, amount=11,
                           ledger=LEDGER, code=1)  # fmt: skip
        assert (
            a.ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=[paid]), timeout=10).results[0].code == pb.OK
        )
        a.process.kill()
        for node, address in ((b, addresses[1]), (c, addresses[2])):
            assign(node, table(2, addresses[1], [], ids, down=[addresses[0]]), address)
        looked = wait_served(b, account)
        assert looked.code == pb.OK and looked.account.credits_posted == 11, looked


def test_a_follower_stops_at_once_though_its_primary_keeps_the_stream_open(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A primary's link never ends by itself: the follower's stop ends it (the stream closes with
    OK and the primary opens another elsewhere or later) instead of waiting out the server's
    grace, which held every node of a replicated cluster for 10 s."""
    with nodes(tmp_path_factory, 2) as (a, b):
        addresses = [n.process.address for n in (a, b)]
        ids = identities([a, b])
        for node, address in zip((a, b), addresses, strict=True):
            assign(node, table(1, addresses[0], addresses[1:], ids), address)
        account = fresh("s")
        assert wait_served(a, account).code == pb.ACCOUNT_NOT_FOUND  # a holds its lease
        opened = pb.CreateAccountsRequest(accounts=[pb.Account(id=account, ledger=LEDGER, code=1)])
        reply = a.ledger.CreateAccounts(opened, timeout=10)
        assert reply.results[0].code == pb.OK  # acknowledged: the link to b is open
        started = time.monotonic()
        assert b.process.stop() == 0
        stopped_s = time.monotonic() - started
        assert stopped_s < STOP_GRACE_S / 2, f"the follower took {stopped_s:.1f}s to stop"


def split_table(
    epoch: int, ids: dict[str, str], usual: tuple[str, list[str]], changed: dict[int, tuple[str, list[str]]]
) -> node_pb2.AssignSlotsRequest:
    """The whole table: every slot at epoch 1 with the `usual` configuration, but the `changed`
    slots (slot -> (primary, followers)) at `epoch`."""
    request = table(1, usual[0], usual[1], ids)
    request.map_version = epoch
    for entry in request.slots:
        if entry.slot in changed:
            entry.epoch = epoch
            entry.owner, followers = changed[entry.slot]
            entry.followers[:] = followers
    return request


def led_by_first(a: NodeHandle, b: NodeHandle) -> tuple[list[str], dict[str, str]]:
    """Every slot led by `a` with `b` its follower, at epoch 1: (addresses, identities)."""
    addresses = [a.process.address, b.process.address]
    ids = identities([a, b])
    config = table(1, addresses[0], [addresses[1]], ids)
    assign(a, config, addresses[0])
    assign(b, config, addresses[1])
    return addresses, ids


def two_slots_led_by_first(a: NodeHandle, b: NodeHandle) -> tuple[list[str], dict[str, str], str, str]:
    """`led_by_first`, and two accounts opened on `a` in two different slots: (addresses,
    identities, debit id, credit id)."""
    addresses, ids = led_by_first(a, b)
    debit = fresh("d")
    credit = next(i for i in (fresh("k") for _ in range(100)) if account_slot(i, S) != account_slot(debit, S))
    assert wait_served(a, debit).code == pb.ACCOUNT_NOT_FOUND  # a holds its lease
    assert a.accounts(*(pb.Account(id=i, ledger=LEDGER, code=1) for i in (debit, credit))) == [pb.OK, pb.OK]
    return addresses, ids, debit, credit


def test_a_leg_whose_credit_slot_the_debit_node_leads_is_applied_in_process_and_audited(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Between two replicated slots one node leads, the transfer goes through the outbox, but its
    leg is not sent over gRPC to the node's own address: the relay hands it to the node's own
    ApplyCreditLegs in-process (node/relay.py), with the same checks and result, and the audit
    log has the entry the gate would have written, by the node's own identity, marked in-process."""
    with nodes(tmp_path_factory, 2) as (a, b):
        addresses, ids, debit, credit = two_slots_led_by_first(a, b)
        t = pb.Transfer(id=fresh("t"), debit_account_id=debit, credit_account_id=credit, amount=99, ledger=LEDGER,
                        code=1)  # fmt: skip
        [answer] = a.transfers(t)
        assert answer.code == pb.OK, answer
        assert a.account(debit).debits_posted == 99
        assert a.account(credit).credits_posted == 99
        [again] = a.transfers(t)
        assert again.code == pb.EXISTS, again  # settled once
        entries = [json.loads(line) for line in Path(a.process.data_dir, "audit.log").read_bytes().splitlines()]
        legs = [e for e in entries if e["method"].endswith("/ApplyCreditLegs")]
        assert len(legs) == 1, legs
        assert legs[0]["caller"] == ids[addresses[0]], legs
        assert legs[0]["status"] == "OK" and legs[0]["detail"] == "in-process", legs
        assert f"{debit}/{t.id}" in legs[0]["ids"], legs


@pytest.mark.parametrize("failed_over", ["debit", "credit"])
def test_a_transfer_between_two_slots_is_not_doubled_or_lost_when_only_one_of_them_fails_over(
    tmp_path_factory: pytest.TempPathFactory, failed_over: str
) -> None:
    """Two slots led by one primary with the same followers still change configuration apart
    (the controller fails one over and keeps the other, as a rolling restart did). A transfer
    between them written in one batch would then keep one half and lose the other: its retry at
    the new primary credited twice (debit slot failed over) or its credit was lost (credit slot
    failed over). Between replicated slots it goes through the outbox, which holds across any
    two configurations."""
    with nodes(tmp_path_factory, 2) as (a, b):
        addresses, ids, debit, credit = two_slots_led_by_first(a, b)
        moved, kept = (debit, credit) if failed_over == "debit" else (credit, debit)
        # The controller hands `moved`'s slot to b (a cut off from it) and keeps `kept`'s on a,
        # without b; it tells b first.
        second = split_table(
            2,
            ids,
            (addresses[0], [addresses[1]]),
            {account_slot(moved, S): (addresses[1], []), account_slot(kept, S): (addresses[0], [])},
        )
        assign(b, second, addresses[1])
        t = pb.Transfer(id="split", debit_account_id=debit, credit_account_id=credit, amount=99, ledger=LEDGER,
                        code=1)  # fmt: skip
        with pytest.raises(grpc.RpcError) as caught:  # within a's lease: taken, but b refuses to follow it
            a.ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=[t]), timeout=1.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assign(a, second, addresses[0])
        owner_of = {moved: b, kept: a}
        deadline = time.monotonic() + 20
        while True:  # the client retries where the debit slot is led now, until it is served
            answer = owner_of[debit].transfers(t)[0]
            if answer.code not in (pb.WRONG_SLOT, pb.TRANSFER_IN_FLIGHT) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.code in (pb.OK, pb.EXISTS), answer
        looked = {i: wait_served(owner_of[i], i) for i in (debit, credit)}
        assert looked[debit].account.debits_posted == 99, looked
        assert looked[credit].account.credits_posted == 99, looked
