"""Merkle commitments (BLAKE2s-256) over the rows of column-major evaluation tables, opened with batched
multiproofs.

Leaf layout (one leaf per coset of `ARITY` points, so a FRI query opens one leaf per tree): for columns
cols[c][i], i < n, leaf j < n/ARITY holds [cols[c][j + t * n/ARITY] for t in 0..ARITY-1 for c in columns]
(t outer, columns inner), i.e. the rows at the points x, i*x, -x, -i*x of one arity-4 coset, followed by
the leaf's salt (random elements, zero-knowledge proofs only). Elements are hashed as little-endian uint64.

    leaf digest = BLAKE2s(leaf bytes, person="gmzkleaf"),  node = BLAKE2s(left || right, person="gmzknode")

A multiproof opens a sorted set of distinct leaves: the verifier hashes the opened leaves and climbs level by
level; at each level, for each known node (increasing index) whose sibling it cannot compute, it takes the
next digest from the proof's `nodes`. So paths that meet share their upper part and no digest is sent twice.

The OpenCL backend hashes with the same BLAKE2s in a kernel (blake2s.cl); both give identical trees.

Why BLAKE2s and not Poseidon here: a verifier in Python hashes ~1,500 nodes at 2^16 steps. BLAKE2s from
hashlib costs ~1 us a node; batched numpy Poseidon costs a few ms per tree level (~60 ms a proof), which
alone is three times the verifier's budget. Poseidon stays the hash of the statements (the membership AIR).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

ARITY = 4
DIGEST_BYTES = 32
_LEAF = b"gmzkleaf"
_NODE = b"gmzknode"
PERSON_WORDS = {"leaf": (int.from_bytes(_LEAF[:4], "little"), int.from_bytes(_LEAF[4:], "little")),
                "node": (int.from_bytes(_NODE[:4], "little"), int.from_bytes(_NODE[4:], "little"))}  # for kernels


def leaf_rows(cols: np.ndarray, arity: int = ARITY, salt: np.ndarray | None = None) -> np.ndarray:
    """(c, n) columns -> (n/arity, arity*c [+ salt width]) leaf rows in the documented order."""
    cols = np.asarray(cols, dtype=np.uint64)
    c, n = cols.shape
    rows = cols.reshape(c, arity, n // arity).transpose(2, 1, 0).reshape(n // arity, arity * c)
    if salt is not None:
        rows = np.concatenate([rows, np.asarray(salt, dtype=np.uint64)], axis=1)
    return np.ascontiguousarray(rows)


def hash_leaves(rows: np.ndarray) -> bytes:
    """Digests of (count, L) leaf rows, concatenated (count * 32 bytes)."""
    data = memoryview(np.ascontiguousarray(rows, dtype="<u8").tobytes())
    step = 8 * rows.shape[1]
    b2 = hashlib.blake2s
    return b"".join([b2(data[i : i + step], person=_LEAF).digest() for i in range(0, len(data), step)])


def hash_leaf(row) -> bytes:
    return hashlib.blake2s(np.ascontiguousarray(row, dtype="<u8").tobytes(), person=_LEAF).digest()


def hash_node(left: bytes, right: bytes) -> bytes:
    return hashlib.blake2s(left + right, person=_NODE).digest()


def build_levels(leaf_digests: bytes) -> list[bytes]:
    """All levels, leaves first, each the concatenation of its digests; the last is the root."""
    levels = [bytes(leaf_digests)]
    b2 = hashlib.blake2s
    while len(levels[-1]) > DIGEST_BYTES:
        cur = memoryview(levels[-1])
        levels.append(b"".join([b2(cur[i : i + 2 * DIGEST_BYTES], person=_NODE).digest()
                                for i in range(0, len(cur), 2 * DIGEST_BYTES)]))
    return levels


@dataclass(frozen=True)
class MerkleTree:
    levels: list[bytes]
    leaves: np.ndarray  # (n_leaves, leaf_len): the opened data

    @property
    def root(self) -> bytes:
        return self.levels[-1]

    @property
    def depth(self) -> int:
        return len(self.levels) - 1

    def node(self, level: int, index: int) -> bytes:
        return self.levels[level][index * DIGEST_BYTES : (index + 1) * DIGEST_BYTES]

    def multiproof(self, indices: list[int]) -> bytes:
        """The sibling digests the verifier cannot compute, in the documented order."""
        out = []
        known = sorted(set(indices))
        for k in range(self.depth):
            have = set(known)
            for i in known:
                if i ^ 1 not in have:
                    out.append(self.node(k, i ^ 1))
            known = sorted({i >> 1 for i in known})
        return b"".join(out)


def multiproof_size(indices: list[int], depth: int) -> int:
    """How many digests a multiproof of these (sorted, distinct) leaves at this depth holds."""
    count, known = 0, sorted(set(indices))
    for _ in range(depth):
        have = set(known)
        count += sum(1 for i in known if i ^ 1 not in have)
        known = sorted({i >> 1 for i in known})
    return count


def verify_multiproof(root: bytes, depth: int, indices: list[int], leaf_digests: list[bytes], nodes: bytes,
                      size: int | None = None) -> bool:
    """True if the leaves at `indices` (sorted, distinct) and the proof's `nodes` lead to `root`. `size`:
    multiproof_size(indices, depth) when the caller has it already."""
    size = multiproof_size(indices, depth) if size is None else size
    if len(nodes) != DIGEST_BYTES * size or len(leaf_digests) != len(indices):
        return False
    cur = dict(zip(indices, leaf_digests, strict=True))
    pos = 0
    b2 = hashlib.blake2s
    for _ in range(depth):
        nxt = {}
        for i in sorted(cur):
            if i & 1 and i ^ 1 in cur:
                continue  # hashed with its left sibling
            if i ^ 1 in cur:
                sib = cur[i ^ 1]
            else:
                sib = nodes[pos : pos + DIGEST_BYTES]
                pos += DIGEST_BYTES
            pair = cur[i] + sib if i & 1 == 0 else sib + cur[i]
            nxt[i >> 1] = b2(pair, person=_NODE).digest()
        cur = nxt
    return cur == {0: bytes(root)}
