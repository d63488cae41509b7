"""What operators rely on: health, reflection, metrics, TLS, graceful stop, restart."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients.ledger import Account, ResultCode, SyncLedgerClient, Transfer
from cluster.local import NodeProcess, RouterProcess
from proto import ledger_pb2 as pb, ledger_pb2_grpc
from router.slots import slot_of
from tests.conftest import NodeHandle, fresh, start_node

LEDGER = 156


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for localhost / 127.0.0.1 (openssl, one day)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_health_reports_serving_and_reflection_lists_the_services(node: NodeHandle) -> None:
    health = health_pb2_grpc.HealthStub(node.channel)
    for service in ("", "yunkai.ledger.v1.Ledger"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(node.channel)
    replies = list(
        stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"yunkai.ledger.v1.Ledger", "yunkai.node.v1.Node", "grpc.health.v1.Health"} <= names


def test_metrics_count_requests_and_commits(tmp_path_factory: pytest.TempPathFactory) -> None:
    port = free_port()
    handle = start_node(tmp_path_factory, "--metrics-port", str(port))
    try:
        a, b = fresh("m"), fresh("m")
        handle.accounts(pb.Account(id=a, ledger=LEDGER, code=1), pb.Account(id=b, ledger=LEDGER, code=1))
        handle.transfers(pb.Transfer(id="t", debit_account_id=a, credit_account_id=b, amount=1, ledger=LEDGER, code=1))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'yunkai_node_requests_total{method="CreateTransfers",status="OK"} 1.0' in text
        assert 'yunkai_node_events_total{code="OK",method="CreateTransfers"} 1.0' in text
        assert "yunkai_node_fsync_latency_seconds_count" in text
        assert "yunkai_node_slots_owned 4096.0" in text
    finally:
        handle.close()
        handle.process.stop()


def test_sigterm_stops_cleanly_and_a_restart_keeps_everything(tmp_path_factory: pytest.TempPathFactory) -> None:
    handle = start_node(tmp_path_factory)
    a, b = fresh("r"), fresh("r")
    handle.accounts(pb.Account(id=a, ledger=LEDGER, code=1), pb.Account(id=b, ledger=LEDGER, code=1))
    first = handle.transfers(
        pb.Transfer(id="t", debit_account_id=a, credit_account_id=b, amount=42, ledger=LEDGER, code=1)
    )[0]
    handle.close()
    assert handle.process.stop() == 0
    lines = [json.loads(line) for line in Path(handle.process.log_path).read_text().splitlines()]
    assert [m["message"] for m in lines][-2:] == ["stopping", "stopped"]
    handle.process.start()
    handle.reconnect()
    try:
        assert handle.account(b).credits_posted == 42
        again = handle.transfers(
            pb.Transfer(id="u", debit_account_id=a, credit_account_id=b, amount=1, ledger=LEDGER, code=1)
        )[0]
        assert again.timestamp > first.timestamp  # the clock never goes backwards across restarts
    finally:
        handle.close()
        handle.process.stop()


def test_a_data_directory_keeps_its_slot_count(tmp_path: Path) -> None:
    process = NodeProcess(str(tmp_path / "n")).start()
    process.stop()
    with pytest.raises(RuntimeError, match="created with --slots-total 4096"):
        NodeProcess(str(tmp_path / "n"), ["--slots-total", "16"]).start()


def test_tls_serves_clients_that_trust_its_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    process = NodeProcess(str(tmp_path / "n"), ["--tls-cert", str(cert), "--tls-key", str(key)]).start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{process.port}", credentials) as channel:
            reply = ledger_pb2_grpc.LedgerStub(channel).CreateAccounts(
                pb.CreateAccountsRequest(accounts=[pb.Account(id="tls", ledger=1, code=1)]), timeout=10
            )
            assert reply.results[0].code == pb.OK
        with grpc.insecure_channel(process.address) as plain, pytest.raises(grpc.RpcError):
            ledger_pb2_grpc.LedgerStub(plain).LookupAccounts(pb.LookupAccountsRequest(ids=["tls"]), timeout=5)
    finally:
        process.stop()


def test_a_tls_cluster_moves_money_across_nodes(tmp_path: Path) -> None:
    """Nodes, router and client all speak TLS, to clients and to each other (--tls-ca)."""
    cert, key = self_signed(tmp_path)
    tls = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(cert)]
    nodes = [NodeProcess(str(tmp_path / f"n{i}"), ["--join", *tls]).start() for i in (1, 2)]
    router = None
    try:
        router = RouterProcess(str(tmp_path / "r"), ["--nodes", ",".join(n.address for n in nodes), *tls]).start()
        with SyncLedgerClient(router.address, tls_ca=str(cert)) as ledger:
            shard_map = ledger._run(ledger._client._maps.fetch())
            # Two accounts whose slots live on different nodes, so the credit goes through the outbox.
            ids = [f"tls-{i}" for i in range(64)]
            owner = {i: shard_map.owners[slot_of(i, shard_map.slots_total)] for i in ids}
            debit = ids[0]
            credit = next(i for i in ids if owner[i] != owner[debit])
            assert all(r.ok for r in ledger.create_accounts([Account(debit, 1, 1), Account(credit, 1, 1)]))
            [moved] = ledger.create_transfers([Transfer("t", debit, credit, 42, 1, 1)])
            assert moved.code is ResultCode.OK
            assert [a.credits_posted if a else None for a in ledger.lookup_accounts([credit])] == [42]
    finally:
        if router is not None:
            router.stop()
        for node in nodes:
            node.stop()
