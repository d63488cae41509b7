"""The router process: `yunkai router --data-dir D --port P --nodes HOST:PORT,...`.

It serves the public yunkai.ledger.v1.Ledger service by routing each batch through the
routing core (split by owner node, fenced, coalesced with concurrent callers, merged back
in order, WRONG_SLOT and UNAVAILABLE retried within the caller's deadline), and the admin
service yunkai.cluster.v1.Cluster. A malformed request is refused whole before any part of
it is forwarded, so no node applies part of a bad batch.

The shard map lives in a metastore (router/metastore.py): a file in D on one host (the
default; one router process is its controller, and a second one on D refuses to start), or
etcd (`--metastore etcd://HOST:PORT,...`), where any number of routers on any hosts elect
one controller among them (router/control.py). Every router routes and answers status; an
admin call reaching a router that is not the controller is forwarded to the controller's
admin address (`--advertise`). A stored map wins over --nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

import serving
from proto import cluster_pb2, cluster_pb2_grpc, contract, ledger_pb2 as pb
from router import metrics, workers
from router.control import ControlPlane
from router.controller import DOWN_AFTER_S_DEFAULT, Controller, ControllerError, NodeClients, NotLeading
from router.etcd import Etcd, EtcdUnavailable, parse_endpoints
from router.leadership import TTL_S_DEFAULT, EtcdLeadership, Leadership, LocalLeadership
from router.metastore import EtcdMetastore, LocalMetastore, Metastore
from router.migration import CONCURRENCY_DEFAULT, REPAIR_RETRY_S_DEFAULT, Job, Mover
from router.routing import LedgerRouter
from router.slots import SLOTS_TOTAL_DEFAULT
from serving import BadRequest, Context, Refused, parse_request
from serving.authz import forwarded_metadata
from serving.tls import etcd_credentials

if TYPE_CHECKING:
    from router.console import Console

log = logging.getLogger("yunkai.router")

CLUSTER_SERVICE = "yunkai.cluster.v1.Cluster"
DEADLINE_DEFAULT_S = 10.0
FORWARD_TIMEOUT_S = 30.0
WORKERS_MAX = 64
REPLICAS_MAX = 5

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 7000,
    "data_dir": None,
    "nodes": "",
    "metrics_port": None,
    "log_level": "INFO",
    "slots_total": SLOTS_TOTAL_DEFAULT,
    "batch_events_max": contract.BATCH_EVENTS_MAX_DEFAULT,
    "move_concurrency": CONCURRENCY_DEFAULT,
    "repair_retry_s": REPAIR_RETRY_S_DEFAULT,
    "metastore": "",
    "lease_ttl": TTL_S_DEFAULT,
    "advertise": None,
    "workers": 1,
    "replicas": 1,
    "node_down_after_ms": int(DOWN_AFTER_S_DEFAULT * 1000),
    "worker": None,  # set by the supervisor of --workers N in each worker it starts
    "console_port": None,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serving.add_common_arguments(parser)
    parser.add_argument(
        "--data-dir", help="where the router keeps the shard map (required unless --metastore etcd://...)"
    )
    parser.add_argument(
        "--metastore",
        help="etcd://HOST:PORT[,HOST:PORT...][/PREFIX]: keep the shard map in etcd and elect one controller among"
        " every router using it (default: a file in --data-dir, this router the only controller)",
    )
    parser.add_argument(
        "--lease-ttl",
        type=int,
        help=f"seconds a controller's etcd lease lasts without renewal: how fast another router takes over"
        f" (default {TTL_S_DEFAULT})",
    )
    parser.add_argument(
        "--advertise", help="host:port other routers reach this one at, for forwarded admin calls (default host:port)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="router processes serving --port together (SO_REUSEPORT), one per core; at most one of them is the"
        " controller (default 1)",
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--replicas",
        type=int,
        help="R, the copies of each slot a new cluster keeps, on different nodes (and zones); a stored map keeps"
        " its own (default 1)",
    )
    parser.add_argument(
        "--node-down-after-ms",
        type=int,
        help="with replicas: a node that answers no health check this long is down, and its slots fail over"
        f" (default {int(DOWN_AFTER_S_DEFAULT * 1000)}; a node answering slowly of late gets twice its longest"
        " recent gap, up to 4x this)",
    )
    parser.add_argument("--nodes", help="HOST:PORT,... of the ledger nodes; seeds a new shard map")
    parser.add_argument("--slots-total", type=int, help=f"S for a new cluster (default {SLOTS_TOTAL_DEFAULT})")
    parser.add_argument("--batch-events-max", type=int, help="most events in one request (default 8192)")
    parser.add_argument(
        "--move-concurrency",
        type=int,
        help=f"slots moved at once by add-node, drain-node and rebalance (default {CONCURRENCY_DEFAULT})",
    )
    parser.add_argument(
        "--repair-retry-s",
        type=float,
        help="with replicas: a slot whose copy failed repeatedly is set aside, and repair tries it again after"
        f" this many seconds, doubled for each repair that gave up on it (default {REPAIR_RETRY_S_DEFAULT:.0f})",
    )
    parser.add_argument(
        "--console-port",
        type=int,
        help="serve the operator console (a web page, HTTPS with mutual TLS, operators only) on this port",
    )


def main(args: argparse.Namespace) -> int:
    settings = serving.resolve(args, "router", DEFAULTS)
    if int(settings["workers"]) > 1 and settings["worker"] is None:
        problem = _check(settings)
        if problem is not None:
            print(f"yunkai router: {problem}", file=sys.stderr)
            return 2
        return workers.supervise(settings, _worker_flags(settings))
    return serving.main(args, command="router", section="router", defaults=DEFAULTS, check=_check, serve=_serve)


def _worker_flags(settings: dict[str, Any]) -> list[str]:
    """The settings as flags, for each worker (they were resolved once, from every source)."""
    flags: list[str] = []
    for name, value in settings.items():
        if name in ("port", "workers", "worker") or value is None or value == "" or value is False:
            continue
        flag = f"--{name.replace('_', '-')}"
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def _check(settings: dict[str, Any]) -> str | None:
    metastore = str(settings["metastore"] or "")
    if metastore:
        try:
            parse_endpoints(metastore)
        except ValueError as error:
            return f"--metastore {error}"
    elif not settings["data_dir"]:
        return "--data-dir is required (or YUNKAI_ROUTER_DATA_DIR), or give --metastore etcd://..."
    if int(settings["lease_ttl"]) < 2:
        return "--lease-ttl must be at least 2 seconds (etcd's own minimum is about 1.5)"
    if not 1 <= int(settings["workers"]) <= WORKERS_MAX:
        return f"--workers must be 1 to {WORKERS_MAX}"
    if not 1 <= int(settings["replicas"]) <= REPLICAS_MAX:
        return f"--replicas must be 1 to {REPLICAS_MAX}"
    if int(settings["node_down_after_ms"]) < 200:
        return "--node-down-after-ms must be at least 200"
    if int(settings["move_concurrency"]) < 1:
        return "--move-concurrency must be at least 1"
    if not float(settings["repair_retry_s"]) > 0:
        return "--repair-retry-s must be above 0"
    batch_max = serving.MESSAGE_BYTES_MAX // contract.EVENT_BYTES_MAX
    if not 0 < int(settings["batch_events_max"]) <= batch_max:
        return f"--batch-events-max must be 1 to {batch_max} (a batch of the largest events must fit one message)"
    return None


def _timeout(context: Context) -> float:
    remaining = context.time_remaining()
    return DEADLINE_DEFAULT_S if remaining is None else max(0.0, remaining)


class RouterService:
    """yunkai.ledger.v1.Ledger, answered through the routing core."""

    def __init__(self, router: LedgerRouter, batch_events_max: int) -> None:
        self.router = router
        self.batch_events_max = batch_events_max

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, serving.Handler] = {method.name: self._batched(method) for method in contract.BATCHED}
        methods[contract.GET_ACCOUNT_TRANSFERS.name] = self.get_account_transfers
        return serving.unary_service(
            contract.LEDGER_SERVICE, methods, (), metrics.requests_total, metrics.request_latency_s, log
        )

    def _batched(self, method: contract.LedgerMethod[Any]) -> serving.Handler:
        """A batched method: refused whole if malformed, else routed event by event."""

        async def handle(data: bytes, context: Context) -> Message:
            request = parse_request(method.request, data)
            events = method.events(request)
            if not events:
                raise BadRequest(f"{method.field}: the batch is empty")
            if len(events) > self.batch_events_max:
                raise BadRequest(
                    f"{method.field}: {len(events)} events, more than the limit of {self.batch_events_max}"
                )
            if method.malformed is not None:
                for index, event in enumerate(events):
                    reason = method.malformed(event)
                    if reason is not None:
                        raise BadRequest(f"{method.field}[{index}].{reason}")
            results = await self.router.route(method, events, _timeout(context), len(data))
            return method.response(results=results)

        return handle

    async def get_account_transfers(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.GetAccountTransfersRequest, data)
        problem = contract.malformed_history(request, self.batch_events_max)
        if problem is not None:
            raise BadRequest(problem)
        return await self.router.get_account_transfers(request, _timeout(context))


class ClusterService:
    """yunkai.cluster.v1.Cluster: the shard map, the cluster's status, and operator jobs
    (run by the controller; forwarded to it by any other router)."""

    REFUSALS: serving.Refusals = (
        # Deposed mid-change (its lease lapsed): an election is on; the caller retries.
        (NotLeading, grpc.StatusCode.UNAVAILABLE),
        (ControllerError, grpc.StatusCode.FAILED_PRECONDITION),
        # The metastore is away: nothing can change the map now; the caller retries.
        (EtcdUnavailable, grpc.StatusCode.UNAVAILABLE),
    )

    def __init__(self, control: ControlPlane, credentials: grpc.ChannelCredentials | None) -> None:
        self.control = control
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, serving.Handler] = {
            "GetShardMap": self.get_shard_map,
            "Status": self.status,
            "AddNode": self.add_node,
            "DrainNode": self.drain_node,
            "Rebalance": self.rebalance,
            "StepDown": self.step_down,
            "Resume": self.resume,
        }
        streams = {"WatchShardMap": grpc.unary_stream_rpc_method_handler(self.watch_shard_map)}
        return serving.unary_service(
            CLUSTER_SERVICE, methods, self.REFUSALS, metrics.requests_total, metrics.request_latency_s, log, streams
        )

    async def get_shard_map(self, data: bytes, context: Context) -> Message:
        parse_request(cluster_pb2.GetShardMapRequest, data)
        return self.control.view.current().to_proto()

    async def watch_shard_map(self, data: bytes, context: Context) -> AsyncIterator[bytes]:
        try:
            request = parse_request(cluster_pb2.WatchShardMapRequest, data)
        except BadRequest as error:
            await context.abort(error.code, str(error))
            return
        with serving.open_ended():  # a watcher keeps its stream as long as it likes: a stop ends it
            async for shard_map in self.control.view.watch(request.known_version):
                yield shard_map.to_proto().SerializeToString()

    async def status(self, data: bytes, context: Context) -> Message:
        parse_request(cluster_pb2.StatusRequest, data)
        return await self.control.status()

    async def add_node(self, data: bytes, context: Context) -> Message:
        request = parse_request(cluster_pb2.AddNodeRequest, data)
        mover = self._mover()
        if mover is None:
            return await self._forward("AddNode", request, context)
        job: Job = await mover.add_node(_address(request.address))
        return job.to_proto()

    async def drain_node(self, data: bytes, context: Context) -> Message:
        request = parse_request(cluster_pb2.DrainNodeRequest, data)
        mover = self._mover()
        if mover is None:
            return await self._forward("DrainNode", request, context)
        job: Job = await mover.drain_node(_address(request.address))
        return job.to_proto()

    async def rebalance(self, data: bytes, context: Context) -> Message:
        request = parse_request(cluster_pb2.RebalanceRequest, data)
        mover = self._mover()
        if mover is None:
            return await self._forward("Rebalance", request, context)
        job: Job = await mover.rebalance()
        return job.to_proto()

    async def step_down(self, data: bytes, context: Context) -> Message:
        request = parse_request(cluster_pb2.StepDownRequest, data)
        controller = self._controller()
        if controller is None:
            return await self._forward("StepDown", request, context)
        handed_over, left = await controller.step_down(_address(request.address))
        return cluster_pb2.StepDownResponse(handed_over=handed_over, left=left)

    async def resume(self, data: bytes, context: Context) -> Message:
        request = parse_request(cluster_pb2.ResumeRequest, data)
        controller = self._controller()
        if controller is None:
            return await self._forward("Resume", request, context)
        state = await controller.resume(_address(request.address))
        return cluster_pb2.ResumeResponse(state=state)  # type: ignore[arg-type]

    def _controller(self) -> Controller | None:
        """This router's controller if it leads now."""
        if self.control.controller is not None and self.control.leadership.leading():
            return self.control.controller
        return None

    def _mover(self) -> Mover | None:
        """This router's job runner if it is the controller now."""
        if self.control.mover is not None and self.control.leadership.leading():
            return self.control.mover
        return None

    async def _forward(self, method: str, request: Message, context: Context) -> Message:
        """An admin call for the controller, made on it: its answer, or its refusal, as it gave it."""
        leader = await self.control.leader()
        if not leader or leader == self.control.leadership.admin_address:
            raise Refused(
                "no router is the controller right now (an election is under way, or the metastore is"
                " unreachable); retry in a few seconds",
                grpc.StatusCode.UNAVAILABLE,
            )
        channel = self._channels.get(leader)
        if channel is None:
            channel = self._channels[leader] = serving.channel(leader, self._credentials, [])
        remaining = context.time_remaining()
        try:
            reply: Message = await getattr(cluster_pb2_grpc.ClusterStub(channel), method)(
                request,
                timeout=FORWARD_TIMEOUT_S if remaining is None else remaining,
                metadata=forwarded_metadata(),  # the controller audits the operator, not this router
            )
        except grpc.aio.AioRpcError as error:
            raise Refused(f"the controller at {leader}: {error.details()}", error.code()) from None
        return reply

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def _address(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"address: {text!r} is not HOST:PORT")
    return text


async def _serve(settings: dict[str, Any]) -> None:
    await serving.serve(
        settings,
        role="router",
        services=[contract.LEDGER_SERVICE, CLUSTER_SERVICE],
        app=lambda server, port: _router(settings, server, port),
        log=log,
        reuse_port=settings["worker"] is not None,
    )


async def _console(settings: dict[str, Any], control: ControlPlane) -> tuple[Console, str] | None:
    """The operator console (router/console.py), when --console-port asks for it: it and its
    address. Of a router's --workers, the first serves it."""
    if settings["console_port"] is None or settings["worker"] not in (None, 0):
        return None
    if settings["tls"] is None:
        log.warning("--insecure: no operator console (it admits operators by their certificates)")
        return None
    from router.console import Console  # aiohttp: only in a router that serves the console

    audit = settings["audit_log"] or Path(str(settings["data_dir"] or ".")) / "audit.log"
    console = Console(control.status, Path(str(audit)))
    host = str(settings["host"])
    port = await console.start(host, int(settings["console_port"]), settings["tls"])
    return console, f"https://{host}:{port}/"


def _admin_address(settings: dict[str, Any], server: grpc.aio.Server, port: int) -> str:
    """Where other routers reach this one with forwarded admin calls: its port, or for a
    worker (whose port is shared) a private port of its own."""
    advertised = str(settings["advertise"] or f"{settings['host']}:{port}")
    if settings["worker"] is None:
        return advertised
    address = f"{settings['host']}:0"
    credentials = serving.server_credentials(settings["tls"])
    private = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    return f"{advertised.rpartition(':')[0]}:{private}"


def _control_plane(settings: dict[str, Any], admin_address: str, peers: grpc.ChannelCredentials | None) -> ControlPlane:
    """The metastore and election this router uses: etcd's, or a local directory's."""
    metastore: Metastore
    leadership: Leadership
    if settings["metastore"]:
        endpoints, prefix = parse_endpoints(str(settings["metastore"]))
        # etcd over mutual TLS with its own CA (serving/tls.py), plaintext only under --insecure.
        tls = settings["tls"]
        etcd = Etcd(endpoints, None if tls is None else etcd_credentials(tls.directory))
        metastore = EtcdMetastore(etcd, prefix)
        leadership = EtcdLeadership(etcd, prefix, admin_address, int(settings["lease_ttl"]))
    else:
        metastore = LocalMetastore(str(settings["data_dir"]))
        # Of a router's workers, worker 0 stands for controller; the others follow the map.
        candidate = settings["worker"] is None or int(settings["worker"]) == 0
        leadership = LocalLeadership(str(settings["data_dir"]), admin_address, candidate)
    nodes = [n.strip() for n in str(settings["nodes"] or "").split(",") if n.strip()]
    return ControlPlane(
        metastore,
        leadership,
        NodeClients(peers),
        nodes,
        int(settings["slots_total"]),
        int(settings["move_concurrency"]),
        replicas=int(settings["replicas"]),
        down_after_s=int(settings["node_down_after_ms"]) / 1000,
        repair_retry_s=float(settings["repair_retry_s"]),
    )


@contextlib.asynccontextmanager
async def _router(settings: dict[str, Any], server: grpc.aio.Server, port: int) -> AsyncIterator[Mapping[str, object]]:
    """The router's parts: its control plane (the map it follows, the controller when it
    leads) and the routing core. It serves once it has a map."""
    peers = serving.client_credentials(settings["tls"])
    admin_address = _admin_address(settings, server, port)
    if settings["metastore"] and not settings["advertise"] and str(settings["host"]) in ("0.0.0.0", "::", ""):
        log.warning(
            "no --advertise: other routers will forward admin calls to an address they cannot reach",
            extra={"admin": admin_address},
        )
    control = _control_plane(settings, admin_address, peers)
    router = LedgerRouter(control.view, batch_events_max=int(settings["batch_events_max"]), credentials=peers)
    cluster = ClusterService(control, peers)
    try:
        server.add_generic_rpc_handlers(
            [RouterService(router, int(settings["batch_events_max"])).handler(), cluster.handler()]
        )
        async with asyncio.TaskGroup() as tasks:
            plane = tasks.create_task(control.run())
            ready = tasks.create_task(control.ready.wait())
            await asyncio.wait({plane, ready}, return_when=asyncio.FIRST_COMPLETED)
            if plane.done():
                ready.cancel()
                error = plane.exception()
                raise serving.StartupError(str(error) if error else "the control plane stopped") from error
            shard_map = control.view.current()
            console = await _console(settings, control)
            yield {
                "map_version": shard_map.version,
                "nodes": sorted(shard_map.nodes),
                "metastore": str(settings["metastore"] or settings["data_dir"]),
                "admin": admin_address,
                "worker": settings["worker"],
                "console": console[1] if console else None,
            }
            if console:
                await console[0].stop()
            plane.cancel()
    finally:
        await router.close()
        await cluster.close()
        await control.close()
