"""Metrics counted in runner processes reach the node's registry (worker/runner/metric_relay.py): compute jobs
run in real runners (real PoCL) count their outcomes, kernel seconds, bytes and builds on the node; a malformed
batch from a runner is dropped whole and counted."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import trio
from prometheus_client import REGISTRY

from tests.opencl import requires_opencl
from tests.test_runner import device, executor, run_job
from tests.test_runner_handoff import saxpy
from worker.runner import RunnerPool, RunnerSettings, metric_relay


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@requires_opencl
async def test_compute_metrics_counted_in_runners_reach_the_node():
    before = {k: value(k, **lb) for k, lb in [("gpumesh_compute_jobs_total", {"outcome": "ok"}),
                                              ("gpumesh_compute_kernel_seconds_count", {}),
                                              ("gpumesh_compute_bytes_in_total", {}),
                                              ("gpumesh_compute_build_cache_misses_total", {}),
                                              ("gpumesh_compute_build_cache_hits_total", {})]}
    pool = RunnerPool(RunnerSettings(memory_bytes=1 << 30))
    ex = executor(pool, device())
    async with trio.open_nursery() as nursery:
        await nursery.start(ex.run)
        for i, a in enumerate((2.0, 3.0, 4.0)):
            x, job = saxpy(a)
            out = await run_job(ex, f"m-{i}", "compute.opencl", msgpack.unpackb(msgpack.packb(job.spec)), job.input)
            assert out.ok, out.error
            # counted by the time the job's outcome is out (the reply's metrics are counted as its runner goes back)
            assert value("gpumesh_compute_jobs_total", outcome="ok") == before["gpumesh_compute_jobs_total"] + i + 1
        nursery.cancel_scope.cancel()
    assert value("gpumesh_compute_jobs_total", outcome="ok") == before["gpumesh_compute_jobs_total"] + 3
    assert value("gpumesh_compute_kernel_seconds_count") == before["gpumesh_compute_kernel_seconds_count"] + 3
    assert value("gpumesh_compute_bytes_in_total") >= before["gpumesh_compute_bytes_in_total"] + 3 * x.nbytes
    built = (value("gpumesh_compute_build_cache_misses_total") - before["gpumesh_compute_build_cache_misses_total"],
             value("gpumesh_compute_build_cache_hits_total") - before["gpumesh_compute_build_cache_hits_total"])
    assert built == (1, 2), built  # one runner: built once, then found


def test_a_recorder_sums_increments_and_keeps_observations():
    rec = metric_relay.Recorder()
    for _ in range(3):
        rec.add((0, "JOBS"), ("ok",), "i", 1)
    rec.add((0, "KERNEL_SECONDS"), (), "o", 0.25)
    batch = rec.drain()
    assert sorted(map(str, batch)) == sorted(map(str, [[0, "JOBS", ["ok"], "i", 3.0], [0, "KERNEL_SECONDS", [], "o", 0.25]]))
    assert rec.drain() == []
    ok = value("gpumesh_compute_jobs_total", outcome="ok")
    assert metric_relay.apply(batch) and value("gpumesh_compute_jobs_total", outcome="ok") == ok + 3


@pytest.mark.parametrize("bad", [
    [[0, "NOPE", [], "i", 1]],                       # no such metric
    [[0, "JOBS", [], "i", 1]],                       # the wrong number of labels
    [[0, "JOBS", ["x" * 100], "i", 1]],              # a label value too long
    [[0, "JOBS", ["ok"], "i", -1]],                  # a counter going down
    [[0, "JOBS", ["ok"], "i", math.nan]],            # not finite
    [[0, "JOBS", ["ok"], "o", 1]],                   # observe on a counter
    [[0, "KERNEL_SECONDS", [], "i", 1]],             # inc on a histogram
    [[0, "QUARANTINED", [], "i", 1]],                # a gauge: a runner's state is not relayed
    [[9, "JOBS", ["ok"], "i", 1]],                   # no such module
    [[0, "__class__", [], "i", 1]],                  # not a metric
    [[0, "JOBS", ["ok"], "i", True]],                # a bool is not an amount
    [[0, "JOBS", ["ok"], "i", 1]] * (metric_relay.MAX_ENTRIES + 1),  # too many
    [[0, "JOBS", ["ok"], "i", 1], "garbage"],       # one bad entry spoils the batch
    {"JOBS": 1},
])
def test_a_malformed_batch_is_dropped_whole_and_counted(bad):
    ok, dropped = value("gpumesh_compute_jobs_total", outcome="ok"), value("gpumesh_runner_metrics_dropped_total")
    assert metric_relay.apply(bad) is False
    assert value("gpumesh_compute_jobs_total", outcome="ok") == ok
    assert value("gpumesh_runner_metrics_dropped_total") == dropped + 1


def test_recorders_stand_in_for_the_metrics_of_a_module_the_runner_imported(monkeypatch):
    import sys
    import types

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    reg = CollectorRegistry()
    mod = types.ModuleType("fake_metrics")
    mod.C = Counter("fake_c", "c", ["k"], registry=reg)
    mod.H = Histogram("fake_h", "h", registry=reg)
    mod.G = Gauge("fake_g", "g", registry=reg)
    monkeypatch.setitem(sys.modules, "fake_metrics", mod)
    monkeypatch.setattr(metric_relay, "RELAYED", ("fake_metrics",))
    monkeypatch.setattr(metric_relay, "RECORDER", None)
    monkeypatch.setattr(metric_relay, "_swapped", set())
    metric_relay.record()
    mod.C.labels("a").inc(2)
    mod.H.observe(0.5)
    mod.G.set(7)
    mod.G.inc()
    assert sorted(map(str, metric_relay.drain())) == sorted(map(str, [[0, "C", ["a"], "i", 2.0], [0, "H", [], "o", 0.5]]))
    assert np.isclose(reg.get_sample_value("fake_c_total", {"k": "a"}) or 0.0, 0.0)  # recorded, not counted here


def test_runners_cannot_grow_the_nodes_metrics_without_bound(monkeypatch):
    monkeypatch.setattr(metric_relay, "_series", {})
    monkeypatch.setattr(metric_relay, "MAX_SERIES", 3)
    assert metric_relay.apply([[0, "JOBS", ["ok"], "i", 1], [0, "LAUNCHES", [], "i", 1]])
    assert metric_relay.apply([[0, "JOBS", ["made-up-1"], "i", 1]])  # the third series: still taken
    dropped = value("gpumesh_runner_metrics_dropped_total")
    assert metric_relay.apply([[0, "JOBS", ["made-up-2"], "i", 1]]) is False  # a fourth: refused, counted
    assert value("gpumesh_runner_metrics_dropped_total") == dropped + 1
    assert metric_relay.apply([[0, "JOBS", ["ok"], "i", 1]])  # known series still count
