"""A compute job's streamed input split into the blobs its spec names, each checked against its SHA-256 (used in
the node for in-process runs and to fill a runner's arena)."""

from __future__ import annotations

import hashlib
from typing import Any

from worker.compute.spec import ComputeSpec, SpecError
from worker.kinds import RunContext


async def read_blobs(ctx: RunContext, s: ComputeSpec, into: memoryview | None = None) -> dict[str, Any]:
    """The job's streamed input split into the spec's blobs, each checked against its SHA-256. With `into` (a
    runner's arena), the blobs are written there one after the other instead of into new buffers."""
    layout = s.stream_layout()
    out: dict[str, Any] = {}
    at = 0

    def new_buf(n: int) -> Any:
        nonlocal at
        if into is None:
            return bytearray(n)
        at += n
        return into[at - n:at]

    if not layout:
        async for _ in ctx.input:
            raise SpecError("input", "this spec streams no blobs, but the job has input bytes")
        return out
    idx = 0
    sha, need = layout[0]
    buf = new_buf(need)
    filled = 0
    h = hashlib.sha256()

    def finish() -> None:
        nonlocal idx, sha, need, buf, filled, h
        got = h.hexdigest()
        if got != sha:
            raise SpecError("input", f"blob {idx} of the input hashes to {got[:16]}..., the spec names {sha[:16]}...")
        out[sha] = buf  # no copy: the runner uploads straight from it
        idx += 1
        if idx < len(layout):
            sha, need = layout[idx]
            buf, filled, h = new_buf(need), 0, hashlib.sha256()

    async for chunk in ctx.input:
        mv = memoryview(chunk)
        while len(mv):
            if idx >= len(layout):
                raise SpecError("input", "more input bytes than the blobs the spec names")
            take = min(need - filled, len(mv))
            buf[filled:filled + take] = mv[:take]
            h.update(mv[:take])
            filled += take
            mv = mv[take:]
            if filled == need:
                finish()
    if idx < len(layout):
        raise SpecError("input", f"the input ended inside blob {idx} of {len(layout)}")
    return out
