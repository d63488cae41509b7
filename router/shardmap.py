"""The shard map: which node owns each slot, at which epoch, in which map version, under which controller.

A ShardMap is an immutable value. The controller derives a new one from the current one
(`reassign`, `with_node`, `with_migrations`, `with_term`, ...), bumping `version` once per
change and a slot's epoch every time its owner changes, and stores it with one
compare-and-swap. The map also records the slot moves in flight (router/migration.py: a
move is recorded before it starts and removed by the swap that commits or aborts it), the
operator jobs (the running one is resumed by the next controller), the term of the
controller that stored it (the fencing token nodes check), and each node's id (the id its
data directory holds: the process at an address that reports another id is not that node,
and the node is marked LOST). Everyone else only reads it: routers and smart clients route
with it and name each slot's epoch when they call a node (fencing), so a stale map can
delay a request but never apply it on the wrong node.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from proto import cluster_pb2

ACTIVE = cluster_pb2.NODE_ACTIVE
JOINING = cluster_pb2.NODE_JOINING
DRAINING = cluster_pb2.NODE_DRAINING
LOST = cluster_pb2.NODE_LOST
JOBS_KEPT = 20


@dataclass(frozen=True)
class Migration:
    id: str
    slot: int
    source: str
    target: str


@dataclass(frozen=True)
class ShardMap:
    version: int
    owners: tuple[str, ...]  # per slot: the owner's address
    epochs: tuple[int, ...]  # per slot: the epoch of that ownership
    nodes: Mapping[str, int] = field(default_factory=dict)  # address -> NodeState
    migrations: tuple[Migration, ...] = ()
    ids: Mapping[str, str] = field(default_factory=dict)  # address -> node id ("" until learned)
    term: int = 0  # the controller term that stored this version
    cluster_id: str = ""
    jobs: tuple[cluster_pb2.Job, ...] = ()  # newest last; never mutated (replaced whole)

    def __post_init__(self) -> None:
        problem = _problem(self)
        assert problem is None, problem

    @property
    def slots_total(self) -> int:
        return len(self.owners)

    @staticmethod
    def initial(owners: Sequence[str], ids: Mapping[str, str], cluster_id: str, epoch: int = 1) -> ShardMap:
        """Version 1 of a new cluster's map."""
        nodes = dict.fromkeys(sorted(set(owners)), ACTIVE)
        return ShardMap(1, tuple(owners), (epoch,) * len(owners), nodes, ids=dict(ids), cluster_id=cluster_id)

    def _next(self, **changes: Any) -> ShardMap:
        return dataclasses.replace(self, version=self.version + 1, **changes)

    def slots_of(self, address: str) -> list[int]:
        return [slot for slot, owner in enumerate(self.owners) if owner == address]

    def counts(self) -> Counter[str]:
        counts: Counter[str] = Counter(dict.fromkeys(self.nodes, 0))
        counts.update(self.owners)
        return counts

    def without_copy(self) -> list[int]:
        """Slots whose owner is lost: no live copy of them is reachable."""
        lost = {address for address, state in self.nodes.items() if state == LOST}
        return [slot for slot, owner in enumerate(self.owners) if owner in lost] if lost else []

    def running_job(self) -> cluster_pb2.Job | None:
        return next((job for job in self.jobs if job.state == cluster_pb2.JOB_RUNNING), None)

    # --- changes (each one version) -------------------------------------------------------------

    def reassign(self, changes: Mapping[int, str], forget: Sequence[str] = ()) -> ShardMap:
        """The next version, with the given slots owned by new nodes at epoch + 1, and
        their moves (and the moves named in `forget`) no longer recorded."""
        owners, epochs = list(self.owners), list(self.epochs)
        for slot, owner in changes.items():
            assert owner in self.nodes, f"{owner} is not in the map"
            if owners[slot] != owner:
                owners[slot] = owner
                epochs[slot] += 1
        done, gone = set(changes), set(forget)
        migrations = tuple(m for m in self.migrations if m.slot not in done and m.id not in gone)
        return self._next(owners=tuple(owners), epochs=tuple(epochs), migrations=migrations)

    def with_migrations(self, add: Sequence[Migration] = (), remove: Sequence[str] = ()) -> ShardMap:
        """The next version, with moves recorded (`add`) or forgotten (`remove`, by id)."""
        gone = set(remove)
        return self._next(migrations=tuple(m for m in self.migrations if m.id not in gone) + tuple(add))

    def with_node(self, address: str, state: int, node_id: str | None = None) -> ShardMap:
        """The next version, with a node added or its state (and, when given, its id) changed."""
        nodes = dict(self.nodes)
        nodes[address] = state
        ids = dict(self.ids)
        if node_id is not None:
            ids[address] = node_id
        return self._next(nodes=nodes, ids=ids)

    def without_node(self, address: str) -> ShardMap:
        assert address not in self.owners, f"{address} still owns slots"
        assert not any(address in (m.source, m.target) for m in self.migrations), f"{address} is in a move"
        nodes = {a: s for a, s in self.nodes.items() if a != address}
        ids = {a: i for a, i in self.ids.items() if a != address}
        return self._next(nodes=nodes, ids=ids)

    def next_version(self) -> ShardMap:
        """The next version with nothing else changed (a job's record alone, say)."""
        return self._next()

    def with_term(self, term: int) -> ShardMap:
        """The next version, stored by a controller that took office at `term`."""
        assert term > self.term, (term, self.term)
        return self._next(term=term)

    def with_job(self, job: cluster_pb2.Job) -> ShardMap:
        """This map with `job` recorded (replacing its older record), without a new version:
        a job's record rides the swap that made its progress."""
        jobs = [kept for kept in self.jobs if kept.id != job.id] + [job]
        return dataclasses.replace(self, jobs=tuple(jobs[-JOBS_KEPT:]))

    # --- wire form ------------------------------------------------------------------------

    def to_proto(self) -> cluster_pb2.ShardMap:
        addresses = sorted(self.nodes)
        index = {address: i for i, address in enumerate(addresses)}
        return cluster_pb2.ShardMap(
            version=self.version,
            slots_total=self.slots_total,
            nodes=[
                cluster_pb2.NodeInfo(address=a, state=self.nodes[a], id=self.ids.get(a, ""))  # type: ignore[arg-type]
                for a in addresses
            ],
            slot_owner=[index[owner] for owner in self.owners],
            slot_epoch=self.epochs,
            migrations=[
                cluster_pb2.Migration(id=m.id, slot=m.slot, source=m.source, target=m.target) for m in self.migrations
            ],
            controller_term=self.term,
            cluster_id=self.cluster_id,
            jobs=self.jobs,
        )

    @staticmethod
    def from_proto(message: cluster_pb2.ShardMap) -> ShardMap:
        """The map a message holds; ValueError naming what is wrong if it is not a valid map
        (a map arrives from another process: bad input, never an assert)."""
        addresses = [n.address for n in message.nodes]
        if len(message.slot_owner) != message.slots_total or len(message.slot_epoch) != message.slots_total:
            raise ValueError(f"shard map v{message.version}: slot arrays do not have {message.slots_total} entries")
        if any(i >= len(addresses) for i in message.slot_owner):
            raise ValueError(f"shard map v{message.version}: a slot names an owner index past the node list")
        fields = dict(
            version=message.version,
            owners=tuple(addresses[i] for i in message.slot_owner),
            epochs=tuple(message.slot_epoch),
            nodes={n.address: int(n.state) for n in message.nodes},
            migrations=tuple(Migration(m.id, m.slot, m.source, m.target) for m in message.migrations),
            ids={n.address: n.id for n in message.nodes if n.id},
            term=message.controller_term,
            cluster_id=message.cluster_id,
            jobs=tuple(message.jobs),
        )
        problem = _problem(SimpleNamespace(**fields))
        if problem is not None:
            raise ValueError(f"shard map v{message.version}: {problem}")
        return ShardMap(**fields)  # type: ignore[arg-type]


def _problem(m: ShardMap | SimpleNamespace) -> str | None:
    """Which of a map's invariants does not hold, or None."""
    if len(m.owners) != len(m.epochs):
        return "one owner and one epoch per slot"
    if not all(owner in m.nodes for owner in set(m.owners)):
        return "every owner is a known node"
    if not set(m.ids) <= set(m.nodes):
        return "ids only of known nodes"
    moving = [move.slot for move in m.migrations]
    if len(moving) != len(set(moving)):
        return "at most one move per slot"
    if not all(0 <= move.slot < len(m.owners) and m.owners[move.slot] == move.source for move in m.migrations):
        return "a move starts at the owner of its slot"
    if sum(1 for job in m.jobs if job.state == cluster_pb2.JOB_RUNNING) > 1:
        return "one job runs at a time"
    return None
