"""The compute runner on the local OpenCL device (PoCL in CI): build errors with their log, the program cache,
argument checks before any transfer, the time limit with quarantine, cancel, launch sequences, streamed inputs,
and the `compute.opencl` job kind through the executor."""

import hashlib

import numpy as np
import pytest
import trio
from prometheus_client import REGISTRY

from tests.opencl import requires_opencl
from worker.compute import metrics
from worker.compute.api import InOut, Local, Out, arun_local, local_runner, make_job
from worker.compute.errors import BuildError, TimeLimitExceeded
from worker.compute.runner import ComputeResult, ComputeRunner, add_quarantine_listener, quarantined_devices
from worker.compute.spec import SourceNotCached, SpecError

pytestmark = requires_opencl

SAXPY = """
__kernel void saxpy(const uint n, const float a, __global const float *x, __global float *y) {
    size_t i = get_global_id(0);
    if (i < n) y[i] = a * x[i] + y[i];
}
"""

# One work item spinning through `iters` rounds of xorshift: ~0.25 s per 10^8 rounds on a 2-core CI machine.
SPIN = """
__kernel void spin(__global ulong *out, const uint iters) {
    ulong x = get_global_id(0) + 88172645463325252UL;
    for (uint i = 0; i < iters; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; }
    out[get_global_id(0)] = x;
}
"""
SPIN_ITERS = 400_000_000  # about a second here; the limits below are 20x shorter


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def runner():
    return local_runner()


def saxpy_job(n=1000, a=2.0, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    job = make_job(SAXPY, "saxpy", [np.uint32(n), np.float32(a), x, InOut(y, "y")],
                   global_size=-(-n // 64) * 64, local_size=64)
    return job, np.float32(a) * x + y


async def run_saxpy_ok(runner, seed=0):
    job, want = saxpy_job(seed=seed)
    res = await arun_local(job, runner)
    np.testing.assert_allclose(res["y"], want, rtol=1e-6)
    return res


# --- builds and the program cache ----------------------------------------------------------------------


async def test_build_failure_returns_the_compiler_log(runner):
    bad = SAXPY.replace("a * x[i]", "a * x[i] + undefined_thing")
    job = make_job(bad, "saxpy", [np.uint32(4), np.float32(1), np.ones(4, np.float32), InOut(np.ones(4, np.float32))],
                   global_size=4, build_options="-DUNIQUE_1=1")
    failures = sample("gpumesh_compute_jobs_total", outcome="build_error")
    with pytest.raises(BuildError) as e:
        await arun_local(job, runner)
    err = e.value
    assert "undefined_thing" in err.log and "undeclared identifier" in err.log
    assert "undefined_thing" in str(err) and "-DUNIQUE_1=1" in str(err)  # the one-line reason carries the log
    assert "kcache" not in err.log and "/root" not in err.log and "program.cl" in err.log  # no worker paths
    assert err.to_dict()["log"] == err.log and err.source_sha256 == hashlib.sha256(bad.encode()).hexdigest()
    assert sample("gpumesh_compute_jobs_total", outcome="build_error") == failures + 1
    # resubmitted: answered from the cache of failures, not compiled again
    misses = runner.programs.stats.misses
    with pytest.raises(BuildError, match="undefined_thing"):
        await arun_local(job, runner)
    assert runner.programs.stats.misses == misses and runner.programs.stats.failure_hits >= 1


async def test_program_cache_hits_and_source_by_hash(runner):
    src = SAXPY + "\n// cache test\n"
    x = np.arange(64, dtype=np.float32)
    args = [np.uint32(64), np.float32(3), x, InOut(np.ones(64, np.float32), "y")]
    misses, hits = sample("gpumesh_compute_build_cache_misses_total"), sample("gpumesh_compute_build_cache_hits_total")
    first = await arun_local(make_job(src, "saxpy", args, global_size=64), runner)
    assert not first.cache_hit and first.build_s > 0
    second = await arun_local(make_job(src, "saxpy", args, global_size=64), runner)
    assert second.cache_hit and second.build_s == 0
    assert sample("gpumesh_compute_build_cache_misses_total") == misses + 1
    assert sample("gpumesh_compute_build_cache_hits_total") >= hits + 1
    # the source is now known here: the hash alone is enough
    by_hash = make_job(src, "saxpy", args, global_size=64, send_source=False)
    assert "source" not in by_hash.spec
    res = await arun_local(by_hash, runner)
    np.testing.assert_allclose(res["y"], 3 * x + 1)
    # different build options are a different program
    other = await arun_local(make_job(src, "saxpy", args, global_size=64, build_options="-cl-mad-enable"), runner)
    assert not other.cache_hit
    unknown = make_job(src + "// never sent", "saxpy", args, global_size=64, send_source=False)
    with pytest.raises(SourceNotCached, match="send `source`") as e:
        await arun_local(unknown, runner)
    assert e.value.field == "source_sha256"


async def test_program_cache_is_bounded():
    import pyopencl as cl

    ctx = local_runner().context
    small = ComputeRunner(ctx, ctx.devices[0], device_id="bounded", max_programs=2)
    for i in range(3):
        src = f"__kernel void k(__global int *o) {{ o[0] = {i}; }}"
        res = await small.run(make_job(src, "k", [Out(1, np.int32)], global_size=1).spec)
        assert res[0][0] == i
    assert len(small.programs) == 2 and small.programs.stats.evictions == 1
    assert isinstance(small.queue, cl.CommandQueue)


# --- argument checks: before any transfer ---------------------------------------------------------------


@pytest.mark.parametrize("args,field,match", [
    ([np.uint32(4), np.float32(1), np.ones(4, np.float32)], "args", "takes 4 arguments, the spec gives 3"),
    ([np.uint32(4), np.float64(1), np.ones(4, np.float32), InOut(np.ones(4, np.float32))], "args[1].dtype",
     "float64 \\(OpenCL double\\) value, but kernel 'saxpy' parameter 1 'float a' is declared 'float': pass "
     "np.float32\\(...\\) \\(dtype float32\\)"),
    ([np.uint16(4), np.float32(1), np.ones(4, np.float32), InOut(np.ones(4, np.float32))], "args[0].dtype",
     "uint16 \\(OpenCL ushort\\) value, but .* declared 'uint': pass np.uint32"),
    ([np.uint32(4), np.ones(4, np.float32), np.ones(4, np.float32), InOut(np.ones(4, np.float32))], "args[1]",
     "a buffer, but kernel 'saxpy' parameter 1 .* is not a __global or __constant pointer"),
    ([np.uint32(4), np.float32(1), np.float32(1), InOut(np.ones(4, np.float32))], "args[2]", "is a pointer"),
    ([np.uint32(4), np.float32(1), Out(4, np.float32), InOut(np.ones(4, np.float32))], "args[2]",
     "out buffer is bound only to read-only \\(const or __constant\\) parameters: no launch writes it"),
    ([np.uint32(4), np.float32(1), Local(16), InOut(np.ones(4, np.float32))], "args[2]",
     "a local arg, but .* is not a __local pointer"),
    ([np.uint32(4), np.float32(1), np.ones(3, np.uint8), InOut(np.ones(4, np.float32))], "args[2]",
     "3 bytes is not a whole number of 'float' elements"),
])
async def test_args_checked_against_the_kernel_before_any_transfer(runner, args, field, match):
    job = make_job(SAXPY, "saxpy", args, global_size=4)
    fetched = []

    async def fetch(spec):
        fetched.append(spec)
        return {}

    bytes_in = sample("gpumesh_compute_bytes_in_total")
    with pytest.raises(SpecError, match=match) as e:
        await runner.run(job.spec, fetch)
    assert e.value.field == field
    assert fetched == [] and sample("gpumesh_compute_bytes_in_total") == bytes_in


async def test_oversized_buffers_refused_before_any_transfer(runner):
    dev_mem = runner.limits.global_mem_bytes
    huge = {"kind": "out", "dtype": "float32", "count": dev_mem // 4 + 1}
    spec = make_job(SAXPY, "saxpy", [np.uint32(1), np.float32(1), np.ones(4, np.float32),
                                     InOut(np.ones(4, np.float32))], global_size=1).spec
    spec["args"][3] = huge
    fetched = []

    async def fetch(s):
        fetched.append(s)
        return {}

    bytes_in = sample("gpumesh_compute_bytes_in_total")
    with pytest.raises(SpecError, match="largest allocation|larger than the device's memory|this worker's limit"):
        await runner.run(spec, fetch)
    # a streamed input of a size the job's memory limit cannot hold: refused without reading it
    big = np.zeros(1 << 16, np.float32)
    job = make_job(SAXPY, "saxpy", [np.uint32(4), np.float32(1), big, InOut(big)], global_size=4,
                   inline_limit=0, memory_limit_bytes=1 << 20)
    capped = ComputeRunner(runner.context, runner.device, device_id="capped", max_job_memory_bytes=1 << 18)
    with pytest.raises(SpecError, match="this worker's limit of 262144 bytes") as e:
        await capped.run(job.spec, fetch)
    assert e.value.field == "memory_limit_bytes"
    assert fetched == [] and sample("gpumesh_compute_bytes_in_total") == bytes_in


async def test_streamed_blobs_are_checked(runner):
    x = np.arange(256, dtype=np.float32)
    job = make_job(SAXPY, "saxpy", [np.uint32(256), np.float32(2), x, InOut(np.zeros(256, np.float32), "y")],
                   global_size=256, inline_limit=0)
    assert len(job.blobs) == 2
    res = await runner.run(job.spec, job.blobs)
    np.testing.assert_array_equal(res["y"], 2 * x)
    sha = next(iter(job.blobs))
    with pytest.raises(SpecError, match="hashes to"):
        await runner.run(job.spec, {**job.blobs, sha: bytes(len(job.blobs[sha]))[:-1] + b"\x01"})
    with pytest.raises(SpecError, match="missing from the input"):
        await runner.run(job.spec, {})


# --- time limit, quarantine, cancel --------------------------------------------------------------------


def spin_job(time_limit_s, iters=SPIN_ITERS):
    return make_job(SPIN, "spin", [Out(1, np.uint64), np.uint32(iters)], global_size=1, time_limit_s=time_limit_s)


async def test_kernel_past_its_limit_fails_and_the_next_job_runs(runner):
    await run_saxpy_ok(runner)  # warm: the saxpy program is built
    await runner.prepare(spin_job(0.05).spec)  # build outside the timed part
    quarantines = runner.stats.quarantines
    timeouts = sample("gpumesh_compute_jobs_total", outcome="time_limit")
    seen = []
    remove = add_quarantine_listener(lambda dev, info: seen.append((dev, info is not None)))
    with pytest.raises(TimeLimitExceeded, match=r"exceeded time limit of 0\.05 s \(kernel 'spin', launch 1 of 1, "
                                                r"still running\)") as e:
        await runner.run(spin_job(0.05).spec)
    assert e.value.quarantined and e.value.reason == "time_limit"
    assert runner.stats.quarantines == quarantines + 1
    assert sample("gpumesh_compute_jobs_total", outcome="time_limit") == timeouts + 1
    # The worker is healthy: the next job waits for the runaway kernel to end, then runs correctly.
    await run_saxpy_ok(runner, seed=1)
    assert not runner.quarantined and runner.device_id not in quarantined_devices()
    remove()
    assert seen == [(runner.device_id, True), (runner.device_id, False)]  # quarantined, then freed
    # and a spin that fits its limit completes with the right value
    res = await runner.run(spin_job(60, iters=1000).spec)
    x = 88172645463325252
    for _ in range(1000):
        x ^= (x << 13) & (2**64 - 1)
        x ^= x >> 7
        x ^= (x << 17) & (2**64 - 1)
    assert int(res[0][0]) == x


async def test_limit_reached_between_launches(runner):
    """Many short launches: the runner stops enqueueing at the deadline instead of running them all."""
    job = make_job(SPIN, "spin", [Out(1, np.uint64), np.uint32(200_000)], time_limit_s=0.05,
                   launches=[{"global_size": [1], "repeat": 100_000}])
    with pytest.raises(TimeLimitExceeded, match=r"exceeded time limit of 0\.05 s") as e:
        await runner.run(job.spec)
    assert "of 100000" in str(e.value)
    await runner.wait_ready()
    await run_saxpy_ok(runner, seed=2)


async def test_cancel_quarantines_until_the_kernel_ends(runner):
    spec = spin_job(60).spec
    prep = await runner.prepare(spec)
    quarantines = runner.stats.quarantines
    with trio.move_on_after(0.05) as scope:
        await runner.execute(prep, job_id="to-cancel")
    assert scope.cancelled_caught
    assert runner.stats.quarantines == quarantines + 1
    await run_saxpy_ok(runner, seed=3)
    assert not runner.quarantined


# --- launch sequences, local memory ----------------------------------------------------------------------

TWO_KERNELS = """
__kernel void scale(__global float *x, const float a) { x[get_global_id(0)] *= a; }
__kernel void add(__global float *x, __global const float *y) { x[get_global_id(0)] += y[get_global_id(0)]; }
"""


async def test_launch_sequence_over_shared_buffers(runner):
    n = 512
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    job = make_job(TWO_KERNELS, "scale", [InOut(x, "x"), y, np.float32(0.5)], global_size=n, repeat=2,
                   launches=[{"kernel": "scale", "args": [0, 2], "repeat": 3},
                             {"kernel": "add", "args": [0, 1]},
                             {"kernel": "scale", "args": [0, np.float32(-2.0)]}])
    res = await arun_local(job, runner)
    want = x.copy()
    for _ in range(2):
        for _ in range(3):
            want *= np.float32(0.5)
        want += y
        want *= np.float32(-2.0)
    np.testing.assert_allclose(res["x"], want, rtol=1e-6)
    assert res.launches == 2 * 5


REDUCE = """
__kernel void group_sums(__global const float *x, __global float *sums, __local float *scratch) {
    size_t lid = get_local_id(0), n = get_local_size(0);
    scratch[lid] = x[get_global_id(0)];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (size_t s = n / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] += scratch[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) sums[get_group_id(0)] = scratch[0];
}
"""


async def test_local_memory_arg_reduction(runner):
    x = np.random.default_rng(9).standard_normal(64 * 32).astype(np.float32)
    job = make_job(REDUCE, "group_sums", [x, Out(32, np.float32, "sums"), Local(64 * 4)], global_size=64 * 32,
                   local_size=64)
    res = await arun_local(job, runner)
    np.testing.assert_allclose(res["sums"], x.reshape(32, 64).sum(axis=1, dtype=np.float64), rtol=1e-5, atol=1e-5)


async def test_output_buffers_start_zeroed(runner):
    """An out buffer never shows another job's memory: untouched elements read back as zero."""
    src = "__kernel void some(__global uint *o) { if (get_global_id(0) % 2) o[get_global_id(0)] = 7; }"
    res = await arun_local(make_job(src, "some", [Out(1024, np.uint32)], global_size=1024), runner)
    assert (res[0][0::2] == 0).all() and (res[0][1::2] == 7).all()


def test_result_wire_roundtrip():
    res = ComputeResult([], source_sha256="ab")
    from worker.compute.runner import OutputBuffer

    res.outputs = [OutputBuffer(3, "y", "float32", np.arange(5, dtype=np.float32)),
                   OutputBuffer(4, "", "uint8", np.arange(3, dtype=np.uint8))]
    body, out = res.to_wire()
    back = ComputeResult.from_wire(body, out)
    assert back.source_sha256 == "ab" and [o.index for o in back.outputs] == [3, 4]
    np.testing.assert_array_equal(back["y"], res["y"])
    np.testing.assert_array_equal(back[4], res[4])
    with pytest.raises(ValueError, match="does not fit"):
        ComputeResult.from_wire(body, out[:-1])


# --- the job kind ----------------------------------------------------------------------------------------


async def test_compute_kind_through_the_executor():
    from worker import kinds
    from worker.compute import kind as compute_kind
    from worker.devices import discover
    from worker.executor import Executor, JobRequest

    registry = kinds.KindRegistry()  # not the process-wide one: other tests list its kinds
    compute_kind.register_kind(registry)
    k = registry.get("compute.opencl")
    assert "compute.opencl" not in kinds.names()
    devices = discover().devices
    ex = Executor(devices, registry=registry)
    x = np.arange(300_000, dtype=np.float32)  # streamed: 1.2 MB
    job = make_job(SAXPY, "saxpy", [np.uint32(x.size), np.float32(2), x, InOut(np.ones_like(x), "y")],
                   global_size=x.size)
    assert job.input and k.requirements(job.spec).opencl and k.requirements(job.spec).min_memory_bytes == 2 * x.nbytes
    assert 0 < k.cost_s(job.spec, len(job.input), devices[0]) <= job.spec["time_limit_s"]
    with pytest.raises(SpecError, match="streamed input must be"):
        k.validate(job.spec, len(job.input) - 1)
    with pytest.raises(NotImplementedError, match="no CPU reference path"):
        k.reference(job.spec, job.input)
    async with trio.open_nursery() as nursery:
        await nursery.start(ex.run)
        h = ex.submit(JobRequest("cj-1", "compute.opencl", job.spec, input=job.input))
        out = await h.wait()
        assert out.ok, out.error
        res = job.decode(out.result.body, out.result.output)
        np.testing.assert_allclose(res["y"], 2 * x + 1)
        bad = make_job(SAXPY.replace("y[i] =", "y[i] = nope +"), "saxpy",
                       [np.uint32(4), np.float32(1), np.ones(4, np.float32), InOut(np.ones(4, np.float32))],
                       global_size=4)
        h2 = ex.submit(JobRequest("cj-2", "compute.opencl", bad.spec))
        out2 = await h2.wait()
        assert out2.state == "failed" and "BuildError" in out2.error and "nope" in out2.error
        nursery.cancel_scope.cancel()
    assert compute_kind.COMPUTE_OPENCL is k
    assert metrics.JOBS.labels("ok")._value.get() >= 1


async def test_kind_checks_streamed_input_against_the_spec():
    from worker.compute.kind import COMPUTE_OPENCL
    from worker.devices import discover
    from worker.kinds import InputReader, RunContext
    from worker.opencl import open_device

    dctx = await open_device(discover().devices[0])
    x = np.arange(1024, dtype=np.float32)
    job = make_job(SAXPY, "saxpy", [np.uint32(1024), np.float32(3), x, InOut(np.ones_like(x), "y")],
                   global_size=1024, inline_limit=0)

    def ctx(data, job_id):
        return RunContext(job_id, job.spec, InputReader(data, len(data), chunk_size=1000), cl=dctx)

    res = await COMPUTE_OPENCL.run(ctx(job.input, "k-ok"))
    np.testing.assert_allclose(job.decode(res.body, res.output)["y"], 3 * x + 1)
    corrupt = bytearray(job.input)
    corrupt[5] ^= 1
    with pytest.raises(SpecError, match="blob 0 of the input hashes to"):
        await COMPUTE_OPENCL.run(ctx(bytes(corrupt), "k-bad"))
    with pytest.raises(SpecError, match="ended inside blob 1"):
        await COMPUTE_OPENCL.run(RunContext("k-short", job.spec, InputReader(job.input[:-4], len(job.input) - 4),
                                            cl=dctx))
