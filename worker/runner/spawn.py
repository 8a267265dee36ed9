"""Starting and watching runner processes from trio: one long-lived spawner thread forks them (`spawner()`),
and `wait_exit` waits for one to exit without a thread and without blocking the event loop (a pidfd).
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from typing import Any

import trio


class _Spawner:
    """Runners are forked by one thread that lives as long as the node: a runner's PR_SET_PDEATHSIG fires when
    the *thread* that forked it exits, and trio's worker threads exit when idle (which killed runners after 10 s)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._main, name="gpumesh-runner-spawner", daemon=True).start()

    def _main(self) -> None:
        while True:
            fn, done = self._q.get()
            try:
                r = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the waiting task
                r = e
            done(r)

    async def popen(self, cmd: list[str], **kw: Any) -> subprocess.Popen:
        token = trio.lowlevel.current_trio_token()
        ev = trio.Event()
        box: list[Any] = []
        abandoned = False

        def done(r: Any) -> None:
            box.append(r)
            if abandoned and isinstance(r, subprocess.Popen):
                r.kill()
                r.wait()
                return
            try:
                token.run_sync_soon(ev.set)
            except trio.RunFinishedError:
                if isinstance(r, subprocess.Popen):
                    r.kill()

        self._q.put((lambda: subprocess.Popen(cmd, **kw), done))
        try:
            await ev.wait()
        except BaseException:
            abandoned = True
            raise
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]


_spawner: _Spawner | None = None


def spawner() -> _Spawner:
    global _spawner
    if _spawner is None:
        _spawner = _Spawner()
    return _spawner


async def wait_exit(proc: subprocess.Popen) -> int:
    """Wait (without a thread, without blocking) until `proc` exits; its return code."""
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:  # reaped already (no pid to watch): poll() sees that at once
        while proc.poll() is None:
            await trio.sleep(0.01)
        return proc.returncode
    try:
        while proc.poll() is None:
            await trio.lowlevel.wait_readable(fd)
    finally:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)
    return proc.returncode


__all__ = ["spawner", "wait_exit"]
