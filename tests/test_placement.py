"""Placement, the shard map and its metastore: balance, minimal movement, determinism."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.local import EtcdProcess
from proto import cluster_pb2
from router import placement
from router.etcd import Etcd
from router.metastore import EtcdMetastore, LocalMetastore, Metastore
from router.shardmap import ShardMap
from router.slots import routing_key, slot_of
from serving.tls import etcd_credentials
from tests.conftest import tls

S = 4096


def nodes(n: int) -> list[str]:
    return [f"10.1.0.{i}:7001" for i in range(1, n + 1)]  # names only; nothing connects


@pytest.mark.parametrize("n", range(3, 17))
def test_placement_is_balanced_within_ten_percent(n: int) -> None:
    counts = Counter(placement.place(S, nodes(n)))
    assert set(counts) == set(nodes(n))
    assert max(counts.values()) / (S / n) <= 1.1
    assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("n", range(1, 16))
def test_adding_a_node_moves_about_s_over_n_plus_one_slots_all_onto_it(n: int) -> None:
    before = placement.place(S, nodes(n))
    new = f"10.2.0.{n}:7001"
    after = placement.add_node(before, new)
    moved = placement.moves(before, after)
    assert len(moved) == S // (n + 1)
    assert all(target == new for _, _, target in moved)
    assert max(Counter(after).values()) - min(Counter(after).values()) <= 1


@pytest.mark.parametrize("n", range(2, 16))
def test_removing_a_node_moves_only_its_slots_and_stays_balanced(n: int) -> None:
    before = placement.place(S, nodes(n))
    gone = nodes(n)[n // 2]
    after = placement.remove_node(before, gone)
    moved = placement.moves(before, after)
    assert {source for _, source, _ in moved} == {gone}
    assert len(moved) == before.count(gone)
    counts = Counter(after)
    assert gone not in counts and max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("done", [0.0, 0.3, 0.9, 1.0])
def test_an_interrupted_add_node_resumes_to_the_same_balance_moving_only_onto_the_new_node(done: float) -> None:
    before = placement.place(S, nodes(4))
    new = "10.2.0.9:7001"
    planned = placement.moves(before, placement.add_node(before, new))
    halfway = list(before)
    for slot, _source, target in planned[: int(len(planned) * done)]:
        halfway[slot] = target
    after = placement.add_node(halfway, new)
    rest = placement.moves(halfway, after)
    assert all(target == new for _, _, target in rest)
    assert len(rest) == len(planned) - int(len(planned) * done)
    counts = Counter(after)
    assert counts[new] == S // 5 and max(counts.values()) - min(counts.values()) <= 1
    # A drain that was interrupted after its last slot moved has nothing left to move.
    drained = placement.remove_node(after, new)
    assert placement.remove_node(drained, new) == drained


def test_rebalance_evens_out_counts_with_the_fewest_moves() -> None:
    balanced = placement.place(S, nodes(3))
    assert placement.rebalance(balanced, nodes(3)) == balanced  # nothing to do
    # A fourth node that joined without its slots: exactly its share moves onto it.
    fourth = "10.2.0.4:7001"
    after = placement.rebalance(balanced, [*nodes(3), fourth])
    moved = placement.moves(balanced, after)
    assert len(moved) == S // 4 and all(target == fourth for _, _, target in moved)
    counts = Counter(after)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_the_same_inputs_place_the_same_way_in_another_process() -> None:
    here = placement.place(S, nodes(5))
    script = "import sys; from router import placement; print(','.join(placement.place(4096, sys.argv[1:])))"
    there = subprocess.run(
        [sys.executable, "-c", script, *nodes(5)], capture_output=True, text=True, check=True, env=None
    ).stdout.strip()
    assert there.split(",") == here
    assert slot_of("{c42}:deposit", S) == slot_of("{c42}:loan", S) == slot_of("c42", S)
    assert routing_key("a{}b") == "a{}b" and routing_key("x{y}z{w}") == "y"


def test_bad_placements_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        placement.place(S, [])
    with pytest.raises(ValueError, match="distinct"):
        placement.place(S, ["a:1", "a:1"])
    with pytest.raises(ValueError, match="last node"):
        placement.remove_node(["a:1"] * 8, "a:1")


@pytest.fixture(params=["local", "etcd"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Metastore]]:
    """Both metastores behind one interface: a local directory, and a throwaway etcd."""
    if request.param == "local":
        yield lambda: LocalMetastore(str(tmp_path / "meta"))
        return
    tls_dir = tls().directory
    etcd = EtcdProcess(str(tmp_path / "etcd-data"), str(tmp_path / "etcd.log"), tls_dir).start()
    try:
        yield lambda: EtcdMetastore(Etcd([etcd.endpoint], etcd_credentials(tls_dir)), "/test")
    finally:
        etcd.stop()


def seeded(owners: list[str]) -> ShardMap:
    return ShardMap.initial(owners, {}, "cluster-1")


def test_the_metastore_swaps_only_from_the_expected_version_and_survives_restarts(
    store_factory: Callable[[], Metastore],
) -> None:
    async def scenario() -> None:
        store = store_factory()
        assert await store.load() is None
        first = seeded(placement.place(S, nodes(3)))
        assert await store.compare_and_swap(0, first)
        assert not await store.compare_and_swap(0, first)  # someone else already created it
        second = first.reassign({0: nodes(3)[1], 1: nodes(3)[2]})
        assert second.version == 2 and second.epochs[0] == first.epochs[0] + (first.owners[0] != nodes(3)[1])
        assert await store.compare_and_swap(1, second)
        assert not await store.compare_and_swap(1, second.reassign({2: nodes(3)[0]}))
        await store.close()
        reopened = store_factory()
        assert await reopened.load() == second
        await reopened.close()

    asyncio.run(scenario())


def test_concurrent_swaps_from_one_version_have_exactly_one_winner(store_factory: Callable[[], Metastore]) -> None:
    async def scenario() -> None:
        stores = [store_factory() for _ in range(4)]  # four controllers' connections
        base = seeded(placement.place(64, nodes(2)))
        assert await stores[0].compare_and_swap(0, base)
        for store in stores[1:]:
            assert await store.load() == base
        candidates = [base.reassign({slot: nodes(2)[0]}).with_term(1) for slot in range(16)]
        wins = await asyncio.gather(*(stores[i % len(stores)].compare_and_swap(1, m) for i, m in enumerate(candidates)))
        assert sorted(wins) == [False] * 15 + [True]
        assert await stores[0].load() in candidates
        for store in stores:
            await store.close()

    asyncio.run(scenario())


def test_a_watcher_sees_every_newer_map_a_swap_stores(store_factory: Callable[[], Metastore]) -> None:
    async def scenario() -> None:
        writer, reader = store_factory(), store_factory()
        current = seeded(placement.place(64, nodes(2)))
        assert await writer.compare_and_swap(0, current)
        seen: list[int] = []

        async def watch() -> None:
            async for shard_map in reader.watch(0):
                seen.append(shard_map.version)
                if shard_map.version == 4:
                    return

        watcher = asyncio.ensure_future(watch())
        for _ in range(3):
            await asyncio.sleep(0.1)
            following = current.with_term(current.term + 1)
            assert await writer.compare_and_swap(current.version, following)
            current = following
        await asyncio.wait_for(watcher, 10)
        assert seen[-1] == 4 and seen == sorted(seen)
        await writer.close()
        await reader.close()

    asyncio.run(scenario())


def test_a_shard_map_from_another_process_with_no_slots_or_an_unknown_node_state_is_refused() -> None:
    """A map arrives from etcd or a router's WatchShardMap: input, checked. No slots would divide
    every routed key by zero; a state this version does not know would fail its naming later."""
    good = ShardMap.initial(placement.place(S, nodes(3)), {}, "cluster-1").to_proto()
    assert ShardMap.from_proto(good).slots_total == S
    empty = cluster_pb2.ShardMap()
    empty.CopyFrom(good)
    del empty.slot_owner[:], empty.slot_epoch[:]
    empty.slots_total = 0
    with pytest.raises(ValueError, match="1 to 65535 slots, not 0"):
        ShardMap.from_proto(empty)
    unknown = cluster_pb2.ShardMap()
    unknown.CopyFrom(good)
    unknown.nodes[0].state = 99  # type: ignore[assignment]  # a newer version's state, say
    with pytest.raises(ValueError, match="known state"):
        ShardMap.from_proto(unknown)


def test_a_replicated_shard_map_is_read_back_as_written_and_a_bad_configuration_is_named_by_slot() -> None:
    members = nodes(3)
    owners = tuple(placement.place(S, members))
    followers = tuple(tuple(n for n in members if n != owner) for owner in owners)
    written = ShardMap(1, owners, (1,) * S, dict.fromkeys(members, 1), followers=followers, replicas=3)
    assert ShardMap.from_proto(written.to_proto()) == written
    index = {address: i for i, address in enumerate(sorted(members))}
    twice = written.to_proto()
    twice.slot_followers[7].nodes[0] = index[owners[7]]  # the primary as its own follower
    with pytest.raises(ValueError, match="slot 7: a node twice in its configuration"):
        ShardMap.from_proto(twice)
    past = written.to_proto()
    past.slot_followers[9].nodes[1] = 3
    with pytest.raises(ValueError, match="a follower index past the node list"):
        ShardMap.from_proto(past)
    owner_past = written.to_proto()
    owner_past.slot_owner[2] = 5
    with pytest.raises(ValueError, match="an owner index past the node list"):
        ShardMap.from_proto(owner_past)
