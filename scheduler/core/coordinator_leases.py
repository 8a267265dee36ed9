"""Slot leases in the coordinator's lifecycle: the events of the leases `leases.py` keeps the table of.

A lease granted with an accept is taken (if the claim asked for one) and opened (`OpenLease`), the job that
took it holding it while it runs (`_take_lease`). A job sent on a lease that the worker refuses goes back to
the normal path at no cost to the job (`_direct_refused`); a lease whose stream breaks loses the attempts on
it, which take the normal retry path (`lease_lost`); a lost or expired worker's leases are given back
(`_revoke_leases`). Sending a job on a lease is `coordinator_dispatch.py`.
"""

from __future__ import annotations

from scheduler.core.coordinator_actions import Action, OpenLease, ReturnLease, StateChanged
from scheduler.core.coordinator_dispatch import CoordinatorDispatch
from scheduler.core.coordinator_records import JobRecord, short_peer
from scheduler.core.job import JobState, Reject
from scheduler.core.leases import shape_of
from scheduler.core.lifecycle import JobEvent


class CoordinatorLeases(CoordinatorDispatch):
    """The coordinator's slot-lease events: taken, refused, lost, revoked."""

    def _take_lease(self, rec: JobRecord, peer_id: str, device_id: str, lease_id: str, now: float) -> list[Action]:
        """A worker granted a lease with its accept of `rec`'s claim: taken if that claim asked for one (and the
        table has room), then opened."""
        lease = self.leases.granted(shape_of(rec.job) if rec.asked_lease else None, lease_id, peer_id, device_id,
                                    now, rec.est_run_s)
        if lease is None:
            return []
        self.obs.lease("acquired")
        if not rec.state.terminal:  # the job that took the lease holds it while it runs
            rec.lease_id = lease.lease_id
            self.leases.hold(lease, rec.job_id, now)
        return [OpenLease(peer_id, lease.lease_id)]

    def _direct_refused(self, rec: JobRecord, msg: Reject, now: float) -> list[Action]:
        """The worker would not run a job sent on its lease (it lost the grant, is full, is shutting down): the
        lease is given back and the job goes the normal way (placement and claim). It never ran there, so
        the attempt costs the job nothing."""
        acts: list[Action] = []
        lease = self.leases.revoke(rec.lease_id)
        if lease is not None:
            self.obs.lease("refused")
            acts.append(ReturnLease(lease.peer_id, lease.lease_id, "refused"))
        self._release(rec, now)
        rec.placed_at = rec.started_at = None
        self._move(rec, JobEvent.LOST)
        acts.append(StateChanged(rec.job_id, JobState.SUBMITTED, msg.attempt, ""))
        self._enqueue(rec)
        self._pump(now, acts)
        return acts

    def lease_lost(self, lease_id: str, now: float, reason: str) -> list[Action]:
        """A lease's stream broke or could not be opened: the lease is gone, and every job in flight on it
        goes to the normal retry path (its attempt is lost and cancelled there; a late result is stale)."""
        lease = self.leases.revoke(lease_id)
        if lease is None:
            return []
        self.obs.lease("lost")
        acts: list[Action] = []
        for job_id in sorted(lease.jobs):
            rec = self._jobs.get(job_id)
            if rec is not None and not rec.state.terminal and rec.lease_id == lease_id:
                self._attempt_lost(rec, now, f"lease on {short_peer(lease.peer_id)} lost ({reason})", "lease_lost", acts)
        self._pump(now, acts)
        return acts

    def _revoke_leases(self, peer_id: str, reason: str) -> list[Action]:
        acts: list[Action] = []
        for lease in self.leases.revoke_peer(peer_id):
            self.obs.lease(reason)
            acts.append(ReturnLease(peer_id, lease.lease_id, reason))
        return acts


__all__ = ["CoordinatorLeases"]
