"""The operator console: one web page a router serves (`--console-port`), for operators only.

What it shows, refreshed every two seconds, each read from what the CLI reads: the cluster's
status (the same `Status` answer as `yunkai cluster status`: nodes with their ids, states,
health, slots led and followed, books; under-replicated slots and slots without a copy; jobs
and slot moves with their progress; the cluster's trial balance), the router's traffic over
the last five minutes (ledger calls per second, p50 and p99, from its own request metrics,
sampled each second), and the router's newest audit events (its audit log, whose format is
serving/audit.py's).

Access: HTTPS with mutual TLS against the cluster's CA, and the client certificate must name
an operator (`spiffe://yunkai/operator/<name>`): anyone else's certificate gets 403, no
certificate fails the handshake. A router started with --insecure serves no console (there
is no identity to check). Read-only: it changes nothing.

Served by aiohttp (a well-kept asyncio HTTP server; the router's own loop runs it).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from proto import cluster_pb2
from router import metrics
from serving.tls import SPIFFE_PREFIX, Identity, Tls

log = logging.getLogger("yunkai.router.console")

TRAFFIC_SECONDS = 300  # the traffic shown: the last five minutes
AUDIT_EVENTS = 50
AUDIT_TAIL_BYTES = 256 * 1024
PAGE = Path(__file__).resolve().parent / "console.html"


class Traffic:
    """The router's ledger calls per second over the last TRAFFIC_SECONDS: counts and latency
    quantiles from the deltas of its request metrics (a quantile is reported as the upper
    bound of the histogram bucket it falls in, so it errs high, never low)."""

    def __init__(self) -> None:
        self.seconds: collections.deque[dict[str, Any]] = collections.deque(maxlen=TRAFFIC_SECONDS)
        self._last: tuple[float, list[tuple[float, float]]] | None = None

    @staticmethod
    def _buckets() -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of every ledger method's latency, summed."""
        summed: dict[float, float] = {}
        for family in metrics.request_latency_s.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    summed[bound] = summed.get(bound, 0.0) + sample.value
        return sorted(summed.items())

    def sample(self) -> None:
        now, buckets = time.time(), self._buckets()
        if self._last is not None:
            before = dict(self._last[1])
            delta = [(bound, count - before.get(bound, 0.0)) for bound, count in buckets]
            calls = delta[-1][1] if delta else 0.0
            self.seconds.append(
                {
                    "t": int(now),
                    "calls_per_s": calls / max(now - self._last[0], 1e-6),
                    "p50_ms": _quantile(delta, 0.5),
                    "p99_ms": _quantile(delta, 0.99),
                }
            )
        self._last = (now, buckets)


def _quantile(cumulative: list[tuple[float, float]], q: float) -> float | None:
    total = cumulative[-1][1] if cumulative else 0.0
    if total <= 0:
        return None
    for bound, count in cumulative:
        if count >= q * total:
            return bound * 1000 if bound != float("inf") else None
    return None


def audit_tail(path: Path, count: int = AUDIT_EVENTS) -> list[dict[str, Any]]:
    """The newest `count` entries of an audit log, newest first (none if there is no log)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - AUDIT_TAIL_BYTES))
            lines = handle.read().decode("ascii", "replace").splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in reversed(lines[1:] if len(lines) > count else lines):  # the first may be cut
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
        if len(events) == count:
            break
    return events


def operator_of(request: web.Request) -> Identity | None:
    """The operator the client certificate names, or None: as for gRPC calls
    (serving/tls.py certificate_identity), exactly one spiffe://yunkai/ URI, an operator's."""
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    if not peer:
        return None
    uris = [
        value for kind, value in peer.get("subjectAltName", ()) if kind == "URI" and value.startswith(SPIFFE_PREFIX)
    ]
    identity = Identity.parse(uris[0]) if len(uris) == 1 else None
    return identity if identity is not None and identity.role == "operator" else None


@web.middleware
async def operators_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    identity = operator_of(request)
    if identity is None:
        return web.Response(status=403, text="the console is for operators: present an operator's certificate\n")
    request["operator"] = identity
    return await handler(request)


class Console:
    """The console's web server, on the router's loop."""

    def __init__(self, status: Callable[[], Awaitable[cluster_pb2.StatusResponse]], audit_path: Path) -> None:
        self.status = status
        self.audit_path = audit_path
        self.traffic = Traffic()
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[operators_only])
        app.router.add_get("/", self._page)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/traffic", self._traffic)
        app.router.add_get("/api/audit", self._audit)
        return app

    async def start(self, host: str, port: int, tls: Tls) -> int:
        """Serve on (host, port) over mutual TLS; the port it listens on."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=tls.ca.decode())
        context.verify_mode = ssl.CERT_REQUIRED
        _load_chain(context, tls)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=context)
        await site.start()
        server = site._server  # aiohttp keeps the asyncio server here; its socket has the real port
        sockets = getattr(server, "sockets", None) or []
        bound = int(sockets[0].getsockname()[1]) if sockets else port
        self._sampler = asyncio.get_running_loop().create_task(self._sample())
        log.info("console serving", extra={"address": f"{host}:{bound}"})
        return bound

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _sample(self) -> None:
        while True:
            self.traffic.sample()
            await asyncio.sleep(1.0)

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(PAGE, headers={"Cache-Control": "no-store"})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        status = await self.status()
        body = json_format.MessageToDict(
            status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return web.json_response(body | {"operator": str(request["operator"])})

    async def _traffic(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"seconds": list(self.traffic.seconds)})

    async def _audit(self, request: web.Request) -> web.StreamResponse:
        events = await asyncio.to_thread(audit_tail, self.audit_path)
        return web.json_response({"events": events})


def _load_chain(context: ssl.SSLContext, tls: Tls) -> None:
    """The router's own certificate and key, from its TLS directory (serving/tls.py's layout)."""
    directory = Path(tls.directory)
    context.load_cert_chain(directory / f"{tls.name}.pem", directory / f"{tls.name}.key")
