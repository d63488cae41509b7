"""The ledger node process: `yunkai node --data-dir D --port P`.

Startup opens RocksDB, reloads the slot table, clock, pending expiries and the outbox (whose
relay then re-drives every credit leg not yet answered), then serves.
Shutdown (SIGTERM/SIGINT): report NOT_SERVING, stop accepting, let in-flight RPCs finish,
commit everything queued, close RocksDB, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

import uvloop

from node.engine import Engine, Limits
from node.service import IN_FLIGHT_WAIT_S_DEFAULT, LEDGER_SERVICE, LedgerService, NodeService
from node.storage import Storage
from proto import node_pb2_grpc, serving
from router.slots import SLOTS_TOTAL_DEFAULT, SLOTS_TOTAL_MAX

log = logging.getLogger("yunkai.node")

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 7001,
    "data_dir": None,
    "metrics_port": None,
    "tls_cert": None,
    "tls_key": None,
    "tls_ca": None,
    "log_level": "INFO",
    "advertise": None,
    "slots_total": SLOTS_TOTAL_DEFAULT,
    "batch_events_max": Limits.batch_events_max,
    "queue_events_max": Limits.queue_events_max,
    "account_cache_max": 1_000_000,
    "join": False,
    "outbox_max": Limits.outbox_entries_max,
    "in_flight_wait_ms": int(IN_FLIGHT_WAIT_S_DEFAULT * 1000),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serving.add_common_arguments(parser)
    parser.add_argument("--data-dir", help="directory of this node's RocksDB (required)")
    parser.add_argument("--advertise", help="host:port other processes reach this node at (default host:port)")
    parser.add_argument("--slots-total", type=int, help=f"S, the cluster's slot count (default {SLOTS_TOTAL_DEFAULT})")
    parser.add_argument("--batch-events-max", type=int, help="most events in one request (default 8192)")
    parser.add_argument("--queue-events-max", type=int, help="most events waiting for commit (default 65536)")
    parser.add_argument(
        "--join",
        action="store_true",
        default=None,
        help="a new data directory starts owning no slots, waiting for a router to assign them"
        " (without it, a new node owns every slot: a standalone ledger)",
    )
    parser.add_argument("--account-cache-max", type=int, help="committed accounts kept in memory (default 1,000,000)")
    parser.add_argument(
        "--outbox-max",
        type=int,
        help=f"most credit legs waiting for other nodes; beyond, cross-node transfers get RESOURCE_EXHAUSTED"
        f" (default {Limits.outbox_entries_max:,})",
    )
    parser.add_argument(
        "--in-flight-wait-ms",
        type=int,
        help="longest a cross-node transfer's caller waits for its outcome before IN_FLIGHT, within the"
        f" caller's deadline (default {int(IN_FLIGHT_WAIT_S_DEFAULT * 1000)})",
    )


def main(args: argparse.Namespace) -> int:
    settings = serving.resolve(args, "node", DEFAULTS)
    if not settings["data_dir"]:
        print("yunkai node: --data-dir is required (or YUNKAI_NODE_DATA_DIR, or data_dir in [node])", file=sys.stderr)
        return 2
    slots_total = int(settings["slots_total"])
    if not 1 <= slots_total <= SLOTS_TOTAL_MAX:
        print(f"yunkai node: --slots-total must be in 1..{SLOTS_TOTAL_MAX}", file=sys.stderr)
        return 2
    serving.setup_logging(str(settings["log_level"]), "node")
    uvloop.run(_serve(settings))
    return 0


async def _serve(settings: dict[str, Any]) -> None:
    slots_total = int(settings["slots_total"])
    storage = Storage(str(settings["data_dir"]), slots_total, int(settings["account_cache_max"]))
    _check_slots_total(storage, slots_total)
    limits = Limits(
        batch_events_max=int(settings["batch_events_max"]),
        queue_events_max=int(settings["queue_events_max"]),
        outbox_entries_max=int(settings["outbox_max"]),
    )
    server = serving.new_server()
    frame = serving.Serving(server, [LEDGER_SERVICE, "yunkai.node.v1.Node"])
    host = str(settings["host"])
    credentials = serving.server_credentials(settings["tls_cert"], settings["tls_key"])
    port = frame.listen(host, int(settings["port"]), credentials)
    advertise = str(settings["advertise"] or f"{host}:{port}")
    engine = Engine(
        storage,
        limits,
        advertise,
        join=bool(settings["join"]),
        peer_credentials=serving.client_credentials(settings["tls_ca"]),
    )
    in_flight_wait_s = int(settings["in_flight_wait_ms"]) / 1000
    server.add_generic_rpc_handlers([LedgerService(engine, in_flight_wait_s).handler()])
    node_pb2_grpc.add_NodeServicer_to_server(NodeService(engine), server)
    metrics_port = settings["metrics_port"]
    serving.start_metrics(host, None if metrics_port is None else int(metrics_port))
    stopping = serving.stop_signal()
    try:
        async with asyncio.TaskGroup() as tasks:
            committer = tasks.create_task(engine.run())
            owned = sum(1 for a in engine.slots if a.owned)
            await frame.start(port, log, advertise=advertise, slots_owned=owned, data_dir=settings["data_dir"])
            await stopping.wait()
            await frame.stop(log)
            engine.stop()
            await committer
    finally:
        storage.close()
    log.info("stopped")


def _check_slots_total(storage: Storage, slots_total: int) -> None:
    stored = storage.meta_get("slots_total")
    if stored is None:
        storage.meta_put_now("slots_total", slots_total.to_bytes(4, "big"))
    elif int.from_bytes(stored, "big") != slots_total:
        raise SystemExit(
            f"this data directory was created with --slots-total {int.from_bytes(stored, 'big')},"
            f" not {slots_total}: S is fixed for a cluster's life"
        )
