"""render.frame in a runner: the runner side (`task`) of one tile; the daemon side is `worker.render.kind.render_tile`.

The daemon keeps the scene cache that prices and checks jobs; each runner keeps its own (`SceneCache`, by
content hash) with the scene uploaded to its device. The daemon remembers which scenes each runner holds
(`lease.state["scenes"]`) and sends a scene's bytes through the arena only to a runner that lacks it; a runner
that evicted it answers `NoScene` and gets it once more. The tile renders in bands with a checkpoint between
them (the job's: cancel and preemption; skipped while the bands run well under the stretch the executor was
promised between two checkpoints), straight into the arena: RGBA8 rows, then float32 depth rows, which is
the job's output format (`worker.render.kind.encode_output`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from worker.render.camera import Tile
from worker.render.kind import RUNNER_SCENES, SceneCache, bands, decode_scene
from worker.render.scene import pose_from_dict


class NoScene(LookupError):
    """This runner does not hold the scene (the daemon resends it)."""


async def task(host: Any, dctx: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    """Runner side (see the module doc)."""

    cache: SceneCache = host.state.setdefault("scenes", SceneCache(max_scenes=RUNNER_SCENES))
    h = str(args["scene_hash"])
    entry = cache.get(h, count=False)
    if entry is None:
        sc = args.get("scene")
        if not sc:
            raise NoScene(h)
        host.doing(f"decoding scene {h[:12]}")
        entry = cache.put(decode_scene(bytes(host.region(int(sc[0]), int(sc[1])))), h)
    pose = pose_from_dict(args["pose"], "pose")
    t = args["tile"]
    tile = Tile(int(t["x0"]), int(t["y0"]), int(t["w"]), int(t["h"]))
    npx = tile.w * tile.h
    rgba = np.frombuffer(host.region(0, npx * 4), np.uint8).reshape(tile.h, tile.w, 4)
    depth = np.frombuffer(host.region(npx * 4, npx * 4), np.float32).reshape(tile.h, tile.w)
    band_s = float(args.get("band_s", 0.0))
    since = time.monotonic()  # the last checkpoint (the call's start is one)
    last = 0.0  # how long the last band took
    for i, band in enumerate(bands(tile, int(args.get("bands", 1)))):
        # A checkpoint is a round trip to the daemon: skipped while the stretch since the last one, plus a band
        # like the last, stays within what the executor was promised between two checkpoints (`band_s`).
        if i and (band_s <= 0 or time.monotonic() - since + last > band_s):
            await host.checkpoint()
            since = time.monotonic()
        host.doing(f"kernel 'render' (scene {h[:12]}, rows {band.y0}..{band.y0 + band.h})")
        y = band.y0 - tile.y0
        t0 = time.monotonic()
        entry.render_on(dctx, pose, band, (rgba[y:y + band.h], depth[y:y + band.h]))  # read back into the arena
        last = time.monotonic() - t0
    del rgba, depth  # no view of the arena outlives the call
    return {}, [[0, npx * 8]]
