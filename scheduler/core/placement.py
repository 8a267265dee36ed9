"""Placement: which peer and device should run a job. Pure: no I/O, time passed in.

For every device in the membership view that meets the job's requirements (and whose peer is not expired,
not excluded for this job, and of sufficient standing), the estimated completion time is

    ECT = rtt(peer) + queue wait + cost of the job on that device
    queue wait = max(0, queue_depth + 1 - free_slots) / slots * typical_job_s

(`rtt` is a per-peer estimate, `default_rtt_s` until observed, 0 for this node; `typical_job_s` is an
average of observed run times; the cost comes from a function passed in). Candidates are ranked by ECT;
the first one is drawn at random among the best `d` whose ECT is within `slack` of the best (the power of
d choices, from a seeded RNG), so that many coordinators sharing the same stale view do not all pick the
same peer; ties are also broken at random. This node's own device is taken whenever it is the best.
A realtime job whose deadline no device can meet gets no candidates and the reason.

Speed: a `Placer` keeps the view's devices in numpy columns and refreshes only the rows of peers whose
advert changed since the previous call (found by advert identity), so a decision over 1,000 peers is a
few vector operations. Job cost comes either from `work_fn(job) -> Work` (a device-independent size;
cost = fixed + mulmod work / calibrated mul-mod rate + flop work / calibrated flop rate, computed for every
device at once), or from a scalar `cost_fn(job, device_advert) -> seconds`, evaluated per device and
cached per (kind, spec, input size) until the device's advert changes what it is.

The parts: `tracked_view.py` (`TrackedView`, the view that logs changed peers) and `device_table.py` (the
device columns and their refresh; `Placer` builds on it); here the decision itself.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import msgpack
import numpy as np

from mesh.advert import DeviceAdvert
from mesh.membership import MembershipView
from scheduler.core.cost_feedback import CostFeedback
from scheduler.core.device_table import DeviceTable
from scheduler.core.job import Job
from scheduler.core.tracked_view import TrackedView

CostFn = Callable[[Job, DeviceAdvert], float]


@dataclass(frozen=True)
class Work:
    """A job's size independent of the device: cost on device = fixed_s + mulmod_m / device.mulmod_mops
    + gflop / device.f32_gflops (a device with a zero rate for work the job has costs infinity)."""

    fixed_s: float = 0.0
    mulmod_m: float = 0.0  # millions of Goldilocks mul-mods
    gflop: float = 0.0  # billions of float32 operations

    def cost_s(self, device: DeviceAdvert) -> float:
        c = self.fixed_s
        for work, rate in ((self.mulmod_m, device.mulmod_mops), (self.gflop, device.f32_gflops)):
            if work:
                c += work / rate if rate > 0 else math.inf
        return c


WorkFn = Callable[[Job], Work | None]


class Candidate(NamedTuple):
    peer_id: str
    device_id: str
    estimate_s: float  # estimated completion time, seconds from now
    rtt_s: float
    wait_s: float
    cost_s: float
    free_slots: int  # the load this estimate assumed (an offer tells the worker how much queue is acceptable)
    queue_depth: int
    local: bool


@dataclass
class Placement:
    """Ranked candidates, best (chosen) first; empty with a human `reason` and a short `code`
    (no_match, excluded, deadline) when the job cannot be placed."""

    candidates: list[Candidate]
    reason: str = ""
    code: str = ""
    matched: int = 0  # devices meeting the requirements, before exclusions

    @property
    def ok(self) -> bool:
        return bool(self.candidates)

    def __iter__(self):
        return iter(self.candidates)


class Placer(DeviceTable):
    """Placement over one MembershipView. Keep one per coordinator (it caches the view's device table)."""

    def __init__(self, view: MembershipView, cost_fn: CostFn | None = None, *, work_fn: WorkFn | None = None,
                 seed: int | None = None, d: int = 8, slack: float = 0.25, jitter: float = 0.02,
                 max_slack: float = 1.0, max_jitter: float = 1.0, min_standing: float = 0.25,
                 default_rtt_s: float = 1e-3, typical_job_s: float = 1.0, limit: int = 8,
                 cost_cache_keys: int = 64, correct_costs: bool = False) -> None:
        self.view = view
        self.feedback: CostFeedback | None = None
        if cost_fn is not None and correct_costs:
            self.feedback = CostFeedback(cost_fn)
            cost_fn = self.feedback.cost
        self.cost_fn = cost_fn
        self.work_fn = work_fn
        self.d = max(1, d)
        # spread: the rank key is ECT x (1 + jitter x U[0,1)), and the choice is among the best d within
        # (1 + slack) x the best ECT. Both widen from their base towards max_ with the rate at which this
        # coordinator's offers are refused (stale views shared by many coordinators: a herd) and narrow
        # back when offers are taken, so an idle mesh gets near-optimal picks and a contended one spreads.
        self.base_slack, self.max_slack = slack, max(slack, max_slack)
        self.base_jitter, self.max_jitter = jitter, max(jitter, max_jitter)
        self.slack = slack
        self.jitter = jitter
        self.contention = 0.0  # EWMA of the share of offers refused
        self.min_standing = min_standing
        self.default_rtt_s = default_rtt_s
        self.typical_job_s = typical_job_s
        self.limit = max(1, limit)
        self._rng = random.Random(seed)
        self._nprng = np.random.default_rng(seed)
        self._rtt: dict[str, float] = {}
        self._cost_cache: OrderedDict[tuple, list] = OrderedDict()  # key -> [costs per row, version]
        self._cost_cache_keys = cost_cache_keys
        self.rebuilds = 0  # full table rebuilds (peers joined or left); for tests and metrics
        self._clear()

    # --- what the coordinator tells it ------------------------------------------------------------------

    def note_load(self, peer_id: str, device_id: str, free_slots: int, queue_depth: int) -> None:
        """A worker's own word on its load (from a claim answer): into the view and this table."""
        self.view.note_load(peer_id, device_id, free_slots, queue_depth)
        for r in self._rows_of(peer_id):
            if self._dev_id[r] == device_id and r < self._free.size:
                self._free[r] = max(0, free_slots)
                self._depth[r] = max(0, queue_depth)
                self._base_dirty = True

    def note_offer(self, peer_id: str, device_id: str) -> None:
        """This coordinator just offered a job to a device: count it as taking a slot there (or queueing behind
        the busy ones) until the worker's own word (claim answer) or its next advert replaces the guess, so a
        burst of jobs placed between two adverts spreads over the mesh instead of piling onto one device."""
        for r in self._rows_of(peer_id):
            if self._dev_id[r] == device_id and r < self._free.size:
                free, depth = int(self._free[r]), int(self._depth[r])
                self.note_load(peer_id, device_id, free - 1 if free > 0 else 0, depth if free > 0 else depth + 1)
                return

    def _slot_freed(self, peer_id: str, device_id: str) -> None:
        """A job ended there: give back the slot `note_offer` (or the worker's claim answer) counted as taken, until
        the next advert says. Without it a device looks busy until its next advert, and a realtime job's estimate
        adds a whole `typical_job_s` of queue wait (a 260 ms frame was refused as "best estimate 1,325 ms")."""
        for r in self._rows_of(peer_id):
            if self._dev_id[r] == device_id and r < self._free.size:
                free, depth = int(self._free[r]), int(self._depth[r])
                if depth > 0:
                    self.note_load(peer_id, device_id, free, depth - 1)
                else:
                    self.note_load(peer_id, device_id, min(free + 1, int(self._slots[r])), 0)
                return

    def observe_rtt(self, peer_id: str, rtt_s: float, alpha: float = 0.2) -> None:
        if peer_id == self.view.self_peer_id or not (rtt_s >= 0 and math.isfinite(rtt_s)):
            return
        old = self._rtt.get(peer_id)
        new = rtt_s if old is None else (1 - alpha) * old + alpha * rtt_s
        self._rtt[peer_id] = new
        for r in self._rows_of(peer_id):
            if r < self._rtt_col.size:
                self._rtt_col[r] = new
                self._base_dirty = True
        if len(self._rtt) > 4 * max(1024, len(self._peers)):  # forget peers long gone
            self._rtt = {k: v for k, v in self._rtt.items() if k in self._peers}

    def observe_claim(self, accepted: bool, alpha: float = 0.05) -> None:
        """An offer's answer: feeds the contention estimate that sets how widely placement spreads."""
        self.contention = (1 - alpha) * self.contention + alpha * (0.0 if accepted else 1.0)
        c = min(1.0, 2.0 * self.contention)  # refusing half the offers already means: spread fully
        self.slack = self.base_slack + (self.max_slack - self.base_slack) * c
        self.jitter = self.base_jitter + (self.max_jitter - self.base_jitter) * c

    def observe_run(self, seconds: float, alpha: float = 0.05, *, job: Job | None = None, peer_id: str = "",
                    device_id: str = "") -> None:
        """A job's observed run time: feeds `typical_job_s` (the time a queued job is expected to hold a slot)
        and, with the job and where it ran, the cost model's correction (`feedback`, see cost_feedback)."""
        if seconds >= 0 and math.isfinite(seconds):
            self.typical_job_s = (1 - alpha) * self.typical_job_s + alpha * seconds
        if peer_id and device_id:
            self._slot_freed(peer_id, device_id)
        if self.feedback is not None and job is not None:
            peer = self.view.get(peer_id)
            dev = next((d for d in peer.devices() if d.id == device_id), None) if peer is not None else None
            if dev is not None and self.feedback.observe(job, dev, seconds):
                self._cost_cache.clear()  # estimates made with the old correction

    # --- the decision ---------------------------------------------------------------------------------------

    def place(self, job: Job, now: float, exclude: Iterable[str] = ()) -> Placement:
        self._refresh()
        req = job.requirements
        mask = self._match(req)
        matched = int(np.count_nonzero(mask)) if mask is not None else len(self._dev_id)
        if matched == 0:
            known = len(self._dev_id)
            return Placement([], f"no peer has {req.describe()} ({known} device{'s' * (known != 1)} known)",
                             "no_match", 0)
        alive = self._expires >= now
        mask = alive if mask is None else (mask & alive)
        # job-independent part of the estimate: rtt + queue wait (full columns: no gathers)
        wait, base = self._base()
        cost = self._cost(job, mask)
        ect = base + cost
        n = ect.size
        if self.jitter:
            key = np.multiply(self._uniform(n), self.jitter)
            key += 1.0
            key *= ect
        else:
            key = ect.copy()
        key[~mask] = np.inf
        if job.deadline is not None:
            remaining = job.deadline - now
            late = ect > remaining
            late &= mask
            if late.any():
                if not (mask & ~late).any():
                    r = int(np.argmin(np.where(mask, ect, np.inf)))
                    return Placement([], f"deadline cannot be met: best estimate {ect[r] * 1000:.1f} ms (on "
                                         f"{self._row_peer[r][:16]}), deadline in {max(0.0, remaining) * 1000:.1f} ms",
                                     "deadline", matched)
                key[late] = np.inf
        excl = exclude if isinstance(exclude, set | frozenset) else set(exclude)
        if job.requirements.avoid_peers:
            excl = excl.union(job.requirements.avoid_peers)
        out: list[Candidate] = []
        n_excluded = 0
        # rank lazily: partition the best few, sort those, widen only if exclusions ate them
        take = min(n, self.limit + len(excl) + 4)
        order = _smallest(key, take)
        seen: set[int] = set()
        row_peer, standing, min_standing = self._row_peer, self.view.standing, self.min_standing
        while True:
            rows = order.tolist()
            cols = zip(rows, key[order].tolist(), ect[order].tolist(), self._rtt_col[order].tolist(),
                       wait[order].tolist(), cost[order].tolist(), self._free[order].tolist(),
                       self._depth[order].tolist(), self._local[order].tolist(), strict=True)
            for r, k, e, rtt, w, c, free, depth, local in cols:
                if k == math.inf:
                    take = n  # the rest are ineligible, late or infinitely costly too
                    break
                pid = row_peer[r]
                if pid in excl or (min_standing > 0 and standing(pid) < min_standing):
                    n_excluded += 1
                    continue
                out.append(Candidate(pid, self._dev_id[r], e, rtt, w, c, int(free), int(depth), local))
                if len(out) == self.limit:
                    break
            if len(out) == self.limit or take >= n:
                break
            seen.update(rows)
            take = min(n, take * 4)
            order = np.array([r for r in _smallest(key, take).tolist() if r not in seen], dtype=np.intp)
        if not out:
            if n_excluded:
                return Placement([], f"no eligible peer: the {matched} matching devices ({req.describe()}) are on "
                                     f"peers excluded for this job (they failed it) or of low standing", "excluded", matched)
            if not mask.any():
                return Placement([], f"no live peer has {req.describe()} (the {matched} matching devices have "
                                     f"expired)", "no_match", matched)
            return Placement([], f"no peer has {req.describe()} that can run this job (cost unknown or infinite)",
                             "no_match", matched)
        self._choose(out)
        return Placement(out, matched=matched)

    def _base(self) -> tuple[np.ndarray, np.ndarray]:
        """(queue wait, rtt + queue wait) per row, recomputed only when load, rtt or typical_job_s changed."""
        if self._base_dirty or self._ist_for != self.typical_job_s:
            wait = np.maximum(0.0, self._depth + 1.0 - self._free)
            wait *= self.typical_job_s / self._slots
            self._ist_for = self.typical_job_s
            self._wait = wait
            self._base_col = wait + self._rtt_col
            self._base_dirty = False
        return self._wait, self._base_col

    def _uniform(self, n: int) -> np.ndarray:
        """n uniform [0, 1) numbers from a buffer refilled 64 decisions at a time."""
        if self._rpos + n > self._rbuf.size:
            self._rbuf = self._nprng.random(max(64 * n, 1024))
            self._rpos = 0
        out = self._rbuf[self._rpos:self._rpos + n]
        self._rpos += n
        return out

    def _choose(self, out: list[Candidate]) -> None:
        best = min(c.estimate_s for c in out)
        for i, c in enumerate(out):
            if c.local and c.estimate_s <= best:
                out.insert(0, out.pop(i))
                return
        bound = best * (1.0 + self.slack)
        pool = [i for i, c in enumerate(out[:self.d]) if c.estimate_s <= bound]
        if len(pool) > 1:
            i = pool[self._rng.randrange(len(pool))]
            out.insert(0, out.pop(i))

    def _cost(self, job: Job, mask: np.ndarray) -> np.ndarray:
        """The job's cost on every row (only rows in `mask` need be right)."""
        n = len(self._dev_id)
        if self.work_fn is not None:
            w = self.work_fn(job)
            if w is not None:
                c = np.full(n, float(w.fixed_s))
                for work, rate in ((w.mulmod_m, self._mulmod), (w.gflop, self._f32)):
                    if work:
                        with np.errstate(divide="ignore"):
                            c += np.where(rate > 0, work / np.where(rate > 0, rate, 1.0), np.inf)
                return c
        if self.cost_fn is None:
            return np.zeros(n)
        key = (job.kind, job.input_size, msgpack.packb(job.spec, use_bin_type=True))
        entry = self._cost_cache.get(key)
        if entry is None:
            entry = [np.full(n, np.nan), -1]  # costs per row, table version at which every live row had one
            self._cost_cache[key] = entry
            while len(self._cost_cache) > self._cost_cache_keys:
                self._cost_cache.popitem(last=False)
        else:
            self._cost_cache.move_to_end(key)
            if entry[1] == self._static_version:
                return entry[0]
        cached = entry[0]
        missing = np.isnan(cached)
        missing &= mask
        if missing.any():
            fn, devs = self.cost_fn, self._devs
            for r in np.flatnonzero(missing).tolist():
                dev = devs[r]
                v = float(fn(job, dev)) if dev is not None else math.inf
                cached[r] = v if v >= 0 else np.inf
        live = np.isnan(cached)
        live &= self._expires > -math.inf
        if not live.any():
            entry[1] = self._static_version
        return cached


def _smallest(key: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest values of key, sorted."""
    if k >= key.size:
        return np.argsort(key, kind="stable")
    part = np.argpartition(key, k - 1)[:k]
    return part[np.argsort(key[part], kind="stable")]


def place(view: MembershipView, job: Job, now: float, cost_fn: CostFn | None = None, *,
          exclude: Iterable[str] = (), seed: int | None = None, **kw) -> Placement:
    """One-off placement (builds a throwaway Placer: fine for tools and tests, slow in a loop)."""
    return Placer(view, cost_fn, seed=seed, **kw).place(job, now, exclude)


__all__ = ["Candidate", "CostFn", "Placement", "Placer", "TrackedView", "Work", "WorkFn", "place"]
