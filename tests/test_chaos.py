"""The short chaos run (the long one is `make chaos`): node processes killed -9, restarted and paused, and their
data planes delayed, stalled, corrupted and reset through a proxy, under a steady load of echo, checksum, proof
and render jobs and poison compute jobs (out-of-bounds write, image parameters, while(1), huge allocations);
every accepted job ends exactly once with a correct result, every poison job fails as it should (a crash or limit
outcome within 2 runners, or a refusal at submit), no node dies from a job, and the views heal."""

from scheduler.devtools.chaos import run


def test_short_chaos_run_keeps_every_invariant(tmp_path):
    rep = run(duration=15.0, nodes=4, seed=7, rate=4.0, root=tmp_path, poison=1 / 6)
    print(rep.table())
    assert rep.violations == []
    # faults come in shuffled rounds of kill, stop and two data-plane faults: any 3 include the data plane
    assert sum(rep.faults.values()) >= 3, rep.faults
    assert any(k.startswith("data plane") for k in rep.faults), rep.faults
    assert rep.jobs >= 20 and rep.proxied_mb > 0
    poison = sum(rep.poison.values())
    assert poison >= 3, rep.poison  # every 6th job, kinds in turn: the crash, the loop and the image at least
    assert rep.outcomes["done"] >= (rep.jobs - poison) * 0.9, rep.outcomes
