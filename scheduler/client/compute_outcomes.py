"""What a compute job on the mesh ends in, as the SDK (scheduler/client/compute_sdk.py) returns or raises it:
`ComputeRun` (the decoded outputs, where and how long), and the `ComputeFailed` family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduler.client.client import JobFailed, JobResult
from worker.compute.runner import ComputeResult

# ---- errors --------------------------------------------------------------------------------------------------

class ComputeFailed(JobFailed):
    """A compute job did not produce outputs. `reason` is the worker's or coordinator's message; `worker` the
    peer that ran it (if any); `index` the batch item (in `map`/`run_many`)."""

    def __init__(self, job_id: str, state: str, reason: str, *, worker: str = "") -> None:
        super().__init__(job_id, state, reason)
        self.worker = worker
        self.index: int | None = None


class BuildFailed(ComputeFailed):
    """The program did not compile; `log` is the compiler's log (as much as the job's failure reason carries)."""

    def __init__(self, job_id: str, state: str, reason: str, *, worker: str = "") -> None:
        super().__init__(job_id, state, reason, worker=worker)
        body = reason.split(":", 1)[1] if reason.startswith("BuildError:") else reason
        head, sep, log = body.partition(":\n")
        self.log = log if sep else body.strip()


class TimeLimitExceeded(ComputeFailed):
    """The job ran past its time limit on the worker (which failed it on time and stays healthy)."""


class ComputeRefused(ComputeFailed):
    """Refused before running. `code`: invalid_spec, forbidden, unauthenticated, no_match, saturated, quota,
    too_large (client-side memory check), ..."""

    def __init__(self, job_id: str, code: str, reason: str) -> None:
        super().__init__(job_id, "rejected", reason)
        self.code = code


class BufferTooLarge(ComputeRefused):
    """The job's buffers need more memory than any OpenCL device on the mesh has (nothing was sent)."""


class VerificationFailed(ComputeFailed):
    """Redundant runs on two workers disagree. `workers`: the two peers; `job_ids`: their jobs; `output`: the
    output that differs; `detail`: where and by how much."""

    def __init__(self, job_ids: tuple[str, str], workers: tuple[str, str], output: str, detail: str) -> None:
        super().__init__(job_ids[0], "mismatch",
                         f"redundant results differ: workers {workers[0]} and {workers[1]} returned different "
                         f"output {output!r} ({detail}); at least one of them is faulty or lying")
        self.job_ids, self.workers, self.output, self.detail = job_ids, workers, output, detail


class RedundancyUnavailable(ComputeFailed):
    """Every copy of a redundant job ran on the same worker: no second peer to compare with."""


_FAILURES: dict[str, type[ComputeFailed]] = {"BuildError": BuildFailed, "TimeLimitExceeded": TimeLimitExceeded}


def _failure(res: JobResult) -> ComputeFailed:
    name = res.reason.split(":", 1)[0]
    cls = _FAILURES.get(name, ComputeFailed)
    if name == "SpecError" or name == "SourceNotCached":
        return ComputeRefused(res.job_id, "invalid_spec", res.reason)
    return cls(res.job_id, res.state, res.reason, worker=res.worker)


# ---- results -------------------------------------------------------------------------------------------------

@dataclass
class ComputeRun:
    """One job's outcome: the decoded outputs (`result`, a `worker.compute.runner.ComputeResult`), where it ran,
    and timings: `wall_s` (submit to decoded outputs, on the client), `queue_s`/`run_s` (the worker's executor),
    `kernel_s` (device time of the launches), `build_s` and `cache_hit` (the program's build on that worker)."""

    job_id: str
    worker: str
    result: ComputeResult
    wall_s: float
    queue_s: float = 0.0
    run_s: float = 0.0
    verified_by: tuple[str, ...] = ()  # redundant: the workers whose outputs agreed
    job_ids: tuple[str, ...] = ()  # redundant: every copy's job id

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        return {o.name or f"arg{o.index}": o.array for o in self.result.outputs}

    def value(self) -> np.ndarray | dict[str, np.ndarray]:
        """The single output array, or every output by name when there are several."""
        outs = self.outputs
        return next(iter(outs.values())) if len(outs) == 1 else outs

    def __getitem__(self, key: int | str) -> np.ndarray:
        return self.result[key]

    @property
    def timings(self) -> dict[str, Any]:
        r = self.result
        return {"wall_s": self.wall_s, "queue_s": self.queue_s, "run_s": self.run_s, "kernel_s": r.kernel_s,
                "device_run_s": r.run_s, "build_s": r.build_s, "cache_hit": r.cache_hit, "launches": r.launches,
                "bytes_in": r.bytes_in, "bytes_out": r.bytes_out}


__all__ = ["BufferTooLarge", "BuildFailed", "ComputeFailed", "ComputeRefused", "ComputeRun", "RedundancyUnavailable",
           "TimeLimitExceeded", "VerificationFailed"]
