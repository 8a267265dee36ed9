"""Prometheus metrics of the scheduler (coordinator and worker claim cores, placement).

Module-level objects on the default registry, updated through the observers below, which the node passes
into the pure cores (the cores never import this module). Latencies are
histograms in seconds, per priority class where the issue asks for it. Label values are bounded: job kinds
are capped (`kind_label`), reasons are fixed short codes.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from mesh import metrics as mesh_metrics
from scheduler.core.job import JobState, Priority
from scheduler.core.observer import CoordinatorObserver, WorkerObserver

_LAT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_DECISION_BUCKETS = (10e-6, 25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3)

JOBS_SUBMITTED = Counter("gpumesh_jobs_submitted_total", "Jobs accepted by this node as coordinator",
                         ["kind", "priority"])
JOBS_REFUSED = Counter("gpumesh_jobs_refused_total", "Submissions refused at once, by reason",
                       ["reason"])  # saturated, no_match, deadline, invalid, conflict
JOBS_FINISHED = Counter("gpumesh_jobs_finished_total", "Jobs that reached a final state, by kind and state",
                        ["kind", "state"])
JOBS_ACTIVE = Gauge("gpumesh_jobs_active", "Jobs held by this coordinator and not finished, by state", ["state"])
COORDINATOR_QUEUE = Gauge("gpumesh_coordinator_queued_jobs", "Jobs waiting at this coordinator for capacity")
PLACEMENT_SECONDS = Histogram("gpumesh_placement_decision_seconds", "Time to rank candidates for one job",
                              buckets=_DECISION_BUCKETS)
QUEUE_WAIT_SECONDS = Histogram("gpumesh_job_queue_wait_seconds",
                               "Submission to start of the attempt that ran it, per priority class", ["priority"],
                               buckets=_LAT_BUCKETS)
RUN_SECONDS = Histogram("gpumesh_job_run_seconds", "Start to result of the attempt that finished, per priority class",
                        ["priority"], buckets=_LAT_BUCKETS)
LATENCY_SECONDS = Histogram("gpumesh_job_latency_seconds", "Submission to final state (end to end), per priority class",
                            ["priority"], buckets=_LAT_BUCKETS)
RETRIES = Counter("gpumesh_job_retries_total", "Attempts lost and placed again, by reason",
                  ["reason"])  # worker_lost, lease_expired, advert_expired, retryable_error, verification
RESULTS_DROPPED = Counter("gpumesh_results_dropped_total", "Results not delivered: late duplicates and stale attempts",
                          ["reason"])  # duplicate, stale_attempt, unknown_job
CLAIMS = Counter("gpumesh_claims_total", "Offers answered (or not) by workers, seen by the coordinator",
                 ["outcome"])  # accepted, rejected, timeout, stale
LEASES = Counter("gpumesh_leases_total", "Slot lease events of this coordinator: acquired, direct (a job sent on "
                 "a lease, no placement or claim), idle/expired (given back), refused, revoked, lost", ["event"])
DEADLINE_MISSES = Counter("gpumesh_deadline_misses_total",
                          "Realtime jobs that missed their deadline after acceptance (refused ones are not counted)")
WORKER_OFFERS = Counter("gpumesh_worker_offers_total", "Offers received by this node as worker, by answer",
                        ["answer"])  # accepted, rejected
WORKER_JOBS = Gauge("gpumesh_worker_claimed_jobs", "Jobs this node as worker holds under lease")
WORKER_CANCELS = Counter("gpumesh_worker_cancels_total", "Cancels that reached a job held by this worker")

_MAX_KINDS = 64
_kinds: set[str] = set()


def kind_label(kind: str) -> str:
    """The job kind as a label value, "other" beyond the first 64 distinct kinds (bounded cardinality)."""
    if kind in _kinds:
        return kind
    if len(_kinds) < _MAX_KINDS:
        _kinds.add(kind)
        return kind
    return "other"


_ACTIVE = (JobState.SUBMITTED, JobState.PLACED, JobState.RUNNING)


@functools.cache
def _child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once (label values are bounded: capped kinds, fixed codes); a per-job
    `.labels()` call costs a lock and a dict of tuples each time."""
    return metric.labels(*values)


class PrometheusCoordinatorObserver(CoordinatorObserver):
    def submitted(self, kind: str, priority: Priority) -> None:
        _child(JOBS_SUBMITTED, kind_label(kind), priority.value).inc()

    def refused(self, code: str) -> None:
        _child(JOBS_REFUSED, code).inc()

    def state_changed(self, before: JobState | None, after: JobState) -> None:
        if before in _ACTIVE:
            _child(JOBS_ACTIVE, before.value).dec()
        if after in _ACTIVE:
            _child(JOBS_ACTIVE, after.value).inc()

    def finished(self, kind: str, state: JobState, priority: Priority, latency_s: float) -> None:
        _child(JOBS_FINISHED, kind_label(kind), state.value).inc()
        _child(LATENCY_SECONDS, priority.value).observe(latency_s)

    def claim(self, outcome: str) -> None:
        _child(CLAIMS, outcome).inc()

    def retry(self, reason: str) -> None:
        _child(RETRIES, reason).inc()

    def result_dropped(self, reason: str) -> None:
        _child(RESULTS_DROPPED, reason).inc()

    def deadline_missed(self) -> None:
        DEADLINE_MISSES.inc()

    def queue_wait(self, priority: Priority, seconds: float) -> None:
        _child(QUEUE_WAIT_SECONDS, priority.value).observe(seconds)

    def run_time(self, priority: Priority, seconds: float) -> None:
        _child(RUN_SECONDS, priority.value).observe(seconds)

    def placement_decision(self, seconds: float) -> None:
        PLACEMENT_SECONDS.observe(seconds)

    def queued(self, delta: int) -> None:
        COORDINATOR_QUEUE.inc(delta)

    def lease(self, event: str) -> None:
        _child(LEASES, event).inc()

    def advert_lie(self, what: str) -> None:
        _child(mesh_metrics.ADVERT_LIES, what).inc()


class PrometheusWorkerObserver(WorkerObserver):
    def offer_answered(self, answer: str) -> None:
        _child(WORKER_OFFERS, answer).inc()

    def held(self, delta: int) -> None:
        WORKER_JOBS.inc(delta)

    def cancelled(self) -> None:
        WORKER_CANCELS.inc()
