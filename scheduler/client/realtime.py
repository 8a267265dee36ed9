"""Real-time render sessions, client side: a scene uploaded once, then one message per frame on a held stream.

    async with Client.connect(addr, token=tok) as c:
        async with open_session(c, scene, fps=30, deadline_ms=33, tiles=1) as s:
            print(s.workers, s.estimate_ms)            # where the tiles render, measured frame times
            async for f in s.stream(poses):            # paced at fps; in order, one Frame per pose
                if f.dropped: ...                      # not back by its deadline: no image, f.reason says why
                else: show(f.rgba, f.depth)

The gateway (the node the client is connected to) reserves one realtime slot per tile on devices of the mesh
(distinct hosts first), each of which keeps the scene uploaded and renders warm-up frames to measure its frame
time; a session whose measured frame time cannot make the deadline is refused (`RpcError` code "deadline",
with the measurement). Then each frame is one message `{f, pose, budget_ms}`, and each tile comes back
compressed (`worker.render.frame_codec`: lossless RGBA, half-float depth, delta against the tile's previous
frame when that is smaller). A worker that can no longer make a frame's deadline drops it before rendering:
the frame comes back `dropped` with the reason, counted in `stats`, never delivered late as if on time. A worker
lost mid-session ends the session: every frame in flight comes back dropped with the reason, and
`SessionLost` is raised from the next call. Leaving the block ends the session and frees the slots (so does
the client going away).

docs/render-sessions.md has the protocol and the limits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from mesh.bigtcp.rpc import ClientCall, RpcError
from mesh.bigtcp.rpc_client import MeshClient
from mesh.bigtcp.transport import TransportError
from scheduler.client.client import Client
from scheduler.client.render_client import Frame, StreamStats, TileInfo, as_scene
from scheduler.core.render_session import FrameAssembly, SessionError
from worker.render.camera import Pose, Tile
from worker.render.frame_codec import CodecError, TileDecoder
from worker.render.kind import encode_scene
from worker.render.scene import Scene, content_hash

log = logging.getLogger("gpumesh.render.session")

CHUNK = 1 << 20
WAY_ALPHA = 0.2
ATTACH_TIMEOUT_S = 3.0  # to reach a tile's worker directly; past it the tile stays relayed by the gateway


class SessionLost(Exception):
    """The session ended under the client: a worker lost, the gateway gone, or a protocol error."""


@dataclass
class SessionStats(StreamStats):
    """What a session did: a stream's counts (frames sent, delivered, dropped by reason, end-to-end latencies of
    delivered frames), and the workers' render times and compressed bytes per frame."""

    render_s: list[float] = field(default_factory=list)  # per delivered frame: its slowest tile's render time
    estimates_s: list[float] = field(default_factory=list)  # the workers' frame-time estimate before each frame
    frame_bytes: list[int] = field(default_factory=list)  # compressed tile bytes of each delivered frame
    # where a tile's time went besides rendering (per tile received): queued at the worker, encoding, decoding
    worker_wait_s: list[float] = field(default_factory=list)
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)

    @property
    def delivered(self) -> int:
        return self.rendered

    def record(self, frame: Frame, nbytes: int = 0) -> None:
        super().record(frame)
        if not frame.dropped:
            self.render_s.append(max((t.render_s for t in frame.tiles), default=0.0))
            self.frame_bytes.append(nbytes)

    def summary(self) -> dict[str, Any]:
        def pct(xs: list[float], q: float) -> float | None:
            return round(float(np.percentile(np.asarray(xs) * 1e3, q)), 2) if xs else None

        return {"frames": self.frames, "delivered": self.delivered, "dropped": self.dropped,
                "dropped_by_reason": dict(self.dropped_by_reason), "p50_ms": pct(self.latencies_s, 50),
                "p99_ms": pct(self.latencies_s, 99), "render_p50_ms": pct(self.render_s, 50),
                "render_p99_ms": pct(self.render_s, 99),
                "bytes_per_frame": round(float(np.mean(self.frame_bytes))) if self.frame_bytes else None,
                "worker_wait_p50_ms": pct(self.worker_wait_s, 50), "encode_p50_ms": pct(self.encode_s, 50),
                "decode_p50_ms": pct(self.decode_s, 50)}


@dataclass
class _Building:
    pose: Pose
    issued: float
    rgba: np.ndarray
    depth: np.ndarray
    tiles: list[TileInfo] = field(default_factory=list)
    nbytes: int = 0


class RealtimeSession:
    """An open session (from `open_session`). `send(pose)` issues a frame now; `frames()` yields them in order;
    `render(pose)` does both for one frame; `stream(poses)` paces a sequence of poses at the session's fps."""

    def __init__(self, call: ClientCall, scene: Scene, ready: dict[str, Any], fps: float, deadline_ms: float,
                 direct: dict[int, ClientCall] | None = None) -> None:
        self._call = call
        self.direct = dict(direct or {})  # tile index -> its stream to the worker itself (session_attach)
        self.scene = scene
        self.fps = fps
        self.deadline_ms = deadline_ms
        self.session_id = str(ready.get("session", ""))
        self.tiles = [Tile(int(t["x0"]), int(t["y0"]), int(t["w"]), int(t["h"])) for t in ready.get("tiles", [])]
        self.workers = [str(w) for w in ready.get("workers", [])]
        self.devices = [str(d) for d in ready.get("devices", [])]
        self.estimate_ms = [float(e) for e in ready.get("estimate_ms", [])]
        if not self.tiles or len(self.workers) != len(self.tiles):
            raise SessionLost(f"malformed session answer: {ready!r:.200}")
        self.stats = SessionStats()
        self.ended: dict[str, Any] | None = None  # the gateway's final answer (per-tile counts)
        self._decoders = [TileDecoder() for _ in self.tiles]
        self._assembly = FrameAssembly(len(self.tiles), deadline_ms / 1000.0)
        self._building: dict[int, _Building] = {}
        self._next = 0
        self._lost: str = ""
        self._send_done, self._recv_done = trio.open_memory_channel[Frame](math.inf)
        self._changed = trio.Event()
        self._waiters: dict[int, tuple[trio.Event, list[Frame]]] = {}
        self.way_s = 0.0  # measured time of a tile's way there and back, besides rendering (EWMA)
        self._readers = 1 + len(self.direct)  # the gateway's stream and each direct one: frames end with the last

    # ---- sending ---------------------------------------------------------------------------------------------
    async def send(self, pose: Pose, *, budget_ms: float | None = None) -> int:
        """Issue one frame at `pose` now (deadline: now + deadline_ms); its index. The workers are told the time
        they have to finish rendering it: the deadline less the measured way there and back (`way_s`: an EWMA
        of a tile's latency minus its render time and its wait at the worker), so a frame whose tile could not
        come back in time is dropped before rendering. `budget_ms` overrides it (at most deadline_ms)."""
        if self._lost:
            raise SessionLost(self._lost)
        now = trio.current_time()
        i = self._next
        self._assembly.issue(i, now)
        w, h = self.scene.camera.width, self.scene.camera.height
        # np.empty: a frame is delivered only once every tile has been written into it (else it is dropped)
        self._building[i] = _Building(pose, now, np.empty((h, w, 4), np.uint8), np.empty((h, w), np.float32))
        self._next += 1
        self._wake()
        msg = {"f": i, "pose": pose.to_dict(), "budget_ms": self._budget_ms() if budget_ms is None else float(budget_ms)}
        for t, call in self.direct.items():
            try:
                await call.send(msg)
            except RpcError as e:
                self._fail(f"worker {self.workers[t]} went away: {e}")
                raise SessionLost(self._lost) from None
        if len(self.direct) < len(self.tiles):
            try:
                await self._call.send(msg)
            except RpcError as e:
                self._fail(f"the gateway went away: {e}")
                raise SessionLost(self._lost) from None
        return i

    def _budget_ms(self) -> float:
        return max(0.0, self.deadline_ms - self.way_s * 1000.0)

    async def frames(self) -> AsyncIterator[Frame]:
        """Finished frames in order (delivered or dropped), as they finish; ends when the session does."""
        async for f in self._recv_done:
            yield f

    async def next_frame(self) -> Frame:
        try:
            return await self._recv_done.receive()
        except trio.EndOfChannel:
            raise SessionLost(self._lost or "the session ended") from None

    async def render(self, pose: Pose, *, budget_ms: float | None = None) -> Frame:
        """Issue one frame and wait for it (delivered or dropped). Safe for several tasks at once (each gets its
        own frame); frames taken this way do not appear in `frames()`."""
        ev, box = trio.Event(), list[Frame]()
        index = self._next
        self._waiters[index] = (ev, box)
        try:
            await self.send(pose, budget_ms=budget_ms)
        except BaseException:
            self._waiters.pop(index, None)
            raise
        await ev.wait()
        return box[0]

    async def stream(self, poses: Iterable[Pose] | AsyncIterable[Pose], *, max_in_flight: int = 4,
                     ) -> AsyncIterator[Frame]:
        """Frames for `poses`, frame i issued at start + i/fps (a consumer slower than that holds the schedule
        back: issuing resumes from then on, without a burst), at most `max_in_flight` not yet yielded."""
        period = 1.0 / self.fps
        t_next = trio.current_time()
        in_flight = 0
        async for pose in _aiter(poses):
            while in_flight >= max_in_flight:  # the consumer holds the stream back
                in_flight -= 1
                yield await self.next_frame()
            now = trio.current_time()
            if now > t_next + period:  # held back: resume the schedule from now
                t_next = now
            while in_flight:  # frames that finish before this one is due
                f: Frame | None = None
                with trio.move_on_at(t_next):
                    f = await self.next_frame()
                if f is None:
                    break
                in_flight -= 1
                yield f
            await trio.sleep_until(t_next)
            await self.send(pose)
            in_flight += 1
            t_next += period
        while in_flight:
            in_flight -= 1
            yield await self.next_frame()

    # ---- receiving -------------------------------------------------------------------------------------------
    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _fail(self, reason: str) -> None:
        if not self._lost:
            self._lost = reason
        self._assembly.fail_all(f"lost: {reason}")
        self._emit()

    async def _reader(self) -> None:
        try:
            while (item := await self._call.receive()) is not None:
                if isinstance(item, dict):
                    self._on_item(item)
            try:
                self.ended = await self._call.result()
            except RpcError as e:
                self._fail(f"{e.code}: {e.message}")
        except (SessionError, CodecError, ValueError, KeyError, TypeError) as e:
            self._fail(f"bad message from the gateway: {e}")
        finally:
            self._reader_done()

    async def _direct_reader(self, t: int, call: ClientCall) -> None:
        """Tile t's stream from its worker (frames sent there come back there, without a tile index). Its tiles
        are decoded as they arrive, in the connection's reader task (no task switch per tile); this task reads
        what that leaves (the final answer, and tiles queued before the taker was set, handled alike)."""

        def take(item: dict[str, Any]) -> bool:
            if self._lost:
                return True  # every frame was dropped already; nothing more to decode
            item["t"] = t
            try:
                self._on_item(item)
            except (SessionError, CodecError, ValueError, KeyError, TypeError) as e:
                self._fail(f"bad message from worker {self.workers[t]}: {e}")
            return True

        call.on_items(take)
        try:
            while (item := await call.receive()) is not None:
                if isinstance(item, dict):
                    take(item)
            await call.result()
        except RpcError as e:
            self._fail(f"worker {self.workers[t]} lost: {e.code}: {e.message}")
        finally:
            self._reader_done()

    def _reader_done(self) -> None:
        self._readers -= 1
        if self._readers == 0:
            if not self._lost:
                self._fail("the session ended")
            self._send_done.close()

    def _on_item(self, item: dict[str, Any]) -> None:
        now = trio.current_time()
        if "lost" in item:
            lost = item["lost"] if isinstance(item["lost"], dict) else {}
            self._fail(f"worker {lost.get('worker', '?')} lost: {lost.get('reason', '')}")
            return
        i, t = item.get("f"), item.get("t")
        if not isinstance(i, int) or not isinstance(t, int) or not 0 <= t < len(self.tiles):
            raise ValueError(f"tile message without a valid frame and tile: {sorted(item)}")
        if "drop" in item:
            self._assembly.tile_dropped(i, t, str(item["drop"]))
        else:
            tile = self.tiles[t]
            payload = item.get("p")
            if not isinstance(payload, bytes):
                raise ValueError("tile message without its payload")
            b = self._building.get(i)
            t0 = trio.current_time()
            # always decoded (the decoder keeps the tile as the next delta's base); straight into the tile's
            # place in its frame when that frame is being built, and only then is the tile counted as arrived
            if b is not None:
                self._decoders[t].decode(item.get("tile"), payload, tile.w, tile.h,
                                         b.rgba[tile.y0:tile.y0 + tile.h, tile.x0:tile.x0 + tile.w],
                                         b.depth[tile.y0:tile.y0 + tile.h, tile.x0:tile.x0 + tile.w])
            else:
                self._decoders[t].decode(item.get("tile"), payload, tile.w, tile.h)
            self.stats.decode_s.append(trio.current_time() - t0)
            keep = self._assembly.tile(i, t, now) and b is not None
            for key, sink in (("wait_ms", self.stats.worker_wait_s), ("encode_ms", self.stats.encode_s)):
                v = item.get(key)
                if isinstance(v, int | float):
                    sink.append(float(v) / 1000.0)
            if keep:
                assert b is not None
                render_s = float(item.get("render_ms", 0.0)) / 1000.0
                est = item.get("est_ms")
                if isinstance(est, int | float):
                    self.stats.estimates_s.append(float(est) / 1000.0)
                b.tiles.append(TileInfo(tile, self.session_id, self.workers[t], 0, render_s, now - b.issued, False))
                wait = item.get("wait_ms")
                way = (now - b.issued) - render_s - (float(wait) / 1000.0 if isinstance(wait, int | float) else 0.0)
                self.way_s = way if self.way_s == 0.0 else (1 - WAY_ALPHA) * self.way_s + WAY_ALPHA * way
                b.nbytes += len(payload)
        self._emit()

    def _emit(self) -> None:
        now = trio.current_time()
        self._assembly.expire(now)
        for done in self._assembly.take():
            b = self._building.pop(done.index)
            latency = now - b.issued
            if done.dropped:
                frame = Frame(done.index, b.pose, None, None, latency, b.tiles, True, done.dropped)
            else:
                frame = Frame(done.index, b.pose, b.rgba, b.depth, latency, sorted(b.tiles, key=_key))
            self.stats.record(frame, b.nbytes)
            waiter = self._waiters.pop(done.index, None)
            if waiter is not None:
                waiter[1].append(frame)
                waiter[0].set()
            else:
                self._send_done.send_nowait(frame)

    async def _timer(self) -> None:
        """Drop frames whose deadline passed with tiles missing (a tile lost on the way never arrives)."""
        while not self._lost:
            with trio.move_on_at(self._assembly.next_deadline()):
                await self._changed.wait()
                continue
            self._emit()


def _key(t: TileInfo) -> tuple[int, int]:
    return (t.tile.y0, t.tile.x0)


async def _aiter(poses: Iterable[Pose] | AsyncIterable[Pose]) -> AsyncIterator[Pose]:
    if isinstance(poses, AsyncIterable):
        async for p in poses:
            yield p
    else:
        for p in poses:
            yield p


async def _attach(stack: AsyncExitStack, client: Client, offers: Any, tiles: int) -> dict[int, ClientCall]:
    """Open render.attach on each tile's worker the gateway offered (scheduler/node/session_attach.py): a
    connection pinned to the worker's peer id, the ticket on one stream. A worker this client cannot reach in
    ATTACH_TIMEOUT_S (all tiles together), or that refuses, leaves its tile relayed by the gateway."""
    direct: dict[int, ClientCall] = {}
    if not isinstance(offers, list):
        return direct
    give_up = trio.current_time() + ATTACH_TIMEOUT_S  # for all tiles together: unreachable workers cost it once
    for t, offer in enumerate(offers[:tiles]):
        if not isinstance(offer, dict) or not all(isinstance(offer.get(k), str) for k in ("addr", "peer", "ticket")):
            continue
        try:
            rpc = await stack.enter_async_context(MeshClient.connect(
                offer["addr"], peer_id=offer["peer"], insecure=client.rpc.transport.insecure,
                hello_extra=lambda _local, _remote: {"attach": "session"},
                handshake_timeout=max(0.2, give_up - trio.current_time())))
            direct[t] = await stack.enter_async_context(rpc.open("render.attach", {"ticket": offer["ticket"]},
                                                                 uploads=True))
        except (OSError, TransportError, RpcError, ValueError) as e:
            log.info("tile %d: worker %s not reached directly at %s (%s): its frames go through the gateway",
                     t, offer["peer"], offer["addr"], e)
    return direct


@asynccontextmanager
async def open_session(client: Client, scene: Scene | dict[str, Any], *, fps: float = 30.0,
                       deadline_ms: float = 33.0, tiles: int = 1, peers: list[str] | None = None,
                       direct: bool = True) -> AsyncIterator[RealtimeSession]:
    """Open a real-time render session (see the module doc). Raises RpcError when the gateway refuses it
    (code "deadline": the measured frame time cannot make `deadline_ms`; "unavailable": not enough devices with
    a free slot; "limit": this token has too many sessions open). With `direct` (the default), the client
    reaches each tile's worker itself when it can (one hop each way instead of two through the gateway);
    `direct=False` keeps every frame on the gateway's stream."""
    sc = as_scene(scene)
    body: dict[str, Any] = {"scene_hash": content_hash(sc), "width": sc.camera.width, "height": sc.camera.height,
                            "tiles": int(tiles), "fps": float(fps), "deadline_ms": float(deadline_ms)}
    if peers is not None:
        body["peers"] = list(peers)
    data = encode_scene(sc)
    async with client.rpc.open("render.session", body, uploads=True) as call:
        for i in range(0, len(data), CHUNK):
            await call.send_bytes(data[i:i + CHUNK])
        await call.send({"scene": "end"})
        first = await call.receive()
        if not isinstance(first, dict) or not isinstance(first.get("ready"), dict):
            await call.result()  # raises the refusal
            raise SessionLost(f"the gateway answered {first!r:.200} instead of ready")
        ready = first["ready"]
        async with AsyncExitStack() as stack:  # the direct tiles' connections, closed before the session
            attached = await _attach(stack, client, ready.get("attach"), len(ready.get("tiles", []))) if direct else {}
            if attached:
                await call.send({"attached": sorted(attached)})
            session = RealtimeSession(call, sc, ready, fps, deadline_ms, attached)
            with _one_error():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(session._reader)
                    for t, tile_call in attached.items():
                        nursery.start_soon(session._direct_reader, t, tile_call)
                    nursery.start_soon(session._timer)
                    try:
                        yield session
                    finally:
                        with trio.CancelScope(shield=True), trio.move_on_after(10):
                            if not session._lost:
                                for tile_call in [*attached.values(), call]:  # the tiles' frames end, then the session
                                    try:
                                        await tile_call.done_sending()
                                    except RpcError:
                                        pass
                                await _drain(session)
                        nursery.cancel_scope.cancel()


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out += _leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
    return out


@contextmanager
def _one_error() -> Iterator[None]:
    """The caller's one exception (SessionLost, RpcError, its own) out of the session's nursery as itself."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
        if len(errors) != 1:
            raise
        raise errors[0] from None


async def _drain(session: RealtimeSession) -> None:
    async for _ in session.frames():
        pass


__all__ = ["RealtimeSession", "SessionLost", "SessionStats", "open_session"]
