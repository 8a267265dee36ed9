"""The runner hand-off (issue 17, cost): what a job keeps in its runner between calls and what crosses into the
daemon, with real runner processes and real PoCL.

Checked: two compute jobs with one kernel build it once in their runner (the runner's own program cache,
counted); outputs are read from the device straight into the memory they are handed (the runner's arena) and
match numpy; a spec parsed twice (the daemon's check, then its runner's) scans its source once; a runner whose
reply names memory outside its arena, or a compute result of the wrong size, is refused, killed and replaced,
and the job ends `crashed` with the reason.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio

from scheduler.client.compute_sdk import InOut, Out, make_job
from tests.opencl import requires_opencl
from tests.test_runner import SAXPY, device, executor, run_job
from worker.runner import RunnerCrashed, RunnerPool, RunnerSettings

pytestmark = requires_opencl

ROOT = Path(__file__).resolve().parent.parent


def saxpy(a: float, n: int = 1000):
    x = np.arange(n, dtype=np.float32)
    return x, make_job(SAXPY, "saxpy", [np.uint32(n), np.float32(a), x, InOut(np.ones_like(x), "y")], global_size=n)


async def test_two_jobs_with_one_kernel_build_it_once_in_their_runner():
    dev = device()
    pool = RunnerPool(RunnerSettings(memory_bytes=1 << 30))
    ex = executor(pool, dev)
    async with trio.open_nursery() as nursery:
        await nursery.start(ex.run)
        bodies = []
        for i, a in enumerate((2.0, 3.0)):  # two different jobs (another scalar), one kernel
            x, job = saxpy(a)
            spec = msgpack.unpackb(msgpack.packb(job.spec))  # a fresh map, as from the wire
            out = await run_job(ex, f"s-{i}", "compute.opencl", spec, job.input)
            assert out.ok, out.error
            np.testing.assert_allclose(job.decode(out.result.body, out.result.output)["y"], a * x + 1)
            bodies.append(out.result.body)
        assert [b["cache_hit"] for b in bodies] == [False, True]
        lease = pool.lease(dev)
        try:
            st = (await lease.call("stats", {})).body
        finally:
            lease.release()
        assert st["programs"]["builds"] == 1 and st["programs"]["hits"] == 1, st
        nursery.cancel_scope.cancel()


async def test_outputs_are_read_back_straight_into_the_memory_handed_over():
    from worker.compute.runner import runner_for
    from worker.opencl import device_context

    runner = runner_for(device_context(device()))
    x, job = saxpy(2.0, 256)
    view = memoryview(bytearray(4 + 256 * 4))[4:]  # at an offset, as in an arena
    res = await runner.run(job.spec, job.blobs, out_buffer=lambda s: view[:s.bytes_out])
    np.testing.assert_allclose(np.frombuffer(view[:256 * 4], np.float32), 2 * x + 1)
    assert res.outputs[0].array.base is not None  # a view of the region, not a copy
    body, data = res.to_wire()
    assert data == bytes(view[:256 * 4]) and body == res.wire_body()
    with pytest.raises(ValueError, match="out_buffer"):
        await runner.run(job.spec, job.blobs, out_buffer=lambda s: view[:8])


def test_a_spec_parsed_twice_scans_its_source_once():
    from worker.compute import source
    from worker.compute.spec import parse_spec

    src = SAXPY + f"\n// {os.getpid()} {id(object())}\n"  # a source no other test scanned
    before = source.strip_comments.cache_info().misses
    spec = make_job(src, "saxpy", [np.uint32(1), np.float32(1), Out(1, np.float32), Out(1, np.float32)],
                    global_size=1).spec  # the client's own check scans it (once)
    a = parse_spec(msgpack.unpackb(msgpack.packb(spec)))
    b = parse_spec(msgpack.unpackb(msgpack.packb(spec)))
    assert source.strip_comments.cache_info().misses == before + 1
    assert a == b and a.requirements() == b.requirements()


@pytest.fixture
def hostile_python(tmp_path):
    shim = tmp_path / "python"
    shim.write_text(f"#!/bin/sh\ncd {ROOT}\nexec {sys.executable} -m tests.hostile_runner \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return str(shim)


async def test_a_reply_pointing_outside_the_arena_is_refused_and_the_runner_replaced(hostile_python):
    dev = device()
    pool = RunnerPool(RunnerSettings(memory_bytes=1 << 30, python=hostile_python))
    ex = executor(pool, dev)
    async with trio.open_nursery() as nursery:
        await nursery.start(ex.run)
        for past_end in (True, False):
            lease = pool.lease(dev)
            try:
                first = (await lease.call("ping", {})).body["pid"]
                with pytest.raises(RunnerCrashed, match=r"protocol violation \(output region .* outside the"):
                    await lease.call("evil.outside", {"past_end": past_end})
            finally:
                lease.release()
            lease = pool.lease(dev)
            try:
                assert (await lease.call("ping", {})).body["pid"] != first  # killed and replaced
            finally:
                lease.release()

        x, job = saxpy(2.0)  # the hostile runner answers a compute job with one byte
        out = await run_job(ex, "lie-1", "compute.opencl", job.spec, job.input)
        assert out.state == "crashed", out
        assert "protocol violation" in out.error and "the spec returns 4000" in out.error, out.error
        nursery.cancel_scope.cancel()


async def test_render_checkpoints_are_skipped_only_within_the_promised_stretch():
    """A checkpoint is a round trip to the daemon: the runner makes one between bands unless the stretch since
    the last, plus a band like the last, stays within `band_s` (what the executor was promised)."""
    from worker.render.camera import Tile, orbit
    from worker.render.kind import SceneCache, decode_output, render_tile
    from worker.render.samples import example
    from worker.render.scene import content_hash

    dev = device()
    pool = RunnerPool(RunnerSettings(memory_bytes=1 << 30))
    pool.set_devices([dev])
    scene = example("spheres", 64, 48)
    entry = SceneCache().put(scene, content_hash(scene))
    pose = orbit((0.0, 0.3, 0.0), 2.6, 1.0, 3)[1]
    tile = Tile(0, 0, 64, 48)
    calls = []

    async def checkpoint():
        calls.append(1)

    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        lease = pool.lease(dev)
        try:
            outs = []
            for band_s, want in ((0.0, 3), (1e-9, 3), (3600.0, 0)):  # every band / none fits / all fit
                calls.clear()
                outs.append(await render_tile(lease, checkpoint, entry, pose, tile, 4, band_s))
                assert len(calls) == want, (band_s, calls)
        finally:
            lease.release()
        assert outs[0] == outs[1] == outs[2]  # the same frame however often it stopped
        decode_output(tile, outs[0])
        nursery.cancel_scope.cancel()
