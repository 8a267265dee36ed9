"""Scene files, read on the client: a scene JSON file whose meshes may name OBJ files and whose materials may
name image files, loaded and inlined here so the scene that travels is self-contained (`load_scene_file`),
and an image file as a texture dict (`load_texture`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from worker.render.errors import SceneError
from worker.render.limits import MAX_TEXTURE_SIDE
from worker.render.obj import load_obj
from worker.render.scene_model import Scene
from worker.render.scene_parse import from_dict, vertex_normals


def load_texture(path: str | Path) -> dict:
    """An image file (PNG, JPEG, ... anything Pillow reads) as a scene texture dict (RGBA8, top row first)."""

    try:
        with Image.open(path) as im:
            if im.width > MAX_TEXTURE_SIDE or im.height > MAX_TEXTURE_SIDE:
                raise SceneError(f"{path}: {im.width}x{im.height} texture exceeds {MAX_TEXTURE_SIDE} per side")
            rgba = im.convert("RGBA")
            return {"width": rgba.width, "height": rgba.height, "pixels": rgba.tobytes()}
    except (OSError, UnidentifiedImageError) as e:
        raise SceneError(f"{path}: cannot read texture image: {e}") from None


def load_scene_file(path: str | Path) -> Scene:
    """Read a scene JSON file; meshes may name an OBJ file (`"obj": "model.obj"`, relative to the JSON file)
    and materials an image file (`"texture": "wood.png"`), which are loaded and inlined here, on the client,
    so the scene that travels is self-contained. OBJ meshes are smooth-shaded: with the file's `vn` normals,
    else normals computed from the faces (`vertex_normals`); give `"smooth": false` for flat shading."""

    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SceneError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(d, dict):
        return from_dict(d)
    textures: dict[str, dict] = {}

    def inline_texture(m: Any, where: str) -> None:
        if isinstance(m, dict) and isinstance(m.get("texture"), str):
            ref = m["texture"]
            if ref not in textures:
                textures[ref] = load_texture(path.parent / ref)
            m["texture"] = textures[ref]

    if isinstance(d.get("materials"), dict):
        for k, m in d["materials"].items():
            inline_texture(m, f"materials.{k}")
    if isinstance(d.get("objects"), list):
        for i, o in enumerate(d["objects"]):
            if not isinstance(o, dict):
                continue
            inline_texture(o.get("material"), f"objects[{i}].material")
            if o.get("type") == "mesh" and "obj" in o:
                if "vertices" in o or "indices" in o:
                    raise SceneError(f"objects[{i}]: give either obj or vertices/indices, not both")
                ref = o.pop("obj")
                if not isinstance(ref, str):
                    raise SceneError(f"objects[{i}].obj: expected a file name, got {ref!r}")
                smooth = o.pop("smooth", True)
                if not isinstance(smooth, bool):
                    raise SceneError(f"objects[{i}].smooth: expected true or false, got {smooth!r}")
                m = load_obj(path.parent / ref)
                o["vertices"], o["indices"] = m.vertices, m.indices
                if smooth:
                    o["normals"] = m.normals if m.normals is not None else vertex_normals(m.vertices, m.indices)
                if m.uvs is not None and "uvs" not in o:
                    o["uvs"] = m.uvs
    return from_dict(d)


__all__ = ["load_scene_file", "load_texture"]
