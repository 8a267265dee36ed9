"""What the scheduler simulation (`sim.py`) is given and what it reports.

`SimConfig` is a scenario: nodes and gateways, jobs and their mix, gossip loss and delays, churn (kills,
coordinator restarts), device slots and queue bounds, and the Placer's settings. `SimReport` is what a run
counts (outcomes and their reasons, offers, retries, leases, queue depths, latency by class) and the invariants
it checks (`violations()`): every job has exactly one outcome and at most one delivered result; every state
change is a move of the lifecycle table (`scheduler.core.lifecycle`); every delivered result is the right one;
no offer goes to a peer that had expired from that coordinator's view, nor to a dead node after its adverts
must have expired; no accepted job is unknown to its restarted coordinator; no device queue exceeds its bound.
`summary()` prints it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SimConfig:
    nodes: int = 200
    jobs: int = 5000
    seed: int = 1
    gateways: int = 40  # nodes clients submit to (never killed); every node is a worker
    kill_fraction: float = 0.10  # of all nodes (all are workers), killed during the run (never a gateway)
    silent_kill_fraction: float = 0.5  # of the kills: no connection reset (found by lease expiry)
    gossip_loss: float = 0.2
    gossip_delay: tuple[float, float] = (0.005, 0.15)
    msg_delay: tuple[float, float] = (0.0005, 0.004)
    advert_interval: float = 1.0
    ttl: float = 3.0
    lease_s: float = 3.0
    claim_timeout_s: float = 1.0
    arrival_s: float = 10.0  # jobs arrive uniformly over this time
    kill_window: tuple[float, float] = (0.2, 0.7)  # kills happen in this part of the arrival time
    coordinator_restarts: int = 2  # gateways killed (-9) and restarted from their journal (SQLite, in memory)
    restart_after_s: float = 2.0
    cancel_fraction: float = 0.01
    realtime_fraction: float = 0.05
    interactive_fraction: float = 0.25
    slots: int = 2  # per GPU
    max_queue: int = 8  # per device
    tick_s: float = 0.1
    max_sim_s: float = 600.0
    placer: dict[str, Any] = field(default_factory=dict)  # Placer keyword arguments (d, slack, jitter, ...)


@dataclass
class SimReport:
    cfg: SimConfig
    jobs: int = 0
    outcomes: Counter = field(default_factory=Counter)  # final state (or "refused") per job
    refused_reasons: Counter = field(default_factory=Counter)
    failed_reasons: Counter = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)  # jobs without an outcome
    multiple: list[str] = field(default_factory=list)  # jobs with more than one outcome
    double_delivered: list[str] = field(default_factory=list)
    illegal_transitions: list[str] = field(default_factory=list)  # state changes the lifecycle table refuses
    wrong_results: list[str] = field(default_factory=list)
    offers: int = 0
    offers_after_expiry: int = 0  # to a peer expired from (or absent in) that coordinator's view
    offers_to_dead_after_expiry: int = 0  # to a dead node, later than its last advert could have kept it
    offers_to_dead: int = 0  # (allowed: before the view could know)
    retries: int = 0
    duplicates_dropped: int = 0
    claims_rejected: int = 0
    claims_timed_out: int = 0
    leases_acquired: int = 0
    jobs_on_leases: int = 0  # sent on a slot lease: no placement, no claim
    leases_revoked: int = 0
    deadline_misses: int = 0
    killed: int = 0
    restarts: int = 0
    restored_unfinished: int = 0  # jobs a restarted coordinator placed again from its journal
    restored_finished: int = 0  # finished jobs it still answers for
    lost_by_restart: list[str] = field(default_factory=list)  # resubmitted after a restart, unknown there
    max_queue: int = 0  # deepest device queue seen (sampled, and at every enqueue)
    mean_queue: float = 0.0  # mean device queue depth over samples (live devices)
    mean_queue_busy: float = 0.0  # mean over samples where the mesh had any queue
    jobs_per_slot_max: float = 0.0
    jobs_per_slot_mean: float = 0.0
    sim_time_s: float = 0.0
    wall_s: float = 0.0
    events: int = 0
    gossip_delivered: int = 0
    gossip_lost: int = 0
    latency_p50_s: dict[str, float] = field(default_factory=dict)
    latency_p99_s: dict[str, float] = field(default_factory=dict)

    def violations(self) -> list[str]:
        v = []
        if self.missing:
            v.append(f"{len(self.missing)} jobs without an outcome (e.g. {self.missing[:3]})")
        if self.multiple:
            v.append(f"{len(self.multiple)} jobs with several outcomes (e.g. {self.multiple[:3]})")
        if self.illegal_transitions:
            v.append(f"{len(self.illegal_transitions)} state changes outside the lifecycle table "
                     f"(e.g. {self.illegal_transitions[:3]})")
        if self.double_delivered:
            v.append(f"{len(self.double_delivered)} jobs with two delivered results")
        if self.wrong_results:
            v.append(f"{len(self.wrong_results)} wrong results (e.g. {self.wrong_results[:3]})")
        if self.offers_after_expiry:
            v.append(f"{self.offers_after_expiry} offers to peers expired from the coordinator's view")
        if self.offers_to_dead_after_expiry:
            v.append(f"{self.offers_to_dead_after_expiry} offers to dead nodes after their expiry")
        if self.lost_by_restart:
            v.append(f"{len(self.lost_by_restart)} accepted jobs unknown to their restarted coordinator")
        if self.max_queue > self.cfg.max_queue:
            v.append(f"a device queue reached {self.max_queue} > bound {self.cfg.max_queue}")
        return v

    def summary(self) -> str:
        c = self.cfg
        o = self.outcomes
        rows = [
            ("nodes / gateways / killed", f"{c.nodes} / {c.gateways} / {self.killed} "
                                          f"({round(self.killed * c.silent_kill_fraction)} silent)"
                                          + (f", {self.restarts} coordinators restarted from their journal "
                                             f"({self.restored_unfinished} jobs resumed, {self.restored_finished} "
                                             f"finished ones still served)" if self.restarts else "")),
            ("gossip", f"loss {c.gossip_loss:.0%}, delay {c.gossip_delay[0] * 1000:.0f}-{c.gossip_delay[1] * 1000:.0f} ms, "
                       f"{self.gossip_delivered} adverts delivered, {self.gossip_lost} lost"),
            ("jobs", f"{self.jobs}"),
            ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(o.items()))),
            ("refused (why)", ", ".join(f"{k}: {v}" for k, v in self.refused_reasons.most_common(3)) or "-"),
            ("failed (why)", ", ".join(f"{k}: {v}" for k, v in self.failed_reasons.most_common(3)) or "-"),
            ("jobs without / with several outcomes", f"{len(self.missing)} / {len(self.multiple)}"),
            ("wrong results / double deliveries", f"{len(self.wrong_results)} / {len(self.double_delivered)}"),
            ("retries (attempts lost, placed again)", f"{self.retries}"),
            ("duplicate/stale results dropped", f"{self.duplicates_dropped}"),
            ("offers / rejected / timed out", f"{self.offers} / {self.claims_rejected} / {self.claims_timed_out}"),
            ("slot leases acquired / jobs sent on them / revoked",
             f"{self.leases_acquired} / {self.jobs_on_leases} / {self.leases_revoked}"),
            ("deadline misses after acceptance", f"{self.deadline_misses}"),
            ("placements after expiry", f"{self.offers_after_expiry} (offers to dead nodes: {self.offers_to_dead} "
                                        f"before expiry, {self.offers_to_dead_after_expiry} after)"),
            ("device queue max / mean (busy mean)", f"{self.max_queue} / {self.mean_queue:.2f} ({self.mean_queue_busy:.2f}), "
                                                    f"bound {c.max_queue}"),
            ("jobs per slot max / mean", f"{self.jobs_per_slot_max:.1f} / {self.jobs_per_slot_mean:.1f}"),
            ("latency p50 / p99 by class", ", ".join(
                f"{k} {self.latency_p50_s[k] * 1000:.0f}/{self.latency_p99_s[k] * 1000:.0f} ms"
                for k in sorted(self.latency_p50_s))),
            ("simulated / wall time", f"{self.sim_time_s:.1f} s / {self.wall_s:.1f} s ({self.events} events)"),
        ]
        w = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(w)}  {v}" for k, v in rows]
        bad = self.violations()
        lines.append(f"{'invariants'.ljust(w)}  " + ("OK" if not bad else "VIOLATED: " + "; ".join(bad)))
        return "\n".join(lines)


__all__ = ["SimConfig", "SimReport"]
