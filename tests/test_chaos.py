"""The short chaos run (the long one is `make chaos`): node processes killed -9, restarted and paused, and their
data planes delayed, stalled, corrupted and reset through a proxy, under a steady load of echo, checksum, proof
and render jobs and poison compute jobs (out-of-bounds write, while(1), image parameters, huge allocations);
every accepted job ends exactly once with a correct result, every poison job fails as it should (a crash or limit
outcome within 2 runners, or a refusal at submit), no node dies from a job, and the views heal.

The run is sized by events, not by time: it goes on until one whole round of faults (kill, stop and two
data-plane faults, in a shuffled order) was injected and 20 jobs were submitted, so a slow machine runs longer
instead of testing less. Every 6th job is poison, so 20 jobs hold at least the crash, the loop and the image."""

from scheduler.devtools.chaos import run


def test_short_chaos_run_keeps_every_invariant(tmp_path):
    rep = run(duration=10.0, nodes=4, seed=7, rate=4.0, root=tmp_path, min_faults=4, min_jobs=20, cap_s=240.0,
              poison=1 / 6)
    print(rep.table())
    assert rep.violations == []
    assert sum(rep.faults.values()) >= 4, rep.faults
    assert rep.faults["kill -9 + restart"] >= 1 and rep.faults["SIGSTOP/SIGCONT"] >= 1, rep.faults
    assert sum(v for k, v in rep.faults.items() if k.startswith("data plane")) >= 2, rep.faults
    assert rep.jobs >= 20 and rep.proxied_mb > 0
    poison = sum(rep.poison.values())
    assert poison >= 3, rep.poison  # every 6th job, kinds in turn: the crash, the loop and the image at least
    # on a loaded machine more attempts outlive their leases and some jobs use up their attempts: a failed job
    # with its reason is a correct outcome under faults, a lost or wrong one is not (the violations above)
    assert rep.outcomes["done"] >= (rep.jobs - poison) * 2 / 3, rep.outcomes
