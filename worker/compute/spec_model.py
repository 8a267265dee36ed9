"""The typed `compute.opencl` spec: frozen dataclasses for its args (`BufferArg`, `ScalarArg`, `LocalArg`), its
launches (`Launch`) and the whole spec (`ComputeSpec`, with its derived sizes, stream layout, device requirements
and wire form `to_dict`). `worker.compute.spec_parse.parse_spec` makes one from the wire form; the format is
described in `worker.compute.spec`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from worker.compute.cltypes import CType, decode_value, type_named
from worker.compute.errors import SpecError
from worker.compute.source import source_uses_64bit

SPEC_VERSION = 1
DEFAULT_TIME_LIMIT_S = 60.0  # a spec's time limit when it names none (at most spec_parse.MAX_TIME_LIMIT_S)


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

    # derived figures, computed once per spec (it is immutable; a runner and the compute kind keep one parsed spec
    # per distinct content, so every job of a stream of one job reads them)
    @cached_property
    def buffers(self) -> tuple[tuple[int, BufferArg], ...]:
        return tuple((i, a) for i, a in enumerate(self.args) if isinstance(a, BufferArg))

    @cached_property
    def buffer_bytes(self) -> int:
        """Device memory the job's buffers need (its minimum memory)."""
        return sum(a.nbytes for _, a in self.buffers)

    @cached_property
    def bytes_in(self) -> int:
        return sum(a.nbytes for _, a in self.buffers if a.uploads)

    @cached_property
    def bytes_out(self) -> int:
        return sum(a.nbytes for _, a in self.buffers if a.returned)

    @cached_property
    def total_launches(self) -> int:
        return self.repeat * sum(ln.repeat for ln in self.launches)

    @cached_property
    def work_items(self) -> int:
        """Work items over all launches (repeats included)."""
        return self.repeat * sum(ln.work_items * ln.repeat for ln in self.launches)

    def stream_layout(self) -> list[tuple[str, int]]:
        """[(sha256, nbytes)] of the streamed blobs, in the order the job's input stream carries them."""
        return list(self._stream_layout)

    @cached_property
    def _stream_layout(self) -> tuple[tuple[str, int], ...]:
        seen: dict[str, int] = {}
        for _, a in self.buffers:
            if a.sha256 is not None and a.sha256 not in seen:
                seen[a.sha256] = a.nbytes
        return tuple(seen.items())

    @cached_property
    def input_size(self) -> int:
        """Bytes of the job's streamed input."""
        return sum(n for _, n in self._stream_layout)

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
