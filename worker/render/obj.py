"""Wavefront OBJ loading (client side): geometry, vertex normals and texture coordinates, so a model can be
inlined into a scene as a mesh.

Reads `v`, `vt`, `vn` and `f` lines; polygons are fan-triangulated; `f` accepts v, v/vt, v//vn, v/vt/vn and
negative (relative) indices. OBJ indexes positions, texture coordinates and normals separately; a mesh here
has one index per corner, so each distinct (v, vt, vn) combination becomes one vertex. Normals (or uvs) are
kept only when every face corner names one; otherwise the mesh gets none and the scene loader computes
smooth normals. Other statements (o, g, s, usemtl, mtllib, l, p, ...) are ignored: materials come from the
scene file. Errors name the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.render.errors import SceneError
from worker.render.limits import MAX_TRIANGLES, MAX_VERTICES


@dataclass(frozen=True)
class ObjMesh:
    vertices: np.ndarray  # (N, 3) float64
    indices: np.ndarray  # (M, 3) int64, 0-based
    normals: np.ndarray | None  # (N, 3) float64 from `vn`, or None
    uvs: np.ndarray | None  # (N, 2) float64 from `vt`, or None


def _floats(parts: list[str], n_min: int, n_max: int, where: str, what: str, line: str) -> list[float]:
    if not n_min <= len(parts) - 1 <= n_max:
        want = f"{n_min}" if n_min == n_max else f"{n_min} to {n_max}"
        raise SceneError(f"{where}: a '{parts[0]}' line needs {want} {what}, got {len(parts) - 1}")
    try:
        out = [float(p) for p in parts[1:]]
    except ValueError:
        raise SceneError(f"{where}: bad {what[:-1] if what.endswith('s') else what} in {line!r}") from None
    if not all(np.isfinite(out)):
        raise SceneError(f"{where}: {what} must be finite, got {line!r}")
    return out


def _index(ref: str, count: int, where: str, what: str) -> int:
    try:
        k = int(ref)
    except ValueError:
        raise SceneError(f"{where}: bad {what} index {ref!r}") from None
    if k == 0:
        raise SceneError(f"{where}: {what} index 0 is invalid (OBJ indices start at 1)")
    if k < 0:
        if -k > count:
            raise SceneError(f"{where}: relative index {k} reaches before the first {what} ({count} so far)")
        return count + k
    return k - 1


def parse_obj(text: str, name: str = "<obj>") -> ObjMesh:
    """The mesh of OBJ text: vertices, triangles, and normals / uvs where every corner has them."""
    verts: list[list[float]] = []
    texcoords: list[list[float]] = []
    norms: list[list[float]] = []
    corners: list[tuple[int, int, int]] = []  # (v, vt or -1, vn or -1) per triangle corner
    face_lines: list[int] = []  # the line of each triangle, to report a forward index that never resolves
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        tag = parts[0]
        where = f"{name}:{lineno}"
        if tag == "v":
            if len(parts) not in (4, 5, 7):  # x y z, x y z w, or x y z r g b (vertex colours, ignored)
                raise SceneError(f"{where}: a 'v' line needs 3 coordinates, got {len(parts) - 1}")
            xyz = _floats(parts[:4], 3, 3, where, "vertex coordinates", line)
            if len(verts) >= MAX_VERTICES:
                raise SceneError(f"{where}: more than {MAX_VERTICES} vertices")
            verts.append(xyz)
        elif tag == "vt":
            uv = _floats(parts, 1, 3, where, "texture coordinates", line)
            if len(texcoords) >= MAX_VERTICES:
                raise SceneError(f"{where}: more than {MAX_VERTICES} texture coordinates")
            texcoords.append([uv[0], uv[1] if len(uv) > 1 else 0.0])
        elif tag == "vn":
            n = _floats(parts, 3, 3, where, "normal components", line)
            if len(norms) >= MAX_VERTICES:
                raise SceneError(f"{where}: more than {MAX_VERTICES} normals")
            norms.append(n)
        elif tag == "f":
            if len(parts) < 4:
                raise SceneError(f"{where}: a face needs at least 3 vertices, got {len(parts) - 1}")
            poly = []
            for ref in parts[1:]:
                fields = ref.split("/")
                if len(fields) > 3:
                    raise SceneError(f"{where}: bad vertex index {ref!r}")
                v = _index(fields[0], len(verts), where, "vertex")
                vt = _index(fields[1], len(texcoords), where, "texture coordinate") \
                    if len(fields) > 1 and fields[1] else -1
                vn = _index(fields[2], len(norms), where, "normal") if len(fields) > 2 and fields[2] else -1
                poly.append((v, vt, vn))
            for i in range(1, len(poly) - 1):
                corners.extend((poly[0], poly[i], poly[i + 1]))
                face_lines.append(lineno)
            if len(face_lines) > MAX_TRIANGLES:
                raise SceneError(f"{where}: more than {MAX_TRIANGLES} triangles")
    if not face_lines:
        raise SceneError(f"{name}: no faces")
    c = np.array(corners, dtype=np.int64).reshape(-1, 3)
    for col, count, what in ((0, len(verts), "vertex"), (1, len(texcoords), "texture coordinate"),
                             (2, len(norms), "normal")):
        bad = np.flatnonzero(c[:, col] >= count)
        if bad.size:
            t = int(bad[0]) // 3
            raise SceneError(f"{name}:{face_lines[t]}: {what} index {int(c[bad[0], col]) + 1} out of range "
                             f"(file has {count} {what}{'es' if what == 'vertex' else 's'})".replace("vertexes", "vertices"))
    use_vt = bool((c[:, 1] >= 0).all())
    use_vn = bool((c[:, 2] >= 0).all())
    key = c[:, [0] + ([1] if use_vt else []) + ([2] if use_vn else [])]
    if key.shape[1] == 1:  # positions only: keep the file's vertices (and their order) as they are
        v_arr = np.array(verts, dtype=np.float64).reshape(-1, 3)
        return ObjMesh(v_arr, c[:, 0].reshape(-1, 3), None, None)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    if uniq.shape[0] > MAX_VERTICES:
        raise SceneError(f"{name}: more than {MAX_VERTICES} distinct vertex/uv/normal combinations")
    v_arr = np.array(verts, dtype=np.float64).reshape(-1, 3)[uniq[:, 0]]
    uvs = np.array(texcoords, dtype=np.float64).reshape(-1, 2)[uniq[:, 1]] if use_vt else None
    normals = None
    if use_vn:
        normals = np.array(norms, dtype=np.float64).reshape(-1, 3)[uniq[:, -1]]
        zero = np.flatnonzero(~(np.linalg.norm(normals, axis=1) > 0))
        if zero.size:
            raise SceneError(f"{name}: normal {int(uniq[zero[0], -1]) + 1} is the zero vector")
    return ObjMesh(v_arr, inverse.reshape(-1, 3).astype(np.int64), normals, uvs)


def load_obj(path: str | Path) -> ObjMesh:
    """Read an OBJ file; see parse_obj."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SceneError(f"{path}: cannot read OBJ file: {e.strerror}") from None
    return parse_obj(text, str(path))
