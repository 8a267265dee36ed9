"""Errors of compute jobs. `SpecError`: a bad spec, found before any transfer (its `field` names where). The
run-time failures all derive from `ComputeError`, whose `reason` is a short code for metrics and
clients and whose message is what the job's failure says.

Messages are kept short enough to survive the job wire's 1 KiB failure reason; the full build log is in
`BuildError.log` (and `to_dict()`), for a transport that carries structured detail.
"""

from __future__ import annotations

from typing import Any

from worker.kinds import SpecError as _BaseSpecError

MESSAGE_LOG_CHARS = 700  # how much of a build log goes into the one-line failure message


class SpecError(_BaseSpecError):
    """The spec is invalid; `field` names the offending field (e.g. "args[2].dtype"), '' for the whole spec."""


def cl_status_name(code: int | None) -> str:
    """OpenCL's name of a status code: -54 -> "CL_INVALID_WORK_GROUP_SIZE" ("CL_ERROR_<code>" if unknown)."""
    if code is None:
        return "CL_ERROR"
    try:
        # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
        import pyopencl as cl

        for name in dir(cl.status_code):
            if not name.startswith("_") and getattr(cl.status_code, name) == code:
                return f"CL_{name}"
    except ImportError:  # pragma: no cover - pyopencl is a dependency
        pass
    return f"CL_ERROR_{code}"


_HINTS = {
    "CL_INVALID_WORK_GROUP_SIZE": "the local size does not fit the kernel: its reqd_work_group_size, its "
                                  "maximum work-group size, or a global size that is not a multiple of it",
    "CL_INVALID_WORK_ITEM_SIZE": "a local size exceeds the device's maximum in that dimension",
    "CL_INVALID_GLOBAL_WORK_SIZE": "the global size is 0 or exceeds what the device can address",
    "CL_INVALID_ARG_SIZE": "the value's size differs from the parameter's type (check the dtype)",
    "CL_INVALID_ARG_VALUE": "the value does not fit the parameter (a buffer for a by-value parameter, or the reverse)",
    "CL_INVALID_MEM_OBJECT": "a buffer was passed where the parameter is not a buffer (an image?)",
    "CL_INVALID_SAMPLER": "a sampler_t parameter needs a sampler",
    "CL_INVALID_KERNEL_ARGS": "some argument was never set",
    "CL_OUT_OF_RESOURCES": "the device ran out of resources (registers, local memory, or a fault in the kernel)",
    "CL_MEM_OBJECT_ALLOCATION_FAILURE": "the device could not allocate the buffers",
    "CL_OUT_OF_HOST_MEMORY": "the host ran out of memory",
    "CL_INVALID_BUFFER_SIZE": "a buffer size is 0 or above the device's largest allocation",
}


def describe_cl_error(e: BaseException) -> str:
    """A pyopencl error as "CL_INVALID_WORK_GROUP_SIZE (-54) in clEnqueueNDRangeKernel: <hint>"."""
    code = getattr(e, "code", None)
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    name = cl_status_name(code)
    routine = getattr(e, "routine", None)
    text = f"{name} ({code})" if code is not None else name
    if routine:
        text += f" in {routine}"
    hint = _HINTS.get(name)
    if hint:
        text += f": {hint}"
    elif code is None:
        text += f": {e}"
    return text


class ComputeError(RuntimeError):
    """A compute job failed while running. `reason`: "build", "time_limit", "kernel", "memory", "device"."""

    reason = "error"

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": str(self)}


class BuildError(ComputeError):
    """The program failed to build; `log` is the compiler's log (paths of the worker's files removed)."""

    reason = "build"

    def __init__(self, log: str, *, options: tuple[str, ...] = (), source_sha256: str = "", note: str = "") -> None:
        self.log = log
        self.options = options
        self.source_sha256 = source_sha256
        head = log.strip()
        if len(head) > MESSAGE_LOG_CHARS:
            head = head[:MESSAGE_LOG_CHARS] + f" ... [{len(log) - MESSAGE_LOG_CHARS} more characters]"
        opts = " ".join(options) or "none"
        super().__init__(f"OpenCL build failed{note} (options: {opts}):\n{head or '(the compiler gave no log)'}")

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": str(self), "log": self.log, "options": list(self.options),
                "source_sha256": self.source_sha256}


class TimeLimitExceeded(ComputeError):
    """The job ran past its time limit. `quarantined`: a kernel was still running when the job was failed."""

    reason = "time_limit"

    def __init__(self, limit_s: float, where: str, *, quarantined: bool) -> None:
        self.limit_s = limit_s
        self.where = where
        self.quarantined = quarantined
        tail = ("; the device stays quarantined until that kernel ends" if quarantined else "")
        super().__init__(f"exceeded time limit of {limit_s:g} s ({where}){tail}")


class KernelFailed(ComputeError):
    """Enqueueing or executing a kernel failed (out of resources, invalid args at enqueue, a device fault)."""

    reason = "kernel"


class OutOfDeviceMemory(ComputeError):
    reason = "memory"


class DeviceUnavailable(ComputeError):
    """The device is quarantined (a kernel of an earlier job still runs) and did not free up in time."""

    reason = "device"
