"""Placing the coordinator's jobs: how a job goes out to a worker.

A job ready to go (`_pump`: in queue order, while there is room in flight) goes on a held slot lease of its
shape if there is one (`_direct`: placed at once, no placement, no claim), else it is placed (`Placer`) and
offered to its candidates in turn (`_offer_next`: each offer a new attempt, journaled before it goes out, with
how long it may wait there). No candidate left: it waits a doubling backoff and tries again, and fails after
`no_candidate_grace_s` without a peer (at once for a missed deadline, or when it asked to be refused when
saturated). An offer given up on (timed out, its worker gone) is withdrawn and the next candidate asked.
"""

from __future__ import annotations

from collections.abc import Iterable

from scheduler.core.coordinator_actions import (
    Action,
    JournalAttempt,
    SendCancel,
    SendDirect,
    SendOffer,
    StateChanged,
)
from scheduler.core.coordinator_records import JobRecord
from scheduler.core.coordinator_state import CoordinatorState
from scheduler.core.job import Cancel, Job, JobState, Offer, WhenSaturated
from scheduler.core.leases import Lease, shape_of
from scheduler.core.placement import Candidate, Placement


class CoordinatorDispatch(CoordinatorState):
    """Sending jobs out: by lease, or by placement and claim, with backoff when no one takes them."""

    def _pump(self, now: float, acts: list[Action]) -> None:
        """Place waiting jobs while there is room in flight."""
        while self._ready and self._in_flight < self.cfg.max_in_flight:
            job_id = self._ready[0][3]
            rec = self._jobs[job_id]
            self._dequeue(rec)
            self._vtime = max(self._vtime, rec.seq)
            self._dispatch(rec, now, acts)

    def _dispatch(self, rec: JobRecord, now: float, acts: list[Action]) -> None:
        lease = self.leases.route(shape_of(rec.job), now, rec.excluded)
        if lease is not None:
            self._direct(rec, lease, now, acts)
            return
        placement = self._timed_place(rec.job, now, rec.excluded)
        if placement.ok:
            rec.no_candidate_since = None
            rec.candidates = placement.candidates
            self._offer_next(rec, now, acts)
            return
        if placement.code == "deadline":
            self.stats.deadline_misses += 1
            self.obs.deadline_missed()
            self._finish(rec, JobState.FAILED, self._with_failures(rec, placement.reason), now, acts)
            return
        if rec.no_candidate_since is None:
            rec.no_candidate_since = now
        if now - rec.no_candidate_since >= self.cfg.no_candidate_grace_s:
            self._finish(rec, JobState.FAILED, self._with_failures(rec, placement.reason), now, acts)
            return
        self._wait_retry(rec, now)

    def _offer_next(self, rec: JobRecord, now: float, acts: list[Action]) -> None:
        """Offer to the next remaining candidate; none left: back to waiting (after a backoff)."""
        while rec.candidates:
            c = rec.candidates.pop(0)
            if c.peer_id in rec.excluded or not self._alive(c.peer_id, now):
                continue
            self._hold(rec, c)
            self.placer.note_offer(c.peer_id, c.device_id)
            rec.attempt += 1
            rec.offer_pending = True
            rec.offer_sent_at = now
            rec.claim_deadline = now + self.cfg.claim_timeout_s
            self._push_timer(rec.claim_deadline, "claim", rec, rec.attempt)
            self.stats.offers += 1
            rec.asked_lease = self.leases.wants(shape_of(rec.job), now)
            rec.est_run_s = c.cost_s
            acts.append(JournalAttempt(rec.job_id, rec.attempt, tuple(rec.failures)))
            # how long it may wait there: as long as it runs there, or until the next-best device would have
            # finished it (views are stale: the alternatives are likely busier than they look)
            alts = [x.estimate_s for x in rec.candidates if x.peer_id not in rec.excluded]
            max_wait = None if not alts else max(c.wait_s, c.cost_s, min(alts) - c.rtt_s - c.cost_s) * self.cfg.wait_tolerance
            acts.append(SendOffer(c.peer_id, Offer(rec.job, rec.attempt, c.device_id, self.cfg.lease_s, max_wait,
                                                   c.cost_s, self.peer_id, want_lease=rec.asked_lease)))
            return
        # every candidate of this round refused or vanished: the mesh is saturated for this job right now
        if rec.job.when_saturated is WhenSaturated.REJECT:
            self._finish(rec, JobState.FAILED, self._with_failures(
                rec, "rejected: saturated (every suitable worker refused the offer)"), now, acts)
            return
        self._wait_retry(rec, now)

    def _timed_place(self, job: Job, now: float, exclude: Iterable[str] = ()) -> Placement:
        self.stats.placements += 1
        if self._perf is None:
            return self.placer.place(job, now, exclude)
        t0 = self._perf()
        placement = self.placer.place(job, now, exclude)
        self.obs.placement_decision(self._perf() - t0)
        return placement

    def _hold(self, rec: JobRecord, c: Candidate) -> None:
        if not rec.peer:
            self._in_flight += 1
        rec.peer, rec.device = c.peer_id, c.device_id
        self._by_peer.setdefault(c.peer_id, set()).add(rec.job_id)

    def _direct(self, rec: JobRecord, lease: Lease, now: float, acts: list[Action]) -> None:
        """Send the job on a held slot lease: placed at once (the lease was claimed), no placement, no claim.
        Its attempt is journaled and leased like any other; the worker renews it and sends its result."""
        if not rec.peer:
            self._in_flight += 1
        rec.peer, rec.device, rec.lease_id = lease.peer_id, lease.device_id, lease.lease_id
        self._by_peer.setdefault(lease.peer_id, set()).add(rec.job_id)
        self.leases.sent(lease, rec.job_id, now)
        self.obs.lease("direct")
        rec.attempt += 1
        self._placed(rec, now)
        acts.append(JournalAttempt(rec.job_id, rec.attempt, tuple(rec.failures)))
        acts.append(SendDirect(lease.peer_id, lease.lease_id, Offer(rec.job, rec.attempt, lease.device_id,
                                                                    self.cfg.lease_s, None, 0.0, self.peer_id)))
        acts.append(StateChanged(rec.job_id, JobState.PLACED, rec.attempt, lease.peer_id))

    def _wait_retry(self, rec: JobRecord, now: float) -> None:
        rec.backoff_s = min(self.cfg.max_retry_backoff_s, max(self.cfg.retry_backoff_s, rec.backoff_s * 2))
        rec.retry_at = now + rec.backoff_s
        self._waiting += 1
        self.stats.max_queued = max(self.stats.max_queued, self.queued)
        self._push_timer(rec.retry_at, "retry", rec, 0)

    def _withdraw_offer(self, rec: JobRecord, reason: str, now: float, acts: list[Action]) -> None:
        """Give up on the offer waiting on rec.peer (never accepted, so no attempt is lost): cancel it there, do
        not ask that peer again for this job, and offer it to the next candidate."""
        acts.append(SendCancel(rec.peer, Cancel(rec.job_id, rec.attempt, reason)))
        rec.excluded.add(rec.peer)
        if rec.asked_lease:
            self.leases.not_granted(shape_of(rec.job))
        self._release(rec, now)
        self._offer_next(rec, now, acts)


__all__ = ["CoordinatorDispatch"]
