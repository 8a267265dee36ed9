"""Shared OpenCL plumbing for every kernel in worker/: one context and queue per device, a per-context
program cache, and the rule that blocking OpenCL calls leave the trio thread.

- `device_context(device)` -> `DeviceContext` (context, in-order queue with profiling enabled, program
  cache), created once per device per process and reused.
- `ProgramCache`: builds keyed by (sha256 of source, build options), bounded LRU; kernel objects are
  fetched once per (program, name) with `cl.Kernel(prg, name)` and cached (`prg.name` repeatedly warns
  and re-creates the kernel).
- `programs_for(context)`: the cache of any pyopencl Context (for code that is handed only a Context).
- `run_blocking(fn, *args)`: run a blocking call (build, `queue.finish()`, `event.wait()`, a blocking
  copy) in a worker thread under a per-trio-run limiter. `build()`, `kernel()`, `finish()`, `wait()` are
  the async forms of the common ones.

Kernel objects are shared: set their arguments and enqueue in one synchronous step (`knl(queue, gsize,
lsize, *args)`), never with an `await` in between, so that two jobs on one device cannot interleave
their `set_args`.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from worker.devices import (
    Device,
    DeviceGone,
    _import_opencl,
    blocking_limiter,
    enumerate_opencl,
)

T = TypeVar("T")

DEFAULT_MAX_PROGRAMS = 32



async def run_blocking(fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None) -> T:
    """`fn(*args)` in a worker thread under `limiter` (default: `blocking_limiter()`).

    Not abandoned on cancel: OpenCL calls cannot be interrupted, so a cancel takes effect when the call
    returns. Keep each call short (one chunk of work).
    """
    return await trio.to_thread.run_sync(lambda: fn(*args), limiter=limiter or blocking_limiter())


def _options_key(options: str | Sequence[str] | None) -> tuple[str, ...]:
    if options is None:
        return ()
    if isinstance(options, str):
        return tuple(options.split())
    return tuple(options)


def program_key(source: str, options: str | Sequence[str] | None = None) -> tuple[str, tuple[str, ...]]:
    return hashlib.sha256(source.encode()).hexdigest(), _options_key(options)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class ProgramCache:
    """Built programs of one context, keyed by (source hash, options); bounded LRU; thread-safe.

    Builds run under one lock per cache (so two threads asking for the same program build it once).
    """

    def __init__(self, context: Any, max_programs: int = DEFAULT_MAX_PROGRAMS, *, cl: Any = None) -> None:
        if max_programs < 1:
            raise ValueError("max_programs must be at least 1")
        self.context = context
        self.max_programs = max_programs
        self._cl = cl or _import_opencl()
        self._programs: OrderedDict[tuple[str, tuple[str, ...]], Any] = OrderedDict()
        self._kernels: dict[tuple[tuple[str, tuple[str, ...]], str], Any] = {}
        self._lock = threading.RLock()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._programs)

    def __contains__(self, key: tuple[str, tuple[str, ...]]) -> bool:
        return key in self._programs

    def program(self, source: str, options: str | Sequence[str] | None = None) -> Any:
        """The built program (blocking: builds on a miss; a build error raises cl.RuntimeError with the log)."""
        key = program_key(source, options)
        with self._lock:
            prg = self._programs.get(key)
            if prg is not None:
                self._programs.move_to_end(key)
                self.stats.hits += 1
                return prg
            self.stats.misses += 1
            prg = self._cl.Program(self.context, source).build(options=list(key[1]))
            self._programs[key] = prg
            while len(self._programs) > self.max_programs:
                old, _ = self._programs.popitem(last=False)
                self.stats.evictions += 1
                for k in [k for k in self._kernels if k[0] == old]:
                    del self._kernels[k]
            return prg

    def kernel(self, source: str, name: str, options: str | Sequence[str] | None = None) -> Any:
        """The kernel object `name` of that program, fetched once (blocking on a build miss)."""
        key = program_key(source, options)
        with self._lock:
            prg = self.program(source, options)
            knl = self._kernels.get((key, name))
            if knl is None:
                knl = self._cl.Kernel(prg, name)
                self._kernels[(key, name)] = knl
            return knl

    def cached_kernel(self, source: str, name: str, options: str | Sequence[str] | None = None) -> Any | None:
        """The kernel if its program is built and the cache is not busy building; else None. Never blocks
        (safe on the trio thread: a build in a worker thread holds the lock for up to a second)."""
        key = program_key(source, options)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if key not in self._programs:
                return None
            return self.kernel(source, name, options)
        finally:
            self._lock.release()

    def cached_program(self, source: str, options: str | Sequence[str] | None = None) -> Any | None:
        """The program if built and the cache is not busy; else None. Never blocks."""
        key = program_key(source, options)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            prg = self._programs.get(key)
            if prg is not None:
                self._programs.move_to_end(key)
                self.stats.hits += 1
            return prg
        finally:
            self._lock.release()

    async def abuild(self, source: str, options: str | Sequence[str] | None = None) -> Any:
        """`program()`, with the build (or a wait for a busy cache) in a worker thread."""
        prg = self.cached_program(source, options)
        if prg is not None:
            return prg
        return await run_blocking(self.program, source, options)

    async def akernel(self, source: str, name: str, options: str | Sequence[str] | None = None) -> Any:
        """`kernel()`, with the build (or a wait for a busy cache) in a worker thread."""
        knl = self.cached_kernel(source, name, options)
        if knl is not None:
            return knl
        return await run_blocking(self.kernel, source, name, options)


# --- per-context caches for code handed only a pyopencl Context ------------------------------------------

_context_caches: weakref.WeakKeyDictionary[Any, ProgramCache] = weakref.WeakKeyDictionary()
_context_caches_lock = threading.Lock()


def programs_for(context: Any) -> ProgramCache:
    """The program cache of `context` (created on first use, dropped with the context)."""
    with _context_caches_lock:
        cache = _context_caches.get(context)
        if cache is None:
            cache = ProgramCache(context)
            _context_caches[context] = cache
        return cache


async def build(context: Any, source: str, options: str | Sequence[str] | None = None) -> Any:
    """The built program for `context`, cached; the build runs in a worker thread."""
    return await programs_for(context).abuild(source, options)


async def kernel(context: Any, source: str, name: str, options: str | Sequence[str] | None = None) -> Any:
    """The cached kernel object `name` for `context`; a build runs in a worker thread."""
    return await programs_for(context).akernel(source, name, options)


async def finish(queue: Any) -> None:
    """`queue.finish()` off the trio thread."""
    await run_blocking(queue.finish)


async def wait(event: Any) -> None:
    """`event.wait()` off the trio thread."""
    await run_blocking(event.wait)


# --- one context per device -----------------------------------------------------------------------------


@dataclass
class DeviceContext:
    """A device's OpenCL context, its in-order queue (profiling enabled) and its program cache."""

    device: Device
    cl_device: Any
    context: Any
    queue: Any
    programs: ProgramCache = field(repr=False)

    def kernel(self, source: str, name: str, options: str | Sequence[str] | None = None) -> Any:
        return self.programs.kernel(source, name, options)

    async def akernel(self, source: str, name: str, options: str | Sequence[str] | None = None) -> Any:
        return await self.programs.akernel(source, name, options)


_device_contexts: dict[tuple[str, str], DeviceContext] = {}
_device_contexts_lock = threading.Lock()


def find_cl_device(device: Device, *, opencl: Callable[[], Any] | None = None) -> Any:
    """The pyopencl device for `device`: by id, checked by fingerprint, else the first with that fingerprint."""
    if not device.opencl:
        raise DeviceGone(f"{device.id} is the CPU reference pseudo-device; it has no OpenCL context")
    cl = (opencl or _import_opencl)()
    found, problem, _ = enumerate_opencl(cl)
    for d, handle in found:
        if d.id == device.id and d.fingerprint == device.fingerprint:
            return handle
    for d, handle in found:
        if d.fingerprint == device.fingerprint:
            return handle
    raise DeviceGone(f"device {device.id} {device.name!r} (fingerprint {device.fingerprint}) is no longer present"
                     + (f" ({problem})" if problem else ""))


def device_context(device: Device, *, max_programs: int = DEFAULT_MAX_PROGRAMS) -> DeviceContext:
    """The process-wide DeviceContext of `device` (blocking on first use; raises DeviceGone)."""
    key = (device.id, device.fingerprint)
    with _device_contexts_lock:
        dctx = _device_contexts.get(key)
        if dctx is not None:
            if dctx.device != device:  # newer record (e.g. calibrated): keep the context, update the record
                dctx.device = device
            return dctx
        cl = _import_opencl()
        handle = find_cl_device(device)
        ctx = cl.Context(devices=[handle])
        queue = cl.CommandQueue(ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
        dctx = DeviceContext(device, handle, ctx, queue, ProgramCache(ctx, max_programs, cl=cl))
        with _context_caches_lock:
            _context_caches[ctx] = dctx.programs  # programs_for(dctx.context) shares the same cache
        _device_contexts[key] = dctx
        return dctx


def cached_device_context(device: Device) -> DeviceContext | None:
    """The DeviceContext of `device` if one was created already, else None. Never blocks (None while
    another thread is creating a context)."""
    if not _device_contexts_lock.acquire(blocking=False):
        return None
    try:
        dctx = _device_contexts.get((device.id, device.fingerprint))
        if dctx is not None and dctx.device != device:
            dctx.device = device
        return dctx
    finally:
        _device_contexts_lock.release()


async def open_device(device: Device) -> DeviceContext:
    """`device_context()`, off the trio thread unless the context exists already."""
    dctx = cached_device_context(device)
    if dctx is not None:
        await trio.lowlevel.checkpoint()
        return dctx
    return await run_blocking(device_context, device)


def forget_device(device: Device) -> None:
    """Drop the cached context of a device that went away."""
    with _device_contexts_lock:
        _device_contexts.pop((device.id, device.fingerprint), None)
