"""A 2D convolution layer (NCHW, stride, zero padding, bias, optional ReLU), checked against numpy.

    python examples/compute/conv2d.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from worker.compute.api import ComputeJob, Out, make_job, run_local

SOURCE = (Path(__file__).resolve().parent / "conv2d.cl").read_text()


def out_size(h: int, w: int, r: int, s: int, stride: int, pad: int) -> tuple[int, int]:
    return (h + 2 * pad - r) // stride + 1, (w + 2 * pad - s) // stride + 1


def job(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int = 1, pad: int = 0, relu: bool = False,
        tile: tuple[int, int] = (8, 8)) -> ComputeJob:
    n, c, h, w = x.shape
    k, c2, r, s = weight.shape
    if c2 != c or bias.shape != (k,):
        raise ValueError(f"weight {weight.shape} / bias {bias.shape} do not fit input {x.shape}")
    p, q = out_size(h, w, r, s, stride, pad)
    if p < 1 or q < 1:
        raise ValueError("the filter is larger than the padded input")
    gq = -(-q // tile[0]) * tile[0]
    gp = -(-p // tile[1]) * tile[1]
    i32 = np.int32
    return make_job(SOURCE, "conv2d",
                    [x.astype(np.float32), weight.astype(np.float32), bias.astype(np.float32),
                     Out((n, k, p, q), np.float32, "y"),
                     i32(n), i32(c), i32(h), i32(w), i32(k), i32(r), i32(s), i32(p), i32(q), i32(stride), i32(pad),
                     i32(1 if relu else 0)],
                    global_size=[gq, gp, n * k], local_size=[tile[0], tile[1], 1], flops_per_item=2.0 * c * r * s)


def reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int = 1, pad: int = 0,
              relu: bool = False) -> np.ndarray:
    """PyTorch Conv2d semantics (cross-correlation), in float64."""
    k, c, r, s = weight.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (r, s), axis=(2, 3))[:, :, ::stride, ::stride]
    y = np.einsum("nchwrs,kcrs->nkhw", win, weight.astype(np.float64)) + bias.astype(np.float64)[None, :, None, None]
    return np.maximum(y, 0.0) if relu else y


def main(argv: list[str] | None = None) -> int:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)        # a batch of 2 RGB 64x64 images
    wt = rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.2  # 16 3x3 filters
    b = rng.standard_normal(16).astype(np.float32)
    res = run_local(job(x, wt, b, stride=1, pad=1, relu=True))
    ok = np.allclose(res["y"], reference(x, wt, b, 1, 1, True), rtol=1e-4, atol=1e-4)
    print(f"conv2d {x.shape} * {wt.shape} -> {res['y'].shape}: {'OK' if ok else 'MISMATCH'}; "
          f"kernel {res.kernel_s * 1e3:.2f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
