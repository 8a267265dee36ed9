"""What a runner call can end in, other than its result: the errors the daemon side of runners raises.

`RunnerCrashed` (the runner died holding the job, or broke the protocol), `RunnerTimeLimit` (the call ran past
its time limit: killed and replaced), `RunnerUnavailable` (no runner for the device) and `TaskFailed` (the task
raised inside the runner, which carries on); all are `RunnerError`s, whose `type_name` the job's error shows.
"""

from __future__ import annotations


class RunnerError(Exception):
    """Base of runner failures. `type_name` is what the job's error message shows as the exception type."""

    type_name = "RunnerError"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.type_name


class RunnerCrashed(RunnerError):
    """The runner died while it held the job (signal, exit, out of memory, protocol violation)."""

    type_name = "RunnerCrashed"


class RunnerTimeLimit(RunnerError):
    """The call ran past its time limit (or its CPU-time limit): the runner was killed and replaced."""

    type_name = "TimeLimitExceeded"


class RunnerUnavailable(RunnerError):
    """No runner could be had for the device (it went away, or runners keep failing to start)."""

    type_name = "RunnerUnavailable"


class TaskFailed(RunnerError):
    """The task raised inside the runner; `type_name`, `field` and `kind` are the remote exception's."""

    def __init__(self, type_name: str, message: str, field: str | None = None, kind: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name or "TaskFailed"
        self.field = field
        self.kind = kind


__all__ = ["RunnerCrashed", "RunnerError", "RunnerTimeLimit", "RunnerUnavailable", "TaskFailed"]
