"""When a node publishes its advert, and whether a full state or a delta: a pure state machine (time passed in).

The cost of gossip is set by how many adverts each node *receives* per second, and every node receives every
advert of its view. So both kinds of publishing share a budget across the view instead of being per node:

- **Refresh** (full state, proof of life): every `refresh_interval(n)` = n / `refresh_budget` seconds, clamped
  to [`min_refresh_s`, `max_refresh_s`]: with n peers each refreshing that often, a node receives about
  `refresh_budget` refreshes per second whatever n is. The interval goes out in the advert (`interval_s`), and
  receivers expire a peer after a few of *its* intervals (MembershipView `ttl_intervals`), so the TTL follows.
  It grows at most `MAX_GROWTH` times per refresh, so a peer never goes quiet for longer than it announced
  by more than that factor.
- **Change** (usually a delta): a change is published after `debounce_s` (a burst of changes becomes one advert),
  paid from a token bucket refilled at `change_budget / n` per second holding `change_burst` tokens: an isolated
  change goes out at once, sustained churn on n nodes adds at most `change_budget` adverts per second to what a
  node receives. A refresh due anyway carries the pending change.
- **A new peer** in the view wants our full state (it cannot apply deltas against a base it never saw): a
  peer joining asks for an early full advert, paid from the same bucket.

Limits beyond `max_refresh_s` (about `refresh_budget * max_refresh_s` peers per view) are the job of sharding
(docs/gossip.md): a view is one shard, not the whole mesh.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

MAX_GROWTH = 2.0  # the refresh interval at most doubles from one refresh to the next


class Publish(Enum):
    FULL = "full"  # whole state: refresh, first advert, or for a new peer
    CHANGE = "change"  # something changed since the last advert: a delta against the last full, if it can be


@dataclass(frozen=True)
class ScheduleConfig:
    debounce_s: float = 0.1
    min_refresh_s: float = 2.0
    max_refresh_s: float = 60.0
    refresh_budget: float = 1.0  # refresh adverts per second a node receives from its whole view
    change_budget: float = 2.0  # change adverts per second a node receives from its whole view, sustained
    change_burst: float = 8.0  # changes a quiet node may publish back to back (a node with 60 peers earns one per 30 s)
    jitter: float = 0.1  # refreshes are spread over +-10 % of the interval so that nodes do not synchronise

    def __post_init__(self) -> None:
        if not (0 < self.min_refresh_s <= self.max_refresh_s):
            raise ValueError("need 0 < min_refresh_s <= max_refresh_s")
        if self.refresh_budget <= 0 or self.change_budget <= 0 or self.change_burst < 1:
            raise ValueError("budgets must be positive and change_burst at least 1")
        if not (0 <= self.jitter < 0.5) or self.debounce_s < 0:
            raise ValueError("jitter must be in [0, 0.5) and debounce_s >= 0")

    def refresh_interval(self, view_size: int) -> float:
        """Seconds between full refreshes for a view of `view_size` peers (this node included)."""
        return min(self.max_refresh_s, max(self.min_refresh_s, max(1, view_size) / self.refresh_budget))


class AdvertSchedule:
    """Call `changed`/`peer_joined` when they happen, `due` to learn when to wake, `poll` when woken: it says
    what to publish now (and counts it as published) or None."""

    def __init__(self, config: ScheduleConfig, now: float, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._next_refresh = now  # the first advert goes out at once
        self.interval_s = config.min_refresh_s  # the interval announced in the last full advert
        self._pending_since: float | None = None  # a change not yet published
        self._want_full = False
        self._tokens = config.change_burst
        self._tokens_at = now

    @classmethod
    def steady(cls, config: ScheduleConfig, now: float, view_size: int, rng: random.Random) -> AdvertSchedule:
        """A schedule that has long been running in a view of this size: its interval grown, its next refresh
        at a random point of it (the many-node simulation starts from here)."""
        s = cls(config, now, rng)
        s.interval_s = config.refresh_interval(view_size)
        s._next_refresh = now + rng.random() * s.interval_s
        return s

    @property
    def pending(self) -> bool:
        """A change waits to be published (more changes before then do not move its time)."""
        return self._pending_since is not None

    def changed(self, now: float) -> None:
        if self._pending_since is None:
            self._pending_since = now

    def peer_joined(self, now: float) -> None:
        """A peer we had not seen: it needs our full state, sooner than the next refresh."""
        self._want_full = True
        self.changed(now)

    def _refill(self, now: float, view_size: int) -> None:
        rate = self.config.change_budget / max(1, view_size)
        if now > self._tokens_at:
            self._tokens = min(self.config.change_burst, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = max(self._tokens_at, now)

    def _change_due(self, now: float, view_size: int) -> float | None:
        if self._pending_since is None:
            return None
        self._refill(now, view_size)
        rate = self.config.change_budget / max(1, view_size)
        token_at = now if self._tokens >= 1 else now + (1 - self._tokens) / rate
        return max(self._pending_since + self.config.debounce_s, token_at)

    def due(self, now: float, view_size: int) -> float:
        """The time at which `poll` has something to publish (if nothing else happens before)."""
        change = self._change_due(now, view_size)
        return self._next_refresh if change is None else min(self._next_refresh, change)

    def poll(self, now: float, view_size: int) -> Publish | None:
        if now >= self._next_refresh:
            self._refresh_done(now, view_size)
            return Publish.FULL
        change = self._change_due(now, view_size)
        if change is None or now < change:
            return None
        self._tokens -= 1
        self._pending_since = None
        if self._want_full:
            self._want_full = False
            return Publish.FULL
        return Publish.CHANGE

    def _refresh_done(self, now: float, view_size: int) -> None:
        self._pending_since, self._want_full = None, False
        target = min(self.config.refresh_interval(view_size), self.interval_s * MAX_GROWTH)
        self.interval_s = target
        # announce the longest wait (interval + jitter); wait a random part of the jitter below it
        self._next_refresh = now + target * (1 + self.config.jitter * (self._rng.random() * 2 - 1))

    @property
    def announced_interval_s(self) -> float:
        """The longest this node waits between full adverts, as it announces it (interval plus jitter)."""
        return self.interval_s * (1 + self.config.jitter)
