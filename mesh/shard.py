"""Shards for large meshes: which advert topic a node is on, who relays its shard's summary, what a summary says.

A flat mesh costs each node every advert of every other node. Beyond a few hundred nodes the mesh is cut into
shards of about `SHARD_TARGET` nodes by peer id (the same answer on every node, no coordination): a node gossips
full and delta adverts only on its shard's topic, so its view, its refresh interval and the adverts it receives
are those of one shard.

Summaries travel a two-level tree, so that no node receives more than a few summary messages per interval
whatever the number of shards:
- shards are grouped about sqrt(shards) to a **group** (by shard number). Each shard's first relay (best standing,
  ties by peer id) sits on its group's topic and publishes its `ShardSummary` (per device kind: nodes, devices,
  free slots, queued jobs, best calibrated speed) there once per summary interval;
- each group's **group relay** (the second relay of the group's lowest-numbered shard) sits on the group topic
  and on the top summary topic: once per interval it publishes its group's summaries there as one batch
  (`GroupBatch`), and republishes every summary it knows (the world) on its group topic as one message;
- each shard relay republishes the world on its shard topic as one message per interval.
A relay receives its shard's adverts, ~sqrt(shards) summaries per interval and, for a group relay, one
batch per group per interval: both terms stay small (docs/gossip.md has the arithmetic; scheduler/devtools/gossip_sim.py runs it at 10,000 nodes).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from mesh.advert_schedule import ScheduleConfig
from mesh.membership import MembershipView

SHARD_TARGET = 30  # nodes per shard: its changes (one per node per minute) are then ~0.5/s
# A sharded node's schedule: half the flat refresh budget (a 30-node shard refreshes each node every 60 s). A node
# receives each message about once per mesh peer, up to D_high = 6: (0.5 refreshes + ~0.5 changes) x 6 leaves room
# under 10 msgs/s for the summaries a relay carries.
SHARD_SCHEDULE = ScheduleConfig(refresh_budget=0.5)
RELAYS = 2  # per shard: the shard relay (on its group topic) and a second one (the group relay, in a group's
# lowest-numbered shard; elsewhere the stand-in when the first goes)
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


def group_count(shards: int) -> int:
    """About the square root of the shard count (a relay then receives ~sqrt(shards) summaries per interval from
    its group and a group relay as many batches from the top topic); 1 for a few shards (the group topic is
    then the top topic)."""
    return max(1, round(math.sqrt(shards))) if shards > 6 else 1


def group_of(shard: int, groups: int) -> int:
    return shard % groups


def group_topic(group: int, groups: int) -> str:
    return SUMMARY_TOPIC if groups == 1 else f"{SUMMARY_TOPIC}/group/{groups}/{group}"


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


@dataclass(frozen=True)
class GroupBatch:
    """A group relay's one message per interval on the top topic: the latest summary of each shard of its group."""

    group: int
    relay: str
    summaries: tuple[ShardSummary, ...]


def merge(world: dict[int, ShardSummary], incoming: dict[int, ShardSummary] | tuple[ShardSummary, ...]) -> int:
    """Keep the newer summary of each shard (by its relay's `made_at`); returns how many entries changed."""
    items = incoming.values() if isinstance(incoming, dict) else incoming
    changed = 0
    for s in items:
        cur = world.get(s.shard)
        if cur is None or s.made_at > cur.made_at:
            world[s.shard] = s
            changed += 1
    return changed


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
