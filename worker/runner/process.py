"""One runner process, seen from the daemon: start it, call it, kill it, tell why it died (trio; nothing here
blocks the event loop). Its `DevicePool` (`pool.py`) starts, leases and replaces it.

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
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from worker.runner import metric_relay
from worker.runner.arena import KEEP_ARENA, Arena, StatusPage
from worker.runner.errors import RunnerCrashed, RunnerTimeLimit, TaskFailed
from worker.runner.metrics import count_call
from worker.runner.spawn import spawner
from worker.runner.wire import FrameReader, ProtocolError, pack, recv_some, send_all, want_int

if TYPE_CHECKING:
    from worker.runner.pool import DevicePool

log = logging.getLogger("gpumesh.runner")


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
        self._relayed: Any = None  # the metrics the last reply carried, not counted yet (`count_relayed`)

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

    def count_relayed(self) -> None:
        """Count the metrics the last reply carried (`metric_relay`): a call counts them once its next call is on
        its way to the runner, the pool when the runner is released, so that no reply waits for them."""
        batch, self._relayed = self._relayed, None
        if batch is not None:
            metric_relay.apply(batch)

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

    async def _recv(self, *, just_sent: bool = False) -> dict[str, Any]:
        """The runner's next frame. `just_sent`: right after a frame it answers (its answer cannot be here yet)."""
        while True:
            msg = self._reader.next()
            if msg is not None:
                return msg
            try:  # plain recv: file descriptors from a runner are dropped
                data = await recv_some(self.sock, wait_first=just_sent)
                just_sent = False
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
        ctl = CallControl(self, trio.current_time() + (limit_s if limit_s is not None else math.inf))
        msg: dict[str, Any] = {"t": "call", "c": c, "task": task, "args": args, "cpu_s": cpu_s,
                               **self._ensure_arena(max(arena_bytes, 1))}
        assert self.arena is not None
        for off, data in inputs:
            n = len(memoryview(data).cast("B"))
            self.arena.view[off:off + n] = memoryview(data).cast("B")
        try:
            await self._send_with_arena(msg)
            count_call(task)  # counted while the runner works
            self.count_relayed()  # the last call's metrics, likewise
            just_sent = True
            while True:
                with trio.move_on_at(ctl.deadline) as scope:
                    m = await self._recv(just_sent=just_sent)
                just_sent = False
                if scope.cancelled_caught:
                    where = self.status.read()
                    self.kill(f"exceeded time limit of {limit_s:g} s in {where} (runner killed and replaced)",
                              "time_limit")
                    raise RunnerTimeLimit(self.killed)
                if m.get("c") != c:
                    continue
                t = m["t"]
                if t in ("res", "err"):  # the last call's were counted once this call was sent
                    self._relayed = m.get("m")  # counted off the reply's path: by the next call or the release
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
                    just_sent = True
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


__all__ = ["AskFn", "CallControl", "Reply", "Runner"]
