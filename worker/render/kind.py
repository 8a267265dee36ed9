"""The `render.frame` job kind: one frame, or one tile of a frame, of a cached AR scene.

Spec (a msgpack map; keep it small, a stream sends only poses):

| field | type | meaning |
|---|---|---|
| `scene_hash` | 64 hex | `content_hash` of the scene; required unless `scene` is in the spec |
| `scene` | map | the scene itself (docs/scene-format.md); optional |
| `pose` | `{position, orientation}` | camera pose; default the scene camera's |
| `tile` | `{x0, y0, w, h}` | full-frame pixels to render; default the whole frame |
| `px_flops` | number | the client's estimate of work per pixel (`flops_per_pixel`), for placement |

The scene travels once: in the spec (`scene`) or as the job's input bytes (msgpack of
`to_dict(scene, binary=True)`, with `scene_hash` in the spec: meshes can be large, inputs stream). Workers
keep scenes in a bounded LRU cache by content hash, with their uploaded `SceneOnDevice` per device; a job
naming only a hash the worker does not hold fails at once with "scene not cached: HASH (resend the scene)"
so the client resends it.

Result: body `{scene_hash, width, height, tile, path, render_s, device}`; output bytes are the tile's RGBA8
(h*w*4, row-major, sRGB, premultiplied alpha) followed by its float32 little-endian view depth (h*w*4, +inf where
nothing is hit). `decode_output` turns them back into arrays.

Runs on an OpenCL device (`worker.render.opencl`) or, on a node without one, the numpy reference. A big
frame renders in horizontal bands with a checkpoint between bands (cancel, preemption by realtime work).

Verification (coordinator side): `verify_result` re-renders a few random pixels of a remote worker's tile
with the reference and compares them (2/255 per channel, depth 1e-4 relative): see `SpotCheck`.

Test-only fault hook: a worker process with `worker.faults.Faults(corrupt_render=True)` installed
corrupts every tile it renders (every channel XOR 0x80, depth doubled), so tests can show the spot-check
catching a dishonest peer. Production never installs it.

`FAMILY` is the kind and its verifier, as a node's composition root registers them.

The parts, one concern a module: `frame_spec.py` (the spec, the scene as input bytes), `cost.py` (the cost
model), `tiling.py` (tiles, strips and bands), `scene_cache.py` (the scene cache), `tile_output.py` (output
bytes, the corrupting fault), `verify.py` (the spot-check), `metrics.py` (the render metrics) and, for a tile
rendered in a runner process, `worker.runner.render`. Here: the kind itself (`RenderFrame`) and its
registration; this module also exports the names its users import (`__all__`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import trio

from worker.devices import Device
from worker.kinds import (
    JobKind,
    KindFamily,
    KindRegistry,
    Requirements,
    Result,
    RunContext,
    SpecError,
)
from worker.opencl import blocking_limiter, run_blocking
from worker.render import metrics, reference
from worker.render.camera import Pose, Tile
from worker.render.cost import (
    BAND_TARGET_S,
    DEFAULT_PIXELS,
    DEFAULT_PX_FLOPS,
    LAUNCH_S,
    SETUP_FIXED_S,
    SETUP_S_PER_INPUT_BYTE,
    SETUP_S_PER_TRIANGLE,
    device_rate,
    flops_per_pixel,
    pixel_cost_for,
    pixel_cost_s,
)
from worker.render.errors import SceneError
from worker.render.frame_spec import (
    MAX_SCENE_INPUT,
    NAME,
    NOT_CACHED,
    RenderSpec,
    SceneNotCached,
    decode_scene,
    encode_scene,
    is_not_cached,
    make_spec,
    parse_spec,
)
from worker.render.scene import content_hash
from worker.render.scene_cache import CACHE, CachedScene, SceneCache
from worker.render.tile_output import (
    OUTPUT_BYTES_PER_PIXEL,
    corrupt,
    corrupting,
    decode_output,
    encode_output,
    tile_of_body,
)
from worker.render.tiling import TilePlan, bands, plan_tiles, split_count, split_rows
from worker.render.verify import SpotCheck, verify_result
from worker.runner.render import render_tile, render_tile_view


class RenderFrame(JobKind):
    name = NAME
    description = "ray-traced RGBA + depth of one frame or tile of a cached AR scene"
    max_input_bytes = MAX_SCENE_INPUT
    max_spec_bytes = 1 << 20  # a scene inline in the spec (meshes better go as the input)

    def __init__(self, cache: SceneCache | None = None) -> None:
        self.cache = cache if cache is not None else CACHE
        self._parsed: OrderedDict[int, tuple[Any, RenderSpec]] = OrderedDict()

    def spec_of(self, spec: dict[str, Any], input_size: int = 0) -> RenderSpec:
        """The parsed spec, memoised per spec object (validate, cost and run all need it)."""
        key = id(spec)
        hit = self._parsed.get(key)
        if hit is not None and hit[0] is spec:
            return hit[1]
        parsed = parse_spec(spec, input_size)
        self._parsed[key] = (spec, parsed)
        while len(self._parsed) > 64:
            self._parsed.popitem(last=False)
        return parsed

    def validate(self, spec: dict[str, Any], input_size: int) -> None:
        super().validate(spec, input_size)
        rs = self.spec_of(spec, input_size)
        if input_size and rs.scene_hash is None:
            raise SpecError("scene_hash", "required with a scene in the input")

    def requirements(self, spec: dict[str, Any]) -> Requirements:
        return Requirements()  # every device, and the CPU reference path

    def _frame_facts(self, rs: RenderSpec) -> tuple[int, float, CachedScene | None]:
        entry = self.cache.get(rs.scene_hash, count=False)
        scene = rs.scene or (entry.scene if entry is not None else None)
        if rs.tile is not None:
            pixels = rs.tile.w * rs.tile.h
        elif scene is not None:
            pixels = scene.camera.width * scene.camera.height
        else:
            pixels = DEFAULT_PIXELS
        if rs.px_flops is not None:
            fpp = rs.px_flops
        elif entry is not None:
            fpp = entry.px_flops
        elif scene is not None:
            fpp = flops_per_pixel(scene)
        else:
            fpp = DEFAULT_PX_FLOPS
        return pixels, fpp, entry

    def cost_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        """Render time from the device's calibrated float32 rate and the scene's work per pixel, plus the scene's
        setup when the job carries a scene this node has not seen (on a coordinator pricing remote devices, "this
        node" is a guess for theirs; the worker's own admission prices its own cache). The kernel's first build
        in a process (~1 s on PoCL) is not priced: a stream's warm-up jobs absorb it."""
        rs = self.spec_of(spec, input_size)
        pixels, fpp, entry = self._frame_facts(rs)
        t = pixels * pixel_cost_s(fpp, device) + LAUNCH_S * self._band_count(pixels, fpp, device)
        carries = rs.scene is not None or input_size > 0
        if carries and entry is None:  # a scene new to this node: parse, BVH, upload
            if rs.scene is not None:
                t += SETUP_FIXED_S + rs.scene.triangle_count * SETUP_S_PER_TRIANGLE
            else:
                t += SETUP_FIXED_S + input_size * SETUP_S_PER_INPUT_BYTE
        return t

    def _band_count(self, pixels: int, fpp: float, device: Device | None) -> int:
        return max(1, math.ceil(pixels * pixel_cost_s(fpp, device) / BAND_TARGET_S))

    def chunk_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        rs = self.spec_of(spec, input_size)
        pixels, fpp, _ = self._frame_facts(rs)
        n = self._band_count(pixels, fpp, device)
        return min(self.cost_s(spec, input_size, device), pixels * pixel_cost_s(fpp, device) / n + LAUNCH_S)

    async def _scene(self, ctx: RunContext, rs: RenderSpec) -> CachedScene:
        if ctx.input_size > 0:
            data = await ctx.input.read_all(MAX_SCENE_INPUT)
            scene = await trio.to_thread.run_sync(decode_scene, data) if len(data) > (1 << 20) else decode_scene(data)
            h = await trio.to_thread.run_sync(content_hash, scene)
            if rs.scene_hash is not None and h != rs.scene_hash:
                raise SpecError("scene_hash", f"does not match the scene in the input (which hashes to {h})")
            return self.cache.put(scene, h)
        if rs.scene is not None:
            return self.cache.put(rs.scene, rs.scene_hash)
        entry = self.cache.get(rs.scene_hash)
        if entry is None:
            raise SceneNotCached(str(rs.scene_hash))
        return entry

    async def run(self, ctx: RunContext) -> Result:
        rs = self.spec_of(ctx.spec, ctx.input_size)
        entry = await self._scene(ctx, rs)
        cam = entry.scene.camera
        tile = rs.tile or Tile.full(cam.width, cam.height)
        try:
            tile.check(cam.width, cam.height)
        except SceneError as e:
            raise SpecError("tile", str(e)) from None
        pose = rs.pose or cam.pose
        rgba = np.empty((tile.h, tile.w, 4), np.uint8)
        depth = np.empty((tile.h, tile.w), np.float32)
        # as many bands as chunk_s promised the executor (the spec's work estimate wins, as in cost_s)
        fpp = rs.px_flops or entry.px_flops
        n = self._band_count(tile.w * tile.h, fpp, ctx.device)
        t0 = time.perf_counter()
        used: list[str] = []
        runner_out: bytes | None = None
        if ctx.runner is not None:  # the node's way: the kernel runs in runner processes (worker.runner)
            path = "opencl"
            async with ctx.idle_devices() as more:  # here: (device, RunnerLease) pairs
                band_s = tile.w * tile.h * pixel_cost_s(fpp, ctx.device) / n + LAUNCH_S  # as chunk_s promised
                runner_out, used = await self._render_in_runners(ctx, entry, pose, tile, n, band_s,
                                                                 [(ctx.device, ctx.runner), *more], rgba, depth)
        elif ctx.cl is not None:
            path = "opencl"
            async with ctx.idle_devices() as more:
                used = await self._render_on_devices(ctx, entry, pose, tile, n, [(ctx.device, ctx.cl), *more],
                                                     rgba, depth)
        else:
            path = "reference"
            prepared = await trio.to_thread.run_sync(entry.prepared)
            for i, band in enumerate(bands(tile, n)):
                if i:
                    await ctx.checkpoint()
                c, d = await trio.to_thread.run_sync(reference.render, prepared, pose, band)
                y = band.y0 - tile.y0
                rgba[y:y + band.h] = c
                depth[y:y + band.h] = d
        render_s = time.perf_counter() - t0
        if ctx.device is not None:
            dev_id = ctx.device.id
        else:
            dev_id = str(getattr(ctx.cl.device, "id", "opencl")) if ctx.cl is not None else "cpu-reference"
        metrics.RENDER_SECONDS.labels(dev_id).observe(render_s)
        metrics.TILES_RENDERED.labels(path).inc()
        if corrupting():
            if runner_out is not None:
                rgba, depth = decode_output(tile, runner_out)
                runner_out = None
            rgba, depth = corrupt(rgba, depth)
        ctx.progress(1.0, None)
        body = {"scene_hash": entry.hash, "width": cam.width, "height": cam.height, "tile": tile.to_dict(),
                "path": path, "render_s": render_s, "device": dev_id, "devices": used or [dev_id]}
        return Result(body, runner_out if runner_out is not None else encode_output(rgba, depth))

    async def _render_in_runners(self, ctx: RunContext, entry: CachedScene, pose: Pose, tile: Tile, n: int,
                                 band_s: float, devices: list[tuple[Any, Any]], rgba: np.ndarray,
                                 depth: np.ndarray) -> tuple[bytes | None, list[str]]:
        """`_render_on_devices` with runner leases: one device renders straight into its arena (the output
        bytes, no copy here); several render their strips at once, assembled into `rgba`/`depth` (None)."""
        if len(devices) == 1:
            return (await render_tile(devices[0][1], ctx.checkpoint, entry, pose, tile, n, band_s),
                    [devices[0][0].id])
        strips = split_rows(tile, [device_rate(d) for d, _ in devices])
        used: list[str] = []

        async def strip(i: int, lease: Any, part: Tile) -> None:
            out = await render_tile(lease, ctx.checkpoint if i == 0 else None, entry, pose, part,
                                    max(1, round(n * part.h / tile.h)), band_s)
            c, d = decode_output(part, out)
            y = part.y0 - tile.y0
            rgba[y:y + part.h] = c
            depth[y:y + part.h] = d

        async with trio.open_nursery() as nursery:
            for i, ((dev, lease), part) in enumerate(zip(devices, strips, strict=False)):
                if part is not None:
                    used.append(str(dev.id))
                    nursery.start_soon(strip, i, lease, part)
        return None, used

    async def _render_on_devices(self, ctx: RunContext, entry: CachedScene, pose: Pose, tile: Tile, n: int,
                                 devices: list[tuple[Any, Any]], rgba: np.ndarray, depth: np.ndarray) -> list[str]:
        """Render `tile` in `n` bands over the devices together: each gets a strip of rows in proportion to
        its rate and renders it in its share of the bands, all at once; checkpoints between the bands of the
        job's own device (the first). Returns the ids of the devices that rendered rows."""
        strips = split_rows(tile, [device_rate(d) for d, _ in devices])
        limiter = blocking_limiter() if len(strips) == 1 else trio.CapacityLimiter(len(strips))
        used: list[str] = []

        async def strip(i: int, dctx: Any, part: Tile) -> None:
            for j, band in enumerate(bands(part, max(1, round(n * part.h / tile.h)))):
                if j and i == 0:
                    await ctx.checkpoint()
                y = band.y0 - tile.y0
                await run_blocking(entry.render_on, dctx, pose, band, (rgba[y:y + band.h], depth[y:y + band.h]),
                                   limiter=limiter)

        async with trio.open_nursery() as nursery:
            for i, ((dev, dctx), part) in enumerate(zip(devices, strips, strict=False)):
                if part is not None:
                    used.append(str(getattr(dev, "id", None) or getattr(dctx.device, "id", "opencl")))
                    nursery.start_soon(strip, i, dctx, part)
        return used

    def reference(self, spec: dict[str, Any], input_bytes: bytes) -> Result:
        rs = parse_spec(spec, len(input_bytes))
        if input_bytes:
            scene = decode_scene(input_bytes)
        elif rs.scene is not None:
            scene = rs.scene
        else:
            entry = self.cache.get(rs.scene_hash)
            if entry is None:
                raise SceneNotCached(str(rs.scene_hash))
            scene = entry.scene
        cam = scene.camera
        tile = rs.tile or Tile.full(cam.width, cam.height)
        rgba, depth = reference.render(scene, rs.pose, tile)
        body = {"scene_hash": content_hash(scene), "width": cam.width, "height": cam.height,
                "tile": tile.to_dict(), "path": "reference", "render_s": 0.0, "device": "reference"}
        return Result(body, encode_output(rgba, depth))


RENDER_FRAME = RenderFrame()


# ---- registration ----------------------------------------------------------------------------------------------
def register_kind(registry: KindRegistry) -> RenderFrame:
    registry.register(RENDER_FRAME, replace=True)
    return RENDER_FRAME


FAMILY = KindFamily("render", (RENDER_FRAME,), verifiers={NAME: verify_result})  # render.frame and its spot-check


__all__ = ["CACHE", "MAX_SCENE_INPUT", "NAME", "NOT_CACHED", "OUTPUT_BYTES_PER_PIXEL", "RENDER_FRAME", "SETUP_FIXED_S",
           "CachedScene", "FAMILY", "RenderFrame", "RenderSpec", "SceneCache", "SceneNotCached", "SpotCheck", "TilePlan",
           "bands", "corrupt", "decode_output", "decode_scene", "encode_output", "encode_scene", "flops_per_pixel",
           "is_not_cached", "make_spec", "parse_spec", "pixel_cost_for", "plan_tiles", "register_kind", "render_tile",
           "render_tile_view", "split_count", "split_rows", "tile_of_body", "verify_result"]
