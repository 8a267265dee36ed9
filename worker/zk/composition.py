"""The composition polynomial H = sum_j alpha_j C_j / Z_T + sum_b alpha_b (T_b - v_b)/(x - g^row_b):
evaluated over the LDE domain by the prover (numpy reference, or an OpenCL kernel generated from the AIR's
constraint code) and at the out-of-domain point by the verifier.

Transition constraints hold on rows 0 .. last - 1 (last = the last computation row; after it come the
zero-knowledge random rows, if any): Z_T(x) = (x^n - 1) / E(x) with E(x) = prod_{r=last}^{n-1} (x - g^r).
x^n takes only `blowup` values on the LDE coset, so 1/(x^n - 1) needs no per-point inversion, and E is
evaluated on the coset by one NTT of its coefficients. Boundary constraints on the same row share one
division, and all rows' inverses come from a single batch inversion of prod_r (x - g^r).

Periodic columns (period P) are polynomials q(x^(n/P)); on the LDE coset they repeat every P * blowup points.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache

import numpy as np

from . import field as F
from . import ntt as NT
from .air import Air, CodegenOps, ExtOps, NpOps

SHIFT = F.GENERATOR


def group_rows(air: Air, public: dict[str, int], last: int, n: int) -> list[int]:
    return [r % n for r in air.rows(public, last)]


def xn_minus_one_inverses(n: int, blowup: int) -> list[int]:
    """1/(x^n - 1) for the `blowup` values x^n takes on the coset (position i uses entry i mod blowup)."""
    h = F.root_of_unity(n * blowup)
    hn, sn = pow(h, n, F.P), pow(SHIFT, n, F.P)
    return F.batch_inv([(sn * pow(hn, t, F.P) - 1) % F.P for t in range(blowup)])


@lru_cache(maxsize=16)
def excluded_coeffs(n: int, last: int) -> tuple[int, ...]:
    """Coefficients (low first) of E(x) = prod_{r=last}^{n-1} (x - g^r)."""
    g = F.root_of_unity(n)
    c = [1]
    for r in range(last, n):
        root = pow(g, r, F.P)
        nxt = [0] * (len(c) + 1)
        for i, v in enumerate(c):
            nxt[i + 1] = (nxt[i + 1] + v) % F.P
            nxt[i] = (nxt[i] - v * root) % F.P
        c = nxt
    return tuple(c)


def zt_inverse(n: int, blowup: int, last: int, lde: Callable = NT.lde) -> np.ndarray:
    """1/Z_T = E(x)/(x^n - 1) on the LDE coset; `lde` evaluates E there (a backend's, or numpy's)."""
    coeffs = np.zeros(n, dtype=np.uint64)
    e = excluded_coeffs(n, last)
    coeffs[: len(e)] = e
    ev = lde(coeffs, blowup, SHIFT)
    inv = np.tile(np.array(xn_minus_one_inverses(n, blowup), np.uint64), n)
    return F.np_mul(ev, inv)


@cache
def periodic_coeffs(air: Air) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in NT.intt(np.array(col, dtype=np.uint64))) for col in air.periodic)


@lru_cache(maxsize=8)
def periodic_tables(air: Air, n: int, blowup: int) -> np.ndarray:
    """(columns, P * blowup): the periodic columns on the LDE coset, one period (point i uses i mod P*blowup)."""
    if not air.periodic:
        return np.zeros((0, blowup), dtype=np.uint64)
    period = air.period
    coeffs = np.array(periodic_coeffs(air), dtype=np.uint64)
    out = NT.lde(coeffs, blowup, pow(SHIFT, n // period, F.P))
    out.setflags(write=False)
    return out


def periodic_at(air: Air, n: int, z: F.Ext) -> list[F.Ext]:
    if not air.periodic:
        return []
    zp = F.epow(z, n // air.period)
    out = []
    for coeffs in periodic_coeffs(air):
        acc = (0, 0)
        for c in reversed(coeffs):
            acc = F.eadd(F.emul(acc, zp), (c, 0))
        out.append(acc)
    return out


def composition_np(air: Air, public: dict[str, int], lde: np.ndarray, n: int, blowup: int, last: int,
                   alphas: list[F.Ext], batch_inv: Callable[[np.ndarray], np.ndarray] = F.batch_inv_np,
                   extend: Callable = NT.lde) -> np.ndarray:
    """H on the LDE domain as (2, n * blowup) extension values."""
    m = n * blowup
    g = F.root_of_unity(n)
    x = NT.domain(m, SHIFT)
    cur = [lde[c] for c in range(air.width)]
    nxt = [np.roll(lde[c], -blowup) for c in range(air.width)]
    tables = periodic_tables(air, n, blowup)
    per = [np.tile(t, m // t.size) for t in tables]
    terms = air.transition(cur, nxt, per, public, NpOps)
    t0 = np.zeros(m, dtype=np.uint64)
    t1 = np.zeros(m, dtype=np.uint64)
    for alpha, c in zip(alphas, terms, strict=False):
        t0 = F.np_add(t0, F.np_mul(c, np.uint64(alpha[0])))
        t1 = F.np_add(t1, F.np_mul(c, np.uint64(alpha[1])))
    zt_inv = zt_inverse(n, blowup, last, extend)
    acc0, acc1 = F.np_mul(t0, zt_inv), F.np_mul(t1, zt_inv)
    rows = group_rows(air, public, last, n)
    distinct = list(dict.fromkeys(rows))
    nums = {r: [np.zeros(m, np.uint64), np.zeros(m, np.uint64)] for r in distinct}
    for alpha, b, v in zip(alphas[len(terms) :], air.boundaries, air.boundary_values(public), strict=True):
        d = F.np_sub(lde[b.column], np.uint64(v))
        num = nums[rows[b.group]]
        num[0] = F.np_add(num[0], F.np_mul(d, np.uint64(alpha[0])))
        num[1] = F.np_add(num[1], F.np_mul(d, np.uint64(alpha[1])))
    factors = {r: F.np_sub(x, np.uint64(pow(g, r, F.P))) for r in distinct}
    prod = factors[distinct[0]]
    for r in distinct[1:]:
        prod = F.np_mul(prod, factors[r])
    inv_prod = batch_inv(prod)
    for r in distinct:
        inv = inv_prod
        for other in distinct:
            if other != r:
                inv = F.np_mul(inv, factors[other])
        acc0 = F.np_add(acc0, F.np_mul(nums[r][0], inv))
        acc1 = F.np_add(acc1, F.np_mul(nums[r][1], inv))
    return np.stack((acc0, acc1))


def composition_at(air: Air, public: dict[str, int], n: int, last: int, alphas: list[F.Ext], t_z, t_gz, z) -> F.Ext:
    """H(z) recomputed by the verifier from the trace's out-of-domain values."""
    g = F.root_of_unity(n)
    e_z = (1, 0)
    for r in range(last, n):
        e_z = F.emul(e_z, F.esub(z, (pow(g, r, F.P), 0)))
    zt_inv = F.emul(e_z, F.einv(F.esub(F.epow(z, n), (1, 0))))
    acc = (0, 0)
    terms = air.transition(list(t_z), list(t_gz), periodic_at(air, n, z), public, ExtOps)
    for alpha, c in zip(alphas, terms, strict=False):
        acc = F.eadd(acc, F.emul(alpha, F.emul(c, zt_inv)))
    rows = group_rows(air, public, last, n)
    for alpha, b, v in zip(alphas[len(terms) :], air.boundaries, air.boundary_values(public), strict=True):
        row = pow(g, rows[b.group], F.P)
        q = F.emul(F.esub(t_z[b.column], (v, 0)), F.einv(F.esub(z, (row, 0))))
        acc = F.eadd(acc, F.emul(alpha, q))
    return acc


@cache
def kernel_source(air: Air) -> str:
    """`composition_<air>`: one point per work-item, the same arithmetic as composition_np. Boundary rows,
    boundary values and public values are kernel arguments, so one kernel serves every statement."""
    groups = sorted({b.group for b in air.boundaries})
    pub = {name: f"pub[{k}]" for k, name in enumerate(air.public_names)}
    cur = [f"cur{c}" for c in range(air.width)]
    nxt = [f"nxt{c}" for c in range(air.width)]
    per = [f"per{k}" for k in range(len(air.periodic))]
    ops = CodegenOps()
    exprs = air.transition(cur, nxt, per, pub, ops)
    lines = [f"ulong cur{c} = lde[(size_t){c} * m + i], nxt{c} = lde[(size_t){c} * m + j];" for c in range(air.width)]
    lines += [f"ulong per{k} = per[(size_t){k} * pb + (i & (pb - 1u))];" for k in range(len(air.periodic))]
    lines += ops.lines
    lines.append("ulong2 t = (ulong2)(0UL, 0UL);")
    for k, e in enumerate(exprs):
        lines.append(f"t = gle_add(t, gle_scale((ulong2)(alpha[{2 * k}], alpha[{2 * k + 1}]), {e}));")
    lines.append("ulong2 acc = gle_scale(t, zt_inv[i]);")
    lines += [f"ulong f{r} = gl_sub(x, rows[{r}]);" for r in groups]
    for r in groups:
        lines.append("{ ulong2 num = (ulong2)(0UL, 0UL);")
        for k, b in enumerate(air.boundaries):
            if b.group == r:
                a = len(exprs) + k
                lines.append(f"num = gle_add(num, gle_scale((ulong2)(alpha[{2 * a}], alpha[{2 * a + 1}]), "
                             f"gl_sub(lde[(size_t){b.column} * m + i], bval[{k}])));")
        inv = "inv_prod[i]"
        for o in groups:
            if o != r:
                inv = f"gl_mul({inv}, f{o})"
        lines.append(f"acc = gle_add(acc, gle_scale(num, {inv})); }}")
    body = "\n    ".join(lines)
    return f"""
__kernel void composition_{air.name}(__global const ulong *lde, const uint m, const uint blowup,
        __global const ulong *pub, __global const ulong *alpha, __global const ulong *xs,
        __global const ulong *zt_inv, __global const ulong *per, const uint pb, __global const ulong *rows,
        __global const ulong *bval, __global const ulong *inv_prod, __global ulong *out) {{
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
    for (uint r = 0; r < {len(groups)}u; r++) p = gl_mul(p, gl_sub(xs[i], rows[r]));
    out[i] = p;
}}
"""
