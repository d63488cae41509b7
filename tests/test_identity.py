"""Every call has an identity: the attacks of issue 16, each refused (serving/tls.py, serving/authz.py).

The cluster here speaks mutual TLS with the session's CA (tests/conftest.py). Each test is
an attacker's attempt on loopback that worked before identities existed, and checks that it
is refused with the right status, that nothing changed, and that the server goes on serving.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clients.ledger import Account, LedgerClient, SyncLedgerClient
from cluster.commands import LocalCluster
from cluster.local import EtcdProcess, LendingProcess, NodeProcess, RouterProcess
from proto import (
    cluster_pb2,
    cluster_pb2_grpc,
    ledger_pb2 as pb,
    ledger_pb2_grpc,
    lending_pb2,
    lending_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
)
from serving import certs
from serving.audit import AuditLog
from serving.authz import ALLOWED, RETRY_AFTER_METADATA, Gate
from serving.tls import TLS_DIR_ENV, TlsError
from tests.conftest import channel, fresh, fresh_book, tls

CNY = 156


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = LocalCluster(str(tmp_path_factory.mktemp("identity")), nodes=2, port=0).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def victim(cluster: LocalCluster) -> tuple[str, str]:
    """A funded account and the thief's account, opened by a legitimate service."""
    account, thief = fresh("{victim}:deposit"), fresh("{thief}:deposit")
    with channel(cluster.address, "service") as to_router:
        ledger = ledger_pb2_grpc.LedgerStub(to_router)
        accounts = [pb.Account(id=a, ledger=CNY, code=1) for a in (account, thief, "{victim}:bank")]
        ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=accounts), timeout=10)
        funding = pb.Transfer(id=fresh("fund"), debit_account_id="{victim}:bank", credit_account_id=account)
        funding.amount, funding.ledger, funding.code = 100_000, CNY, 1
        [result] = ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=[funding]), timeout=10).results
        assert result.code == pb.OK
    return account, thief


def _theft(victim: tuple[str, str]) -> pb.CreateTransfersRequest:
    account, thief = victim
    move = pb.Transfer(id=fresh("theft"), debit_account_id=account, credit_account_id=thief, amount=100_000)
    move.ledger, move.code = CNY, 1
    return pb.CreateTransfersRequest(transfers=[move])


def _balance(cluster: LocalCluster, account: str) -> int:
    with channel(cluster.address, "service") as to_router:
        reply = ledger_pb2_grpc.LedgerStub(to_router).LookupAccounts(
            pb.LookupAccountsRequest(ids=[account]), timeout=10
        )
    found = reply.results[0].account
    return found.credits_posted - found.debits_posted


def _code(method: Callable[..., object], request: object) -> grpc.StatusCode:
    """The status `method(request)` is refused with (it must be refused)."""
    with pytest.raises(grpc.RpcError) as caught:
        method(request, timeout=5)
    return caught.value.code()  # type: ignore[no-any-return]


def _refusal(stream: Iterator[object]) -> grpc.StatusCode:
    """The status a server stream is refused with (it must be refused before its first message)."""
    with pytest.raises(grpc.RpcError) as caught:
        next(stream)
    return caught.value.code()  # type: ignore[no-any-return]


def test_a_caller_without_a_certificate_moves_no_money(cluster: LocalCluster, victim: tuple[str, str]) -> None:
    # Plaintext, and TLS trusting the CA but with no client certificate: mutual TLS refuses
    # the handshake, so no handler ever runs (the caller sees UNAVAILABLE).
    anonymous = grpc.ssl_channel_credentials(root_certificates=tls().ca)
    for attempt in (grpc.insecure_channel(cluster.address), grpc.secure_channel(cluster.address, anonymous)):
        with attempt:
            stub = ledger_pb2_grpc.LedgerStub(attempt)
            assert _code(stub.CreateTransfers, _theft(victim)) == grpc.StatusCode.UNAVAILABLE
    for node in cluster.nodes:
        with grpc.insecure_channel(node.address) as plain:
            stub = ledger_pb2_grpc.LedgerStub(plain)
            assert _code(stub.CreateTransfers, _theft(victim)) == grpc.StatusCode.UNAVAILABLE
    assert _balance(cluster, victim[0]) == 100_000


def _foreign_certificate(directory: Path) -> tuple[bytes, bytes]:
    """A certificate the cluster's CA signed, naming no yunkai identity (another system's)."""
    ca_key = serialization.load_pem_private_key((Path(tls().directory) / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(tls().ca)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payroll")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://payroll/app")]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem_key, cert.public_bytes(serialization.Encoding.PEM)


def test_a_certificate_without_a_yunkai_identity_is_unauthenticated(
    cluster: LocalCluster, victim: tuple[str, str], tmp_path: Path
) -> None:
    key, cert = _foreign_certificate(tmp_path)
    credentials = grpc.ssl_channel_credentials(root_certificates=tls().ca, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(cluster.address, credentials) as foreign:
        stub = ledger_pb2_grpc.LedgerStub(foreign)
        assert _code(stub.CreateTransfers, _theft(victim)) == grpc.StatusCode.UNAUTHENTICATED
    assert _balance(cluster, victim[0]) == 100_000


def test_a_partner_or_an_operator_cannot_move_money(cluster: LocalCluster, victim: tuple[str, str]) -> None:
    for role in ("partner", "operator", "scoring"):
        with channel(cluster.address, role) as wrong:
            stub = ledger_pb2_grpc.LedgerStub(wrong)
            assert _code(stub.CreateTransfers, _theft(victim)) == grpc.StatusCode.PERMISSION_DENIED
    assert _balance(cluster, victim[0]) == 100_000


def test_only_the_controller_changes_a_nodes_slots(cluster: LocalCluster) -> None:
    node = cluster.nodes[0]
    with channel(node.address, "router") as as_router:
        before = node_pb2_grpc.NodeStub(as_router).GetSlots(node_pb2.GetSlotsRequest(), timeout=10)
    wipe = node_pb2.AssignSlotsRequest()
    wipe.CopyFrom(node_pb2.AssignSlotsRequest(self_address=node.address))
    for role in ("partner", "service", "operator", "node"):
        with channel(node.address, role) as wrong:
            admin = node_pb2_grpc.NodeStub(wrong)
            assert _code(admin.AssignSlots, wipe) == grpc.StatusCode.PERMISSION_DENIED
            abort = node_pb2.AbortMoveRequest(migration_id="m", slot=0)
            assert _code(admin.AbortMove, abort) == grpc.StatusCode.PERMISSION_DENIED
    with channel(node.address, "router") as as_router:
        after = node_pb2_grpc.NodeStub(as_router).GetSlots(node_pb2.GetSlotsRequest(), timeout=10)
    assert [s.owned for s in after.slots] == [s.owned for s in before.slots]


def test_a_forged_credit_leg_from_a_non_node_is_refused_and_the_node_lives(
    cluster: LocalCluster, victim: tuple[str, str]
) -> None:
    account, _ = victim
    forged = node_pb2.ApplyCreditLegsRequest()
    leg = forged.legs.add(transfer_id="mint", debit_account_id="{nobody}:x", credit_account_id=account)
    leg.kind, leg.amount, leg.ledger = node_pb2.LEG_CREDIT, 5_000_000, CNY
    for node in cluster.nodes:
        for role in ("service", "router", "partner"):
            with channel(node.address, role) as wrong:
                stub = node_pb2_grpc.NodeStub(wrong)
                assert _code(stub.ApplyCreditLegs, forged) == grpc.StatusCode.PERMISSION_DENIED
    assert _balance(cluster, account) == 100_000


def test_a_rogue_node_cannot_be_added_but_by_an_operator(cluster: LocalCluster) -> None:
    with channel(cluster.address, "operator") as as_operator:
        version = cluster_pb2_grpc.ClusterStub(as_operator).GetShardMap(cluster_pb2.GetShardMapRequest(), timeout=5)
    for role in ("service", "partner", "node"):
        with channel(cluster.address, role) as wrong:
            admin = cluster_pb2_grpc.ClusterStub(wrong)
            rogue = cluster_pb2.AddNodeRequest(address="127.0.0.1:1")
            assert _code(admin.AddNode, rogue) == grpc.StatusCode.PERMISSION_DENIED
            assert _code(admin.Rebalance, cluster_pb2.RebalanceRequest()) == grpc.StatusCode.PERMISSION_DENIED
    with channel(cluster.address, "operator") as as_operator:
        after = cluster_pb2_grpc.ClusterStub(as_operator).GetShardMap(cluster_pb2.GetShardMapRequest(), timeout=5)
    assert after.version == version.version
    assert "127.0.0.1:1" not in {n.address for n in after.nodes}


def test_only_an_operator_publishes_a_product(tmp_path: Path, cluster: LocalCluster) -> None:
    lending = LendingProcess(str(tmp_path / "lending"), ["--router", cluster.address, "--book", fresh_book()]).start()
    try:
        with channel(lending.address, "service") as as_service:
            products = lending_pb2_grpc.ProductServiceStub(as_service)
            ref = lending_pb2.ProductRef(code="SME-X", version=1)
            assert _code(products.PublishProduct, ref) == grpc.StatusCode.PERMISSION_DENIED
            assert _code(products.RetireProduct, ref) == grpc.StatusCode.PERMISSION_DENIED
            listed = products.ListProducts(lending_pb2.ListProductsRequest(), timeout=5)
            assert list(listed.products) == []
    finally:
        lending.stop()


def test_the_table_names_every_method_of_every_service_and_nothing_else() -> None:
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    from proto import gateway_pb2, inference_pb2, risk_pb2

    modules = [pb, node_pb2, cluster_pb2, lending_pb2, risk_pb2, inference_pb2, gateway_pb2, health_pb2, reflection_pb2]
    served = {
        f"/{service.full_name}/{method.name}"
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(ALLOWED) == served
    assert all(ALLOWED[m] for m in ALLOWED), "a method nobody may call"


def test_reflection_is_served_only_when_asked(tmp_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    for flags, expect in (([], grpc.StatusCode.UNIMPLEMENTED), (["--reflection"], None)):
        node = NodeProcess(str(tmp_path / f"n{len(flags)}"), flags).start()
        try:
            with channel(node.address, "operator") as to_node:
                stub = reflection_pb2_grpc.ServerReflectionStub(to_node)
                if expect is None:
                    [reply] = list(stub.ServerReflectionInfo(iter([ask]), timeout=5))
                    names = {s.name for s in reply.list_services_response.service}
                    assert "yunkai.node.v1.Node" in names
                else:
                    assert _refusal(stub.ServerReflectionInfo(iter([ask]), timeout=5)) == expect
        finally:
            node.stop()


def test_a_server_without_certificates_refuses_to_start_unless_insecure(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != TLS_DIR_ENV}
    started = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "node", "--data-dir", str(tmp_path / "n"), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2
    assert "--tls-dir" in started.stderr and "--insecure" in started.stderr
    plain = NodeProcess(str(tmp_path / "p"), ["--insecure"])
    plain.env = {TLS_DIR_ENV: ""}
    plain.start()
    try:
        with grpc.insecure_channel(plain.address) as to_node:
            reply = ledger_pb2_grpc.LedgerStub(to_node).CreateAccounts(
                pb.CreateAccountsRequest(accounts=[pb.Account(id="plain", ledger=CNY, code=1)]), timeout=10
            )
            assert reply.results[0].code == pb.OK
    finally:
        plain.stop()
    assert "plaintext, no identities" in plain.log_tail(200)


def test_a_node_with_another_roles_certificate_refuses_to_start(tmp_path: Path) -> None:
    """A node speaks for its slots' accounts with its certificate: it must prove a node's identity."""
    node = [sys.executable, "-m", "cluster.cli", "node", "--data-dir", str(tmp_path / "n"), "--port", "0"]
    started = subprocess.run(
        [*node, "--tls-name", "router"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    assert "proves spiffe://yunkai/router/router, not a node's" in started.stderr, started.stderr


def test_the_sdk_without_certificates_says_what_to_do(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = str(Path(tls().directory) / "nowhere")
    monkeypatch.delenv(TLS_DIR_ENV)
    with pytest.raises(TlsError, match="--tls-dir"):
        asyncio.run(LedgerClient.connect(cluster.address))
    with pytest.raises(TlsError, match=r"not found.*yunkai certs"):
        asyncio.run(LedgerClient.connect(cluster.address, tls_dir=elsewhere))


def test_one_caller_over_its_rate_is_slowed_and_others_are_not(tmp_path: Path) -> None:
    node = NodeProcess(str(tmp_path / "n"), ["--caller-calls-per-s", "2", "--caller-burst", "3"]).start()
    try:
        lookup = pb.LookupAccountsRequest(ids=["nobody"])
        with channel(node.address, "service") as greedy:
            stub = ledger_pb2_grpc.LedgerStub(greedy)
            refused = None
            for _ in range(10):
                try:
                    stub.LookupAccounts(lookup, timeout=5)
                except grpc.RpcError as error:
                    refused = error
                    break
            assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            hint = dict(refused.trailing_metadata() or ())  # type: ignore[attr-defined]
            assert int(hint[RETRY_AFTER_METADATA]) > 0
        with channel(node.address, "operator") as other:
            ledger_pb2_grpc.LedgerStub(other).LookupAccounts(lookup, timeout=5)
        with channel(node.address, "router") as cluster_process:  # the cluster's own are not limited
            for _ in range(10):
                ledger_pb2_grpc.LedgerStub(cluster_process).LookupAccounts(lookup, timeout=5)
    finally:
        node.stop()


def test_a_flood_of_map_watches_is_capped_per_caller(tmp_path: Path) -> None:
    node = NodeProcess(str(tmp_path / "n"), ["--join"]).start()
    router = RouterProcess(str(tmp_path / "r"), ["--nodes", node.address, "--caller-streams-max", "3"])
    try:
        router.start()
        with channel(router.address, "service") as flood:
            stub = cluster_pb2_grpc.ClusterStub(flood)
            watches = [stub.WatchShardMap(cluster_pb2.WatchShardMapRequest(known_version=0)) for _ in range(3)]
            for watch in watches:
                next(watch)  # each is open and has sent the current map
            extra = stub.WatchShardMap(cluster_pb2.WatchShardMapRequest(known_version=0), timeout=5)
            assert _refusal(extra) == grpc.StatusCode.RESOURCE_EXHAUSTED
            watches[0].cancel()
            again = stub.WatchShardMap(cluster_pb2.WatchShardMapRequest(known_version=0), timeout=5)
            for _ in range(50):  # the cancelled stream is released once the server sees it go
                try:
                    next(again)
                    break
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    time.sleep(0.1)
                    again = stub.WatchShardMap(cluster_pb2.WatchShardMapRequest(known_version=0), timeout=5)
            else:
                pytest.fail("a closed watch did not free its place")
            for watch in watches[1:]:
                watch.cancel()
            again.cancel()
    finally:
        router.stop()
        node.stop()


def test_certificates_are_made_once_and_kept_private(tmp_path: Path) -> None:
    made = certs.init(str(tmp_path / "tls"), ["node7.bank"])
    assert {p.name for p in made} >= {"ca.pem", "ca.key", "node.pem", "node.key", "operator.pem"}
    assert certs.init(str(tmp_path / "tls")) == [], "a second init keeps what is there"
    assert oct((tmp_path / "tls").stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in made)
    lines = certs.show(str(tmp_path / "tls"))
    assert any("spiffe://yunkai/node/node " in line and "node7.bank" in line for line in lines)
    # A certificate of a role that only calls names no host: it cannot stand in for a server.
    assert any("spiffe://yunkai/operator/operator" in line and "localhost" not in line for line in lines)
    with pytest.raises(ValueError, match="taken"):
        certs.issue(str(tmp_path / "tls"), "node", "ca")
    with pytest.raises(ValueError, match="role"):
        certs.issue(str(tmp_path / "tls"), "admin", "x")


def test_money_moves_and_refusals_are_audited_and_tampering_is_found(
    cluster: LocalCluster, victim: tuple[str, str]
) -> None:
    with channel(cluster.address, "partner") as wrong:
        assert _code(ledger_pb2_grpc.LedgerStub(wrong).CreateTransfers, _theft(victim)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    path = Path(cluster.routers[0].data_dir) / "audit.log"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    funded = [e for e in entries if e["method"].endswith("/CreateTransfers") and e["status"] == "OK"]
    assert funded and funded[0]["caller"] == "spiffe://yunkai/service/service"
    assert any(i.startswith("{victim}:bank/fund") for i in funded[0]["ids"]), funded[0]
    denied = [e for e in entries if e["status"] == "PERMISSION_DENIED"]
    assert denied and denied[-1]["caller"] == "spiffe://yunkai/partner/partner"
    # The node that applied the funding audited it too, as the caller the router forwarded for.
    applied = [
        json.loads(line)
        for node in cluster.nodes
        for line in (Path(node.data_dir) / "audit.log").read_text().splitlines()
        if '"/yunkai.ledger.v1.Ledger/CreateTransfers"' in line
    ]
    assert any(e["caller"] == "spiffe://yunkai/service/service" and e["status"] == "OK" for e in applied)

    verify = [sys.executable, "-m", "cluster.cli", "audit", "verify"]
    assert subprocess.run([*verify, str(path)], capture_output=True, timeout=60).returncode == 0
    copy = path.with_name("tampered.log")
    lines = path.read_text().splitlines(keepends=True)
    edited = next(n for n, line in enumerate(lines) if '"status":"OK"' in line)  # someone hides a call's success
    lines[edited] = lines[edited].replace('"status":"OK"', '"status":"NOT_FOUND"', 1)
    copy.write_text("".join(lines))
    found = subprocess.run([*verify, str(copy)], capture_output=True, text=True, timeout=60)
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"line {edited + 1}" in found.stdout + found.stderr


def test_every_transfer_and_account_carries_who_made_it(cluster: LocalCluster) -> None:
    debit, credit = fresh("{who}:a"), fresh("{who}:b")
    with channel(cluster.address, "lending") as as_lending:
        ledger = ledger_pb2_grpc.LedgerStub(as_lending)
        forged = [pb.Account(id=a, ledger=CNY, code=1, created_by="spiffe://yunkai/operator/boss") for a in (debit,)]
        ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=forged), timeout=10)
    with channel(cluster.address, "service") as as_service:
        ledger = ledger_pb2_grpc.LedgerStub(as_service)
        ledger.CreateAccounts(
            pb.CreateAccountsRequest(accounts=[pb.Account(id=credit, ledger=CNY, code=1)]), timeout=10
        )
        move = pb.Transfer(id="t", debit_account_id=debit, credit_account_id=credit, amount=5, ledger=CNY, code=1)
        [moved] = ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=[move]), timeout=10).results
        assert moved.code == pb.OK
        accounts = ledger.LookupAccounts(pb.LookupAccountsRequest(ids=[debit, credit]), timeout=10).results
        assert [r.account.created_by for r in accounts] == [
            "spiffe://yunkai/lending/lending",  # what the caller wrote there was replaced
            "spiffe://yunkai/service/service",
        ]
        key = pb.TransferKey(debit_account_id=debit, id="t")
        [found] = ledger.LookupTransfers(pb.LookupTransfersRequest(keys=[key]), timeout=10).results
        assert found.transfer.created_by == "spiffe://yunkai/service/service"
        history = ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=credit), timeout=10)
        assert [t.created_by for t in history.transfers] == ["spiffe://yunkai/service/service"]


def test_a_router_of_several_workers_serves_with_identities_and_an_audit_log_each(tmp_path: Path) -> None:
    node = NodeProcess(str(tmp_path / "n"), ["--join"]).start()
    router = RouterProcess(str(tmp_path / "r"), ["--nodes", node.address, "--workers", "2"])
    try:
        router.start()
        with SyncLedgerClient(router.address, via_router=True) as ledger:
            opened = ledger.create_accounts([Account(fresh("{w}:a"), CNY, 1) for _ in range(4)])
            assert all(r.ok for r in opened)
        assert sorted(p.name for p in (tmp_path / "r").glob("audit*.log")) == ["audit-0.log", "audit-1.log"]
    finally:
        router.stop()
        node.stop()


def test_a_call_the_audit_log_cannot_take_is_unavailable_and_says_nothing_of_the_log(tmp_path: Path) -> None:
    async def scenario() -> grpc.aio.AioRpcError:
        audit = AuditLog(str(tmp_path / "audit.log"))
        audit.close()  # from now on every record is refused, as after a failed fsync
        server = grpc.aio.server(interceptors=[Gate(secure=False, audit=audit)])

        async def create_accounts(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return pb.CreateAccountsResponse().SerializeToString()

        handler = grpc.unary_unary_rpc_method_handler(create_accounts)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("yunkai.ledger.v1.Ledger", {"CreateAccounts": handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
                call = plain.unary_unary("/yunkai.ledger.v1.Ledger/CreateAccounts")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(pb.CreateAccountsRequest().SerializeToString(), timeout=5)
                return caught.value
        finally:
            await server.stop(None)

    refused = asyncio.run(scenario())
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert "audit.log" not in str(refused.details()) and str(tmp_path) not in str(refused.details())


def test_etcd_admits_only_the_routers_etcd_certificate(etcd: EtcdProcess) -> None:
    """The shard map's store: a certificate of the cluster's CA (a service's, a partner's) is
    not enough; only the etcd CA's client certificate, which routers hold, gets in."""
    base = Path(tls().directory)
    health = f"https://{etcd.endpoint}/health"

    def context(cert: str, key: str) -> ssl.SSLContext:
        made = ssl.create_default_context(cafile=str(base / "etcd-ca.pem"))
        made.load_cert_chain(str(base / cert), str(base / key))
        return made

    with urllib.request.urlopen(health, timeout=5, context=context("etcd-client.pem", "etcd-client.key")) as reply:
        assert json.loads(reply.read())["health"] == "true"
    for cert, key in (("service.pem", "service.key"), ("router.pem", "router.key")):
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(health, timeout=5, context=context(cert, key)).read()
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://{etcd.endpoint}/health", timeout=5).read()
