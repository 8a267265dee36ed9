"""The runner process: `python -m worker.runner.child --sock FD --status FD --parent PID --device JSON`.

It confines itself (`sandbox.confine`), opens its device's OpenCL context, says `ready`, then runs one call at
a time until the daemon closes the socket. A call names a task from `TASKS` ("module:function", imported on
first use); the task gets the `Host` (arena, checkpoints, asks, status) and the device context and returns
`(body, outs)`: a small msgpack-able map and the arena regions `[[offset, nbytes], ...]` holding its output.
An exception becomes an `err` frame with its type name and message (and `replace` when the runner is no longer
fit for work, e.g. a kernel of the failed job still runs on its device): the runner itself carries on.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import mmap
import os
import socket
import sys
import time
from collections import deque
from typing import Any

import trio

from worker.compute.runner import runner_for
from worker.devices import Device
from worker.opencl import device_context
from worker.runner import metric_relay, sandbox
from worker.runner.arena import KEEP_ARENA, Mapped, StatusPage, write_status
from worker.runner.wire import FrameReader, pack, recv_with_fds, send_all

log = logging.getLogger("gpumesh.runner")

# task name -> "module:function"; every function is `async def task(host, dctx, args) -> (body, outs)`
TASKS = {
    "ping": "worker.runner.child:ping",
    "stats": "worker.runner.child:stats",
    "sandbox.probe": "worker.runner.child:probe",
    "compute.opencl": "worker.runner.compute:task",
    "render.tile": "worker.runner.render:task",
    "zk.prove": "worker.runner.zk:task",
}


class Stopped(Exception):
    """The daemon abandoned the current call (cancelled, or its job was preempted for good)."""


class Host:
    """The runner's side of the connection, as tasks see it."""

    def __init__(self, sock: Any, status: mmap.mmap, memory_limit: int) -> None:
        self.sock = sock
        self.status = status
        self.memory_limit = memory_limit
        self.arena: Mapped | None = None
        self.call = 0
        self.state: dict[str, Any] = {}  # per-runner caches of the tasks (scenes, ...)
        self._reader = FrameReader()
        self._fds: deque[int] = deque()

    # frames
    async def send(self, msg: dict[str, Any]) -> None:
        await send_all(self.sock, pack(msg))

    async def recv(self, *, idle: bool = False) -> dict[str, Any] | None:
        """The next frame from the daemon (None: it closed the connection). `idle`: between calls (see
        `recv_with_fds`)."""
        while True:
            msg = self._reader.next()
            if msg is not None:
                if "arena" in msg and msg.get("new"):
                    self._map(int(msg["arena"]))
                return msg
            data = await recv_with_fds(self.sock, self._fds, idle=idle)
            if not data:
                return None
            self._reader.feed(data)

    def _map(self, size: int) -> None:
        if self.arena is not None:
            self.arena.close()
            self.arena = None
        self.arena = Mapped(self._fds.popleft(), size)

    # for tasks
    def doing(self, text: str) -> None:
        write_status(self.status, text)

    def region(self, off: int, n: int) -> memoryview:
        """A slice of the arena (checked)."""
        if self.arena is None or off < 0 or n < 0 or off + n > self.arena.size:
            raise ValueError(f"arena region [{off}, {off + n}) outside the arena")
        return self.arena.view[off:off + n]

    async def ask(self, what: str, **kw: Any) -> dict[str, Any]:
        c = self.call
        await self.send({"t": "ask", "c": c, "what": what, **kw})
        while True:
            msg = await self.recv()
            if msg is None:
                raise Stopped("the daemon closed the connection")
            if msg.get("c") != c:
                continue
            if msg["t"] == "stop":
                raise Stopped(str(msg.get("reason", "stopped")))
            if msg["t"] == "ans":
                return msg

    async def checkpoint(self) -> None:
        """Between chunks of work: the daemon may cancel here, or keep us waiting while the job is suspended."""
        await self.ask("cp")

    async def alloc(self, n: int) -> memoryview:
        """An arena of at least n bytes for outputs (the earlier arena's contents are gone)."""
        await self.ask("alloc", n=int(n))
        return self.region(0, n)


async def ping(host: Host, dctx: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    return {"pid": os.getpid()}, []


async def probe(host: Host, dctx: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    """What a compromised runner could reach: a TCP connect to `host:port` (the tests' own listener)."""
    addr = (str(args.get("host", "127.0.0.1")), int(args.get("port", 0)))
    try:
        with socket.create_connection(addr, timeout=2):
            reached = "connected"
    except OSError as e:
        reached = f"refused: {e}"
    return {"connect": reached, "sandbox": host.state.get("sandbox", {})}, []


async def stats(host: Host, dctx: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    """What this runner keeps between jobs: its compute program cache (builds, hits) and the scenes it holds."""
    out: dict[str, Any] = {"pid": os.getpid(), "scenes": len(host.state.get("scenes", ()))}
    if dctx is not None:
        p = runner_for(dctx).programs
        out["programs"] = {"cached": len(p), "builds": p.stats.misses, "hits": p.stats.hits,
                           "evictions": p.stats.evictions, "failures": p.stats.failures}
    return out, []


_resolved: dict[str, Any] = {}


def _task(name: str) -> Any:
    fn = _resolved.get(name)
    if fn is not None:
        return fn
    spec = TASKS.get(name)
    if spec is None:
        raise LookupError(f"no runner task {name!r}; known: {', '.join(sorted(TASKS))}")
    mod, _, attr = spec.partition(":")
    __import__(mod)
    metric_relay.record()  # the metrics of the modules the task brought in count on the node too
    fn = _resolved[name] = getattr(sys.modules[mod], attr)
    return fn


def describe(exc: BaseException, memory_limit: int) -> dict[str, Any]:
    if isinstance(exc, MemoryError):
        return {"type": "MemoryError", "kind": "memory",
                "msg": f"out of memory in the runner (its limit is {memory_limit >> 20} MiB of job memory)"}
    out: dict[str, Any] = {"type": type(exc).__name__, "msg": str(exc)[:4000] or type(exc).__name__,
                           "kind": str(getattr(exc, "reason", "") or "")}
    fld = getattr(exc, "field", None)
    if isinstance(fld, str):
        out["field"] = fld
    if getattr(exc, "quarantined", False):
        out["replace"] = True  # a kernel of this job still runs on the device: this runner is done
        out["msg"] = out["msg"].split("; the device stays quarantined")[0] + "; its runner was killed and replaced"
    return out


async def run_call(host: Host, msg: dict[str, Any], dctx: Any) -> None:
    c = host.call = int(msg.get("c", 0))
    sandbox.cpu_budget(float(msg.get("cpu_s", 0) or 0))
    t0 = time.perf_counter()
    try:
        fn = _task(str(msg.get("task")))
        body, outs = await fn(host, dctx, msg.get("args") or {})
        body = dict(body)
        body.setdefault("runner_s", time.perf_counter() - t0)
        reply: dict[str, Any] = {"t": "res", "c": c, "body": body, "outs": outs}
    except Stopped as e:
        reply = {"t": "err", "c": c, "type": "Cancelled", "kind": "cancelled", "msg": str(e)}
    except Exception as e:  # noqa: BLE001 - every failure of a task is reported, the runner carries on
        reply = {"t": "err", "c": c, **describe(e, host.memory_limit)}
    finally:
        host.doing("idle")  # the CPU-time limit stays until the next call sets its own (an idle runner burns none)
    counted = metric_relay.drain()
    if counted:
        reply["m"] = counted  # the node counts them (metric_relay)
    await host.send(reply)
    if host.arena is not None and host.arena.size > KEEP_ARENA:  # the daemon drops it too
        host.arena.close()
        host.arena = None


async def serve(sock_fd: int, status_fd: int, device: Any, memory_limit: int, report: dict[str, str]) -> None:
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(False)
    status = mmap.mmap(status_fd, StatusPage.SIZE)
    os.close(status_fd)
    host = Host(sock, status, memory_limit)
    host.state["sandbox"] = report
    metric_relay.record()
    host.doing("opening the OpenCL device")
    dctx = device_context(device) if device is not None else None
    gc.freeze()  # the runner's modules and device context stay: full collections scan only what jobs make
    host.doing("idle")
    await host.send({"t": "ready", "pid": os.getpid(), "sandbox": report})
    while True:
        msg = await host.recv(idle=True)
        if msg is None:
            return
        if msg["t"] == "call":
            await run_call(host, msg, dctx)
        # anything else here is stale (a stop or answer for a call already over)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="worker.runner.child", description="a gpumesh runner (started by the node)")
    ap.add_argument("--sock", type=int, required=True)
    ap.add_argument("--status", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True)
    ap.add_argument("--device", default="", help="the Device record as JSON ('' for no OpenCL device)")
    ap.add_argument("--memory", type=int, default=0, help="job memory limit in bytes (0: none)")
    ap.add_argument("--network", action="store_true", help="keep the host network (default: a namespace of its own)")
    a = ap.parse_args(argv)
    report = sandbox.confine(a.parent, a.memory, a.network)
    logging.basicConfig(level=logging.WARNING, format="runner %(process)d: %(levelname)s %(message)s")

    device = Device.from_dict(json.loads(a.device)) if a.device else None

    try:
        trio.run(serve, a.sock, a.status, device, a.memory, report)
    except (KeyboardInterrupt, ConnectionError):  # a broken pipe or a reset: the daemon closed our socket
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
