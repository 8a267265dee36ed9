"""Run a validated `compute.opencl` spec on one OpenCL device, safely.

`ComputeRunner(context, device)` owns a profiling command queue of its own on that device, a program cache
(`ComputeProgramCache`) and the device's quarantine state. A job goes through:

1. `prepare(spec)`: validate against the device's real limits and the worker's caps; find the source
   (inline, or cached by hash); build (cached; a failure raises `BuildError` with the compiler log; the
   build has its own time limit, `build_timeout_s`); fetch the kernels once; check every argument against
   the kernel's declared parameters (count, buffer/scalar/local, scalar type, const-ness, work-group size,
   local memory) and try setting the scalar args. Nothing has been transferred yet: a bad spec fails here.
2. `execute(prepared, blobs)`: take the device (one job at a time; waits while it is quarantined), allocate
   the buffers (`out` buffers zero-filled, so no job sees another's memory), upload, enqueue the launches
   with at most `max_in_flight` in flight, read the outputs back. Every wait is on an OpenCL event with the
   job's deadline (completion callbacks wake trio; no thread is blocked). The time limit counts from taking
   the device to the last byte read back (build time is not counted: it has its own limit).

Time limit and quarantine: an in-flight OpenCL kernel cannot be killed portably. When the deadline passes
(or the job is cancelled) the runner stops enqueueing at once, fails the job with "exceeded time limit of
X s (...)", and — if a command it enqueued is still running — marks the device *quarantined* until that
command actually completes (an OpenCL completion callback clears it; the job's buffers stay alive until then).
A quarantined runner takes no new job: `execute` waits for it to clear (at most `quarantine_wait_s`, then
`DeviceUnavailable`), and `quarantined_devices()` lists quarantined devices for the executor and adverts.

`run(spec, blobs)` does both steps and counts the outcome in `gpumesh_compute_jobs_total`.

The parts, one concern a module, each a class built on the one before: `device_gate.py` (`DeviceGate`: the
device held one job at a time, its quarantine, waiting on OpenCL events), `execute.py` (`ComputeExecution`:
the execute step); here `ComputeRunner`: set-up, `prepare` and `run`. `result.py` holds `ComputeResult` and
`quarantine.py` the registry of quarantined devices; this module also exports what its users import from it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from worker.compute import metrics
from worker.compute.cache import SOURCES, ComputeProgramCache, SourceStore
from worker.compute.check import check_launch, check_sizes, plan_buffers, sized_types
from worker.compute.device_gate import RunnerStats
from worker.compute.errors import (
    BuildError,
    ComputeError,
    DeviceUnavailable,
    KernelFailed,
    OutOfDeviceMemory,
    TimeLimitExceeded,
)
from worker.compute.execute import ComputeExecution, Prepared
from worker.compute.limits import DeviceLimits, validate
from worker.compute.quarantine import QuarantineInfo, add_quarantine_listener, quarantined_devices
from worker.compute.result import ComputeResult, OutputBuffer
from worker.compute.spec import MAX_TIME_LIMIT_S, ComputeSpec, SourceNotCached, SpecError

DEFAULT_MAX_IN_FLIGHT = 4
DEFAULT_BUILD_TIMEOUT_S = 120.0
PREPARED_MEMO = 32  # prepared specs kept per runner (the same as the parsed specs it keeps)


_build_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("gpumesh_compute_build_limiter")


def build_limiter() -> trio.CapacityLimiter:
    """Threads for compute builds (separate from the shared OpenCL limiter: a long build must not starve it)."""
    try:
        return _build_limiter.get()
    except LookupError:
        lim = trio.CapacityLimiter(2)
        _build_limiter.set(lim)
        return lim


class ComputeRunner(ComputeExecution):
    """Runs compute jobs on one device (see the module doc). Use from trio; one job at a time."""

    def __init__(self, context: Any, device: Any = None, *, device_id: str = "", max_programs: int = 16,
                 max_job_memory_bytes: int | None = None, max_time_limit_s: float = MAX_TIME_LIMIT_S,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, build_timeout_s: float = DEFAULT_BUILD_TIMEOUT_S,
                 quarantine_wait_s: float | None = None, sources: SourceStore | None = None) -> None:

        # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
        import pyopencl as cl
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._cl = cl
        self.context = context
        self.device = device if device is not None else context.devices[0]
        self.device_id = device_id or str(self.device.name)
        self.queue = cl.CommandQueue(context, self.device, properties=cl.command_queue_properties.PROFILING_ENABLE)
        self.limits = DeviceLimits.from_cl_device(self.device)
        gm = self.limits.global_mem_bytes or 0
        self.max_job_memory_bytes = int(max_job_memory_bytes if max_job_memory_bytes is not None else gm * 3 // 4)
        self.max_time_limit_s = max_time_limit_s
        self.max_in_flight = max_in_flight
        self.build_timeout_s = build_timeout_s
        self.quarantine_wait_s = quarantine_wait_s
        self.programs = ComputeProgramCache(context, self.device, max_programs=max_programs, cl=cl)
        self.sources = sources if sources is not None else SOURCES
        self.stats = RunnerStats()
        # device state, changed from trio and from OpenCL callback threads
        self._state = threading.Lock()
        self._busy = False
        self._quarantine: QuarantineInfo | None = None
        self._waiters: list[tuple[Any, trio.Event]] = []
        self._keepalive: Any = None
        self._prepared: OrderedDict[int, tuple[ComputeSpec, Prepared, tuple[str, ...]]] = OrderedDict()

    # --- prepare ----------------------------------------------------------------------------------------
    async def prepare(self, spec: ComputeSpec | Mapping[str, Any]) -> Prepared:
        """Validate, build (cached) and check the args against the kernels. Raises SpecError / BuildError.

        The same parsed spec object again (the runner keeps one per distinct spec: `worker.runner.compute.parsed`)
        on this runner, whose device and limits do not change, prepares the same: it is reused while its
        program is still in the cache (a cache hit, no build warnings), skipping the validation, the argument
        checks and the buffer plans (~100 us per job for a trivial kernel)."""
        memo = self._prepared.get(id(spec)) if isinstance(spec, ComputeSpec) else None
        if memo is not None and memo[0] is spec:
            prep, options = memo[1], memo[2]
            if self.programs.lookup(prep.spec.source_sha256, options) is prep.entry:
                if prep.spec.source is not None and self.sources.get(prep.spec.source_sha256) is None:
                    self.sources.put(prep.spec.source)
                self._prepared.move_to_end(id(spec))
                return Prepared(prep.spec, prep.entry, prep.kernels, True, 0.0,
                                [w for w in prep.warnings if not w.startswith("build log: ")], prep.plans)
        prep, options = await self._prepare(spec)
        if isinstance(spec, ComputeSpec):
            self._prepared[id(spec)] = (spec, prep, options)
            while len(self._prepared) > PREPARED_MEMO:
                self._prepared.popitem(last=False)
        return prep

    async def _prepare(self, spec: ComputeSpec | Mapping[str, Any]) -> tuple[Prepared, tuple[str, ...]]:
        s = validate(spec, self.limits, max_memory_bytes=self.max_job_memory_bytes,
                     max_time_limit_s=self.max_time_limit_s)
        if s.source is not None:
            source = s.source
            self.sources.put(source)
        else:
            found = self.sources.get(s.source_sha256)
            if found is None:
                raise SourceNotCached(s.source_sha256)
            source = found
        t0 = time.perf_counter()
        options = self.build_options_for(s)
        entry = self.programs.lookup(s.source_sha256, options)
        hit = entry is not None
        if entry is None:
            with trio.move_on_after(self.build_timeout_s) as scope:
                entry, hit = await trio.to_thread.run_sync(
                    lambda: self.programs.get(source, options, s.source_sha256),
                    abandon_on_cancel=True, limiter=build_limiter())  # type: ignore[call-arg]  # mypy vs TypeVarTuple
            if scope.cancelled_caught or entry is None:
                raise BuildError(f"compilation did not finish within {self.build_timeout_s:g} s",
                                 options=options, source_sha256=s.source_sha256,
                                 note=" (build time limit)")
        build_s = 0.0 if hit else time.perf_counter() - t0
        warnings: list[str] = []
        if entry.build_log.strip() and not hit:
            warnings.append("build log: " + entry.build_log.strip()[:2000])
        kernels = []
        for li, ln in enumerate(s.launches):
            where = "kernel" if s.single_launch else f"launches[{li}].kernel"
            info = self.programs.kernel(entry, ln.kernel, where)
            warnings += check_launch(s, li, info, self.limits, self._cl)
            kernels.append(info)
        types = sized_types(s, kernels)
        if types:  # struct / typedef parameters: their sizeof on this device, from a probe kernel (cached)
            with trio.move_on_after(self.build_timeout_s):
                sizes = await trio.to_thread.run_sync(
                    lambda: self.programs.type_sizes(entry, source, types),
                    abandon_on_cancel=True, limiter=build_limiter())  # type: ignore[call-arg]
                if sizes:
                    check_sizes(s, kernels, sizes)
        host_flags = _version_at_least(self.limits.opencl_version, (1, 2))
        plans, more = plan_buffers(s, kernels, self._cl, host_flags)
        return Prepared(s, entry, kernels, hit, build_s, warnings + more, plans), options

    def build_options_for(self, s: ComputeSpec) -> tuple[str, ...]:
        """The spec's options, plus the OpenCL C standard a non-uniform launch needs (2.0 or later) when the spec
        names none (validate has checked that the device takes non-uniform work-groups)."""
        if s.requirements().non_uniform and not any(o.startswith("-cl-std=") for o in s.build_options):
            std = "CL3.0" if _version_at_least(self.limits.opencl_version, (3, 0)) else "CL2.0"
            return (*s.build_options, f"-cl-std={std}")
        return s.build_options


    # --- both -------------------------------------------------------------------------------------------
    async def run(self, spec: ComputeSpec | Mapping[str, Any],
                  blobs: Mapping[str, Any] | Callable[[ComputeSpec], Awaitable[Mapping[str, Any]]] | None = None,
                  *, job_id: str = "", checkpoint: Callable[[], Awaitable[None]] | None = None,
                  progress: Callable[[float, str | None], None] | None = None,
                  verified: bool = False,
                  out_buffer: Callable[[ComputeSpec], memoryview] | None = None) -> ComputeResult:
        """prepare + execute, with the outcome counted. `blobs` may be an async function of the parsed spec,
        called after the build and the arg checks (so a bad spec fails before the input is read); `out_buffer`,
        called after `blobs`, gives `execute` the memory to read the outputs into."""
        outcome = "error"
        self.stats.jobs += 1
        try:
            prep = await self.prepare(spec)
            data = await blobs(prep.spec) if callable(blobs) else blobs
            res = await self.execute(prep, data, job_id=job_id, checkpoint=checkpoint, progress=progress,
                                     verified=verified,
                                     out_buffer=out_buffer(prep.spec) if out_buffer is not None else None)
            outcome = "ok"
            return res
        except SpecError:
            outcome = "spec_error"
            raise
        except ComputeError as e:
            outcome = {"build": "build_error", "time_limit": "time_limit", "kernel": "kernel_error",
                       "memory": "memory_error", "device": "device_error"}.get(e.reason, "error")
            raise
        except trio.Cancelled:
            outcome = "cancelled"
            raise
        finally:
            if outcome == "ok":
                self.stats.ok += 1
            else:
                self.stats.failed += 1
            metrics.JOBS.labels(outcome).inc()


def _version_at_least(version: str | None, want: tuple[int, int]) -> bool:
    try:
        major, minor = (int(x) for x in (version or "").split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= want


# --- one runner per device context ----------------------------------------------------------------------

_runners: dict[tuple[str, str], ComputeRunner] = {}
_runners_lock = threading.Lock()


def runner_for(dctx: Any, **kwargs: Any) -> ComputeRunner:
    """The process-wide runner of a `worker.opencl.DeviceContext` (created on first use; blocking)."""
    key = (dctx.device.id, dctx.device.fingerprint)
    with _runners_lock:
        r = _runners.get(key)
        if r is None or r.context is not dctx.context:
            r = ComputeRunner(dctx.context, dctx.cl_device, device_id=dctx.device.id, **kwargs)
            _runners[key] = r
        return r


__all__ = [
    "BuildError", "ComputeResult", "ComputeRunner", "DeviceUnavailable", "KernelFailed", "OutOfDeviceMemory",
    "OutputBuffer", "Prepared", "QuarantineInfo", "TimeLimitExceeded", "add_quarantine_listener", "quarantined_devices",
    "runner_for",
]
