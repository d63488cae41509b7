"""Bad input gets a clear gRPC error naming what is wrong; the node keeps serving and
nothing changes."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from proto import ledger_pb2 as pb
from tests.conftest import NodeHandle, fresh, start_node

LEDGER = 156


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHandle]:
    """A node with tiny limits, so that exceeding them is cheap."""
    handle = start_node(tmp_path_factory, "--batch-events-max", "10", "--queue-events-max", "8")
    yield handle
    handle.close()
    assert handle.process.stop() == 0


def open_funded(node: NodeHandle) -> tuple[str, str]:
    a, b = fresh("a"), fresh("b")
    node.accounts(pb.Account(id=a, ledger=LEDGER, code=1), pb.Account(id=b, ledger=LEDGER, code=1))
    return a, b


def balances(node: NodeHandle, *ids: str) -> list[tuple[int, int, int, int]]:
    out = []
    for i in ids:
        a = node.account(i)
        out.append((a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending))
    return out


def rpc_error(call: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=30)  # type: ignore[operator]
    return caught.value


def raw_call(node: NodeHandle, method: str, payload: bytes) -> grpc.RpcError:
    call = node.channel.unary_unary(
        f"/yunkai.ledger.v1.Ledger/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    return rpc_error(call, payload)


def test_garbage_bytes_are_refused_as_invalid_argument(node: NodeHandle) -> None:
    a, b = open_funded(node)
    for method in ("CreateTransfers", "CreateAccounts", "LookupAccounts", "ChangeAccounts"):
        error = raw_call(node, method, b"\xff\xff\xff\xff garbage")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid" in str(error.details())
    # A string that is not UTF-8 (possible only on the wire) is refused the same way.
    bad_id = b"\x0a\x04" + b"\x0a\x02\xc3\x28"  # transfers[0].id = invalid UTF-8
    error = raw_call(node, "CreateTransfers", bad_id)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        node.transfers(pb.Transfer(id="ok", debit_account_id=a, credit_account_id=b, amount=1, ledger=LEDGER, code=1))[
            0
        ].code
        == pb.OK
    )


def test_a_malformed_event_refuses_the_whole_batch_and_changes_nothing(node: NodeHandle) -> None:
    a, b = open_funded(node)
    good = pb.Transfer(id="g", debit_account_id=a, credit_account_id=b, amount=5, ledger=LEDGER, code=1)
    cases = [
        (
            pb.Transfer(id="u", debit_account_id=a, credit_account_id=b, amount=5, ledger=LEDGER, code=1, flags=64),
            "transfers[1].flags: unknown bits 0x40",
        ),
        (
            pb.Transfer(
                id="m",
                debit_account_id=a,
                credit_account_id=b,
                amount=5,
                ledger=LEDGER,
                code=1,
                flags=pb.PENDING | pb.VOID_PENDING,
            ),
            "mutually exclusive",
        ),
        (
            pb.Transfer(id="s", debit_account_id=a, credit_account_id=b, amount=5, ledger=LEDGER, code=1, state=1),
            "transfers[1].state: set by the ledger",
        ),
        (
            pb.Transfer(id="t", debit_account_id=a, credit_account_id=b, amount=5, ledger=LEDGER, code=1, timeout_s=5),
            "timeout_s",
        ),
    ]
    for bad, message in cases:
        error = rpc_error(node.ledger.CreateTransfers, pb.CreateTransfersRequest(transfers=[good, bad]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in str(error.details())
    assert balances(node, a, b) == [(0, 0, 0, 0), (0, 0, 0, 0)]
    assert node.transfer(a, "g").code == pb.TRANSFER_NOT_FOUND


def test_unknown_enum_values_and_bad_account_fields_are_named(node: NodeHandle) -> None:
    a, _ = open_funded(node)
    error = rpc_error(
        node.ledger.ChangeAccounts, pb.ChangeAccountsRequest(changes=[pb.AccountChange(id="c", account_id=a, kind=99)])
    )  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "changes[0].kind" in str(error.details())
    for account, message in [
        (pb.Account(id=fresh("x"), ledger=1, code=1, flags=1 << 9), "accounts[0].flags: unknown bits"),
        (pb.Account(id=fresh("x"), ledger=1, code=1, flags=3), "mutually exclusive"),
        (
            pb.Account(id=fresh("x"), ledger=1, code=1, credits_posted=100),
            "accounts[0].credits_posted: a new account starts at zero",
        ),
        (pb.Account(id=fresh("x"), ledger=1, code=1, overdraft_limit=-1), "overdraft_limit"),
    ]:
        error = rpc_error(node.ledger.CreateAccounts, pb.CreateAccountsRequest(accounts=[account]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in str(error.details())
        assert node.ledger.LookupAccounts(pb.LookupAccountsRequest(ids=[account.id])).results[0].code == (
            pb.ACCOUNT_NOT_FOUND
        )
    assert node.account(a).status == pb.ACTIVE


def test_empty_batches_are_refused(node: NodeHandle) -> None:
    for call, request, field in [
        (node.ledger.CreateTransfers, pb.CreateTransfersRequest(), "transfers"),
        (node.ledger.CreateAccounts, pb.CreateAccountsRequest(), "accounts"),
        (node.ledger.LookupAccounts, pb.LookupAccountsRequest(), "ids"),
        (node.ledger.LookupTransfers, pb.LookupTransfersRequest(), "keys"),
        (node.ledger.ChangeAccounts, pb.ChangeAccountsRequest(), "changes"),
    ]:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{field}: the batch is empty" in str(error.details())


def test_malformed_fences_are_refused(node: NodeHandle) -> None:
    a, b = open_funded(node)
    t = pb.Transfer(id="f", debit_account_id=a, credit_account_id=b, amount=1, ledger=LEDGER, code=1)
    error = rpc_error(
        node.ledger.CreateTransfers, pb.CreateTransfersRequest(transfers=[t], fence=pb.Fence(slots=[1, 2], epochs=[1]))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "2 slots but 1 epochs" in str(error.details())
    error = rpc_error(
        node.ledger.CreateTransfers, pb.CreateTransfersRequest(transfers=[t], fence=pb.Fence(slots=[99999], epochs=[1]))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not name slot" in str(error.details())
    assert balances(node, a) == [(0, 0, 0, 0)]


def test_oversize_batches_and_messages_are_refused(small: NodeHandle) -> None:
    a, b = open_funded(small)
    transfers = [
        pb.Transfer(id=f"o{i}", debit_account_id=a, credit_account_id=b, amount=1, ledger=LEDGER, code=1)
        for i in range(11)
    ]
    error = rpc_error(small.ledger.CreateTransfers, pb.CreateTransfersRequest(transfers=transfers))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "more than the limit of 10" in str(error.details())
    huge = pb.LookupAccountsRequest(ids=["x" * 64] * 300_000)  # ~20 MB, over the 16 MiB message limit
    error = rpc_error(small.ledger.LookupAccounts, huge)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert balances(small, a, b) == [(0, 0, 0, 0), (0, 0, 0, 0)]
    ok = small.transfers(transfers[0])
    assert ok[0].code == pb.OK


def test_a_full_commit_queue_answers_resource_exhausted_without_applying(small: NodeHandle) -> None:
    a, b = open_funded(small)
    transfers = [
        pb.Transfer(id=f"q{i}", debit_account_id=a, credit_account_id=b, amount=1, ledger=LEDGER, code=1)
        for i in range(9)
    ]  # within the batch limit (10), over the queue limit (8)
    error = rpc_error(small.ledger.CreateTransfers, pb.CreateTransfersRequest(transfers=transfers))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the limit is 8" in str(error.details())
    assert balances(small, a) == [(0, 0, 0, 0)]
    assert [r.code for r in small.transfers(*transfers[:8])] == [pb.OK] * 8
