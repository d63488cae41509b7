"""Slot-local records (node/records.py) on a real router and two nodes: a commit's writes and
transfers apply all together or not at all, versions guard concurrent writers, scans page
through every slot, and only the business services may write them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from clients.ledger import (
    Account,
    AccountFlags,
    Commit,
    LedgerClient,
    LedgerError,
    ResultCode,
    Transfer,
    Write,
)
from clients.records import CommitFailed, Conflict, OtherRolesRecord, Put, Records
from cluster.commands import LocalCluster
from proto import ledger_pb2 as pb, ledger_pb2_grpc
from router.slots import slot_of
from tests.conftest import channel, fresh

CNY = 156


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = LocalCluster(str(tmp_path_factory.mktemp("records")), nodes=2, port=0, replicas=2).start()
    yield running
    running.stop()


def run(scenario: object) -> None:
    asyncio.run(scenario)  # type: ignore[arg-type]


async def connect(cluster: LocalCluster, via_router: bool = False) -> LedgerClient:
    return await LedgerClient.connect(cluster.address, via_router=via_router, tls_name="lending")


async def customer(ledger: LedgerClient, funded: int = 0) -> str:
    """A customer's tag with a deposit (holding `funded`) and a loan account in its slot."""
    tag = "{" + fresh("c") + "}"
    results = await ledger.create_accounts(
        [
            Account(f"{tag}:deposit", CNY, 2001, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
            Account(f"{tag}:loan", CNY, 1301),
        ]
    )
    assert [r.code for r in results] == [ResultCode.OK, ResultCode.OK]
    if funded:
        [moved] = await ledger.create_transfers(
            [Transfer(f"fund-{tag}", f"{tag}:loan", f"{tag}:deposit", funded, CNY, 1)]
        )
        assert moved.code is ResultCode.OK
    return tag


@pytest.mark.parametrize("via_router", [False, True])
def test_a_commit_stores_the_record_and_moves_the_money_together(cluster: LocalCluster, via_router: bool) -> None:
    async def scenario() -> None:
        async with await connect(cluster, via_router) as ledger:
            tag = await customer(ledger)
            draw = Transfer(f"d-{tag}", f"{tag}:loan", f"{tag}:deposit", 5_000, CNY, 1)
            commit = Commit([Write("loan", f"{tag}:L1", b"active")], [draw])
            [result] = await ledger.commit_records([commit])
            assert result.code is ResultCode.OK, result
            [record] = await ledger.lookup_records([("loan", f"{tag}:L1")])
            assert record is not None
            assert (record.value, record.version) == (b"active", 1)
            assert record.updated_by == "spiffe://yunkai/lending/lending"
            assert record.timestamp == result.timestamp
            deposit, _loan = await ledger.lookup_accounts([f"{tag}:deposit", f"{tag}:loan"])
            assert deposit is not None and deposit.balance == 5_000
            # The next write names the version it read; the same transfer again moves nothing.
            again = Commit([Write("loan", f"{tag}:L1", b"repaid", expected_version=1)], [draw])
            [result] = await ledger.commit_records([again])
            assert result.code is ResultCode.OK, result
            [record] = await ledger.lookup_records([("loan", f"{tag}:L1")])
            assert record is not None and (record.value, record.version) == (b"repaid", 2)
            [deposit] = await ledger.lookup_accounts([f"{tag}:deposit"])
            assert deposit is not None and deposit.balance == 5_000
            assert await ledger.lookup_records([("loan", f"{tag}:L2"), ("line", f"{tag}:L1")]) == [None, None]

    run(scenario())


def test_a_stale_version_or_a_failing_transfer_applies_nothing(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        async with await connect(cluster) as ledger:
            tag = await customer(ledger, funded=1_000)
            [created] = await ledger.commit_records([Commit([Write("loan", f"{tag}:L1", b"v1")])])
            assert created.code is ResultCode.OK
            pay = Transfer(f"p-{tag}", f"{tag}:deposit", f"{tag}:loan", 600, CNY, 2)
            # Two writers read version 1; the second to commit finds version 2 and changes nothing.
            first, second = await ledger.commit_records(
                [
                    Commit([Write("loan", f"{tag}:L1", b"first", 1)], [pay]),
                    Commit(
                        [Write("loan", f"{tag}:L1", b"second", 1)],
                        [Transfer(f"q-{tag}", f"{tag}:deposit", f"{tag}:loan", 100, CNY, 2)],
                    ),
                ]
            )
            assert first.code is ResultCode.OK
            assert (second.code, second.field) == (ResultCode.RECORD_VERSION_MISMATCH, "writes[0]")
            # A record that must not exist yet, but does.
            [exists] = await ledger.commit_records([Commit([Write("loan", f"{tag}:L1", b"new")])])
            assert (exists.code, exists.field) == (ResultCode.RECORD_VERSION_MISMATCH, "writes[0]")
            # The second transfer would overdraw the deposit (400 left): the first is not made either.
            small = Transfer(f"s-{tag}", f"{tag}:deposit", f"{tag}:loan", 100, CNY, 2)
            big = Transfer(f"b-{tag}", f"{tag}:deposit", f"{tag}:loan", 1_000, CNY, 2)
            [refused] = await ledger.commit_records(
                [Commit([Write("loan", f"{tag}:L1", b"third", 2), Write("line", f"{tag}:X", b"x")], [small, big])]
            )
            assert (refused.code, refused.field) == (ResultCode.EXCEEDS_CREDITS, "transfers[1]")
            [record, line] = await ledger.lookup_records([("loan", f"{tag}:L1"), ("line", f"{tag}:X")])
            assert record is not None and (record.value, record.version) == (b"first", 2)
            assert line is None
            [deposit] = await ledger.lookup_accounts([f"{tag}:deposit"])
            assert deposit is not None and deposit.balance == 400
            # Nothing was journaled for the refused commit: its ids are free, and the small one passes now.
            assert await ledger.lookup_transfers([(f"{tag}:deposit", small.id), (f"{tag}:deposit", big.id)]) == [
                None,
                None,
            ]
            [passed] = await ledger.create_transfers([small])
            assert passed.code is ResultCode.OK

    run(scenario())


def test_a_commit_opens_the_accounts_it_names_with_its_money_and_a_refused_one_opens_none(
    cluster: LocalCluster,
) -> None:
    async def scenario() -> None:
        async with await connect(cluster) as ledger:
            tag = await customer(ledger, funded=1_000)  # its deposit and loan are there already
            fee = Account(f"{tag}:fee", CNY, 1221)
            income = Account(f"{tag}:income", CNY, 6051)
            deposit_again = Account(f"{tag}:deposit", CNY, 2001, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
            charge = Transfer(f"f-{tag}", f"{tag}:fee", f"{tag}:income", 300, CNY, 3)
            pay = Transfer(f"pf-{tag}", f"{tag}:deposit", f"{tag}:fee", 300, CNY, 4)
            # The deposit named with other flags: refused whole, nothing opened, nothing moved.
            loose = Account(f"{tag}:deposit", CNY, 2001)
            [refused] = await ledger.commit_records(
                [Commit([Write("loan", f"{tag}:L1", b"charged")], [charge, pay], [fee, income, loose])]
            )
            assert (refused.code, refused.field) == (ResultCode.EXISTS_WITH_DIFFERENT_FIELDS, "accounts[2].flags")
            assert await ledger.lookup_accounts([fee.id, income.id]) == [None, None]
            # The same with the deposit as it is: the accounts open, the money moves.
            [result] = await ledger.commit_records(
                [Commit([Write("loan", f"{tag}:L1", b"charged")], [charge, pay], [fee, income, deposit_again])]
            )
            assert result.code is ResultCode.OK, result
            fee_held, income_held, deposit = await ledger.lookup_accounts([fee.id, income.id, f"{tag}:deposit"])
            assert fee_held is not None and income_held is not None and deposit is not None
            assert (fee_held.code, fee_held.debits_posted, fee_held.credits_posted) == (1221, 300, 300)
            assert income_held.balance == 300 and deposit.balance == 700
            assert fee_held.created_by == "spiffe://yunkai/lending/lending"
            assert fee_held.timestamp < income_held.timestamp < result.timestamp
            # A commit whose transfer is refused opens none of its accounts.
            late = Account(f"{tag}:late", CNY, 1222)
            too_much = Transfer(f"t-{tag}", f"{tag}:deposit", f"{tag}:late", 5_000, CNY, 4)
            [refused] = await ledger.commit_records([Commit([Write("loan", f"{tag}:L2", b"x")], [too_much], [late])])
            assert (refused.code, refused.field) == (ResultCode.EXCEEDS_CREDITS, "transfers[0]")
            assert await ledger.lookup_accounts([late.id]) == [None]
            # A commit of records and accounts alone opens them.
            [opened] = await ledger.commit_records([Commit([Write("loan", f"{tag}:L3", b"y")], [], [late])])
            assert opened.code is ResultCode.OK, opened
            [late_held] = await ledger.lookup_accounts([late.id])
            assert late_held is not None and late_held.code == 1222

    run(scenario())


def test_everything_a_commit_touches_is_in_its_slot(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        async with await connect(cluster) as ledger:
            tag, other = await customer(ledger, funded=100), await customer(ledger)
            across = Transfer(f"x-{tag}", f"{tag}:deposit", f"{other}:deposit", 10, CNY, 2)
            results = await ledger.commit_records(
                [
                    Commit([Write("loan", f"{tag}:L1", b"v")], [across]),
                    Commit([Write("loan", f"{tag}:L2", b"v"), Write("loan", f"{other}:L2", b"v")]),
                    Commit([Write("loan", f"{tag}:bad id", b"v")]),
                    Commit([Write("loan", f"{tag}:L3", b"v")], [], [Account(f"{other}:fee", CNY, 1221)]),
                    Commit([Write("loan", f"{tag}:L4", b"v")], [], [Account(f"{tag}:fee", 0, 1221)]),
                ]
            )
            assert [(r.code, r.field) for r in results] == [
                (ResultCode.NOT_IN_COMMIT_SLOT, "transfers[0].credit_account_id"),
                (ResultCode.NOT_IN_COMMIT_SLOT, "writes[1].record.key"),
                (ResultCode.ID_INVALID, "writes[0].record.key"),
                (ResultCode.NOT_IN_COMMIT_SLOT, "accounts[0].id"),
                (ResultCode.LEDGER_MUST_NOT_BE_ZERO, ""),
            ]
            found = await ledger.lookup_records([("loan", f"{tag}:L1"), ("loan", f"{tag}:L2"), ("loan", f"{other}:L2")])
            assert found == [None, None, None]
            assert await ledger.lookup_accounts([f"{other}:fee", f"{tag}:fee"]) == [None, None]
            [deposit] = await ledger.lookup_accounts([f"{tag}:deposit"])
            assert deposit is not None and deposit.balance == 100

    run(scenario())


@pytest.mark.parametrize(
    ("commit", "reason"),
    [
        (pb.Commit(), "commits[0].writes: 0 writes; a commit has 1 to 64"),
        (
            pb.Commit(writes=[pb.RecordWrite(record=pb.Record(kind="Loan", key="{c1}:L"))]),
            "commits[0].writes[0].record.kind: 'Loan' is not 1-32 of [a-z0-9_-]",
        ),
        (
            pb.Commit(writes=[pb.RecordWrite(record=pb.Record(kind="loan", key="{c1}:L", version=3))]),
            "commits[0].writes[0].record.version: set by the ledger, not the caller",
        ),
        (
            pb.Commit(writes=[pb.RecordWrite(record=pb.Record(kind="loan", key="{c1}:L", value=b"x" * 65_537))]),
            "commits[0].writes[0].record.value: 65537 bytes, more than 65536",
        ),
        (
            pb.Commit(
                writes=[pb.RecordWrite(record=pb.Record(kind="loan", key="{c1}:L"))],
                transfers=[pb.Transfer(id="t", debit_account_id="{c1}:a", amount=1, ledger=1, code=1)],
            ),
            "commits[0].transfers[0].credit_account_id: a commit's transfers name both accounts",
        ),
        (
            pb.Commit(
                writes=[pb.RecordWrite(record=pb.Record(kind="loan", key="{c1}:L"))] * 2,
            ),
            "commits[0].writes[1]: the commit writes loan '{c1}:L' twice",
        ),
        (
            pb.Commit(
                writes=[pb.RecordWrite(record=pb.Record(kind="loan", key="{c1}:L"))],
                accounts=[pb.Account(id="{c1}:a", ledger=1, code=1, credits_posted=5)],
            ),
            "commits[0].accounts[0].credits_posted: a new account starts at zero; balances change only by transfers",
        ),
        (
            pb.Commit(
                writes=[pb.RecordWrite(record=pb.Record(kind="loan", key="{c1}:L"))],
                accounts=[pb.Account(id=f"{{c1}}:a{i}", ledger=1, code=1) for i in range(65)],
            ),
            "commits[0].accounts: 65 accounts; a commit opens at most 64",
        ),
    ],
)
def test_a_malformed_commit_is_refused_whole_naming_the_field(
    cluster: LocalCluster, commit: pb.Commit, reason: str
) -> None:
    with channel(cluster.address, "lending") as to_router:
        stub = ledger_pb2_grpc.LedgerStub(to_router)
        with pytest.raises(grpc.RpcError) as refused:
            stub.CommitRecords(pb.CommitRecordsRequest(commits=[commit]), timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == reason


def test_a_scan_pages_through_every_slot(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        async with await connect(cluster) as ledger:
            kind = fresh("scan")
            keys = sorted(f"{{{fresh('s')}}}:r" for _ in range(40))
            results = await ledger.commit_records([Commit([Write(kind, key, key.encode())]) for key in keys])
            assert {r.code for r in results} == {ResultCode.OK}
            seen = [r async for page in ledger.scan_records(kind) for r in page]
            assert sorted(r.key for r in seen) == keys
            assert all(r.value == r.key.encode() and r.version == 1 for r in seen)
            slots_total = await ledger.slots_total()
            # Pages of one record each: the node says there is more, and from where.
            slot = slot_of(keys[0], slots_total)
            with channel(cluster.address, "lending") as to_router:
                stub = ledger_pb2_grpc.LedgerStub(to_router)
                more = stub.CommitRecords(
                    pb.CommitRecordsRequest(
                        commits=[
                            pb.Commit(
                                writes=[
                                    pb.RecordWrite(
                                        record=pb.Record(kind=kind, key=keys[0][: keys[0].index("}") + 1] + ":z")
                                    )
                                ]
                            )
                        ]
                    ),
                    timeout=10,
                )
                assert more.results[0].code == pb.OK
                first = stub.ScanRecords(
                    pb.ScanRecordsRequest(scans=[pb.RecordScan(slot=slot, kind=kind, limit=1)]), timeout=10
                )
                [page] = first.results
                assert (page.code, len(page.records), page.more, page.next_after) == (pb.OK, 1, True, keys[0])
                rest = stub.ScanRecords(
                    pb.ScanRecordsRequest(scans=[pb.RecordScan(slot=slot, kind=kind, after=page.next_after)]),
                    timeout=10,
                )
                [page] = rest.results
                assert page.more is False
                assert keys[0] not in [r.key for r in page.records]
                assert any(r.key.endswith(":z") for r in page.records)
                # One customer's records: those whose key starts with its tag.
                tag = keys[0][: keys[0].index("}") + 1]
                mine = stub.ScanRecords(
                    pb.ScanRecordsRequest(scans=[pb.RecordScan(slot=slot, kind=kind, prefix=tag)]), timeout=10
                )
                assert [r.key for r in mine.results[0].records] == [keys[0], f"{tag}:z"]
                # The SDK's scan from a key on (the webhook dispatcher's cursor), within a prefix.
                later = [r.key async for page in ledger.scan_records(kind, [slot], tag, after=keys[0]) for r in page]
                assert later == [f"{tag}:z"]
                assert [r.key async for page in ledger.scan_records(kind, [slot], tag, after=tag) for r in page] == [
                    keys[0],
                    f"{tag}:z",
                ]
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ScanRecords(
                        pb.ScanRecordsRequest(scans=[pb.RecordScan(slot=slots_total, kind=kind)]), timeout=10
                    )
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert refused.value.details() == f"scans[0].slot: {slots_total} is outside 0..{slots_total - 1}"

    run(scenario())


def test_only_the_business_services_write_records(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        async with await LedgerClient.connect(cluster.address, via_router=True, tls_name="service") as ledger:
            with pytest.raises(LedgerError) as refused:
                await ledger.commit_records([Commit([Write("loan", "{c1}:L1", b"forged")])])
            assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
        async with await LedgerClient.connect(cluster.address, via_router=True, tls_name="operator") as ledger:
            assert await ledger.lookup_records([("loan", "{c1}:L1")]) == [None]  # operators read

    run(scenario())


def test_a_commit_sent_again_after_it_was_applied_is_recognised_not_refused(cluster: LocalCluster) -> None:
    """The routing core sends a commit again when a node's answer was lost (or WRONG_SLOT left
    its outcome to the new primary): clients/records.py reads the records back and takes a first
    attempt that stands as written for this commit's own."""

    async def scenario() -> None:
        async with await connect(cluster) as ledger:
            tag = await customer(ledger, funded=1_000)
            records = Records(ledger, "rt")
            pay = Transfer(f"p-{tag}", f"{tag}:deposit", f"{tag}:loan", 300, CNY, 2)
            once = [Put("loan", f"{tag}:L1", b"paid", 0)]
            await records.commit(once, [pay])
            await records.commit(once, [pay])  # as if the first answer were lost: applied once, answered OK
            [deposit] = await ledger.lookup_accounts([f"{tag}:deposit"])
            assert deposit is not None and deposit.balance == 700
            with pytest.raises(Conflict):  # another writer's value at that version is a conflict
                await records.commit([Put("loan", f"{tag}:L1", b"other", 0)])
            with pytest.raises(CommitFailed) as failed:
                big = Transfer(f"b-{tag}", f"{tag}:deposit", f"{tag}:loan", 5_000, CNY, 2)
                await records.commit([Put("loan", f"{tag}:L2", b"x", 0)], [big])
            assert (failed.value.code, failed.value.field) == (ResultCode.EXCEEDS_CREDITS, "transfers[0]")

    run(scenario())


def test_commits_weighing_more_than_a_node_queues_are_refused_not_left_busy(cluster: LocalCluster) -> None:
    transfers = [
        pb.Transfer(id=f"t{i}", debit_account_id="{w}:a", credit_account_id="{w}:b", amount=1, ledger=1, code=1)
        for i in range(1_024)
    ]
    commits = [
        pb.Commit(writes=[pb.RecordWrite(record=pb.Record(kind="w", key=f"{{w}}:{n}"))], transfers=transfers)
        for n in range(65)
    ]
    with channel(cluster.address, "lending") as to_router:
        stub = ledger_pb2_grpc.LedgerStub(to_router)
        with pytest.raises(grpc.RpcError) as refused:
            stub.CommitRecords(pb.CommitRecordsRequest(commits=commits), timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "65 commits weigh 66625 events" in str(refused.value.details())


def test_a_record_is_changed_only_by_callers_of_the_role_that_wrote_it(cluster: LocalCluster) -> None:
    """Lending's records are lending's and risk's are risk's, whatever their kinds say: a caller
    of another role that names the right version is still refused, and nothing changes."""

    async def scenario() -> None:
        async with (
            await connect(cluster) as as_lending,
            await LedgerClient.connect(cluster.address, tls_name="risk") as as_risk,
        ):
            key = "{" + fresh("own") + "}:L1"
            lending, risk = Records(as_lending, "own"), Records(as_risk, "own")
            await lending.commit([Put("loan", key, b"lent", 0)])
            [refused] = await as_risk.commit_records([Commit([Write("own-loan", key, b"taken", 1)])])
            assert (refused.code, refused.field) == (ResultCode.RECORD_OF_ANOTHER_ROLE, "writes[0]")
            with pytest.raises(OtherRolesRecord):
                await risk.commit([Put("loan", key, b"taken", 1)])
            [record] = await as_lending.lookup_records([("own-loan", key)])
            assert record is not None and (record.value, record.version) == (b"lent", 1)
            await lending.commit([Put("loan", key, b"repaid", 1)])  # its own role still writes it
            await risk.commit([Put("decision", key, b"approve", 0)])  # a record risk makes is risk's
            with pytest.raises(OtherRolesRecord):
                await lending.commit([Put("decision", key, b"decline", 1)])

    run(scenario())
