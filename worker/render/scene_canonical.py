"""The AR scene format, written: a scene's canonical dict (`to_dict`, every default written out, materials
inline, mesh arrays optionally as bytes for msgpack) and its content hash (`content_hash`: equal for equal
scenes however they were written, so workers cache uploaded scenes by it). `scene_parse.from_dict` reads both
forms back.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from worker.render.scene_model import (
    FORMAT_VERSION,
    Box,
    Camera,
    Light,
    Material,
    Mesh,
    Object,
    Plane,
    PointLight,
    Scene,
    Sphere,
)


def _material_dict(m: Material) -> dict:
    d: dict = {
        "albedo": list(m.albedo),
        "emission": list(m.emission),
        "metallic": m.metallic,
        "roughness": m.roughness,
        "opacity": m.opacity,
    }
    if m.shadow_catcher:  # written only when set, so scenes without the newer fields keep their hashes
        d["shadow_catcher"] = True
    if m.texture is not None:
        d["texture"] = {"width": m.texture.width, "height": m.texture.height,
                        "pixels": np.ascontiguousarray(m.texture.pixels).tobytes()}
    return d


def _object_dict(o: Object, binary: bool) -> dict:
    if isinstance(o, Sphere):
        d: dict = {"type": "sphere", "center": list(o.center), "radius": o.radius}
    elif isinstance(o, Box):
        d = {"type": "box", "center": list(o.center), "size": list(o.size), "rotation": list(o.rotation)}
    elif isinstance(o, Plane):
        d = {"type": "plane", "point": list(o.point), "normal": list(o.normal)}
    else:
        if binary:
            verts: Any = o.vertices.astype("<f8").tobytes()
            idx: Any = o.indices.astype("<u4").tobytes()
        else:
            verts, idx = o.vertices.tolist(), o.indices.tolist()
        d = {
            "type": "mesh",
            "vertices": verts,
            "indices": idx,
            "position": list(o.position),
            "rotation": list(o.rotation),
            "scale": o.scale,
        }
        for key, arr in (("normals", o.normals), ("uvs", o.uvs)):
            if arr is not None:
                d[key] = arr.astype("<f8").tobytes() if binary else arr.tolist()
    d["material"] = _material_dict(o.material)
    d["name"] = o.name
    return d


def _light_dict(light: Light) -> dict:
    if isinstance(light, PointLight):
        d: dict = {"type": "point", "position": list(light.position)}
    else:
        d = {"type": "directional", "direction": list(light.direction)}
    d["color"] = list(light.color)
    d["intensity"] = light.intensity
    return d


def _camera_dict(c: Camera) -> dict:
    return {
        "position": list(c.position),
        "orientation": list(c.orientation),
        "fov_y": c.fov_y,
        "width": c.width,
        "height": c.height,
        "near": c.near,
        "far": c.far,
    }


def to_dict(scene: Scene, *, binary: bool = False) -> dict:
    """The canonical dict: every default written out, materials inline. `binary=True` packs mesh arrays as
    little-endian bytes (float64 vertices, uint32 indices) for msgpack; from_dict reads both forms."""
    return {
        "version": FORMAT_VERSION,
        "camera": _camera_dict(scene.camera),
        "background": "transparent" if scene.background is None else list(scene.background),
        "ambient": list(scene.ambient),
        "environment": list(scene.environment),
        "objects": [_object_dict(o, binary) for o in scene.objects],
        "lights": [_light_dict(li) for li in scene.lights],
    }


def _digest(a: np.ndarray, dtype: str) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=dtype).tobytes()).hexdigest()


def content_hash(scene: Scene) -> str:
    """sha256 (hex) of the canonical form: equal for equal scenes however they were written (key order, 1 vs
    1.0, named vs inline materials, list vs bytes meshes), so workers can cache uploaded scenes by it."""
    d = to_dict(scene)
    for o, od in zip(scene.objects, d["objects"], strict=True):
        if isinstance(o, Mesh):
            od["vertices"] = "sha256:" + _digest(o.vertices, "<f8")
            od["indices"] = "sha256:" + _digest(o.indices, "<u4")
            for key, arr in (("normals", o.normals), ("uvs", o.uvs)):
                if arr is not None:
                    od[key] = "sha256:" + _digest(arr, "<f8")
        if o.material.texture is not None:
            od["material"]["texture"]["pixels"] = "sha256:" + o.material.texture.digest()
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["content_hash", "to_dict"]
