"""SGEMM as a two-launch pipeline (transpose B into a device-only scratch buffer, then a tiled GEMM), checked
against numpy. Only A and B go to the device and only C comes back: the transposed copy never leaves it.

    python examples/compute/sgemm.py [SIZE]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from worker.compute.api import ComputeJob, Pipeline, run_local

SOURCE = (Path(__file__).resolve().parent / "sgemm.cl").read_text()


def _up(n: int, ts: int) -> int:
    return -(-n // ts) * ts


def job(a: np.ndarray, b: np.ndarray, ts: int = 16, time_limit_s: float = 60.0) -> ComputeJob:
    """C = A @ B for float32 A (M x K), B (K x N)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"shapes {a.shape} and {b.shape} do not multiply")
    m, k = a.shape
    n = b.shape[1]
    i32 = np.int32
    p = Pipeline(SOURCE, build_options=[f"-DTS={ts}", "-cl-mad-enable"])
    a_buf = p.input("A", a.astype(np.float32))
    b_buf = p.input("B", b.astype(np.float32))
    bt = p.scratch("BT", (n, k), np.float32)
    c = p.output("C", (m, n), np.float32)
    p.launch("transpose", (_up(n, ts), _up(k, ts)), (ts, ts), i32(k), i32(n), b_buf, bt)
    p.launch("gemm_nt", (_up(n, ts), _up(m, ts)), (ts, ts), i32(m), i32(n), i32(k), a_buf, bt, c)
    return p.job(time_limit_s=time_limit_s, flops_per_item=2.0 * k)


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) @ b.astype(np.float64)


def tolerance(k: int) -> dict[str, float]:
    return {"rtol": 1e-4, "atol": 2e-6 * k}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 256
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    res = run_local(job(a, b))
    ok = np.allclose(res["C"], reference(a, b), **tolerance(n))
    print(f"sgemm {n}x{n} (transpose + gemm): {'OK' if ok else 'MISMATCH'}; {res.launches} launches, kernel "
          f"{res.kernel_s * 1e3:.1f} ms = {2.0 * n**3 / res.kernel_s / 1e9:.2f} GFLOP/s; moved {res.bytes_in} B in, "
          f"{res.bytes_out} B out")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
