"""Sum reduction with __local memory, as a two-launch pipeline (per-group partial sums into a scratch buffer,
then one group reduces the partials), checked against numpy.

    python examples/compute/reduction.py [N]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from worker.compute.api import ComputeJob, Local, Pipeline, run_local

SOURCE = (Path(__file__).resolve().parent / "reduction.cl").read_text()


def job(x: np.ndarray, groups: int = 64, local: int = 128) -> ComputeJob:
    """The sum of float32 `x`: `groups` work-groups of `local` items (a power of two), then one group."""
    if local & (local - 1) or groups > local:
        raise ValueError("local must be a power of two and at least the number of groups")
    p = Pipeline(SOURCE)
    xs = p.input("x", np.ascontiguousarray(x, dtype=np.float32).ravel())
    partial = p.scratch("partial", groups, np.float32)
    total = p.output("sum", 1, np.float32)
    p.launch("partial_sums", groups * local, local, np.uint32(x.size), xs, partial, Local(4 * local))
    p.launch("partial_sums", local, local, np.uint32(groups), partial, total, Local(4 * local))
    return p.job(flops_per_item=1.0)


def reference(x: np.ndarray) -> float:
    return float(np.sum(x, dtype=np.float64))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 1_000_003
    x = np.random.default_rng(0).uniform(-1, 1, n).astype(np.float32)
    res = run_local(job(x))
    got, want = float(res["sum"][0]), reference(x)
    ok = abs(got - want) <= 1e-5 * np.sum(np.abs(x), dtype=np.float64)
    print(f"sum of {n} floats: {got:.6f} (numpy {want:.6f}): {'OK' if ok else 'MISMATCH'}; {res.launches} launches, "
          f"{res.bytes_out} B read back")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
