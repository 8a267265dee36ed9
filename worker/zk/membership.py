"""The membership AIR: knowledge of a secret whose Poseidon digest is a leaf of a Merkle tree with a public
root, without revealing the secret, the leaf or the path (the proof is zero-knowledge: see stark.py).

Public: `depth` (path length, 1..64) and the root digest `root0..root3`. Private witness: `secret` (four field
elements) and `path` (one [sibling0..sibling3, bit] per level from the leaf up; bit 1 = the current node is
the right child). leaf = hash_elements(secret) (the sponge of poseidon.py), parent = compress(left, right).

Trace: 17 columns -- the Poseidon state s0..s11, a sibling digest sib0..sib3 and a direction bit -- in blocks
of 32 rows, one permutation per block: row 32b + r (r < 30) holds the state before round r, row 32b + 30
the permutation's output, row 32b + 31 the next block's input. Periodic columns (period 32): the round
constants of round r, `fa` (1 on full rounds), `pa` (1 on partial rounds), `glue` (1 on row 30), `copy` (1 on
row 31). Transition constraints, for each lane i:

    next_i = MDS(u)_i + glue * G_i + copy * s_i,  with v_j = s_j + rc_j,
    u_0 = (fa + pa) v_0^7,  u_j = fa v_j^7 + pa v_j (j >= 1),
    G = (bit ? sib : s[0..4]) || (bit ? s[0..4] : sib) || 0^4    (written as s + bit (sib - s), ...)

and glue * bit * (bit - 1) = 0. Boundaries: row 0 is the sponge's start for a 4-element input (s4..s7 = 0,
s8 = 4, s9..s11 = 0; s0..s3 = the secret, unconstrained); row 32 depth + 30 holds the root. Blocks after the
root keep hashing (sibling 0) up to the last computation row. Constraint degree: 7 in the trace, times one
periodic column.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import field as F
from . import poseidon as PS
from .air import Air, Boundary

BLOCK = 32
MAX_DEPTH = 64
WIDTH = 17
SIB, BIT = 12, 16


def _periodic() -> tuple[tuple[int, ...], ...]:
    prm = PS.params()
    half, rounds = prm.full_rounds_half, prm.rounds
    rc = [[0] * BLOCK for _ in range(PS.WIDTH)]
    for r in range(rounds):
        for j in range(PS.WIDTH):
            rc[j][r] = prm.round_constants[PS.WIDTH * r + j]
    fa = [1 if r < half or half + prm.partial_rounds <= r < rounds else 0 for r in range(BLOCK)]
    pa = [1 if half <= r < half + prm.partial_rounds else 0 for r in range(BLOCK)]
    glue = [1 if r == rounds else 0 for r in range(BLOCK)]
    copy = [1 if r == rounds + 1 else 0 for r in range(BLOCK)]
    return tuple(tuple(c) for c in (*rc, fa, pa, glue, copy))


def check_witness(witness: Any, public: dict[str, int]) -> dict[str, Any]:
    """{"secret": [4 elements], "path": [[sib0, sib1, sib2, sib3, bit], ...] (depth entries)}."""
    if not isinstance(witness, dict) or set(witness) != {"secret", "path"}:
        raise ValueError("the membership witness is a map with exactly 'secret' and 'path'")
    secret, path = witness["secret"], witness["path"]

    def elems(v, count, what):
        if not isinstance(v, list | tuple) or len(v) != count or any(type(e) is not int or not 0 <= e < F.P for e in v):
            raise ValueError(f"{what} must be {count} field elements (integers in [0, p))")
        return tuple(v)

    secret = elems(secret, 4, "witness 'secret'")
    if not isinstance(path, list | tuple) or len(path) != public["depth"]:
        raise ValueError(f"witness 'path' must have depth = {public['depth']} entries")
    out = []
    for i, step in enumerate(path):
        s = elems(step, 5, f"witness path[{i}] ([sibling x4, bit])")
        if s[4] not in (0, 1):
            raise ValueError(f"witness path[{i}]: the direction bit must be 0 or 1")
        out.append((s[:4], s[4]))
    return {"secret": secret, "path": tuple(out)}


def leaf(secret) -> tuple[int, ...]:
    return PS.hash_elements(list(secret))


def root_of(secret, path) -> tuple[int, ...]:
    """The root a witness leads to (Python ints; the ground truth for the AIR)."""
    node = leaf(secret)
    for sib, bit in path:
        node = PS.compress(tuple(sib), node) if bit else PS.compress(node, tuple(sib))
    return node


def make_tree(secrets: list[list[int]]) -> tuple[tuple[int, ...], list[dict[str, Any]]]:
    """A Merkle tree over hash(secret) leaves (padded with zero digests to a power of two): its root and
    every member's witness {"secret", "path"} (for tests, examples and `mesh-node prove --air membership`)."""
    leaves = [leaf(s) for s in secrets]
    size = 1
    while size < max(len(leaves), 2):
        size *= 2
    level = leaves + [(0, 0, 0, 0)] * (size - len(leaves))
    levels = [level]
    while len(level) > 1:
        level = [PS.compress(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        levels.append(level)
    witnesses = []
    for idx, s in enumerate(secrets):
        path, i = [], idx
        for lv in levels[:-1]:
            path.append([*lv[i ^ 1], i & 1])
            i >>= 1
        witnesses.append({"secret": list(s), "path": path})
    return levels[-1][0], witnesses


def _check_public(public: dict[str, int]) -> int:
    d = public["depth"]
    if not 1 <= d <= MAX_DEPTH:
        raise ValueError(f"membership: depth must be between 1 and {MAX_DEPTH}, got {d}")
    return d


def _min_rows(public: dict[str, int]) -> int:
    return BLOCK * _check_public(public) + PS.params().rounds + 1


def _rows(public: dict[str, int], last: int) -> tuple[int, ...]:
    return (0, BLOCK * public["depth"] + PS.params().rounds)


def _trace(inputs: dict[str, int], witness: dict[str, Any], rows: int) -> np.ndarray:
    depth = _check_public(inputs)
    rounds = PS.params().rounds
    t = np.zeros((WIDTH, rows), dtype=np.uint64)
    state = [*witness["secret"], 0, 0, 0, 0, 4, 0, 0, 0]
    block = 0
    while BLOCK * block < rows:
        base = BLOCK * block
        states = PS.round_states(state)
        out = states[-1]
        if block < depth:
            sib, bit = witness["path"][block]
        else:
            sib, bit = (0, 0, 0, 0), 0
        digest = out[:4]
        nxt = ([*sib, *digest] if bit else [*digest, *sib]) + [0, 0, 0, 0]
        for r in range(BLOCK):
            row = base + r
            if row >= rows:
                break
            t[:PS.WIDTH, row] = states[r] if r <= rounds else nxt
            if r == rounds:
                t[SIB : SIB + 4, row] = sib
                t[BIT, row] = bit
        if block == depth:
            root = tuple(out[:4])
            want = tuple(inputs[f"root{i}"] for i in range(4))
            if root != want:
                raise ValueError("the witness does not lead to the public root (wrong secret or path)")
        state = nxt
        block += 1
    return t


def _transition(cur, nxt, per, public, ops):
    rc, fa, pa, glue, copy = per[:12], per[12], per[13], per[14], per[15]

    def pow7(v):
        v2 = ops.mul(v, v)
        return ops.mul(ops.mul(v2, v), ops.mul(v2, v2))

    v = [ops.add(cur[j], rc[j]) for j in range(PS.WIDTH)]
    u = [ops.mul(ops.add(fa, pa), pow7(v[0]))]
    u += [ops.add(ops.mul(fa, pow7(v[j])), ops.mul(pa, v[j])) for j in range(1, PS.WIDTH)]
    mds = ops.mds(u)
    bit, sib, node = cur[BIT], cur[SIB : SIB + 4], cur[:4]
    glued = [ops.add(node[i], ops.mul(bit, ops.sub(sib[i], node[i]))) for i in range(4)]
    glued += [ops.add(sib[i], ops.mul(bit, ops.sub(node[i], sib[i]))) for i in range(4)]
    out = []
    for i in range(PS.WIDTH):
        want = ops.add(mds[i], ops.mul(copy, cur[i]))
        if i < 8:
            want = ops.add(want, ops.mul(glue, glued[i]))
        out.append(ops.sub(nxt[i], want))
    out.append(ops.mul(glue, ops.sub(ops.mul(bit, bit), bit)))
    return out


MEMBERSHIP = Air(
    name="membership",
    description="knowledge of a secret whose Poseidon digest is a leaf of a Merkle tree with the public root "
    "(root0..root3) at the public depth; the secret, leaf and path stay private (zero-knowledge proof)",
    width=WIDTH,
    inputs=("depth", "root0", "root1", "root2", "root3"),
    outputs=(),
    trace_degree=7,
    n_transitions=PS.WIDTH + 1,
    boundaries=(
        *(Boundary(c, 0, 4 if c == 8 else 0) for c in range(4, 12)),
        *(Boundary(c, 1, f"root{c}") for c in range(4)),
    ),
    _trace=_trace,
    _transition=_transition,
    _rows=_rows,
    periodic=_periodic(),
    periodic_degree=1,
    zk=True,
    _min_rows=_min_rows,
    _witness=check_witness,
)
