"""Why the executor refuses a job at submit: `Refused` and its kinds.

`Refused` carries a short `reason` code (the executor counts refusals by it; the node reports a refused job
as failed to start, with the message); `Saturated` and `DeadlineUnmeetable` also carry the numbers behind the
refusal. Raised by the priority queues at admission (`worker.priority_queues`), by the executor's `submit()`
and by `Executor.reserved_slot` (no free slot for a render session).
"""

from __future__ import annotations

import math


class Refused(Exception):
    """A job the executor will not take; `reason` is a short code, the message says why."""

    reason = "refused"


class Saturated(Refused):
    reason = "saturated"

    def __init__(self, message: str, queued: int = 0, max_queued: int = 0) -> None:
        super().__init__(message)
        self.queued = queued
        self.max_queued = max_queued


class DeadlineUnmeetable(Refused):
    reason = "deadline"

    def __init__(self, message: str, estimated_finish: float = math.inf, deadline: float = 0.0) -> None:
        super().__init__(message)
        self.estimated_finish = estimated_finish
        self.deadline = deadline


class Unsatisfiable(Refused):
    reason = "unsatisfiable"


class DuplicateJob(Refused):
    reason = "duplicate"
