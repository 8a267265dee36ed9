"""The executor's pure core: per-device priority queues with slots (no trio, no I/O; the time is passed in).

Per device: a number of slots, a bounded queue ordered realtime first (earliest deadline first), then
interactive, then batch (FIFO within a class), admission (bounded queues, realtime deadline check), which job
gets a freed slot, and whether a running job should yield its slot at a checkpoint to a more urgent queued one.
Slots of an idle device can be lent to a job running on another device (or reserved for a render session),
and a quarantined device's slots are held back. See `worker.executor` for preemption, realtime admission and
the queue bounds; `Executor` drives this core from trio.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.priority import Priority
from worker.refusals import DeadlineUnmeetable, DuplicateJob, Saturated, Unsatisfiable

DEFAULT_MAX_QUEUED = 64


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


def _key(e: Entry) -> tuple[int, float, int]:
    return e.key


@dataclass
class _DeviceQueue:
    device_id: str
    slots: int
    max_queued: int
    queued: list[Entry] = field(default_factory=list)  # sorted by key; includes suspended entries
    running: dict[str, Entry] = field(default_factory=dict)
    held: bool = False  # quarantined: a kernel of a failed job still runs there, no slot is given out
    lent: dict[str, int] = field(default_factory=dict)  # slots lent to jobs running on another device
    admitted: list[int] = field(default_factory=lambda: [0, 0])  # entries in state "queued": [other, realtime]

    @property
    def free_slots(self) -> int:
        return 0 if self.held else max(self.slots - len(self.running) - sum(self.lent.values()), 0)

    def count_admitted(self, realtime: bool) -> int:
        """Queued (not suspended) entries of the realtime class, or of the others: kept, not counted."""
        return self.admitted[realtime]

    def unqueue(self, e: Entry) -> None:
        """`e` left `queued` (granted, expired or removed): no longer counted if it was waiting for its start."""
        if e.state == "queued":
            self.admitted[e.priority is Priority.REALTIME] -= 1


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
        idx = bisect.bisect_right(dq.queued, entry.key, key=_key)
        dq.queued.insert(idx, entry)
        dq.admitted[rt] += 1
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
            dq.unqueue(e)
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
        idx = bisect.bisect_right(dq.queued, e.key, key=_key)
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
                    dq.unqueue(e)
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
