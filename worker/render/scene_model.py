"""The AR scene model: typed, immutable dataclasses for a scene and its parts (camera, objects, materials,
textures, lights), as `scene_parse.py` builds them from the format (docs/scene-format.md) after validating
every field, so renderers can trust them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from worker.render.camera import Pose, Quat, Vec3, quat_to_matrix

FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class Texture:
    """A diffuse texture: (height, width, 4) uint8 sRGB texels (alpha unused), row 0 the top of the image.
    Sampled bilinearly in linear light with wrap-around addressing at a mesh's UVs ((0, 0) the bottom-left
    of the image, as in OBJ `vt`); the sample multiplies the material's albedo."""

    pixels: np.ndarray  # (h, w, 4) uint8, read-only

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def digest(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.pixels).tobytes()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Texture) and self.pixels.shape == other.pixels.shape and bool(
            (self.pixels == other.pixels).all())

    def __hash__(self) -> int:
        return hash(self.digest())


@dataclass(frozen=True)
class Material:
    """Surface response: colours are linear RGB in [0, 1]; emission is added light, unbounded above.

    `shadow_catcher`: the surface stands for real ground in an AR frame: it shows what is behind it (the
    background, transparent for passthrough) darkened only by the shadows it receives, which a transparent
    frame carries in alpha; its opacity is the shadows' strength. `texture` multiplies albedo at a mesh's UVs.
    """

    albedo: Vec3 = (0.8, 0.8, 0.8)
    emission: Vec3 = (0.0, 0.0, 0.0)
    metallic: float = 0.0
    roughness: float = 0.5
    opacity: float = 1.0
    shadow_catcher: bool = False
    texture: Texture | None = None


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: the default pose plus intrinsics that stay fixed for a stream of poses."""

    position: Vec3
    orientation: Quat
    fov_y: float
    width: int
    height: int
    near: float
    far: float

    @property
    def pose(self) -> Pose:
        return Pose(self.position, self.orientation)


@dataclass(frozen=True)
class Sphere:
    center: Vec3
    radius: float
    material: Material = field(default_factory=Material)
    name: str = ""


@dataclass(frozen=True)
class Box:
    """An oriented box: `size` is the full edge lengths along the box's own axes, turned by `rotation`."""

    center: Vec3
    size: Vec3
    rotation: Quat = (0.0, 0.0, 0.0, 1.0)
    material: Material = field(default_factory=Material)
    name: str = ""

    def axes(self) -> np.ndarray:
        """World directions (3, 3) of the box's local x, y, z axes, as rows."""
        return quat_to_matrix(self.rotation).T.copy()


@dataclass(frozen=True)
class Plane:
    """An infinite plane through `point`; `normal` need not be unit length (it is normalised on use)."""

    point: Vec3
    normal: Vec3
    material: Material = field(default_factory=Material)
    name: str = ""

    def unit_normal(self) -> np.ndarray:
        n = np.asarray(self.normal, dtype=np.float64)
        return n / np.linalg.norm(n)


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh in its own frame, placed by position, rotation and uniform scale. Flat-shaded unless it
    has per-vertex `normals` (then smooth: the normal is interpolated across each triangle); `uvs` place a
    texture."""

    vertices: np.ndarray  # (N, 3) float64, read-only
    indices: np.ndarray  # (M, 3) int64, read-only, each in [0, N)
    material: Material = field(default_factory=Material)
    position: Vec3 = (0.0, 0.0, 0.0)
    rotation: Quat = (0.0, 0.0, 0.0, 1.0)
    scale: float = 1.0
    name: str = ""
    normals: np.ndarray | None = None  # (N, 3) float64, read-only, non-zero (normalised on use)
    uvs: np.ndarray | None = None  # (N, 2) float64, read-only

    @property
    def triangle_count(self) -> int:
        return int(self.indices.shape[0])

    def world_normals(self) -> np.ndarray | None:
        """Unit vertex normals (N, 3) in world space (rotation only: the scale is uniform), or None."""
        if self.normals is None:
            return None
        n = self.normals @ quat_to_matrix(self.rotation).T
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    def world_vertices(self) -> np.ndarray:
        """Vertices (N, 3) float64 in world space: scale, then rotate, then translate."""
        r = quat_to_matrix(self.rotation)
        return (self.vertices * self.scale) @ r.T + np.asarray(self.position, dtype=np.float64)


@dataclass(frozen=True)
class PointLight:
    position: Vec3
    color: Vec3 = (1.0, 1.0, 1.0)
    intensity: float = 1.0


@dataclass(frozen=True)
class DirectionalLight:
    """Light from infinitely far away travelling along `direction` (e.g. [0, -1, 0] shines straight down)."""

    direction: Vec3
    color: Vec3 = (1.0, 1.0, 1.0)
    intensity: float = 1.0

    def unit_direction(self) -> np.ndarray:
        d = np.asarray(self.direction, dtype=np.float64)
        return d / np.linalg.norm(d)


Object = Sphere | Box | Plane | Mesh
Light = PointLight | DirectionalLight


@dataclass(frozen=True)
class Scene:
    """A whole scene. `background` None means transparent (AR passthrough: alpha 0 where nothing is hit)."""

    camera: Camera
    objects: tuple[Object, ...]
    lights: tuple[Light, ...]
    background: Vec3 | None = None
    ambient: Vec3 = (0.05, 0.05, 0.05)
    environment: Vec3 = (0.2, 0.2, 0.2)

    @property
    def triangle_count(self) -> int:
        return sum(o.triangle_count for o in self.objects if isinstance(o, Mesh))

    def miss_color(self) -> Vec3:
        """What a reflected ray that hits nothing sees: the background colour, else the environment."""
        return self.background if self.background is not None else self.environment


__all__ = ["FORMAT_VERSION", "Box", "Camera", "DirectionalLight", "Light", "Material", "Mesh", "Object", "Plane",
           "PointLight", "Scene", "Sphere", "Texture"]
