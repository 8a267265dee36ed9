"""Validation first, where kernels run in runners: kernel parameters a runner cannot bind (images, samplers,
pipes) are refused before any transfer, naming the parameter: by the source check at submit (raw specs too, not
only the SDK's), and by the runtime's description of the parameters after the build, which also sees through a
macro, before the runner asks for the job's input. Supported kinds still bind, type-checked."""

from __future__ import annotations

import numpy as np
import pytest

from tests.opencl import requires_opencl
from worker.compute.kind import COMPUTE_OPENCL
from worker.compute.spec import SpecError

IMAGE = """
__kernel void blur(__read_only image2d_t picture, sampler_t smp, __global float4 *out) {
    out[get_global_id(0)] = read_imagef(picture, smp, (int2)(get_global_id(0), 0));
}
"""
HIDDEN = """
#define PICTURE image2d_t
__kernel void hidden(__read_only PICTURE picture, __global float *out) { out[0] = 1.0f; }
"""


def raw_spec(source: str, kernel: str, args: list[dict]) -> dict:
    """A spec as any client could send it (the SDK would refuse these on the client already)."""
    return {"v": 1, "source": source, "kernel": kernel, "args": args, "global_size": [4]}


BUF_IN = {"kind": "in", "dtype": "float32", "data": bytes(64)}
BUF_OUT = {"kind": "out", "dtype": "float32", "count": 16}


def test_submit_validation_refuses_an_image_parameter_naming_it():
    spec = raw_spec(IMAGE, "blur", [BUF_IN, {"kind": "scalar", "dtype": "uint32", "value": 0}, BUF_OUT])
    with pytest.raises(SpecError) as e:
        COMPUTE_OPENCL.validate(spec, 0)
    assert "parameter 0 '__read_only image2d_t picture' is an image" in str(e.value)


@requires_opencl
async def test_the_runner_check_sees_through_a_macro_before_reading_any_input():
    from worker.compute.runner import ComputeRunner
    from worker.devices import discover
    from worker.opencl import open_device

    dctx = await open_device([d for d in discover().devices if d.opencl][0])
    runner = ComputeRunner(dctx.context, dctx.cl_device, device_id="t")
    data = np.arange(1 << 14, dtype=np.float32).tobytes()
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    spec = raw_spec(HIDDEN, "hidden", [{"kind": "in", "dtype": "float32", "sha256": sha, "nbytes": len(data)},
                                       BUF_OUT])
    COMPUTE_OPENCL.validate(spec, len(data))  # the source check cannot see through the macro
    fetched = []

    async def blobs(s):
        fetched.append(s)
        return {sha: data}

    with pytest.raises(SpecError, match=r"parameter 0 '[^']*picture' is an image") as e:
        await runner.run(spec, blobs)
    assert e.value.field.startswith("args[0]") and not fetched  # refused before the input was asked for
