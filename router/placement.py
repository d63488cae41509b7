"""Where slots live: balanced rendezvous placement of S slots onto nodes.

Rendezvous (highest-random-weight) hashing gives each (node, slot) pair a score; plain HRW
puts each slot on its top-scoring node. That moves the fewest slots when a node joins,
but its load follows a binomial spread: with 4,096 slots on 16 nodes the fullest node
holds ~15% more than the mean. We keep HRW's scores and add quotas:

  * add_node(owners, new): the new node takes floor(S / n) slots (n counting it), one at a
    time from whichever old node holds the most (ties: smallest address), choosing that
    node's slot with the highest score for the new node. Only slots onto the new node
    move, none between old nodes, and afterwards every count is within one of the others.
    If the new node already owns some (an add-node that was interrupted), it takes only
    the rest of its share.
  * remove_node(owners, gone): each of its slots goes, in score order, to the remaining
    node with the fewest slots among its best-scoring candidates (counts stay within one).
  * rebalance(owners, nodes): the fewest moves that bring every node within one slot of
    the others (from the fullest to the emptiest, best-scoring slot first).
  * place(S, nodes) = add the nodes one by one, in the order given, to an empty map, so the
    same inputs give the same placement in every process and after every restart.

Scores are portable: the first 8 bytes of BLAKE2b(node address, slot), the same in every
process, machine and Python version.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from collections.abc import Sequence


def score(node: str, slot: int) -> int:
    """The rendezvous weight of `slot` on `node`: stable across processes and versions."""
    digest = hashlib.blake2b(node.encode() + b"\x00" + slot.to_bytes(4, "big"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def place(slots_total: int, nodes: Sequence[str]) -> list[str]:
    """The owner of each slot for a new cluster of `nodes`."""
    if not nodes:
        raise ValueError("a cluster needs at least one node")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"node addresses must be distinct: {list(nodes)}")
    owners = [nodes[0]] * slots_total
    for node in nodes[1:]:
        owners = add_node(owners, node)
    return owners


def add_node(owners: Sequence[str], new: str) -> list[str]:
    """Owners after `new` joins: floor(S/n) slots move onto it, none between old nodes."""
    result = list(owners)
    counts = Counter(owner for owner in owners if owner != new)
    if not counts:
        return result  # it owns everything already
    take = len(owners) // (len(counts) + 1) - (len(owners) - sum(counts.values()))
    # Per old node, its slots ordered by the new node's score (best first).
    candidates: dict[str, list[int]] = {node: [] for node in counts}
    for slot, owner in enumerate(owners):
        if owner != new:
            candidates[owner].append(slot)
    for slots in candidates.values():
        slots.sort(key=lambda s: (-score(new, s), s))
    # Take one at a time from the fullest node: a max-heap on (count, then address).
    fullest = [(-count, node) for node, count in counts.items()]
    heapq.heapify(fullest)
    taken = {node: 0 for node in counts}
    for _ in range(take):
        negative, node = heapq.heappop(fullest)
        slot = candidates[node][taken[node]]
        taken[node] += 1
        result[slot] = new
        heapq.heappush(fullest, (negative + 1, node))
    return result


def remove_node(owners: Sequence[str], gone: str) -> list[str]:
    """Owners after `gone` leaves: its slots spread over the others, counts within one."""
    counts = Counter(owners)
    counts.pop(gone, None)
    if not counts:
        raise ValueError("cannot remove the last node")
    result = list(owners)
    orphans = [slot for slot, owner in enumerate(owners) if owner == gone]
    remaining = sorted(counts)
    for slot in orphans:
        # Among the nodes with the fewest slots, the one this slot scores highest on.
        fewest = min(counts.values())
        best = max((n for n in remaining if counts[n] == fewest), key=lambda n: (score(n, slot), n))
        result[slot] = best
        counts[best] += 1
    return result


def rebalance(owners: Sequence[str], nodes: Sequence[str]) -> list[str]:
    """Owners with every node in `nodes` within one slot of the others, moving the fewest
    slots: one at a time from the fullest node to the emptiest, the slot that scores highest
    on the receiving node. Slots of nodes not in `nodes` (draining ones) go first."""
    if not nodes:
        raise ValueError("a cluster needs at least one node")
    result = list(owners)
    counts = Counter({node: 0 for node in nodes})
    counts.update(owner for owner in owners if owner in counts)
    outside = [slot for slot, owner in enumerate(owners) if owner not in counts]
    for slot in outside:
        fewest = min(counts.values())
        best = max((n for n in sorted(counts) if counts[n] == fewest), key=lambda n: (score(n, slot), n))
        result[slot] = best
        counts[best] += 1
    while True:
        fullest = max(sorted(counts), key=lambda n: counts[n])
        emptiest = min(sorted(counts), key=lambda n: counts[n])
        if counts[fullest] - counts[emptiest] <= 1:
            return result
        slot = max((s for s, owner in enumerate(result) if owner == fullest), key=lambda s: (score(emptiest, s), s))
        result[slot] = emptiest
        counts[fullest] -= 1
        counts[emptiest] += 1


def moves(before: Sequence[str], after: Sequence[str]) -> list[tuple[int, str, str]]:
    """(slot, source, target) for every slot whose owner differs."""
    assert len(before) == len(after)
    return [(slot, a, b) for slot, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
