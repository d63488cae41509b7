"""`yunkai bench`: the open-loop benchmark harness (issue 6) — runs, sweeps, the peer, the output.

    yunkai bench --scenario write|query|mixed|scoring|scale --rate R --duration S [--router HOST:PORT]
                 [--procs N] [--sweep --p99-target-ms T] [--peer postgres] --json FILE

Without `--router` it starts a local cluster (a router and `--nodes` nodes, default 2, each
slot on `--replicas` of them, default 1; none for `scoring`), and
a scoring node (trained `credit_risk`) for `mixed` and `scoring` unless `--scoring` is given.
It opens the customers' accounts, then offers `--rate` operations per second for
`--duration` seconds from `--procs` driver processes (openloop.py; workloads.py has the
mixes), merges their HDR histograms and prints a summary table. `--json` writes the figures
(overall, per kind, per second, events), and a PNG beside it (plots.py).

`scale` starts with 2 nodes; at the middle of the run it starts a third (`yunkai node
--join`) and runs `yunkai cluster add-node`, marking both moments. `--sweep` looks for the
highest rate whose p99 holds `--p99-target-ms` (doubling, then bisecting, with runs of
`--duration`); when the bench started the cluster, each probe runs on a new one (opened like
the first), so that no probe starts behind on what an earlier one left (measured: R = 1 at
12,000/s, p99 143 ms on a new cluster and 424 ms as a probe after 16,000/s on one cluster).
`--peer postgres` runs the same write load against a PostgreSQL ledger (postgres_peer.py)
and reports yunkai's rate as a ratio to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import multiprocessing
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import uvloop

from cluster.commands import LocalCluster, status_record
from cluster.local import NodeProcess, ScoringProcess
from loadtest import identities, openloop, plots, postgres_peer, report, workloads
from loadtest.workloads import MIXES, SCENARIOS, Plan
from proto import cluster_pb2, cluster_pb2_grpc
from serving.transport import sync_role_channel

READY_TIMEOUT_S = 120.0
START_MARGIN_S = 0.5  # between telling the drivers the start time and the first due operation
SWEEP_SLACK = 0.95  # a probe holds when it achieves this share of its offered rate
SETTLE_S = 1.0  # between sweep probes on a --router cluster, for queues to drain and compactions to calm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", choices=SCENARIOS, required=True, help="the operation mix (see below)")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered operations per second (default 1000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of offered load (default 10)")
    parser.add_argument("--router", help="HOST:PORT of a running router (default: start a router and 2 nodes)")
    parser.add_argument("--scoring", help="HOST:PORT of a running scoring server (default: train and start one)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext everywhere (no mutual TLS, no identities): to measure what TLS costs",
    )
    parser.add_argument("--nodes", type=int, default=2, help="nodes of the local cluster (default 2)")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="copies of every slot in the local cluster (default 1; at most --nodes; not with --router)",
    )
    parser.add_argument(
        "--via-router", action="store_true", help="send every call through the router (default: smart SDK routing)"
    )
    parser.add_argument(
        "--procs", type=int, default=1, help="driver processes sharing the rate (default 1; see docs/benchmarks.md)"
    )
    parser.add_argument(
        "--batch-due",
        action="store_true",
        help="send the operations that fall due together as one SDK call per kind (what the SDK's coalescer"
        " merges anyway) instead of one call each: a driver then offers far more per core. Latency still counts"
        " from each operation's due time. Not for the PostgreSQL peer (one transaction per transfer)",
    )
    parser.add_argument(
        "--inflight-max",
        type=int,
        default=openloop.INFLIGHT_MAX_DEFAULT,
        help="operations a driver keeps waiting for answers; one due beyond that is not sent and counts as an"
        f" error (default {openloop.INFLIGHT_MAX_DEFAULT:,})",
    )
    parser.add_argument(
        "--lose-node",
        action="store_true",
        help="at the middle of the run, kill -9 the local cluster's first node, delete its data directory and"
        " start it again empty (needs --replicas 2 or more): failover, then repair, under the load",
    )
    parser.add_argument("--customers", type=int, default=10_000, help="customers (2 accounts each; default 10,000)")
    parser.add_argument(
        "--cross-slot", type=float, default=0.0, help="write scenario: share of payments between customers (0)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each operation, s (default 10)")
    parser.add_argument("--sweep", action="store_true", help="find the highest rate whose p99 holds the target")
    parser.add_argument("--p99-target-ms", type=float, default=50.0, help="the sweep's p99 target (default 50)")
    parser.add_argument("--sweep-probes", type=int, default=8, help="most runs of a sweep (default 8)")
    parser.add_argument("--rate-max", type=float, default=400_000.0, help="the sweep goes no higher (400,000)")
    parser.add_argument("--peer", choices=["postgres"], help="also run the write load against a PostgreSQL ledger")
    parser.add_argument("--peer-pool", type=int, default=64, help="PostgreSQL connections in all (default 64)")
    parser.add_argument("--json", help="write the results here (and the plot beside it, as .png)")
    parser.add_argument("--plot", help="where to write the PNG (default: the --json path with .png)")
    parser.epilog = "scenarios: " + "; ".join(
        f"{name} = {', '.join(f'{kind} {share:.0%}' for kind, share in mix.items())}" for name, mix in MIXES.items()
    )


def main(args: argparse.Namespace) -> int:
    if args.procs < 1 or args.rate <= 0 or args.duration <= 0 or args.customers < 2:
        print("yunkai bench: --procs, --rate and --duration must be positive, --customers at least 2", file=sys.stderr)
        return 2
    if args.peer and args.scenario != "write":
        print("yunkai bench: --peer runs the write scenario's transfers: use --scenario write", file=sys.stderr)
        return 2
    if not 1 <= args.replicas <= args.nodes:
        print("yunkai bench: --replicas must be between 1 and --nodes", file=sys.stderr)
        return 2
    if args.lose_node and (args.router or args.replicas < 2 or args.sweep or args.scenario == "scale"):
        print("yunkai bench: --lose-node needs the local cluster with --replicas 2 or more, one run", file=sys.stderr)
        return 2
    if args.router and (args.nodes != 2 or args.replicas != 1):
        print("yunkai bench: --nodes and --replicas shape the local cluster: not with --router", file=sys.stderr)
        return 2
    kinds = set(MIXES[args.scenario])
    load_average = os.getloadavg()  # what else the machine was doing: these runs share it
    started: list[Any] = []
    cluster: LocalCluster | None = None
    directory = tempfile.mkdtemp(prefix="yunkai-bench-")
    identities.prepare(directory, args.insecure)
    try:
        router = args.router
        if router is None and kinds - {"score"}:
            cluster = _start_cluster(os.path.join(directory, "cluster"), args, started)
            router = cluster.address
        scoring = args.scoring
        if scoring is None and kinds & {"score", "application"}:
            scoring = _start_scoring(directory, started)
        run = f"{time.time_ns() // 1_000_000 % (1 << 40):x}"
        plan = Plan(
            scenario=args.scenario,
            rate=args.rate,
            duration_s=args.duration,
            procs=args.procs,
            start=0.0,
            run=run,
            series=run,
            customers=args.customers,
            cross_slot=args.cross_slot,
            timeout_s=args.timeout,
            router=router,
            via_router=args.via_router,
            scoring=scoring,
            batch_due=args.batch_due,
            inflight_max=args.inflight_max,
        )
        if router is not None:
            uvloop.run(_open_accounts(plan))
        fresh = _fresh_clusters(directory, args, started) if cluster is not None else None
        scale: _Scale | _Loss | None = None
        if args.scenario == "scale":
            scale = _Scale(router, os.path.join(directory, "node-3"))
        elif args.lose_node:
            assert cluster is not None
            scale = _Loss(cluster)
        result = {
            "scenario": args.scenario,
            "target": _describe(args, router),
            "procs": args.procs,
            "calls": "one SDK call per kind for the operations due together" if args.batch_due else "one per operation",
            "customers": args.customers,
            "load_average_at_start": [round(x, 2) for x in load_average],
            "cross_slot": args.cross_slot if args.scenario == "write" else None,
        } | _measure(args, plan, scale, fresh)
        if args.peer:
            result["peer"] = _run_peer(args, plan)
            if "achieved_per_s" in result["peer"]:
                mine, theirs = _headline(result), _headline(result["peer"])
                result["ratio_to_peer"] = mine / theirs if theirs else None
    finally:
        for process in reversed(started):
            process.stop()
        shutil.rmtree(directory, ignore_errors=True)
    report.record(args, result)
    _print_summary(args, result)
    plot_path = args.plot or (os.path.splitext(args.json)[0] + ".png" if args.json else None)
    if plot_path:
        plots.draw(plot_path, result)
        print(f"plot: {plot_path}")
    return 0 if result["errors"] == 0 else 1


# --- one run, many processes -----------------------------------------------------------------


def run_once(plan: Plan, on_start: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Offer plan.rate for plan.duration_s from plan.procs driver processes; merged summary."""
    context = multiprocessing.get_context("spawn")  # gRPC does not survive fork
    ready: Any = context.Queue()
    starts: Any = context.Queue()
    results: Any = context.Queue()
    drivers = [
        context.Process(target=_driver_main, args=(plan, worker, ready, starts, results), daemon=True)
        for worker in range(plan.procs)
    ]
    for driver in drivers:
        driver.start()
    try:
        _collect(ready, drivers, plan.procs, READY_TIMEOUT_S, "ready")
        start = openloop.clock() + START_MARGIN_S
        for _ in drivers:
            starts.put(start)
        if on_start is not None:
            on_start(start)
        encoded = _collect(results, drivers, plan.procs, plan.duration_s + 4 * plan.timeout_s + 60, "results")
    finally:
        for driver in drivers:
            driver.join(10)
            if driver.is_alive():
                driver.kill()
    recorder = openloop.Recorder()
    for item in encoded:
        recorder.merge(item)
    return recorder.summary(plan.rate, plan.duration_s)


def _collect(channel: Any, drivers: list[Any], count: int, timeout_s: float, what: str) -> list[Any]:
    items: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(items) < count:
        try:
            item = channel.get(timeout=0.5)
        except queue.Empty:
            failed = [d.exitcode for d in drivers if d.exitcode not in (None, 0)]
            if time.monotonic() > deadline or failed:
                with contextlib.suppress(queue.Empty):  # a driver that failed said why: show it
                    while not isinstance(item := channel.get(timeout=1.0), str):
                        items.append(item)
                    raise RuntimeError(f"a driver process failed: {item}") from None
                how = f"exited with {failed[0]}" if failed else f"sent nothing within {timeout_s:.0f} s"
                raise RuntimeError(f"a driver process failed or hung before sending its {what} ({how})") from None
            continue
        if isinstance(item, str):
            raise RuntimeError(f"a driver process failed: {item}")
        items.append(item)
    return items


def _driver_main(plan: Plan, worker: int, ready: Any, starts: Any, results: Any) -> None:
    try:
        results.put(uvloop.run(_driver(plan, worker, ready, starts)))
    except BaseException as error:
        message = f"driver {worker}: {type(error).__name__}: {error}"
        ready.put(message)
        results.put(message)
        raise


async def _open_target(plan: Plan, worker: int) -> workloads.Target:
    """The target this plan measures, connected: the PostgreSQL peer when the plan names one."""
    if plan.postgres is not None:
        return await postgres_peer.PostgresTarget.open(plan, worker)
    return await workloads.YunkaiTarget.open(plan, worker)


async def _driver(plan: Plan, worker: int, ready: Any, starts: Any) -> dict[str, Any]:
    target = await _open_target(plan, worker)
    try:
        gc.collect()
        gc.freeze()  # what setup built is not garbage: keep the collector's pauses short
        ready.put(worker)
        start = await asyncio.to_thread(starts.get)
        recorder = await openloop.drive(
            target.operation,
            rate=plan.rate,
            duration_s=plan.duration_s,
            start=start,
            worker=worker,
            procs=plan.procs,
            group=getattr(target, "group", None) if plan.batch_due else None,
            inflight_max=plan.inflight_max,
        )
    finally:
        await target.close()
    return recorder.encode()


# --- what runs around the load ---------------------------------------------------------------


def _start_scoring(directory: str, started: list[Any]) -> str:
    registry = os.path.join(directory, "models")
    print(f"training {workloads.MODEL} for the scoring node ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "cluster.cli", "scoring", "train", "--registry", registry, "--model", workloads.MODEL],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    server = ScoringProcess(registry, ["--log-level", "WARNING"])
    started.append(server)
    return server.start().address


async def _open_accounts(plan: Plan) -> None:
    from clients.ledger import LedgerClient

    assert plan.router is not None
    accounts = workloads.accounts_of(plan.run, plan.customers)
    async with await LedgerClient.connect(plan.router, timeout_s=60) as ledger:
        for first in range(0, len(accounts), 4096):
            results = await ledger.create_accounts(accounts[first : first + 4096])
            wrong = [r.code.name for r in results if not r.ok]
            assert not wrong, f"opening the accounts: {wrong[:3]}"


class _Happening:
    """Something done to the cluster at a moment of the run, in a thread, with its events
    timed from the run's start."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.thread: threading.Thread | None = None
        self.start = 0.0
        self._channel: grpc.Channel | None = None

    def _status_of(self, router: str) -> dict[str, Any]:
        """What `cluster status --json` says, asked from this process ({} if the router does
        not answer): a `yunkai cluster status` process per look cost ~0.5 s of CPU on the
        machine under test, and saw a failover up to a second late."""
        if self._channel is None:
            self._channel = sync_role_channel(router, "operator")
        try:
            reply = cluster_pb2_grpc.ClusterStub(self._channel).Status(cluster_pb2.StatusRequest(), timeout=10)
        except grpc.RpcError:
            return {}
        return status_record(reply)

    def schedule(self, start: float, at_s: float) -> None:
        self.start = start
        self.thread = threading.Thread(target=self._run, args=(at_s,), daemon=True)
        self.thread.start()

    def _now_s(self) -> float:
        return round(openloop.clock() - self.start, 3)

    def _run(self, at_s: float) -> None:
        raise NotImplementedError

    def finish(self) -> list[dict[str, Any]]:
        if self.thread is not None:
            self.thread.join()
        if self._channel is not None:
            self._channel.close()
        return self.events


class _Scale(_Happening):
    """The scale scenario's event: a third node joins at the middle of the run."""

    def __init__(self, router: str | None, data_dir: str) -> None:
        super().__init__()
        assert router is not None
        self.router = router
        self.node = NodeProcess(data_dir, ["--join", "--log-level", "WARNING"])

    def _run(self, at_s: float) -> None:
        time.sleep(max(0.0, self.start + at_s - openloop.clock()))
        began_s = self._now_s()
        self.node.start()
        self.events.append({"t_s": began_s, "what": "node 3 started", "ready_s": self._now_s()})
        began_s = self._now_s()
        command = [sys.executable, "-m", "cluster.cli", "cluster", "add-node", "--router", self.router]
        added = subprocess.run(
            [*command, "--address", self.node.address], capture_output=True, text=True, timeout=600, check=False
        )
        event: dict[str, Any] = {"t_s": began_s, "what": "add-node", "done_s": self._now_s()}
        if added.returncode == 2:  # argparse's exit: this build has no `cluster add-node`
            event["what"] = "add-node unavailable"
        elif added.returncode != 0:
            event["what"] = f"add-node failed (exit {added.returncode})"
        if added.returncode != 0:
            event["detail"] = (added.stderr.strip().splitlines() or [""])[-1][:200]
        else:
            event["job"] = self._job()
        self.events.append(event)

    def _job(self) -> dict[str, Any]:
        """The add-node job as the router reports it: slots moved, time, freeze pauses."""
        jobs = self._status_of(self.router).get("jobs", [])
        return dict(jobs[-1]) if jobs else {}

    def finish(self) -> list[dict[str, Any]]:
        events = super().finish()
        self.node.stop()
        return events


class _Loss(_Happening):
    """--lose-node: at the middle of the run the first node is killed (-9), its data directory
    deleted, and it is started again empty once the controller noticed; then the repair job
    is watched until every slot has R live copies again."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__()
        self.cluster = cluster

    def _status(self) -> dict[str, Any]:
        return self._status_of(self.cluster.address)

    def _wait(self, done: Callable[[dict[str, Any]], bool], timeout_s: float = 600.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self._status()
            if (status and done(status)) or time.monotonic() > deadline:
                return status
            time.sleep(0.1)

    def _run(self, at_s: float) -> None:
        node = self.cluster.nodes[0]
        time.sleep(max(0.0, self.start + at_s - openloop.clock()))
        self.events.append({"t_s": self._now_s(), "what": f"node {node.address} killed, its disk lost"})
        node.kill()
        shutil.rmtree(node.data_dir, ignore_errors=True)

        def state_of(status: dict[str, Any]) -> str:
            return next((str(n["state"]) for n in status.get("nodes", []) if n["address"] == node.address), "")

        self._wait(lambda s: state_of(s) not in ("", "active"), 60)
        self.events.append({"t_s": self._now_s(), "what": "its slots failed over"})
        node.start()
        self.events.append({"t_s": self._now_s(), "what": "node started again, empty"})
        status = self._wait(
            lambda s: (
                not s["slots_under_replicated"]
                and not s["migrations"]
                and state_of(s) == "active"
                and all(j["state"] != "running" for j in s["jobs"])
            )
        )
        repairs = [j for j in status.get("jobs", []) if j["kind"] == "repair"]
        self.events.append({"t_s": self._now_s(), "what": "R copies restored", "jobs": repairs})


def loss_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What callers saw from the node's loss to R restored, and how fast repair copied."""
    killed = next((e for e in result.get("events", []) if "killed" in e["what"]), None)
    restored = next((e for e in result.get("events", []) if e["what"] == "R copies restored"), None)
    if killed is None:
        return {}
    kill_s = killed["t_s"]
    # The seconds whose operations fell due from the kill on, for five seconds: the failover.
    window = [s for s in result["per_second"] if kill_s - 1 < s["t_s"] < kill_s + 5]
    summary: dict[str, Any] = {
        "killed_at_s": kill_s,
        "failover_errors": sum(s["errors"] for s in window),
        "failover_p99_ms_max": max((s["p99_ms"] for s in window if s["p99_ms"] is not None), default=None),
        "failover_max_ms": max((s["max_ms"] for s in window if s["max_ms"] is not None), default=None),
        "failover_achieved_per_s_min": min((s["achieved_per_s"] for s in window), default=0),
    }
    if restored is not None:
        jobs = restored.get("jobs", [])
        copies = sum(int(j.get("slots_moved", 0)) for j in jobs)
        elapsed_s = sum(float(j.get("elapsed_s", 0.0)) for j in jobs)
        summary |= {
            "restored_at_s": restored["t_s"],
            "repair_slots": copies,
            "repair_s": round(elapsed_s, 2),
            "repair_slots_per_s": round(copies / elapsed_s, 1) if elapsed_s else None,
            "repair_jobs": len(jobs),
        }
    return summary


def move_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What callers saw while add-node ran: the seconds from its start to its end."""
    added = next((e for e in result.get("events", []) if e.get("what") == "add-node"), None)
    if added is None:
        return {}
    # Whole seconds only: the run's last second is partial (the tail of answers).
    end_s = min(added["done_s"], result["duration_s"] - 1)
    window = [s for s in result["per_second"] if added["t_s"] - 1 < s["t_s"] < end_s]
    job = added.get("job", {})
    moved = job.get("slots_moved", 0)
    elapsed_s = job.get("elapsed_s", 0.0)
    return {
        "seconds": len(window),
        "errors": sum(s["errors"] for s in window),
        "achieved_per_s_min": min((s["achieved_per_s"] for s in window), default=0),
        "p99_ms_max": max((s["p99_ms"] for s in window if s["p99_ms"] is not None), default=0.0),
        "slots_moved": moved,
        "move_s": elapsed_s,
        "slots_per_s": round(moved / elapsed_s, 1) if elapsed_s else 0.0,
        "freeze_ms_p50": job.get("freeze_ms_p50"),
        "freeze_ms_p99": job.get("freeze_ms_p99"),
        "freeze_ms_max": job.get("freeze_ms_max"),
    }


def _start_cluster(data_dir: str, args: argparse.Namespace, started: list[Any]) -> LocalCluster:
    """The bench's own cluster (`--nodes`, `--replicas`), started, in `started` for the end."""
    cluster = LocalCluster(data_dir, args.nodes, port=0, replicas=args.replicas)
    started.append(cluster)
    return cluster.start()


def _fresh_clusters(directory: str, args: argparse.Namespace, started: list[Any]) -> Callable[[Plan], Plan]:
    """What gives a sweep's next probe a cluster of its own: the bench's cluster is stopped
    and deleted, a new one started like it, the customers' accounts opened on it."""
    made = 0

    def fresh(plan: Plan) -> Plan:
        nonlocal made
        old = next(process for process in started if isinstance(process, LocalCluster))
        old.stop()
        started.remove(old)
        shutil.rmtree(old.data_dir, ignore_errors=True)
        made += 1
        cluster = _start_cluster(os.path.join(directory, f"cluster-{made}"), args, started)
        renewed = dataclasses.replace(plan, router=cluster.address)
        uvloop.run(_open_accounts(renewed))
        return renewed

    return fresh


def _measure(
    args: argparse.Namespace,
    plan: Plan,
    scale: _Scale | _Loss | None,
    fresh: Callable[[Plan], Plan] | None = None,
) -> dict[str, Any]:
    if not args.sweep:
        on_start = None
        if scale is not None:

            def on_start(start: float) -> None:
                scale.schedule(start, plan.duration_s / 2)

        result = run_once(plan, on_start)
        result["events"] = scale.finish() if scale is not None else []
        if isinstance(scale, _Scale):
            result["move"] = move_summary(result)
        elif isinstance(scale, _Loss):
            result["loss"] = loss_summary(result)
        return result
    if scale is not None:
        print("yunkai bench: --sweep ignores the scale event (it needs one long run)", file=sys.stderr)
        scale.finish()
    return sweep(plan, args.p99_target_ms, args.sweep_probes, args.rate_max, fresh)


def sweep(
    plan: Plan,
    p99_target_ms: float,
    probes_max: int,
    rate_max: float,
    fresh: Callable[[Plan], Plan] | None = None,
) -> dict[str, Any]:
    """Double the rate while it holds, then bisect: the highest rate whose p99 holds the target,
    with no errors and SWEEP_SLACK of the offered rate achieved. Returns that run's summary
    with the probes in "sweep". With `fresh`, every probe after the first runs on the plan it
    gives (a new cluster); without, probes share the cluster, SETTLE_S apart."""
    probes: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    low, high, rate = 0.0, None, plan.rate
    for number in range(probes_max):
        probe = dataclasses.replace(plan, rate=rate, series=f"{plan.run}p{number}")
        summary = run_once(probe)
        holds = (
            summary["errors"] == 0
            and summary["p99_ms"] is not None
            and summary["p99_ms"] <= p99_target_ms
            and summary["achieved_per_s"] >= SWEEP_SLACK * rate
        )
        probes.append({k: summary[k] for k in _HEADLINE} | {"holds": holds, "router": plan.router})
        print(
            f"  probe {number + 1}: {rate:,.0f}/s -> {summary['achieved_per_s']:,.0f}/s,"
            f" p99 {_fmt(summary['p99_ms'])} ms, errors {summary['errors']}: {'holds' if holds else 'does not hold'}"
            + ("" if summary["driver_kept_up"] else f" (the driver fell behind: {summary['late_sends']:,} late sends)"),
            flush=True,
        )
        if holds:
            low, best = rate, summary
        else:
            high = rate
        if high is None:
            if rate >= rate_max:
                break
            rate = min(rate * 2, rate_max)
        else:
            if high - low <= max(1.0, 0.05 * high):
                break
            rate = float(round((low + high) / 2))
        if fresh is not None and number + 1 < probes_max:
            plan = fresh(plan)
        else:
            time.sleep(SETTLE_S)
    result = dict(best if best is not None else summary)
    result["events"] = []
    result["sweep"] = {"p99_target_ms": p99_target_ms, "best_rate_per_s": low or None, "probes": probes}
    return result


def _run_peer(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    bin_dir = postgres_peer.binaries()
    if bin_dir is None:
        why = "PostgreSQL is not installed (cluster/install-postgres.sh installs it): the peer was skipped"
        print(f"yunkai bench: {why}", file=sys.stderr)
        return {"name": "postgres", "skipped": why}
    server = postgres_peer.PostgresServer(bin_dir).start()
    try:
        postgres_peer.create_ledger(server.conninfo, plan.run, plan.customers)
        # One transaction per transfer, as a user's ledger on PostgreSQL would run it.
        peer_plan = dataclasses.replace(plan, postgres=server.conninfo, postgres_pool=args.peer_pool, batch_due=False)
        print("running the same load against the PostgreSQL peer ...", flush=True)
        result = _measure(args, peer_plan, None)
        debits, credits, transfers = postgres_peer.totals(server.conninfo)
        assert debits == credits, f"the peer's books do not balance: {debits} != {credits}"
        result["transfers_stored"] = transfers
    finally:
        server.stop()
    version = os.path.basename(os.path.dirname(bin_dir))
    return {"name": "postgres", "version": version, "pool": args.peer_pool} | result


# --- output ----------------------------------------------------------------------------------

_HEADLINE = ("offered_per_s", "achieved_per_s", "p50_ms", "p99_ms", "p999_ms", "errors", "late_sends", "driver_kept_up")


def _headline(result: dict[str, Any]) -> float:
    """The rate to compare: the sweep's best rate, else what a single run achieved."""
    sweep_result = result.get("sweep")
    if sweep_result is not None:
        return float(sweep_result["best_rate_per_s"] or 0.0)
    return float(result["achieved_per_s"])


def _describe(args: argparse.Namespace, router: str | None) -> str:
    if router is None:
        return "scoring node"
    copies = f", {args.replicas} copies of each slot" if args.replicas > 1 else ""
    cluster = "a running cluster" if args.router else f"router + {args.nodes} nodes (local{copies})"
    return f"{cluster}, {'through the router' if args.via_router else 'smart SDK routing'}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_summary(args: argparse.Namespace, result: dict[str, Any]) -> None:
    for label, figures in (("yunkai", result), ("postgres", result.get("peer"))):
        if figures is None:
            continue
        if "skipped" in figures:
            print(f"{label}: {figures['skipped']}")
            continue
        print(
            f"{label} {args.scenario}: offered {figures['offered_per_s']:,.0f}/s for {figures['duration_s']:g} s,"
            f" achieved {figures['achieved_per_s']:,.0f}/s, errors {figures['errors']},"
            f" late sends {figures['late_sends']} ({args.procs} driver process{'es' if args.procs > 1 else ''})"
        )
        if not figures.get("driver_kept_up", True):
            print(
                f"  the driver did not keep up: {figures['late_sends']:,} sends over {openloop.LATE_MS:g} ms late"
                f" (issue lag p99 {figures['issue_lag_p99_ms']:.1f} ms); these latencies are partly the"
                " load generator's (more --procs, or --batch-due, where cores allow)"
            )
        print(f"  {'kind':<12} {'ops':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}")
        rows = [*figures["by_kind"].items(), ("all", figures | {"ops": figures["ops"]})]
        for kind, k in rows:
            print(
                f"  {kind:<12} {k['ops']:>9,} {k['errors']:>7} {_fmt(k['p50_ms']):>8} {_fmt(k['p99_ms']):>8}"
                f" {_fmt(k['p999_ms']):>9}"
            )
        if figures.get("from_send_p50_ms") is not None:
            print(
                f"  from the send, the driver's own lag left out: p50 {_fmt(figures['from_send_p50_ms'])} ms,"
                f" p99 {_fmt(figures['from_send_p99_ms'])} ms (issue lag p50 {figures['issue_lag_p50_ms']:.2f} ms)"
            )
        if "sweep" in figures:
            best = figures["sweep"]["best_rate_per_s"]
            target = figures["sweep"]["p99_target_ms"]
            print(f"  sweep: highest rate holding p99 <= {target:g} ms: {'none' if best is None else f'{best:,.0f}/s'}")
        for sample in figures.get("error_samples", []):
            print(f"  error: {sample}")
    for event in result.get("events", []):
        print(f"  event at {event['t_s']:.1f} s: {event['what']} {event.get('detail', '')}".rstrip())
    move = result.get("move")
    if move:
        print(
            f"  during add-node ({move['seconds']} s): errors {move['errors']}, p99 up to {move['p99_ms_max']:.1f} ms,"
            f" throughput down to {move['achieved_per_s_min']:,}/s; {move['slots_moved']} slots in"
            f" {move['move_s']:.1f} s ({move['slots_per_s']} slots/s); write pause per slot p50"
            f" {move['freeze_ms_p50']} ms, p99 {move['freeze_ms_p99']} ms, max {move['freeze_ms_max']} ms"
        )
    loss = result.get("loss")
    if loss:
        print(
            f"  node lost at {loss['killed_at_s']:.1f} s; the 5 s after: errors {loss['failover_errors']},"
            f" p99 up to {_fmt(loss['failover_p99_ms_max'])} ms, slowest call {_fmt(loss['failover_max_ms'])} ms,"
            f" throughput down to {loss['failover_achieved_per_s_min']:,}/s"
        )
        if "restored_at_s" in loss:
            print(
                f"  R restored at {loss['restored_at_s']:.1f} s: {loss['repair_slots']} slot copies in"
                f" {loss['repair_s']} s of repair ({loss['repair_slots_per_s']} slots/s, {loss['repair_jobs']} jobs)"
            )
    if result.get("ratio_to_peer") is not None:
        print(f"yunkai / postgres: {result['ratio_to_peer']:.1f}x")
