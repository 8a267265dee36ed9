"""Placement decision time with 1,000 peers in the membership view.

Mesh: 1,000 peers, each a GPU (a quarter also a CPU device), with varied calibration and load. Between
decisions the view changes as it does on a live node: adverts arrive at the gossip rate (1,000 peers
every 2 s against 2,000 decisions/s: one advert per 4 decisions; 1 in 20 changes a device's load) and
claim rejections feed back a worker's load (1 in 10 decisions). Measured: one `Placer.place()` call.

- `placement_p50_us`, `placement_p99_us`: jobs of a handful of shapes (kind, spec, input size) with the
  scalar cost function (a kind's `cost_s`), whose per-device costs are cached per shape;
- `placement_work_p99_us`: every job a new size, cost from the vectorised `Work` model;
- `placement_uncached_p99_us`: every job a new shape with the scalar cost function (1,000+ Python calls):
  the worst case, and what `work_fn` avoids.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

from mesh.advert import Advert, DeviceAdvert
from mesh.membership import MembershipView
from scheduler.core.job import Job, Requirements
from scheduler.core.placement import Placer, TrackedView, Work

PEERS = 1000
DECISIONS = 20000
GIB = 1 << 30


def _mesh(rng: random.Random, tracked: bool = True) -> tuple[MembershipView, list[Advert]]:
    view = (TrackedView if tracked else MembershipView)("peer0000", ttl_s=6.0)
    ads = []
    for i in range(PEERS):
        devs = [DeviceAdvert("0:0", "gpu", "vendor", "gpu", 80, rng.choice([8, 16, 24, 80]) * GIB, rng.random() < 0.5,
                             True, rng.uniform(500, 20000), rng.uniform(2000, 60000), 2, rng.randint(0, 2),
                             rng.choice([0, 0, 0, 1, 3]))]
        if i % 4 == 0:
            devs.append(DeviceAdvert("cpu", "cpu", "vendor", "cpu", 16, 64 * GIB, True, True, rng.uniform(50, 400),
                                     rng.uniform(100, 900), 1, 1, 0))
        ad = Advert(f"peer{i:04d}", b"k" * 32, 1, 0.0, data_addr=f"10.0.{i >> 8}.{i & 255}:4002", devices=tuple(devs))
        view.apply(ad, 0.0)
        ads.append(ad)
    return view, ads


def _cost(job: Job, dev: DeviceAdvert) -> float:  # shaped like worker.kinds_basic's checksum cost
    return 1e-3 + job.input_size / 1.5e9 + job.input_size / (dev.mulmod_mops * 4e6) + job.spec.get("gflop", 0) / dev.f32_gflops


def _measure(placer: Placer, view: MembershipView, ads: list[Advert], jobs, rng: random.Random,
             cpu: list[float] | None = None) -> list[float]:
    lat = []
    now = 0.0
    seq = 1
    for i in range(DECISIONS):
        now += 0.0005
        if i % 4 == 0:
            k = rng.randrange(PEERS)
            seq += 1
            old = ads[k]
            devs = old.devices
            if rng.random() < 0.05:
                devs = (replace(devs[0], free_slots=rng.randint(0, 2), queue_depth=rng.randint(0, 4)),) + devs[1:]
            ads[k] = replace(old, seq=seq, devices=devs)
            view.apply(ads[k], now)
        if i % 10 == 0:
            placer.note_load(f"peer{rng.randrange(PEERS):04d}", "0:0", 0, rng.randint(1, 5))
        job = jobs(i)
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        p = placer.place(job, now)
        t1 = time.perf_counter_ns()
        lat.append((t1 - t0) / 1000.0)
        if cpu is not None:
            cpu.append((time.thread_time_ns() - c0) / 1000.0)
        assert p.ok, p.reason
    return lat


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def run() -> dict:
    rng = random.Random(1)
    view, ads = _mesh(rng)
    shapes = [Job("checksum", {}, input_size=n, input_sha256="0" * 64) for n in (1 << 10, 1 << 20, 256 << 20)]
    shapes += [Job("render", {"gflop": 50.0}, requirements=Requirements(device_kind="gpu", min_memory_bytes=16 * GIB)),
               Job("echo", {"x": 1}, priority="interactive")]
    placer = Placer(view, _cost, seed=1)
    _measure(placer, view, ads, lambda i: shapes[i % len(shapes)], rng)  # warm up
    cpu: list[float] = []
    cached = _measure(placer, view, ads, lambda i: shapes[i % len(shapes)], rng, cpu)

    def work(job: Job) -> Work:
        return Work(1e-3 + job.input_size / 1.5e9, job.input_size / 4e6, job.spec.get("gflop", 0.0))

    wplacer = Placer(view, work_fn=work, seed=2)
    vec = _measure(wplacer, view, ads, lambda i: Job("checksum", {}, input_size=1000 + i, input_sha256="0" * 64), rng)
    uplacer = Placer(view, _cost, seed=3)
    global DECISIONS
    saved, DECISIONS = DECISIONS, 2000
    try:
        unc = _measure(uplacer, view, ads, lambda i: Job("checksum", {}, input_size=10**6 + i, input_sha256="0" * 64), rng)
    finally:
        DECISIONS = saved
    return {
        "peers": PEERS,
        "devices": sum(len(a.devices) for a in ads),
        "decisions": DECISIONS,
        "placement_p50_us": round(_pct(cached, 0.5), 1),
        "placement_p99_us": round(_pct(cached, 0.99), 1),
        "placement_p90_us": round(_pct(cached, 0.90), 1),
        "placement_cpu_p50_us": round(_pct(cpu, 0.5), 1),
        "placement_cpu_p99_us": round(_pct(cpu, 0.99), 1),
        "placement_work_p50_us": round(_pct(vec, 0.5), 1),
        "placement_work_p99_us": round(_pct(vec, 0.99), 1),
        "placement_uncached_p50_us": round(_pct(unc, 0.5), 1),
        "placement_uncached_p99_us": round(_pct(unc, 0.99), 1),
        "full_rebuilds": placer.rebuilds,
    }


def table(r: dict) -> list[tuple[str, str]]:
    return [
        ("peers in view / devices", f"{r['peers']} / {r['devices']}"),
        ("placement p50 / p99 (scalar cost, cached per job shape)", f"{r['placement_p50_us']} / {r['placement_p99_us']} µs"),
        ("placement p50 / p99 (Work model, every job a new size)",
         f"{r['placement_work_p50_us']} / {r['placement_work_p99_us']} µs"),
        ("placement p50 / p99 (scalar cost, every job a new shape)",
         f"{r['placement_uncached_p50_us']} / {r['placement_uncached_p99_us']} µs"),
        ("target", "p99 < 200 µs"),
    ]


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
