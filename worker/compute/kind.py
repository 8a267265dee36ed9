"""The `compute.opencl` job kind: user OpenCL kernels through the job-kind registry.

`register_kind()` registers it in `worker.kinds.REGISTRY` (or a registry of your own); importing this module
does not, so that the set of registered kinds stays what the composition root chose (the daemon calls it next
to `worker.kinds_basic.load_builtin_kinds()`). The spec is `worker.compute.spec` (see there); the job's streamed input is the
concatenation of the blobs the spec's args name by SHA-256 (`ComputeSpec.stream_layout()`), checked against
their hashes while they are read. The result body is `ComputeResult.to_wire()`'s body (outputs with their
offsets, timings, warnings); the result's output bytes are the output buffers concatenated in arg order.

There is no CPU reference path: an arbitrary OpenCL kernel has no numpy equivalent (`reference()` says so),
and the kind requires an OpenCL device (`Requirements.opencl`). The examples in `examples/compute/` carry
their own numpy references.

Test-only fault hook: a worker process with `worker.faults.Faults(corrupt_compute=(...))` installed flips the
lowest bit of the first byte of a compute result's output (one ulp of a float32, one bit of a byte buffer: the
subtlest wrong answer) for jobs that launch one of the named kernels ("*": every job). It exists so that the mesh tests can show redundant verification (`scheduler.client.compute_sdk`,
`verify="redundant"`) catching a lying worker; it logs a warning on every corrupted result.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import msgpack

from worker import faults
from worker.compute.blobs import read_blobs
from worker.compute.cache import SOURCES
from worker.compute.errors import ComputeError
from worker.compute.execute import CHECKPOINT_INTERVAL_S
from worker.compute.runner import runner_for
from worker.compute.spec import (
    MAX_INLINE_BYTES,
    MAX_SOURCE_BYTES,
    ComputeSpec,
    SpecError,
    parse_spec,
)
from worker.devices import Device
from worker.kinds import (
    DEFAULT_F32_GFLOPS,
    JobKind,
    KindFamily,
    KindRegistry,
    Requirements,
    Result,
    RunContext,
    register,
)
from worker.runner.compute import MEMO_SPEC_BYTES, parsed, run_compute

log = logging.getLogger("gpumesh.compute")

DEFAULT_FLOPS_PER_ITEM = 32.0  # cost model when the spec gives no `flops_per_item`
LAUNCH_OVERHEAD_S = 20e-6
BUILD_ESTIMATE_S = 0.5  # a cold build on PoCL; a cached program costs nothing
GPU_TRANSFER_BPS = 10e9  # PCIe-ish
HOST_TRANSFER_BPS = 5e9  # CPU devices: a memcpy


class NoOpenCLDevice(ComputeError):
    reason = "device"


class ComputeOpenCL(JobKind):
    name = "compute.opencl"
    description = "user OpenCL C kernels: source, buffers and launch sizes in; output buffers out"
    max_input_bytes = 1 << 40  # the real bound is the spec's memory (checked against the device at run time)
    max_spec_bytes = MAX_SOURCE_BYTES + MAX_INLINE_BYTES + (256 << 10)

    def __init__(self) -> None:
        # per spec object: [the spec, its msgpack bytes (None: not wire data), its parse (None: not yet)]
        self._specs: OrderedDict[int, list[Any]] = OrderedDict()
        # per parsed spec (shared by every job of the same content): what placement reads of it
        self._derived: OrderedDict[int, tuple[ComputeSpec, Requirements, tuple[float, int, int, float]]] = OrderedDict()

    def spec_of(self, spec: Any) -> ComputeSpec:
        """The parsed spec (validate, requirements, cost and run all need it): see `_memo`."""
        return spec if isinstance(spec, ComputeSpec) else self._memo(spec)[0]

    def _entry(self, spec: Any) -> list[Any]:
        key = id(spec)
        hit = self._specs.get(key)
        if hit is not None and hit[0] is spec:
            return hit
        try:
            raw: bytes | None = msgpack.packb(spec, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            raw = None  # not wire data (a caller's own objects): parsed, and refused there if wrong
        entry = self._specs[key] = [spec, raw, None]
        while len(self._specs) > 16:
            self._specs.popitem(last=False)
        return entry

    def packed(self, spec: Any) -> bytes | None:
        """The spec's msgpack bytes, made once per spec object: `validate` measures them, the runner gets them."""
        return self._entry(spec)[1]

    def _memo(self, spec: Any) -> tuple[ComputeSpec, bytes | None]:
        """(parsed spec, its msgpack bytes), memoised per spec object, and parsed once per distinct content by
        the same memo a runner uses (`worker.runner.compute.parsed`): a client sending the same spec again (a
        pipelined or leased stream of one job) has it parsed once. The bytes are what goes to the runner."""
        entry = self._entry(spec)
        if entry[2] is None:
            raw = entry[1]
            entry[2] = parsed(raw) if raw is not None and len(raw) <= MEMO_SPEC_BYTES else parse_spec(spec)
        return entry[2], entry[1]

    def _placement(self, spec: Any) -> tuple[Requirements, tuple[float, int, int, float]]:
        """(requirements, (flops, bytes moved, launches, flops of the longest launch)), once per parsed spec."""
        s = self.spec_of(spec)
        hit = self._derived.get(id(s))
        if hit is not None and hit[0] is s:
            return hit[1], hit[2]
        r = s.requirements()
        req = Requirements(device_kind=r.device_kind, min_memory_bytes=r.min_memory_bytes, fp64=r.fp64,
                           int64=r.int64, opencl=True)
        fpi = s.flops_per_item if s.flops_per_item is not None else DEFAULT_FLOPS_PER_ITEM
        work = (s.work_items * fpi, s.bytes_in + s.bytes_out, s.total_launches,
                max(ln.work_items for ln in s.launches) * fpi)
        self._derived[id(s)] = (s, req, work)
        while len(self._derived) > 32:
            self._derived.popitem(last=False)
        return req, work

    def validate(self, spec: dict[str, Any], input_size: int) -> None:
        super().validate(spec, input_size)
        s = self.spec_of(spec)
        if input_size != s.input_size:
            raise SpecError("input", f"the streamed input must be {s.input_size} bytes (the blobs the args name by "
                                     f"sha256, concatenated), got {input_size}")

    def output_bytes(self, spec: dict[str, Any], input_size: int) -> int | None:
        return self.spec_of(spec).bytes_out

    def requirements(self, spec: dict[str, Any]) -> Requirements:
        return self._placement(spec)[0]

    def _rates(self, device: Device | None) -> tuple[float, float]:
        gflops = device.f32_gflops if device is not None and device.f32_gflops else DEFAULT_F32_GFLOPS
        bps = GPU_TRANSFER_BPS if device is not None and device.kind == "gpu" else HOST_TRANSFER_BPS
        return gflops * 1e9, bps

    def cost_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        """Work items x flops per item at the device's calibrated float32 rate, plus transfers, launch overhead
        and a build if the source is new here; never more than the job's time limit."""

        s = self.spec_of(spec)
        flops, bps = self._rates(device)
        work, moved, launches, _ = self._placement(s)[1]
        t = work / flops + moved / bps + launches * LAUNCH_OVERHEAD_S
        if s.source_sha256 not in SOURCES:
            t += BUILD_ESTIMATE_S
        return min(t, s.time_limit_s)

    def chunk_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        """Checkpoints fall between launches (at most every CHECKPOINT_INTERVAL_S): the longest launch."""
        s = self.spec_of(spec)
        flops, _ = self._rates(device)
        longest = self._placement(s)[1][3] / flops
        return min(self.cost_s(spec, input_size, device), longest + CHECKPOINT_INTERVAL_S)

    async def run(self, ctx: RunContext) -> Result:
        if ctx.runner is not None:  # the node's way: kernels run in a runner process (worker.runner)

            s, raw = self._memo(ctx.spec)
            body, out = await run_compute(ctx, s, raw)
        elif ctx.cl is not None:  # in this process (library use, tests, benchmarks)
            async def fetch(s: ComputeSpec) -> dict[str, Any]:
                return await read_blobs(ctx, s)

            res = await runner_for(ctx.cl).run(self.spec_of(ctx.spec), fetch, job_id=ctx.job_id,
                                               checkpoint=ctx.checkpoint, progress=ctx.progress, verified=True)
            body, out = res.to_wire()
        else:
            raise NoOpenCLDevice("compute.opencl needs an OpenCL device: arbitrary kernels have no CPU path")
        fault = faults.current()
        if out and fault.corrupt_compute and fault.corrupts_compute(self.spec_of(ctx.spec).kernels()):
            log.warning("this node CORRUPTS the output of compute job %s (test-only fault hook)", ctx.job_id)
            out = bytes([out[0] ^ 1]) + out[1:]
        return Result(body, out or None)

    def reference(self, spec: dict[str, Any], input_bytes: bytes) -> Result:
        raise NotImplementedError("compute.opencl has no CPU reference path: an arbitrary OpenCL kernel has no "
                                  "numpy equivalent (verify with a redundant run on a second device instead)")


COMPUTE_OPENCL = ComputeOpenCL()
FAMILY = KindFamily("compute", (COMPUTE_OPENCL,))


def register_kind(registry: KindRegistry | None = None) -> ComputeOpenCL:
    """Register `compute.opencl` (idempotent) in `registry`, default the process-wide `worker.kinds.REGISTRY`."""
    if registry is None:
        register(COMPUTE_OPENCL, replace=True)
    else:
        registry.register(COMPUTE_OPENCL, replace=True)
    return COMPUTE_OPENCL
