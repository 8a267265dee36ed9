"""compute.opencl spec: parsing, validation against device limits, build-option and source safety. No OpenCL."""

import hashlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.compute.api import In, InOut, Local, Out, Scalar, make_job
from worker.compute.limits import DeviceLimits, validate
from worker.compute.spec import (
    MAX_ARGS,
    MAX_INLINE_BYTES,
    BufferArg,
    ScalarArg,
    SpecError,
    check_source,
    kernel_names_in,
    parse_build_options,
    parse_spec,
)
from worker.devices import Device

SAXPY = """
__kernel void saxpy(const uint n, const float a, __global const float *x, __global float *y) {
    size_t i = get_global_id(0);
    if (i < n) y[i] = a * x[i] + y[i];
}
"""


def saxpy_spec(n=256, **over):
    d = {
        "v": 1, "source": SAXPY, "kernel": "saxpy",
        "args": [
            {"kind": "scalar", "dtype": "uint32", "value": n},
            {"kind": "scalar", "dtype": "float32", "value": 2.0},
            {"kind": "in", "dtype": "float32", "data": np.ones(n, np.float32).tobytes(), "name": "x"},
            {"kind": "inout", "dtype": "float32", "data": np.ones(n, np.float32).tobytes(), "name": "y"},
        ],
        "global_size": [n], "local_size": [64],
    }
    d.update(over)
    return d


def wire(d):
    return msgpack.unpackb(msgpack.packb(d, use_bin_type=True), raw=False)


def field_of(exc_info):
    return exc_info.value.field


def test_parse_roundtrip_and_derived_figures():
    s = parse_spec(wire(saxpy_spec()))
    assert s.kernel == "saxpy" and s.launches[0].global_size == (256,) and s.launches[0].local_size == (64,)
    assert isinstance(s.args[0], ScalarArg) and s.args[0].value == 256
    assert isinstance(s.args[3], BufferArg) and s.args[3].count == 256 and s.args[3].returned
    assert s.buffer_bytes == 2 * 256 * 4 and s.bytes_in == 2048 and s.bytes_out == 1024
    assert s.source_sha256 == hashlib.sha256(SAXPY.encode()).hexdigest()
    assert s.total_launches == 1 and s.work_items == 256 and s.input_size == 0
    assert parse_spec(wire(s.to_dict())) == s
    r = s.requirements()
    assert not r.fp64 and not r.int64 and r.min_memory_bytes == 2048


@pytest.mark.parametrize("patch,field,match", [
    ({"args": [{"kind": "out", "dtype": "float128", "count": 4}]}, "args[0].dtype", "unknown dtype 'float128'"),
    ({"args": [{"kind": "scalar", "dtype": "bool", "value": 1}]}, "args[0].dtype", "unknown dtype"),
    ({"args": [{"kind": "scalar", "dtype": "int8", "value": 200}]}, "args[0].value", "out of range for int8"),
    ({"args": [{"kind": "scalar", "dtype": "float16", "value": 1e5}]}, "args[0].value", "overflows float16"),
    ({"args": [{"kind": "scalar", "dtype": "float32x4", "value": [1, 2]}]}, "args[0].value", "list of 4 numbers"),
    ({"args": [{"kind": "scalar", "dtype": "float32x4", "value": b"abc"}]}, "args[0].value", "3 bytes for a float32x4"),
    ({"args": [{"kind": "scalar", "dtype": "uint32", "value": -1}]}, "args[0].value", "out of range for uint32"),
    ({"args": [{"kind": "scalar", "dtype": "int32", "value": 1.5}]}, "args[0].value", "needs an integer"),
    ({"args": [{"kind": "scalar", "dtype": "float32", "value": 1e39}]}, "args[0].value", "overflows float32"),
    ({"args": [{"kind": "in", "dtype": "float32", "data": b"abc"}]}, "args[0].data", "whole number of float32"),
    ({"args": [{"kind": "in", "dtype": "float32"}]}, "args[0]", "exactly one of 'data'"),
    ({"args": [{"kind": "in", "dtype": "uint8", "sha256": "xyz", "nbytes": 4}]}, "args[0].sha256", "64 lowercase hex"),
    ({"args": [{"kind": "out", "dtype": "float32"}]}, "args[0]", "exactly one of 'count'"),
    ({"args": [{"kind": "pointer"}]}, "args[0].kind", "must be one of"),
    ({"args": [{"kind": "out", "dtype": "uint8", "count": 4, "colour": "red"}]}, "args[0].colour", "unknown field"),
    ({"local_size": [8, 8]}, "local_size", "2 dimensions but global_size has 1"),
    ({"global_size": [1, 2, 3, 4]}, "global_size", "1 to 3"),
    ({"global_size": [0]}, "global_size[0]", "at least 1"),
    ({"kernel": "not a name"}, "kernel", "C identifier"),
    ({"kernel": "saxpz"}, "kernel", "no kernel named 'saxpz'.*kernels found: saxpy"),
    ({"time_limit_s": 0}, "time_limit_s", "positive"),
    ({"time_limit_s": 1e9}, "time_limit_s", "exceeds the limit"),
    ({"memory_limit_bytes": 100}, "memory_limit_bytes", "need 2048 bytes, more than the job's memory limit of 100"),
    ({"device_kind": "tpu"}, "device_kind", "gpu, cpu, accelerator"),
    ({"v": 2}, "v", "not supported"),
    ({"colour": 1}, "colour", "unknown field"),
    ({"repeat": 10**9}, "repeat", "at most"),
])
def test_bad_specs_name_the_field(patch, field, match):
    with pytest.raises(SpecError, match=match) as e:
        parse_spec(saxpy_spec(**patch))
    assert field_of(e) == field
    assert isinstance(e.value, ValueError)


def test_source_or_hash_exactly_one():
    d = saxpy_spec()
    d["source_sha256"] = "0" * 64
    with pytest.raises(SpecError, match="exactly one of 'source'") as e:
        parse_spec(d)
    assert field_of(e) == "source"
    del d["source"]
    s = parse_spec(d)  # by hash only: the kernel name cannot be checked until the worker finds the source
    assert s.source is None and s.source_sha256 == "0" * 64


def test_too_many_args_and_too_much_inline_data():
    with pytest.raises(SpecError, match=f"exceeds the limit of {MAX_ARGS}") as e:
        parse_spec(saxpy_spec(args=[{"kind": "scalar", "dtype": "int32", "value": 0}] * (MAX_ARGS + 1)))
    assert field_of(e) == "args"
    big = {"kind": "in", "dtype": "uint8", "data": bytes(MAX_INLINE_BYTES // 2 + 1)}
    with pytest.raises(SpecError, match="inline data exceeds") as e:
        parse_spec(saxpy_spec(args=[big, big]))


def test_unused_buffer_and_bad_launch_refs():
    d = saxpy_spec()
    d["launches"] = [{"args": [0, 1, 2, 2]}]  # args[3] is never bound
    with pytest.raises(SpecError, match="no launch uses") as e:
        parse_spec(d)
    assert field_of(e) == "args[3]"
    d["launches"] = [{"args": [0, 1, 2, 7]}]
    with pytest.raises(SpecError, match="refers to args\\[7\\]") as e:
        parse_spec(d)
    assert field_of(e) == "launches[0].args[3]"
    d["launches"] = [{"args": [0, 1, 2, {"kind": "out", "dtype": "uint8", "count": 1}]}]
    with pytest.raises(SpecError, match="refer to buffers by their index"):
        parse_spec(d)


def test_launch_sequence_expands_repeats_and_defaults():
    d = saxpy_spec()
    d["launches"] = [
        {"args": [0, {"kind": "scalar", "dtype": "float32", "value": 0.5}, 2, 3], "repeat": 3},
        {"kernel": "saxpy", "global_size": [128], "local_size": None},
    ]
    d["repeat"] = 2
    s = parse_spec(d)
    assert s.total_launches == 2 * (3 + 1)
    assert s.launches[0].global_size == (256,) and s.launches[0].local_size == (64,)
    assert s.launches[1].global_size == (128,) and s.launches[1].local_size is None
    assert s.work_items == 2 * (3 * 256 + 128)
    assert parse_spec(wire(s.to_dict())) == s


def test_stream_layout_dedups_blobs_in_order_of_first_use():
    a, b = b"\x01" * 64, b"\x02" * 32
    ha, hb = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()
    src = "__kernel void k(__global const uchar *p, __global const uchar *q, __global uchar *r, __global uchar *o) {}"
    s = parse_spec({"source": src, "kernel": "k", "global_size": [1], "args": [
        {"kind": "in", "sha256": hb, "nbytes": 32},
        {"kind": "in", "sha256": ha, "nbytes": 64},
        {"kind": "inout", "sha256": hb, "nbytes": 32},
        {"kind": "out", "dtype": "uint8", "count": 1},
    ]})
    assert s.stream_layout() == [(hb, 32), (ha, 64)] and s.input_size == 96
    with pytest.raises(SpecError, match="two different sizes"):
        parse_spec({"source": src, "kernel": "k", "global_size": [1], "args": [
            {"kind": "in", "sha256": hb, "nbytes": 32}, {"kind": "in", "sha256": hb, "nbytes": 64},
            {"kind": "out", "dtype": "uint8", "count": 1}, {"kind": "out", "dtype": "uint8", "count": 1}]})


# --- build options and source safety -------------------------------------------------------------------


def test_build_options_allow_list():
    assert parse_build_options("-DTILE=16 -cl-mad-enable  -D N=4 -DFLAG -cl-std=CL1.2") == (
        "-DTILE=16", "-cl-mad-enable", "-DN=4", "-DFLAG", "-cl-std=CL1.2")
    assert parse_build_options(["-DX=(1<<4)", "-w"]) == ("-DX=(1<<4)", "-w")
    for bad, match in [
        ("-I/etc", "include paths"), ("-I /etc", "include paths"), ("@/etc/opts", "include paths"),
        ("-include /etc/passwd", "include paths"), ("-o /tmp/x", "include paths"), ("-x c", "include paths"),
        ("-DX=\"/etc/passwd\"", "macro value"), ("-D1X=2", "not a C identifier"), ("-D", "needs a NAME"),
        ("-cl-std=CL9.9", "-cl-std must be one of"), ("-O3", "not an allowed option"), ("-DX=$(id)", "macro value"),
    ]:
        with pytest.raises(SpecError, match=match) as e:
            parse_build_options(bad)
        assert e.value.field.startswith("build_options")
    with pytest.raises(SpecError, match="include paths"):
        parse_spec(saxpy_spec(build_options=["-cl-mad-enable", "-I/etc"]))


@pytest.mark.parametrize("snippet", [
    '#include "/etc/passwd"',
    "#  include <stdio.h>",
    '#/**/include "x.h"',                       # a comment between '#' and the directive
    '#\\\ninclude "x.h"',                       # a line splice
    '??=include "x.h"',                         # a trigraph
    '%:include "x.h"',                          # a digraph
    '"/*"\n#/* */include "x"\n"*/"',            # '/*' inside a string must not hide the directive
    '#if __has_include("/etc/shadow")\n#endif',  # probing files is reading them
    '#embed "/etc/passwd"',
])
def test_sources_that_read_files_are_refused(snippet):
    with pytest.raises(SpecError, match="not allowed") as e:
        check_source(SAXPY + "\n" + snippet + "\n")
    assert field_of(e) == "source"


def test_harmless_sources_pass():
    check_source(SAXPY + '/* #include "x" in a comment */\n// #include <y>\n#define INCLUDE 1\n#pragma unroll\n')
    with pytest.raises(SpecError, match="is empty"):
        check_source("   ")
    with pytest.raises(SpecError, match="NUL"):
        check_source(SAXPY + "\x00")
    assert kernel_names_in(SAXPY + "\n__kernel __attribute__((reqd_work_group_size(64,1,1))) void two(int x) {}"
                           + "\n/* kernel void three(int y) {} */") == ["saxpy", "two"]


def test_requirements_derived_from_the_program():
    fp64 = parse_spec(saxpy_spec(source=SAXPY + "__kernel void d(__global double *p) { p[0] = 1.0; }"))
    assert fp64.requirements().fp64
    pragma = parse_spec(saxpy_spec(source="#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n" + SAXPY))
    assert pragma.requirements().fp64
    comment = parse_spec(saxpy_spec(source=SAXPY + "/* no double here */ // double"))
    assert not comment.requirements().fp64
    scalar = parse_spec(saxpy_spec(args=[{"kind": "scalar", "dtype": "float64", "value": 1.0}], global_size=[1],
                                   local_size=None))
    assert scalar.requirements().fp64
    assert parse_spec(saxpy_spec(source=SAXPY + "__kernel void u(__global ulong *p) {}")).requirements().int64
    assert parse_spec(saxpy_spec(device_kind="gpu")).requirements().device_kind == "gpu"


# --- validation against a device -----------------------------------------------------------------------


def test_buffer_larger_than_the_device_is_refused():
    lim = DeviceLimits(global_mem_bytes=1 << 20, max_alloc_bytes=1 << 18)
    d = saxpy_spec(args=[{"kind": "scalar", "dtype": "uint32", "value": 1}, {"kind": "scalar", "dtype": "float32",
                                                                               "value": 1.0},
                         {"kind": "in", "dtype": "float32", "data": bytes(64)},
                         {"kind": "out", "dtype": "float32", "count": (1 << 20) // 4 + 1}])
    with pytest.raises(SpecError, match="largest allocation") as e:
        validate(d, lim)
    assert field_of(e) == "args[3]"
    with pytest.raises(SpecError, match="larger than the device's memory") as e:
        validate(d, DeviceLimits(global_mem_bytes=1 << 20))
    assert field_of(e) == "args[3]"
    with pytest.raises(SpecError, match="this worker's limit"):
        validate(d, None, max_memory_bytes=1 << 16)
    validate(d, DeviceLimits(global_mem_bytes=1 << 30))


def test_validate_against_a_device_record_and_work_group_limits():
    dev = Device(id="0:0", fingerprint="f", platform="p", vendor="v", name="tiny", kind="gpu", compute_units=1,
                 global_mem_bytes=1 << 30, max_work_group_size=32, fp64=False, int64=True)
    with pytest.raises(SpecError, match="work-group of 64 work items exceeds the device's maximum of 32"):
        validate(saxpy_spec(), dev)
    validate(saxpy_spec(local_size=[32]), dev)
    with pytest.raises(SpecError, match="fp64"):
        validate(saxpy_spec(local_size=[32], source=SAXPY + "__kernel void d(double x) {}"), dev)
    with pytest.raises(SpecError, match="needs a cpu device"):
        validate(saxpy_spec(local_size=[32], device_kind="cpu"), dev)
    lim = DeviceLimits(max_work_item_sizes=(16, 16, 16), local_mem_bytes=1024)
    with pytest.raises(SpecError, match="local size 64 in dimension 0 exceeds the device's maximum of 16"):
        validate(saxpy_spec(), lim)
    d = saxpy_spec(local_size=[16])
    d["args"] = d["args"][:3] + [{"kind": "local", "nbytes": 4096}]
    with pytest.raises(SpecError, match="local args need 4096 bytes"):
        validate(d, lim)
    assert validate(saxpy_spec(), {"global_mem_bytes": 1 << 30, "max_work_item_sizes": [64, 1, 1]}).kernel == "saxpy"


# --- the client-side builder ---------------------------------------------------------------------------


def test_make_job_inline_and_streamed_inputs():
    x = np.arange(16, dtype=np.float32)
    big = np.zeros(300_000, dtype=np.float32)  # 1.2 MB: does not fit inline
    job = make_job(SAXPY, "saxpy", [np.uint32(16), np.float32(2), x, InOut(big, "y")], global_size=16)
    args = job.spec["args"]
    assert args[2]["data"] == x.tobytes()
    assert args[3]["sha256"] == hashlib.sha256(big.tobytes()).hexdigest() and args[3]["nbytes"] == big.nbytes
    assert job.input == big.tobytes() and job.parsed().input_size == len(job.input)
    forced = make_job(SAXPY, "saxpy", [np.uint32(16), np.float32(2), In(x, stream=True), Out((4, 4))],
                      global_size=16)
    assert forced.input == x.tobytes() and forced.shapes == {3: (4, 4)}
    assert make_job(SAXPY, "saxpy", [Scalar("uint32", 1), np.float32(1), x, Local(64)], global_size=1,
                    send_source=False).spec["source_sha256"] == hashlib.sha256(SAXPY.encode()).hexdigest()
    with pytest.raises(TypeError, match="needs its OpenCL type"):
        make_job(SAXPY, "saxpy", [16, np.float32(2), x, InOut(x)], global_size=16)
    with pytest.raises(SpecError, match="bool has no fixed size in OpenCL.*use uint8"):
        make_job(SAXPY, "saxpy", [np.uint32(1), np.float32(2), x > 1, InOut(x)], global_size=16)
    with pytest.raises(SpecError, match="big-endian"):
        make_job(SAXPY, "saxpy", [np.uint32(1), np.float32(2), x.astype(">f4"), InOut(x)], global_size=16)
    ragged = make_job(SAXPY, "saxpy", [np.uint32(16), np.float32(2), x, InOut(x)], global_size=16, local_size=3)
    with pytest.raises(SpecError, match="does not divide global size 16.*OpenCL 1.2.*does not support"):
        validate(ragged.spec, DeviceLimits(opencl_version="1.2", non_uniform_work_groups=False))
    assert validate(ragged.spec, DeviceLimits(opencl_version="2.0", non_uniform_work_groups=True))
    with pytest.raises(SpecError, match="-cl-uniform-work-group-size forbids"):
        validate(make_job(SAXPY, "saxpy", [np.uint32(16), np.float32(2), x, InOut(x)], global_size=16, local_size=3,
                          build_options="-cl-uniform-work-group-size").spec, DeviceLimits(non_uniform_work_groups=True))


# --- robustness: garbage never escapes as anything but SpecError --------------------------------------

leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                 st.text(max_size=8), st.binary(max_size=16),
                 st.sampled_from(["in", "out", "inout", "scalar", "local", "float32", "uint8", "saxpy", SAXPY]))
junk = st.recursive(leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=4),
    st.dictionaries(st.sampled_from(["kind", "dtype", "value", "data", "count", "nbytes", "sha256", "args",
                                     "global_size", "local_size", "kernel", "source", "launches", "repeat",
                                     "name", "time_limit_s"]), kids, max_size=5)), max_leaves=20)


@given(st.dictionaries(st.sampled_from(["v", "source", "kernel", "args", "global_size", "local_size", "launches",
                                        "repeat", "build_options", "time_limit_s", "memory_limit_bytes",
                                        "source_sha256", "device_kind", "flops_per_item"]), junk, max_size=8))
@settings(max_examples=150, deadline=None)
def test_fuzzed_specs_raise_only_spec_error(d):
    try:
        s = parse_spec(d)
    except SpecError:
        return
    assert parse_spec(s.to_dict()) == s


def test_kind_requirements_and_cost_from_calibration():
    from dataclasses import replace

    from worker.compute.kind import COMPUTE_OPENCL as k

    dev = Device(id="0:0", fingerprint="f", platform="p", vendor="v", name="d", kind="gpu", compute_units=8,
                 global_mem_bytes=1 << 30, max_work_group_size=256, fp64=True, int64=True)
    small = saxpy_spec(n=256)
    big = saxpy_spec(n=256, global_size=[1 << 24], local_size=[64], time_limit_s=3600)
    req = k.requirements(small)
    assert req.opencl and req.min_memory_bytes == 2048 and not req.fp64
    k.validate(small, 0)
    with pytest.raises(SpecError, match="streamed input must be 0 bytes"):
        k.validate(small, 10)
    slow, fast = replace(dev, f32_gflops=1.0), replace(dev, f32_gflops=1000.0)
    assert k.cost_s(big, 0, slow) > k.cost_s(big, 0, fast) > 0
    assert k.cost_s(big, 0, slow) > k.cost_s(small, 0, slow)
    assert k.cost_s(saxpy_spec(global_size=[1 << 30], local_size=None, time_limit_s=2.0), 0, slow) == 2.0
    assert 0 < k.chunk_s(big, 0, slow) <= k.cost_s(big, 0, slow)
    with pytest.raises(NotImplementedError, match="no CPU reference path"):
        k.reference(small, b"")


def test_register_kind_is_explicit_and_idempotent():
    from worker import kinds
    from worker.compute.kind import COMPUTE_OPENCL, register_kind

    had = "compute.opencl" in kinds.names()
    try:
        assert register_kind() is COMPUTE_OPENCL and register_kind() is COMPUTE_OPENCL
        assert kinds.get("compute.opencl") is COMPUTE_OPENCL
    finally:
        if not had:
            kinds.REGISTRY.unregister("compute.opencl")
