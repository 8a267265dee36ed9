"""The gossip simulation (scheduler/devtools/gossip_sim.py): deterministic, counts and events only."""

import pytest

from mesh.advert_schedule import ScheduleConfig
from mesh.gossip import GossipTuning
from scheduler.devtools.gossip_sim import Calibration, GossipSim, SimConfig, run


def small(**kw) -> SimConfig:
    base = dict(nodes=30, warmup_s=20.0, duration_s=60.0, change_every_s=20.0, seed=3)
    return SimConfig(**{**base, **kw})


def test_the_simulated_degree_is_the_real_one():
    assert SimConfig().degree == GossipTuning().degree[0]


def test_every_change_reaches_every_member_and_nothing_expires_by_mistake():
    r = run(small())
    assert r["changes"] > 50 and r["changes_converged"] == r["changes"]
    assert r["false_expiries"] == 0 and r["deltas_without_base"] == 0
    assert r["published"]["delta"] > 0 and r["published"]["full"] > 0
    assert 0 < r["p50_s"] <= r["p99_s"]


def test_same_seed_same_result():
    a, b = run(small()), run(small())
    assert a["convergence_s"] == b["convergence_s"] and a["published"] == b["published"]


def test_lost_copies_are_repaired_by_the_next_full_refresh():
    r = run(small(calibration=Calibration(loss=0.3), tail_s=100.0))  # refreshes every 30 s here
    assert r["changes_converged"] == r["changes"]  # late, through a refresh, but every one of them
    lossless = run(small())
    assert r["p99_s"] > lossless["p99_s"]


def test_received_per_node_follows_the_budget_not_the_mesh_size():
    # flat meshes, refresh interval not yet at its cap: the rate a node receives stays flat as the view grows
    rates = [run(small(nodes=n, change_every_s=1e9))["msgs_per_s_per_node"] for n in (10, 40)]
    assert rates[1] < rates[0] * 1.5


def test_a_sharded_mesh_keeps_views_to_one_shard_and_spreads_summaries():
    sim = GossipSim(small(nodes=90, shards=3, summary_interval_s=10.0, duration_s=30.0))
    r = sim.run()
    assert r["shards"] == 3
    assert all(len(nd.view) == len(sim.topics[nd.shard].members) for nd in sim.nodes)
    assert r["published"]["summary"] > 0 and r["summary_age_p99_s"] > 0
    assert all(len(nd.world) == 3 for nd in sim.nodes)  # every node has every shard's summary
    assert r["changes_converged"] == r["changes"]


def test_the_sim_uses_the_real_schedule_config():
    cfg = small(schedule=ScheduleConfig(min_refresh_s=1.0, max_refresh_s=1.0))
    r = run(cfg)
    assert r["refresh_interval_s"] == pytest.approx(1.0)
