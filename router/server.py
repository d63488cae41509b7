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
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import uvloop
from google.protobuf.message import Message

from proto import cluster_pb2, cluster_pb2_grpc, ledger_pb2 as pb, serving
from proto.contract import malformed_account, malformed_change, malformed_transfer
from proto.serving import BadRequest, parse_request
from router import metrics
from router.controller import Controller, ControllerError
from router.metastore import LocalMetastore
from router.migration import CONCURRENCY_DEFAULT, Job, Mover
from router.routing import LedgerRouter, RoutingError
from router.slots import SLOTS_TOTAL_DEFAULT

log = logging.getLogger("yunkai.router")

LEDGER_SERVICE = "yunkai.ledger.v1.Ledger"
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
    settings = serving.resolve(args, "router", DEFAULTS)
    if not settings["data_dir"]:
        print("yunkai router: --data-dir is required (or YUNKAI_ROUTER_DATA_DIR)", file=sys.stderr)
        return 2
    if int(settings["move_concurrency"]) < 1:
        print("yunkai router: --move-concurrency must be at least 1", file=sys.stderr)
        return 2
    serving.setup_logging(str(settings["log_level"]), "router")
    try:
        uvloop.run(_serve(settings))
    except ControllerError as error:
        log.error("cannot start", extra={"error": str(error)})
        print(f"yunkai router: {error}", file=sys.stderr)
        return 2
    return 0


def _timeout(context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    return DEADLINE_DEFAULT_S if remaining is None else max(0.0, remaining)


class RouterService:
    """yunkai.ledger.v1.Ledger, answered through the routing core."""

    def __init__(self, router: LedgerRouter, batch_events_max: int) -> None:
        self.router = router
        self.batch_events_max = batch_events_max

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]] = {
            "CreateAccounts": self.create_accounts,
            "CreateTransfers": self.create_transfers,
            "ChangeAccounts": self.change_accounts,
            "LookupAccounts": self.lookup_accounts,
            "LookupTransfers": self.lookup_transfers,
            "GetAccountTransfers": self.get_account_transfers,
        }
        return grpc.method_handlers_generic_handler(
            LEDGER_SERVICE,
            {name: grpc.unary_unary_rpc_method_handler(self._wrap(fn)) for name, fn in methods.items()},
        )

    def _wrap(
        self, fn: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        name = fn.__name__
        latency = metrics.request_latency_s.labels(name)

        async def handle(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = time.perf_counter()
            try:
                reply = await fn(data, context)
            except BadRequest as error:
                metrics.requests_total.labels(name, "INVALID_ARGUMENT").inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            except RoutingError as error:
                metrics.requests_total.labels(name, error.code.name).inc()
                await context.abort(error.code, str(error))
            metrics.requests_total.labels(name, "OK").inc()
            latency.observe(time.perf_counter() - started)
            return reply.SerializeToString()

        return handle

    def _check(self, field: str, events: Any, malformed: Callable[[Any], str | None] | None) -> None:
        if not events:
            raise BadRequest(f"{field}: the batch is empty")
        if len(events) > self.batch_events_max:
            raise BadRequest(f"{field}: {len(events)} events, more than the limit of {self.batch_events_max}")
        if malformed is not None:
            for index, event in enumerate(events):
                reason = malformed(event)
                if reason is not None:
                    raise BadRequest(f"{field}[{index}].{reason}")

    async def create_transfers(self, data: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse_request(pb.CreateTransfersRequest, data)
        self._check("transfers", request.transfers, malformed_transfer)
        results = await self.router.create_transfers(request.transfers, _timeout(context))
        return pb.CreateTransfersResponse(results=results)

    async def create_accounts(self, data: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse_request(pb.CreateAccountsRequest, data)
        self._check("accounts", request.accounts, malformed_account)
        return pb.CreateAccountsResponse(results=await self.router.create_accounts(request.accounts, _timeout(context)))

    async def change_accounts(self, data: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse_request(pb.ChangeAccountsRequest, data)
        self._check("changes", request.changes, malformed_change)
        return pb.ChangeAccountsResponse(results=await self.router.change_accounts(request.changes, _timeout(context)))

    async def lookup_accounts(self, data: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse_request(pb.LookupAccountsRequest, data)
        self._check("ids", request.ids, None)
        return pb.LookupAccountsResponse(results=await self.router.lookup_accounts(request.ids, _timeout(context)))

    async def lookup_transfers(self, data: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse_request(pb.LookupTransfersRequest, data)
        self._check("keys", request.keys, None)
        return pb.LookupTransfersResponse(results=await self.router.lookup_transfers(request.keys, _timeout(context)))

    async def get_account_transfers(self, data: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse_request(pb.GetAccountTransfersRequest, data)
        return await self.router.get_account_transfers(request, _timeout(context))


class ClusterService(cluster_pb2_grpc.ClusterServicer):
    """yunkai.cluster.v1.Cluster: the shard map, the cluster's status, and operator jobs."""

    def __init__(self, controller: Controller, mover: Mover) -> None:
        self.controller = controller
        self.mover = mover

    async def GetShardMap(  # noqa: N802 (gRPC method name)
        self, request: cluster_pb2.GetShardMapRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.ShardMap:
        return self.controller.current().to_proto()

    async def WatchShardMap(  # noqa: N802
        self, request: cluster_pb2.WatchShardMapRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cluster_pb2.ShardMap]:
        async for shard_map in self.controller.watch(request.known_version):
            yield shard_map.to_proto()

    async def Status(  # noqa: N802
        self, request: cluster_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.StatusResponse:
        response = await self.controller.status()
        response.migrations.extend(self.controller.current().to_proto().migrations)
        response.jobs.extend(job.to_proto() for job in self.mover.jobs)
        return response

    async def AddNode(  # noqa: N802
        self, request: cluster_pb2.AddNodeRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.Job:
        return await self._job(context, self.mover.add_node(_address(request.address)))

    async def DrainNode(  # noqa: N802
        self, request: cluster_pb2.DrainNodeRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.Job:
        return await self._job(context, self.mover.drain_node(_address(request.address)))

    async def Rebalance(  # noqa: N802
        self, request: cluster_pb2.RebalanceRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.Job:
        return await self._job(context, self.mover.rebalance())

    async def _job(self, context: grpc.aio.ServicerContext, start: Awaitable[Job]) -> cluster_pb2.Job:
        try:
            job = await start
        except BadRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except ControllerError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return job.to_proto()


def _address(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"address: {text!r} is not HOST:PORT")
    return text


async def _serve(settings: dict[str, Any]) -> None:
    nodes = [n.strip() for n in str(settings["nodes"] or "").split(",") if n.strip()]
    peers = serving.client_credentials(settings["tls_ca"])
    controller = Controller(
        LocalMetastore(str(settings["data_dir"])), nodes, int(settings["slots_total"]), credentials=peers
    )
    shard_map = await controller.load_or_seed()
    await controller.publish()  # nodes know the map before anyone is told the router serves
    await controller.recover_moves()
    mover = Mover(controller, int(settings["move_concurrency"]))
    router = LedgerRouter(controller, credentials=peers)
    server = serving.new_server()
    frame = serving.Serving(server, [LEDGER_SERVICE, CLUSTER_SERVICE])
    host = str(settings["host"])
    port = frame.listen(
        host, int(settings["port"]), serving.server_credentials(settings["tls_cert"], settings["tls_key"])
    )
    server.add_generic_rpc_handlers([RouterService(router, int(settings["batch_events_max"])).handler()])
    cluster_pb2_grpc.add_ClusterServicer_to_server(ClusterService(controller, mover), server)
    metrics_port = settings["metrics_port"]
    serving.start_metrics(host, None if metrics_port is None else int(metrics_port))
    stopping = serving.stop_signal()
    try:
        async with asyncio.TaskGroup() as tasks:
            reconciler = tasks.create_task(controller.run())
            jobs = tasks.create_task(mover.run())
            await frame.start(port, log, map_version=shard_map.version, nodes=sorted(shard_map.nodes))
            await stopping.wait()
            await frame.stop(log)
            reconciler.cancel()
            jobs.cancel()
    finally:
        await router.close()
        await controller.close()
    log.info("stopped")
