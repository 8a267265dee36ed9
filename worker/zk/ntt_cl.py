"""OpenCL NTT: mixed-radix Stockham passes with straight-line radix-R butterflies.

Why this shape: a naive kernel launches once per radix-2 stage and streams the whole vector through memory
20 times at 2^20 (memory-bound at ~63 ms on the 2-core PoCL device). Here each launch does log2(R) stages in
registers (R up to 32), so a 2^20 transform is 4-5 passes; Stockham ordering keeps input and output in
natural order with no bit-reversal pass. Inside an R-point butterfly every twiddle is an R-th root of unity,
and in Goldilocks all 64th roots of unity are powers of two, so those products are shifts plus one
reduction; only the R - 1 inter-pass twiddles per group need a full multiply (precomputed tables, cached).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from . import field as F
from . import ntt as NT
from . import tables

RADICES = (2, 4, 8, 16)  # 32 measured no faster and compiles far slower
DEFAULT_MAX_RADIX = 16
LOCAL = 64  # one fixed work-group size: PoCL compiles a kernel once per local size it sees


@cache
def _log2_of_power_of_two(target: int) -> int:
    """e with 2^e = target (mod p), target a 2^k-th root of unity, k <= 6."""
    for e in range(192):
        if pow(2, e, F.P) == target:
            return e
    raise ValueError("not a power of two in Goldilocks")


def dft_code(radix: int, inverse: bool, vec: bool = False) -> str:
    """Straight-line radix-`radix` DFT over v0..v{R-1} (decimation in time), results back in v0..v{R-1}."""
    w = F.root_of_unity(radix)
    e_root = _log2_of_power_of_two(F.inv(w) if inverse else w)
    lines: list[str] = []
    counter = [0]
    ty, fn = ("ulong4", "glv") if vec else ("ulong", "gl")

    def fresh() -> str:
        counter[0] += 1
        return f"t{counter[0]}"

    def rec(vals: list[str], e: int) -> list[str]:
        if len(vals) == 1:
            return vals
        even = rec(vals[0::2], 2 * e % 192)
        odd = rec(vals[1::2], 2 * e % 192)
        half = len(vals) // 2
        out = [""] * len(vals)
        for k in range(half):
            ek = k * e % 192
            t = odd[k]
            if ek:
                t = fresh()
                lines.append(f"{ty} {t} = {fn}_mul_pow2({odd[k]}, {ek}u);")
            a, b = fresh(), fresh()
            lines.append(f"{ty} {a} = {fn}_add({even[k]}, {t}); {ty} {b} = {fn}_sub({even[k]}, {t});")
            out[k], out[k + half] = a, b
        return out

    res = rec([f"v{r}" for r in range(radix)], e_root)
    lines += [f"v{r} = {res[r]};" for r in range(radix)]
    return "\n        ".join(lines)


def launch_size(count: int) -> int:
    return -(-count // LOCAL) * LOCAL


def _pass_kernel(radix: int, inverse: bool) -> str:
    name = f"ntt_{'i' if inverse else 'f'}{radix}"
    loads = "\n    ".join(f"ulong v{r} = src[j + {r}u * stride];" for r in range(radix))
    twid = "\n        ".join(f"v{r} = gl_mul(v{r}, tw[{r - 1}u * ns + m]);" for r in range(1, radix))
    scale = "\n        ".join(f"v{r} = gl_mul(v{r}, scale);" for r in range(radix))
    stores = "\n    ".join(f"dst[d + {r}u * ns] = v{r};" for r in range(radix))
    return f"""
// one radix-{radix} Stockham pass: group j reads src[j + r * n/{radix}], writes dst[(j - m) * {radix} + m + r * ns]
__kernel void {name}(__global const ulong *src, __global ulong *dst, __global const ulong *tw,
                     const uint n, const uint ns, const ulong scale, const int do_scale) {{
    uint j = get_global_id(0);
    if (j >= n / {radix}u) return;
    size_t base = (size_t)get_global_id(1) * n;
    src += base; dst += base;
    const uint stride = n / {radix}u;
    const uint m = j & (ns - 1u);
    {loads}
    if (do_scale) {{
        {scale}
    }}
    if (ns > 1u) {{
        {twid}
    }}
    {{
        {dft_code(radix, inverse)}
    }}
    const uint d = (j - m) * {radix}u + m;
    {stores}
}}
"""


def _pass_kernel_vec(radix: int, inverse: bool) -> str:
    """Four consecutive groups per work-item in ulong4 lanes (needs n / radix >= 4): loads are contiguous;
    stores are contiguous when ns >= 4 and scattered otherwise (first passes only)."""
    name = f"ntt4_{'i' if inverse else 'f'}{radix}"
    loads = "\n    ".join(f"ulong4 v{r} = vload4(0, src + j + {r}u * stride);" for r in range(radix))
    twid = "\n        ".join(
        f"v{r} = glv_mul(v{r}, vload4(0, tw + {r - 1}u * ns + m));"
        for r in range(1, radix)
    )
    twid_small = "\n        ".join(
        f"v{r} = glv_mul(v{r}, (ulong4)(tw[{r - 1}u * ns + (j & (ns - 1u))], "
        f"tw[{r - 1}u * ns + ((j + 1u) & (ns - 1u))], tw[{r - 1}u * ns + ((j + 2u) & (ns - 1u))], "
        f"tw[{r - 1}u * ns + ((j + 3u) & (ns - 1u))]));"
        for r in range(1, radix)
    )
    scale = "\n        ".join(f"v{r} = glv_mul(v{r}, (ulong4)scale);" for r in range(radix))
    stores = "\n        ".join(f"vstore4(v{r}, 0, dst + d + {r}u * ns);" for r in range(radix))
    scatter = "\n        ".join(
        f"dst[d0 + {r}u * ns] = v{r}.s0; dst[d1 + {r}u * ns] = v{r}.s1; "
        f"dst[d2 + {r}u * ns] = v{r}.s2; dst[d3 + {r}u * ns] = v{r}.s3;"
        for r in range(radix)
    )
    return f"""
__kernel void {name}(__global const ulong *src, __global ulong *dst, __global const ulong *tw,
                     const uint n, const uint ns, const ulong scale, const int do_scale) {{
    uint j = 4u * get_global_id(0);
    if (j >= n / {radix}u) return;
    size_t base = (size_t)get_global_id(1) * n;
    src += base; dst += base;
    const uint stride = n / {radix}u;
    const uint m = j & (ns - 1u);
    {loads}
    if (do_scale) {{
        {scale}
    }}
    if (ns >= 4u) {{
        {twid}
    }} else if (ns > 1u) {{
        {twid_small}
    }}
    {{
        {dft_code(radix, inverse, vec=True)}
    }}
    if (ns >= 4u) {{
        const uint d = (j - m) * {radix}u + m;
        {stores}
    }} else {{
        uint d0 = (j - (j & (ns - 1u))) * {radix}u + (j & (ns - 1u));
        uint d1 = (j + 1u - ((j + 1u) & (ns - 1u))) * {radix}u + ((j + 1u) & (ns - 1u));
        uint d2 = (j + 2u - ((j + 2u) & (ns - 1u))) * {radix}u + ((j + 2u) & (ns - 1u));
        uint d3 = (j + 3u - ((j + 3u) & (ns - 1u))) * {radix}u + ((j + 3u) & (ns - 1u));
        {scatter}
    }}
}}
"""


def kernel_source() -> str:
    parts = []
    for radix in RADICES:
        for inverse in (False, True):
            parts.append(_pass_kernel(radix, inverse))
            parts.append(_pass_kernel_vec(radix, inverse))
    parts.append(
        """
// coset LDE input: dst[c][i] = src[c][i] * table[i] for i < n, 0 for n <= i < n_out
__kernel void scale_pad(__global const ulong *src, __global const ulong *table, __global ulong *dst,
                        const uint n, const uint n_out) {
    uint i = get_global_id(0);
    size_t c = get_global_id(1);
    if (i >= n_out) return;
    dst[c * n_out + i] = (i < n) ? gl_mul(src[c * n + i], table[i]) : 0UL;
}

// data[c][i] *= table[i]
__kernel void scale_table(__global ulong *data, __global const ulong *table, const uint n) {
    uint i = get_global_id(0);
    size_t c = get_global_id(1);
    if (i >= n) return;
    data[c * n + i] = gl_mul(data[c * n + i], table[i]);
}
"""
    )
    return "\n".join(parts)


def plan(n: int, max_radix: int = DEFAULT_MAX_RADIX) -> tuple[int, ...]:
    """Radices whose product is n: as many max_radix passes as fit, the remainder first."""
    log_n = n.bit_length() - 1
    log_r = max_radix.bit_length() - 1
    full, rest = divmod(log_n, log_r)
    return ((1 << rest,) if rest else ()) + (max_radix,) * full


def twiddle_tables(n: int, inverse: bool, radices: tuple[int, ...]) -> list[np.ndarray]:
    """Per pass with stride ns and radix R: tw[(r-1)*ns + m] = w^((n / (ns*R)) * r * m), m < ns (r-major, so
    four consecutive groups load their twiddles as one vector)."""
    w = F.root_of_unity(n)
    if inverse:
        w = F.inv(w)
    powers = F.np_powers(w, n)
    tables = []
    ns = 1
    for radix in radices:
        m = np.arange(ns, dtype=np.int64)[None, :]
        r = np.arange(1, radix, dtype=np.int64)[:, None]
        idx = (n // (ns * radix)) * r * m
        tables.append(np.ascontiguousarray(powers[idx].reshape(-1)) if ns > 1 else np.ones(1, np.uint64))
        ns *= radix
    return tables


@dataclass
class ClNtt:
    """NTTs on one device queue. Device buffers in, device buffers out; the caller owns the buffers."""

    ctx: Any
    queue: Any
    program: Any
    max_radix: int = DEFAULT_MAX_RADIX
    vectorize: bool = True

    def _tw(self, n: int, inverse: bool):
        # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
        import pyopencl as cl
        def make():
            radices = plan(n, self.max_radix)
            bufs = [
                cl.Buffer(self.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=t)
                for t in twiddle_tables(n, inverse, radices)
            ]
            return radices, bufs

        return tables.table(self.ctx, ("twiddles", n, inverse, self.max_radix), make)

    def transform(self, src, tmp, n: int, cols: int, inverse: bool):
        """Transform `cols` contiguous length-n rows of src; returns whichever of (src, tmp) holds the
        result (both are clobbered)."""
        radices, tables = self._tw(n, inverse)
        if n == 1:
            return src
        scale = np.uint64(F.inv(n) if inverse else 1)
        ns = 1
        a, b = src, tmp
        for i, radix in enumerate(radices):
            groups = n // radix
            vec = self.vectorize and groups >= 4
            k = self.program.kernel(f"ntt{'4' if vec else ''}_{'i' if inverse else 'f'}{radix}")
            items = groups // 4 if vec else groups
            k(self.queue, (launch_size(items), cols), (LOCAL, 1), a, b, tables[i], np.uint32(n), np.uint32(ns), scale,
              np.int32(1 if (inverse and i == 0) else 0))
            ns *= radix
            a, b = b, a
        return a

    def coset_table(self, n: int, shift: int):
        # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
        import pyopencl as cl
        return tables.table(self.ctx, ("coset", n, shift), lambda: cl.Buffer(
            self.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=NT.coset_powers(n, shift)))
