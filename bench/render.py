"""Render kernel benchmark (issue 7): OpenCL kernel vs the numpy reference on the same device and scene, and
kernel frame times per resolution over a short orbit of poses.

Only the kernel part lives here so far; the mesh latencies (`p99_ms` through a 3-node loopback mesh,
`tiled_vs_single_720p`) belong to the scheduler's render job and are added with it, not estimated here.
"""

from __future__ import annotations

import os
import statistics
import time

from worker.render import reference
from worker.render.camera import orbit
from worker.render.opencl import SceneOnDevice, default_queue
from worker.render.samples import example

RESOLUTIONS = ((320, 240), (640, 480), (1280, 720))
FRAMES = 12  # poses per resolution (an orbit), after one warm-up frame
REFERENCE_RUNS = 5
KERNEL_REPEATS = 5  # kernel frames per reference frame in the interleaved comparison


def _kernel_ms(dev: SceneOnDevice, poses) -> list[float]:
    dev.render(poses[0])  # warm-up: output buffers, first-launch costs
    times = []
    for p in poses:
        t = time.perf_counter()
        dev.render(p)
        times.append((time.perf_counter() - t) * 1e3)
    return times


def _ratio(ctx, queue, name: str, width: int, height: int) -> dict:
    """Kernel and reference frame times on the same scene, poses and resolution, interleaved so both see the
    same machine load: medians of wall time, and of process CPU time as a cross-check that depends less on
    what else runs on the machine (PoCL's worker threads count towards this process)."""
    scene = example(name, width, height)
    poses = orbit((0.0, 0.3, 0.0), 2.6, 1.0, REFERENCE_RUNS)
    dev = SceneOnDevice(ctx, queue, scene)
    prepared = reference.prepare(scene)
    dev.render(poses[0])
    k_wall, k_cpu, r_wall, r_cpu = [], [], [], []
    for p in poses:
        for _ in range(KERNEL_REPEATS):
            w, c = time.perf_counter(), time.process_time()
            dev.render(p)
            k_wall.append(time.perf_counter() - w)
            k_cpu.append(time.process_time() - c)
        w, c = time.perf_counter(), time.process_time()
        reference.render(prepared, p)
        r_wall.append(time.perf_counter() - w)
        r_cpu.append(time.process_time() - c)
    dev.release()
    k, r = statistics.median(k_wall), statistics.median(r_wall)
    return {
        "kernel_ms": k * 1e3,
        "reference_ms": r * 1e3,
        "ratio": r / k,
        "cpu_ratio": statistics.median(r_cpu) / statistics.median(k_cpu),
    }


def run() -> dict:
    ctx, queue = default_queue()
    load_before = os.getloadavg()[0]
    spheres = _ratio(ctx, queue, "spheres", 320, 240)
    mesh = _ratio(ctx, queue, "mesh", 320, 240)
    kernel_ms: dict[str, float] = {}
    kernel_ms_mesh: dict[str, float] = {}
    for name, out in (("spheres", kernel_ms), ("mesh", kernel_ms_mesh)):
        for w, h in RESOLUTIONS:
            dev = SceneOnDevice(ctx, queue, example(name, w, h))
            times = _kernel_ms(dev, orbit((0.0, 0.3, 0.0), 2.6, 1.0, FRAMES))
            out[f"{w}x{h}"] = round(statistics.median(times), 2)
            dev.release()
    return {
        "kernel_vs_reference": round(spheres["ratio"], 1),
        "kernel_vs_reference_detail": {
            "scene": "examples/scenes/spheres.json at 320x240 (analytic objects only: same work, no BVH)",
            "kernel_ms": round(spheres["kernel_ms"], 2),
            "reference_ms": round(spheres["reference_ms"], 1),
            "cpu_time_ratio": round(spheres["cpu_ratio"], 1),
        },
        "kernel_vs_reference_mesh": round(mesh["ratio"], 1),
        "kernel_vs_reference_mesh_detail": {
            "scene": "examples/scenes/mesh.json at 320x240 (582 triangles: kernel BVH vs reference brute force)",
            "kernel_ms": round(mesh["kernel_ms"], 2),
            "reference_ms": round(mesh["reference_ms"], 1),
            "cpu_time_ratio": round(mesh["cpu_ratio"], 1),
        },
        "kernel_ms": kernel_ms,
        "kernel_ms_mesh": kernel_ms_mesh,
        "device": queue.device.name.strip(),
        "compute_units": queue.device.max_compute_units,
        "load_average_at_start": round(load_before, 2),
        "method": f"kernel_ms: median wall time per frame (launch + read-back) over an orbit of {FRAMES} poses "
        f"after a warm-up frame; ratios: median wall time, kernel and reference interleaved over "
        f"{REFERENCE_RUNS} poses ({KERNEL_REPEATS} kernel frames per reference frame)",
    }


def table(result: dict) -> list[tuple[str, str]]:
    d, m = result["kernel_vs_reference_detail"], result["kernel_vs_reference_mesh_detail"]
    rows = [
        ("device", f"{result['device']} ({result['compute_units']} compute units)"),
        (
            "kernel vs numpy reference, spheres 320x240",
            f"{result['kernel_vs_reference']}x ({d['kernel_ms']} ms vs {d['reference_ms']} ms; "
            f"CPU-time ratio {d['cpu_time_ratio']}x; target >= 20x)",
        ),
        (
            "kernel vs numpy reference, mesh 320x240",
            f"{result['kernel_vs_reference_mesh']}x ({m['kernel_ms']} ms vs {m['reference_ms']} ms; BVH vs brute force)",
        ),
    ]
    for res, ms in result["kernel_ms"].items():
        rows.append((f"kernel frame, spheres {res}", f"{ms} ms"))
    for res, ms in result["kernel_ms_mesh"].items():
        rows.append((f"kernel frame, mesh {res}", f"{ms} ms"))
    rows.append(("load average at start", str(result["load_average_at_start"])))
    return rows
