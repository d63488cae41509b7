"""The one bootstrap of every yunkai server: settings, logs, listen, serve, stop.

    def main(args):                          # the subcommand's entry point
        return serving.main(args, command="node", section="node", defaults=DEFAULTS,
                            check=_check, serve=_serve)

    async def _serve(settings):
        await serving.serve(settings, services=[...], app=_app, log=log)

    @contextlib.asynccontextmanager
    async def _app(server, port):             # build, register handlers, run background work
        ...                                   # (resources it opens, it closes after the yield)
        yield {"detail": ...}                 # serving while suspended here

`serve` finds the process's identity (--tls-dir, serving/tls.py; plaintext only with
--insecure, logged), listens on --host/--port with mutual TLS behind the gate (who may call
what, per-caller limits: serving/authz.py), registers gRPC health (and reflection, only with
--reflection), puts the TLS material in `settings["tls"]` for the app's outgoing calls and the
gate in `settings["gate"]` (for calls the app makes to itself), enters the app, starts
Prometheus metrics (--metrics-port), reports SERVING (a JSON log line and one machine-readable
stdout line, `{"event": "serving", "port": P}`, for the scripts and tests that start us), and
waits for SIGTERM or SIGINT. Then it reports NOT_SERVING, ends the streams that last as long
as their peer keeps them open (handlers inside `open_ended()`: a primary's Replicate link, a
client's WatchShardMap; their peers see the stream end and open another elsewhere or later),
stops accepting, lets in-flight calls finish (at most STOP_GRACE_S), and leaves the app, which
finishes its own work (a node commits everything queued) and closes what it opened. (Before
open-ended streams were ended, a node of a replicated cluster took the whole grace, 10 s, to
stop: its peers' links never finish by themselves.)
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as grpc_reflection
from prometheus_client import Gauge, start_http_server

from serving.audit import AuditLog
from serving.authz import CallerLimits, Gate
from serving.config import check_common, resolve, setup_logging
from serving.handlers import StartupError
from serving.streams import end_all, serving_again
from serving.tls import TlsError, not_after, resolve_tls, warn_insecure
from serving.transport import new_server, server_credentials

STOP_GRACE_S = 10.0

Settings = dict[str, Any]
App = Callable[[grpc.aio.Server, int], AbstractAsyncContextManager[Mapping[str, object]]]

certificate_expiry = Gauge(
    "yunkai_tls_certificate_expiry_timestamp_seconds",
    "When the certificate this process presents (own) and the CA it trusts (ca) expire, Unix seconds",
    ["certificate"],
)


def main(
    args: argparse.Namespace,
    *,
    command: str,
    section: str,
    defaults: Settings,
    serve: Callable[[Settings], Coroutine[Any, Any, None]],
    check: Callable[[Settings], str | None] | None = None,
) -> int:
    """Resolve settings, refuse bad ones (exit 2 with `yunkai <command>: <why>`), set up logs,
    and run `serve` on uvloop until it returns (exit 0) or raises StartupError (exit 2)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung process's threads, on demand
    settings = resolve(args, section, defaults)
    problem = check_common(settings) or (check(settings) if check is not None else None)
    if problem is not None:
        print(f"yunkai {command}: {problem}", file=sys.stderr)
        return 2
    setup_logging(str(settings["log_level"]), section)
    try:
        uvloop.run(serve(settings))
    except StartupError as error:
        logging.getLogger(f"yunkai.{section}").error("cannot start", extra={"error": str(error)})
        print(f"yunkai {command}: {error}", file=sys.stderr)
        return 2
    return 0


async def serve(
    settings: Settings,
    *,
    role: str,
    services: Iterable[str],
    app: App,
    log: logging.Logger,
    reuse_port: bool = False,
) -> None:
    """Serve `services` as built by `app` until SIGTERM or SIGINT (see the module's docstring),
    as `role` (whose certificate it presents unless --tls-name says another); with
    `reuse_port`, on a port shared with sibling worker processes."""
    try:
        tls = resolve_tls(settings["tls_dir"], settings["tls_name"], bool(settings["insecure"]), role)
    except TlsError as error:
        raise StartupError(str(error)) from None
    if tls is None:
        warn_insecure(f"yunkai {role}")
    else:
        certificate_expiry.labels(certificate="own").set(not_after(tls.cert))
        certificate_expiry.labels(certificate="ca").set(not_after(tls.ca))
    settings["tls"] = tls
    limits = CallerLimits(
        calls_per_s=float(settings["caller_calls_per_s"]),
        burst_calls=float(settings["caller_burst"]),
        streams_per_caller_max=int(settings["caller_streams_max"]),
        deadline_s_max=float(settings["deadline_s_max"]),
    )
    gate = Gate(secure=tls is not None, limits=limits)
    settings["gate"] = gate  # for an app's calls to itself, which it audits as the gate would (Gate.auditing_own)
    audit: AuditLog | None = None
    try:
        server = new_server(reuse_port, [gate])
        frame = Serving(server, services, reflection=bool(settings["reflection"]))
        host = str(settings["host"])
        port = frame.listen(host, int(settings["port"]), server_credentials(tls))
        async with app(server, port) as details:
            # Opened once the app has its data directory (and has refused to share it: that
            # refusal says more than the audit log's own lock would), before the first call.
            audit = gate.audit = _audit_log(settings, log)
            metrics_port = settings["metrics_port"]
            start_metrics(host, None if metrics_port is None else int(metrics_port))
            stopping = stop_signal()
            await frame.start(port, log, **details, audit_log=str(audit.path) if audit else None)
            await stopping.wait()
            await frame.stop(log)
    finally:
        if audit is not None:
            await audit.aclose()
    # The audit log's head, to keep off this host: `yunkai audit verify --head` finds a cut tail.
    log.info("stopped", extra={"audit_log": str(audit.path), "audit_head": audit.head} if audit else {})


def _audit_log(settings: Settings, log: logging.Logger) -> AuditLog | None:
    """The server's audit log: --audit-log, else audit.log in its data directory; a router
    worker's own file beside it (one process per log). A server with identities refuses to
    start without one; under --insecure it only warns."""
    path = settings["audit_log"]
    worker = settings.get("worker")
    if not path:
        directory = settings.get("data_dir") or settings.get("registry")
        if not directory:
            if settings["tls"] is not None:
                raise StartupError("no audit log: give --audit-log PATH (or a --data-dir to keep it in)")
            log.warning("no audit log: give --audit-log (or a data directory); calls are not audited")
            return None
        path = os.path.join(str(directory), "audit.log")
    if worker is not None:
        root, extension = os.path.splitext(str(path))
        path = f"{root}-{worker}{extension}"
    return AuditLog(str(path))


class Serving:
    """Health and reflection around a grpc.aio server, and its start and stop."""

    def __init__(self, server: grpc.aio.Server, service_names: Iterable[str], reflection: bool = False) -> None:
        self.server = server
        self.service_names = list(service_names)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if reflection:
            names = [*self.service_names, health.SERVICE_NAME, grpc_reflection.SERVICE_NAME]
            grpc_reflection.enable_server_reflection(names, server)

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
        """Serve, report SERVING, and say so.

        What setup built (modules, models, flows, tables) lives as long as the process: it is
        moved out of the collector's sight (gc.freeze), so a full collection while serving
        walks only what requests made (a full walk of a scoring or risk process took ~14 ms
        and showed up as the 30-40 ms p99.9 of a decision; docs/benchmarks.md)."""
        gc.collect()  # setup's own garbage is collected, not kept forever by the freeze
        gc.freeze()
        serving_again()
        await self.server.start()
        await self.set_serving(True)
        log.info("serving", extra={"port": port, **details})
        print(json.dumps({"event": "serving", "port": port}), flush=True)

    async def stop(self, log: logging.Logger) -> None:
        """Report NOT_SERVING, end open-ended streams, stop accepting, and let in-flight RPCs
        finish (bounded)."""
        log.info("stopping")
        await self.set_serving(False)
        end_all()
        await self.server.stop(grace=STOP_GRACE_S)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)


def start_metrics(host: str, port: int | None) -> None:
    if port is not None:
        start_http_server(port, addr=host)


def stop_signal() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (and SIGUSR2 logs every task's stack: `_dump_tasks`)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)
    return stopping


def _dump_tasks() -> None:
    """Every asyncio task's stack on stderr (the process's log): what a stop that hangs waits
    for. SIGUSR1 dumps every thread's Python stack instead (faulthandler: even when the event
    loop itself is stuck). cluster/local.py sends both to a process that does not stop in time."""
    tasks = asyncio.all_tasks()
    print(f"--- {len(tasks)} asyncio tasks (SIGUSR2) ---", file=sys.stderr, flush=True)
    for task in tasks:
        print(f"{task!r}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()
