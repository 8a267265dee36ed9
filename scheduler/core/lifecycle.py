"""The job lifecycle: one table of (state, event) -> state, and nothing else moves a job.

    SUBMITTED --accepted--> PLACED --started--> RUNNING
        ^  |                  |  |                |  |
        +--+---- lost --------+--|----------------+  |       (attempt lost: placed again, attempt + 1)
           |                     |                   |
           +---- succeeded / failed / cancelled -----+--> DONE / FAILED / CANCELLED   (terminal: no way out)

`resumed` is journal recovery: a coordinator that restarts places every unfinished job again. The
coordinator core, journal recovery and the simulation all move jobs through `advance`, which refuses any
pair that is not in the table (`IllegalTransition`): a bug shows up where it happens, not as a job stuck in
a state nothing expects.
"""

from __future__ import annotations

import enum

from scheduler.core.job import JobState


class JobEvent(enum.StrEnum):
    ACCEPTED = "accepted"  # a worker accepted the claim
    STARTED = "started"  # the worker reports the attempt runs
    LOST = "lost"  # the attempt is lost (worker gone, lease expired, retryable error, rejected result)
    SUCCEEDED = "succeeded"  # a good result was delivered
    FAILED = "failed"  # a failed result, attempts exhausted, timeout, deadline, no worker can take it
    CANCELLED = "cancelled"  # the client cancelled it
    RESUMED = "resumed"  # the coordinator restarted: an unfinished journaled job is placed again


class IllegalTransition(RuntimeError):
    def __init__(self, state: JobState, event: JobEvent) -> None:
        super().__init__(f"a {state.value} job cannot take the event {event.value!r}")
        self.state, self.event = state, event


S, E = JobState, JobEvent
_ACTIVE = (S.SUBMITTED, S.PLACED, S.RUNNING)

TRANSITIONS: dict[tuple[JobState, JobEvent], JobState] = {
    (S.SUBMITTED, E.ACCEPTED): S.PLACED,
    (S.PLACED, E.STARTED): S.RUNNING,
    **{(s, E.LOST): S.SUBMITTED for s in _ACTIVE},
    **{(s, E.RESUMED): S.SUBMITTED for s in _ACTIVE},
    **{(s, E.SUCCEEDED): S.DONE for s in _ACTIVE},
    **{(s, E.FAILED): S.FAILED for s in _ACTIVE},
    **{(s, E.CANCELLED): S.CANCELLED for s in _ACTIVE},
}

# the event that ends a job in each terminal state
FINISHING_EVENT = {S.DONE: E.SUCCEEDED, S.FAILED: E.FAILED, S.CANCELLED: E.CANCELLED}


def advance(state: JobState, event: JobEvent) -> JobState:
    """The state after `event`; IllegalTransition if the table has no such move."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def allowed(before: JobState, after: JobState) -> bool:
    """Whether some event moves a job from `before` to `after` (for observers that only see states)."""
    return any(s is before and t is after for (s, _e), t in TRANSITIONS.items())


__all__ = ["FINISHING_EVENT", "IllegalTransition", "JobEvent", "TRANSITIONS", "advance", "allowed"]
