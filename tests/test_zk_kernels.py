"""Each kernel against its reference: numpy against Python-int ground truth, OpenCL against numpy, on random
inputs of several sizes."""

import numpy as np
import pytest

from worker.zk import field as F
from worker.zk import fri_math as FM
from worker.zk import gpu
from worker.zk import merkle as MK
from worker.zk import ntt as NT
from worker.zk import poseidon as PS
from worker.zk.backend import Backend

NP = Backend()


@pytest.fixture(scope="module")
def cl_backend():
    pair = gpu.default_queue()
    if pair is None:
        pytest.skip("no OpenCL device (install pocl-binary-distribution)")
    from worker.zk.clbackend import OpenCLBackend

    return OpenCLBackend(*pair)


def rand(shape, seed):
    return np.random.default_rng(seed).integers(0, F.P, shape, dtype=np.uint64)


def ints(a):
    return [int(v) for v in np.asarray(a).reshape(-1)]


# ---------------------------------------------------------------- numpy reference vs Python ints


@pytest.mark.parametrize("n", [1, 2, 4, 8, 32, 64])
def test_ntt_numpy_vs_naive_dft(n):
    a = rand(n, n)
    assert ints(NT.ntt(a)) == NT.naive_dft(ints(a))
    assert ints(NT.intt(a)) == NT.naive_dft(ints(a), inverse=True)
    assert ints(NT.coset_ntt(a, 7)) == NT.naive_dft(ints(a), shift=7)


def test_lde_evaluates_the_same_polynomial_on_the_coset():
    n, blowup = 16, 4
    coeffs = rand(n, 5)
    ext = NT.lde(coeffs, blowup, 7)
    h = F.root_of_unity(n * blowup)
    for i in (0, 1, 17, 63):
        x = 7 * pow(h, i, F.P) % F.P
        assert int(ext[i]) == sum(int(c) * pow(x, j, F.P) for j, c in enumerate(coeffs)) % F.P
    assert ints(NT.coset_intt(ext, 7)) == ints(coeffs) + [0] * (n * (blowup - 1))


def test_fold4_matches_pointwise_and_halves_degree():
    n, deg = 64, 16
    coeffs = np.zeros((2, n), dtype=np.uint64)
    coeffs[:, :deg] = rand((2, deg), 9)
    values = np.stack([NT.coset_ntt(coeffs[0], 7), NT.coset_ntt(coeffs[1], 7)])
    beta = (12345, 678)
    folded = FM.fold4_np(values, beta, 7)
    # the folded values are a polynomial of degree < deg/4 on the domain 7^4 * <w_{n/4}>
    back = NT.coset_intt(folded, pow(7, 4, F.P))
    assert not back[:, deg // 4 :].any()
    h = F.root_of_unity(n)
    r = pow(h, n // 4, F.P)
    for j in (0, 5, 15):
        vals = [(int(values[0, j + t * n // 4]), int(values[1, j + t * n // 4])) for t in range(4)]
        x = 7 * pow(h, j, F.P) % F.P
        assert FM.fold4_point(vals, x, r, beta) == (int(folded[0, j]), int(folded[1, j]))


def test_deep_numpy_matches_pointwise():
    n = 32
    trace, comp = rand((2, n), 1), rand((3, n), 2)
    k = FM.DeepCoeffs(a_trace=((1, 2), (3, 4)), b_trace=((5, 6), (7, 8)), e_comp=((9, 1), (2, 3), (4, 5)),
                      const_z=(6, 7), const_gz=(8, 9), z=(10, 11), gz=(12, 13))
    got = FM.deep_np(trace, comp, k, 7)
    h = F.root_of_unity(n)
    for i in (0, 3, 31):
        x = 7 * pow(h, i, F.P) % F.P
        want = FM.deep_point(ints(trace[:, i]), ints(comp[:, i]), x, k)
        assert (int(got[0, i]), int(got[1, i])) == want


def test_merkle_multiproof_and_tampering():
    cols = rand((3, 64), 4)
    tree = NP.commit(cols)
    assert tree.depth == 4 and tree.leaves.shape == (16, 12)
    # the root is the documented BLAKE2s tree, recomputed here from hashlib alone
    import hashlib

    level = [hashlib.blake2s(np.asarray(r, "<u8").tobytes(), person=b"gmzkleaf").digest() for r in tree.leaves]
    while len(level) > 1:
        level = [hashlib.blake2s(level[i] + level[i + 1], person=b"gmzknode").digest() for i in range(0, len(level), 2)]
    assert level[0] == tree.root
    for idx in ([0], [3, 9], [0, 1, 2, 3], [5, 6, 7, 15], list(range(16))):
        nodes = tree.multiproof(idx)
        assert len(nodes) == 32 * MK.multiproof_size(idx, tree.depth)
        digests = [MK.hash_leaf(tree.leaves[j]) for j in idx]
        assert MK.verify_multiproof(tree.root, tree.depth, idx, digests, nodes)
        bad = bytearray(nodes) if nodes else None
        if bad:
            bad[5] ^= 1  # one bit of one sibling
            assert not MK.verify_multiproof(tree.root, tree.depth, idx, digests, bytes(bad))
        other = [MK.hash_leaf([int(tree.leaves[idx[0]][0]) ^ 1, *ints(tree.leaves[idx[0]][1:])])] + digests[1:]
        assert not MK.verify_multiproof(tree.root, tree.depth, idx, other, nodes)
        assert not MK.verify_multiproof(tree.root, tree.depth, idx, digests, nodes + b"\0" * 32)
    assert MK.multiproof_size([3, 9], 4) == 6  # two paths of 4: their top nodes are each other's siblings
    # the documented leaf layout: leaf j = rows j, j + n/4, j + n/2, j + 3n/4, columns inner
    assert ints(tree.leaves[5][:3]) == ints(cols[:, 5]) and ints(tree.leaves[5][3:6]) == ints(cols[:, 21])


# ---------------------------------------------------------------- OpenCL vs numpy


@pytest.mark.parametrize("log_n", [1, 4, 5, 10, 11, 13])
def test_cl_ntt_and_round_trip(cl_backend, log_n):
    a = rand((2, 1 << log_n), log_n)
    fwd = cl_backend.ntt(a)
    assert np.array_equal(fwd, NP.ntt(a))
    assert np.array_equal(cl_backend.intt(a), NP.intt(a))
    assert np.array_equal(cl_backend.intt(fwd), a)


@pytest.mark.parametrize("max_radix", [2, 4, 8])
def test_cl_ntt_every_radix(max_radix):
    pair = gpu.default_queue()
    if pair is None:
        pytest.skip("no OpenCL device")
    from worker.zk.clbackend import OpenCLBackend

    be = OpenCLBackend(*pair, max_radix=max_radix)
    for log_n in (3, 11):  # scalar passes only / vectorised passes
        a = rand(1 << log_n, max_radix)
        assert np.array_equal(be.ntt(a), NP.ntt(a))
        assert np.array_equal(be.intt(a), NP.intt(a))


@pytest.mark.parametrize("log_n,blowup", [(3, 2), (6, 4), (10, 8), (12, 2)])
def test_cl_lde_and_coset_interpolation(cl_backend, log_n, blowup):
    coeffs = rand((3, 1 << log_n), log_n + blowup)
    ext = cl_backend.lde(coeffs, blowup, 7)
    assert np.array_equal(ext, NP.lde(coeffs, blowup, 7))
    back = cl_backend.coset_intt(ext, 7)
    assert np.array_equal(back[:, : 1 << log_n], coeffs) and not back[:, 1 << log_n :].any()


def test_cl_poseidon_vectors(cl_backend):
    states = np.array([v[0] for v in PS.params().test_vectors], dtype=np.uint64).T
    got = cl_backend.permute(states)
    assert [tuple(int(x) for x in col) for col in got.T] == [v[1] for v in PS.params().test_vectors]


@pytest.mark.parametrize("length,n", [(0, 3), (4, 70), (8, 5), (12, 33), (16, 64)])
def test_cl_sponge_matches_numpy(cl_backend, length, n):
    rows = rand((n, length), length + n)
    assert np.array_equal(cl_backend.hash_rows(rows), NP.hash_rows(rows))


@pytest.mark.parametrize("n", [16, 256, 4096])
def test_cl_fold4(cl_backend, n):
    values = rand((2, n), n)
    beta = (int(rand(1, 1)[0]), int(rand(1, 2)[0]))
    assert np.array_equal(cl_backend.fold4(values, beta, 7), NP.fold4(values, beta, 7))


@pytest.mark.parametrize("n", [128, 2048])
def test_cl_deep(cl_backend, n):
    trace, comp = rand((2, n), 3), rand((4, n), 4)
    r = [(int(a), int(b)) for a, b in rand((11, 2), 5)]
    k = FM.DeepCoeffs(a_trace=tuple(r[0:2]), b_trace=tuple(r[2:4]), e_comp=tuple(r[4:8]), const_z=r[8],
                      const_gz=r[9], z=r[10], gz=F.emul(r[10], (F.root_of_unity(64), 0)))
    assert np.array_equal(cl_backend.deep(trace, comp, k, 7), NP.deep(trace, comp, k, 7))


@pytest.mark.parametrize("n", [1, 31, 32, 1000])
def test_cl_batch_inv(cl_backend, n):
    a = rand(n, n)
    a[a == 0] = 1
    got = cl_backend.batch_inv(a)
    assert np.array_equal(got, NP.batch_inv(a))
    assert all(int(x) * int(y) % F.P == 1 for x, y in zip(a[:50], got[:50], strict=True))
    a[n // 2] = 0
    with pytest.raises(ZeroDivisionError):
        cl_backend.batch_inv(a)


@pytest.mark.parametrize("air_name", ["fibonacci", "cubic", "membership"])
@pytest.mark.parametrize("log_n,blowup,blind", [(5, 4, 0), (7, 2, 3), (8, 8, 20)])
def test_cl_composition(cl_backend, air_name, log_n, blowup, blind):
    from worker.zk import airs as A

    air = A.get(air_name)
    n = 1 << log_n
    lde = rand((air.width, n * blowup), log_n)  # arbitrary values: the arithmetic must agree regardless
    public = {k: int(v) for k, v in zip(air.public_names, rand(len(air.public_names), 9), strict=True)}
    if "depth" in public:
        public["depth"] = 2
    alphas = [tuple(int(v) for v in pair) for pair in rand((air.n_transitions + len(air.boundaries), 2), 10)]
    last = n - 1 - blind
    want = NP.composition(air, public, lde, n, blowup, last, alphas)
    assert np.array_equal(cl_backend.composition(air, public, lde, n, blowup, last, alphas), want)


def test_composition_at_matches_the_lde_evaluation():
    """The verifier's H(z) formula and the prover's H on the LDE domain are the same rational function: at an
    LDE point x (in the base field) composition_at(x) equals composition_np's value there."""
    from worker.zk import airs as A
    from worker.zk import composition as CP

    for air in A.AIRS.values():
        n, blowup = 128, 8
        last = n - 1 - 9
        lde = rand((air.width, n * blowup), 3)
        public = {k: int(v) for k, v in zip(air.public_names, rand(len(air.public_names), 9), strict=True)}
        if "depth" in public:
            public["depth"] = 2
        alphas = [tuple(int(v) for v in pair) for pair in rand((air.n_transitions + len(air.boundaries), 2), 10)]
        vals = CP.composition_np(air, public, lde, n, blowup, last, alphas)
        h = F.root_of_unity(n * blowup)
        for i in (1, 77):
            x = 7 * pow(h, i, F.P) % F.P
            cur = [(int(lde[c, i]), 0) for c in range(air.width)]
            nxt = [(int(lde[c, (i + blowup) % (n * blowup)]), 0) for c in range(air.width)]
            assert CP.composition_at(air, public, n, last, alphas, cur, nxt, (x, 0)) == (int(vals[0, i]), int(vals[1, i]))


@pytest.mark.parametrize("cols,n,salt", [(1, 4, 0), (1, 64, 0), (2, 64, 0), (3, 16, 0), (4, 256, 4), (17, 1024, 4)])
def test_cl_blake2s_merkle_matches_hashlib(cl_backend, cols, n, salt):
    """Leaves of 4, 8 (exactly one 64-byte block), 12, 20 and 72 elements; salted or not."""
    data = rand((cols, n), cols * n)
    s = rand((n // 4, salt), 7) if salt else None
    got, want = cl_backend.commit(data, s), NP.commit(data, s)
    assert got.levels == want.levels and np.array_equal(got.leaves, want.leaves)
