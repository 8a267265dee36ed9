"""compute.opencl in a runner: the daemon side (`run_compute`) and the runner side (`task`) of one job.

Daemon: the spec was validated already (`ComputeOpenCL.validate`); the call carries the spec map, the arena
grows, once the runner has checked the spec, to the streamed input followed by the outputs. Runner: `ComputeRunner.run` builds (cached per
runner), checks every argument against the kernel's declared parameters, and only then asks for the input,
which the daemon streams from the job straight into the arena (hashed on the way); the kernels read it from
there and the outputs are written back into the arena. Checkpoints between launches are the job's, so cancel
and preemption reach the kernel loop as before. The runner enforces the time limit itself (a clean
`TimeLimitExceeded`, and the daemon replaces it when a kernel still runs); the daemon's own clock is the backstop
for a runner that stops answering: the build time limit + the spec's time limit + a grace, then it is killed.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import msgpack

from worker.compute.blobs import read_blobs
from worker.compute.runner import runner_for
from worker.compute.spec import ComputeSpec, SpecError, parse_spec
from worker.kinds import RunContext

BUILD_TIMEOUT_S = 120.0  # the runner's ComputeRunner has the same build time limit
GRACE_S = 2.0  # past the time limit, the runner has this long to report it before it is killed


async def run_compute(ctx: RunContext, s: ComputeSpec, spec_bytes: bytes | None = None) -> tuple[dict[str, Any], bytes]:
    """Run a parsed spec in the job's runner (`spec_bytes`: ctx.spec as msgpack, when the caller has packed it
    already); (result body, output bytes). Raises RunnerError subclasses."""

    assert ctx.runner is not None
    in_bytes = sum(n for _, n in s.stream_layout())
    out_bytes = s.bytes_out

    async def on_ask(m: dict[str, Any], ctl: Any) -> dict[str, Any]:
        if m.get("what") == "input":
            await read_blobs(ctx, s, into=ctl.arena[:in_bytes])
        return {}

    # as bytes: the runner parses each distinct spec once
    spec = spec_bytes if spec_bytes is not None else msgpack.packb(ctx.spec, use_bin_type=True)
    reply = await ctx.runner.call(  # the arena grows once the runner has checked the spec (validation first)
        "compute.opencl", {"spec": spec, "job_id": ctx.job_id, "in": in_bytes, "out": out_bytes},
        on_ask=on_ask, checkpoint=ctx.checkpoint,
        limit_s=BUILD_TIMEOUT_S + s.time_limit_s + GRACE_S, cpu_s=cpu_budget(s.time_limit_s))
    if len(reply.outs) != 1 or len(reply.outs[0]) != out_bytes:  # the runner is not trusted
        raise ctx.runner.refuse(f"outputs of {[len(o) for o in reply.outs]} bytes; the spec returns {out_bytes}")
    out = bytes(reply.outs[0])  # the one copy out of the arena (it is reused by the runner's next call)
    body = dict(reply.body)
    body.pop("runner_s", None)
    return body, out


CORES = os.cpu_count() or 1


def cpu_budget(time_limit_s: float) -> float:
    """CPU seconds a runner may burn on one job: its time limit on every core, plus the build."""

    return (time_limit_s + BUILD_TIMEOUT_S) * CORES


async def task(host: Any, dctx: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    """Runner side (see the module doc)."""

    gm = int(getattr(dctx.device, "global_mem_bytes", 0) or 0)
    limit = min(host.memory_limit, gm * 3 // 4) if host.memory_limit and gm else (host.memory_limit or None)
    runner = runner_for(dctx, max_job_memory_bytes=limit)
    runner.settle = settle
    in_n, out_n = int(args["in"]), int(args["out"])

    async def blobs(s: ComputeSpec) -> dict[str, memoryview]:
        names = s.kernels()
        if host.arena is None or host.arena.size < in_n + out_n:  # validated: now the shared memory
            await host.alloc(in_n + out_n)
        host.doing("kernel " + ", ".join(repr(k) for k in names) if names else "kernels")
        layout = s.stream_layout()
        if not layout:
            return {}
        await host.ask("input")
        views, off = {}, 0
        for sha, n in layout:
            views[sha] = host.region(off, n)
            off += n
        return views

    def outputs(s: ComputeSpec) -> memoryview:
        if s.bytes_out > out_n:
            raise ValueError(f"outputs of {s.bytes_out} bytes exceed the {out_n} bytes the daemon made room for")
        return host.region(in_n, s.bytes_out)  # read back from the device straight into the arena

    host.doing("building the program")
    res = await runner.run(parsed(args["spec"]), blobs, job_id=str(args.get("job_id", "")), checkpoint=host.checkpoint,
                           verified=True, out_buffer=outputs)
    body = res.wire_body()  # one definition of the result body (ComputeResult); the bytes are in the arena
    n = sum(o.array.nbytes for o in res.outputs)
    res.outputs.clear()  # the views of the arena go now (the arena may be replaced before the next call)
    return body, [[in_n, n]]


MEMO_SPECS = 32
MEMO_SPEC_BYTES = 64 << 10  # bigger specs (inline data) are parsed every time


def parsed(raw: Any) -> Any:
    """The spec the daemon sent (msgpack bytes), parsed: once per distinct spec in this runner (the same bytes are
    the same spec; specs over MEMO_SPEC_BYTES, with inline data, every time). Only the parse is kept:
    `ComputeRunner.prepare` still validates it against the device's limits for every job."""
    if not isinstance(raw, bytes):
        return raw  # a map: parsed (and validated) by `prepare`
    return _parse_memo(raw) if len(raw) <= MEMO_SPEC_BYTES else _parse(raw)


def _parse(raw: bytes) -> ComputeSpec:
    try:
        d = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several types for garbage
        raise SpecError("", f"not msgpack: {e}") from None
    return parse_spec(d)


_parse_memo = functools.lru_cache(maxsize=MEMO_SPECS)(_parse)  # a spec that fails to parse is not kept


SETTLE_S = 200e-6


def settle(event: Any) -> int:
    """A runner waits for an OpenCL command by polling its status for up to SETTLE_S (yielding the CPU between
    polls) before it falls back to a completion callback (a thread of pyopencl's and a wake-up of the event loop
    each): a small kernel is usually done by then. A runner has nothing else to do meanwhile (one call at a time;
    the daemon's stop is read at checkpoints), which the daemon's own event loop could not say."""
    end = time.perf_counter() + SETTLE_S
    status = int(event.command_execution_status)
    while status > 0 and time.perf_counter() < end:  # CL_COMPLETE is 0; errors are negative
        os.sched_yield()
        status = int(event.command_execution_status)
    return status
