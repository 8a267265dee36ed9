"""Goldilocks field p = 2^64 - 2^32 + 1 and its quadratic extension.

Two paths with identical results: Python ints (ground truth, used by the verifier for scalars) and vectorised
numpy uint64 (the reference path every kernel is checked against). The numpy multiply splits operands into
32-bit limbs and reduces the 128-bit product with 2^64 = 2^32 - 1 and 2^96 = -1 (mod p), so it never needs
a wider integer type. All functions take and return canonical values (< p).

The extension F_p[X]/(X^2 - 7) (7 generates F_p^*, so it is a non-residue) carries the verifier's random
challenges: a 64-bit field alone would cap soundness near 64 - log2(domain) bits.
"""

from __future__ import annotations

import numpy as np

P = 0xFFFF_FFFF_0000_0001
EPSILON = 0xFFFF_FFFF  # 2^64 mod p
GENERATOR = 7  # generates the whole multiplicative group
TWO_ADICITY = 32
EXT_W = 7  # ext field: X^2 = EXT_W

_P64 = np.uint64(P)
_EPS64 = np.uint64(EPSILON)
_M32 = np.uint64(0xFFFF_FFFF)
_S32 = np.uint64(32)

Ext = tuple[int, int]
U64 = np.ndarray | np.unsignedinteger  # a uint64 array or scalar

# ---------------------------------------------------------------- Python ints (ground truth)


def add(a: int, b: int) -> int:
    return (a + b) % P


def sub(a: int, b: int) -> int:
    return (a - b) % P


def neg(a: int) -> int:
    return (-a) % P


def mul(a: int, b: int) -> int:
    return (a * b) % P


def pow_(a: int, e: int) -> int:
    """a^e; negative e means a power of the inverse."""
    if e < 0:
        return pow(inv(a), -e, P)
    return pow(a, e, P)


def inv(a: int) -> int:
    if a % P == 0:
        raise ZeroDivisionError("inverse of zero in Goldilocks")
    return pow(a, P - 2, P)


def batch_inv(values: list[int]) -> list[int]:
    """Montgomery's trick: one inversion and 3(n-1) multiplications."""
    n = len(values)
    if n == 0:
        return []
    prefix = [1] * n
    acc = 1
    for i, v in enumerate(values):
        if v % P == 0:
            raise ZeroDivisionError("inverse of zero in Goldilocks")
        prefix[i] = acc
        acc = acc * v % P
    acc = inv(acc)
    out = [0] * n
    for i in range(n - 1, -1, -1):
        out[i] = acc * prefix[i] % P
        acc = acc * values[i] % P
    return out


def root_of_unity(n: int) -> int:
    """A primitive n-th root of unity, n a power of two <= 2^32: 7^((p-1)/n)."""
    if n <= 0 or n & (n - 1) or n > 1 << TWO_ADICITY:
        raise ValueError(f"root_of_unity: n={n} is not a power of two <= 2^32")
    return pow(GENERATOR, (P - 1) // n, P)


# ---------------------------------------------------------------- quadratic extension, Python ints


def ext(a: int, b: int = 0) -> Ext:
    return (a % P, b % P)


def eadd(a: Ext, b: Ext) -> Ext:
    return ((a[0] + b[0]) % P, (a[1] + b[1]) % P)


def esub(a: Ext, b: Ext) -> Ext:
    return ((a[0] - b[0]) % P, (a[1] - b[1]) % P)


def emul(a: Ext, b: Ext) -> Ext:
    return ((a[0] * b[0] + EXT_W * a[1] * b[1]) % P, (a[0] * b[1] + a[1] * b[0]) % P)


def escale(a: Ext, s: int) -> Ext:
    return (a[0] * s % P, a[1] * s % P)


def einv(a: Ext) -> Ext:
    norm = (a[0] * a[0] - EXT_W * a[1] * a[1]) % P
    ni = inv(norm)  # raises for a == 0; norm != 0 otherwise since X^2 - 7 is irreducible
    return (a[0] * ni % P, (-a[1]) * ni % P)


def epow(a: Ext, e: int) -> Ext:
    result: Ext = (1, 0)
    base = a
    while e:
        if e & 1:
            result = emul(result, base)
        base = emul(base, base)
        e >>= 1
    return result


# ---------------------------------------------------------------- numpy uint64 (reference path)


def to_np(values) -> np.ndarray:
    """Python ints -> canonical uint64 array (reduces mod p)."""
    return np.array([int(v) % P for v in values], dtype=np.uint64)


def canon(a: np.ndarray) -> np.ndarray:
    """Reduce arbitrary uint64 values into [0, p)."""
    a = np.asarray(a, dtype=np.uint64)
    return np.where(a >= _P64, a - _P64, a)


def np_add(a: U64, b: U64) -> np.ndarray:
    s = np.add(a, b, dtype=np.uint64)
    s += _EPS64 * (s < a)  # wrapped past 2^64: add back 2^64 mod p
    s -= _P64 * (s >= _P64)
    return s


def np_sub(a: U64, b: U64) -> np.ndarray:
    d = np.subtract(a, b, dtype=np.uint64)
    d -= _EPS64 * (np.asarray(a) < b)  # wrapped below 0: d = a - b + 2^64, want a - b + p
    return d


def np_neg(a: U64) -> np.ndarray:
    a = np.asarray(a, dtype=np.uint64)
    return (_P64 - a) * (a != 0)


def _reduce128_into(hi: np.ndarray, lo: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """hi * 2^64 + lo mod p in place (clobbers hi, s1, s2; result in lo)."""
    np.right_shift(hi, _S32, out=s1)  # hi_hi: 2^96 = -1
    hi &= _M32  # hi_lo: 2^64 = EPSILON
    np.less(lo, s1, out=s2, casting="unsafe")
    lo -= s1
    s2 *= _EPS64
    lo -= s2  # borrow: lo - hi_hi + 2^64 -> lo - hi_hi + p
    hi *= _EPS64
    lo += hi
    np.less(lo, hi, out=s2, casting="unsafe")
    s2 *= _EPS64
    lo += s2  # carry: + 2^64 -> + EPSILON
    np.greater_equal(lo, _P64, out=s2, casting="unsafe")
    s2 *= _P64
    lo -= s2
    return lo


def reduce128(hi: U64, lo: U64) -> np.ndarray:
    """hi * 2^64 + lo mod p, using 2^64 = 2^32 - 1 and 2^96 = -1."""
    hi = np.array(hi, dtype=np.uint64)
    lo = np.array(lo, dtype=np.uint64)
    hi, lo = np.broadcast_arrays(hi, lo)
    hi, lo = hi.copy(), lo.copy()
    return _reduce128_into(hi, lo, np.empty_like(lo), np.empty_like(lo))


def np_mul(a: U64, b: U64) -> np.ndarray:
    """Element-wise product mod p through 32-bit limbs (no 128-bit type needed); in-place temporaries
    because allocation dominates at these sizes."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    if a.ndim == 0 and b.ndim == 0:
        return np.asarray(int(a) * int(b) % P, dtype=np.uint64)
    a_lo, a_hi = a & _M32, a >> _S32
    b_lo, b_hi = b & _M32, b >> _S32
    ll = a_lo * b_lo
    mid = a_lo * b_hi
    tmp = ll >> _S32
    mid += tmp  # < 2^64
    mid2 = a_hi * b_lo
    np.bitwise_and(mid, _M32, out=tmp)
    mid2 += tmp  # < 2^64
    hi = a_hi * b_hi
    np.right_shift(mid, _S32, out=tmp)
    hi += tmp
    np.right_shift(mid2, _S32, out=tmp)
    hi += tmp
    mid2 <<= _S32
    ll &= _M32
    mid2 |= ll  # lo 64 bits
    return _reduce128_into(hi, mid2, mid, tmp)


def np_square(a: np.ndarray) -> np.ndarray:
    return np_mul(a, a)


def np_pow(a: np.ndarray, e: int) -> np.ndarray:
    """Element-wise a^e for a fixed exponent e >= 0 (square-and-multiply)."""
    a = np.asarray(a, dtype=np.uint64)
    result = np.ones_like(a)
    base = a
    while e:
        if e & 1:
            result = np_mul(result, base)
        e >>= 1
        if e:
            base = np_mul(base, base)
    return result


def np_inv(a: np.ndarray) -> np.ndarray:
    """Element-wise inverse via a^(p-2); raises on any zero. Use batch_inv_np for long vectors."""
    a = np.asarray(a, dtype=np.uint64)
    if np.any(a == 0):
        raise ZeroDivisionError("inverse of zero in Goldilocks")
    return np_pow(a, P - 2)


def np_powers(base: int, n: int, start: int = 1) -> np.ndarray:
    """[start * base^i for i < n] by doubling: log2(n) vector multiplications."""
    out = np.empty(max(n, 1), dtype=np.uint64)
    out[0] = start % P
    filled = 1
    step = base % P
    while filled < n:
        take = min(filled, n - filled)
        out[filled : filled + take] = np_mul(out[:take], np.uint64(step))
        filled += take
        step = step * step % P
    return out[:n]


def batch_inv_np(a: np.ndarray, width: int = 64) -> np.ndarray:
    """Vectorised Montgomery inversion: the vector is cut into `width` columns, prefix products run across
    columns (each step vectorised over rows) and only the row totals pay a full a^(p-2)."""
    a = np.asarray(a, dtype=np.uint64)
    flat = a.reshape(-1)
    n = flat.size
    if n == 0:
        return a.copy()
    if np.any(flat == 0):
        raise ZeroDivisionError("inverse of zero in Goldilocks")
    if n < 4 * width:
        return np_inv(a)
    rows = -(-n // width)
    padded = np.ones(rows * width, dtype=np.uint64)
    padded[:n] = flat
    m = padded.reshape(rows, width)
    prefix = np.empty_like(m)
    acc = np.ones(rows, dtype=np.uint64)
    for j in range(width):
        prefix[:, j] = acc
        acc = np_mul(acc, m[:, j])
    acc = np_inv(acc)
    out = np.empty_like(m)
    for j in range(width - 1, -1, -1):
        out[:, j] = np_mul(acc, prefix[:, j])
        acc = np_mul(acc, m[:, j])
    return out.reshape(-1)[:n].reshape(a.shape)


def np_sum(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sum mod p along an axis without overflow: limbs summed separately (fine below 2^32 terms)."""
    a = np.asarray(a, dtype=np.uint64)
    lo = (a & _M32).sum(axis=axis, dtype=np.uint64)
    hi = (a >> _S32).sum(axis=axis, dtype=np.uint64)
    # value = lo + hi * 2^32 with lo, hi < 2^64: split hi again
    hh = hi >> _S32
    hl = hi & _M32
    return np_add(lo % _P64, reduce128(hh, hl << _S32))


def np_sum_int(a: np.ndarray) -> int:
    """Sum of all entries mod p as a Python int."""
    a = np.asarray(a, dtype=np.uint64).reshape(-1)
    lo = int((a & _M32).sum(dtype=np.uint64))
    hi = int((a >> _S32).sum(dtype=np.uint64))
    return (lo + (hi << 32)) % P


# ---------------------------------------------------------------- extension field, numpy: arrays (..., 2)


def np_emul(a0: U64, a1: U64, b0: U64, b1: U64) -> tuple[np.ndarray, np.ndarray]:
    """(a0 + a1 X)(b0 + b1 X) with X^2 = 7, Karatsuba-free (4 base multiplications)."""
    c0 = np_add(np_mul(a0, b0), np_mul(np_mul(a1, b1), np.uint64(EXT_W)))
    c1 = np_add(np_mul(a0, b1), np_mul(a1, b0))
    return c0, c1


def np_escale(a0: U64, a1: U64, s: U64) -> tuple[np.ndarray, np.ndarray]:
    return np_mul(a0, s), np_mul(a1, s)


def np_einv(a0: np.ndarray, a1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1/(a0 + a1 X) = (a0 - a1 X) / (a0^2 - 7 a1^2); the norm is inverted in a batch."""
    norm = np_sub(np_mul(a0, a0), np_mul(np_mul(a1, a1), np.uint64(EXT_W)))
    ni = batch_inv_np(norm)
    return np_mul(a0, ni), np_neg(np_mul(a1, ni))
