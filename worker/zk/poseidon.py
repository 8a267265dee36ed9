"""Poseidon over Goldilocks (width 12, x^7, 4 full + 22 partial + 4 full rounds; Plonky2's parameters) and
the sponge/compression built on it.

Parameters come from the package data file (copied from the reference set) so that every path -- Python ints
(ground truth), numpy (reference, batched over many states) and OpenCL -- reads the same constants. The MDS
entries are small (< 2^7), so the numpy path multiplies 32-bit limbs by them and reduces once per output
instead of doing 144 full modular products.

Hashing conventions (documented in docs/proof-format.md):
- sponge: rate 8 (lanes 0..7), capacity 4 (lanes 8..11). Lane 8 starts at the input length, so inputs of
  different lengths never collide; each chunk of 8 overwrites the rate lanes (a short last chunk is
  zero-padded), then the permutation runs; the digest is lanes 0..3.
- compress(left, right): state = left || right || 0^4, permute, lanes 0..3.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import field as F

WIDTH = 12
RATE = 8
DIGEST = 4
PARAMS_FILE = Path(__file__).with_name("poseidon_goldilocks_w12.json")


@dataclass(frozen=True)
class PoseidonParams:
    width: int
    alpha: int
    full_rounds_half: int
    partial_rounds: int
    mds_circ: tuple[int, ...]
    mds_diag: tuple[int, ...]
    round_constants: tuple[int, ...]
    test_vectors: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]

    @property
    def rounds(self) -> int:
        return 2 * self.full_rounds_half + self.partial_rounds

    def mds_matrix(self) -> list[list[int]]:
        """out[r] = sum_i state[(i + r) % 12] * circ[i] + state[r] * diag[r] as an explicit matrix."""
        m = [[0] * self.width for _ in range(self.width)]
        for r in range(self.width):
            for i in range(self.width):
                m[r][(i + r) % self.width] += self.mds_circ[i]
            m[r][r] += self.mds_diag[r]
        return m


@lru_cache(maxsize=1)
def params() -> PoseidonParams:
    raw = json.loads(PARAMS_FILE.read_text())
    if int(raw["field_modulus"], 16) != F.P or raw["width"] != WIDTH:
        raise ValueError(f"{PARAMS_FILE}: not Goldilocks width-12 parameters")
    prm = PoseidonParams(
        width=raw["width"],
        alpha=raw["alpha"],
        full_rounds_half=raw["full_rounds_half"],
        partial_rounds=raw["partial_rounds"],
        mds_circ=tuple(int(x) for x in raw["mds_circ"]),
        mds_diag=tuple(int(x) for x in raw["mds_diag"]),
        round_constants=tuple(int(x, 16) for x in raw["round_constants"]),
        test_vectors=tuple(
            (tuple(int(x, 16) for x in tv["input"]), tuple(int(x, 16) for x in tv["output"]))
            for tv in raw["test_vectors"]
        ),
    )
    if len(prm.round_constants) != prm.rounds * WIDTH:
        raise ValueError(f"{PARAMS_FILE}: expected {prm.rounds * WIDTH} round constants")
    if max(prm.mds_circ) + max(prm.mds_diag) >= 1 << 8:
        raise ValueError("MDS entries must be small: the reduction tricks assume < 2^8")
    return prm


# ---------------------------------------------------------------- Python ints (ground truth)


@lru_cache(maxsize=1)
def _py_tables() -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    prm = params()
    rc = tuple(tuple(prm.round_constants[WIDTH * r : WIDTH * (r + 1)]) for r in range(prm.rounds))
    return rc, tuple(tuple(row) for row in prm.mds_matrix())


def permute(state: list[int] | tuple[int, ...]) -> list[int]:
    prm = params()
    p = F.P
    s = [int(x) % p for x in state]
    if len(s) != WIDTH:
        raise ValueError(f"Poseidon state must have {WIDTH} elements, got {len(s)}")
    if prm.alpha != 7:
        raise ValueError("this implementation hard-codes the x^7 S-box")
    rcs, _ = _py_tables()
    circ, diag = prm.mds_circ, prm.mds_diag
    half = prm.full_rounds_half
    mul = operator.mul
    for r, rc in enumerate(rcs):
        s = [x + c for x, c in zip(s, rc, strict=True)]  # < 2p: reduced by the S-box or the MDS
        if r < half or r >= half + prm.partial_rounds:
            s = [x * x2 % p * (x2 * x2 % p) % p for x, x2 in ((x, x * x % p) for x in s)]
        else:
            x = s[0]
            x2 = x * x % p
            s[0] = x * x2 % p * (x2 * x2 % p) % p
        s2 = s + s  # out[r] = sum_i circ[i] * s[(i + r) % 12] + diag[r] * s[r]
        s = [(sum(map(mul, circ, s2[i : i + WIDTH])) + diag[i] * s[i]) % p for i in range(WIDTH)]
    return s


def hash_elements(values: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Sponge digest (4 elements) of a fixed-length input."""
    state = [0] * WIDTH
    state[RATE] = len(values)
    vals = [int(v) % F.P for v in values]
    for start in range(0, max(len(vals), 1), RATE):
        chunk = vals[start : start + RATE]
        state[:RATE] = chunk + [0] * (RATE - len(chunk))
        state = permute(state)
    return tuple(state[:DIGEST])


def compress(left: tuple[int, ...], right: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(permute(list(left) + list(right) + [0] * DIGEST)[:DIGEST])


# ---------------------------------------------------------------- numpy, batched over states (reference)

_M32 = np.uint64(0xFFFF_FFFF)
_S32 = np.uint64(32)
_SMALL_BATCH = 64


@lru_cache(maxsize=1)
def _np_tables() -> tuple[np.ndarray, np.ndarray]:
    prm = params()
    rc = np.array(prm.round_constants, dtype=np.uint64).reshape(prm.rounds, WIDTH, 1)
    mds = np.array(prm.mds_matrix(), dtype=np.uint64)
    return rc, mds


def _np_mds(state: np.ndarray, mds: np.ndarray) -> np.ndarray:
    """state (12, n): products of 32-bit limbs by entries < 2^8 summed without overflow, then one reduction
    of lo + hi * 2^32 (< 2^76)."""
    lo = mds @ (state & _M32)  # < 12 * 2^8 * 2^32
    hi = mds @ (state >> _S32)
    # value = lo + hi * 2^32; hi = hh * 2^32 + hl, and 2^64 = EPSILON (mod p)
    hh = hi >> _S32
    hl = hi & _M32
    acc = lo + hh * np.uint64(F.EPSILON)  # < 2^45
    return F.np_add(acc % np.uint64(F.P), hl << _S32)  # hl << 32 <= 2^64 - 2^32 < p


def permute_np(states: np.ndarray) -> np.ndarray:
    """Permute many states at once: input and output shape (12, n) (lane-major), canonical uint64."""
    prm = params()
    rc, mds = _np_tables()
    s = np.array(states, dtype=np.uint64)
    if s.ndim != 2 or s.shape[0] != WIDTH:
        raise ValueError(f"permute_np wants shape (12, n), got {s.shape}")
    half = prm.full_rounds_half
    for r in range(prm.rounds):
        s = F.np_add(s, rc[r])
        if r < half or r >= half + prm.partial_rounds:
            s2 = F.np_mul(s, s)
            s = F.np_mul(F.np_mul(s2, s), F.np_mul(s2, s2))
        elif s.shape[1] <= _SMALL_BATCH:  # one lane of a few states: Python ints beat numpy's per-call cost
            p = F.P
            s[0] = [x * x2 % p * (x2 * x2 % p) % p for x, x2 in ((x, x * x % p) for x in s[0].tolist())]
        else:
            x = s[0]
            x2 = F.np_mul(x, x)
            s[0] = F.np_mul(F.np_mul(x2, x), F.np_mul(x2, x2))
        s = _np_mds(s, mds)
    return s


def hash_rows_np(rows: np.ndarray) -> np.ndarray:
    """Sponge digest of each row: rows (n, L) -> digests (n, 4)."""
    rows = np.asarray(rows, dtype=np.uint64)
    n, length = rows.shape
    state = np.zeros((WIDTH, n), dtype=np.uint64)
    state[RATE] = length
    for start in range(0, max(length, 1), RATE):
        chunk = rows[:, start : start + RATE].T
        state[:RATE] = 0
        state[: chunk.shape[0]] = chunk
        state = permute_np(state)
    return np.ascontiguousarray(state[:DIGEST].T)


def hash_rows_many(blocks: list[np.ndarray]) -> list[np.ndarray]:
    """hash_rows_np over several (n_i, L_i) blocks with one batched permutation per chunk index, because
    small batches (the verifier's) are dominated by numpy's per-call cost."""
    blocks = [np.asarray(b, dtype=np.uint64) for b in blocks]
    counts = [b.shape[0] for b in blocks]
    total = sum(counts)
    state = np.zeros((WIDTH, total), dtype=np.uint64)
    chunks = [max(1, -(-b.shape[1] // RATE)) for b in blocks]
    starts = np.cumsum([0, *counts])
    for i, b in enumerate(blocks):
        state[RATE, starts[i] : starts[i + 1]] = b.shape[1]
    for c in range(max(chunks, default=0)):
        cols = [np.arange(starts[i], starts[i + 1]) for i in range(len(blocks)) if chunks[i] > c]
        if not cols:
            continue
        for i, b in enumerate(blocks):
            if chunks[i] > c:
                part = b[:, c * RATE : (c + 1) * RATE].T
                state[:RATE, starts[i] : starts[i + 1]] = 0
                state[: part.shape[0], starts[i] : starts[i + 1]] = part
        idx = np.concatenate(cols)
        state[:, idx] = permute_np(state[:, idx])
    return [np.ascontiguousarray(state[:DIGEST, starts[i] : starts[i + 1]].T) for i in range(len(blocks))]


def compress_np(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Pairwise 2-to-1 compression: left, right (n, 4) -> (n, 4)."""
    n = left.shape[0]
    state = np.zeros((WIDTH, n), dtype=np.uint64)
    state[:DIGEST] = left.T
    state[DIGEST : 2 * DIGEST] = right.T
    return np.ascontiguousarray(permute_np(state)[:DIGEST].T)


@lru_cache(maxsize=1)
def mds_rows() -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(r) for r in params().mds_matrix())


def mds_np(state: np.ndarray) -> np.ndarray:
    """The MDS layer alone on (12, n) lane-major states."""
    return _np_mds(np.asarray(state, dtype=np.uint64), _np_tables()[1])


def round_states(state: list[int] | tuple[int, ...]) -> list[list[int]]:
    """The state before each round and after the last: rounds + 1 states, the last being permute(state).
    (The membership AIR's trace holds one per row.)"""
    prm = params()
    p = F.P
    rcs, _ = _py_tables()
    circ, diag = prm.mds_circ, prm.mds_diag
    half = prm.full_rounds_half
    mul = operator.mul
    s = [int(x) % p for x in state]
    out = [list(s)]
    for r, rc in enumerate(rcs):
        s = [x + c for x, c in zip(s, rc, strict=True)]
        if r < half or r >= half + prm.partial_rounds:
            s = [x * x2 % p * (x2 * x2 % p) % p for x, x2 in ((x, x * x % p) for x in s)]
        else:
            x = s[0] % p
            x2 = x * x % p
            s[0] = x * x2 % p * (x2 * x2 % p) % p
        s2 = s + s
        s = [(sum(map(mul, circ, s2[i : i + WIDTH])) + diag[i] * s[i]) % p for i in range(WIDTH)]
        out.append(list(s))
    return out
