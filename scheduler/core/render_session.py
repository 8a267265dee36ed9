"""Real-time render sessions, the pure part: what a session asks for, what one frame is, when a worker drops a
frame, how frame times are estimated, which devices a session gets, and how a client assembles frames.

A session (docs/render-sessions.md) reserves one realtime slot per tile on devices of the mesh (distinct hosts
first), uploads the scene once, and then each frame is one message each way on held streams:

    client --{f, pose}--> gateway --{f, pose, budget_ms}--> worker (one per tile)
    client <--{f, t, tile header} + payload-- gateway <--{f, tile header} + payload (frame_codec)-- worker
                                               or {f, drop: reason}

Nothing here does I/O or reads a clock: every decision takes `now` (seconds, any monotonic origin).

- `parse_session_request`, `parse_tile_open`, `parse_frame`: hostile input to typed, bounded data, or
  `SessionError(code, message)`.
- `FrameTimes`: the EWMA of a device's measured frame times for one session (seeded by warm-up frames); the
  deadline estimate a worker admits the session with and drops frames by.
- `WorkerTile`: one tile of one session on a worker: frames in (with their budget), `Render`/`Drop` out.
- `TenantSessions`: per-tenant (gateway) and per-coordinator (worker) limits on open sessions.
- `choose_devices`: which devices a session's tiles go to.
- `FrameAssembly`: the client's frames in flight: tiles arriving, drops, a frame's deadline passing.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from worker.render.camera import Pose, Tile
from worker.render.errors import SceneError
from worker.render.limits import MAX_HEIGHT, MAX_WIDTH
from worker.render.scene import pose_from_dict

MAX_TILES = 16
MAX_SESSIONS_PER_TENANT = 4  # open at once through one gateway, per API token
MAX_SESSIONS_PER_COORDINATOR = 8  # open at once on one worker, per gateway node
MIN_FPS, MAX_FPS = 0.5, 240.0
MIN_DEADLINE_MS, MAX_DEADLINE_MS = 1.0, 10_000.0
MAX_POSITION = 1e6  # metres from the origin a camera may be
MAX_PENDING = 4  # frames waiting at a worker behind the one rendering; an older one is dropped ("overrun")
MAX_AHEAD = 64  # frames a client may have in flight in one session
EWMA_ALPHA = 0.2
SAFETY = 1.1  # a frame is rendered when now + SAFETY * estimate <= its deadline


class SessionError(Exception):
    """A refused session request or frame: `code` (bad_request, limit, deadline, not_found, unavailable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _number(body: dict[str, Any], key: str, lo: float, hi: float, default: float | None = None) -> float:
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise SessionError("bad_request", f"{key} must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _hash(v: Any) -> str:
    if not (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
        raise SessionError("bad_request", "scene_hash must be 64 lowercase hex digits")
    return v


def _peer_ids(v: Any) -> tuple[str, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) > MAX_TILES or not all(isinstance(p, str) and 0 < len(p) <= 128 for p in v):
        raise SessionError("bad_request", f"peers must be a list of at most {MAX_TILES} peer ids")
    return tuple(v)


def parse_pose(d: Any) -> Pose:
    try:
        pose = pose_from_dict(d, "pose")
    except SceneError as e:
        raise SessionError("bad_request", str(e)) from None
    if any(abs(c) > MAX_POSITION for c in pose.position):
        raise SessionError("bad_request", f"pose.position must be within {MAX_POSITION:g} m of the origin")
    return pose


def _tile(d: Any, width: int, height: int) -> Tile:
    if not isinstance(d, dict) or set(d) != {"x0", "y0", "w", "h"}:
        raise SessionError("bad_request", "tile must be a map {x0, y0, w, h}")
    vals = [d[k] for k in ("x0", "y0", "w", "h")]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
        raise SessionError("bad_request", "tile fields must be integers")
    t = Tile(*vals)
    try:
        t.check(width, height)
    except SceneError as e:
        raise SessionError("bad_request", str(e)) from None
    return t


@dataclass(frozen=True)
class SessionRequest:
    """What a client asks a gateway for (`render.session`'s body). The scene travels beside it (upload)."""

    scene_hash: str
    width: int
    height: int
    tiles: int
    fps: float
    deadline_ms: float
    peers: tuple[str, ...] | None  # the peers to use (None: the gateway chooses)

    @property
    def period_s(self) -> float:
        return 1.0 / self.fps


def parse_session_request(body: Any) -> SessionRequest:
    if not isinstance(body, dict):
        raise SessionError("bad_request", "the session request is a map")
    unknown = sorted(set(body) - {"scene_hash", "width", "height", "tiles", "fps", "deadline_ms", "peers"})
    if unknown:
        raise SessionError("bad_request", f"unknown field {unknown[0]!r}")
    w = int(_number(body, "width", 1, MAX_WIDTH))
    h = int(_number(body, "height", 1, MAX_HEIGHT))
    if body.get("width") != w or body.get("height") != h:
        raise SessionError("bad_request", "width and height must be integers")
    tiles = body.get("tiles", 1)
    if isinstance(tiles, bool) or not isinstance(tiles, int) or not 1 <= tiles <= min(MAX_TILES, h):
        raise SessionError("bad_request", f"tiles must be an integer in [1, {min(MAX_TILES, h)}], got {tiles!r}")
    return SessionRequest(_hash(body.get("scene_hash")), w, h, tiles, _number(body, "fps", MIN_FPS, MAX_FPS, 30.0),
                          _number(body, "deadline_ms", MIN_DEADLINE_MS, MAX_DEADLINE_MS, 33.0),
                          _peer_ids(body.get("peers")))


@dataclass(frozen=True)
class TileOpen:
    """What a gateway asks a worker for (`peer.render_session`'s body): one tile of a session."""

    session: str
    scene_hash: str
    width: int
    height: int
    tile: Tile
    fps: float
    deadline_ms: float

    def to_wire(self) -> dict[str, Any]:
        return {"session": self.session, "scene_hash": self.scene_hash, "width": self.width, "height": self.height,
                "tile": self.tile.to_dict(), "fps": self.fps, "deadline_ms": self.deadline_ms}


def parse_tile_open(body: Any) -> TileOpen:
    if not isinstance(body, dict):
        raise SessionError("bad_request", "the tile request is a map")
    sid = body.get("session")
    if not (isinstance(sid, str) and 0 < len(sid) <= 64):
        raise SessionError("bad_request", "session must be a string of 1..64 characters")
    w = _number(body, "width", 1, MAX_WIDTH)
    h = _number(body, "height", 1, MAX_HEIGHT)
    if body.get("width") != int(w) or body.get("height") != int(h):
        raise SessionError("bad_request", "width and height must be integers")
    return TileOpen(sid, _hash(body.get("scene_hash")), int(w), int(h), _tile(body.get("tile"), int(w), int(h)),
                    _number(body, "fps", MIN_FPS, MAX_FPS), _number(body, "deadline_ms", MIN_DEADLINE_MS,
                                                                    MAX_DEADLINE_MS))


@dataclass(frozen=True)
class FrameRequest:
    index: int
    pose: Pose
    budget_ms: float  # time left until the frame's deadline when it was sent


def parse_frame(msg: Any, deadline_ms: float) -> FrameRequest:
    """A frame message {f, pose, budget_ms?}: index >= 0, a bounded pose, a budget up to the session's deadline."""
    if not isinstance(msg, dict):
        raise SessionError("bad_request", "a frame is a map {f, pose}")
    idx = msg.get("f")
    if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < 1 << 62:
        raise SessionError("bad_request", f"frame index must be a non-negative integer, got {idx!r}")
    budget = _number(msg, "budget_ms", 0.0, deadline_ms, deadline_ms)
    return FrameRequest(idx, parse_pose(msg.get("pose")), budget)


# ---- frame times --------------------------------------------------------------------------------------------
@dataclass
class FrameTimes:
    """Measured frame times of one tile on one device: an EWMA (and the running max of the recent deviation,
    so that a jittery device is estimated a little high, not low)."""

    alpha: float = EWMA_ALPHA
    mean_s: float | None = None
    dev_s: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        if not (seconds >= 0 and math.isfinite(seconds)):
            return
        self.count += 1
        if self.mean_s is None:
            self.mean_s = seconds
            return
        err = seconds - self.mean_s
        self.mean_s += self.alpha * err
        self.dev_s += self.alpha * (abs(err) - self.dev_s)

    def estimate_s(self) -> float:
        """What the next frame should take (mean plus one deviation); inf before any measurement."""
        return math.inf if self.mean_s is None else self.mean_s + self.dev_s


# ---- a worker's tile ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Render:
    index: int
    pose: Pose
    deadline: float  # local time
    arrived: float  # local time the frame arrived


@dataclass(frozen=True)
class Drop:
    index: int
    reason: str  # "deadline" (could not make it), "overrun" (newer frames queued behind), "stale" (out of order)
    detail: str


def admit(times: FrameTimes, fps: float, deadline_ms: float) -> str | None:
    """Why a tile cannot be served at this rate and deadline on a device with these measured times, or None."""
    est = times.estimate_s()
    if est * SAFETY > deadline_ms / 1000.0:
        return (f"frames take {est * 1000:.1f} ms on this device (measured, {times.count} frames); the deadline is "
                f"{deadline_ms:.1f} ms")
    if est > 1.0 / fps:
        return f"frames take {est * 1000:.1f} ms on this device (measured): it cannot keep up with {fps:g} fps"
    return None


@dataclass
class WorkerTile:
    """One tile of one session on a worker. `arrive(frame, now)` queues a frame (the oldest queued is dropped
    when MAX_PENDING wait); `next(now)` gives what to do with the next one: Render it, or Drop it because it
    can no longer be finished by its deadline at the measured frame time. `rendered(seconds)` feeds the
    measurement. Counts of each outcome are kept for the session's end."""

    times: FrameTimes = field(default_factory=FrameTimes)
    pending: deque[tuple[FrameRequest, float]] = field(default_factory=deque)
    last_index: int = -1
    rendered_count: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def _drop(self, index: int, reason: str, detail: str) -> Drop:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return Drop(index, reason, detail)

    def arrive(self, frame: FrameRequest, now: float) -> list[Drop]:
        """Queue a frame; returns the frames dropped on the way (stale index, overrun)."""
        if frame.index <= self.last_index or any(f.index >= frame.index for f, _ in self.pending):
            return [self._drop(frame.index, "stale", "frame index not after the previous one")]
        self.pending.append((frame, now + frame.budget_ms / 1000.0))
        out = []
        while len(self.pending) > MAX_PENDING:
            old, _ = self.pending.popleft()
            out.append(self._drop(old.index, "overrun", f"{MAX_PENDING} newer frames queued behind it"))
        return out

    def next(self, now: float) -> Render | Drop | None:
        if not self.pending:
            return None
        frame, deadline = self.pending.popleft()
        self.last_index = frame.index
        est = self.times.estimate_s()
        if now + SAFETY * (0.0 if math.isinf(est) else est) > deadline:
            return self._drop(frame.index, "deadline",
                              f"{max(0.0, deadline - now) * 1000:.1f} ms left, frames take {est * 1000:.1f} ms")
        return Render(frame.index, frame.pose, deadline, deadline - frame.budget_ms / 1000.0)

    def rendered(self, seconds: float) -> None:
        self.rendered_count += 1
        self.times.observe(seconds)

    def counts(self) -> dict[str, Any]:
        return {"rendered": self.rendered_count, "dropped": dict(self.dropped),
                "estimate_ms": None if math.isinf(self.times.estimate_s()) else self.times.estimate_s() * 1000}


# ---- limits --------------------------------------------------------------------------------------------------
class TenantSessions:
    """Open sessions per owner (a tenant at a gateway, a coordinator at a worker), at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, set[str]] = {}

    def open(self, owner: str, session: str) -> None:
        mine = self._open.setdefault(owner, set())
        if session in mine:
            raise SessionError("bad_request", f"session {session} is open already")
        if len(mine) >= self.limit:
            raise SessionError("limit", f"{owner or 'this caller'} has {len(mine)} render sessions open (at most "
                                        f"{self.limit})")
        mine.add(session)

    def close(self, owner: str, session: str) -> None:
        mine = self._open.get(owner)
        if mine is not None:
            mine.discard(session)
            if not mine:
                del self._open[owner]

    def count(self, owner: str | None = None) -> int:
        if owner is not None:
            return len(self._open.get(owner, ()))
        return sum(len(s) for s in self._open.values())


# ---- placement ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A device of a peer as the gateway's view shows it."""

    peer_id: str
    device_id: str
    host: str
    free_slots: int
    rate: float  # relative speed (calibrated GFLOP/s; 0 unknown)
    standing: float = 1.0


def choose_devices(cands: list[Candidate], n: int, *, min_standing: float = 0.25) -> list[Candidate]:
    """n devices, one per peer, spread over distinct hosts first; within that, devices whose advert shows a free
    slot first, then the fastest. A device advertised with no free slot is still a candidate (after the
    others): adverts lag, a slot released a moment ago is free, and the worker itself refuses when it has none.
    Fewer than n when the mesh has fewer peers."""
    ok = [c for c in cands if c.standing >= min_standing]
    ok.sort(key=lambda c: (c.free_slots <= 0, -c.rate, -c.free_slots, c.peer_id, c.device_id))
    out: list[Candidate] = []
    hosts: set[str] = set()
    peers: set[str] = set()
    for distinct_host in (True, False):
        for c in ok:
            if len(out) == n:
                return out
            if c.peer_id in peers or (distinct_host and c.host in hosts):
                continue
            out.append(c)
            peers.add(c.peer_id)
            hosts.add(c.host)
    return out


def split_frame(width: int, height: int, n: int) -> list[Tile]:
    """n horizontal bands (a session's tiles: each worker keeps one for the whole session)."""
    n = max(1, min(n, height))
    ys = [height * i // n for i in range(n + 1)]
    return [Tile(0, ys[i], width, ys[i + 1] - ys[i]) for i in range(n)]


# ---- the client's frames -------------------------------------------------------------------------------------
@dataclass
class PendingFrame:
    index: int
    issued: float
    deadline: float
    tiles_left: set[int]
    dropped: str = ""


@dataclass(frozen=True)
class FrameDone:
    index: int
    issued: float
    dropped: str  # "" when every tile arrived by the deadline, else "reason: detail"


class FrameAssembly:
    """Frames of a session in flight at the client, in order. `issue(i, now)`, `tile(i, t, now)` /
    `tile_dropped(i, t, reason)`, `expire(now)`; `take()` gives the finished frames in index order (a frame
    is finished when every tile arrived, one was dropped, or its deadline passed)."""

    def __init__(self, n_tiles: int, deadline_s: float) -> None:
        self.n_tiles = n_tiles
        self.deadline_s = deadline_s
        self._frames: dict[int, PendingFrame] = {}
        self._order: deque[int] = deque()
        self.delivered = 0
        self.dropped: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._order)

    def issue(self, index: int, now: float) -> None:
        if self._order and index <= self._order[-1]:
            raise ValueError("frames are issued in increasing order")
        if len(self._order) >= MAX_AHEAD:
            raise SessionError("limit", f"at most {MAX_AHEAD} frames in flight")
        self._frames[index] = PendingFrame(index, now, now + self.deadline_s, set(range(self.n_tiles)))
        self._order.append(index)

    def tile(self, index: int, tile: int, now: float) -> bool:
        """A tile arrived; False when it is not wanted (unknown frame, or it came after the frame's deadline)."""
        f = self._frames.get(index)
        if f is None or tile not in f.tiles_left:
            return False
        if now > f.deadline and not f.dropped:
            f.dropped = "deadline: a tile arrived after the deadline"
        f.tiles_left.discard(tile)
        return not f.dropped

    def tile_dropped(self, index: int, tile: int, reason: str) -> None:
        f = self._frames.get(index)
        if f is not None and not f.dropped:
            f.dropped = reason
            f.tiles_left.discard(tile)

    def fail_all(self, reason: str) -> None:
        for f in self._frames.values():
            if not f.dropped:
                f.dropped = reason

    def expire(self, now: float) -> None:
        for i in self._order:
            f = self._frames[i]
            if not f.dropped and f.tiles_left and now > f.deadline:
                f.dropped = f"deadline: {self.n_tiles - len(f.tiles_left)} of {self.n_tiles} tiles back in time"

    def next_deadline(self) -> float:
        return min((f.deadline for f in self._frames.values() if not f.dropped and f.tiles_left), default=math.inf)

    def take(self) -> list[FrameDone]:
        out = []
        while self._order:
            f = self._frames[self._order[0]]
            if not f.dropped and f.tiles_left:
                break
            self._order.popleft()
            del self._frames[f.index]
            if f.dropped:
                key = f.dropped.split(":", 1)[0]
                self.dropped[key] = self.dropped.get(key, 0) + 1
            else:
                self.delivered += 1
            out.append(FrameDone(f.index, f.issued, f.dropped))
        return out


__all__ = ["Candidate", "Drop", "FrameAssembly", "FrameDone", "FrameRequest", "FrameTimes", "Render",
           "SessionError", "SessionRequest", "TenantSessions", "TileOpen", "WorkerTile", "admit", "choose_devices",
           "parse_frame", "parse_pose", "parse_session_request", "parse_tile_open", "split_frame"]
