"""The execute step of a compute job (`ComputeExecution.execute`, the base `ComputeRunner` runs a prepared spec
with): allocate the buffers (`out` buffers zero-filled), upload, enqueue the launches with at most
`max_in_flight` in flight and checkpoints between them, read the outputs back; on a deadline, cancel or error,
quarantine the device while a command it enqueued still runs (see `worker.compute.runner`).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from worker.compute import metrics
from worker.compute.cache import KernelInfo, ProgramEntry
from worker.compute.check import BufferPlan
from worker.compute.device_gate import DeviceGate
from worker.compute.errors import KernelFailed, OutOfDeviceMemory, TimeLimitExceeded, describe_cl_error
from worker.compute.result import ComputeResult, OutputBuffer
from worker.compute.spec import BufferArg, ComputeSpec, LocalArg, ScalarArg, SpecError

CHECKPOINT_INTERVAL_S = 0.05
# Output buffers up to this size are made zeroed (COPY_HOST_PTR from these zeros) rather than zero-filled by a
# command on the queue: one command, and one wake-up of the runtime's worker threads, less for a small job.
_ZEROS = np.zeros(64 << 10, np.uint8)
_ZEROS.flags.writeable = False
HASH_IN_THREAD_BYTES = 1 << 20


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


class _TimedOut(Exception):
    def __init__(self, where: str) -> None:
        self.where = where


class ComputeExecution(DeviceGate):
    """`execute` on the runner's device (see the module doc)."""

    context: Any
    max_in_flight: int
    quarantine_wait_s: float | None

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


def _sha256(mv: memoryview) -> str:
    return hashlib.sha256(mv).hexdigest()
