"""`yunkai cluster up | status | add-node | drain-node | rebalance | step-down | resume`: run a
local cluster, look at any cluster, grow or shrink it online, and restart a node as planned.

`up` starts a router on --port P and N ledger nodes on P+1 .. P+N, all on loopback, each
with its own directory under --data-dir, and keeps them in the foreground until Ctrl-C
or SIGTERM, when it stops the routers and then the nodes (each finishes what it has in
flight). With --routers R (R > 1) it also starts a one-member etcd in --data-dir and R
routers on P, P+N+1, ... that elect one controller among them: the shape that survives the
loss of a router. Run it again on the same --data-dir and the same cluster comes back: the
nodes keep their data and ports, and the metastore its shard map.

`status` asks a router (any host) for the map, each node's id, state and health, the slots
with no live copy, the controller, the slot moves in flight and the operator jobs.
`add-node`, `drain-node` and `rebalance` start a job (any router passes it to the
controller; router/migration.py moves the slots, a few at a time, while the cluster
serves) and show its progress until it is done; with --no-wait they return once it has
started. --router takes several routers (HOST:PORT,HOST:PORT): each command goes to the
first that answers, and carries on through the next when one stops answering (a job
survives a change of controller). They work against nodes on any host: a node is named by
the address the cluster reaches it at. `step-down` and `resume` bracket a planned restart
of one node (docs/operations.md, "A rolling upgrade").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import serving
from cluster.local import EtcdProcess, NodeProcess, ProcessFailed, RouterProcess, ServiceProcess
from proto import cluster_pb2, cluster_pb2_grpc
from serving.tls import INSECURE_ENV, TLS_DIR_ENV

PROGRESS_EVERY_S = 0.5
JOB_UNSEEN_S = 10.0
Reply = TypeVar("Reply")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser(
        "up",
        help="run a router and N nodes on loopback in the foreground",
        description="Start a router on --port and --nodes ledger nodes on the ports after it, "
        "until Ctrl-C or SIGTERM. Data persists in --data-dir across runs.",
    )
    up.add_argument("--nodes", type=int, default=3, help="how many ledger nodes (default 3)")
    up.add_argument("--data-dir", required=True, help="directory for every process's data and log")
    up.add_argument("--port", type=int, default=7000, help="router port; nodes take the next ones (default 7000)")
    up.add_argument("--metrics", action="store_true", help="serve Prometheus metrics on port+100 and up")
    up.add_argument(
        "--console",
        action="store_true",
        help="the first router serves the operator console on port+443 (HTTPS, operators' certificates only)",
    )
    up.add_argument(
        "--replicas",
        type=int,
        help="copies of each slot, on different nodes (default: min(3, --nodes)); 1 keeps one copy (development)",
    )
    up.add_argument(
        "--routers",
        type=int,
        default=1,
        help="how many routers (default 1, with the shard map in a file); more than 1 starts a local etcd"
        " for the map and the controller's election (cluster/install-etcd.sh installs etcd)",
    )
    up.add_argument(
        "--tls-dir",
        help=f"the cluster's certificates (made where missing; default {TLS_DIR_ENV}, else DATA_DIR/tls)",
    )
    up.add_argument(
        "--insecure", action="store_true", help="plaintext, no identities, no authorization (logged as a warning)"
    )
    up.set_defaults(run=up_main)

    status = actions.add_parser(
        "status",
        help="show nodes, slots per node and the map version",
        description="Ask a router for the shard map and every node's health.",
    )
    status.add_argument(
        "--router",
        default="127.0.0.1:7000",
        help="HOST:PORT of a router, or several, comma-separated (default 127.0.0.1:7000)",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    serving.add_tls_arguments(status)
    status.set_defaults(run=status_main)

    add = actions.add_parser(
        "add-node",
        help="add a running node (started with --join) and move about S/(n+1) slots onto it",
        description="Wait until the node at --address answers health checks, add it to the cluster, and move "
        "slots onto it while the cluster serves (a few at a time; each slot pauses its writes for a moment). "
        "Shows progress and exits 0 when every slot has moved. Start the node first, on its host: "
        "`yunkai node --join --data-dir D --host 0.0.0.0 --advertise HOST:PORT --port PORT`.",
    )
    _job_arguments(add, node=True)
    add.add_argument(
        "--wait-node-s", type=float, default=60.0, help="how long to wait for the node to be healthy (default 60)"
    )
    add.set_defaults(run=add_node_main)

    drain = actions.add_parser(
        "drain-node",
        help="move every slot away from a node, then remove it from the cluster",
        description="Move the node's slots onto the others (counts stay within one) while the cluster serves, "
        "then remove it from the map. The node can be stopped once this exits 0.",
    )
    _job_arguments(drain, node=True)
    drain.set_defaults(run=drain_node_main)

    rebalance = actions.add_parser(
        "rebalance",
        help="move slots so that every node owns its share",
        description="Move slots so that each active node owns floor(S/n) or ceil(S/n) of them (balanced "
        "rendezvous placement), while the cluster serves.",
    )
    _job_arguments(rebalance, node=False)
    rebalance.set_defaults(run=rebalance_main)

    step_down = actions.add_parser(
        "step-down",
        help="before a planned restart: hand the node's slots to other members and leave every configuration",
        description="Each slot the node leads gets a new primary (the follower holding the most of it; its writes "
        "pause for about a lease), the node leaves every slot's configuration (its slots keep R - 1 copies) and "
        "no copy is made onto it until `cluster resume`. Then stop the node, upgrade it, start it, and resume "
        "it (docs/operations.md, 'A rolling upgrade'). Needs replicas; refused while a job runs or when a slot "
        "it leads has no other live copy.",
    )
    _job_arguments(step_down, node=True, waits=False)
    step_down.set_defaults(run=step_down_main)

    resume = actions.add_parser(
        "resume",
        help="after a planned restart: make the node a copy target again and wait until R copies are back",
        description="The stepped-down node is active again; repair copies slots onto it to restore R copies. "
        "Shows the repair's progress and exits 0 once no slot is under-replicated (--no-wait: at once).",
    )
    _job_arguments(resume, node=True)
    resume.add_argument(
        "--wait-repair-s", type=float, default=3600.0, help="how long to wait for R copies (default 3600)"
    )
    resume.set_defaults(run=resume_main)


def _without_console(args: Sequence[str]) -> list[str]:
    """Router flags without the console's port: one router of a local cluster serves it."""
    kept: list[str] = []
    skip = False
    for word in args:
        if skip:
            skip = False
        elif word == "--console-port":
            skip = True
        else:
            kept.append(word)
    return kept


def _job_arguments(parser: argparse.ArgumentParser, node: bool, waits: bool = True) -> None:
    parser.add_argument(
        "--router",
        default="127.0.0.1:7000",
        help="HOST:PORT of a router, or several, comma-separated: the next is used when one stops answering"
        " (default 127.0.0.1:7000)",
    )
    parser.add_argument(
        "--wait-controller-s",
        type=float,
        default=60.0,
        help="how long to retry while no router is the controller (an election) (default 60)",
    )
    if node:
        parser.add_argument("--address", required=True, help="HOST:PORT of the node, as the cluster reaches it")
    if waits:
        parser.add_argument("--no-wait", action="store_true", help="return once the job has started")
    serving.add_tls_arguments(parser)


class LocalCluster:
    """Routers and N nodes as child processes of this one (and an etcd, with several routers)."""

    def __init__(
        self,
        data_dir: str,
        nodes: int,
        port: int,
        metrics: bool = False,
        slots_total: int | None = None,
        router_env: dict[str, str] | None = None,
        routers: int = 1,
        router_args: Sequence[str] = (),
        replicas: int = 1,
        node_args: Sequence[str] = (),
        tls_dir: str | None = None,
        insecure: bool = False,
    ) -> None:
        assert routers >= 1
        self.data_dir = data_dir
        # Mutual TLS unless `insecure`: certificates in `tls_dir` (else YUNKAI_TLS_DIR, else
        # <data_dir>/tls), made by start() where missing: a CA, one per role, one per node.
        # Like every process, it takes YUNKAI_INSECURE=1 when given no directory.
        tls_dir = tls_dir or os.environ.get(TLS_DIR_ENV) or None
        insecure = insecure or (tls_dir is None and os.environ.get(INSECURE_ENV, "") in ("1", "true", "yes"))
        self.tls_dir = None if insecure else tls_dir
        if not insecure and self.tls_dir is None:
            self.tls_dir = os.path.join(data_dir, "tls")
        self.router_env = dict(router_env or {})
        self.router_args = list(router_args) + (["--replicas", str(replicas)] if replicas > 1 else [])
        self.node_args = list(node_args)
        self.nodes: list[NodeProcess] = []
        self.sizing = ["--slots-total", str(slots_total)] if slots_total else []
        for i in range(1, nodes + 1):
            extra = ["--join", "--log-level", "WARNING", *self.sizing, *self.identity_args(f"node-{i}")]
            extra += self.node_args
            if metrics:
                extra += ["--metrics-port", str(port + 100 + i)]
            node = NodeProcess(os.path.join(data_dir, f"node-{i}"), extra)
            node.port = port + i if port else 0
            self.nodes.append(node)
        self.router_port = port
        self.router_count = routers
        self.metrics = metrics
        self.routers: list[RouterProcess] = []
        self.etcd = (
            EtcdProcess(os.path.join(data_dir, "etcd"), os.path.join(data_dir, "etcd.log"), self.tls_dir)
            if routers > 1
            else None
        )

    @property
    def router(self) -> RouterProcess | None:
        """The first router (the only one without --routers)."""
        return self.routers[0] if self.routers else None

    def identity_args(self, name: str) -> list[str]:
        """The flags that give a process of this cluster the certificate `name` (or --insecure)."""
        if self.tls_dir is None:
            return ["--insecure"]
        return ["--tls-dir", self.tls_dir, "--tls-name", name]

    def export_identity(self) -> None:
        """Point this process's clients (and the processes it starts) at this cluster's
        certificates, YUNKAI_TLS_DIR, or at plaintext, YUNKAI_INSECURE=1 (benchmarks)."""
        if self.tls_dir is None:
            os.environ.pop(TLS_DIR_ENV, None)
            os.environ[INSECURE_ENV] = "1"
        else:
            os.environ.pop(INSECURE_ENV, None)
            os.environ[TLS_DIR_ENV] = self.tls_dir

    def tls(self, role: str = "service") -> serving.Tls | None:
        """A client's TLS material for this cluster (None when it is --insecure)."""
        return None if self.tls_dir is None else serving.Tls.load(self.tls_dir, role)

    def _make_certificates(self) -> None:
        if self.tls_dir is None:
            return
        from serving import certs  # cryptography is loaded only where certificates are made

        certs.init(self.tls_dir)
        names = [f"node-{i}" for i in range(1, len(self.nodes) + 1)] + [f"router-{i}" for i in range(2, 10)]
        for name in names:
            if not os.path.exists(os.path.join(self.tls_dir, f"{name}.pem")):
                certs.issue(self.tls_dir, name.partition("-")[0], name)

    def start(self) -> LocalCluster:
        try:
            self._make_certificates()
            if self.etcd is not None:
                self.etcd.start()
            for node in self.nodes:
                node.start()
            for index in range(self.router_count):
                self.routers.append(self._start_router(index))
        except BaseException:
            self.stop()
            raise
        return self

    def router_process(self, index: int) -> RouterProcess:
        """Router `index` (0-based), not started: its directory, flags and port."""
        extra = ["--nodes", ",".join(n.address for n in self.nodes), "--log-level", "WARNING", *self.sizing]
        extra += self.identity_args("router" if index == 0 else f"router-{index + 1}")
        extra += self.router_args if index == 0 else _without_console(self.router_args)
        if self.etcd is not None:
            extra += ["--metastore", self.etcd.url]
        if self.metrics:
            extra += ["--metrics-port", str(self.router_port + 100 - index)]
        router = RouterProcess(os.path.join(self.data_dir, "router" if index == 0 else f"router-{index + 1}"), extra)
        router.env = self.router_env
        if self.router_port:
            router.port = self.router_port if index == 0 else self.router_port + len(self.nodes) + index
        return router

    def _start_router(self, index: int) -> RouterProcess:
        return self.router_process(index).start()

    @property
    def address(self) -> str:
        assert self.router is not None
        return self.router.address

    @property
    def addresses(self) -> str:
        """Every router, comma-separated (what --router takes)."""
        return ",".join(router.address for router in self.routers)

    def new_node(self, name: str) -> NodeProcess:
        """A node process for this cluster, not started (for add-node), with a certificate of its own."""
        if self.tls_dir is not None and not os.path.exists(os.path.join(self.tls_dir, f"{name}.pem")):
            from serving import certs

            certs.issue(self.tls_dir, "node", name)
        extra = ["--join", "--log-level", "WARNING", *self.sizing, *self.identity_args(name), *self.node_args]
        return NodeProcess(os.path.join(self.data_dir, name), extra)

    def log_tails(self, lines: int = 20) -> str:
        """The last lines of every router's and node's log (for a failed check's message)."""
        processes: list[ServiceProcess] = [*self.routers, *self.nodes]
        return "\n".join(f"--- {p.kind} {p.address} ({p.log_path}):\n{p.log_tail(lines)}" for p in processes)

    def stop(self) -> None:
        for router in self.routers:
            router.stop()
        for node in self.nodes:
            node.stop()
        if self.etcd is not None:
            self.etcd.stop()


def up_main(args: argparse.Namespace) -> int:
    if args.nodes < 1:
        print("yunkai cluster up: --nodes must be at least 1", file=sys.stderr)
        return 2
    if args.routers < 1:
        print("yunkai cluster up: --routers must be at least 1", file=sys.stderr)
        return 2
    if args.routers > 1 and shutil.which("etcd") is None:
        print(
            "yunkai cluster up: --routers above 1 keeps the shard map in etcd, which is not installed here;"
            " run cluster/install-etcd.sh",
            file=sys.stderr,
        )
        return 2
    copies = args.replicas if args.replicas is not None else min(3, args.nodes)
    if not 1 <= copies <= args.nodes:
        print(f"yunkai cluster up: --replicas must be 1 to --nodes ({args.nodes})", file=sys.stderr)
        return 2
    cluster = LocalCluster(
        args.data_dir,
        args.nodes,
        args.port,
        args.metrics,
        routers=args.routers,
        replicas=copies,
        tls_dir=args.tls_dir,
        insecure=args.insecure,
        router_args=["--console-port", str(args.port + 443)] if args.console else [],
    )
    routers = "a router" if args.routers == 1 else f"{args.routers} routers, an etcd"
    print(
        f"starting {routers} and {args.nodes} nodes, {copies} copies of each slot (data in {args.data_dir}) ...",
        flush=True,
    )
    try:
        cluster.start()
    except ProcessFailed as error:
        print(f"yunkai cluster up: a process failed to start:\n{error}", file=sys.stderr)
        return 1
    if cluster.etcd is not None:
        print(f"etcd    {cluster.etcd.endpoint}   data {cluster.etcd.data_dir}")
    for router in cluster.routers:
        print(f"router  {router.address}")
    for node in cluster.nodes:
        print(f"node    {node.address}   data {node.data_dir}")
    if cluster.tls_dir is None:
        print("PLAINTEXT (--insecure): no identities, anyone who reaches these ports is trusted")
    else:
        print(f"mutual TLS; identities in {cluster.tls_dir}: `export {TLS_DIR_ENV}={cluster.tls_dir}` for commands")
    print("serving; Ctrl-C or SIGTERM stops the cluster", flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(0.5):
            dead = [
                p for p in [*cluster.routers, *cluster.nodes] if p.process is not None and p.process.poll() is not None
            ]
            if dead:
                print(f"yunkai cluster up: {dead[0].kind} {dead[0].address} exited:\n{dead[0].log_tail()}")
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping ...", flush=True)
        cluster.stop()
    return 0


def _wait_healthy(address: str, tls: serving.Tls | None, wait_s: float) -> str | None:
    """None once the node answers SERVING, else why not."""
    deadline = time.monotonic() + wait_s
    why = "no answer"
    with serving.sync_channel(address, tls) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return None
                why = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as error:
                why = f"{error.code().name} {error.details()}"
            if time.monotonic() >= deadline:
                return why
            time.sleep(0.5)


def add_node_main(args: argparse.Namespace) -> int:
    print(f"waiting for {args.address} to be healthy ...", flush=True)
    why = _wait_healthy(args.address, _operator_tls(args), args.wait_node_s)
    if why is not None:
        print(
            f"yunkai cluster add-node: {args.address} is not healthy after {args.wait_node_s:g}s: {why}",
            file=sys.stderr,
        )
        return 1
    return _run_job(args, "add-node", lambda stub: stub.AddNode(cluster_pb2.AddNodeRequest(address=args.address)))


def step_down_main(args: argparse.Namespace) -> int:
    routers = _Routers(args.router, _operator_tls(args))
    try:
        request = cluster_pb2.StepDownRequest(address=args.address)
        reply = _call_controller(routers, "step-down", lambda s: s.StepDown(request), args.wait_controller_s)
        if reply is None:
            return 1
        print(
            f"{args.address} stepped down: {reply.handed_over} slots handed to other members, left {reply.left}"
            f" it followed; stop it, restart it, then `yunkai cluster resume --address {args.address}`"
        )
        return 0
    finally:
        routers.close()


def resume_main(args: argparse.Namespace) -> int:
    routers = _Routers(args.router, _operator_tls(args))
    try:
        request = cluster_pb2.ResumeRequest(address=args.address)
        reply = _call_controller(routers, "resume", lambda s: s.Resume(request), args.wait_controller_s)
        if reply is None:
            return 1
        state = cluster_pb2.NodeState.Name(reply.state).removeprefix("NODE_")
        print(f"{args.address} is {state}", flush=True)
        if args.no_wait:
            return 0
        return _wait_replicated(routers, args.wait_repair_s)
    finally:
        routers.close()


def _wait_replicated(routers: _Routers, wait_s: float) -> int:
    """Until no slot is under-replicated and no job runs, showing repair's progress."""
    deadline = time.monotonic() + wait_s
    shown = ""
    told: set[str] | None = None  # failed jobs already shown, or failed before this waited
    while True:
        try:
            status = routers.stub().Status(cluster_pb2.StatusRequest(), timeout=10)
        except grpc.RpcError as error:
            if time.monotonic() >= deadline:
                print(f"yunkai cluster resume: {error.code().name}: {error.details()}", file=sys.stderr)
                return 1
            routers.next()
            time.sleep(1.0)
            continue
        running = [job for job in status.jobs if job.state == cluster_pb2.JOB_RUNNING]
        line = f"under-replicated slots: {status.slots_under_replicated}" + "".join(
            f"; {job.kind} {job.slots_moved}/{job.slots_planned} copies" for job in running
        )
        if line != shown:
            print(line, flush=True)
            shown = line
        failed = {job.id: job for job in status.jobs if job.state == cluster_pb2.JOB_FAILED}
        if told is None:
            told = set(failed)
        for job_id in failed.keys() - told:
            told.add(job_id)
            print(f"{failed[job_id].kind} {job_id} failed: {failed[job_id].error}", flush=True)
        if not status.slots_under_replicated and not running:
            print("every slot has its R copies")
            return 0
        if time.monotonic() >= deadline:
            print(f"yunkai cluster resume: still under-replicated after {wait_s:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.5)


def drain_node_main(args: argparse.Namespace) -> int:
    return _run_job(args, "drain-node", lambda stub: stub.DrainNode(cluster_pb2.DrainNodeRequest(address=args.address)))


def rebalance_main(args: argparse.Namespace) -> int:
    return _run_job(args, "rebalance", lambda stub: stub.Rebalance(cluster_pb2.RebalanceRequest()))


class _Routers:
    """The routers a command may use, in order: a call goes to the current one and, when it
    stops answering, to the next."""

    def __init__(self, addresses: str, tls: serving.Tls | None) -> None:
        self.addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        self._tls = tls
        self._current = 0
        self._channel: grpc.Channel | None = None

    def stub(self) -> cluster_pb2_grpc.ClusterStub:
        if self._channel is None:
            self._channel = serving.sync_channel(self.addresses[self._current], self._tls)
        return cluster_pb2_grpc.ClusterStub(self._channel)

    @property
    def current(self) -> str:
        return self.addresses[self._current]

    def next(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._current = (self._current + 1) % len(self.addresses)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


def _run_job(args: argparse.Namespace, name: str, start: object) -> int:
    routers = _Routers(args.router, _operator_tls(args))
    try:
        job = _start_job(routers, name, start, args.wait_controller_s)
        if job is None:
            return 1
        print(f"job {job.id}: {name} {job.node}".rstrip(), flush=True)
        if args.no_wait:
            print(f"started; follow it with `yunkai cluster status --router {args.router}`")
            return 0
        return _follow(routers, job.id, name)
    finally:
        routers.close()


def _start_job(routers: _Routers, name: str, start: object, wait_s: float) -> cluster_pb2.Job | None:
    """Start the job on whichever router answers; while no router is the controller (an
    election), try again for up to `wait_s`. The same request twice starts one job."""
    return _call_controller(routers, name, start, wait_s)  # type: ignore[arg-type]


def _call_controller(
    routers: _Routers, name: str, call: Callable[[cluster_pb2_grpc.ClusterStub], Reply], wait_s: float
) -> Reply | None:
    """A call the controller answers, made through whichever router answers; while no router
    is the controller (an election), tried again for up to `wait_s`. None (said on stderr)
    if it was refused."""
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            return call(routers.stub())
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                print(f"yunkai cluster {name}: {error.code().name}: {error.details()}", file=sys.stderr)
                return None
            if not waited:
                print(f"waiting for a controller ({routers.current}: {error.details()}) ...", flush=True)
                waited = True
            if "controller" not in str(error.details()):
                routers.next()  # this router itself does not answer
            time.sleep(1.0)


def _follow(routers: _Routers, job_id: str, name: str) -> int:
    tty = sys.stdout.isatty()
    shown = 0.0
    misses = 0
    # A router that is not the controller sees the job once it has followed the map that
    # records it: a moment after the job started.
    unseen_until = time.monotonic() + JOB_UNSEEN_S
    while True:
        try:
            status = routers.stub().Status(cluster_pb2.StatusRequest(), timeout=10)
            misses = 0
        except grpc.RpcError as error:
            misses += 1
            if misses >= 20 * len(routers.addresses):
                print(f"\nyunkai cluster {name}: no router answers: {error.details()}", file=sys.stderr)
                return 1
            routers.next()
            time.sleep(PROGRESS_EVERY_S)
            continue
        job = next((j for j in status.jobs if j.id == job_id), None)
        if job is None and time.monotonic() < unseen_until:
            time.sleep(PROGRESS_EVERY_S / 5)
            continue
        if job is None:
            print(
                f"\nyunkai cluster {name}: the cluster no longer records job {job_id}; "
                "run the same command again to resume",
                file=sys.stderr,
            )
            return 1
        now = time.monotonic()
        if job.state != cluster_pb2.JOB_RUNNING or tty or now - shown >= 5:
            print(("\r" if tty else "") + _progress(job), end="" if tty else "\n", flush=True)
            shown = now
        if job.state == cluster_pb2.JOB_DONE:
            print(
                f"\ndone: {job.slots_moved} slots moved in {job.finished_unix_s - job.started_unix_s:.1f}s; "
                f"write pause per slot p50 {job.freeze_ms_p50:.0f} ms, p99 {job.freeze_ms_p99:.0f} ms, "
                f"max {job.freeze_ms_max:.0f} ms"
            )
            return 0
        if job.state == cluster_pb2.JOB_FAILED:
            print(f"\nyunkai cluster {name}: job {job_id} failed: {job.error}", file=sys.stderr)
            return 1
        time.sleep(PROGRESS_EVERY_S)


def _progress(job: cluster_pb2.Job) -> str:
    elapsed = max(1e-3, (job.finished_unix_s or time.time()) - job.started_unix_s)
    rate = job.slots_moved / elapsed
    left = job.slots_planned - job.slots_moved
    eta = f"~{left / rate:.0f}s left" if rate > 0 and left else ("planning" if not job.slots_planned else "")
    aborted = f", {job.moves_aborted} retried" if job.moves_aborted else ""
    return f"moved {job.slots_moved}/{job.slots_planned} slots, {rate:.1f} slots/s, {eta}{aborted}    "


def status_record(status: cluster_pb2.StatusResponse) -> dict[str, Any]:
    """The cluster's status as plain data (what `cluster status --json` prints)."""
    rows = [
        {
            "address": n.address,
            "id": n.id,
            "reported_id": n.reported_id,
            "state": cluster_pb2.NodeState.Name(n.state).removeprefix("NODE_").lower(),
            "slots": n.slots,
            "follows": n.follows,
            "zone": n.zone,
            "reachable": n.reachable,
            "slots_owned": n.slots_owned,
            "books": _node_books(n),
        }
        for n in status.nodes
    ]
    books = _cluster_books(status.books)
    moves = [
        {"slot": m.slot, "source": m.source, "target": m.target, "replaces": m.replaces, "id": m.id}
        for m in status.migrations
    ]
    jobs = [
        {
            "id": j.id,
            "kind": j.kind,
            "node": j.node,
            "state": cluster_pb2.JobState.Name(j.state).removeprefix("JOB_").lower(),
            "slots_planned": j.slots_planned,
            "slots_moved": j.slots_moved,
            "moves_aborted": j.moves_aborted,
            "freeze_ms_p50": round(j.freeze_ms_p50, 1),
            "freeze_ms_p99": round(j.freeze_ms_p99, 1),
            "freeze_ms_max": round(j.freeze_ms_max, 1),
            "elapsed_s": round((j.finished_unix_s or time.time()) - j.started_unix_s, 3),
            "error": j.error,
        }
        for j in status.jobs
    ]
    return {
        "map_version": status.map_version,
        "slots_total": status.slots_total,
        "cluster_id": status.cluster_id,
        "controller_term": status.controller_term,
        "leader": status.leader,
        "slots_without_copy": list(status.slots_without_copy),
        "replicas": status.replicas,
        "slots_under_replicated": status.slots_under_replicated,
        "nodes": rows,
        "migrations": moves,
        "jobs": jobs,
        "books": books,
    }


def status_main(args: argparse.Namespace) -> int:
    routers = _Routers(args.router, _operator_tls(args))
    status: cluster_pb2.StatusResponse | None = None
    failures = []
    for _router in routers.addresses:
        try:
            status = routers.stub().Status(cluster_pb2.StatusRequest(), timeout=10)
            break
        except grpc.RpcError as error:
            failures.append(f"{routers.current}: {error.code().name} {error.details()}")
            routers.next()
    routers.close()
    if status is None:
        print(f"yunkai cluster status: no router answered: {'; '.join(failures)}", file=sys.stderr)
        return 1
    record = status_record(status)
    if args.json:
        print(json.dumps(record))
        return 0
    rows, moves, jobs, books = record["nodes"], record["migrations"], record["jobs"], record["books"]
    controller = status.leader or "NONE (an election is under way, or the metastore is unreachable)"
    print(
        f"cluster {status.cluster_id or '?'}: map version {status.map_version}, {status.slots_total} slots,"
        f" {status.replicas or 1} copies each, {len(rows)} nodes; controller {controller},"
        f" term {status.controller_term}"
    )
    print(
        f"{'node':24} {'id':16} {'zone':8} {'state':9} {'leads':>6} {'follows':>7} {'owned':>6}"
        f" {'position fen':>14}  health"
    )
    for row, node in zip(rows, status.nodes, strict=True):
        health = "ok" if row["reachable"] else "UNREACHABLE"
        if row["reported_id"] and row["id"] and row["reported_id"] != row["id"]:
            health = f"LOST: the process there is node {row['reported_id']} (an empty or replaced data directory)"
        node_books = _node_books(node)
        position = f"{node_books['position']:+,}" if node_books else "-"
        if node_books and node_books["imbalance"]:
            health += f"; BOOKS OFF BY {node_books['imbalance']:+,} fen (debits - credits - position)"
        print(
            f"{row['address']:24} {row['id'] or '?':16} {row['zone'] or '-':8} {row['state']:9} {row['slots']:>6}"
            f" {row['follows']:>7} {row['slots_owned']:>6} {position:>14}  {health}"
        )
    print(_books_line(status.books))
    if status.slots_under_replicated:
        print(
            f"{status.slots_under_replicated} slots have fewer than {status.replicas} live copies"
            " (repair copies them again; see its job below)"
        )
    if status.slots_without_copy:
        shown = ", ".join(str(s) for s in status.slots_without_copy[:20])
        more = f" and {len(status.slots_without_copy) - 20} more" if len(status.slots_without_copy) > 20 else ""
        print(f"{len(status.slots_without_copy)} slots have NO LIVE COPY (refused until restored): {shown}{more}")
    if moves:
        print(f"{len(moves)} slot moves in flight:")
        for move in moves:
            role = "added" if not move["replaces"] else f"for {move['replaces']}"
            role = "primary" if move["replaces"] == move["source"] else role
            print(f"  slot {move['slot']:>5}  {move['source']} -> {move['target']} ({role}) ({move['id']})")
    for job, raw in zip(jobs, status.jobs, strict=True):
        print(f"job {job['id']} {job['kind']} {job['node']}: {job['state']}, {_progress(raw).strip()}")
        if job["error"]:
            print(f"  error: {job['error']}")
    healthy = (
        all(row["reachable"] for row in rows)
        and not status.slots_without_copy
        and not status.slots_under_replicated
        and status.leader
        and books["state"] in ("balanced", "in_flight")
    )
    return 0 if healthy else 1


def _fen(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _node_books(node: cluster_pb2.NodeStatus) -> dict[str, int] | None:
    """A node's trial balance as it reported it (node/books.py), or None if it did not."""
    if not node.HasField("books"):
        return None
    books = node.books
    figures = {name: _fen(getattr(books, name)) for name in ("debits", "credits", "position", "imbalance")}
    if any(value is None for value in figures.values()):
        return None
    shown = {name: value for name, value in figures.items() if value is not None}
    shown["legs_in_flight"] = books.legs_in_flight
    return shown


def _cluster_books(books: cluster_pb2.ClusterBooks) -> dict[str, object]:
    return {
        "state": cluster_pb2.BooksState.Name(books.state).removeprefix("BOOKS_").lower(),
        "debits": _fen(books.debits),
        "credits": _fen(books.credits),
        "legs_in_flight": books.legs_in_flight,
        "unbalanced_nodes": list(books.unbalanced_nodes),
        "unknown_nodes": list(books.unknown_nodes),
    }


def _books_line(books: cluster_pb2.ClusterBooks) -> str:
    """The cluster's trial balance in one line (pending included; node/books.py)."""
    debits, credits = _fen(books.debits), _fen(books.credits)
    sums = (
        f"sum of debits {debits:,} fen, of credits {credits:,} fen"
        if debits is not None and credits is not None
        else ""
    )
    if books.state == cluster_pb2.BOOKS_BALANCED:
        return f"books: balanced: sum of debits = sum of credits = {debits:,} fen (pending included)"
    if books.state == cluster_pb2.BOOKS_IN_FLIGHT:
        return f"books: {books.legs_in_flight} credit legs in flight; {sums} (they agree once the legs settle)"
    if books.state == cluster_pb2.BOOKS_UNBALANCED:
        nodes = ", ".join(books.unbalanced_nodes)
        off = f"nodes off their own equation: {nodes}" if nodes else "every node balances on its own"
        return f"books: UNBALANCED: {sums}, nothing in flight; {off}"
    unknown = ", ".join(books.unknown_nodes)
    return f"books: unknown: {f'no books from {unknown}' if unknown else 'the router sent none'}"


def _operator_tls(args: argparse.Namespace) -> serving.Tls | None:
    """The operator's identity (--tls-dir/--tls-name, default the `operator` certificate)."""
    return serving.client_tls(args, "operator")
