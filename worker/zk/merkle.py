"""Merkle commitments over the rows of column-major evaluation tables, Poseidon 2-to-1 compression.

Leaf layout (one leaf per coset of `ARITY` points, so a FRI query opens one leaf per tree): for columns
cols[c][i], i < n, leaf j < n/ARITY holds [cols[c][j + t * n/ARITY] for t in 0..ARITY-1 for c in columns]
(t outer, columns inner), i.e. the rows at the points x, i*x, -x, -i*x of one arity-4 coset. The leaf digest
is the Poseidon sponge of those elements; internal node = compress(left, right).

Building is delegated to a backend (numpy or OpenCL); verification here is numpy, batched over all queries
of one tree (one Poseidon call per level instead of one per node).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import poseidon as PS

ARITY = 4


def leaf_rows(cols: np.ndarray, arity: int = ARITY) -> np.ndarray:
    """(c, n) columns -> (n/arity, arity*c) leaf rows in the documented order."""
    cols = np.asarray(cols, dtype=np.uint64)
    c, n = cols.shape
    return np.ascontiguousarray(cols.reshape(c, arity, n // arity).transpose(2, 1, 0).reshape(n // arity, arity * c))


def levels_np(leaf_digests: np.ndarray) -> list[np.ndarray]:
    """All levels, leaves first: level k has n/2^k digests of 4 elements."""
    levels = [np.asarray(leaf_digests, dtype=np.uint64)]
    while levels[-1].shape[0] > 1:
        cur = levels[-1]
        levels.append(PS.compress_np(cur[0::2], cur[1::2]))
    return levels


@dataclass(frozen=True)
class MerkleTree:
    levels: list[np.ndarray]
    leaves: np.ndarray  # (n_leaves, leaf_len): the opened data

    @property
    def root(self) -> np.ndarray:
        return self.levels[-1][0]

    @property
    def depth(self) -> int:
        return len(self.levels) - 1

    def path(self, index: int) -> np.ndarray:
        """Sibling digests from the leaf level up: (depth, 4)."""
        out = np.empty((self.depth, PS.DIGEST), dtype=np.uint64)
        for k in range(self.depth):
            out[k] = self.levels[k][(index >> k) ^ 1]
        return out


def root_bytes(root: np.ndarray) -> bytes:
    return np.asarray(root, dtype="<u8").tobytes()


def verify_batch(root: np.ndarray, indices: np.ndarray, leaves: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """Check many openings of one tree at once: leaves (q, L), paths (q, depth, 4). Returns a bool per
    opening (True = the path leads to the root)."""
    indices = np.asarray(indices, dtype=np.int64)
    node = PS.hash_rows_np(leaves)
    for k in range(paths.shape[1]):
        sib = paths[:, k, :]
        is_right = ((indices >> k) & 1).astype(bool)[:, None]
        left = np.where(is_right, sib, node)
        right = np.where(is_right, node, sib)
        node = PS.compress_np(left, right)
    return np.all(node == np.asarray(root, dtype=np.uint64)[None, :], axis=1)


def verify_many(checks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """verify_batch for several trees at once: (root, indices, leaves, paths) each. Levels of all trees are
    compressed together, one batched permutation per level, because the verifier's cost is dominated by
    per-call overhead at its small batch sizes."""
    nodes = PS.hash_rows_many([leaves for _, _, leaves, _ in checks])
    depth = max((paths.shape[1] for *_, paths in checks), default=0)
    for k in range(depth):
        active = [i for i, c in enumerate(checks) if c[3].shape[1] > k and c[3].shape[0]]
        if not active:
            continue
        lefts, rights = [], []
        for i in active:
            _, idx, _, paths = checks[i]
            is_right = ((np.asarray(idx, dtype=np.int64) >> k) & 1).astype(bool)[:, None]
            sib = paths[:, k, :]
            lefts.append(np.where(is_right, sib, nodes[i]))
            rights.append(np.where(is_right, nodes[i], sib))
        out = PS.compress_np(np.concatenate(lefts), np.concatenate(rights))
        start = 0
        for i in active:
            cnt = nodes[i].shape[0]
            nodes[i] = out[start : start + cnt]
            start += cnt
    return [np.all(nodes[i] == np.asarray(c[0], dtype=np.uint64)[None, :], axis=1) for i, c in enumerate(checks)]


def verify_path(root: tuple[int, ...], index: int, leaf: list[int], path: list[tuple[int, ...]]) -> bool:
    """Python-int check of one opening (ground truth for the batched check)."""
    node = PS.hash_elements(leaf)
    for k, sib in enumerate(path):
        node = PS.compress(sib, node) if (index >> k) & 1 else PS.compress(node, sib)
    return node == tuple(root)
