"""Programs and sources of compute jobs, cached.

- `SourceStore`: sources by SHA-256 (bounded by total bytes, LRU), so a client can send `source_sha256`
  instead of the source once a worker has seen it. One per process (`SOURCES`).
- `ComputeProgramCache`: built programs of one OpenCL context keyed by (source SHA-256, build options),
  bounded LRU by count; failed builds are remembered too (bounded) so a broken program resubmitted does not
  cost a compile each time; concurrent requests for the same program build it once. Kernel objects are
  fetched once per (program, name) with `cl.Kernel(prg, name)`, with their parameter info.

This cache is separate from `worker.opencl.ProgramCache` on purpose: user programs must not evict the
node's own kernels (render, zk, calibration). Builds go straight to the runtime (`_cl._Program`), without
pyopencl's additions (its `-I` include path, `PYOPENCL_BUILD_OPTIONS`, its on-disk binary cache, and the
copy of a failing source it writes to a temporary file).
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.compute import metrics
from worker.compute.cltypes import FORBIDDEN_ARG_TYPES, OPAQUE_TYPES
from worker.compute.errors import BuildError, SpecError, describe_cl_error
from worker.compute.source import source_sha256

# Always added: lets the runner check each argument against the kernel's declared parameter.
ARG_INFO_OPTION = "-cl-kernel-arg-info"
DEFAULT_MAX_PROGRAMS = 16
DEFAULT_MAX_FAILURES = 32
DEFAULT_SOURCE_BYTES = 16 << 20
SIZEOF_PROBE = "gpumesh_sizeof_probe"

# pyopencl warns "Non-empty compiler output" on any build log; the log reaches the client in the result's
# warnings instead. Only warnings attributed to this module are silenced.
warnings.filterwarnings("ignore", message="Non-empty compiler output", module=r"worker\.compute\.cache")

_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s:\\/\"']+)+[\\/]([^\s:\\/\"']*\.(?:cl|h|c))")


def clean_log(log: str) -> str:
    """A build log without the worker's file paths (the runtime compiles a temp file in its cache dir)."""
    return _PATH_RE.sub("program.cl", log)


class SourceStore:
    """Sources by SHA-256, bounded by total size (LRU). Thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_SOURCE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._by_hash: OrderedDict[str, str] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, source: str) -> str:
        sha = source_sha256(source)
        n = len(source.encode("utf-8"))
        with self._lock:
            if sha in self._by_hash:
                self._by_hash.move_to_end(sha)
                return sha
            if n > self.max_bytes:
                return sha
            self._by_hash[sha] = source
            self._bytes += n
            while self._bytes > self.max_bytes:
                _, old = self._by_hash.popitem(last=False)
                self._bytes -= len(old.encode("utf-8"))
        return sha

    def get(self, sha: str) -> str | None:
        with self._lock:
            src = self._by_hash.get(sha)
            if src is not None:
                self._by_hash.move_to_end(sha)
            return src

    def __contains__(self, sha: object) -> bool:
        with self._lock:
            return sha in self._by_hash

    def __len__(self) -> int:
        return len(self._by_hash)


SOURCES = SourceStore()


@dataclass
class ParamInfo:
    """A kernel parameter as the runtime declares it (None where the runtime gives no arg info)."""

    address: str | None  # "global" | "constant" | "local" | "private"
    type_name: str | None  # e.g. "float*", "uint", "float4*", or a typedef name
    name: str | None
    const: bool = False
    opaque: str | None = None  # "image" (an access qualifier), "sampler_t", "pipe", "queue_t", ...: not bindable


@dataclass
class KernelInfo:
    kernel: Any
    name: str
    num_args: int
    params: list[ParamInfo]
    work_group_size: int | None  # the kernel's maximum on this device
    local_mem_bytes: int | None  # static __local memory the kernel declares
    reqd_work_group_size: tuple[int, int, int] | None = None  # __attribute__((reqd_work_group_size(x, y, z)))


@dataclass
class ProgramEntry:
    key: tuple[str, tuple[str, ...]]
    program: Any
    kernel_names: tuple[str, ...]
    build_log: str
    build_s: float
    kernels: dict[str, KernelInfo] = field(default_factory=dict)
    sizes: dict[tuple[str, ...], dict[str, int] | None] = field(default_factory=dict)  # type_sizes, memoised


@dataclass
class ProgramCacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    failures: int = 0  # builds that failed (each compiled once while remembered)
    failure_hits: int = 0  # resubmitted failures answered from the cache


class ComputeProgramCache:
    """Built user programs of one context (see the module doc). Blocking methods; thread-safe."""

    def __init__(self, context: Any, device: Any, *, max_programs: int = DEFAULT_MAX_PROGRAMS,
                 max_failures: int = DEFAULT_MAX_FAILURES, cl: Any = None) -> None:
        if max_programs < 1:
            raise ValueError("max_programs must be at least 1")
        if cl is None:
            # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
            import pyopencl as cl
        self._cl = cl
        self.context = context
        self.device = device
        self.max_programs = max_programs
        self.max_failures = max_failures
        self._programs: OrderedDict[tuple[str, tuple[str, ...]], ProgramEntry] = OrderedDict()
        self._failures: OrderedDict[tuple[str, tuple[str, ...]], BuildError] = OrderedDict()
        self._building: dict[tuple[str, tuple[str, ...]], threading.Event] = {}
        self._lock = threading.Lock()
        self.stats = ProgramCacheStats()

    def __len__(self) -> int:
        return len(self._programs)

    def __contains__(self, key: object) -> bool:
        return key in self._programs

    def lookup(self, sha: str, options: tuple[str, ...]) -> ProgramEntry | None:
        """The built program if cached (counts a hit), else None (counts nothing). Never blocks on a build."""
        key = (sha, tuple(options))
        with self._lock:
            e = self._programs.get(key)
            if e is not None:
                self._programs.move_to_end(key)
                self.stats.hits += 1
                metrics.BUILD_CACHE_HITS.inc()
                return e
            err = self._failures.get(key)
            if err is not None:
                self.stats.failure_hits += 1
                metrics.BUILD_CACHE_HITS.inc()
                raise err
        return None

    def get(self, source: str, options: tuple[str, ...], sha: str | None = None) -> tuple[ProgramEntry, bool]:
        """(the built program, whether it came from the cache). Blocking: builds on a miss.

        Raises BuildError (with the compiler log) when the program does not build.
        """
        sha = sha or source_sha256(source)
        key = (sha, tuple(options))
        while True:
            hit = self.lookup(sha, options)
            if hit is not None:
                return hit, True
            with self._lock:
                if key in self._programs or key in self._failures:
                    continue  # finished between the two lookups
                ev = self._building.get(key)
                if ev is None:
                    ev = self._building[key] = threading.Event()
                    mine = True
                else:
                    mine = False
            if not mine:
                ev.wait()  # someone else builds it; then look again
                continue
            try:
                self.stats.misses += 1
                metrics.BUILD_CACHE_MISSES.inc()
                entry = self._build(source, key)
            except BuildError as err:
                with self._lock:
                    self.stats.failures += 1
                    self._failures[key] = err
                    while len(self._failures) > self.max_failures:
                        self._failures.popitem(last=False)
                raise
            finally:
                with self._lock:
                    self._building.pop(key, None)
                ev.set()
            with self._lock:
                self._programs[key] = entry
                while len(self._programs) > self.max_programs:
                    self._programs.popitem(last=False)
                    self.stats.evictions += 1
            return entry, False

    def _build(self, source: str, key: tuple[str, tuple[str, ...]]) -> ProgramEntry:
        cl = self._cl
        options = " ".join((*key[1], ARG_INFO_OPTION))
        t0 = time.perf_counter()
        prg = cl._cl._Program(self.context, source)
        try:
            prg.build(options.encode(), [self.device])
        except cl.Error as e:
            log = self._log(prg)
            if not log.strip():
                log = str(e)
            raise BuildError(clean_log(log), options=key[1], source_sha256=key[0]) from None
        build_s = time.perf_counter() - t0
        metrics.BUILD_SECONDS.observe(build_s)
        names = str(prg.get_info(cl.program_info.KERNEL_NAMES))
        return ProgramEntry(key, prg, tuple(n for n in names.split(";") if n), clean_log(self._log(prg)), build_s)

    def type_sizes(self, entry: ProgramEntry, source: str, types: tuple[str, ...]) -> dict[str, int] | None:
        """`sizeof` of each type (struct and typedef names the kernels' parameters use) as this device's compiler
        lays it out: a probe kernel appended to the source, built and run once per program and set of types.
        None when the probe does not build or run (the checks that need it are then skipped). Blocking."""
        with self._lock:
            if types in entry.sizes:
                return entry.sizes[types]
        cl = self._cl
        lines = "".join(f"    gpumesh_sizes_[{i}] = sizeof({t});\n" for i, t in enumerate(types))
        probe = f"{source}\n__kernel void {SIZEOF_PROBE}(__global ulong *gpumesh_sizes_)\n{{\n{lines}}}\n"
        sizes: dict[str, int] | None
        try:
            prg = cl._cl._Program(self.context, probe)
            prg.build(" ".join(entry.key[1]).encode(), [self.device])
            knl = cl.Kernel(prg, SIZEOF_PROBE)
            queue = cl.CommandQueue(self.context, self.device)
            buf = cl.Buffer(self.context, cl.mem_flags.READ_WRITE, 8 * len(types))
            knl.set_arg(0, buf)
            cl.enqueue_nd_range_kernel(queue, knl, (1,), None)
            out = np.zeros(len(types), dtype=np.uint64)
            cl.enqueue_copy(queue, out, buf)
            queue.finish()
            sizes = {t: int(v) for t, v in zip(types, out, strict=True)}
        except cl.Error:
            sizes = None
        with self._lock:
            entry.sizes[types] = sizes
        return sizes

    def _log(self, prg: Any) -> str:
        try:
            return str(prg.get_build_info(self.device, self._cl.program_build_info.LOG) or "")
        except Exception:  # noqa: BLE001 - a runtime that cannot report its log
            return ""

    def kernel(self, entry: ProgramEntry, name: str, field_name: str = "kernel") -> KernelInfo:
        """The kernel object `name` of a built program, fetched once, with its parameter info."""
        with self._lock:
            info = entry.kernels.get(name)
            if info is not None:
                return info
            if entry.kernel_names and name not in entry.kernel_names:
                raise SpecError(field_name, f"the program has no kernel named {name!r} (kernels: "
                                            f"{', '.join(entry.kernel_names)})")
            cl = self._cl
            try:
                knl = cl.Kernel(entry.program, name)
            except cl.Error as e:
                raise SpecError(field_name, f"cannot get kernel {name!r}: {describe_cl_error(e)}") from None
            info = KernelInfo(knl, name, int(knl.num_args), self._params(knl), *self._wg_info(knl))
            entry.kernels[name] = info
            return info

    def _params(self, knl: Any) -> list[ParamInfo]:
        cl = self._cl
        aq = cl.kernel_arg_address_qualifier
        names = {aq.GLOBAL: "global", aq.CONSTANT: "constant", aq.LOCAL: "local", aq.PRIVATE: "private"}
        out = []
        for i in range(int(knl.num_args)):
            try:
                addr = names.get(int(knl.get_arg_info(i, cl.kernel_arg_info.ADDRESS_QUALIFIER)))
                tname = str(knl.get_arg_info(i, cl.kernel_arg_info.TYPE_NAME)).strip()
                pname = str(knl.get_arg_info(i, cl.kernel_arg_info.NAME))
                tq = int(knl.get_arg_info(i, cl.kernel_arg_info.TYPE_QUALIFIER))
                access = int(knl.get_arg_info(i, cl.kernel_arg_info.ACCESS_QUALIFIER))
                opaque = ("pipe" if tq & cl.kernel_arg_type_qualifier.PIPE
                          else f"image ({tname})" if access != cl.kernel_arg_access_qualifier.NONE
                          else tname if tname in OPAQUE_TYPES or tname in FORBIDDEN_ARG_TYPES else None)
                out.append(ParamInfo(addr, tname, pname, bool(tq & cl.kernel_arg_type_qualifier.CONST), opaque))
            except cl.Error:  # KERNEL_ARG_INFO_NOT_AVAILABLE: nothing to check against
                out.append(ParamInfo(None, None, None))
        return out

    def _wg_info(self, knl: Any) -> tuple[int | None, int | None, tuple[int, int, int] | None]:
        cl = self._cl
        try:
            wg = int(knl.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, self.device))
        except cl.Error:
            wg = None
        try:
            lm = int(knl.get_work_group_info(cl.kernel_work_group_info.LOCAL_MEM_SIZE, self.device))
        except cl.Error:
            lm = None
        try:
            c = [int(x) for x in knl.get_work_group_info(cl.kernel_work_group_info.COMPILE_WORK_GROUP_SIZE,
                                                         self.device)]
            reqd = (c[0], c[1], c[2]) if len(c) == 3 and any(c) else None
        except cl.Error:
            reqd = None
        return wg, lm, reqd
