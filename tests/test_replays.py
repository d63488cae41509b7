"""Idempotency: replays move no money; a changed field is named; a failure stays a failure."""

from __future__ import annotations

from proto import ledger_pb2 as pb
from tests.conftest import NodeHandle, fresh

LEDGER = 156


def test_the_same_batch_replayed_answers_exists_and_moves_no_money(node: NodeHandle) -> None:
    funder, spender, sink = fresh("f"), fresh("s"), fresh("k")
    node.accounts(
        pb.Account(id=funder, ledger=LEDGER, code=1),
        pb.Account(id=spender, ledger=LEDGER, code=1, flags=pb.DEBITS_MUST_NOT_EXCEED_CREDITS),
        pb.Account(id=sink, ledger=LEDGER, code=1),
    )
    batch = [
        pb.Transfer(id="fund", debit_account_id=funder, credit_account_id=spender, amount=1000, ledger=LEDGER, code=1),
        pb.Transfer(id="spend", debit_account_id=spender, credit_account_id=sink, amount=300, ledger=LEDGER, code=1),
        pb.Transfer(
            id="hold",
            debit_account_id=spender,
            credit_account_id=sink,
            amount=200,
            ledger=LEDGER,
            code=1,
            flags=pb.PENDING,
        ),
        pb.Transfer(id="post", debit_account_id=spender, pending_id="hold", flags=pb.POST_PENDING, amount=150),
    ]
    first = node.transfers(*batch)
    assert [r.code for r in first] == [pb.OK] * 4
    for _ in range(5):
        again = node.transfers(*batch)
        assert [r.code for r in again] == [pb.EXISTS] * 4
        assert [r.timestamp for r in again] == [r.timestamp for r in first]
    assert (node.account(funder).debits_posted, node.account(spender).credits_posted) == (1000, 1000)
    spent = node.account(spender)
    assert (spent.debits_posted, spent.debits_pending) == (450, 0)
    assert node.account(sink).credits_posted == 450


def test_a_post_replayed_with_its_fields_spelled_out_is_the_same_post(node: NodeHandle) -> None:
    debit, credit = fresh("d"), fresh("c")
    node.accounts(pb.Account(id=debit, ledger=LEDGER, code=1), pb.Account(id=credit, ledger=LEDGER, code=1))
    hold = pb.Transfer(
        id="h", debit_account_id=debit, credit_account_id=credit, amount=90, ledger=LEDGER, code=3, flags=pb.PENDING
    )
    post = pb.Transfer(id="p", debit_account_id=debit, pending_id="h", flags=pb.POST_PENDING)
    assert [r.code for r in node.transfers(hold, post)] == [pb.OK, pb.OK]
    spelled = pb.Transfer(
        id="p",
        debit_account_id=debit,
        credit_account_id=credit,
        pending_id="h",
        flags=pb.POST_PENDING,
        amount=90,
        ledger=LEDGER,
        code=3,
    )
    assert node.transfers(spelled)[0].code == pb.EXISTS
    spelled.amount = 89
    result = node.transfers(spelled)[0]
    assert (result.code, result.field) == (pb.EXISTS_WITH_DIFFERENT_FIELDS, "amount")


def test_each_changed_field_is_named(node: NodeHandle) -> None:
    debit, credit, other = fresh("d"), fresh("c"), fresh("o")
    node.accounts(*(pb.Account(id=i, ledger=LEDGER, code=1) for i in (debit, credit, other)))
    original = pb.Transfer(
        id="x", debit_account_id=debit, credit_account_id=credit, amount=5, ledger=LEDGER, code=1, user_data=9
    )
    assert node.transfers(original)[0].code == pb.OK
    for field, value in [
        ("credit_account_id", other),
        ("amount", 6),
        ("code", 2),
        ("user_data", 10),
        ("ledger", 157),
        ("flags", pb.PENDING),
    ]:
        changed = pb.Transfer()
        changed.CopyFrom(original)
        setattr(changed, field, value)
        result = node.transfers(changed)[0]
        assert (result.code, result.field) == (pb.EXISTS_WITH_DIFFERENT_FIELDS, field)
    assert node.account(debit).debits_posted == 5


def test_an_id_that_failed_keeps_failing_the_same_way_after_the_world_changes(node: NodeHandle) -> None:
    spender, sink, funder = fresh("s"), fresh("k"), fresh("f")
    node.accounts(
        pb.Account(id=spender, ledger=LEDGER, code=1, flags=pb.DEBITS_MUST_NOT_EXCEED_CREDITS),
        pb.Account(id=funder, ledger=LEDGER, code=1),
    )
    too_much = pb.Transfer(
        id="try", debit_account_id=spender, credit_account_id=funder, amount=50, ledger=LEDGER, code=1
    )
    missing = pb.Transfer(id="try2", debit_account_id=spender, credit_account_id=sink, amount=1, ledger=LEDGER, code=1)
    assert [r.code for r in node.transfers(too_much, missing)] == [pb.EXCEEDS_CREDITS, pb.CREDIT_ACCOUNT_NOT_FOUND]
    # Now the spender has money and the sink exists: the same ids must still fail as before.
    node.accounts(pb.Account(id=sink, ledger=LEDGER, code=1))
    fund = pb.Transfer(id="fund", debit_account_id=funder, credit_account_id=spender, amount=100, ledger=LEDGER, code=1)
    assert node.transfers(fund)[0].code == pb.OK
    for _ in range(3):
        again = node.transfers(too_much, missing)
        assert [r.code for r in again] == [pb.EXCEEDS_CREDITS, pb.CREDIT_ACCOUNT_NOT_FOUND]
        assert [r.state for r in again] == [pb.TRANSFER_REJECTED] * 2
    looked = node.transfer(spender, "try")
    assert (looked.transfer.state, looked.transfer.result) == (pb.TRANSFER_REJECTED, pb.EXCEEDS_CREDITS)
    assert node.account(spender).debits_posted == 0
    # A fresh id with the same fields succeeds now.
    too_much.id = "try-again"
    assert node.transfers(too_much)[0].code == pb.OK


def test_account_creation_and_changes_are_idempotent(node: NodeHandle) -> None:
    account = pb.Account(id=fresh("a"), ledger=LEDGER, code=7, overdraft_limit=10)
    assert node.accounts(account) == [pb.OK]
    freeze = pb.AccountChange(id="c1", account_id=account.id, kind=pb.FREEZE)
    raise_limit = pb.AccountChange(id="c2", account_id=account.id, kind=pb.SET_OVERDRAFT_LIMIT, overdraft_limit=99)
    reply = node.ledger.ChangeAccounts(pb.ChangeAccountsRequest(changes=[freeze, raise_limit]))
    assert [r.code for r in reply.results] == [pb.OK, pb.OK]
    reply = node.ledger.ChangeAccounts(pb.ChangeAccountsRequest(changes=[freeze, raise_limit]))
    assert [r.code for r in reply.results] == [pb.EXISTS, pb.EXISTS]
    # The creation is compared with the account as opened, not as changed since.
    assert node.accounts(account) == [pb.EXISTS]
    account.code = 8
    reply = node.ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=[account]))
    assert (reply.results[0].code, reply.results[0].field) == (pb.EXISTS_WITH_DIFFERENT_FIELDS, "code")
    stored = node.account(account.id)
    assert (stored.status, stored.overdraft_limit, stored.code) == (pb.FROZEN, 99, 7)


def test_a_replayed_failure_names_the_same_field_as_the_first_answer(node: NodeHandle) -> None:
    debit, credit, other, usd = fresh("d"), fresh("c"), fresh("o"), fresh("usd")
    node.accounts(
        *(pb.Account(id=i, ledger=LEDGER, code=1) for i in (debit, credit, other)),
        pb.Account(id=usd, ledger=840, code=1),
    )
    hold = pb.Transfer(
        id="h", debit_account_id=debit, credit_account_id=credit, amount=10, ledger=LEDGER, code=1, flags=pb.PENDING
    )
    wrong_account = pb.Transfer(
        id="w", debit_account_id=debit, credit_account_id=other, pending_id="h", flags=pb.POST_PENDING
    )
    partial_void = pb.Transfer(id="v", debit_account_id=debit, pending_id="h", flags=pb.VOID_PENDING, amount=4)
    cross_ledger = pb.Transfer(id="x", debit_account_id=debit, credit_account_id=usd, amount=1, ledger=LEDGER, code=1)
    expected = [
        (pb.OK, ""),
        (pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS, "credit_account_id"),
        (pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS, "amount"),
        (pb.ACCOUNTS_MUST_HAVE_SAME_LEDGER, "ledger"),
    ]
    first = node.transfers(hold, wrong_account, partial_void, cross_ledger)
    assert [(r.code, r.field) for r in first] == expected
    again = node.transfers(hold, wrong_account, partial_void, cross_ledger)
    assert [(r.code, r.field) for r in again] == [(pb.EXISTS, ""), *expected[1:]]
