"""The shard map: which node owns each slot, at which epoch, in which map version.

A ShardMap is an immutable value. The controller derives a new one from the current one
(`reassign`, `with_node`, `with_migrations`), bumping `version` once per change and a
slot's epoch every time its owner changes, and stores it with one compare-and-swap. The
map also records the slot moves in flight (router/migration.py): a move is recorded
before it starts and removed by the swap that commits or aborts it. Everyone else only reads
it: routers and smart clients route with it and name each slot's epoch when they call a
node (fencing), so a stale map can delay a request but never apply it on the wrong node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from proto import cluster_pb2

ACTIVE = cluster_pb2.NODE_ACTIVE
JOINING = cluster_pb2.NODE_JOINING
DRAINING = cluster_pb2.NODE_DRAINING


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

    def __post_init__(self) -> None:
        assert len(self.owners) == len(self.epochs), "one owner and one epoch per slot"
        assert all(owner in self.nodes for owner in set(self.owners)), "every owner is a known node"
        moving = [m.slot for m in self.migrations]
        assert len(moving) == len(set(moving)), "at most one move per slot"
        assert all(self.owners[m.slot] == m.source for m in self.migrations), "a move starts at the owner"

    @property
    def slots_total(self) -> int:
        return len(self.owners)

    @staticmethod
    def initial(owners: Sequence[str], epoch: int = 1) -> ShardMap:
        """Version 1 of a new cluster's map."""
        return ShardMap(1, tuple(owners), (epoch,) * len(owners), dict.fromkeys(sorted(set(owners)), ACTIVE))

    def slots_of(self, address: str) -> list[int]:
        return [slot for slot, owner in enumerate(self.owners) if owner == address]

    def counts(self) -> Counter[str]:
        counts: Counter[str] = Counter(dict.fromkeys(self.nodes, 0))
        counts.update(self.owners)
        return counts

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
        return ShardMap(self.version + 1, tuple(owners), tuple(epochs), dict(self.nodes), migrations)

    def with_migrations(self, add: Sequence[Migration] = (), remove: Sequence[str] = ()) -> ShardMap:
        """The next version, with moves recorded (`add`) or forgotten (`remove`, by id)."""
        gone = set(remove)
        migrations = tuple(m for m in self.migrations if m.id not in gone) + tuple(add)
        return ShardMap(self.version + 1, self.owners, self.epochs, dict(self.nodes), migrations)

    def with_node(self, address: str, state: int) -> ShardMap:
        """The next version, with a node added or its state changed."""
        nodes = dict(self.nodes)
        nodes[address] = state
        return ShardMap(self.version + 1, self.owners, self.epochs, nodes, self.migrations)

    def without_node(self, address: str) -> ShardMap:
        assert address not in self.owners, f"{address} still owns slots"
        assert not any(address in (m.source, m.target) for m in self.migrations), f"{address} is in a move"
        nodes = {a: s for a, s in self.nodes.items() if a != address}
        return ShardMap(self.version + 1, self.owners, self.epochs, nodes, self.migrations)

    # --- wire form ------------------------------------------------------------------------

    def to_proto(self) -> cluster_pb2.ShardMap:
        addresses = sorted(self.nodes)
        index = {address: i for i, address in enumerate(addresses)}
        return cluster_pb2.ShardMap(
            version=self.version,
            slots_total=self.slots_total,
            nodes=[cluster_pb2.NodeInfo(address=a, state=self.nodes[a]) for a in addresses],  # type: ignore[arg-type]
            slot_owner=[index[owner] for owner in self.owners],
            slot_epoch=self.epochs,
            migrations=[
                cluster_pb2.Migration(id=m.id, slot=m.slot, source=m.source, target=m.target) for m in self.migrations
            ],
        )

    @staticmethod
    def from_proto(message: cluster_pb2.ShardMap) -> ShardMap:
        addresses = [n.address for n in message.nodes]
        if len(message.slot_owner) != message.slots_total or len(message.slot_epoch) != message.slots_total:
            raise ValueError(f"shard map v{message.version}: slot arrays do not have {message.slots_total} entries")
        if any(i >= len(addresses) for i in message.slot_owner):
            raise ValueError(f"shard map v{message.version}: a slot names an owner index past the node list")
        return ShardMap(
            version=message.version,
            owners=tuple(addresses[i] for i in message.slot_owner),
            epochs=tuple(message.slot_epoch),
            nodes={n.address: int(n.state) for n in message.nodes},
            migrations=tuple(Migration(m.id, m.slot, m.source, m.target) for m in message.migrations),
        )
