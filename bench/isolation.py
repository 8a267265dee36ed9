"""Isolation cost (issue 17): device code in a runner process vs in the daemon's own process.

Same process, same device, same executor code, interleaved in rounds (A/B blocks) so both see the same machine
load, each job's spec a fresh map (as it arrives from the wire: no parse memo helps either side): one `Executor` with a `RunnerPool` (the node's way), one without (kernels in this process, as before
runners).
- `trivial_kernel_added_ms`: p50 of a one-work-item compute job (submit -> outcome through the executor) with
  runners minus the p50 without; target < 0.5 ms. With `runner_ping_ms`: a bare runner call round trip.
- `render_throughput_ratio`: frames per second of whole-frame `render.frame` jobs (spheres, 640x480) with
  runners divided by without (median frame times); target >= 0.95 (within 5 %). 320x240 beside it.
The end-to-end mesh figures (`bench compute` dispatch overhead, `bench render` frame latency) are measured with
and without runners separately (before/after the change, one after the other): see bench/RESULTS.md.
"""

from __future__ import annotations

import os
import statistics
import time

import msgpack
import numpy as np
import trio

from bench import pctl

TRIVIAL = "__kernel void one(__global int *out) { out[get_global_id(0)] = 42; }"
ROUNDS = 12
PER_ROUND = 20
RENDER_ROUNDS = 6
RENDER_PER_ROUND = 3


async def _measure() -> dict:
    from scheduler.client.compute_sdk import Out, make_job
    from worker import kinds
    from worker.compute import kind as compute_kind
    from worker.devices import discover
    from worker.executor import Executor, JobRequest
    from worker.render.camera import orbit
    from worker.render.kind import make_spec
    from worker.render.kind import register_kind as register_render
    from worker.render.samples import example
    from worker.render.scene import content_hash
    from worker.runner import RunnerPool, RunnerSettings

    dev = [d for d in discover().devices if d.opencl][0]
    registry = kinds.KindRegistry()
    compute_kind.register_kind(registry)
    register_render(registry)
    pool = RunnerPool(RunnerSettings())
    execs = {"runner": Executor([dev], registry=registry, runners=pool), "in_process": Executor([dev], registry=registry)}
    seq = [0]

    async def job(ex: Executor, kind: str, spec: dict) -> float:
        seq[0] += 1
        spec = msgpack.unpackb(msgpack.packb(spec))  # a fresh map per job, as specs arrive from the wire
        t0 = time.perf_counter()
        out = await ex.submit(JobRequest(f"b{seq[0]}", kind, spec)).wait()
        dt = time.perf_counter() - t0
        if not out.ok:
            raise RuntimeError(f"{kind} job failed: {out.error}")
        return dt

    trivial = make_job(TRIVIAL, "one", [Out(1, np.int32)], global_size=1).spec
    times: dict[str, list[float]] = {"runner": [], "in_process": []}
    render: dict[str, dict[str, list[float]]] = {}
    ping: list[float] = []
    async with trio.open_nursery() as nursery:
        for ex in execs.values():
            await nursery.start(ex.run)
        for ex in execs.values():  # warm: runner up, program built on both sides
            for _ in range(10):
                await job(ex, "compute.opencl", trivial)
        for _ in range(ROUNDS):
            for name, ex in execs.items():
                for _ in range(PER_ROUND):
                    times[name].append(await job(ex, "compute.opencl", trivial))
        lease = pool.lease(dev)
        for _ in range(200):
            t0 = time.perf_counter()
            await lease.call("ping", {})
            ping.append(time.perf_counter() - t0)
        lease.release()
        for w, h in ((320, 240), (640, 480)):
            scene = example("spheres", w, h)
            sh = content_hash(scene)
            poses = orbit((0.0, 0.3, 0.0), 2.6, 1.0, RENDER_ROUNDS * RENDER_PER_ROUND)
            res: dict[str, list[float]] = {"runner": [], "in_process": []}
            for ex in execs.values():  # warm: scene cached and uploaded, kernel built
                await job(ex, "render.frame", make_spec(sh, poses[0], scene=scene))
                await job(ex, "render.frame", make_spec(sh, poses[1]))
            i = 0
            for _ in range(RENDER_ROUNDS):
                for name, ex in execs.items():
                    for k in range(RENDER_PER_ROUND):
                        res[name].append(await job(ex, "render.frame", make_spec(sh, poses[(i + k) % len(poses)])))
                i += RENDER_PER_ROUND
            render[f"{w}x{h}"] = res
        nursery.cancel_scope.cancel()
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "trivial_kernel_added_ms": round((med["runner"] - med["in_process"]) * 1e3, 3),
        "trivial_kernel_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "trivial_kernel_p90_ms": {k: round(pctl(v, 0.9) * 1e3, 3) for k, v in times.items()},
        "runner_ping_ms": round(statistics.median(ping) * 1e3, 3),
        "render_frame_ms": {res: {k: round(statistics.median(v) * 1e3, 2) for k, v in d.items()}
                            for res, d in render.items()},
        "device": dev.name,
        "jobs_per_side": ROUNDS * PER_ROUND,
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }
    out["render_throughput_ratio"] = {res: round(statistics.median(d["in_process"]) / statistics.median(d["runner"]), 3)
                                      for res, d in render.items()}
    return out


def run() -> dict:
    return trio.run(_measure)


def table(r: dict) -> list[tuple[str, str]]:
    t = r["trivial_kernel_ms"]
    rows = [
        ("trivial compute job through the executor, runner vs in-process, p50 (added)",
         f"{t['runner']:.3f} ms vs {t['in_process']:.3f} ms: +{r['trivial_kernel_added_ms']:.3f} ms "
         f"(target < 0.5 ms; {r['jobs_per_side']} jobs each, interleaved)"),
        ("bare runner call round trip, p50", f"{r['runner_ping_ms']:.3f} ms"),
    ]
    for res, ratio in r["render_throughput_ratio"].items():
        f = r["render_frame_ms"][res]
        rows.append((f"render.frame spheres {res}, runner vs in-process (throughput ratio)",
                     f"{f['runner']} ms vs {f['in_process']} ms per frame: {ratio:.3f}x (target >= 0.95)"))
    rows.append(("device / load average at start", f"{r['device']} / {r['load_average_at_start']}"))
    return rows
