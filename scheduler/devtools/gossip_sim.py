"""Gossip at 1,000 and 10,000 nodes: the real advert schedule, delta codec, membership view and shard code over a
simulated gossipsub whose per-message costs come from the real-process benchmark (bench/gossip.py).

What is real: every node runs `AdvertSchedule` (when to publish, full or delta), `advert_delta.diff` (the delta
it sends), `MembershipView.apply`/`expire` (what a receiver keeps; TTL from the announced interval) and
`mesh.shard` (which shard, which relays, the summaries). Adverts are the real `Advert`/`AdvertDelta` objects;
only their signatures are skipped (their cost is in the calibrated per-message cost).

What is simulated: gossipsub. Each topic's members form a random mesh of degree about D (as gossipsub's
GRAFT/PRUNE keep it between D_low and D_high); a message travels the mesh, every node forwarding it once, on its
first copy, to its mesh peers except the one it came from and the origin; each copy costs the receiver
`cpu_per_msg_s` of a single CPU (a FIFO queue: a busy node delays what passes through it) and each hop takes a
lognormal time around `hop_s`. Duplicates are counted as received messages: they cost a decrypt and a parse.

Workload: each node's load changes as a Poisson process (mean `change_every_s`); a change is one device's free
slots flipping. Convergence of a change: until every member of the node's shard (the nodes that hold it in their
view and place work on it) has applied an advert carrying it. Other shards learn of it through the summaries:
their age is reported separately.

`python -m scheduler.devtools.gossip_sim --nodes 10000` prints a summary; `--plot DIR` writes the PNGs of docs/gossip.md.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mesh import advert_delta, shard
from mesh.advert import Advert, DeviceAdvert
from mesh.advert_schedule import AdvertSchedule, Publish, ScheduleConfig
from mesh.membership import Joined, MembershipView

KEY = b"k" * 32
STORED = Path(__file__).resolve().parents[2] / "bench" / "results" / "gossip.json"
TTL_INTERVALS = 3.0
SUMMARY_LEAD = 4  # intervals: a summary passes three periodic steps (group, top, shard) to reach every node
EXPIRE_EVERY_S = 10.0  # the node checks every second; an expiry found later here is still counted


@dataclass
class Calibration:
    """Per-message costs of the real stack (py-libp2p gossipsub, noise, yamux, our codec), on one core."""

    hop_s: float = 0.02  # median time of one gossipsub hop: write, noise, yamux, read, decode, forward
    hop_sigma: float = 0.5  # lognormal spread of a hop
    cpu_per_msg_s: float = 0.002  # CPU per message received (duplicates included)
    loss: float = 0.0  # per copy
    source: str = "defaults"

    @classmethod
    def fit(cls, real: dict[str, dict], max_n: int = 20) -> Calibration:
        """Fit to the real-process runs of `bench.gossip.measure` with at most `max_n` nodes and no misses:

        - `cpu_per_msg_s`: every run gives two (messages received per s, CPU) pairs per node on average, an idle
          window and a burst window; the least-squares slope of CPU over messages across all of them is the
          CPU one message costs (the intercept is the node's timers and heartbeats). If the slope is not
          positive (noise swamping it), the idle CPU over the idle messages, an upper bound.
        - `hop_s`: this simulation's flat-mesh p50 at each N is close to linear in the hop time; the hop time
          minimising the squared difference from the measured p50 over those N (two probes per N).
        """
        runs = {int(n): r for n, r in real.items() if int(n) <= max_n and r["misses"] == 0} or \
            {int(n): r for n, r in real.items()}
        pairs = [(r[m], r[c] / 100) for r in runs.values()
                 for m, c in (("msgs_per_s_per_node", "idle_cpu_pct"), ("burst_msgs_per_s", "burst_cpu_pct"))
                 if r.get(m) is not None]
        xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else 0.0
        if slope > 0:
            cpu, how = slope, f"least-squares slope over {len(xs)} windows, intercept {(my - slope * mx) * 100:.2f} %"
        else:
            cpu = statistics.mean(r["idle_cpu_pct"] / 100 / max(r["msgs_per_s_per_node"], 1e-9) for r in runs.values())
            how = "idle CPU / idle messages (the slope was not positive)"
        h0, h1 = 0.01, 0.04
        num = den = 0.0
        for n, r in runs.items():
            p0, p1 = (run(flat_config(n, cls(hop_s=h, cpu_per_msg_s=cpu)))["p50_s"] for h in (h0, h1))
            b = (p1 - p0) / (h1 - h0)
            num += b * (r["p50_s"] - (p0 - b * h0))
            den += b * b
        hop = max(0.001, num / den) if den > 0 else cls.hop_s
        return cls(hop_s=round(hop, 5), cpu_per_msg_s=round(cpu, 6),
                   source=f"fit to real N={','.join(map(str, sorted(runs)))}: CPU {how}; hop from p50")

    @classmethod
    def stored(cls, path: Path = STORED) -> Calibration:
        """The calibration `make bench B=gossip` wrote to bench/results/gossip.json; the defaults without one."""
        try:
            return cls(**json.loads(path.read_text())["calibration"])
        except (OSError, ValueError, KeyError, TypeError):
            return cls()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def flat_config(n: int, calibration: Calibration) -> SimConfig:
    """A flat mesh of n nodes as the real-process bench runs it, with enough changes for a p99."""
    return SimConfig(nodes=n, shards=1, calibration=calibration, warmup_s=60.0, duration_s=900.0, seed=7)


@dataclass
class SimConfig:
    nodes: int = 1000
    seed: int = 1
    warmup_s: float = 60.0
    duration_s: float = 120.0  # measured after the warm-up
    tail_s: float = 10.0  # run on after it, so that the last changes can arrive
    change_every_s: float = 60.0  # mean time between load changes of one node
    degree: int = 4  # gossipsub D, as mesh.gossip.GossipTuning (tests/test_gossip_sim.py checks they agree)
    shards: int | None = None  # None: mesh.shard.shard_count(nodes)
    summary_interval_s: float = 60.0
    schedule: ScheduleConfig | None = None  # None: ScheduleConfig() flat, mesh.shard.SHARD_SCHEDULE sharded
    calibration: Calibration = field(default_factory=Calibration)


@dataclass
class _Change:
    origin: int
    at: float
    seq: int = -1  # the advert that carries it, once published
    waiting: int = 0  # shard members that have not applied it yet
    last: float = 0.0  # when the last of them did
    seen: set[int] = field(default_factory=set)


class _Node:
    def __init__(self, idx: int, shard_no: int, rng: random.Random) -> None:
        self.idx = idx
        self.peer_id = f"node{idx:05d}"
        self.shard = shard_no
        self.free = 1
        self.seq = 1
        self.busy_until = -math.inf  # the summary tree starts before t = 0
        self.token = 0
        self.pending: list[_Change] = []
        self.view: MembershipView
        self.schedule: AdvertSchedule
        self.last_full: Advert
        self.world: dict[int, shard.ShardSummary] = {}

    def advert(self, now: float) -> Advert:
        dev = DeviceAdvert("0:0", "gpu", "sim", "sim", 8, 8 << 30, True, True, 300.0, 1000.0, 1, self.free,
                           1 - self.free)
        return Advert(self.peer_id, KEY, self.seq, now, data_addr=f"{self.peer_id}:4002", devices=(dev,),
                      interval_s=self.schedule.announced_interval_s)


class _Topic:
    """A gossipsub topic: its members and their mesh links."""

    def __init__(self, members: list[int], degree: int, rng: random.Random) -> None:
        self.members = members
        self.adj: dict[int, list[int]] = {m: [] for m in members}
        n = len(members)
        if n < 2:
            return
        d = min(degree, n - 1)
        links: dict[int, set[int]] = {m: set() for m in members}
        order = members[:]
        rng.shuffle(order)
        for u in order:
            tries = 0
            while len(links[u]) < d and tries < 50:
                tries += 1
                v = order[rng.randrange(n)]
                if v != u and v not in links[u] and len(links[v]) < d + 2:  # D_high
                    links[u].add(v)
                    links[v].add(u)
        self.adj = {m: sorted(links[m]) for m in members}


class GossipSim:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.now = 0.0  # the summary tree runs from a negative time (see run)
        self._q: list[tuple[float, int, Callable, tuple]] = []
        self._n = 0
        self.t0, self.t1 = cfg.warmup_s, cfg.warmup_s + cfg.duration_s
        n = cfg.nodes
        self.shards = cfg.shards or shard.shard_count(n)
        self.schedule = cfg.schedule or (shard.SHARD_SCHEDULE if self.shards > 1 else ScheduleConfig())
        self.nodes = [_Node(i, 0, self.rng) for i in range(n)]
        for nd in self.nodes:
            nd.shard = shard.shard_of(nd.peer_id, self.shards)
        by_shard: dict[int, list[int]] = {}
        for nd in self.nodes:
            by_shard.setdefault(nd.shard, []).append(nd.idx)
        self.topics = {s: _Topic(m, cfg.degree, self.rng) for s, m in sorted(by_shard.items())}
        cal = cfg.calibration
        # hop times drawn once (a pool a few times larger than a topic's links, walked in order)
        self._hops = [self.rng.lognormvariate(math.log(cal.hop_s), cal.hop_sigma) for _ in range(65_536)]
        self._hop_i = 0
        self.received = [0] * n  # messages received in the measured window, duplicates included
        self.unique = [0] * n  # of which first copies
        self.changes: list[_Change] = []
        self.open: dict[int, list[_Change]] = {}
        self.published = {"full": 0, "delta": 0, "summary": 0, "batch": 0, "world": 0}
        self.summary_ages: list[float] = []
        self.false_expiries = 0
        self.no_base = 0
        self._build_views()
        self.relays: dict[int, list[int]] = {}  # shard -> its relays, best standing first
        self.groups = shard.group_count(self.shards)
        self.group_relay: dict[int, int] = {}  # group -> the node on the top topic
        self.group_topics: dict[int, _Topic] = {}
        self.top_topic: _Topic | None = None
        if self.shards > 1:
            ids = {nd.peer_id: nd.idx for nd in self.nodes}
            for s, topic in self.topics.items():
                self.relays[s] = [ids[p] for p in shard.relays(self.nodes[topic.members[0]].view)]
            by_group: dict[int, list[int]] = {}
            for s in sorted(self.relays):
                g = shard.group_of(s, self.groups)
                if g not in self.group_relay:  # the group's lowest-numbered shard: its second relay
                    self.group_relay[g] = self.relays[s][min(1, len(self.relays[s]) - 1)]
                by_group.setdefault(g, []).append(self.relays[s][0])
            for g, relays in by_group.items():
                self.group_topics[g] = _Topic(sorted(set(relays) | {self.group_relay[g]}), cfg.degree, self.rng)
            if self.groups > 1:
                self.top_topic = _Topic(sorted(self.group_relay.values()), cfg.degree, self.rng)

    # ---- event queue -----------------------------------------------------------------------------------------
    def at(self, t: float, fn: Callable, *args: Any) -> None:
        self._n += 1
        heapq.heappush(self._q, (t, self._n, fn, args))

    def _build_views(self) -> None:
        """Start in steady state: every node holds its shard's full adverts, its schedule long running."""
        max_ttl = TTL_INTERVALS * self.schedule.max_refresh_s * (1 + self.schedule.jitter)
        for nd in self.nodes:
            size = len(self.topics[nd.shard].members)
            nd.view = MembershipView(nd.peer_id, ttl_s=TTL_INTERVALS * self.schedule.min_refresh_s,
                                     ttl_intervals=TTL_INTERVALS, max_ttl_s=max_ttl)
            nd.schedule = AdvertSchedule.steady(self.schedule, 0.0, size, self.rng)
            nd.last_full = nd.advert(0.0)
        for topic in self.topics.values():
            for m in topic.members:
                for o in topic.members:
                    self.nodes[m].view.apply(self.nodes[o].last_full, 0.0)

    # ---- nodes -----------------------------------------------------------------------------------------------
    def _arm(self, nd: _Node) -> None:
        nd.token += 1
        self.at(max(self.now, nd.schedule.due(self.now, len(nd.view))), self._wake, nd, nd.token)

    def _wake(self, nd: _Node, token: int) -> None:
        if token != nd.token:
            return
        kind = nd.schedule.poll(self.now, len(nd.view))
        if kind is not None:
            self._publish(nd, kind)
        self._arm(nd)

    def _change(self, nd: _Node) -> None:
        nd.free = 1 - nd.free
        c = _Change(nd.idx, self.now)
        nd.pending.append(c)
        if self.t0 <= self.now < self.t1:
            self.changes.append(c)
        nd.schedule.changed(self.now)
        self._arm(nd)
        self.at(self.now + self.rng.expovariate(1 / self.cfg.change_every_s), self._change, nd)

    def _expire(self, nd: _Node) -> None:
        for ev in nd.view.expire(self.now):
            self.false_expiries += 1  # nobody dies in this simulation: every expiry is a refresh that came late
            del ev
        self.at(self.now + EXPIRE_EVERY_S, self._expire, nd)

    def _publish(self, nd: _Node, kind: Publish) -> None:
        nd.seq += 1
        ad = nd.advert(self.now)
        delta = advert_delta.diff(nd.last_full, ad) if kind is Publish.CHANGE else None
        msg: Advert | advert_delta.AdvertDelta
        if delta is not None:
            msg = delta
            self.published["delta"] += 1
        else:
            msg, nd.last_full = ad, ad
            self.published["full"] += 1
        nd.view.apply(ad, self.now)
        members = len(self.topics[nd.shard].members)
        for c in nd.pending:
            c.seq, c.waiting = nd.seq, members - 1
            if c.waiting:
                self.open.setdefault(nd.idx, []).append(c)
        nd.pending = []
        for v, t in self._spread(self.topics[nd.shard], nd.idx):
            self._deliver(self.nodes[v], nd, msg, t)

    def _deliver(self, v: _Node, origin: _Node, msg: Advert | advert_delta.AdvertDelta, t: float) -> None:
        before = v.view.no_base
        ev = v.view.apply(msg, t)
        self.no_base += v.view.no_base - before
        if isinstance(ev, Joined):
            v.schedule.peer_joined(t)
            self._arm(v)
        opened = self.open.get(origin.idx)
        if not opened:
            return
        st = v.view.get(origin.peer_id)
        if st is None:
            return
        for c in opened:
            if c.seq <= st.advert.seq and v.idx not in c.seen:
                c.seen.add(v.idx)
                c.waiting -= 1
                c.last = max(c.last, t)
        self.open[origin.idx] = [c for c in opened if c.waiting > 0]

    # ---- the simulated pubsub ------------------------------------------------------------------------------
    def _spread(self, topic: _Topic, origin: int) -> list[tuple[int, float]]:
        """Arrival (after its CPU queue) of a message at every member it reaches, in the order first reached."""
        cal, rng, hops = self.cfg.calibration, self.rng, self._hops
        done: dict[int, float] = {}
        heap = [(self.now, origin, -1)]
        counting = self.t0 <= self.now < self.t1
        while heap:
            t, u, parent = heapq.heappop(heap)
            if u in done:
                continue
            done[u] = t
            for w in topic.adj[u]:
                if w == parent or w == origin:
                    continue
                if counting:
                    self.received[w] += 1
                if cal.loss and rng.random() < cal.loss:
                    continue
                self._hop_i = (self._hop_i + 1) % len(hops)
                arrive = t + hops[self._hop_i]
                node = self.nodes[w]
                start = max(arrive, node.busy_until)
                node.busy_until = start + cal.cpu_per_msg_s
                if w not in done:
                    heapq.heappush(heap, (node.busy_until, w, u))
        del done[origin]
        if counting:
            for w in done:
                self.unique[w] += 1
        return list(done.items())

    # ---- shard summaries: shard relay -> group topic -> group relay -> top topic, and the world back down ------
    def _summarize(self, s: int) -> None:
        """A shard relay's interval: its shard's summary on the group topic, the world it knows on its shard."""
        relay = self.nodes[self.relays[s][0]]
        summary = shard.summarize(relay.view, s, relay.peer_id, self.now)
        shard.merge(relay.world, (summary,))
        self.published["summary"] += 1
        for v, _t in self._spread(self.group_topics[shard.group_of(s, self.groups)], relay.idx):
            shard.merge(self.nodes[v].world, (summary,))  # applied at once: read only at the next interval
        self._world_down(relay, self.topics[s], sample=True)
        self.at(self.now + self.cfg.summary_interval_s, self._summarize, s)

    def _group_batch(self, g: int) -> None:
        """A group relay's interval: its group's summaries as one batch on the top topic, the world on its group."""
        relay = self.nodes[self.group_relay[g]]
        if self.top_topic is not None:
            batch = tuple(w for k, w in relay.world.items() if shard.group_of(k, self.groups) == g)
            self.published["batch"] += 1
            for v, _t in self._spread(self.top_topic, relay.idx):
                shard.merge(self.nodes[v].world, batch)
        self._world_down(relay, self.group_topics[g], sample=False)
        self.at(self.now + self.cfg.summary_interval_s, self._group_batch, g)

    def _world_down(self, relay: _Node, topic: _Topic, sample: bool) -> None:
        world = dict(relay.world)
        self.published["world"] += 1
        for v, t in self._spread(topic, relay.idx):
            if sample and self.t0 <= t < self.t1 and len(world) == self.shards:
                self.summary_ages.append(t - min(x.made_at for x in world.values()))
            shard.merge(self.nodes[v].world, world)

    # ---- run -------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        wall = time.perf_counter()
        for nd in self.nodes:
            self._arm(nd)
            self.at(self.rng.expovariate(1 / self.cfg.change_every_s), self._change, nd)  # Poisson from t=0
            self.at(self.rng.random() * EXPIRE_EVERY_S, self._expire, nd)
        # the summary tree starts SUMMARY_LEAD intervals before the adverts (t = 0), so that its worlds are in
        # steady state when measuring starts: it reads the views (steady from t = 0) and nothing else
        lead = -SUMMARY_LEAD * self.cfg.summary_interval_s
        for s in self.relays:
            self.at(lead + self.rng.random() * self.cfg.summary_interval_s, self._summarize, s)
        for g in self.group_relay:
            self.at(lead + self.rng.random() * self.cfg.summary_interval_s, self._group_batch, g)
        end = self.t1 + self.cfg.tail_s
        while self._q and self._q[0][0] <= end:
            self.now, _, fn, args = heapq.heappop(self._q)
            fn(*args)
        return self._report(time.perf_counter() - wall)

    def _report(self, wall: float) -> dict[str, Any]:
        done = [c.last - c.at for c in self.changes if c.waiting == 0 and c.seq >= 0]
        rates = [r / self.cfg.duration_s for r in self.received]
        relays = {r[0] for r in self.relays.values()} | set(self.group_relay.values())
        q = statistics.quantiles(done, n=100, method="inclusive") if len(done) >= 2 else [math.nan] * 99
        return {
            "nodes": self.cfg.nodes, "shards": self.shards, "groups": self.groups if self.shards > 1 else 0,
            "shard_size_mean": self.cfg.nodes / self.shards,
            "changes": len(self.changes), "changes_converged": len(done),
            "p50_s": statistics.median(done) if done else math.nan, "p99_s": q[98],
            "convergence_s": done,
            "msgs_per_s_per_node": statistics.mean(rates),
            "unique_per_s_per_node": statistics.mean(u / self.cfg.duration_s for u in self.unique),
            "msgs_per_s_max_node": max(rates),
            "msgs_per_s_relays_mean": statistics.mean(rates[i] for i in relays) if relays else None,
            "msgs_per_s_relays_max": max(rates[i] for i in relays) if relays else None,
            "msgs_per_s_non_relays_max": max(r for i, r in enumerate(rates) if i not in relays),
            "published": dict(self.published),
            "summary_age_p99_s": (statistics.quantiles(self.summary_ages, n=100)[98]
                                  if len(self.summary_ages) >= 2 else math.nan),
            "false_expiries": self.false_expiries, "deltas_without_base": self.no_base,
            "refresh_interval_s": self.schedule.refresh_interval(round(self.cfg.nodes / self.shards)),
            "calibration": self.cfg.calibration.as_dict(), "wall_s": wall,
        }


def run(cfg: SimConfig | None = None) -> dict[str, Any]:
    return GossipSim(cfg or SimConfig()).run()


# the measurement before adverts were scheduled (bench/results/gossip.json of 2026-12-06, the figures)
BEFORE = {"p50_s": {5: 0.1238, 10: 0.3207, 20: 27.8527}, "p99_s": {5: 0.1602, 10: 1.0027, 20: 33.7484}}


def plot(bench: dict, sims: dict[int, dict], outdir: Any) -> list[str]:
    """The PNGs of docs/gossip.md from a bench result (`convergence_*`, `msgs_per_s_per_node` by N) and the
    simulation results by node count (flat small meshes and sharded large ones)."""
    # optional: matplotlib (not a dependency of gpumesh; only this docs helper draws with it)
    import matplotlib

    matplotlib.use("Agg")
    # optional: matplotlib, as above
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    real_n = sorted(int(n) for n in bench["convergence_p99_s"])
    sim_n = sorted(sims)
    big = [n for n in sim_n if sims[n].get("shards", 1) > 1]
    bn = sorted(BEFORE["p99_s"])

    def convergence(ax: Any) -> None:
        ax.plot(bn, [BEFORE["p50_s"][n] for n in bn], "x--", color="grey", label="before: real p50")
        ax.plot(bn, [BEFORE["p99_s"][n] for n in bn], "x-", color="black", label="before: real p99")
        ax.plot(real_n, [bench["convergence_p50_s"][str(n)] for n in real_n], "o--", color="C0", label="real p50")
        ax.plot(real_n, [bench["convergence_p99_s"][str(n)] for n in real_n], "o-", color="C0", label="real p99")
        ax.plot(sim_n, [sims[n]["p50_s"] for n in sim_n], "s--", color="C1", label="calibrated simulation p50")
        ax.plot(sim_n, [sims[n]["p99_s"] for n in sim_n], "s-", color="C1", label="calibrated simulation p99")
        ax.axhline(5.0, color="C3", lw=0.8, ls=":", label="target at 10,000: p99 < 5 s")
        ax.set(xscale="log", yscale="log", xlabel="nodes", ylabel="seconds until every node has a change",
               title="Convergence of a capacity change")

    def messages(ax: Any) -> None:
        ax.plot(real_n, [bench["msgs_per_s_per_node"][str(n)] for n in real_n], "o-", color="C0",
                label="real, copies received: mean")
        ax.plot(sim_n, [sims[n]["msgs_per_s_per_node"] for n in sim_n], "s-", color="C1", label="simulation: mean")
        ax.plot(sim_n, [sims[n]["msgs_per_s_max_node"] for n in sim_n], "s:", color="C1",
                label="simulation: busiest node")
        ax.plot(big, [sims[n]["msgs_per_s_relays_max"] for n in big], "^", color="C2",
                label="simulation: busiest relay")
        flat = [5, 10, 20, 40, 100, 1000, 10000]
        ax.plot(flat, [n / 2 * 3.5 for n in flat], "x--", color="black",
                label="before (every node every 2 s, ~3.5 copies): N/2 x 3.5")
        ax.axhline(10.0, color="C3", lw=0.8, ls=":", label="target: 10 per node per s")
        ax.set(xscale="log", yscale="log", xlabel="nodes", ylabel="messages received per node per second",
               title="Gossip load on each node")

    def cdf(ax: Any) -> None:
        for n in big:
            xs = sorted(sims[n].get("convergence_s") or [])
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=f"{n:,} nodes ({len(xs)} changes)")
        ax.axvline(5.0, color="C3", lw=0.8, ls=":", label="5 s")
        ax.set(xscale="log", xlabel="seconds until every shard member has the change", ylabel="fraction of changes",
               title="Convergence in the simulation (sharded)")

    files = []
    for name, draw in (("convergence", convergence), ("messages", messages), ("cdf", cdf)):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        draw(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"gossip-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scheduler.devtools.gossip_sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=120.0, help="measured seconds of simulated time")
    ap.add_argument("--change-every", type=float, default=60.0, help="mean seconds between a node's load changes")
    ap.add_argument("--shards", type=int, default=None, help=f"default: about one per {shard.SHARD_TARGET} nodes")
    ap.add_argument("--default-calibration", action="store_true",
                    help="use the built-in per-message costs instead of the fit stored in bench/results/gossip.json")
    a = ap.parse_args(argv)
    calib = Calibration() if a.default_calibration else Calibration.stored()
    r = run(SimConfig(nodes=a.nodes, seed=a.seed, duration_s=a.duration, change_every_s=a.change_every,
                      shards=a.shards, calibration=calib))
    r.pop("convergence_s")
    for k, v in r.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
