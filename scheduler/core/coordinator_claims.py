"""The claim protocol, coordinator side: what a worker answers to an offer, and the leases it renews.

An offer is answered with an `Accept` (the job is placed there: its lease runs from now, renewed by the
worker; a slot lease granted with it is taken) or a `Reject` (the next candidate is asked; a refusal a fresh
advert contradicts is a capacity lie). A `LeaseRenew` keeps placed jobs alive, says which started running,
and stands in for an accept that was late or lost. An answer about any attempt but the current one, or from
any worker but the one holding it, is stale: an accepted stale offer is cancelled there, since it must not
run; a renewal of an attempt no longer wanted is answered with a cancel.
"""

from __future__ import annotations

from scheduler.core.coordinator_actions import Action, SendCancel, StateChanged
from scheduler.core.coordinator_leases import CoordinatorLeases
from scheduler.core.coordinator_standing import CoordinatorStanding
from scheduler.core.job import Accept, Cancel, JobState, LeaseRenew, Reject
from scheduler.core.leases import shape_of
from scheduler.core.lifecycle import JobEvent


class CoordinatorClaims(CoordinatorLeases, CoordinatorStanding):
    """A worker's answers to offers (`Accept`, `Reject`) and its lease renewals."""

    def on_accept(self, peer_id: str, msg: Accept, now: float) -> list[Action]:
        rec = self._jobs.get(msg.job_id)
        if rec is not None and not rec.state.terminal and msg.attempt == rec.attempt and peer_id == rec.peer \
                and not rec.offer_pending:
            return []  # a repeated accept of the current attempt (or one overtaken by its lease renewal)
        if rec is not None and rec.state is JobState.DONE and rec.asked_lease and msg.lease_id \
                and msg.attempt == rec.attempt and rec.result is not None and rec.result.worker == peer_id:
            # a fast job's result overtook its accept: the job is done, and the lease its claim took is good
            taken = self._take_lease(rec, peer_id, msg.device_id, msg.lease_id, now)
            rec.asked_lease = False
            return taken
        if rec is None or rec.state.terminal or msg.attempt != rec.attempt or peer_id != rec.peer \
                or not rec.offer_pending:
            # an answer to an offer we gave up on: whatever it took, it must not run
            self.obs.claim("stale")
            return [SendCancel(peer_id, Cancel(msg.job_id, msg.attempt, "offer withdrawn"))]
        self.stats.claims_accepted += 1
        self.obs.claim("accepted")
        self.placer.observe_claim(True)
        self.placer.observe_rtt(peer_id, now - rec.offer_sent_at)
        for dev, (free, depth) in msg.load.items():
            self.placer.note_load(peer_id, dev, free, depth)
        self._placed(rec, now)
        acts: list[Action] = [StateChanged(rec.job_id, JobState.PLACED, rec.attempt, peer_id)]
        if msg.lease_id:  # a grant not taken here is never opened: the worker drops it after a while
            acts += self._take_lease(rec, peer_id, rec.device, msg.lease_id, now)
        else:
            self.leases.not_granted(shape_of(rec.job) if rec.asked_lease else None)
        rec.asked_lease = False
        return acts

    def on_reject(self, peer_id: str, msg: Reject, now: float) -> list[Action]:
        for dev, (free, depth) in msg.load.items():
            self.placer.note_load(peer_id, dev, free, depth)
        rec = self._jobs.get(msg.job_id)
        if rec is not None and not rec.state.terminal and rec.lease_id and msg.attempt == rec.attempt \
                and peer_id == rec.peer and not rec.offer_pending:
            return self._direct_refused(rec, msg, now)
        if rec is None or rec.state.terminal or msg.attempt != rec.attempt or peer_id != rec.peer \
                or not rec.offer_pending:
            self.obs.claim("stale")
            return []
        self.stats.claims_rejected += 1
        self.obs.claim("rejected")
        if self._capacity_lie(peer_id, msg, now):
            self.view.adjust_standing(peer_id, -self.cfg.standing_penalty_capacity_lie)
            self.obs.advert_lie("capacity")
        self.placer.observe_claim(False)
        self.placer.observe_rtt(peer_id, now - rec.offer_sent_at)
        if rec.asked_lease:
            self.leases.not_granted(shape_of(rec.job))
        self._release(rec, now)
        acts: list[Action] = []
        self._offer_next(rec, now, acts)
        self._pump(now, acts)
        return acts

    def on_lease(self, peer_id: str, msg: LeaseRenew, now: float) -> list[Action]:
        acts: list[Action] = []
        for e in msg.entries:
            rec = self._jobs.get(e.job_id)
            if rec is None or rec.state.terminal or e.attempt != rec.attempt or peer_id != rec.peer:
                # the worker holds an attempt we no longer want (withdrawn, lost, finished): stop it
                acts.append(SendCancel(peer_id, Cancel(e.job_id, e.attempt, "attempt no longer current")))
                continue
            if rec.offer_pending:  # its accept is late or was lost: the renewal says it holds the job
                acts += self.on_accept(peer_id, Accept(e.job_id, e.attempt, rec.device), now)
            rec.lease_expires = now + self.cfg.lease_s
            if e.running and rec.state is JobState.PLACED:
                rec.started_at = now
                self.obs.queue_wait(rec.job.priority, now - rec.submitted_at)
                self._move(rec, JobEvent.STARTED)
                acts.append(StateChanged(rec.job_id, JobState.RUNNING, rec.attempt, peer_id))
        return acts


__all__ = ["CoordinatorClaims"]
