"""Rendering AR frames on the mesh, client side: whole frames or tiles over peers, and real-time streams.

    async with Client.connect(addr, token=tok) as c:
        frame = await render_frame(c, scene, pose, tiles="auto")          # one frame, RGBA + depth
        async with render_stream(c, scene, poses, fps=60, deadline_ms=16) as frames:
            async for f in frames:                                          # in order, one per pose
                if f.dropped: ...                                           # missed its deadline: no image
                else: show(f.rgba, f.depth)

A `RenderSession` per (client, scene) remembers where the scene went: it travels as the input of the first
job (and of a warm-up round that puts it on each peer before a stream), later jobs carry only its content hash
and the pose. A small scene (<= 64 KiB encoded) also rides along while some peer has not yet returned a result
for it (bounded), so a peer the warm-up missed gets it without a failed round trip. A worker that does not
hold the scene fails the job at once with "scene not cached"; the session then resends the scene with that
tile if the frame's deadline still allows, else the frame is dropped.

Frames of a stream are issued at `fps` (frame i at start + i/fps), each as realtime jobs (one per tile) with
the frame's deadline (`deadline_ms` after it was issued). A frame whose tiles are not all back by its deadline
is **dropped**: it is yielded in its place with `dropped=True`, no image and the reason, counted in
`StreamStats` and in metrics, never delivered late as if on time. At most `max_in_flight` frames are issued
and not yet taken by the consumer: a consumer that reads slowly holds the stream back (issuing resumes on the
schedule from then on, without a burst to catch up; `stats.stalls` counts the waits).

`render_stream` is a trio "safe channel" (an async context manager yielding a receive channel), so the
stream's tasks live in a nursery that closes with the `async with` block.
"""

from __future__ import annotations

import math
import secrets
import statistics
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio
from prometheus_client import Counter, Histogram

from mesh.bigtcp.rpc import RpcError
from scheduler.client.client import Client, JobResult
from worker.render.camera import Pose, Tile
from worker.render.kind import (
    NAME,
    OUTPUT_BYTES_PER_PIXEL,
    decode_output,
    encode_scene,
    flops_per_pixel,
    is_not_cached,
    make_spec,
    pixel_cost_for,
    plan_tiles,
    split_count,
    tile_of_body,
)
from worker.render.scene import Scene, content_hash, from_dict

# ---- metrics (default registry: the client process's) -----------------------------------------------------------
FRAMES_RENDERED = Counter("gpumesh_render_frames_rendered_total", "Frames delivered complete by their deadline")
FRAMES_DROPPED = Counter("gpumesh_render_frames_dropped_total",
                         "Frames dropped: deadline (not back in time or refused as unmeetable) or error", ["reason"])
FRAME_LATENCY = Histogram("gpumesh_render_frame_latency_seconds",
                          "Issue-to-assembled latency of delivered frames (all tiles back)",
                          buckets=(0.004, 0.008, 0.012, 0.016, 0.025, 0.033, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
                                   1, 2.5, 10))
SCENE_RESENDS = Counter("gpumesh_render_scene_resends_total",
                        "Tiles resent with their scene because the worker did not hold it")

DEFAULT_OVERHEAD_S = 0.01  # per-job overhead before any is observed (submit, place, collect)
PEERS_TTL_S = 5.0
SMALL_SCENE_BYTES = 64 << 10  # scenes up to this size ride along until every peer is known to hold them
CARRY_PER_PEER = 4
MIN_STANDING = 0.25  # placement skips peers below this (scheduler.core.placement)


class FrameDropped(Exception):
    """A tile could not be had by the frame's deadline (`reason`: deadline | error) with the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class TileInfo:
    tile: Tile
    job_id: str
    worker: str
    attempt: int
    render_s: float
    latency_s: float
    scene_sent: bool


@dataclass
class Frame:
    """One frame: `rgba` (h, w, 4) uint8 sRGB premultiplied alpha and `depth` (h, w) float32 metres (+inf: no hit),
    or `dropped=True` with `reason` and no image."""

    index: int
    pose: Pose
    rgba: np.ndarray | None
    depth: np.ndarray | None
    latency_s: float
    tiles: list[TileInfo] = field(default_factory=list)
    dropped: bool = False
    reason: str = ""

    @property
    def workers(self) -> set[str]:
        return {t.worker for t in self.tiles}


@dataclass
class StreamStats:
    """What a stream did: frames issued, delivered, dropped (by reason), latencies of delivered frames."""

    frames: int = 0
    rendered: int = 0
    dropped: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    stalls: int = 0  # times the producer waited for the consumer (back-pressure)
    scene_resends: int = 0

    def record(self, frame: Frame) -> None:
        self.frames += 1
        if frame.dropped:
            self.dropped += 1
            key = frame.reason.split(":", 1)[0]
            self.dropped_by_reason[key] = self.dropped_by_reason.get(key, 0) + 1
        else:
            self.rendered += 1
            self.latencies_s.append(frame.latency_s)

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        return float(np.percentile(np.asarray(self.latencies_s) * 1e3, q))

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_s
        return {"frames": self.frames, "rendered": self.rendered, "dropped": self.dropped,
                "dropped_by_reason": dict(self.dropped_by_reason),
                "p50_ms": _r(self.percentile_ms(50)), "p99_ms": _r(self.percentile_ms(99)),
                "mean_ms": _r(statistics.fmean(lat) * 1e3) if lat else None,
                "max_ms": _r(max(lat) * 1e3) if lat else None, "stalls": self.stalls,
                "scene_resends": self.scene_resends}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def as_scene(scene: Scene | dict[str, Any]) -> Scene:
    return scene if isinstance(scene, Scene) else from_dict(scene)


def tiles_from_grid(width: int, height: int, k: int) -> list[Tile]:
    cols, rows = split_count(max(1, k))
    return Tile.grid(width, height, cols, rows)


@dataclass(frozen=True)
class PeerDevice:
    peer_id: str
    kind: str
    f32_gflops: float
    standing: float
    host: str = ""
    device_id: str = ""

    @property
    def hardware(self) -> tuple[str, str]:
        """What it computes on: CPU devices of one host share its cores; a GPU is (host, device id)."""
        return (self.host, "cpu") if self.kind in ("cpu", "reference") else (self.host, self.device_id)


class RenderSession:
    """One scene on one client: its hash, its bytes, whether it was sent, the peers and the overhead seen."""

    def __init__(self, client: Client, scene: Scene | dict[str, Any]) -> None:
        self.client = client
        self.scene = as_scene(scene)
        self.hash = content_hash(self.scene)
        self.scene_bytes = encode_scene(self.scene)
        self.px_flops = flops_per_pixel(self.scene)
        self.scene_sent = False
        self.carried = 0  # jobs that carried the scene
        self.known_on: set[str] = set()  # workers that returned a result for this scene
        self.overhead_s = DEFAULT_OVERHEAD_S
        self.resends = 0
        self._id = secrets.token_hex(4)
        self._seq = 0
        self._peers: list[PeerDevice] = []
        self._peers_at = -math.inf

    @property
    def width(self) -> int:
        return self.scene.camera.width

    @property
    def height(self) -> int:
        return self.scene.camera.height

    # ---- the mesh as this client sees it ---------------------------------------------------------------------
    async def peers(self) -> list[PeerDevice]:
        """Devices of the peers the coordinator sees (mesh.peers), refreshed every few seconds; [] if the
        token may not read them."""
        now = trio.current_time()
        if now - self._peers_at < PEERS_TTL_S:
            return self._peers
        try:
            resp = await self.client.rpc.call("mesh.peers", {})
        except RpcError:
            resp = {"peers": []}
        out = []
        for p in resp.get("peers", []):
            host = str(p.get("data_addr") or "").rpartition(":")[0] or p["peer_id"]
            for d in p.get("devices", []):
                out.append(PeerDevice(p["peer_id"], str(d.get("kind", "")), float(d.get("f32_gflops") or 0.0),
                                      float(p.get("standing", 1.0)), host, str(d.get("id", ""))))
        self._peers, self._peers_at = out, now
        return out

    async def candidates(self) -> list[str]:
        """Peers placement would consider for this scene's jobs (any device, standing high enough)."""
        return sorted({d.peer_id for d in await self.peers() if d.standing >= MIN_STANDING})

    async def parallelism(self) -> int:
        """How many tiles can really run at once: distinct hardware among the candidates' devices (nodes on
        one host share its CPU; each GPU counts once however many nodes on its host advertise it)."""
        return max(1, len({d.hardware for d in await self.peers() if d.standing >= MIN_STANDING}))

    async def per_pixel_cost(self) -> float:
        devs = [d for d in await self.peers() if d.standing >= MIN_STANDING]
        if not devs:
            return pixel_cost_for(self.px_flops, "cpu", 0.0)
        return statistics.median(pixel_cost_for(self.px_flops, d.kind, d.f32_gflops) for d in devs)

    async def plan(self, tiles: Any) -> list[Tile]:
        """The tiles of a frame: None (whole frame), "auto" (plan_tiles over the distinct hardware of the
        candidate peers: a loopback mesh on one machine is one), a count, or a list of Tiles."""
        w, h = self.width, self.height
        if tiles is None:
            return [Tile.full(w, h)]
        if tiles == "auto":
            n = await self.parallelism()
            return list(plan_tiles(w, h, n, await self.per_pixel_cost(), self.overhead_s).tiles)
        if isinstance(tiles, int):
            return tiles_from_grid(w, h, tiles)
        out = list(tiles)
        covered = np.zeros((h, w), np.int32)
        for t in out:
            t.check(w, h)
            covered[t.y0:t.y0 + t.h, t.x0:t.x0 + t.w] += 1
        if not (covered == 1).all():
            raise ValueError("tiles must cover every pixel of the frame exactly once")
        return out

    async def should_send(self) -> bool:
        """Whether the next job carries the scene: always until one job has; then, for a small scene only,
        while some candidate peer has not yet returned a result for it (at most CARRY_PER_PEER jobs per
        candidate), so that peers the warm-up missed get it without a failed round trip. Otherwise the hash
        alone (a worker without the scene fails at once and the tile is resent with it)."""
        if not self.scene_sent:
            return True
        if len(self.scene_bytes) > SMALL_SCENE_BYTES:
            return False
        cands = await self.candidates()
        return bool(set(cands) - self.known_on) and self.carried < CARRY_PER_PEER * max(1, len(cands))

    # ---- scene placement --------------------------------------------------------------------------------------
    async def warm(self, rounds: int = 3) -> set[str]:
        """Put the scene on the peers before a stream starts: rounds of concurrent jobs carrying the scene (one
        per peer not yet known to hold it; each renders one row), until every candidate returned one or
        `rounds` are spent. Returns the peers known to hold it."""
        for _ in range(rounds):
            missing = [p for p in await self.candidates() if p not in self.known_on]
            n = len(missing) if missing else (0 if self.scene_sent else 1)
            if n == 0:
                break
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    row = Tile(0, (self.height * i) // max(n, 1), self.width, 1)
                    nursery.start_soon(self._warm_one, row)
        return set(self.known_on)

    async def _warm_one(self, tile: Tile) -> None:
        try:
            await self.render_tile(Pose(self.scene.camera.position, self.scene.camera.orientation), tile,
                                   send_scene=True)
        except FrameDropped:
            pass

    # ---- one tile ------------------------------------------------------------------------------------------
    def _job_id(self, tag: str) -> str:
        self._seq += 1
        return f"render-{self._id}-{self._seq}-{tag}"

    async def render_tile(self, pose: Pose, tile: Tile, *, deadline_at: float | None = None,
                          send_scene: bool | None = None, tag: str = "t", submitted: list[str] | None = None,
                          ) -> tuple[TileInfo, np.ndarray, np.ndarray]:
        """Render one tile as one job; resends the scene once if the worker lacks it. Raises FrameDropped."""
        c = self.client
        send = (await self.should_send()) if send_scene is None else send_scene
        for _ in range(2):
            t0 = trio.current_time()
            kw: dict[str, Any] = {"priority": "interactive", "timeout_s": 120.0}
            if deadline_at is not None:
                remaining = deadline_at - t0
                if remaining <= 0:
                    raise FrameDropped("deadline", "deadline passed before the tile could be submitted")
                kw = {"priority": "realtime", "deadline_ms": remaining * 1000.0, "timeout_s": max(remaining, 1.0)}
            spec = make_spec(self.hash, pose, tile, px_flops=self.px_flops)
            job_id = self._job_id(tag)
            try:
                ans = await c.submit(NAME, spec, input=self.scene_bytes if send else None, job_id=job_id, **kw)
            except RpcError as e:
                raise FrameDropped("error", f"submit refused: {e.message or e.code}") from None
            if submitted is not None:
                submitted.append(job_id)
            if not ans.get("accepted"):
                code = ans.get("code", "")
                reason = "deadline" if code == "deadline" or "deadline" in str(ans.get("message", "")) else "error"
                raise FrameDropped(reason, str(ans.get("message") or code or "not accepted"))
            if send:
                self.scene_sent = True
                self.carried += 1
            res = await c.result(job_id)
            res = await self._complete(job_id, res, tile)
            t1 = trio.current_time()
            if res.ok:
                try:
                    got = tile_of_body(res.body)
                    rgba, depth = decode_output(got, res.output)
                except ValueError as e:
                    raise FrameDropped("error", f"bad result from {res.worker}: {e}") from None
                if got != tile or res.body.get("scene_hash") != self.hash:
                    raise FrameDropped("error", f"result from {res.worker} is not the tile asked for")
                self.known_on.add(res.worker)
                render_s = float(res.body.get("render_s", 0.0))
                self.overhead_s = 0.8 * self.overhead_s + 0.2 * max(0.0, (t1 - t0) - render_s)
                return TileInfo(tile, job_id, res.worker, res.attempt, render_s, t1 - t0, send), rgba, depth
            if is_not_cached(res.reason) and not send:
                send = True
                self.resends += 1
                SCENE_RESENDS.inc()
                self.known_on.discard(res.worker)
                continue
            expired = "deadline" in res.reason or "expired" in res.reason
            raise FrameDropped("deadline" if expired else "error", f"tile job {job_id} {res.state}: {res.reason}")
        raise FrameDropped("error", "the worker did not take the scene")

    async def _complete(self, job_id: str, res: JobResult, tile: Tile) -> JobResult:
        """Work around a race in the node's job.result: a result read just as the job turns done can come
        without its output bytes (written to disk a moment later). Ask again, briefly backing off."""
        want = tile.w * tile.h * OUTPUT_BYTES_PER_PIXEL
        for i in range(8):
            if not res.ok or len(res.output) == want:
                break
            await trio.sleep(0.005 * 2**i)
            res = await self.client.result(job_id, wait=False)
        return res

    # ---- one frame ---------------------------------------------------------------------------------------
    async def frame(self, pose: Pose, *, index: int = 0, tiles: Any = None, deadline_at: float | None = None,
                    issued_at: float | None = None, background: trio.Nursery | None = None) -> Frame:
        """Render one frame (tiles as in `plan`) and assemble the tiles as they come back. With `deadline_at`
        (absolute trio time) each tile is a realtime job and the frame is dropped if not complete by then."""
        t0 = issued_at if issued_at is not None else trio.current_time()
        plan = await self.plan(tiles)
        w, h = self.width, self.height
        rgba = np.zeros((h, w, 4), np.uint8)
        depth = np.full((h, w), np.inf, np.float32)
        infos: list[TileInfo] = []
        failure: list[FrameDropped] = []

        async def one(i: int, t: Tile, scope: trio.CancelScope) -> None:
            try:
                info, c, d = await self.render_tile(pose, t, deadline_at=deadline_at, tag=f"f{index}t{i}",
                                                    submitted=submitted)
            except FrameDropped as e:
                failure.append(e)
                scope.cancel()
                return
            rgba[t.y0:t.y0 + t.h, t.x0:t.x0 + t.w] = c
            depth[t.y0:t.y0 + t.h, t.x0:t.x0 + t.w] = d
            infos.append(info)

        submitted: list[str] = []
        with trio.CancelScope(deadline=deadline_at if deadline_at is not None else math.inf) as scope:
            async with trio.open_nursery() as nursery:
                for i, t in enumerate(plan):
                    nursery.start_soon(one, i, t, scope)
        now = trio.current_time()
        latency = now - t0
        dropped: FrameDropped | None = None
        if failure:
            dropped = failure[0]
        elif len(infos) < len(plan) or (deadline_at is not None and now > deadline_at):
            dropped = FrameDropped("deadline", f"{len(infos)} of {len(plan)} tiles back by the deadline")
        if dropped is not None:
            FRAMES_DROPPED.labels(dropped.reason).inc()
            if background is not None:  # stop what is still queued or running for this frame
                done = {i.job_id for i in infos}
                for jid in submitted:
                    if jid not in done:
                        background.start_soon(self._cancel_quietly, jid)
            return Frame(index, pose, None, None, latency, sorted(infos, key=_tile_key), True, str(dropped))
        FRAMES_RENDERED.inc()
        FRAME_LATENCY.observe(latency)
        return Frame(index, pose, rgba, depth, latency, sorted(infos, key=_tile_key))

    async def _cancel_quietly(self, job_id: str) -> None:
        with trio.move_on_after(5):
            try:
                await self.client.cancel(job_id)
            except RpcError:
                pass  # unknown (never submitted under this seq) or finished already


def _tile_key(info: TileInfo) -> tuple[int, int]:
    return (info.tile.y0, info.tile.x0)


_sessions: weakref.WeakKeyDictionary[Client, dict[str, RenderSession]] = weakref.WeakKeyDictionary()


def session_for(client: Client, scene: Scene | dict[str, Any]) -> RenderSession:
    """The client's RenderSession for this scene (created on first use; a few scenes per client kept)."""
    sc = as_scene(scene)
    h = content_hash(sc)
    per = _sessions.setdefault(client, {})
    sess = per.get(h)
    if sess is None:
        if len(per) >= 8:
            per.pop(next(iter(per)))
        sess = per[h] = RenderSession(client, sc)
    return sess


async def render_frame(client: Client, scene: Scene | dict[str, Any], pose: Pose | None = None, *,
                       tiles: Any = None, deadline_ms: float | None = None) -> Frame:
    """Render one frame of `scene` at `pose` (default: the scene camera's). `tiles`: None (one job), "auto"
    (split when the cost model says it pays), a tile count, or a list of Tiles covering the frame. With
    `deadline_ms` the tiles are realtime jobs and a frame not complete in time comes back `dropped`."""
    sess = session_for(client, scene)
    pose = pose or sess.scene.camera.pose
    t0 = trio.current_time()
    deadline_at = t0 + deadline_ms / 1000.0 if deadline_ms is not None else None
    return await sess.frame(pose, tiles=tiles, deadline_at=deadline_at, issued_at=t0)


async def _poses(poses: Iterable[Pose] | AsyncIterable[Pose]) -> AsyncIterator[Pose]:
    if isinstance(poses, AsyncIterable):
        async for p in poses:
            yield p
    else:
        for p in poses:
            yield p


@trio.as_safe_channel  # type: ignore[attr-defined]  # (trio-typing stubs predate it)
async def render_stream(client: Client, scene: Scene | dict[str, Any], poses: Iterable[Pose] | AsyncIterable[Pose],
                        *, fps: float = 60.0, deadline_ms: float | None = 16.0, tiles: Any = None,
                        max_in_flight: int = 4, stats: StreamStats | None = None, warm: bool = True,
                        ) -> AsyncIterator[Frame]:
    """Frames of `scene` at each pose, in order (see the module doc): use as
    `async with render_stream(c, scene, poses) as frames: async for f in frames: ...`."""
    if fps <= 0:
        raise ValueError("fps must be positive")
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    sess = session_for(client, scene)
    stats = stats if stats is not None else StreamStats()
    resends_before = sess.resends
    if warm:
        await sess.warm()
    period = 1.0 / fps
    slots = trio.Semaphore(max_in_flight)
    send, recv = trio.open_memory_channel[tuple[trio.Event, list[Frame]]](math.inf)
    async with trio.open_nursery() as nursery:

        async def render_one(i: int, pose: Pose, issued: float, done: trio.Event, out: list[Frame]) -> None:
            deadline_at = issued + deadline_ms / 1000.0 if deadline_ms is not None else None
            out.append(await sess.frame(pose, index=i, tiles=tiles, deadline_at=deadline_at, issued_at=issued,
                                        background=nursery))
            done.set()

        async def producer() -> None:
            async with send:
                t_next = trio.current_time()
                i = 0
                async for pose in _poses(poses):
                    if slots.value == 0:
                        stats.stalls += 1
                    await slots.acquire()
                    now = trio.current_time()
                    if now > t_next + period:  # held back by the consumer: resume the schedule from now
                        t_next = now
                    await trio.sleep_until(t_next)
                    issued = max(t_next, trio.current_time())
                    t_next += period
                    done, out = trio.Event(), list[Frame]()
                    nursery.start_soon(render_one, i, pose, issued, done, out)
                    await send.send((done, out))
                    i += 1

        nursery.start_soon(producer)
        async with recv:
            async for done, out in recv:
                await done.wait()
                frame = out[0]
                stats.record(frame)
                stats.scene_resends = sess.resends - resends_before
                yield frame
                slots.release()


__all__ = ["Frame", "FrameDropped", "RenderSession", "StreamStats", "TileInfo", "render_frame", "render_stream",
           "session_for"]
