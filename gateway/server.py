"""The gateway process: `yunkai gateway serve --router R --risk A --lending A --data-dir D --http-port H`.

Serves the partners' HTTPS API (gateway/api.py) with uvicorn on --http-port, on a socket
opened with SO_REUSEPORT so that several gateway processes share one port (the kernel spreads
connections over them; quotas are shared through --quota-store), and the operators' registry
(yunkai.gateway.v1.Partners, gateway/admin.py) over gRPC with mutual TLS on --port. Both run on
one uvloop. HTTPS presents the gateway's certificate (--tls-dir, role gateway); partners need
no client certificate (they hold tokens). --insecure serves plain HTTP, logged as a choice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import grpc
import uvicorn

import serving
from clients.ledger import LedgerClient
from gateway import admin
from gateway.api import LEDGER, Gateway, build
from gateway.quotas import QUOTA_STORE_DEFAULT, Quotas, QuotaStoreDown
from gateway.registry import Registry
from gateway.tokens import Tokens, load_key
from gateway.watcher import Watcher
from gateway.webhooks import WATCH_EVERY_S_DEFAULT, Webhooks
from proto import lending_pb2, risk_pb2
from serving import AuditLog, Identity, StartupError
from serving.authz import ANONYMOUS, GATEWAY
from serving.bootstrap import STOP_GRACE_S
from serving.files import private_dir

log = logging.getLogger("yunkai.gateway")

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 7500,
    "http_port": 8443,
    "data_dir": None,
    "metrics_port": None,
    "log_level": "INFO",
    "router": None,
    "risk": None,
    "lending": None,
    "token_key": None,
    "quota_store": QUOTA_STORE_DEFAULT,
    "watch_every_s": WATCH_EVERY_S_DEFAULT,
}
HTTP_BACKLOG = 2048
PARTNERS_AUDIT_LOG = "partners-audit.log"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serving.add_common_arguments(parser)
    parser.add_argument("--http-port", type=int, help="the partners' HTTPS port (default 8443; 0 picks a free one)")
    parser.add_argument("--data-dir", help="the process's own directory: its audit log (required)")
    parser.add_argument("--router", help="HOST:PORT of a router of the ledger (required): the registry lives there")
    parser.add_argument("--risk", help="HOST:PORT of `yunkai risk serve` (required): decisions")
    parser.add_argument("--lending", help="HOST:PORT of `yunkai lending serve` (required): loans")
    parser.add_argument(
        "--token-key",
        help="the file of the key that signs access tokens, shared by every gateway process of the deployment"
        " (made if missing; default: token.key in --data-dir)",
    )
    parser.add_argument(
        "--quota-store",
        help="where apps' calls are counted: async+redis://HOST:PORT, shared by the processes of one port;"
        f" memory:// counts in this process only (default {QUOTA_STORE_DEFAULT})",
    )
    parser.add_argument(
        "--watch-every-s",
        type=float,
        help="how often partners' loans and credit lines are looked at for overdue, freeze and unfreeze events"
        f" (default {WATCH_EVERY_S_DEFAULT:g})",
    )


def main(args: argparse.Namespace) -> int:
    return serving.main(args, command="gateway serve", section="gateway", defaults=DEFAULTS, check=_check, serve=_serve)


def _check(settings: dict[str, Any]) -> str | None:
    for name in ("data_dir", "router", "risk", "lending"):
        if not settings[name]:
            return f"--{name.replace('_', '-')} is required (or YUNKAI_GATEWAY_{name.upper()})"
    return None


async def _serve(settings: dict[str, Any]) -> None:
    await serving.serve(
        settings,
        role="gateway",
        services=[admin.PARTNERS_SERVICE],
        app=lambda server, port: _gateway(settings, server),
        log=log,
        reuse_port=True,
    )


def listen(host: str, port: int) -> socket.socket:
    """The HTTP socket, shared with sibling processes on the same port (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port} for HTTP: {error}") from None
    sock.listen(HTTP_BACKLOG)
    sock.setblocking(False)
    return sock


class _HttpServer(uvicorn.Server):
    """uvicorn's server without its own signal handlers: serving.serve owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def _gateway(settings: dict[str, Any], server: grpc.aio.Server) -> AsyncIterator[Mapping[str, object]]:
    tls = settings["tls"]
    data_dir = str(settings["data_dir"])
    private_dir(data_dir)
    quotas = Quotas(str(settings["quota_store"]))
    try:
        await quotas.check()
    except QuotaStoreDown as error:
        raise StartupError(str(error)) from None
    key = load_key(str(settings["token_key"] or os.path.join(data_dir, "token.key")))
    ledger = await LedgerClient.connect(str(settings["router"]), tls=tls, insecure=tls is None)
    credentials = serving.client_credentials(tls)
    to_risk = serving.channel(str(settings["risk"]), credentials, [])
    to_lending = serving.channel(str(settings["lending"]), credentials, [])
    registry = Registry(ledger)
    server.add_generic_rpc_handlers([admin.handler(registry, key)])
    webhooks = Webhooks(registry, key)
    loans = serving.SessionStub(to_lending, lending_pb2.DESCRIPTOR.services_by_name["LoanService"].full_name)
    watcher = Watcher(webhooks, ledger, loans, LEDGER, float(settings["watch_every_s"]))
    # The partners' calls have their own audit log (the admin calls are in the server's audit.log).
    audit = AuditLog(os.path.join(data_dir, PARTNERS_AUDIT_LOG))
    gateway = Gateway(
        audit=audit,
        ledger=ledger,
        registry=registry,
        tokens=Tokens(key),
        quotas=quotas,
        risk=serving.SessionStub(to_risk, risk_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name),
        loans=loans,
        webhooks=webhooks,
        opened_by=Identity(GATEWAY, "").uri if tls is not None else ANONYMOUS.uri,
    )
    sock = listen(str(settings["host"]), int(settings["http_port"]))
    http_port = sock.getsockname()[1]
    config = uvicorn.Config(
        build(gateway),
        log_config=None,
        access_log=False,
        lifespan="off",
        ssl_certfile=os.path.join(tls.directory, f"{tls.name}.pem") if tls is not None else None,
        ssl_keyfile=os.path.join(tls.directory, f"{tls.name}.key") if tls is not None else None,
        timeout_graceful_shutdown=int(STOP_GRACE_S),
    )
    http = _HttpServer(config)
    serving_http = asyncio.create_task(http.serve(sockets=[sock]))
    background = [asyncio.create_task(webhooks.run()), asyncio.create_task(watcher.run())]
    try:
        while not http.started:
            if serving_http.done():
                await serving_http  # its error, at startup
                raise StartupError("the HTTP server stopped as it started")
            await asyncio.sleep(0.01)
        yield {"http_port": http_port, "https": tls is not None, "quota_store": quotas.uri}
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        http.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving_http
        await gateway.idempotency.drain(STOP_GRACE_S)  # answers sent, their records still being stored
        sock.close()
        await audit.aclose()
        await webhooks.aclose()
        await to_risk.close()
        await to_lending.close()
        await ledger.close()
