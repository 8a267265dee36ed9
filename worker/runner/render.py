"""render.frame in a runner: the daemon side (`render_tile`) and the runner side (`task`) of one tile.

The daemon keeps the scene cache that prices and checks jobs; each runner keeps its own (`SceneCache`, by
content hash) with the scene uploaded to its device. The daemon remembers which scenes each runner holds
(`lease.state["scenes"]`) and sends a scene's bytes through the arena only to a runner that lacks it; a runner
that evicted it answers `NoScene` and gets it once more. The tile renders in bands with a checkpoint between
them (the job's: cancel and preemption), straight into the arena: RGBA8 rows, then float32 depth rows, which is
the job's output format (`worker.render.kind.encode_output`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from worker.runner.pool import RunnerLease

RUNNER_SCENES = 8  # scenes a runner keeps on its device


async def render_tile(lease: RunnerLease, checkpoint: Callable[[], Awaitable[None]] | None, entry: Any, pose: Any,
                      tile: Any, n_bands: int) -> bytes:
    """The tile's output bytes, rendered in `lease`'s runner (`checkpoint` between bands: the job's, or None for
    a borrowed device). Raises RunnerError subclasses."""
    from worker.render.kind import encode_scene
    from worker.runner.pool import TaskFailed

    await lease.acquire()
    held: set[str] = lease.state.setdefault("scenes", set())
    npx = tile.w * tile.h
    out_n = npx * 8
    pose_d = {"position": [float(c) for c in pose.position], "orientation": [float(c) for c in pose.orientation]}
    for attempt in range(2):
        scene = b"" if entry.hash in held else encode_scene(entry.scene)
        args = {"scene_hash": entry.hash, "pose": pose_d, "tile": tile.to_dict(), "bands": n_bands,
                "scene": [out_n, len(scene)] if scene else None}
        try:
            reply = await lease.call("render.tile", args, arena_bytes=out_n + len(scene), inputs=[(out_n, scene)],
                                     checkpoint=checkpoint)
        except TaskFailed as e:
            if e.type_name == "NoScene" and attempt == 0:
                held.discard(entry.hash)
                continue
            raise
        held.add(entry.hash)
        if len(held) > 4 * RUNNER_SCENES:
            held.clear()  # a guess gone stale costs one NoScene round trip
        if not reply.outs or len(reply.outs[0]) != out_n:
            raise ValueError(f"runner returned {len(reply.outs[0]) if reply.outs else 0} bytes, the tile has {out_n}")
        return bytes(reply.outs[0])
    raise AssertionError("unreachable")


class NoScene(LookupError):
    """This runner does not hold the scene (the daemon resends it)."""


async def task(host: Any, dctx: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    """Runner side (see the module doc)."""
    from worker.render.camera import Tile
    from worker.render.kind import SceneCache, bands, decode_scene
    from worker.render.scene import pose_from_dict

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
    for i, band in enumerate(bands(tile, int(args.get("bands", 1)))):
        if i:
            await host.checkpoint()
        host.doing(f"kernel 'render' (scene {h[:12]}, rows {band.y0}..{band.y0 + band.h})")
        c, d = entry.render_on(dctx, pose, band)
        y = band.y0 - tile.y0
        rgba[y:y + band.h] = c
        depth[y:y + band.h] = d
    return {}, [[0, npx * 8]]
