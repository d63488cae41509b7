"""Every result code of the ledger a client's request can provoke, each on a real node over gRPC.
(STORED_DATA_INCONSISTENT needs a node's data damaged first: tests/test_protocols.py.)"""

from __future__ import annotations

import time

import pytest

from node.keys import account_slot
from node.state_machine import INT64_MAX
from proto import ledger_pb2 as pb, node_pb2
from tests.conftest import NodeHandle, fresh

LEDGER = 156


def open_pair(node: NodeHandle, debit_flags: int = 0, credit_flags: int = 0, ledger: int = LEDGER) -> tuple[str, str]:
    debit, credit = fresh("dr"), fresh("cr")
    assert node.accounts(
        pb.Account(id=debit, ledger=ledger, code=1, flags=debit_flags),
        pb.Account(id=credit, ledger=ledger, code=1, flags=credit_flags),
    ) == [pb.OK, pb.OK]
    return debit, credit


def transfer(debit: str, credit: str, amount: int = 100, **fields: object) -> pb.Transfer:
    return pb.Transfer(
        id=str(fields.pop("id", fresh("t"))),
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        ledger=int(fields.pop("ledger", LEDGER)),  # type: ignore[call-overload]
        code=int(fields.pop("code", 1)),  # type: ignore[call-overload]
        **fields,  # type: ignore[arg-type]
    )


def code_of(node: NodeHandle, t: pb.Transfer) -> int:
    return node.transfers(t)[0].code


def test_ok_moves_the_amount_from_debit_to_credit(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    result = node.transfers(transfer(debit, credit, 250))[0]
    assert result.code == pb.OK and result.state == pb.TRANSFER_POSTED and result.timestamp > 0
    assert node.account(debit).debits_posted == 250
    assert node.account(credit).credits_posted == 250


def test_exists_for_an_identical_replay(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    t = transfer(debit, credit)
    assert code_of(node, t) == pb.OK
    assert code_of(node, t) == pb.EXISTS


def test_exists_with_different_fields_names_the_field(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    t = transfer(debit, credit, 100)
    assert code_of(node, t) == pb.OK
    t.amount = 101
    result = node.transfers(t)[0]
    assert (result.code, result.field) == (pb.EXISTS_WITH_DIFFERENT_FIELDS, "amount")


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", ""), ("id", "x" * 65), ("id", "has space"), ("debit_account_id", "bad/slash"), ("credit_account_id", "")],
)
def test_id_invalid_names_the_field(node: NodeHandle, field: str, value: str) -> None:
    debit, credit = open_pair(node)
    t = transfer(debit, credit)
    setattr(t, field, value)
    result = node.transfers(t)[0]
    assert (result.code, result.field) == (pb.ID_INVALID, field)


def test_accounts_must_be_different(node: NodeHandle) -> None:
    debit, _ = open_pair(node)
    assert code_of(node, transfer(debit, debit)) == pb.ACCOUNTS_MUST_BE_DIFFERENT


@pytest.mark.parametrize("amount", [0, -1, -INT64_MAX])
def test_amount_must_be_positive(node: NodeHandle, amount: int) -> None:
    debit, credit = open_pair(node)
    assert code_of(node, transfer(debit, credit, amount)) == pb.AMOUNT_MUST_BE_POSITIVE


def test_ledger_must_not_be_zero(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    assert code_of(node, transfer(debit, credit, ledger=0)) == pb.LEDGER_MUST_NOT_BE_ZERO
    assert node.accounts(pb.Account(id=fresh("a"), ledger=0, code=1)) == [pb.LEDGER_MUST_NOT_BE_ZERO]


def test_code_must_not_be_zero(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    assert code_of(node, transfer(debit, credit, code=0)) == pb.CODE_MUST_NOT_BE_ZERO
    assert node.accounts(pb.Account(id=fresh("a"), ledger=1, code=0)) == [pb.CODE_MUST_NOT_BE_ZERO]


def test_debit_and_credit_account_not_found(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    assert code_of(node, transfer(fresh("ghost"), credit)) == pb.DEBIT_ACCOUNT_NOT_FOUND
    assert code_of(node, transfer(debit, fresh("ghost"))) == pb.CREDIT_ACCOUNT_NOT_FOUND


def test_accounts_must_have_same_ledger(node: NodeHandle) -> None:
    debit, _ = open_pair(node)
    other = fresh("usd")
    assert node.accounts(pb.Account(id=other, ledger=840, code=1)) == [pb.OK]
    assert code_of(node, transfer(debit, other)) == pb.ACCOUNTS_MUST_HAVE_SAME_LEDGER
    _, credit = open_pair(node)
    result = node.transfers(transfer(debit, credit, ledger=840))[0]
    assert (result.code, result.field) == (pb.ACCOUNTS_MUST_HAVE_SAME_LEDGER, "ledger")


def test_exceeds_credits_when_debits_must_not_exceed_credits(node: NodeHandle) -> None:
    funder, limited = open_pair(node, credit_flags=pb.DEBITS_MUST_NOT_EXCEED_CREDITS)
    _, sink = open_pair(node)
    assert code_of(node, transfer(funder, limited, 100)) == pb.OK
    assert code_of(node, transfer(limited, sink, 101)) == pb.EXCEEDS_CREDITS
    assert code_of(node, transfer(limited, sink, 100)) == pb.OK
    assert node.account(limited).debits_posted == 100


def test_overdraft_limit_extends_what_a_limited_account_may_spend(node: NodeHandle) -> None:
    limited, sink = fresh("od"), fresh("sink")
    assert node.accounts(
        pb.Account(id=limited, ledger=LEDGER, code=1, flags=pb.DEBITS_MUST_NOT_EXCEED_CREDITS, overdraft_limit=500),
        pb.Account(id=sink, ledger=LEDGER, code=1),
    ) == [pb.OK, pb.OK]
    assert code_of(node, transfer(limited, sink, 501)) == pb.EXCEEDS_CREDITS
    assert code_of(node, transfer(limited, sink, 500)) == pb.OK


def test_exceeds_debits_when_credits_must_not_exceed_debits(node: NodeHandle) -> None:
    source, capped = open_pair(node, credit_flags=pb.CREDITS_MUST_NOT_EXCEED_DEBITS)
    assert code_of(node, transfer(source, capped, 1)) == pb.EXCEEDS_DEBITS


def change(account_id: str, kind: int, **fields: object) -> pb.AccountChange:
    return pb.AccountChange(id=fresh("chg"), account_id=account_id, kind=kind, **fields)  # type: ignore[arg-type]


def changes(node: NodeHandle, *items: pb.AccountChange) -> list[pb.EventResult]:
    return list(node.ledger.ChangeAccounts(pb.ChangeAccountsRequest(changes=items), timeout=30).results)


def test_frozen_accounts_refuse_transfers_until_unfrozen(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    assert changes(node, change(debit, pb.FREEZE))[0].code == pb.OK
    assert code_of(node, transfer(debit, credit)) == pb.DEBIT_ACCOUNT_FROZEN
    assert code_of(node, transfer(credit, debit)) == pb.CREDIT_ACCOUNT_FROZEN
    assert node.account(debit).status == pb.FROZEN
    assert changes(node, change(debit, pb.UNFREEZE))[0].code == pb.OK
    assert code_of(node, transfer(debit, credit)) == pb.OK


def test_closed_accounts_refuse_transfers(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    assert changes(node, change(credit, pb.CLOSE))[0].code == pb.OK
    assert code_of(node, transfer(debit, credit)) == pb.CREDIT_ACCOUNT_CLOSED
    assert code_of(node, transfer(credit, debit)) == pb.DEBIT_ACCOUNT_CLOSED
    assert node.account(credit).status == pb.CLOSED


def test_account_change_result_codes(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    assert changes(node, change(fresh("ghost"), pb.FREEZE))[0].code == pb.ACCOUNT_NOT_FOUND
    assert changes(node, change(debit, pb.UNFREEZE))[0].code == pb.ACCOUNT_NOT_FROZEN
    assert changes(node, change(debit, pb.FREEZE))[0].code == pb.OK
    assert changes(node, change(debit, pb.FREEZE))[0].code == pb.ACCOUNT_ALREADY_FROZEN
    assert code_of(node, transfer(credit, debit, flags=pb.PENDING)) == pb.CREDIT_ACCOUNT_FROZEN
    assert changes(node, change(debit, pb.UNFREEZE))[0].code == pb.OK
    assert code_of(node, transfer(credit, debit, flags=pb.PENDING)) == pb.OK
    assert changes(node, change(debit, pb.CLOSE))[0].code == pb.ACCOUNT_HAS_PENDING_TRANSFERS
    assert changes(node, change(credit, pb.CLOSE))[0].code == pb.ACCOUNT_HAS_PENDING_TRANSFERS
    _, other = open_pair(node)
    assert changes(node, change(other, pb.CLOSE))[0].code == pb.OK
    assert changes(node, change(other, pb.FREEZE))[0].code == pb.ACCOUNT_CLOSED


def test_set_overdraft_limit_changes_what_may_be_spent(node: NodeHandle) -> None:
    limited, sink = open_pair(node, debit_flags=pb.DEBITS_MUST_NOT_EXCEED_CREDITS)
    assert code_of(node, transfer(limited, sink, 300)) == pb.EXCEEDS_CREDITS
    assert changes(node, change(limited, pb.SET_OVERDRAFT_LIMIT, overdraft_limit=300))[0].code == pb.OK
    assert node.account(limited).overdraft_limit == 300
    assert code_of(node, transfer(limited, sink, 300)) == pb.OK


def pending(debit: str, credit: str, amount: int = 100, **fields: object) -> pb.Transfer:
    return transfer(debit, credit, amount, flags=pb.PENDING, **fields)


def resolve(debit: str, pending_id: str, flag: int, amount: int = 0, **fields: object) -> pb.Transfer:
    return pb.Transfer(
        id=fresh("res"),
        debit_account_id=debit,
        pending_id=pending_id,
        flags=flag,
        amount=amount,
        **fields,  # type: ignore[arg-type]
    )


def test_pending_transfer_not_found(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    assert code_of(node, resolve(debit, fresh("nope"), pb.POST_PENDING)) == pb.PENDING_TRANSFER_NOT_FOUND
    plain = transfer(debit, credit)
    assert code_of(node, plain) == pb.OK
    assert code_of(node, resolve(debit, plain.id, pb.VOID_PENDING)) == pb.PENDING_TRANSFER_NOT_FOUND


def test_pending_transfer_already_posted_and_already_voided(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    posted, voided = pending(debit, credit), pending(debit, credit)
    assert [r.code for r in node.transfers(posted, voided)] == [pb.OK, pb.OK]
    assert code_of(node, resolve(debit, posted.id, pb.POST_PENDING)) == pb.OK
    assert code_of(node, resolve(debit, voided.id, pb.VOID_PENDING)) == pb.OK
    assert code_of(node, resolve(debit, posted.id, pb.VOID_PENDING)) == pb.PENDING_TRANSFER_ALREADY_POSTED
    assert code_of(node, resolve(debit, voided.id, pb.POST_PENDING)) == pb.PENDING_TRANSFER_ALREADY_VOIDED


def test_exceeds_pending_transfer_amount(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    p = pending(debit, credit, 100)
    assert code_of(node, p) == pb.OK
    assert code_of(node, resolve(debit, p.id, pb.POST_PENDING, 101)) == pb.EXCEEDS_PENDING_TRANSFER_AMOUNT


def test_pending_transfer_has_different_fields(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    _, other = open_pair(node)
    p = pending(debit, credit, 100)
    assert code_of(node, p) == pb.OK
    result = node.transfers(resolve(debit, p.id, pb.POST_PENDING, credit_account_id=other))[0]
    assert (result.code, result.field) == (pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS, "credit_account_id")
    result = node.transfers(resolve(debit, p.id, pb.VOID_PENDING, 40))[0]
    assert (result.code, result.field) == (pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS, "amount")


def test_overflow_at_the_int64_limit(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    assert code_of(node, transfer(debit, credit, INT64_MAX)) == pb.OK
    assert code_of(node, transfer(debit, credit, 1)) == pb.OVERFLOW
    assert node.account(debit).debits_posted == INT64_MAX
    other_debit, other_credit = open_pair(node)
    assert code_of(node, transfer(other_debit, other_credit, INT64_MAX, flags=pb.PENDING)) == pb.OK
    assert code_of(node, transfer(other_debit, other_credit, 1)) == pb.OVERFLOW


def test_wrong_slot_names_the_owner_and_epoch(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    slots = node.admin.GetSlots(node_pb2.GetSlotsRequest(), timeout=30)
    slot = account_slot(debit, slots.slots_total)
    epoch = next(s.epoch for s in slots.slots if s.slot == slot)
    request = pb.CreateTransfersRequest(
        transfers=[transfer(debit, credit)], fence=pb.Fence(slots=[slot], epochs=[epoch + 7])
    )
    result = node.ledger.CreateTransfers(request, timeout=30).results[0]
    assert result.code == pb.WRONG_SLOT
    assert (result.redirect.slot, result.redirect.epoch, result.redirect.owner) == (slot, epoch, node.process.address)
    assert node.account(debit).debits_posted == 0
    request.fence.epochs[0] = epoch
    assert node.ledger.CreateTransfers(request, timeout=30).results[0].code == pb.OK


def test_pending_transfer_expired_after_its_timeout(node: NodeHandle) -> None:
    debit, credit = open_pair(node)
    p = pending(debit, credit, 70, timeout_s=1)
    assert code_of(node, p) == pb.OK
    assert node.account(debit).debits_pending == 70
    # Wait until the node's sweep has expired it: a bounded poll, not a timing assertion.
    deadline = time.monotonic() + 30
    while node.transfer(debit, p.id).transfer.state != pb.TRANSFER_EXPIRED and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node.transfer(debit, p.id).transfer.state == pb.TRANSFER_EXPIRED
    assert node.account(debit).debits_pending == 0 and node.account(credit).credits_pending == 0
    assert code_of(node, resolve(debit, p.id, pb.POST_PENDING)) == pb.PENDING_TRANSFER_EXPIRED
