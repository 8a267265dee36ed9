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
`runner_for(device_context)` gives the process-wide runner of a `worker.opencl.DeviceContext`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from worker.compute import metrics
from worker.compute.cache import (
    SOURCES,
    ComputeProgramCache,
    KernelInfo,
    ProgramEntry,
    SourceStore,
)
from worker.compute.check import BufferPlan, check_launch, check_sizes, plan_buffers, sized_types
from worker.compute.cltypes import parse_dtype
from worker.compute.errors import (
    BuildError,
    ComputeError,
    DeviceUnavailable,
    KernelFailed,
    OutOfDeviceMemory,
    TimeLimitExceeded,
    cl_status_name,
    describe_cl_error,
)
from worker.compute.limits import DeviceLimits, validate
from worker.compute.spec import (
    MAX_TIME_LIMIT_S,
    BufferArg,
    ComputeSpec,
    LocalArg,
    ScalarArg,
    SourceNotCached,
    SpecError,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 4
DEFAULT_BUILD_TIMEOUT_S = 120.0
CHECKPOINT_INTERVAL_S = 0.05
# Output buffers up to this size are made zeroed (COPY_HOST_PTR from these zeros) rather than zero-filled by a
# command on the queue: one command, and one wake-up of the runtime's worker threads, less for a small job.
_ZEROS = np.zeros(64 << 10, np.uint8)
_ZEROS.flags.writeable = False
HASH_IN_THREAD_BYTES = 1 << 20


_build_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("gpumesh_compute_build_limiter")


def build_limiter() -> trio.CapacityLimiter:
    """Threads for compute builds (separate from the shared OpenCL limiter: a long build must not starve it)."""
    try:
        return _build_limiter.get()
    except LookupError:
        lim = trio.CapacityLimiter(2)
        _build_limiter.set(lim)
        return lim


# --- results --------------------------------------------------------------------------------------------


@dataclass
class OutputBuffer:
    index: int  # position in the spec's args
    name: str
    dtype: Any  # the wire dtype (a name, or a struct map)
    array: np.ndarray


@dataclass
class ComputeResult:
    outputs: list[OutputBuffer]
    source_sha256: str = ""
    cache_hit: bool = False
    build_s: float = 0.0
    kernel_s: float = 0.0  # device time of all launches (profiling)
    run_s: float = 0.0  # wall time from taking the device to the last byte read back
    launches: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def arrays(self) -> list[np.ndarray]:
        return [o.array for o in self.outputs]

    def __getitem__(self, key: int | str) -> np.ndarray:
        """An output by its arg index or name."""
        for o in self.outputs:
            if o.index == key or (isinstance(key, str) and o.name == key):
                return o.array
        raise KeyError(f"no output {key!r}; outputs: {[o.name or o.index for o in self.outputs]}")

    def to_wire(self) -> tuple[dict[str, Any], bytes]:
        """(msgpack-able body, output bytes: the outputs concatenated in arg order)."""
        return self.wire_body(), b"".join(np.ascontiguousarray(o.array).tobytes() for o in self.outputs)

    def wire_body(self) -> dict[str, Any]:
        """The msgpack-able body of `to_wire` alone (for outputs already laid out in arg order elsewhere, e.g.
        read back straight into a runner's arena by `execute(..., out_buffer=...)`)."""
        outs = []
        off = 0
        for o in self.outputs:
            nb = o.array.nbytes
            outs.append({"index": o.index, "name": o.name, "dtype": o.dtype, "count": int(o.array.size),
                         "offset": off, "nbytes": nb})
            off += nb
        return {"outputs": outs, "source_sha256": self.source_sha256, "cache_hit": self.cache_hit,
                "build_s": self.build_s, "kernel_s": self.kernel_s, "run_s": self.run_s, "launches": self.launches,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "warnings": list(self.warnings)}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any], output: bytes | None) -> ComputeResult:
        data = memoryview(output or b"")
        outs = []
        for d in body.get("outputs", []):
            dt = parse_dtype(d["dtype"], "result output dtype").dtype
            off, nb = int(d["offset"]), int(d["nbytes"])
            if off + nb > len(data) or nb != int(d["count"]) * dt.itemsize:
                raise ValueError(f"result output {d.get('name') or d['index']} does not fit the output bytes")
            arr = np.frombuffer(data[off:off + nb], dtype=dt).copy()
            outs.append(OutputBuffer(int(d["index"]), str(d.get("name", "")), d["dtype"], arr))
        return cls(outs, str(body.get("source_sha256", "")), bool(body.get("cache_hit", False)),
                   float(body.get("build_s", 0.0)), float(body.get("kernel_s", 0.0)), float(body.get("run_s", 0.0)),
                   int(body.get("launches", 0)), int(body.get("bytes_in", 0)), int(body.get("bytes_out", 0)),
                   list(body.get("warnings", [])))


@dataclass
class Prepared:
    """A spec ready to execute: built, kernels fetched, args checked (nothing transferred yet)."""

    spec: ComputeSpec
    entry: ProgramEntry
    kernels: list[KernelInfo]  # per launch entry
    cache_hit: bool
    build_s: float
    warnings: list[str]
    plans: dict[int, BufferPlan] = field(default_factory=dict)  # buffer index -> flags from the whole sequence


@dataclass(frozen=True)
class QuarantineInfo:
    device_id: str
    job_id: str
    reason: str
    since: float  # time.monotonic()


@dataclass
class RunnerStats:
    jobs: int = 0
    ok: int = 0
    failed: int = 0
    time_limit: int = 0
    quarantines: int = 0


_quarantined: dict[str, QuarantineInfo] = {}
_quarantined_lock = threading.Lock()
QuarantineListener = Callable[[str, "QuarantineInfo | None"], None]
_listeners: list[QuarantineListener] = []


def quarantined_devices() -> dict[str, QuarantineInfo]:
    """Devices (by id) on which a kernel of a failed or cancelled compute job still runs."""
    with _quarantined_lock:
        return dict(_quarantined)


def add_quarantine_listener(fn: QuarantineListener) -> Callable[[], None]:
    """Call `fn(device_id, info)` when a device is quarantined and `fn(device_id, None)` when it is free again.

    Called from any thread (an OpenCL callback thread when a quarantine clears): a trio consumer should hop
    with `trio.from_thread` / `TrioToken.run_sync_soon`. Returns a function that removes the listener.
    The executor uses this to hold back a quarantined device's slots so it is not double-booked.
    """
    with _quarantined_lock:
        _listeners.append(fn)

    def remove() -> None:
        with _quarantined_lock:
            if fn in _listeners:
                _listeners.remove(fn)

    return remove


def _set_quarantine(device_id: str, info: QuarantineInfo | None, expect: QuarantineInfo | None = None) -> None:
    with _quarantined_lock:
        if info is None:
            if _quarantined.get(device_id) is not expect:
                return
            del _quarantined[device_id]
        else:
            _quarantined[device_id] = info
        metrics.QUARANTINED.set(len(_quarantined))
        listeners = list(_listeners)
    for fn in listeners:
        try:
            fn(device_id, info)
        except Exception:  # noqa: BLE001 - a listener must not break the runner (or the OpenCL callback thread)
            log.exception("quarantine listener failed")


class _TimedOut(Exception):
    def __init__(self, where: str) -> None:
        self.where = where


class ComputeRunner:
    """Runs compute jobs on one device (see the module doc). Use from trio; one job at a time."""

    settle: Callable[[Any], int] | None = None  # event -> its status, after a short wait of its own (runners)

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

    # --- state ------------------------------------------------------------------------------------------
    @property
    def quarantined(self) -> bool:
        return self._quarantine is not None

    @property
    def quarantine(self) -> QuarantineInfo | None:
        return self._quarantine

    @property
    def busy(self) -> bool:
        return self._busy or self._quarantine is not None

    def _notify(self) -> None:
        """Wake every waiter (called with self._state held, from any thread)."""
        waiters, self._waiters = self._waiters, []
        for token, ev in waiters:
            try:
                token.run_sync_soon(ev.set)
            except trio.RunFinishedError:
                pass

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until the device is neither running a job nor quarantined."""
        with trio.fail_after(math.inf if timeout_s is None else timeout_s):
            while True:
                with self._state:
                    if not self._busy and self._quarantine is None:
                        return
                    ev = trio.Event()
                    self._waiters.append((trio.lowlevel.current_trio_token(), ev))
                await ev.wait()

    async def _acquire(self, timeout_s: float | None) -> None:
        deadline = trio.current_time() + (math.inf if timeout_s is None else timeout_s)
        while True:
            with self._state:
                if not self._busy and self._quarantine is None:
                    self._busy = True
                    return
                q = self._quarantine
                ev = trio.Event()
                self._waiters.append((trio.lowlevel.current_trio_token(), ev))
            with trio.move_on_at(deadline):
                await ev.wait()
                continue
            why = f"quarantined since a kernel of job {q.job_id or '?'} overran ({q.reason})" if q else "busy"
            raise DeviceUnavailable(f"device {self.device_id} still {why} after {timeout_s:g} s")

    def _release(self) -> None:
        with self._state:
            self._busy = False
            self._notify()

    def _quarantine_until(self, event: Any, keepalive: Any, job_id: str, reason: str) -> bool:
        """Quarantine the device until `event` completes; False if it already has (no quarantine)."""
        cl = self._cl
        try:
            self.queue.flush()
            status = event.command_execution_status
        except cl.Error:
            status = -1
        if status <= cl.command_execution_status.COMPLETE:
            return False
        info = QuarantineInfo(self.device_id, job_id, reason, time.monotonic())
        with self._state:
            self._quarantine = info
            self._keepalive = keepalive
        self.stats.quarantines += 1
        metrics.QUARANTINES.inc()
        _set_quarantine(self.device_id, info)

        def clear(_status: int) -> None:
            # the registry first, so that whoever wakes below already sees the device free everywhere
            _set_quarantine(self.device_id, None, expect=info)
            with self._state:
                if self._quarantine is info:
                    self._quarantine = None
                    self._keepalive = None
                self._notify()

        event.set_callback(cl.command_execution_status.COMPLETE, clear)
        return True

    # --- waiting on OpenCL events -----------------------------------------------------------------------
    async def _wait(self, event: Any, deadline: float, what: str) -> bool:
        """Wait for `event` until `deadline` (trio time). True when complete; raises KernelFailed on error."""
        cl = self._cl
        status = event.command_execution_status
        if status > cl.command_execution_status.COMPLETE and self.settle is not None:
            status = self.settle(event)  # a runner's: a short poll first (see `worker.runner.compute.settle`)
        if status > cl.command_execution_status.COMPLETE:
            done = trio.Event()
            token = trio.lowlevel.current_trio_token()

            def cb(_status: int) -> None:
                try:
                    token.run_sync_soon(done.set)
                except trio.RunFinishedError:
                    pass

            event.set_callback(cl.command_execution_status.COMPLETE, cb)
            with trio.move_on_at(deadline):
                await done.wait()
            status = event.command_execution_status
            if status > cl.command_execution_status.COMPLETE:
                return False
        if status < 0:
            raise KernelFailed(f"{what} failed on the device: {cl_status_name(status)} ({status})")
        return True

    # --- prepare ----------------------------------------------------------------------------------------
    async def prepare(self, spec: ComputeSpec | Mapping[str, Any]) -> Prepared:
        """Validate, build (cached) and check the args against the kernels. Raises SpecError / BuildError."""
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
        return Prepared(s, entry, kernels, hit, build_s, warnings + more, plans)

    def build_options_for(self, s: ComputeSpec) -> tuple[str, ...]:
        """The spec's options, plus the OpenCL C standard a non-uniform launch needs (2.0 or later) when the spec
        names none (validate has checked that the device takes non-uniform work-groups)."""
        if s.requirements().non_uniform and not any(o.startswith("-cl-std=") for o in s.build_options):
            std = "CL3.0" if _version_at_least(self.limits.opencl_version, (3, 0)) else "CL2.0"
            return (*s.build_options, f"-cl-std={std}")
        return s.build_options

    # --- execute ----------------------------------------------------------------------------------------
    async def execute(self, prep: Prepared, blobs: Mapping[str, Any] | None = None, *, job_id: str = "",
                      checkpoint: Callable[[], Awaitable[None]] | None = None,
                      progress: Callable[[float, str | None], None] | None = None,
                      verified: bool = False, out_buffer: memoryview | None = None) -> ComputeResult:
        """Transfer, launch, read back. `blobs`: sha256 -> bytes-like for the streamed inputs (checked unless
        `verified`). `out_buffer`: writable memory of at least `spec.bytes_out` bytes that the outputs are read
        back into, one after the other in arg order (the layout of `ComputeResult.to_wire`; the result's arrays
        are views of it), instead of new arrays. Raises TimeLimitExceeded, KernelFailed, OutOfDeviceMemory,
        DeviceUnavailable, SpecError."""
        s = prep.spec
        if out_buffer is not None and len(out_buffer) < s.bytes_out:
            raise ValueError(f"out_buffer of {len(out_buffer)} bytes; the outputs need {s.bytes_out}")
        hosts = await self._host_inputs(s, blobs or {}, verified)
        await self._acquire(self.quarantine_wait_s)
        cl = self._cl
        q = self.queue
        t_start = trio.current_time()
        deadline = t_start + s.time_limit_s
        bufs: dict[int, Any] = {}
        reads: list[tuple[int, BufferArg, np.ndarray]] = []
        last: list[Any] = [None]  # the last command enqueued (in-order queue: its completion means all done)
        keep: list[Any] = [bufs, hosts, reads]
        kernel_ns = 0
        launches_done = 0
        mf = cl.mem_flags
        released = False
        try:
            # buffers and uploads
            try:
                for i, a in s.buffers:
                    plan = prep.plans.get(i)
                    flags = plan.flags if plan is not None else mf.READ_WRITE
                    if not a.uploads and a.nbytes <= len(_ZEROS):  # small: zeroed as it is made, no fill command
                        bufs[i] = cl.Buffer(self.context, flags | mf.COPY_HOST_PTR, hostbuf=_ZEROS[:a.nbytes])
                    else:
                        bufs[i] = cl.Buffer(self.context, flags, a.nbytes)
                for i, a in s.buffers:
                    if a.uploads:
                        last[0] = cl.enqueue_copy(q, bufs[i], hosts[i], is_blocking=False)
                    elif a.nbytes > len(_ZEROS):
                        last[0] = cl.enqueue_fill_buffer(q, bufs[i], np.uint8(0), 0, a.nbytes)
            except cl.MemoryError as e:
                raise OutOfDeviceMemory(f"cannot allocate the job's {s.buffer_bytes} bytes of buffers on device "
                                        f"{self.device_id}: {describe_cl_error(e)}") from None
            except cl.Error as e:
                if "MEM_OBJECT_ALLOCATION_FAILURE" in str(e) or "OUT_OF_RESOURCES" in str(e):
                    raise OutOfDeviceMemory(f"cannot allocate the job's {s.buffer_bytes} bytes of buffers: "
                                            f"{describe_cl_error(e)}") from None
                raise KernelFailed(f"uploading inputs failed: {describe_cl_error(e)}") from None
            q.flush()

            # launches
            values = [self._arg_values(s, li, bufs) for li in range(len(s.launches))]
            total = s.total_launches
            inflight: deque[tuple[Any, int, int]] = deque()
            last_cp = trio.current_time()

            def done_one(ev: Any) -> int:
                try:
                    return int(ev.profile.end - ev.profile.start)
                except cl.Error:
                    return 0

            n = 0
            for _ in range(s.repeat):
                for li, ln in enumerate(s.launches):
                    info = prep.kernels[li]
                    for _r in range(ln.repeat):
                        if trio.current_time() >= deadline:
                            raise _TimedOut(f"before launch {n + 1} of {total} (kernel {ln.kernel!r})")
                        while len(inflight) >= self.max_in_flight:
                            ev0, li0, n0 = inflight[0]
                            if not await self._wait(ev0, deadline, f"kernel {s.launches[li0].kernel!r}"):
                                raise _TimedOut(f"kernel {s.launches[li0].kernel!r}, launch {n0 + 1} of {total}, "
                                                "still running")
                            inflight.popleft()
                            kernel_ns += done_one(ev0)
                            launches_done += 1
                        j = -1
                        try:
                            for j, v in enumerate(values[li]):
                                info.kernel.set_arg(j, v)
                            j = -1
                            ev = cl.enqueue_nd_range_kernel(q, info.kernel, ln.global_size, ln.local_size)
                        except cl.Error as e:
                            arg = (f", argument {j} ({info.params[j].name or '?'})" if j >= 0 and j < len(info.params)
                                   else "")
                            raise KernelFailed(f"launch {n + 1} of {total} (kernel {ln.kernel!r}{arg}, global "
                                               f"{list(ln.global_size)}, local "
                                               f"{list(ln.local_size) if ln.local_size else None}): "
                                               f"{describe_cl_error(e)}") from None
                        q.flush()
                        last[0] = ev
                        inflight.append((ev, li, n))
                        metrics.LAUNCHES.inc()
                        n += 1
                        if checkpoint is not None and trio.current_time() - last_cp >= CHECKPOINT_INTERVAL_S:
                            # Drain, give the device up, let the executor cancel or preempt us, take it back.
                            while inflight:
                                ev0, li0, n0 = inflight[0]
                                if not await self._wait(ev0, deadline, f"kernel {s.launches[li0].kernel!r}"):
                                    raise _TimedOut(f"kernel {s.launches[li0].kernel!r}, launch {n0 + 1} of "
                                                    f"{total}, still running")
                                inflight.popleft()
                                kernel_ns += done_one(ev0)
                                launches_done += 1
                            if progress is not None:
                                progress(launches_done / total, None)
                            paused = trio.current_time()
                            self._release()
                            released = True
                            await checkpoint()
                            await self._acquire(self.quarantine_wait_s)
                            released = False
                            deadline += trio.current_time() - paused
                            last_cp = trio.current_time()

            # read back (after the launches on the in-order queue)
            out_at = 0
            for i, a in s.buffers:
                if a.returned:
                    if out_buffer is None:
                        host = np.empty(a.count, dtype=a.type.dtype)
                    else:
                        host = np.frombuffer(out_buffer[out_at:out_at + a.nbytes], dtype=a.type.dtype)
                        out_at += a.nbytes
                    reads.append((i, a, host))
                    last[0] = cl.enqueue_copy(q, host, bufs[i], is_blocking=False)
            q.flush()
            while inflight:
                ev0, li0, n0 = inflight[0]
                if not await self._wait(ev0, deadline, f"kernel {s.launches[li0].kernel!r}"):
                    raise _TimedOut(f"kernel {s.launches[li0].kernel!r}, launch {n0 + 1} of {total}, still running")
                inflight.popleft()
                kernel_ns += done_one(ev0)
                launches_done += 1
            if last[0] is not None and not await self._wait(last[0], deadline, "reading the outputs back"):
                raise _TimedOut("reading the outputs back")
        except BaseException as exc:
            if not released and last[0] is not None:
                why = (f"timed out: {exc.where}" if isinstance(exc, _TimedOut)
                       else "cancelled" if isinstance(exc, trio.Cancelled) else f"failed: {type(exc).__name__}")
                keep.append(last[0])  # keep the event alive: freeing it would block the trio thread on the kernel
                quarantined = self._quarantine_until(last[0], keep, job_id, why)
            else:
                quarantined = False
            if isinstance(exc, _TimedOut):
                self.stats.time_limit += 1
                raise TimeLimitExceeded(s.time_limit_s, exc.where, quarantined=quarantined) from None
            raise
        finally:
            if not released:
                self._release()
        run_s = trio.current_time() - t_start
        for b in bufs.values():
            b.release()
        kernel_s = kernel_ns * 1e-9
        metrics.KERNEL_SECONDS.observe(kernel_s)
        metrics.BYTES_IN.inc(s.bytes_in)
        metrics.BYTES_OUT.inc(s.bytes_out)
        if progress is not None:
            progress(1.0, None)
        outs = [OutputBuffer(i, a.name, a.dtype, host) for i, a, host in reads]
        return ComputeResult(outs, s.source_sha256, prep.cache_hit, prep.build_s, kernel_s, run_s, launches_done,
                             s.bytes_in, s.bytes_out, list(prep.warnings))

    def _arg_values(self, s: ComputeSpec, li: int, bufs: Mapping[int, Any]) -> list[Any]:
        out: list[Any] = []
        for a in s.launches[li].args:
            if isinstance(a, int):
                arg = s.args[a]
                if isinstance(arg, BufferArg):
                    out.append(bufs[a])
                    continue
                a = arg
            if isinstance(a, ScalarArg):
                out.append(a.host_value())
            else:
                assert isinstance(a, LocalArg)
                out.append(self._cl.LocalMemory(a.nbytes))
        return out

    async def _host_inputs(self, s: ComputeSpec, blobs: Mapping[str, Any], verified: bool) -> dict[int, np.ndarray]:
        """Host arrays of the uploaded buffers, checked against their declared sizes and hashes."""
        views: dict[str, memoryview] = {}
        for sha, nbytes in s.stream_layout():
            if sha not in blobs:
                raise SpecError("input", f"streamed blob {sha[:16]}... ({nbytes} bytes) is missing from the input")
            mv = memoryview(blobs[sha]).cast("B")
            if len(mv) != nbytes:
                raise SpecError("input", f"blob {sha[:16]}... has {len(mv)} bytes, the spec declares {nbytes}")
            if not verified:
                got = (await trio.to_thread.run_sync(_sha256, mv) if nbytes >= HASH_IN_THREAD_BYTES
                       else _sha256(mv))
                if got != sha:
                    raise SpecError("input", f"blob declared as {sha[:16]}... hashes to {got[:16]}...")
            views[sha] = mv
        hosts: dict[int, np.ndarray] = {}
        for i, a in s.buffers:
            if a.data is not None:
                hosts[i] = np.frombuffer(a.data, dtype=np.uint8)
            elif a.sha256 is not None:
                hosts[i] = np.frombuffer(views[a.sha256], dtype=np.uint8)
        return hosts

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


def _sha256(mv: memoryview) -> str:
    return hashlib.sha256(mv).hexdigest()


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
