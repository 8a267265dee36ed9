"""Building `compute.opencl` specs from numpy arrays, and running them on a local device.

The SDK-facing half of compute jobs (no network here: the mesh client sends `job.spec` and `job.input`)::

    job = make_job(SAXPY_CL, "saxpy", args=[np.uint32(n), np.float32(2.0), x, InOut(y)], global_size=[n])
    result = run_local(job)          # or: over the mesh, kind "compute.opencl", spec=job.spec, input=job.input
    y2 = result["y"] if named, else result.arrays[0]

Arguments, in kernel order:
- a numpy array: an input buffer (`In(array)` to name it or force streaming);
- `InOut(array)`: uploaded and read back; `Out(count, dtype)` / `Out.like(array)`: zero-filled, read back;
- a numpy scalar (`np.float32(2.0)`, `np.uint32(n)`) or `Scalar(dtype, value)`: a by-value argument
  (plain Python numbers are refused: the kernel's type must be stated);
- `Local(nbytes)`: `__local` scratch memory per work-group.

Inputs ride inline in the spec up to `inline_limit` bytes in all; larger ones go in the job's streamed input
(`job.input`, the concatenation of the distinct blobs in order of first use) and are named by SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from worker.compute.runner import ComputeResult, ComputeRunner
from worker.compute.spec import (
    BUFFER_DTYPES,
    DEFAULT_TIME_LIMIT_S,
    MAX_INLINE_BYTES,
    SCALAR_DTYPES,
    ComputeSpec,
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
class Scalar:
    dtype: str
    value: int | float
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
            if shape is not None and int(np.prod(shape)) == o.array.size:
                o.array = o.array.reshape(shape)
        return res


def _dtype_name(dt: Any) -> str:
    d = np.dtype(dt)
    if d.name not in BUFFER_DTYPES:
        raise TypeError(f"dtype {d} is not supported for buffers (one of {', '.join(BUFFER_DTYPES)})")
    return d.name


def _scalar(v: Any, name: str = "") -> dict[str, Any]:
    if isinstance(v, Scalar):
        d = {"kind": "scalar", "dtype": v.dtype, "value": v.value}
        name = v.name
    elif isinstance(v, np.generic) and not isinstance(v, np.bool_):
        dt = v.dtype.name
        if dt not in SCALAR_DTYPES:
            raise TypeError(f"scalar dtype {dt} is not supported (one of {', '.join(SCALAR_DTYPES)})")
        d = {"kind": "scalar", "dtype": dt, "value": v.item()}
    else:
        raise TypeError(f"a scalar argument needs its OpenCL type: use np.int32(...), np.float32(...) or "
                        f"Scalar(dtype, value), not a plain {type(v).__name__}")
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
    out_args: list[dict[str, Any]] = []
    blobs: dict[str, bytes] = {}
    shapes: dict[int, tuple[int, ...]] = {}
    inline_left = inline_limit
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray) or isinstance(a, In | InOut):
            kind = "inout" if isinstance(a, InOut) else "in"
            arr = a if isinstance(a, np.ndarray) else np.asarray(a.array)
            name = "" if isinstance(a, np.ndarray) else a.name
            stream = None if isinstance(a, np.ndarray) else a.stream
            if arr.size == 0:
                raise ValueError(f"args[{i}]: an empty array cannot be a buffer")
            dt = _dtype_name(arr.dtype)
            data = np.ascontiguousarray(arr).tobytes()
            d: dict[str, Any] = {"kind": kind, "dtype": dt}
            if stream is False or (stream is None and len(data) <= inline_left):
                d["data"] = data
                inline_left -= len(data)
            else:
                sha = hashlib.sha256(data).hexdigest()
                blobs.setdefault(sha, data)
                d["sha256"] = sha
                d["nbytes"] = len(data)
            if kind == "inout":
                shapes[i] = arr.shape
        elif isinstance(a, Out):
            d = {"kind": "out", "dtype": _dtype_name(a.dtype), "count": a.count}
            name = a.name
            if isinstance(a.shape, tuple):
                shapes[i] = a.shape
        elif isinstance(a, Local):
            d = {"kind": "local", "nbytes": int(a.nbytes)}
            name = a.name
        else:
            d = _scalar(a)
            name = a.name if isinstance(a, Scalar) else ""
        if name:
            d["name"] = name
        out_args.append(d)
    spec["args"] = out_args
    if global_size is not None:
        spec["global_size"] = _dims(global_size)
    if local_size is not None:
        spec["local_size"] = _dims(local_size)
    if launches is not None:
        spec["launches"] = [_launch(ln) for ln in launches]
    if repeat != 1:
        spec["repeat"] = int(repeat)
    spec["time_limit_s"] = float(time_limit_s)
    if memory_limit_bytes is not None:
        spec["memory_limit_bytes"] = int(memory_limit_bytes)
    if device_kind is not None:
        spec["device_kind"] = device_kind
    if flops_per_item is not None:
        spec["flops_per_item"] = float(flops_per_item)
    job = ComputeJob(spec, b"".join(blobs.values()), blobs, shapes)
    parsed = parse_spec(spec)  # fail here, on the client, with the same message the worker would give
    assert [s for s, _ in parsed.stream_layout()] == list(blobs)
    return job


def _dims(v: Any) -> list[int]:
    if isinstance(v, int | np.integer):
        return [int(v)]
    return [int(g) for g in v]


def _launch(ln: Mapping[str, Any]) -> dict[str, Any]:
    d = dict(ln)
    if "args" in d:
        d["args"] = [a if isinstance(a, int) and not isinstance(a, bool) else
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
