"""Sessions (serving/session.py): many ledger calls on one stream, each checked, limited and
audited as the unary call it carries; the SDK's calls to nodes travel on them.

Real node and router processes with mutual TLS (the session's CA, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.ledger import Account, LedgerClient, ResultCode, Transfer
from cluster.commands import LocalCluster
from cluster.local import NodeProcess
from proto import contract, ledger_pb2 as pb, node_pb2, session_pb2
from serving import session as session_module
from serving.authz import RETRY_AFTER_METADATA
from serving.session import Session, SessionStub, Unsupported, session_method
from tests.conftest import aio_channel, channel, fresh
from tests.test_monitoring import free_port_block

CNY = 156
SESSION = session_method(contract.LEDGER_SERVICE)
CREATE_ACCOUNTS = f"/{contract.LEDGER_SERVICE}/CreateAccounts"
CREATE_TRANSFERS = f"/{contract.LEDGER_SERVICE}/CreateTransfers"
LOOKUP_ACCOUNTS = f"/{contract.LEDGER_SERVICE}/LookupAccounts"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    port = free_port_block(2)
    running = LocalCluster(str(tmp_path_factory.mktemp("session")), nodes=1, port=port, metrics=True).start()
    yield running
    running.stop()


def _session_calls(cluster: LocalCluster, method: str) -> float:
    """How many calls of `method` the node answered on sessions (its metrics)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{cluster.router_port + 101}/metrics", timeout=10).read().decode()
    wanted = f'yunkai_session_calls_total{{method="{method}"}} '
    return sum(float(line[len(wanted) :]) for line in text.splitlines() if line.startswith(wanted))


def _node(cluster: LocalCluster) -> NodeProcess:
    [node] = cluster.nodes
    return node


def _call(call_id: int, method: str, request: bytes, timeout_ms: int = 10_000) -> bytes:
    return session_pb2.Call(id=call_id, method=method, request=request, timeout_ms=timeout_ms).SerializeToString()


def _session(address: str, role: str, calls: list[bytes]) -> tuple[dict[int, session_pb2.Answer], grpc.RpcError | None]:
    """Send `calls` on one session as `role`; the answers by id, and the stream's error if it failed."""
    answers: dict[int, session_pb2.Answer] = {}
    with channel(address, role) as to_node:
        stream = to_node.stream_stream(SESSION)(iter(calls), timeout=20)
        try:
            for data in stream:
                answer = session_pb2.Answer.FromString(data)
                assert answer.id not in answers, answer
                answers[answer.id] = answer
        except grpc.RpcError as error:
            return answers, error
    return answers, None


def _accounts(*ids: str) -> bytes:
    return pb.CreateAccountsRequest(accounts=[pb.Account(id=i, ledger=CNY, code=1) for i in ids]).SerializeToString()


def _transfer(debit: str, credit: str, amount: int) -> bytes:
    move = pb.Transfer(id=fresh("t"), debit_account_id=debit, credit_account_id=credit, amount=amount)
    move.ledger, move.code = CNY, 1
    return pb.CreateTransfersRequest(transfers=[move]).SerializeToString()


def _balances(address: str, *ids: str) -> list[int]:
    answers, error = _session(
        address, "service", [_call(1, LOOKUP_ACCOUNTS, pb.LookupAccountsRequest(ids=ids).SerializeToString())]
    )
    assert error is None and answers[1].code == 0, (error, answers)
    found = pb.LookupAccountsResponse.FromString(answers[1].reply).results
    return [r.account.credits_posted - r.account.debits_posted for r in found]


def test_calls_on_one_stream_are_each_answered_by_id(cluster: LocalCluster) -> None:
    bank, customer = fresh("{s1}:bank"), fresh("{s1}:deposit")
    address = _node(cluster).address
    answers, error = _session(
        address,
        "service",
        [
            _call(7, CREATE_ACCOUNTS, _accounts(bank, customer)),
            _call(8, f"/{contract.LEDGER_SERVICE}/NoSuchMethod", b""),
            _call(9, "/yunkai.node.v1.Node/AssignSlots", b""),  # another service's method is not this session's
            _call(10, CREATE_ACCOUNTS, b"\xff\xff not a request"),
        ],
    )
    assert error is None
    assert sorted(answers) == [7, 8, 9, 10]
    created = pb.CreateAccountsResponse.FromString(answers[7].reply).results
    assert answers[7].code == 0 and [r.code for r in created] == [pb.OK, pb.OK]
    for unknown in (8, 9):
        assert answers[unknown].code == grpc.StatusCode.UNIMPLEMENTED.value[0]
        assert "not a unary method of yunkai.ledger.v1.Ledger" in answers[unknown].detail
    assert answers[10].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a valid CreateAccountsRequest" in answers[10].detail

    answers, error = _session(address, "service", [_call(1, CREATE_TRANSFERS, _transfer(bank, customer, 500))])
    assert error is None and answers[1].code == 0
    [moved] = pb.CreateTransfersResponse.FromString(answers[1].reply).results
    assert moved.code == pb.OK
    assert _balances(address, bank, customer) == [-500, 500]


def test_a_broken_session_ends_invalid_and_the_node_serves_on(cluster: LocalCluster) -> None:
    address = _node(cluster).address
    lookup = pb.LookupAccountsRequest(ids=["nobody"]).SerializeToString()
    answers, error = _session(address, "service", [_call(1, LOOKUP_ACCOUNTS, lookup), b"\xff\xff\xff"])
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a Call" in str(error.details())
    answers, error = _session(address, "service", [_call(2, LOOKUP_ACCOUNTS, lookup)])
    assert error is None and answers[2].code == 0


def test_each_call_is_checked_as_itself_and_audited(cluster: LocalCluster) -> None:
    node = _node(cluster)
    bank, customer = fresh("{s2}:bank"), fresh("{s2}:deposit")
    answers, _ = _session(node.address, "service", [_call(1, CREATE_ACCOUNTS, _accounts(bank, customer))])
    assert answers[1].code == 0

    # An operator may open a session (it reads), but not move money on it.
    theft = _transfer(bank, customer, 900)
    answers, error = _session(
        node.address,
        "operator",
        [
            _call(1, CREATE_TRANSFERS, theft),
            _call(2, LOOKUP_ACCOUNTS, pb.LookupAccountsRequest(ids=[bank]).SerializeToString()),
        ],
    )
    assert error is None
    assert answers[1].code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "may not call /yunkai.ledger.v1.Ledger/CreateTransfers" in answers[1].detail
    assert answers[2].code == 0
    assert _balances(node.address, bank, customer) == [0, 0]

    # A partner may not open one at all.
    _, error = _session(node.address, "partner", [_call(1, LOOKUP_ACCOUNTS, b"")])
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED

    entries = [json.loads(line) for line in (Path(node.data_dir) / "audit.log").read_text().splitlines()]
    refused = [e for e in entries if e["method"] == CREATE_TRANSFERS and e["status"] == "PERMISSION_DENIED"]
    assert refused and refused[-1]["caller"] == "spiffe://yunkai/operator/operator"
    shut_out = [e for e in entries if e["method"] == SESSION and e["status"] == "PERMISSION_DENIED"]
    assert shut_out and shut_out[-1]["caller"] == "spiffe://yunkai/partner/partner"  # the stream's refusal
    opened = [e for e in entries if e["method"] == CREATE_ACCOUNTS and e["status"] == "OK"]
    assert any(f"{bank}" in e["ids"] for e in opened), opened[-3:]


def test_each_call_takes_a_token_of_the_callers_rate(tmp_path: Path) -> None:
    node = NodeProcess(str(tmp_path / "n"), ["--caller-calls-per-s", "2", "--caller-burst", "3"]).start()
    try:
        lookup = pb.LookupAccountsRequest(ids=["nobody"]).SerializeToString()
        answers, error = _session(node.address, "service", [_call(i, LOOKUP_ACCOUNTS, lookup) for i in range(1, 9)])
        assert error is None and len(answers) == 8
        slowed = [a for a in answers.values() if a.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]
        assert slowed, "eight calls at once on one session, with a burst of three (the stream took one)"
        hint = {p.key: p.value for p in slowed[0].trailing}
        assert int(hint[RETRY_AFTER_METADATA]) > 0
    finally:
        node.stop()


def test_the_sdk_sends_on_sessions_and_a_server_without_them_is_called_unary(cluster: LocalCluster) -> None:
    async def run() -> None:
        node = _node(cluster)
        bank, customer = fresh("{s3}:bank"), fresh("{s3}:deposit")
        before = _session_calls(cluster, CREATE_TRANSFERS)
        async with await LedgerClient.connect(cluster.address) as ledger:
            results = await ledger.create_accounts(
                [Account(bank, ledger=CNY, code=1), Account(customer, ledger=CNY, code=1)]
            )
            assert all(r.code is ResultCode.OK for r in results)
            transfers = [Transfer(fresh("t"), bank, customer, 100, CNY, 1) for _ in range(50)]
            moved = await asyncio.gather(*(ledger.create_transfers([t]) for t in transfers))
            assert all(each[0].code is ResultCode.OK for each in moved)
            [_, found] = await ledger.lookup_accounts([bank, customer])
            assert found is not None and found.balance == 5_000
        # The SDK's transfers reached the node on its session (merged into fewer requests).
        assert 1 <= _session_calls(cluster, CREATE_TRANSFERS) - before <= 50

        async with aio_channel(cluster.address, "service") as to_router:  # a router offers no sessions
            session = Session(to_router, contract.LEDGER_SERVICE)
            with pytest.raises(Unsupported):
                await session.call(LOOKUP_ACCOUNTS, pb.LookupAccountsRequest(ids=[bank]).SerializeToString(), 5)
            assert not session.supported
            await session.close()
        async with aio_channel(node.address, "service") as to_node:
            session = Session(to_node, contract.LEDGER_SERVICE)
            replies = await asyncio.gather(
                *(
                    session.call(LOOKUP_ACCOUNTS, pb.LookupAccountsRequest(ids=[i]).SerializeToString(), 5)
                    for i in (bank, customer)
                )
            )
            balances = [pb.LookupAccountsResponse.FromString(r).results[0].account.credits_posted for r in replies]
            assert balances == [0, 5_000]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await session.call(CREATE_ACCOUNTS, b"\xff\xff", 5)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert session.supported
            await session.close()

    asyncio.run(run())


def test_a_stub_on_sessions_answers_as_the_generated_one_refusals_included(cluster: LocalCluster) -> None:
    node_service = node_pb2.DESCRIPTOR.services_by_name["Node"].full_name
    get_slots = f"/{node_service}/GetSlots"

    async def run() -> None:
        node = _node(cluster)
        before = _session_calls(cluster, get_slots)
        async with aio_channel(node.address, "router") as as_router:
            stub = SessionStub(as_router, node_service)
            table = await stub.GetSlots(node_pb2.GetSlotsRequest(summary=True), timeout=5)
            assert table.node_id
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # the router may open one, not call this
                await stub.ApplyCreditLegs(node_pb2.ApplyCreditLegsRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(AttributeError):
                stub.Replicate  # a streaming method is not a stub's call  # noqa: B018
            await stub.close()
        assert _session_calls(cluster, get_slots) == before + 1
        # A service may call no method of the Node service: the stream is refused, and so is
        # each call it carried, as PERMISSION_DENIED (not a retryable UNAVAILABLE).
        async with aio_channel(node.address, "service") as as_service:
            stub = SessionStub(as_service, node_service)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetSlots(node_pb2.GetSlotsRequest(summary=True), timeout=5)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            await stub.close()

    asyncio.run(run())


def test_a_caller_at_its_stream_cap_has_its_calls_made_unary(tmp_path: Path) -> None:
    node = NodeProcess(str(tmp_path / "n"), ["--caller-streams-max", "1"]).start()
    lookup = pb.LookupAccountsRequest(ids=["nobody"])

    async def run() -> None:
        async with aio_channel(node.address, "service") as first, aio_channel(node.address, "service") as second:
            holding = Session(first, contract.LEDGER_SERVICE)
            await holding.call(LOOKUP_ACCOUNTS, lookup.SerializeToString(), 5)  # its stream is the one allowed
            capped = Session(second, contract.LEDGER_SERVICE)
            with pytest.raises(Unsupported):
                await capped.call(LOOKUP_ACCOUNTS, lookup.SerializeToString(), 5)
            assert capped.supported  # a later call tries a session again
            stub = SessionStub(second, contract.LEDGER_SERVICE)
            reply = await stub.LookupAccounts(lookup, timeout=5)  # answered, unary
            assert len(reply.results) == 1
            for each in (holding, capped):
                await each.close()
            await stub.close()

    try:
        asyncio.run(run())
    finally:
        node.stop()


def test_streams_are_retired_in_turn_and_a_closed_session_fails_what_it_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two streams a caller at most: a retired stream that did not end would shut the third out.
    node = NodeProcess(str(tmp_path / "n"), ["--caller-streams-max", "2"]).start()
    lookup = pb.LookupAccountsRequest(ids=["nobody"]).SerializeToString()
    monkeypatch.setattr(session_module, "STREAM_AGE_S_MAX", 0.0)  # every call retires the stream before it

    async def run() -> None:
        async with aio_channel(node.address, "service") as to_node:
            session = Session(to_node, contract.LEDGER_SERVICE)
            for _ in range(5):
                await session.call(LOOKUP_ACCOUNTS, lookup, 10)  # Unsupported if shut out
                await asyncio.sleep(0.2)
            # A node that stops answering (SIGSTOP): closing the session fails the call it holds
            # at once, UNAVAILABLE, rather than leaving it to its own deadline.
            assert node.process is not None
            node.process.send_signal(signal.SIGSTOP)
            try:
                held = asyncio.ensure_future(session.call(LOOKUP_ACCOUNTS, lookup, 120))
                await asyncio.sleep(0.3)
                await session.close()
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await held
                assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                node.process.send_signal(signal.SIGCONT)

    try:
        asyncio.run(run())
    finally:
        node.stop()
