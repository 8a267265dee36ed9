"""A bounding-volume hierarchy over triangles, built on the host with numpy and flattened for the device.

The build is level-synchronous and fully vectorised (binned SAH, all nodes of one depth at once), so even a
scene at the triangle limit builds in about a second of numpy instead of a Python loop per node.

Layout (depth-first preorder, what raytrace.cl walks): node i's left child is i + 1; `meta[i]` is
(right_child, 0, split_axis, 0) for an inner node and (first, count, -1, 0) for a leaf holding triangles
order[first:first+count]. Boxes are float32, padded a little and rounded outward, so a ray that hits a
triangle in float32 arithmetic never misses its boxes: BVH traversal then finds exactly what brute force does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEAF_SIZE = 4
MAX_DEPTH = 48  # raytrace.cl's traversal stack holds 64 entries; depth bounds its use
BINS = 16


@dataclass(frozen=True)
class FlatBVH:
    bmin: np.ndarray  # (K, 3) float32
    bmax: np.ndarray  # (K, 3) float32
    meta: np.ndarray  # (K, 4) int32
    order: np.ndarray  # (M,) int64: leaf slot -> original triangle index
    depth: int

    @property
    def node_count(self) -> int:
        return int(self.meta.shape[0])


def _area(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    e = np.maximum(hi - lo, 0.0)
    return 2.0 * (e[..., 0] * e[..., 1] + e[..., 1] * e[..., 2] + e[..., 2] * e[..., 0])


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments [start, start+length): (segment of each element, position of each element)."""
    seg = np.repeat(np.arange(starts.shape[0]), lengths)
    first = np.cumsum(lengths) - lengths
    return seg, starts[seg] + (np.arange(seg.shape[0]) - first[seg])


def _split(
    perm: np.ndarray,
    tmin: np.ndarray,
    tmax: np.ndarray,
    cent: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Binned-SAH split of every segment at once; reorders perm in place. Returns (left counts, axes)."""
    s = starts.shape[0]
    seg, pos = _ranges(starts, counts)
    tri = perm[pos]
    c = cent[tri]
    seg_first = np.cumsum(counts) - counts
    cmin = np.minimum.reduceat(c, seg_first, axis=0)
    cmax = np.maximum.reduceat(c, seg_first, axis=0)
    ext = cmax - cmin
    scale = np.where(ext > 0, BINS / np.where(ext > 0, ext, 1.0), 0.0)
    b = np.clip(((c - cmin[seg]) * scale[seg]).astype(np.int64), 0, BINS - 1)
    lo_t, hi_t = np.ascontiguousarray(tmin[tri].T), np.ascontiguousarray(tmax[tri].T)
    best_cost = np.full(s, np.inf)
    best_axis = np.zeros(s, np.int64)
    best_bin = np.zeros(s, np.int64)
    for axis in range(3):
        key = seg * BINS + b[:, axis]
        n = np.bincount(key, minlength=s * BINS).reshape(s, BINS)
        blo = np.full((3, s * BINS), np.inf)
        bhi = np.full((3, s * BINS), -np.inf)
        for j in range(3):  # 1-D ufunc.at is several times faster than on (E, 3) rows
            np.minimum.at(blo[j], key, lo_t[j])
            np.maximum.at(bhi[j], key, hi_t[j])
        blo, bhi = blo.T.reshape(s, BINS, 3), bhi.T.reshape(s, BINS, 3)
        l_area = _area(np.minimum.accumulate(blo, axis=1), np.maximum.accumulate(bhi, axis=1))[:, :-1]
        r_area = _area(
            np.minimum.accumulate(blo[:, ::-1], axis=1)[:, ::-1],
            np.maximum.accumulate(bhi[:, ::-1], axis=1)[:, ::-1],
        )[:, 1:]
        nl = np.cumsum(n, axis=1)[:, :-1]
        nr = counts[:, None] - nl
        with np.errstate(invalid="ignore"):
            cost = np.where((nl > 0) & (nr > 0), l_area * nl + r_area * nr, np.inf)
        i = np.argmin(cost, axis=1)
        ci = cost[np.arange(s), i]
        better = ci < best_cost
        best_cost = np.where(better, ci, best_cost)
        best_axis = np.where(better, axis, best_axis)
        best_bin = np.where(better, i, best_bin)
    offs = pos - starts[seg]
    right = b[np.arange(tri.shape[0]), best_axis[seg]] > best_bin[seg]
    fallback = ~np.isfinite(best_cost)  # all centroids in one bin on every axis: split the list in half
    right = np.where(fallback[seg], offs >= (counts // 2)[seg], right)
    order = np.lexsort((right, seg))
    perm[pos] = tri[order]
    nleft = np.bincount(seg, weights=~right, minlength=s).astype(np.int64)
    return nleft, best_axis


def _round_out(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pad each box (K, 3) and round it outward to float32."""
    pad = (
        1e-5 * np.max(hi - lo, axis=1)
        + 1e-6 * np.maximum(np.abs(lo).max(axis=1), np.abs(hi).max(axis=1))
        + 1e-7
    )[:, None]
    lo32 = np.nextafter((lo - pad).astype(np.float32), np.float32(-np.inf))
    hi32 = np.nextafter((hi + pad).astype(np.float32), np.float32(np.inf))
    return lo32, hi32


def build(tris: np.ndarray) -> FlatBVH:
    """Build over triangles (M, 3, 3) float64 (vertex-major). An empty input gives an empty BVH."""
    tris = np.asarray(tris, dtype=np.float64)
    m = tris.shape[0]
    if m == 0:
        z = np.zeros((0, 3), np.float32)
        return FlatBVH(z, z.copy(), np.zeros((0, 4), np.int32), np.zeros(0, np.int64), 0)
    tmin = tris.min(axis=1)
    tmax = tris.max(axis=1)
    cent = (tmin + tmax) * 0.5
    perm = np.arange(m)
    # Nodes in breadth-first creation order; converted to preorder at the end.
    start = [np.array([0])]
    count = [np.array([m])]
    depth_of = [np.array([0])]
    axis_of: list[np.ndarray] = []
    left_of: list[np.ndarray] = []
    right_of: list[np.ndarray] = []
    level_nodes = np.array([0])
    n_nodes = 1
    depth = 0
    while level_nodes.size:
        st, ct = start[-1], count[-1]
        inner = (ct > LEAF_SIZE) & (depth < MAX_DEPTH)
        lc = np.full(st.shape[0], -1)
        rc = np.full(st.shape[0], -1)
        ax = np.full(st.shape[0], -1)
        if inner.any():
            nleft, axes = _split(perm, tmin, tmax, cent, st[inner], ct[inner])
            k = int(inner.sum())
            ids = n_nodes + np.arange(2 * k)
            lc[inner], rc[inner], ax[inner] = ids[0::2], ids[1::2], axes
            child_start = np.empty(2 * k, np.int64)
            child_count = np.empty(2 * k, np.int64)
            child_start[0::2], child_count[0::2] = st[inner], nleft
            child_start[1::2], child_count[1::2] = st[inner] + nleft, ct[inner] - nleft
            n_nodes += 2 * k
            start.append(child_start)
            count.append(child_count)
            depth_of.append(np.full(2 * k, depth + 1))
            level_nodes = ids
        else:
            level_nodes = np.array([], np.int64)
        axis_of.append(ax)
        left_of.append(lc)
        right_of.append(rc)
        depth += 1
    starts, counts = np.concatenate(start), np.concatenate(count)
    axes, lefts, rights = np.concatenate(axis_of), np.concatenate(left_of), np.concatenate(right_of)
    depths = np.concatenate(depth_of)
    leaf = lefts < 0
    # Bounds: leaves from their triangle ranges, inner nodes bottom-up, one level at a time.
    lo = np.empty((n_nodes, 3))
    hi = np.empty((n_nodes, 3))
    leaves = np.flatnonzero(leaf)
    by_start = leaves[np.argsort(starts[leaves])]
    lo[by_start] = np.minimum.reduceat(tmin[perm], starts[by_start], axis=0)
    hi[by_start] = np.maximum.reduceat(tmax[perm], starts[by_start], axis=0)
    size = np.ones(n_nodes, np.int64)
    for d in range(int(depths.max()), -1, -1):
        nodes = np.flatnonzero((depths == d) & ~leaf)
        lo[nodes] = np.minimum(lo[lefts[nodes]], lo[rights[nodes]])
        hi[nodes] = np.maximum(hi[lefts[nodes]], hi[rights[nodes]])
        size[nodes] = 1 + size[lefts[nodes]] + size[rights[nodes]]
    pre = np.zeros(n_nodes, np.int64)
    for d in range(int(depths.max()) + 1):
        nodes = np.flatnonzero((depths == d) & ~leaf)
        pre[lefts[nodes]] = pre[nodes] + 1
        pre[rights[nodes]] = pre[nodes] + 1 + size[lefts[nodes]]
    meta = np.zeros((n_nodes, 4), np.int32)
    meta[:, 0] = np.where(leaf, starts, pre[np.maximum(rights, 0)])
    meta[:, 1] = np.where(leaf, counts, 0)
    meta[:, 2] = np.where(leaf, -1, axes)
    lo32, hi32 = _round_out(lo, hi)
    inv = np.empty(n_nodes, np.int64)
    inv[pre] = np.arange(n_nodes)
    return FlatBVH(bmin=lo32[inv], bmax=hi32[inv], meta=meta[inv], order=perm.copy(), depth=int(depths.max()))
