"""Scheduler: echo job round trip (p50/p99), pipelined jobs/s from one client, and placement decision time with
1,000 peers in the view (bench/placement.py).

Two paths, measured in the same run:
  * leased (the headline keys `echo_rtt_p50_ms`, `pipelined_jobs_per_s`): the client holds a job lease
    (scheduler/client/job_lease.py), placed once by the gateway, and sends its jobs straight to the worker:
    client -> worker -> client, no journal record per job;
  * journaled (`journaled_*`): each job submitted to the gateway coordinator, which journals it and places it on
    another node (on a slot lease it holds): client -> gateway -> worker -> gateway -> client.

Three node processes on loopback; the coordinator runs with `--devices none` (a gateway that runs nothing) so
every echo really crosses to another node, as the issue's path says.

With Ray installed (`pip install -e '.[bench]'`) the same echo workload then runs on a local Ray cluster in the
same run (bench/_ray_echo.py) and the ratios are reported: `ray_*` keys, `echo_rtt_vs_ray` (ours / Ray's, lower
is better; issue 18's target <= 0.5) and `pipelined_vs_ray` (ours / Ray's, target >= 3). Without Ray that part
is skipped and says so (`ray_skipped`).
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from bench import _ray_echo, pctl, placement
from scheduler.client.client import Client, JobResult, local_address
from scheduler.client.job_lease import open_lease
from scheduler.devtools.localmesh import make_nodes, sees_all, start_nodes, stop_all, wait_for

SEQUENTIAL = 300
PIPELINED = 2000
CONCURRENCY = 64



def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _sequential(run: Callable[[], Awaitable[JobResult]], workers: set[str]) -> list[float]:
    """Round trips of SEQUENTIAL echo jobs one at a time, after 20 that warm connections and caches up; the
    workers that ran them are added to `workers`."""
    for _ in range(20):
        await run()
    rtts = []
    for _ in range(SEQUENTIAL):
        t0 = time.perf_counter()
        r = await run()
        rtts.append(time.perf_counter() - t0)
        workers.add(r.worker)
    return rtts


async def _measure(addr: str, tok: str, pid: str, node_pids: list[int]) -> dict:
    async with Client.connect(addr, token=tok, peer_id=pid) as c:
        workers: set[str] = set()
        rtts = await _sequential(lambda: c.run("echo", {}), workers)
        done = 0

        async def worker(n: int) -> None:
            nonlocal done
            for _ in range(n):
                await c.run("echo", {}, max_attempts=5)
                done += 1

        cpu0 = [_cpu_s(p) for p in node_pids]
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENCY):
                nursery.start_soon(worker, PIPELINED // CONCURRENCY)
        elapsed = time.perf_counter() - t0
        # CPU per job on the gateway and on the two workers together: steadier than rates on a shared machine
        cpu = [_cpu_s(p) - c for p, c in zip(node_pids, cpu0, strict=True)]
        t0 = time.perf_counter()  # the same jobs on one job.submit_many stream (Client.run_many)
        many = await c.run_many("echo", [{}] * PIPELINED, max_attempts=5)
        many_elapsed = time.perf_counter() - t0
        assert all(r.ok for r in many), [r.reason for r in many if not r.ok][:3]
        leased = await _leased(c, node_pids)
    return {"rtts": rtts, "workers": len(workers), "jobs_per_s": done / elapsed, "many_per_s": len(many) / many_elapsed,
            "gateway_cpu_us": cpu[0] / done * 1e6, "workers_cpu_us": sum(cpu[1:]) / done * 1e6, "leased": leased}


async def _leased(c: Client, node_pids: list[int]) -> dict:
    """The same echo workload on a job lease: sequential run(), then run_many with CONCURRENCY in flight."""
    async with open_lease(c, "echo", slots=CONCURRENCY) as lease:
        rtts = await _sequential(lambda: lease.run({}), set())
        cpu0, client0 = [_cpu_s(p) for p in node_pids], time.process_time()
        t0 = time.perf_counter()
        many = await lease.run_many([{}] * PIPELINED)
        elapsed = time.perf_counter() - t0
        cpu = [_cpu_s(p) - c for p, c in zip(node_pids, cpu0, strict=True)]
        client = time.process_time() - client0
        assert all(r.ok for r in many), [r.reason for r in many if not r.ok][:3]
        stats = dict(lease.stats)
    return {"rtts": rtts, "jobs_per_s": len(many) / elapsed, "stats": stats,
            "client_cpu_us": client / len(many) * 1e6, "nodes_cpu_us": sum(cpu) / len(many) * 1e6}


def _counters(port: int, names: tuple[str, ...]) -> dict[tuple[str, str], float]:
    """{(metric, first label value): value} of the gateway's counters (how many jobs went on leases vs claims)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[tuple[str, str], float] = {}
    for name, label, value in re.findall(r'^(\w+)\{\w+="([^"]*)"\} (\S+)$', text, re.M):
        if name in names:
            out[(name, label)] = out.get((name, label), 0.0) + float(value)
    return out


def run() -> dict:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gpumesh-bench-sched-") as root:
        nodes = make_nodes(Path(root), 3)
        nodes[0].extra += ["--devices", "none"]
        try:
            start_nodes(nodes)
            wait_for(lambda: sees_all(nodes), 120, "3 nodes to converge", interval=0.2)
            addr, tok, pid, _ = local_address(nodes[0].data_dir)
            m = trio.run(_measure, addr, tok, pid, [n.process.pid for n in nodes])
            counts = _counters(nodes[0].metrics_port, ("gpumesh_leases_total", "gpumesh_claims_total"))
        finally:
            stop_all(nodes)
    p = placement.run()
    lz = m["leased"]
    out = {
        "echo_rtt_p50_ms": round(statistics.median(lz["rtts"]) * 1000, 3),
        "echo_rtt_p99_ms": round(pctl(lz["rtts"], 0.99) * 1000, 3),
        "pipelined_jobs_per_s": round(lz["jobs_per_s"], 1),
        "leased_client_cpu_us_per_job": round(lz["client_cpu_us"]),
        "leased_nodes_cpu_us_per_job": round(lz["nodes_cpu_us"]),
        "leased_jobs": lz["stats"]["on_lease"],
        "leased_jobs_through_gateway": lz["stats"]["through_gateway"],
        "journaled_echo_rtt_p50_ms": round(statistics.median(m["rtts"]) * 1000, 3),
        "journaled_echo_rtt_p99_ms": round(pctl(m["rtts"], 0.99) * 1000, 3),
        "journaled_pipelined_jobs_per_s": round(max(m["jobs_per_s"], m["many_per_s"]), 1),
        "pipelined_run_jobs_per_s": round(m["jobs_per_s"], 1),
        "pipelined_many_jobs_per_s": round(m["many_per_s"], 1),
        "gateway_cpu_us_per_job": round(m["gateway_cpu_us"]),
        "workers_cpu_us_per_job": round(m["workers_cpu_us"]),
        "placement_p99_us": p["placement_p99_us"],
        "placement_p50_us": p.get("placement_p50_us"),
        "echo_workers_used": m["workers"],
        "jobs_sent_on_leases": int(counts.get(("gpumesh_leases_total", "direct"), 0)),
        "claims_accepted": int(counts.get(("gpumesh_claims_total", "accepted"), 0)),
        "sequential_jobs": SEQUENTIAL,
        "pipelined_jobs": PIPELINED,
        "pipelined_concurrency": CONCURRENCY,
    }
    if _ray_echo.available():
        print("running the same echo workload on Ray", flush=True)
        r = _ray_echo.measure(SEQUENTIAL, PIPELINED, CONCURRENCY)
        out.update({
            "ray_version": r["version"],
            "ray_echo_rtt_p50_ms": round(statistics.median(r["rtts"]) * 1000, 3),
            "ray_echo_rtt_p99_ms": round(pctl(r["rtts"], 0.99) * 1000, 3),
            "ray_pipelined_jobs_per_s": round(r["jobs_per_s"], 1),
        })
        out["echo_rtt_vs_ray"] = round(out["echo_rtt_p50_ms"] / out["ray_echo_rtt_p50_ms"], 2)
        out["pipelined_vs_ray"] = round(out["pipelined_jobs_per_s"] / out["ray_pipelined_jobs_per_s"], 2)
        out["journaled_echo_rtt_vs_ray"] = round(out["journaled_echo_rtt_p50_ms"] / out["ray_echo_rtt_p50_ms"], 2)
        out["journaled_pipelined_vs_ray"] = round(out["journaled_pipelined_jobs_per_s"] / out["ray_pipelined_jobs_per_s"], 2)
    else:
        msg = "Ray is not installed (pip install -e '.[bench]'): the Ray side by side is skipped"
        print(msg, flush=True)
        out["ray_skipped"] = msg
    out["loadavg_1m_before"] = round(load_before, 2)
    out["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return out


def table(r: dict) -> list[tuple[str, str]]:
    return [
        ("echo round trip p50 / p99 on a job lease (client -> worker node -> client; placed once by the gateway)",
         f"{r['echo_rtt_p50_ms']:.2f} ms / {r['echo_rtt_p99_ms']:.2f} ms (target: <= 0.5x Ray's p50, below)"),
        (f"pipelined echo jobs/s on a job lease, one client, run_many with {r['pipelined_concurrency']} in flight",
         f"{r['pipelined_jobs_per_s']:.0f} ({r['leased_jobs']} jobs on the lease, "
         f"{r['leased_jobs_through_gateway']} through the gateway)"),
        ("CPU per leased pipelined job: client / nodes (the worker; the gateway is idle)",
         f"{r['leased_client_cpu_us_per_job']} us / {r['leased_nodes_cpu_us_per_job']} us"),
        ("journaled echo round trip p50 / p99 (client -> gateway coordinator -> worker node -> client)",
         f"{r['journaled_echo_rtt_p50_ms']:.2f} ms / {r['journaled_echo_rtt_p99_ms']:.2f} ms"),
        (f"journaled pipelined echo jobs/s: {r['pipelined_concurrency']} concurrent run() / one submit_many stream",
         f"{r['pipelined_run_jobs_per_s']:.0f} / {r['pipelined_many_jobs_per_s']:.0f}"),
        ("CPU per journaled pipelined echo job: gateway / both workers (steadier than rates under load)",
         f"{r['gateway_cpu_us_per_job']} us / {r['workers_cpu_us_per_job']} us"),
        ("jobs sent on slot leases (no placement, no claim) / claims accepted, at the gateway",
         f"{r['jobs_sent_on_leases']} / {r['claims_accepted']}"),
        ("placement decision, 1,000 peers in view, p50 / p99", f"{r['placement_p50_us']} us / {r['placement_p99_us']} us (target p99 < 200 us)"),
    ] + _ray_rows(r) + [
        ("load average (1 min) before / after", f"{r['loadavg_1m_before']} / {r['loadavg_1m_after']} (2 shared cores)"),
        ("anchor: Ray 2.20 published", "966 tasks/s single-client sync (~1 ms), 7,994 tasks/s async"),
    ]


def _ray_rows(r: dict) -> list[tuple[str, str]]:
    if "ray_echo_rtt_p50_ms" not in r:
        return [("Ray side by side", r.get("ray_skipped", "skipped"))]
    return [
        (f"Ray {r['ray_version']} echo round trip p50 / p99, same run",
         f"{r['ray_echo_rtt_p50_ms']:.2f} ms / {r['ray_echo_rtt_p99_ms']:.2f} ms; ours / Ray = {r['echo_rtt_vs_ray']} (target <= 0.5)"),
        (f"Ray pipelined echo tasks/s, {r['pipelined_concurrency']} in flight, same run",
         f"{r['ray_pipelined_jobs_per_s']:.0f}; ours / Ray = {r['pipelined_vs_ray']} (target >= 3)"),
        ("journaled path / Ray: echo p50, pipelined jobs/s",
         f"{r['journaled_echo_rtt_vs_ray']}, {r['journaled_pipelined_vs_ray']}"),
    ]
