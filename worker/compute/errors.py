"""Errors of compute jobs. `SpecError` (bad spec, found before any transfer) lives in `worker.compute.spec`;
the run-time failures here all derive from `ComputeError`, whose `reason` is a short code for metrics and
clients and whose message is what the job's failure says.

Messages are kept short enough to survive the job wire's 1 KiB failure reason; the full build log is in
`BuildError.log` (and `to_dict()`), for a transport that carries structured detail.
"""

from __future__ import annotations

from typing import Any

MESSAGE_LOG_CHARS = 700  # how much of a build log goes into the one-line failure message


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
