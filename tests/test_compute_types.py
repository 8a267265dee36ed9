"""OpenCL C types, pipelines and pre-transfer checks, on the local OpenCL device (PoCL in CI), each result
against numpy: every scalar type by value, vectors by value and in buffers, structs from structured dtypes
(OpenCL alignment checked), complex buffers, images/samplers refused before any transfer, reqd_work_group_size
and non-uniform work-groups, OpenCL errors by name, buffer roles and flags over a launch sequence."""

import numpy as np
import pyopencl as cl
import pyopencl.cltypes as cltypes
import pytest
from prometheus_client import REGISTRY

from tests.opencl import requires_opencl
from worker.compute.api import (
    InOut,
    Local,
    Out,
    Pipeline,
    Scalar,
    Scratch,
    arun_local,
    local_runner,
    make_job,
)
from worker.compute.cltypes import from_numpy, parse_dtype
from worker.compute.errors import KernelFailed, describe_cl_error
from worker.compute.limits import DeviceLimits, validate
from worker.compute.spec import SpecError, parse_spec

pytestmark = requires_opencl


@pytest.fixture(scope="module")
def runner():
    return local_runner()


def bytes_in() -> float:
    return REGISTRY.get_sample_value("gpumesh_compute_bytes_in_total") or 0.0


async def refused_before_transfer(runner, job, match, field=None):
    """The job fails with SpecError before its input is read and before any byte reaches the device."""
    fetched = []

    async def fetch(spec):
        fetched.append(spec)
        return job.blobs

    before = bytes_in()
    with pytest.raises(SpecError, match=match) as e:
        await runner.run(job.spec, fetch)
    assert fetched == [] and bytes_in() == before
    if field is not None:
        assert e.value.field == field
    return e.value


# --- every scalar type by value ------------------------------------------------------------------------------

ALL_SCALARS = """
__kernel void scalars(char c, uchar uc, short s, ushort us, int i, uint ui, long l, ulong ul, float f, double d,
                      __global long *ints, __global double *floats) {
    ints[0] = c; ints[1] = uc; ints[2] = s; ints[3] = us; ints[4] = i; ints[5] = ui; ints[6] = l;
    ints[7] = (long)(ul >> 1);
    floats[0] = f; floats[1] = d;
}
"""


async def test_every_scalar_type_by_value(runner):
    vals = [np.int8(-100), np.uint8(200), np.int16(-30000), np.uint16(60000), np.int32(-2_000_000_000),
            np.uint32(4_000_000_000), np.int64(-(1 << 62)), np.uint64((1 << 64) - 2), np.float32(1.5),
            np.float64(np.pi)]
    job = make_job(ALL_SCALARS, "scalars", [*vals, Out(8, np.int64, "ints"), Out(2, np.float64, "floats")],
                   global_size=1)
    res = await arun_local(job, runner)
    want = [int(v) for v in vals[:7]] + [int(vals[7]) >> 1]
    assert res["ints"].tolist() == want
    assert res["floats"].tolist() == [1.5, np.pi]


HALF = """
__kernel void halves(__global const half *h, __global float *out, __global half *back) {
    size_t i = get_global_id(0);
    float v = vload_half(i, h);
    out[i] = v * 2.0f;
    vstore_half(v + 1.0f, i, back);
}
"""


async def test_half_buffers_through_vload_half(runner):
    h = np.array([0.5, -2.25, 1024.0, 3.140625], dtype=np.float16)
    res = await arun_local(make_job(HALF, "halves", [h, Out(4, np.float32, "out"), Out(4, np.float16, "back")],
                                    global_size=4), runner)
    np.testing.assert_array_equal(res["out"], h.astype(np.float32) * 2)
    assert res["back"].dtype == np.float16
    np.testing.assert_array_equal(res["back"], (h.astype(np.float32) + 1).astype(np.float16))


async def test_half_by_value_needs_fp16(runner):
    src = "__kernel void k(half h, __global float *o) { o[0] = h; }"
    job = make_job(src, "k", [np.float16(1.5), Out(1, np.float32)], global_size=1)
    if not runner.limits.fp16:
        await refused_before_transfer(runner, job, "needs cl_khr_fp16, which this device lacks")


# --- vectors ---------------------------------------------------------------------------------------------------

VECTORS = """
__kernel void vec(float4 v, int2 n, uchar16 b, double3 d, __global const float4 *xs, __global float4 *ys,
                  __global float *extra) {
    size_t i = get_global_id(0);
    ys[i] = xs[i] * v + (float4)(n.x, n.y, 0.0f, 0.0f);
    if (i == 0) {
        extra[0] = b.sF; extra[1] = (float)d.z; extra[2] = b.s0;
    }
}
"""


async def test_vector_types_by_value_and_in_buffers(runner):
    xs = np.arange(16, dtype=np.float32).view(cltypes.float4)
    v = cltypes.make_float4(1.0, -1.0, 0.5, 2.0)
    n = cltypes.make_int2(3, -4)
    b = np.arange(16, dtype=np.uint8).view(cltypes.uchar16)[0]
    d = cltypes.make_double3(0.0, 0.0, 6.5)
    job = make_job(VECTORS, "vec", [v, n, b, d, xs, Out.like(xs, "ys"), Out(3, np.float32, "extra")], global_size=4)
    args = job.spec["args"]
    assert args[0]["dtype"] == "float32x4" and args[0]["value"] == v.tobytes()
    assert args[3]["dtype"] == "float64x3"
    res = await arun_local(job, runner)
    x = xs.view(np.float32).reshape(4, 4)
    want = x * np.array([1.0, -1.0, 0.5, 2.0], np.float32) + np.array([3, -4, 0, 0], np.float32)
    assert res["ys"].dtype == cltypes.float4
    np.testing.assert_array_equal(res["ys"].view(np.float32).reshape(4, 4), want)
    assert res["extra"].tolist() == [15.0, 6.5, 0.0]


async def test_wrong_vector_type_names_the_dtype_to_use(runner):
    job = make_job(VECTORS, "vec", [cltypes.make_float2(1, 2), cltypes.make_int2(0, 0),
                                    np.zeros(16, np.uint8).view(cltypes.uchar16)[0], cltypes.make_double3(0, 0, 0),
                                    np.zeros(4, cltypes.float4), Out(4, cltypes.float4), Out(3, np.float32)],
                   global_size=4)
    await refused_before_transfer(runner, job, "float32x2 .*declared 'float4': pass "
                                               "pyopencl.cltypes.make_float4\\(...\\) \\(dtype float32x4\\)",
                                  field="args[0].dtype")


# --- structs ---------------------------------------------------------------------------------------------------

PARTICLES = """
typedef struct { float4 pos; float4 vel; float mass; int id; } particle;
typedef struct { float dt; float drag; int pad0; int pad1; float4 gravity; } params;
__kernel void advance(__global particle *ps, const params p, __global float *energy) {
    size_t i = get_global_id(0);
    particle q = ps[i];
    q.vel = q.vel * (1.0f - p.drag) + p.gravity * p.dt;
    q.pos = q.pos + q.vel * p.dt;
    q.id = q.id * 10;
    ps[i] = q;
    energy[i] = 0.5f * q.mass * dot(q.vel, q.vel);
}
"""
PARTICLE = np.dtype({"names": ["pos", "vel", "mass", "id"], "formats": [cltypes.float4, cltypes.float4, np.float32,
                                                                        np.int32],
                     "offsets": [0, 16, 32, 36], "itemsize": 48})
PARAMS = np.dtype({"names": ["dt", "drag", "pad0", "pad1", "gravity"],
                   "formats": [np.float32, np.float32, np.int32, np.int32, cltypes.float4],
                   "offsets": [0, 4, 8, 12, 16], "itemsize": 32})


async def test_struct_buffers_and_struct_by_value(runner):
    rng = np.random.default_rng(3)
    n = 32
    ps = np.zeros(n, PARTICLE)
    ps["pos"] = rng.standard_normal((n, 4)).astype(np.float32).view(cltypes.float4).ravel()
    ps["vel"] = rng.standard_normal((n, 4)).astype(np.float32).view(cltypes.float4).ravel()
    ps["mass"] = rng.uniform(1, 2, n)
    ps["id"] = np.arange(n)
    p = np.zeros((), PARAMS)
    p["dt"], p["drag"] = 0.01, 0.1
    p["gravity"] = np.array([0, -9.81, 0, 0], np.float32).view(cltypes.float4)[0]
    job = make_job(PARTICLES, "advance", [InOut(ps, "ps"), p, Out(n, np.float32, "energy")], global_size=n)
    assert job.spec["args"][0]["dtype"]["itemsize"] == 48
    res = await arun_local(job, runner)
    f = lambda a, k: np.ascontiguousarray(a[k]).view(np.float32).reshape(n, 4)  # noqa: E731
    vel = f(ps, "vel") * np.float32(0.9) + np.array([0, -9.81, 0, 0], np.float32) * np.float32(0.01)
    pos = f(ps, "pos") + vel * np.float32(0.01)
    out = res["ps"]
    assert out.dtype == PARTICLE
    np.testing.assert_allclose(f(out, "vel"), vel, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f(out, "pos"), pos, rtol=1e-6, atol=1e-6)
    assert out["id"].tolist() == [10 * i for i in range(n)]
    np.testing.assert_allclose(res["energy"], 0.5 * ps["mass"] * (vel.astype(np.float64) ** 2).sum(1), rtol=1e-5)


def test_struct_layout_checked_against_opencl_alignment():
    packed = np.dtype([("mass", np.float32), ("pos", cltypes.float4)])  # numpy packs: pos at 4, OpenCL at 16
    with pytest.raises(SpecError, match="'pos' .* at offset 4, but OpenCL aligns it to 16 bytes"):
        from_numpy(packed)
    short = np.dtype({"names": ["a", "b"], "formats": [np.float64, np.float32], "offsets": [0, 8], "itemsize": 12})
    with pytest.raises(SpecError, match="itemsize 12 is not a multiple of its alignment 8.*sizeof is 16"):
        from_numpy(short)
    t = from_numpy(PARTICLE)
    assert parse_dtype(t.wire(), "d") == t and t.dtype == PARTICLE and t.align == 16
    with pytest.raises(SpecError, match="overlap"):
        parse_dtype({"struct": [["a", "float32x4", 0], ["b", "float32", 8]], "itemsize": 16}, "d")


# --- complex ---------------------------------------------------------------------------------------------------

COMPLEX = """
__kernel void cmul(__global const float2 *a, __global const float2 *b, __global float2 *c, const float2 scale) {
    size_t i = get_global_id(0);
    float2 x = a[i], y = b[i];
    c[i] = (float2)(x.x * y.x - x.y * y.y, x.x * y.y + x.y * y.x) * scale.x;
}
"""


async def test_complex_buffers(runner):
    rng = np.random.default_rng(5)
    a = (rng.standard_normal(64) + 1j * rng.standard_normal(64)).astype(np.complex64)
    b = (rng.standard_normal(64) + 1j * rng.standard_normal(64)).astype(np.complex64)
    res = await arun_local(make_job(COMPLEX, "cmul", [a, b, Out(64, np.complex64, "c"), np.complex64(2 + 0j)],
                                    global_size=64), runner)
    assert res["c"].dtype == np.complex64
    np.testing.assert_allclose(res["c"], a * b * 2, rtol=1e-5, atol=1e-6)


# --- images, samplers, pipes: refused before any transfer ---------------------------------------------------------

IMAGE = """
__kernel void blur(read_only image2d_t src, sampler_t smp, __global float4 *out, const int w) {
    int x = get_global_id(0), y = get_global_id(1);
    out[y * w + x] = read_imagef(src, smp, (int2)(x, y));
}
"""


def test_image_parameters_refused_on_the_client_naming_the_parameter():
    with pytest.raises(SpecError, match="kernel 'blur' parameter 0 'read_only image2d_t src' is an image.*"
                                        "__global buffer") as e:
        make_job(IMAGE, "blur", [np.zeros(16, np.uint8), np.uint32(0), Out(16, cltypes.float4), np.int32(4)],
                 global_size=[4, 4])
    assert e.value.field == "args[0]"


async def test_image_parameters_refused_by_the_runner_before_any_transfer(runner):
    # a spec whose source the client scan cannot read (a macro hides the image type): the runner, after the
    # build and before reading any input, finds the image in the kernel's argument info
    src = "#define IMG image2d_t\n#define SMP sampler_t\n" + IMAGE.replace("read_only image2d_t", "read_only IMG"
                                                                           ).replace("sampler_t smp", "SMP smp")
    job = make_job(src, "blur", [np.zeros(1 << 21, np.uint8), np.uint32(0), Out(16, cltypes.float4),
                                 np.int32(4)], global_size=[4, 4])
    assert job.input  # 2 MiB: a streamed input that must never be read
    await refused_before_transfer(runner, job, "parameter 0 'image2d_t src' is an image: .*__global buffer",
                                  field="args[0]")


def test_bool_and_size_t_parameters_refused():
    with pytest.raises(SpecError, match="bool, which OpenCL does not allow|OpenCL does not allow bool"):
        make_job("__kernel void k(bool b, __global int *o) { o[0] = b; }", "k", [np.uint8(1), Out(1, np.int32)],
                 global_size=1)


# --- reqd_work_group_size, non-uniform work-groups -------------------------------------------------------------

REQD = """
#ifndef WG
#define WG 8
#endif
__kernel __attribute__((reqd_work_group_size(WG, 1, 1))) void fill(__global int *o) {
    o[get_global_id(0)] = get_local_size(0);
}
"""


def test_reqd_work_group_size_checked_on_the_client():
    with pytest.raises(SpecError, match="reqd_work_group_size\\(WG, 1, 1\\) = \\[8, 1, 1\\]: give local_size \\[8\\]"):
        make_job(REQD, "fill", [Out(32, np.int32)], global_size=32)
    with pytest.raises(SpecError, match="\\[16\\] differs from kernel 'fill'.*\\[4, 1, 1\\]"):
        make_job(REQD, "fill", [Out(32, np.int32)], global_size=32, local_size=16, build_options="-DWG=4")
    job = make_job(REQD, "fill", [Out(32, np.int32)], global_size=32, local_size=16, build_options="-DWG=16")
    with pytest.raises(SpecError, match="work-group of 16 work items exceeds the device's maximum of 8"):
        validate(job.spec, {"max_work_group_size": 8, "kind": "gpu"})  # an advert's figures


async def test_reqd_work_group_size_checked_by_the_runner(runner):
    # hidden from the scan (the size comes from a macro function): the built kernel's COMPILE_WORK_GROUP_SIZE
    src = REQD.replace("reqd_work_group_size(WG, 1, 1)", "reqd_work_group_size(SZ(4), 1, 1)").replace(
        "#ifndef WG", "#define SZ(x) (2 * (x))\n#ifndef WG")
    await refused_before_transfer(runner, make_job(src, "fill", [Out(32, np.int32)], global_size=32, local_size=4),
                                  "differs from kernel 'fill''s reqd_work_group_size \\[8, 1, 1\\]")
    res = await arun_local(make_job(src, "fill", [Out(32, np.int32)], global_size=32, local_size=8), runner)
    assert res.arrays[0].tolist() == [8] * 32


async def test_non_uniform_work_groups_follow_the_device(runner):
    src = "__kernel void k(__global int *o, const uint n) { if (get_global_id(0) < n) o[get_global_id(0)] = 1; }"
    job = make_job(src, "k", [Out(10, np.int32), np.uint32(10)], global_size=10, local_size=4)
    assert parse_spec(job.spec).requirements().non_uniform
    assert validate(job.spec, DeviceLimits(opencl_version="2.1", non_uniform_work_groups=True))
    if not runner.limits.non_uniform_work_groups:  # PoCL 3.0 CPU: OpenCL 3.0 without the optional feature
        e = await refused_before_transfer(runner, job, "non-uniform.*does not support")
        assert "OpenCL 3.0" in str(e)
    else:
        res = await arun_local(job, runner)
        assert res.arrays[0].tolist() == [1] * 10


# --- OpenCL errors by name -------------------------------------------------------------------------------------

def test_opencl_errors_by_name():
    ctx = cl.Context([cl.get_platforms()[0].get_devices()[0]])
    q = cl.CommandQueue(ctx)
    prg = cl.Program(ctx, REQD).build()
    k = cl.Kernel(prg, "fill")
    k.set_arg(0, cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 128))
    with pytest.raises(cl.Error) as e:
        cl.enqueue_nd_range_kernel(q, k, (32,), (4,))
    text = describe_cl_error(e.value)
    assert text.startswith("CL_INVALID_WORK_GROUP_SIZE (-54) in clEnqueueNDRangeKernel")
    assert "_ErrorRecord" not in text


async def test_launch_failure_names_the_error_and_kernel(runner, monkeypatch):
    # a failure only the runtime sees at enqueue (validation passed): the enqueue gets a local size of 3
    job = make_job("__kernel void one(__global int *o) { o[get_global_id(0)] = 1; }", "one", [Out(16, np.int32)],
                   global_size=16, local_size=4)
    prep = await runner.prepare(job.spec)
    orig = runner._cl.enqueue_nd_range_kernel

    def failing(queue, kernel, g, lsz, *a, **kw):
        return orig(queue, kernel, g, (3,), *a, **kw)  # 3 does not divide 16: CL_INVALID_WORK_GROUP_SIZE

    monkeypatch.setattr(runner._cl, "enqueue_nd_range_kernel", failing)
    with pytest.raises(KernelFailed, match="kernel 'one'.*CL_INVALID_WORK_GROUP_SIZE \\(-54\\)") as e:
        await runner.execute(prep)
    assert "_ErrorRecord" not in str(e.value)


# --- pipelines: roles, flags, per-launch read-only checks ---------------------------------------------------------

PIPE = """
__kernel void produce(__global float *tmp, const float k) { tmp[get_global_id(0)] = k * get_global_id(0); }
__kernel void consume(__global const float *tmp, __global const float *x, __global float *y) {
    size_t i = get_global_id(0); y[i] = tmp[i] + x[i];
}
"""


async def test_pipeline_const_read_of_a_buffer_an_earlier_launch_wrote(runner):
    n = 64
    x = np.arange(n, dtype=np.float32)
    p = Pipeline(PIPE)
    xs = p.input("x", x)
    tmp = p.scratch("tmp", n, np.float32)
    y = p.output("y", n, np.float32)
    p.launch("produce", n, None, tmp, np.float32(3))
    p.launch("consume", n, None, tmp, xs, y)
    job = p.job()
    s = parse_spec(job.spec)
    assert s.bytes_in == x.nbytes and s.bytes_out == 4 * n  # the scratch buffer moves nowhere
    prep = await runner.prepare(job.spec)
    mf = cl.mem_flags
    flags = {s.args[i].name: plan.flags for i, plan in prep.plans.items()}
    assert flags["x"] & mf.READ_ONLY and flags["tmp"] & mf.READ_WRITE and flags["y"] & mf.READ_WRITE
    assert not flags["y"] & mf.WRITE_ONLY  # a later launch may read an out buffer
    if runner.limits.opencl_version >= "1.2":
        assert flags["tmp"] & mf.HOST_NO_ACCESS and flags["x"] & mf.HOST_WRITE_ONLY
    res = await runner.execute(prep)
    assert [o.name for o in res.outputs] == ["y"] and res.bytes_out == 4 * n and res.launches == 2
    np.testing.assert_array_equal(res["y"], 3 * np.arange(n, dtype=np.float32) + x)


async def test_pipeline_refuses_a_scratch_buffer_nothing_writes(runner):
    p = Pipeline(PIPE)
    tmp = p.scratch("tmp", 8, np.float32)
    xs = p.input("x", np.ones(8, np.float32))
    y = p.output("y", 8, np.float32)
    p.launch("consume", 8, None, tmp, xs, y)
    await refused_before_transfer(runner, p.job(), "scratch buffer 'tmp' is bound only to read-only")


async def test_pipeline_warns_when_a_launch_reads_zeros(runner):
    p = Pipeline(PIPE)
    tmp = p.scratch("tmp", 8, np.float32)
    xs = p.input("x", np.ones(8, np.float32))
    y = p.output("y", 8, np.float32)
    p.launch("consume", 8, None, tmp, xs, y)
    p.launch("produce", 8, None, tmp, np.float32(1))
    res = await arun_local(p.job(), runner)
    assert any("reads this scratch buffer before any launch writes it" in w for w in res.warnings)
    np.testing.assert_array_equal(res["y"], np.ones(8, np.float32))


def test_launch_args_by_name_and_scratch_in_make_job():
    job = make_job(PIPE, "produce", [Scratch(8, np.float32, "tmp"), np.float32(2), np.ones(8, np.float32),
                                     Out(8, np.float32, "y")],
                   launches=[{"kernel": "produce", "global_size": 8, "args": ["tmp", 1]},
                             {"kernel": "consume", "global_size": 8, "args": ["tmp", 2, "y"]}])
    s = parse_spec(job.spec)
    assert s.launches[1].args == (0, 2, 3) and s.args[0].kind == "scratch"
    with pytest.raises(SpecError, match="no arg named 'nope'"):
        make_job(PIPE, "produce", [Scratch(8, np.float32, "tmp"), np.float32(2)],
                 launches=[{"global_size": 8, "args": ["nope", 1]}])
    with pytest.raises(SpecError, match="also the name of args\\[0\\]"):
        make_job(PIPE, "produce", [Scratch(8, np.float32, "tmp"), Out(8, np.float32, "tmp")], global_size=8)


def test_scalar_helper_takes_wire_names_and_numpy_dtypes():
    a = make_job(ALL_SCALARS.replace("char c,", "ushort c,"), "scalars",
                 [Scalar("ushort", 7), Scalar(np.uint8, 1), Scalar("int16", 1), Scalar("uint16", 1),
                  Scalar("int32", 1), Scalar("uint32", 1), Scalar("int64", 1), Scalar("uint64", 1),
                  Scalar("float32", 1), Scalar("float64", 1), Out(8, np.int64), Out(2, np.float64),
                  Local(4)][:12], global_size=1)
    assert a.spec["args"][0]["dtype"] == "uint16" and a.spec["args"][1]["dtype"] == "uint8"


# --- what pyopencl lets through, and pyopencl's call shape ------------------------------------------------------

SIGNED = "__kernel void k(const uint n, __global uint *o) { o[get_global_id(0)] = n; }"


async def test_signedness_of_the_same_size_passes_when_the_value_reads_the_same(runner):
    res = await arun_local(make_job(SIGNED, "k", [np.int32(7), Out(2, np.uint32)], global_size=2), runner)
    assert res.arrays[0].tolist() == [7, 7]
    assert any("same bytes, same value" in w for w in res.warnings)
    await refused_before_transfer(runner, make_job(SIGNED, "k", [np.int32(-7), Out(2, np.uint32)], global_size=2),
                                  "int32 .*declared 'uint': pass np.uint32", field="args[0].dtype")
    await refused_before_transfer(runner, make_job(SIGNED, "k", [np.float32(7), Out(2, np.uint32)], global_size=2),
                                  "float32 .*declared 'uint'")


def test_pyopencl_call_shape_locally():
    from worker.compute.program import Program

    src = ("__kernel void scale(__global float *o, const float a, const int n, __local float *tmp) "
           "{ int i = get_global_id(0); tmp[get_local_id(0)] = a * i; if (i < n) o[i] = tmp[get_local_id(0)]; }")
    prg = Program(src).build(options="-cl-mad-enable")
    assert prg.scale is prg.scale and prg.kernel_names == ["scale"]
    prg.scale.set_scalar_arg_dtypes([None, np.float32, np.int32, None])
    out = prg.scale(None, (16,), (8,), Out(16, np.float32), 0.5, 16, cl.LocalMemory(32))  # as pyopencl takes them
    np.testing.assert_array_equal(out, 0.5 * np.arange(16, dtype=np.float32))
    job = prg.scale.job((16,), None, Out(16, np.float32), 1.0, 16, Local(32))  # the queue left out
    assert job.spec["build_options"] == ["-cl-mad-enable"] and job.spec["args"][3] == {"kind": "local", "nbytes": 32}
    with pytest.raises(TypeError, match="global_offset"):
        prg.scale(None, (16,), None, Out(16, np.float32), 1.0, 16, Local(32), global_offset=(4,))


def test_source_scan_refuses_pipes_and_reads_attributes():
    from worker.compute.source import kernel_signatures

    src = ("#define TS 8\n__kernel __attribute__((reqd_work_group_size(TS * 2, 1, 1))) void a(pipe int p, "
           "__global const float4 *restrict x) {}\n__attribute__((reqd_work_group_size(4,4,1))) kernel void b("
           "__local float *t) {}")
    sigs = kernel_signatures(src)
    assert sigs["a"].params[0].opaque == "pipe" and sigs["a"].reqd_work_group_size == (16, 1, 1)
    assert sigs["a"].params[1].const and sigs["a"].params[1].address == "global"
    assert sigs["b"].reqd_work_group_size == (4, 4, 1) and sigs["b"].params[0].address == "local"
    with pytest.raises(SpecError, match="parameter 0 'pipe int p' is a pipe"):
        make_job(src, "a", [np.zeros(4, np.int32), np.zeros(4, cltypes.float4)], global_size=16, local_size=16)


async def test_struct_sizes_checked_against_the_devices_sizeof(runner):
    """A runtime may not check a by-value struct's size (PoCL does not): the kernel would read past the value.
    The runner asks the device's compiler for sizeof of each struct/typedef parameter (a probe kernel), and
    checks by-value structs and struct buffers against it before any transfer."""
    src = ("typedef struct { float a; float b; float4 c; } P;\n"
           "typedef double real;\n"
           "__kernel void k(const P p, __global float *o, __global P *ps, const real r) "
           "{ o[0] = p.a + p.c.w + ps[0].a + (float)r; }")
    small = np.zeros((), np.dtype({"names": ["a", "b"], "formats": ["f4", "f4"], "offsets": [0, 4], "itemsize": 8}))
    good_dt = np.dtype({"names": ["a", "b", "c"], "formats": ["f4", "f4", cltypes.float4], "offsets": [0, 4, 16],
                        "itemsize": 32})
    good = np.zeros((), good_dt)
    await refused_before_transfer(runner, make_job(src, "k", [small, Out(1, np.float32), np.zeros(3, good_dt),
                                                              np.float64(1)], global_size=1),
                                  "8 bytes .*'P p' is 32 bytes \\(sizeof\\(P\\) on this device\\)", field="args[0]")
    await refused_before_transfer(runner, make_job(src, "k", [good, Out(1, np.float32), np.zeros(5, np.float32),
                                                              np.float64(1)], global_size=1),
                                  "20 bytes is not a whole number of P \\(32 bytes", field="args[2]")
    await refused_before_transfer(runner, make_job(src, "k", [good, Out(1, np.float32), np.zeros(3, good_dt),
                                                              np.float32(1)], global_size=1),
                                  "4 bytes .*'real r' is 8 bytes \\(sizeof\\(real\\)", field="args[3]")
    ps = np.zeros(3, good_dt)
    ps["a"] = 2.0
    good["a"] = 1.0
    good["c"] = np.array([0, 0, 0, 4], np.float32).view(cltypes.float4)[0]
    res = await arun_local(make_job(src, "k", [good, Out(1, np.float32), ps, np.float64(0.5)], global_size=1), runner)
    assert res.arrays[0].tolist() == [7.5]
