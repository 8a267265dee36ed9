"""A compute spec against a device: `DeviceLimits` (what a device can launch, from pyopencl, a `Device` record or
an advert) and `validate` (the spec against those limits and the worker's caps). Unknown figures are not
checked; everything here runs before any transfer (the SDK against each advertised device, the runner against
its own).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.compute.errors import SpecError
from worker.compute.spec import NON_UNIFORM_HELP, ComputeSpec, LocalArg, ScalarArg, parse_spec
from worker.devices import device_non_uniform, device_opencl_version


@dataclass(frozen=True)
class DeviceLimits:
    """What `validate` checks a spec against. Unknown figures (None) are not checked."""

    global_mem_bytes: int | None = None
    max_alloc_bytes: int | None = None
    max_work_group_size: int | None = None
    max_work_item_sizes: tuple[int, ...] | None = None
    local_mem_bytes: int | None = None
    max_constant_bytes: int | None = None
    fp64: bool | None = None
    int64: bool | None = None
    kind: str | None = None
    fp16: bool | None = None
    opencl_version: str | None = None  # "3.0"
    non_uniform_work_groups: bool | None = None

    @classmethod
    def from_device(cls, dev: Any) -> DeviceLimits:
        """From a worker.devices.Device record, an advert's device (a DeviceAdvert or its dict), or a dict of
        these fields. Zeros and empty values (an old advert) count as unknown."""
        if isinstance(dev, DeviceLimits):
            return dev
        known = set(cls.__dataclass_fields__)
        if isinstance(dev, Mapping):
            vals = {k: v for k, v in dev.items() if k in known}
        else:
            vals = {k: getattr(dev, k) for k in known if hasattr(dev, k)}
        vals = {k: v for k, v in vals.items() if v not in (0, "", (), [], None) or isinstance(v, bool)}
        if vals.get("max_work_item_sizes") is not None:
            vals["max_work_item_sizes"] = tuple(int(x) for x in vals["max_work_item_sizes"])
        if vals.get("kind") == "reference":
            vals.pop("kind")
        if not vals.get("opencl_version"):
            vals.pop("non_uniform_work_groups", None)  # an advert without OpenCL limits: unknown, not "no"
        return cls(**vals)

    @classmethod
    def from_cl_device(cls, d: Any) -> DeviceLimits:
        """From a pyopencl Device (the authoritative figures, at run time)."""
        # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
        import pyopencl as cl

        ext = str(d.extensions)
        version = device_opencl_version(d)
        return cls(
            global_mem_bytes=int(d.global_mem_size),
            max_alloc_bytes=int(d.max_mem_alloc_size),
            max_work_group_size=int(d.max_work_group_size),
            max_work_item_sizes=tuple(int(x) for x in d.max_work_item_sizes),
            local_mem_bytes=int(d.local_mem_size),
            max_constant_bytes=int(d.max_constant_buffer_size),
            fp64="cl_khr_fp64" in ext or bool(getattr(d, "double_fp_config", 0)),
            int64=str(d.profile) == "FULL_PROFILE" or "cles_khr_int64" in ext,
            kind=("gpu" if int(d.type) & cl.device_type.GPU else
                  "cpu" if int(d.type) & cl.device_type.CPU else "accelerator"),
            fp16="cl_khr_fp16" in ext,
            opencl_version=version,
            non_uniform_work_groups=device_non_uniform(d, version),
        )


def validate(spec: ComputeSpec | Mapping[str, Any], device_info: Any = None, *,
             max_memory_bytes: int | None = None, max_time_limit_s: float | None = None) -> ComputeSpec:
    """Parse (if needed) and check `spec` against a device and the worker's caps. Raises SpecError.

    `device_info`: a `DeviceLimits`, a `worker.devices.Device`, an advert's device, a dict of DeviceLimits
    fields, or None (only the structure and the job's own limits are checked). `max_memory_bytes` /
    `max_time_limit_s`: the worker's caps for one job.
    """
    s = parse_spec(spec)
    lim = DeviceLimits.from_device(device_info) if device_info is not None else DeviceLimits()
    if max_time_limit_s is not None and s.time_limit_s > max_time_limit_s:
        raise SpecError("time_limit_s", f"{s.time_limit_s:g} s exceeds this worker's limit of "
                                        f"{max_time_limit_s:g} s per job")
    need = s.buffer_bytes
    if max_memory_bytes is not None and need > max_memory_bytes:
        raise SpecError("memory_limit_bytes", f"the buffers need {need} bytes, more than this worker's limit of "
                                              f"{max_memory_bytes} bytes per job")
    req = s.requirements()
    if lim.fp64 is False and req.fp64:
        raise SpecError("source", "the program uses double precision (fp64) and this device has no fp64")
    if lim.int64 is False and req.int64:
        raise SpecError("source", "the program uses 64-bit integers and this device has none")
    if lim.fp16 is False and req.fp16:
        raise SpecError("args", "a half (float16) value passed by value needs cl_khr_fp16, which this device lacks: "
                                "pass a float and convert in the kernel (half buffers work everywhere, through "
                                "vload_half / vstore_half)")
    if s.device_kind is not None and lim.kind is not None and lim.kind != s.device_kind:
        raise SpecError("device_kind", f"needs a {s.device_kind} device, this is a {lim.kind}")
    for i, a in s.buffers:
        if lim.max_alloc_bytes is not None and a.nbytes > lim.max_alloc_bytes:
            raise SpecError(f"args[{i}]", f"buffer of {a.nbytes} bytes exceeds the device's largest allocation "
                                          f"of {lim.max_alloc_bytes} bytes")
        if lim.global_mem_bytes is not None and a.nbytes > lim.global_mem_bytes:
            raise SpecError(f"args[{i}]", f"buffer of {a.nbytes} bytes is larger than the device's memory of "
                                          f"{lim.global_mem_bytes} bytes")
    if lim.global_mem_bytes is not None and need > lim.global_mem_bytes:
        raise SpecError("args", f"the buffers need {need} bytes, more than the device's memory of "
                                f"{lim.global_mem_bytes} bytes")
    uniform_only = "-cl-uniform-work-group-size" in s.build_options
    for li, ln in enumerate(s.launches):
        where = s.launch_where(li) or "local_size"
        local = sum(_local_nbytes(s, a) for a in ln.args)
        if lim.local_mem_bytes is not None and local > lim.local_mem_bytes:
            raise SpecError(where, f"local args need {local} bytes per work-group, the device has "
                                   f"{lim.local_mem_bytes}")
        if ln.local_size is None:
            continue
        if not ln.uniform:
            dim, g, loc = next((i, g, x) for i, (g, x) in enumerate(zip(ln.global_size, ln.local_size, strict=True))
                               if g % x)
            msg = f"local size {loc} does not divide global size {g} in dimension {dim}"
            if uniform_only:
                raise SpecError(where, f"{msg}, and the build option -cl-uniform-work-group-size forbids partial "
                                       f"work-groups")
            if lim.non_uniform_work_groups is False:
                ver = f"OpenCL {lim.opencl_version}" if lim.opencl_version else "its OpenCL version unknown"
                raise SpecError(where, f"{msg}: a partial (non-uniform) work-group, which this device ({ver}) "
                                       f"does not support; {NON_UNIFORM_HELP}")
        wg = math.prod(ln.local_size)
        if lim.max_work_group_size is not None and wg > lim.max_work_group_size:
            raise SpecError(where, f"work-group of {wg} work items exceeds the device's maximum of "
                                   f"{lim.max_work_group_size} (local size {'x'.join(map(str, ln.local_size))})")
        if lim.max_work_item_sizes is not None:
            for dim, (loc, mx) in enumerate(zip(ln.local_size, lim.max_work_item_sizes, strict=False)):
                if loc > mx:
                    raise SpecError(where, f"local size {loc} in dimension {dim} exceeds the device's maximum "
                                           f"of {mx}")
    return s


def _local_nbytes(s: ComputeSpec, a: int | ScalarArg | LocalArg) -> int:
    if isinstance(a, int):
        a2 = s.args[a]
        return a2.nbytes if isinstance(a2, LocalArg) else 0
    return a.nbytes if isinstance(a, LocalArg) else 0
