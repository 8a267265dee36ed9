"""FRI-based STARK prover and verifier (DEEP-ALI, as in ethSTARK/winterfell), with zero knowledge for AIRs
that have a private witness.

Protocol, in transcript order (every step is replayed by the verifier):
 1. header: label, AIR name, format version, steps, blowup, queries, grinding bits, public values;
 2. the trace (the computation rows, then `blind_rows` uniformly random rows for a zero-knowledge AIR) is
    interpolated over the trace domain <g> (n = steps) and extended to the LDE domain 7 * <h> (n * blowup);
    Merkle root of the LDE rows (each leaf salted for zero knowledge) -> transcript;
 3. one extension-field coefficient per constraint; H = sum alpha_j C_j / Z_T + boundary quotients is
    evaluated on the LDE domain and interpolated, then written as H = sum_j x^(j s) H_j with `chunks` pieces
    of degree < n and stride s = n - mask_overlap. For zero knowledge the pieces carry random masks that
    cancel in that sum (H_j += e_{j-1} - x^s e_j, deg e < mask_overlap), and a random FRI randomizer R of
    degree < n is committed beside them; the pieces (and R) are extended and committed;
 4. out-of-domain point z (extension field, never in F_p): the prover sends T_c(z), T_c(g z), H_j(z); the
    verifier checks H(z), recomputed from the trace values, equals sum_j z^(j s) H_j(z);
 5. DEEP composition F (degree < n) from random coefficients, plus R for zero knowledge; FRI with arity-4
    folding proves its degree, down to a remainder of at most 16 coefficients sent in the clear;
 6. proof of work: a nonce with `grinding` leading zero bits (transcript.py), absorbed;
 7. query positions (cosets of the first layer) from the transcript; the prover opens trace, composition
    and every committed FRI layer there with one multiproof per tree; the verifier recomputes F from the
    openings and checks each fold.

What a zero-knowledge proof reveals about the trace: its values at <= 4 queries LDE points and, through H,
the next row's values there (8 queries points), plus T(z), T(g z): 8 queries + 4 base-field values per
column, all uniformly random because the trace has that many random rows. The chunks' openings at the
4 queries points and z are uniform given H there (the masks), FRI values are uniform given R, and the
Merkle leaves of unopened positions are hidden behind random salts.

The verifier uses Python ints for field arithmetic and hashlib for hashing: no OpenCL, no numpy kernels.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import composition as CP
from . import field as F
from . import fri_math as FM
from . import merkle as MK
from . import ntt as NT
from . import proof as PF
from . import security as SEC
from .air import Air
from .airs import get
from .backend import Backend
from .clbackend import resolve
from .spec import DEFAULTS, check_params, check_public_inputs
from .transcript import Transcript

LABEL = b"gpumesh-stark-v2"
SHIFT = F.GENERATOR  # LDE coset offset
X = (0, 1)  # the extension generator, X^2 = 7
P = F.P


# ---------------------------------------------------------------- shared by prover and verifier


def _header(prm: PF.Params, public: dict[str, int]) -> Transcript:
    tr = Transcript(LABEL)
    tr.absorb_bytes(prm.air.name.encode())
    tr.absorb([PF.VERSION, prm.steps, prm.blowup, prm.queries, prm.grinding])
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


def _deep_coeffs(tr: Transcript, air: Air, chunks: int, ood: list[F.Ext], z: F.Ext, g: int) -> FM.DeepCoeffs:
    w = air.width
    a = [tr.challenge_ext() for _ in range(w)]
    b = [tr.challenge_ext() for _ in range(w)]
    gam = [tr.challenge_ext() for _ in range(chunks)]
    t_z, t_gz, h_z = ood[:w], ood[w : 2 * w], ood[2 * w :]
    const_z = (0, 0)
    for coef, v in zip(a + gam, t_z + h_z, strict=True):
        const_z = F.eadd(const_z, F.emul(coef, v))
    const_gz = (0, 0)
    for coef, v in zip(b, t_gz, strict=True):
        const_gz = F.eadd(const_gz, F.emul(coef, v))
    e_comp = tuple(e for gm in gam for e in (gm, F.emul(gm, X)))
    return FM.DeepCoeffs(tuple(a), tuple(b), e_comp, const_z, const_gz, z, F.escale(z, g))


def _n_alphas(air: Air) -> int:
    return air.n_transitions + len(air.boundaries)


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
    return PF.Opening(leaves=tree.leaves[np.array(indices, dtype=np.int64)], nodes=tree.multiproof(indices))


def _random(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, P, size=shape, dtype=np.uint64)


def _split_composition(comp_coeffs: np.ndarray, prm: PF.Params, rng: np.random.Generator) -> np.ndarray:
    """(2, m) coefficients of H -> (2 * chunks, n) coefficients of H_0 .. H_{c-1} (constant part, X part
    of each), masked for zero knowledge."""
    n, s, t, c = prm.steps, prm.chunk_stride, prm.mask_overlap, prm.chunks
    out = np.zeros((c, 2, n), dtype=np.uint64)
    for j in range(c):
        width = s if j < c - 1 else n
        part = comp_coeffs[:, j * s : j * s + width]
        out[j, :, : part.shape[1]] = part
    for j in range(c - 1):
        if t:
            eps = _random(rng, (2, t))
            out[j, :, s : s + t] = F.np_sub(out[j, :, s : s + t], eps)
            out[j + 1, :, :t] = F.np_add(out[j + 1, :, :t], eps)
    return out.reshape(2 * c, n)


def prove(air_name: str, public_inputs: dict[str, int], steps: int, blowup: int = DEFAULTS["blowup"],
          queries: int = DEFAULTS["queries"], backend: object = "numpy", *, grinding: int = DEFAULTS["grinding"],
          witness: object = None, seed: int | None = None,
          progress: Callable[[float, str], None] | None = None) -> bytes:
    """Prove the AIR's computation for `steps` rows; returns the proof bytes (docs/proof-format.md).
    `backend`: "numpy", "opencl", a Backend, or a (pyopencl.Context, CommandQueue) pair. `witness`: the
    private input of a zero-knowledge AIR. `seed` fixes the zero-knowledge randomness (tests and test
    vectors only: a real proof must use fresh randomness, the default)."""
    report = progress or (lambda _f, _s: None)  # (fraction, stage) as each stage starts
    report(0.0, "trace")
    air = get(air_name)
    check_params(steps, blowup, queries, grinding)
    inputs = check_public_inputs(air_name, public_inputs)
    wit = air.check_witness(witness, inputs)
    prm = PF.Params(air, steps, blowup, queries, grinding)
    prm.check_statement(inputs)
    be: Backend = resolve(backend)
    rng = np.random.default_rng(seed)
    n, m, k = steps, steps * blowup, prm.blind_rows
    g = F.root_of_unity(n)
    salt_rows = (lambda: _random(rng, (m // PF.FRI_ARITY, prm.salt))) if prm.salt else (lambda: None)

    with be.timed("trace"):
        rows = air.trace(inputs, wit, n - k)
        public = air.public_values(inputs, rows)
        trace = np.concatenate([rows, _random(rng, (air.width, k))], axis=1) if k else rows
    tr = _header(prm, public)

    report(0.1, "LDE")
    trace_coeffs = be.intt(trace)
    trace_lde = be.lde(trace_coeffs, blowup, SHIFT)
    report(0.25, "commit")
    trace_tree = be.commit(trace_lde, salt_rows())
    tr.absorb_bytes(trace_tree.root)

    alphas = [tr.challenge_ext() for _ in range(_n_alphas(air))]
    report(0.35, "composition")
    comp_vals = be.composition(air, public, trace_lde, n, blowup, prm.last_row, alphas)
    comp_coeffs = be.coset_intt(comp_vals, SHIFT)
    if comp_coeffs[:, prm.comp_bound :].any():
        raise ValueError("the trace does not satisfy the AIR's constraints (composition degree too high)")
    chunks = prm.chunks
    comp_cols = _split_composition(comp_coeffs, prm, rng)
    if air.zk:
        comp_cols = np.concatenate([comp_cols, _random(rng, (2, n))])  # the FRI randomizer R
    report(0.45, "LDE")
    comp_lde = be.lde(comp_cols, blowup, SHIFT)
    report(0.55, "commit")
    comp_tree = be.commit(comp_lde, salt_rows())
    tr.absorb_bytes(comp_tree.root)

    z = _draw_z(tr)
    report(0.65, "out-of-domain sample")
    with be.timed("ood"):
        zp = _ext_powers(z, n)
        gpow = NT.coset_powers(n, g)
        t_z = [_eval_ext(trace_coeffs[c], zp) for c in range(air.width)]
        t_gz = [_eval_ext(F.np_mul(trace_coeffs[c], gpow), zp) for c in range(air.width)]
        h_z = []
        for j in range(chunks):
            re, im = _eval_ext(comp_cols[2 * j], zp), _eval_ext(comp_cols[2 * j + 1], zp)
            h_z.append(F.eadd(re, F.emul(im, X)))
    ood = t_z + t_gz + h_z
    tr.absorb(_ext_flat(ood))
    coeffs = _deep_coeffs(tr, air, chunks, ood, z, g)
    values = be.deep(trace_lde, comp_lde[: 2 * chunks], coeffs, SHIFT)
    if air.zk:
        values = np.stack([F.np_add(values[0], comp_lde[2 * chunks]), F.np_add(values[1], comp_lde[2 * chunks + 1])])

    degs = prm.fri_degrees
    shift = SHIFT
    fri_trees: list[MK.MerkleTree] = []
    rounds = len(degs) - 1
    for layer in range(1, len(degs)):
        report(0.7 + 0.2 * (layer - 1) / max(rounds, 1), f"FRI round {layer}/{rounds}")
        beta = tr.challenge_ext()
        values = be.fold4(values, beta, shift)
        shift = pow(shift, PF.FRI_ARITY, P)
        if layer < len(degs) - 1:
            tree = be.commit(values)
            fri_trees.append(tree)
            tr.absorb_bytes(tree.root)
    rem = NT.coset_intt(values, shift)
    if rem[:, degs[-1] :].any():
        raise AssertionError("FRI remainder exceeds its degree bound: prover bug")
    remainder = [(int(rem[0, i]), int(rem[1, i])) for i in range(degs[-1])]
    tr.absorb(_ext_flat(remainder))
    report(0.88, "grinding")
    with be.timed("grinding"):
        nonce = tr.grind(grinding)
    tr.absorb([nonce])

    report(0.9, "queries")
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
        pow_nonce=nonce,
        trace_open=_opening(trace_tree, qs),
        comp_open=_opening(comp_tree, qs),
        fri_open=fri_open,
    )
    out = PF.encode(proof)
    report(1.0, "done")
    return out


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
    provable_bits: int = 0
    params: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok

    @property
    def statement(self) -> str:
        """One line naming what was (or would have been) proven."""
        pub = ", ".join(f"{k}={v}" for k, v in self.public.items())
        return f"{self.air}({pub}) over {self.steps} steps"


class Rejected(Exception):
    pass


def _ext_mul(a: F.Ext, b: F.Ext) -> F.Ext:
    return ((a[0] * b[0] + 7 * a[1] * b[1]) % P, (a[0] * b[1] + a[1] * b[0]) % P)


def _check_trees(checks: list[tuple[str, bytes, list[int], PF.Opening, int]]) -> None:
    for name, root, indices, opening, depth in checks:
        if opening.leaves.shape[0] != len(indices):
            raise Rejected(f"{name}: {opening.leaves.shape[0]} openings where the queries drawn from the transcript "
                           f"need {len(indices)} (openings dropped or added, or a committed value was altered)")
        need = MK.multiproof_size(indices, depth)
        if len(opening.nodes) != need * MK.DIGEST_BYTES:
            raise Rejected(f"{name}: the multiproof has {len(opening.nodes) // MK.DIGEST_BYTES} digests where these "
                           f"queries need {need} (openings dropped or added)")
        digests = MK.hash_leaves(opening.leaves) if len(indices) else b""
        leaves = [digests[i : i + MK.DIGEST_BYTES] for i in range(0, len(digests), MK.DIGEST_BYTES)]
        if not MK.verify_multiproof(root, depth, indices, leaves, opening.nodes, need):
            raise Rejected(f"{name}: Merkle path (multiproof) from the opened leaves does not lead to the committed root")


def _deep_values(proof: PF.Proof, xs: list[int], k: FM.DeepCoeffs) -> list[F.Ext]:
    """F at the 4 points of each query coset (t-major: xs[t * Q + qi]) from the opened rows."""
    prm, air = proof.params, proof.params.air
    w, c2, zk = air.width, 2 * prm.chunks, air.zk
    cc = prm.comp_columns
    q = proof.trace_open.leaves.shape[0]
    tl, cl = proof.trace_open.leaves.tolist(), proof.comp_open.leaves.tolist()
    a0, a1 = [v[0] for v in k.a_trace], [v[1] for v in k.a_trace]
    b0, b1 = [v[0] for v in k.b_trace], [v[1] for v in k.b_trace]
    e0, e1 = [v[0] for v in k.e_comp], [v[1] for v in k.e_comp]
    norms, rows = [], []
    for t in range(PF.FRI_ARITY):
        for qi in range(q):
            x = xs[t * q + qi]
            dz, dgz = (x - k.z[0]) % P, (x - k.gz[0]) % P
            norms += [(dz * dz - 7 * k.z[1] * k.z[1]) % P, (dgz * dgz - 7 * k.gz[1] * k.gz[1]) % P]
            rows.append((tl[qi][t * w : (t + 1) * w], cl[qi][t * cc : (t + 1) * cc], dz, dgz))
    inv = F.batch_inv(norms)
    mul = operator.mul
    out = []
    for i, (tv, cv, dz, dgz) in enumerate(rows):
        hv = cv[:c2]
        nz = ((sum(map(mul, a0, tv)) + sum(map(mul, e0, hv)) - k.const_z[0]) % P,
              (sum(map(mul, a1, tv)) + sum(map(mul, e1, hv)) - k.const_z[1]) % P)
        ngz = ((sum(map(mul, b0, tv)) - k.const_gz[0]) % P, (sum(map(mul, b1, tv)) - k.const_gz[1]) % P)
        iz, igz = inv[2 * i], inv[2 * i + 1]
        v = F.eadd(_ext_mul(nz, (dz * iz % P, k.z[1] * iz % P)), _ext_mul(ngz, (dgz * igz % P, k.gz[1] * igz % P)))
        if zk:
            v = ((v[0] + cv[c2]) % P, (v[1] + cv[c2 + 1]) % P)
        out.append(v)
    return out


def _check_fri(proof: PF.Proof, qs: list[int], coeffs: FM.DeepCoeffs, betas: list[F.Ext]) -> None:
    prm = proof.params
    m, degs, q = prm.lde_size, prm.fri_degrees, len(qs)
    h = F.root_of_unity(m)
    quarter0 = m // PF.FRI_ARITY
    w4 = pow(h, quarter0, P)
    base = [SHIFT * pow(h, qq, P) % P for qq in qs]
    xs = [b * pow(w4, t, P) % P for t in range(PF.FRI_ARITY) for b in base]
    flat = _deep_values(proof, xs, coeffs)
    vals = [[flat[t * q + i] for t in range(PF.FRI_ARITY)] for i in range(q)]  # per query, t = 0..3
    pos = list(qs)
    if len(degs) == 1:  # no folding: layer 0 is the remainder itself
        for i in range(q):
            for t in range(PF.FRI_ARITY):
                if _eval_poly(proof.remainder, xs[t * q + i]) != vals[i][t]:
                    raise Rejected(f"FRI remainder does not match the DEEP composition at query {qs[i]}")
        return
    size, shift = m, SHIFT
    inv2 = FM.INV2
    for layer in range(1, len(degs)):
        hl = F.root_of_unity(size)
        quarter = size // PF.FRI_ARITY
        r = pow(hl, quarter, P)
        js = [p % quarter for p in pos]
        x0 = [shift * pow(hl, j, P) % P for j in js]
        inv = F.batch_inv([v for x in x0 for v in (2 * x % P, 2 * x * r % P, 2 * x * x % P)])
        beta = betas[layer - 1]
        beta2 = _ext_mul(beta, beta)
        folded = []
        for i in range(q):
            v = vals[i]
            g = []
            for t in (0, 1):
                a, b = v[t], v[t + 2]
                ev = ((a[0] + b[0]) * inv2 % P, (a[1] + b[1]) * inv2 % P)
                od = ((a[0] - b[0]) * inv[3 * i + t] % P, (a[1] - b[1]) * inv[3 * i + t] % P)
                g.append(F.eadd(ev, _ext_mul(beta, od)))
            ev = ((g[0][0] + g[1][0]) * inv2 % P, (g[0][1] + g[1][1]) * inv2 % P)
            od = ((g[0][0] - g[1][0]) * inv[3 * i + 2] % P, (g[0][1] - g[1][1]) * inv[3 * i + 2] % P)
            folded.append(F.eadd(ev, _ext_mul(beta2, od)))
        size, shift, pos = quarter, pow(shift, PF.FRI_ARITY, P), js
        if layer < len(degs) - 1:
            opening = proof.fri_open[layer - 1]
            idx = sorted({p % (size // PF.FRI_ARITY) for p in pos})
            row_of = {j: row for row, j in enumerate(idx)}
            leaves = opening.leaves.tolist()
            nxt = []
            for i in range(q):
                leaf = leaves[row_of[pos[i] % (size // PF.FRI_ARITY)]]
                slot = pos[i] // (size // PF.FRI_ARITY)
                if (leaf[2 * slot], leaf[2 * slot + 1]) != folded[i]:
                    raise Rejected(f"FRI layer {layer}: committed value at query {qs[i]} is not the fold of layer {layer - 1}")
                nxt.append([(leaf[2 * t], leaf[2 * t + 1]) for t in range(PF.FRI_ARITY)])
            vals = nxt
        else:
            hr = F.root_of_unity(size)
            for i in range(q):
                xr = shift * pow(hr, pos[i], P) % P
                if _eval_poly(proof.remainder, xr) != folded[i]:
                    raise Rejected(f"FRI remainder does not match the last fold at query {qs[i]}")


def _eval_poly(coeffs: list[F.Ext], x: int) -> F.Ext:
    a0 = a1 = 0
    for c in reversed(coeffs):
        a0, a1 = (a0 * x + c[0]) % P, (a1 * x + c[1]) % P
    return (a0, a1)


@dataclass(frozen=True)
class Replay:
    """The verifier's challenges, replayed from a proof's transcript."""

    alphas: list[F.Ext]
    z: F.Ext
    coeffs: FM.DeepCoeffs
    betas: list[F.Ext]
    pow_ok: bool
    queries: list[int]  # sorted distinct query positions (first-layer cosets)


def _replay(proof: PF.Proof) -> Replay:
    prm, air = proof.params, proof.params.air
    tr = _header(prm, proof.public)
    tr.absorb_bytes(proof.trace_root)
    alphas = [tr.challenge_ext() for _ in range(_n_alphas(air))]
    tr.absorb_bytes(proof.comp_root)
    z = _draw_z(tr)
    tr.absorb(_ext_flat(proof.ood))
    coeffs = _deep_coeffs(tr, air, prm.chunks, proof.ood, z, F.root_of_unity(prm.steps))
    degs = prm.fri_degrees
    betas = []
    for layer in range(1, len(degs)):
        betas.append(tr.challenge_ext())
        if layer < len(degs) - 1:
            tr.absorb_bytes(proof.fri_roots[layer - 1])
    tr.absorb(_ext_flat(proof.remainder))
    pow_ok = tr.check_pow(proof.pow_nonce, prm.grinding)
    tr.absorb([proof.pow_nonce])
    qs = sorted(set(tr.challenge_indices(prm.queries, prm.lde_size // PF.FRI_ARITY)))
    return Replay(alphas, z, coeffs, betas, pow_ok, qs)


def query_positions(proof_bytes: bytes) -> list[int]:
    """The first-layer coset positions a (well-formed) proof opens (tests, test vectors)."""
    return _replay(PF.decode(proof_bytes)).queries


def _verify(proof: PF.Proof, expect: dict | None, min_security_bits: int, min_provable_bits: int) -> Verdict:
    prm, air, public = proof.params, proof.params.air, proof.public
    floor = max(SEC.MIN_SECURITY_BITS, min_security_bits)
    if prm.security_bits < floor:
        raise Rejected(f"conjectured security {prm.security_bits} bits is below the {floor}-bit floor "
                       f"(blowup {prm.blowup}, {prm.queries} queries, {prm.grinding} grinding bits): refused")
    if prm.provable_bits < min_provable_bits:
        raise Rejected(f"provable security {prm.provable_bits} bits is below the required {min_provable_bits}")
    if expect is not None:
        _check_expected(proof, expect)
    n, w, k = prm.steps, air.width, prm.chunks
    rp = _replay(proof)
    t_z, t_gz, h_z = proof.ood[:w], proof.ood[w : 2 * w], proof.ood[2 * w :]
    want = CP.composition_at(air, public, n, prm.last_row, rp.alphas, t_z, t_gz, rp.z)
    got = (0, 0)
    zs = F.epow(rp.z, prm.chunk_stride)
    for j in reversed(range(k)):
        got = F.eadd(F.emul(got, zs), h_z[j])
    if got != want:
        raise Rejected("out-of-domain check failed: the composition does not match the trace at z "
                       "(public values, trace or composition commitment inconsistent)")
    if not rp.pow_ok:
        raise Rejected(f"proof of work: the nonce does not meet the {prm.grinding}-bit grinding target")
    coeffs, betas, qs, degs = rp.coeffs, rp.betas, rp.queries, prm.fri_degrees
    checks = [("trace commitment", proof.trace_root, qs, proof.trace_open, prm.depth(0)),
              ("composition commitment", proof.comp_root, qs, proof.comp_open, prm.depth(0))]
    for layer in range(1, len(degs) - 1):
        quarter = prm.layer_size(layer) // PF.FRI_ARITY
        idx = sorted({q % quarter for q in qs})
        checks.append((f"FRI layer {layer}", proof.fri_roots[layer - 1], idx, proof.fri_open[layer - 1], prm.depth(layer)))
    _check_trees(checks)
    _check_fri(proof, qs, coeffs, betas)
    return Verdict(True, f"valid {air.name} proof: {n} steps, {prm.security_bits}-bit conjectured security "
                   f"({prm.provable_bits} provable)", prm.security_bits, air.name, n, dict(public),
                   prm.provable_bits, _param_map(prm))


def _param_map(prm: PF.Params) -> dict[str, int]:
    return {"blowup": prm.blowup, "queries": prm.queries, "grinding": prm.grinding}


def _check_expected(proof: PF.Proof, expect: dict) -> None:
    """The proof must be for the statement that was asked for, not merely some valid statement."""
    prm = proof.params
    for key, have in (("air", prm.air.name), ("steps", prm.steps), ("blowup", prm.blowup), ("queries", prm.queries),
                      ("grinding", prm.grinding)):
        if key in expect and expect[key] != have:
            raise Rejected(f"proof is for a different statement: {key} {have!r}, expected {expect[key]!r}")
    for name, v in (expect.get("public_inputs") or {}).items():
        if name not in proof.public:
            raise Rejected(f"proof is for a different statement: it has no public value {name!r} "
                           f"(it has {', '.join(proof.public)})")
        if proof.public.get(name) != v:
            raise Rejected(f"proof is for a different statement: public value {name}={proof.public.get(name)}, expected {v}")


def verify(proof_bytes: bytes, expect: dict | None = None, min_security_bits: int = 0,
           min_provable_bits: int = 0) -> Verdict:
    """Check a proof; never raises for a bad proof. `expect` (a zk spec, or any subset of its keys with
    `public_inputs` holding any public values, outputs included) pins the statement. Proofs below the
    security floor (security.MIN_SECURITY_BITS, conjectured) or below `min_security_bits` are refused."""
    try:
        proof = PF.decode(proof_bytes)
    except PF.ProofFormatError as e:
        return Verdict(False, f"malformed proof: {e}")
    try:
        return _verify(proof, expect, min_security_bits, min_provable_bits)
    except Rejected as e:
        reason = str(e)
    except Exception as e:  # noqa: BLE001 - hostile input must never crash the coordinator
        reason = f"proof could not be checked ({type(e).__name__}: {e})"
    prm = proof.params
    return Verdict(False, reason, prm.security_bits, prm.air.name, prm.steps, dict(proof.public),
                   prm.provable_bits, _param_map(prm))
