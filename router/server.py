"""The router process: `yunkai router --data-dir D --port P --nodes HOST:PORT,...`.

It serves the public yunkai.ledger.v1.Ledger service by routing each batch through the
routing core (split by owner node, fenced, coalesced with concurrent callers, merged back
in order, WRONG_SLOT and UNAVAILABLE retried within the caller's deadline), and the admin
service yunkai.cluster.v1.Cluster from its controller. A malformed request is refused
whole before any part of it is forwarded, so no node applies part of a bad batch.
The shard map lives in D (the local metastore); a stored map wins over --nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message

import serving
from proto import cluster_pb2, contract, ledger_pb2 as pb
from router import metrics
from router.controller import Controller, ControllerError
from router.metastore import LocalMetastore
from router.migration import CONCURRENCY_DEFAULT, Job, Mover
from router.routing import LedgerRouter
from router.slots import SLOTS_TOTAL_DEFAULT
from serving import BadRequest, Context, parse_request

log = logging.getLogger("yunkai.router")

CLUSTER_SERVICE = "yunkai.cluster.v1.Cluster"
DEADLINE_DEFAULT_S = 10.0

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 7000,
    "data_dir": None,
    "nodes": "",
    "metrics_port": None,
    "tls_cert": None,
    "tls_key": None,
    "tls_ca": None,
    "log_level": "INFO",
    "slots_total": SLOTS_TOTAL_DEFAULT,
    "batch_events_max": 8192,
    "move_concurrency": CONCURRENCY_DEFAULT,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serving.add_common_arguments(parser)
    parser.add_argument("--data-dir", help="where the router keeps the shard map (required)")
    parser.add_argument("--nodes", help="HOST:PORT,... of the ledger nodes; seeds a new shard map")
    parser.add_argument("--slots-total", type=int, help=f"S for a new cluster (default {SLOTS_TOTAL_DEFAULT})")
    parser.add_argument("--batch-events-max", type=int, help="most events in one request (default 8192)")
    parser.add_argument(
        "--move-concurrency",
        type=int,
        help=f"slots moved at once by add-node, drain-node and rebalance (default {CONCURRENCY_DEFAULT})",
    )


def main(args: argparse.Namespace) -> int:
    return serving.main(args, command="router", section="router", defaults=DEFAULTS, check=_check, serve=_serve)


def _check(settings: dict[str, Any]) -> str | None:
    if not settings["data_dir"]:
        return "--data-dir is required (or YUNKAI_ROUTER_DATA_DIR)"
    if int(settings["move_concurrency"]) < 1:
        return "--move-concurrency must be at least 1"
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
            results = await self.router.route(method, events, _timeout(context))
            return method.response(results=results)

        return handle

    async def get_account_transfers(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.GetAccountTransfersRequest, data)
        return await self.router.get_account_transfers(request, _timeout(context))


class ClusterService:
    """yunkai.cluster.v1.Cluster: the shard map, the cluster's status, and operator jobs."""

    REFUSALS: serving.Refusals = ((ControllerError, grpc.StatusCode.FAILED_PRECONDITION),)

    def __init__(self, controller: Controller, mover: Mover) -> None:
        self.controller = controller
        self.mover = mover

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, serving.Handler] = {
            "GetShardMap": self.get_shard_map,
            "Status": self.status,
            "AddNode": self.add_node,
            "DrainNode": self.drain_node,
            "Rebalance": self.rebalance,
        }
        streams = {"WatchShardMap": grpc.unary_stream_rpc_method_handler(self.watch_shard_map)}
        return serving.unary_service(
            CLUSTER_SERVICE, methods, self.REFUSALS, metrics.requests_total, metrics.request_latency_s, log, streams
        )

    async def get_shard_map(self, data: bytes, context: Context) -> Message:
        parse_request(cluster_pb2.GetShardMapRequest, data)
        return self.controller.current().to_proto()

    async def watch_shard_map(self, data: bytes, context: Context) -> AsyncIterator[bytes]:
        try:
            request = parse_request(cluster_pb2.WatchShardMapRequest, data)
        except BadRequest as error:
            await context.abort(error.code, str(error))
            return
        async for shard_map in self.controller.watch(request.known_version):
            yield shard_map.to_proto().SerializeToString()

    async def status(self, data: bytes, context: Context) -> Message:
        parse_request(cluster_pb2.StatusRequest, data)
        response = await self.controller.status()
        response.migrations.extend(self.controller.current().to_proto().migrations)
        response.jobs.extend(job.to_proto() for job in self.mover.jobs)
        return response

    async def add_node(self, data: bytes, context: Context) -> Message:
        request = parse_request(cluster_pb2.AddNodeRequest, data)
        job: Job = await self.mover.add_node(_address(request.address))
        return job.to_proto()

    async def drain_node(self, data: bytes, context: Context) -> Message:
        request = parse_request(cluster_pb2.DrainNodeRequest, data)
        job: Job = await self.mover.drain_node(_address(request.address))
        return job.to_proto()

    async def rebalance(self, data: bytes, context: Context) -> Message:
        parse_request(cluster_pb2.RebalanceRequest, data)
        job: Job = await self.mover.rebalance()
        return job.to_proto()


def _address(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"address: {text!r} is not HOST:PORT")
    return text


async def _serve(settings: dict[str, Any]) -> None:
    await serving.serve(
        settings,
        services=[contract.LEDGER_SERVICE, CLUSTER_SERVICE],
        app=lambda server, port: _router(settings, server),
        log=log,
    )


@contextlib.asynccontextmanager
async def _router(settings: dict[str, Any], server: grpc.aio.Server) -> AsyncIterator[Mapping[str, object]]:
    """The router's parts: the controller (the map's one writer, with its metastore), the job
    mover, and the routing core; nodes know the map before anyone is told the router serves."""
    nodes = [n.strip() for n in str(settings["nodes"] or "").split(",") if n.strip()]
    peers = serving.client_credentials(settings["tls_ca"])
    controller = Controller(
        LocalMetastore(str(settings["data_dir"])), nodes, int(settings["slots_total"]), credentials=peers
    )
    router = LedgerRouter(controller, credentials=peers)
    try:
        try:
            shard_map = await controller.load_or_seed()
            await controller.publish()
            await controller.recover_moves()
        except ControllerError as error:
            raise serving.StartupError(str(error)) from error
        mover = Mover(controller, int(settings["move_concurrency"]))
        server.add_generic_rpc_handlers(
            [
                RouterService(router, int(settings["batch_events_max"])).handler(),
                ClusterService(controller, mover).handler(),
            ]
        )
        async with asyncio.TaskGroup() as tasks:
            reconciler = tasks.create_task(controller.run())
            jobs = tasks.create_task(mover.run())
            yield {"map_version": shard_map.version, "nodes": sorted(shard_map.nodes)}
            reconciler.cancel()
            jobs.cancel()
    finally:
        await router.close()
        await controller.close()
