"""The composition polynomial H = sum_j alpha_j C_j / Z_j: evaluated over the LDE domain by the prover (numpy
reference, or an OpenCL kernel generated from the AIR's constraint code) and at the out-of-domain point by the
verifier.

Transition constraints divide by Z_T(x) = (x^n - 1)/(x - g^(n-1)); x^n takes only `blowup` values on the LDE
coset, so 1/Z_T needs no per-point inversion. Boundary constraints on the same row share one division, and
all rows' inverses come from a single batch inversion of prod_r (x - g^r).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

from . import field as F
from . import ntt as NT
from .air import Air, CodegenOps, ExtOps, NpOps

SHIFT = F.GENERATOR


def boundary_rows(air: Air, n: int) -> list[int]:
    """Distinct boundary rows, in first-use order."""
    rows: list[int] = []
    for b in air.boundaries:
        if b.row % n not in rows:
            rows.append(b.row % n)
    return rows


def xn_minus_one_inverses(n: int, blowup: int) -> list[int]:
    """1/(x^n - 1) for the `blowup` values x^n takes on the coset (position i uses entry i mod blowup)."""
    h = F.root_of_unity(n * blowup)
    hn, sn = pow(h, n, F.P), pow(SHIFT, n, F.P)
    return F.batch_inv([(sn * pow(hn, t, F.P) - 1) % F.P for t in range(blowup)])


def composition_np(air: Air, public: dict[str, int], lde: np.ndarray, n: int, blowup: int,
                   alphas: list[F.Ext], batch_inv: Callable[[np.ndarray], np.ndarray] = F.batch_inv_np) -> np.ndarray:
    """H on the LDE domain as (2, n * blowup) extension values."""
    m = n * blowup
    g = F.root_of_unity(n)
    x = NT.domain(m, SHIFT)
    cur = [lde[c] for c in range(air.width)]
    nxt = [np.roll(lde[c], -blowup) for c in range(air.width)]
    terms = air.transition(cur, nxt, public, NpOps)
    t0 = np.zeros(m, dtype=np.uint64)
    t1 = np.zeros(m, dtype=np.uint64)
    for alpha, c in zip(alphas, terms, strict=False):
        t0 = F.np_add(t0, F.np_mul(c, np.uint64(alpha[0])))
        t1 = F.np_add(t1, F.np_mul(c, np.uint64(alpha[1])))
    inv_xn1 = np.tile(np.array(xn_minus_one_inverses(n, blowup), np.uint64), n)
    zt_inv = F.np_mul(F.np_sub(x, np.uint64(pow(g, n - 1, F.P))), inv_xn1)
    acc0, acc1 = F.np_mul(t0, zt_inv), F.np_mul(t1, zt_inv)
    rows = boundary_rows(air, n)
    nums = {r: [np.zeros(m, np.uint64), np.zeros(m, np.uint64)] for r in rows}
    for alpha, b in zip(alphas[len(terms) :], air.boundaries, strict=True):
        d = F.np_sub(lde[b.column], np.uint64(public[b.name]))
        num = nums[b.row % n]
        num[0] = F.np_add(num[0], F.np_mul(d, np.uint64(alpha[0])))
        num[1] = F.np_add(num[1], F.np_mul(d, np.uint64(alpha[1])))
    factors = {r: F.np_sub(x, np.uint64(pow(g, r, F.P))) for r in rows}
    prod = factors[rows[0]]
    for r in rows[1:]:
        prod = F.np_mul(prod, factors[r])
    inv_prod = batch_inv(prod)
    for r in rows:
        inv = inv_prod
        for other in rows:
            if other != r:
                inv = F.np_mul(inv, factors[other])
        acc0 = F.np_add(acc0, F.np_mul(nums[r][0], inv))
        acc1 = F.np_add(acc1, F.np_mul(nums[r][1], inv))
    return np.stack((acc0, acc1))


def composition_at(air: Air, public: dict[str, int], n: int, alphas: list[F.Ext], t_z, t_gz, z) -> F.Ext:
    """H(z) recomputed by the verifier from the trace's out-of-domain values."""
    g = F.root_of_unity(n)
    zt_inv = F.emul(F.esub(z, (pow(g, n - 1, F.P), 0)), F.einv(F.esub(F.epow(z, n), (1, 0))))
    acc = (0, 0)
    terms = air.transition(list(t_z), list(t_gz), public, ExtOps)
    for alpha, c in zip(alphas, terms, strict=False):
        acc = F.eadd(acc, F.emul(alpha, F.emul(c, zt_inv)))
    for alpha, b in zip(alphas[len(terms) :], air.boundaries, strict=True):
        row = pow(g, b.row % n, F.P)
        q = F.emul(F.esub(t_z[b.column], (public[b.name], 0)), F.einv(F.esub(z, (row, 0))))
        acc = F.eadd(acc, F.emul(alpha, q))
    return acc


@cache
def kernel_source(air: Air) -> str:
    """`composition_<air>`: one point per work-item, the same arithmetic as composition_np. Row indices of
    the boundary rows are symbolic (0 or -1), so the kernel serves every trace length."""
    sym_rows: list[int] = []
    for b in air.boundaries:
        if b.row not in sym_rows:
            sym_rows.append(b.row)
    pub = {name: f"pub[{k}]" for k, name in enumerate(air.public_names)}
    cur = [f"cur{c}" for c in range(air.width)]
    nxt = [f"nxt{c}" for c in range(air.width)]
    exprs = air.transition(cur, nxt, pub, CodegenOps)
    lines = [f"ulong cur{c} = lde[(size_t){c} * m + i], nxt{c} = lde[(size_t){c} * m + j];" for c in range(air.width)]
    lines.append("ulong2 t = (ulong2)(0UL, 0UL);")
    for k, e in enumerate(exprs):
        lines.append(f"t = gle_add(t, gle_scale((ulong2)(alpha[{2 * k}], alpha[{2 * k + 1}]), {e}));")
    lines.append("ulong2 acc = gle_scale(t, gl_mul(gl_sub(x, g_last), xn_inv[i & (blowup - 1u)]));")
    lines += [f"ulong f{r} = gl_sub(x, rows[{r}]);" for r in range(len(sym_rows))]
    for r, row in enumerate(sym_rows):
        lines.append("{ ulong2 num = (ulong2)(0UL, 0UL);")
        for k, b in enumerate(air.boundaries):
            if b.row == row:
                a = len(exprs) + k
                lines.append(f"num = gle_add(num, gle_scale((ulong2)(alpha[{2 * a}], alpha[{2 * a + 1}]), "
                             f"gl_sub(lde[(size_t){b.column} * m + i], {pub[b.name]})));")
        inv = "inv_prod[i]"
        for o in range(len(sym_rows)):
            if o != r:
                inv = f"gl_mul({inv}, f{o})"
        lines.append(f"acc = gle_add(acc, gle_scale(num, {inv})); }}")
    body = "\n    ".join(lines)
    return f"""
__kernel void composition_{air.name}(__global const ulong *lde, const uint m, const uint blowup,
        __global const ulong *pub, __global const ulong *alpha, __global const ulong *xs,
        __global const ulong *xn_inv, const ulong g_last, __global const ulong *rows,
        __global const ulong *inv_prod, __global ulong *out) {{
    uint i = get_global_id(0);
    if (i >= m) return;
    uint j = (i + blowup) & (m - 1u);
    ulong x = xs[i];
    {body}
    out[i] = acc.x;
    out[m + i] = acc.y;
}}

__kernel void boundary_prod_{air.name}(__global const ulong *xs, __global const ulong *rows, const uint m,
                                       __global ulong *out) {{
    uint i = get_global_id(0);
    if (i >= m) return;
    ulong p = 1UL;
    for (uint r = 0; r < {len(sym_rows)}u; r++) p = gl_mul(p, gl_sub(xs[i], rows[r]));
    out[i] = p;
}}
"""


def symbolic_rows(air: Air) -> list[int]:
    rows: list[int] = []
    for b in air.boundaries:
        if b.row not in rows:
            rows.append(b.row)
    return rows
