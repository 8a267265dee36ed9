"""The AR scene format, read: a JSON-able dict (parsed JSON or msgpack) -> the validated `scene_model` dataclasses.

Validation happens once, here, so renderers can trust every field; each error names the path of the bad field
(`objects[2].material.albedo: expected 3 numbers in [0, 1]`). The format is specified in docs/scene-format.md,
its size limits are `limits.py`. Also here: a stream's poses and tiles (`pose_from_dict`, `tile_from_dict`) and
smooth vertex normals for a mesh (`vertex_normals`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from worker.render.camera import Pose, Quat, Tile, Vec3
from worker.render.errors import SceneError
from worker.render.limits import (
    MAX_HEIGHT,
    MAX_LIGHTS,
    MAX_MATERIALS,
    MAX_NAME,
    MAX_OBJECTS,
    MAX_PIXELS,
    MAX_TEXELS,
    MAX_TEXTURE_SIDE,
    MAX_TRIANGLES,
    MAX_VERTICES,
    MAX_WIDTH,
)
from worker.render.scene_model import (
    FORMAT_VERSION,
    Box,
    Camera,
    DirectionalLight,
    Light,
    Material,
    Mesh,
    Object,
    Plane,
    PointLight,
    Scene,
    Sphere,
    Texture,
)

QUAT_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------------------------
# Field checkers: each returns a canonical Python value or raises SceneError naming the path.


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _fmt_range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo:g}, {hi:g}]"
    if lo is not None:
        return f" >= {lo:g}"
    if hi is not None:
        return f" <= {hi:g}"
    return ""


def _clean(x: float) -> float:
    return float(x) + 0.0  # drops the sign of -0.0 so equal scenes hash equal


def _number(v: Any, path: str, lo: float | None = None, hi: float | None = None) -> float:
    if not _is_num(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise SceneError(f"{path}: expected a number{_fmt_range(lo, hi)}, got {v!r}")
    return _clean(v)


def _positive(v: Any, path: str, hi: float | None = None) -> float:
    if not _is_num(v) or v <= 0 or (hi is not None and v > hi):
        extra = f" and <= {hi:g}" if hi is not None else ""
        raise SceneError(f"{path}: expected a number > 0{extra}, got {v!r}")
    return _clean(v)


def _integer(v: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise SceneError(f"{path}: expected an integer in [{lo}, {hi}], got {v!r}")
    return v


def _vec3(v: Any, path: str, lo: float | None = None, hi: float | None = None, nonzero: bool = False) -> Vec3:
    ok = isinstance(v, list | tuple) and len(v) == 3 and all(_is_num(c) for c in v)
    if ok and lo is not None:
        ok = all(c >= lo for c in v)
    if ok and hi is not None:
        ok = all(c <= hi for c in v)
    if not ok:
        raise SceneError(f"{path}: expected 3 numbers{_fmt_range(lo, hi)}, got {v!r}")
    if nonzero and all(c == 0 for c in v):
        raise SceneError(f"{path}: must not be the zero vector")
    return (_clean(v[0]), _clean(v[1]), _clean(v[2]))


def _quat(v: Any, path: str) -> Quat:
    if not (isinstance(v, list | tuple) and len(v) == 4 and all(_is_num(c) for c in v)):
        raise SceneError(f"{path}: expected a quaternion [x, y, z, w] of 4 numbers, got {v!r}")
    n = math.sqrt(sum(c * c for c in v))
    if abs(n - 1.0) > QUAT_TOLERANCE:
        raise SceneError(f"{path}: quaternion must have unit length (within {QUAT_TOLERANCE:g}), has {n:.6g}")
    return (_clean(v[0]), _clean(v[1]), _clean(v[2]), _clean(v[3]))


def _name(v: Any, path: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_NAME:
        raise SceneError(f"{path}: expected a string of at most {MAX_NAME} characters, got {v!r}")
    return v


def _fields(d: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    if not isinstance(d, dict):
        raise SceneError(f"{path}: expected an object, got {type(d).__name__}")
    for k in required:
        if k not in d:
            raise SceneError(f"{path}.{k}: missing required field")
    allowed = set(required) | set(optional)
    for k in d:
        if k not in allowed:
            raise SceneError(f"{path}: unknown field {k!r} (allowed: {', '.join(sorted(allowed))})")
    return d


def _material(v: Any, path: str, named: dict[str, Material]) -> Material:
    if isinstance(v, str):
        if v not in named:
            known = ", ".join(sorted(named)) or "none defined"
            raise SceneError(f"{path}: unknown material {v!r} (materials: {known})")
        return named[v]
    d = _fields(v, path, (), ("albedo", "emission", "metallic", "roughness", "opacity", "shadow_catcher",
                              "texture"))
    m = Material()
    catcher = d.get("shadow_catcher", False)
    if not isinstance(catcher, bool):
        raise SceneError(f"{path}.shadow_catcher: expected true or false, got {catcher!r}")
    return Material(
        albedo=_vec3(d["albedo"], f"{path}.albedo", 0, 1) if "albedo" in d else m.albedo,
        emission=_vec3(d["emission"], f"{path}.emission", 0) if "emission" in d else m.emission,
        metallic=_number(d["metallic"], f"{path}.metallic", 0, 1) if "metallic" in d else m.metallic,
        roughness=_number(d["roughness"], f"{path}.roughness", 0, 1) if "roughness" in d else m.roughness,
        opacity=_number(d["opacity"], f"{path}.opacity", 0, 1) if "opacity" in d else m.opacity,
        shadow_catcher=catcher,
        texture=_texture(d["texture"], f"{path}.texture") if d.get("texture") is not None else None,
    )


def _texture(v: Any, path: str) -> Texture:
    """{"width", "height", "pixels": RGBA8 bytes, row-major from the top row} (a scene file names an image
    file instead: load_scene_file reads it)."""
    if isinstance(v, Texture):
        return v
    if isinstance(v, str):
        raise SceneError(f"{path}: texture files are read by load_scene_file(); a scene dict needs the pixels")
    d = _fields(v, path, ("width", "height", "pixels"), ())
    w = _integer(d["width"], f"{path}.width", 1, MAX_TEXTURE_SIDE)
    h = _integer(d["height"], f"{path}.height", 1, MAX_TEXTURE_SIDE)
    px = d["pixels"]
    if not isinstance(px, bytes | bytearray | memoryview):
        raise SceneError(f"{path}.pixels: expected RGBA8 bytes, got {type(px).__name__}")
    if len(px) != w * h * 4:
        raise SceneError(f"{path}.pixels: {len(px)} bytes, a {w}x{h} RGBA8 texture has {w * h * 4}")
    a = np.frombuffer(bytes(px), np.uint8).reshape(h, w, 4).copy()
    a.setflags(write=False)
    return Texture(a)


def _camera(v: Any, path: str) -> Camera:
    d = _fields(v, path, ("position", "orientation", "fov_y", "width", "height"), ("near", "far"))
    width = _integer(d["width"], f"{path}.width", 1, MAX_WIDTH)
    height = _integer(d["height"], f"{path}.height", 1, MAX_HEIGHT)
    if width * height > MAX_PIXELS:
        raise SceneError(f"{path}: resolution {width}x{height} exceeds the limit of {MAX_PIXELS} pixels")
    near = _positive(d.get("near", 0.01), f"{path}.near")
    far = _positive(d.get("far", 1000.0), f"{path}.far")
    if far <= near:
        raise SceneError(f"{path}.far: must be greater than near ({near:g}), got {far:g}")
    fov = d["fov_y"]
    if not _is_num(fov) or not 0 < fov < 180:
        raise SceneError(
            f"{path}.fov_y: expected a vertical field of view in degrees in (0, 180), got {fov!r}"
        )
    return Camera(
        position=_vec3(d["position"], f"{path}.position"),
        orientation=_quat(d["orientation"], f"{path}.orientation"),
        fov_y=_clean(fov),
        width=width,
        height=height,
        near=near,
        far=far,
    )


def _array(v: Any, path: str, dtype: type, what: str, raw_dtype: str, limit: int, cols: int = 3) -> np.ndarray:
    """A (K, cols) array from nested lists, a numpy array, or little-endian bytes (the compact wire form)."""
    if isinstance(v, bytes | bytearray | memoryview):
        raw = bytes(v)
        item = np.dtype(raw_dtype).itemsize * cols
        if len(raw) % item:
            raise SceneError(f"{path}: {len(raw)} bytes is not a whole number of {cols} x {raw_dtype}")
        a = np.frombuffer(raw, dtype=raw_dtype).reshape(-1, cols)
    else:
        if not isinstance(v, list | tuple | np.ndarray):
            raise SceneError(f"{path}: expected a list of {what}, got {type(v).__name__}")
        if len(v) > limit:
            raise SceneError(f"{path}: {len(v)} entries exceeds the limit of {limit}")
        if len(v) == 0:
            v = np.zeros((0, cols))
        try:
            parsed: np.ndarray | None = np.asarray(v)
        except (ValueError, TypeError):
            parsed = None
        if (
            parsed is None
            or parsed.ndim != 2
            or (parsed.size and parsed.shape[1] != cols)
            or parsed.dtype.kind not in "iuf"
        ):
            for i, row in enumerate(v):
                if not (isinstance(row, list | tuple | np.ndarray) and len(row) == cols):
                    raise SceneError(f"{path}[{i}]: expected {what}, got {row!r}")
                for j, c in enumerate(row):
                    if not (isinstance(c, int | float | np.number) and not isinstance(c, bool)):
                        raise SceneError(f"{path}[{i}][{j}]: expected a number, got {c!r}")
            raise SceneError(f"{path}: expected a list of {what}")
        a = parsed.reshape(-1, cols)
    if a.shape[0] > limit:
        raise SceneError(f"{path}: {a.shape[0]} entries exceeds the limit of {limit}")
    if dtype is np.int64:
        if a.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                bad = np.argwhere(~np.isfinite(a) | (a != np.floor(a)))
            if bad.size:
                i, j = bad[0]
                raise SceneError(f"{path}[{i}][{j}]: expected an integer index, got {a[i, j]!r}")
        out: np.ndarray = a.astype(np.int64)
    else:
        out = a.astype(np.float64)
        bad = np.argwhere(~np.isfinite(out))
        if bad.size:
            i, j = bad[0]
            raise SceneError(f"{path}[{i}][{j}]: expected a finite number, got {out[i, j]!r}")
    out = out + 0 if dtype is np.int64 else out + 0.0  # a fresh array; +0.0 also folds -0.0
    out.setflags(write=False)
    return out


def _mesh(d: dict, path: str, named: dict[str, Material], budget: int) -> Mesh:
    if "obj" in d:
        raise SceneError(
            f"{path}.obj: OBJ references are resolved by load_scene_file(); a scene dict needs inline vertices"
        )
    _fields(d, path, ("type", "vertices", "indices"),
            ("material", "position", "rotation", "scale", "name", "normals", "uvs"))
    verts = _array(d["vertices"], f"{path}.vertices", np.float64, "[x, y, z] vertices", "<f8", MAX_VERTICES)
    idx = _array(d["indices"], f"{path}.indices", np.int64, "[i, j, k] triangles", "<u4", MAX_TRIANGLES)
    if idx.shape[0] > budget:
        raise SceneError(
            f"{path}.indices: {idx.shape[0]} triangles takes the scene over the limit of {MAX_TRIANGLES}"
        )
    bad = np.argwhere((idx < 0) | (idx >= verts.shape[0]))
    if bad.size:
        i, j = bad[0]
        raise SceneError(
            f"{path}.indices[{i}][{j}]: index {idx[i, j]} out of range (mesh has {verts.shape[0]} vertices)"
        )
    normals = None
    if d.get("normals") is not None:
        if isinstance(d["normals"], str) and d["normals"] == "smooth":
            normals = vertex_normals(verts, idx)
        else:
            normals = _array(d["normals"], f"{path}.normals", np.float64, "[x, y, z] normals", "<f8", MAX_VERTICES)
            if normals.shape[0] != verts.shape[0]:
                raise SceneError(f"{path}.normals: {normals.shape[0]} normals for {verts.shape[0]} vertices")
            zero = np.flatnonzero(~(np.linalg.norm(normals, axis=1) > 0))
            if zero.size:
                raise SceneError(f"{path}.normals[{int(zero[0])}]: a normal must not be the zero vector")
    uvs = None
    if d.get("uvs") is not None:
        uvs = _array(d["uvs"], f"{path}.uvs", np.float64, "[u, v] coordinates", "<f8", MAX_VERTICES, cols=2)
        if uvs.shape[0] != verts.shape[0]:
            raise SceneError(f"{path}.uvs: {uvs.shape[0]} uvs for {verts.shape[0]} vertices")
    material = _material(d.get("material", {}), f"{path}.material", named)
    if material.texture is not None and uvs is None:
        raise SceneError(f"{path}.uvs: a textured material needs texture coordinates on the mesh")
    return Mesh(
        vertices=verts,
        indices=idx,
        normals=normals,
        uvs=uvs,
        material=material,
        position=_vec3(d.get("position", [0, 0, 0]), f"{path}.position"),
        rotation=_quat(d.get("rotation", [0, 0, 0, 1]), f"{path}.rotation"),
        scale=_positive(d.get("scale", 1.0), f"{path}.scale"),
        name=_name(d.get("name", ""), f"{path}.name"),
    )


def vertex_normals(vertices: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Smooth vertex normals: the area-weighted sum of the normals of the triangles around each vertex,
    normalised; a vertex with none (unused, or only degenerate triangles) gets +Z. Read-only (N, 3) float64."""
    t = np.asarray(vertices, np.float64)[np.asarray(indices)]
    face = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])  # length = twice the area: the weight
    acc = np.zeros((len(vertices), 3))
    for k in range(3):
        np.add.at(acc, indices[:, k], face)
    length = np.linalg.norm(acc, axis=1)
    out = np.where(length[:, None] > 0, acc / np.where(length > 0, length, 1.0)[:, None], (0.0, 0.0, 1.0))
    out = out + 0.0
    out.setflags(write=False)
    return out


def _object(v: Any, path: str, named: dict[str, Material], budget: int) -> Object:
    o = _object_of(v, path, named, budget)
    if o.material.texture is not None and not isinstance(o, Mesh):
        raise SceneError(f"{path}.material.texture: only meshes with uvs can be textured")
    return o


def _object_of(v: Any, path: str, named: dict[str, Material], budget: int) -> Object:
    if not isinstance(v, dict):
        raise SceneError(f"{path}: expected an object, got {type(v).__name__}")
    kind = v.get("type")
    if kind == "sphere":
        d = _fields(v, path, ("type", "center", "radius"), ("material", "name"))
        return Sphere(
            center=_vec3(d["center"], f"{path}.center"),
            radius=_positive(d["radius"], f"{path}.radius"),
            material=_material(d.get("material", {}), f"{path}.material", named),
            name=_name(d.get("name", ""), f"{path}.name"),
        )
    if kind == "box":
        d = _fields(v, path, ("type", "center", "size"), ("rotation", "material", "name"))
        size = _vec3(d["size"], f"{path}.size", 0)
        if min(size) <= 0:
            raise SceneError(f"{path}.size: expected 3 numbers > 0, got {d['size']!r}")
        return Box(
            center=_vec3(d["center"], f"{path}.center"),
            size=size,
            rotation=_quat(d.get("rotation", [0, 0, 0, 1]), f"{path}.rotation"),
            material=_material(d.get("material", {}), f"{path}.material", named),
            name=_name(d.get("name", ""), f"{path}.name"),
        )
    if kind == "plane":
        d = _fields(v, path, ("type", "point", "normal"), ("material", "name"))
        return Plane(
            point=_vec3(d["point"], f"{path}.point"),
            normal=_vec3(d["normal"], f"{path}.normal", nonzero=True),
            material=_material(d.get("material", {}), f"{path}.material", named),
            name=_name(d.get("name", ""), f"{path}.name"),
        )
    if kind == "mesh":
        return _mesh(v, path, named, budget)
    raise SceneError(f"{path}.type: expected 'sphere', 'box', 'plane' or 'mesh', got {kind!r}")


def _light(v: Any, path: str) -> Light:
    if not isinstance(v, dict):
        raise SceneError(f"{path}: expected an object, got {type(v).__name__}")
    kind = v.get("type")
    if kind == "point":
        d = _fields(v, path, ("type", "position"), ("color", "intensity"))
        return PointLight(
            position=_vec3(d["position"], f"{path}.position"),
            color=_vec3(d.get("color", [1, 1, 1]), f"{path}.color", 0, 1),
            intensity=_number(d.get("intensity", 1.0), f"{path}.intensity", 0),
        )
    if kind == "directional":
        d = _fields(v, path, ("type", "direction"), ("color", "intensity"))
        return DirectionalLight(
            direction=_vec3(d["direction"], f"{path}.direction", nonzero=True),
            color=_vec3(d.get("color", [1, 1, 1]), f"{path}.color", 0, 1),
            intensity=_number(d.get("intensity", 1.0), f"{path}.intensity", 0),
        )
    raise SceneError(f"{path}.type: expected 'point' or 'directional', got {kind!r}")


def from_dict(d: Any) -> Scene:
    """Validate a scene dict (parsed JSON or msgpack) and build the Scene; raises SceneError naming the field."""
    d = _fields(
        d,
        "scene",
        ("camera", "objects"),
        ("version", "lights", "background", "ambient", "environment", "materials"),
    )
    if "version" in d and d["version"] != FORMAT_VERSION:
        raise SceneError(f"version: this renderer reads version {FORMAT_VERSION}, got {d['version']!r}")
    camera = _camera(d["camera"], "camera")
    named: dict[str, Material] = {}
    mats = d.get("materials", {})
    if not isinstance(mats, dict):
        raise SceneError(
            f"materials: expected an object mapping names to materials, got {type(mats).__name__}"
        )
    if len(mats) > MAX_MATERIALS:
        raise SceneError(f"materials: {len(mats)} materials exceeds the limit of {MAX_MATERIALS}")
    for k, mv in mats.items():
        named[_name(k, "materials")] = _material(mv, f"materials.{k}", {})
    objs = d["objects"]
    if not isinstance(objs, list | tuple):
        raise SceneError(f"objects: expected a list, got {type(objs).__name__}")
    if len(objs) > MAX_OBJECTS:
        raise SceneError(f"objects: {len(objs)} objects exceeds the limit of {MAX_OBJECTS}")
    objects: list[Object] = []
    budget = MAX_TRIANGLES
    for i, ov in enumerate(objs):
        o = _object(ov, f"objects[{i}]", named, budget)
        if isinstance(o, Mesh):
            budget -= o.triangle_count
        objects.append(o)
    texels = sum(t.width * t.height for t in {id(o.material.texture): o.material.texture for o in objects
                                              if o.material.texture is not None}.values())
    if texels > MAX_TEXELS:
        raise SceneError(f"objects: textures of {texels} texels in all exceed the limit of {MAX_TEXELS}")
    lights_v = d.get("lights", [])
    if not isinstance(lights_v, list | tuple):
        raise SceneError(f"lights: expected a list, got {type(lights_v).__name__}")
    if len(lights_v) > MAX_LIGHTS:
        raise SceneError(f"lights: {len(lights_v)} lights exceeds the limit of {MAX_LIGHTS}")
    lights = tuple(_light(lv, f"lights[{i}]") for i, lv in enumerate(lights_v))
    bg = d.get("background", "transparent")
    if bg == "transparent":
        background = None
    elif isinstance(bg, list | tuple):
        background = _vec3(bg, "background", 0, 1)
    else:
        raise SceneError(f"background: expected 'transparent' or 3 numbers in [0, 1], got {bg!r}")
    return Scene(
        camera=camera,
        objects=tuple(objects),
        lights=lights,
        background=background,
        ambient=_vec3(d.get("ambient", [0.05, 0.05, 0.05]), "ambient", 0, 1),
        environment=_vec3(d.get("environment", [0.2, 0.2, 0.2]), "environment", 0, 1),
    )


def pose_from_dict(d: Any, path: str = "pose") -> Pose:
    """Validate one pose of a stream: {"position": [x, y, z], "orientation": [x, y, z, w]}."""
    d = _fields(d, path, ("position", "orientation"), ())
    return Pose(_vec3(d["position"], f"{path}.position"), _quat(d["orientation"], f"{path}.orientation"))


def tile_from_dict(d: Any, width: int, height: int, path: str = "tile") -> Tile:
    """Validate a tile {"x0", "y0", "w", "h"} (full-frame pixels) against a width x height frame."""
    d = _fields(d, path, ("x0", "y0", "w", "h"), ())
    t = Tile(*(_integer(d[k], f"{path}.{k}", 0, max(MAX_WIDTH, MAX_HEIGHT)) for k in ("x0", "y0", "w", "h")))
    t.check(width, height, path)
    return t


__all__ = ["QUAT_TOLERANCE", "from_dict", "pose_from_dict", "tile_from_dict", "vertex_normals"]
