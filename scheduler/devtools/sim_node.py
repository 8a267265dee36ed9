"""A simulated node of the scheduler simulation (`sim.py`): the real cores, a simulated executor.

`SimNode` runs the production `TrackedView`, `Placer`, `CoordinatorCore` and `WorkerCore` unchanged; a
restart gives it fresh cores, view and executor (its journal, the disk, is the sim's), and its advert shows
its devices with the load its WorkerCore reports.

`SimExecutor`: per device, `slots` jobs run at once, the rest wait (realtime first by deadline, then
interactive, then batch), up to `max_queue`; a job runs for its cost on that device (x 0.8..1.25) and returns
`expected_body(job)` (echo-like: a hash of the job's spec and inline input), which the clients check.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mesh.advert import Advert, DeviceAdvert
from scheduler.core.coordinator_core import CoordinatorConfig, CoordinatorCore
from scheduler.core.job import Job, Result
from scheduler.core.placement import Placer, TrackedView, Work
from scheduler.core.worker_core import DeviceLoad, WorkerCore

if TYPE_CHECKING:
    from scheduler.devtools.sim import Sim

KEY = b"k" * 32


def expected_body(job: Job) -> dict[str, Any]:
    """What a correct worker returns for a simulated job: a hash of its spec and its input."""
    h = hashlib.sha256(job.job_id.encode() + b":" + str(job.spec.get("seed")).encode() + b":" + (job.input or b""))
    return {"digest": h.hexdigest()[:32], "input_bytes": job.input_size}


def _work(job: Job) -> Work:
    return Work(fixed_s=0.02, gflop=float(job.spec.get("work", 0.0)))


@dataclass
class _Dev:
    advert: DeviceAdvert
    running: dict[tuple[str, int], int] = field(default_factory=dict)  # key -> completion token
    queue: list[tuple[int, float, int, tuple[str, int]]] = field(default_factory=list)
    jobs_run: int = 0


class SimExecutor:
    """Per-device slots and a priority queue; what a real executor would report through load()."""

    def __init__(self, sim: Sim, node: SimNode, devices: list[DeviceAdvert]) -> None:
        self.sim, self.node = sim, node
        self.devs = {d.id: _Dev(d) for d in devices}
        self.jobs: dict[tuple[str, int], tuple[Job, str]] = {}
        self._token = 0

    def load(self) -> dict[str, DeviceLoad]:
        mq = self.sim.cfg.max_queue
        return {i: DeviceLoad(max(0, d.advert.slots - len(d.running)), len(d.queue), mq, d.advert.slots)
                for i, d in self.devs.items()}

    def enqueue(self, job: Job, attempt: int, dev_id: str) -> None:
        d = self.devs[dev_id]
        key = (job.job_id, attempt)
        self.jobs[key] = (job, dev_id)
        self.sim.seq += 1
        heapq.heappush(d.queue, (job.priority.rank, job.deadline or 0.0, self.sim.seq, key))
        self.sim.note_queue(len(d.queue))
        self._start(d)

    def cancel(self, key: tuple[str, int]) -> None:
        if key not in self.jobs:
            return
        _, dev_id = self.jobs.pop(key)
        d = self.devs[dev_id]
        if key in d.running:
            del d.running[key]
        else:
            d.queue = [q for q in d.queue if q[3] != key]
            heapq.heapify(d.queue)
        self.sim.worker_acts(self.node, self.node.worker.finished(key[0], key[1], None, self.sim.now))
        self._start(d)

    def _start(self, d: _Dev) -> None:
        while d.queue and len(d.running) < d.advert.slots:
            _, _, _, key = heapq.heappop(d.queue)
            if key not in self.jobs:
                continue
            job, _ = self.jobs[key]
            self._token += 1
            d.running[key] = self._token
            d.jobs_run += 1
            run_s = _work(job).cost_s(d.advert) * self.sim.rng.uniform(0.8, 1.25)
            self.sim.after(run_s, self._complete, d, key, self._token, run_s)
            self.sim.worker_acts(self.node, self.node.worker.started(key[0], key[1], self.sim.now))

    def _complete(self, d: _Dev, key: tuple[str, int], token: int, run_s: float) -> None:
        if not self.node.alive or self.node.executor is not self or d.running.get(key) != token:
            return
        del d.running[key]
        job, dev_id = self.jobs.pop(key)
        res = Result(expected_body(job), job_id=key[0], attempt=key[1], device=dev_id, timings={"run_s": run_s})
        self.sim.worker_acts(self.node, self.node.worker.finished(key[0], key[1], res, self.sim.now))
        self._start(d)


class SimNode:
    def __init__(self, sim: Sim, idx: int, devices: list[DeviceAdvert], placer_seed: int) -> None:
        self.id = f"node{idx:04d}"
        self.sim = sim
        self.died_at: float | None = None
        self.seq = 0  # advert sequence: survives a restart (the real one is time-based)
        self.devices = devices
        self.epoch = 0
        self.start(placer_seed)

    def start(self, placer_seed: int) -> None:
        """(Re)start the process: fresh cores, view and executor; the journal (disk) is the sim's."""
        sim, cc = self.sim, self.sim.cfg
        self.alive = True
        self.ticks = 0
        self.epoch += 1
        self.view = TrackedView(self.id, ttl_s=cc.ttl)
        self.placer = Placer(self.view, work_fn=_work, seed=placer_seed, **cc.placer)
        self.coord = CoordinatorCore(self.id, self.view, self.placer, CoordinatorConfig(
            lease_s=cc.lease_s, claim_timeout_s=cc.claim_timeout_s, max_in_flight=512, max_queued=20_000,
            retry_backoff_s=0.05, max_retry_backoff_s=1.0, no_candidate_grace_s=10.0))
        self.executor = SimExecutor(sim, self, self.devices)
        self.worker = WorkerCore(self.id, self.executor.load)

    def advert(self) -> Advert:
        self.seq += 1
        load = self.worker.current_load()
        devs = tuple(DeviceAdvert(d.id, d.kind, d.vendor, d.name, d.compute_units, d.global_mem_bytes, d.fp64,
                                  d.int64, d.mulmod_mops, d.f32_gflops, d.slots, load[d.id][0], load[d.id][1])
                     for d in self.devices)
        return Advert(self.id, KEY, self.seq, 0.0, data_addr=f"{self.id}:4002", devices=devs, interval_s=1.0)


__all__ = ["SimExecutor", "SimNode", "expected_body"]
