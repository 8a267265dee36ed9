"""Building `compute.opencl` specs from numpy arrays, and running them on a local device.

The SDK-facing half of compute jobs (no network here: the mesh client sends `job.spec` and `job.input`)::

    job = make_job(SAXPY_CL, "saxpy", args=[np.uint32(n), np.float32(2.0), x, InOut(y)], global_size=[n])
    result = run_local(job)          # or: over the mesh, kind "compute.opencl", spec=job.spec, input=job.input
    y2 = result["y"] if named, else result.arrays[0]

Arguments, in kernel order:
- a numpy array: an input buffer (`In(array)` to name it or force streaming);
- `InOut(array)`: uploaded and read back; `Out(count, dtype)` / `Out.like(array)`: zero-filled, read back;
  `Scratch(count, dtype)`: zero-filled, stays on the device;
- a numpy scalar (`np.float32(2.0)`, `np.uint16(n)`, `np.float16(x)`, `np.complex64(z)`), a pyopencl vector
  (`pyopencl.cltypes.make_float4(...)`), a 0-d structured array / `np.void` (a struct by value), or
  `Scalar(dtype, value)`: a by-value argument (plain Python numbers are refused: the kernel's type must be
  stated);
- `Local(nbytes)`: `__local` scratch memory per work-group.

Element types: every OpenCL C scalar, `pyopencl.cltypes` vectors, complex, and numpy structured dtypes laid
out as OpenCL lays out the struct (`worker.compute.cltypes`).

A sequence of launches over named buffers: `Pipeline` (below), e.g. a transpose into a device-only scratch
buffer, then a GEMM reading it.

Inputs ride inline in the spec up to `inline_limit` bytes in all; larger ones go in the job's streamed input
(`job.input`, the concatenation of the distinct blobs in order of first use) and are named by SHA-256.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from worker.compute.cltypes import from_numpy, from_numpy_value, parse_dtype
from worker.compute.runner import ComputeResult, ComputeRunner
from worker.compute.spec import (
    DEFAULT_TIME_LIMIT_S,
    MAX_INLINE_BYTES,
    ComputeSpec,
    SpecError,
    parse_spec,
    source_sha256,
)

KIND = "compute.opencl"


@dataclass(frozen=True)
class In:
    array: Any
    name: str = ""
    stream: bool | None = None  # None: inline if it fits


@dataclass(frozen=True)
class InOut:
    array: Any
    name: str = ""
    stream: bool | None = None


@dataclass(frozen=True)
class Out:
    """An output buffer: `shape` is an element count or a shape (the result is reshaped to it)."""

    shape: int | tuple[int, ...]
    dtype: Any = "float32"
    name: str = ""

    @property
    def count(self) -> int:
        return int(np.prod(self.shape)) if isinstance(self.shape, tuple) else int(self.shape)

    @classmethod
    def like(cls, array: Any, name: str = "") -> Out:
        a = np.asarray(array)
        return cls(tuple(a.shape), a.dtype, name)


@dataclass(frozen=True)
class Scratch:
    """A device-only buffer (zero-filled, never uploaded or read back): intermediate results of a pipeline."""

    shape: int | tuple[int, ...]
    dtype: Any = "float32"
    name: str = ""

    @property
    def count(self) -> int:
        return int(np.prod(self.shape)) if isinstance(self.shape, tuple) else int(self.shape)


@dataclass(frozen=True)
class Scalar:
    """A by-value argument: `dtype` a wire name ("uint16", "float32x4") or a numpy dtype; `value` a number, a
    list (vectors), or bytes."""

    dtype: Any
    value: Any
    name: str = ""


@dataclass(frozen=True)
class Local:
    nbytes: int
    name: str = ""


@dataclass
class ComputeJob:
    """What goes to the mesh: `spec` (msgpack-able) and `input` (the streamed blobs, b"" if none)."""

    spec: dict[str, Any]
    input: bytes = b""
    blobs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes of the streamed inputs
    shapes: dict[int, tuple[int, ...]] = field(default_factory=dict)  # arg index -> shape of outputs

    kind: str = KIND

    @property
    def input_sha256(self) -> str:
        return hashlib.sha256(self.input).hexdigest()

    def parsed(self) -> ComputeSpec:
        return parse_spec(self.spec)

    def decode(self, body: Mapping[str, Any], output: bytes | None) -> ComputeResult:
        """A mesh result (body, output bytes) as a ComputeResult, outputs reshaped like their inputs."""
        res = ComputeResult.from_wire(body, output)
        self.reshape(res)
        return res

    def reshape(self, res: ComputeResult) -> ComputeResult:
        for o in res.outputs:
            shape = self.shapes.get(o.index)
            if shape is not None and math.prod(shape) == o.array.size:
                o.array = o.array.reshape(shape)
        return res


def wire_dtype(dt: Any, where: str = "dtype") -> Any:
    """The spec's dtype for a numpy dtype, a wire name or a struct map (SpecError, a ValueError, if none)."""
    if isinstance(dt, str) and not dt.startswith(("<", ">", "|", "=")):
        try:
            return parse_dtype(dt, where).wire()
        except SpecError:
            pass
    if isinstance(dt, dict):
        return parse_dtype(dt, where).wire()
    return from_numpy(dt, where).wire()


def is_by_value(v: Any) -> bool:
    """A numpy scalar, np.void or 0-d array: passed by value (pyopencl's rule for kernel arguments)."""
    return isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0) or isinstance(v, Scalar)


def _scalar(v: Any, name: str = "", where: str = "argument") -> dict[str, Any]:
    if isinstance(v, Scalar):
        t = parse_dtype(wire_dtype(v.dtype, where), where)
        value = v.value
        if isinstance(value, np.ndarray | np.generic):
            value = np.asarray(value).tobytes()
        d = {"kind": "scalar", "dtype": t.wire(), "value": value}
        name = v.name
    elif is_by_value(v) and not isinstance(v, np.bool_):
        t, raw = from_numpy_value(v, where)
        d = {"kind": "scalar", "dtype": t.wire(),
             "value": np.asarray(v).item() if t.kind == "scalar" else raw}
    else:
        raise TypeError(f"{where}: a by-value argument needs its OpenCL type: use np.int32(...), np.float32(...), "
                        f"pyopencl.cltypes.make_float4(...) or Scalar(dtype, value), not a plain "
                        f"{type(v).__name__}")
    if name:
        d["name"] = name
    return d


def _is_cl_local(a: Any) -> bool:
    """pyopencl's `cl.LocalMemory(nbytes)`, taken as `Local(nbytes)`."""
    return type(a).__name__ == "LocalMemory" and type(a).__module__.startswith("pyopencl")


class _ArgBuilder:
    """Turns SDK arguments into spec args: inline data up to the limit, the rest as streamed blobs."""

    def __init__(self, inline_limit: int) -> None:
        self.inline_left = inline_limit
        self.blobs: dict[str, bytes] = {}
        self.shapes: dict[int, tuple[int, ...]] = {}

    def add(self, i: int, a: Any, name: str = "") -> dict[str, Any]:
        where = f"args[{i}]"
        if is_by_value(a):
            return _scalar(a, name, where)
        if isinstance(a, np.ndarray) or isinstance(a, In | InOut):
            kind = "inout" if isinstance(a, InOut) else "in"
            arr = a if isinstance(a, np.ndarray) else np.asarray(a.array)
            name = name or ("" if isinstance(a, np.ndarray) else a.name)
            stream = None if isinstance(a, np.ndarray) else a.stream
            if arr.size == 0:
                raise ValueError(f"{where}: an empty array cannot be a buffer")
            d: dict[str, Any] = {"kind": kind, "dtype": wire_dtype(arr.dtype, where)}
            data = np.ascontiguousarray(arr).tobytes()
            if stream is False or (stream is None and len(data) <= self.inline_left):
                d["data"] = data
                self.inline_left -= len(data)
            else:
                sha = hashlib.sha256(data).hexdigest()
                self.blobs.setdefault(sha, data)
                d["sha256"] = sha
                d["nbytes"] = len(data)
            if kind == "inout":
                self.shapes[i] = arr.shape
        elif isinstance(a, Out | Scratch):
            d = {"kind": "out" if isinstance(a, Out) else "scratch", "dtype": wire_dtype(a.dtype, where),
                 "count": a.count}
            name = name or a.name
            if isinstance(a, Out) and isinstance(a.shape, tuple):
                self.shapes[i] = a.shape
        elif isinstance(a, Local) or _is_cl_local(a):
            d = {"kind": "local", "nbytes": int(a.nbytes if isinstance(a, Local) else a.size)}
            name = name or getattr(a, "name", "")
        elif isinstance(a, int | float | complex | bool):
            return _scalar(a, name, where)  # refused with what to write instead
        else:
            raise TypeError(f"{where}: cannot pass a {type(a).__name__} to a kernel (a numpy array, In/InOut/Out/"
                            f"Scratch/Local, or a numpy scalar)")
        if name:
            d["name"] = name
        return d


def make_job(source: str, kernel: str, args: Sequence[Any], global_size: int | Sequence[int] | None = None,
             local_size: int | Sequence[int] | None = None, *, build_options: str | Sequence[str] = (),
             launches: Sequence[Mapping[str, Any]] | None = None, repeat: int = 1,
             time_limit_s: float = DEFAULT_TIME_LIMIT_S, memory_limit_bytes: int | None = None,
             device_kind: str | None = None, flops_per_item: float | None = None,
             inline_limit: int = MAX_INLINE_BYTES, send_source: bool = True) -> ComputeJob:
    """A compute job from numpy arguments (see the module doc). The spec is checked with `parse_spec`.

    `send_source=False` sends only the source's SHA-256 (for a worker known to have cached it).
    """
    spec: dict[str, Any] = {"v": 1, "kernel": kernel}
    if send_source:
        spec["source"] = source
    else:
        spec["source_sha256"] = source_sha256(source)
    if build_options:
        spec["build_options"] = [build_options] if isinstance(build_options, str) else list(build_options)
    b = _ArgBuilder(inline_limit)
    spec["args"] = [b.add(i, a) for i, a in enumerate(args)]
    if global_size is not None:
        spec["global_size"] = _dims(global_size)
    if local_size is not None:
        spec["local_size"] = _dims(local_size)
    if launches is not None:
        spec["launches"] = [_launch(ln) for ln in launches]
    return _finish(spec, b, repeat=repeat, time_limit_s=time_limit_s, memory_limit_bytes=memory_limit_bytes,
                   device_kind=device_kind, flops_per_item=flops_per_item)


def _finish(spec: dict[str, Any], b: _ArgBuilder, *, repeat: int, time_limit_s: float,
            memory_limit_bytes: int | None, device_kind: str | None, flops_per_item: float | None) -> ComputeJob:
    if repeat != 1:
        spec["repeat"] = int(repeat)
    spec["time_limit_s"] = float(time_limit_s)
    if memory_limit_bytes is not None:
        spec["memory_limit_bytes"] = int(memory_limit_bytes)
    if device_kind is not None:
        spec["device_kind"] = device_kind
    if flops_per_item is not None:
        spec["flops_per_item"] = float(flops_per_item)
    job = ComputeJob(spec, b"".join(b.blobs.values()), b.blobs, b.shapes)
    parsed = parse_spec(spec)  # fail here, on the client, with the same message the worker would give
    assert [s for s, _ in parsed.stream_layout()] == list(b.blobs)
    return job


@dataclass(frozen=True)
class BufferRef:
    """A pipeline buffer, as `Pipeline.input/output/inout/scratch` return it (pass it to `launch`)."""

    name: str
    index: int


class Pipeline:
    """A job that is a sequence of launches over named buffers::

        p = Pipeline(SOURCE, build_options=["-DTS=16"])
        a, b = p.input("A", a_np), p.input("B", b_np)
        bt = p.scratch("BT", (k, n), np.float32)            # device only: never uploaded, never read back
        c = p.output("C", (m, n), np.float32)
        p.launch("transpose", (k, n), (16, 16), np.int32(k), np.int32(n), b, bt)
        p.launch("gemm", (m, n), (16, 16), np.int32(m), np.int32(n), np.int32(k), a, bt, c)
        job = p.job()                                        # run_local(job), or mesh.run(job)

    Roles: `input` (uploaded), `output` (zero-filled, read back), `inout` (uploaded, read back), `scratch`
    (zero-filled, device only). A launch's arguments, in kernel parameter order, are buffers (the refs, or their
    names as strings), numpy scalars / vectors / structs by value, and `Local(nbytes)`. Buffer flags and the
    read-only checks follow how the whole sequence uses each buffer (see `worker.compute.check`).
    """

    def __init__(self, source: str, *, build_options: str | Sequence[str] = (),
                 inline_limit: int = MAX_INLINE_BYTES) -> None:
        self.source = source
        self.build_options = [build_options] if isinstance(build_options, str) else list(build_options)
        self._b = _ArgBuilder(inline_limit)
        self._args: list[dict[str, Any]] = []
        self._names: dict[str, int] = {}
        self._launches: list[dict[str, Any]] = []

    def _buffer(self, name: str, a: Any) -> BufferRef:
        if not name or name in self._names:
            raise ValueError(f"buffer name {name!r} must be non-empty and unique")
        i = len(self._args)
        self._args.append(self._b.add(i, a, name))
        self._names[name] = i
        return BufferRef(name, i)

    def input(self, name: str, array: Any, *, stream: bool | None = None) -> BufferRef:
        return self._buffer(name, In(np.asarray(array), name, stream))

    def inout(self, name: str, array: Any, *, stream: bool | None = None) -> BufferRef:
        return self._buffer(name, InOut(np.asarray(array), name, stream))

    def output(self, name: str, shape: int | tuple[int, ...], dtype: Any = "float32") -> BufferRef:
        return self._buffer(name, Out(shape, dtype, name))

    def scratch(self, name: str, shape: int | tuple[int, ...], dtype: Any = "float32") -> BufferRef:
        return self._buffer(name, Scratch(shape, dtype, name))

    def launch(self, kernel: str, global_size: int | Sequence[int], local_size: int | Sequence[int] | None,
               *args: Any, repeat: int = 1) -> Pipeline:
        """Append a launch (pyopencl's `knl(queue, global_size, local_size, *args)` without the queue)."""
        refs: list[Any] = []
        for j, a in enumerate(args):
            if isinstance(a, BufferRef):
                refs.append(a.name)
            elif isinstance(a, str):
                if a not in self._names:
                    raise ValueError(f"launch {len(self._launches)} arg {j}: no buffer named {a!r}")
                refs.append(a)
            elif isinstance(a, Local) or _is_cl_local(a):
                refs.append({"kind": "local", "nbytes": int(a.nbytes if isinstance(a, Local) else a.size)})
            elif isinstance(a, np.ndarray) and a.ndim > 0:
                raise TypeError(f"launch {len(self._launches)} arg {j}: declare arrays as pipeline buffers "
                                f"(p.input / p.output / p.inout / p.scratch) and pass the returned ref")
            else:
                refs.append(_scalar(a, where=f"launch {len(self._launches)} arg {j}"))
        ln: dict[str, Any] = {"kernel": kernel, "global_size": _dims(global_size), "args": refs}
        if local_size is not None:
            ln["local_size"] = _dims(local_size)
        if repeat != 1:
            ln["repeat"] = int(repeat)
        self._launches.append(ln)
        return self

    def job(self, *, repeat: int = 1, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
            memory_limit_bytes: int | None = None, device_kind: str | None = None,
            flops_per_item: float | None = None, send_source: bool = True) -> ComputeJob:
        if not self._launches:
            raise ValueError("a pipeline needs at least one launch")
        spec: dict[str, Any] = {"v": 1, "kernel": self._launches[0]["kernel"]}
        if send_source:
            spec["source"] = self.source
        else:
            spec["source_sha256"] = source_sha256(self.source)
        if self.build_options:
            spec["build_options"] = list(self.build_options)
        spec["args"] = list(self._args)
        spec["launches"] = [dict(ln) for ln in self._launches]
        return _finish(spec, self._b, repeat=repeat, time_limit_s=time_limit_s,
                       memory_limit_bytes=memory_limit_bytes, device_kind=device_kind, flops_per_item=flops_per_item)


def _dims(v: Any) -> list[int]:
    if isinstance(v, int | np.integer):
        return [int(v)]
    return [int(g) for g in v]


def _launch(ln: Mapping[str, Any]) -> dict[str, Any]:
    d = dict(ln)
    if "args" in d:
        d["args"] = [a if (isinstance(a, int) and not isinstance(a, bool)) or isinstance(a, str) else
                     {"kind": "local", "nbytes": a.nbytes, **({"name": a.name} if a.name else {})}
                     if isinstance(a, Local) else a if isinstance(a, Mapping) else _scalar(a)
                     for a in d["args"]]
    for k in ("global_size", "local_size"):
        if d.get(k) is not None:
            d[k] = _dims(d[k])
    return d


# --- running on this machine ----------------------------------------------------------------------------

_local_runner: ComputeRunner | None = None


def local_runner() -> ComputeRunner:
    """A runner on the first OpenCL device of this machine (created once)."""
    # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
    import pyopencl as cl
    global _local_runner
    if _local_runner is None:

        for p in cl.get_platforms():
            devs = p.get_devices()
            if devs:
                ctx = cl.Context([devs[0]])
                _local_runner = ComputeRunner(ctx, devs[0], device_id="local")
                break
        else:
            raise RuntimeError("no OpenCL device on this machine")
    return _local_runner


async def arun_local(job: ComputeJob, runner: ComputeRunner | None = None) -> ComputeResult:
    r = runner or local_runner()
    res = await r.run(job.spec, job.blobs)
    return job.reshape(res)


def run_local(job: ComputeJob, runner: ComputeRunner | None = None) -> ComputeResult:
    """Run a job on this machine's OpenCL device (blocking; starts its own trio run)."""

    return trio.run(arun_local, job, runner)
