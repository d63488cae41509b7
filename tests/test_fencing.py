"""Slot ownership: a node serves only the slots it owns, at their epoch, across restarts."""

from __future__ import annotations

import grpc
import pytest

from node.keys import account_slot
from proto import ledger_pb2 as pb, node_pb2
from tests.conftest import NodeHandle, fresh, start_node

LEDGER = 156
ELSEWHERE = "127.0.0.2:1"  # another owner's name in the slot table; loopback, never served


def slot_of_account(node: NodeHandle, account_id: str) -> int:
    return account_slot(account_id, node.admin.GetSlots(node_pb2.GetSlotsRequest()).slots_total)


def assign(node: NodeHandle, slot: int, epoch: int, owner: str) -> node_pb2.AssignSlotsResponse:
    return node.admin.AssignSlots(
        node_pb2.AssignSlotsRequest(
            map_version=epoch, slots=[node_pb2.SlotOwnership(slot=slot, epoch=epoch, owner=owner)]
        ),
        timeout=10,
    )


def test_a_slot_given_away_answers_wrong_slot_and_changes_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    node = start_node(tmp_path_factory)
    try:
        a, b = fresh("f"), fresh("f")
        assert node.accounts(pb.Account(id=a, ledger=LEDGER, code=1), pb.Account(id=b, ledger=LEDGER, code=1)) == [
            pb.OK,
            pb.OK,
        ]
        slot = slot_of_account(node, a)
        assert assign(node, slot, 2, ELSEWHERE).slots_owned == 4095
        t = pb.Transfer(id="t", debit_account_id=a, credit_account_id=b, amount=1, ledger=LEDGER, code=1)
        result = node.transfers(t)[0]
        assert result.code == pb.WRONG_SLOT
        assert (result.redirect.slot, result.redirect.epoch, result.redirect.owner) == (slot, 2, ELSEWHERE)
        lookup = node.ledger.LookupAccounts(pb.LookupAccountsRequest(ids=[a])).results[0]
        assert (lookup.code, lookup.redirect.owner) == (pb.WRONG_SLOT, ELSEWHERE)

        # Epochs never go backwards, and an equal epoch cannot name another owner.
        for epoch, owner in [(1, node.process.address), (2, node.process.address)]:
            with pytest.raises(grpc.RpcError) as caught:
                assign(node, slot, epoch, owner)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "would go backwards" in str(caught.value.details())

        # The table survives a kill -9: the node still refuses the slot it gave away.
        node.process.kill()
        node.process.start()
        node.reconnect()
        assert node.transfers(t)[0].code == pb.WRONG_SLOT
        table = node.admin.GetSlots(node_pb2.GetSlotsRequest())
        entry = next(s for s in table.slots if s.slot == slot)
        assert (entry.epoch, entry.owner, entry.owned) == (2, ELSEWHERE, False)

        # Given back at a later epoch, it serves again, and only requests fenced at that epoch.
        assign(node, slot, 3, node.process.address)
        fenced = pb.CreateTransfersRequest(transfers=[t], fence=pb.Fence(slots=[slot], epochs=[2]))
        assert node.ledger.CreateTransfers(fenced).results[0].code == pb.WRONG_SLOT
        fenced.fence.epochs[0] = 3
        assert node.ledger.CreateTransfers(fenced).results[0].code == pb.OK
        assert node.account(b).credits_posted == 1
    finally:
        node.close()
        node.process.stop()


def test_a_transfer_to_a_slot_on_an_unreachable_node_is_held_in_flight(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    node = start_node(tmp_path_factory)
    try:
        a, b = fresh("x"), fresh("x")
        node.accounts(pb.Account(id=a, ledger=LEDGER, code=1), pb.Account(id=b, ledger=LEDGER, code=1))
        assign(node, slot_of_account(node, b), 2, ELSEWHERE)
        t = pb.Transfer(id="t", debit_account_id=a, credit_account_id=b, amount=1, ledger=LEDGER, code=1)
        reply = node.ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=[t]), timeout=2)
        assert (reply.results[0].code, reply.results[0].state) == (pb.IN_FLIGHT, pb.TRANSFER_IN_FLIGHT)
        # The amount waits in debits_pending until the credit node answers; nothing is posted.
        debit = node.account(a)
        assert (debit.debits_pending, debit.debits_posted) == (1, 0)
        assert node.transfer(a, "t").transfer.state == pb.TRANSFER_IN_FLIGHT
        replay = node.ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=[t]), timeout=1).results[0]
        assert (replay.code, replay.timestamp) == (pb.IN_FLIGHT, reply.results[0].timestamp)
    finally:
        node.close()
        code = node.process.stop()
    assert code == 0, node.process.log_tail()
