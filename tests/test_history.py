"""Per-account history: every event, paged, in both directions, as it stood then."""

from __future__ import annotations

from proto import ledger_pb2 as pb
from tests.conftest import NodeHandle, fresh

LEDGER = 156


def page(node: NodeHandle, account_id: str, limit: int, newest_first: bool, cursor: int = 0) -> tuple[list[str], int]:
    reply = node.ledger.GetAccountTransfers(
        pb.GetAccountTransfersRequest(account_id=account_id, limit=limit, newest_first=newest_first, cursor=cursor)
    )
    assert reply.code == pb.OK
    return [t.id for t in reply.transfers], reply.next_cursor


def all_pages(node: NodeHandle, account_id: str, limit: int, newest_first: bool) -> list[str]:
    ids, cursor = page(node, account_id, limit, newest_first)
    while cursor:
        more, cursor = page(node, account_id, limit, newest_first, cursor)
        ids += more
    return ids


def test_history_pages_cover_every_transfer_once_in_both_orders(node: NodeHandle) -> None:
    a, b = fresh("ha"), fresh("hb")
    node.accounts(pb.Account(id=a, ledger=LEDGER, code=1), pb.Account(id=b, ledger=LEDGER, code=1))
    ids = [f"h{i}" for i in range(23)]
    for start in range(0, 23, 5):  # several requests, so several commit groups
        node.transfers(
            *(
                pb.Transfer(id=i, debit_account_id=a, credit_account_id=b, amount=1, ledger=LEDGER, code=1)
                for i in ids[start : start + 5]
            )
        )
    assert all_pages(node, a, 4, newest_first=False) == ids
    assert all_pages(node, a, 4, newest_first=True) == ids[::-1]
    assert all_pages(node, b, 7, newest_first=False) == ids  # the credit side has it too
    first, cursor = page(node, a, 23, newest_first=False)
    assert (first, cursor) == (ids, 0)


def test_history_keeps_each_event_as_it_stood(node: NodeHandle) -> None:
    a, b = fresh("ha"), fresh("hb")
    node.accounts(pb.Account(id=a, ledger=LEDGER, code=1), pb.Account(id=b, ledger=LEDGER, code=1))
    node.transfers(
        pb.Transfer(
            id="hold", debit_account_id=a, credit_account_id=b, amount=10, ledger=LEDGER, code=1, flags=pb.PENDING
        ),
        pb.Transfer(id="post", debit_account_id=a, pending_id="hold", flags=pb.POST_PENDING, amount=4),
    )
    reply = node.ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=b))
    assert [(t.id, t.state, t.amount) for t in reply.transfers] == [
        ("hold", pb.TRANSFER_PENDING, 10),
        ("post", pb.TRANSFER_POSTED, 4),
    ]
    looked = node.transfer(a, "hold").transfer
    assert (looked.state, looked.amount_posted) == (pb.TRANSFER_POSTED, 4)
    assert (node.account(a).debits_posted, node.account(a).debits_pending) == (4, 0)


def test_no_history_accounts_keep_none_and_unknown_accounts_are_named(node: NodeHandle) -> None:
    quiet, loud = fresh("q"), fresh("l")
    node.accounts(
        pb.Account(id=quiet, ledger=LEDGER, code=1, flags=pb.NO_HISTORY), pb.Account(id=loud, ledger=LEDGER, code=1)
    )
    node.transfers(pb.Transfer(id="t", debit_account_id=quiet, credit_account_id=loud, amount=1, ledger=LEDGER, code=1))
    assert page(node, quiet, 10, False) == ([], 0)
    assert page(node, loud, 10, False) == (["t"], 0)
    reply = node.ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=fresh("ghost")))
    assert reply.code == pb.ACCOUNT_NOT_FOUND
