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

Real-time render sessions (issue 18; bench/_render_session.py, keys `session_overhead_p99_ms`,
`session_delivered_30fps`, `bytes_per_frame`, `deadline_estimate_ratio`, `deadline_estimate_ratio_jobs`):
`RENDER_PARTS=session make bench B=render` runs only that part (about a minute) and merges its keys into the
last results.

Viewer (issue 22): `viewer_latency_ms` {resolution: {p50, p99}}: the live viewer page in a real headless
Chromium, orbiting by itself, pose sent by the page -> frame drawn on its canvas, as the page measures it, through
the viewer server and a fresh 3-node loopback mesh (spheres example, tiles="auto"). One pose at a time (the page's
`outstanding=1`, the server's max_in_flight=1), as the stream latency above: on one machine overlapping frames
only share its cores, so the figure is a pose's latency, not queueing. The first VIEWER_WARMUP frames are left
out.
"""

from __future__ import annotations

import os
import statistics
import time

from bench._render_session import session_part, table_rows
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


VIEWER_FRAMES = {(320, 240): 60, (640, 480): 30}
VIEWER_WARMUP = 5


def viewer_part() -> dict:
    """viewer_latency_ms and its detail (see the module doc); needs Debian's chromium."""
    import tempfile
    from pathlib import Path

    import trio

    from bench import pctl
    from scheduler.client.client import Client, local_address
    from scheduler.client.viewer import Viewer
    from scheduler.devtools import chromium
    from scheduler.devtools.localmesh import running_mesh

    if chromium.find() is None:
        return {"skipped": f"no Chromium (apt-get install {chromium.PACKAGE})"}
    with tempfile.TemporaryDirectory(prefix="gm-bench-viewer-") as root:
        with running_mesh(Path(root), 3, ["--advert-interval", "0.5"], converge_s=120) as nodes:
            addr, tok, pid, insecure = local_address(nodes[0].data_dir)

            async def main() -> dict:
                out: dict = {}
                async with Client.connect(addr, token=tok, peer_id=pid, insecure=insecure) as c:
                    for (w, h), n in VIEWER_FRAMES.items():
                        scene = example("spheres", w, h)
                        async with trio.open_nursery() as nursery:
                            viewer = Viewer(c, scene, tiles="auto", max_in_flight=1)
                            port = await nursery.start(viewer.serve, "127.0.0.1", 0)
                            with chromium.launch(f"http://127.0.0.1:{port}/?orbit=auto&outstanding=1") as browser:
                                async with browser.page() as page:
                                    t0 = trio.current_time()
                                    await page.wait_for(f"window.viewer && window.viewer.state.shown >= {n}", 600,
                                                        f"{n} frames at {w}x{h}")
                                    wall = trio.current_time() - t0
                                    stats = await page.evaluate("window.viewer.stats()")
                                    log = await page.evaluate("window.viewer.log()")
                            nursery.cancel_scope.cancel()
                        lat = [e["latency_ms"] for e in log[VIEWER_WARMUP:] if e["latency_ms"] is not None]
                        out[f"{w}x{h}"] = {
                            "p50": round(pctl(lat, 0.5), 1), "p99": round(pctl(lat, 0.99), 1),
                            "frames": len(lat), "fps": round(stats["shown"] / wall, 1),
                            "dropped": stats["dropped"], "skipped": stats["skipped"], "stale": stats["stale"],
                            "mesh_ms_p50": round(pctl([e["mesh_ms"] for e in log[VIEWER_WARMUP:]], 0.5), 1),
                            "tiles_per_frame": sorted({e["tiles"] for e in log}), "renderer": stats["renderer"]}
                return out

            return trio.run(main)


SESSION_KEYS = ("session_overhead_p99_ms", "session_overhead_detail", "session_overhead_relayed_p99_ms",
                "session_overhead_relayed_detail", "session_delivered_30fps", "session_30fps_detail",
                "bytes_per_frame", "bytes_per_frame_detail", "deadline_estimate_ratio", "deadline_estimate_detail",
                "deadline_estimate_ratio_jobs")


def run() -> dict:
    """Every part; with RENDER_PARTS=session only the real-time session part (about a minute), its keys merged
    into the last bench/results/render.json."""
    sessions = session_part()
    if os.environ.get("RENDER_PARTS", "all") == "session":
        import json
        from pathlib import Path

        last = Path(__file__).resolve().parent / "results" / "render.json"
        out = json.loads(last.read_text()) if last.exists() else {}
        out.update({k: sessions[k] for k in SESSION_KEYS if k in sessions})
        out["session_load_average"] = [sessions["load_average_at_start"], sessions["load_average_at_end"]]
        return out
    result = _run_all()
    result.update({k: sessions[k] for k in SESSION_KEYS if k in sessions})
    result["session_load_average"] = [sessions["load_average_at_start"], sessions["load_average_at_end"]]
    return result


def _run_all() -> dict:
    viewer = viewer_part()
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
        "viewer_latency_ms": {k: {"p50": v["p50"], "p99": v["p99"]} for k, v in viewer.items() if isinstance(v, dict)},
        "viewer_detail": viewer,
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
    for res, v in result.get("viewer_detail", {}).items():
        if isinstance(v, dict):
            rows.append((f"viewer latency {res} (Chromium page, 3 loopback nodes)",
                         f"p50 {v['p50']} ms, p99 {v['p99']} ms ({v['frames']} frames, {v['fps']} fps shown, "
                         f"dropped {v['dropped']}, skipped {v['skipped']}, stale {v['stale']}; mesh p50 "
                         f"{v['mesh_ms_p50']} ms)"))
    rows += table_rows(result)
    if "session_load_average" in result:
        rows.append(("load average during the session part (start, end)", str(result["session_load_average"])))
    rows.append(("load average at start", str(result.get("load_average_at_start"))))
    return rows
