"""Connection liveness, sans-IO (time passed in): keepalive pings, dead-peer detection, idle close.

`Liveness` keeps only clocks and counters; the `Mux` owns one, asks it what is due (`check`) and when to
ask again (`next_deadline`), and queues the PING frames and raises the events it reports.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Liveness", "LivenessDue"]


@dataclass(slots=True)
class LivenessDue:
    """What `Liveness.check` found due: a PING to send, a dead peer (silent for `dead_for` s), an idle
    connection (without streams for `idle_for` s, reported once per idle period)."""

    ping: bool = False
    dead_for: float | None = None
    idle_for: float | None = None


class Liveness:
    def __init__(self, keepalive: float | None, dead_after: float | None, idle_close: float | None) -> None:
        self.keepalive = keepalive  # ping after this much silence
        self.dead_after = dead_after  # the peer is dead after this much silence
        self.idle_close = idle_close  # report an idle connection after this long without streams
        self._rx_mark = -1  # bytes received at the last check
        self._last_rx = 0.0  # when the byte count last moved
        self._ping_nonce = 0
        self._ping_out: tuple[int, float] | None = None  # (nonce, sent at) of the unanswered PING
        self._idle_since: float | None = None
        self._idle_reported = False

    def ping_sent(self, now: float) -> int:
        """A PING goes out now: its nonce."""
        self._ping_nonce += 1
        self._ping_out = (self._ping_nonce, now)
        return self._ping_nonce

    def pong_received(self, nonce: int) -> float | None:
        """When the PING that `nonce` answers was sent; None if it answers none we wait for."""
        if self._ping_out is None or self._ping_out[0] != nonce:
            return None
        sent_at = self._ping_out[1]
        self._ping_out = None
        return sent_at

    def check(self, now: float, bytes_received: int, has_streams: bool) -> LivenessDue:
        due = LivenessDue()
        if bytes_received != self._rx_mark:
            self._rx_mark = bytes_received
            self._last_rx = now
        silent = now - self._last_rx
        if self.dead_after is not None and silent >= self.dead_after:
            due.dead_for = silent
            return due
        if self.keepalive is not None and silent >= self.keepalive and (
            self._ping_out is None or now - self._ping_out[1] >= self.keepalive
        ):
            due.ping = True
        if self.idle_close is not None:
            if has_streams:
                self._idle_since = None
                self._idle_reported = False
            else:
                if self._idle_since is None:
                    self._idle_since = now
                if not self._idle_reported and now - self._idle_since >= self.idle_close:
                    self._idle_reported = True
                    due.idle_for = now - self._idle_since
        return due

    def next_deadline(self, now: float) -> float:
        """When `check` has something to do next (calling earlier is harmless)."""
        if self._rx_mark < 0:
            return now
        cands = [now + 3600.0]
        if self.keepalive is not None:
            cands.append((self._ping_out[1] if self._ping_out is not None else self._last_rx) + self.keepalive)
        if self.dead_after is not None:
            cands.append(self._last_rx + self.dead_after)
        if self.idle_close is not None and not self._idle_reported:
            cands.append((self._idle_since if self._idle_since is not None else now) + self.idle_close)
        return max(now, min(cands))
