"""The `compute.opencl` job spec: typed, validated before anything is transferred.

A spec is a msgpack-able dict (wire version 1)::

    {
      "v": 1,
      "source": "<OpenCL C>",             # or "source_sha256": "<hex>" of a source the worker has cached
      "kernel": "saxpy",                  # the kernel of the single launch (and the default for launches)
      "build_options": ["-DTILE=16", "-cl-mad-enable"],   # allow-listed; a string is split on spaces
      "args": [                           # the kernel's arguments in order, or a pipeline's buffers
        {"kind": "scalar", "dtype": "float32", "value": 2.0},
        {"kind": "scalar", "dtype": "float32x4", "value": [1, 2, 3, 4]},       # vectors: a list (or bytes)
        {"kind": "in", "dtype": "float32", "data": b"..."},                     # inline bytes
        {"kind": "in", "dtype": "float32", "sha256": "<hex>", "nbytes": 4096},  # streamed blob
        {"kind": "inout", "dtype": "float32", "data": b"..."},                  # uploaded and read back
        {"kind": "out", "dtype": "float32", "count": 1024},                     # zero-filled, read back
        {"kind": "scratch", "dtype": "float32", "count": 1024, "name": "tmp"},  # zero-filled, device only
        {"kind": "local", "nbytes": 1024},                                      # __local scratch per group
      ],
      "global_size": [1024], "local_size": [64],  # 1..3 dims; local_size optional (runtime picks)
      "launches": [                       # optional: a sequence of launches over the same buffers
        {"kernel": "step", "global_size": [n], "args": ["tmp", 1, {"kind": "scalar", ...}], "repeat": 10},
      ],
      "repeat": 1,                        # the whole launch sequence, repeated
      "time_limit_s": 10.0, "memory_limit_bytes": 1 << 28,
      "device_kind": "gpu",               # optional placement constraint
      "flops_per_item": 2.0,              # optional cost hint: work per work item per launch
    }

dtypes: `worker.compute.cltypes` (every OpenCL C scalar, vectors `float32x4`, `complex64`, structs as
`{"struct": [[name, dtype, offset], ...], "itemsize": n}` with OpenCL's alignment checked).

Buffer roles: `in` (uploaded, never read back), `out` (zero-filled, read back), `inout` (uploaded, read back),
`scratch` (zero-filled, lives on the device only: never uploaded, never read back). A launch's `args`, when
given, lists for each kernel parameter an integer (the index of an entry of the spec's `args`), a string (the
`name` of one) or an inline scalar/local arg; when omitted the launch uses the spec's `args` in order.

Streamed inputs: the job's input stream is the concatenation, in order of first appearance in `args`, of the
distinct blobs the args name by `sha256` (`ComputeSpec.stream_layout()`); inline `data` rides in the spec.

`parse_spec(d)` checks the structure (and what a scan of the source tells: images and samplers are refused,
`reqd_work_group_size` against `local_size`) and returns a frozen `ComputeSpec`; `worker.compute.limits.validate`
also checks it against a device's limits and the job's own. Both raise `SpecError` (a ValueError) naming the
field, before any transfer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.compute.cltypes import CType, decode_value, encode_value, parse_dtype, type_named
from worker.compute.errors import SpecError
from worker.compute.source import (
    ALLOWED_CL_STD,
    ALLOWED_FLAGS,
    IDENT,
    MAX_SOURCE_BYTES,
    check_against_source,
    check_source,
    kernel_names_in,
    kernel_signatures,
    parse_build_options,
    source_sha256,
    source_uses_64bit,
    source_words,
    strip_comments,
)

SPEC_VERSION = 1

# --- limits (worker-side caps; a spec may ask for less, never more) -------------------------------------
MAX_ARGS = 64
MAX_LAUNCH_ENTRIES = 256  # entries in "launches"
MAX_TOTAL_LAUNCHES = 100_000  # after expanding repeats
MAX_INLINE_BYTES = 1 << 20  # all inline `data` of one spec together (larger inputs stream)
MAX_BUFFER_BYTES = 1 << 40
MAX_WORK_ITEMS = 1 << 40  # per launch
MAX_TIME_LIMIT_S = 3600.0
DEFAULT_TIME_LIMIT_S = 60.0
MAX_NAME_LEN = 64

BUFFER_KINDS = ("in", "out", "inout", "scratch")
ARG_KINDS = (*BUFFER_KINDS, "scalar", "local")
DEVICE_KINDS = ("gpu", "cpu", "accelerator")
NON_UNIFORM_HELP = ("round the global size up to a multiple of the local size and guard the extra work items in "
                    "the kernel, or run on a device with non-uniform work-groups (OpenCL >= 2.0)")

SPEC_FIELDS = {
    "v", "source", "source_sha256", "kernel", "build_options", "args", "global_size", "local_size", "launches",
    "repeat", "time_limit_s", "memory_limit_bytes", "device_kind", "flops_per_item",
}
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")

__all__ = [
    "ALLOWED_CL_STD", "ALLOWED_FLAGS", "MAX_SOURCE_BYTES", "BufferArg", "ComputeSpec", "Launch",
    "LocalArg", "ScalarArg", "SourceNotCached", "SpecError", "check_source", "kernel_names_in", "parse_build_options",
    "parse_spec", "source_sha256", "strip_comments",
]


class SourceNotCached(SpecError):
    """`source_sha256` names a source this worker does not have: send the full source."""

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256
        super().__init__("source_sha256", f"source {sha256[:16]}... is not cached on this worker; send `source`")


# --- the typed spec -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BufferArg:
    """A global-memory buffer; `kind` is its role (in, out, inout, scratch: see the module doc)."""

    kind: str
    type: CType
    count: int  # elements
    data: bytes | None = field(default=None, repr=False)  # inline content (in / inout)
    sha256: str | None = None  # content address of a streamed blob (in / inout)
    name: str = ""

    @property
    def dtype(self) -> Any:
        """The wire dtype (a name, or a struct map)."""
        return self.type.wire()

    @property
    def itemsize(self) -> int:
        return self.type.itemsize

    @property
    def nbytes(self) -> int:
        return self.count * self.itemsize

    @property
    def uploads(self) -> bool:
        return self.kind in ("in", "inout")

    @property
    def returned(self) -> bool:
        return self.kind in ("out", "inout")


@dataclass(frozen=True)
class ScalarArg:
    """A by-value argument: `raw` holds its bytes (scalars, vectors, complex numbers and structs alike)."""

    type: CType
    raw: bytes
    name: str = ""

    @property
    def dtype(self) -> Any:
        return self.type.wire()

    @property
    def value(self) -> Any:
        return decode_value(self.type, self.raw)

    def host_value(self) -> np.ndarray:
        """What `Kernel.set_arg` takes: the bytes, as an array of exactly the parameter's size."""
        return np.frombuffer(self.raw, dtype=np.uint8)


@dataclass(frozen=True)
class LocalArg:
    """`__local` scratch memory of `nbytes` per work-group (CUDA's dynamic shared memory)."""

    nbytes: int
    name: str = ""


Arg = BufferArg | ScalarArg | LocalArg


@dataclass(frozen=True)
class Launch:
    """One kernel launch; `args` holds, per kernel parameter, an index into the spec's args or an inline arg."""

    kernel: str
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None
    args: tuple[int | ScalarArg | LocalArg, ...]
    repeat: int = 1

    @property
    def work_items(self) -> int:
        return math.prod(self.global_size)

    @property
    def uniform(self) -> bool:
        """Every work-group full (the local size divides the global size), as OpenCL < 2.0 requires."""
        return self.local_size is None or all(g % x == 0 for g, x in zip(self.global_size, self.local_size,
                                                                          strict=True))


@dataclass(frozen=True)
class ComputeRequirements:
    """What the program needs of a device (derived from the source and the args)."""

    fp64: bool = False
    int64: bool = False
    min_memory_bytes: int = 0
    device_kind: str | None = None
    fp16: bool = False  # a `half` by value (cl_khr_fp16)
    non_uniform: bool = False  # a launch with a partial work-group


@dataclass(frozen=True)
class ComputeSpec:
    source: str | None
    source_sha256: str
    kernel: str
    build_options: tuple[str, ...]
    args: tuple[Arg, ...]
    launches: tuple[Launch, ...]
    repeat: int = 1
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    memory_limit_bytes: int | None = None
    device_kind: str | None = None
    flops_per_item: float | None = None

    # derived figures
    @property
    def buffers(self) -> list[tuple[int, BufferArg]]:
        return [(i, a) for i, a in enumerate(self.args) if isinstance(a, BufferArg)]

    @property
    def buffer_bytes(self) -> int:
        """Device memory the job's buffers need (its minimum memory)."""
        return sum(a.nbytes for _, a in self.buffers)

    @property
    def bytes_in(self) -> int:
        return sum(a.nbytes for _, a in self.buffers if a.uploads)

    @property
    def bytes_out(self) -> int:
        return sum(a.nbytes for _, a in self.buffers if a.returned)

    @property
    def total_launches(self) -> int:
        return self.repeat * sum(ln.repeat for ln in self.launches)

    @property
    def work_items(self) -> int:
        """Work items over all launches (repeats included)."""
        return self.repeat * sum(ln.work_items * ln.repeat for ln in self.launches)

    def stream_layout(self) -> list[tuple[str, int]]:
        """[(sha256, nbytes)] of the streamed blobs, in the order the job's input stream carries them."""
        seen: dict[str, int] = {}
        for _, a in self.buffers:
            if a.sha256 is not None and a.sha256 not in seen:
                seen[a.sha256] = a.nbytes
        return list(seen.items())

    @property
    def input_size(self) -> int:
        """Bytes of the job's streamed input."""
        return sum(n for _, n in self.stream_layout())

    @property
    def single_launch(self) -> bool:
        """The plain form: one launch of `kernel` over `args` in order (no `launches` list)."""
        ln = self.launches[0]
        return (len(self.launches) == 1 and ln.kernel == self.kernel and ln.repeat == 1
                and ln.args == tuple(range(len(self.args))))

    def kernels(self) -> list[str]:
        """Distinct kernel names, in order of first launch."""
        return list(dict.fromkeys(ln.kernel for ln in self.launches))

    def launch_where(self, li: int) -> str:
        """The spec field of launch `li` (for messages)."""
        return "" if self.single_launch else f"launches[{li}]"

    def requirements(self) -> ComputeRequirements:
        src_fp64, src_int64 = source_uses_64bit(self.source) if self.source is not None else (False, False)
        by_value = [a.type for a in self._all_args() if isinstance(a, ScalarArg)]
        fp64 = src_fp64 or any(t.uses("float64") for t in by_value)
        int64 = src_int64 or any(t.uses("int64") or t.uses("uint64") for t in by_value)
        return ComputeRequirements(fp64=fp64, int64=int64, min_memory_bytes=self.buffer_bytes,
                                   device_kind=self.device_kind, fp16=any(t.uses("float16") for t in by_value),
                                   non_uniform=not all(ln.uniform for ln in self.launches))

    def _all_args(self) -> Iterable[Arg]:
        yield from self.args
        for ln in self.launches:
            for a in ln.args:
                if not isinstance(a, int):
                    yield a

    def to_dict(self) -> dict[str, Any]:
        """The wire form (what `parse_spec` reads back to an equal spec)."""
        d: dict[str, Any] = {"v": SPEC_VERSION, "kernel": self.kernel}
        if self.source is not None:
            d["source"] = self.source
        else:
            d["source_sha256"] = self.source_sha256
        if self.build_options:
            d["build_options"] = list(self.build_options)
        d["args"] = [_arg_to_dict(a) for a in self.args]
        if self.single_launch:
            ln = self.launches[0]
            d["global_size"] = list(ln.global_size)
            if ln.local_size is not None:
                d["local_size"] = list(ln.local_size)
        else:
            d["launches"] = [
                {"kernel": ln.kernel, "global_size": list(ln.global_size),
                 **({"local_size": list(ln.local_size)} if ln.local_size is not None else {}),
                 "args": [a if isinstance(a, int) else _arg_to_dict(a) for a in ln.args],
                 **({"repeat": ln.repeat} if ln.repeat != 1 else {})}
                for ln in self.launches
            ]
        if self.repeat != 1:
            d["repeat"] = self.repeat
        d["time_limit_s"] = self.time_limit_s
        if self.memory_limit_bytes is not None:
            d["memory_limit_bytes"] = self.memory_limit_bytes
        if self.device_kind is not None:
            d["device_kind"] = self.device_kind
        if self.flops_per_item is not None:
            d["flops_per_item"] = self.flops_per_item
        return d


def _arg_to_dict(a: Arg) -> dict[str, Any]:
    if isinstance(a, BufferArg):
        d: dict[str, Any] = {"kind": a.kind, "dtype": a.dtype}
        if a.data is not None:
            d["data"] = a.data
        elif a.sha256 is not None:
            d["sha256"] = a.sha256
            d["nbytes"] = a.nbytes
        else:
            d["count"] = a.count
    elif isinstance(a, ScalarArg):
        d = {"kind": "scalar", "dtype": a.dtype, "value": a.value if a.type.kind != "struct" else a.raw}
    else:
        d = {"kind": "local", "nbytes": a.nbytes}
    if a.name:
        d["name"] = a.name
    return d


# --- parsing --------------------------------------------------------------------------------------------


def _int(v: Any, where: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise SpecError(where, f"must be an integer, not {type(v).__name__}")
    v = int(v)
    if v < minimum:
        raise SpecError(where, f"must be at least {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise SpecError(where, f"must be at most {maximum}, got {v}")
    return v


def _name(d: Mapping[str, Any], where: str) -> str:
    nm = d.get("name", "")
    if not isinstance(nm, str) or len(nm) > MAX_NAME_LEN:
        raise SpecError(f"{where}.name", f"must be a string of at most {MAX_NAME_LEN} characters")
    return nm


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for k in d:
        if k not in allowed:
            raise SpecError(f"{where}.{k}" if where else str(k),
                            f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _parse_arg(d: Any, where: str, *, allow_buffers: bool = True) -> Arg:
    if not isinstance(d, Mapping):
        raise SpecError(where, f"must be a map with a 'kind' ({', '.join(ARG_KINDS)}), not {type(d).__name__}")
    kind = d.get("kind")
    if kind not in ARG_KINDS:
        raise SpecError(f"{where}.kind", f"must be one of {', '.join(ARG_KINDS)}, not {kind!r}")
    name = _name(d, where)
    if kind == "scalar":
        _check_keys(d, {"kind", "dtype", "value", "name"}, where)
        t = parse_dtype(d.get("dtype"), f"{where}.dtype")
        if "value" not in d:
            raise SpecError(f"{where}.value", "required")
        return ScalarArg(t, encode_value(t, d["value"], f"{where}.value"), name)
    if kind == "local":
        _check_keys(d, {"kind", "nbytes", "name"}, where)
        return LocalArg(_int(d.get("nbytes"), f"{where}.nbytes", minimum=1, maximum=1 << 30), name)
    if not allow_buffers:
        raise SpecError(where, "a launch may only add scalar or local args inline; refer to buffers by their index "
                               "or name in the spec's args")
    raw_dt = d.get("dtype", "uint8" if kind in ("in", "inout") else None)
    if raw_dt is None:
        raise SpecError(f"{where}.dtype", f"required for an {kind} buffer")
    t = parse_dtype(raw_dt, f"{where}.dtype")
    itemsize = t.itemsize
    if kind in ("out", "scratch"):
        _check_keys(d, {"kind", "dtype", "count", "nbytes", "name"}, where)
        return BufferArg(kind, t, _count(d, where, itemsize), name=name)
    _check_keys(d, {"kind", "dtype", "data", "sha256", "count", "nbytes", "name"}, where)
    if ("data" in d) == ("sha256" in d):
        raise SpecError(where, f"an {kind} buffer needs exactly one of 'data' (inline bytes) or 'sha256' "
                               "(a streamed blob)")
    if "data" in d:
        data = d["data"]
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SpecError(f"{where}.data", f"must be bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) == 0:
            raise SpecError(f"{where}.data", "is empty (a buffer needs at least one element)")
        if len(data) % itemsize:
            raise SpecError(f"{where}.data", f"{len(data)} bytes is not a whole number of {t.describe()} elements "
                                             f"({itemsize} bytes each)")
        if "count" in d or "nbytes" in d:
            n = _count(d, where, itemsize)
            if n * itemsize != len(data):
                raise SpecError(where, f"declares {n} elements but 'data' holds {len(data) // itemsize}")
        return BufferArg(kind, t, len(data) // itemsize, data=data, name=name)
    sha = d["sha256"]
    if not isinstance(sha, str) or not _HEX64.match(sha):
        raise SpecError(f"{where}.sha256", "must be 64 lowercase hex digits (SHA-256 of the blob)")
    return BufferArg(kind, t, _count(d, where, itemsize), sha256=sha, name=name)


def _count(d: Mapping[str, Any], where: str, itemsize: int) -> int:
    if ("count" in d) == ("nbytes" in d):
        raise SpecError(where, "needs exactly one of 'count' (elements) or 'nbytes'")
    if "count" in d:
        return _int(d["count"], f"{where}.count", minimum=1, maximum=MAX_BUFFER_BYTES // itemsize)
    nb = _int(d["nbytes"], f"{where}.nbytes", minimum=1, maximum=MAX_BUFFER_BYTES)
    if nb % itemsize:
        raise SpecError(f"{where}.nbytes", f"{nb} is not a multiple of the element size {itemsize}")
    return nb // itemsize


def _sizes(v: Any, where: str, *, what: str) -> tuple[int, ...]:
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list | tuple) or not 1 <= len(v) <= 3:
        raise SpecError(where, f"{what} must be a list of 1 to 3 positive integers, got {v!r}")
    out = tuple(_int(x, f"{where}[{i}]", minimum=1, maximum=MAX_WORK_ITEMS) for i, x in enumerate(v))
    if math.prod(out) > MAX_WORK_ITEMS:
        raise SpecError(where, f"{math.prod(out)} work items exceeds the limit of {MAX_WORK_ITEMS}")
    return out


def _check_local(gsize: tuple[int, ...], lsize: tuple[int, ...] | None, where: str) -> None:
    if lsize is None:
        return
    fld = f"{where}.local_size" if where else "local_size"
    if len(lsize) != len(gsize):
        raise SpecError(fld, f"has {len(lsize)} dimensions but global_size has {len(gsize)}")


def parse_spec(d: Any) -> ComputeSpec:
    """The typed spec from its wire dict (structure, types, ranges; no device limits). Raises SpecError."""
    if isinstance(d, ComputeSpec):
        return d
    if not isinstance(d, Mapping):
        raise SpecError("", f"must be a map, not {type(d).__name__}")
    for k in d:
        if not isinstance(k, str):
            raise SpecError(repr(k), "spec keys must be strings")
    _check_keys(d, SPEC_FIELDS, "")
    v = d.get("v", SPEC_VERSION)
    if v != SPEC_VERSION:
        raise SpecError("v", f"spec version {v!r} is not supported (this worker reads version {SPEC_VERSION})")

    # source
    if ("source" in d) == ("source_sha256" in d):
        raise SpecError("source", "give exactly one of 'source' (OpenCL C) or 'source_sha256' (a cached source)")
    source: str | None = None
    if "source" in d:
        source = check_source(d["source"])
        sha = source_sha256(source)
    else:
        sha = d["source_sha256"]
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise SpecError("source_sha256", "must be 64 lowercase hex digits")

    kernel = d.get("kernel")
    if not isinstance(kernel, str) or not IDENT.match(kernel):
        raise SpecError("kernel", f"must be the kernel's name (a C identifier), not {kernel!r}")
    options = parse_build_options(d.get("build_options"))

    # args
    raw_args = d.get("args", [])
    if not isinstance(raw_args, list | tuple):
        raise SpecError("args", "must be a list")
    if len(raw_args) > MAX_ARGS:
        raise SpecError("args", f"{len(raw_args)} args exceeds the limit of {MAX_ARGS}")
    args = tuple(_parse_arg(a, f"args[{i}]") for i, a in enumerate(raw_args))
    names: dict[str, int] = {}
    for i, a in enumerate(args):
        if a.name:
            if a.name in names:
                raise SpecError(f"args[{i}].name", f"{a.name!r} is also the name of args[{names[a.name]}]")
            names[a.name] = i
    inline = sum(len(a.data) for a in args if isinstance(a, BufferArg) and a.data is not None)
    if inline > MAX_INLINE_BYTES:
        raise SpecError("args", f"{inline} bytes of inline data exceeds the limit of {MAX_INLINE_BYTES}; "
                                "stream large inputs by sha256")
    blobs: dict[str, int] = {}
    for i, a in enumerate(args):
        if isinstance(a, BufferArg) and a.sha256 is not None:
            if blobs.setdefault(a.sha256, a.nbytes) != a.nbytes:
                raise SpecError(f"args[{i}].nbytes", f"blob {a.sha256[:16]}... is declared with two different sizes")

    # launches
    top_g = _sizes(d["global_size"], "global_size", what="global_size") if "global_size" in d else None
    top_l = _sizes(d["local_size"], "local_size", what="local_size") if d.get("local_size") is not None else None
    if top_g is not None:
        _check_local(top_g, top_l, "")
    elif top_l is not None:
        raise SpecError("local_size", "given without global_size")
    if "launches" in d:
        raw_l = d["launches"]
        if not isinstance(raw_l, list | tuple) or not raw_l:
            raise SpecError("launches", "must be a non-empty list")
        if len(raw_l) > MAX_LAUNCH_ENTRIES:
            raise SpecError("launches", f"{len(raw_l)} entries exceeds the limit of {MAX_LAUNCH_ENTRIES}")
        launches = tuple(_parse_launch(ln, f"launches[{i}]", kernel, args, names, top_g, top_l)
                         for i, ln in enumerate(raw_l))
    else:
        if top_g is None:
            raise SpecError("global_size", "required (or give 'launches')")
        launches = (Launch(kernel, top_g, top_l, tuple(range(len(args))), 1),)
    repeat = _int(d.get("repeat", 1), "repeat", minimum=1, maximum=MAX_TOTAL_LAUNCHES)
    total = repeat * sum(ln.repeat for ln in launches)
    if total > MAX_TOTAL_LAUNCHES:
        raise SpecError("repeat", f"{total} launches in all exceeds the limit of {MAX_TOTAL_LAUNCHES}")
    used = {a for ln in launches for a in ln.args if isinstance(a, int)}
    for i, a in enumerate(args):
        if isinstance(a, BufferArg) and i not in used:
            raise SpecError(f"args[{i}]", f"a buffer{f' ({a.name!r})' if a.name else ''} that no launch uses")

    # limits and hints
    tl = d.get("time_limit_s", DEFAULT_TIME_LIMIT_S)
    if isinstance(tl, bool) or not isinstance(tl, int | float) or not math.isfinite(tl) or tl <= 0:
        raise SpecError("time_limit_s", f"must be a positive number of seconds, not {tl!r}")
    if tl > MAX_TIME_LIMIT_S:
        raise SpecError("time_limit_s", f"{tl:g} s exceeds the limit of {MAX_TIME_LIMIT_S:g} s")
    mem = d.get("memory_limit_bytes")
    if mem is not None:
        mem = _int(mem, "memory_limit_bytes", minimum=1, maximum=MAX_BUFFER_BYTES)
    dk = d.get("device_kind")
    if dk is not None and dk not in DEVICE_KINDS:
        raise SpecError("device_kind", f"must be one of {', '.join(DEVICE_KINDS)}, not {dk!r}")
    fpi = d.get("flops_per_item")
    if fpi is not None and (isinstance(fpi, bool) or not isinstance(fpi, int | float) or not math.isfinite(fpi)
                            or fpi < 0):
        raise SpecError("flops_per_item", f"must be a non-negative number, not {fpi!r}")

    spec = ComputeSpec(source, sha, kernel, options, args, launches, repeat, float(tl), mem, dk,
                       None if fpi is None else float(fpi))
    if source is not None:
        declared = kernel_names_in(source)
        tokens = source_words(source)
        for k in spec.kernels():
            if k not in declared and k not in tokens:
                raise SpecError("kernel", f"no kernel named {k!r} in the source (kernels found: "
                                          f"{', '.join(declared) or 'none'})")
        check_against_source(spec, kernel_signatures(source, options, spec.kernels()))
    if mem is not None and spec.buffer_bytes > mem:
        raise SpecError("memory_limit_bytes", f"the buffers need {spec.buffer_bytes} bytes, more than the job's "
                                              f"memory limit of {mem}")
    return spec


def _parse_launch(d: Any, where: str, kernel: str, args: tuple[Arg, ...], names: Mapping[str, int],
                  top_g: tuple[int, ...] | None, top_l: tuple[int, ...] | None) -> Launch:
    if not isinstance(d, Mapping):
        raise SpecError(where, f"must be a map, not {type(d).__name__}")
    _check_keys(d, {"kernel", "global_size", "local_size", "args", "repeat"}, where)
    k = d.get("kernel", kernel)
    if not isinstance(k, str) or not IDENT.match(k):
        raise SpecError(f"{where}.kernel", f"must be a kernel name, not {k!r}")
    if "global_size" in d:
        g = _sizes(d["global_size"], f"{where}.global_size", what="global_size")
        lsz = (_sizes(d["local_size"], f"{where}.local_size", what="local_size")
               if d.get("local_size") is not None else None)
    elif top_g is not None:
        g = top_g
        lsz = (_sizes(d["local_size"], f"{where}.local_size", what="local_size")
               if d.get("local_size") is not None else top_l)
    else:
        raise SpecError(f"{where}.global_size", "required (no top-level global_size to default to)")
    _check_local(g, lsz, where)
    if "args" in d:
        raw = d["args"]
        if not isinstance(raw, list | tuple):
            raise SpecError(f"{where}.args", "must be a list")
        if len(raw) > MAX_ARGS:
            raise SpecError(f"{where}.args", f"{len(raw)} args exceeds the limit of {MAX_ARGS}")
        refs: list[int | ScalarArg | LocalArg] = []
        for j, r in enumerate(raw):
            w = f"{where}.args[{j}]"
            if isinstance(r, str):
                if r not in names:
                    raise SpecError(w, f"no arg named {r!r} (named args: {', '.join(names) or 'none'})")
                refs.append(names[r])
            elif isinstance(r, int | np.integer) and not isinstance(r, bool):
                if not 0 <= int(r) < len(args):
                    raise SpecError(w, f"refers to args[{int(r)}], but the spec has {len(args)} args")
                refs.append(int(r))
            else:
                a = _parse_arg(r, w, allow_buffers=False)
                assert not isinstance(a, BufferArg)
                refs.append(a)
        ref_t = tuple(refs)
    else:
        ref_t = tuple(range(len(args)))
    rep = _int(d.get("repeat", 1), f"{where}.repeat", minimum=1, maximum=MAX_TOTAL_LAUNCHES)
    return Launch(k, g, lsz, ref_t, rep)


def resolve_launch_args(spec: ComputeSpec, launch: Launch) -> list[tuple[str, Arg]]:
    """[(label, arg)] of one launch, labels naming where each came from (for messages)."""
    out: list[tuple[str, Arg]] = []
    for j, a in enumerate(launch.args):
        if isinstance(a, int):
            arg = spec.args[a]
            out.append((f"args[{a}]" + (f" ({arg.name!r})" if arg.name else ""), arg))
        else:
            out.append((f"launch arg {j}" + (f" ({a.name!r})" if a.name else ""), a))
    return out


def dtype_named(name: str) -> CType:
    """A wire dtype name as a CType (KeyError if unknown)."""
    t = type_named(name)
    if t is None:
        raise KeyError(name)
    return t
