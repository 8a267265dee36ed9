"""Many-node simulation of the scheduler: the real pure cores on an in-memory network and a virtual clock.

Every simulated node runs the production `TrackedView`, `Placer`, `CoordinatorCore` and `WorkerCore`
unchanged; only the I/O around them is simulated:

- gossip: each live node publishes its full-state advert every `advert_interval` (random phase); each
  receiver gets it with probability 1 - `gossip_loss`, after a random delay; views expire peers by TTL;
- data plane: claims, leases, results and cancels arrive reliably after a small random delay, unless the
  receiver is dead;
- executor: per device, `slots` jobs run at once, the rest wait (realtime first by deadline, then
  interactive, then batch), up to `max_queue`; a job runs for its cost on that device (x 0.8..1.25);
- churn: `kill_fraction` of the worker nodes die during the run; some die "loudly" (connections reset: the
  coordinators hear of it at once), the others silently (found by lease expiry);
  `coordinator_restarts` gateways are killed (-9) and restarted from their journal (the real `Journal`,
  SQLite in memory standing in for the disk): their clients resubmit what they wait for (idempotent);
- clients: submit `jobs` jobs (echo-like: the worker hashes the job's spec and inline input) to random
  gateway nodes (which are not killed), cancel a few, and check each job's one outcome and its result.

Deterministic for a seed: one RNG drives everything and events are ordered by (time, sequence). The clock
is a plain event queue (no trio): the cores take `now` as an argument, so they do not care.

Checked invariants: `SimReport.violations()` (`sim_report.py`: exactly one outcome per job, legal state
changes, right results, no offers to expired or dead peers, bounded queues). The simulated node and its
executor are `sim_node.py`; here are the network, the clock, churn and the clients.
`python -m scheduler.devtools.sim` runs the default scenario and prints a summary.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.advert import Advert, DeviceAdvert
from scheduler.core.coordinator_core import (
    Deliver,
    Finish,
    OpenLease,
    ReturnLease,
    SendCancel,
    SendDirect,
    SendOffer,
    StateChanged,
)
from scheduler.core.job import Cancel, Job, JobState, Offer, Priority
from scheduler.core.lifecycle import JobEvent, advance, allowed
from scheduler.core.worker_core import CancelJob, Send, StartJob
from scheduler.devtools.sim_node import SimNode, expected_body
from scheduler.devtools.sim_report import SimConfig, SimReport
from scheduler.node.journal import Journal


@dataclass
class _ClientJob:
    job: Job
    gateway: str
    submitted_at: float
    outcomes: list[str] = field(default_factory=list)
    delivered: int = 0
    finished_at: float | None = None


class Sim:
    def __init__(self, cfg: SimConfig | None = None) -> None:
        self.cfg = cfg or SimConfig()
        self.rng = random.Random(self.cfg.seed)
        self.now = 0.0
        self.seq = 0
        self.events = 0
        self._q: list[tuple[float, int, Callable, tuple]] = []
        self.report = SimReport(self.cfg)
        self.states: dict[str, JobState] = {}  # each job's state as its coordinator reported it
        self.client: dict[str, _ClientJob] = {}
        self._queue_samples: list[float] = []
        self._busy_samples: list[float] = []
        self._done = False
        self._quiet = False  # gossip stopped (after every job has its outcome)
        self._chan_last: dict[tuple[str, str], float] = {}
        self._build()

    # --- the event queue --------------------------------------------------------------------------------

    def after(self, delay: float, fn: Callable, *args: Any) -> None:
        self.at(self.now + delay, fn, *args)

    def at(self, t: float, fn: Callable, *args: Any) -> None:
        self.seq += 1
        heapq.heappush(self._q, (t, self.seq, fn, args))

    def _loop(self, until: float) -> None:
        q = self._q
        while q and not self._done and q[0][0] <= until:
            t, _, fn, args = heapq.heappop(q)
            self.now = t
            self.events += 1
            fn(*args)

    # --- set-up -----------------------------------------------------------------------------------------

    def _build(self) -> None:
        c, rng = self.cfg, self.rng
        self.nodes: dict[str, SimNode] = {}
        for i in range(c.nodes):
            gpu = DeviceAdvert("gpu0", "gpu", "sim", "gpu", 40, rng.choice([8, 16, 24]) << 30, True, True,
                               rng.uniform(2000, 8000), rng.uniform(2.0, 8.0), c.slots, c.slots, 0)
            devs = [gpu]
            if i % 4 == 0:
                devs.append(DeviceAdvert("cpu0", "cpu", "sim", "cpu", 8, 32 << 30, True, True,
                                         rng.uniform(100, 400), rng.uniform(0.3, 1.0), 1, 1, 0))
            n = SimNode(self, i, devs, rng.randrange(1 << 31))
            self.nodes[n.id] = n
        ids = list(self.nodes)
        self.gateways = ids[:c.gateways]
        others = ids[c.gateways:]
        self.victims = rng.sample(others, min(len(others), round(c.nodes * c.kill_fraction)))
        self.journals: dict[str, Journal] = {}
        restart = rng.sample(self.gateways, min(len(self.gateways) - 1, c.coordinator_restarts))
        if restart:
            for g in self.gateways:
                self.journals[g] = Journal(":memory:", wall=lambda: self.now, retention_s=3600.0)
            for g in restart:
                self.after(c.arrival_s * rng.uniform(*c.kill_window), self._crash_coordinator, self.nodes[g])
        # everybody knows everybody at the start (a warmed-up mesh), then gossip keeps it going
        for n in self.nodes.values():
            ad = n.advert()
            for m in self.nodes.values():
                m.view.apply(ad, 0.0)
        for n in self.nodes.values():
            self.after(rng.uniform(0, c.advert_interval), self._publish, n)
            self.after(rng.uniform(0, c.tick_s), self._tick, n)
        self.after(0.5, self._sample_queues)
        k0, k1 = c.kill_window
        for v in self.victims:
            self.after(c.arrival_s * rng.uniform(k0, k1), self._kill, self.nodes[v], rng.random() < c.silent_kill_fraction)
        self._make_jobs()

    def _make_jobs(self) -> None:
        c, rng = self.cfg, self.rng
        for i in range(c.jobs):
            t = rng.uniform(0, c.arrival_s)
            r = rng.random()
            prio = (Priority.REALTIME if r < c.realtime_fraction else
                    Priority.INTERACTIVE if r < c.realtime_fraction + c.interactive_fraction else Priority.BATCH)
            work = rng.lognormvariate(0.0, 0.6)  # GFLOP: ~0.2-0.3 s on the median GPU
            spec = {"seed": rng.randrange(1 << 30), "work": round(work, 4)}
            inp = rng.randbytes(rng.randrange(0, 256))
            deadline_in = rng.uniform(1.0, 5.0) if prio is Priority.REALTIME else None
            self.seq += 1
            heapq.heappush(self._q, (t, self.seq, self._submit, (f"job{i:05d}", prio, spec, inp, deadline_in)))
        self.report.jobs = c.jobs

    # --- gossip -----------------------------------------------------------------------------------------

    def _publish(self, n: SimNode, epoch: int = 1) -> None:
        if not n.alive or self._quiet or epoch != n.epoch:
            return
        c, rng = self.cfg, self.rng
        ad = n.advert()
        n.view.apply(ad, self.now)
        # receivers in a few delay groups: one event per group, not per receiver
        groups: dict[int, list[SimNode]] = {}
        lost = 0
        loss, rnd = c.gossip_loss, rng.random
        scale = 4 / (1 - loss) if loss < 1 else 0.0
        for m in self.nodes.values():
            if m is n or not m.alive:
                continue
            r = rnd()
            if r < loss:
                lost += 1
                continue
            g = int((r - loss) * scale)
            if g in groups:
                groups[g].append(m)
            else:
                groups[g] = [m]
        self.report.gossip_lost += lost
        lo, hi = c.gossip_delay
        for g, members in sorted(groups.items()):
            self.after(lo + (hi - lo) * (g + rng.random()) / 4, self._deliver_advert, ad, members)
        self.after(c.advert_interval * rng.uniform(0.9, 1.1), self._publish, n, epoch)

    def _deliver_advert(self, ad: Advert, members: list[SimNode]) -> None:
        now = self.now
        for m in members:
            if m.alive:
                m.view.apply(ad, now)
        self.report.gossip_delivered += len(members)

    # --- data plane -------------------------------------------------------------------------------------

    def _send(self, src: SimNode, dst_id: str, fn: Callable, msg: Any) -> None:
        dst = self.nodes.get(dst_id)
        if dst is None:
            return
        delay = 1e-5 if dst is src else self.rng.uniform(*self.cfg.msg_delay)
        # one ordered connection per pair of nodes, as over the data plane: no overtaking
        chan = (src.id, dst_id)
        at = max(self.now + delay, self._chan_last.get(chan, 0.0))
        self._chan_last[chan] = at
        self.at(at, self._arrive, src.id, dst, dst.epoch, fn, msg)

    def _arrive(self, src_id: str, dst: SimNode, epoch: int, fn: Callable, msg: Any) -> None:
        if dst.alive and dst.epoch == epoch:  # (a restarted receiver: the old connection died with it)
            fn(dst, src_id, msg)

    def coord_acts(self, n: SimNode, acts: list) -> None:
        j = self.journals.get(n.id)
        if j is not None and acts:
            j.apply(acts, self.now)  # before anything else, as the real service does
        for a in acts:
            t = type(a)
            if t is SendOffer:
                self._check_offer(n, a)
                self._send(n, a.peer_id, self._on_offer, a.offer)
            elif t is SendCancel:
                self._send(n, a.peer_id, self._on_cancel, a.cancel)
            elif t is SendDirect:  # on the lease's stream: ordered after its OpenLease on the same connection
                self._send(n, a.peer_id, self._on_direct, (a.lease_id, a.offer))
            elif t is OpenLease:
                self._send(n, a.peer_id, self._on_lease_open, a.lease_id)
            elif t is ReturnLease:
                self._send(n, a.peer_id, self._on_lease_close, a.lease_id)
            elif t is StateChanged:
                self._check_transition(a.job_id, a.state)
            elif t is Deliver:
                cj = self.client[a.job_id]
                cj.delivered += 1
                if a.result.body != expected_body(cj.job) or a.result.job_id != a.job_id:
                    self.report.wrong_results.append(a.job_id)
            elif t is Finish:
                self._check_transition(a.job_id, a.state)
                cj = self.client[a.job_id]
                cj.outcomes.append(a.state.value)
                cj.finished_at = self.now
                if a.state is JobState.FAILED:
                    self.report.failed_reasons[_reason_class(a.reason)] += 1
                self._maybe_done()

    def _check_transition(self, job_id: str, after: JobState) -> None:
        """Every state change a coordinator reports must be a move of the lifecycle table."""
        before = self.states.get(job_id, JobState.SUBMITTED)
        if not allowed(before, after):
            self.report.illegal_transitions.append(f"{job_id}: {before.value} -> {after.value}")
        self.states[job_id] = after

    def worker_acts(self, n: SimNode, acts: list) -> None:
        for a in acts:
            t = type(a)
            if t is Send:
                self._send(n, a.peer_id, self._on_worker_msg, a.message)
            elif t is StartJob:
                # the input would stream here; inline inputs ride with the offer
                self.after(self.rng.uniform(*self.cfg.msg_delay), self._enqueue, n, a)
            elif t is CancelJob:
                n.executor.cancel((a.job_id, a.attempt))

    def _enqueue(self, n: SimNode, a: StartJob) -> None:
        if not n.alive or not n.worker.holds(a.job.job_id, a.attempt):
            return
        n.executor.enqueue(a.job, a.attempt, a.device_id)
        self.worker_acts(n, n.worker.enqueued(a.job.job_id, a.attempt, self.now))

    def _on_offer(self, n: SimNode, src: str, offer: Offer) -> None:
        self.worker_acts(n, n.worker.on_offer(src, offer, self.now))

    def _on_direct(self, n: SimNode, src: str, msg: tuple[str, Offer]) -> None:
        self.worker_acts(n, n.worker.on_direct(src, msg[0], msg[1], self.now))

    def _on_lease_open(self, n: SimNode, src: str, lease_id: str) -> None:
        if not n.worker.lease_opened(src, lease_id):  # the stream is refused: its coordinator hears at once
            self._send(n, src, self._on_lease_refused, lease_id)

    def _on_lease_refused(self, n: SimNode, src: str, lease_id: str) -> None:
        self.coord_acts(n, n.coord.lease_lost(lease_id, self.now, "no such lease"))

    def _on_lease_close(self, n: SimNode, src: str, lease_id: str) -> None:
        n.worker.lease_closed(lease_id)

    def _on_cancel(self, n: SimNode, src: str, cancel: Cancel) -> None:
        self.worker_acts(n, n.worker.on_cancel(src, cancel, self.now))

    def _on_worker_msg(self, n: SimNode, src: str, msg: Any) -> None:
        self.coord_acts(n, n.coord.handle(src, msg, self.now))

    def _check_offer(self, n: SimNode, a: SendOffer) -> None:
        r = self.report
        r.offers += 1
        target = a.peer_id
        if target != n.id:
            st = n.view.get(target)
            if st is None or self.now > st.expires_at:
                r.offers_after_expiry += 1
        dead = self.nodes[target]
        if not dead.alive:
            r.offers_to_dead += 1
            assert dead.died_at is not None
            if self.now > dead.died_at + self.cfg.gossip_delay[1] + self.cfg.ttl:
                r.offers_to_dead_after_expiry += 1

    # --- nodes ------------------------------------------------------------------------------------------

    def _tick(self, n: SimNode, epoch: int = 1) -> None:
        if not n.alive or epoch != n.epoch:
            return
        now = self.now
        self.coord_acts(n, n.coord.tick(now))
        self.worker_acts(n, n.worker.tick(now))
        n.ticks += 1
        if n.ticks % 5 == 0:
            for ev in n.view.expire(now):
                self.coord_acts(n, n.coord.worker_expired(ev.peer_id, now))
        self.after(self.cfg.tick_s, self._tick, n, epoch)

    def _kill(self, n: SimNode, silent: bool) -> None:
        n.alive = False
        n.died_at = self.now
        self.report.killed += 1
        if not silent:  # kill -9: the kernel resets its connections; peers hear of it shortly
            self.after(self.rng.uniform(0.005, 0.05), self._connections_reset, n)

    def _connections_reset(self, dead: SimNode) -> None:
        for m in self.nodes.values():
            if m.alive:
                self.coord_acts(m, m.coord.worker_lost(dead.id, self.now, "connection lost"))
                self.worker_acts(m, m.worker.coordinator_lost(dead.id, self.now))

    def _crash_coordinator(self, n: SimNode) -> None:
        """kill -9 of a gateway: coordinator and worker gone, connections reset; restarted later."""
        n.alive = False
        n.died_at = self.now
        self.after(self.rng.uniform(0.005, 0.05), self._connections_reset, n)
        self.after(self.cfg.restart_after_s, self._restart, n)

    def _restart(self, n: SimNode) -> None:
        n.start(self.rng.randrange(1 << 31))
        n.died_at = None
        self.report.restarts += 1
        n.view.apply(n.advert(), self.now)
        entries = self.journals[n.id].load(self.now)
        for e in entries:  # journal recovery: an unfinished job is placed again, by the table's `resumed`
            self.states[e.job.job_id] = e.state if e.state.terminal else advance(e.state, JobEvent.RESUMED)
        acts = n.coord.restore(entries, self.now)
        self.coord_acts(n, acts)
        for e in entries:
            if e.state.terminal:
                self.report.restored_finished += 1
                cj = self.client[e.job.job_id]
                if cj.outcomes and (cj.outcomes[0] != e.state.value or (e.state is JobState.DONE and (
                        e.result is None or e.result.body != expected_body(cj.job)))):
                    self.report.wrong_results.append(e.job.job_id)
            else:
                self.report.restored_unfinished += 1
        self.after(self.rng.uniform(0, 0.05), self._publish, n, n.epoch)
        self.after(self.rng.uniform(0, self.cfg.tick_s), self._tick, n, n.epoch)
        # its clients reconnect and resubmit what they are waiting for: the journal must know every one
        for jid, cj in self.client.items():
            if cj.gateway == n.id and not cj.outcomes:
                ans, acts = n.coord.submit(cj.job, self.now)
                if not ans.duplicate:
                    self.report.lost_by_restart.append(jid)
                self.coord_acts(n, acts)

    def _sample_queues(self) -> None:
        depths = [len(d.queue) for n in self.nodes.values() if n.alive for d in n.executor.devs.values()]
        if depths:
            mean = statistics.fmean(depths)
            self._queue_samples.append(mean)
            if max(depths) > 0:
                self._busy_samples.append(mean)
            self.note_queue(max(depths))
        if not self._done:
            self.after(0.5, self._sample_queues)

    def note_queue(self, depth: int) -> None:
        if depth > self.report.max_queue:
            self.report.max_queue = depth

    # --- clients ----------------------------------------------------------------------------------------

    def _submit(self, job_id: str, prio: Priority, spec: dict, inp: bytes, deadline_in: float | None) -> None:
        gw = self.nodes[self.rng.choice(self.gateways)]
        if not gw.alive:  # the client cannot reach it: it tries another
            gw = self.nodes[self.rng.choice([g for g in self.gateways if self.nodes[g].alive])]
        job = Job("simecho", spec, job_id=job_id, input=inp, priority=prio,
                  deadline=None if deadline_in is None else self.now + deadline_in, timeout_s=120.0)
        cj = _ClientJob(job, gw.id, self.now)
        self.client[job_id] = cj
        ans, acts = gw.coord.submit(job, self.now)
        if not ans.accepted:
            cj.outcomes.append("refused")
            cj.finished_at = self.now
            self.report.refused_reasons[_reason_class(ans.reason)] += 1
        self.coord_acts(gw, acts)
        if ans.accepted and self.rng.random() < self.cfg.cancel_fraction:
            self.after(self.rng.uniform(0.0, 1.0), self._cancel, gw, job_id)
        self._maybe_done()

    def _cancel(self, gw: SimNode, job_id: str) -> None:
        if not gw.alive:
            return
        _, acts = gw.coord.cancel(job_id, self.now)
        self.coord_acts(gw, acts)

    def _maybe_done(self) -> None:
        if len(self.client) == self.cfg.jobs and all(cj.outcomes for cj in self.client.values()):
            if not hasattr(self, "_all_done_at"):
                self._all_done_at = self.now

    # --- run --------------------------------------------------------------------------------------------

    def run(self) -> SimReport:
        t0 = time.perf_counter()
        c = self.cfg
        # run until every job has its outcome, then one more lease (gossip off) to catch late duplicates
        step = 0.5
        until = step
        while until < c.max_sim_s:
            self._loop(until)
            done_at = getattr(self, "_all_done_at", None)
            if done_at is not None:
                self._quiet = True
                if self.now >= done_at + c.lease_s:
                    break
            until += step
        self._done = True
        self._finish_report(time.perf_counter() - t0)
        return self.report

    def _finish_report(self, wall: float) -> None:
        r = self.report
        r.sim_time_s = self.now
        r.wall_s = wall
        r.events = self.events
        lat: dict[str, list[float]] = {}
        for jid, cj in sorted(self.client.items()):
            if not cj.outcomes:
                r.missing.append(jid)
                continue
            if len(cj.outcomes) > 1:
                r.multiple.append(jid)
            if cj.delivered > 1:
                r.double_delivered.append(jid)
            r.outcomes[cj.outcomes[0]] += 1
            if cj.outcomes[0] == "done" and cj.finished_at is not None:
                lat.setdefault(cj.job.priority.value, []).append(cj.finished_at - cj.submitted_at)
        r.missing += [f"never-submitted:{self.cfg.jobs - len(self.client)}"] if len(self.client) < self.cfg.jobs else []
        for n in self.nodes.values():
            s = n.coord.stats
            r.retries += s.retries
            r.duplicates_dropped += s.duplicates_dropped
            r.claims_rejected += s.claims_rejected
            r.claims_timed_out += s.claims_timed_out
            r.deadline_misses += s.deadline_misses
            r.leases_acquired += n.coord.leases.stats.acquired
            r.jobs_on_leases += n.coord.leases.stats.direct
            r.leases_revoked += n.coord.leases.stats.revoked
        per_slot = [d.jobs_run / d.advert.slots for n in self.nodes.values() for d in n.executor.devs.values()
                    if d.advert.kind == "gpu" and n.alive]
        if per_slot:
            r.jobs_per_slot_max = max(per_slot)
            r.jobs_per_slot_mean = statistics.fmean(per_slot)
        if self._queue_samples:
            r.mean_queue = statistics.fmean(self._queue_samples)
        if self._busy_samples:
            r.mean_queue_busy = statistics.fmean(self._busy_samples)
        for k, xs in lat.items():
            xs.sort()
            r.latency_p50_s[k] = xs[len(xs) // 2]
            r.latency_p99_s[k] = xs[min(len(xs) - 1, math.ceil(0.99 * len(xs)) - 1)]


def _reason_class(reason: str) -> str:
    """A failure/refusal reason without its numbers (for counting)."""
    for key in ("deadline cannot be met", "deadline missed", "saturated", "failed on", "timed out", "no peer",
                "no live peer", "no eligible peer", "cancelled"):
        if key in reason:
            return key
    return reason[:40]


def run(cfg: SimConfig | None = None) -> SimReport:
    return Sim(cfg).run()


def main(argv: list[str] | None = None) -> int:
    d = SimConfig()
    ap = argparse.ArgumentParser(prog="python -m scheduler.devtools.sim", description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=d.nodes)
    ap.add_argument("--jobs", type=int, default=d.jobs)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--kill", type=float, default=d.kill_fraction, help="fraction of worker nodes killed")
    ap.add_argument("--loss", type=float, default=d.gossip_loss, help="gossip loss probability")
    ap.add_argument("--arrival", type=float, default=d.arrival_s, help="seconds over which jobs arrive")
    ap.add_argument("--restarts", type=int, default=d.coordinator_restarts,
                    help="coordinators killed and restarted from their journal")
    a = ap.parse_args(argv)
    cfg = SimConfig(nodes=a.nodes, jobs=a.jobs, seed=a.seed, kill_fraction=a.kill, gossip_loss=a.loss,
                    arrival_s=a.arrival, gateways=min(d.gateways, max(2, a.nodes // 5)),
                    coordinator_restarts=a.restarts)
    print(f"simulating {cfg.nodes} nodes, {cfg.jobs} jobs, seed {cfg.seed} ...", flush=True)
    rep = run(cfg)
    print(rep.summary())
    return 0 if not rep.violations() else 1


__all__ = ["Sim", "main", "run"]


if __name__ == "__main__":
    sys.exit(main())
