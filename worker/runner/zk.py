"""zk.prove in a runner: the prover's OpenCL kernels (NTT, Poseidon) run in the job's runner; the proof comes
back through the arena (its size is known only at the end: the runner asks for an arena that fits). The prover's
stages (trace, LDE, commit, ...) come back as `progress` asks while it runs, so a proof made in a runner shows
the same progress as one made in the daemon's process."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import trio

from worker.kinds import RunContext
from worker.zk import prove_spec

MAX_STAGE_CHARS = 64


async def prove(ctx: RunContext, spec: dict[str, Any]) -> bytes:
    assert ctx.runner is not None

    async def on_ask(m: dict[str, Any], _ctl: Any) -> dict[str, Any]:
        if m.get("what") == "progress":  # from the runner: checked like any other input from it
            fraction, stage = m.get("fraction"), m.get("stage")
            if isinstance(fraction, int | float) and math.isfinite(fraction) and isinstance(stage, str):
                ctx.progress(min(1.0, max(0.0, float(fraction))), stage[:MAX_STAGE_CHARS])
        return {}

    reply = await ctx.runner.call("zk.prove", {"spec": spec}, on_ask=on_ask, checkpoint=ctx.checkpoint)
    if len(reply.outs) != 1:
        raise ValueError("the runner returned no proof")
    return bytes(reply.outs[0])


async def task(host: Any, dctx: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    def stage(fraction: float, name: str) -> None:  # in the prover's thread: reported through the runner's loop
        trio.from_thread.run(partial(host.ask, "progress", fraction=float(fraction), stage=str(name)))

    host.doing("kernels of zk.prove (NTT, Poseidon)")
    proof = await trio.to_thread.run_sync(prove_spec, args["spec"], (dctx.context, dctx.queue), stage)
    host.doing("writing the proof")
    view = await host.alloc(len(proof))
    view[:] = proof
    return {}, [[0, len(proof)]]
