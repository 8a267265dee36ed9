"""What the pure cores report as they work, for metrics: passed in, never read or updated inside the cores.

The base classes do nothing. The node passes Prometheus observers (`scheduler.node.metrics`); tests and the
simulation pass none, or their own counters. Label values are bounded by the callers (fixed reason codes,
job kinds capped by the observer).
"""

from __future__ import annotations

from scheduler.core.job import JobState, Priority


class CoordinatorObserver:
    def submitted(self, kind: str, priority: Priority) -> None:
        """A job was accepted by this coordinator (enters SUBMITTED, see `state_changed`)."""

    def refused(self, code: str) -> None:
        """A submission was refused at once (saturated, no_match, deadline, invalid, conflict)."""

    def state_changed(self, before: JobState | None, after: JobState) -> None:
        """A job moved between states (`before` None: it entered, submitted or restored from the journal)."""

    def finished(self, kind: str, state: JobState, priority: Priority, latency_s: float) -> None:
        """A job reached a final state, `latency_s` after it was submitted."""

    def claim(self, outcome: str) -> None:
        """An offer was answered (or not): accepted, rejected, timeout, stale."""

    def retry(self, reason: str) -> None:
        """An attempt was lost and the job placed again (worker_lost, lease_expired, ...)."""

    def result_dropped(self, reason: str) -> None:
        """A result was not delivered (duplicate, stale_attempt, unknown_job)."""

    def deadline_missed(self) -> None:
        """A realtime job missed its deadline after acceptance."""

    def queue_wait(self, priority: Priority, seconds: float) -> None:
        """Submission to the start of the attempt that ran it."""

    def run_time(self, priority: Priority, seconds: float) -> None:
        """Start to result of the attempt that finished."""

    def placement_decision(self, seconds: float) -> None:
        """Time to rank candidates for one job (measured with the core's `perf_clock`)."""

    def queued(self, delta: int) -> None:
        """Jobs waiting at the coordinator for capacity went up or down by `delta`."""

    def lease(self, event: str) -> None:
        """A slot lease event: acquired, direct (a job sent on one), idle / expired (given back), refused (the
        worker would not run a job on it), revoked (worker lost), lost (its stream broke)."""

    def advert_lie(self, what: str) -> None:
        """A peer's advert was caught lying (`capacity`: its claims keep finding none of the room it advertised)."""


class WorkerObserver:
    def offer_answered(self, answer: str) -> None:
        """accepted or rejected."""

    def held(self, delta: int) -> None:
        """Jobs held under lease went up or down by `delta`."""

    def cancelled(self) -> None:
        """A cancel reached a held job."""


__all__ = ["CoordinatorObserver", "WorkerObserver"]
