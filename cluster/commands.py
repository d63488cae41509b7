"""`yunkai cluster up | status`: run a local cluster, and look at any cluster.

`up` starts a router on --port P and N ledger nodes on P+1 .. P+N, all on loopback, each
with its own directory under --data-dir, and keeps them in the foreground until Ctrl-C
or SIGTERM, when it stops the router and then the nodes (each finishes what it has in
flight). Run it again on the same --data-dir and the same cluster comes back: the nodes
keep their data and ports, and the router its shard map.

`status` asks a router (any host) for the map and each node's health.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

import grpc

from cluster.local import NodeProcess, ProcessFailed, RouterProcess
from proto import cluster_pb2, cluster_pb2_grpc


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
    up.set_defaults(run=up_main)

    status = actions.add_parser(
        "status",
        help="show nodes, slots per node and the map version",
        description="Ask a router for the shard map and every node's health.",
    )
    status.add_argument("--router", default="127.0.0.1:7000", help="HOST:PORT of a router (default 127.0.0.1:7000)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(run=status_main)


class LocalCluster:
    """A router and N nodes as child processes of this one."""

    def __init__(self, data_dir: str, nodes: int, port: int, metrics: bool = False) -> None:
        self.data_dir = data_dir
        self.nodes: list[NodeProcess] = []
        for i in range(1, nodes + 1):
            extra = ["--join", "--log-level", "WARNING"]
            if metrics:
                extra += ["--metrics-port", str(port + 100 + i)]
            node = NodeProcess(os.path.join(data_dir, f"node-{i}"), extra)
            node.port = port + i if port else 0
            self.nodes.append(node)
        self.router_port = port
        self.metrics = metrics
        self.router: RouterProcess | None = None

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            extra = ["--nodes", ",".join(n.address for n in self.nodes), "--log-level", "WARNING"]
            if self.metrics:
                extra += ["--metrics-port", str(self.router_port + 100)]
            self.router = RouterProcess(os.path.join(self.data_dir, "router"), extra)
            self.router.port = self.router_port
            self.router.start()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def address(self) -> str:
        assert self.router is not None
        return self.router.address

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        for node in self.nodes:
            node.stop()


def up_main(args: argparse.Namespace) -> int:
    if args.nodes < 1:
        print("yunkai cluster up: --nodes must be at least 1", file=sys.stderr)
        return 2
    cluster = LocalCluster(args.data_dir, args.nodes, args.port, args.metrics)
    print(f"starting a router and {args.nodes} nodes (data in {args.data_dir}) ...", flush=True)
    try:
        cluster.start()
    except ProcessFailed as error:
        print(f"yunkai cluster up: a process failed to start:\n{error}", file=sys.stderr)
        return 1
    print(f"router  {cluster.address}")
    for node in cluster.nodes:
        print(f"node    {node.address}   data {node.data_dir}")
    print("serving; Ctrl-C or SIGTERM stops the cluster", flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(0.5):
            dead = [
                p
                for p in [cluster.router, *cluster.nodes]
                if p is not None and p.process is not None and p.process.poll() is not None
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


def status_main(args: argparse.Namespace) -> int:
    try:
        with grpc.insecure_channel(args.router) as channel:
            status = cluster_pb2_grpc.ClusterStub(channel).Status(cluster_pb2.StatusRequest(), timeout=10)
    except grpc.RpcError as error:
        print(f"yunkai cluster status: {args.router}: {error.code().name} {error.details()}", file=sys.stderr)
        return 1
    rows = [
        {
            "address": n.address,
            "state": cluster_pb2.NodeState.Name(n.state).removeprefix("NODE_").lower(),
            "slots": n.slots,
            "reachable": n.reachable,
            "slots_owned": n.slots_owned,
        }
        for n in status.nodes
    ]
    if args.json:
        print(json.dumps({"map_version": status.map_version, "slots_total": status.slots_total, "nodes": rows}))
        return 0
    print(f"map version {status.map_version}, {status.slots_total} slots, {len(rows)} nodes")
    print(f"{'node':24} {'state':9} {'slots':>6} {'owned':>6}  health")
    for row in rows:
        health = "ok" if row["reachable"] else "UNREACHABLE"
        print(f"{row['address']:24} {row['state']:9} {row['slots']:>6} {row['slots_owned']:>6}  {health}")
    return 0 if all(row["reachable"] for row in rows) else 1
