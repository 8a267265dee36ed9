"""Gossip: N real node processes on loopback, and the 1,000/10,000-node simulation calibrated from them.

Real processes (N = 5, 10, 20, 40 by default, all sharing this machine's cores; `--sizes` picks others):
- start-up: node 0, then the rest in batches of `STAGGER` (each batch up before the next starts: 40 Python
  processes importing libp2p at once starve each other on 2 cores), then a bounded wait (`view_wait_s(n)`) for
  every node to see every other. What formed is reported (`view_fraction`: the fraction of (node, peer) pairs
  known); the changes are made either way, and a change some node never sees counts as a miss.
- convergence: time from a capacity change on one node until every other node's view shows it (p50/p99 over
  `CHANGES` changes; each made on the next node in turn, so the change budget of one node is not what is
  measured: tests/test_advert_schedule.py checks that bound). The change is an advert label set through the
  control socket (it changes the advert as a load change would, and goes out as a delta). A node's arrival
  time is read back as (poll time - the peer's advert age), which a later refresh can only make later: the
  figure errs on the slow side. A change not everywhere after `MISS_AFTER_S` counts as a miss, at that value.
- idle CPU per node and messages received per node per second (pubsub messages from peers, duplicates
  included), over `IDLE_WINDOW_S` after the changes: the start-up burst (imports, dials, first adverts) is over
  by then, and refresh intervals have grown to (nearly) their steady value.
- a burst window (N <= 20): `BURST_NODES` nodes make `BURST_CHANGES` changes each, so every node receives
  several times its idle rate. The idle and burst windows at every N give (messages/s, CPU) pairs: their least-squares
  slope is the CPU one message costs a node (`Calibration.fit`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import pctl
from mesh.control import ControlError
from scheduler.devtools.localmesh import NodeProc, make_nodes

SIZES = (5, 10, 20, 40)
SIZES_ENV = "GPUMESH_BENCH_GOSSIP_SIZES"  # e.g. "5,10": what `python -m bench.gossip --sizes 5,10` sets
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
STAGGER = 5
CHANGES = 20


def settle_s(n: int) -> float:
    """After the view formed: every peer that joined cost each node an early full advert from its change budget
    (refilled at 2/n per s); the changes below need one token (two at N=10, four at N=5) on their node."""
    return 20.0 + n


IDLE_WINDOW_S = 10.0
BURST_NODES = 5  # nodes that make changes in the burst window (N <= BURST_MAX_N only: it feeds the calibration)
BURST_CHANGES = 4  # each, within the change budget's burst (8 tokens)
BURST_MAX_N = 20
BURST_GAP_S = 0.3  # longer than the debounce (0.1 s): each change is its own advert
MISS_AFTER_S = 10.0
SIM_LARGE = (1000, 10_000)
SIM_LARGE_S = 40.0  # simulated seconds measured at 1,000 and 10,000 nodes (after a 30 s warm-up)


def view_wait_s(n: int) -> float:
    return 30.0 + 3.0 * n


def sizes() -> tuple[int, ...]:
    raw = os.environ.get(SIZES_ENV, "").strip()
    if raw == "none":
        return ()
    return tuple(int(x) for x in raw.split(",") if x.strip()) or SIZES


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _calls(nodes: list[NodeProc], cmd: str, **kw) -> list:
    out = []
    for nd in nodes:
        for _ in range(3):  # an overloaded node answers late: ask it again
            try:
                out.append(nd.call(cmd, **kw))
                break
            except ControlError:
                time.sleep(0.2)
        else:
            out.append(None)
    return out


def _view_fraction(nodes: list[NodeProc]) -> float:
    ids = {nd.peer_id for nd in nodes}
    known = 0
    for nd, peers in zip(nodes, _calls(nodes, "peers"), strict=True):
        known += len(({p["peer_id"] for p in peers or []} & ids) - {nd.peer_id})
    return known / (len(nodes) * (len(nodes) - 1))


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
            except ControlError:
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
def _mesh(root: Path, n: int) -> Iterator[tuple[list[NodeProc], dict]]:
    """n nodes, started in batches; yields them and what formed. Every node is killed on the way out."""
    nodes = make_nodes(root, n, ["--devices", "none", "--metrics-listen", "off"])
    formed: dict = {}
    try:
        t0 = time.monotonic()
        nodes[0].start()
        nodes[0].wait_up(timeout=300)
        for b in range(1, n, STAGGER):
            batch = nodes[b:b + STAGGER]
            boot = [nodes[0].multiaddr] + ([nodes[b - 1].multiaddr] if b > 1 else [])
            for nd in batch:
                nd.start(boot)
            for nd in batch:
                nd.wait_up(timeout=300)
        formed["started_s"] = round(time.monotonic() - t0, 1)
        deadline = time.monotonic() + view_wait_s(n)
        frac = _view_fraction(nodes)
        while frac < 1.0 and time.monotonic() < deadline:
            time.sleep(2.0)
            frac = _view_fraction(nodes)
        formed.update(view_fraction=round(frac, 4), view_formed_s=round(time.monotonic() - t0, 1))
        yield nodes, formed
    finally:
        for nd in nodes:
            nd.kill()


def _window(nodes: list[NodeProc], act, hold_s: float) -> tuple[list[float], list[float]]:
    """CPU (fraction of one core) and pubsub messages received per second of every node over a window in which
    `act()` runs and then `hold_s` passes."""
    s0 = _calls(nodes, "status")
    c0, t0 = [_cpu_s(nd.process.pid) for nd in nodes], time.monotonic()
    act()
    time.sleep(hold_s)  # a benchmark measuring CPU over a window, not a test
    s1 = _calls(nodes, "status")
    dt = time.monotonic() - t0
    cpu = [(_cpu_s(nd.process.pid) - c) / dt for nd, c in zip(nodes, c0, strict=True)]
    msgs = [(b["gossip"]["messages_received"] - a["gossip"]["messages_received"]) / dt
            for a, b in zip(s0, s1, strict=True) if a and b]
    return cpu, msgs


def _burst(nodes: list[NodeProc]) -> None:
    for k in range(BURST_CHANGES):
        for nd in nodes[:BURST_NODES]:
            try:
                nd.call("label", set={"burst": str(k)})
            except ControlError:
                pass
        time.sleep(BURST_GAP_S)


def measure(n: int) -> dict:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix=f"gpumesh-bench-gossip{n}-") as root, \
            _mesh(Path(root), n) as (nodes, formed):
        time.sleep(settle_s(n))
        lat, misses = [], 0
        for i in range(CHANGES):
            src = nodes[i % n]
            took = _one_change(src, [nd for nd in nodes if nd is not src], f"v{i}")
            if took is None:
                misses += 1
                took = MISS_AFTER_S  # counted at the cap: p99 then shows it
            lat.append(took)
        time.sleep(2.0)  # the last change's traffic is over
        idle_cpu, idle_msgs = _window(nodes, lambda: None, IDLE_WINDOW_S)
        burst_cpu, burst_msgs = _window(nodes, lambda: _burst(nodes), 3.0) if n <= BURST_MAX_N else ([], [])
        stats = [s["gossip"] for s in _calls(nodes, "status") if s]
        return {"p50_s": statistics.median(lat), "p99_s": pctl(lat, 0.99), "misses": misses,
                "convergence_s": [round(x, 4) for x in lat], **formed,
                "idle_cpu_pct": statistics.mean(idle_cpu) * 100, "idle_cpu_pct_max": max(idle_cpu) * 100,
                "msgs_per_s_per_node": statistics.mean(idle_msgs), "msgs_per_s_max_node": max(idle_msgs),
                "burst_cpu_pct": statistics.mean(burst_cpu) * 100 if burst_cpu else None,
                "burst_msgs_per_s": statistics.mean(burst_msgs) if burst_msgs else None,
                "refresh_interval_s": statistics.median(s["refresh_interval_s"] for s in stats),
                "deltas_sent": sum(s["adverts_sent"]["delta"] for s in stats),
                "deltas_without_base": sum(s["deltas_without_base"] for s in stats),
                "peers_expired": sum(s["expired"] for s in stats),
                "load_avg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                "measured_at": _stamp()}


def measure_all(ns: tuple[int, ...], before: dict[str, dict]) -> dict[str, dict]:
    """The real-process records of `ns` measured now; those of other sizes kept from `before` (the previous
    bench/results/gossip.json), each stamped with its time and load average."""
    out = {k: v for k, v in before.items() if int(k) not in ns}
    for n in ns:
        out[str(n)] = measure(n)
        brief = {k: v for k, v in out[str(n)].items() if k != "convergence_s"}
        print(f"gossip N={n}: {json.dumps(brief)}", file=sys.stderr, flush=True)
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def _previous() -> dict[str, dict]:
    path = Path(__file__).resolve().parent / "results" / "gossip.json"
    try:
        real = json.loads(path.read_text()).get("real", {})
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in real.items() if isinstance(v, dict) and "burst_cpu_pct" in v}


def run() -> dict:
    from scheduler.devtools import gossip_sim

    per = measure_all(sizes(), _previous())
    calib = gossip_sim.Calibration.fit(per)
    flat = {int(n): gossip_sim.run(gossip_sim.flat_config(int(n), calib)) for n in per}
    large = {n: gossip_sim.run(gossip_sim.SimConfig(nodes=n, calibration=calib, warmup_s=30.0,
                                                    duration_s=SIM_LARGE_S)) for n in SIM_LARGE}
    r = lambda x, k=4: round(x, k)  # noqa: E731
    ratios = [sims / real for n, v in per.items() if int(n) <= 20 and v["misses"] == 0
              for sims, real in ((flat[int(n)]["p50_s"], v["p50_s"]), (flat[int(n)]["p99_s"], v["p99_s"]))]
    result = {
        "convergence_p99_s": {k: r(v["p99_s"]) for k, v in per.items()},
        "convergence_p50_s": {k: r(v["p50_s"]) for k, v in per.items()},
        "changes_not_seen_by_all": {k: v["misses"] for k, v in per.items()},
        "view_fraction_before_changes": {k: v["view_fraction"] for k, v in per.items()},
        "idle_cpu_pct": {k: r(v["idle_cpu_pct"], 2) for k, v in per.items()},
        "idle_cpu_pct_max_node": {k: r(v["idle_cpu_pct_max"], 2) for k, v in per.items()},
        "msgs_per_s_per_node": {k: r(v["msgs_per_s_per_node"], 3) for k, v in per.items()},
        "msgs_per_s_max_node": {k: r(v["msgs_per_s_max_node"], 3) for k, v in per.items()},
        "refresh_interval_s": {k: r(v["refresh_interval_s"], 2) for k, v in per.items()},
        "load_avg_1m_before_after": {k: v["load_avg_1m"] for k, v in per.items()},
        "real_measured_at": {k: v["measured_at"] for k, v in per.items()},
        "changes_per_size": CHANGES,
        "calibration": calib.as_dict(),
        "sim_flat_p50_s": {str(n): r(s["p50_s"]) for n, s in flat.items()},
        "sim_flat_p99_s": {str(n): r(s["p99_s"]) for n, s in flat.items()},
        "sim_flat_msgs_per_s_per_node": {str(n): r(s["msgs_per_s_per_node"], 3) for n, s in flat.items()},
        # how far the calibrated simulation is from the real N <= 20 runs: max of sim/real and real/sim, p50 and p99
        "sim_vs_real_factor": r(max(max(x, 1 / x) for x in ratios), 3) if ratios else None,
        "real": per,
    }
    for n, s in large.items():
        result.update({
            f"sim_{n}_p50_s": r(s["p50_s"]), f"sim_{n}_p99_s": r(s["p99_s"]),
            f"sim_{n}_msgs_per_s_per_node": r(s["msgs_per_s_per_node"], 3),
            f"sim_{n}_msgs_per_s_max_node": r(s["msgs_per_s_max_node"], 3),
            f"sim_{n}_msgs_per_s_relays_mean": r(s["msgs_per_s_relays_mean"], 3),
            f"sim_{n}_msgs_per_s_relays_max": r(s["msgs_per_s_relays_max"], 3),
            f"sim_{n}_unique_per_s_per_node": r(s["unique_per_s_per_node"], 3),
            f"sim_{n}_shards": s["shards"], f"sim_{n}_groups": s["groups"], f"sim_{n}_changes": s["changes"],
            f"sim_{n}_changes_converged": s["changes_converged"],
            f"sim_{n}_summary_age_p99_s": r(s["summary_age_p99_s"], 2),
            f"sim_{n}_false_expiries": s["false_expiries"],
        })
    result["plots"] = [str(Path(f).relative_to(Path(__file__).resolve().parent.parent))
                       for f in gossip_sim.plot(result, {**flat, **large}, DOCS_IMAGES)]
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    return result


def table(r: dict) -> list[tuple[str, str]]:
    rows = []
    for n in r["convergence_p99_s"]:
        rows += [
            (f"N={n}: convergence p50 / p99 (calibrated simulation)",
             f"{r['convergence_p50_s'][n] * 1000:.0f} ms / {r['convergence_p99_s'][n] * 1000:.0f} ms "
             f"({r['sim_flat_p50_s'][n] * 1000:.0f} / {r['sim_flat_p99_s'][n] * 1000:.0f} ms)"),
            (f"N={n}: changes not seen by every node within {MISS_AFTER_S:g} s; views formed before the changes",
             f"{r['changes_not_seen_by_all'][n]} of {r['changes_per_size']}; "
             f"{r['view_fraction_before_changes'][n] * 100:.1f} % of pairs"),
            (f"N={n}: idle CPU per node (mean / max)",
             f"{r['idle_cpu_pct'][n]:.2f} % / {r['idle_cpu_pct_max_node'][n]:.2f} %"),
            (f"N={n}: messages received per node per s, mean / max (simulated mean)",
             f"{r['msgs_per_s_per_node'][n]:.2f} / {r['msgs_per_s_max_node'][n]:.2f} "
             f"({r['sim_flat_msgs_per_s_per_node'][n]:.2f}), refresh every {r['refresh_interval_s'][n]:.1f} s"),
            (f"N={n}: measured at, load average (1 min) before / after",
             f"{r['real_measured_at'][n]}, {' / '.join(map(str, r['load_avg_1m_before_after'][n]))}"),
        ]
    for n in SIM_LARGE:
        p = f"sim_{n}_"
        rows += [
            (f"simulation, {n:,} nodes in {r[p + 'shards']} shards, {r[p + 'groups']} groups: convergence p50 / p99",
             f"{r[p + 'p50_s'] * 1000:.0f} ms / {r[p + 'p99_s'] * 1000:.0f} ms "
             f"({r[p + 'changes_converged']} of {r[p + 'changes']} changes)"),
            (f"simulation, {n:,} nodes: messages received per node per s, mean / busiest node / relays mean / "
             f"busiest relay", f"{r[p + 'msgs_per_s_per_node']:.2f} / {r[p + 'msgs_per_s_max_node']:.2f} / "
                               f"{r[p + 'msgs_per_s_relays_mean']:.2f} / {r[p + 'msgs_per_s_relays_max']:.2f}"),
            (f"simulation, {n:,} nodes: shard summary age p99", f"{r[p + 'summary_age_p99_s']:.0f} s"),
        ]
    c = r["calibration"]
    rows.append(("simulation calibration", f"hop {c['hop_s'] * 1000:.1f} ms, {c['cpu_per_msg_s'] * 1000:.2f} ms CPU "
                                           f"per message ({c['source']})"))
    if r["sim_vs_real_factor"] is not None:
        rows.append(("calibrated simulation vs real, N <= 20 (p50 and p99)",
                     f"within a factor {r['sim_vs_real_factor']:.2f}"))
    rows.append(("load average (1 min) at the end", str(r["load_avg_1m_end"])))
    rows.append(("targets", "N=20: p99 < 1 s, all changes seen, idle CPU < 2 %; N=40: p99 < 2 s; "
                            "sim 10,000: p99 < 5 s with <= 10 msgs/s on every node"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gossip", description=(
        "The gossip benchmark (what `make bench B=gossip` runs), optionally on selected sizes only: the sizes "
        "not run keep their earlier measurement from bench/results/gossip.json."))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="comma-separated node counts to run as real processes (default: %(default)s); 'none': "
                         "only refit the calibration and rerun the simulation from the stored real runs")
    a = ap.parse_args(argv)
    os.environ[SIZES_ENV] = a.sizes
    from bench.__main__ import main as bench_main

    return bench_main(["gossip"])


if __name__ == "__main__":
    sys.exit(main())
