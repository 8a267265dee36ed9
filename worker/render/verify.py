"""Verification of remote render.frame results (coordinator side): `verify_result` re-renders a few random pixels
of a tile with the reference renderer and compares them (`SpotCheck`, `mismatches`); counted in
`gpumesh_render_tiles_verified_total`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.kinds import SpecError
from worker.render import metrics, reference
from worker.render.camera import Pose, Tile
from worker.render.errors import SceneError
from worker.render.frame_spec import RenderSpec, decode_scene, parse_spec
from worker.render.scene import content_hash
from worker.render.scene_cache import CACHE, CachedScene, SceneCache
from worker.render.tile_output import decode_output, tile_of_body

log = logging.getLogger("gpumesh.render")

# Spot-check: SAMPLES random pixels; if any mismatch, MORE_SAMPLES more; reject when more than
# ALLOWED_MISMATCHES of all the samples disagree. An honest float32 kernel differs from the float64 reference
# on silhouette/shadow edges (< 0.1% of pixels), so a single odd pixel must not cost an honest peer its standing.
SAMPLES = 16
MORE_SAMPLES = 48
ALLOWED_MISMATCHES = 2
RGB_TOLERANCE = 2
DEPTH_RTOL = 1e-4


def mismatches(rgba: np.ndarray, depth: np.ndarray, ref_rgba: np.ndarray, ref_depth: np.ndarray) -> np.ndarray:
    """Per sample: True where the tile's pixel is outside the tolerance of the reference's (any channel more
    than RGB_TOLERANCE/255 apart, or view depth more than DEPTH_RTOL relative apart; +inf only matches +inf)."""
    c = np.abs(rgba.astype(np.int16) - ref_rgba.astype(np.int16)).max(axis=-1) > RGB_TOLERANCE
    d, r = depth.astype(np.float64), ref_depth.astype(np.float64)
    both_inf = np.isinf(d) & np.isinf(r)
    with np.errstate(invalid="ignore"):
        far = np.abs(d - r) > DEPTH_RTOL * np.maximum(np.abs(r), 1e-6)
    bad_depth = np.where(both_inf, False, np.where(np.isfinite(d) & np.isfinite(r), far, True))
    return c | bad_depth


@dataclass
class SpotCheck:
    """Spot-checks remote render results against the reference at random pixels (unpredictable to workers)."""

    cache: SceneCache = field(default_factory=lambda: CACHE)
    samples: int = SAMPLES
    more_samples: int = MORE_SAMPLES
    allowed: int = ALLOWED_MISMATCHES
    rng: random.Random = field(default_factory=random.SystemRandom)

    def scene_for(self, rs: RenderSpec, job_input: bytes | None) -> CachedScene | None:
        if rs.scene is not None:
            return self.cache.put(rs.scene, rs.scene_hash)
        if job_input:
            scene = decode_scene(job_input)
            h = content_hash(scene)
            if rs.scene_hash is not None and h != rs.scene_hash:
                raise SpecError("scene_hash", "does not match the scene in the input")
            return self.cache.put(scene, h)
        return self.cache.get(rs.scene_hash)

    def _pick(self, tile: Tile, n: int, taken: set[int]) -> list[int]:
        total = tile.w * tile.h
        free = total - len(taken)
        n = min(n, free)
        out: list[int] = []
        while len(out) < n:
            i = self.rng.randrange(total)
            if i not in taken:
                taken.add(i)
                out.append(i)
        return out

    def check(self, spec: dict[str, Any], job_input: bytes | None, body: dict[str, Any],
              output: bytes, read_input: Callable[[], bytes | None] | None = None, input_size: int = 0) -> str | None:
        """None if the result passes, else why not. `read_input` gives a streamed scene (the coordinator's
        spooled copy), read only when the scene is not cached already. Unknown scene: None, counted as
        unverifiable."""
        rs = parse_spec(spec, len(job_input) if job_input else input_size)
        entry = self.scene_for(rs, job_input)
        if entry is None and read_input is not None:
            entry = self.scene_for(rs, read_input())
        if entry is None:
            metrics.TILES_VERIFIED.labels("unverifiable").inc()
            log.warning("render result not verified: scene %s is not known to this coordinator", rs.scene_hash)
            return None
        problem = self._check(entry, rs, body, output)
        metrics.TILES_VERIFIED.labels("accepted" if problem is None else "rejected").inc()
        return problem

    def _check(self, entry: CachedScene, rs: RenderSpec, body: dict[str, Any], output: bytes) -> str | None:
        cam = entry.scene.camera
        want = rs.tile or Tile.full(cam.width, cam.height)
        if body.get("scene_hash") != entry.hash:
            return f"result is for scene {body.get('scene_hash')!r}, not {entry.hash}"
        try:
            got = tile_of_body(body)
        except (ValueError, SpecError) as e:
            return f"malformed result body: {e}"
        if got != want or body.get("width") != cam.width or body.get("height") != cam.height:
            return (f"result is tile {got.to_dict()} of {body.get('width')}x{body.get('height')}, asked for "
                    f"{want.to_dict()} of {cam.width}x{cam.height}")
        try:
            want.check(cam.width, cam.height)
            rgba, depth = decode_output(want, output)
        except (ValueError, SceneError) as e:
            return f"malformed output: {e}"
        pose = rs.pose or cam.pose
        prepared = entry.prepared()
        taken: set[int] = set()
        idx = self._pick(want, self.samples, taken)
        bad = self._compare(prepared, pose, want, rgba, depth, idx)
        checked = len(idx)
        if bad:
            more = self._pick(want, self.more_samples, taken)
            bad += self._compare(prepared, pose, want, rgba, depth, more)
            checked += len(more)
        if bad > self.allowed:
            return f"spot-check: {bad} of {checked} sampled pixels differ from the reference renderer"
        return None

    @staticmethod
    def _compare(prepared: reference.Prepared, pose: Pose, tile: Tile, rgba: np.ndarray, depth: np.ndarray,
                 idx: list[int]) -> int:
        if not idx:
            return 0
        ys, xs = np.divmod(np.asarray(idx, np.int64), tile.w)
        ref_rgba, ref_depth = reference.render_pixels(prepared, pose, np.stack([xs + tile.x0, ys + tile.y0], 1))
        return int(mismatches(rgba[ys, xs], depth[ys, xs], ref_rgba, ref_depth).sum())


SPOT_CHECK = SpotCheck()


def verify_result(job: Any, result: Any, output: bytes, read_input: Callable[[], bytes | None] | None = None) -> str | None:
    """The JobService verifier of render.frame: `job` has `.spec`, `.input` (inline bytes or None) and
    `.input_size`, `result` has `.body`; `read_input` reads a streamed input. None to accept, else why not."""
    try:
        return SPOT_CHECK.check(job.spec, getattr(job, "input", None), result.body or {}, output, read_input,
                                getattr(job, "input_size", 0))
    except SpecError as e:
        return f"cannot check the result: {e}"
