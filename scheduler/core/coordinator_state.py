"""The coordinator core's state and the bookkeeping every part of it shares.

`CoordinatorState` holds the jobs (`JobRecord`s, finished ones for `finished_retention_s`), the ready
queue, the timers and who holds what; the parts of the state machine build on it:
`coordinator_dispatch.py` (placing jobs: claims and lease sends), `coordinator_leases.py` (slot-lease events),
`coordinator_standing.py` (standing lost, capacity lies), `coordinator_claims.py` (the claim protocol),
`coordinator_results.py` (results, verification, the poison rule) and `coordinator_core.py` (the whole).

The ready queue is sorted by (priority rank, deadline, fair tag, job id): within a priority class, start-time
fair queueing over submitters (`_fair_tag`). Timers are one heap of (when, seq, kind, job id, attempt), kind
one of claim | lease | retry | timeout | deadline; `tick` reads them. Every state change goes through `_move`
(the lifecycle table), every attempt's end through `_release`, every job's end through `_finish`.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Callable, Iterable

from mesh.membership import MembershipView
from scheduler.core.coordinator_actions import Action, Finish, JournalFinish, SendCancel, StateChanged
from scheduler.core.coordinator_records import CoordinatorConfig, CoordinatorStats, JobRecord
from scheduler.core.job import Cancel, JobState
from scheduler.core.leases import LeaseTable
from scheduler.core.lifecycle import FINISHING_EVENT, JobEvent, advance
from scheduler.core.observer import CoordinatorObserver
from scheduler.core.placement import Placer


class CoordinatorState:
    """A coordinator's jobs, queue, timers and holders, and the transitions its events share."""


    def __init__(self, peer_id: str, view: MembershipView, placer: Placer,
                 config: CoordinatorConfig | None = None, *, observer: CoordinatorObserver | None = None,
                 perf_clock: Callable[[], float] | None = None) -> None:
        """`observer` hears what happens (metrics); `perf_clock` (e.g. time.perf_counter) times placement
        decisions for it (None: not timed). Neither changes a decision."""
        self.peer_id = peer_id
        self.obs = observer or CoordinatorObserver()
        self._perf = perf_clock
        self.view = view
        self.placer = placer
        self.cfg = config or CoordinatorConfig()
        self.stats = CoordinatorStats()
        self._jobs: dict[str, JobRecord] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()  # job id -> finished_at, oldest first
        self._ready: list[tuple[int, float, int, str]] = []  # sorted: (priority rank, deadline, seq, job id)
        self._waiting = 0  # jobs in retry backoff
        self._timers: list[tuple[float, int, str, str, int]] = []  # (when, seq, kind, job id, attempt)
        self._by_peer: dict[str, set[str]] = {}
        self._in_flight = 0
        self._seq = 0
        self._vtime = 0  # fair-queueing virtual time: the tag of the last job dispatched
        self._last_tag: dict[str, int] = {}
        self._penalized: dict[str, float] = {}  # peer -> when it last lost standing for lost jobs
        self.leases = LeaseTable(self.cfg.leases)

    # --- queries -------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def jobs(self, states: Iterable[JobState] | None = None) -> list[JobRecord]:
        want = set(states) if states is not None else None
        return [r for r in self._jobs.values() if want is None or r.state in want]

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._ready) + self._waiting

    def next_wakeup(self) -> float | None:
        """When `tick` next has something to do (None: nothing scheduled)."""
        wake = self._timers[0][0] if self._timers else None
        lease_wake = self.leases.next_wakeup()
        if lease_wake is not None and (wake is None or lease_wake < wake):
            return lease_wake
        return wake

    # --- shared transitions --------------------------------------------------------------------------------

    def _alive(self, peer: str, now: float) -> bool:
        if peer == self.view.self_peer_id:
            return True
        st = self.view.get(peer)
        return st is not None and now <= st.expires_at

    def _fair_tag(self, submitter: str) -> int:
        """Queue order within a priority class: start-time fair queueing over submitters (API tokens), so a
        tenant with a thousand queued jobs delays another tenant's next job by about one job, not a thousand."""
        tag = max(self._vtime, self._last_tag.get(submitter, 0)) + 1
        self._last_tag[submitter] = tag
        if len(self._last_tag) > 10_000:  # forget idle submitters (their tags are behind the virtual time)
            self._last_tag = {k: v for k, v in self._last_tag.items() if v > self._vtime}
        return tag

    def _key(self, rec: JobRecord) -> tuple[int, float, int, str]:
        j = rec.job
        return (j.priority.rank, j.deadline if j.deadline is not None else 0.0, rec.seq, rec.job_id)

    def _enqueue(self, rec: JobRecord) -> None:
        rec.queued = True
        insort(self._ready, self._key(rec))
        self.stats.max_queued = max(self.stats.max_queued, self.queued)
        self.obs.queued(1)

    def _dequeue(self, rec: JobRecord) -> None:
        if rec.queued:
            k = self._key(rec)
            i = bisect_left(self._ready, k)
            if i < len(self._ready) and self._ready[i] == k:
                del self._ready[i]
            rec.queued = False
            self.obs.queued(-1)
        if rec.retry_at is not None:
            rec.retry_at = None
            self._waiting -= 1

    def _position(self, rec: JobRecord) -> int:
        if not rec.queued:
            return 0
        return bisect_left(self._ready, self._key(rec)) + 1

    def _push_timer(self, when: float, kind: str, rec: JobRecord, attempt: int) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, kind, rec.job_id, attempt))
        if len(self._timers) > 1024 + 8 * (len(self._jobs) - len(self._finished)):
            # timers of finished jobs (a 1 h timeout, say) would otherwise pile up: drop them
            live = self._jobs
            self._timers = [t for t in self._timers if (r := live.get(t[3])) is not None and not r.state.terminal]
            heapq.heapify(self._timers)

    def _move(self, rec: JobRecord, event: JobEvent) -> None:
        """The one place a job changes state: through the lifecycle table (IllegalTransition otherwise)."""
        before = rec.state
        rec.state = advance(before, event)
        if rec.state is not before:
            self.obs.state_changed(before, rec.state)

    def _placed(self, rec: JobRecord, now: float) -> None:
        """The job holds a slot on its peer now (a claim accepted, or a job sent on a lease): its lease runs."""
        rec.offer_pending = False
        rec.candidates = []
        rec.placed_at = now
        rec.lease_expires = now + self.cfg.lease_s
        self._push_timer(rec.lease_expires, "lease", rec, rec.attempt)
        self._move(rec, JobEvent.ACCEPTED)

    def _release(self, rec: JobRecord, now: float) -> None:
        if rec.lease_id:
            self.leases.done(rec.lease_id, rec.job_id, now)
            rec.lease_id = ""
        if rec.peer:
            self._in_flight -= 1
            held = self._by_peer.get(rec.peer)
            if held is not None:
                held.discard(rec.job_id)
                if not held:
                    del self._by_peer[rec.peer]
        rec.peer, rec.device, rec.offer_pending = "", "", False

    def _attempt_lost(self, rec: JobRecord, now: float, reason: str, label: str, acts: list[Action],
                      cancel: bool = True) -> None:
        peer, attempt = rec.peer, rec.attempt
        if cancel and peer:
            acts.append(SendCancel(peer, Cancel(rec.job_id, attempt, reason)))
        rec.failures.append(reason)
        if peer:
            rec.excluded.add(peer)
        self._release(rec, now)
        rec.placed_at = rec.started_at = None
        if len(rec.failures) >= rec.job.max_attempts:
            self._finish(rec, JobState.FAILED, self._with_failures(rec, ""), now, acts)
            return
        self.stats.retries += 1
        self.obs.retry(label)
        self._move(rec, JobEvent.LOST)
        acts.append(StateChanged(rec.job_id, JobState.SUBMITTED, attempt, ""))
        rec.backoff_s = 0.0
        self._enqueue(rec)  # keeps its original place in its priority class

    def _with_failures(self, rec: JobRecord, reason: str) -> str:
        if not rec.failures:
            return reason
        n = len(rec.failures)
        head = f"failed on {n} attempt{'s' * (n != 1)}: " + "; ".join(rec.failures)
        return head + (f"; then {reason}" if reason else "")

    def _finish(self, rec: JobRecord, state: JobState, reason: str, now: float, acts: list[Action]) -> None:
        if rec.peer:
            acts.append(SendCancel(rec.peer, Cancel(rec.job_id, rec.attempt, reason or state.value)))
        self._release(rec, now)
        self._dequeue(rec)
        self._move(rec, FINISHING_EVENT[state])
        rec.reason = reason
        rec.finished_at = now
        rec.candidates = []
        if state is JobState.DONE:
            self.stats.done += 1
        elif state is JobState.FAILED:
            self.stats.failed += 1
        else:
            self.stats.cancelled += 1
        self.obs.finished(rec.job.kind, state, rec.job.priority, max(0.0, now - rec.submitted_at))
        self._finished[rec.job_id] = now
        acts.append(JournalFinish(rec.job_id, state, reason, rec.result, now))
        acts.append(Finish(rec.job_id, state, reason, rec.result))

    def _forget_finished(self, now: float) -> None:
        cutoff = now - self.cfg.finished_retention_s
        fin = self._finished
        while fin:
            job_id, t = next(iter(fin.items()))
            if t > cutoff and len(fin) <= self.cfg.max_finished:
                break
            fin.popitem(last=False)
            self._jobs.pop(job_id, None)


__all__ = ["CoordinatorState"]
