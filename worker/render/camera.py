"""Camera maths shared by every renderer: quaternions, the pinhole model and pose helpers.

Conventions (documented in docs/scene-format.md): right-handed world, metres; quaternions are [x, y, z, w]
(glTF / ARKit / Unity order); a camera with the identity orientation looks along -Z with +Y up and +X to the
right. Pixel (0, 0) is the top-left pixel and its ray passes through the pixel centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from worker.render.errors import SceneError

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]


def quat_to_matrix(q: Quat) -> np.ndarray:
    """3x3 rotation matrix (float64) of a quaternion [x, y, z, w]; normalised here so callers keep input bits."""
    x, y, z, w = (float(c) for c in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if n == 0.0:
        raise ValueError("zero quaternion has no rotation")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        dtype=np.float64,
    )


def matrix_to_quat(m: np.ndarray) -> Quat:
    """Quaternion [x, y, z, w] (w >= 0) of a rotation matrix, numerically stable for every rotation."""
    m = np.asarray(m, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = ((m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s)
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = (0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s)
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = ((m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s)
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = ((m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s)
    if q[3] < 0:
        q = (-q[0], -q[1], -q[2], -q[3])
    return (float(q[0]), float(q[1]), float(q[2]), float(q[3]))


@dataclass(frozen=True)
class Pose:
    """Where the camera is and where it looks: all that changes between frames of a stream."""

    position: Vec3
    orientation: Quat

    def to_dict(self) -> dict:
        return {"position": list(self.position), "orientation": list(self.orientation)}


@dataclass(frozen=True)
class CameraFrame:
    """The pinhole model of one pose, in float64: origin and the scaled basis that primary rays are built from.

    A pixel's unnormalised ray direction is `forward + sx * right + sy * up` with sx, sy in [-1, 1] across
    the frame; `right` and `up` already carry tan(fov/2) and the aspect ratio.
    """

    origin: np.ndarray
    right: np.ndarray
    up: np.ndarray
    forward: np.ndarray
    width: int
    height: int


def camera_frame(pose: Pose, fov_y_deg: float, width: int, height: int) -> CameraFrame:
    """Build the CameraFrame for a pose and the camera intrinsics."""
    r = quat_to_matrix(pose.orientation)
    tan_half = math.tan(math.radians(fov_y_deg) / 2)
    aspect = width / height
    return CameraFrame(
        origin=np.asarray(pose.position, dtype=np.float64),
        right=r[:, 0] * (tan_half * aspect),
        up=r[:, 1] * tan_half,
        forward=-r[:, 2],
        width=width,
        height=height,
    )


def primary_directions(frame: CameraFrame, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Unit ray directions (N, 3) through the centres of full-frame pixels (px, py)."""
    sx = 2.0 * (np.asarray(px, dtype=np.float64) + 0.5) / frame.width - 1.0
    sy = 1.0 - 2.0 * (np.asarray(py, dtype=np.float64) + 0.5) / frame.height
    d = frame.forward[None, :] + sx[:, None] * frame.right[None, :] + sy[:, None] * frame.up[None, :]
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def look_at(eye: Vec3, target: Vec3, up: Vec3 = (0.0, 1.0, 0.0)) -> Pose:
    """A pose at `eye` looking at `target`; `up` picks the roll (must not be parallel to the view)."""
    e = np.asarray(eye, dtype=np.float64)
    f = np.asarray(target, dtype=np.float64) - e
    if np.linalg.norm(f) == 0:
        raise ValueError("look_at: eye and target coincide")
    f /= np.linalg.norm(f)
    r = np.cross(f, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(r) < 1e-9:
        raise ValueError("look_at: up is parallel to the view direction")
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    m = np.stack([r, u, -f], axis=1)
    return Pose(position=(float(e[0]), float(e[1]), float(e[2])), orientation=matrix_to_quat(m))


def orbit(target: Vec3, radius: float, height: float, frames: int, turns: float = 1.0) -> list[Pose]:
    """Poses circling `target` at `radius` and `height` above it, looking at it: the demo's camera path."""
    poses = []
    for i in range(frames):
        a = 2 * math.pi * turns * i / max(frames, 1)
        eye = (target[0] + radius * math.sin(a), target[1] + height, target[2] + radius * math.cos(a))
        poses.append(look_at(eye, target))
    return poses


@dataclass(frozen=True)
class Tile:
    """A rectangle of a frame, in full-frame pixels: the unit the scheduler spreads over peers."""

    x0: int
    y0: int
    w: int
    h: int

    def check(self, width: int, height: int, path: str = "tile") -> None:
        """Raise SceneError unless the tile is non-empty and lies inside a width x height frame."""
        for name in ("x0", "y0", "w", "h"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise SceneError(f"{path}.{name}: expected an integer, got {v!r}")
        if self.w <= 0 or self.h <= 0:
            raise SceneError(f"{path}: empty tile {self.w}x{self.h}")
        if self.x0 < 0 or self.y0 < 0 or self.x0 + self.w > width or self.y0 + self.h > height:
            raise SceneError(
                f"{path}: ({self.x0}, {self.y0}, {self.w}x{self.h}) lies outside the {width}x{height} frame"
            )

    def to_dict(self) -> dict:
        return {"x0": self.x0, "y0": self.y0, "w": self.w, "h": self.h}

    @staticmethod
    def full(width: int, height: int) -> Tile:
        return Tile(0, 0, width, height)

    @staticmethod
    def grid(width: int, height: int, cols: int, rows: int) -> list[Tile]:
        """Split a frame into cols x rows tiles of near-equal size, row-major, covering every pixel once."""
        xs = [width * i // cols for i in range(cols + 1)]
        ys = [height * j // rows for j in range(rows + 1)]
        return [
            Tile(xs[i], ys[j], xs[i + 1] - xs[i], ys[j + 1] - ys[j])
            for j in range(rows)
            for i in range(cols)
            if xs[i + 1] > xs[i] and ys[j + 1] > ys[j]
        ]
