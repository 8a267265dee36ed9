"""Poseidon (width 12, x^7, 4+22+4 rounds): the four reference vectors on every path, and the batched paths
against the Python-int permutation on random states."""

import numpy as np
import pytest

from worker.zk import field as F
from worker.zk import poseidon as PS

VECTORS = PS.params().test_vectors


def test_parameters_shape():
    prm = PS.params()
    assert (prm.width, prm.alpha, prm.full_rounds_half, prm.partial_rounds) == (12, 7, 4, 22)
    assert len(prm.round_constants) == 360 and len(VECTORS) == 4


@pytest.mark.parametrize("idx", range(4))
def test_vectors_python(idx):
    inp, out = VECTORS[idx]
    assert tuple(PS.permute(inp)) == out


def test_vectors_numpy():
    states = np.array([v[0] for v in VECTORS], dtype=np.uint64).T
    got = PS.permute_np(states)
    assert [tuple(int(x) for x in col) for col in got.T] == [v[1] for v in VECTORS]


def test_numpy_matches_python_on_random_states():
    rng = np.random.default_rng(7)
    states = rng.integers(0, F.P, (12, 9), dtype=np.uint64)
    states[:, 0] = F.P - 1  # the top of the range exercises every carry path
    got = PS.permute_np(states)
    for j in range(states.shape[1]):
        assert [int(x) for x in got[:, j]] == PS.permute([int(x) for x in states[:, j]])


def test_a_wrong_constant_is_caught():
    """The vectors really pin the constants: perturbing one round constant breaks them."""
    prm = PS.params()
    inp, out = VECTORS[1]
    rc = list(prm.round_constants)
    rc[200] ^= 1
    p = F.P
    s = list(inp)
    for r in range(prm.rounds):
        s = [(x + rc[12 * r + i]) % p for i, x in enumerate(s)]
        full = r < 4 or r >= 26
        s = [pow(x, 7, p) if (full or i == 0) else x for i, x in enumerate(s)]
        s = [sum(m * x for m, x in zip(row, s, strict=True)) % p for row in prm.mds_matrix()]
    assert tuple(s) != out


@pytest.mark.parametrize("length", [0, 1, 4, 8, 9, 16, 20])
def test_sponge_numpy_matches_python(length):
    rng = np.random.default_rng(length)
    rows = rng.integers(0, F.P, (5, length), dtype=np.uint64)
    got = PS.hash_rows_np(rows)
    for i in range(5):
        assert tuple(int(x) for x in got[i]) == PS.hash_elements([int(x) for x in rows[i]])


def test_sponge_is_length_separated():
    assert PS.hash_elements([0]) != PS.hash_elements([0, 0]) != PS.hash_elements([])


def test_compress_numpy_matches_python():
    rng = np.random.default_rng(3)
    left = rng.integers(0, F.P, (6, 4), dtype=np.uint64)
    right = rng.integers(0, F.P, (6, 4), dtype=np.uint64)
    got = PS.compress_np(left, right)
    for i in range(6):
        want = PS.compress(tuple(int(x) for x in left[i]), tuple(int(x) for x in right[i]))
        assert tuple(int(x) for x in got[i]) == want


def test_numpy_large_and_small_batches_agree():
    """Batches above the small-batch threshold take the all-numpy S-box path."""
    rng = np.random.default_rng(11)
    states = rng.integers(0, F.P, (12, 3 * PS._SMALL_BATCH), dtype=np.uint64)
    big = PS.permute_np(states)
    for j in (0, 100, 3 * PS._SMALL_BATCH - 1):
        assert [int(x) for x in big[:, j]] == PS.permute([int(x) for x in states[:, j]])
        assert np.array_equal(PS.permute_np(states[:, j : j + 1])[:, 0], big[:, j])


def test_hash_rows_many_matches_per_block():
    rng = np.random.default_rng(12)
    blocks = [rng.integers(0, F.P, (n, length), dtype=np.uint64) for n, length in ((3, 4), (0, 8), (5, 16), (2, 20))]
    got = PS.hash_rows_many(blocks)
    for b, g in zip(blocks, got, strict=True):
        assert g.shape == (b.shape[0], 4) and np.array_equal(g, PS.hash_rows_np(b) if b.shape[0] else g)
