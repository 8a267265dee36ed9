"""Goldilocks arithmetic: the numpy reference path against Python ints, which are ground truth."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.zk import field as F

P = F.P
EDGE = [0, 1, 2, P - 1, P - 2, 2**32 - 1, 2**32, 2**32 + 1, 2**63, 2**64 - 2**32, F.EPSILON * 3 + 5]
elem = st.one_of(st.sampled_from(EDGE), st.integers(0, P - 1))
vec = st.lists(elem, min_size=1, max_size=40)


def test_constants():
    assert P == 2**64 - 2**32 + 1
    assert pow(F.GENERATOR, (P - 1) // 2, P) == P - 1  # 7 is a non-residue: X^2 - 7 irreducible
    assert 2**32 * 3 * 5 * 17 * 257 * 65537 == P - 1
    for q in (2, 3, 5, 17, 257, 65537):  # prime factors of p - 1 = 2^32 (2^32 - 1)
        assert (P - 1) % q == 0 and pow(F.GENERATOR, (P - 1) // q, P) != 1  # 7 generates F_p^*


@given(vec, vec)
@settings(max_examples=150, deadline=None)
def test_numpy_ops_match_python_ints(xs, ys):
    n = min(len(xs), len(ys))
    xs, ys = xs[:n], ys[:n]
    a, b = F.to_np(xs), F.to_np(ys)
    assert [int(v) for v in F.np_mul(a, b)] == [x * y % P for x, y in zip(xs, ys, strict=True)]
    assert [int(v) for v in F.np_add(a, b)] == [(x + y) % P for x, y in zip(xs, ys, strict=True)]
    assert [int(v) for v in F.np_sub(a, b)] == [(x - y) % P for x, y in zip(xs, ys, strict=True)]
    assert [int(v) for v in F.np_neg(a)] == [(-x) % P for x in xs]
    assert F.np_sum_int(a) == sum(xs) % P


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
@settings(max_examples=200, deadline=None)
def test_reduce128_any_128_bit_value(hi, lo):
    got = F.reduce128(np.array([hi], dtype=np.uint64), np.array([lo], dtype=np.uint64))
    assert int(got[0]) == (hi * 2**64 + lo) % P


@given(elem, st.integers(0, 2**70))
@settings(max_examples=100, deadline=None)
def test_pow_matches_python(x, e):
    assert int(F.np_pow(F.to_np([x]), e)[0]) == pow(x, e, P)
    assert F.pow_(x, e) == pow(x, e, P)


@given(st.lists(st.integers(1, P - 1), min_size=1, max_size=300))
@settings(max_examples=60, deadline=None)
def test_inverses(xs):
    inv_py = F.batch_inv(xs)
    assert all(x * y % P == 1 for x, y in zip(xs, inv_py, strict=True))
    assert [int(v) for v in F.batch_inv_np(F.to_np(xs), width=4)] == inv_py
    assert [int(v) for v in F.np_inv(F.to_np(xs))] == inv_py


def test_inverse_of_zero_raises():
    with pytest.raises(ZeroDivisionError):
        F.inv(0)
    with pytest.raises(ZeroDivisionError):
        F.batch_inv_np(F.to_np([3, 0, 5] * 100))


@pytest.mark.parametrize("log_n", [1, 2, 10, 20, 32])
def test_roots_of_unity(log_n):
    w = F.root_of_unity(1 << log_n)
    assert pow(w, 1 << log_n, P) == 1
    assert pow(w, 1 << (log_n - 1), P) == P - 1  # primitive
    with pytest.raises(ValueError):
        F.root_of_unity(3)


def test_powers_and_sum():
    w = F.root_of_unity(1 << 8)
    pw = F.np_powers(w, 1000, start=5)
    assert [int(v) for v in pw] == [5 * pow(w, i, P) % P for i in range(1000)]
    m = np.arange(12, dtype=np.uint64).reshape(3, 4) * np.uint64(P // 7)
    assert [int(v) for v in F.np_sum(m, axis=1)] == [sum(int(x) for x in row) % P for row in m]


@given(st.tuples(elem, elem), st.tuples(elem, elem))
@settings(max_examples=100, deadline=None)
def test_extension_field(a, b):
    prod = F.emul(a, b)
    # against polynomial multiplication mod X^2 - 7 written out longhand
    assert prod == ((a[0] * b[0] + 7 * a[1] * b[1]) % P, (a[0] * b[1] + a[1] * b[0]) % P)
    c0, c1 = F.np_emul(*(F.to_np([v]) for v in (a[0], a[1], b[0], b[1])))
    assert (int(c0[0]), int(c1[0])) == prod
    if a != (0, 0):
        assert F.emul(a, F.einv(a)) == (1, 0)
        i0, i1 = F.np_einv(F.to_np([a[0]]), F.to_np([a[1]]))
        assert (int(i0[0]), int(i1[0])) == F.einv(a)
    assert F.epow(a, 5) == F.emul(F.emul(F.emul(a, a), F.emul(a, a)), a)
