"""Isolation cost (issue 17): device code in a runner process vs in the daemon's own process.

Same process, same device, same executor code: one `Executor` with a `RunnerPool` (the node's way), one without
(kernels in this process, as before runners). The two sides alternate job by job, in the order A B B A A B ...
(each round swaps who goes first), so a change of machine load hits both alike; each job's spec is a fresh map
(as it arrives from the wire: no parse memo of the daemon helps either side). Load averages are recorded at the
start and the end: on a shared machine they say how far to trust the figures.

- `trivial_kernel_added_ms`: p50 of a one-work-item compute job (submit -> outcome through the executor) with
  runners minus the p50 without; target < 0.5 ms. Beside it `runner_ping_ms`, a bare runner call round trip
  (the floor of any hand-off: two process wake-ups), and `trivial_kernel_added_paired_ms`, the median of the
  per-pair differences (each pair ran back to back).
- `render_throughput_ratio`: frames per second of whole-frame `render.frame` jobs (spheres) with runners divided
  by without, from the median frame times, at 320x240 and 640x480; target >= 0.95 (within 5 %).
  `render_throughput_ratio_paired` is the median of the per-pair ratios, `render_throughput_ratio_p10` the
  ratio of the 10th-percentile frame times (the frames a busy machine disturbed least).
- `trivial_kernel_added_cpu_ms`, `render_cpu_ratio`: the same comparison in CPU time (this process and the runner,
  every thread), which a busy machine does not blur.
The end-to-end mesh figures (`bench compute` dispatch overhead, `bench render` frame latency) include the runner
hand-off too; they are separate benchmarks.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable, Callable

import msgpack
import numpy as np
import trio

from bench import pctl

TRIVIAL = "__kernel void one(__global int *out) { out[get_global_id(0)] = 42; }"
TRIVIAL_PAIRS = 600  # jobs per side
PINGS = 300
RENDER_PAIRS = {(320, 240): 80, (640, 480): 40}  # frames per side
SIDES = ("runner", "in_process")


async def alternate(pairs: int, one: Callable[[str, int], Awaitable[tuple[float, float]]]
                    ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """`pairs` runs of each side, alternating A B B A A B ... (pair i: `one(side, i)` for both sides, which
    returns (wall seconds, CPU seconds)); the wall times per side and the mean CPU seconds per run per side."""
    wall: dict[str, list[float]] = {s: [] for s in SIDES}
    cpu = dict.fromkeys(SIDES, 0.0)
    for i in range(pairs):
        for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
            w, c = await one(side, i)
            wall[side].append(w)
            cpu[side] += c / pairs
    return wall, cpu


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of this process and of `pids` (every thread: /proc/PID/task/*/schedstat, in ns)."""
    total = time.process_time()
    for pid in pids:
        try:
            for t in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0]) * 1e-9
        except (OSError, ValueError, IndexError):
            pass
    return total


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

    load_start = os.getloadavg()
    dev = [d for d in discover().devices if d.opencl][0]
    registry = kinds.KindRegistry()
    compute_kind.register_kind(registry)
    register_render(registry)
    pool = RunnerPool(RunnerSettings())
    execs = {"runner": Executor([dev], registry=registry, runners=pool), "in_process": Executor([dev], registry=registry)}
    seq = [0]

    async def job(side: str, kind: str, spec: dict) -> tuple[float, float]:
        seq[0] += 1
        spec = msgpack.unpackb(msgpack.packb(spec))  # a fresh map per job, as specs arrive from the wire
        pids = [r["pid"] for r in pool.status()]
        c0 = cpu_seconds(pids)
        t0 = time.perf_counter()
        out = await execs[side].submit(JobRequest(f"b{seq[0]}", kind, spec)).wait()
        dt = time.perf_counter() - t0
        if not out.ok:
            raise RuntimeError(f"{kind} job failed: {out.error}")
        return dt, cpu_seconds(pids) - c0

    trivial = make_job(TRIVIAL, "one", [Out(1, np.int32)], global_size=1).spec
    render: dict[str, dict[str, list[float]]] = {}
    render_cpu: dict[str, dict[str, float]] = {}
    ping: list[float] = []
    t_start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for ex in execs.values():
            await nursery.start(ex.run)
        for side in SIDES:  # warm: runner up, program built on both sides
            for _ in range(20):
                await job(side, "compute.opencl", trivial)
        times, trivial_cpu = await alternate(TRIVIAL_PAIRS, lambda side, _i: job(side, "compute.opencl", trivial))
        lease = pool.lease(dev)
        for _ in range(PINGS):
            t0 = time.perf_counter()
            await lease.call("ping", {})
            ping.append(time.perf_counter() - t0)
        lease.release()
        for (w, h), pairs in RENDER_PAIRS.items():
            scene = example("spheres", w, h)
            sh = content_hash(scene)
            poses = orbit((0.0, 0.3, 0.0), 2.6, 1.0, pairs)
            for side in SIDES:  # warm: scene cached and uploaded, kernel built
                await job(side, "render.frame", make_spec(sh, poses[0], scene=scene))
                await job(side, "render.frame", make_spec(sh, poses[1]))
            render[f"{w}x{h}"], render_cpu[f"{w}x{h}"] = await alternate(
                pairs, lambda side, i: job(side, "render.frame", make_spec(sh, poses[i])))  # noqa: B023 - awaited here
        nursery.cancel_scope.cancel()
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "trivial_kernel_added_ms": round((med["runner"] - med["in_process"]) * 1e3, 3),
        "trivial_kernel_added_paired_ms": round(statistics.median(
            r - p for r, p in zip(times["runner"], times["in_process"], strict=True)) * 1e3, 3),
        "trivial_kernel_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "trivial_kernel_p90_ms": {k: round(pctl(v, 0.9) * 1e3, 3) for k, v in times.items()},
        "runner_ping_ms": round(statistics.median(ping) * 1e3, 3),
        "render_frame_ms": {res: {k: round(statistics.median(v) * 1e3, 2) for k, v in d.items()}
                            for res, d in render.items()},
        "render_throughput_ratio": {res: round(statistics.median(d["in_process"]) / statistics.median(d["runner"]), 3)
                                    for res, d in render.items()},
        "render_throughput_ratio_p10": {res: round(pctl(d["in_process"], 0.1) / pctl(d["runner"], 0.1), 3)
                                        for res, d in render.items()},
        "render_throughput_ratio_paired": {
            res: round(statistics.median(p / r for r, p in zip(d["runner"], d["in_process"], strict=True)), 3)
            for res, d in render.items()},
        "trivial_kernel_added_cpu_ms": round((trivial_cpu["runner"] - trivial_cpu["in_process"]) * 1e3, 3),
        "render_cpu_ratio": {res: round(c["in_process"] / c["runner"], 3) for res, c in render_cpu.items()},
        "device": dev.name,
        "jobs_per_side": TRIVIAL_PAIRS,
        "frames_per_side": {f"{w}x{h}": n for (w, h), n in RENDER_PAIRS.items()},
        "load_average_at_start": round(load_start[0], 2),
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    return out


def run() -> dict:
    return trio.run(_measure)


def table(r: dict) -> list[tuple[str, str]]:
    t = r["trivial_kernel_ms"]
    added = r["trivial_kernel_added_ms"]
    rows = [
        ("trivial compute job through the executor, runner vs in-process, p50 (added)",
         f"{t['runner']:.3f} ms vs {t['in_process']:.3f} ms: +{added:.3f} ms (target < 0.5 ms: "
         f"{'met' if added < 0.5 else '**not met**'}; {r['jobs_per_side']} jobs each, alternating; median of "
         f"the pairs' differences +{r['trivial_kernel_added_paired_ms']:.3f} ms)"),
        ("bare runner call round trip, p50", f"{r['runner_ping_ms']:.3f} ms"),
    ]
    for res, ratio in r["render_throughput_ratio"].items():
        f = r["render_frame_ms"][res]
        rows.append((f"render.frame spheres {res}, runner vs in-process (throughput ratio)",
                     f"{f['runner']} ms vs {f['in_process']} ms per frame: {ratio:.3f}x (target >= 0.95: "
                     f"{'met' if ratio >= 0.95 else '**not met**'}; median of the pairs' ratios "
                     f"{r['render_throughput_ratio_paired'][res]:.3f}x, of the 10th percentiles "
                     f"{r['render_throughput_ratio_p10'][res]:.3f}x; {r['frames_per_side'][res]} frames each)"))
    rows.append(("CPU time per job, runner minus in-process (daemon + runner processes, every thread): trivial "
                 "job added / render in-process over runner",
                 f"+{r['trivial_kernel_added_cpu_ms']:.3f} ms / " + ", ".join(
                     f"{res} {v:.3f}x" for res, v in r["render_cpu_ratio"].items())
                 + " (what the hand-off costs in work, whatever the machine's load)"))
    rows.append(("device / load average at start, end",
                 f"{r['device']} / {r['load_average_at_start']}, {r['load_average_at_end']} "
                 f"(run took {r['seconds']} s)"))
    return rows
