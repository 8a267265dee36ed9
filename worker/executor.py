"""The node's job executor: `Executor`, the trio runner over the per-device priority queues.

The parts:
- `worker.priority_queues.PriorityQueues`: the pure core (no trio, no I/O; the current time is passed in). Per
  device: a number of slots, a bounded queue ordered realtime first (earliest deadline first), then
  interactive, then batch (FIFO within a class), admission (bounded queues, realtime deadline check), which
  job gets a freed slot, and whether a running job should yield its slot at a checkpoint to a more urgent
  queued one.
- `worker.refusals`: `Refused` and its kinds (`Saturated`, `DeadlineUnmeetable`, `Unsatisfiable`,
  `DuplicateJob`).
- `worker.jobs`: `JobRequest`, `JobHandle`, `Outcome`; `worker.capacity`: `Capacity` for the advert.
- `Executor` (here): the thin trio runner. `submit()` validates the job against its kind, picks a device,
  admits it (or raises a `Refused`) and returns a `JobHandle` with the queued position; jobs run as tasks in
  the executor's nursery; `cancel(job_id)` removes a queued job or cancels a running one at its next chunk
  boundary; `capacity()` feeds the advert.
This module still exports the names its users import from it (the refusals, JobRequest, PriorityQueues,
Priority, ...).

Preemption: a running job reaches `ctx.checkpoint()` between chunks; if a job of a strictly more urgent
class is queued on its device and no slot is free, it gives its slot up and waits (state "suspended",
ahead of later jobs of its class) until a slot is granted back. So a realtime job waits at most one chunk
of batch or interactive work (per slot), and realtime jobs are never preempted.

Realtime admission is a list-scheduling estimate on the device: slots become free when running realtime
jobs finish and when running preemptible jobs reach their next checkpoint (`chunk_s`); queued realtime jobs
ahead (earlier deadline) run first. A realtime job whose estimated finish is after its deadline, or whose
admission would make an already-accepted realtime job miss its deadline, is refused at once with the
estimate in the reason. A queued realtime job that can no longer finish by its deadline when its turn comes
fails ("expired") instead of running late.

Queue bounds: each device holds at most `max_queued` queued realtime jobs and, separately, at most
`max_queued` queued interactive + batch jobs (so a batch flood never locks realtime work out); jobs given
back by preemption are not counted against the bound (they were admitted already).

A node with no OpenCL device gets the "cpu-reference" pseudo-device, on which kinds run their CPU path.
worker/ knows nothing of the network; times are trio times (`trio.current_time()`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from prometheus_client import Counter, Gauge, Histogram

from worker import kinds as kinds_mod
from worker import kinds_basic
from worker.capacity import Capacity, DeviceCapacity
from worker.compute.runner import add_quarantine_listener, quarantined_devices
from worker.devices import Device
from worker.jobs import JobHandle, JobRequest, Outcome, make_outcome
from worker.kinds import InputReader, JobKind, KindRegistry, Result, RunContext
from worker.opencl import open_device
from worker.priority import Priority
from worker.priority_queues import DEFAULT_MAX_QUEUED, DeviceLoad, Entry, Estimate, PriorityQueues
from worker.refusals import DeadlineUnmeetable, DuplicateJob, Refused, Saturated, Unsatisfiable
from worker.runner.pool import RunnerCrashed, RunnerLease, RunnerPool

__all__ = [
    "DEFAULT_MAX_QUEUED", "Capacity", "DeadlineUnmeetable", "DeviceCapacity", "DeviceLoad", "DuplicateJob",
    "Entry", "Estimate", "Executor", "JobHandle", "JobRequest", "OpenFn", "Outcome", "Priority",
    "PriorityQueues", "Refused", "Saturated", "Unsatisfiable",
]

log = logging.getLogger(__name__)


# --- metrics --------------------------------------------------------------------------------------------

QUEUE_DEPTH = Gauge("gpumesh_executor_queue_depth", "Jobs waiting for a slot (queued or preempted)", ["device"])
RUNNING = Gauge("gpumesh_executor_running_jobs", "Jobs holding a slot", ["device"])
FREE_SLOTS = Gauge("gpumesh_executor_free_slots", "Slots not held by a job", ["device"])
JOBS = Counter("gpumesh_executor_jobs_total", "Jobs finished by the executor", ["kind", "outcome"])
REFUSED = Counter("gpumesh_executor_refused_total", "Jobs refused at submit", ["reason"])
PREEMPTIONS = Counter("gpumesh_executor_preemptions_total", "Times a running job gave its slot to a more urgent one")
DEADLINE_MISSES = Counter("gpumesh_executor_deadline_misses_total",
                          "Realtime jobs that expired in the queue or finished after their deadline")
QUEUE_WAIT = Histogram("gpumesh_executor_queue_wait_seconds", "Time from admission to first start", ["priority"],
                       buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300))
RUN_TIME = Histogram("gpumesh_executor_run_seconds", "Time from first start to end", ["kind"],
                     buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600))



@dataclass(eq=False)
class _Job:
    req: JobRequest
    kind: JobKind
    device: Device
    handle: JobHandle
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    resume: trio.Event | None = None
    cancel_reason: str | None = None
    fail_reason: str | None = None


OpenFn = Callable[[Device], Awaitable[Any]]


async def _default_open(device: Device) -> Any:
    if not device.opencl:
        return None

    return await open_device(device)


class Executor:
    """The node's executor: per-device priority queues, slots, and the job tasks.

    Run it with `await nursery.start(executor.run)`. `submit()`, `cancel()` and `capacity()` are synchronous
    (call them from trio tasks). `open_device(device)` gives the RunContext's OpenCL context (None: CPU path);
    tests pass a stub. `on_change()` is called after every capacity change (debounce it for adverts).
    With `runners` (the node's way), jobs on an OpenCL device get a runner lease instead (`ctx.runner`): their
    device code runs in a runner process, and a job whose runner dies under it ends "crashed"; the pool runs in
    the executor's nursery and follows `set_devices`.
    """

    def __init__(
        self,
        devices: Sequence[Device],
        *,
        slots: int | Mapping[str, int] = 1,
        max_queued: int = DEFAULT_MAX_QUEUED,
        registry: KindRegistry | None = None,
        open_device: OpenFn = _default_open,
        on_change: Callable[[], None] | None = None,
        input_chunk_size: int = 1 << 20,
        runners: RunnerPool | None = None,
    ) -> None:
        self._slots_cfg = slots
        self._core = PriorityQueues(max_queued=max_queued)
        if registry is None:
            registry = kinds_basic.load_builtin_kinds()
        self.registry = registry
        self._open = open_device
        self._on_change = on_change
        self._input_chunk = input_chunk_size
        self._runners = runners
        self._devices: dict[str, Device] = {}
        self._jobs: dict[str, _Job] = {}
        self._nursery: trio.Nursery | None = None
        self._stopped = False
        self._gauges: dict[str, tuple[Any, Any, Any]] = {}
        self.set_devices(devices)

    # devices
    def _slots_for(self, device_id: str) -> int:
        if isinstance(self._slots_cfg, int):
            return self._slots_cfg
        return int(self._slots_cfg.get(device_id, 1))

    @property
    def devices(self) -> tuple[Device, ...]:
        return tuple(self._devices.values())

    def set_devices(self, devices: Sequence[Device], *, reference_fallback: bool = True) -> None:
        """Adopt a new device list (after a rescan). Jobs on devices that went away fail with that reason.

        With no OpenCL device at all, the cpu-reference pseudo-device takes jobs on kinds' CPU paths.
        """
        devices = [d for d in devices if d.opencl] or ([Device.cpu_reference()] if reference_fallback else [])
        new = {d.id: d for d in devices}
        for dev_id in list(self._devices):
            if dev_id not in new or not new[dev_id].same_hardware(self._devices[dev_id]):
                self._drop_device(dev_id)
        for d in devices:
            self._devices[d.id] = d
            self._core.add_device(d.id, self._slots_for(d.id))
        if self._runners is not None:
            self._runners.set_devices(devices, self._slots_for)
        self._changed()

    def _drop_device(self, dev_id: str) -> None:
        dev = self._devices.pop(dev_id)
        for e in self._core.remove_device(dev_id):
            job: _Job = e.payload
            reason = f"device {dev_id} ({dev.name}) went away"
            if e.state == "queued":
                self._end(job, e, make_outcome(job.req.job_id, "failed", error=reason, device_id=dev_id))
            else:
                job.fail_reason = reason
                job.scope.cancel()
        self._gauges.pop(dev_id, None)
        for g in (QUEUE_DEPTH, RUNNING, FREE_SLOTS):
            try:
                g.remove(dev_id)
            except KeyError:
                pass

    # running
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run job tasks until cancelled; then every job still here ends as cancelled ("executor stopped")."""

        token = trio.lowlevel.current_trio_token()
        # a runaway kernel of a failed compute job holds its device: no slot there is given out (or advertised)
        # until it ends; told from any thread (an OpenCL callback), applied in this trio thread
        unlisten = add_quarantine_listener(lambda dev_id, info: token.run_sync_soon(self._quarantine, dev_id,
                                                                                     info is not None))
        for dev_id in quarantined_devices():
            self._quarantine(dev_id, True)
        try:
            async with trio.open_nursery() as nursery:
                if self._runners is not None:
                    await nursery.start(self._runners.run)
                self._nursery = nursery
                self._dispatch()
                task_status.started()
                await trio.sleep_forever()
        finally:
            unlisten()
            self._nursery = None
            self._stopped = True
            now = trio.current_time()
            for job in list(self._jobs.values()):
                e = self._core.finish(job.req.job_id, now)
                self._end(job, e, make_outcome(job.req.job_id, "cancelled", error="executor stopped",
                                           device_id=job.device.id))

    def _quarantine(self, dev_id: str, held: bool) -> None:
        if self._core.hold(dev_id, held):
            log.warning("device %s %s", dev_id, "quarantined: its slots are held back until the runaway kernel "
                        "ends" if held else "is free again: its slots are given out")
            if self._nursery is not None:
                self._dispatch()
            else:
                self._changed()

    def _count(self, dev_id: str, i: int) -> float:
        return self._core.counts(dev_id)[i] if self._core.has_device(dev_id) else 0.0

    def _changed(self) -> None:
        if len(self._gauges) != len(self._devices):
            for dev_id in self._core.devices():
                if dev_id not in self._gauges:  # read when scraped: nothing to set per job
                    gauges = self._gauges[dev_id] = (RUNNING.labels(dev_id), QUEUE_DEPTH.labels(dev_id),
                                                     FREE_SLOTS.labels(dev_id))
                    for i, g in enumerate(gauges):
                        g.set_function(partial(self._count, dev_id, i))
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("executor on_change callback failed")

    def _dispatch(self) -> None:
        if self._nursery is None:
            return
        now = trio.current_time()
        for dev_id in self._core.devices():
            started, expired = self._core.grant(dev_id, now)
            for e in expired:
                job: _Job = e.payload
                DEADLINE_MISSES.inc()
                self._end(job, e, make_outcome(job.req.job_id, "failed", device_id=dev_id, queued_s=now - e.enqueued_at,
                                          error="expired: can no longer finish by its deadline"))
            for e in started:
                job = e.payload
                if job.resume is not None:  # a suspended job gets its slot back
                    job.handle.state = "running"
                    job.resume.set()
                    job.resume = None
                else:
                    job.handle.state = "running"
                    job.handle.started.set()
                    QUEUE_WAIT.labels(e.priority.value).observe(now - e.enqueued_at)
                    self._nursery.start_soon(self._job_task, job, name=f"job {e.job_id}")
        self._changed()

    def submit(self, req: JobRequest) -> JobHandle:
        """Admit a job; returns its handle (with the queued position). Raises Refused, UnknownKind, SpecError."""
        try:
            return self._submit(req)
        except Refused as e:
            REFUSED.labels(e.reason).inc()
            raise
        except (kinds_mod.SpecError, kinds_mod.UnknownKind, ValueError):
            REFUSED.labels("invalid").inc()
            raise

    def _submit(self, req: JobRequest) -> JobHandle:
        if self._stopped:
            raise Refused("executor stopped")
        if req.job_id in self._jobs:
            raise DuplicateJob(f"job {req.job_id} is already queued or running here")
        kind = self.registry.get(req.kind)
        assert req.input_size is not None
        kind.validate(req.spec, req.input_size)
        reqs = kind.requirements(req.spec)
        if req.requirements is not None:
            reqs = reqs.merged(req.requirements)
        candidates = list(self._devices.values())
        if req.device_id is not None:
            candidates = [d for d in candidates if d.id == req.device_id]
            if not candidates:
                raise Unsatisfiable(f"no device {req.device_id!r} here; devices: {', '.join(self._devices)}")
        fits = [d for d in candidates if reqs.satisfied_by(d)]
        if not fits:
            why = "; ".join(f"{d.id} ({d.name}): {reqs.unmet(d)}" for d in candidates)
            raise Unsatisfiable(f"no device here meets the requirements of this {req.kind} job: {why}")
        now = trio.current_time()
        prio = Priority.parse(req.priority)
        ests = []
        for d in fits:
            cost = float(kind.cost_s(req.spec, req.input_size, d))
            chunk = float(kind.chunk_s(req.spec, req.input_size, d))
            # the earliest estimated finish first (an estimate walks the device's queue: only to choose)
            finish = self._core.estimate(d.id, prio, cost, req.deadline, now).finish if len(fits) > 1 else 0.0
            ests.append((finish, d.id, d, cost, chunk))
        ests.sort(key=lambda t: (t[0], t[1]))
        first_refusal: Refused | None = None
        for _, _, d, cost, chunk in ests:
            job = _Job(req, kind, d, JobHandle(req.job_id, d.id, 0, prio))
            try:
                entry, pos = self._core.admit(req.job_id, d.id, prio, cost, chunk, req.deadline, now, payload=job)
            except Refused as e:
                first_refusal = first_refusal or e
                continue
            self._jobs[req.job_id] = job
            self._dispatch()
            job.handle.position = self.position(req.job_id) or 0
            return job.handle
        assert first_refusal is not None
        raise first_refusal

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a job: a queued one is removed now, a running one stops at its next chunk boundary.

        Returns False if the job is not here (unknown or already ended).
        """
        job = self._jobs.get(job_id)
        if job is None:
            return False
        e = self._core.get(job_id)
        if e is not None and e.state == "queued":
            self._core.finish(job_id, trio.current_time())
            self._end(job, e, make_outcome(job_id, "cancelled", error=reason, device_id=job.device.id))
            self._dispatch()
            return True
        job.cancel_reason = reason
        job.scope.cancel()
        return True

    def position(self, job_id: str) -> int | None:
        """0: holds a slot (running); N >= 1: N-th in line for a slot on its device; None: not here."""
        if job_id not in self._jobs:
            return None
        pos = self._core.position(job_id)
        return 0 if pos is None else pos + 1

    def handle(self, job_id: str) -> JobHandle | None:
        job = self._jobs.get(job_id)
        return job.handle if job else None

    def capacity(self) -> Capacity:
        now = trio.current_time()
        out = []
        for dev_id in self._core.devices():
            ld = self._core.load(dev_id, now)
            out.append(DeviceCapacity(dev_id, self._devices[dev_id].kind, ld.slots, ld.free_slots, ld.running,
                                      ld.queued, ld.max_queued, ld.backlog_s, self._core.held(dev_id)))
        return Capacity(tuple(out))

    def room(self) -> dict[str, tuple[int, int, int, int]]:
        """{device: (slots, free slots, waiting, most waiting)}: capacity() in brief, cheap enough for every job
        a coordinator sends."""
        return {dev_id: self._core.room(dev_id) for dev_id in self._core.devices()}

    def estimate(self, kind: str, spec: dict[str, Any], input_size: int = 0,
                 priority: Priority | str = Priority.BATCH, deadline: float | None = None) -> list[Estimate]:
        """Estimated start/finish on each device that fits, best first (for a claim's "do I have room")."""
        k = self.registry.get(kind)
        k.validate(spec, input_size)
        reqs = k.requirements(spec)
        now = trio.current_time()
        prio = Priority.parse(priority)
        ests = [self._core.estimate(d.id, prio, float(k.cost_s(spec, input_size, d)), deadline, now)
                for d in self._devices.values() if reqs.satisfied_by(d)]
        return sorted(ests, key=lambda e: e.finish)

    # job tasks
    async def _checkpoint(self, job: _Job) -> None:
        await trio.lowlevel.checkpoint()  # a cancel reaches the job here
        jid = job.req.job_id
        if not self._core.should_yield(jid):
            return
        self._core.suspend(jid, trio.current_time())
        PREEMPTIONS.inc()
        job.handle.state = "suspended"
        job.resume = trio.Event()
        resume = job.resume
        self._dispatch()
        await resume.wait()

    @asynccontextmanager
    async def _idle_devices(self, job: _Job) -> AsyncIterator[list[tuple[Device, Any]]]:
        """Lend the job a slot on each other idle OpenCL device of this node for the block (RunContext): with
        (device, DeviceContext) pairs, or (device, RunnerLease) pairs when device code runs in runners."""
        jid = job.req.job_id
        taken = [d for d in self._devices.values()
                 if d.id != job.device.id and d.opencl and self._core.lend(d.id, jid)]
        if taken:
            self._changed()
        leases: list[RunnerLease] = []
        try:
            out: list[tuple[Device, Any]] = []
            for d in taken:
                if self._runners is not None:  # device code in runners: a lease on each borrowed device
                    leases.append(self._runners.lease(d))
                    out.append((d, leases[-1]))
                else:
                    out.append((d, await self._open(d)))
            yield out
        finally:
            for lease in leases:
                lease.release()
            for d in taken:
                self._core.give_back(d.id, jid)
            if taken:
                self._dispatch()

    @asynccontextmanager
    async def reserved_slot(self, owner: str, device_id: str | None = None) -> AsyncIterator[tuple[Device, Any]]:
        """Hold one free slot of an idle device for `owner` (a real-time render session) for the block: no job
        is given that slot (nor advertised as free) until the block ends, however it ends. Yields (device,
        RunnerLease) when device code runs in runners, (device, DeviceContext) otherwise, (device, None) on the
        cpu-reference pseudo-device. `Saturated` when no device (or not `device_id`) has a free slot."""
        taken = next((d for d in self._devices.values()
                      if (device_id is None or d.id == device_id) and self._core.lend(d.id, owner)), None)
        if taken is None:
            raise Saturated("no device of this node has a free slot for a real-time session")
        self._changed()
        lease: RunnerLease | None = None
        try:
            if not taken.opencl:
                yield taken, None
            elif self._runners is not None:
                lease = self._runners.lease(taken)
                yield taken, lease
            else:
                yield taken, await self._open(taken)
        finally:
            if lease is not None:
                lease.release()
            self._core.give_back(taken.id, owner)
            self._dispatch()

    def _progress(self, job: _Job, fraction: float, message: str | None = None) -> None:
        job.handle.progress = min(max(float(fraction), 0.0), 1.0)
        job.handle.progress_message = message
        if job.req.progress is not None:
            try:
                job.req.progress(job.handle.progress, message)
            except Exception:
                log.exception("progress callback of job %s failed", job.req.job_id)

    async def _job_task(self, job: _Job) -> None:
        jid = job.req.job_id
        result: Result | None = None
        error: str | None = None
        state = "failed"
        lease: RunnerLease | None = None
        try:
            with job.scope:
                if job.req.timeout_s is not None:
                    job.scope.deadline = trio.current_time() + job.req.timeout_s
                if self._runners is not None and job.device.opencl:
                    lease, dctx = self._runners.lease(job.device), None  # device code runs in a runner process
                else:
                    dctx = await self._open(job.device)
                ctx = RunContext(
                    job_id=jid,
                    spec=job.req.spec,
                    input=InputReader(job.req.input, job.req.input_size or 0, self._input_chunk),
                    device=job.device,
                    cl=dctx,
                    runner=lease,
                    checkpoint=partial(self._checkpoint, job),
                    idle_devices=partial(self._idle_devices, job),
                    progress=partial(self._progress, job),
                    cancel_scope=job.scope,
                )
                result = await job.kind.run(ctx)
                if not isinstance(result, Result):
                    raise TypeError(f"kind {job.kind.name!r} returned {type(result).__name__}, not Result")
                state = "done"
            if job.scope.cancelled_caught or state != "done":
                result = None
                if job.fail_reason:
                    state, error = "failed", job.fail_reason
                elif job.cancel_reason:
                    state, error = "cancelled", job.cancel_reason
                else:
                    state, error = "failed", f"timeout: ran longer than {job.req.timeout_s} s"
        except RunnerCrashed as exc:  # the runner died under this job: the job's doing, not the node's
            state, error = "crashed", str(exc)
            log.warning("job %s (%s) crashed its runner: %s", jid, job.kind.name, error)
        except Exception as exc:
            state, error = "failed", f"{getattr(exc, 'type_name', type(exc).__name__)}: {exc}"
            log.info("job %s (%s) failed: %s", jid, job.kind.name, error)
        finally:
            try:
                now = trio.current_time()
                e = self._core.finish(jid, now)
                if state == "failed" and error is None:  # cancelled from outside (executor stopping)
                    state, error = "cancelled", "executor stopped"
                late = bool(job.req.deadline is not None and job.handle.priority is Priority.REALTIME
                            and now > job.req.deadline)
                if late:
                    DEADLINE_MISSES.inc()
                started = e.started_at if e is not None and e.started_at is not None else now
                self._end(job, e, make_outcome(jid, state, result, error, job.device.id,
                                               queued_s=(started - e.enqueued_at) if e else 0.0,
                                               run_s=now - started, late=late))
                RUN_TIME.labels(job.kind.name).observe(now - started)
                self._dispatch()
            finally:
                if lease is not None:  # after the outcome is out: the runner's metrics are counted here
                    lease.release()

    def _end(self, job: _Job, entry: Entry | None, outcome: Outcome) -> None:
        self._jobs.pop(job.req.job_id, None)
        job.handle._finish(outcome)  # first: its callbacks may send the outcome on its way
        JOBS.labels(job.kind.name, outcome.state).inc()
