"""The lending process: `yunkai lending serve --data-dir D --port P`.

Serves yunkai.lending.v1.ProductService (the product factory) over gRPC with the shared
plumbing of proto/serving.py: settings from flags, YUNKAI_LENDING_* and `[lending]` in a
TOML file; JSON logs; health and reflection; graceful stop on SIGTERM. Bad parameters are
answered INVALID_ARGUMENT naming them, unknown products NOT_FOUND, lifecycle steps not
allowed FAILED_PRECONDITION; none of them changes anything.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import uvloop
from google.protobuf.message import Message
from prometheus_client import Counter, Histogram

from lending.products import InvalidProduct, LifecycleRefused, ProductNotFound, ProductStore, StoreFull
from proto import lending_pb2 as pb, serving
from proto.serving import BadRequest, parse_request

log = logging.getLogger("yunkai.lending")

PRODUCT_SERVICE = "yunkai.lending.v1.ProductService"

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 7300,
    "data_dir": None,
    "metrics_port": None,
    "tls_cert": None,
    "tls_key": None,
    "tls_ca": None,
    "log_level": "INFO",
}

requests_total = Counter("yunkai_lending_requests_total", "Lending RPCs answered", ["method", "status"])
request_latency_s = Histogram("yunkai_lending_request_latency_seconds", "RPC latency in the server", ["method"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serving.add_common_arguments(parser)
    parser.add_argument("--data-dir", help="directory of the product catalogue's RocksDB (required)")


def main(args: argparse.Namespace) -> int:
    settings = serving.resolve(args, "lending", DEFAULTS)
    if not settings["data_dir"]:
        print(
            "yunkai lending serve: --data-dir is required (or YUNKAI_LENDING_DATA_DIR, or data_dir in [lending])",
            file=sys.stderr,
        )
        return 2
    serving.setup_logging(str(settings["log_level"]), "lending")
    uvloop.run(_serve(settings))
    return 0


async def _serve(settings: dict[str, Any]) -> None:
    store = ProductStore(str(settings["data_dir"]))
    try:
        server = serving.new_server()
        frame = serving.Serving(server, [PRODUCT_SERVICE])
        host = str(settings["host"])
        credentials = serving.server_credentials(settings["tls_cert"], settings["tls_key"])
        port = frame.listen(host, int(settings["port"]), credentials)
        server.add_generic_rpc_handlers([ProductService(store).handler()])
        metrics_port = settings["metrics_port"]
        serving.start_metrics(host, None if metrics_port is None else int(metrics_port))
        stopping = serving.stop_signal()
        await frame.start(port, log, data_dir=settings["data_dir"], products=len(list(store.codes())))
        await stopping.wait()
        await frame.stop(log)
    finally:
        store.close()
    log.info("stopped")


class ProductService:
    """yunkai.lending.v1.ProductService over a ProductStore."""

    def __init__(self, store: ProductStore) -> None:
        self.store = store

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, Callable[[bytes], Awaitable[Message]]] = {
            "SaveDraft": self.save_draft,
            "PublishProduct": self.publish,
            "RetireProduct": self.retire,
            "GetProduct": self.get,
            "ListProducts": self.list,
        }
        return grpc.method_handlers_generic_handler(
            PRODUCT_SERVICE,
            {name: grpc.unary_unary_rpc_method_handler(self._wrap(name, fn)) for name, fn in methods.items()},
        )

    def _wrap(
        self, name: str, fn: Callable[[bytes], Awaitable[Message]]
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        latency = request_latency_s.labels(name)

        async def handle(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = time.perf_counter()
            code, message = grpc.StatusCode.OK, ""
            try:
                reply = await fn(data)
            except (BadRequest, InvalidProduct) as error:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(error)
            except ProductNotFound as error:
                code, message = grpc.StatusCode.NOT_FOUND, str(error)
            except LifecycleRefused as error:
                code, message = grpc.StatusCode.FAILED_PRECONDITION, str(error)
            except StoreFull as error:
                code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
            requests_total.labels(name, code.name).inc()
            if code is not grpc.StatusCode.OK:
                log.info("refused", extra={"method": name, "status": code.name, "reason": message})
                await context.abort(code, message)
            latency.observe(time.perf_counter() - started)
            return reply.SerializeToString()

        return handle

    async def save_draft(self, data: bytes) -> Message:
        request = parse_request(pb.SaveDraftRequest, data)
        if not request.HasField("parameters"):
            raise BadRequest("parameters: missing")
        product = self.store.save_draft(request.parameters)
        log.info("draft saved", extra={"code": product.code, "version": product.version})
        return product

    async def publish(self, data: bytes) -> Message:
        ref = _ref(data, version_required=True)
        product = self.store.publish(ref.code, ref.version)
        log.info("published", extra={"code": product.code, "version": product.version})
        return product

    async def retire(self, data: bytes) -> Message:
        ref = _ref(data, version_required=True)
        product = self.store.retire(ref.code, ref.version)
        log.info("retired", extra={"code": product.code, "version": product.version})
        return product

    async def get(self, data: bytes) -> Message:
        ref = _ref(data, version_required=False)
        return self.store.get(ref.code, ref.version)

    async def list(self, data: bytes) -> Message:
        request = parse_request(pb.ListProductsRequest, data)
        products = self.store.list(request.include_drafts, request.include_retired)
        return pb.ListProductsResponse(products=products)


def _ref(data: bytes, version_required: bool) -> pb.ProductRef:
    ref = parse_request(pb.ProductRef, data)
    if not ref.code:
        raise BadRequest("code: missing")
    if version_required and ref.version == 0:
        # Publishing or retiring "the latest" could act on a version the caller never reviewed.
        raise BadRequest("version: missing; name the version to act on")
    return ref
