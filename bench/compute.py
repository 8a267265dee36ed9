"""Compute jobs on the mesh: tiled float32 matmul 1024x1024 end to end through a 3-node loopback mesh vs numpy
in this process, the kernel alone, the bytes a pipeline moves against the bytes it needs, and the per-job
overhead of a trivial kernel (submit -> result).

The mesh: node 0 is a gateway coordinator that runs nothing (`--devices none`), nodes 1 and 2 have the machine's
OpenCL device, so every job crosses the data plane to a worker and back, as a remote user's would. The matmul
is `examples/compute/matmul.py` (TS=32, WPT=8): A and B (4 MiB each) stream to the worker, C (4 MiB) comes back;
GFLOP/s = 2 * 1024^3 / wall time of `Mesh.run` (submit, transfers, placement, kernel, read back, decode), median
of the timed runs after a warm-up that builds the program on both workers. The kernel-only rate (device
profiling) is reported beside it. numpy is `a @ b` on the same float32 arrays in this process (median).
`kernel_1024_gflops`: the same matmul's kernel alone (device time from OpenCL profiling, median).
`bytes_moved_ratio`: the SGEMM pipeline of `examples/compute/sgemm.py` (transpose B into a device-only scratch
buffer, then GEMM; 1024x1024) through the mesh: bytes the client sent (streamed input + inline data) plus the
output bytes it received, over the bytes the job needs (A + B in, C out); goal 1.0. `device_bytes_ratio` is
the same from the worker's side (bytes uploaded to and read back from the device).
Dispatch overhead (`dispatch_overhead_ms`, issue 18's target < 1.5 ms p50): what the mesh adds to a job, a one-work-
item kernel's sequential `Mesh.run` -> decoded result minus its kernel time (device profiling), median and p90,
with the client holding a job lease (`Mesh.local(lease=True)`: placed once by the gateway, then each job goes
client -> worker -> client; scheduler/client/job_lease.py); `dispatch_wall_ms` is the same wall time without
the kernel taken off. `dispatch_overhead_journaled_ms`: each job submitted to the gateway coordinator, which
journals and places it (client -> gateway -> worker -> gateway -> client); `dispatch_overhead_local_ms` the
job submitted to a worker node itself (its own device, no network hop, journaled).
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import pctl
from scheduler.client.compute_sdk import Mesh, Out, make_job
from scheduler.devtools.localmesh import make_nodes, sees_all, start_nodes, stop_all, wait_for

N = 1024
MATMUL_RUNS = 5
NUMPY_RUNS = 10
DISPATCH_RUNS = 200
TRIVIAL = "__kernel void one(__global int *out) { out[get_global_id(0)] = 42; }"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "compute"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_compute_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bytes_moved(mesh: Mesh, sgemm, a: np.ndarray, b: np.ndarray) -> dict:
    """One SGEMM pipeline job through the mesh: what crossed the client's connection vs what the job needs."""
    job = sgemm.job(a, b, time_limit_s=600)
    run = mesh.run(job)
    np.testing.assert_allclose(run["C"], sgemm.reference(a, b), **sgemm.tolerance(a.shape[1]))
    needed = a.nbytes + b.nbytes + run["C"].nbytes
    sent = len(job.input) + sum(len(x.get("data", b"")) for x in job.spec["args"])
    received = sum(o.array.nbytes for o in run.result.outputs)
    return {"needed": needed, "sent": sent, "received": received,
            "device": run.result.bytes_in + run.result.bytes_out, "launches": run.result.launches,
            "kernel_s": run.result.kernel_s}



def _numpy_gflops(a: np.ndarray, b: np.ndarray) -> float:
    a @ b  # warm (threads, caches)
    times = []
    for _ in range(NUMPY_RUNS):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * N**3 / statistics.median(times) / 1e9


def _dispatch(mesh: Mesh) -> tuple[list[float], list[float]]:
    """(wall times, wall minus kernel time) of sequential trivial jobs."""
    job = make_job(TRIVIAL, "one", [Out(1, np.int32)], global_size=1)
    for _ in range(10):  # warm: built on the workers, connections up
        mesh.run(job)
    walls, overheads = [], []
    for _ in range(DISPATCH_RUNS):
        t0 = time.perf_counter()
        run = mesh.run(job)
        wall = time.perf_counter() - t0
        assert int(run.value()[0]) == 42
        walls.append(wall)
        overheads.append(wall - (run.result.kernel_s or 0.0))
    return walls, overheads


def run() -> dict:
    matmul = _example("matmul")
    sgemm = _example("sgemm")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((N, N), dtype=np.float32)
    b = rng.standard_normal((N, N), dtype=np.float32)
    ref = matmul.reference(a, b)
    with tempfile.TemporaryDirectory(prefix="gpumesh-bench-compute-") as root:
        nodes = make_nodes(Path(root), 3, ["--advert-interval", "0.5"])
        nodes[0].extra += ["--devices", "none"]
        try:
            start_nodes(nodes)
            wait_for(lambda: sees_all(nodes), 120, "3 nodes to converge", interval=0.2)
            with Mesh.local(nodes[0].data_dir) as mesh:
                devices = sorted({f"{d['kind']}: {d['name']}" for p in mesh.peers() for d in p["devices"]
                                  if d["kind"] != "reference"})
                job = matmul.job(a, b, time_limit_s=600)
                workers = set()
                for _ in range(4):  # warm-up: builds the program wherever it lands
                    warm = mesh.run(job)
                    workers.add(warm.worker)
                np.testing.assert_allclose(warm["C"], ref, **matmul.tolerance(N))
                walls, kernels = [], []
                for _ in range(MATMUL_RUNS):
                    r = mesh.run(job)
                    walls.append(r.wall_s)
                    kernels.append(r.result.kernel_s)
                    workers.add(r.worker)
                np.testing.assert_allclose(r["C"], ref, **matmul.tolerance(N))
                moved = _bytes_moved(mesh, sgemm, a, b)
                _, journaled = _dispatch(mesh)
            with Mesh.local(nodes[0].data_dir, lease=True) as mesh:
                remote_wall, remote = _dispatch(mesh)
            with Mesh.local(nodes[1].data_dir) as mesh:
                _, local = _dispatch(mesh)
        finally:
            stop_all(nodes)
    numpy_gflops = _numpy_gflops(a, b)
    flop = 2 * N**3
    return {
        "matmul_1024_gflops": round(flop / statistics.median(walls) / 1e9, 2),
        "kernel_1024_gflops": round(flop / statistics.median(kernels) / 1e9, 2),
        "bytes_moved_ratio": round((moved["sent"] + moved["received"]) / moved["needed"], 4),
        "device_bytes_ratio": round(moved["device"] / moved["needed"], 4),
        "sgemm_pipeline_bytes": moved,
        "sgemm_pipeline_1024_kernel_gflops": round(flop / moved["kernel_s"] / 1e9, 2),
        "numpy_matmul_1024_gflops": round(numpy_gflops, 2),
        "dispatch_overhead_ms": round(statistics.median(remote) * 1000, 3),
        "matmul_1024_best_gflops": round(flop / min(walls) / 1e9, 2),
        "matmul_1024_wall_ms": round(statistics.median(walls) * 1000, 1),
        "dispatch_overhead_p90_ms": round(pctl(remote, 0.9) * 1000, 3),
        "dispatch_wall_ms": round(statistics.median(remote_wall) * 1000, 3),
        "dispatch_overhead_journaled_ms": round(statistics.median(journaled) * 1000, 3),
        "dispatch_overhead_local_ms": round(statistics.median(local) * 1000, 3),
        "matmul_workers": len(workers),
        "devices": devices,
        "matmul_runs": MATMUL_RUNS,
        "dispatch_runs": DISPATCH_RUNS,
    }


def table(r: dict) -> list[tuple[str, str]]:
    return [
        ("tiled matmul 1024x1024 float32 through the mesh, end to end (gateway -> worker -> client), median",
         f"{r['matmul_1024_gflops']:.2f} GFLOP/s ({r['matmul_1024_wall_ms']:.0f} ms; best {r['matmul_1024_best_gflops']:.2f})"),
        ("the same matmul, kernel alone (device time from OpenCL profiling), median",
         f"{r['kernel_1024_gflops']:.2f} GFLOP/s"),
        ("SGEMM pipeline 1024x1024 (transpose into a device-only scratch buffer, then GEMM) through the mesh: "
         "bytes moved / bytes needed (goal 1.0)",
         f"{r['bytes_moved_ratio']:.3f} ({r['sgemm_pipeline_bytes']['sent']} B sent + "
         f"{r['sgemm_pipeline_bytes']['received']} B received, {r['sgemm_pipeline_bytes']['needed']} B needed; "
         f"device side {r['device_bytes_ratio']:.3f}; {r['sgemm_pipeline_bytes']['launches']} launches, kernels "
         f"{r['sgemm_pipeline_1024_kernel_gflops']:.2f} GFLOP/s)"),
        ("numpy (OpenBLAS) matmul 1024x1024 float32, same machine and process, median",
         f"{r['numpy_matmul_1024_gflops']:.2f} GFLOP/s"),
        ("dispatch overhead, trivial kernel Mesh.run -> result on a job lease (client -> worker -> client), minus "
         "its kernel time, median / p90 (target p50 < 1.5 ms)",
         f"{r['dispatch_overhead_ms']:.2f} ms / {r['dispatch_overhead_p90_ms']:.2f} ms (wall {r['dispatch_wall_ms']:.2f} ms)"),
        ("the same, each job journaled by the gateway coordinator (client -> gateway -> worker -> gateway -> client)",
         f"{r['dispatch_overhead_journaled_ms']:.2f} ms"),
        ("the same, submitted to a worker node itself (runs on its own device, journaled), minus kernel time, median",
         f"{r['dispatch_overhead_local_ms']:.2f} ms"),
        ("worker devices (both workers share this machine)", ", ".join(r["devices"])),
    ]
