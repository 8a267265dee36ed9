"""Limits per API token and per peer: rate limits (token buckets), concurrent and queued jobs, device-seconds
per window, and runners crashed per window (a token whose jobs keep crashing runners is refused: crashes count
against the submitter, never the worker). Pure: time is passed in. Every refusal names the limit and how to get under it."""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

REFUSALS = Counter("gpumesh_quota_refusals_total", "Requests refused by a limit", ["limit"])
ACTIVE_BY_TOKEN = Gauge("gpumesh_token_active_jobs", "Jobs not yet finished, per API token", ["token"])
CRASHES_BY_TOKEN = Counter("gpumesh_token_crashes_total", "Runners crashed by jobs of each API token", ["token"])


class QuotaExceeded(Exception):
    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        REFUSALS.labels(limit).inc()


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    level: float = -1.0
    at: float = 0.0

    def take(self, now: float, n: float = 1.0) -> bool:
        if self.level < 0:
            self.level, self.at = self.burst, now
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level >= n:
            self.level -= n
            return True
        return False


@dataclass
class Limits:
    submit_rate: float = 200.0  # submissions per second per token (burst = 2 s worth)
    max_active: int = 1000  # jobs submitted and not finished, per token
    device_seconds: float = 36_000.0  # device-seconds per token per window
    window_s: float = 3600.0
    offer_rate: float = 500.0  # claims per second accepted from one coordinator peer
    max_crashes: int = 10  # runners a token's jobs may crash per window before its submits are refused
    crash_device_s: float = 60.0  # device-seconds charged to the token per crashed runner (a restart costs)
    max_output_bytes: int = 256 << 20  # output of one job, per token (spec-declared sizes checked at submit)


@dataclass
class Quotas:
    limits: Limits = field(default_factory=Limits)
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _offer_buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _active: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _usage: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))  # token -> (time, seconds)
    _used: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # running sum of _usage
    _crashes: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))  # token -> crash times

    def admit_submit(self, token: str, job_id: str, now: float, *, exempt: bool = False) -> None:
        """Raise QuotaExceeded unless `token` may submit another job now; else count it as active.
        `exempt` (admin tokens: the node's operator) skips the limits but is still counted."""
        lim = self.limits
        if exempt:
            self._active[token].add(job_id)
            return
        b = self._buckets.setdefault(token, TokenBucket(lim.submit_rate, 2 * lim.submit_rate))
        if job_id in self._active[token]:
            return  # an idempotent resubmit costs nothing
        if not b.take(now):
            raise QuotaExceeded("submit_rate", f"token {token!r}: more than {lim.submit_rate:g} submissions/s; slow down")
        if len(self._active[token]) >= lim.max_active:
            raise QuotaExceeded("max_active", f"token {token!r} has {lim.max_active} unfinished jobs (the limit); "
                                              "wait for some to finish")
        crashes = self.crashes(token, now)
        if crashes >= lim.max_crashes:
            raise QuotaExceeded("crashes", f"token {token!r}: its jobs crashed {crashes} runners in the last "
                                           f"{lim.window_s:g} s (limit {lim.max_crashes}); fix the failing kernels "
                                           "before submitting more")
        used = self.device_seconds(token, now)
        if used >= lim.device_seconds:
            raise QuotaExceeded("device_seconds", f"token {token!r} used {used:.0f} device-seconds in the last "
                                                  f"{lim.window_s:g} s (limit {lim.device_seconds:g})")
        self._active[token].add(job_id)
        ACTIVE_BY_TOKEN.labels(token or "local").set(len(self._active[token]))

    def check_output(self, token: str, declared: int | None) -> int:
        """The output bound of a job whose spec declares `declared` bytes (None: undeclared); raises
        QuotaExceeded when the spec asks for more than the token may receive. Applies to every token: it
        bounds what the coordinator and the worker hold for one job."""
        cap = self.limits.max_output_bytes
        if declared is not None and declared > cap:
            raise QuotaExceeded("output_bytes", f"token {token!r}: the spec asks for {declared} output bytes, "
                                                f"more than the {cap}-byte limit per job")
        return cap if declared is None else declared

    def finished(self, token: str, job_id: str, device_s: float, now: float) -> None:
        self._active[token].discard(job_id)
        ACTIVE_BY_TOKEN.labels(token or "local").set(len(self._active[token]))
        if device_s > 0:
            self._usage[token].append((now, device_s))
            self._used[token] += device_s

    def crashed(self, token: str, now: float) -> None:
        """A job of `token` crashed a runner: counted against the token (not the worker), and charged
        `crash_device_s` device-seconds (the runner's restart is real work)."""
        self._crashes[token].append(now)
        CRASHES_BY_TOKEN.labels(token or "local").inc()
        self._usage[token].append((now, self.limits.crash_device_s))
        self._used[token] += self.limits.crash_device_s

    def crashes(self, token: str, now: float) -> int:
        q = self._crashes[token]
        while q and q[0] < now - self.limits.window_s:
            q.popleft()
        return len(q)

    def standing(self, token: str, now: float) -> float:
        """1.0 for a token whose jobs crashed no runner in the window, down to 0.0 at `max_crashes` (refused)."""
        return max(0.0, 1.0 - self.crashes(token, now) / max(1, self.limits.max_crashes))

    def device_seconds(self, token: str, now: float) -> float:
        q = self._usage[token]
        while q and q[0][0] < now - self.limits.window_s:
            self._used[token] -= q.popleft()[1]
        if not q:
            self._used[token] = 0.0  # no float drift once the window is empty
        return max(0.0, self._used[token])

    def admit_offer(self, peer_id: str, now: float) -> bool:
        lim = self.limits
        b = self._offer_buckets.setdefault(peer_id, TokenBucket(lim.offer_rate, 2 * lim.offer_rate))
        if b.take(now):
            return True
        REFUSALS.labels("offer_rate").inc()
        return False
