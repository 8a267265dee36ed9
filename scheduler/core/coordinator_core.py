"""The coordinator's job lifecycle as a pure state machine (sans-IO: events in, actions out).

Every method takes the current time (`now`, any monotonic clock the caller keeps using) and returns a
list of actions for the I/O layer to carry out, in order:

    SendOffer(peer_id, offer)       offer the job to a worker (over the data plane; to the local
                                    WorkerCore directly when peer_id is this node)
    SendCancel(peer_id, cancel)     best effort: stop that attempt
    Deliver(job_id, result)         the job's one result, for the client (at most once per job)
    Finish(job_id, state, reason, result)   the job reached its final state (exactly once per job)
    StateChanged(job_id, state, attempt, peer_id)   progress, for `mesh-node watch`
    JournalJob / JournalAttempt / JournalFinish     durable records: apply them (Journal.apply) *before*
                                    the actions after them (an offer must not go out before its attempt
                                    is journaled, nor a submit be answered before the job is; the one
                                    exception, a new job's first attempt, may go out while its JournalJob
                                    commits, since nothing about the job survives a crash before that)

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
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mesh.membership import MembershipView
from scheduler.core.job import (
    Accept,
    Cancel,
    Job,
    JobState,
    LeaseRenew,
    Offer,
    Reject,
    Result,
    WhenSaturated,
    WireError,
)
from scheduler.core.leases import Lease, LeaseConfig, LeaseTable, shape_of
from scheduler.core.lifecycle import FINISHING_EVENT, JobEvent, advance
from scheduler.core.observer import CoordinatorObserver
from scheduler.core.placement import Candidate, Placement, Placer

# --- actions ---------------------------------------------------------------------------------------------


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


# --- configuration, answers, records --------------------------------------------------------------------


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




class CoordinatorCore:
    """One node's coordinator: the jobs submitted to it, from acceptance to their one outcome."""

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
        rec.offer_pending = False
        rec.candidates = []
        rec.placed_at = now
        rec.lease_expires = now + self.cfg.lease_s
        self._push_timer(rec.lease_expires, "lease", rec, rec.attempt)
        self._move(rec, JobEvent.ACCEPTED)
        acts: list[Action] = [StateChanged(rec.job_id, JobState.PLACED, rec.attempt, peer_id)]
        if msg.lease_id:  # a grant not taken here is never opened: the worker drops it after a while
            acts += self._take_lease(rec, peer_id, rec.device, msg.lease_id, now)
        else:
            self.leases.not_granted(shape_of(rec.job) if rec.asked_lease else None)
        rec.asked_lease = False
        return acts

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

    def _capacity_lie(self, peer_id: str, msg: Reject, now: float) -> bool:
        """A worker whose fresh advert shows free slots but whose claims find none is lying about its capacity
        (to attract work, or to look big). Not a lie: slots this coordinator's own jobs and leases hold there
        (a burst of its jobs outruns the worker's next advert), a refusal for a share or rate limit, an advert
        older than a change takes to go out (not the refresh interval, which grows with the mesh)."""
        st = self.view.get(peer_id)
        if st is None or peer_id == self.view.self_peer_id or not msg.load \
                or now - st.last_seen > min(st.advert.interval_s, self.cfg.fresh_load_s) \
                or "share" in msg.reason or "rate" in msg.reason:
            return False
        if sum(v[0] for v in msg.load.values()) != 0:
            return False
        advertised = sum(d.free_slots for d in st.advert.devices)
        return advertised > self._slots_held_on(peer_id, but=msg.job_id)

    def _slots_held_on(self, peer_id: str, but: str) -> int:
        """Slots this coordinator holds on `peer_id`: one per job placed there outside a lease (`but` aside),
        one per lease there (its jobs queue on its one slot)."""
        leases = [lease for lease in self.leases.leases() if lease.peer_id == peer_id]
        on_leases = set().union(*(lease.jobs for lease in leases)) if leases else set()
        return len(self._by_peer.get(peer_id, set()) - on_leases - {but}) + len(leases)

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

    def expects_result(self, peer_id: str, result: Result) -> Job | None:
        """The job if `result` is the one its current attempt waits for (worth verifying), else None."""
        rec = self._jobs.get(result.job_id)
        if rec is None or rec.state.terminal or result.attempt != rec.attempt or peer_id != rec.peer:
            return None
        return rec.job

    def on_result(self, peer_id: str, result: Result, now: float, problem: str | None = None) -> list[Action]:
        """A worker's result; `problem` is the verifier's verdict on it (None: accepted, or not checked).
        Verifying takes CPU time (a proof, a render spot-check): the caller does it off the event loop,
        for a result `expects_result` says is current, then calls this (staleness is checked again here)."""
        rec = self._jobs.get(result.job_id)
        if rec is None:
            return self._drop("unknown_job")
        if rec.state.terminal:
            return self._drop("duplicate")
        if result.attempt != rec.attempt or peer_id != rec.peer:
            return self._drop("stale_attempt")
        acts: list[Action] = []
        rec.offer_pending = False  # (a result before its accept: it ran all the same)
        run_s = result.timings.get("run_s")
        if run_s is not None:  # a good result also corrects the kind's cost model for that device
            good = problem is None and result.ok
            self.placer.observe_run(run_s, job=rec.job if good else None, peer_id=peer_id,
                                    device_id=result.device or rec.device)
        if problem is not None:
            self.stats.verification_failures += 1
            self.view.adjust_standing(peer_id, -self.cfg.standing_penalty_bad_result)
            self._attempt_lost(rec, now, f"result from {_short(peer_id)} failed verification: {problem}",
                               "verification", acts, cancel=False)
            self._pump(now, acts)
            return acts
        if result.crashed and not result.ok:
            self._crashed(rec, peer_id, result, now, acts)
        elif result.ok or not result.retryable:
            if result.ok and self.view.standing(peer_id) < 1.0:
                self.view.adjust_standing(peer_id, self.cfg.standing_reward)
            start = rec.started_at if rec.started_at is not None else rec.placed_at or now
            self.obs.run_time(rec.job.priority, max(0.0, now - start))
            if rec.started_at is None:
                self.obs.queue_wait(rec.job.priority, max(0.0, start - rec.submitted_at))
            self._release(rec, now)
            rec.result = result
            acts.append(Deliver(rec.job_id, result))
            if result.ok:
                self._finish(rec, JobState.DONE, "", now, acts)
            else:
                self._finish(rec, JobState.FAILED, result.error or "the job failed", now, acts)
        else:
            self._attempt_lost(rec, now, f"{_short(peer_id)}: {result.error or 'could not run it'}",
                               "retryable_error", acts, cancel=False)
        self._pump(now, acts)
        return acts

    def _crashed(self, rec: JobRecord, peer_id: str, result: Result, now: float, acts: list[Action]) -> None:
        """The poison rule: a crash is the job's doing (no standing lost by the worker); the job is placed once
        more on another peer, and a job that crashed `poison_crashes` runners fails instead of walking on."""
        reason = f"{CRASH_TAG}{_short(peer_id)}: {result.error or 'runner crashed'}"
        acts.append(Crashed(rec.job_id, rec.job.submitted_by, peer_id, result.error))
        crashes = crash_count(rec.failures) + 1
        if crashes >= self.cfg.poison_crashes:
            rec.failures.append(reason)
            rec.excluded.add(peer_id)
            self._release(rec, now)
            crashed = [f[len(CRASH_TAG):] for f in rec.failures if f.startswith(CRASH_TAG)]
            self._finish(rec, JobState.FAILED, f"poison: crashed {crashes} runners ({'; '.join(crashed)})", now, acts)
            return
        self._attempt_lost(rec, now, reason, "crashed", acts, cancel=False)

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
            self._attempt_lost(rec, now, f"worker {_short(peer_id)} lost ({reason})", label, acts)
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

    def _withdraw_offer(self, rec: JobRecord, reason: str, now: float, acts: list[Action]) -> None:
        """Give up on the offer waiting on rec.peer (never accepted, so no attempt is lost): cancel it there, do
        not ask that peer again for this job, and offer it to the next candidate."""
        acts.append(SendCancel(rec.peer, Cancel(rec.job_id, rec.attempt, reason)))
        rec.excluded.add(rec.peer)
        if rec.asked_lease:
            self.leases.not_granted(shape_of(rec.job))
        self._release(rec, now)
        self._offer_next(rec, now, acts)

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
                    self._attempt_lost(rec, now, f"lease on {_short(peer)} expired", "lease_expired", acts)
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

    # --- internals -----------------------------------------------------------------------------------------

    def _refuse(self, job_id: str, code: str, reason: str) -> SubmitAnswer:
        self.stats.refused += 1
        self.obs.refused(code)
        return SubmitAnswer(job_id, False, None, 0, reason, code)

    def _drop(self, reason: str) -> list[Action]:
        self.stats.duplicates_dropped += 1
        self.obs.result_dropped(reason)
        return []

    def _penalize_lost(self, peer: str, now: float) -> None:
        """A worker lost jobs (crash, network): a small dent, once per lease period, never below the floor."""
        last = self._penalized.get(peer)
        if last is not None and now - last < self.cfg.lease_s:
            return
        self._penalized[peer] = now
        if len(self._penalized) > 4096:
            self._penalized = {p: t for p, t in self._penalized.items() if now - t < self.cfg.lease_s}
        cur = self.view.standing(peer)
        new = max(min(cur, self.cfg.standing_floor_lost), cur - self.cfg.standing_penalty_lost)
        if new < cur:
            self.view.adjust_standing(peer, new - cur)

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
        rec.offer_pending = False
        rec.candidates = []
        rec.placed_at = now
        rec.lease_expires = now + self.cfg.lease_s
        self._push_timer(rec.lease_expires, "lease", rec, rec.attempt)
        self._move(rec, JobEvent.ACCEPTED)
        acts.append(JournalAttempt(rec.job_id, rec.attempt, tuple(rec.failures)))
        acts.append(SendDirect(lease.peer_id, lease.lease_id, Offer(rec.job, rec.attempt, lease.device_id,
                                                                    self.cfg.lease_s, None, 0.0, self.peer_id)))
        acts.append(StateChanged(rec.job_id, JobState.PLACED, rec.attempt, lease.peer_id))

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
                self._attempt_lost(rec, now, f"lease on {_short(lease.peer_id)} lost ({reason})", "lease_lost", acts)
        self._pump(now, acts)
        return acts

    def _revoke_leases(self, peer_id: str, reason: str) -> list[Action]:
        acts: list[Action] = []
        for lease in self.leases.revoke_peer(peer_id):
            self.obs.lease(reason)
            acts.append(ReturnLease(peer_id, lease.lease_id, reason))
        return acts

    def _wait_retry(self, rec: JobRecord, now: float) -> None:
        rec.backoff_s = min(self.cfg.max_retry_backoff_s, max(self.cfg.retry_backoff_s, rec.backoff_s * 2))
        rec.retry_at = now + rec.backoff_s
        self._waiting += 1
        self.stats.max_queued = max(self.stats.max_queued, self.queued)
        self._push_timer(rec.retry_at, "retry", rec, 0)

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


CRASH_TAG = "crashed on "  # a failure entry of an attempt that crashed its runner (counted after a restart too)


def crash_count(failures: list[str]) -> int:
    return sum(1 for f in failures if f.startswith(CRASH_TAG))


def _short(peer_id: str) -> str:
    return peer_id[:12] + ("…" if len(peer_id) > 12 else "")
