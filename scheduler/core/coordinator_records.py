"""The coordinator core's configuration and records: `CoordinatorConfig`, the answer to a submit
(`SubmitAnswer`), what it keeps per job (`JobRecord`: state, attempt, failures, holder, lease, queue place)
and its counters (`CoordinatorStats`). Plain data; the state machine that changes them is `coordinator_core.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scheduler.core.job import Job, JobState, Result
from scheduler.core.leases import LeaseConfig
from scheduler.core.placement import Candidate


@dataclass
class CoordinatorConfig:
    lease_s: float = 6.0  # the worker renews every lease_s/3
    claim_timeout_s: float = 2.0  # an offer not answered within this is given up (attempt+1 elsewhere)
    max_in_flight: int = 1024
    max_queued: int = 10_000
    retry_backoff_s: float = 0.05  # after every candidate refused: wait, doubling per round
    max_retry_backoff_s: float = 2.0
    no_candidate_grace_s: float = 10.0  # a re-placement finding no peer waits this long before failing
    wait_tolerance: float = 1.25  # an offer's max_wait_s: (next-best ECT - this one's rtt and cost) x this
    finished_retention_s: float = 3600.0
    max_finished: int = 100_000
    standing_penalty_lost: float = 0.05  # lost lease / connection while holding jobs (once per lease_s)
    standing_floor_lost: float = 0.5  # crashes alone never push a peer below this (they are not malice)
    standing_penalty_bad_result: float = 0.25  # result failed verification
    standing_reward: float = 0.01  # a good result
    standing_penalty_capacity_lie: float = 0.01  # a refused claim a fresh advert said had room (see _capacity_lie)
    fresh_load_s: float = 2.0  # an advert this young shows the load its sender had (changes go out within ~0.1 s)
    poison_crashes: int = 2  # a job whose attempts crashed this many runners (on different peers) fails
    leases: LeaseConfig = field(default_factory=LeaseConfig)  # slot leases (max_leases=0: none)


@dataclass(frozen=True)
class SubmitAnswer:
    job_id: str
    accepted: bool
    state: JobState | None = None
    position: int = 0  # > 0: waiting at the coordinator, this many jobs ahead (itself included)
    reason: str = ""  # why refused (or the reason of the final state of an existing job)
    code: str = ""  # saturated | no_match | deadline | invalid | conflict | "" (accepted)
    duplicate: bool = False  # this job id was known: the answer is about the existing job

    def message(self) -> str:
        if not self.accepted:
            return self.reason if self.reason.startswith("rejected") else f"rejected: {self.reason}"
        if self.position:
            return f"queued (position {self.position})"
        return (self.state or JobState.SUBMITTED).value


@dataclass
class JobRecord:
    job: Job
    submitted_at: float
    state: JobState = JobState.SUBMITTED
    reason: str = ""
    attempt: int = 0
    failures: list[str] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)
    peer: str = ""  # holder of the current attempt ("" = none)
    device: str = ""
    offer_pending: bool = False
    offer_sent_at: float = 0.0
    claim_deadline: float = 0.0
    lease_expires: float = 0.0
    candidates: list[Candidate] = field(default_factory=list)
    placed_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: Result | None = None
    seq: int = 0  # queue order within its priority class
    queued: bool = False  # in the ready queue
    retry_at: float | None = None  # waiting to try placement again
    backoff_s: float = 0.0
    no_candidate_since: float | None = None
    lease_id: str = ""  # the current attempt went out on this slot lease ("" = through a claim)
    asked_lease: bool = False  # the pending offer asked for a lease
    est_run_s: float = 0.0  # the pending offer's estimate of the run time there

    @property
    def job_id(self) -> str:
        return self.job.job_id

    def summary(self) -> dict[str, Any]:
        """For `mesh-node job ID` / `jobs` (msgpack/JSON-able)."""
        return {"id": self.job_id, "kind": self.job.kind, "state": self.state.value, "reason": self.reason,
                "priority": self.job.priority.value, "attempt": self.attempt, "failures": list(self.failures),
                "peer": self.peer or (self.result.worker if self.result else ""), "submitted_by": self.job.submitted_by,
                "ok": self.result.ok if self.result else None}


@dataclass
class CoordinatorStats:
    submitted: int = 0
    refused: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    offers: int = 0
    claims_accepted: int = 0
    claims_rejected: int = 0
    claims_timed_out: int = 0
    retries: int = 0
    duplicates_dropped: int = 0
    deadline_misses: int = 0
    verification_failures: int = 0
    max_queued: int = 0
    placements: int = 0  # placement decisions made (a job sent on a lease needs none)


def short_peer(peer_id: str) -> str:
    """A peer id as failure reasons show it: its first 12 characters."""
    return peer_id[:12] + ("…" if len(peer_id) > 12 else "")


__all__ = ["CoordinatorConfig", "CoordinatorStats", "JobRecord", "SubmitAnswer", "short_peer"]
