"""The controller: the shard map's only writer, and the one that tells nodes about it.

Protocol:
  * Start. Load the map from the metastore. If there is none, seed one from the node list:
    `placement.place(S, nodes)`, every slot at epoch 1, map version 1, stored with
    compare-and-swap from version 0 (if that fails, another controller won: load its map).
    A persisted map always wins over the node list given on a restart.
  * Publish. After every change, and at start, each node in the map gets the whole slot
    table (`Node.AssignSlots`: every slot's owner and epoch, and the node's own address),
    so a node knows which slots it owns and where the others live (for redirects and its
    outbox). A node refuses an assignment that would lower an epoch; the controller logs
    that as an error and reports it in status: a standalone node (started without
    `--join`) already owns every slot at epoch 1 and must not be adopted.
  * Reconcile. Every `reconcile_interval_s`, each node's table version is read
    (`Node.GetSlots`); a node behind the map (it was down during a publish, or restarted
    from an old disk) gets the table again. A router that meets WRONG_SLOT asks for the
    same check at once (`refresh`).
    A change of a few slots (a committed move) is sent as a delta over the previous
    version; a node whose table is older refuses it and gets the whole table instead. One
    lock orders every AssignSlots, so a node never sees versions out of order from here.
  * Moves. The map records slot moves in flight (router/migration.py runs them). After a
    restart the controller cannot know how far a recorded move got, so it aborts every
    recorded move: one swap forgets them, then both nodes of each are told (AbortMove).
    Reconcile also reads the moves each node reports: one that the map no longer records
    is aborted on that node if the map still gives the slot to its source (the move did
    not commit); otherwise the node is behind the map and gets the table.
  * Watch. WatchShardMap streams wake on each new version.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc

import serving
from proto import cluster_pb2, node_pb2, node_pb2_grpc
from router import metrics, placement
from router.metastore import Metastore
from router.routing import CHANNEL_OPTIONS
from router.shardmap import ShardMap

log = logging.getLogger("yunkai.router.controller")

RPC_TIMEOUT_S = 5.0


class ControllerError(Exception):
    """The controller cannot do what it was asked (a clear message for the operator)."""


class Controller:
    def __init__(
        self,
        metastore: Metastore,
        seed_nodes: Sequence[str],
        slots_total: int,
        reconcile_interval_s: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.metastore = metastore
        self._credentials = credentials
        self.seed_nodes = list(seed_nodes)
        self.slots_total = slots_total
        self.reconcile_interval_s = reconcile_interval_s
        self._map: ShardMap | None = None
        self._changed = asyncio.Condition()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._node_versions: dict[str, int] = {}  # what each node said its table version is
        self._node_errors: dict[str, str] = {}
        self._reconcile_now = asyncio.Event()
        self._assigning = asyncio.Lock()

    # --- the map ----------------------------------------------------------------------------

    def current(self) -> ShardMap:
        assert self._map is not None, "the controller has not started"
        return self._map

    async def refresh(self, seen_version: int) -> ShardMap:
        """A router saw WRONG_SLOT: a node may be behind the map; check them now."""
        if self.current().version <= seen_version:
            self._reconcile_now.set()
            await asyncio.sleep(0)
        return self.current()

    async def load_or_seed(self) -> ShardMap:
        stored = self.metastore.load()
        if stored is None:
            if not self.seed_nodes:
                raise ControllerError("no shard map is stored yet: give the nodes with --nodes HOST:PORT,...")
            await self._check_seed_nodes()
            seeded = ShardMap.initial(placement.place(self.slots_total, self.seed_nodes))
            if self.metastore.compare_and_swap(0, seeded):
                log.info("seeded a new shard map", extra={"nodes": self.seed_nodes, "slots": self.slots_total})
                stored = seeded
            else:
                stored = self.metastore.load()
                assert stored is not None
        elif self.seed_nodes and set(self.seed_nodes) != set(stored.nodes):
            log.warning(
                "the stored shard map wins over --nodes",
                extra={"stored": sorted(stored.nodes), "given": self.seed_nodes},
            )
        if stored.slots_total != self.slots_total:
            raise ControllerError(
                f"the stored shard map has {stored.slots_total} slots, not {self.slots_total}: S is fixed"
            )
        self._map = stored
        metrics.map_version.set(stored.version)
        return stored

    async def _check_seed_nodes(self) -> None:
        """A new map may only take nodes that own nothing yet (started with --join)."""
        for address in self.seed_nodes:
            table = await self.node_table(address)
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

    async def swap(
        self,
        new_map: ShardMap,
        changed: Sequence[int] | None = None,
        before_publish: Callable[[], Awaitable[None]] | None = None,
        first: Sequence[str] = (),
        after_first: Callable[[], None] | None = None,
    ) -> bool:
        """Store a new map version (compare-and-swap) and publish it to every node: the
        whole table, or with `changed` only those slots (a delta over the previous version).
        A delta goes to the nodes in `first` (a move's sources and targets, which callers
        wait on) before the others, and `after_first` is called between."""
        current = self.current()
        started = time.perf_counter()
        if not self.metastore.compare_and_swap(current.version, new_map):
            self._map = self.metastore.load()
            return False
        metrics.map_swap_s.observe(time.perf_counter() - started)
        self._map = new_map
        metrics.map_version.set(new_map.version)
        metrics.moves_in_flight.set(len(new_map.migrations))
        async with self._changed:
            self._changed.notify_all()
        if before_publish is not None:
            await before_publish()
        if changed is None:
            await self.publish()
        else:
            await self._publish_delta(new_map, current.version, changed, first, after_first)
        return True

    async def _publish_delta(
        self,
        shard_map: ShardMap,
        base: int,
        changed: Sequence[int],
        first: Sequence[str] = (),
        after_first: Callable[[], None] | None = None,
    ) -> None:
        slots = [
            node_pb2.SlotOwnership(slot=slot, epoch=shard_map.epochs[slot], owner=shard_map.owners[slot])
            for slot in changed
        ]
        leading = sorted(set(first) & set(shard_map.nodes))
        await asyncio.gather(*(self._assign(shard_map, a, slots, base) for a in leading))
        if after_first is not None:
            after_first()
        rest = sorted(set(shard_map.nodes) - set(leading))
        await asyncio.gather(*(self._assign(shard_map, a, slots, base) for a in rest))

    async def recover_moves(self) -> None:
        """At start: abort every move the map records (their progress died with the
        controller that ran them). The abort is recorded before any node is told."""
        recorded = self.current().migrations
        if not recorded:
            return
        forgotten = self.current().with_migrations(remove=[m.id for m in recorded])
        if not await self.swap(forgotten, changed=[]):
            raise ControllerError("the shard map changed while recovering recorded moves; restart the router")
        for move in recorded:
            log.warning("aborting a move recorded before a restart", extra={"slot": move.slot, "id": move.id})
            await asyncio.gather(
                self.abort_move(move.source, move.id, move.slot), self.abort_move(move.target, move.id, move.slot)
            )

    async def abort_move(self, address: str, migration_id: str, slot: int) -> bool:
        """Tell one node to forget a move; False if it could not be reached (reconcile retries)."""
        try:
            await self.stub(address).AbortMove(
                node_pb2.AbortMoveRequest(migration_id=migration_id, slot=slot), timeout=RPC_TIMEOUT_S
            )
            return True
        except grpc.aio.AioRpcError as error:
            log.warning("could not abort a move on a node", extra={"node": address, "error": error.details()})
            return False

    async def watch(self, known_version: int) -> AsyncIterator[ShardMap]:
        """Each map newer than `known_version`, as it appears."""
        while True:
            current = self.current()
            if current.version > known_version:
                known_version = current.version
                yield current
                continue
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._newer_than, known_version))

    def _newer_than(self, version: int) -> bool:
        return self.current().version > version

    # --- talking to nodes -------------------------------------------------------------------

    def stub(self, address: str) -> node_pb2_grpc.NodeStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = serving.channel(address, self._credentials, CHANNEL_OPTIONS)
        return node_pb2_grpc.NodeStub(channel)

    def _table(self, shard_map: ShardMap, address: str) -> node_pb2.AssignSlotsRequest:
        return node_pb2.AssignSlotsRequest(
            map_version=shard_map.version,
            self_address=address,
            slots=[
                node_pb2.SlotOwnership(slot=slot, epoch=epoch, owner=owner)
                for slot, (owner, epoch) in enumerate(zip(shard_map.owners, shard_map.epochs, strict=True))
            ],
        )

    async def publish(self, only: Sequence[str] | None = None) -> None:
        shard_map = self.current()
        targets = list(only) if only is not None else sorted(shard_map.nodes)
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
            if delta is not None:
                request = node_pb2.AssignSlotsRequest(
                    map_version=shard_map.version, self_address=address, slots=delta, base_map_version=base
                )
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
        try:
            reply: node_pb2.GetSlotsResponse = await self.stub(address).GetSlots(
                node_pb2.GetSlotsRequest(), timeout=RPC_TIMEOUT_S
            )
            return reply
        except grpc.aio.AioRpcError:
            return None

    async def reconcile_once(self) -> None:
        for address in sorted(self.current().nodes):
            table = await self.node_table(address)
            if table is None:
                self._node_versions.pop(address, None)
                continue
            shard_map = self.current()  # read after the await: a move may have been recorded meanwhile
            self._node_versions[address] = table.map_version
            if table.map_version < shard_map.version:
                log.info("node behind the map; publishing", extra={"node": address, "node_version": table.map_version})
                await self._assign(shard_map, address)
            await self._reconcile_moves(address, table)

    async def _reconcile_moves(self, address: str, table: node_pb2.GetSlotsResponse) -> None:
        shard_map = self.current()
        active = {m.id for m in shard_map.migrations}
        for move in table.moves:
            if move.migration_id in active:
                continue
            source_side = move.role in (node_pb2.EXPORTING, node_pb2.FROZEN)
            still_source = shard_map.owners[move.slot] == address
            if source_side == still_source:  # a source that still owns it, or a target that does not
                log.info("aborting a move the map no longer records", extra={"node": address, "slot": move.slot})
                await self.abort_move(address, move.migration_id, move.slot)

    async def run(self) -> None:
        """Reconcile nodes with the map until cancelled (the caller publishes once first)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_now.wait(), self.reconcile_interval_s)
            self._reconcile_now.clear()
            await self.reconcile_once()

    async def status(self) -> cluster_pb2.StatusResponse:
        shard_map = self.current()
        counts = shard_map.counts()
        tables = await asyncio.gather(*(self.node_table(a) for a in sorted(shard_map.nodes)))
        response = cluster_pb2.StatusResponse(map_version=shard_map.version, slots_total=shard_map.slots_total)
        for address, table in zip(sorted(shard_map.nodes), tables, strict=True):
            response.nodes.add(
                address=address,
                state=shard_map.nodes[address],
                slots=counts[address],
                reachable=table is not None,
                slots_owned=0 if table is None else sum(1 for s in table.slots if s.owned),
            )
        return response

    def errors(self) -> dict[str, str]:
        return dict(self._node_errors)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
