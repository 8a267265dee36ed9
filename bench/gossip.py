"""Gossip: N real node processes on loopback, and the 10,000-node simulation calibrated from them.

Real processes (N = 5, 10, 20, 40, all sharing this machine's cores):
- convergence: time from a capacity change on one node until every other node's view shows it (p50/p99 over
  `CHANGES` changes; each made on the next node in turn, so the change budget of one node is not what is
  measured: tests/test_advert_schedule.py checks that bound). The change is an advert label set through the
  control socket (it changes the advert as a load change would, and goes out as a delta). A node's arrival
  time is read back as (poll time - the peer's advert age), which a later refresh can only make later: the
  figure errs on the slow side.
- idle CPU per node and messages received per node per second (pubsub messages from peers, duplicates
  included), over `IDLE_WINDOW_S` after the changes, once refresh intervals have grown to their steady value.

Simulation (scheduler/devtools/gossip_sim.py): 1,000 and 10,000 nodes, sharded, its per-message costs taken from the
N = 20 run above.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import pctl
from mesh.control import ControlError
from scheduler.devtools.localmesh import NodeProc, make_nodes, sees_all, wait_for

SIZES = (5, 10, 20, 40)
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
CHANGES = 20
IDLE_WINDOW_S = 20.0
SETTLE_S = 60.0  # after convergence: refresh intervals grow (doubling: 2, 4, .. 32, 40 s at N=40) to steady
MISS_AFTER_S = 30.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gossip_stats(nodes: list[NodeProc]) -> dict[str, dict]:
    return {nd.peer_id: nd.call("status")["gossip"] for nd in nodes}


def _one_change(src: NodeProc, others: list[NodeProc], value: str) -> float | None:
    """Seconds until every other node shows `value` in src's labels; None if some node did not within the cap."""
    t0 = time.time()
    src.call("label", set={"bench": value})
    pending = {nd.peer_id: nd for nd in others}
    arrival: dict[str, float] = {}
    while pending:
        for pid, nd in list(pending.items()):
            try:
                peers = nd.call("peers")
            except ControlError:  # an overloaded node answers late: ask it again
                continue
            t = time.time()
            peer = next((p for p in peers if p["peer_id"] == src.peer_id), None)
            if peer and peer["labels"].get("bench") == value:
                arrival[pid] = max(t0, t - peer["age_s"])
                del pending[pid]
        if time.time() - t0 > MISS_AFTER_S:
            return None
        time.sleep(0.05)
    return max(arrival.values()) - t0


@contextmanager
def _mesh(root: Path, n: int) -> Iterator[list[NodeProc]]:
    """n nodes, node 0 the bootstrap of the rest, with long start-up deadlines (on a loaded 2-core machine, 40
    Python processes importing libp2p at once take minutes); every node is killed on the way out, on every path."""
    nodes = make_nodes(root, n, ["--devices", "none", "--metrics-listen", "off"])
    try:
        nodes[0].start()
        nodes[0].wait_up(timeout=600)
        for nd in nodes[1:]:
            nd.start([nodes[0].multiaddr])
        for nd in nodes:
            nd.wait_up(timeout=600)
        wait_for(lambda: sees_all(nodes), 600, f"{n} nodes to see each other", interval=1.0)
        yield nodes
    finally:
        for nd in nodes:
            nd.kill()


def measure(n: int) -> dict:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix=f"gpumesh-bench-gossip{n}-") as root, _mesh(Path(root), n) as nodes:
        time.sleep(SETTLE_S)
        lat, misses = [], 0
        for i in range(CHANGES):
            src = nodes[i % n]
            took = _one_change(src, [nd for nd in nodes if nd is not src], f"v{i}")
            if took is None:
                misses += 1
                took = MISS_AFTER_S  # counted at the cap: p99 then shows it rather than the run dying
            lat.append(took)
        time.sleep(2.0)  # the last change's traffic is over
        stats0, t0 = _gossip_stats(nodes), time.monotonic()
        cpu0 = {nd.process.pid: _cpu_s(nd.process.pid) for nd in nodes}
        time.sleep(IDLE_WINDOW_S)  # a benchmark measuring idle CPU over a window, not a test
        dt = time.monotonic() - t0
        cpu = [(_cpu_s(pid) - c) / dt * 100 for pid, c in cpu0.items()]
        stats1 = _gossip_stats(nodes)
        msgs = [(stats1[p]["messages_received"] - stats0[p]["messages_received"]) / dt for p in stats0]
        adverts = [(stats1[p]["adverts_received"] - stats0[p]["adverts_received"]) / dt for p in stats0]
        return {"p50_s": statistics.median(lat), "p99_s": pctl(lat, 0.99), "misses": misses,
                "idle_cpu_pct": statistics.mean(cpu), "idle_cpu_pct_max": max(cpu),
                "msgs_per_s_per_node": statistics.mean(msgs), "adverts_per_s_per_node": statistics.mean(adverts),
                "refresh_interval_s": statistics.median(s["refresh_interval_s"] for s in stats1.values()),
                "deltas_sent": sum(s["adverts_sent"]["delta"] for s in stats1.values()),
                "load_avg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}


def measure_all(sizes=SIZES) -> dict[str, dict]:
    """The real-process part. `GPUMESH_BENCH_GOSSIP_REAL=FILE` takes it from FILE instead, as written earlier by
    `python -m bench.gossip FILE N...` (each size stamped with its time and load): on a machine shared with
    other work, the 40-process runs can then be made when it is quietest."""
    path = os.environ.get("GPUMESH_BENCH_GOSSIP_REAL")
    if path:
        real = json.loads(Path(path).read_text())
        return {str(n): real[str(n)] for n in sizes}
    return {str(n): {**measure(n), "measured_at": _stamp()} for n in sizes}


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def run() -> dict:
    from scheduler.devtools import gossip_sim

    per = measure_all()
    calib = gossip_sim.Calibration.from_bench(per["20"])
    sims = {n: gossip_sim.run(gossip_sim.SimConfig(nodes=n, calibration=calib)) for n in (5, 10, 20, 40)}
    for n in (1000, 10_000):
        sims[n] = gossip_sim.run(gossip_sim.SimConfig(nodes=n, calibration=calib, warmup_s=30, duration_s=60))
    r = lambda x, k=4: round(x, k)  # noqa: E731
    result = {
        "convergence_p99_s": {k: r(v["p99_s"]) for k, v in per.items()},
        "convergence_p50_s": {k: r(v["p50_s"]) for k, v in per.items()},
        "changes_not_seen_by_all_within_30s": {k: v["misses"] for k, v in per.items()},
        "idle_cpu_pct": {k: r(v["idle_cpu_pct"], 2) for k, v in per.items()},
        "idle_cpu_pct_max_node": {k: r(v["idle_cpu_pct_max"], 2) for k, v in per.items()},
        "msgs_per_s_per_node": {k: r(v["msgs_per_s_per_node"], 3) for k, v in per.items()},
        "adverts_per_s_per_node": {k: r(v["adverts_per_s_per_node"], 3) for k, v in per.items()},
        "refresh_interval_s": {k: r(v["refresh_interval_s"], 2) for k, v in per.items()},
        "load_avg_1m_before_after": {k: v["load_avg_1m"] for k, v in per.items()},
        "real_measured_at": {k: v["measured_at"] for k, v in per.items()},
        "changes_per_size": CHANGES,
        "calibration": calib.as_dict(),
        "sim_flat_p99_s": {str(n): r(sims[n]["p99_s"]) for n in (5, 10, 20, 40)},
        "sim_flat_p50_s": {str(n): r(sims[n]["p50_s"]) for n in (5, 10, 20, 40)},
        "sim_flat_msgs_per_s_per_node": {str(n): r(sims[n]["msgs_per_s_per_node"], 3) for n in (5, 10, 20, 40)},
    }
    for n in (1000, 10_000):
        s = sims[n]
        result.update({
            f"sim_{n}_p50_s": r(s["p50_s"]), f"sim_{n}_p99_s": r(s["p99_s"]),
            f"sim_{n}_msgs_per_s_per_node": r(s["msgs_per_s_per_node"], 3),
            f"sim_{n}_msgs_per_s_max_node": r(s["msgs_per_s_max_node"], 3),
            f"sim_{n}_msgs_per_s_relays_mean": r(s["msgs_per_s_relays_mean"], 3),
            f"sim_{n}_unique_per_s_per_node": r(s["unique_per_s_per_node"], 3),
            f"sim_{n}_shards": s["shards"], f"sim_{n}_changes": s["changes"],
            f"sim_{n}_changes_converged": s["changes_converged"],
            f"sim_{n}_summary_age_p99_s": r(s["summary_age_p99_s"], 2),
            f"sim_{n}_false_expiries": s["false_expiries"],
        })
    result["plots"] = [str(Path(f).relative_to(Path(__file__).resolve().parent.parent))
                       for f in gossip_sim.plot(result, sims, DOCS_IMAGES)]
    return result


def table(r: dict) -> list[tuple[str, str]]:
    rows = [(f"N={n}: convergence p50 / p99 (simulated)",
             f"{r['convergence_p50_s'][n] * 1000:.0f} ms / {r['convergence_p99_s'][n] * 1000:.0f} ms "
             f"({r['sim_flat_p50_s'][n] * 1000:.0f} / {r['sim_flat_p99_s'][n] * 1000:.0f} ms)")
            for n in r["convergence_p99_s"]]
    rows += [(f"N={n}: changes not seen by every node within 30 s", str(v))
             for n, v in r["changes_not_seen_by_all_within_30s"].items()]
    rows += [(f"N={n}: idle CPU per node (mean / max)", f"{v:.2f} % / {r['idle_cpu_pct_max_node'][n]:.2f} %")
             for n, v in r["idle_cpu_pct"].items()]
    rows += [(f"N={n}: messages received per node per s (adverts accepted; simulated)",
              f"{v:.2f} ({r['adverts_per_s_per_node'][n]:.2f}; {r['sim_flat_msgs_per_s_per_node'][n]:.2f}), "
              f"refresh every {r['refresh_interval_s'][n]:.1f} s")
             for n, v in r["msgs_per_s_per_node"].items()]
    rows += [(f"N={n}: measured at, load average (1 min) before / after",
              f"{r['real_measured_at'][n]}, {' / '.join(map(str, v))}")
             for n, v in r["load_avg_1m_before_after"].items()]
    for n in ("1000", "10000"):
        rows.append((f"simulation, {n} nodes in {r[f'sim_{n}_shards']} shards: convergence p50 / p99",
                     f"{r[f'sim_{n}_p50_s'] * 1000:.0f} ms / {r[f'sim_{n}_p99_s'] * 1000:.0f} ms "
                     f"({r[f'sim_{n}_changes_converged']} of {r[f'sim_{n}_changes']} changes)"))
        rows.append((f"simulation, {n} nodes: messages received per node per s, mean (first copies) / relays / max",
                     f"{r[f'sim_{n}_msgs_per_s_per_node']:.2f} ({r[f'sim_{n}_unique_per_s_per_node']:.2f}) / "
                     f"{r[f'sim_{n}_msgs_per_s_relays_mean']:.2f} / {r[f'sim_{n}_msgs_per_s_max_node']:.2f}"))
        rows.append((f"simulation, {n} nodes: shard summary age p99", f"{r[f'sim_{n}_summary_age_p99_s']:.1f} s"))
    c = r["calibration"]
    rows.append(("simulation calibration", f"hop {c['hop_s'] * 1000:.1f} ms, {c['cpu_per_msg_s'] * 1000:.2f} ms CPU "
                                           f"per message ({c['source']})"))
    rows.append(("targets", "N=20: p99 < 1 s, all changes seen, idle CPU < 2 %; N=40: p99 < 2 s; "
                            "sim 10,000: p99 < 5 s with <= 10 msgs/s/node"))
    return rows


if __name__ == "__main__":  # python -m bench.gossip FILE N...: the real-process part only, into FILE
    import sys

    out = Path(sys.argv[1])
    done = json.loads(out.read_text()) if out.exists() else {}
    for size in map(int, sys.argv[2:]):
        done[str(size)] = {**measure(size), "measured_at": _stamp()}
        out.write_text(json.dumps(done, indent=1))
        print(size, json.dumps(done[str(size)]), flush=True)
