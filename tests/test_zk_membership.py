"""The membership statement (Poseidon preimage + Merkle path to a public root, private witness) and what its
proofs reveal: nothing that tells the witness apart from another member's."""

import msgpack
import numpy as np
import pytest

from worker import zk
from worker.zk import field as F
from worker.zk import gpu, stark
from worker.zk import membership as MB
from worker.zk import ntt as NT
from worker.zk import proof as PF

SECRETS = [[1000 + i, 77, 2**40 + i, 5] for i in range(16)]
ROOT, WITNESSES = MB.make_tree(SECRETS)
PUBLIC = {"depth": 4, **{f"root{i}": ROOT[i] for i in range(4)}}
STEPS = 512  # 4 levels = 5 hashes = 159 rows, plus 244 random rows
_CACHE: dict = {}


def proof_of(member: int, seed: int = 1) -> bytes:
    key = (member, seed)
    if key not in _CACHE:
        _CACHE[key] = zk.prove("membership", PUBLIC, STEPS, witness=WITNESSES[member], seed=seed)
    return _CACHE[key]


def test_tree_helpers_match_poseidon():
    from worker.zk import poseidon as PS

    leaf = PS.hash_elements(SECRETS[5])
    w = WITNESSES[5]
    assert MB.root_of(w["secret"], [(tuple(s[:4]), s[4]) for s in w["path"]]) == ROOT
    assert w["path"][0][:4] == list(PS.hash_elements(SECRETS[4])) and w["path"][0][4] == 1  # 5 is a right child
    assert PS.compress(tuple(w["path"][0][:4]), leaf) == PS.compress(PS.hash_elements(SECRETS[4]), leaf)


def test_membership_proof_verifies_and_states_the_root():
    v = zk.verify(proof_of(5))
    assert v.ok, v.reason
    assert v.public == PUBLIC and v.air == "membership" and v.security_bits >= 100
    assert f"root0={ROOT[0]}" in v.statement
    assert zk.verify(proof_of(5), expect={"air": "membership", "public_inputs": PUBLIC}).ok


def test_statement_swaps_are_rejected():
    p = proof_of(5)
    other = {**PUBLIC, "root1": (ROOT[1] + 1) % F.P}
    v = zk.verify(p, expect={"public_inputs": other})
    assert not v.ok and "different statement" in v.reason
    b = msgpack.unpackb(p[len(PF.MAGIC) + 1 :], raw=False)
    b["public"] = other  # the proof's own claim changed: the transcript and the boundary constraint disagree
    v = zk.verify(PF.MAGIC + bytes([PF.VERSION]) + msgpack.packb(b, use_bin_type=True))
    assert not v.ok and "out-of-domain" in v.reason
    b["public"] = {**PUBLIC, "depth": 3}
    v = zk.verify(PF.MAGIC + bytes([PF.VERSION]) + msgpack.packb(b, use_bin_type=True))
    assert not v.ok and "out-of-domain" in v.reason


def test_prover_refuses_a_wrong_witness():
    bad = {"secret": [1, 2, 3, 4], "path": WITNESSES[5]["path"]}
    with pytest.raises(ValueError, match="does not lead to the public root"):
        zk.prove("membership", PUBLIC, STEPS, witness=bad)
    with pytest.raises(ValueError, match="witness 'path' must have depth = 4"):
        zk.prove("membership", PUBLIC, STEPS, witness={"secret": [1, 2, 3, 4], "path": []})
    with pytest.raises(ValueError, match="direction bit"):
        zk.prove("membership", PUBLIC, STEPS, witness={"secret": [1, 2, 3, 4], "path": [[0, 0, 0, 0, 2]] * 4})
    with pytest.raises(ValueError, match="needs a private 'witness'"):
        zk.validate_spec({"air": "membership", "public_inputs": PUBLIC, "steps": STEPS})
    with pytest.raises(ValueError, match="use steps >= 512"):
        zk.validate_spec({"air": "membership", "public_inputs": PUBLIC, "steps": 256, "witness": WITNESSES[0]})


def test_a_trace_that_breaks_a_constraint_is_refused(monkeypatch):
    """A prover that skips one Poseidon round cannot produce a proof (the composition is not low degree)."""
    real = MB._trace

    def broken(inputs, witness, rows):
        t = real(inputs, witness, rows)
        t[3, 40] = (int(t[3, 40]) + 1) % F.P
        return t

    import dataclasses

    monkeypatch.setitem(zk.AIRS, "membership", dataclasses.replace(zk.AIRS["membership"], _trace=broken))
    with pytest.raises(ValueError, match="does not satisfy the AIR"):
        zk.prove("membership", PUBLIC, STEPS, witness=WITNESSES[5])


def test_single_byte_flips_are_rejected():
    p = proof_of(5)
    rng = np.random.default_rng(3)
    for pos in rng.integers(0, len(p), 25):
        q = bytearray(p)
        q[pos] ^= 1 << int(rng.integers(0, 8))
        v = zk.verify(bytes(q))
        assert not v.ok and v.reason


def test_backends_produce_identical_proofs():
    pair = gpu.default_queue()
    if pair is None:
        pytest.skip("no OpenCL device")
    assert zk.prove("membership", PUBLIC, STEPS, witness=WITNESSES[5], seed=1, backend=pair) == proof_of(5)


# ---------------------------------------------------------------- zero knowledge


def _trace_values(member: int) -> set[int]:
    prm = PF.Params(zk.AIRS["membership"], STEPS, 8, 30, 16)
    rows = zk.AIRS["membership"].trace(PUBLIC, MB.check_witness(WITNESSES[member], PUBLIC), STEPS - prm.blind_rows)
    return {int(v) for v in rows.reshape(-1) if int(v) > 1 << 20}


def test_no_trace_row_appears_in_a_proof():
    p = proof_of(5)
    values = _trace_values(5)
    assert len(values) > 1000  # the secret, the path and every Poseidon state
    assert all(v.to_bytes(8, "little") not in p for v in values)
    assert all(v.to_bytes(8, "little") not in p for v in SECRETS[5] if v > 1 << 20)


def test_fresh_randomness_each_proof():
    a, b = PF.decode(proof_of(5, seed=1)), PF.decode(proof_of(5, seed=2))
    assert a.trace_root != b.trace_root and a.ood[0] != b.ood[0]
    assert zk.verify(proof_of(5, seed=2)).ok


def _solve(rows: list[list[int]], rhs: list[int]) -> list[int] | None:
    """A solution of rows . t = rhs over F_p (Gaussian elimination), or None."""
    p = F.P
    m = [r[:] + [b] for r, b in zip(rows, rhs, strict=True)]
    ncol = len(rows[0])
    pivots, r = [], 0
    for c in range(ncol):
        piv = next((i for i in range(r, len(m)) if m[i][c]), None)
        if piv is None:
            continue
        m[r], m[piv] = m[piv], m[r]
        inv = pow(m[r][c], p - 2, p)
        m[r] = [v * inv % p for v in m[r]]
        for i in range(len(m)):
            if i != r and m[i][c]:
                f = m[i][c]
                m[i] = [(a - f * b) % p for a, b in zip(m[i], m[r], strict=True)]
        pivots.append(c)
        r += 1
        if r == len(m):
            break
    if any(row[-1] for row in m[r:]):
        return None
    t = [0] * ncol
    for i, c in enumerate(pivots):
        t[c] = m[i][-1]
    return t


def _consistent_with(proof_bytes: bytes, member: int) -> bool:
    """Is there a choice of the random rows with which `member`'s trace gives exactly the trace values this
    proof opens (column 0: the Poseidon lane holding the secret's first element on row 0)? Asserts that the
    member's trace alone does not (so the answer comes from the random rows)."""
    proof = PF.decode(proof_bytes)
    prm = proof.params
    n, m, k, w = prm.steps, prm.lde_size, prm.blind_rows, prm.air.width
    qs = stark.query_positions(proof_bytes)
    h, g = F.root_of_unity(m), F.root_of_unity(n)
    xs = [stark.SHIFT * pow(h, q + t * (m // 4), F.P) % F.P for q in qs for t in range(4)]
    col = 0
    opened = [int(proof.trace_open.leaves[i][t * w + col]) for i in range(len(qs)) for t in range(4)]
    rows = np.zeros(n, dtype=np.uint64)
    rows[: n - k] = zk.AIRS["membership"].trace(PUBLIC, MB.check_witness(WITNESSES[member], PUBLIC), n - k)[col]
    coeffs = [int(c) for c in NT.intt(rows)]

    def at(x):
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % F.P
        return acc

    residual = [(o - at(x)) % F.P for o, x in zip(opened, xs, strict=True)]
    assert any(residual)  # the member's computation rows alone do not give these openings
    ninv = F.inv(n)
    lagrange = [[pow(g, i, F.P) * ninv % F.P * (pow(x, n, F.P) - 1) % F.P * F.inv((x - pow(g, i, F.P)) % F.P) % F.P
                 for i in range(n - k, n)] for x in xs]
    t = _solve(lagrange, residual)
    return t is not None and all(sum(a * b for a, b in zip(row, t, strict=True)) % F.P == r
                                 for row, r in zip(lagrange, residual, strict=True))


def test_openings_do_not_tell_which_member_proved():
    """Two proofs of the same statement (the root), by members 5 and 9: each proof's openings are exactly as
    consistent with the other member's witness as with its own prover's, so they do not tell which member
    made them. Without the random rows (or with fewer than the openings) the cross checks fail."""
    for prover, other in ((5, 9), (9, 5)):
        assert _consistent_with(proof_of(prover), other)
        assert _consistent_with(proof_of(prover), prover)


def test_hostile_statements_are_refused_with_a_reason():
    b = msgpack.unpackb(proof_of(5)[len(PF.MAGIC) + 1 :], raw=False)
    for depth, why in ((0, "depth must be between 1 and 64"), (65, "depth must be between 1 and 64"),
                       (2**40, "depth must be between 1 and 64"), (15, "steps 512 is too small")):
        b["public"] = {**PUBLIC, "depth": depth}
        v = zk.verify(PF.MAGIC + bytes([PF.VERSION]) + msgpack.packb(b, use_bin_type=True))
        assert not v.ok and why in v.reason, v.reason
    b["public"] = {k: v for k, v in PUBLIC.items() if k != "root3"}
    v = zk.verify(PF.MAGIC + bytes([PF.VERSION]) + msgpack.packb(b, use_bin_type=True))
    assert not v.ok and "public values must be exactly" in v.reason
