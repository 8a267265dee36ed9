"""Parsing a `compute.opencl` spec: `parse_spec(d)` checks the wire form (described in `worker.compute.spec`)
against the worker-side caps below and what a scan of the source tells, and returns a frozen `ComputeSpec`;
`SpecError` names the bad field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from worker.compute.cltypes import encode_value, parse_dtype
from worker.compute.errors import SpecError
from worker.compute.source import (
    IDENT,
    check_against_source,
    check_source,
    kernel_names_in,
    kernel_signatures,
    parse_build_options,
    source_sha256,
    source_words,
)
from worker.compute.spec_model import (
    DEFAULT_TIME_LIMIT_S,
    SPEC_VERSION,
    Arg,
    BufferArg,
    ComputeSpec,
    Launch,
    LocalArg,
    ScalarArg,
)

# --- limits (worker-side caps; a spec may ask for less, never more) -------------------------------------
MAX_ARGS = 64
MAX_LAUNCH_ENTRIES = 256  # entries in "launches"
MAX_TOTAL_LAUNCHES = 100_000  # after expanding repeats
MAX_INLINE_BYTES = 1 << 20  # all inline `data` of one spec together (larger inputs stream)
MAX_BUFFER_BYTES = 1 << 40
MAX_WORK_ITEMS = 1 << 40  # per launch
MAX_TIME_LIMIT_S = 3600.0
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
