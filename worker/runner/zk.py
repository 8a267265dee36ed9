"""zk.prove in a runner: the prover's OpenCL kernels (NTT, Poseidon) run in the job's runner; the proof comes
back through the arena (its size is known only at the end: the runner asks for an arena that fits)."""

from __future__ import annotations

from typing import Any

from worker.kinds import RunContext
from worker.zk import prove_spec


async def prove(ctx: RunContext, spec: dict[str, Any]) -> bytes:
    assert ctx.runner is not None
    reply = await ctx.runner.call("zk.prove", {"spec": spec}, checkpoint=ctx.checkpoint)
    if len(reply.outs) != 1:
        raise ValueError("the runner returned no proof")
    return bytes(reply.outs[0])


async def task(host: Any, dctx: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    host.doing("kernels of zk.prove (NTT, Poseidon)")
    proof = prove_spec(args["spec"], (dctx.context, dctx.queue))
    host.doing("writing the proof")
    view = await host.alloc(len(proof))
    view[:] = proof
    return {}, [[0, len(proof)]]
