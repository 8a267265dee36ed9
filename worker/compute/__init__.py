"""Generic compute jobs (`compute.opencl`): user OpenCL C kernels with their buffers and launch sizes.

- `worker.compute.spec`: the spec (typed dataclasses in `spec_model`, `parse_spec` in `spec_parse`, `SpecError`);
  `worker.compute.cltypes`: its OpenCL C types; `worker.compute.limits`: `DeviceLimits`, `validate` (a spec
  against a device);
- `worker.compute.runner`: `ComputeRunner` (build cache, time limit, quarantine; its parts `device_gate`,
  `execute`), `worker.compute.result`: `ComputeResult`, `worker.compute.quarantine`: quarantined devices;
- `worker.compute.api`: building specs from numpy arrays (`make_job`, `In`, `Out`, `InOut`, `Local`, `Scalar`)
  and running them on this machine (`run_local`);
- `worker.compute.kind`: the JobKind (`register_kind()` registers `compute.opencl`).

See docs/compute.md.
"""

from worker.compute.errors import (
    BuildError,
    ComputeError,
    DeviceUnavailable,
    KernelFailed,
    OutOfDeviceMemory,
    TimeLimitExceeded,
)
from worker.compute.limits import DeviceLimits, validate
from worker.compute.spec import ComputeSpec, SourceNotCached, SpecError, parse_spec

__all__ = [
    "BuildError", "ComputeError", "ComputeSpec", "DeviceLimits", "DeviceUnavailable", "KernelFailed",
    "OutOfDeviceMemory", "SourceNotCached", "SpecError", "TimeLimitExceeded", "parse_spec", "validate",
]
