"""The render.frame spec: parsing and checking it (`parse_spec`), making one (`make_spec`), the scene as job input
bytes (`encode_scene`, `decode_scene`) and the "scene not cached" answer that makes a client resend the scene.
The fields are listed in `worker.render.kind`'s docstring and docs/scene-format.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack

from worker.kinds import SpecError, reject_unknown_fields
from worker.render.camera import Pose, Tile
from worker.render.errors import SceneError
from worker.render.scene import Scene, content_hash, from_dict, pose_from_dict, to_dict

NAME = "render.frame"
NOT_CACHED = "scene not cached"
SPEC_FIELDS = {"scene", "scene_hash", "pose", "tile", "px_flops"}
MAX_SCENE_INPUT = 64 << 20


class SceneNotCached(RuntimeError):
    """A spec named a scene hash this worker does not hold: the client should resend the scene."""

    def __init__(self, scene_hash: str) -> None:
        super().__init__(f"{NOT_CACHED}: {scene_hash} (resend the scene)")
        self.scene_hash = scene_hash


def is_not_cached(reason: str) -> bool:
    """Whether a failed job's reason says the worker lacked the scene (resend it)."""
    return NOT_CACHED in (reason or "")


@dataclass(frozen=True)
class RenderSpec:
    scene_hash: str | None
    scene: Scene | None
    pose: Pose | None
    tile: Tile | None
    px_flops: float | None


def _is_hash(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def parse_tile(d: Any) -> Tile:
    """A tile {x0, y0, w, h} of a spec or a result body (each in range; `Tile.check` checks it against a frame)."""
    if not isinstance(d, dict):
        raise SpecError("tile", f"expected a map {{x0, y0, w, h}}, got {type(d).__name__}")
    extra = sorted(set(d) - {"x0", "y0", "w", "h"})
    if extra:
        raise SpecError(f"tile.{extra[0]}", "unknown field (allowed: x0, y0, w, h)")
    vals = []
    for k in ("x0", "y0", "w", "h"):
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, int):
            raise SpecError(f"tile.{k}", f"expected an integer, got {v!r}")
        lo = 1 if k in ("w", "h") else 0
        if not lo <= v <= 4096:
            raise SpecError(f"tile.{k}", f"must be in [{lo}, 4096], got {v}")
        vals.append(v)
    return Tile(*vals)


def parse_spec(spec: dict[str, Any], input_size: int = 0) -> RenderSpec:
    """Check a render.frame spec; SpecError names the bad field."""
    reject_unknown_fields(spec, SPEC_FIELDS)
    h = spec.get("scene_hash")
    if h is not None and not _is_hash(h):
        raise SpecError("scene_hash", "expected 64 lowercase hex digits (worker.render.scene.content_hash)")
    scene = None
    if "scene" in spec:
        try:
            scene = from_dict(spec["scene"])
        except SceneError as e:
            raise SpecError("scene", str(e)) from None
        if h is not None and content_hash(scene) != h:
            raise SpecError("scene_hash", "does not match the content hash of the scene in the spec")
        if input_size:
            raise SpecError("input", "the scene is in the spec: the job takes no input")
    elif h is None:
        raise SpecError("scene_hash", "required (or send the scene itself in `scene` or as the input)")
    if input_size < 0 or input_size > MAX_SCENE_INPUT:
        raise SpecError("input", f"a scene input must be 0..{MAX_SCENE_INPUT} bytes, got {input_size}")
    pose = None
    if "pose" in spec:
        try:
            pose = pose_from_dict(spec["pose"], "pose")
        except SceneError as e:
            raise SpecError("pose", str(e)) from None
    tile = parse_tile(spec["tile"]) if "tile" in spec else None
    if tile is not None and scene is not None:
        try:
            tile.check(scene.camera.width, scene.camera.height)
        except SceneError as e:
            raise SpecError("tile", str(e)) from None
    px = spec.get("px_flops")
    if px is not None:
        if isinstance(px, bool) or not isinstance(px, int | float) or not (0 < px <= 1e9) or not math.isfinite(px):
            raise SpecError("px_flops", f"must be a number in (0, 1e9], got {px!r}")
        px = float(px)
    return RenderSpec(h if h is not None else (content_hash(scene) if scene is not None else None), scene, pose,
                      tile, px)


def make_spec(scene_hash: str, pose: Pose | None = None, tile: Tile | None = None, *,
              px_flops: float | None = None, scene: Scene | None = None) -> dict[str, Any]:
    """A render.frame spec (the client's side). `scene` goes in the spec only when given."""
    spec: dict[str, Any] = {"scene_hash": scene_hash}
    if scene is not None:
        spec["scene"] = to_dict(scene)
    if pose is not None:
        spec["pose"] = {"position": [float(c) for c in pose.position],
                        "orientation": [float(c) for c in pose.orientation]}
    if tile is not None:
        spec["tile"] = {"x0": int(tile.x0), "y0": int(tile.y0), "w": int(tile.w), "h": int(tile.h)}
    if px_flops is not None:
        spec["px_flops"] = round(float(px_flops), 1)
    return spec


def encode_scene(scene: Scene) -> bytes:
    """The scene as job input bytes: msgpack of the canonical dict with binary mesh arrays."""
    return msgpack.packb(to_dict(scene, binary=True), use_bin_type=True)


def decode_scene(data: bytes) -> Scene:
    try:
        d = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several types for garbage
        raise SpecError("input", f"not a msgpack scene: {e}") from None
    try:
        return from_dict(d)
    except SceneError as e:
        raise SpecError("input", f"scene: {e}") from None
