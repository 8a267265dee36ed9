"""mesh/shard.py: shard and group assignment, relays by standing, summaries and their merge (pure functions)."""

import math
from collections import Counter

from mesh import shard
from mesh.advert import Advert, DeviceAdvert
from mesh.membership import MembershipView


def _view(n: int) -> MembershipView:
    view = MembershipView("p000", ttl_s=60.0)
    for i in range(n):
        dev = DeviceAdvert("0:0", "gpu" if i % 2 else "cpu", "v", "d", 8, 8 << 30, True, True, 100.0 * i,
                           50.0, 2, i % 3, i % 4)
        view.apply(Advert(f"p{i:03d}", b"k" * 32, 1, 0.0, data_addr=f"h{i}:1", devices=(dev,)), 0.0)
    return view


def test_shards_are_one_below_ninety_nodes_then_about_thirty_nodes_each():
    assert shard.shard_count(45) == 1 and shard.shard_count(10_000) == 333
    assert shard.shard_topic(0, 1) == shard.TOPIC_PREFIX
    assert shard.shard_topic(3, 333) != shard.shard_topic(4, 333)


def test_shard_of_is_stable_and_spreads_peers_evenly():
    ids = [f"12D3KooW{i:06d}" for i in range(6000)]
    sizes = Counter(shard.shard_of(p, 200) for p in ids)
    assert [shard.shard_of(p, 200) for p in ids[:50]] == [shard.shard_of(p, 200) for p in ids[:50]]
    assert len(sizes) == 200 and max(sizes.values()) < 2 * 30 and min(sizes.values()) > 30 // 3


def test_groups_are_about_the_square_root_of_the_shards():
    assert shard.group_count(5) == 1 and shard.group_count(333) == round(math.sqrt(333))
    groups = Counter(shard.group_of(s, 18) for s in range(333))
    assert len(groups) == 18 and max(groups.values()) - min(groups.values()) <= 1
    assert shard.group_topic(0, 1) == shard.SUMMARY_TOPIC != shard.group_topic(0, 18)


def test_relays_are_the_best_standing_then_the_lowest_id():
    view = _view(10)
    assert shard.relays(view) == ["p000", "p001"]
    view.adjust_standing("p000", -0.5)
    assert shard.relays(view) == ["p001", "p002"]


def test_summary_counts_nodes_devices_slots_and_queue_per_kind():
    s = shard.summarize(_view(10), 4, "p001", 12.0)
    assert (s.shard, s.members) == (4, 10)
    gpu = s.kinds["gpu"]
    assert (gpu.nodes, gpu.devices) == (5, 5)
    assert gpu.free_slots == sum(i % 3 for i in range(1, 10, 2)) and gpu.queued == sum(i % 4 for i in range(1, 10, 2))
    assert gpu.best_mulmod_mops == 900.0


def test_merge_keeps_the_newer_summary_of_each_shard():
    view = _view(3)
    old, new, other = (shard.summarize(view, 1, "p000", 5.0), shard.summarize(view, 1, "p000", 9.0),
                       shard.summarize(view, 2, "p000", 1.0))
    world: dict[int, shard.ShardSummary] = {}
    assert shard.merge(world, (new, other)) == 2
    assert shard.merge(world, {1: old}) == 0 and world[1] is new
    assert shard.merge(world, (shard.summarize(view, 1, "p001", 10.0),)) == 1 and world[1].relay == "p001"
