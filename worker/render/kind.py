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
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import trio
from prometheus_client import Counter, Gauge, Histogram

from worker import faults
from worker.devices import Device
from worker.kinds import (
    DEFAULT_F32_GFLOPS,
    JobKind,
    KindFamily,
    KindRegistry,
    Requirements,
    Result,
    RunContext,
    SpecError,
    reject_unknown_fields,
)
from worker.opencl import blocking_limiter, run_blocking
from worker.render import reference
from worker.render.camera import Pose, Tile
from worker.render.errors import SceneError
from worker.render.scene import (
    Box,
    Plane,
    Scene,
    Sphere,
    content_hash,
    from_dict,
    pose_from_dict,
    to_dict,
)
from worker.runner.pool import RunnerLease, TaskFailed

log = logging.getLogger("gpumesh.render")

NAME = "render.frame"
NOT_CACHED = "scene not cached"
SPEC_FIELDS = {"scene", "scene_hash", "pose", "tile", "px_flops"}
MAX_SCENE_INPUT = 64 << 20

# Cost model. Work per pixel is counted in "flops" of a simple operation count (see flops_per_pixel); the
# ray tracer is branchy and divergent, so it runs at a fraction of the calibrated FMA peak. The weights and
# EFFICIENCY were fitted to PoCL on a shared 2-core EPYC (~25 GFLOP/s calibrated): spheres.json and mesh.json
# at 320x240 to 1280x720 within about 2x of the measured kernel times. Not yet fitted on a GPU.
EFFICIENCY = 0.3
REFERENCE_GFLOPS = 0.4  # the numpy reference's effective rate in the same units (no OpenCL device)
LAUNCH_S = 0.5e-3  # per band: launch + read-back latency
OUTPUT_BPS_GPU = 8e9
OUTPUT_BPS_HOST = 4e9
SETUP_FIXED_S = 0.02  # parse + pack + upload of a small scene
SETUP_S_PER_TRIANGLE = 4e-6  # BVH build on the host
SETUP_S_PER_INPUT_BYTE = 1 / 50e6  # a scene in the input: parse + BVH, estimated from its size
DEFAULT_PIXELS = 640 * 480
DEFAULT_PX_FLOPS = 4000.0
BAND_TARGET_S = 0.05  # a band of a big frame: about this long between checkpoints
OUTPUT_BYTES_PER_PIXEL = 8

# Spot-check: SAMPLES random pixels; if any mismatch, MORE_SAMPLES more; reject when more than
# ALLOWED_MISMATCHES of all the samples disagree. An honest float32 kernel differs from the float64 reference
# on silhouette/shadow edges (< 0.1% of pixels), so a single odd pixel must not cost an honest peer its standing.
SAMPLES = 16
MORE_SAMPLES = 48
ALLOWED_MISMATCHES = 2
RGB_TOLERANCE = 2
DEPTH_RTOL = 1e-4

# ---- metrics (default registry) ----------------------------------------------------------------------------
TILES_RENDERED = Counter("gpumesh_render_tiles_rendered_total",
                         "Frames or tiles this node's worker rendered, by path (opencl or reference)", ["path"])
RENDER_SECONDS = Histogram("gpumesh_render_device_seconds", "Render time of one frame or tile, per device",
                           ["device"], buckets=(0.001, 0.002, 0.005, 0.01, 0.016, 0.033, 0.05, 0.1, 0.25, 0.5,
                                                1, 2.5, 10))
TILES_VERIFIED = Counter("gpumesh_render_tiles_verified_total",
                         "Remote frames or tiles spot-checked by this coordinator: accepted, rejected (the result "
                         "is re-placed and the peer's standing drops) or unverifiable (scene unknown here)",
                         ["outcome"])
SCENE_CACHE = Counter("gpumesh_render_scene_cache_total", "Scene cache lookups and evictions on this node",
                      ["event"])
SCENES_CACHED = Gauge("gpumesh_render_scenes_cached", "Scenes held in this node's render cache")


class SceneNotCached(RuntimeError):
    """A spec named a scene hash this worker does not hold: the client should resend the scene."""

    def __init__(self, scene_hash: str) -> None:
        super().__init__(f"{NOT_CACHED}: {scene_hash} (resend the scene)")
        self.scene_hash = scene_hash


def is_not_cached(reason: str) -> bool:
    """Whether a failed job's reason says the worker lacked the scene (resend it)."""
    return NOT_CACHED in (reason or "")


# ---- spec ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderSpec:
    scene_hash: str | None
    scene: Scene | None
    pose: Pose | None
    tile: Tile | None
    px_flops: float | None


def _is_hash(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _tile(d: Any) -> Tile:
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
    tile = _tile(spec["tile"]) if "tile" in spec else None
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


# ---- cost model ------------------------------------------------------------------------------------------------
def flops_per_pixel(scene: Scene) -> float:
    """Estimated operations per pixel: intersection tests of the primary ray, one shadow ray per light, and the
    secondary rays of reflective / see-through materials (weighted by how common they are)."""
    analytic = sum(1 for o in scene.objects if isinstance(o, Sphere | Box | Plane))
    tris = scene.triangle_count
    isect = 100.0 * analytic + (40.0 * math.log2(tris + 1) + 100.0 if tris else 0.0)
    shade = 80.0
    per_ray = isect + shade + len(scene.lights) * (isect + 40.0)
    n = max(len(scene.objects), 1)
    secondary = sum(1 for o in scene.objects if o.material.metallic > 0 or o.material.opacity < 1) / n
    return 150.0 + per_ray * (1.0 + secondary)


def device_rate(device: Device | None) -> float:
    """Effective ray-tracing rate of a device, in the units of flops_per_pixel per second."""
    if device is not None and not device.opencl:
        return REFERENCE_GFLOPS * 1e9
    g = device.f32_gflops if device is not None and device.f32_gflops else DEFAULT_F32_GFLOPS
    return g * 1e9 * EFFICIENCY


def pixel_cost_s(px_flops: float, device: Device | None) -> float:
    """Seconds per pixel on `device` (render and read-back)."""
    bps = OUTPUT_BPS_GPU if device is not None and device.kind == "gpu" else OUTPUT_BPS_HOST
    return px_flops / device_rate(device) + OUTPUT_BYTES_PER_PIXEL / bps


def pixel_cost_for(px_flops: float, kind: str, f32_gflops: float) -> float:
    """`pixel_cost_s` for a device known only by its advert: kind ("gpu", "cpu", "reference", ...) and
    calibrated GFLOP/s (0: not calibrated)."""
    if kind == "reference":
        rate = REFERENCE_GFLOPS * 1e9
    else:
        rate = (f32_gflops or DEFAULT_F32_GFLOPS) * 1e9 * EFFICIENCY
    bps = OUTPUT_BPS_GPU if kind == "gpu" else OUTPUT_BPS_HOST
    return px_flops / rate + OUTPUT_BYTES_PER_PIXEL / bps


@dataclass(frozen=True)
class TilePlan:
    """How to split a frame: `tiles` (one per peer used), and the model's estimates in seconds."""

    tiles: tuple[Tile, ...]
    estimate_s: float
    single_s: float

    @property
    def count(self) -> int:
        return len(self.tiles)


def split_count(k: int) -> tuple[int, int]:
    """(cols, rows) for k tiles: horizontal bands up to 4, else a near-square grid with k cells or fewer."""
    if k <= 4:
        return 1, k
    cols = int(math.floor(math.sqrt(k)))
    return cols, k // cols


def plan_tiles(width: int, height: int, n_candidates: int, per_pixel_cost: float, overhead_s: float,
               *, serial_share: float = 0.25, max_tiles: int = 16) -> TilePlan:
    """Decide whether (and how far) to split a width x height frame over `n_candidates` peers.

    A frame on one peer takes `overhead_s + pixels * per_pixel_cost`. Split into k tiles on k peers that run
    in parallel it takes `pixels * per_pixel_cost / k` plus the overhead, which grows with k: each extra tile
    is another job to submit, place and collect, costing `serial_share * overhead_s` that does not overlap.
    k is the count (1..min(n_candidates, max_tiles)) with the least estimated time; tiling pays when the
    render time saved exceeds the added overhead. Pure: no I/O.
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame must be at least 1x1, got {width}x{height}")
    if per_pixel_cost < 0 or overhead_s < 0:
        raise ValueError("costs must not be negative")
    pixels = width * height
    single = overhead_s + pixels * per_pixel_cost
    best_k, best_t = 1, single
    for k in range(2, max(1, min(n_candidates, max_tiles, height)) + 1):
        cols, rows = split_count(k)
        n = cols * rows
        t = overhead_s * (1 + serial_share * (n - 1)) + math.ceil(pixels / n) * per_pixel_cost
        if t < best_t * 0.95:  # a split must win clearly: estimates are rough
            best_k, best_t = k, t
    cols, rows = split_count(best_k)
    return TilePlan(tuple(Tile.grid(width, height, cols, rows)), best_t, single)


def split_rows(tile: Tile, rates: list[float]) -> list[Tile | None]:
    """`tile` cut into horizontal strips, one per rate, with rows in proportion to the rates (None for a
    device that gets no row: more devices than rows, or a rate of 0)."""
    total = sum(max(r, 0.0) for r in rates)
    if total <= 0:
        rates, total = [1.0] * len(rates), float(len(rates))
    ys, acc = [tile.y0], 0.0
    for r in rates:
        acc += max(r, 0.0)
        ys.append(tile.y0 + round(tile.h * acc / total))
    ys[-1] = tile.y0 + tile.h
    return [Tile(tile.x0, ys[i], tile.w, ys[i + 1] - ys[i]) if ys[i + 1] > ys[i] else None
            for i in range(len(rates))]


def bands(tile: Tile, n: int) -> list[Tile]:
    """`tile` cut into n horizontal bands (fewer if it has fewer rows)."""
    n = max(1, min(n, tile.h))
    ys = [tile.y0 + tile.h * i // n for i in range(n + 1)]
    return [Tile(tile.x0, ys[i], tile.w, ys[i + 1] - ys[i]) for i in range(n) if ys[i + 1] > ys[i]]


# ---- the scene cache -------------------------------------------------------------------------------------------
class CachedScene:
    """One scene on this node: the parsed Scene, its reference form (lazy) and its uploads per device."""

    def __init__(self, scene: Scene, scene_hash: str) -> None:
        self.scene = scene
        self.hash = scene_hash
        self.px_flops = flops_per_pixel(scene)
        self.size_bytes = 4096 + scene.triangle_count * 200  # host + device copies, roughly
        self._lock = threading.Lock()
        self._prepared: reference.Prepared | None = None
        self._devices: dict[str, Any] = {}  # device id -> SceneOnDevice
        self._device_locks: dict[str, threading.Lock] = {}

    def prepared(self) -> reference.Prepared:
        """The reference renderer's form (built on first use; blocking)."""
        with self._lock:
            if self._prepared is None:
                self._prepared = reference.prepare(self.scene)
            return self._prepared

    def on_device(self, device_id: str) -> bool:
        return device_id in self._devices

    def render_on(self, dctx: Any, pose: Pose, tile: Tile,
                  into: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Render a tile on an OpenCL device (blocking: run it through run_blocking), read back into `into`
        (see `SceneOnDevice.enqueue`) or new arrays. Uploads the scene to the device on first use; renders of
        one scene on one device are serialised (SceneOnDevice is not thread-safe)."""
        # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
        from worker.render.opencl import SceneOnDevice
        dev_id = dctx.device.id
        with self._lock:
            lock = self._device_locks.setdefault(dev_id, threading.Lock())
        with lock:
            dev = self._devices.get(dev_id)
            if dev is None:

                dev = SceneOnDevice(dctx.context, dctx.queue, self.scene)
                self._devices[dev_id] = dev
            return dev.render(pose, tile, into=into)

    def release(self) -> None:
        """Free device memory (the scene left the cache). A render in progress keeps its own reference."""
        for dev_id, dev in list(self._devices.items()):
            lock = self._device_locks.get(dev_id)
            if lock is not None and lock.acquire(blocking=False):
                try:
                    dev.release()
                finally:
                    lock.release()
        self._devices.clear()


class SceneCache:
    """Scenes by content hash, least recently used evicted beyond `max_scenes` or `max_bytes`. Thread-safe."""

    def __init__(self, max_scenes: int = 16, max_bytes: int = 512 << 20) -> None:
        self.max_scenes = max_scenes
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, CachedScene] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, scene_hash: object) -> bool:
        return scene_hash in self._items

    def get(self, scene_hash: str | None, *, count: bool = True) -> CachedScene | None:
        if scene_hash is None:
            return None
        with self._lock:
            entry = self._items.get(scene_hash)
            if entry is not None:
                self._items.move_to_end(scene_hash)
        if count:
            SCENE_CACHE.labels("hit" if entry is not None else "miss").inc()
        return entry

    def put(self, scene: Scene, scene_hash: str | None = None) -> CachedScene:
        h = scene_hash or content_hash(scene)
        evicted = []
        with self._lock:
            entry = self._items.get(h)
            if entry is None:
                entry = CachedScene(scene, h)
                self._items[h] = entry
                SCENE_CACHE.labels("insert").inc()
            self._items.move_to_end(h)
            total = sum(e.size_bytes for e in self._items.values())
            while len(self._items) > 1 and (len(self._items) > self.max_scenes or total > self.max_bytes):
                _, old = self._items.popitem(last=False)
                total -= old.size_bytes
                evicted.append(old)
            SCENES_CACHED.set(len(self._items))
        for old in evicted:
            SCENE_CACHE.labels("evict").inc()
            old.release()
        return entry

    def clear(self) -> None:
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
            SCENES_CACHED.set(0)
        for e in items:
            e.release()


CACHE = SceneCache()


# ---- output bytes ----------------------------------------------------------------------------------------------
def encode_output(rgba: np.ndarray, depth: np.ndarray) -> bytes:
    return np.ascontiguousarray(rgba, np.uint8).tobytes() + np.ascontiguousarray(depth, "<f4").tobytes()


def decode_output(tile: Tile, output: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    """(rgba (h, w, 4) uint8, depth (h, w) float32) of a tile from result output bytes."""
    n = tile.w * tile.h
    if len(output) != n * OUTPUT_BYTES_PER_PIXEL:
        raise ValueError(f"output of {len(output)} bytes; a {tile.w}x{tile.h} tile needs {n * OUTPUT_BYTES_PER_PIXEL}")
    rgba = np.frombuffer(output, np.uint8, n * 4).reshape(tile.h, tile.w, 4)
    depth = np.frombuffer(output, "<f4", n, offset=n * 4).reshape(tile.h, tile.w).astype(np.float32, copy=False)
    return rgba, depth


def tile_of_body(body: dict[str, Any]) -> Tile:
    t = body.get("tile")
    if not isinstance(t, dict):
        raise ValueError("result body has no tile")
    return _tile(t)


def corrupt(rgba: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The test-only fault: every channel XOR 0x80, depth doubled (`worker.faults.Faults.corrupt_render`)."""
    return rgba ^ np.uint8(0x80), depth * np.float32(2.0)


def corrupting() -> bool:
    return faults.current().corrupt_render


# ---- the kind --------------------------------------------------------------------------------------------------
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
        RENDER_SECONDS.labels(dev_id).observe(render_s)
        TILES_RENDERED.labels(path).inc()
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


# ---- verification ----------------------------------------------------------------------------------------------
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
            TILES_VERIFIED.labels("unverifiable").inc()
            log.warning("render result not verified: scene %s is not known to this coordinator", rs.scene_hash)
            return None
        problem = self._check(entry, rs, body, output)
        TILES_VERIFIED.labels("accepted" if problem is None else "rejected").inc()
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


# ---- registration ----------------------------------------------------------------------------------------------
def register_kind(registry: KindRegistry) -> RenderFrame:
    registry.register(RENDER_FRAME, replace=True)
    return RENDER_FRAME


FAMILY = KindFamily("render", (RENDER_FRAME,), verifiers={NAME: verify_result})  # render.frame and its spot-check


__all__ = ["CACHE", "NAME", "RENDER_FRAME", "RenderFrame", "RenderSpec", "SceneCache", "SceneNotCached",
           "FAMILY", "SpotCheck", "TilePlan", "bands", "decode_output", "decode_scene", "encode_output",
           "encode_scene", "flops_per_pixel", "is_not_cached", "make_spec", "parse_spec", "plan_tiles",
           "register_kind", "split_rows", "verify_result"]


RUNNER_SCENES = 8  # scenes a runner keeps on its device


async def render_tile(lease: RunnerLease, checkpoint: Callable[[], Awaitable[None]] | None, entry: Any, pose: Any,
                      tile: Any, n_bands: int, band_s: float = 0.0) -> bytes:
    """The tile's output bytes, rendered in `lease`'s runner (`checkpoint` between bands: the job's, or None for
    a borrowed device; `band_s`: the longest stretch the executor was promised between two checkpoints, which
    lets the runner skip the round trip after bands that ran well under it; 0: after every band). Raises
    RunnerError subclasses."""
    return bytes(await render_tile_view(lease, checkpoint, entry, pose, tile, n_bands, band_s))  # the one copy


async def render_tile_view(lease: RunnerLease, checkpoint: Callable[[], Awaitable[None]] | None, entry: Any,
                           pose: Any, tile: Any, n_bands: int, band_s: float = 0.0) -> memoryview:
    """`render_tile`'s output as the arena's own bytes, no copy: valid only until the lease's next call (which
    reuses the arena), so the caller reads it and drops every view of it before that."""
    await lease.acquire()
    held: set[str] = lease.state.setdefault("scenes", set())
    npx = tile.w * tile.h
    out_n = npx * 8
    pose_d = {"position": [float(c) for c in pose.position], "orientation": [float(c) for c in pose.orientation]}
    for attempt in range(2):
        scene = b"" if entry.hash in held else encode_scene(entry.scene)
        args = {"scene_hash": entry.hash, "pose": pose_d, "tile": tile.to_dict(), "bands": n_bands,
                "band_s": float(band_s), "scene": [out_n, len(scene)] if scene else None}
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
