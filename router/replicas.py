"""Where a slot's copies live: each slot's configuration (a primary and R - 1 followers), and the changes to it.

Pure functions over configurations (`Config` = (primary, followers)); router/migration.py
carries out the changes they plan, each one a copy from the slot's primary to a target node
that takes the place of one member (or is added): `Change(slot, target, replaces)`.

Rules, for every plan:
  * A slot's members are distinct nodes; where nodes carry zones, they are in as many
    different zones as there are (a second copy in one zone only when no other zone is left).
  * Seats (a node's memberships, primary or follower) are spread evenly, greedily: primaries
    are placed by router/placement.py's balanced rendezvous hashing, each follower seat goes to
    the eligible node with the fewest seats, ties broken by the rendezvous score
    (placement.score), so the same inputs give the same plan in every process. Greedy keeps
    the seats within two of each other (tests/test_replicas.py), not always within one: exact
    balance would move more copies than it is worth. Repair and drain then move their planned
    copies off the fullest nodes along chains while that narrows the spread (greedy alone
    left three). add moves seats onto the new node only, after placement's primary hand-offs,
    and can leave three in a small cluster (2,000 random cases found 3 nodes, 5 slots, R = 2).
  * A target is never a current member of the slot (a member is never re-copied in place).

  seed(owners, nodes, R)              followers for a new cluster (its primaries are placed already)
  fail_over(configs, dead, copies)    each slot a dead node was member of: a live follower holding
                                      the most (highest (epoch, seq)) becomes primary; followers
                                      behind it and dead ones leave (repair re-copies them)
  silenced(configs, pairs, copies)    each slot whose primary p reported follower f silent ((p, f) in
                                      pairs): without f, or, all its followers silent, failed over to
                                      one of them (p is the odd one out); repair re-copies
  repair(configs, live, R)            a Change adding a follower to each slot with fewer than R
  drain(configs, gone, live)          a Change replacing `gone` in each slot it is a member of
  add(configs, new, R)                the new node takes its share: primaries (as placement.add_node)
                                      and follower seats from the fullest nodes
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from router import placement

Config = tuple[str, tuple[str, ...]]
Copy = tuple[int, int]  # (epoch, seq): how far a node's copy of a slot is


@dataclass(frozen=True)
class Change:
    """Copy `slot` from its primary to `target`, which takes the place of `replaces` (the
    primary itself, a follower, or "" to add a follower)."""

    slot: int
    target: str
    replaces: str


def members(config: Config) -> tuple[str, ...]:
    return (config[0], *config[1])


def seats(configs: Sequence[Config], nodes: Sequence[str]) -> Counter[str]:
    """How many memberships each node holds (nodes holding none count 0)."""
    counts: Counter[str] = Counter(dict.fromkeys(nodes, 0))
    for config in configs:
        counts.update(members(config))
    return counts


def _zone_ok(candidate: str, taken: Sequence[str], zones: Mapping[str, str], nodes: Sequence[str]) -> bool:
    """Whether `candidate` keeps the slot's members spread: in a zone none of them is in,
    unless every zone with a node left is taken already."""
    zone = zones.get(candidate, "")
    if not zone:
        return True
    used = {zones.get(m, "") for m in taken}
    if zone not in used:
        return True
    free = {zones.get(n, "") for n in nodes if n not in taken} - used
    return not free


def _pick(
    slot: int, taken: Sequence[str], candidates: Sequence[str], counts: Counter[str], zones: Mapping[str, str]
) -> str | None:
    """The candidate for a new seat of `slot`: not a member, zone-spread, fewest seats, best score."""
    eligible = [c for c in candidates if c not in taken and _zone_ok(c, taken, zones, candidates)]
    if not eligible:
        return None
    return min(eligible, key=lambda n: (counts[n], -placement.score(n, slot), n))


def seed(owners: Sequence[str], nodes: Sequence[str], replicas: int, zones: Mapping[str, str]) -> list[Config]:
    """Followers for a new cluster whose primaries are `owners`."""
    counts = seats([(o, ()) for o in owners], nodes)
    configs: list[Config] = []
    for slot, primary in enumerate(owners):
        taken = [primary]
        for _ in range(min(replicas, len(nodes)) - 1):
            chosen = _pick(slot, taken, nodes, counts, zones)
            assert chosen is not None
            taken.append(chosen)
            counts[chosen] += 1
        configs.append((primary, tuple(taken[1:])))
    return configs


def fail_over(
    configs: Mapping[int, Config], dead: set[str], copies: Mapping[tuple[int, str], Copy]
) -> dict[int, Config]:
    """New configurations for the slots `dead` nodes were members of (see the module's docstring).
    `copies[(slot, node)]` is how far each live follower's copy is; a slot with no live follower
    keeps its configuration (nothing can serve it until a dead node is back)."""
    changed: dict[int, Config] = {}
    for slot, (primary, followers) in configs.items():
        if primary not in dead and not dead & set(followers):
            continue
        live = [f for f in followers if f not in dead]
        if primary not in dead:
            changed[slot] = (primary, tuple(live))
            continue
        known = [f for f in live if (slot, f) in copies]
        if not known:
            continue  # no live follower: the slot waits for its primary
        best = max(copies[(slot, f)] for f in known)
        ahead = [f for f in known if copies[(slot, f)] == best]
        successor = min(ahead)  # the same choice in every process
        changed[slot] = (successor, tuple(f for f in ahead if f != successor))
    return changed


def silenced(
    configs: Mapping[int, Config], pairs: set[tuple[str, str]], copies: Mapping[tuple[int, str], Copy]
) -> dict[int, Config]:
    """New configurations after primaries reported followers silent ((p, f) in `pairs`: p has
    not heard from f for the bound, both still answer the controller). A slot whose primary
    hears none of its followers fails over to the follower holding the most (`copies`, as
    fail_over; the primary is the odd one out, and so the slot keeps R - 1 copies rather than
    one); a slot whose primary hears some of them loses the silent ones."""
    changed: dict[int, Config] = {}
    for slot, (primary, followers) in configs.items():
        quiet = [f for f in followers if (primary, f) in pairs]
        if not quiet:
            continue
        if len(quiet) < len(followers):
            changed[slot] = (primary, tuple(f for f in followers if f not in quiet))
            continue
        changed.update(fail_over({slot: (primary, followers)}, {primary}, copies))
    return changed


def repair(
    configs: Sequence[Config], live: Sequence[str], replicas: int, zones: Mapping[str, str], dead: set[str]
) -> list[Change]:
    """One Change per missing follower of every slot with fewer than R live members."""
    counts = seats(configs, live)
    added: dict[int, list[str]] = {}  # slot -> the nodes planned to take a copy
    want = min(replicas, len(live))
    for slot, config in enumerate(configs):
        taken = [m for m in members(config) if m not in dead]
        if config[0] in dead:
            continue  # no primary to copy from: fail_over first
        while len(taken) < want:
            chosen = _pick(slot, taken, live, counts, zones)
            if chosen is None:
                break
            added.setdefault(slot, []).append(chosen)
            taken.append(chosen)
            counts[chosen] += 1
    _rebalance(configs, added, live, counts, zones, dead)
    return [Change(slot, target, "") for slot, targets in added.items() for target in targets]


def _rebalance(
    configs: Sequence[Config],
    added: dict[int, list[str]],
    live: Sequence[str],
    counts: Counter[str],
    zones: Mapping[str, str],
    dead: set[str],
) -> None:
    """Move planned copies off the fullest nodes while that narrows the seats (in place).

    Greedy alone can leave a node three seats above another when the copies to place each
    have only a few eligible nodes (found by tests/test_replicas.py). From a fullest node, a
    breadth-first search over planned copies (of slots missing one) that could go elsewhere
    finds a chain of moves ending on a node at least two seats lower: each move keeps its
    slot's members distinct and zone-spread, the nodes along the chain keep their counts, the
    fullest loses one and the end gains one. Stops when no fullest node has such a chain (the
    sum of squared seats falls with every chain, so it ends)."""
    while live:
        top = max(counts[n] for n in live)
        chain: list[tuple[int, str, str]] | None = None
        for start in sorted(n for n in live if counts[n] == top):
            chain = _chain(configs, added, live, counts, zones, dead, start)
            if chain is not None:
                break
        if chain is None:
            return
        for slot, source, target in chain:
            targets = added[slot]
            targets[targets.index(source)] = target
        counts[chain[0][1]] -= 1
        counts[chain[-1][2]] += 1


def _chain(
    configs: Sequence[Config],
    added: Mapping[int, list[str]],
    live: Sequence[str],
    counts: Counter[str],
    zones: Mapping[str, str],
    dead: set[str],
    start: str,
) -> list[tuple[int, str, str]] | None:
    """Moves (slot, from, to) carrying one planned copy off `start`, ending on a node two seats
    below it, or None."""
    came: dict[str, tuple[int, str, str] | None] = {start: None}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for slot in sorted(added):
                if added[slot] != [node]:
                    continue  # only slots missing one copy move: a chain then changes each slot once
                taken = [m for m in members(configs[slot]) if m not in dead]
                for other in live:
                    if other in came or other in taken or not _zone_ok(other, taken, zones, live):
                        continue
                    came[other] = (slot, node, other)
                    if counts[other] <= counts[start] - 2:
                        moves: list[tuple[int, str, str]] = []
                        at = other
                        while (step := came[at]) is not None:
                            moves.append(step)
                            at = step[1]
                        return moves[::-1]
                    following.append(other)
        frontier = following
    return None


def drain(configs: Sequence[Config], gone: str, live: Sequence[str], zones: Mapping[str, str]) -> list[Change]:
    """A Change replacing `gone` in every slot it is a member of, onto the nodes with the fewest seats."""
    others = [n for n in live if n != gone]
    counts = seats(configs, others)
    placed: dict[int, list[str]] = {}
    for slot, config in enumerate(configs):
        if gone not in members(config):
            continue
        taken = [m for m in members(config) if m != gone]
        chosen = _pick(slot, taken, others, counts, zones)
        if chosen is None:
            raise ValueError(f"slot {slot} has nowhere to go: every other node is already a member")
        placed[slot] = [chosen]
        counts[chosen] += 1
    _rebalance(configs, placed, others, counts, zones, {gone})
    return [Change(slot, target, gone) for slot, [target] in placed.items()]


def add(configs: Sequence[Config], new: str, replicas: int, zones: Mapping[str, str]) -> list[Change]:
    """The new node's share: the primaries placement.add_node gives it, then follower seats
    from the fullest nodes (the slot whose members the new node joins best by score)."""
    owners = [primary for primary, _f in configs]
    after = placement.add_node(owners, new)
    nodes = sorted(set(owners) | {f for _p, fs in configs for f in fs} | {new})
    plan = [
        Change(slot, new, owners[slot])
        for slot in range(len(configs))
        if after[slot] != owners[slot]
        and _zone_ok(new, [m for m in members(configs[slot]) if m != owners[slot]], zones, nodes)
    ]  # a primary hand-off that would put two copies in one zone, with another zone free, is skipped
    if replicas <= 1:
        return plan
    counts = seats(configs, nodes)
    counts.update(Counter(new for _ in plan))
    for change in plan:
        counts[change.replaces] -= 1
    share = (len(configs) * min(replicas, len(nodes))) // len(nodes)
    busy = {change.slot for change in plan}
    candidates = {
        node: sorted(
            (slot for slot, (_p, fs) in enumerate(configs) if node in fs and slot not in busy),
            key=lambda s: (-placement.score(new, s), s),
        )
        for node in nodes
        if node != new
    }
    taken_from = Counter[str]()
    while counts[new] < share:
        fullest = max((n for n in nodes if n != new), key=lambda n: (counts[n], n))
        options = [
            s
            for s in candidates[fullest][taken_from[fullest] :]
            if s not in busy
            and new not in members(configs[s])
            and _zone_ok(new, [m for m in members(configs[s]) if m != fullest], zones, nodes)
        ]
        if not options or counts[fullest] - counts[new] <= 1:
            break
        slot = options[0]
        taken_from[fullest] = candidates[fullest].index(slot) + 1
        plan.append(Change(slot, new, fullest))
        busy.add(slot)
        counts[fullest] -= 1
        counts[new] += 1
    return plan


def apply(config: Config, change: Change) -> Config:
    """A slot's configuration once `change` committed: the target in the replaced member's place."""
    primary, followers = config
    if change.replaces == primary:
        return change.target, followers
    if change.replaces:
        return primary, tuple(change.target if f == change.replaces else f for f in followers)
    return primary, (*followers, change.target)
