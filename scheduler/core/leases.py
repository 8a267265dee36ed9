"""The coordinator's slot leases, pure (sans-IO: events in, decisions out, time passed in).

The idea of Ray's worker leases: a coordinator that sees a stream of jobs of one *shape* (kind, device
requirements, priority, tenant) should not pay a placement and a claim round trip for every one of them.
So the claim of one job of that shape asks for a lease (`Offer.want_lease`); a worker that accepts the claim
may grant one (`Accept.lease_id`): a permission to send it further jobs of that shape on that device
straight over one held stream (`peer.direct`), with no placement and no claim per job. The lease is taken
through the claim step, which checks the worker's real load, so stale gossip still never double-books a slot.

The table decides:

    wants(shape, now)        should the next claim of this shape ask for a lease?
    route(shape, now, ex)    the held lease a job of this shape goes to (None: place and claim it as usual)
    granted(...)             a worker granted a lease (None: refused here, the caller gives it back)
    sent / done              a job went out on a lease / it left the lease (result, loss, cancel)
    tick(now)                leases to give back: idle ones (`idle_s` without a job) and expired ones
                             (`term_s` after the grant: no new jobs, given back once their jobs are out)
    revoke(id) / revoke_peer(peer)   the lease's stream broke, the worker refused a job on it, or the
                             worker was lost: the lease is gone at once, with the jobs it held

A lease carries at most `depth` jobs at once (pipelined on its stream; the worker queues them on the
leased device), fewer for longer jobs: about `pipeline_s` of estimated work (the claim's estimate of the job's
run time there), at least one; so a stream of second-long jobs is spread over workers like claimed ones,
while millisecond jobs are pipelined deep. Beyond that, jobs of the shape go the usual way, which may acquire another lease, up to
`max_per_shape` per shape and `max_leases` in all. What happens to the jobs of a revoked lease is the
coordinator core's business: they fall back to its normal retry path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scheduler.core.job import Job


@dataclass(frozen=True)
class Shape:
    """What makes jobs interchangeable for a lease: kind, device requirements, priority and tenant."""

    kind: str
    requirements: Any  # worker.kinds.Requirements (frozen, hashable)
    priority: str
    tenant: str


def shape_of(job: Job) -> Shape | None:
    """The lease shape of `job`; None for a job that must be placed on its own (a realtime job with a
    deadline: its placement checks that some device can finish it in time)."""
    if job.deadline is not None:
        return None
    return Shape(job.kind, job.requirements, job.priority.value, job.submitted_by)


@dataclass
class LeaseConfig:
    idle_s: float = 1.0  # a lease without a job this long is given back
    term_s: float = 30.0  # a lease this old takes no new jobs (the next claim checks the worker's load again)
    depth: int = 64  # jobs in flight on one lease at once at most (pipelined: the worker queues them)
    pipeline_s: float = 0.05  # estimated work a lease may carry at once: depth = this / the job's run time
    max_per_shape: int = 4
    max_leases: int = 64
    ask_timeout_s: float = 2.0  # a claim that asked for a lease and was not answered: ask again after this


@dataclass
class Lease:
    lease_id: str
    peer_id: str
    device_id: str
    shape: Shape
    granted_at: float
    last_used: float
    jobs: set[str] = field(default_factory=set)  # job ids in flight on it
    depth: int = 1  # jobs it carries at once
    expired: bool = False  # past its term: takes no new jobs


@dataclass(frozen=True)
class GiveBack:
    """Close the lease's stream (the worker then drops the grant)."""

    lease: Lease
    reason: str  # idle | expired | refused


@dataclass
class LeaseStats:
    asked: int = 0
    acquired: int = 0
    refused: int = 0  # grants this table did not take (not asked for, or over its limits)
    returned_idle: int = 0
    expired: int = 0
    revoked: int = 0
    direct: int = 0  # jobs sent on a lease (no placement, no claim)


class LeaseTable:
    def __init__(self, config: LeaseConfig | None = None) -> None:
        self.cfg = config or LeaseConfig()
        self.stats = LeaseStats()
        self._leases: dict[str, Lease] = {}
        self._by_shape: dict[Shape, list[Lease]] = {}
        self._asking: dict[Shape, float] = {}  # shape -> when a claim asked for a lease of it

    # --- queries -------------------------------------------------------------------------------------------

    def get(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    def leases(self) -> list[Lease]:
        return list(self._leases.values())

    def __len__(self) -> int:
        return len(self._leases)

    def next_wakeup(self) -> float | None:
        """When `tick` may have a lease to give back (None: no lease held)."""
        times = []
        for lease in self._leases.values():
            if not lease.jobs:
                times.append(lease.last_used + self.cfg.idle_s)
            if not lease.expired:
                times.append(lease.granted_at + self.cfg.term_s)
        return min(times) if times else None

    # --- decisions -----------------------------------------------------------------------------------------

    def route(self, shape: Shape | None, now: float, exclude: Iterable[str] = ()) -> Lease | None:
        """The lease with the fewest jobs in flight that still takes one of `shape` (None: none)."""
        if shape is None:
            return None
        best: Lease | None = None
        for lease in self._by_shape.get(shape, ()):
            if lease.expired or len(lease.jobs) >= lease.depth or lease.peer_id in exclude:
                continue
            if now - lease.granted_at >= self.cfg.term_s:
                lease.expired = True
                continue
            if best is None or len(lease.jobs) < len(best.jobs):
                best = lease
        return best

    def wants(self, shape: Shape | None, now: float) -> bool:
        """Should a claim of `shape` ask for a lease? Yes when the shape has room for one more lease and no
        claim asked for one within ask_timeout_s (one request at a time per shape)."""
        if shape is None or len(self._leases) >= self.cfg.max_leases:
            return False
        if len(self._by_shape.get(shape, ())) >= self.cfg.max_per_shape:
            return False
        asked = self._asking.get(shape)
        if asked is not None and now - asked < self.cfg.ask_timeout_s:
            return False
        if len(self._asking) > 4 * self.cfg.max_leases:  # shapes asked for and never answered: forget them
            self._asking = {s: t for s, t in self._asking.items() if now - t < self.cfg.ask_timeout_s}
        self._asking[shape] = now
        self.stats.asked += 1
        return True

    def granted(self, shape: Shape | None, lease_id: str, peer_id: str, device_id: str, now: float,
                est_run_s: float = 0.0) -> Lease | None:
        """A worker granted `lease_id` with its accept (`est_run_s`: the claim's estimate of a job's run time
        there, which sets the lease's depth). None: not taken (not asked for, a known id, over the limits); the
        caller gives it back so the worker does not keep it."""
        asked = self._asking.pop(shape, None) if shape is not None else None
        if (shape is None or asked is None or lease_id in self._leases or len(self._leases) >= self.cfg.max_leases
                or len(self._by_shape.get(shape, ())) >= self.cfg.max_per_shape):
            self.stats.refused += 1
            return None
        depth = self.cfg.depth if est_run_s <= 0 else int(max(1, min(self.cfg.depth, self.cfg.pipeline_s / est_run_s)))
        lease = Lease(lease_id, peer_id, device_id, shape, granted_at=now, last_used=now, depth=depth)
        self._leases[lease_id] = lease
        self._by_shape.setdefault(shape, []).append(lease)
        self.stats.acquired += 1
        return lease

    def not_granted(self, shape: Shape | None) -> None:
        """The claim that asked for a lease was answered without one: the next claim may ask again."""
        if shape is not None:
            self._asking.pop(shape, None)

    def hold(self, lease: Lease, job_id: str, now: float) -> None:
        """The claimed job that acquired the lease: it uses the slot, so the lease is not idle while it runs."""
        lease.jobs.add(job_id)
        lease.last_used = now

    def sent(self, lease: Lease, job_id: str, now: float) -> None:
        lease.jobs.add(job_id)
        lease.last_used = now
        self.stats.direct += 1

    def done(self, lease_id: str, job_id: str, now: float) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None and job_id in lease.jobs:
            lease.jobs.discard(job_id)
            lease.last_used = now

    def tick(self, now: float) -> list[GiveBack]:
        out: list[GiveBack] = []
        for lease in list(self._leases.values()):
            if not lease.expired and now - lease.granted_at >= self.cfg.term_s:
                lease.expired = True
            if lease.jobs:
                continue
            if lease.expired:
                self.stats.expired += 1
                out.append(GiveBack(self._remove(lease), "expired"))
            elif now - lease.last_used >= self.cfg.idle_s:
                self.stats.returned_idle += 1
                out.append(GiveBack(self._remove(lease), "idle"))
        return out

    def revoke(self, lease_id: str) -> Lease | None:
        """The lease is gone now (its stream broke, or the worker refused a job on it): removed, with its
        jobs (`lease.jobs`), which the caller sends back to its retry path."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return None
        self.stats.revoked += 1
        return self._remove(lease)

    def revoke_peer(self, peer_id: str) -> list[Lease]:
        """Every lease on `peer_id`, revoked (the worker is lost or left the view)."""
        gone = [lease for lease in self._leases.values() if lease.peer_id == peer_id]
        for lease in gone:
            self.revoke(lease.lease_id)
        return gone

    def _remove(self, lease: Lease) -> Lease:
        self._leases.pop(lease.lease_id, None)
        same = self._by_shape.get(lease.shape)
        if same is not None:
            same[:] = [x for x in same if x.lease_id != lease.lease_id]
            if not same:
                del self._by_shape[lease.shape]
        return lease


__all__ = ["GiveBack", "Lease", "LeaseConfig", "LeaseStats", "LeaseTable", "Shape", "shape_of"]
