"""The load tests run: Locust's partner-platform day, `yunkai bench`, and its PostgreSQL peer.

Real processes on loopback (a router and 2 nodes, a scoring server, Locust, PostgreSQL when
installed). Speed decides nothing here: these check that the tools work and count right.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.commands import LocalCluster
from cluster.local import ScoringProcess
from loadtest import openloop, postgres_peer

ROOT = Path(__file__).resolve().parent.parent
MODEL = "credit_risk"
HEADLINE = ("offered_per_s", "achieved_per_s", "p50_ms", "p99_ms", "p999_ms", "errors")


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringProcess]:
    registry = tmp_path_factory.mktemp("scoring") / "models"
    subprocess.run(
        [sys.executable, "-m", "cluster.cli", "scoring", "train", "--registry", str(registry), "--model", MODEL],
        check=True,
        capture_output=True,
    )
    server = ScoringProcess(str(registry), ["--log-level", "WARNING"]).start()
    yield server
    server.stop()


def yunkai(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_locust_partner_day_reports_every_call_and_no_failures(
    cluster: LocalCluster, scoring: ScoringProcess, tmp_path: Path
) -> None:
    locust = Path(sys.executable).parent / "locust"
    command = [str(locust), "--headless", "-f", str(ROOT / "loadtest" / "locustfile.py"), "-u", "8", "-r", "8"]
    command += ["-t", "5s", "--host", cluster.address, "--scoring-host", scoring.address]
    command += ["--csv", str(tmp_path / "day"), "--only-summary"]
    ran = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-3000:]
    with open(tmp_path / "day_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows.pop("Aggregated")
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0, (tmp_path / "day_failures.csv").read_text()
    # Every user onboards customers (scored, then accounts opened) and then queries and moves money.
    assert {"ModelInfer application", "CreateAccounts open accounts", "LookupAccounts balance"} <= set(rows)
    assert any(name.startswith("CreateTransfers") for name in rows)


def test_bench_write_offers_the_rate_and_writes_json_per_second_and_a_plot(tmp_path: Path) -> None:
    output = tmp_path / "write.json"
    args = ["--scenario", "write", "--rate", "200", "--duration", "3", "--json", str(output)]
    ran = yunkai("bench", *args, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    result = json.loads(output.read_text())
    assert all(key in result for key in HEADLINE)
    assert result["errors"] == 0
    assert result["ops"] == 600  # every scheduled operation was sent and answered, none dropped
    assert result["offered_per_s"] == 200
    assert result["command"].startswith("yunkai bench --scenario write")
    assert len(result["per_second"]) >= 3
    assert all(all(key in second for key in ("t_s", *HEADLINE)) for second in result["per_second"])
    assert sum(second["offered_per_s"] for second in result["per_second"]) == 600
    assert set(result["by_kind"]) == {"drawdown", "repayment"}
    assert (tmp_path / "write.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "achieved" in ran.stdout and "p99" in ran.stdout  # the summary table
    # The system's own share: from the send, never above the latency from the due time.
    assert 0 < result["from_send_p50_ms"] <= result["p50_ms"] and result["from_send_p99_ms"] <= result["p99_ms"]
    assert "from the send" in ran.stdout


def test_a_sweep_runs_each_probe_on_a_cluster_of_its_own(tmp_path: Path) -> None:
    """A probe never starts behind on what the one before it left: the bench's cluster is
    started anew for each (a --router cluster is shared: it cannot be)."""
    output = tmp_path / "sweep.json"
    args = ["--scenario", "write", "--sweep", "--sweep-probes", "3", "--rate", "50", "--duration", "1"]
    ran = yunkai("bench", *args, "--p99-target-ms", "10000", "--customers", "20", "--json", str(output), cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    probes = json.loads(output.read_text())["sweep"]["probes"]
    assert [p["offered_per_s"] for p in probes] == [50, 100, 200] and all(p["holds"] for p in probes), probes
    assert all(p["errors"] == 0 for p in probes), probes
    assert len({p["router"] for p in probes}) == 3, probes  # three clusters, one after another


def test_bench_lending_runs_whole_journeys_through_every_service_and_writes_json(tmp_path: Path) -> None:
    output = tmp_path / "lending.json"
    args = ["--rate", "30", "--duration", "1", "--nodes", "2", "--replicas", "1", "--json", str(output)]
    ran = yunkai("bench-lending", *args, "--lending-servers", "1,2", cwd=tmp_path)  # one, then two, serving the book
    assert ran.returncode == 0, ran.stdout + ran.stderr
    result = json.loads(output.read_text())
    assert result["command"].startswith("yunkai bench-lending")
    assert [run["lending_processes"] for run in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert run["errors"] == 0 and run["journeys"] == 10  # 30 operations/s: a journey of 3 every 0.1 s
        assert {step: by["ops"] for step, by in run["by_step"].items()} == {"decide": 10, "draw": 10, "repay": 10}
    assert "lending journeys, 2 lending and 1 risk processes: offered 30 operations/s" in ran.stdout


def test_session_bench_measures_both_ways_on_a_real_node(tmp_path: Path) -> None:
    output = tmp_path / "session.json"
    ran = subprocess.run(
        [sys.executable, "-m", "loadtest.session_bench", "--calls", "20", "--rounds", "1", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    rounds = json.loads(output.read_text())["rounds"]
    for way in ("unary", "session"):
        [measured] = rounds[way]
        assert 0 < measured["p50_ms"] <= measured["p99_ms"]
        assert {"node_cpu_us_per_call", "caller_cpu_us_per_call"} <= measured.keys()  # 10 ms ticks: 0 for 20 calls
    assert "round 1 session" in ran.stdout


@pytest.mark.skipif(postgres_peer.binaries() is None, reason="no PostgreSQL server (cluster/install-postgres.sh)")
def test_bench_runs_the_same_transfers_on_a_postgresql_peer(cluster: LocalCluster, tmp_path: Path) -> None:
    output = tmp_path / "peer.json"
    ran = yunkai(
        "bench", "--scenario", "write", "--rate", "100", "--duration", "2", "--router", cluster.address,
        "--customers", "500", "--peer", "postgres", "--peer-pool", "8", "--json", str(output), cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    result = json.loads(output.read_text())
    peer = result["peer"]
    assert peer["name"] == "postgres" and peer["errors"] == 0, peer.get("error_samples")
    assert peer["ops"] == result["ops"] == 200
    assert peer["transfers_stored"] == 200  # and its books balanced (the bench checks Σ debits = Σ credits)
    assert result["ratio_to_peer"] is not None
    assert (tmp_path / "peer.png").exists()  # both ledgers' lines on one plot


def test_open_loop_sends_on_schedule_while_an_earlier_operation_waits() -> None:
    """No coordinated omission: one stuck answer holds back no later send."""
    total = 50
    finished: list[int] = []

    async def scenario() -> openloop.Recorder:
        everyone_else = asyncio.Event()

        async def operation(index: int) -> tuple[str, str | None]:
            if index == 0:
                await everyone_else.wait()  # answered only after every later operation
            finished.append(index)
            if len(finished) == total - 1:
                everyone_else.set()
            return "op", None

        start = openloop.clock()
        return await openloop.drive(operation, rate=1000, duration_s=total / 1000, start=start, worker=0, procs=1)

    recorder = asyncio.run(scenario())
    assert finished[-1] == 0 and sorted(finished) == list(range(total))
    summary = recorder.summary(1000, total / 1000)
    assert summary["ops"] == total and summary["errors"] == 0


def test_open_loop_sheds_beyond_the_in_flight_limit_and_counts_it_as_errors() -> None:
    async def operation(index: int) -> tuple[str, str | None]:
        return "op", None

    async def scenario() -> openloop.Recorder:
        # A start in the past: all 20 operations are due at once, and 4 may be in flight.
        start = openloop.clock() - 1.0
        return await openloop.drive(
            operation, rate=1000, duration_s=0.02, start=start, worker=0, procs=1, inflight_max=4
        )

    summary = asyncio.run(scenario()).summary(1000, 0.02)
    assert summary["by_kind"]["op"]["ops"] == 4
    assert summary["by_kind"]["shed"]["ops"] == summary["errors"] == 16
    assert summary["error_samples"][0] == f"shed: {openloop.SHED}"


def test_open_loop_never_asks_its_loop_for_a_wait_shorter_than_a_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Operations due 0.2 ms apart go out in bursts a tick apart: the driver does not wake per
    operation. (uvloop rounds a wait under 0.5 ms to 0, so waiting `due - now` made the driver
    spin through a whole core between sends.) Every operation is still sent and answered."""
    waits: list[float] = []
    sleep = asyncio.sleep

    async def recorded(delay: float) -> None:
        waits.append(delay)
        await sleep(delay)

    monkeypatch.setattr(openloop.asyncio, "sleep", recorded)

    async def operation(index: int) -> tuple[str, str | None]:
        return "op", None

    rate, duration_s = 5000, 0.3
    recorder = asyncio.run(
        openloop.drive(operation, rate=rate, duration_s=duration_s, start=openloop.clock(), worker=0, procs=1)
    )
    assert recorder.summary(rate, duration_s)["ops"] == int(rate * duration_s)
    assert waits and min(waits) >= openloop.TICK_S
    # One wait per tick at most (not one per operation: 1,500 here).
    assert len(waits) <= duration_s / openloop.TICK_S + 1


def test_latency_from_the_send_leaves_the_drivers_own_lag_out() -> None:
    """Sends a little after their due time (the loop's tick): the headline latency counts from
    the due time, the system's share from the send."""

    async def scenario() -> dict[str, object]:
        async def operation(index: int) -> tuple[str, str | None]:
            await asyncio.sleep(0.004)
            return "op", None

        start = openloop.clock() + 0.01
        recorder = await openloop.drive(operation, rate=500, duration_s=0.4, start=start, worker=0, procs=1)
        return recorder.summary(500, 0.4)

    summary = asyncio.run(scenario())
    assert summary["ops"] == 200
    assert 4.0 <= summary["from_send_p50_ms"] <= summary["p50_ms"]  # type: ignore[operator]
    # Recorded sends (no timers): 3 ms late, answered 1 ms after the send.
    recorder = openloop.Recorder()
    for index in range(100):
        due = index / 1000
        recorder.sent(due, 0.003)
        recorder.done("op", due, due + 0.004, None, sent_s=due + 0.003)
    figures = recorder.summary(1000, 0.1)
    assert figures["from_send_p50_ms"] == pytest.approx(1.0, abs=0.01)
    assert figures["p50_ms"] == pytest.approx(4.0, abs=0.01)
    assert figures["issue_lag_p50_ms"] == pytest.approx(3.0, abs=0.01)
    merged = openloop.Recorder()
    merged.merge(recorder.encode())
    assert merged.summary(1000, 0.1)["from_send_p50_ms"] == figures["from_send_p50_ms"]


def test_a_run_whose_driver_sent_late_says_it_did_not_keep_up() -> None:
    """A driver whose loop is busy sends late: the result says its latencies are partly its own."""

    async def scenario(block_s: float) -> dict[str, object]:
        async def operation(index: int) -> tuple[str, str | None]:
            if index == 0:
                time.sleep(block_s)  # the driver's own loop stalls: every later send is late
            return "op", None

        start = openloop.clock() + 0.01
        recorder = await openloop.drive(operation, rate=1000, duration_s=0.1, start=start, worker=0, procs=1)
        return recorder.summary(1000, 0.1)

    stalled = asyncio.run(scenario(0.05))
    assert stalled["late_sends"] >= 40 and stalled["driver_kept_up"] is False, stalled["late_sends"]
    # The bound itself, on recorded sends (no timers): 1 late send in 100 kept up, 2 did not.
    for late, kept_up in ((1, True), (2, False)):
        recorder = openloop.Recorder()
        for index in range(100):
            lag_s = 2 * openloop.LATE_MS / 1000 if index < late else 0.0
            recorder.sent(index / 1000, lag_s)
            recorder.done("op", index / 1000, index / 1000 + lag_s + 0.001, None)
        assert recorder.summary(1000, 0.1)["driver_kept_up"] is kept_up, (late, kept_up)
