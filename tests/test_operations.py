"""What operators rely on: health, metrics, graceful stop, restart."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.local import NodeProcess
from proto import ledger_pb2 as pb
from tests.conftest import NodeHandle, fresh, start_node

LEDGER = 156


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_health_reports_serving(node: NodeHandle) -> None:
    # (Reflection is off unless asked: tests/test_identity.py.)
    health = health_pb2_grpc.HealthStub(node.channel)
    for service in ("", "yunkai.ledger.v1.Ledger", "yunkai.node.v1.Node"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


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
