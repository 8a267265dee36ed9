"""The OpenCL renderer: a scene uploaded once per context (`SceneOnDevice`), then any number of poses/tiles.

The caller owns the pyopencl Context and CommandQueue (the worker picks the device). Programs are built once
per context and the kernel object fetched once per program; scene buffers live as long as the SceneOnDevice,
output buffers are reused per tile size, so a pose stream costs one kernel launch and one read per frame.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pyopencl as cl

from worker.render.camera import Pose, Tile, camera_frame
from worker.render.pack import PackedScene, pack
from worker.render.scene import Scene, content_hash

KERNEL_SOURCE = Path(__file__).with_name("raytrace.cl")
POCL_OPTIONS = ["-DGPUMESH_CLANG_BUILTINS"]  # see raytrace.cl: PoCL's builtins are out-of-line calls

# A fixed work-group shape: PoCL compiles a work-group function per local size, so letting the runtime pick
# one per tile size would recompile (about a second) for every new tile shape. The grid is rounded up and
# the kernel ignores work-items outside the tile.
LOCAL_SIZE = (8, 8)

_programs: weakref.WeakKeyDictionary[cl.Context, tuple[cl.Program, cl.Kernel]] = weakref.WeakKeyDictionary()


def kernel_for(ctx: cl.Context) -> cl.Kernel:
    """The `render` kernel for a context, built on first use and cached for the context's lifetime."""
    entry = _programs.get(ctx)
    if entry is None:
        pocl = all("Portable Computing Language" in d.platform.name for d in ctx.devices)
        prg = cl.Program(ctx, KERNEL_SOURCE.read_text()).build(options=POCL_OPTIONS if pocl else [])
        entry = (prg, cl.Kernel(prg, "render"))
        _programs[ctx] = entry
    return entry[1]


def _f4(v: np.ndarray) -> np.ndarray:
    out = np.zeros(4, np.float32)
    out[:3] = v
    return out


class SceneOnDevice:
    """One scene's buffers on one device; render any pose or tile of it. Not safe to share between threads."""

    def __init__(
        self, ctx: cl.Context, queue: cl.CommandQueue, scene: Scene, *, use_bvh: bool = True
    ) -> None:
        self.ctx, self.queue, self.scene = ctx, queue, scene
        self.use_bvh = use_bvh
        self.hash = content_hash(scene)
        self.packed: PackedScene = pack(scene)
        self._kernel = kernel_for(ctx)
        p = self.packed
        self._bufs = {
            "prim": self._upload(p.prim),
            "prim_info": self._upload(p.prim_info),
            "v0": self._upload(p.v0),
            "e1": self._upload(p.e1),
            "e2": self._upload(p.e2),
            "tri_mat": self._upload(p.tri_mat),
            "bmin": self._upload(_pad4(p.bvh.bmin)),
            "bmax": self._upload(_pad4(p.bvh.bmax)),
            "meta": self._upload(p.bvh.meta),
            "mat": self._upload(p.material),
            "light": self._upload(p.light),
            "srgb8": self._upload(srgb8_thresholds()),
        }
        self._out: dict[tuple[int, int], tuple[cl.Buffer, cl.Buffer]] = {}

    def _upload(self, a: np.ndarray) -> cl.Buffer:
        a = np.ascontiguousarray(a)
        if a.nbytes == 0:  # OpenCL has no empty buffers; the kernel never reads this one (its count is 0)
            a = np.zeros(16, np.uint8)
        return cl.Buffer(self.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=a)

    @property
    def device_bytes(self) -> int:
        return sum(b.size for b in self._bufs.values())

    def render(self, pose: Pose | None = None, tile: Tile | None = None, *, use_bvh: bool | None = None):
        """Render a frame or tile: (rgba (h, w, 4) uint8, depth (h, w) float32, +inf where nothing is hit)."""
        cam = self.scene.camera
        tile = tile or Tile.full(cam.width, cam.height)
        tile.check(cam.width, cam.height)
        frame = camera_frame(pose or cam.pose, cam.fov_y, cam.width, cam.height)
        rgba_buf, depth_buf = self._outputs(tile.w, tile.h)
        p, b = self.packed, self._bufs
        bvh = self.use_bvh if use_bvh is None else use_bvh
        self._kernel.set_args(
            rgba_buf, depth_buf,
            np.int32(tile.x0), np.int32(tile.y0), np.int32(tile.w), np.int32(tile.h),
            np.int32(cam.width), np.int32(cam.height),
            _f4(frame.origin), _f4(frame.right), _f4(frame.up), _f4(frame.forward),
            np.float32(cam.near), np.float32(cam.far),
            b["prim"], b["prim_info"], np.int32(p.prim_info.shape[0]),
            b["v0"], b["e1"], b["e2"], b["tri_mat"], np.int32(p.triangle_count),
            b["bmin"], b["bmax"], b["meta"], np.int32(p.bvh.node_count),
            np.int32(1 if bvh else 0),
            b["mat"], b["light"], np.int32(p.light.shape[0]),
            p.ambient, p.miss, p.background, b["srgb8"],
        )  # fmt: skip
        lx, ly = LOCAL_SIZE
        grid = (-(-tile.w // lx) * lx, -(-tile.h // ly) * ly)
        cl.enqueue_nd_range_kernel(self.queue, self._kernel, grid, LOCAL_SIZE)
        rgba = np.empty((tile.h, tile.w, 4), np.uint8)
        depth = np.empty((tile.h, tile.w), np.float32)
        cl.enqueue_copy(self.queue, rgba, rgba_buf, is_blocking=False)
        cl.enqueue_copy(self.queue, depth, depth_buf, is_blocking=True)
        return rgba, depth

    def _outputs(self, w: int, h: int) -> tuple[cl.Buffer, cl.Buffer]:
        out = self._out.get((w, h))
        if out is None:
            mf = cl.mem_flags.WRITE_ONLY
            out = (cl.Buffer(self.ctx, mf, w * h * 4), cl.Buffer(self.ctx, mf, w * h * 4))
            if len(self._out) >= 8:  # a stream uses a handful of tile sizes; do not grow without bound
                for old in self._out.values():
                    old[0].release()
                    old[1].release()
                self._out.clear()
            self._out[(w, h)] = out
        return out

    def release(self) -> None:
        """Free the device memory now rather than at garbage collection."""
        for buf in self._bufs.values():
            buf.release()
        for a, b in self._out.values():
            a.release()
            b.release()
        self._bufs.clear()
        self._out.clear()


def srgb8_thresholds() -> np.ndarray:
    """(257,) float32: entry k (1..255) is the linear value where the sRGB 8-bit code k begins, under
    floor(srgb(v) * 255 + 0.5); entry 0 is -inf and 256 +inf, so a binary search needs no bounds checks."""
    e = (np.arange(1, 256) - 0.5) / 255.0
    lin = np.where(e <= 0.04045, e / 12.92, ((e + 0.055) / 1.055) ** 2.4)
    return np.concatenate([[-np.inf], lin, [np.inf]]).astype(np.float32)


def _pad4(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0], 4), np.float32)
    out[:, :3] = a
    return out


def default_queue() -> tuple[cl.Context, cl.CommandQueue]:
    """A context and queue on the first OpenCL device found, for tests, benchmarks and tools."""
    platforms = cl.get_platforms()
    for pl in platforms:
        devs = pl.get_devices()
        if devs:
            ctx = cl.Context([devs[0]])
            return ctx, cl.CommandQueue(ctx)
    raise RuntimeError("no OpenCL device found")
