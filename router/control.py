"""A router process's part in the control plane: follow the shard map, stand for controller, lead.

Every router process runs one ControlPlane (DESIGN section 6a):
  * Follow. It watches the metastore and offers each stored map to its MapView, which
    routing reads: a router that is not the controller routes with the newest map it has
    seen, and goes on routing from it while the metastore is unreachable.
  * Stand. It campaigns (router/leadership.py) for as long as it runs. When it wins it takes
    office (router/controller.py: load or seed the map, store it with term + 1), publishes
    the map to every node, aborts the moves an earlier controller left recorded, resumes the
    job it left running (router/migration.py), and runs the reconciler and the job runner
    until its leadership is lost; then it stops them and stands again.
  * Answer. Status is answered by any router from its map and the nodes' own tables, with the
    cluster's trial balance: the nodes' books added up (node/books.py; `add_books`). An
    admin call (add-node, drain-node, rebalance) is run by the controller; another router
    forwards it to the controller's admin address (router/server.py), or answers
    UNAVAILABLE while there is none (an election is under way).
  * A stale map (a router met WRONG_SLOT): the controller checks the nodes at once; any other
    router reads the metastore for a newer map.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence

from proto import cluster_pb2, node_pb2
from router import metrics
from router.controller import DOWN_AFTER_S_DEFAULT, Controller, ControllerError, NodeClients
from router.leadership import Leadership
from router.mapview import MapView
from router.metastore import Metastore
from router.migration import REPAIR_RETRY_S_DEFAULT, Mover
from router.shardmap import DOWN, LOST

log = logging.getLogger("yunkai.router.control")

RECAMPAIGN_PAUSE_S = 1.0
# The nodes' books are read one node after another, not at one instant: a transfer between two
# reads can make sums that differ with nothing in flight. Such sums are read again, this often.
BOOKS_READS_MAX = 3
BOOKS_READ_AGAIN_S = 0.1


class ControlPlane:
    def __init__(
        self,
        metastore: Metastore,
        leadership: Leadership,
        nodes: NodeClients,
        seed_nodes: Sequence[str],
        slots_total: int,
        move_concurrency: int,
        replicas: int = 1,
        down_after_s: float = DOWN_AFTER_S_DEFAULT,
        repair_retry_s: float = REPAIR_RETRY_S_DEFAULT,
    ) -> None:
        self.metastore = metastore
        self.leadership = leadership
        self.nodes = nodes
        self.seed_nodes = list(seed_nodes)
        self.slots_total = slots_total
        self.move_concurrency = move_concurrency
        self.replicas = replicas
        self.down_after_s = down_after_s
        self.repair_retry_s = repair_retry_s
        self.view = MapView()
        self.view.on_stale = self._stale
        self.controller: Controller | None = None  # while this router leads
        self.mover: Mover | None = None
        self._reloading: asyncio.Task[None] | None = None
        # Set once this router may serve: it has a map that a controller has already
        # published to the nodes (its own first publish, or a map it followed).
        self.ready = asyncio.Event()
        self._taking_office = False

    # --- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the map and stand for controller until cancelled. A ControllerError while
        taking office before any map exists (no --nodes, a node that cannot be adopted) ends
        it: the router cannot start."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow())
            while True:
                await self.leadership.campaign()
                self._taking_office = True
                try:
                    await self._lead()
                except Exception as error:  # ControllerError, etcd unreachable, a task's failure
                    if not self.view.ready():
                        raise  # no map to serve with: the router cannot start
                    log.error(
                        "stopped leading", extra={"error": repr(error)}, exc_info=not isinstance(error, ControllerError)
                    )
                finally:
                    self._taking_office = False
                    self.controller = self.mover = None
                    metrics.leading.set(0)
                    metrics.controller_term.set(0)
                    metrics.slots_set_aside.set(0)  # the back-offs were this controller's
                with contextlib.suppress(Exception):
                    await self.leadership.resign()
                await asyncio.sleep(RECAMPAIGN_PAUSE_S)

    async def _follow(self) -> None:
        known = self.view.current().version if self.view.ready() else 0
        async for shard_map in self.metastore.watch(known):
            if await self.view.offer(shard_map) and not self._taking_office:
                self.ready.set()

    async def _lead(self) -> None:
        controller = Controller(
            self.metastore,
            self.view,
            self.nodes,
            self.leadership,
            self.seed_nodes,
            self.slots_total,
            replicas=self.replicas,
            down_after_s=self.down_after_s,
        )
        await controller.take_office()
        await controller.publish()  # nodes know the map (and the new term) before any job acts
        self._taking_office = False
        self.ready.set()
        await controller.recover_moves()
        mover = Mover(controller, self.move_concurrency, self.repair_retry_s)
        mover.resume()
        self.controller, self.mover = controller, mover
        metrics.leading.set(1)
        async with asyncio.TaskGroup() as tasks:
            reconciler = tasks.create_task(controller.run())
            health = tasks.create_task(controller.watch_health())
            jobs = tasks.create_task(mover.run())
            await self.leadership.lost()
            log.warning("leadership lost: the controller stops", extra={"term": controller.term})
            reconciler.cancel()
            health.cancel()
            jobs.cancel()

    async def _stale(self, seen_version: int) -> None:
        if self.controller is not None:
            self.controller.reconcile_now()
            await asyncio.sleep(0)
            return
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.ensure_future(self._reload())
        with contextlib.suppress(Exception):
            await asyncio.shield(self._reloading)

    async def _reload(self) -> None:
        with contextlib.suppress(Exception):  # the watch catches up anyway
            stored = await self.metastore.load()
            if stored is not None:
                await self.view.offer(stored)

    # --- answering -----------------------------------------------------------------------------

    async def leader(self) -> str:
        """The controller's admin address ("" while there is none)."""
        if self.controller is not None and self.leadership.leading():
            return self.leadership.admin_address
        try:
            return await self.leadership.leader()
        except Exception as error:  # the metastore is unreachable: no leader can be named
            log.warning("cannot tell who the controller is", extra={"error": str(error)})
            return ""

    async def status(self) -> cluster_pb2.StatusResponse:
        shard_map = self.view.current()
        counts = shard_map.counts()
        addresses = sorted(shard_map.nodes)
        for read in range(BOOKS_READS_MAX):
            if read:
                await asyncio.sleep(BOOKS_READ_AGAIN_S)
            tables = await asyncio.gather(*(self.nodes.table(a, summary=True) for a in addresses))
            answered = [
                table if table is not None and _is(table, shard_map.ids.get(address, "")) else None
                for address, table in zip(addresses, tables, strict=True)
            ]
            # A node the map gives no slot holds none of the books once its slots have moved.
            needed = [counts[address] > 0 for address in addresses]
            books = add_books(addresses, answered, needed)
            if books.state != cluster_pb2.BOOKS_UNBALANCED:
                break
        response = cluster_pb2.StatusResponse(
            map_version=shard_map.version,
            slots_total=shard_map.slots_total,
            controller_term=shard_map.term,
            leader=await self.leader(),
            cluster_id=shard_map.cluster_id,
            slots_without_copy=shard_map.without_copy(),
            replicas=shard_map.replicas,
            slots_under_replicated=len(shard_map.under_replicated()),
            books=books,
        )
        follows: Counter[str] = Counter(f for following in shard_map.followers for f in following)
        for address, table, own in zip(addresses, tables, answered, strict=True):
            added = response.nodes.add(
                address=address,
                state=shard_map.nodes[address],
                slots=counts[address],
                reachable=table is not None and shard_map.nodes[address] not in (LOST, DOWN),
                slots_owned=own.owned_count if own is not None else 0,
                id=shard_map.ids.get(address, ""),
                reported_id="" if table is None else table.node_id,
                follows=follows[address],
                zone=shard_map.zones.get(address, ""),
            )
            if own is not None and own.HasField("books"):
                added.books.CopyFrom(own.books)
        response.migrations.extend(shard_map.to_proto().migrations)
        response.jobs.extend(shard_map.jobs)
        return response

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.leadership.resign()
        await self.nodes.close()
        await self.metastore.close()


def _is(table: node_pb2.GetSlotsResponse, recorded_id: str) -> bool:
    """Whether the process that answered is the node the map records at its address."""
    return not recorded_id or table.node_id == recorded_id


def add_books(
    addresses: Sequence[str], tables: Sequence[node_pb2.GetSlotsResponse | None], needed: Sequence[bool]
) -> cluster_pb2.ClusterBooks:
    """The cluster's trial balance from each node's own (None: it did not answer as itself).
    Balanced: every node balances, no leg is in flight, and the sums of debits and credits
    agree (node/books.py says why they must)."""
    debits = credits = legs = 0
    unbalanced: list[str] = []
    unknown: list[str] = []
    for address, table, counted in zip(addresses, tables, needed, strict=True):
        books = table.books if table is not None and table.HasField("books") else None
        figures = _figures(books) if books is not None else None
        if books is None or figures is None:
            if counted:
                unknown.append(address)
            continue
        node_debits, node_credits, imbalance = figures
        debits += node_debits
        credits += node_credits
        legs += books.legs_in_flight
        if imbalance:
            unbalanced.append(address)
    if unknown:
        state = cluster_pb2.BOOKS_UNKNOWN
    elif unbalanced:
        state = cluster_pb2.BOOKS_UNBALANCED
    elif legs:
        state = cluster_pb2.BOOKS_IN_FLIGHT
    else:
        state = cluster_pb2.BOOKS_BALANCED if debits == credits else cluster_pb2.BOOKS_UNBALANCED
    return cluster_pb2.ClusterBooks(
        state=state,
        debits=str(debits),
        credits=str(credits),
        legs_in_flight=legs,
        unbalanced_nodes=unbalanced,
        unknown_nodes=unknown,
    )


def _figures(books: node_pb2.Books) -> tuple[int, int, int] | None:
    """(debits, credits, imbalance) of a node's books; None if it sent no numbers (a peer's
    answer is checked like any input)."""
    try:
        return int(books.debits), int(books.credits), int(books.imbalance)
    except ValueError:
        return None
