"""AR frame rendering: the scene format (scene.py), a numpy reference renderer (reference.py) and the OpenCL
ray tracer that must agree with it (opencl.py + raytrace.cl). See docs/scene-format.md.

Importing this package does not import pyopencl; `worker.render.opencl` does.
"""

from worker.render.camera import Pose, Tile, look_at, orbit
from worker.render.errors import SceneError
from worker.render.scene import Scene, content_hash, from_dict, load_scene_file, pose_from_dict, to_dict

__all__ = [
    "Pose",
    "Scene",
    "SceneError",
    "Tile",
    "content_hash",
    "from_dict",
    "load_scene_file",
    "look_at",
    "orbit",
    "pose_from_dict",
    "to_dict",
]
