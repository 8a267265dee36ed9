"""FRI-based STARK prover and verifier (DEEP-ALI, as in ethSTARK/winterfell, simplified).

Protocol, in transcript order (every step is replayed by the verifier):
 1. header: label, AIR name, format version, steps, blowup, queries, public inputs and outputs;
 2. trace columns are interpolated over the trace domain <g> (n = steps) and extended to the LDE domain
    7 * <h> (size n * blowup); Merkle root of the LDE rows -> transcript;
 3. one extension-field coefficient per constraint; the composition polynomial H = sum alpha_j C_j / Z_j is
    evaluated on the LDE domain, interpolated, cut into `chunks` pieces of degree < n, extended and committed;
 4. out-of-domain point z (extension field, never in F_p): the prover sends T_c(z), T_c(g z), H_j(z); the
    verifier checks H(z) recomputed from the trace values equals sum_j z^(j n) H_j(z);
 5. DEEP composition F (degree < n) from random coefficients; FRI with arity-4 folding proves its degree,
    down to a remainder of at most 16 coefficients sent in the clear;
 6. query positions (cosets of the first layer) from the transcript; the prover opens trace, composition
    and every committed FRI layer there; the verifier recomputes F from the openings and checks each fold.

The verifier uses Python ints for scalars and numpy only for batched Merkle hashing: no OpenCL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import composition as CP
from . import field as F
from . import fri_math as FM
from . import merkle as MK
from . import ntt as NT
from . import proof as PF
from .air import Air, get
from .backend import Backend
from .clbackend import resolve
from .spec import check_params, check_public_inputs
from .transcript import Transcript

LABEL = b"gpumesh-stark-v1"
SHIFT = F.GENERATOR  # LDE coset offset
X = (0, 1)  # the extension generator, X^2 = 7


# ---------------------------------------------------------------- shared by prover and verifier


def _header(prm: PF.Params, public: dict[str, int]) -> Transcript:
    tr = Transcript(LABEL)
    tr.absorb_bytes(prm.air.name.encode())
    tr.absorb([PF.VERSION, prm.steps, prm.blowup, prm.queries])
    tr.absorb([public[k] for k in prm.air.public_names])
    return tr


def _draw_z(tr: Transcript) -> F.Ext:
    """An out-of-domain point outside F_p (so outside both domains, and x - z is invertible for base x)."""
    while True:
        z = tr.challenge_ext()
        if z[1] != 0:
            return z


def _ext_flat(values: list[F.Ext]) -> list[int]:
    return [v for pair in values for v in pair]


@dataclass(frozen=True)
class Challenges:
    alphas: list[F.Ext]
    z: F.Ext
    deep: FM.DeepCoeffs | None = None
    betas: list[F.Ext] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)


def _deep_coeffs(tr: Transcript, air: Air, ood: list[F.Ext], z: F.Ext, g: int) -> FM.DeepCoeffs:
    w, k = air.width, air.chunks
    a = [tr.challenge_ext() for _ in range(w)]
    b = [tr.challenge_ext() for _ in range(w)]
    gam = [tr.challenge_ext() for _ in range(k)]
    t_z, t_gz, h_z = ood[:w], ood[w : 2 * w], ood[2 * w :]
    const_z = (0, 0)
    for coef, v in zip(a + gam, t_z + h_z, strict=True):
        const_z = F.eadd(const_z, F.emul(coef, v))
    const_gz = (0, 0)
    for coef, v in zip(b, t_gz, strict=True):
        const_gz = F.eadd(const_gz, F.emul(coef, v))
    e_comp = tuple(e for gm in gam for e in (gm, F.emul(gm, X)))
    return FM.DeepCoeffs(tuple(a), tuple(b), e_comp, const_z, const_gz, z, F.escale(z, g))


# ---------------------------------------------------------------- prover


def _ext_powers(z: F.Ext, n: int) -> tuple[np.ndarray, np.ndarray]:
    """z^i for i < n as two planes, by an outer product of sqrt-sized tables."""
    m = 1 << ((n.bit_length() - 1 + 1) // 2)
    rows = -(-n // m)
    small = [(1, 0)]
    for _ in range(m - 1):
        small.append(F.emul(small[-1], z))
    zm = F.emul(small[-1], z)
    big = [(1, 0)]
    for _ in range(rows - 1):
        big.append(F.emul(big[-1], zm))
    s0 = np.array([v[0] for v in small], dtype=np.uint64)[None, :]
    s1 = np.array([v[1] for v in small], dtype=np.uint64)[None, :]
    b0 = np.array([v[0] for v in big], dtype=np.uint64)[:, None]
    b1 = np.array([v[1] for v in big], dtype=np.uint64)[:, None]
    p0, p1 = F.np_emul(b0, b1, s0, s1)
    return p0.reshape(-1)[:n], p1.reshape(-1)[:n]


def _eval_ext(coeffs: np.ndarray, zp: tuple[np.ndarray, np.ndarray]) -> F.Ext:
    return (F.np_sum_int(F.np_mul(coeffs, zp[0])), F.np_sum_int(F.np_mul(coeffs, zp[1])))


def _opening(tree: MK.MerkleTree, indices: list[int]) -> PF.Opening:
    return PF.Opening(
        leaves=tree.leaves[np.array(indices, dtype=np.int64)],
        paths=np.stack([tree.path(i) for i in indices]) if indices else np.zeros((0, tree.depth, 4), np.uint64),
    )


def prove(air_name: str, public_inputs: dict[str, int], steps: int, blowup: int = 4, queries: int = 41,
          backend: object = "numpy") -> bytes:
    """Prove the AIR's computation for `steps` rows; returns the proof bytes (docs/proof-format.md).
    `backend`: "numpy", "opencl", a Backend, or a (pyopencl.Context, CommandQueue) pair."""
    air = get(air_name)
    check_params(steps, blowup, queries)
    inputs = check_public_inputs(air_name, public_inputs)
    be: Backend = resolve(backend)
    prm = PF.Params(air, steps, blowup, queries)
    n, m = steps, steps * blowup
    g = F.root_of_unity(n)

    with be.timed("trace"):
        trace = air.trace(inputs, n)
    public = air.public_values(inputs, trace)
    tr = _header(prm, public)

    trace_coeffs = be.intt(trace)
    trace_lde = be.lde(trace_coeffs, blowup, SHIFT)
    trace_tree = be.commit(trace_lde)
    tr.absorb(trace_tree.root)

    alphas = [tr.challenge_ext() for _ in range(air.n_transitions + len(air.boundaries))]
    comp_vals = be.composition(air, public, trace_lde, n, blowup, alphas)
    comp_coeffs = be.coset_intt(comp_vals, SHIFT)
    k = air.chunks
    if comp_coeffs[:, k * n :].any():
        raise ValueError("the trace does not satisfy the AIR's constraints (composition degree too high)")
    chunk_coeffs = np.ascontiguousarray(comp_coeffs[:, : k * n].reshape(2, k, n).transpose(1, 0, 2).reshape(2 * k, n))
    comp_lde = be.lde(chunk_coeffs, blowup, SHIFT)
    comp_tree = be.commit(comp_lde)
    tr.absorb(comp_tree.root)

    z = _draw_z(tr)
    with be.timed("ood"):
        zp = _ext_powers(z, n)
        gpow = NT.coset_powers(n, g)
        t_z = [_eval_ext(trace_coeffs[c], zp) for c in range(air.width)]
        t_gz = [_eval_ext(F.np_mul(trace_coeffs[c], gpow), zp) for c in range(air.width)]
        h_z = []
        for j in range(k):
            re, im = _eval_ext(chunk_coeffs[2 * j], zp), _eval_ext(chunk_coeffs[2 * j + 1], zp)
            h_z.append(F.eadd(re, F.emul(im, X)))
    ood = t_z + t_gz + h_z
    tr.absorb(_ext_flat(ood))
    coeffs = _deep_coeffs(tr, air, ood, z, g)
    values = be.deep(trace_lde, comp_lde, coeffs, SHIFT)

    degs = prm.fri_degrees
    shift = SHIFT
    fri_trees: list[MK.MerkleTree] = []
    for layer in range(1, len(degs)):
        beta = tr.challenge_ext()
        values = be.fold4(values, beta, shift)
        shift = pow(shift, PF.FRI_ARITY, F.P)
        if layer < len(degs) - 1:
            tree = be.commit(values)
            fri_trees.append(tree)
            tr.absorb(tree.root)
    rem = NT.coset_intt(values, shift)
    if rem[:, degs[-1] :].any():
        raise AssertionError("FRI remainder exceeds its degree bound: prover bug")
    remainder = [(int(rem[0, i]), int(rem[1, i])) for i in range(degs[-1])]
    tr.absorb(_ext_flat(remainder))

    qs = sorted(set(tr.challenge_indices(queries, m // PF.FRI_ARITY)))
    fri_open = []
    for layer, tree in enumerate(fri_trees, start=1):
        quarter = prm.layer_size(layer) // PF.FRI_ARITY
        fri_open.append(_opening(tree, sorted({q % quarter for q in qs})))
    proof = PF.Proof(
        params=prm,
        public=public,
        trace_root=trace_tree.root,
        comp_root=comp_tree.root,
        ood=ood,
        fri_roots=[t.root for t in fri_trees],
        remainder=remainder,
        trace_open=_opening(trace_tree, qs),
        comp_open=_opening(comp_tree, qs),
        fri_open=fri_open,
    )
    return PF.encode(proof)


# ---------------------------------------------------------------- verifier


@dataclass(frozen=True)
class Verdict:
    """The verifier's answer; `reason` says why a proof was rejected (or what was proven)."""

    ok: bool
    reason: str
    security_bits: int = 0
    air: str = ""
    steps: int = 0
    public: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok


class Rejected(Exception):
    pass


def _eval_poly(coeffs: list[F.Ext], x: int) -> F.Ext:
    acc = (0, 0)
    for c in reversed(coeffs):
        acc = F.eadd(F.escale(acc, x), c)
    return acc


def _check_trees(checks: list[tuple[str, np.ndarray, list[int], PF.Opening]]) -> None:
    for name, _, indices, opening in checks:
        if opening.leaves.shape[0] != len(indices):
            raise Rejected(f"{name}: {opening.leaves.shape[0]} openings where the queries drawn from the transcript "
                           f"need {len(indices)} (openings dropped or added, or a committed value was altered)")
    results = MK.verify_many([(root, np.array(idx, dtype=np.int64), o.leaves, o.paths) for _, root, idx, o in checks])
    for (name, _, indices, _), ok in zip(checks, results, strict=True):
        if not ok.all():
            raise Rejected(f"{name}: Merkle path for leaf {indices[int(np.argmin(ok))]} does not lead to the committed root")


def _verify(proof: PF.Proof, expect: dict | None, min_security_bits: int) -> Verdict:
    prm, air, public = proof.params, proof.params.air, proof.public
    if prm.security_bits < min_security_bits:
        raise Rejected(f"conjectured security {prm.security_bits} bits is below the required {min_security_bits}")
    if expect is not None:
        _check_expected(proof, expect)
    n, m, w, k = prm.steps, prm.lde_size, air.width, air.chunks
    g = F.root_of_unity(n)
    tr = _header(prm, public)
    tr.absorb(proof.trace_root)
    alphas = [tr.challenge_ext() for _ in range(air.n_transitions + len(air.boundaries))]
    tr.absorb(proof.comp_root)
    z = _draw_z(tr)
    t_z, t_gz, h_z = proof.ood[:w], proof.ood[w : 2 * w], proof.ood[2 * w :]
    want = CP.composition_at(air, public, n, alphas, t_z, t_gz, z)
    got = (0, 0)
    zn = F.epow(z, n)
    for j in reversed(range(k)):
        got = F.eadd(F.emul(got, zn), h_z[j])
    if got != want:
        raise Rejected("out-of-domain check failed: the composition does not match the trace at z "
                       "(public values, trace or composition commitment inconsistent)")
    tr.absorb(_ext_flat(proof.ood))
    coeffs = _deep_coeffs(tr, air, proof.ood, z, g)
    degs = prm.fri_degrees
    betas = []
    for layer in range(1, len(degs)):
        betas.append(tr.challenge_ext())
        if layer < len(degs) - 1:
            tr.absorb(proof.fri_roots[layer - 1])
    tr.absorb(_ext_flat(proof.remainder))
    quarter0 = m // PF.FRI_ARITY
    qs = sorted(set(tr.challenge_indices(prm.queries, quarter0)))

    checks = [("trace commitment", proof.trace_root, qs, proof.trace_open),
              ("composition commitment", proof.comp_root, qs, proof.comp_open)]
    layer_idx = []
    for layer in range(1, len(degs) - 1):
        quarter = prm.layer_size(layer) // PF.FRI_ARITY
        idx = sorted({q % quarter for q in qs})
        checks.append((f"FRI layer {layer}", proof.fri_roots[layer - 1], idx, proof.fri_open[layer - 1]))
        layer_idx.append({j: row for row, j in enumerate(idx)})
    _check_trees(checks)

    h = F.root_of_unity(m)
    for qi, q in enumerate(qs):
        # layer 0: the DEEP composition at the coset of query q, from the trace and composition rows
        tl, cl = proof.trace_open.leaves[qi], proof.comp_open.leaves[qi]
        vals = []
        for t in range(PF.FRI_ARITY):
            x = SHIFT * pow(h, q + t * quarter0, F.P) % F.P
            vals.append(FM.deep_point([int(v) for v in tl[t * w : (t + 1) * w]],
                                      [int(v) for v in cl[t * 2 * k : (t + 1) * 2 * k]], x, coeffs))
        size, shift, pos = m, SHIFT, q
        if len(degs) == 1:  # no folding: layer 0 is the remainder itself
            for t, v in enumerate(vals):
                x = SHIFT * pow(h, q + t * quarter0, F.P) % F.P
                if _eval_poly(proof.remainder, x) != v:
                    raise Rejected(f"FRI remainder does not match the DEEP composition at query {q}")
            continue
        for layer in range(1, len(degs)):
            hl = F.root_of_unity(size)
            quarter = size // PF.FRI_ARITY
            j = pos % quarter
            x = shift * pow(hl, j, F.P) % F.P
            folded = FM.fold4_point(vals, x, pow(hl, quarter, F.P), betas[layer - 1])
            size, shift, pos = quarter, pow(shift, PF.FRI_ARITY, F.P), j
            if layer < len(degs) - 1:
                leaf = proof.fri_open[layer - 1].leaves[layer_idx[layer - 1][pos % (size // PF.FRI_ARITY)]]
                slot = pos // (size // PF.FRI_ARITY)
                if (int(leaf[2 * slot]), int(leaf[2 * slot + 1])) != folded:
                    raise Rejected(f"FRI layer {layer}: committed value at query {q} is not the fold of layer {layer - 1}")
                vals = [(int(leaf[2 * t]), int(leaf[2 * t + 1])) for t in range(PF.FRI_ARITY)]
            else:
                xr = shift * pow(F.root_of_unity(size), pos, F.P) % F.P
                if _eval_poly(proof.remainder, xr) != folded:
                    raise Rejected(f"FRI remainder does not match the last fold at query {q}")
    return Verdict(True, f"valid {air.name} proof: {n} steps, {prm.security_bits}-bit conjectured security",
                   prm.security_bits, air.name, n, dict(public))


def _check_expected(proof: PF.Proof, expect: dict) -> None:
    """The proof must be for the statement that was asked for, not merely some valid statement."""
    prm = proof.params
    for key, have in (("air", prm.air.name), ("steps", prm.steps), ("blowup", prm.blowup), ("queries", prm.queries)):
        if key in expect and expect[key] != have:
            raise Rejected(f"proof is for a different statement: {key} {have!r}, expected {expect[key]!r}")
    for name, v in (expect.get("public_inputs") or {}).items():
        if proof.public.get(name) != v:
            raise Rejected(f"proof is for a different statement: public input {name}={proof.public.get(name)}, expected {v}")


def verify(proof_bytes: bytes, expect: dict | None = None, min_security_bits: int = 0) -> Verdict:
    """Check a proof; never raises for a bad proof. `expect` (a zk spec) pins the statement: AIR, steps,
    parameters and public inputs must match it."""
    try:
        proof = PF.decode(proof_bytes)
    except PF.ProofFormatError as e:
        return Verdict(False, f"malformed proof: {e}")
    try:
        return _verify(proof, expect, min_security_bits)
    except Rejected as e:
        reason = str(e)
    except Exception as e:  # noqa: BLE001 - hostile input must never crash the coordinator
        reason = f"proof could not be checked ({type(e).__name__}: {e})"
    return Verdict(False, reason, proof.params.security_bits, proof.params.air.name, proof.params.steps,
                   dict(proof.public))
