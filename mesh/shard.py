"""Shards for large meshes: which advert topic a node is on, who relays its shard's summary, what a summary says.

A flat mesh costs each node every advert of every other node. Beyond a few hundred nodes the mesh is cut into
shards of about `SHARD_TARGET` nodes by peer id (the same answer on every node, no coordination): a node gossips
full and delta adverts only on its shard's topic, so its view, its refresh interval and the adverts it receives
are those of one shard. Each shard's `RELAYS` members with the best standing (ties by peer id) also sit on the
summary topic: every `summary interval` the first of them publishes a `ShardSummary` (per device kind: nodes,
devices, free slots, queued jobs, best calibrated speed) there, and republishes all shards' summaries on its own
shard topic. A coordinator places work on its own shard from full adverts and asks another shard (through its
relays) only when the summaries say it has room. See docs/gossip.md; scheduler/devtools/gossip_sim.py runs it at 10,000.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mesh.membership import MembershipView

SHARD_TARGET = 60  # nodes per shard: the refresh budget (1/s) holds up to max_refresh_s (60 s) x 1/s = 60
RELAYS = 2  # per shard on the summary topic: one publishes, the other takes over when it goes
TOPIC_PREFIX = "/gpumesh/capacity/1"


def shard_count(mesh_size_estimate: int) -> int:
    """Shards for a mesh of about this many nodes: 1 (a flat mesh) up to 1.5 x SHARD_TARGET nodes."""
    return max(1, round(mesh_size_estimate / SHARD_TARGET)) if mesh_size_estimate > SHARD_TARGET * 3 // 2 else 1


def shard_of(peer_id: str, shards: int) -> int:
    h = hashlib.blake2b(peer_id.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % shards


def shard_topic(shard: int, shards: int) -> str:
    return TOPIC_PREFIX if shards == 1 else f"{TOPIC_PREFIX}/shard/{shards}/{shard}"


SUMMARY_TOPIC = f"{TOPIC_PREFIX}/summary"


def relays(view: MembershipView, k: int = RELAYS) -> list[str]:
    """The shard's relays as this view sees them: best standing first, then lowest peer id (every member with
    the same view picks the same ones)."""
    ranked = sorted(view.peers(), key=lambda p: (-view.standing(p.peer_id), p.peer_id))
    return [p.peer_id for p in ranked[:k]]


@dataclass(frozen=True)
class KindSummary:
    nodes: int
    devices: int
    free_slots: int
    queued: int
    best_mulmod_mops: float


@dataclass(frozen=True)
class ShardSummary:
    shard: int
    relay: str  # the peer id that built it (signed by it on the wire)
    made_at: float  # on the relay's clock: receivers use it only to order summaries of one shard
    members: int
    kinds: dict[str, KindSummary]


def summarize(view: MembershipView, shard: int, relay: str, now: float) -> ShardSummary:
    acc: dict[str, list] = {}
    for p in view.peers():
        seen: set[str] = set()
        for d in p.devices():
            a = acc.setdefault(d.kind, [0, 0, 0, 0, 0.0])
            if d.kind not in seen:
                a[0] += 1
                seen.add(d.kind)
            a[1] += 1
            a[2] += d.free_slots
            a[3] += d.queue_depth
            a[4] = max(a[4], d.mulmod_mops)
    return ShardSummary(shard, relay, now, len(view),
                        {k: KindSummary(a[0], a[1], a[2], a[3], a[4]) for k, a in sorted(acc.items())})
