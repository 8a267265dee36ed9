"""Scheduler: echo job round trip client -> coordinator -> another node -> client (p50/p99), pipelined jobs/s
from one client, and placement decision time with 1,000 peers in the view (bench/placement.py).

Three node processes on loopback; the coordinator runs with `--devices none` (a gateway that runs nothing) so
every echo really crosses to another node, as the issue's path says.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import trio

from bench import pctl, placement
from scheduler.client.client import Client, local_address
from scheduler.devtools.localmesh import make_nodes, sees_all, start_nodes, stop_all, wait_for

SEQUENTIAL = 300
PIPELINED = 2000
CONCURRENCY = 64



async def _measure(addr: str, tok: str, pid: str) -> dict:
    async with Client.connect(addr, token=tok, peer_id=pid) as c:
        for _ in range(20):  # warm up connections and caches
            await c.run("echo", {})
        rtts, workers = [], set()
        for _ in range(SEQUENTIAL):
            t0 = time.perf_counter()
            r = await c.run("echo", {})
            rtts.append(time.perf_counter() - t0)
            workers.add(r.worker)
        done = 0

        async def worker(n: int) -> None:
            nonlocal done
            for _ in range(n):
                await c.run("echo", {}, max_attempts=5)
                done += 1

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENCY):
                nursery.start_soon(worker, PIPELINED // CONCURRENCY)
        elapsed = time.perf_counter() - t0
    return {"rtts": rtts, "workers": len(workers), "jobs_per_s": done / elapsed}


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="gpumesh-bench-sched-") as root:
        nodes = make_nodes(Path(root), 3)
        nodes[0].extra += ["--devices", "none"]
        try:
            start_nodes(nodes)
            wait_for(lambda: sees_all(nodes), 120, "3 nodes to converge", interval=0.2)
            addr, tok, pid, _ = local_address(nodes[0].data_dir)
            m = trio.run(_measure, addr, tok, pid)
        finally:
            stop_all(nodes)
    p = placement.run()
    return {
        "echo_rtt_p50_ms": round(statistics.median(m["rtts"]) * 1000, 3),
        "echo_rtt_p99_ms": round(pctl(m["rtts"], 0.99) * 1000, 3),
        "pipelined_jobs_per_s": round(m["jobs_per_s"], 1),
        "placement_p99_us": p["placement_p99_us"],
        "placement_p50_us": p.get("placement_p50_us"),
        "echo_workers_used": m["workers"],
        "sequential_jobs": SEQUENTIAL,
        "pipelined_jobs": PIPELINED,
        "pipelined_concurrency": CONCURRENCY,
    }


def table(r: dict) -> list[tuple[str, str]]:
    return [
        ("echo round trip p50 / p99 (client -> gateway coordinator -> worker node -> client)",
         f"{r['echo_rtt_p50_ms']:.2f} ms / {r['echo_rtt_p99_ms']:.2f} ms (target p50 < 2 ms)"),
        (f"pipelined echo jobs/s, one client, {r['pipelined_concurrency']} in flight",
         f"{r['pipelined_jobs_per_s']:.0f} (target >= 2,000)"),
        ("placement decision, 1,000 peers in view, p50 / p99", f"{r['placement_p50_us']} us / {r['placement_p99_us']} us (target p99 < 200 us)"),
        ("anchor: Ray 2.20 published", "966 tasks/s single-client sync (~1 ms), 7,994 tasks/s async"),
    ]
