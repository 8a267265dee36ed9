"""render.frame in a runner: the daemon side (`render_tile`, `render_tile_view`) and the runner side (`task`)
of one tile.

The daemon keeps the scene cache that prices and checks jobs; each runner keeps its own (`SceneCache`, by
content hash) with the scene uploaded to its device. The daemon remembers which scenes each runner holds
(`lease.state["scenes"]`) and sends a scene's bytes through the arena only to a runner that lacks it; a runner
that evicted it answers `NoScene` and gets it once more. The tile renders in bands with a checkpoint between
them (the job's: cancel and preemption; skipped while the bands run well under the stretch the executor was
promised between two checkpoints), straight into the arena: RGBA8 rows, then float32 depth rows, which is
the job's output format (`worker.render.tile_output.encode_output`); or, for a render session's tile
(`half_depth`), half-float depth rows, the tile's wire form (`worker.render.frame_codec`), converted by the
kernel.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from worker.render.camera import Tile
from worker.render.frame_codec import BYTES_PER_PIXEL
from worker.render.frame_spec import decode_scene, encode_scene
from worker.render.scene import pose_from_dict
from worker.render.scene_cache import SceneCache
from worker.render.tile_output import OUTPUT_BYTES_PER_PIXEL
from worker.render.tiling import bands
from worker.runner.pool import RunnerLease, TaskFailed

RUNNER_SCENES = 8  # scenes a runner keeps on its device


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
    depth_type = np.float16 if args.get("half_depth") else np.float32
    depth_n = npx * np.dtype(depth_type).itemsize
    rgba = np.frombuffer(host.region(0, npx * 4), np.uint8).reshape(tile.h, tile.w, 4)
    depth = np.frombuffer(host.region(npx * 4, depth_n), depth_type).reshape(tile.h, tile.w)
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
    return {}, [[0, npx * 4 + depth_n]]


async def render_tile(lease: RunnerLease, checkpoint: Callable[[], Awaitable[None]] | None, entry: Any, pose: Any,
                      tile: Any, n_bands: int, band_s: float = 0.0) -> bytes:
    """The tile's output bytes, rendered in `lease`'s runner (`checkpoint` between bands: the job's, or None for
    a borrowed device; `band_s`: the longest stretch the executor was promised between two checkpoints, which
    lets the runner skip the round trip after bands that ran well under it; 0: after every band). Raises
    RunnerError subclasses."""
    return bytes(await render_tile_view(lease, checkpoint, entry, pose, tile, n_bands, band_s))  # the one copy


async def render_tile_view(lease: RunnerLease, checkpoint: Callable[[], Awaitable[None]] | None, entry: Any,
                           pose: Any, tile: Any, n_bands: int, band_s: float = 0.0, *,
                           half_depth: bool = False) -> memoryview:
    """`render_tile`'s output as the arena's own bytes, no copy: valid only until the lease's next call (which
    reuses the arena), so the caller reads it and drops every view of it before that. `half_depth`: depth as
    IEEE half (`frame_codec.quantize_depth`, done by the kernel), the layout of a session tile on the wire."""
    await lease.acquire()
    held: set[str] = lease.state.setdefault("scenes", set())
    npx = tile.w * tile.h
    out_n = npx * (BYTES_PER_PIXEL if half_depth else OUTPUT_BYTES_PER_PIXEL)  # the wire's layout, or the job's
    pose_d = {"position": [float(c) for c in pose.position], "orientation": [float(c) for c in pose.orientation]}
    for attempt in range(2):
        scene = b"" if entry.hash in held else encode_scene(entry.scene)
        args = {"scene_hash": entry.hash, "pose": pose_d, "tile": tile.to_dict(), "bands": n_bands,
                "band_s": float(band_s), "scene": [out_n, len(scene)] if scene else None, "half_depth": half_depth}
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
        if len(reply.outs) != 1 or len(reply.outs[0]) != out_n:  # the runner is not trusted
            raise lease.refuse(f"returned {[len(o) for o in reply.outs]} bytes, the tile has {out_n}")
        return reply.outs[0]
    raise AssertionError("unreachable")
