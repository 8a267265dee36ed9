"""The membership view: newest advert per peer, expiry by TTL, and each peer's standing.

Pure: driven by adverts and the current time passed in, so the daemon, the tests (MockClock) and the many-node
simulations all run the same code. Correctness rests on periodic full-state adverts plus expiry, never on every
gossip message arriving: a delta advert (mesh/advert_delta.py) applies only on top of the full advert it names.

A peer expires `ttl_s` after its last advert, or, when the view has `ttl_intervals`, after that many of the
refresh intervals the peer itself announces (its refresh interval grows with the size of the mesh, see
mesh/advert_schedule.py), never sooner than `ttl_s` nor later than `max_ttl_s`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mesh import advert_delta
from mesh.advert import Advert, DeviceAdvert
from mesh.advert_delta import AdvertDelta

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
    advert: Advert  # the newest state: the base plus the newest delta on it
    first_seen: float
    last_seen: float
    ttl_s: float  # silent for this long after last_seen: expired
    base: Advert  # the newest full advert, which deltas apply to
    # Load learned from a claim rejection: the worker's own word beats its last advert until the next advert.
    load_override: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def peer_id(self) -> str:
        return self.advert.peer_id

    @property
    def expires_at(self) -> float:
        return self.last_seen + self.ttl_s

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

    def __init__(self, self_peer_id: str, ttl_s: float, admit: Callable[[str], bool] | None = None, *,
                 ttl_intervals: float | None = None, max_ttl_s: float | None = None) -> None:
        self.self_peer_id = self_peer_id
        self.ttl_s = ttl_s
        self.ttl_intervals = ttl_intervals
        self.max_ttl_s = max(ttl_s, max_ttl_s) if max_ttl_s is not None else None
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
        self.no_base = 0  # deltas whose full advert we do not hold (applied again from the next full refresh)

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

    def ttl_for(self, advert: Advert | AdvertDelta) -> float:
        """How long a peer stays after this advert of its own: a few of its announced refresh intervals."""
        if self.ttl_intervals is None:
            return self.ttl_s
        ttl = max(self.ttl_s, self.ttl_intervals * advert.interval_s)
        return min(ttl, self.max_ttl_s) if self.max_ttl_s is not None else ttl

    def apply(self, message: Advert | AdvertDelta, now: float) -> Event | None:
        """Take an advert or delta already verified by `advert_delta.decode`; returns the event it caused, if any."""
        pid = message.peer_id
        if self._admit is not None and pid != self.self_peer_id and not self._admit(pid):
            self.refused += 1
            return None
        cur = self._peers.get(pid)
        is_delta = isinstance(message, AdvertDelta)
        if isinstance(message, AdvertDelta):
            if cur is None or cur.base.seq != message.base_seq:
                if cur is None or message.seq > cur.advert.seq:
                    self.no_base += 1
                    return None
                self.stale += 1
                return None
            message = advert_delta.apply(cur.base, message)
        advert: Advert = message
        if cur is None:
            if advert.seq <= self._last_seq.get(pid, -1):  # an old advert of a peer that left: a replay
                self.stale += 1
                self.replays += 1
                return None
            self._last_seq.pop(pid, None)
            self._peers[pid] = PeerState(advert, first_seen=now, last_seen=now, ttl_s=self.ttl_for(advert),
                                         base=advert)
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
        cur.ttl_s = self.ttl_for(advert)
        if not is_delta:
            cur.base = advert
        return Updated(pid) if changed else None

    def expire(self, now: float) -> list[Left]:
        gone = [pid for pid, p in self._peers.items()
                if pid != self.self_peer_id and now > p.expires_at]
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
