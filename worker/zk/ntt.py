"""Number-theoretic transforms over Goldilocks, vectorised numpy (the reference path for the OpenCL NTT).

Convention: ntt(a)[k] = sum_j a[j] * w^(jk) with w = root_of_unity(n): coefficients in, evaluations at
w^0, w^1, ... out, both in natural order. Transforms act on the last axis, so a (cols, n) array transforms
every column at once. Coset variants evaluate on shift * <w> (the low-degree extension domain is a coset so
that it never meets the trace domain, where the zerofiers vanish).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import field as F


def _check_size(n: int) -> int:
    if n < 1 or n & (n - 1) or n > 1 << F.TWO_ADICITY:
        raise ValueError(f"NTT size {n} is not a power of two <= 2^32")
    return n.bit_length() - 1


@lru_cache(maxsize=16)
def _bitrev(n: int) -> np.ndarray:
    bits = _check_size(n)
    idx = np.arange(n, dtype=np.int64)
    rev = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev


@lru_cache(maxsize=16)
def _half_twiddles(n: int, inverse: bool) -> np.ndarray:
    w = F.root_of_unity(n)
    if inverse:
        w = F.inv(w)
    t = F.np_powers(w, max(n // 2, 1))
    t.setflags(write=False)
    return t


@lru_cache(maxsize=16)
def coset_powers(n: int, shift: int) -> np.ndarray:
    """[shift^i for i < n] (cached; read-only)."""
    t = F.np_powers(shift, n)
    t.setflags(write=False)
    return t


@lru_cache(maxsize=8)
def domain(n: int, shift: int) -> np.ndarray:
    """The points shift * w_n^i for i < n (cached; read-only)."""
    t = F.np_powers(F.root_of_unity(n), n, start=shift)
    t.setflags(write=False)
    return t


def _transform(a: np.ndarray, inverse: bool) -> np.ndarray:
    a = np.asarray(a, dtype=np.uint64)
    n = a.shape[-1]
    _check_size(n)
    x = a[..., _bitrev(n)]
    lead = x.shape[:-1]
    tw = _half_twiddles(n, inverse)
    m = 1
    while m < n:  # radix-2 decimation in time, every butterfly of a stage in one vector operation
        x = x.reshape(*lead, n // (2 * m), 2, m)
        u = x[..., 0, :]
        v = F.np_mul(x[..., 1, :], tw[:: n // (2 * m)][:m])
        x = np.stack((F.np_add(u, v), F.np_sub(u, v)), axis=-2)
        m *= 2
    x = x.reshape(*lead, n)
    if inverse:
        x = F.np_mul(x, np.uint64(F.inv(n)))
    return x


def ntt(a: np.ndarray) -> np.ndarray:
    """Evaluations of the polynomial with coefficients a at the n-th roots of unity."""
    return _transform(a, inverse=False)


def intt(a: np.ndarray) -> np.ndarray:
    """Coefficients of the polynomial taking values a at the n-th roots of unity."""
    return _transform(a, inverse=True)


def coset_ntt(coeffs: np.ndarray, shift: int) -> np.ndarray:
    """Evaluations at shift * w^i."""
    n = np.shape(coeffs)[-1]
    return ntt(F.np_mul(coeffs, coset_powers(n, shift)))


def coset_intt(values: np.ndarray, shift: int) -> np.ndarray:
    """Coefficients of the polynomial taking values at shift * w^i."""
    n = np.shape(values)[-1]
    return F.np_mul(intt(values), coset_powers(n, F.inv(shift)))


def lde(coeffs: np.ndarray, blowup: int, shift: int = F.GENERATOR) -> np.ndarray:
    """Low-degree extension: evaluate degree < n polynomials on the coset shift * <w_{n*blowup}>."""
    coeffs = np.asarray(coeffs, dtype=np.uint64)
    n = coeffs.shape[-1]
    padded = np.zeros((*coeffs.shape[:-1], n * blowup), dtype=np.uint64)
    padded[..., :n] = coeffs
    return coset_ntt(padded, shift)


def naive_dft(coeffs: list[int], shift: int = 1, inverse: bool = False) -> list[int]:
    """O(n^2) Python-int ground truth for small n."""
    n = len(coeffs)
    w = F.root_of_unity(n)
    if inverse:
        w = F.inv(w)
    out = []
    for k in range(n):
        x = shift * pow(w, k, F.P) % F.P
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % F.P
        out.append(acc)
    if inverse:
        ninv = F.inv(n)
        out = [v * ninv % F.P for v in out]
    return out
