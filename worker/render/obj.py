"""Wavefront OBJ loading (client side): geometry only, so a model can be inlined into a scene as a mesh.

Reads `v` and `f` lines; polygons are fan-triangulated; `f` accepts v, v/vt, v//vn, v/vt/vn and negative
(relative) indices. Other statements (vt, vn, o, g, s, usemtl, mtllib, l, p, ...) are ignored: materials come
from the scene file. Errors name the file and line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.render.errors import SceneError
from worker.render.limits import MAX_TRIANGLES, MAX_VERTICES


def parse_obj(text: str, name: str = "<obj>") -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) float64 and triangle indices (M, 3) int64 (0-based) from OBJ text."""
    verts: list[tuple[float, float, float]] = []
    tris: list[tuple[int, int, int]] = []
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
            try:
                xyz = [float(p) for p in parts[1:4]]
            except ValueError:
                raise SceneError(f"{where}: bad vertex coordinate in {line!r}") from None
            if not all(np.isfinite(xyz)):
                raise SceneError(f"{where}: vertex coordinates must be finite, got {line!r}")
            if len(verts) >= MAX_VERTICES:
                raise SceneError(f"{where}: more than {MAX_VERTICES} vertices")
            verts.append((xyz[0], xyz[1], xyz[2]))
        elif tag == "f":
            if len(parts) < 4:
                raise SceneError(f"{where}: a face needs at least 3 vertices, got {len(parts) - 1}")
            poly = []
            for ref in parts[1:]:
                head = ref.split("/", 1)[0]
                try:
                    k = int(head)
                except ValueError:
                    raise SceneError(f"{where}: bad vertex index {ref!r}") from None
                if k == 0:
                    raise SceneError(f"{where}: vertex index 0 is invalid (OBJ indices start at 1)")
                if k < 0:
                    if -k > len(verts):
                        raise SceneError(
                            f"{where}: relative index {k} reaches before the first vertex ({len(verts)} so far)"
                        )
                    k = len(verts) + k
                else:
                    k -= 1
                poly.append(k)
            for i in range(1, len(poly) - 1):
                tris.append((poly[0], poly[i], poly[i + 1]))
                face_lines.append(lineno)
            if len(tris) > MAX_TRIANGLES:
                raise SceneError(f"{where}: more than {MAX_TRIANGLES} triangles")
    v = np.array(verts, dtype=np.float64).reshape(-1, 3)
    f = np.array(tris, dtype=np.int64).reshape(-1, 3)
    bad = np.argwhere(f >= len(verts))
    if bad.size:
        t = int(bad[0][0])
        raise SceneError(
            f"{name}:{face_lines[t]}: vertex index {int(f[t].max()) + 1} out of range (file has {len(verts)} vertices)"
        )
    if f.shape[0] == 0:
        raise SceneError(f"{name}: no faces")
    return v, f


def load_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an OBJ file; see parse_obj."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SceneError(f"{path}: cannot read OBJ file: {e.strerror}") from None
    return parse_obj(text, str(path))
