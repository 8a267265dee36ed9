"""FRI folding and the DEEP composition: numpy reference paths and the verifier's scalar versions.

Folding (binary, by a challenge beta): f'(x^2) = (f(x) + f(-x))/2 + beta * (f(x) - f(-x))/(2x). On a domain
shift * <h> of size n, x = shift*h^i and -x = shift*h^(i + n/2); the folded domain is shift^2 * <h^2>.
An arity-4 FRI step is two binary folds with beta then beta^2, which combines the four parts of f with
distinct powers 1, beta, beta^2, beta^3.

Extension values are (2, n) uint64 arrays: row 0 the constant part, row 1 the X part.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import field as F
from . import ntt as NT

INV2 = F.inv(2)


@lru_cache(maxsize=32)
def inv_two_x(n: int, shift: int) -> np.ndarray:
    """1/(2x) for the first half of the domain shift * <w_n> (read-only, cached)."""
    h = F.root_of_unity(n)
    t = F.np_powers(F.inv(h), n // 2, start=F.inv(2 * shift % F.P))
    t.setflags(write=False)
    return t


def fold_np(values: np.ndarray, beta: F.Ext, shift: int) -> np.ndarray:
    """One binary fold of ext values (2, n) on shift * <w_n> -> (2, n/2) on shift^2 * <w_{n/2}>."""
    n = values.shape[1]
    half = n // 2
    lo, hi = values[:, :half], values[:, half:]
    inv2x = inv_two_x(n, shift)
    e0 = F.np_mul(F.np_add(lo[0], hi[0]), np.uint64(INV2))
    e1 = F.np_mul(F.np_add(lo[1], hi[1]), np.uint64(INV2))
    d0 = F.np_mul(F.np_sub(lo[0], hi[0]), inv2x)
    d1 = F.np_mul(F.np_sub(lo[1], hi[1]), inv2x)
    b0, b1 = F.np_emul(d0, d1, np.uint64(beta[0]), np.uint64(beta[1]))
    return np.stack((F.np_add(e0, b0), F.np_add(e1, b1)))


def fold4_np(values: np.ndarray, beta: F.Ext, shift: int) -> np.ndarray:
    """Arity-4 step: (2, n) on shift*<w_n> -> (2, n/4) on shift^4*<w_{n/4}>."""
    once = fold_np(values, beta, shift)
    return fold_np(once, F.emul(beta, beta), shift * shift % F.P)


def fold4_point(vals: list[F.Ext], x: int, quarter_root: int, beta: F.Ext) -> F.Ext:
    """Verifier's arity-4 fold of one coset: vals at x * r^t (t = 0..3, r = quarter_root, a primitive 4th
    root of unity) -> the folded value at x^4."""
    inv2 = INV2
    g = []
    for t in (0, 1):
        a, b = vals[t], vals[t + 2]
        xt = x * pow(quarter_root, t, F.P) % F.P
        inv2x = F.inv(2 * xt % F.P)
        even = F.escale(F.eadd(a, b), inv2)
        odd = F.escale(F.esub(a, b), inv2x)
        g.append(F.eadd(even, F.emul(beta, odd)))
    y = x * x % F.P
    beta2 = F.emul(beta, beta)
    even = F.escale(F.eadd(g[0], g[1]), inv2)
    odd = F.escale(F.esub(g[0], g[1]), F.inv(2 * y % F.P))
    return F.eadd(even, F.emul(beta2, odd))


@dataclass(frozen=True)
class DeepCoeffs:
    """DEEP composition F(x) = (sum_c a_c T_c(x) + sum_j e_j H_j(x) - A)/(x - z) + (sum_c b_c T_c(x) - B)/(x - gz)
    over trace columns T_c and composition columns H_j (base-field columns; an ext column is two)."""

    a_trace: tuple[F.Ext, ...]
    b_trace: tuple[F.Ext, ...]
    e_comp: tuple[F.Ext, ...]
    const_z: F.Ext
    const_gz: F.Ext
    z: F.Ext
    gz: F.Ext


def deep_np(trace: np.ndarray, comp: np.ndarray, k: DeepCoeffs, shift: int) -> np.ndarray:
    """DEEP composition on the LDE domain shift * <w_n>: trace (w, n), comp (cc, n) -> (2, n)."""
    n = trace.shape[1]
    x = NT.domain(n, shift)
    out = np.zeros((2, n), dtype=np.uint64)
    terms_z = list(zip(k.a_trace, trace, strict=True)) + list(zip(k.e_comp, comp, strict=True))
    terms_gz = list(zip(k.b_trace, trace, strict=True))
    for terms, const, point in ((terms_z, k.const_z, k.z), (terms_gz, k.const_gz, k.gz)):
        num0 = np.full(n, (-const[0]) % F.P, dtype=np.uint64)
        num1 = np.full(n, (-const[1]) % F.P, dtype=np.uint64)
        for a, col in terms:
            num0 = F.np_add(num0, F.np_mul(col, np.uint64(a[0])))
            num1 = F.np_add(num1, F.np_mul(col, np.uint64(a[1])))
        d0 = F.np_sub(x, np.uint64(point[0]))
        d1 = np.full(n, (-point[1]) % F.P, dtype=np.uint64)
        i0, i1 = F.np_einv(d0, d1)
        q0, q1 = F.np_emul(num0, num1, i0, i1)
        out[0] = F.np_add(out[0], q0)
        out[1] = F.np_add(out[1], q1)
    return out


def deep_point(trace_vals: list[int], comp_vals: list[int], x: int, k: DeepCoeffs) -> F.Ext:
    """The verifier's DEEP composition at one point x from the opened column values."""
    num_z = F.esub((0, 0), k.const_z)
    for v, a in zip(trace_vals, k.a_trace, strict=True):
        num_z = F.eadd(num_z, F.escale(a, v))
    for v, e in zip(comp_vals, k.e_comp, strict=True):
        num_z = F.eadd(num_z, F.escale(e, v))
    num_gz = F.esub((0, 0), k.const_gz)
    for v, b in zip(trace_vals, k.b_trace, strict=True):
        num_gz = F.eadd(num_gz, F.escale(b, v))
    return F.eadd(F.emul(num_z, F.einv(F.esub((x, 0), k.z))), F.emul(num_gz, F.einv(F.esub((x, 0), k.gz))))
