"""The coordinator's job lifecycle as a pure state machine (sans-IO: events in, actions out).

Every method takes the current time (`now`, any monotonic clock the caller keeps using) and returns a
list of actions for the I/O layer to carry out, in order (`coordinator_actions.py`: offers, cancels, the
one result and final state of a job, progress, and journal records to apply *before* the actions after them).

Lifecycle: submitted -> placed (a worker accepted the offer) -> running (the worker said it started)
-> done | failed | cancelled. The job holds a lease while placed or running, renewed by the worker;
on lease expiry or a lost connection the attempt is lost (an expired advert alone only stops new offers:
gossip runs late under load, the lease says whether the worker lives):
the job is placed again, excluding that worker, until `max_attempts` attempts are lost ("failed on 3
attempts: ..."). A worker's retryable failure counts the same way; a job's own failure is final.
An attempt that crashed its runner (`Result.crashed`: the job's device code killed the process that ran it) is
not a lost lease but the job's doing: it costs the worker no standing, the job is placed once more on another
peer, and after `poison_crashes` crashes it fails ("poison: crashed 2 runners (...)") instead of walking
through the mesh; each crash is a `Crashed(job_id, submitted_by, peer_id, reason)` action, which the I/O
layer charges to the submitter's token.

Attempt numbers: every offer gets the next attempt number, and every message about an attempt carries it,
so a message about any attempt but the current one, or from any worker but the one holding it, is stale
and dropped (results: counted as duplicates or stale). `failures` counts the attempts lost after
acceptance (what `max_attempts` limits); offers a worker refused or never answered cost nothing.

Admission is bounded: at most `max_in_flight` jobs offered/placed/running and `max_queued` waiting here;
beyond that a submit is refused ("rejected: saturated"), and a client that asked not to wait is refused as
soon as its job would have to wait. A realtime job that no device can finish by its deadline, and a job no
peer can run at all, are refused at once with the reason. Memory is bounded: finished jobs are kept
`finished_retention_s` (and at most `max_finished`), after which the journal answers for them.

The parts, one concern a module, each a class built on the parts it uses (`CoordinatorCore` inherits them all):
`coordinator_records.py` (config, answers, per-job records, counters), `coordinator_state.py` (jobs, queue,
timers, the shared transitions), `coordinator_dispatch.py` (placing a job and sending it out),
`coordinator_leases.py` (slot-lease events), `coordinator_standing.py` (standing lost for lost jobs,
capacity lies), `coordinator_claims.py` (accepts, rejects, lease renewals), `coordinator_results.py`
(results, verification, the poison rule); here: submit, cancel, lost workers, timers and restart.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from scheduler.core.coordinator_actions import (
    Action,
    Crashed,
    Deliver,
    Finish,
    JournalAttempt,
    JournalFinish,
    JournalJob,
    OpenLease,
    ReturnLease,
    SendCancel,
    SendDirect,
    SendOffer,
    StateChanged,
)
from scheduler.core.coordinator_claims import CoordinatorClaims
from scheduler.core.coordinator_records import CoordinatorConfig, JobRecord, SubmitAnswer, short_peer
from scheduler.core.coordinator_results import CoordinatorResults
from scheduler.core.job import Accept, Job, JobState, LeaseRenew, Reject, Result, WhenSaturated, WireError
from scheduler.core.leases import shape_of
from scheduler.core.lifecycle import JobEvent, advance


class CoordinatorCore(CoordinatorClaims, CoordinatorResults):
    """One node's coordinator: the jobs submitted to it, from acceptance to their one outcome."""

    # --- events --------------------------------------------------------------------------------------------

    def submit(self, job: Job, now: float) -> tuple[SubmitAnswer, list[Action]]:
        try:
            job = job.with_id().validate()
        except WireError as e:
            return self._refuse(job.job_id, "invalid", str(e)), []
        old = self._jobs.get(job.job_id)
        if old is not None:
            if (old.job.kind, old.job.spec, old.job.input_size) != (job.kind, job.spec, job.input_size):
                return self._refuse(job.job_id, "conflict",
                                    f"job id {job.job_id} is already used by a different job"), []
            return SubmitAnswer(job.job_id, True, old.state, self._position(old), old.reason, duplicate=True), []
        must_wait = self._in_flight >= self.cfg.max_in_flight
        # a held slot lease of this job's shape takes it with no placement and no claim
        lease = None if must_wait or self.queued else self.leases.route(shape_of(job), now)
        placement = None
        if lease is None:
            # a job that cannot run anywhere, or not by its deadline, is refused at once (not queued to fail later)
            placement = self._timed_place(job, now)
            if not placement.ok:
                return self._refuse(job.job_id, placement.code or "no_match", placement.reason), []
        if job.when_saturated is WhenSaturated.REJECT:
            if must_wait:
                return self._refuse(job.job_id, "saturated", f"rejected: saturated ({self._in_flight} jobs in "
                                                             f"flight, {self.queued} queued)"), []
            if placement is not None and all(c.free_slots <= 0 for c in placement.candidates):
                return self._refuse(job.job_id, "saturated", "rejected: saturated (no free slot on any "
                                                             "suitable device)"), []
        if must_wait:
            if self.queued >= self.cfg.max_queued:
                return self._refuse(job.job_id, "saturated", f"rejected: saturated (coordinator queue full: "
                                                             f"{self.queued} jobs)"), []
        rec = JobRecord(job, submitted_at=now, seq=self._fair_tag(job.submitted_by))
        self._jobs[job.job_id] = rec
        self.stats.submitted += 1
        self.obs.submitted(job.kind, job.priority)
        self.obs.state_changed(None, JobState.SUBMITTED)
        acts: list[Action] = [JournalJob(job, now)]
        self._push_timer(now + job.timeout_s, "timeout", rec, 0)
        if job.deadline is not None:
            self._push_timer(job.deadline, "deadline", rec, 0)
        if must_wait:
            self._enqueue(rec)
        elif lease is not None:
            self._direct(rec, lease, now, acts)
        else:
            assert placement is not None
            rec.candidates = placement.candidates
            self._offer_next(rec, now, acts)
        return SubmitAnswer(job.job_id, True, rec.state, self._position(rec)), acts

    def handle(self, peer_id: str, msg: Any, now: float) -> list[Action]:
        """Dispatch a decoded claim-protocol message from a worker."""
        if isinstance(msg, Accept):
            return self.on_accept(peer_id, msg, now)
        if isinstance(msg, Reject):
            return self.on_reject(peer_id, msg, now)
        if isinstance(msg, LeaseRenew):
            return self.on_lease(peer_id, msg, now)
        if isinstance(msg, Result):
            return self.on_result(peer_id, msg, now)
        raise TypeError(f"a coordinator does not handle {type(msg).__name__}")

    def worker_lost(self, peer_id: str, now: float, reason: str = "connection lost") -> list[Action]:
        """The data-plane connection to `peer_id` broke, or it expired from the view: its attempts are lost."""
        acts: list[Action] = self._revoke_leases(peer_id, "revoked")
        label = "advert_expired" if "expired" in reason else "worker_lost"
        for job_id in sorted(self._by_peer.get(peer_id, ())):
            rec = self._jobs[job_id]
            if rec.offer_pending:  # never accepted: not a lost attempt, just try the next candidate
                self._withdraw_offer(rec, "offer withdrawn", now, acts)
                continue
            self._penalize_lost(peer_id, now)
            self._attempt_lost(rec, now, f"worker {short_peer(peer_id)} lost ({reason})", label, acts)
        self._pump(now, acts)
        return acts

    def worker_expired(self, peer_id: str, now: float) -> list[Action]:
        """`peer_id`'s adverts stopped reaching us (gossip late or the peer gone): offers still waiting for
        its answer go to the next candidate, but jobs it accepted stay with it while it renews their
        leases. Gossip is the slower, lossier plane under load; the lease (data plane) says whether the
        worker is alive, and a worker that died stops renewing and loses its jobs when the lease runs out.
        Its slot leases are given back (no new jobs go to it); the jobs on them stay, like the others."""
        acts: list[Action] = self._revoke_leases(peer_id, "expired")
        for job_id in sorted(self._by_peer.get(peer_id, ())):
            rec = self._jobs[job_id]
            if rec.offer_pending:
                self._withdraw_offer(rec, "offer withdrawn", now, acts)
        self._pump(now, acts)
        return acts

    def cancel(self, job_id: str, now: float, reason: str = "cancelled by client") -> tuple[JobRecord | None, list[Action]]:
        rec = self._jobs.get(job_id)
        if rec is None or rec.state.terminal:
            return rec, []
        acts: list[Action] = []
        self._finish(rec, JobState.CANCELLED, reason, now, acts)
        self._pump(now, acts)
        return rec, acts

    def tick(self, now: float) -> list[Action]:
        """Timers (claim timeouts, lease expiry, job timeouts and deadlines, retries) and advert expiry."""
        acts: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, job_id, attempt = heapq.heappop(timers)
            rec = self._jobs.get(job_id)
            if rec is None or rec.state.terminal:
                continue
            if kind == "claim":
                if rec.offer_pending and rec.attempt == attempt:
                    self.stats.claims_timed_out += 1
                    self.obs.claim("timeout")
                    self._withdraw_offer(rec, "offer timed out", now, acts)
            elif kind == "lease":
                if rec.attempt != attempt or not rec.peer or rec.offer_pending:
                    continue
                if rec.lease_expires > now:  # renewed since: look again then
                    self._push_timer(rec.lease_expires, "lease", rec, attempt)
                else:
                    peer = rec.peer
                    self._penalize_lost(peer, now)
                    self._attempt_lost(rec, now, f"lease on {short_peer(peer)} expired", "lease_expired", acts)
            elif kind == "retry":
                if rec.retry_at is not None and rec.retry_at <= now:
                    rec.retry_at = None
                    self._waiting -= 1
                    self._enqueue(rec)
            elif kind == "timeout":
                self._finish(rec, JobState.FAILED, f"timed out after {rec.job.timeout_s:g} s ({rec.state.value})",
                             now, acts)
            elif kind == "deadline":
                self.stats.deadline_misses += 1
                self.obs.deadline_missed()
                self._finish(rec, JobState.FAILED, f"deadline missed ({rec.state.value})", now, acts)
        # workers whose adverts expired from our view while an offer waits for their answer
        for peer in [p for p in self._by_peer if not self._alive(p, now)]:
            acts += self.worker_expired(peer, now)
        for back in self.leases.tick(now):
            self.obs.lease(back.reason)
            acts.append(ReturnLease(back.lease.peer_id, back.lease.lease_id, back.reason))
        self._pump(now, acts)
        self._forget_finished(now)
        return acts

    def restore(self, entries: Iterable[Any], now: float) -> list[Action]:
        """Resume from the journal after a restart (`Journal.load(now)` entries): unfinished jobs are placed
        again (attempt numbers continue after the journaled ones), finished ones answer queries and
        idempotent resubmits. Entries need: job, state, reason, attempt, failures, result, submitted_at,
        finished_at (coordinator clock)."""
        acts: list[Action] = []
        for e in entries:
            if e.job.job_id in self._jobs:
                continue
            rec = JobRecord(e.job, submitted_at=e.submitted_at, attempt=e.attempt, failures=list(e.failures),
                            seq=self._fair_tag(e.job.submitted_by))
            self._jobs[rec.job_id] = rec
            journaled = JobState(e.state)
            if journaled.terminal:
                rec.state, rec.reason, rec.result = journaled, e.reason, e.result
                rec.finished_at = e.finished_at if e.finished_at is not None else now
                self._finished[rec.job_id] = rec.finished_at
                continue
            rec.state = advance(journaled, JobEvent.RESUMED)  # placed again
            self.obs.state_changed(None, rec.state)
            self._push_timer(rec.submitted_at + rec.job.timeout_s, "timeout", rec, 0)
            if rec.job.deadline is not None:
                self._push_timer(rec.job.deadline, "deadline", rec, 0)
            self._enqueue(rec)
        self._finished = OrderedDict(sorted(self._finished.items(), key=lambda kv: kv[1]))
        acts += self.tick(now)
        return acts

    def _refuse(self, job_id: str, code: str, reason: str) -> SubmitAnswer:
        self.stats.refused += 1
        self.obs.refused(code)
        return SubmitAnswer(job_id, False, None, 0, reason, code)


# the core, and the actions and records its users (the I/O layer, the journal, the daemon) import from here
__all__ = ["CoordinatorConfig", "CoordinatorCore", "Crashed", "Deliver", "Finish", "JournalAttempt", "JournalFinish",
           "JournalJob", "OpenLease", "ReturnLease", "SendCancel", "SendDirect", "SendOffer", "StateChanged",
           "SubmitAnswer"]
