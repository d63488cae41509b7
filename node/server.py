"""The ledger node process: `yunkai node --data-dir D --port P`.

Startup opens RocksDB, reloads the slot table, clock, pending expiries and the outbox (whose
relay then re-drives every credit leg not yet answered), then serves.
Shutdown (SIGTERM/SIGINT): report NOT_SERVING, stop accepting, let in-flight RPCs finish,
commit everything queued, close RocksDB, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

import serving
from node import keys
from node.backup import Backups
from node.changelog import ChangeLog
from node.engine import Engine, Limits, load_clock
from node.identity import Identity
from node.ledger_service import IN_FLIGHT_WAIT_S_DEFAULT, LedgerService
from node.node_service import NODE_SERVICE, NodeService
from node.replication import (
    LEASE_MS_DEFAULT,
    LEASE_MS_MAX,
    LEASE_MS_MIN,
    Replica,
    Replicator,
    load_seqs,
    wait_out_leases,
)
from node.slotmove import SlotMoves
from node.slots import SlotTable
from node.storage import Storage
from proto import contract
from proto.contract import LEDGER_SERVICE
from router.slots import SLOTS_TOTAL_DEFAULT, SLOTS_TOTAL_MAX
from serving import authz

log = logging.getLogger("yunkai.node")
DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 7001,
    "data_dir": None,
    "metrics_port": None,
    "log_level": "INFO",
    "advertise": None,
    "slots_total": SLOTS_TOTAL_DEFAULT,
    "batch_events_max": Limits.batch_events_max,
    "queue_events_max": Limits.queue_events_max,
    "account_cache_max": 1_000_000,
    "join": False,
    "outbox_max": Limits.outbox_entries_max,
    "in_flight_wait_ms": int(IN_FLIGHT_WAIT_S_DEFAULT * 1000),
    "lease_ms": LEASE_MS_DEFAULT,
    "zone": "",
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
        "--zone", help="this node's failure domain (a rack, a room): a slot's copies go to different zones"
    )
    parser.add_argument(
        "--lease-ms",
        type=int,
        help="how long a follower's acknowledgement lets this node serve a slot it leads; a follower promoted"
        f" waits it out (default {LEASE_MS_DEFAULT})",
    )
    parser.add_argument(
        "--in-flight-wait-ms",
        type=int,
        help="longest a cross-node transfer's caller waits for its outcome before IN_FLIGHT, within the"
        f" caller's deadline (default {int(IN_FLIGHT_WAIT_S_DEFAULT * 1000)})",
    )


def main(args: argparse.Namespace) -> int:
    return serving.main(args, command="node", section="node", defaults=DEFAULTS, check=_check, serve=_serve)


def _check(settings: dict[str, Any]) -> str | None:
    if not settings["data_dir"]:
        return "--data-dir is required (or YUNKAI_NODE_DATA_DIR, or data_dir in [node])"
    if not 1 <= int(settings["slots_total"]) <= SLOTS_TOTAL_MAX:
        return f"--slots-total must be in 1..{SLOTS_TOTAL_MAX}"
    batch = int(settings["batch_events_max"])
    batch_max = serving.MESSAGE_BYTES_MAX // contract.EVENT_BYTES_MAX
    if not 0 < batch <= batch_max:
        return f"--batch-events-max must be 1 to {batch_max} (a batch of the largest events must fit one message)"
    if int(settings["queue_events_max"]) < 1:
        return "--queue-events-max must be at least 1"
    if int(settings["outbox_max"]) < 1:
        return "--outbox-max must be at least 1"
    if not LEASE_MS_MIN <= int(settings["lease_ms"]) <= LEASE_MS_MAX:
        return f"--lease-ms must be {LEASE_MS_MIN} to {LEASE_MS_MAX}"
    return None


async def _serve(settings: dict[str, Any]) -> None:
    await serving.serve(
        settings,
        role="node",
        services=[LEDGER_SERVICE, NODE_SERVICE],
        app=lambda server, port: _node(settings, server, port),
        log=log,
    )


@contextlib.asynccontextmanager
async def _node(settings: dict[str, Any], server: grpc.aio.Server, port: int) -> AsyncIterator[Mapping[str, object]]:
    """A node's parts, wired: storage, slot table, change log, engine (with its relay), slot
    moves and the two services. Serves while suspended at the yield; then commits everything
    queued and closes the store."""
    slots_total = int(settings["slots_total"])
    storage = Storage(str(settings["data_dir"]), slots_total, int(settings["account_cache_max"]))
    try:
        _check_slots_total(storage, slots_total)
        advertise = str(settings["advertise"] or f"{settings['host']}:{port}")
        limits = Limits(
            batch_events_max=int(settings["batch_events_max"]),
            queue_events_max=int(settings["queue_events_max"]),
            outbox_entries_max=int(settings["outbox_max"]),
        )
        peers = serving.client_credentials(settings["tls"])
        identity = Identity(storage)
        slots = SlotTable.load(storage, advertise, join=bool(settings["join"]), spiffe_id=_spiffe_id(settings["tls"]))
        load_seqs(storage, slots)
        wait_out_leases(slots, int(settings["lease_ms"]))
        changelog = ChangeLog()
        clock = load_clock(storage)
        replicator = Replicator(lambda: slots.self_address, slots, clock, int(settings["lease_ms"]), peers)
        replica = Replica(storage, slots, clock)
        slots.lease_ok = replicator.lease_ok
        slots.promotion_wait_until = replica.promotion_wait_until
        engine = Engine(storage, slots, changelog, limits, peer_credentials=peers, replicator=replicator, clock=clock)
        moves = SlotMoves(engine, slots, storage, changelog, peers)
        in_flight_wait_s = int(settings["in_flight_wait_ms"]) / 1000
        backups = Backups(engine, slots, storage, identity)
        zone = str(settings["zone"] or "")
        gate: authz.Gate | None = settings.get("gate")
        audit_own = gate.auditing_own(slots.spiffe_id or authz.ANONYMOUS.uri) if gate is not None else None
        node_service = NodeService(engine, slots, moves, identity, replica, zone, backups.legs, audit_own)
        engine.relay.deliver_own(lambda: slots.self_address, node_service.apply_own_legs)
        server.add_generic_rpc_handlers(
            [
                LedgerService(engine, slots, storage, in_flight_wait_s).handler(),
                node_service.handler(),
                backups.handler(),
            ]
        )
        async with asyncio.TaskGroup() as tasks:
            committer = tasks.create_task(engine.run())
            yield {
                "advertise": advertise,
                "node_id": identity.node_id,
                "slots_owned": slots.owned_count(),
                "data_dir": settings["data_dir"],
            }
            engine.stop()
            moves.stopping = True
            await committer
            await moves.close()
            await replicator.close()
    finally:
        storage.close()


def _spiffe_id(tls: serving.Tls | None) -> str:
    """This node's identity on the wire ("" under --insecure): its certificate must prove a node's."""
    if tls is None:
        return ""
    proved = tls.identity()
    if proved is None or proved.role != "node":
        raise serving.StartupError(
            f"--tls-name {tls.name}: the certificate {tls.directory}/{tls.name}.pem proves"
            f" {proved or 'no yunkai identity'}, not a node's (`yunkai certs issue --role node --name NAME`)"
        )
    return proved.uri


def _check_slots_total(storage: Storage, slots_total: int) -> None:
    stored = storage.get(keys.SLOTS_TOTAL)
    if stored is None:
        storage.put_now(keys.SLOTS_TOTAL, slots_total.to_bytes(4, "big"))
    elif int.from_bytes(stored, "big") != slots_total:
        raise serving.StartupError(
            f"this data directory was created with --slots-total {int.from_bytes(stored, 'big')},"
            f" not {slots_total}: S is fixed for a cluster's life"
        )
