"""The OpenCL renderer: a scene uploaded once per context (`SceneOnDevice`), then any number of poses/tiles.

The caller owns the pyopencl Context and an in-order CommandQueue (the worker picks the device). The program
is built once per context through worker.opencl's shared program cache; each SceneOnDevice fetches its own
kernel object once, so scenes rendered from different threads never share kernel arguments. Scene buffers
live as long as the SceneOnDevice and output buffers are reused per tile size, so a pose stream costs one
kernel launch and one read-back per frame.

Blocking: the constructor (BVH build, upload, first program build), `render` and `PendingFrame.wait` block;
under trio run them through `worker.opencl.run_blocking`. `enqueue` does not block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyopencl as cl

from worker.opencl import programs_for
from worker.render.camera import Pose, Tile, camera_frame
from worker.render.pack import PackedScene, pack
from worker.render.reference import srgb_to_linear
from worker.render.scene import Scene, content_hash

KERNEL_SOURCE = Path(__file__).with_name("raytrace.cl")
_SOURCE = KERNEL_SOURCE.read_text()
POCL_OPTIONS = ["-DGPUMESH_CLANG_BUILTINS"]  # see raytrace.cl: PoCL's builtins are out-of-line calls

# A fixed work-group shape: PoCL compiles a work-group function per local size, so letting the runtime pick
# one per tile size would recompile (about a second) for every new tile shape. The grid is rounded up and
# the kernel ignores work-items outside the tile.
LOCAL_SIZE = (8, 8)


def build_options(ctx: cl.Context) -> list[str]:
    pocl = all("Portable Computing Language" in d.platform.name for d in ctx.devices)
    return POCL_OPTIONS if pocl else []


def render_program(ctx: cl.Context) -> cl.Program:
    """The built ray-tracing program of a context (built on first use, cached with the context)."""
    return programs_for(ctx).program(_SOURCE, build_options(ctx))


@dataclass
class PendingFrame:
    """A launched frame or tile; its host arrays are filled when `wait()` returns."""

    tile: Tile
    rgba: np.ndarray  # (h, w, 4) uint8
    depth: np.ndarray  # (h, w) float32
    done: cl.Event

    def wait(self) -> tuple[np.ndarray, np.ndarray]:
        self.done.wait()
        return self.rgba, self.depth


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
        self._kernel = cl.Kernel(render_program(ctx), "render")
        p = self.packed
        self._bufs = {
            "prim": self._upload(p.prim),
            "prim_info": self._upload(p.prim_info),
            "v0": self._upload(p.v0),
            "e1": self._upload(p.e1),
            "e2": self._upload(p.e2),
            "tri_mat": self._upload(p.tri_mat),
            "tri_n": self._upload(p.tri_n),
            "tri_uv": self._upload(p.tri_uv),
            "texels": self._upload(p.texels),
            "srgb_lin": self._upload(srgb_to_linear_table()),
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

    def render(
        self, pose: Pose | None = None, tile: Tile | None = None, *, use_bvh: bool | None = None,
        into: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Render a frame or tile: (rgba (h, w, 4) uint8, depth (h, w) float32, +inf where nothing is hit;
        float16 when `into` gives a float16 depth array)."""
        return self.enqueue(pose, tile, use_bvh=use_bvh, into=into).wait()

    def enqueue(
        self, pose: Pose | None = None, tile: Tile | None = None, *, use_bvh: bool | None = None,
        into: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> PendingFrame:
        """Launch a frame or tile without waiting. Frames of one tile size share output buffers, which is
        safe on an in-order queue (each read-back precedes the next launch). `into`: C-contiguous (h, w, 4)
        uint8 and (h, w) float32 arrays to read the tile back into (e.g. views of shared memory) instead of
        new ones; a float16 depth array gets the depth as IEEE half (round to nearest even, +inf stays +inf:
        `frame_codec.quantize_depth`), converted by the kernel."""
        cam = self.scene.camera
        tile = tile or Tile.full(cam.width, cam.height)
        tile.check(cam.width, cam.height)
        frame = camera_frame(pose or cam.pose, cam.fov_y, cam.width, cam.height)
        if into is None:
            rgba = np.empty((tile.h, tile.w, 4), np.uint8)
            depth = np.empty((tile.h, tile.w), np.float32)
        else:
            rgba, depth = into
            if (rgba.shape != (tile.h, tile.w, 4) or rgba.dtype != np.uint8 or depth.shape != (tile.h, tile.w)
                    or depth.dtype not in (np.float32, np.float16)
                    or not (rgba.flags.c_contiguous and depth.flags.c_contiguous)):
                raise ValueError(f"'into' must be C-contiguous ({tile.h}, {tile.w}, 4) uint8 and "
                                 f"({tile.h}, {tile.w}) float32 or float16 arrays")
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
            b["tri_n"], b["tri_uv"],
            b["bmin"], b["bmax"], b["meta"], np.int32(p.bvh.node_count),
            np.int32(1 if bvh else 0),
            b["mat"], b["light"], np.int32(p.light.shape[0]),
            b["texels"], b["srgb_lin"],
            p.ambient, p.miss, p.background, b["srgb8"], np.int32(depth.dtype == np.float16),
        )  # fmt: skip
        lx, ly = LOCAL_SIZE
        grid = (-(-tile.w // lx) * lx, -(-tile.h // ly) * ly)
        cl.enqueue_nd_range_kernel(self.queue, self._kernel, grid, LOCAL_SIZE)
        cl.enqueue_copy(self.queue, rgba, rgba_buf, is_blocking=False)
        done = cl.enqueue_copy(self.queue, depth, depth_buf, is_blocking=False)
        return PendingFrame(tile, rgba, depth, done)

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


def srgb_to_linear_table() -> np.ndarray:
    """(256,) float32: the linear value of each 8-bit sRGB code (texture decoding), as reference.srgb_to_linear."""

    return srgb_to_linear(np.arange(256)).astype(np.float32)


def _pad4(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0], 4), np.float32)
    out[:, :3] = a
    return out


def default_queue() -> tuple[cl.Context, cl.CommandQueue]:
    """A context and in-order queue on the first GPU found, else the first OpenCL device: for tests,
    benchmarks and tools (the worker uses its own device selection)."""
    devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    if not devices:
        raise RuntimeError("no OpenCL device found")
    gpus = [d for d in devices if d.type & cl.device_type.GPU]
    ctx = cl.Context([(gpus or devices)[0]])
    return ctx, cl.CommandQueue(ctx)
