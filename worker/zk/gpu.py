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
from typing import Any

import numpy as np

from . import ntt_cl
from . import poseidon as PS
from .tables import TABLE_CACHE, drop_tables, table  # noqa: F401  (re-exported: gpu.table)

try:  # OpenCL is optional: the numpy backend and the verifier work without it
    import pyopencl as cl
except ImportError:  # pragma: no cover - exercised only where pyopencl is missing
    cl = None  # type: ignore[assignment]

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


def source(name: str) -> str:
    return (HERE / name).read_text()


def mds_frequency_constants() -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """The circulant MDS in the "frequency domain" of a length-4 transform over Z[i] (as Plonky2 does):
    K1 = C(1)/4, K3 = C(-1)/4, K2 = C(i)/2 per residue class b = index mod 3, where C_b(t) = sum_a c'[b+3a] t^a
    and c'[k] = circ[-k mod 12]. For the Goldilocks matrix these are small and mostly powers of two, so the
    MDS becomes shifts and adds on 32-bit limbs instead of 144 products. Raises if not integral."""
    circ = PS.params().mds_circ
    cp = [circ[(-k) % 12] for k in range(12)]

    def ev(b: int, w: complex) -> complex:
        return sum(cp[b + 3 * a] * w**a for a in range(4))

    k1 = [ev(b, 1) / 4 for b in range(3)]
    k3 = [ev(b, -1) / 4 for b in range(3)]
    k2 = [ev(b, 1j) / 2 for b in range(3)]
    flat = [*k1, *k3, *(z.real for z in k2), *(z.imag for z in k2)]
    if any(abs(v - round(v.real if isinstance(v, complex) else v)) > 1e-9 for v in flat):
        raise ValueError("MDS frequency constants are not integral: use the direct MDS")
    return ([int(round(v.real)) for v in k1], [int(round(v.real)) for v in k3],
            [(int(round(z.real)), int(round(z.imag))) for z in k2])


def _mds_half_code() -> str:
    """Straight-line C: y = circulant part of the MDS applied to x (12 long4 limbs, < 2^32), exact integers.
    y[b + 3a] = Y1_b + (-1)^a Y3_b + Re(i^-a Y2_b), with Y1 = K1 (*)cyclic S(1), Y3 = K3 (*)negacyclic S(-1),
    Y2 = K2 (*)[x^3 = i] S(i), and S(w)_b = sum_a x[b + 3a] w^a. The kernel tests compare it with the direct
    matrix (numpy path) on random states and the four reference vectors."""
    k1, k3, k2 = mds_frequency_constants()
    out = []
    for b in range(3):
        out.append(f"long4 e0_{b} = x[{b}] + x[{b + 6}], e1_{b} = x[{b + 3}] + x[{b + 9}];")
        out.append(f"long4 A{b} = e0_{b} + e1_{b}, B{b} = e0_{b} - e1_{b}, "
                   f"Cr{b} = x[{b}] - x[{b + 6}], Ci{b} = x[{b + 3}] - x[{b + 9}];")
    for k in range(3):
        t1, t3, tr, ti = [], [], [], []
        for j in range(3):
            for lo in range(3):
                if (j + lo) % 3 != k:
                    continue
                wrap = j + lo >= 3
                t1.append(f"A{lo} * {k1[j]}L")
                t3.append(f"{'-' if wrap else '+'} B{lo} * {k3[j]}L")
                re = f"(Cr{lo} * {k2[j][0]}L - Ci{lo} * {k2[j][1]}L)"
                im = f"(Cr{lo} * {k2[j][1]}L + Ci{lo} * {k2[j][0]}L)"
                if wrap:  # times i: (re + i im) * i = -im + i re
                    re, im = f"-{im}", re
                tr.append(re)
                ti.append(im)
        out.append(f"long4 Y1_{k} = {' + '.join(t1)};")
        out.append(f"long4 Y3_{k} = 0 {' '.join(t3)};")
        out.append(f"long4 Y2r{k} = {' + '.join(tr)}, Y2i{k} = {' + '.join(ti)};")
    for b in range(3):
        out.append(f"y[{b}] = Y1_{b} + Y3_{b} + Y2r{b}; y[{b + 3}] = Y1_{b} - Y3_{b} + Y2i{b};")
        out.append(f"y[{b + 6}] = Y1_{b} + Y3_{b} - Y2r{b}; y[{b + 9}] = Y1_{b} - Y3_{b} - Y2i{b};")
    for r, d in enumerate(PS.params().mds_diag):
        if d:
            out.append(f"y[{r}] += x[{r}] * {d}L;")
    return "\n    ".join(out)


@lru_cache(maxsize=1)
def poseidon_header() -> str:
    """Constants and the MDS as C source generated from the parameter file."""
    prm = PS.params()
    rc = ", ".join(f"0x{c:016x}UL" for c in prm.round_constants)
    return "\n".join([
        f"#define POSEIDON_HALF {prm.full_rounds_half}",
        f"#define POSEIDON_PARTIAL {prm.partial_rounds}",
        f"__constant ulong POSEIDON_RC[{len(prm.round_constants)}] = {{{rc}}};",
        "inline void mds_half(const long4 *x, long4 *y) {",
        "    " + _mds_half_code(),
        "}",
    ]) + "\n"




@dataclass
class Program:
    """A built program and its kernel objects, fetched once each."""

    prg: Any
    kernels: dict[str, Any] = field(default_factory=dict)

    def kernel(self, name: str):
        k = self.kernels.get(name)
        if k is None:
            k = self.kernels[name] = cl.Kernel(self.prg, name)
        return k


_PROGRAMS: dict[tuple[int, str], Program] = {}


def build(ctx, source: str, options: tuple[str, ...] = ()) -> Program:
    key = (ctx.int_ptr, hashlib.sha256((source + "\0" + " ".join(options)).encode()).hexdigest())
    prog = _PROGRAMS.get(key)
    if prog is None:
        os.environ.setdefault("PYOPENCL_NO_CACHE", "0")
        prog = Program(cl.Program(ctx, source).build(options=list(options)))
        _PROGRAMS[key] = prog
    return prog


B2S_SIGMA = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), (14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3),
    (11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4), (7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8),
    (9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13), (2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9),
    (12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11), (13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10),
    (6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5), (10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0),
)  # RFC 7693


def blake2s_source() -> str:
    """blake2s.cl with its ten rounds written out, so every message index is a literal (PoCL keeps the
    message words in registers instead of indexing an array through a table)."""
    cols = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
            (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))
    calls = []
    for s in B2S_SIGMA:
        for k, (a, b, c, d) in enumerate(cols):
            calls.append(f"B2S_G({a}, {b}, {c}, {d}, m[{s[2 * k]}], m[{s[2 * k + 1]}])")
    return source("blake2s.cl").replace("B2S_ROUNDS", " ".join(calls))


def zk_program(ctx) -> Program:
    """All zk kernels in one program: field, NTT, Poseidon, BLAKE2s, FRI."""

    parts = [source("goldilocks.cl"), poseidon_header(), source("poseidon.cl"), blake2s_source(),
             ntt_cl.kernel_source()]
    if (HERE / "fri.cl").exists():
        parts.append(source("fri.cl"))
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
