"""The gossip simulation (scheduler/devtools/gossip_sim.py): deterministic, counts and events only."""

import json

import pytest

from mesh.advert_schedule import ScheduleConfig
from mesh.gossip import GossipTuning
from scheduler.devtools.gossip_sim import Calibration, GossipSim, SimConfig, flat_config, run


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


LARGE = SimConfig(nodes=1500, warmup_s=10.0, duration_s=30.0, seed=11)


@pytest.fixture(scope="module")
def large() -> tuple[GossipSim, dict]:
    sim = GossipSim(LARGE)
    return sim, sim.run()


def test_every_node_relays_included_receives_at_most_ten_per_second_at_scale(large):
    # 1,500 nodes: 50 shards of 30 in 7 summary groups; a count of messages over 30 simulated seconds
    sim, r = large
    assert r["shards"] == 50 and r["groups"] == 7
    relays = {rs[0] for rs in sim.relays.values()} | set(sim.group_relay.values())
    rates = [n / LARGE.duration_s for n in sim.received]
    assert max(rates) <= 10.0 and max(rates[i] for i in relays) <= 10.0
    assert r["msgs_per_s_relays_max"] == max(rates[i] for i in relays)
    assert r["changes_converged"] == r["changes"] and r["p99_s"] < 5.0
    # the relays carry summaries (their mean is above the others') and every node has every shard's summary
    others = [x for i, x in enumerate(rates) if i not in relays]
    assert r["msgs_per_s_relays_mean"] > sum(others) / len(others)
    assert all(len(nd.world) == 50 for nd in sim.nodes)
    assert r["published"]["batch"] > 0 and 0 < r["summary_age_p99_s"] < 5 * 60.0


def test_without_groups_the_busiest_relay_would_be_over_the_bound(large):
    # the same mesh with every shard relay on one summary topic (one group, as before the tree): the reason for it
    one = _single_group(GossipSim(LARGE)).run()
    assert one["msgs_per_s_relays_max"] > 10.0 >= large[1]["msgs_per_s_relays_max"]


def _single_group(sim: GossipSim) -> GossipSim:
    from scheduler.devtools.gossip_sim import _Topic

    relays = sorted({rs[0] for rs in sim.relays.values()})
    sim.groups, sim.group_relay = 1, {0: relays[0]}
    sim.group_topics = {0: _Topic(relays, sim.cfg.degree, sim.rng)}
    sim.top_topic = None
    return sim


def test_the_fit_recovers_the_costs_it_was_made_from():
    truth = Calibration(hop_s=0.03, cpu_per_msg_s=0.0015)
    real = {}
    for n in (5, 10, 20):
        sim = run(flat_config(n, truth))
        idle = 2.0 + n / 10  # messages/s; CPU = timers (0.5 %) + the per-message cost
        real[str(n)] = {"p50_s": sim["p50_s"], "misses": 0,
                        "msgs_per_s_per_node": idle, "idle_cpu_pct": (0.005 + idle * 0.0015) * 100,
                        "burst_msgs_per_s": 5 * idle, "burst_cpu_pct": (0.005 + 5 * idle * 0.0015) * 100}
    fit = Calibration.fit(real)
    assert fit.cpu_per_msg_s == pytest.approx(0.0015, rel=0.01)
    assert fit.hop_s == pytest.approx(0.03, rel=0.15)


def test_the_stored_calibration_is_what_the_bench_wrote(tmp_path):
    path = tmp_path / "gossip.json"
    path.write_text(json.dumps({"calibration": Calibration(hop_s=0.05, cpu_per_msg_s=0.001, source="x").as_dict()}))
    assert Calibration.stored(path) == Calibration(hop_s=0.05, cpu_per_msg_s=0.001, source="x")
    assert Calibration.stored(tmp_path / "missing.json") == Calibration()
