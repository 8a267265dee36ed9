"""Image convolution: an RGBA uint8 image (uchar4 pixels, pyopencl.cltypes.uchar4), a float filter in
__constant memory, edge clamping, and a per-channel float4 gain by value; the output is float4 per pixel.
Checked against numpy.

    python examples/compute/convolution.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyopencl.cltypes as cltypes

from worker.compute.api import ComputeJob, Out, make_job, run_local

SOURCE = (Path(__file__).resolve().parent / "convolution.cl").read_text()


def job(image: np.ndarray, filt: np.ndarray, gain: tuple[float, float, float, float] = (1, 1, 1, 1),
        tile: int = 8) -> ComputeJob:
    """`image`: uint8 (H, W, 4); `filt`: float (2r+1, 2r+1). The result "out" is float4 (H, W)."""
    h, w, ch = image.shape
    if ch != 4 or image.dtype != np.uint8:
        raise ValueError("image must be uint8 RGBA, shape (H, W, 4)")
    size = filt.shape[0]
    if filt.shape != (size, size) or size % 2 == 0:
        raise ValueError("the filter must be square with an odd side")
    pixels = np.ascontiguousarray(image).view(cltypes.uchar4).reshape(h, w)
    i32 = np.int32
    return make_job(SOURCE, "convolve",
                    [pixels, filt.astype(np.float32).ravel(), Out((h, w), cltypes.float4, "out"), i32(w), i32(h),
                     i32(size // 2), cltypes.make_float4(*gain)],
                    global_size=[-(-w // tile) * tile, -(-h // tile) * tile], local_size=[tile, tile],
                    flops_per_item=8.0 * size * size)


def reference(image: np.ndarray, filt: np.ndarray, gain=(1, 1, 1, 1)) -> np.ndarray:
    """float64 (H, W, 4): the clamped-edge correlation of each channel with `filt`, times `gain`."""
    r = filt.shape[0] // 2
    padded = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(padded, filt.shape, axis=(0, 1))  # (H, W, 4, s, s)
    return np.einsum("hwcij,ij->hwc", win, filt.astype(np.float64)) * np.asarray(gain, dtype=np.float64)


def as_float(out: np.ndarray) -> np.ndarray:
    """A float4 (H, W) result as float32 (H, W, 4)."""
    return out.view(np.float32).reshape(*out.shape, 4)


def main(argv: list[str] | None = None) -> int:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 4), dtype=np.uint8)
    blur = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256.0  # 5x5 Gaussian
    gain = (1.0, 0.5, 2.0, 1.0)
    res = run_local(job(image, blur, gain))
    ok = np.allclose(as_float(res["out"]), reference(image, blur, gain), rtol=1e-5, atol=1e-3)
    print(f"convolution {image.shape[1]}x{image.shape[0]} RGBA, 5x5 filter: {'OK' if ok else 'MISMATCH'}; kernel "
          f"{res.kernel_s * 1e3:.2f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
