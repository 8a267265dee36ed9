"""Tiled float32 matrix multiply (local-memory tiles, a WPT x 8 register block per work item), checked
against numpy.

    python examples/compute/matmul.py [SIZE] [--bench]

`--bench` also times numpy's matmul (BLAS) on the same machine and prints both in GFLOP/s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from worker.compute.api import ComputeJob, Out, make_job, run_local

SOURCE = (Path(__file__).resolve().parent / "matmul_tiled.cl").read_text()


def job(a: np.ndarray, b: np.ndarray, ts: int = 32, wpt: int = 8, time_limit_s: float = 60.0) -> ComputeJob:
    """C = A @ B for float32 A (M x K), B (K x N): TS x TS tiles, each work item a WPT x 8 block."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"shapes {a.shape} and {b.shape} do not multiply")
    if ts % 8 or ts % wpt:
        raise ValueError("ts must be a multiple of 8 and of wpt")
    m, k = a.shape
    n = b.shape[1]
    local = [ts // 8, ts // wpt]
    gsize = [-(-n // ts) * local[0], -(-m // ts) * local[1]]
    return make_job(SOURCE, "matmul",
                    [np.int32(m), np.int32(n), np.int32(k), a.astype(np.float32), b.astype(np.float32),
                     Out((m, n), np.float32, "C")],
                    global_size=gsize, local_size=local,
                    build_options=[f"-DTS={ts}", f"-DWPT={wpt}", "-cl-mad-enable"],
                    flops_per_item=2.0 * k * wpt * 8, time_limit_s=time_limit_s)


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) @ b.astype(np.float64)


def tolerance(k: int) -> dict[str, float]:
    """float32 accumulation over k terms of size ~1: rtol and atol for comparing with the float64 product."""
    return {"rtol": 1e-4, "atol": 2e-6 * k}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench = "--bench" in argv
    sizes = [int(x) for x in argv if not x.startswith("-")]
    n = sizes[0] if sizes else 512
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    j = job(a, b)
    res = run_local(j)
    ok = np.allclose(res["C"], reference(a, b), **tolerance(n))
    flops = 2.0 * n ** 3
    runs = [res] + ([run_local(j) for _ in range(2)] if bench else [])
    best_k = min(r.kernel_s for r in runs)
    best_job = min(r.run_s for r in runs)
    print(f"matmul {n}x{n}: {'OK' if ok else 'MISMATCH'}; kernel {best_k * 1e3:.1f} ms = {flops / best_k / 1e9:.2f} GFLOP/s, "
          f"job {best_job * 1e3:.1f} ms = {flops / best_job / 1e9:.2f} GFLOP/s")
    if bench:
        a @ b
        t = min(_timed(lambda: a @ b) for _ in range(3))
        print(f"numpy matmul {n}x{n}: {t * 1e3:.1f} ms = {flops / t / 1e9:.2f} GFLOP/s")
    return 0 if ok else 1


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
