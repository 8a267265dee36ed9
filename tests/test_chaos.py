"""The short chaos run (the long one is `make chaos`): node processes killed -9, restarted and paused, and their
data planes delayed, stalled, corrupted and reset through a proxy, under a steady load of echo, checksum, proof
and render jobs; every accepted job ends exactly once with a correct result and the views heal.

The run is sized by events, not by time: it goes on until one whole round of faults (kill, stop and two
data-plane faults, in a shuffled order) was injected and 20 jobs were submitted, so a slow machine runs longer
instead of testing less."""

from scheduler.devtools.chaos import run


def test_short_chaos_run_keeps_every_invariant(tmp_path):
    rep = run(duration=10.0, nodes=4, seed=7, rate=4.0, root=tmp_path, min_faults=4, min_jobs=20, cap_s=240.0)
    print(rep.table())
    assert rep.violations == []
    assert sum(rep.faults.values()) >= 4, rep.faults
    assert rep.faults["kill -9 + restart"] >= 1 and rep.faults["SIGSTOP/SIGCONT"] >= 1, rep.faults
    assert sum(v for k, v in rep.faults.items() if k.startswith("data plane")) >= 2, rep.faults
    assert rep.jobs >= 20 and rep.proxied_mb > 0
    assert rep.outcomes["done"] >= rep.jobs * 0.9, rep.outcomes
