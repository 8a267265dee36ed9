"""A spec against the built program, before any transfer: each launch's arguments against the kernel's declared
parameters, and each buffer's device flags from how the whole launch sequence uses it.

`check_launch` (per launch): argument count; every parameter bindable (images, samplers, pipes refused,
naming the parameter); buffers to `__global`/`__constant` pointers, a whole number of the pointee type;
by-value arguments of the declared type (the error names the dtype to use); `__local` args to `__local`
pointers; the kernel's `reqd_work_group_size` and maximum work-group size on this device; local memory; and a
trial `set_arg` of every by-value argument (catches a typedef'd parameter of another size).

`plan_buffers` (whole sequence): a buffer is *written* if some launch binds it to a non-const `__global`
pointer (a runtime without argument info counts as writable). Read-only checks are per launch: a launch may
read any buffer through a `const` pointer, including one an earlier launch wrote. Flags follow the sequence:
`CL_MEM_READ_ONLY` for a buffer no launch writes, else `CL_MEM_READ_WRITE` (a write-only flag would make any
later read undefined); host access flags from the role (OpenCL >= 1.2): `in` host-write-only, `out`
host-read-only, `scratch` no host access. An `out` or `scratch` buffer that no launch writes is refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.compute.cache import KernelInfo, ParamInfo
from worker.compute.cltypes import CL_SPELLINGS, CType, pointee, suggest_for
from worker.compute.errors import SpecError, describe_cl_error
from worker.compute.limits import DeviceLimits
from worker.compute.spec import (
    BufferArg,
    ComputeSpec,
    LocalArg,
    ScalarArg,
    resolve_launch_args,
)


def param_desc(info: KernelInfo, j: int, p: ParamInfo) -> str:
    return f"kernel {info.name!r} parameter {j}" + (f" '{p.type_name} {p.name}'" if p.type_name else "")


def check_launch(s: ComputeSpec, li: int, info: KernelInfo, limits: DeviceLimits, cl: Any) -> list[str]:
    """Check launch `li` against its built kernel (see the module doc); warnings back, SpecError raised."""
    warnings: list[str] = []
    ln = s.launches[li]
    where = s.launch_where(li)
    resolved = resolve_launch_args(s, ln)
    if info.num_args != len(resolved):
        raise SpecError(f"{where}.args" if where else "args",
                        f"kernel {info.name!r} takes {info.num_args} arguments, the spec gives {len(resolved)}")
    lfield = f"{where}.local_size" if where else "local_size"
    reqd = info.reqd_work_group_size
    if reqd is not None:
        want = list(reqd[:len(ln.global_size)])
        if ln.local_size is None:
            raise SpecError(lfield, f"kernel {info.name!r} requires work-groups of {list(reqd)} "
                                    f"(reqd_work_group_size): give local_size {want}")
        if tuple(ln.local_size) + (1,) * (3 - len(ln.local_size)) != reqd:
            raise SpecError(lfield, f"{list(ln.local_size)} differs from kernel {info.name!r}'s "
                                    f"reqd_work_group_size {list(reqd)}: give local_size {want}")
    if ln.local_size is not None and info.work_group_size is not None:
        wg = math.prod(ln.local_size)
        if wg > info.work_group_size:
            raise SpecError(lfield, f"work-group of {wg} exceeds kernel {info.name!r}'s maximum of "
                                    f"{info.work_group_size} on this device")
    local = sum(a.nbytes for _, a in resolved if isinstance(a, LocalArg)) + (info.local_mem_bytes or 0)
    if limits.local_mem_bytes is not None and local > limits.local_mem_bytes:
        raise SpecError(where or "args", f"kernel {info.name!r} needs {local} bytes of local memory per "
                                         f"work-group, the device has {limits.local_mem_bytes}")
    for j, ((label, a), p) in enumerate(zip(resolved, info.params, strict=True)):
        pdesc = param_desc(info, j, p)
        if p.opaque is not None:
            raise SpecError(label, f"{pdesc} is {_opaque_why(p.opaque)}")
        if p.address is None:
            continue  # no arg info from this runtime: the set_arg trial below still checks sizes
        if isinstance(a, BufferArg):
            if p.address not in ("global", "constant"):
                raise SpecError(label, f"a buffer, but {pdesc} is not a __global or __constant pointer")
            if (p.address == "constant" and limits.max_constant_bytes is not None
                    and a.nbytes > limits.max_constant_bytes):
                raise SpecError(label, f"{a.nbytes} bytes bound to __constant {pdesc} exceeds the device's "
                                       f"constant buffer size of {limits.max_constant_bytes}")
            _check_pointee(label, a, p, pdesc, warnings)
        elif isinstance(a, ScalarArg):
            if p.address != "private":
                raise SpecError(label, f"a by-value {a.type.describe()}, but {pdesc} is a pointer: pass an array")
            t = (p.type_name or "").strip()
            declared = CL_SPELLINGS.get(t)
            if declared is not None and a.type.kind != "struct" and (declared.base, declared.width) != (
                    a.type.base, a.type.width):
                if _same_value(a, declared):  # np.int32(5) for a `uint`: what pyopencl passes, same bytes
                    warnings.append(f"{label}: {a.type.describe()} value bound to {pdesc} (same bytes, same value)")
                else:
                    hint = suggest_for(t)
                    raise SpecError(f"{label}.dtype", f"{a.type.describe()} value, but {pdesc} is declared {t!r}"
                                                      + (f": pass {hint}" if hint else ""))
        elif isinstance(a, LocalArg):
            if p.address != "local":
                raise SpecError(label, f"a local arg, but {pdesc} is not a __local pointer")
    # Trial of the non-buffer args (catches a typedef'd by-value parameter of the wrong size) before any transfer.
    for j, (label, a) in enumerate(resolved):
        if isinstance(a, BufferArg):
            continue
        try:
            info.kernel.set_arg(j, a.host_value() if isinstance(a, ScalarArg) else cl.LocalMemory(a.nbytes))
        except cl.Error as e:
            what = f"{len(a.raw)} bytes ({a.type.describe()})" if isinstance(a, ScalarArg) else "it"
            raise SpecError(label, f"{param_desc(info, j, info.params[j])} rejects {what}: "
                                   f"{describe_cl_error(e)}") from None
    return warnings


def _same_value(a: ScalarArg, declared: CType) -> bool:
    """An integer value of the same size and width whose every lane reads the same in the declared type (a
    signedness difference pyopencl lets through); anything else (another size, int vs float) is a mistake."""
    mine = a.type
    if (mine.kind not in ("scalar", "vector") or mine.width != declared.width or mine.itemsize != declared.itemsize
            or mine.base is None or declared.base is None):
        return False
    if np.dtype(mine.base).kind not in "iu" or np.dtype(declared.base).kind not in "iu":
        return False
    lanes = np.frombuffer(a.raw, dtype=mine.base)
    return bool(np.array_equal(lanes.astype(np.int64 if mine.base != "uint64" else np.uint64),
                               np.frombuffer(a.raw, dtype=declared.base).astype(
                                   np.int64 if declared.base != "uint64" else np.uint64)))


def _opaque_why(opaque: str) -> str:
    if opaque in ("bool", "size_t", "ptrdiff_t", "intptr_t", "uintptr_t"):
        return f"of type {opaque}, which OpenCL does not allow as a kernel parameter; declare it uint or ulong"
    what = ("an image" if opaque.startswith("image") else "a sampler" if opaque == "sampler_t"
            else "a pipe" if opaque == "pipe" else f"a {opaque}")
    return (f"{what}: compute jobs bind buffers, scalars, vectors, structs and __local memory, not images, "
            f"samplers or pipes; pass the pixels as a __global buffer (e.g. uchar4* or float4*) and index it in the "
            f"kernel (see examples/compute/convolution.cl)")


def _check_pointee(label: str, a: BufferArg, p: ParamInfo, pdesc: str, warnings: list[str]) -> None:
    t = pointee(p.type_name or "")
    if t is None:
        return  # a struct or typedef: its layout is the dtype's (checked against OpenCL's alignment rules)
    if a.nbytes % t.itemsize:
        raise SpecError(label, f"{a.nbytes} bytes is not a whole number of '{t.cl_name}' elements "
                               f"({t.itemsize} bytes) for {pdesc}")
    mine = a.type.base
    if a.type.kind == "struct" or (mine != t.base and not (t.base in ("uint8", "int8") and t.kind == "scalar")):
        warnings.append(f"{label}: {a.type.describe()} data bound to {pdesc}")


_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?: [A-Za-z_][A-Za-z0-9_]*)?\Z")


def sized_types(s: ComputeSpec, kernels: list[KernelInfo]) -> tuple[str, ...]:
    """The struct and typedef names (not OpenCL builtins) that the launches' arguments are bound to: their
    `sizeof` on the device is what `check_sizes` compares the arguments with."""
    names: dict[str, None] = {}
    for ln, info in zip(s.launches, kernels, strict=True):
        for (_, a), p in zip(resolve_launch_args(s, ln), info.params, strict=False):
            t = _named_type(a, p)
            if t is not None:
                names[t] = None
    return tuple(names)


def _named_type(a: Any, p: ParamInfo) -> str | None:
    tname = (p.type_name or "").strip()
    if isinstance(a, BufferArg) and p.address in ("global", "constant"):
        base = tname.rstrip("*").strip()
        if pointee(tname) is None and base not in ("", "void", "char", "uchar") and _TYPE_NAME.match(base):
            return base
    elif isinstance(a, ScalarArg) and p.address == "private":
        if tname not in CL_SPELLINGS and _TYPE_NAME.match(tname):
            return tname
    return None


def check_sizes(s: ComputeSpec, kernels: list[KernelInfo], sizes: dict[str, int]) -> None:
    """Each argument bound to a struct or typedef parameter against that type's `sizeof` on the device: a
    by-value struct of another size would be read past its end (runtimes do not all check), a buffer that is
    not a whole number of elements would be indexed past its end."""
    for ln, info in zip(s.launches, kernels, strict=True):
        for j, ((label, a), p) in enumerate(zip(resolve_launch_args(s, ln), info.params, strict=False)):
            t = _named_type(a, p)
            size = sizes.get(t) if t is not None else None
            if not size:
                continue
            pdesc = param_desc(info, j, p)
            if isinstance(a, ScalarArg) and len(a.raw) != size:
                raise SpecError(label, f"{len(a.raw)} bytes ({a.type.describe()}), but {pdesc} is {size} bytes "
                                       f"(sizeof({t}) on this device): lay the numpy dtype out as the kernel's {t}")
            if isinstance(a, BufferArg):
                if a.type.kind == "struct" and a.itemsize != size:
                    raise SpecError(label, f"elements of {a.itemsize} bytes, but {pdesc} points to {t} of {size} "
                                           f"bytes (sizeof on this device): lay the numpy dtype out as the kernel's "
                                           f"{t}")
                if a.nbytes % size:
                    raise SpecError(label, f"{a.nbytes} bytes is not a whole number of {t} ({size} bytes on this "
                                           f"device) for {pdesc}")


@dataclass(frozen=True)
class BufferPlan:
    index: int
    written: bool  # some launch binds it to a writable pointer
    flags: int  # cl.mem_flags


def plan_buffers(s: ComputeSpec, kernels: list[KernelInfo], cl: Any, host_flags: bool) -> tuple[
        dict[int, BufferPlan], list[str]]:
    """Device flags of each buffer from the whole launch sequence; refuses an out/scratch buffer nothing writes.
    `host_flags`: the device takes CL_MEM_HOST_* (OpenCL >= 1.2)."""
    mf = cl.mem_flags
    written_at: dict[int, int] = {}  # buffer -> first launch writing it
    read_first: dict[int, tuple[int, str]] = {}  # out/scratch buffer -> launch reading it (const) before any write
    for li, (ln, info) in enumerate(zip(s.launches, kernels, strict=True)):
        for j, a in enumerate(ln.args):
            if not isinstance(a, int) or not isinstance(s.args[a], BufferArg):
                continue
            p = info.params[j] if j < len(info.params) else ParamInfo(None, None, None)
            writable = p.address is None or (p.address == "global" and not p.const)
            if writable:
                written_at.setdefault(a, li)
            elif a not in written_at and a not in read_first:
                read_first[a] = (li, ln.kernel)
    plans: dict[int, BufferPlan] = {}
    warnings: list[str] = []
    for i, b in s.buffers:
        label = f"args[{i}]" + (f" ({b.name!r})" if b.name else "")
        written = i in written_at
        if b.kind in ("out", "scratch") and not written:
            raise SpecError(f"args[{i}]", f"{b.kind} buffer{f' {b.name!r}' if b.name else ''} is bound only to "
                                          f"read-only (const or __constant) parameters: no launch writes it")
        if b.kind in ("out", "scratch") and i in read_first and read_first[i][0] <= written_at[i]:
            li, k = read_first[i]
            warnings.append(f"{label}: launch {li} (kernel {k!r}) reads this {b.kind} buffer before any launch "
                            f"writes it: it reads zeros")
        if b.kind == "inout" and not written:
            warnings.append(f"{label}: an inout buffer no launch writes (bound only to const parameters); "
                            f"it comes back as it went")
        flags = mf.READ_WRITE if written else mf.READ_ONLY
        if host_flags:
            flags |= {"in": mf.HOST_WRITE_ONLY, "out": mf.HOST_READ_ONLY, "scratch": mf.HOST_NO_ACCESS}.get(b.kind, 0)
        plans[i] = BufferPlan(i, written, flags)
    return plans, warnings
