"""The worker's side of the claim protocol, pure (sans-IO: events in, actions out, time passed in).

The executor's own state is authoritative: `load()` returns, per device, its free slots, queue depth,
queue limit and slots right now. An offer is accepted only if there is really room: a free slot, or a
queue that is not full and whose expected wait, (queue depth + 1) / slots x this device's typical run time
(observed here), is within what the coordinator allowed (`Offer.max_wait_s`: past that its next-best
device should finish the job sooner); a realtime job only needs a queue that is not full (it goes ahead
of interactive and batch work and waits at most one chunk). Jobs
accepted but not yet handed to the executor are reserved against its capacity, so two offers arriving
together cannot both take the last slot. Otherwise the answer is a Reject carrying the worker's load.

Actions for the I/O layer, in order:

    Send(peer_id, message)                    an Accept, Reject, LeaseRenew or Result to a coordinator
    StartJob(job, attempt, device_id, coordinator)   fetch the input (if streamed) and queue the job on the
                                              executor, then call `enqueued`; `started` when it runs,
                                              `finished` with its Result when it ends
    CancelJob(job_id, attempt, reason)        cancel it in the executor (reaches the kernel at its next
                                              chunk boundary); call `finished` (result ignored) when it ends

Leases: every held job is renewed to its coordinator every lease_s/3, batched per coordinator; a job
that starts running is reported at once. A Cancel for a job/attempt this worker holds for that
coordinator cancels it; a lost coordinator (connection gone) cancels all its jobs here, since that
coordinator presumes them lost and places them again anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from scheduler.core.job import Accept, Cancel, Job, LeaseEntry, LeaseRenew, Offer, Priority, Reject, Result
from scheduler.core.observer import WorkerObserver


class DeviceLoad(NamedTuple):
    free_slots: int
    queue_depth: int
    max_queue: int
    slots: int = 1


LoadFn = Callable[[], dict[str, DeviceLoad]]


@dataclass(frozen=True)
class Send:
    peer_id: str
    message: Accept | Reject | LeaseRenew | Result


@dataclass(frozen=True)
class StartJob:
    job: Job
    attempt: int
    device_id: str
    coordinator: str


@dataclass(frozen=True)
class CancelJob:
    job_id: str
    attempt: int
    reason: str


WorkerAction = Send | StartJob | CancelJob


@dataclass
class Held:
    job: Job
    attempt: int
    device_id: str
    coordinator: str
    lease_s: float
    accepted_at: float
    enqueued: bool = False
    running: bool = False
    cancelled: bool = False


@dataclass
class WorkerStats:
    offers: int = 0
    accepted: int = 0
    rejected: int = 0
    cancelled: int = 0
    results_sent: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)


class WorkerCore:
    def __init__(self, peer_id: str, load: LoadFn, *, renew_fraction: float = 1 / 3,
                 observer: WorkerObserver | None = None) -> None:
        self.peer_id = peer_id
        self.obs = observer or WorkerObserver()
        self.load = load
        self.renew_fraction = renew_fraction
        self.accepting = True  # False while draining / shutting down
        self.stats = WorkerStats()
        self._held: dict[tuple[str, int], Held] = {}
        self._reserved: dict[str, int] = {}  # device -> accepted jobs not yet in the executor
        self._next_renew: dict[str, float] = {}  # coordinator -> when its renewal is due
        self._typical: dict[str, float] = {}  # device -> average observed run time

    # --- queries -------------------------------------------------------------------------------------------

    def held(self) -> list[Held]:
        return list(self._held.values())

    def holds(self, job_id: str, attempt: int) -> bool:
        """Does the worker still want this attempt run (the I/O layer checks before queueing it)?"""
        h = self._held.get((job_id, attempt))
        return h is not None and not h.cancelled

    def current_load(self) -> dict[str, tuple[int, int]]:
        """The executor's load with reservations counted: what the worker reports to coordinators."""
        out = {}
        for dev, dl in self.load().items():
            free, depth = self._effective(dev, dl)
            out[dev] = (free, depth)
        return out

    def typical_run_s(self, device_id: str, hint: float = 0.0) -> float:
        """Average run time of jobs on that device (observed; before any, the offer's estimate or 1 s)."""
        t = self._typical.get(device_id)
        if t is not None:
            return t
        return hint if hint > 0 else 1.0

    def next_wakeup(self) -> float | None:
        return min(self._next_renew.values()) if self._next_renew else None

    # --- events --------------------------------------------------------------------------------------------

    def on_offer(self, peer_id: str, offer: Offer, now: float) -> list[WorkerAction]:
        self.stats.offers += 1
        job, key = offer.job, (offer.job.job_id, offer.attempt)
        h = self._held.get(key)
        if h is not None and h.coordinator == peer_id:  # a repeated offer: same answer
            return [Send(peer_id, Accept(job.job_id, offer.attempt, h.device_id, 0, self.current_load()))]
        snapshot = self.load()
        dl = snapshot.get(offer.device_id)
        reason = None
        if not self.accepting:
            reason = "shutting down"
        elif dl is None:
            reason = f"no device {offer.device_id!r} here"
        else:
            free, depth = self._effective(offer.device_id, dl)
            if free <= 0:
                wait = (depth + 1) / max(1, dl.slots) * self.typical_run_s(offer.device_id, offer.est_run_s)
                if depth >= dl.max_queue:
                    reason = f"queue full ({depth} jobs queued on {offer.device_id})"
                elif job.priority is not Priority.REALTIME and offer.max_wait_s is not None and wait > offer.max_wait_s:
                    reason = (f"busy ({depth} jobs queued on {offer.device_id}: expected wait {wait:.3f} s, "
                              f"offer allowed {offer.max_wait_s:.3f} s)")
        if reason is not None:
            self.stats.rejected += 1
            label = reason.split(" (")[0]
            self.stats.reject_reasons[label] = self.stats.reject_reasons.get(label, 0) + 1
            self.obs.offer_answered("rejected")
            load = {d: self._effective(d, x) for d, x in snapshot.items()}
            return [Send(peer_id, Reject(job.job_id, offer.attempt, reason, load))]
        assert dl is not None
        free, depth = self._effective(offer.device_id, dl)
        position = 0 if free > 0 else depth + 1
        self._held[key] = Held(job, offer.attempt, offer.device_id, peer_id, offer.lease_s, now)
        self._reserved[offer.device_id] = self._reserved.get(offer.device_id, 0) + 1
        self._schedule_renew(peer_id, offer.lease_s, now)
        self.stats.accepted += 1
        self.obs.offer_answered("accepted")
        self.obs.held(1)
        load = {d: self._effective(d, x) for d, x in snapshot.items()}
        return [Send(peer_id, Accept(job.job_id, offer.attempt, offer.device_id, position, load)),
                StartJob(job, offer.attempt, offer.device_id, peer_id)]

    def enqueued(self, job_id: str, attempt: int, now: float) -> list[WorkerAction]:
        """The executor has the job (its load() now counts it): the reservation ends."""
        h = self._held.get((job_id, attempt))
        if h is not None and not h.enqueued:
            h.enqueued = True
            self._unreserve(h.device_id)
        return []

    def started(self, job_id: str, attempt: int, now: float) -> list[WorkerAction]:
        h = self._held.get((job_id, attempt))
        if h is None or h.cancelled or h.running:
            return []
        if not h.enqueued:
            self.enqueued(job_id, attempt, now)
        h.running = True
        return [Send(h.coordinator, LeaseRenew((LeaseEntry(job_id, attempt, True),)))]

    def finished(self, job_id: str, attempt: int, result: Result | None, now: float) -> list[WorkerAction]:
        """The job ended in the executor (or could not be queued). Its result goes to the coordinator unless
        the attempt was cancelled. A Result built by the caller is stamped with this worker and attempt."""
        h = self._forget((job_id, attempt))
        if h is None or h.cancelled or result is None:
            return []
        result = replace(result, job_id=job_id, attempt=attempt, worker=self.peer_id,
                         device=result.device or h.device_id)
        run_s = result.timings.get("run_s")
        if run_s is not None and run_s >= 0:
            old = self._typical.get(h.device_id)
            self._typical[h.device_id] = run_s if old is None else 0.9 * old + 0.1 * run_s
        self.stats.results_sent += 1
        return [Send(h.coordinator, result)]

    def failed_to_start(self, job_id: str, attempt: int, reason: str, now: float) -> list[WorkerAction]:
        """Input fetch or executor refusal: the coordinator should place it elsewhere."""
        return self.finished(job_id, attempt, Result(ok=False, error=reason, retryable=True), now)

    def on_cancel(self, peer_id: str, msg: Cancel, now: float) -> list[WorkerAction]:
        h = self._held.get((msg.job_id, msg.attempt))
        if h is None or h.coordinator != peer_id or h.cancelled:
            return []
        return self._cancel(h, msg.reason or "cancelled by coordinator")

    def coordinator_lost(self, peer_id: str, now: float) -> list[WorkerAction]:
        acts: list[WorkerAction] = []
        for h in [h for h in self._held.values() if h.coordinator == peer_id and not h.cancelled]:
            acts += self._cancel(h, "coordinator lost")
        self._next_renew.pop(peer_id, None)
        return acts

    def tick(self, now: float) -> list[WorkerAction]:
        acts: list[WorkerAction] = []
        due = [c for c, t in self._next_renew.items() if t <= now]
        if not due:
            return acts
        by_coord: dict[str, list[Held]] = {}
        for h in self._held.values():
            if not h.cancelled:
                by_coord.setdefault(h.coordinator, []).append(h)
        for coord in due:
            hs = by_coord.get(coord)
            if not hs:
                del self._next_renew[coord]
                continue
            # safety net: a job held far beyond its own timeout has been given up by its coordinator
            for h in [h for h in hs if now - h.accepted_at > h.job.timeout_s + h.lease_s]:
                acts += self._cancel(h, "held past its timeout")
                hs.remove(h)
            if hs:
                acts.append(Send(coord, LeaseRenew(tuple(LeaseEntry(h.job.job_id, h.attempt, h.running) for h in hs))))
                self._next_renew[coord] = now + min(h.lease_s for h in hs) * self.renew_fraction
            else:
                del self._next_renew[coord]
        return acts

    # --- internals -----------------------------------------------------------------------------------------

    def _effective(self, dev: str, dl: DeviceLoad) -> tuple[int, int]:
        r = self._reserved.get(dev, 0)
        free = dl.free_slots - r
        depth = dl.queue_depth + max(0, -free)
        return max(0, free), depth

    def _unreserve(self, dev: str) -> None:
        n = self._reserved.get(dev, 0) - 1
        if n > 0:
            self._reserved[dev] = n
        else:
            self._reserved.pop(dev, None)

    def _schedule_renew(self, coord: str, lease_s: float, now: float) -> None:
        due = now + lease_s * self.renew_fraction
        if coord not in self._next_renew or self._next_renew[coord] > due:
            self._next_renew[coord] = due

    def _cancel(self, h: Held, reason: str) -> list[WorkerAction]:
        h.cancelled = True
        self.stats.cancelled += 1
        self.obs.cancelled()
        if not h.enqueued:  # never reached the executor: nothing will call finished()
            self._forget((h.job.job_id, h.attempt))
        return [CancelJob(h.job.job_id, h.attempt, reason)]

    def _forget(self, key: tuple[str, int]) -> Held | None:
        h = self._held.pop(key, None)
        if h is not None:
            self.obs.held(-1)
            if not h.enqueued:
                self._unreserve(h.device_id)
        return h
