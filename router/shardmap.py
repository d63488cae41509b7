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
from router.slots import SLOTS_TOTAL_MAX

ACTIVE = cluster_pb2.NODE_ACTIVE
JOINING = cluster_pb2.NODE_JOINING
DRAINING = cluster_pb2.NODE_DRAINING
LOST = cluster_pb2.NODE_LOST
DOWN = cluster_pb2.NODE_DOWN
STEPPED_DOWN = cluster_pb2.NODE_STEPPED_DOWN
JOBS_KEPT = 20

Config = tuple[str, tuple[str, ...]]  # a slot's configuration: (primary, followers)


@dataclass(frozen=True)
class Migration:
    """A copy of `slot` from its primary `source` to `target`, which takes the place of
    `replaces`: the source itself (the primary moves), a follower, or "" (a follower is added)."""

    id: str
    slot: int
    source: str
    target: str
    replaces: str = ""

    def __post_init__(self) -> None:
        if self.replaces == "" and not self.source:
            raise ValueError("a migration needs a source")

    @property
    def moves_primary(self) -> bool:
        return self.replaces == self.source


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
    # Per slot: its followers besides the owner (its primary); () for every slot with R = 1.
    followers: tuple[tuple[str, ...], ...] = ()
    replicas: int = 1  # R: copies of each slot the cluster keeps
    zones: Mapping[str, str] = field(default_factory=dict)  # address -> zone, for nodes that have one
    # address -> the identity in the node's certificate, as it reported it (credit nodes check
    # legs' senders against it); none for nodes that run --insecure.
    spiffe_ids: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = _problem(self)
        assert problem is None, problem

    @property
    def slots_total(self) -> int:
        return len(self.owners)

    @staticmethod
    def initial(
        owners: Sequence[str],
        ids: Mapping[str, str],
        cluster_id: str,
        followers: Sequence[Sequence[str]] = (),
        replicas: int = 1,
        zones: Mapping[str, str] | None = None,
        epoch: int = 1,
        spiffe_ids: Mapping[str, str] | None = None,
    ) -> ShardMap:
        """Version 1 of a new cluster's map."""
        nodes = dict.fromkeys(sorted(set(owners) | {f for slot in followers for f in slot}), ACTIVE)
        return ShardMap(
            1,
            tuple(owners),
            (epoch,) * len(owners),
            nodes,
            ids=dict(ids),
            cluster_id=cluster_id,
            followers=tuple(tuple(f) for f in followers),
            replicas=replicas,
            zones=dict(zones or {}),
            spiffe_ids=dict(spiffe_ids or {}),
        )

    def followers_of(self, slot: int) -> tuple[str, ...]:
        return self.followers[slot] if self.followers else ()

    def members(self, slot: int) -> tuple[str, ...]:
        """The slot's configuration: its primary first, then its followers."""
        return (self.owners[slot], *self.followers_of(slot))

    def config(self, slot: int) -> Config:
        return self.owners[slot], self.followers_of(slot)

    def slots_with(self, address: str) -> list[int]:
        """Slots whose configuration holds `address` (as primary or follower)."""
        return [slot for slot in range(self.slots_total) if address in self.members(slot)]

    def under_replicated(self) -> list[int]:
        """Slots with fewer live members than R (a member on a down or lost node is not live)."""
        if self.replicas <= 1:
            return []
        dead = {a for a, state in self.nodes.items() if state in (DOWN, LOST)}
        return [
            slot
            for slot in range(self.slots_total)
            if len([m for m in self.members(slot) if m not in dead]) < self.replicas
        ]

    def _next(self, **changes: Any) -> ShardMap:
        return dataclasses.replace(self, version=self.version + 1, **changes)

    def slots_of(self, address: str) -> list[int]:
        return [slot for slot, owner in enumerate(self.owners) if owner == address]

    def counts(self) -> Counter[str]:
        counts: Counter[str] = Counter(dict.fromkeys(self.nodes, 0))
        counts.update(self.owners)
        return counts

    def without_copy(self) -> list[int]:
        """Slots whose primary is lost or down and that have no follower to take its place:
        no live copy of them is reachable."""
        dead = {address for address, state in self.nodes.items() if state in (LOST, DOWN)}
        if not dead:
            return []
        return [
            slot
            for slot, owner in enumerate(self.owners)
            if owner in dead and all(f in dead for f in self.followers_of(slot))
        ]

    def running_job(self) -> cluster_pb2.Job | None:
        return next((job for job in self.jobs if job.state == cluster_pb2.JOB_RUNNING), None)

    # --- changes (each one version) -------------------------------------------------------------

    def reassign(self, changes: Mapping[int, str], forget: Sequence[str] = ()) -> ShardMap:
        """The next version, with the given slots owned by new nodes at epoch + 1, and
        their moves (and the moves named in `forget`) no longer recorded. A new owner that was
        a follower of the slot leaves its followers."""
        return self.reconfigure(
            {slot: (owner, tuple(f for f in self.followers_of(slot) if f != owner)) for slot, owner in changes.items()},
            forget,
        )

    def reconfigure(self, changes: Mapping[int, Config], forget: Sequence[str] = ()) -> ShardMap:
        """The next version, with the given slots' configurations (primary, followers), each
        changed one at epoch + 1, and their moves (and those named in `forget`) forgotten."""
        owners, epochs = list(self.owners), list(self.epochs)
        empty: tuple[str, ...] = ()
        followers = list(self.followers) if self.followers else [empty] * self.slots_total
        for slot, (primary, following) in changes.items():
            assert primary in self.nodes and all(f in self.nodes for f in following), (slot, primary, following)
            if (owners[slot], followers[slot]) != (primary, tuple(following)):
                owners[slot], followers[slot] = primary, tuple(following)
                epochs[slot] += 1
        done, gone = set(changes), set(forget)
        migrations = tuple(m for m in self.migrations if m.slot not in done and m.id not in gone)
        kept = tuple(followers) if any(followers) else ()
        return self._next(owners=tuple(owners), epochs=tuple(epochs), migrations=migrations, followers=kept)

    def with_migrations(self, add: Sequence[Migration] = (), remove: Sequence[str] = ()) -> ShardMap:
        """The next version, with moves recorded (`add`) or forgotten (`remove`, by id)."""
        gone = set(remove)
        return self._next(migrations=tuple(m for m in self.migrations if m.id not in gone) + tuple(add))

    def with_node(
        self, address: str, state: int, node_id: str | None = None, zone: str | None = None, spiffe_id: str = ""
    ) -> ShardMap:
        """The next version, with a node added or its state (and, when given, its id, zone and
        certificate identity) changed."""
        nodes = dict(self.nodes)
        nodes[address] = state
        ids = dict(self.ids)
        if node_id is not None:
            ids[address] = node_id
        zones = dict(self.zones)
        if zone:
            zones[address] = zone
        spiffe_ids = dict(self.spiffe_ids)
        if spiffe_id:
            spiffe_ids[address] = spiffe_id
        return self._next(nodes=nodes, ids=ids, zones=zones, spiffe_ids=spiffe_ids)

    def failed_over(self, dead: Mapping[str, int], changes: Mapping[int, Config], forget: Sequence[str]) -> ShardMap:
        """The next version, with nodes marked down or lost (`dead`: address -> state) and the
        configurations of their slots changed (epoch + 1 each), the moves in `forget` forgotten."""
        changed = self.reconfigure(changes, forget)
        nodes = dict(changed.nodes)
        nodes.update(dead)
        return dataclasses.replace(changed, nodes=nodes)

    def without_node(self, address: str) -> ShardMap:
        assert address not in self.owners, f"{address} still owns slots"
        assert not any(address in f for f in self.followers), f"{address} still follows slots"
        assert not any(address in (m.source, m.target) for m in self.migrations), f"{address} is in a move"
        nodes = {a: s for a, s in self.nodes.items() if a != address}
        ids = {a: i for a, i in self.ids.items() if a != address}
        zones = {a: z for a, z in self.zones.items() if a != address}
        spiffe_ids = {a: i for a, i in self.spiffe_ids.items() if a != address}
        return self._next(nodes=nodes, ids=ids, zones=zones, spiffe_ids=spiffe_ids)

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
                cluster_pb2.NodeInfo(
                    address=a,
                    state=self.nodes[a],  # type: ignore[arg-type]
                    id=self.ids.get(a, ""),
                    zone=self.zones.get(a, ""),
                    spiffe_id=self.spiffe_ids.get(a, ""),
                )
                for a in addresses
            ],
            slot_owner=[index[owner] for owner in self.owners],
            slot_epoch=self.epochs,
            migrations=[
                cluster_pb2.Migration(id=m.id, slot=m.slot, source=m.source, target=m.target, replaces=m.replaces)
                for m in self.migrations
            ],
            controller_term=self.term,
            cluster_id=self.cluster_id,
            jobs=self.jobs,
            slot_followers=[cluster_pb2.SlotFollowers(nodes=[index[f] for f in slot]) for slot in self.followers],
            replicas=self.replicas,
        )

    @staticmethod
    def from_proto(message: cluster_pb2.ShardMap) -> ShardMap:
        """The map a message holds; ValueError naming what is wrong if it is not a valid map
        (a map arrives from another process: bad input, never an assert)."""
        addresses = [n.address for n in message.nodes]
        if len(message.slot_owner) != message.slots_total or len(message.slot_epoch) != message.slots_total:
            raise ValueError(f"shard map v{message.version}: slot arrays do not have {message.slots_total} entries")
        if max(message.slot_owner, default=0) >= len(addresses):
            raise ValueError(f"shard map v{message.version}: a slot names an owner index past the node list")
        if message.slot_followers and len(message.slot_followers) != message.slots_total:
            raise ValueError(f"shard map v{message.version}: followers of {len(message.slot_followers)} slots")
        # Slots share a few dozen configurations: each distinct one is checked and built once
        # (every client parses every version of a map of thousands of slots).
        indexed = [tuple(slot.nodes) for slot in message.slot_followers]
        configs = set(indexed)
        if any(i >= len(addresses) for config in configs for i in config):
            raise ValueError(f"shard map v{message.version}: a slot names a follower index past the node list")
        built = {config: tuple(addresses[i] for i in config) for config in configs}
        fields = dict(
            version=message.version,
            owners=tuple(addresses[i] for i in message.slot_owner),
            epochs=tuple(message.slot_epoch),
            nodes={n.address: int(n.state) for n in message.nodes},
            migrations=tuple(Migration(m.id, m.slot, m.source, m.target, m.replaces) for m in message.migrations),
            ids={n.address: n.id for n in message.nodes if n.id},
            term=message.controller_term,
            cluster_id=message.cluster_id,
            jobs=tuple(message.jobs),
            followers=tuple(built[config] for config in indexed),
            replicas=max(1, message.replicas),
            zones={n.address: n.zone for n in message.nodes if n.zone},
            spiffe_ids={n.address: n.spiffe_id for n in message.nodes if n.spiffe_id},
        )
        problem = _problem(SimpleNamespace(**fields))
        if problem is not None:
            raise ValueError(f"shard map v{message.version}: {problem}")
        return ShardMap(**fields)  # type: ignore[arg-type]


def _problem(m: ShardMap | SimpleNamespace) -> str | None:
    """Which of a map's invariants does not hold, or None."""
    if not 0 < len(m.owners) <= SLOTS_TOTAL_MAX:
        return f"1 to {SLOTS_TOTAL_MAX} slots, not {len(m.owners)}"
    if len(m.owners) != len(m.epochs):
        return "one owner and one epoch per slot"
    if any(state not in cluster_pb2.NodeState.values() for state in m.nodes.values()):
        return "every node in a known state"
    if not set(m.owners) <= m.nodes.keys():
        return "every owner is a known node"
    if not set(m.ids) <= set(m.nodes) or not set(m.zones) <= set(m.nodes) or not set(m.spiffe_ids) <= set(m.nodes):
        return "ids, zones and identities only of known nodes"
    moving = [move.slot for move in m.migrations]
    if len(moving) != len(set(moving)):
        return "at most one move per slot"
    if not all(0 <= move.slot < len(m.owners) and m.owners[move.slot] == move.source for move in m.migrations):
        return "a move starts at the owner of its slot"
    if sum(1 for job in m.jobs if job.state == cluster_pb2.JOB_RUNNING) > 1:
        return "one job runs at a time"
    if m.followers:
        if len(m.followers) != len(m.owners):
            return "followers for every slot, or for none"
        # Each distinct configuration checked once (a map of thousands of slots holds a few
        # dozen): every client parses every version of the map.
        configs = list(zip(m.owners, m.followers, strict=True))
        distinct = set(configs)
        twice = {c for c in distinct if len(set(c[1])) != len(c[1]) or c[0] in c[1]}
        unknown = {c for c in distinct if not m.nodes.keys() >= set(c[1])}
        if twice or unknown:
            slot = next(i for i, c in enumerate(configs) if c in twice or c in unknown)
            if configs[slot] in twice:
                return f"slot {slot}: a node twice in its configuration"
            return f"slot {slot}: a follower that is not a known node"
    if m.replicas < 1:
        return "at least one copy of each slot"
    return None
