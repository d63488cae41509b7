"""The controller: while its router leads, the shard map's only writer, and the one that tells nodes about it.

Protocol (DESIGN sections 3 and 6a; router/leadership.py decides who leads):
  * Take office. Load the map from the metastore. If there is none, seed one from the node
    list: each node must answer with its id and own nothing yet (started with --join);
    `placement.place(S, nodes)`, every slot at epoch 1, a new cluster id, version 1, stored
    with compare-and-swap from version 0 (if that fails, another controller won: load its
    map). A persisted map always wins over the node list given on a restart. Then store the
    map once more with controller term + 1: the term is this controller's fencing token.
    Every message to a node carries it; a node refuses a slot table or a move step from a
    term older than the newest it has seen (node/identity.py), so a deposed controller that
    wakes up changes nothing on a node that has heard from its successor, and its map
    swaps fail (the version moved on).
  * Act only while leading. Every swap first checks the lease (`Leadership.leading`); a
    controller whose lease may have lapsed raises ControllerError and its router stops it.
  * Publish. After every change, and on taking office, each node in the map gets the whole
    slot table (`Node.AssignSlots`: every slot's owner and epoch, the node's own address,
    its id, the cluster id, the term), so a node knows which slots it owns and where the
    others live (for redirects and its outbox). A table meant for one id is refused by a
    process with another (its data directory is not that node's). A node refuses a table
    that would lower an epoch; the controller logs that as an error and reports it in
    status: a standalone node (started without `--join`) owns every slot at epoch 1 and
    must not be adopted. A lost node is never sent a table.
  * Reconcile. Every `reconcile_interval_s`, each node's table is read (`Node.GetSlots`):
    - its id: a node recorded without one gets it (a map from before ids); one that
      reports another id than the map's is marked LOST (one swap): the process there has
      an empty or another's data directory, the slots the map gives the node have no live
      copy, routers refuse them loudly (UNAVAILABLE naming the slot), and nothing is sent
      to the process. A lost node that reports its own id again (its directory came back)
      is ACTIVE again.
    - its table version: a node behind the map (it was down during a publish, or restarted
      from an old disk) gets the table again. A router that meets WRONG_SLOT asks for the
      same check at once (`reconcile_now`).
    - its moves: one the map no longer records is aborted on that node if the map still
      gives the slot to its source (the move did not commit); otherwise the node is behind
      the map and gets the table.
    A change of a few slots (a committed move) is sent as a delta over the previous version;
    a node whose table is older refuses it and gets the whole table instead. One lock
    orders every AssignSlots, so a node never sees versions out of order from here.
  * Moves. The map records slot moves in flight (router/migration.py runs them). On taking
    office the controller cannot know how far a recorded move got, so it aborts every
    recorded move: one swap forgets them, then both nodes of each are told (AbortMove).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import serving
from proto import cluster_pb2, node_pb2, node_pb2_grpc
from router import metrics, placement, replicas
from router.leadership import Leadership
from router.mapview import MapView
from router.metastore import Metastore
from router.routing import CHANNEL_OPTIONS
from router.shardmap import ACTIVE, DOWN, LOST, STEPPED_DOWN, ShardMap

log = logging.getLogger("yunkai.router.controller")

RPC_TIMEOUT_S = 5.0
DOWN_AFTER_S_DEFAULT = 1.5
# A node whose port refuses connections (its host answers, its process is gone: a crash, a
# kill -9, an OOM kill) is down after this long, not after down_after_s of silence: the
# refusal is the host's word that nobody serves there. A node the network hides (a dead
# host, a partition) gives no such word and is waited for down_after_s. Either way the
# promoted follower serves only after the old primary's lease (node/replication.py), so
# the detector decides how soon, never whether two nodes answer for a slot.
REFUSED_DOWN_AFTER_S = 0.5
# A node that has lately answered slowly is given longer (watch_health, "Allow"): twice its
# longest recent gap between replies, within down_after_s x SLOW_ALLOWANCE_MAX.
SLOW_WINDOW_S = 30.0
SLOW_ALLOWANCE_FACTOR = 2.0
SLOW_ALLOWANCE_MAX = 4.0
# How gRPC core reports ECONNREFUSED ("... Failed to connect to remote host: Connection refused").
_REFUSED = "Connection refused"
RETRY_FAIL_OVER_S = 1.0  # a failover left unfinished (the map moved on meanwhile) is tried again this often
TERM_ATTEMPTS_MAX = 5


class ControllerError(Exception):
    """The controller cannot do what it was asked (a clear message for the operator)."""


class NotLeading(ControllerError):
    """This router lost its controller lease while a change was under way: an election is
    on, so the caller may try again (routers answer UNAVAILABLE, like while none leads)."""


class Health(enum.Enum):
    SERVING = "serving"
    SILENT = "silent"  # no answer in time, or not serving (starting, stopping, cut off)
    REFUSED = "refused"  # the port refuses connections: no process serves there


class NodeClients:
    """Channels to the ledger nodes, and the one read every router may make of them."""

    def __init__(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> node_pb2_grpc.NodeStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = serving.channel(address, self._credentials, CHANNEL_OPTIONS)
        return node_pb2_grpc.NodeStub(channel)

    async def table(self, address: str, summary: bool = False) -> node_pb2.GetSlotsResponse | None:
        """The node's own slot table and identity (with `summary`, its counts and moves but no
        per-slot list: cheap enough to ask every second), or None if it did not answer."""
        try:
            reply: node_pb2.GetSlotsResponse = await self.stub(address).GetSlots(
                node_pb2.GetSlotsRequest(summary=summary), timeout=RPC_TIMEOUT_S
            )
            return reply
        except grpc.aio.AioRpcError:
            return None

    async def healthy(self, address: str, timeout_s: float) -> Health:
        """Whether the node answers a health check as SERVING within `timeout_s` (SERVING),
        its port refuses connections (REFUSED), or neither (SILENT)."""
        if address not in self._channels:
            self.stub(address)
        try:
            reply = await health_pb2_grpc.HealthStub(self._channels[address]).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            refused = error.code() == grpc.StatusCode.UNAVAILABLE and _REFUSED in (error.details() or "")
            return Health.REFUSED if refused else Health.SILENT
        return Health.SERVING if reply.status == health_pb2.HealthCheckResponse.SERVING else Health.SILENT

    async def silent_followers(self, address: str, after_s: float, timeout_s: float) -> list[str]:
        """The follower nodes the node (as a primary) has heard nothing from for `after_s`."""
        request = node_pb2.SilentFollowersRequest(silent_after_ms=max(1, int(after_s * 1000)))
        try:
            reply: node_pb2.SilentFollowersResponse = await self.stub(address).SilentFollowers(
                request, timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return []
        return list(reply.followers)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


class Controller:
    """The map's writer while this router leads (see the module's docstring)."""

    def __init__(
        self,
        metastore: Metastore,
        view: MapView,
        nodes: NodeClients,
        leadership: Leadership,
        seed_nodes: Sequence[str],
        slots_total: int,
        reconcile_interval_s: float = 1.0,
        replicas: int = 1,
        down_after_s: float = DOWN_AFTER_S_DEFAULT,
    ) -> None:
        self.metastore = metastore
        self.view = view
        self.nodes = nodes
        self.leadership = leadership
        self.seed_nodes = list(seed_nodes)
        self.slots_total = slots_total
        self.reconcile_interval_s = reconcile_interval_s
        self.replicas = replicas  # R for a new cluster (a stored map keeps its own)
        self.down_after_s = down_after_s
        self._last_seen: dict[str, float] = {}  # monotonic time each node last answered a health check
        self._refused_since: dict[str, float] = {}  # nodes whose port refuses connections, since when
        self._failed_over_at = 0.0  # monotonic time of the last failover (retries are spaced)
        self._holding = False  # most nodes silent at once: failover held (logged once per episode)
        self._gaps: dict[str, collections.deque[tuple[float, float]]] = {}  # (when, gap) between replies
        self.term = 0  # set on taking office
        self._node_versions: dict[str, int] = {}  # what each node said its table version is
        self._node_errors: dict[str, str] = {}
        self._reconcile_now = asyncio.Event()
        self._assigning = asyncio.Lock()
        self._changing = asyncio.Lock()

    # --- the map ----------------------------------------------------------------------------

    def current(self) -> ShardMap:
        return self.view.current()

    def stub(self, address: str) -> node_pb2_grpc.NodeStub:
        return self.nodes.stub(address)

    def reconcile_now(self) -> None:
        """A router saw WRONG_SLOT: a node may be behind the map; check them now."""
        self._reconcile_now.set()

    async def take_office(self) -> ShardMap:
        """Load or seed the map, then store it with this controller's term (see above)."""
        stored = await self.metastore.load()
        if stored is None:
            stored = await self._seed()
        elif self.seed_nodes and set(self.seed_nodes) != set(stored.nodes):
            log.warning(
                "the stored shard map wins over --nodes",
                extra={"stored": sorted(stored.nodes), "given": self.seed_nodes},
            )
        if stored.slots_total != self.slots_total:
            raise ControllerError(
                f"the stored shard map has {stored.slots_total} slots, not {self.slots_total}: S is fixed"
            )
        await self.view.offer(stored)
        for _attempt in range(TERM_ATTEMPTS_MAX):
            current = self.current()
            self._check_leading()
            elected = current.with_term(current.term + 1)
            if await self.metastore.compare_and_swap(current.version, elected):
                self.term = elected.term
                await self.view.offer(elected)
                metrics.controller_term.set(self.term)
                log.info("took office", extra={"term": self.term, "map_version": elected.version})
                return elected
            reloaded = await self.metastore.load()
            if reloaded is None:  # the store's word: someone deleted the map meanwhile
                raise ControllerError("the shard map was deleted from the metastore while taking office")
            await self.view.offer(reloaded)
        raise ControllerError("the shard map kept changing while taking office (another controller?)")

    async def _seed(self) -> ShardMap:
        if not self.seed_nodes:
            raise ControllerError("no shard map is stored yet: give the nodes with --nodes HOST:PORT,...")
        ids, zones, spiffe_ids = await self._check_seed_nodes()
        owners = placement.place(self.slots_total, self.seed_nodes)
        copies = min(self.replicas, len(self.seed_nodes))
        followers = [f for _primary, f in replicas.seed(owners, self.seed_nodes, copies, zones)] if copies > 1 else []
        seeded = ShardMap.initial(
            owners, ids, secrets.token_hex(8), followers, max(1, self.replicas), zones, spiffe_ids=spiffe_ids
        )
        if await self.metastore.compare_and_swap(0, seeded):
            log.info("seeded a new shard map", extra={"nodes": self.seed_nodes, "slots": self.slots_total})
            return seeded
        stored = await self.metastore.load()
        if stored is None:  # the store's word: another seeded it, then someone deleted it
            raise ControllerError("the shard map another router seeded was deleted from the metastore meanwhile")
        return stored

    async def _check_seed_nodes(self) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        """A new map may only take nodes that own nothing yet (started with --join); their ids,
        zones and certificate identities."""
        ids: dict[str, str] = {}
        zones: dict[str, str] = {}
        spiffe_ids: dict[str, str] = {}
        for address in self.seed_nodes:
            table = await self.nodes.table(address)
            if table is None:
                raise ControllerError(f"cannot reach node {address} to seed the shard map; is it running?")
            if table.slots_total != self.slots_total:
                raise ControllerError(f"node {address} has {table.slots_total} slots, the cluster {self.slots_total}")
            owned = sum(1 for s in table.slots if s.owned)
            if table.map_version == 0 and owned:
                raise ControllerError(
                    f"node {address} owns {owned} slots by itself (a standalone node): a new cluster takes only"
                    " empty nodes; start cluster nodes with --join"
                )
            if table.cluster_id:
                raise ControllerError(
                    f"node {address} belongs to cluster {table.cluster_id} already: a new cluster takes only new nodes"
                )
            ids[address] = table.node_id
            if table.zone:
                zones[address] = table.zone
            if table.spiffe_id:
                spiffe_ids[address] = table.spiffe_id
        return ids, zones, spiffe_ids

    def _check_leading(self) -> None:
        if not self.leadership.leading():
            raise NotLeading("this router is no longer the controller (its lease may have lapsed)")

    async def change(
        self,
        change: Callable[[ShardMap], ShardMap],
        changed: Sequence[int] | None = None,
        before_publish: Callable[[], Awaitable[None]] | None = None,
        first: Sequence[str] = (),
        after_first: Callable[[], None] | None = None,
    ) -> ShardMap:
        """Store the next map version, `change(current)`, with one compare-and-swap, and publish
        it to every node: the whole table, or with `changed` only those slots (a delta over the
        previous version). A delta goes to the nodes in `first` (a move's sources and targets,
        which callers wait on) before the others, and `after_first` is called between. Changes
        are made one at a time, each from the map the previous one stored; ControllerError if
        the metastore holds another map (another controller stored it)."""
        async with self._changing:
            self._check_leading()
            current = self.current()
            new_map = change(current)
            assert new_map.version == current.version + 1 and new_map.term == self.term, (new_map, current)
            started = time.perf_counter()
            if not await self.metastore.compare_and_swap(current.version, new_map):
                stored = await self.metastore.load()
                if stored != new_map:  # not our own swap whose answer was lost and retried
                    if stored is not None:
                        await self.view.offer(stored)
                    raise ControllerError(
                        f"the shard map changed under this controller (v{current.version} ->"
                        f" v{stored.version if stored else 0}; another controller?)"
                    )
            metrics.map_swap_s.observe(time.perf_counter() - started)
            await self.view.offer(new_map)
            metrics.moves_in_flight.set(len(new_map.migrations))
        if before_publish is not None:
            await before_publish()
        if changed is None:
            await self.publish()
        else:
            await self._publish_delta(new_map, current.version, changed, first, after_first)
        return new_map

    async def _publish_delta(
        self,
        shard_map: ShardMap,
        base: int,
        changed: Sequence[int],
        first: Sequence[str] = (),
        after_first: Callable[[], None] | None = None,
    ) -> None:
        slots = [_ownership(shard_map, slot) for slot in changed]
        leading = sorted(set(first) & set(self._reachable(shard_map)))
        await asyncio.gather(*(self._assign(shard_map, a, slots, base) for a in leading))
        if after_first is not None:
            after_first()
        rest = sorted(set(self._reachable(shard_map)) - set(leading))
        await asyncio.gather(*(self._assign(shard_map, a, slots, base) for a in rest))

    @staticmethod
    def _reachable(shard_map: ShardMap) -> list[str]:
        """The nodes that may be told about the map: all but the lost and down ones."""
        return sorted(address for address, state in shard_map.nodes.items() if state not in (LOST, DOWN))

    async def recover_moves(self) -> None:
        """On taking office: abort every move the map records (their progress died with the
        controller that ran them). The abort is recorded before any node is told."""
        recorded = self.current().migrations
        if not recorded:
            return
        await self.change(lambda m: m.with_migrations(remove=[move.id for move in recorded]), changed=[])
        for move in recorded:
            log.warning("aborting a move recorded before a change of controller", extra={"slot": move.slot})
            await asyncio.gather(
                self.abort_move(move.source, move.id, move.slot), self.abort_move(move.target, move.id, move.slot)
            )

    async def abort_move(self, address: str, migration_id: str, slot: int) -> bool:
        """Tell one node to forget a move; False if it could not be reached (reconcile retries)."""
        try:
            await self.stub(address).AbortMove(
                node_pb2.AbortMoveRequest(migration_id=migration_id, slot=slot, controller_term=self.term),
                timeout=RPC_TIMEOUT_S,
            )
            return True
        except grpc.aio.AioRpcError as error:
            log.warning("could not abort a move on a node", extra={"node": address, "error": error.details()})
            return False

    # --- talking to nodes -------------------------------------------------------------------

    def _table(self, shard_map: ShardMap, address: str) -> node_pb2.AssignSlotsRequest:
        request = self._request(shard_map, address)
        request.slots.extend(_ownership(shard_map, slot) for slot in range(shard_map.slots_total))
        return request

    def _request(self, shard_map: ShardMap, address: str) -> node_pb2.AssignSlotsRequest:
        return node_pb2.AssignSlotsRequest(
            map_version=shard_map.version,
            self_address=address,
            controller_term=self.term,
            cluster_id=shard_map.cluster_id,
            node_id=shard_map.ids.get(address, ""),
            drop_released=shard_map.replicas > 1,
            down_nodes=sorted(a for a, state in shard_map.nodes.items() if state in (DOWN, LOST)),
            spiffe_ids=shard_map.spiffe_ids,
        )

    async def publish(self, only: Sequence[str] | None = None) -> None:
        shard_map = self.current()
        targets = list(only) if only is not None else self._reachable(shard_map)
        await asyncio.gather(*(self._assign(shard_map, address) for address in targets))

    async def _assign(
        self,
        shard_map: ShardMap,
        address: str,
        delta: Sequence[node_pb2.SlotOwnership] | None = None,
        base: int = 0,
    ) -> None:
        async with self._assigning:
            if shard_map.version < self.current().version:
                shard_map, delta = self.current(), None  # a newer map was stored meanwhile: send it whole
            if shard_map.nodes.get(address) in (LOST, DOWN):
                return
            self._check_leading()
            if delta is not None:
                request = self._request(shard_map, address)
                request.slots.extend(delta)
                request.base_map_version = base
                try:
                    await self.stub(address).AssignSlots(request, timeout=RPC_TIMEOUT_S)
                    self._node_versions[address] = shard_map.version
                    self._node_errors.pop(address, None)
                    return
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        self._node_errors[address] = f"{address}: {error.code().name} {error.details()}"
                        return
                    # The node's table is older than the delta's base: send the whole table.
            await self._assign_whole(shard_map, address)

    async def _assign_whole(self, shard_map: ShardMap, address: str) -> None:
        try:
            await self.stub(address).AssignSlots(self._table(shard_map, address), timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                message = (
                    f"{address} refused map v{shard_map.version}: {error.details()}"
                    " (a node started without --join owns every slot by itself; start cluster nodes with --join)"
                )
                log.error("node refused the shard map", extra={"node": address, "error": message})
            else:
                message = f"{address}: {error.code().name} {error.details()}"
                log.warning("could not publish the shard map", extra={"node": address, "error": message})
            self._node_errors[address] = message
            return
        self._node_versions[address] = shard_map.version
        self._node_errors.pop(address, None)

    async def node_table(self, address: str) -> node_pb2.GetSlotsResponse | None:
        return await self.nodes.table(address)

    async def reconcile_once(self) -> None:
        for address in sorted(self.current().nodes):
            table = await self.nodes.table(address, summary=True)
            if table is None:
                self._node_versions.pop(address, None)
                continue
            if not await self._check_identity(address, table):
                continue
            await self._learn_spiffe_id(address, table)
            shard_map = self.current()  # read after the await: a move may have been recorded meanwhile
            self._node_versions[address] = table.map_version
            if table.map_version < shard_map.version:
                log.info("node behind the map; publishing", extra={"node": address, "node_version": table.map_version})
                await self._assign(shard_map, address)
            await self._reconcile_moves(address, table)

    async def _check_identity(self, address: str, table: node_pb2.GetSlotsResponse) -> bool:
        """Compare the id the process at `address` reports with the map's: learn it, mark the
        node lost, or find it back. True if the process is the map's node."""
        shard_map = self.current()
        if address not in shard_map.nodes:
            return False  # removed meanwhile
        recorded = shard_map.ids.get(address, "")
        state = shard_map.nodes[address]
        if not recorded and table.node_id:
            await self.change(lambda m: _set_node(m, address, node_id=table.node_id), changed=[])
            return True
        if table.node_id == recorded:
            if state in (LOST, DOWN):
                log.warning("a node is back with its own data directory", extra={"node": address, "id": recorded})
                # With replicas it holds no slot any more (failed over): it drops their ranges and
                # repair copies slots to it again; without, its slots are served again.
                await self.change(lambda m: _set_node(m, address, state=ACTIVE), changed=None)
            return True
        if state != LOST:
            lost = len(shard_map.slots_with(address))
            log.error(
                "node lost: the process at its address is another node (an empty or replaced data directory)",
                extra={"node": address, "id": recorded, "reported_id": table.node_id, "slots": lost},
            )
            if shard_map.replicas > 1:
                await self.fail_over({address: LOST})
            else:
                await self.change(lambda m: _set_node(m, address, state=LOST), changed=[])
        elif shard_map.replicas > 1 and not shard_map.slots_with(address) and _empty(table):
            # Its slots live on elsewhere: the newcomer at the address joins as a new node, empty.
            log.warning(
                "a new node at a lost node's address joins in its place",
                extra={"node": address, "old_id": recorded, "id": table.node_id},
            )
            await self.change(lambda m: _set_node(m, address, state=ACTIVE, node_id=table.node_id), changed=None)
            return True
        return False

    async def _learn_spiffe_id(self, address: str, table: node_pb2.GetSlotsResponse) -> None:
        """Record the certificate identity the map's node at `address` reports, when it is new
        (a node whose certificate was replaced by one of another name): every node is told."""
        if table.spiffe_id and table.spiffe_id != self.current().spiffe_ids.get(address):
            log.info("a node's certificate identity recorded", extra={"node": address, "spiffe_id": table.spiffe_id})
            await self.change(lambda m: _set_node(m, address, spiffe_id=table.spiffe_id), changed=[])

    async def _reconcile_moves(self, address: str, table: node_pb2.GetSlotsResponse) -> None:
        shard_map = self.current()
        active = {m.id for m in shard_map.migrations}
        for move in table.moves:
            if move.migration_id in active:
                continue
            if move.slot >= shard_map.slots_total:  # a node's reply: input, checked
                log.warning("a node reports a move of a slot past the map", extra={"node": address, "slot": move.slot})
                continue
            source_side = move.role in (node_pb2.EXPORTING, node_pb2.FROZEN)
            still_source = shard_map.owners[move.slot] == address
            if source_side == still_source:  # a source that still owns it, or a target that does not
                log.info("aborting a move the map no longer records", extra={"node": address, "slot": move.slot})
                await self.abort_move(address, move.migration_id, move.slot)

    async def fail_over(self, dead: Mapping[str, int]) -> None:
        """Nodes gone (down or lost): in one map change, mark them, give each slot they led to
        the live follower with the most of it, drop them (and followers behind) from every
        configuration, and forget the moves they took part in; then tell the nodes."""
        shard_map = self.current()
        gone = set(dead) | {a for a, state in shard_map.nodes.items() if state in (DOWN, LOST)}
        affected = {slot: shard_map.config(slot) for slot in range(shard_map.slots_total)}
        affected = {slot: c for slot, c in affected.items() if gone & set(replicas.members(c))}
        led = {slot: (p, tuple(f for f in fs if f not in gone)) for slot, (p, fs) in affected.items() if p in gone}
        copies = await self._copies(shard_map, led)
        changes = replicas.fail_over(affected, gone, copies)
        moving = [m.id for m in shard_map.migrations if {m.source, m.target, m.replaces} & gone or m.slot in changes]
        stranded = [slot for slot in affected if slot not in changes and affected[slot][0] in gone]
        log.error(
            "failing over",
            extra={"nodes": dict(dead), "slots": len(changes), "without_copy": len(stranded), "moves": len(moving)},
        )
        await self.change(
            lambda m: m.failed_over(dict(dead), _still(changes, shard_map, m), moving),
            changed=sorted(changes),
            first=sorted({a for c in changes.values() for a in replicas.members(c)}),
        )
        for move in shard_map.migrations:
            if move.id in moving:
                for party in {move.source, move.target} - gone:
                    await self.abort_move(party, move.id, move.slot)

    async def step_down(self, address: str) -> tuple[int, int]:
        """A planned restart's first step (replicas only): in one map change, each slot `address`
        leads goes to its follower holding the most of it (as a failover would, so the new
        primary serves once the node's lease has lapsed), the node leaves every configuration,
        and it is marked STEPPED_DOWN: no copy is made onto it until `resume`. Returns (slots
        handed over, slots left). Refused while a job runs, and when a slot it leads has no
        other live copy. A node already stepped down: (0, 0)."""
        shard_map = self.current()
        state = shard_map.nodes.get(address)
        if state is None:
            raise ControllerError(f"{address} is not in the cluster (nodes: {', '.join(sorted(shard_map.nodes))})")
        if state == STEPPED_DOWN and not shard_map.slots_with(address):
            return 0, 0  # done before: it is in no configuration
        if shard_map.replicas <= 1:
            raise ControllerError(
                "step-down needs replicas: this cluster keeps one copy of each slot, so the node's slots would"
                " go unserved (drain-node moves them away)"
            )
        if state not in (ACTIVE, STEPPED_DOWN):  # STEPPED_DOWN here: a step-down the map cut short
            raise ControllerError(f"{address} is {_state_name(state)}: only an active node steps down")
        running = shard_map.running_job()
        if running is not None or shard_map.migrations:
            what = f"job {running.id} ({running.kind})" if running is not None else "a slot move"
            raise ControllerError(f"{what} is running: step down once it is done (cluster status shows it)")
        configs = {slot: shard_map.config(slot) for slot in range(shard_map.slots_total)}
        configs = {slot: c for slot, c in configs.items() if address in replicas.members(c)}
        led = {slot: c for slot, c in configs.items() if c[0] == address}
        copies = await self._copies(shard_map, led)
        changes = replicas.fail_over(configs, {address}, copies)
        alone = sorted(slot for slot in led if slot not in changes)
        if alone:
            raise ControllerError(
                f"slot {alone[0]} ({len(alone)} in all) has no other live copy: stepping {address} down would"
                " leave it unserved (wait for repair: cluster status shows under-replicated slots)"
            )
        log.warning(
            "stepping a node down", extra={"node": address, "led": len(led), "followed": len(configs) - len(led)}
        )
        new_map = await self.change(
            lambda m: m.failed_over({address: STEPPED_DOWN}, _still(changes, shard_map, m), []),
            changed=sorted(changes),
            first=sorted({a for c in changes.values() for a in replicas.members(c)}),
        )
        still = new_map.slots_with(address)
        if still:
            raise ControllerError(
                f"the map moved on meanwhile; {address} is still in {len(still)} slots: step down again"
            )
        return len(led), len(configs) - len(led)

    async def resume(self, address: str) -> int:
        """A stepped-down node is ACTIVE again (a copy target: repair restores R onto it); the
        node's state after the call. A node down meanwhile stays DOWN until it is back."""
        shard_map = self.current()
        state = shard_map.nodes.get(address)
        if state is None:
            raise ControllerError(f"{address} is not in the cluster (nodes: {', '.join(sorted(shard_map.nodes))})")
        if state in (ACTIVE, DOWN):
            return state
        if state != STEPPED_DOWN:
            raise ControllerError(f"{address} is {_state_name(state)}, not stepped down")
        log.warning("a stepped-down node resumes", extra={"node": address})
        await self.change(lambda m: _set_node(m, address, state=ACTIVE), changed=[])
        return ACTIVE

    async def watch_health(self) -> None:
        """The failure detector. With replicas, a node is down when no health check has come
        back SERVING for down_after_s, or its port has refused connections for
        REFUSED_DOWN_AFTER_S (or down_after_s, if shorter); the down are failed over.

        Protocol:
          * Probe. Each watched node (not down, not lost) has its own prober: a health check
            every `interval`, each one given down_after_s to answer, so several are in flight
            at once. A reply counts when it arrives, however late: a node whose event loop
            is busy (a large commit, a burst of calls) answers late but answers, and is
            alive. (The detector it replaces gave each check 2 x interval, 0.5 s, and read a
            late reply as silence: an overloaded cluster failed over healthy nodes, one
            after another, and fell to one copy.) A node newly watched has down_after_s of
            grace from when its prober starts.
          * Allow. A node's allowed silence is down_after_s, or twice the longest gap between
            its replies in the last SLOW_WINDOW_S if longer, at most down_after_s x
            SLOW_ALLOWANCE_MAX: a node that has been answering every second or so under load
            is not down after 1.5 s without a word, while an idle node that stops is. The
            accrual failure detectors (Hayashibara et al., 2004; Cassandra, Akka) rest on the
            same idea: judge silence against the node's own recent pace. Checks are given the
            longest allowance to answer. Followers' silence (SilentFollowers) is judged
            against the longest allowance of any node, since their calls wait on both ends.
          * Judge. Every `interval` (faster while a port refuses), unless this router's own
            loop woke more than `interval` late: then it was the one stalled, replies that
            came meanwhile may not be read yet, and it judges next round instead.
          * Hold. When more than half of the watched nodes are silent at once, none of the
            silent ones is failed over: from here a cut-off router and a cluster-wide stall
            (every node overloaded) look alike, and failing most nodes over would leave slots
            without a live copy for nothing (seen: two of three overloaded nodes failed over
            in one change, then the third). Kubernetes' node controller stops evicting from a
            zone mostly unhealthy for the same reason. A port that refuses connections is the
            host's own word and is acted on regardless.
        """
        interval = min(0.25, self.down_after_s / 4)
        refused_after_s = min(REFUSED_DOWN_AFTER_S, self.down_after_s)
        probers: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                pause = min(interval, refused_after_s / 4) if self._refused_since else interval
                woke_due = time.monotonic() + pause
                await asyncio.sleep(pause)
                shard_map = self.current()
                watched = sorted(a for a, state in shard_map.nodes.items() if state not in (DOWN, LOST))
                for address in set(probers) - set(watched):
                    probers.pop(address).cancel()
                    self._refused_since.pop(address, None)
                for address in watched:
                    if address not in probers:
                        self._last_seen[address] = time.monotonic()
                        probers[address] = asyncio.create_task(self._probe(address, interval))
                now = time.monotonic()
                if shard_map.replicas <= 1 or now - woke_due > interval:
                    continue
                refused = [a for a in watched if now - self._refused_since.get(a, now) > refused_after_s]
                quiet = [a for a in watched if a not in refused and now - self._last_seen[a] > self._allowed(a, now)]
                if len(quiet) * 2 > len(watched):
                    if not self._holding:
                        log.error(
                            "most nodes are silent at once: failing none of them over (this router may be the"
                            " one cut off, or every node is overloaded); nodes refusing connections still are",
                            extra={"silent": quiet, "watched": len(watched)},
                        )
                    self._holding = True
                    quiet = []
                else:
                    self._holding = False
                silent = refused + quiet
                if silent:
                    await self.fail_over(dict.fromkeys(silent, DOWN))
                    self._failed_over_at = time.monotonic()
                    continue
                if _fail_over_pending(shard_map) and time.monotonic() - self._failed_over_at >= RETRY_FAIL_OVER_S:
                    # A change planned earlier skipped slots the map had moved on for: plan them again.
                    await self.fail_over({})
                    self._failed_over_at = time.monotonic()
                    continue
                answering = [
                    a for a in watched if a not in self._refused_since and now - self._last_seen[a] <= interval * 2
                ]
                after_s = max((self._allowed(a, now) for a in watched), default=self.down_after_s)
                reports = await asyncio.gather(
                    *(self.nodes.silent_followers(a, after_s, interval * 2) for a in answering)
                )
                pairs = {(p, f) for p, quiet in zip(answering, reports, strict=True) for f in quiet if f in answering}
                if pairs:
                    await self.drop_followers(pairs)
        finally:
            for prober in probers.values():
                prober.cancel()

    async def _probe(self, address: str, interval: float) -> None:
        """One node's prober (see watch_health): a check every `interval`, each given down_after_s."""
        checks: set[asyncio.Task[None]] = set()
        try:
            while True:
                check = asyncio.create_task(self._check(address))
                checks.add(check)
                check.add_done_callback(checks.discard)
                await asyncio.sleep(interval)
        finally:
            for check in checks:
                check.cancel()

    async def _check(self, address: str) -> None:
        sent = time.monotonic()
        health = await self.nodes.healthy(address, self.down_after_s * SLOW_ALLOWANCE_MAX)
        if health is Health.SERVING:
            now = time.monotonic()
            previous = self._last_seen.get(address, now)
            self._last_seen[address] = max(previous, now)
            if now - previous > self.down_after_s / SLOW_ALLOWANCE_FACTOR / 2:
                self._gaps.setdefault(address, collections.deque()).append((now, now - previous))
        if health is Health.REFUSED:
            self._refused_since.setdefault(address, sent)
        elif sent >= self._refused_since.get(address, sent):
            # Asked after the refusals began and not refused: newer word than theirs.
            self._refused_since.pop(address, None)

    def _allowed(self, address: str, now: float) -> float:
        """How long the node may be silent before it is down (watch_health, "Allow")."""
        gaps = self._gaps.get(address)
        while gaps and now - gaps[0][0] > SLOW_WINDOW_S:
            gaps.popleft()
        recent = max((gap for _when, gap in gaps), default=0.0) if gaps else 0.0
        return min(self.down_after_s * SLOW_ALLOWANCE_MAX, max(self.down_after_s, SLOW_ALLOWANCE_FACTOR * recent))

    async def drop_followers(self, pairs: set[tuple[str, str]]) -> None:
        """Primaries told us followers have not acknowledged them for the bound while both still
        answer us: in one map change, take each such follower out of the slots that primary
        leads, or, where the primary hears none of a slot's followers, fail the slot over to
        one of them (router/replicas.py `silenced`); repair copies them again later."""
        shard_map = self.current()
        configs = {slot: shard_map.config(slot) for slot in range(shard_map.slots_total)}
        configs = {slot: c for slot, c in configs.items() if any((c[0], f) in pairs for f in c[1])}
        cut_off = {slot: c for slot, c in configs.items() if all((c[0], f) in pairs for f in c[1])}
        copies = await self._copies(shard_map, cut_off)
        changes = replicas.silenced(configs, pairs, copies)
        if not changes:
            return
        moving = [m.id for m in shard_map.migrations if m.slot in changes]
        log.error(
            "followers silent to their primary: dropped, or the slot failed over",
            extra={
                "pairs": sorted(f"{p} -> {f}" for p, f in pairs),
                "slots": len(changes),
                "failed_over": sum(1 for slot, c in changes.items() if c[0] != configs[slot][0]),
            },
        )
        await self.change(
            lambda m: m.failed_over({}, _still(changes, shard_map, m), moving),
            changed=sorted(changes),
            first=sorted({a for c in configs.values() for a in replicas.members(c)}),
        )
        for move in shard_map.migrations:
            if move.id in moving:
                for party in (move.source, move.target):
                    await self.abort_move(party, move.id, move.slot)

    async def _copies(
        self, shard_map: ShardMap, configs: Mapping[int, replicas.Config]
    ) -> dict[tuple[int, str], tuple[int, int]]:
        """How far each follower of `configs` is in each of those slots, by its own table (a
        follower that does not answer, or is another node now, has none)."""
        asked = sorted({f for _p, fs in configs.values() for f in fs})
        tables = await asyncio.gather(*(self.nodes.table(a) for a in asked))
        copies: dict[tuple[int, str], tuple[int, int]] = {}
        for address, table in zip(asked, tables, strict=True):
            if table is not None and table.node_id == shard_map.ids.get(address, table.node_id):
                for entry in table.slots:
                    if entry.following and entry.slot in configs:
                        copies[(entry.slot, address)] = (entry.seq_epoch, entry.seq)
        return copies

    async def run(self) -> None:
        """Reconcile nodes with the map until cancelled (the caller publishes once first)."""
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation (gh-86296)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.reconcile_interval_s):
                    await self._reconcile_now.wait()
            self._reconcile_now.clear()
            await self.reconcile_once()

    def errors(self) -> dict[str, str]:
        return dict(self._node_errors)


def _fail_over_pending(shard_map: ShardMap) -> bool:
    """Whether a configuration still names a down or lost node that a failover could remove."""
    gone = {a for a, state in shard_map.nodes.items() if state in (DOWN, LOST)}
    if not gone:
        return False
    for slot in range(shard_map.slots_total):
        primary, followers = shard_map.config(slot)
        if primary in gone and any(f not in gone for f in followers):
            return True
        if primary not in gone and gone.intersection(followers):
            return True
    return False


def _still(
    changes: Mapping[int, replicas.Config], planned_on: ShardMap, current: ShardMap
) -> dict[int, replicas.Config]:
    """The changes whose slot is still at the epoch they were planned on (the map may have moved
    on while the plan awaited the nodes' answers: those slots are planned again later)."""
    return {slot: c for slot, c in changes.items() if current.epochs[slot] == planned_on.epochs[slot]}


def _state_name(state: int) -> str:
    return cluster_pb2.NodeState.Name(state).removeprefix("NODE_")


def _set_node(
    shard_map: ShardMap, address: str, state: int | None = None, node_id: str | None = None, spiffe_id: str = ""
) -> ShardMap:
    """The next version with a node's state, id or certificate identity changed (unchanged if
    the node left meanwhile)."""
    if address not in shard_map.nodes:
        return shard_map.next_version()
    return shard_map.with_node(
        address, shard_map.nodes[address] if state is None else state, node_id, spiffe_id=spiffe_id
    )


def _ownership(shard_map: ShardMap, slot: int) -> node_pb2.SlotOwnership:
    return node_pb2.SlotOwnership(
        slot=slot, epoch=shard_map.epochs[slot], owner=shard_map.owners[slot], followers=shard_map.followers_of(slot)
    )


def _empty(table: node_pb2.GetSlotsResponse) -> bool:
    """A node that holds nothing of any cluster: no cluster id, no slot it owns or follows."""
    return not table.cluster_id and not table.owned_count and not table.following_count
