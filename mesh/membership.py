"""The membership view: newest advert per peer, expiry by TTL, and each peer's standing.

Pure: driven by adverts and the current time passed in, so the daemon, the tests (MockClock) and the many-node
simulation all run the same code. Correctness rests on periodic full-state adverts plus expiry, never on every
gossip message arriving.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mesh.advert import Advert, DeviceAdvert

MAX_REMEMBERED_STANDING = 10_000
REPLAY_WINDOW = 2  # an advert more than this many sequence numbers old is a replay, not reordering


@dataclass(frozen=True)
class Joined:
    peer_id: str


@dataclass(frozen=True)
class Updated:
    peer_id: str


@dataclass(frozen=True)
class Left:
    peer_id: str
    reason: str  # expired | removed


Event = Joined | Updated | Left


@dataclass
class PeerState:
    advert: Advert
    first_seen: float
    last_seen: float
    # Load learned from a claim rejection: the worker's own word beats its last advert until the next advert.
    load_override: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def peer_id(self) -> str:
        return self.advert.peer_id

    def devices(self) -> tuple[DeviceAdvert, ...]:
        if not self.load_override:
            return self.advert.devices
        return tuple(
            replace(d, free_slots=self.load_override[d.id][0], queue_depth=self.load_override[d.id][1])
            if d.id in self.load_override else d
            for d in self.advert.devices
        )


class MembershipView:
    """Who is in the mesh, with what capacity, as this node currently believes."""

    def __init__(self, self_peer_id: str, ttl_s: float, admit: Callable[[str], bool] | None = None) -> None:
        self.self_peer_id = self_peer_id
        self.ttl_s = ttl_s
        self._admit = admit
        self._peers: dict[str, PeerState] = {}
        # Standing survives expiry so that a peer cannot launder a bad record by leaving and rejoining.
        self._standing: OrderedDict[str, float] = OrderedDict()
        # The newest sequence number seen of peers that left: a replay of their old adverts cannot bring them back.
        self._last_seq: OrderedDict[str, int] = OrderedDict()
        self.stale = 0  # adverts older than or equal to what we hold (reordering or replay)
        self.replays = 0  # stale adverts too old to be reordering (or of a peer that left): replays, dropped
        self.refused = 0  # adverts from peers not admitted to this mesh
        self.expired = 0

    @property
    def admit(self) -> Callable[[str], bool] | None:
        return self._admit

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: str) -> bool:
        return peer_id in self._peers

    def get(self, peer_id: str) -> PeerState | None:
        return self._peers.get(peer_id)

    def peers(self, include_self: bool = True) -> list[PeerState]:
        return [p for p in self._peers.values() if include_self or p.peer_id != self.self_peer_id]

    def apply(self, advert: Advert, now: float) -> Event | None:
        """Take an advert already verified by `advert.decode`; returns the event it caused, if any."""
        pid = advert.peer_id
        if self._admit is not None and pid != self.self_peer_id and not self._admit(pid):
            self.refused += 1
            return None
        cur = self._peers.get(pid)
        if cur is None:
            if advert.seq <= self._last_seq.get(pid, -1):  # an old advert of a peer that left: a replay
                self.stale += 1
                self.replays += 1
                return None
            self._last_seq.pop(pid, None)
            self._peers[pid] = PeerState(advert, first_seen=now, last_seen=now)
            return Joined(pid)
        if advert.seq <= cur.advert.seq:
            # delayed delivery under load is normal; an advert well behind the one we hold is a replay. Anyone
            # can replay a peer's signed adverts, so neither costs the peer standing: dropped, counted.
            self.stale += 1
            if advert.seq < cur.advert.seq - REPLAY_WINDOW:
                self.replays += 1
            return None
        changed = advert.capacity_key() != cur.advert.capacity_key()
        cur.advert, cur.last_seen, cur.load_override = advert, now, {}
        return Updated(pid) if changed else None

    def expire(self, now: float) -> list[Left]:
        gone = [pid for pid, p in self._peers.items()
                if pid != self.self_peer_id and now - p.last_seen > self.ttl_s]
        for pid in gone:
            self._forget(pid)
        self.expired += len(gone)
        return [Left(pid, "expired") for pid in gone]

    def remove(self, peer_id: str) -> Left | None:
        return Left(peer_id, "removed") if self._forget(peer_id) else None

    def _forget(self, peer_id: str) -> bool:
        p = self._peers.pop(peer_id, None)
        if p is None:
            return False
        self._last_seq[peer_id] = p.advert.seq
        while len(self._last_seq) > MAX_REMEMBERED_STANDING:
            self._last_seq.popitem(last=False)
        return True

    def note_load(self, peer_id: str, device_id: str, free_slots: int, queue_depth: int) -> None:
        """Record a worker's own report of its load (from a claim answer) until its next advert."""
        p = self._peers.get(peer_id)
        if p is not None:
            p.load_override[device_id] = (max(0, free_slots), max(0, queue_depth))

    def standing(self, peer_id: str) -> float:
        """1.0 = fully trusted, 0.0 = never place work there. New peers start at 1.0."""
        return self._standing.get(peer_id, 1.0)

    def adjust_standing(self, peer_id: str, delta: float) -> float:
        value = min(1.0, max(0.0, self.standing(peer_id) + delta))
        self._standing[peer_id] = value
        self._standing.move_to_end(peer_id)
        while len(self._standing) > MAX_REMEMBERED_STANDING:
            self._standing.popitem(last=False)
        return value
