"""SAXPY (y <- a*x + y) as a compute job, checked against numpy.

    python examples/compute/saxpy.py [N]

Over the mesh the same job goes out as kind "compute.opencl" with `job.spec` and `job.input` (the SDK's
`mesh.compute(...)` builds it the same way); here it runs on this machine's OpenCL device.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from worker.compute.api import ComputeJob, InOut, make_job, run_local

SOURCE = (Path(__file__).resolve().parent / "saxpy.cl").read_text()


def job(a: float, x: np.ndarray, y: np.ndarray, local_size: int = 64) -> ComputeJob:
    n = x.size
    gsize = -(-n // local_size) * local_size  # round up; the kernel guards i < n
    return make_job(SOURCE, "saxpy", [np.uint32(n), np.float32(a), x.astype(np.float32), InOut(y.astype(np.float32), "y")],
                    global_size=gsize, local_size=local_size, flops_per_item=2)


def reference(a: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (np.float32(a) * x.astype(np.float32) + y.astype(np.float32)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 1_000_003
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    res = run_local(job(2.5, x, y))
    ok = np.allclose(res["y"], reference(2.5, x, y), rtol=1e-6, atol=1e-6)
    print(f"saxpy n={n}: {'OK' if ok else 'MISMATCH'}; kernel {res.kernel_s * 1e3:.2f} ms, job {res.run_s * 1e3:.1f} ms, "
          f"build {res.build_s:.2f} s{' (cached)' if res.cache_hit else ''}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
