"""Plumbing every yunkai gRPC server shares (DESIGN section 9).

Configuration resolves each setting from the command-line flag, then the environment
(`YUNKAI_<SECTION>_<NAME>`, e.g. YUNKAI_NODE_PORT), then an optional TOML file
(`[node] port = 7001`), then the built-in default. Logs are JSON lines on stderr. Every
server gets gRPC health and reflection, Prometheus metrics over HTTP, optional TLS, and
a graceful stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram, start_http_server
from pythonjsonlogger.json import JsonFormatter
from rocksdict import Options, Rdict, WriteOptions

MESSAGE_BYTES_MAX = 16 * 1024 * 1024
STOP_GRACE_S = 10.0

M = TypeVar("M", bound=Message)


class BadRequest(Exception):
    """A malformed request: answered with INVALID_ARGUMENT naming the field, nothing applied."""


def parse_request(message_type: type[M], data: bytes) -> M:
    """A request from its wire bytes; BadRequest (not gRPC's generic error) if they do not parse."""
    try:
        return message_type.FromString(data)
    except DecodeError as error:
        raise BadRequest(f"the request is not a valid {message_type.DESCRIPTOR.name}: {error}") from None


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every server takes. Defaults are None so that env and TOML can fill them."""
    parser.add_argument("--config", help="TOML file with a section per process kind ([node], [router], ...)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="gRPC port (0 picks a free one)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus HTTP port (default: none)")
    parser.add_argument("--tls-cert", help="PEM certificate chain; with --tls-key, serve TLS")
    parser.add_argument("--tls-key", help="PEM private key")
    parser.add_argument(
        "--tls-ca", help="PEM root certificates: call other yunkai processes over TLS, trusting these roots"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")


def resolve(args: argparse.Namespace, section: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """Settings from flags, then YUNKAI_<SECTION>_<NAME>, then the TOML file, then defaults."""
    file_values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or os.environ.get(f"YUNKAI_{section.upper()}_CONFIG")
    if config_path:
        with open(config_path, "rb") as handle:
            file_values = tomllib.load(handle).get(section, {})
        unknown = set(file_values) - set(defaults)
        if unknown:
            raise SystemExit(f"{config_path}: [{section}] has unknown settings: {', '.join(sorted(unknown))}")
    settings: dict[str, Any] = {}
    for name, default in defaults.items():
        value = getattr(args, name, None)
        env = os.environ.get(f"YUNKAI_{section.upper()}_{name.upper()}")
        if value is None and env is not None:
            value = _from_env(f"YUNKAI_{section.upper()}_{name.upper()}", env, default)
        if value is None:
            value = file_values.get(name, default)
        settings[name] = value
    return settings


def _from_env(variable: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off", ""):
            return False
        raise SystemExit(f"{variable}={text!r}: expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise SystemExit(f"{variable}={text!r}: expected a whole number") from None
    return text


def setup_logging(level: str = "INFO", process: str = "yunkai") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"process": process},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def server_credentials(cert_path: str | None, key_path: str | None) -> grpc.ServerCredentials | None:
    if not cert_path and not key_path:
        return None
    if not (cert_path and key_path):
        raise SystemExit("--tls-cert and --tls-key go together")
    with open(cert_path, "rb") as cert, open(key_path, "rb") as key:
        return grpc.ssl_server_credentials([(key.read(), cert.read())])


def client_credentials(ca_path: str | None) -> grpc.ChannelCredentials | None:
    """Credentials for calls to other yunkai processes: TLS trusting `ca_path`, or None (plaintext)."""
    if not ca_path:
        return None
    with open(ca_path, "rb") as handle:
        return grpc.ssl_channel_credentials(root_certificates=handle.read())


def channel(
    address: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
) -> grpc.aio.Channel:
    """An outgoing channel: TLS when credentials are given, else plaintext."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, credentials, options=options)


def new_server() -> grpc.aio.Server:
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            ("grpc.so_reuseport", 0),
        ]
    )


class Serving:
    """Health, reflection and metrics around a grpc.aio server."""

    def __init__(self, server: grpc.aio.Server, service_names: Iterable[str]) -> None:
        self.server = server
        self.service_names = list(service_names)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection([*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    def listen(self, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
        address = f"{host}:{port}"
        bound = (
            self.server.add_secure_port(address, credentials)
            if credentials is not None
            else self.server.add_insecure_port(address)
        )
        if bound == 0:
            raise SystemExit(f"cannot listen on {address}")
        return int(bound)

    async def start(self, port: int, log: logging.Logger, **details: object) -> None:
        """Serve, report SERVING, and say so: a JSON log line, and one machine-readable line
        on stdout (`{"event": "serving", "port": P}`) for the scripts and tests that start us.

        What setup built (modules, models, flows, tables) lives as long as the process: it is
        moved out of the collector's sight (gc.freeze), so a full collection while serving
        walks only what requests made (a full walk of a scoring or risk process took ~14 ms
        and showed up as the 30-40 ms p99.9 of a decision; docs/benchmarks.md)."""
        gc.collect()  # setup's own garbage is collected, not kept forever by the freeze
        gc.freeze()
        await self.server.start()
        await self.set_serving(True)
        log.info("serving", extra={"port": port, **details})
        print(json.dumps({"event": "serving", "port": port}), flush=True)

    async def stop(self, log: logging.Logger) -> None:
        """Report NOT_SERVING, stop accepting, and let in-flight RPCs finish (bounded)."""
        log.info("stopping")
        await self.set_serving(False)
        await self.server.stop(grace=STOP_GRACE_S)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)


def open_store(data_dir: str, name: str) -> tuple[Rdict, WriteOptions]:
    """An application server's own small RocksDB (`<data_dir>/<name>`, raw bytes), and the
    write options that fsync before returning: what the lending and risk stores write with,
    so nothing they acknowledge is lost."""
    os.makedirs(data_dir, exist_ok=True)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    sync = WriteOptions()
    sync.sync = True
    return Rdict(os.path.join(data_dir, name), options), sync


def start_metrics(host: str, port: int | None) -> None:
    if port is not None:
        start_http_server(port, addr=host)


def stop_signal() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    return stopping


# (exception types, the status a refusal of that kind is answered with)
Refusals = Sequence[tuple[type[Exception] | tuple[type[Exception], ...], grpc.StatusCode]]


def unary_service(
    service: str,
    methods: Mapping[str, Callable[[bytes], Awaitable[Message]]],
    refusals: Refusals,
    requests_total: Counter,
    request_latency_s: Histogram,
    log: logging.Logger,
) -> grpc.GenericRpcHandler:
    """A service of unary methods that take the raw request bytes (so a request that does
    not parse gets a clear INVALID_ARGUMENT from parse_request, not gRPC's generic failure).
    Each answer is its method's reply, or the status its refusal maps to in `refusals`,
    counted and logged (an INTERNAL one as an error); any other exception is a bug and fails
    the call loudly."""

    def wrap(name: str, fn: Callable[[bytes], Awaitable[Message]]) -> Callable[..., Awaitable[bytes]]:
        latency = request_latency_s.labels(name)

        async def handle(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = time.perf_counter()
            try:
                reply = await fn(data)
            except Exception as error:
                code = next((status for kinds, status in refusals if isinstance(error, kinds)), None)
                if code is None:
                    raise
                requests_total.labels(name, code.name).inc()
                level = logging.ERROR if code == grpc.StatusCode.INTERNAL else logging.INFO
                log.log(level, "refused", extra={"method": name, "status": code.name, "reason": str(error)})
                await context.abort(code, str(error))
            requests_total.labels(name, grpc.StatusCode.OK.name).inc()
            latency.observe(time.perf_counter() - started)
            return reply.SerializeToString()

        return handle

    return grpc.method_handlers_generic_handler(
        service, {name: grpc.unary_unary_rpc_method_handler(wrap(name, fn)) for name, fn in methods.items()}
    )
