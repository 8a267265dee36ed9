"""Validation first: kernel parameters a runner cannot bind (images, samplers, pipes, ...) are refused before any
transfer, naming the parameter: by a scan of the source at submit, and by the runtime's own parameter
description after the build (which also sees through a macro). Supported kinds still bind and run."""

from __future__ import annotations

import numpy as np
import pytest

from scheduler.client.compute_sdk import Out, make_job
from tests.opencl import requires_opencl
from worker.compute.kind import COMPUTE_OPENCL
from worker.compute.params import unsupported_kind, unsupported_params
from worker.compute.spec import SpecError

IMAGE = """
__kernel void img(__read_only image2d_t picture, __global float *out) {
    out[get_global_id(0)] = 1.0f;
}
"""
SAMPLER = "__kernel void smp(sampler_t s, __global float *out) { out[0] = 1.0f; }"
HIDDEN = """
#define PICTURE image2d_t
__kernel void hidden(__read_only PICTURE picture, __global float *out) { out[0] = 1.0f; }
"""
FINE = "__kernel void fine(__global float *out, const float a, const uint n) { out[0] = a + n; }"


def test_the_source_scan_names_each_unsupported_parameter():
    assert unsupported_params(IMAGE) == [("img", 0, "__read_only image2d_t picture", "an image")]
    assert unsupported_params(SAMPLER)[0][1:] == (0, "sampler_t s", "a sampler")
    src = "kernel __attribute__((reqd_work_group_size(1,1,1))) void p(pipe int q, queue_t d, __global int *x) {}"
    assert [(i, w) for _, i, _, w in unsupported_params(src)] == [(0, "a pipe"), (1, "a device queue")]
    assert unsupported_params("// __kernel void x(image2d_t a) {}\n" + FINE) == []  # comments do not count
    assert unsupported_kind("image3d_t") == "an image" and unsupported_kind("float*") is None
    assert unsupported_kind("uint") is None and unsupported_kind("clk_event_t") == "an event"


def test_submit_validation_refuses_images_and_samplers_naming_them():
    for src, kernel, words in ((IMAGE, "img", "'__read_only image2d_t picture' is an image"),
                               (SAMPLER, "smp", "'sampler_t s' is a sampler")):
        job = make_job(src, kernel, [np.float32(0) if kernel == "smp" else Out(4, np.float32), Out(4, np.float32)]
                       if kernel == "smp" else [np.zeros(4, np.float32), Out(4, np.float32)], global_size=1)
        with pytest.raises(SpecError, match="source") as e:
            COMPUTE_OPENCL.validate(job.spec, len(job.input or b""))
        assert words in str(e.value) and "before any transfer" in str(e.value)
    fine = make_job(FINE, "fine", [Out(1, np.float32), np.float32(1.5), np.uint32(2)], global_size=1)
    COMPUTE_OPENCL.validate(fine.spec, 0)


@requires_opencl
async def test_the_runner_check_sees_through_a_macro_before_reading_any_input():
    from worker.compute.runner import ComputeRunner
    from worker.devices import discover
    from worker.opencl import open_device

    dctx = await open_device([d for d in discover().devices if d.opencl][0])
    runner = ComputeRunner(dctx.context, dctx.cl_device, device_id="t")
    job = make_job(HIDDEN, "hidden", [np.arange(1 << 16, dtype=np.float32), Out(4, np.float32)], global_size=1,
                   inline_limit=0)
    COMPUTE_OPENCL.validate(job.spec, len(job.input))  # the scan cannot see it
    fetched = []

    async def blobs(s):
        fetched.append(s)
        return {}

    with pytest.raises(SpecError, match=r"parameter 0 '\w+ picture' is an image") as e:
        await runner.run(job.spec, blobs)
    assert e.value.field == "args[0]" and not fetched  # refused before the input was asked for
    ok = make_job(FINE, "fine", [Out(1, np.float32), np.float32(1.5), np.uint32(2)], global_size=1)
    res = await runner.run(ok.spec)
    assert res.arrays[0][0] == 3.5
    # supported kinds are type-checked: a buffer for the float scalar, a float for the uint
    for args, where, words in (([Out(1, np.float32), np.ones(4, np.float32), np.uint32(2)], "args[1]",
                                "not a __global or __constant pointer"),
                               ([Out(1, np.float32), np.float32(1.5), np.float32(2)], "args[2]", "declared 'uint'")):
        with pytest.raises(SpecError, match=words) as e:
            await runner.run(make_job(FINE, "fine", args, global_size=1).spec)
        assert e.value.field.startswith(where)
