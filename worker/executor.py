"""Per-device priority queues and the node's job executor.

Two layers:
- `PriorityQueues`: the pure core (no trio, no I/O; the current time is passed in). Per device: a number
  of slots, a bounded queue ordered realtime first (earliest deadline first), then interactive, then batch
  (FIFO within a class), admission (bounded queues, realtime deadline check), which job gets a freed slot,
  and whether a running job should yield its slot at a checkpoint to a more urgent queued one.
- `Executor`: the thin trio runner. `submit()` validates the job against its kind, picks a device, admits
  it (or raises a `Refused`: `Saturated`, `DeadlineUnmeetable`, `Unsatisfiable`, `DuplicateJob`) and returns a
  `JobHandle` with the queued position; jobs run as tasks in the executor's nursery; `cancel(job_id)`
  removes a queued job or cancels a running one at its next chunk boundary; `capacity()` feeds the advert.

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

import bisect
import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import trio
from prometheus_client import Counter, Gauge, Histogram

from worker import kinds as kinds_mod
from worker import kinds_basic
from worker.compute.runner import add_quarantine_listener, quarantined_devices
from worker.devices import Device
from worker.kinds import InputReader, JobKind, KindRegistry, Requirements, Result, RunContext
from worker.opencl import open_device
from worker.priority import Priority
from worker.runner.pool import RunnerCrashed, RunnerLease, RunnerPool

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED = 64


# --- refusals -------------------------------------------------------------------------------------------


class Refused(Exception):
    """A job the executor will not take; `reason` is a short code, the message says why."""

    reason = "refused"


class Saturated(Refused):
    reason = "saturated"

    def __init__(self, message: str, queued: int = 0, max_queued: int = 0) -> None:
        super().__init__(message)
        self.queued = queued
        self.max_queued = max_queued


class DeadlineUnmeetable(Refused):
    reason = "deadline"

    def __init__(self, message: str, estimated_finish: float = math.inf, deadline: float = 0.0) -> None:
        super().__init__(message)
        self.estimated_finish = estimated_finish
        self.deadline = deadline


class Unsatisfiable(Refused):
    reason = "unsatisfiable"


class DuplicateJob(Refused):
    reason = "duplicate"


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


# --- the pure core --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Entry:
    """One job in the queues. `cost_s`: estimated run time; `chunk_s`: longest stretch between checkpoints."""

    job_id: str
    device_id: str
    priority: Priority
    cost_s: float
    chunk_s: float
    deadline: float | None
    seq: int
    enqueued_at: float
    state: str = "queued"  # queued | running | suspended
    started_at: float | None = None  # first start
    slice_started_at: float | None = None  # start of the current run slice
    ran_s: float = 0.0  # run time in finished slices
    payload: Any = None

    @property
    def key(self) -> tuple[int, float, int]:
        return (self.priority.rank, self.deadline if self.priority is Priority.REALTIME and self.deadline is not None else 0.0,
                self.seq)

    def run_time(self, now: float) -> float:
        return self.ran_s + (now - self.slice_started_at if self.slice_started_at is not None else 0.0)

    def remaining(self, now: float) -> float:
        return max(self.cost_s - self.run_time(now), 0.0)


@dataclass
class _DeviceQueue:
    device_id: str
    slots: int
    max_queued: int
    queued: list[Entry] = field(default_factory=list)  # sorted by key; includes suspended entries
    running: dict[str, Entry] = field(default_factory=dict)
    held: bool = False  # quarantined: a kernel of a failed job still runs there, no slot is given out
    lent: dict[str, int] = field(default_factory=dict)  # slots lent to jobs running on another device

    @property
    def free_slots(self) -> int:
        return 0 if self.held else max(self.slots - len(self.running) - sum(self.lent.values()), 0)

    def count_admitted(self, realtime: bool) -> int:
        return sum(1 for e in self.queued if e.state == "queued" and (e.priority is Priority.REALTIME) == realtime)


@dataclass(frozen=True)
class DeviceLoad:
    device_id: str
    slots: int
    free_slots: int
    running: int
    queued: int  # waiting for a slot (includes suspended)
    suspended: int
    max_queued: int
    backlog_s: float  # estimated seconds until the device's current work is done, per slot


@dataclass(frozen=True)
class Estimate:
    device_id: str
    start: float
    finish: float
    position: int  # jobs queued ahead


class PriorityQueues:
    """Per-device priority queues with slots. Pure: every method takes the time it needs as `now`."""

    def __init__(self, devices: Mapping[str, int] | None = None, *, max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.max_queued = max_queued
        self._devices: dict[str, _DeviceQueue] = {}
        self._entries: dict[str, Entry] = {}
        self._seq = 0
        for dev, slots in (devices or {}).items():
            self.add_device(dev, slots)

    # devices
    def add_device(self, device_id: str, slots: int = 1, max_queued: int | None = None) -> None:
        if slots < 1:
            raise ValueError(f"device {device_id}: slots must be at least 1")
        if device_id in self._devices:
            dq = self._devices[device_id]
            dq.slots = slots
            dq.max_queued = max_queued or self.max_queued
            return
        self._devices[device_id] = _DeviceQueue(device_id, slots, max_queued or self.max_queued)

    def remove_device(self, device_id: str) -> list[Entry]:
        """Forget a device; returns its entries (queued, suspended and running), which are dropped."""
        dq = self._devices.pop(device_id, None)
        if dq is None:
            return []
        out = list(dq.running.values()) + dq.queued
        for e in out:
            self._entries.pop(e.job_id, None)
        return out

    def devices(self) -> list[str]:
        return list(self._devices)

    def hold(self, device_id: str, held: bool) -> bool:
        """Hold back (or give back) all of a device's slots; queued jobs wait. False if the device is unknown."""
        dq = self._devices.get(device_id)
        if dq is None:
            return False
        dq.held = held
        return True

    def lend(self, device_id: str, job_id: str) -> bool:
        """Lend one free slot of an idle device (nothing queued or suspended there) to a job running on another
        device, which then uses both; False when the device is busy, held or unknown."""
        dq = self._devices.get(device_id)
        if dq is None or dq.free_slots == 0 or dq.queued:
            return False
        dq.lent[job_id] = dq.lent.get(job_id, 0) + 1
        return True

    def give_back(self, device_id: str, job_id: str) -> None:
        """Return the slots a job borrowed on a device (see lend); grant() can give them out again."""
        dq = self._devices.get(device_id)
        if dq is not None:
            dq.lent.pop(job_id, None)

    def held(self, device_id: str) -> bool:
        dq = self._devices.get(device_id)
        return dq is not None and dq.held

    def has_device(self, device_id: str) -> bool:
        return device_id in self._devices

    def get(self, job_id: str) -> Entry | None:
        return self._entries.get(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    # estimates
    def _release_times(self, dq: _DeviceQueue, rank: int, now: float) -> list[float]:
        """When each slot becomes available to a job of `rank` (a sorted list, one per slot)."""
        times = [now] * dq.free_slots
        if dq.held:  # the idle slots of a quarantined device: not before the runaway kernel ends (unknown)
            times += [math.inf] * max(dq.slots - len(dq.running), 0)
        elif dq.lent:  # lent to a job on another device or reserved by a render session: back at an unknown time
            times += [math.inf] * min(sum(dq.lent.values()), max(dq.slots - len(dq.running), 0))
        for r in dq.running.values():
            rem = r.remaining(now)
            if r.priority.rank > rank:  # it gives the slot up at its next checkpoint
                rem = min(rem, r.chunk_s)
            times.append(now + rem)
        times.sort()
        return times

    @staticmethod
    def _place(times: list[float], cost: float) -> tuple[float, float]:
        start = times.pop(0)
        finish = start + cost
        bisect.insort(times, finish)
        return start, finish

    def estimate(self, device_id: str, priority: Priority, cost_s: float, deadline: float | None,
                 now: float) -> Estimate:
        """Estimated start and finish of a job submitted now (without admitting it)."""
        dq = self._devices[device_id]
        probe = Entry("", device_id, priority, cost_s, cost_s, deadline, self._seq + 1, now)
        times = self._release_times(dq, priority.rank, now)
        pos = 0
        for e in dq.queued:
            if e.key >= probe.key:
                break
            self._place(times, e.remaining(now))
            pos += 1
        start, finish = self._place(times, cost_s)
        return Estimate(device_id, start, finish, pos)

    def _check_realtime(self, dq: _DeviceQueue, new: Entry, now: float) -> None:
        assert new.deadline is not None
        if new.deadline <= now:
            raise DeadlineUnmeetable(f"deadline already passed ({now - new.deadline:.3f} s ago)", now, new.deadline)
        times = self._release_times(dq, 0, now)
        rts = [e for e in dq.queued if e.priority is Priority.REALTIME]
        order = sorted(rts + [new], key=lambda e: e.key)
        ahead = 0
        for e in order:
            start, finish = self._place(times, e.remaining(now) if e is not new else e.cost_s)
            if e is new:
                if finish > new.deadline:
                    raise DeadlineUnmeetable(
                        f"deadline cannot be met on device {dq.device_id}: estimated finish in {finish - now:.3f} s "
                        f"(waits {start - now:.3f} s for a slot behind {len(dq.running)} running job(s) and "
                        f"{ahead} earlier-deadline realtime job(s), then runs {new.cost_s:.3f} s) "
                        f"but the deadline is in {new.deadline - now:.3f} s",
                        finish, new.deadline)
            else:
                if e.key < new.key:
                    ahead += 1
                elif e.deadline is not None and finish > e.deadline:
                    raise DeadlineUnmeetable(
                        f"accepting it on device {dq.device_id} would make queued realtime job {e.job_id} miss "
                        f"its deadline (estimated finish in {finish - now:.3f} s, deadline in {e.deadline - now:.3f} s)",
                        finish, new.deadline)

    # admission
    def admit(self, job_id: str, device_id: str, priority: Priority, cost_s: float, chunk_s: float | None,
              deadline: float | None, now: float, payload: Any = None) -> tuple[Entry, int]:
        """Queue a job; returns (entry, position: jobs ahead of it). Raises Refused."""
        if job_id in self._entries:
            raise DuplicateJob(f"job {job_id} is already queued or running here")
        dq = self._devices.get(device_id)
        if dq is None:
            raise Unsatisfiable(f"no device {device_id!r} here; devices: {', '.join(self._devices) or 'none'}")
        if priority is Priority.REALTIME and deadline is None:
            raise ValueError("a realtime job needs a deadline")
        if not (cost_s >= 0 and math.isfinite(cost_s)):
            raise ValueError(f"cost must be a finite non-negative number of seconds, not {cost_s!r}")
        rt = priority is Priority.REALTIME
        n = dq.count_admitted(rt)
        if n >= dq.max_queued:
            cls = "realtime" if rt else "interactive and batch"
            raise Saturated(f"device {device_id} queue is full ({n} {cls} jobs queued, limit {dq.max_queued})",
                            n, dq.max_queued)
        self._seq += 1
        chunk = cost_s if chunk_s is None else max(min(chunk_s, cost_s), 0.0)
        entry = Entry(job_id, device_id, priority, cost_s, chunk, deadline, self._seq, now, payload=payload)
        if rt:
            self._check_realtime(dq, entry, now)
        idx = bisect.bisect_right([e.key for e in dq.queued], entry.key)
        dq.queued.insert(idx, entry)
        self._entries[job_id] = entry
        return entry, idx

    # dispatch
    def grant(self, device_id: str, now: float) -> tuple[list[Entry], list[Entry]]:
        """Give free slots to the queue head(s). Returns (entries now running, realtime entries expired).

        A granted entry with `started_at` set before this call was suspended and resumes. Expired entries
        (realtime jobs that can no longer finish by their deadline) are removed from the queues.
        """
        dq = self._devices.get(device_id)
        if dq is None:
            return [], []
        started: list[Entry] = []
        expired: list[Entry] = []
        while dq.free_slots > 0 and dq.queued:
            e = dq.queued.pop(0)
            if (e.priority is Priority.REALTIME and e.deadline is not None and e.state == "queued"
                    and now + e.cost_s > e.deadline):
                del self._entries[e.job_id]
                expired.append(e)
                continue
            e.state = "running"
            if e.started_at is None:
                e.started_at = now
            e.slice_started_at = now
            dq.running[e.job_id] = e
            started.append(e)
        return started, expired

    def should_yield(self, job_id: str) -> bool:
        """At a checkpoint: should this running job give its slot to a more urgent queued one?"""
        e = self._entries.get(job_id)
        if e is None or e.state != "running":
            return False
        dq = self._devices[e.device_id]
        if dq.free_slots > 0 or not dq.queued:
            return False
        return dq.queued[0].priority.rank < e.priority.rank

    def suspend(self, job_id: str, now: float) -> Entry:
        """The running job gives its slot up and waits in the queue (ahead of later jobs of its class)."""
        e = self._entries[job_id]
        if e.state != "running":
            raise ValueError(f"job {job_id} is {e.state}, not running")
        dq = self._devices[e.device_id]
        del dq.running[job_id]
        e.ran_s = e.run_time(now)
        e.slice_started_at = None
        e.state = "suspended"
        idx = bisect.bisect_right([x.key for x in dq.queued], e.key)
        dq.queued.insert(idx, e)
        return e

    def finish(self, job_id: str, now: float) -> Entry | None:
        """Remove a job in any state (ended, cancelled, failed); frees its slot if it held one."""
        e = self._entries.pop(job_id, None)
        if e is None:
            return None
        dq = self._devices.get(e.device_id)
        if dq is not None:
            if e.state == "running":
                dq.running.pop(job_id, None)
                e.ran_s = e.run_time(now)
                e.slice_started_at = None
            else:
                try:
                    dq.queued.remove(e)
                except ValueError:
                    pass
        e.state = "finished"
        return e

    # introspection
    def position(self, job_id: str) -> int | None:
        """Jobs ahead of a waiting job on its device; None if running or unknown."""
        e = self._entries.get(job_id)
        if e is None or e.state == "running":
            return None
        return self._devices[e.device_id].queued.index(e)

    def queued(self, device_id: str) -> list[Entry]:
        return list(self._devices[device_id].queued)

    def running(self, device_id: str) -> list[Entry]:
        return list(self._devices[device_id].running.values())

    def counts(self, device_id: str) -> tuple[int, int, int]:
        """(running, waiting, free slots) of a device; cheap."""
        dq = self._devices[device_id]
        return len(dq.running) + sum(dq.lent.values()), len(dq.queued), dq.free_slots

    def room(self, device_id: str) -> tuple[int, int, int, int]:
        """(slots, free slots, waiting, most waiting) of a device: `load` without its walk of the queue."""
        dq = self._devices[device_id]
        return dq.slots, dq.free_slots, len(dq.queued), dq.max_queued

    def load(self, device_id: str, now: float) -> DeviceLoad:
        dq = self._devices[device_id]
        work = sum(e.remaining(now) for e in dq.running.values()) + sum(e.remaining(now) for e in dq.queued)
        return DeviceLoad(
            device_id=device_id,
            slots=dq.slots,
            free_slots=dq.free_slots,
            running=len(dq.running),
            queued=len(dq.queued),
            suspended=sum(1 for e in dq.queued if e.state == "suspended"),
            max_queued=dq.max_queued,
            backlog_s=work / dq.slots,
        )


# --- the trio runner ------------------------------------------------------------------------------------


@dataclass
class JobRequest:
    """A job for this node's executor. `deadline` is an absolute trio time (required for realtime)."""

    job_id: str
    kind: str
    spec: dict[str, Any] = field(default_factory=dict)
    input: bytes | AsyncIterable[bytes] | None = None
    input_size: int | None = None  # required when `input` is a stream
    priority: Priority | str = Priority.BATCH
    deadline: float | None = None
    requirements: Requirements | None = None  # the client's, merged with the kind's
    device_id: str | None = None  # pin to a device (else the executor picks)
    timeout_s: float | None = None  # run time limit from first start
    progress: Callable[[float, str | None], None] | None = None

    def __post_init__(self) -> None:
        self.priority = Priority.parse(self.priority)
        if self.input_size is None:
            if self.input is None:
                self.input_size = 0
            elif isinstance(self.input, bytes | bytearray | memoryview):
                self.input_size = len(self.input)
            else:
                raise ValueError("input_size is required with a streamed input")
        elif isinstance(self.input, bytes | bytearray | memoryview) and len(self.input) != self.input_size:
            raise ValueError(f"input_size {self.input_size} does not match the {len(self.input)}-byte input")
        if self.input_size < 0:
            raise ValueError("input_size must not be negative")
        if self.priority is Priority.REALTIME and self.deadline is None:
            raise ValueError("a realtime job needs a deadline")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError("timeout_s must be positive")


@dataclass(frozen=True)
class Outcome:
    """How a job ended here: its `state`, and its `result`: what the kind returned (an empty body when it did
    not finish), completed with how the run went (`ok`, `error`, `crashed`, `device`, `timings`: queue_s,
    run_s). That same Result is what the node reports to the job's coordinator."""

    job_id: str
    state: str  # "done" | "failed" | "cancelled" | "crashed" (its runner died under it)
    result: Result
    late: bool = False  # realtime job that ended after its deadline

    @property
    def ok(self) -> bool:
        return self.state == "done"

    @property
    def error(self) -> str | None:
        return self.result.error or None

    @property
    def device_id(self) -> str:
        return self.result.device

    @property
    def queued_s(self) -> float:
        """Admission to first start."""
        return self.result.timings["queue_s"]

    @property
    def run_s(self) -> float:
        """First start to end."""
        return self.result.timings["run_s"]


def _outcome(job_id: str, state: str, result: Result | None = None, error: str | None = None, device_id: str = "",
             queued_s: float = 0.0, run_s: float = 0.0, late: bool = False) -> Outcome:
    """The Outcome of a job that ended in `state`: the kind's `result` (if it returned one) completed."""
    return Outcome(job_id, state, replace(result or Result(), ok=state == "done", error=error or "",
                                          crashed=state == "crashed", device=device_id,
                                          timings={"queue_s": queued_s, "run_s": run_s}), late)


class JobHandle:
    """What `submit()` returns: position, state, progress, and `await wait()` for the Outcome."""

    def __init__(self, job_id: str, device_id: str, position: int, priority: Priority) -> None:
        self.job_id = job_id
        self.device_id = device_id
        self.position = position  # at admission: 0 = started at once, N = N-th in line (see Executor.position)
        self.priority = priority
        self.state = "queued"
        self.progress = 0.0
        self.progress_message: str | None = None
        self.outcome: Outcome | None = None
        self.started = trio.Event()  # set when the job first gets a slot
        self._done = trio.Event()

    async def wait(self) -> Outcome:
        await self._done.wait()
        assert self.outcome is not None
        return self.outcome

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def _finish(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.state = outcome.state
            self._done.set()

    def __repr__(self) -> str:
        return f"<JobHandle {self.job_id} {self.state} on {self.device_id} pos={self.position}>"


@dataclass(frozen=True)
class DeviceCapacity:
    device_id: str
    kind: str
    slots: int
    free_slots: int
    running: int
    queued: int
    max_queued: int
    backlog_s: float
    quarantined: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device_id, "kind": self.kind, "slots": self.slots, "free_slots": self.free_slots,
                "running": self.running, "queued": self.queued, "max_queued": self.max_queued,
                "backlog_s": self.backlog_s, "quarantined": self.quarantined}


@dataclass(frozen=True)
class Capacity:
    devices: tuple[DeviceCapacity, ...]

    @property
    def free_slots(self) -> int:
        return sum(d.free_slots for d in self.devices)

    @property
    def queue_depth(self) -> int:
        return sum(d.queued for d in self.devices)

    @property
    def slots(self) -> int:
        return sum(d.slots for d in self.devices)

    def to_dict(self) -> dict[str, Any]:
        return {"free_slots": self.free_slots, "queue_depth": self.queue_depth,
                "devices": [d.to_dict() for d in self.devices]}


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
                self._end(job, e, _outcome(job.req.job_id, "failed", error=reason, device_id=dev_id))
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
                self._end(job, e, _outcome(job.req.job_id, "cancelled", error="executor stopped",
                                           device_id=job.device.id))

    def _quarantine(self, dev_id: str, held: bool) -> None:
        if self._core.hold(dev_id, held):
            log.warning("device %s %s", dev_id, "quarantined: its slots are held back until the runaway kernel "
                        "ends" if held else "is free again: its slots are given out")
            if self._nursery is not None:
                self._dispatch()
            else:
                self._changed()

    def _changed(self) -> None:
        for dev_id in self._core.devices():
            gauges = self._gauges.get(dev_id)
            if gauges is None:
                gauges = self._gauges[dev_id] = (RUNNING.labels(dev_id), QUEUE_DEPTH.labels(dev_id),
                                                 FREE_SLOTS.labels(dev_id))
            for g, v in zip(gauges, self._core.counts(dev_id), strict=True):
                g.set(v)
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
                self._end(job, e, _outcome(job.req.job_id, "failed", device_id=dev_id, queued_s=now - e.enqueued_at,
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
            self._end(job, e, _outcome(job_id, "cancelled", error=reason, device_id=job.device.id))
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
            if lease is not None:
                lease.release()
            now = trio.current_time()
            e = self._core.finish(jid, now)
            if state == "failed" and error is None:  # cancelled from outside (executor stopping)
                state, error = "cancelled", "executor stopped"
            late = bool(job.req.deadline is not None and job.handle.priority is Priority.REALTIME
                        and now > job.req.deadline)
            if late:
                DEADLINE_MISSES.inc()
            started = e.started_at if e is not None and e.started_at is not None else now
            self._end(job, e, _outcome(jid, state, result, error, job.device.id,
                                      queued_s=(started - e.enqueued_at) if e else 0.0, run_s=now - started,
                                      late=late))
            RUN_TIME.labels(job.kind.name).observe(now - started)
            self._dispatch()

    def _end(self, job: _Job, entry: Entry | None, outcome: Outcome) -> None:
        self._jobs.pop(job.req.job_id, None)
        JOBS.labels(job.kind.name, outcome.state).inc()
        job.handle._finish(outcome)
