"""The short chaos run (the long one is `make chaos`): node processes killed -9, restarted and paused under
a steady job load; every accepted job ends exactly once with a correct result and the views heal."""

from scheduler.chaos import run


def test_short_chaos_run_keeps_every_invariant(tmp_path):
    rep = run(duration=15.0, nodes=4, seed=7, rate=4.0, root=tmp_path)
    print(rep.table())
    assert rep.violations == []
    assert sum(rep.faults.values()) >= 2
    assert rep.jobs >= 20
    assert rep.outcomes["done"] >= rep.jobs * 0.9, rep.outcomes
