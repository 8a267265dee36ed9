"""A job as the executor sees it: the `JobRequest` submitted, the `JobHandle` returned, the `Outcome` it ends with.

`make_outcome` builds an Outcome: the kind's Result (an empty one when it did not finish) completed with how
the run went (ok, error, crashed, device, timings); that same Result is what the node reports to the job's
coordinator.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from worker.kinds import Requirements, Result
from worker.priority import Priority

log = logging.getLogger("gpumesh.worker")


@dataclass
class JobRequest:
    """A job for this node's executor. `deadline` is an absolute trio time (required for realtime)."""

    job_id: str
    kind: str
    spec: dict[str, Any] = field(default_factory=dict)
    input: bytes | AsyncIterable[bytes] | None = None
    input_size: int | None = None  # required when `input` is a stream
    priority: Priority | str = Priority.BATCH
    deadline: float | None = None
    requirements: Requirements | None = None  # the client's, merged with the kind's
    device_id: str | None = None  # pin to a device (else the executor picks)
    timeout_s: float | None = None  # run time limit from first start
    progress: Callable[[float, str | None], None] | None = None

    def __post_init__(self) -> None:
        self.priority = Priority.parse(self.priority)
        if self.input_size is None:
            if self.input is None:
                self.input_size = 0
            elif isinstance(self.input, bytes | bytearray | memoryview):
                self.input_size = len(self.input)
            else:
                raise ValueError("input_size is required with a streamed input")
        elif isinstance(self.input, bytes | bytearray | memoryview) and len(self.input) != self.input_size:
            raise ValueError(f"input_size {self.input_size} does not match the {len(self.input)}-byte input")
        if self.input_size < 0:
            raise ValueError("input_size must not be negative")
        if self.priority is Priority.REALTIME and self.deadline is None:
            raise ValueError("a realtime job needs a deadline")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError("timeout_s must be positive")


@dataclass(frozen=True)
class Outcome:
    """How a job ended here: its `state`, and its `result`: what the kind returned (an empty body when it did
    not finish), completed with how the run went (`ok`, `error`, `crashed`, `device`, `timings`: queue_s,
    run_s). That same Result is what the node reports to the job's coordinator."""

    job_id: str
    state: str  # "done" | "failed" | "cancelled" | "crashed" (its runner died under it)
    result: Result
    late: bool = False  # realtime job that ended after its deadline

    @property
    def ok(self) -> bool:
        return self.state == "done"

    @property
    def error(self) -> str | None:
        return self.result.error or None

    @property
    def device_id(self) -> str:
        return self.result.device

    @property
    def queued_s(self) -> float:
        """Admission to first start."""
        return self.result.timings["queue_s"]

    @property
    def run_s(self) -> float:
        """First start to end."""
        return self.result.timings["run_s"]


def make_outcome(job_id: str, state: str, result: Result | None = None, error: str | None = None, device_id: str = "",
             queued_s: float = 0.0, run_s: float = 0.0, late: bool = False) -> Outcome:
    """The Outcome of a job that ended in `state`: the kind's `result` (if it returned one) completed."""
    r = result or Result()
    return Outcome(job_id, state, Result(  # every field of `r`, the run's own set here (not `replace`: ~4x slower)
        r.body, r.output, r.job_id, r.attempt, ok=state == "done", error=error or "", retryable=r.retryable,
        output_size=r.output_size, output_sha256=r.output_sha256, worker=r.worker, device=device_id,
        timings={"queue_s": queued_s, "run_s": run_s}, crashed=state == "crashed"), late)


class JobHandle:
    """What `submit()` returns: position, state, progress, and `await wait()` for the Outcome."""

    def __init__(self, job_id: str, device_id: str, position: int, priority: Priority) -> None:
        self.job_id = job_id
        self.device_id = device_id
        self.position = position  # at admission: 0 = started at once, N = N-th in line (see Executor.position)
        self.priority = priority
        self.state = "queued"
        self.progress = 0.0
        self.progress_message: str | None = None
        self.outcome: Outcome | None = None
        self.started = trio.Event()  # set when the job first gets a slot
        self._done = trio.Event()
        self._callbacks: list[Callable[[Outcome], None]] = []

    async def wait(self) -> Outcome:
        await self._done.wait()
        assert self.outcome is not None
        return self.outcome

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def when_done(self, fn: Callable[[Outcome], None]) -> None:
        """Call `fn(outcome)` when the job ends (at once if it has): for a caller that keeps no task per job.
        `fn` runs inside the executor: it must not block, and an error it raises is logged, not raised."""
        if self.outcome is not None:
            fn(self.outcome)
        else:
            self._callbacks.append(fn)

    def _finish(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.state = outcome.state
            self._done.set()
            for fn in self._callbacks:
                try:
                    fn(outcome)
                except Exception:
                    log.exception("a when_done callback of job %s failed", self.job_id)
            self._callbacks.clear()

    def __repr__(self) -> str:
        return f"<JobHandle {self.job_id} {self.state} on {self.device_id} pos={self.position}>"
