"""Render benchmark (issue 7).

Kernel: the OpenCL kernel vs the numpy reference on the same device and scene, and kernel frame times per
resolution over a short orbit of poses.

Mesh (measured, not estimated): a 3-node loopback mesh of real `mesh-node` processes, a client on node 0.
- `p99_ms` (with `p50_ms`): per-frame end-to-end latency (frame issued -> every tile back and assembled) of a
  `render_stream` of the spheres example at 320x240, 640x480 and 1280x720: realtime frames with a generous
  deadline (so the figure is the latency, not the admission), tiles="auto", one frame in flight (paced at
  30 fps or slower: overlapping frames on one machine would only share its cores and add up their times).
- `at_target_320x240`: the same stream at 60 fps with the product's 16 ms deadline: frames delivered/dropped.
- `tiled_vs_single_720p`: median time of a 1280x720 frame as 3 tiles over the mesh divided into the median
  time of the same frame as one job (> 1: tiling is faster), interleaved, interactive priority.
On a single machine the three nodes share its cores (and its one OpenCL device), so tiling cannot add
compute here; the figure shows the overhead side of the trade-off that `plan_tiles` models.
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


MESH_FRAMES = {(320, 240): 60, (640, 480): 40, (1280, 720): 20}
MESH_DEADLINE_MS = 5000.0  # "generous": the latency runs measure latency, not admission
MESH_IN_FLIGHT = 1  # one frame at a time: on one machine, overlapping frames only share its cores
TILED_REPEATS = 5


def mesh_part() -> dict:
    """The mesh measurements (see the module doc), on a fresh 3-node loopback mesh."""
    import tempfile
    from pathlib import Path

    import trio

    from scheduler.client.client import Client, local_address
    from scheduler.client.render_client import StreamStats, render_frame, render_stream, session_for
    from scheduler.devtools.localmesh import sees_all, start_mesh, stop_all, wait_for

    with tempfile.TemporaryDirectory(prefix="gm-bench-render-") as root:
        nodes = start_mesh(Path(root), 3, extra=["--advert-interval", "0.5"])
        try:
            wait_for(lambda: sees_all(nodes), 120, "three nodes to see each other")
            addr, tok, pid, insecure = local_address(nodes[0].data_dir)

            async def main() -> dict:
                out: dict = {"p99_ms": {}, "p50_ms": {}, "streams": {}}
                async with Client.connect(addr, token=tok, peer_id=pid, insecure=insecure) as c:
                    for (w, h), n in MESH_FRAMES.items():
                        scene = example("spheres", w, h)
                        await session_for(c, scene).warm()
                        poses = orbit((0.0, 0.3, 0.0), 2.6, 1.0, n)
                        stats = StreamStats()
                        tiles: list[int] = []
                        t0 = trio.current_time()
                        async with render_stream(c, scene, poses, fps=30, deadline_ms=MESH_DEADLINE_MS, tiles="auto",
                                                 max_in_flight=MESH_IN_FLIGHT, stats=stats) as frames:
                            async for f in frames:
                                tiles.append(len(f.tiles))
                        wall = trio.current_time() - t0
                        key = f"{w}x{h}"
                        summ = stats.summary()
                        out["p99_ms"][key], out["p50_ms"][key] = summ["p99_ms"], summ["p50_ms"]
                        out["streams"][key] = {**summ, "tiles_per_frame": sorted(set(tiles)),
                                               "fps_achieved": round(n / wall, 1)}
                    scene = example("spheres", 320, 240)
                    stats = StreamStats()
                    async with render_stream(c, scene, orbit((0.0, 0.3, 0.0), 2.6, 1.0, 60), fps=60, deadline_ms=16,
                                             tiles="auto", stats=stats) as frames:
                        async for _ in frames:
                            pass
                    out["at_target_320x240"] = stats.summary()
                    scene = example("spheres", 1280, 720)
                    await session_for(c, scene).warm()
                    single, tiled, workers = [], [], set()
                    for i, pose in enumerate(orbit((0.0, 0.3, 0.0), 2.6, 1.0, TILED_REPEATS)):
                        for kind, sink in ((None, single), (3, tiled)):
                            f = await render_frame(c, scene, pose, tiles=kind)
                            if f.dropped:
                                raise RuntimeError(f"720p frame {i} dropped: {f.reason}")
                            sink.append(f.latency_s)
                            if kind:
                                workers.add(len(f.workers))
                    s_ms, t_ms = statistics.median(single) * 1e3, statistics.median(tiled) * 1e3
                    out["tiled_vs_single_720p"] = round(s_ms / t_ms, 2)
                    out["tiled_vs_single_720p_detail"] = {
                        "single_ms": round(s_ms, 1), "tiled_ms": round(t_ms, 1),
                        "peers_per_tiled_frame": sorted(workers), "frames": TILED_REPEATS}
                return out

            return trio.run(main)
        finally:
            stop_all(nodes)


def run() -> dict:
    on_mesh = mesh_part()
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
        "p99_ms": on_mesh["p99_ms"],
        "p50_ms": on_mesh["p50_ms"],
        "tiled_vs_single_720p": on_mesh["tiled_vs_single_720p"],
        "tiled_vs_single_720p_detail": on_mesh["tiled_vs_single_720p_detail"],
        "at_target_320x240": on_mesh["at_target_320x240"],
        "mesh_streams": on_mesh["streams"],
        "device": queue.device.name.strip(),
        "compute_units": queue.device.max_compute_units,
        "load_average_at_start": round(load_before, 2),
        "method": f"kernel_ms: median wall time per frame (launch + read-back) over an orbit of {FRAMES} poses "
        f"after a warm-up frame; ratios: median wall time, kernel and reference interleaved over "
        f"{REFERENCE_RUNS} poses ({KERNEL_REPEATS} kernel frames per reference frame); mesh: 3 loopback "
        f"nodes on this machine, spheres example, stream at 30 fps, {MESH_IN_FLIGHT} frame(s) in flight, realtime "
        f"deadline "
        f"{MESH_DEADLINE_MS:g} ms, tiles=auto, frames per resolution {list(MESH_FRAMES.values())}; "
        f"tiled_vs_single_720p: median of {TILED_REPEATS} interleaved frames each, single/tiled",
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
    for res, p99 in result.get("p99_ms", {}).items():
        st = result["mesh_streams"][res]
        rows.append((f"mesh frame latency {res} (3 loopback nodes)",
                     f"p50 {result['p50_ms'][res]} ms, p99 {p99} ms ({st['rendered']} frames, {st['dropped']} dropped, "
                     f"tiles/frame {st['tiles_per_frame']}, {st['fps_achieved']} fps)" + ("; target p99 < 16 ms" if res == "320x240" else "")))
    if "at_target_320x240" in result:
        t = result["at_target_320x240"]
        rows.append(("320x240 at 60 fps, 16 ms deadline", f"{t['rendered']} of {t['frames']} delivered, {t['dropped']} "
                                                          f"dropped {t['dropped_by_reason']}"))
    if "tiled_vs_single_720p" in result:
        d = result["tiled_vs_single_720p_detail"]
        rows.append(("1280x720 tiled over 3 nodes vs one node", f"{result['tiled_vs_single_720p']}x ({d['tiled_ms']} ms "
                                                                f"vs {d['single_ms']} ms; peers per tiled frame "
                                                                f"{d['peers_per_tiled_frame']})"))
    rows.append(("load average at start", str(result["load_average_at_start"])))
    return rows
