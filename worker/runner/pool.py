"""The daemon side of runners: spawn, lease, call, kill, replace (trio; nothing here blocks the event loop).

`RunnerPool` owns every runner of the node. Per OpenCL device it keeps `per_device` runners started (the
executor passes its slots per device) and starts up to `extra` more while all are leased: a job keeps its
runner from its first call until it ends, including while it is suspended for a more urgent job, which then
gets a runner of its own. A job's `RunnerLease` acquires a runner lazily (a job that fails before running device
code takes none).

A call (`Runner.call`) sends the task and its args, answers the runner's asks (checkpoints go to the job's
`checkpoint`, so cancel and preemption reach device code between chunks; `alloc` grows the arena; anything
else goes to the caller's `on_ask`), and returns the result body and the output regions of the arena.
What ends a call other than its result:

- the runner dies (signal, exit, out of memory): `RunnerCrashed("runner crashed: SIGSEGV in kernel 'k'")`,
  naming the signal and what the runner was doing (its status page); the pool starts a replacement;
- the call's time limit passes: the runner is killed and replaced, `RunnerTimeLimit`;
- the job is cancelled (or its executor timeout fires): the runner is told to stop at its next checkpoint; if
  it does not within `stop_grace_s` (a kernel that never returns), it is killed and replaced;
- the task fails inside the runner (bad spec, build error, allocation failure): `TaskFailed`, carrying the
  remote exception's type name and message; the runner carries on (or is replaced when it says it must be).

Runner replies are untrusted: frames are bounded (`wire`), output regions are checked against the arena, and
a frame that breaks the protocol kills the runner (`RunnerCrashed`, "protocol violation").
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from worker.devices import Device
from worker.runner import metric_relay
from worker.runner.arena import KEEP_ARENA, Arena, StatusPage
from worker.runner.metrics import RUNNER_DEATHS, RUNNERS, count_call
from worker.runner.wire import FrameReader, ProtocolError, pack, recv_some, send_all, want_int

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


# --- errors -----------------------------------------------------------------------------------------------


class RunnerError(Exception):
    """Base of runner failures. `type_name` is what the job's error message shows as the exception type."""

    type_name = "RunnerError"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.type_name


class RunnerCrashed(RunnerError):
    """The runner died while it held the job (signal, exit, out of memory, protocol violation)."""

    type_name = "RunnerCrashed"


class RunnerTimeLimit(RunnerError):
    """The call ran past its time limit (or its CPU-time limit): the runner was killed and replaced."""

    type_name = "TimeLimitExceeded"


class RunnerUnavailable(RunnerError):
    """No runner could be had for the device (it went away, or runners keep failing to start)."""

    type_name = "RunnerUnavailable"


class TaskFailed(RunnerError):
    """The task raised inside the runner; `type_name`, `field` and `kind` are the remote exception's."""

    def __init__(self, type_name: str, message: str, field: str | None = None, kind: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name or "TaskFailed"
        self.field = field
        self.kind = kind


# --- processes ----------------------------------------------------------------------------------------------


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


# --- one runner ---------------------------------------------------------------------------------------------


@dataclass
class Reply:
    body: dict[str, Any]
    outs: list[memoryview]


class CallControl:
    """What an `on_ask` handler gets: the arena and the call's clock."""

    def __init__(self, runner: Runner, deadline: float) -> None:
        self.runner = runner
        self.deadline = deadline

    @property
    def arena(self) -> memoryview:
        assert self.runner.arena is not None
        return self.runner.arena.view

    def limit(self, seconds: float) -> None:
        """From now, the call may run `seconds` more (never later than it was allowed to already)."""
        self.deadline = min(self.deadline, trio.current_time() + seconds)


AskFn = Callable[[dict[str, Any], CallControl], Awaitable[dict[str, Any] | None]]


class Runner:
    def __init__(self, pool: DevicePool, n: int) -> None:
        self.pool = pool
        self.name = f"runner {pool.device.id}#{n}"
        self.proc: subprocess.Popen | None = None
        self.sock: Any = None
        self.status = StatusPage()
        self.arena: Arena | None = None
        self.state: dict[str, Any] = {}  # per-runner facts the kinds keep (e.g. scenes it holds)
        self.sandbox: dict[str, str] = {}
        self.ready = False
        self.leased = False
        self.dead = trio.Event()
        self.killed: str | None = None  # why the node killed it (not a crash)
        self.kill_cause = ""
        self._reader = FrameReader()
        self._seq = 0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    # life
    async def start(self) -> None:
        s = self.pool.settings
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            cmd = [s.python, "-m", "worker.runner.child", "--sock", str(child.fileno()), "--status",
                   str(self.status.fd), "--parent", str(os.getpid()), "--device", json.dumps(self.pool.device.to_dict()),
                   "--memory", str(s.memory_bytes)] + (["--network"] if s.network else [])
            # A process group of its own (a Ctrl-C meant for the node's terminal does not reach it), in the
            # node's session: with autogroup scheduling (Linux's default) a session is a scheduling group, and a
            # runner in a session of its own is woken behind every other busy group on a loaded machine (a
            # hand-off and each band of a frame pays it: two `bench isolation` runs back to back at load
            # average 20 gave +1.02 vs +0.33 ms per trivial job, see docs/isolation.md).
            self.proc = await spawner().popen(cmd, pass_fds=(child.fileno(), self.status.fd),
                                              process_group=0, stdin=subprocess.DEVNULL)
        finally:
            child.close()
        parent.setblocking(False)
        self.sock = parent
        with trio.fail_after(s.start_timeout_s):
            msg = await self._recv()
        if msg.get("t") != "ready":
            raise ProtocolError(f"expected 'ready', got {msg.get('t')!r}")
        sb = msg.get("sandbox")
        self.sandbox = {str(k): str(v)[:200] for k, v in sb.items()} if isinstance(sb, dict) else {}
        self.ready = True

    def kill(self, why: str, cause: str) -> None:
        """SIGKILL (the node's decision: a time limit, a cancel that did not stop, a protocol violation)."""
        if self.killed is None and not self.dead.is_set():
            self.killed, self.kill_cause = why, cause
            (log.info if cause == "closed" else log.warning)("%s (pid %d) killed: %s", self.name, self.pid, why)
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    def refuse(self, why: str) -> RunnerCrashed:
        """The runner broke the protocol (a frame, or a reply its caller finds wrong): it is killed (and
        replaced); the error for the job it held."""
        self.kill(f"runner crashed: protocol violation ({why}) in {self.status.read()}", "protocol")
        return RunnerCrashed(self.killed)

    def close(self) -> None:
        if self.sock is not None and self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock.fileno())
            self.sock.close()
        if self.arena is not None:
            self.arena.close()
            self.arena = None

    def death(self) -> str:
        """Why it died, for the job's error: 'runner crashed: SIGSEGV in kernel 'k''."""
        if self.killed is not None:
            return self.killed
        where = self.status.read() or "startup"
        rc = self.proc.returncode if self.proc is not None else None
        if rc is None:
            return f"runner crashed: connection lost in {where}"
        if rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = f"signal {-rc}"
            hint = {"SIGKILL": " (killed from outside: out of memory?)", "SIGXCPU": " (CPU-time limit)",
                    "SIGBUS": " (bad memory access)"}.get(sig, "")
            return f"runner crashed: {sig}{hint} in {where}"
        return f"runner crashed: exit code {rc} in {where}"

    # frames
    async def _send(self, msg: dict[str, Any], fd: int | None = None) -> None:
        try:
            await send_all(self.sock, pack(msg), fd)
        except OSError:  # the runner is gone (a broken pipe, a reset): as when its end of the socket closes
            raise EOFError from None

    async def _recv(self) -> dict[str, Any]:
        while True:
            msg = self._reader.next()
            if msg is not None:
                return msg
            try:
                data = await recv_some(self.sock)  # plain recv: file descriptors from a runner are dropped
            except OSError:
                data = b""
            if not data:
                raise EOFError
            self._reader.feed(data)

    def _ensure_arena(self, need: int) -> dict[str, Any]:
        limit = self.pool.settings.memory_bytes + KEEP_ARENA
        if need > limit:
            raise TaskFailed("MemoryLimit", f"needs {need} bytes of shared memory for its inputs and outputs; "
                                            f"the runner's limit is {limit}")
        if self.arena is None or self.arena.size < need:
            if self.arena is not None:
                self.arena.close()
            self.arena = Arena(need)
        if not self.arena.sent:
            return {"arena": self.arena.size, "new": True}
        return {}

    async def _send_with_arena(self, msg: dict[str, Any]) -> None:
        fd = None
        if msg.get("new"):
            assert self.arena is not None
            fd = self.arena.fd
            self.arena.sent = True
        await self._send(msg, fd)

    def drop_big_arena(self) -> None:
        if self.arena is not None and self.arena.size > KEEP_ARENA:
            self.arena.close()
            self.arena = None

    # calls
    async def call(self, task: str, args: dict[str, Any], *, arena_bytes: int = 0, on_ask: AskFn | None = None,
                   checkpoint: Callable[[], Awaitable[None]] | None = None, limit_s: float | None = None,
                   cpu_s: float = 0.0, inputs: Sequence[tuple[int, Any]] = ()) -> Reply:
        """Run `task` with `args`; `inputs` ((offset, bytes-like) pairs) are written into an arena of at least
        `arena_bytes` first. See the module doc for what ends a call."""
        if self.dead.is_set() or self.killed is not None:
            raise RunnerCrashed(self.death())
        self.drop_big_arena()
        self._seq += 1
        c = self._seq
        count_call(task)
        ctl = CallControl(self, trio.current_time() + (limit_s if limit_s is not None else math.inf))
        msg: dict[str, Any] = {"t": "call", "c": c, "task": task, "args": args, "cpu_s": cpu_s,
                               **self._ensure_arena(max(arena_bytes, 1))}
        assert self.arena is not None
        for off, data in inputs:
            n = len(memoryview(data).cast("B"))
            self.arena.view[off:off + n] = memoryview(data).cast("B")
        try:
            await self._send_with_arena(msg)
            while True:
                with trio.move_on_at(ctl.deadline) as scope:
                    m = await self._recv()
                if scope.cancelled_caught:
                    where = self.status.read()
                    self.kill(f"exceeded time limit of {limit_s:g} s in {where} (runner killed and replaced)",
                              "time_limit")
                    raise RunnerTimeLimit(self.killed)
                if m.get("c") != c:
                    continue
                t = m["t"]
                if t in ("res", "err"):
                    metric_relay.apply(m.get("m"))
                if t == "res":
                    return Reply(self._body(m.get("body")), self._outs(m.get("outs")))
                if t == "err":
                    err = TaskFailed(str(m.get("type", ""))[:64], str(m.get("msg", ""))[:4000],
                                     m.get("field") if isinstance(m.get("field"), str) else None,
                                     str(m.get("kind", ""))[:32])
                    if m.get("replace"):
                        self.kill(f"replaced after {err.type_name}: a kernel of the failed job still runs", "time_limit")
                    raise err
                if t == "ask":
                    await self._answer(m, c, ctl, on_ask, checkpoint)
        except EOFError:
            await self._reap()
            if self.killed is not None:
                if self.kill_cause == "time_limit":
                    raise RunnerTimeLimit(self.killed) from None
                raise RunnerCrashed(self.killed) from None
            raise RunnerCrashed(self.death()) from None
        except ProtocolError as e:
            raise self.refuse(str(e)) from None
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._abandon(c)
            raise

    async def _answer(self, m: dict[str, Any], c: int, ctl: CallControl, on_ask: AskFn | None,
                      checkpoint: Callable[[], Awaitable[None]] | None) -> None:
        what = m.get("what")
        ans: dict[str, Any] = {"t": "ans", "c": c}
        if what == "cp":
            if checkpoint is not None:
                t0 = trio.current_time()
                await checkpoint()
                ctl.deadline += trio.current_time() - t0  # suspended time does not count
        elif what == "alloc":
            n = want_int(m, "n", 1, 1 << 46)
            if self.arena is not None and self.arena.size < n:
                self.arena.close()
                self.arena = None
            ans.update(self._ensure_arena(n))
        elif on_ask is not None:
            ans.update(await on_ask(m, ctl) or {})
        else:
            raise ProtocolError(f"unexpected ask {str(what)[:40]!r}")
        await self._send_with_arena(ans)

    async def _abandon(self, c: int) -> None:
        """The caller gave up on call `c`: ask the runner to stop at its next checkpoint; kill it if it does not."""
        grace = self.pool.settings.stop_grace_s
        with trio.move_on_after(grace) as scope:
            try:
                await self._send({"t": "stop", "c": c, "reason": "cancelled"})
                while True:
                    m = await self._recv()
                    if m.get("c") == c and m.get("t") in ("res", "err"):
                        return
                    if m.get("c") == c and m.get("t") == "ask":  # a checkpoint raced the stop: refuse again
                        await self._send({"t": "stop", "c": c, "reason": "cancelled"})
            except (EOFError, ProtocolError, OSError):
                pass
        why = f"did not stop within {grace:g} s of its job's cancel" if scope.cancelled_caught else "lost while stopping"
        self.kill(f"runner {why} in {self.status.read()} (killed and replaced)", "stopped")

    async def _reap(self) -> None:
        with trio.move_on_after(5):
            await self.dead.wait()
        if not self.dead.is_set():
            self.kill("runner closed its connection without exiting (killed)", "protocol")
            with trio.move_on_after(5):
                await self.dead.wait()

    def _body(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ProtocolError("result body must be a map")
        return body

    def _outs(self, outs: Any) -> list[memoryview]:
        if not isinstance(outs, list) or len(outs) > 64:
            raise ProtocolError("outs must be a list of at most 64 [offset, nbytes]")
        size = self.arena.size if self.arena is not None else 0
        views = []
        for o in outs:
            if not (isinstance(o, list) and len(o) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                 for x in o)):
                raise ProtocolError("an output region must be [offset, nbytes]")
            off, n = o
            if off < 0 or n < 0 or off + n > size:
                raise ProtocolError(f"output region [{off}, {off + n}) outside the {size}-byte arena")
            assert self.arena is not None
            views.append(self.arena.view[off:off + n])
        return views


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
