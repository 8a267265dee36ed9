"""The base of a `ComputeRunner`: its hold on the device (one job at a time: `_acquire`, `_release`,
`wait_ready`), the device's quarantine until a runaway kernel completes (`_quarantine_until`, recorded in
`worker.compute.quarantine`), and waiting on OpenCL events with a deadline (`_wait`: completion callbacks wake
trio, no thread is blocked). The state is set up by `ComputeRunner.__init__`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from worker.compute import metrics
from worker.compute.errors import DeviceUnavailable, KernelFailed, cl_status_name
from worker.compute.quarantine import QuarantineInfo, set_quarantine


@dataclass
class RunnerStats:
    jobs: int = 0
    ok: int = 0
    failed: int = 0
    time_limit: int = 0
    quarantines: int = 0


class DeviceGate:
    """One device's state in a runner (see the module doc), changed from trio and from OpenCL callback threads."""

    settle: Callable[[Any], int] | None = None  # event -> its status, after a short wait of its own (runners)
    _cl: Any  # pyopencl
    queue: Any
    device_id: str
    stats: RunnerStats
    _state: threading.Lock
    _busy: bool
    _quarantine: QuarantineInfo | None
    _waiters: list[tuple[Any, trio.Event]]
    _keepalive: Any

    # --- state ------------------------------------------------------------------------------------------
    @property
    def quarantined(self) -> bool:
        return self._quarantine is not None

    @property
    def quarantine(self) -> QuarantineInfo | None:
        return self._quarantine

    @property
    def busy(self) -> bool:
        return self._busy or self._quarantine is not None

    def _notify(self) -> None:
        """Wake every waiter (called with self._state held, from any thread)."""
        waiters, self._waiters = self._waiters, []
        for token, ev in waiters:
            try:
                token.run_sync_soon(ev.set)
            except trio.RunFinishedError:
                pass

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until the device is neither running a job nor quarantined."""
        with trio.fail_after(math.inf if timeout_s is None else timeout_s):
            while True:
                with self._state:
                    if not self._busy and self._quarantine is None:
                        return
                    ev = trio.Event()
                    self._waiters.append((trio.lowlevel.current_trio_token(), ev))
                await ev.wait()

    async def _acquire(self, timeout_s: float | None) -> None:
        deadline = trio.current_time() + (math.inf if timeout_s is None else timeout_s)
        while True:
            with self._state:
                if not self._busy and self._quarantine is None:
                    self._busy = True
                    return
                q = self._quarantine
                ev = trio.Event()
                self._waiters.append((trio.lowlevel.current_trio_token(), ev))
            with trio.move_on_at(deadline):
                await ev.wait()
                continue
            why = f"quarantined since a kernel of job {q.job_id or '?'} overran ({q.reason})" if q else "busy"
            raise DeviceUnavailable(f"device {self.device_id} still {why} after {timeout_s:g} s")

    def _release(self) -> None:
        with self._state:
            self._busy = False
            self._notify()

    def _quarantine_until(self, event: Any, keepalive: Any, job_id: str, reason: str) -> bool:
        """Quarantine the device until `event` completes; False if it already has (no quarantine)."""
        cl = self._cl
        try:
            self.queue.flush()
            status = event.command_execution_status
        except cl.Error:
            status = -1
        if status <= cl.command_execution_status.COMPLETE:
            return False
        info = QuarantineInfo(self.device_id, job_id, reason, time.monotonic())
        with self._state:
            self._quarantine = info
            self._keepalive = keepalive
        self.stats.quarantines += 1
        metrics.QUARANTINES.inc()
        set_quarantine(self.device_id, info)

        def clear(_status: int) -> None:
            # the registry first, so that whoever wakes below already sees the device free everywhere
            set_quarantine(self.device_id, None, expect=info)
            with self._state:
                if self._quarantine is info:
                    self._quarantine = None
                    self._keepalive = None
                self._notify()

        event.set_callback(cl.command_execution_status.COMPLETE, clear)
        return True

    # --- waiting on OpenCL events -----------------------------------------------------------------------
    async def _wait(self, event: Any, deadline: float, what: str) -> bool:
        """Wait for `event` until `deadline` (trio time). True when complete; raises KernelFailed on error."""
        cl = self._cl
        status = event.command_execution_status
        if status > cl.command_execution_status.COMPLETE and self.settle is not None:
            status = self.settle(event)  # a runner's: a short poll first (see `worker.runner.compute.settle`)
        if status > cl.command_execution_status.COMPLETE:
            done = trio.Event()
            token = trio.lowlevel.current_trio_token()

            def cb(_status: int) -> None:
                try:
                    token.run_sync_soon(done.set)
                except trio.RunFinishedError:
                    pass

            event.set_callback(cl.command_execution_status.COMPLETE, cb)
            with trio.move_on_at(deadline):
                await done.wait()
            status = event.command_execution_status
            if status > cl.command_execution_status.COMPLETE:
                return False
        if status < 0:
            raise KernelFailed(f"{what} failed on the device: {cl_status_name(status)} ({status})")
        return True
