"""Small real job kinds for exercising the machinery: `echo`, `sleep`, `checksum`.

- `echo`: returns its spec (body `{"echo": spec, "input_bytes": n}`) and its input as output bytes.
- `sleep`: sleeps `seconds` of run time in chunks of `chunk_s` (default 0.1 s), with a checkpoint between
  chunks (so cancel and preemption reach it there; time spent preempted does not count as sleeping).
- `checksum`: SHA-256 and byte count of the streamed input, plus the sum of its bytes mod 2^64. On an
  OpenCL device, the byte sum of each chunk is also computed on the device (overlapping the host's hashing)
  and cross-checked against the host: a device that disagrees fails the job. The result body is the same on
  both paths, so a redundant run on another node can verify it.

Importing this module registers the three kinds in `worker.kinds.REGISTRY`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import trio

from worker import opencl
from worker.devices import Device
from worker.kinds import (
    REGISTRY,
    JobKind,
    KindFamily,
    KindRegistry,
    Result,
    RunContext,
    SpecError,
    field_number,
    register,
    reject_unknown_fields,
)

MIB = 1 << 20


class Echo(JobKind):
    name = "echo"
    description = "returns its spec and its input"
    max_input_bytes = 16 * MIB

    def output_bytes(self, spec: dict[str, Any], input_size: int) -> int | None:
        return input_size

    def cost_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        return 50e-6 + input_size / 2e9

    async def run(self, ctx: RunContext) -> Result:
        data = await ctx.input.read_all(self.max_input_bytes)
        await ctx.checkpoint()
        ctx.progress(1.0, None)
        return Result({"echo": ctx.spec, "input_bytes": len(data)}, data or None)

    def reference(self, spec: dict[str, Any], input_bytes: bytes) -> Result:
        return Result({"echo": spec, "input_bytes": len(input_bytes)}, bytes(input_bytes) or None)


class Sleep(JobKind):
    name = "sleep"
    description = "sleeps `seconds` of run time in chunks of `chunk_s`"
    max_input_bytes = 0
    MAX_SECONDS = 7 * 24 * 3600.0
    DEFAULT_CHUNK_S = 0.1

    def validate(self, spec: dict[str, Any], input_size: int) -> None:
        super().validate(spec, input_size)
        reject_unknown_fields(spec, {"seconds", "chunk_s"})
        field_number(spec, "seconds", minimum=0.0, maximum=self.MAX_SECONDS)
        field_number(spec, "chunk_s", default=self.DEFAULT_CHUNK_S, minimum=0.001, maximum=3600.0)

    def _params(self, spec: dict[str, Any]) -> tuple[float, float]:
        return float(spec["seconds"]), float(spec.get("chunk_s", self.DEFAULT_CHUNK_S))

    def cost_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        return self._params(spec)[0]

    def chunk_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        seconds, chunk = self._params(spec)
        return min(seconds, chunk)

    async def run(self, ctx: RunContext) -> Result:
        seconds, chunk = self._params(ctx.spec)
        n = max(1, math.ceil(seconds / chunk)) if seconds > 0 else 0
        for i in range(n):
            await trio.sleep(min(chunk, seconds - i * chunk))
            ctx.progress((i + 1) / n, None)
            if i + 1 < n:
                await ctx.checkpoint()
        return Result({"slept_s": seconds})

    def reference(self, spec: dict[str, Any], input_bytes: bytes) -> Result:
        return Result({"slept_s": float(spec["seconds"])})


BYTE_SUM_CL = r"""
__kernel void byte_sum(__global const uchar *data, const uint n, __global ulong *partial) {
    size_t gid = get_global_id(0), gsz = get_global_size(0);
    ulong s = 0;
    for (size_t i = gid; i < n; i += gsz) s += data[i];
    partial[gid] = s;
}
"""


def host_byte_sum(chunk: bytes) -> int:
    return int(np.frombuffer(chunk, dtype=np.uint8).sum(dtype=np.uint64))


class DeviceSumMismatch(RuntimeError):
    pass


class _DeviceSummer:
    """Byte sums of chunks on an OpenCL device: enqueue (non-blocking), then collect."""

    def __init__(self, dctx: opencl.DeviceContext) -> None:
        # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
        import pyopencl as cl
        self._cl = cl
        self.dctx = dctx
        self.workers = max(64, min(4096, dctx.device.compute_units * 256))
        self._buf: Any = None
        self._cap = 0
        self._partial_dev = cl.Buffer(dctx.context, cl.mem_flags.WRITE_ONLY, self.workers * 8)
        self._partial = np.empty(self.workers, dtype=np.uint64)
        self._knl: Any = None

    async def prepare(self) -> None:
        self._knl = await self.dctx.akernel(BYTE_SUM_CL, "byte_sum")

    def enqueue(self, chunk: bytes) -> tuple[Any, np.ndarray]:
        """Copy, sum and read back, all enqueued without blocking; returns (event, host array kept alive)."""
        cl = self._cl
        host = np.frombuffer(chunk, dtype=np.uint8)
        if len(chunk) > self._cap:
            self._cap = max(len(chunk), MIB)
            self._buf = cl.Buffer(self.dctx.context, cl.mem_flags.READ_ONLY, self._cap)
        q = self.dctx.queue
        cl.enqueue_copy(q, self._buf, host, is_blocking=False)
        self._knl(q, (self.workers,), None, self._buf, np.uint32(len(chunk)), self._partial_dev)
        evt = cl.enqueue_copy(q, self._partial, self._partial_dev, is_blocking=False)
        return evt, host

    def collect(self) -> int:
        return int(self._partial.sum(dtype=np.uint64))


class Checksum(JobKind):
    name = "checksum"
    description = "SHA-256, byte count and byte sum (mod 2^64) of the streamed input"
    max_input_bytes = 1 << 40
    HASH_BYTES_PER_S = 500e6  # hashlib SHA-256 on one modest core
    PIECE = MIB  # longest stretch hashed without a checkpoint

    def validate(self, spec: dict[str, Any], input_size: int) -> None:
        super().validate(spec, input_size)
        reject_unknown_fields(spec, {"algorithm"})
        alg = spec.get("algorithm", "sha256")
        if alg != "sha256":
            raise SpecError("algorithm", f"only 'sha256' is supported, not {alg!r}")

    def cost_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        # Host hashing dominates on every device: the device's byte sum overlaps it.
        return 1e-3 + input_size / self.HASH_BYTES_PER_S

    def chunk_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        return min(self.cost_s(spec, input_size, device), 1e-3 + self.PIECE / self.HASH_BYTES_PER_S)

    async def run(self, ctx: RunContext) -> Result:
        h = hashlib.sha256()
        n = 0
        total = 0
        summer = _DeviceSummer(ctx.cl) if ctx.cl is not None else None
        if summer is not None:
            await summer.prepare()
        size = ctx.input_size
        async for chunk in ctx.input:
            for off in range(0, len(chunk), self.PIECE):
                piece = chunk[off:off + self.PIECE] if len(chunk) > self.PIECE else chunk
                if summer is not None:
                    evt, keep = summer.enqueue(piece)
                h.update(piece)
                host = host_byte_sum(piece)
                if summer is not None:
                    await opencl.wait(evt)
                    del keep
                    dev = summer.collect()
                    if dev != host:
                        raise DeviceSumMismatch(f"device byte sum {dev} != host byte sum {host} at offset {n}")
                total = (total + host) & 0xFFFFFFFFFFFFFFFF
                n += len(piece)
                ctx.progress(n / size if size else 1.0, None)
                await ctx.checkpoint()
        return Result({"sha256": h.hexdigest(), "bytes": n, "byte_sum": total})

    def reference(self, spec: dict[str, Any], input_bytes: bytes) -> Result:
        return Result({"sha256": hashlib.sha256(input_bytes).hexdigest(), "bytes": len(input_bytes),
                       "byte_sum": sum(input_bytes) & 0xFFFFFFFFFFFFFFFF})


ECHO = register(Echo())
SLEEP = register(Sleep())
CHECKSUM = register(Checksum())

FAMILY = KindFamily("basic", (ECHO, SLEEP, CHECKSUM))


def load_builtin_kinds() -> KindRegistry:
    """The process-wide registry, holding the kinds of this module (registered on import: echo, sleep, checksum)."""
    return REGISTRY
