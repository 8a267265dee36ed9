"""The job-kind registry: what a job of each kind needs, costs, and how it runs.

A `JobKind` is a stateless object registered under its `name`:
- `validate(spec, input_size)` raises `SpecError` naming the offending field;
- `requirements(spec)` -> `Requirements` (device kind, memory, fp64/int64, minimum calibrated speed, whether
  it needs a real OpenCL device or also has a CPU path);
- `cost_s(spec, input_size, device)` estimates seconds of run time on `device` from its calibration
  (`device=None`: a typical figure, for a node that has not calibrated);
- `chunk_s(spec, input_size, device)` bounds the time between two `checkpoint()` calls (what a realtime job
  waiting behind this one may have to wait);
- `async run(ctx)` does the work. Device code runs in the job's runner process when `ctx.runner` is set (what
  the node's executor gives every job on an OpenCL device: a crash there fails the job, not the node), else
  in this process on `ctx.cl` (the device's OpenCL context/queue/program cache: library use and tests); with
  neither (the CPU reference pseudo-device) the kind runs its CPU path;
- `reference(spec, input_bytes)` is the plain-CPU oracle of the result (tests, verification by recomputation).

`run` reads its input with `async for chunk in ctx.input` (streamed, in chunks) and calls
`await ctx.checkpoint()` at chunk boundaries: that is where cancel and preemption by a more urgent job reach
it. `ctx.progress(fraction, message)` reports progress.

Kinds register with `register(kind)`; `get(name)` raises `UnknownKind` listing the known names.
`worker.kinds_basic.load_builtin_kinds()` registers echo, sleep and checksum.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import msgpack
import trio

from worker.devices import DEVICE_KINDS, Device
from worker.result import Result  # what `run` and `reference` return; re-exported here

if TYPE_CHECKING:
    from worker.opencl import DeviceContext
    from worker.runner.pool import RunnerLease

# Figures assumed for a device that has not been calibrated (or device=None): a modest CPU.
DEFAULT_MULMOD_MOPS = 100.0
DEFAULT_F32_GFLOPS = 5.0


class SpecError(ValueError):
    """A job spec is invalid; `field` names the offending field ('' for the spec as a whole)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"spec field {field!r}: {message}" if field else f"spec: {message}")


class UnknownKind(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown job kind {name!r}; known kinds: {', '.join(known) or '(none registered)'}")

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0])


MAX_AVOID_PEERS = 64


@dataclass(frozen=True)
class Requirements:
    """What a job needs of a device; None/0/False mean "no constraint". One definition for both sides: the
    coordinator matches it against adverts (placement), the worker against its own devices (`unmet`), and
    it travels in the job (`to_wire`/`from_wire`; bad values raise ValueError with a readable message).
    `opencl=True` excludes the CPU reference pseudo-device (device kind "reference")."""

    device_kind: str | None = None  # "gpu" | "cpu" | "accelerator" | "reference"
    min_memory_bytes: int = 0
    fp64: bool = False
    int64: bool = False
    min_mulmod_mops: float = 0.0
    min_f32_gflops: float = 0.0
    opencl: bool = False  # needs a real OpenCL device (no CPU path)
    avoid_peers: tuple[str, ...] = ()  # never place on these peers (e.g. the other copy of a redundant run)

    def __post_init__(self) -> None:
        avoid = tuple(sorted(set(self.avoid_peers)))
        if len(avoid) > MAX_AVOID_PEERS or not all(isinstance(p, str) and 0 < len(p) <= 128 for p in avoid):
            raise ValueError(f"requirements: avoid_peers takes at most {MAX_AVOID_PEERS} peer ids")
        object.__setattr__(self, "avoid_peers", avoid)
        if self.device_kind is not None and self.device_kind not in DEVICE_KINDS:
            raise ValueError(f"requirements: device kind must be one of {', '.join(DEVICE_KINDS)}, "
                             f"not {self.device_kind!r}")
        if self.min_memory_bytes < 0 or self.min_mulmod_mops < 0 or self.min_f32_gflops < 0:
            raise ValueError("requirements must not be negative")

    def unmet(self, device: Device) -> str | None:
        """Why `device` does not meet these requirements, or None when it does."""
        if self.opencl and not device.opencl:
            return "needs an OpenCL device"
        if self.device_kind is not None and device.kind != self.device_kind:
            return f"needs a {self.device_kind} device, this is a {device.kind}"
        if device.global_mem_bytes < self.min_memory_bytes:
            return f"needs {self.min_memory_bytes} bytes of device memory, has {device.global_mem_bytes}"
        if self.fp64 and not device.fp64:
            return "needs fp64"
        if self.int64 and not device.int64:
            return "needs 64-bit integers"
        if self.min_mulmod_mops > 0 and (device.mulmod_mops or 0.0) < self.min_mulmod_mops:
            return f"needs {self.min_mulmod_mops:g} M mulmod/s, has {device.mulmod_mops or 0:g}"
        if self.min_f32_gflops > 0 and (device.f32_gflops or 0.0) < self.min_f32_gflops:
            return f"needs {self.min_f32_gflops:g} GFLOP/s, has {device.f32_gflops or 0:g}"
        return None

    def satisfied_by(self, device: Device) -> bool:
        return self.unmet(device) is None

    def describe(self) -> str:
        """Human phrase: 'a gpu with >= 16 GiB and fp64'."""
        kind = self.device_kind or ("OpenCL device" if self.opencl else "device")
        parts = []
        if self.min_memory_bytes:
            parts.append(f">= {fmt_bytes(self.min_memory_bytes)}")
        if self.fp64:
            parts.append("fp64")
        if self.int64:
            parts.append("int64")
        if self.min_mulmod_mops:
            parts.append(f">= {self.min_mulmod_mops:g} M mulmod/s")
        if self.min_f32_gflops:
            parts.append(f">= {self.min_f32_gflops:g} GFLOP/s")
        return f"a {kind}" + (" with " + " and ".join(parts) if parts else "")

    def merged(self, other: Requirements) -> Requirements:
        """The stricter of two (a kind's own needs and the client's)."""
        if other == NO_REQUIREMENTS:  # the common case (a job that asks for nothing): no new object
            return self
        if self == NO_REQUIREMENTS:
            return other
        if self.device_kind and other.device_kind and self.device_kind != other.device_kind:
            raise ValueError(f"conflicting device kinds {self.device_kind!r} and {other.device_kind!r}")
        return Requirements(
            device_kind=self.device_kind or other.device_kind,
            min_memory_bytes=max(self.min_memory_bytes, other.min_memory_bytes),
            fp64=self.fp64 or other.fp64,
            int64=self.int64 or other.int64,
            min_mulmod_mops=max(self.min_mulmod_mops, other.min_mulmod_mops),
            min_f32_gflops=max(self.min_f32_gflops, other.min_f32_gflops),
            opencl=self.opencl or other.opencl,
            avoid_peers=tuple(set(self.avoid_peers) | set(other.avoid_peers)),
        )

    def to_wire(self) -> dict[str, Any]:
        """The fields that differ from "no constraint" (tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v != f.default:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_wire(cls, d: Any) -> Requirements:
        if d is None:
            return NO_REQUIREMENTS
        if not isinstance(d, dict):
            raise ValueError("requirements must be a map")
        unknown = set(d) - set(_REQ_TYPES)
        if unknown:
            raise ValueError(f"requirements: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            want = _REQ_TYPES[k]
            if isinstance(v, bool) and bool not in want or not isinstance(v, want):
                raise ValueError(f"requirements: field {k!r} must be {' or '.join(t.__name__ for t in want)}, "
                                 f"not {type(v).__name__}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"requirements: field {k!r} must be finite")
            kw[k] = tuple(v) if isinstance(v, list | tuple) else float(v) if isinstance(v, int | float) and float in want else v
        return cls(**kw)


NO_REQUIREMENTS = Requirements()  # frozen: one shared instance for "no constraint"

_REQ_TYPES: dict[str, tuple[type, ...]] = {
    "device_kind": (str, type(None)), "min_memory_bytes": (int,), "fp64": (bool,), "int64": (bool,),
    "min_mulmod_mops": (int, float), "min_f32_gflops": (int, float), "opencl": (bool,), "avoid_peers": (list, tuple)}


def fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{int(n)} B"


ProgressFn = Callable[[float, str | None], None]


def _no_progress(fraction: float, message: str | None = None) -> None:
    pass


@asynccontextmanager
async def _no_idle_devices() -> AsyncIterator[list[tuple[Any, Any]]]:
    yield []


async def _no_checkpoint() -> None:
    await trio.lowlevel.checkpoint()


class InputReader:
    """The job's input: an async iterator of non-empty bytes chunks, read once.

    Counts bytes and refuses more than the declared size (a stream that lies about its size is an error,
    not a memory leak).
    """

    def __init__(self, source: AsyncIterable[bytes] | bytes | None, size: int, chunk_size: int = 1 << 20) -> None:
        self.size = size
        self.read = 0
        self._chunk_size = chunk_size
        self._source = source
        self._used = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._used:
            raise RuntimeError("the job input can be read only once")
        self._used = True
        return self._gen()

    async def _gen(self) -> AsyncIterator[bytes]:
        src = self._source
        if src is None:
            src = b""
        if isinstance(src, bytes | bytearray | memoryview):
            mv = memoryview(src)
            chunks: AsyncIterable[bytes] = _iter_bytes(mv, self._chunk_size)
        else:
            chunks = src
        async for chunk in chunks:
            if not chunk:
                continue
            self.read += len(chunk)
            if self.read > self.size:
                raise ValueError(f"job input longer than its declared size of {self.size} bytes")
            yield bytes(chunk) if not isinstance(chunk, bytes) else chunk
        if self.read != self.size:
            raise ValueError(f"job input ended after {self.read} of {self.size} declared bytes")

    async def read_all(self, limit: int | None = None) -> bytes:
        """The whole input (refusing more than `limit` bytes, default the declared size)."""
        lim = self.size if limit is None else limit
        if self.size > lim:
            raise ValueError(f"job input of {self.size} bytes exceeds the limit of {lim}")
        parts = [c async for c in self]
        return b"".join(parts)


async def _iter_bytes(mv: memoryview, chunk_size: int) -> AsyncIterator[bytes]:
    for off in range(0, len(mv), chunk_size):
        yield bytes(mv[off:off + chunk_size])


@dataclass
class RunContext:
    """Everything a running job sees. Built by the executor (or by a test)."""

    job_id: str
    spec: dict[str, Any]
    input: InputReader
    device: Device | None = None
    cl: DeviceContext | None = None  # an OpenCL context in this process (library use, tests)
    runner: RunnerLease | None = None  # the node's way to run device code: a runner process (worker.runner)
    checkpoint: Callable[[], Awaitable[None]] = _no_checkpoint
    progress: ProgressFn = _no_progress
    # `async with ctx.idle_devices() as more:` lends the job the node's other OpenCL devices that are idle
    # (a free slot, nothing queued) until the block ends: [(Device, DeviceContext)], maybe empty. A kind that
    # can split its work (render.frame's tiles) uses them; nothing else is admitted there meanwhile.
    idle_devices: Callable[[], AbstractAsyncContextManager[list[tuple[Any, Any]]]] = _no_idle_devices
    cancel_scope: trio.CancelScope | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return self.input.size

    @property
    def context(self) -> Any:
        """The pyopencl Context (None on the CPU path)."""
        return self.cl.context if self.cl else None

    @property
    def queue(self) -> Any:
        """The pyopencl CommandQueue (None on the CPU path)."""
        return self.cl.queue if self.cl else None


class JobKind:
    """Base class of job kinds. Subclasses set `name` and override what they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    max_input_bytes: ClassVar[int] = 0  # 0: no input accepted
    max_spec_bytes: ClassVar[int] = 64 * 1024

    def validate(self, spec: dict[str, Any], input_size: int) -> None:
        """Raise SpecError unless `spec` (and an input of `input_size` bytes) is acceptable."""
        check_spec_dict(spec, self.max_spec_bytes, self.packed(spec))
        if input_size < 0:
            raise SpecError("input", "size must not be negative")
        if input_size > self.max_input_bytes:
            if self.max_input_bytes == 0:
                raise SpecError("input", f"kind {self.name!r} takes no input, got {input_size} bytes")
            raise SpecError("input", f"{input_size} bytes exceeds the {self.max_input_bytes}-byte limit of kind {self.name!r}")

    def packed(self, spec: Any) -> bytes | None:
        """The spec as msgpack when the kind keeps it anyway (None: `validate` packs it to measure it)."""
        return None

    def requirements(self, spec: dict[str, Any]) -> Requirements:
        return Requirements()

    def output_bytes(self, spec: dict[str, Any], input_size: int) -> int | None:
        """The most output bytes a job of this spec can produce, when the spec says (checked against the
        submitting token's output quota before the job runs); None: not declared, the quota alone bounds it."""
        return None

    def cost_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        raise NotImplementedError

    def chunk_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        """Longest expected time between two checkpoints; by default the whole run (no chunking)."""
        return self.cost_s(spec, input_size, device)

    async def run(self, ctx: RunContext) -> Result:
        raise NotImplementedError

    def reference(self, spec: dict[str, Any], input_bytes: bytes) -> Result:
        raise NotImplementedError


def check_spec_dict(spec: Any, max_bytes: int, packed: bytes | None = None) -> None:
    """A map with string keys, at most `max_bytes` as msgpack (`packed`: that msgpack, when the caller has it)."""
    if not isinstance(spec, dict):
        raise SpecError("", f"must be a map, not {type(spec).__name__}")
    for k in spec:
        if not isinstance(k, str):
            raise SpecError(repr(k), "spec keys must be strings")
    if packed is None:
        try:
            packed = msgpack.packb(spec, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as e:
            raise SpecError("", f"not msgpack-serialisable: {e}") from e
    if len(packed) > max_bytes:
        raise SpecError("", f"{len(packed)} bytes encoded exceeds the limit of {max_bytes}")


def field_number(spec: dict[str, Any], name: str, *, default: float | None = None, minimum: float | None = None,
                 maximum: float | None = None, integer: bool = False) -> float:
    """A numeric spec field, checked; raises SpecError naming it."""
    if name not in spec:
        if default is None:
            raise SpecError(name, "required")
        return default
    v = spec[name]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(name, f"must be a number, not {type(v).__name__}")
    if integer and not isinstance(v, int):
        raise SpecError(name, "must be an integer")
    if not math.isfinite(v):
        raise SpecError(name, "must be finite")
    if minimum is not None and v < minimum:
        raise SpecError(name, f"must be at least {minimum:g}, got {v:g}")
    if maximum is not None and v > maximum:
        raise SpecError(name, f"must be at most {maximum:g}, got {v:g}")
    return v


def reject_unknown_fields(spec: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(spec) - allowed)
    if extra:
        raise SpecError(extra[0], f"unknown field (allowed: {', '.join(sorted(allowed)) or 'none'})")


# --- registry -------------------------------------------------------------------------------------------


class KindRegistry:
    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}

    def register(self, kind: JobKind, *, replace: bool = False) -> JobKind:
        if not isinstance(kind, JobKind):
            raise TypeError(f"register() takes a JobKind instance, got {kind!r}")
        if not kind.name or not kind.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"job kind name {kind.name!r} must be non-empty, letters, digits, '-', '_', '.'")
        if kind.name in self._kinds and not replace and self._kinds[kind.name] is not kind:
            raise ValueError(f"job kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind
        return kind

    def unregister(self, name: str) -> None:
        self._kinds.pop(name, None)

    def get(self, name: str) -> JobKind:
        try:
            return self._kinds[name]
        except (KeyError, TypeError):
            raise UnknownKind(str(name), self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds


@dataclass(frozen=True)
class KindFamily:
    """A family of job kinds as a node offers it: the kinds, and the checks its coordinator runs on a remote
    worker's result of some of them (`verifier(job, result, output, read_input) -> str | None`, None =
    accept; `read_input()` reads a streamed input, None when the input was inline). The node's
    composition root registers every family the same way."""

    name: str
    kinds: tuple[JobKind, ...]
    verifiers: dict[str, Callable[..., str | None]] = field(default_factory=dict)

    def register(self, registry: KindRegistry, verifiers: dict[str, Callable[..., str | None]]) -> None:
        for kind in self.kinds:
            registry.register(kind, replace=True)
        verifiers.update(self.verifiers)


REGISTRY = KindRegistry()


def register(kind: JobKind, *, replace: bool = False) -> JobKind:
    return REGISTRY.register(kind, replace=replace)


def get(name: str) -> JobKind:
    return REGISTRY.get(name)


def names() -> list[str]:
    return REGISTRY.names()
