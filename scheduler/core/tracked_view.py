"""`TrackedView`: a membership view that logs which peers changed, so placement's device table
(`scheduler.core.device_table`) refreshes in O(changes). Pure: no I/O, time passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from mesh.advert import Advert
from mesh.advert_delta import AdvertDelta
from mesh.membership import Left, MembershipView


class TrackedView(MembershipView):
    """A MembershipView that logs which peers changed (advert accepted, expired, removed, load noted), so a
    Placer refreshes its device table in O(changes) instead of scanning every peer per decision. Use it
    wherever a node builds its view; a Placer also works on a plain MembershipView, scanning."""

    LOG_SIZE = 8192

    def __init__(self, self_peer_id: str, ttl_s: float, admit: Callable[[str], bool] | None = None,
                 **ttl: float | None) -> None:
        super().__init__(self_peer_id, ttl_s, admit, **ttl)
        self.version = 0
        self._log: deque[tuple[int, str]] = deque(maxlen=self.LOG_SIZE)

    def _changed(self, peer_id: str) -> None:
        self.version += 1
        self._log.append((self.version, peer_id))

    def apply(self, message: Advert | AdvertDelta, now: float):  # type: ignore[override]
        before = self.get(message.peer_id)
        seq = before.advert.seq if before is not None else None
        ev = super().apply(message, now)
        st = self.get(message.peer_id)
        if st is not None and st.advert.seq != seq:
            self._changed(message.peer_id)
        return ev

    def expire(self, now: float) -> list[Left]:
        left = super().expire(now)
        for ev in left:
            self._changed(ev.peer_id)
        return left

    def remove(self, peer_id: str) -> Left | None:
        ev = super().remove(peer_id)
        if ev is not None:
            self._changed(peer_id)
        return ev

    def note_load(self, peer_id: str, device_id: str, free_slots: int, queue_depth: int) -> None:
        super().note_load(peer_id, device_id, free_slots, queue_depth)
        self._changed(peer_id)

    def changes_since(self, version: int) -> tuple[int, set[str] | None]:
        """(current version, peers changed after `version`), or None for the peers when the log no longer
        reaches back that far (the caller re-reads everything)."""
        if version == self.version:
            return version, set()
        if version < 0 or version > self.version or not self._log or self._log[0][0] > version + 1:
            return self.version, None
        out = set()
        for v, pid in reversed(self._log):
            if v <= version:
                break
            out.add(pid)
        return self.version, out
