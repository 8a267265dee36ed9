"""The many-node simulation: the real cores under churn and lossy gossip, checked end to end."""

import pytest

from scheduler.devtools import sim_node
from scheduler.devtools.sim import Sim
from scheduler.devtools.sim_report import SimConfig


@pytest.fixture(scope="module")
def default_run():
    return Sim(SimConfig(nodes=200, jobs=5000, seed=1, kill_fraction=0.10, gossip_loss=0.2, coordinator_restarts=2)).run()


def test_200_nodes_5000_jobs_with_churn_every_job_ends_exactly_once(default_run):
    r = default_run
    print("\n" + r.summary())
    assert r.violations() == []
    assert r.killed == 20  # 10% of the workers died mid-run...
    assert r.retries > 0 and r.offers_to_dead > 0  # ...holding jobs, and some offers went to them
    assert sum(r.outcomes.values()) == r.jobs == 5000
    assert not r.missing and not r.multiple and not r.double_delivered and not r.wrong_results
    assert r.outcomes["done"] >= 0.98 * r.jobs
    # the only failures allowed are realtime deadlines (a job caught on a dying worker can miss it)
    assert set(r.failed_reasons) <= {"deadline missed", "deadline cannot be met"}
    assert r.outcomes["cancelled"] > 0  # some clients cancelled, each got exactly that
    assert r.restarts == 2 and r.restored_finished > 0 and not r.lost_by_restart


def test_nothing_placed_on_expired_peers_and_load_spread_bounded(default_run):
    r = default_run
    assert r.offers_after_expiry == 0 and r.offers_to_dead_after_expiry == 0
    assert r.gossip_lost > 0.15 * (r.gossip_lost + r.gossip_delivered)  # the gossip really was lossy
    assert r.max_queue <= r.cfg.max_queue
    assert r.mean_queue < 1.0
    assert r.jobs_per_slot_max <= 6 * r.jobs_per_slot_mean


def test_coordinators_restarted_from_their_journal_resume_and_still_serve():
    r = Sim(SimConfig(nodes=60, jobs=1500, gateways=10, coordinator_restarts=3, arrival_s=6.0, seed=3)).run()
    assert r.violations() == []
    assert r.restarts == 3 and r.restored_unfinished > 0 and r.restored_finished > 0
    assert sum(r.outcomes.values()) == 1500 and not r.lost_by_restart


def test_deterministic_for_a_seed():
    cfg = dict(nodes=40, jobs=400, seed=7, gateways=8, arrival_s=3.0)
    a, b = Sim(SimConfig(**cfg)).run(), Sim(SimConfig(**cfg)).run()
    strip = lambda r: r.summary().rsplit("simulated / wall time", 1)[0]  # noqa: E731
    assert strip(a) == strip(b) and a.events == b.events
    c = Sim(SimConfig(**{**cfg, "seed": 8})).run()
    assert c.events != a.events


def test_quiet_mesh_no_faults_no_retries():
    r = Sim(SimConfig(nodes=30, jobs=300, gateways=6, kill_fraction=0.0, gossip_loss=0.0, arrival_s=3.0,
                      cancel_fraction=0.0, realtime_fraction=0.0, coordinator_restarts=0)).run()
    assert r.violations() == [] and r.outcomes == {"done": 300}
    assert r.retries == 0 and r.duplicates_dropped == 0


def test_the_checks_catch_a_worker_returning_wrong_results(monkeypatch):
    """Break the simulated worker for a few jobs: the report must flag it (the checks can fail)."""
    real = sim_node.expected_body
    calls = {"n": 0}

    def sometimes_wrong(job):
        calls["n"] += 1
        body = real(job)
        return {**body, "digest": "0" * 32} if calls["n"] % 50 == 0 else body

    monkeypatch.setattr(sim_node, "expected_body", sometimes_wrong)
    r = Sim(SimConfig(nodes=20, jobs=200, gateways=4, kill_fraction=0.0, arrival_s=2.0)).run()
    assert r.wrong_results and any("wrong results" in v for v in r.violations())
