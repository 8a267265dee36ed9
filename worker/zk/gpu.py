"""OpenCL plumbing for the zk kernels: building programs once per context and fetching kernels once.

The caller owns the device choice and passes a pyopencl Context and CommandQueue in; `default_queue()` is a
convenience for tests, benchmarks and the CLI. Built programs are cached per (context, source) because a
build costs ~0.5 s cold; kernel objects are cached per program because `prg.name` rebuilds the object and
warns every time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import poseidon as PS

try:  # OpenCL is optional: the numpy backend and the verifier work without it
    import pyopencl as cl
except ImportError:  # pragma: no cover - exercised only where pyopencl is missing
    cl = None

HERE = Path(__file__).resolve().parent


def available() -> bool:
    if cl is None:
        return False
    try:
        return any(p.get_devices() for p in cl.get_platforms())
    except Exception:  # noqa: BLE001 - any ICD failure means "no OpenCL here"
        return False


@lru_cache(maxsize=1)
def default_queue():
    """(context, queue) on the first OpenCL device, or None when there is none."""
    if not available():
        return None
    for platform in cl.get_platforms():
        devices = platform.get_devices()
        if devices:
            ctx = cl.Context([devices[0]])
            return ctx, cl.CommandQueue(ctx)
    return None


def _source(name: str) -> str:
    return (HERE / name).read_text()


@lru_cache(maxsize=1)
def poseidon_header() -> str:
    """Constants and the unrolled MDS as C source generated from the parameter file."""
    prm = PS.params()
    rc = ", ".join(f"0x{c:016x}UL" for c in prm.round_constants)
    lines = [
        f"#define POSEIDON_HALF {prm.full_rounds_half}",
        f"#define POSEIDON_PARTIAL {prm.partial_rounds}",
        f"__constant ulong POSEIDON_RC[{len(prm.round_constants)}] = {{{rc}}};",
    ]
    body = []
    for r, row in enumerate(prm.mds_matrix()):
        terms_lo = " + ".join(f"lo[{i}] * {m}UL" for i, m in enumerate(row) if m)
        terms_hi = " + ".join(f"hi[{i}] * {m}UL" for i, m in enumerate(row) if m)
        body.append(f"s[{r}] = reduce_small({terms_lo}, {terms_hi});")
    lines.append("#define POSEIDON_MDS_ALL " + " ".join(body))
    return "\n".join(lines) + "\n"


_PROGRAMS: dict[tuple[int, str], object] = {}


@dataclass
class Program:
    """A built program and its kernel objects, fetched once each."""

    prg: object
    kernels: dict[str, object] = field(default_factory=dict)

    def kernel(self, name: str):
        k = self.kernels.get(name)
        if k is None:
            k = self.kernels[name] = cl.Kernel(self.prg, name)
        return k


def build(ctx, source: str, options: tuple[str, ...] = ()) -> Program:
    key = (ctx.int_ptr, hashlib.sha256((source + "\0" + " ".join(options)).encode()).hexdigest())
    prog = _PROGRAMS.get(key)
    if prog is None:
        os.environ.setdefault("PYOPENCL_NO_CACHE", "0")
        prog = Program(cl.Program(ctx, source).build(options=list(options)))
        _PROGRAMS[key] = prog
    return prog


def zk_program(ctx) -> Program:
    """All zk kernels in one program: field, NTT, Poseidon, FRI."""
    from . import ntt_cl

    parts = [_source("goldilocks.cl"), poseidon_header(), _source("poseidon.cl"), ntt_cl.kernel_source()]
    if (HERE / "fri.cl").exists():
        parts.append(_source("fri.cl"))
    return build(ctx, "\n".join(parts))


LOCAL = 64  # fixed work-group size (see ntt_cl.LOCAL)


def launch(kernel, queue, count: int, *args, cols: int | None = None):
    """Launch over `count` items (the kernel guards its tail) with the fixed work-group size, so PoCL
    compiles each kernel once rather than once per global size."""
    glob = -(-count // LOCAL) * LOCAL
    if cols is None:
        return kernel(queue, (glob,), (LOCAL,), *args)
    return kernel(queue, (glob, cols), (LOCAL, 1), *args)


def u64(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.uint64)
