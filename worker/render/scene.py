"""The AR scene format: a JSON-able dict <-> typed, validated dataclasses, plus a canonical content hash.

The format's API in one place (docs/scene-format.md, "API"); its parts, one concern each:
`scene_model.py` (the dataclasses), `scene_parse.py` (dict -> Scene, validated once so renderers can trust
every field; poses, tiles, smooth normals), `scene_canonical.py` (Scene -> canonical dict, content hash),
`scene_files.py` (scene JSON files with OBJ and image references) and `limits.py` (size limits).
"""

from worker.render.scene_canonical import content_hash, to_dict
from worker.render.scene_files import load_scene_file, load_texture
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
from worker.render.scene_parse import from_dict, pose_from_dict, tile_from_dict, vertex_normals

__all__ = ["FORMAT_VERSION", "Box", "Camera", "DirectionalLight", "Light", "Material", "Mesh", "Object", "Plane",
           "PointLight", "Scene", "Sphere", "Texture", "content_hash", "from_dict", "load_scene_file",
           "load_texture", "pose_from_dict", "tile_from_dict", "to_dict", "vertex_normals"]
