"""The daemon side of runners: the pools that start, lease and replace them (trio; nothing here blocks the event loop).

`RunnerPool` owns every runner of the node. Per OpenCL device it keeps `per_device` runners started (the
executor passes its slots per device) and starts up to `extra` more while all are leased: a job keeps its
runner from its first call until it ends, including while it is suspended for a more urgent job, which then
gets a runner of its own. A job's `RunnerLease` acquires a runner lazily (a job that fails before running device
code takes none).

One runner process and its calls (what ends a call, untrusted replies) are `process.py`; how runners are
forked and waited for, `spawn.py`; what a call can end in, `errors.py`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from worker.devices import Device
from worker.runner.errors import RunnerCrashed, RunnerError, RunnerUnavailable, TaskFailed
from worker.runner.metrics import RUNNER_DEATHS, RUNNERS
from worker.runner.process import Reply, Runner
from worker.runner.spawn import wait_exit

log = logging.getLogger("gpumesh.runner")


def _default_memory() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 8 << 30
    return max(1 << 30, min(8 << 30, ram // 4))


@dataclass
class RunnerSettings:
    memory_bytes: int = field(default_factory=_default_memory)  # job memory per runner (rlimit above baseline)
    per_device: int = 1  # runners kept started per device
    extra: int = 2  # more per device while all are leased
    start_timeout_s: float = 300.0
    stop_grace_s: float = 2.0
    network: bool = False  # True: runners keep the host network (debugging only)
    python: str = sys.executable


# --- per device -------------------------------------------------------------------------------------------


class DevicePool:
    def __init__(self, device: Device, settings: RunnerSettings, warm: int) -> None:
        self.device = device
        self.settings = settings
        self.warm = warm
        self.runners: list[Runner] = []
        self.closed = False
        self.waiting = 0
        self.failures = 0  # consecutive runners that died before they were ready
        self.last_failure = ""
        self.started = 0
        self._n = 0
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._backoff_until = 0.0

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._ensure()

    def _alive(self) -> list[Runner]:
        return [r for r in self.runners if not r.dead.is_set() and r.killed is None]

    def _ensure(self) -> None:
        if self._nursery is None or self.closed:
            return
        alive = self._alive()
        idle = sum(1 for r in alive if r.ready and not r.leased)
        starting = sum(1 for r in alive if not r.ready)
        want = min(self.warm + self.settings.extra, max(self.warm, sum(1 for r in alive if r.leased) + self.waiting))
        if self.failures and trio.current_time() < self._backoff_until:
            return
        n_new = want - len(alive)
        if self.failures:  # after a failed start, one at a time
            n_new = min(n_new, 1 - starting)
        for _ in range(max(0, n_new)):
            self._n += 1
            r = Runner(self, self._n)
            self.runners.append(r)
            self._nursery.start_soon(self._life, r, name=r.name)
        # more idle runners than wanted (extras whose jobs ended): let them go
        while idle > 0 and len(self._alive()) > want:
            r = next(r for r in self._alive() if r.ready and not r.leased)
            r.killed, r.kill_cause = "retired", "retired"
            r.close()  # EOF: the runner exits
            idle -= 1

    async def _life(self, r: Runner) -> None:
        self.started += 1
        try:
            try:
                await r.start()
            except (Exception, trio.TooSlowError) as e:  # noqa: BLE001 - a runner that cannot start
                self.failures += 1
                self.last_failure = f"{type(e).__name__}: {e}"
                self._backoff_until = trio.current_time() + min(60.0, 0.5 * 2 ** self.failures)
                RUNNER_DEATHS.labels("startup").inc()
                log.error("%s failed to start (%s); retrying in %.1f s", r.name, self.last_failure,
                          self._backoff_until - trio.current_time())
                r.kill("runner failed to start", "startup")
            else:
                self.failures = 0
                log.info("%s up (pid %d; sandbox: %s)", r.name, r.pid, ", ".join(f"{k}={v}" for k, v in r.sandbox.items()))
            self._notify()
            self._ensure()
            assert r.proc is not None or r.killed is not None
            if r.proc is not None:
                await wait_exit(r.proc)
        finally:
            with trio.CancelScope(shield=True):
                if r.proc is not None and r.proc.returncode is None:  # the pool is stopping (cancelled)
                    if r.killed is None:
                        r.killed, r.kill_cause = "stopped with the node", "closed"
                    r.proc.kill()
                    with trio.move_on_after(5):
                        await wait_exit(r.proc)
            r.dead.set()
            if r.killed is None and r.ready:
                RUNNER_DEATHS.labels("crash").inc()
                log.warning("%s (pid %d) died: %s", r.name, r.pid, r.death())
            elif r.kill_cause and r.kill_cause not in ("retired", "startup", "closed"):
                RUNNER_DEATHS.labels(r.kill_cause).inc()
            if not r.leased:
                r.close()
            self.runners.remove(r)
            self._notify()
            if self._nursery is not None and not self.closed:
                if self.failures:
                    self._nursery.start_soon(self._ensure_later)
                else:
                    self._ensure()

    async def _ensure_later(self) -> None:
        await trio.sleep_until(self._backoff_until)
        self._ensure()

    async def acquire(self) -> Runner:
        self.waiting += 1
        try:
            while True:
                if self.closed:
                    raise RunnerUnavailable(f"device {self.device.id} ({self.device.name}) went away")
                for r in self._alive():
                    if r.ready and not r.leased:
                        r.leased = True
                        return r
                if self.failures >= 3 and not any(r.ready for r in self._alive()):
                    raise RunnerUnavailable(f"runners for device {self.device.id} fail to start "
                                            f"({self.failures} in a row; last: {self.last_failure})")
                changed = self._changed
                self._ensure()
                await changed.wait()
        finally:
            self.waiting -= 1

    def release(self, r: Runner) -> None:
        r.leased = False
        r.count_relayed()
        r.drop_big_arena()
        if r.dead.is_set():
            r.close()
        if self.waiting:  # an acquire waits for a runner
            self._notify()
        if len(self.runners) > self.warm:  # an extra runner may retire now
            self._ensure()

    def close(self, why: str = "device went away") -> None:
        self.closed = True
        for r in list(self.runners):
            r.kill(why, "closed")
        self._notify()


# --- the node's pool ----------------------------------------------------------------------------------------


class RunnerLease:
    """A job's hold on one runner of its device, taken on its first call and kept until `release()`."""

    def __init__(self, pool: DevicePool) -> None:
        self._pool = pool
        self._runner: Runner | None = None

    @property
    def runner(self) -> Runner | None:
        return self._runner

    @property
    def state(self) -> dict[str, Any]:
        """Per-runner facts of the runner this lease holds (empty before the first call)."""
        return self._runner.state if self._runner is not None else {}

    async def acquire(self) -> Runner:
        if self._runner is None:
            self._runner = await self._pool.acquire()
        return self._runner

    async def call(self, task: str, args: dict[str, Any], **kw: Any) -> Reply:
        r = await self.acquire()
        return await r.call(task, args, **kw)

    def refuse(self, why: str) -> RunnerCrashed:
        """A reply of this lease's runner is wrong (`Runner.refuse`: it is killed); the error to raise."""
        assert self._runner is not None
        return self._runner.refuse(why)

    def release(self) -> None:
        if self._runner is not None:
            self._pool.release(self._runner)
            self._runner = None


class RunnerPool:
    """Every runner of the node. Run it with `await nursery.start(pool.run)`; `set_devices` after each rescan."""

    def __init__(self, settings: RunnerSettings | None = None) -> None:
        self.settings = settings or RunnerSettings()
        self.pools: dict[str, DevicePool] = {}
        self._nursery: trio.Nursery | None = None
        RUNNERS.pools.append(self)

    def set_devices(self, devices: Sequence[Device], slots: Callable[[str], int] | None = None) -> None:
        want = {d.id: d for d in devices if d.opencl}
        for dev_id in list(self.pools):
            if dev_id not in want or not want[dev_id].same_hardware(self.pools[dev_id].device):
                self.pools.pop(dev_id).close()
        for d in want.values():
            warm = max(1, slots(d.id) if slots is not None else self.settings.per_device)
            dp = self.pools.get(d.id)
            if dp is None:
                dp = self.pools[d.id] = DevicePool(d, self.settings, warm)
                if self._nursery is not None:
                    dp.attach(self._nursery)
            else:
                dp.device, dp.warm = d, warm
                dp._ensure()

    def lease(self, device: Device) -> RunnerLease:
        dp = self.pools.get(device.id)
        if dp is None:
            raise RunnerUnavailable(f"no runners for device {device.id}")
        return RunnerLease(dp)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for dp in self.pools.values():
            for r in dp.runners:
                out.append({"device": dp.device.id, "name": r.name, "pid": r.pid, "ready": r.ready,
                            "leased": r.leased, "sandbox": dict(r.sandbox)})
        return out

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for dp in self.pools.values():
                    dp.attach(nursery)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    for dp in self.pools.values():
                        dp.close("node stopping")  # before the nursery's tasks end: nothing is restarted
        finally:
            self._nursery = None
            for dp in self.pools.values():
                for r in dp.runners:
                    if r.proc is not None and r.proc.returncode is None:
                        r.proc.kill()
            if self in RUNNERS.pools:
                RUNNERS.pools.remove(self)


# RunnerCrashed, RunnerError, TaskFailed: for the modules that import them from here (executor, render/kind, session_io)
__all__ = ["DevicePool", "RunnerCrashed", "RunnerError", "RunnerLease", "RunnerPool", "RunnerSettings", "TaskFailed"]
