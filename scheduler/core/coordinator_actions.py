"""What the coordinator core asks its I/O layer to do: the actions its methods return, in order.

    SendOffer(peer_id, offer)       offer the job to a worker (over the data plane; to the local
                                    WorkerCore directly when peer_id is this node)
    SendDirect(peer_id, lease_id, offer)   a job sent on a held slot lease (no claim)
    OpenLease / ReturnLease         open a granted slot lease's stream / give a lease back
    SendCancel(peer_id, cancel)     best effort: stop that attempt
    Deliver(job_id, result)         the job's one result, for the client (at most once per job)
    Finish(job_id, state, reason, result)   the job reached its final state (exactly once per job)
    Crashed(job_id, submitted_by, peer_id, reason)   an attempt crashed its runner: charge the submitter
    StateChanged(job_id, state, attempt, peer_id)   progress, for `mesh-node watch`
    JournalJob / JournalAttempt / JournalFinish     durable records: apply them (Journal.apply) *before*
                                    the actions after them (an offer must not go out before its attempt
                                    is journaled, nor a submit be answered before the job is; the one
                                    exception, a new job's first attempt, may go out while its JournalJob
                                    commits, since nothing about the job survives a crash before that)
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.core.job import Cancel, Job, JobState, Offer, Result


@dataclass(frozen=True)
class SendOffer:
    peer_id: str
    offer: Offer  # offer.to_wire(now) converts the deadline for the wire


@dataclass(frozen=True)
class SendDirect:
    """A job sent on a held slot lease (`leases.py`): placed already, no claim; the worker answers only with a
    Reject if it will not run it (then `on_reject` sends it back to the normal path)."""

    peer_id: str
    lease_id: str
    offer: Offer


@dataclass(frozen=True)
class OpenLease:
    """A worker granted a slot lease: open its stream (`peer.direct`); `lease_lost` if that fails."""

    peer_id: str
    lease_id: str


@dataclass(frozen=True)
class ReturnLease:
    """Give a lease back (close its stream): idle, expired, refused by the worker, or the worker lost."""

    peer_id: str
    lease_id: str
    reason: str


@dataclass(frozen=True)
class SendCancel:
    peer_id: str
    cancel: Cancel


@dataclass(frozen=True)
class Deliver:
    job_id: str
    result: Result


@dataclass(frozen=True)
class Finish:
    job_id: str
    state: JobState
    reason: str
    result: Result | None = None


@dataclass(frozen=True)
class Crashed:
    """An attempt crashed its runner: charge it to the submitter's token (`Quotas.crashed`), not the worker."""

    job_id: str
    submitted_by: str
    peer_id: str
    reason: str


@dataclass(frozen=True)
class StateChanged:
    job_id: str
    state: JobState
    attempt: int
    peer_id: str


@dataclass(frozen=True)
class JournalJob:
    job: Job
    submitted_at: float  # coordinator clock


@dataclass(frozen=True)
class JournalAttempt:
    job_id: str
    attempt: int
    failures: tuple[str, ...]


@dataclass(frozen=True)
class JournalFinish:
    job_id: str
    state: JobState
    reason: str
    result: Result | None
    finished_at: float  # coordinator clock


Action = (SendOffer | SendCancel | Deliver | Finish | StateChanged | JournalJob | JournalAttempt | JournalFinish
          | Crashed | SendDirect | OpenLease | ReturnLease)


__all__ = ["Action", "Crashed", "Deliver", "Finish", "JournalAttempt", "JournalFinish", "JournalJob", "OpenLease",
           "ReturnLease", "SendCancel", "SendDirect", "SendOffer", "StateChanged"]
