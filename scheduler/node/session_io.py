"""Real-time render sessions, the trio side (the pure part is scheduler/core/render_session.py).

Three RPC methods, each one long call on one held stream:

- `render.session` (client -> gateway, scope `submit`): the request (`SessionRequest`), then the scene's bytes
  as data frames and `{"scene": "end"}`; the gateway chooses one device per tile (distinct hosts first),
  opens `peer.render_session` on each (the node's own device through an in-process pipe, no network hop),
  forwards the scene, and answers `{"ready": {...}}`, with for each remote tile where its worker may be reached
  directly (`attach`: address, peer id, ticket; see session_attach). Then each frame is one item
  `{f, pose, budget_ms}` from the client, forwarded to every tile's worker the client did not attach to
  (`{"attached": [tile, ...]}` says which it did), and each tile comes back as one item `{f, t, tile, p, ...}`
  (`p`: the `frame_codec` payload) or `{f, t, drop}`. The client ending its uploads ends the session
  (final answer: the per-tile counts); the client going away cancels it; a worker lost mid-session is told
  to the client (`{"lost": ...}`) and ends the call with `worker_lost`.
- `render.attach` (client -> worker, with a ticket): that tile's frames `{f, pose, budget_ms}` straight from
  the client and its tiles `{f, tile, p, ...}` or `{f, drop}` straight back, one hop each way; the answer is
  the tile's counts. The gateway still holds the session: its end or loss ends the tile.
- `peer.render_session` (gateway -> worker, peers only): one tile. The worker reserves a slot on one of its
  devices (`Executor.reserved_slot`: no job gets it until the session ends), keeps a runner leased with the
  scene uploaded, renders warm-up frames to measure its frame time, refuses the session when that cannot
  make the deadline, else answers `{"ready": {...}}`; then renders frames as they come, dropping a frame
  before rendering when the measured frame time says it can no longer make its deadline
  (`core.render_session.WorkerTile`). Every reply is encoded by `worker.render.frame_codec`.

Slots, runner leases and the per-owner session counts are released in `finally` blocks: on session end,
cancel, client or gateway loss alike.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import trio
from prometheus_client import Counter, Gauge, Histogram

from mesh.bigtcp.rpc import Call, RpcError, RpcServer
from mesh.wire.advert import AddressError, split_hostport
from scheduler.core.placement import TrackedView
from scheduler.core.render_session import (
    MAX_AHEAD,
    MAX_SESSIONS_PER_COORDINATOR,
    MAX_SESSIONS_PER_TENANT,
    Candidate,
    Drop,
    Render,
    SessionError,
    SessionRequest,
    TenantSessions,
    TileOpen,
    WorkerTile,
    admit,
    choose_devices,
    parse_frame,
    parse_session_request,
    parse_tile_open,
    split_frame,
)
from scheduler.node.links import LinkError, PeerLinks, RemoteLink
from scheduler.node.session_attach import Attachment, Tickets, ticket_of
from scheduler.node.session_wire import (
    Duplex,
    Pipe,
    check_tile_item,
    flat_errors,
    receive_scene,
    rpc_error,
    tile_payload_bound,
)
from worker.executor import Executor, Saturated
from worker.kinds import SpecError
from worker.opencl import run_blocking
from worker.render import reference
from worker.render.camera import Pose, Tile
from worker.render.frame_codec import TileEncoder, raw_bytes
from worker.render.kind import (
    CACHE,
    CachedScene,
    decode_scene,
    render_tile_view,
)
from worker.render.scene import content_hash
from worker.runner.pool import RunnerError, RunnerLease

log = logging.getLogger("gpumesh.render.session")

WARMUP_FRAMES = 3  # rendered at the scene camera's pose before a session is admitted; the first is not timed
OPEN_TIMEOUT_S = 120.0  # scene upload, runner start, kernel build and warm-up of one tile
MAX_SESSION_PIXELS = 1920 * 1080

SESSIONS = Gauge("gpumesh_render_sessions", "Real-time render sessions open on this node, by role (gateway for "
                 "the client's, worker for the tiles it renders)", ["role"])
SESSION_FRAMES = Counter("gpumesh_render_session_tiles_total", "Tiles of real-time render sessions this node's "
                         "worker handled: rendered, or dropped before rendering (deadline, overrun, stale)",
                         ["outcome"])
SESSION_BYTES = Counter("gpumesh_render_session_tile_bytes_total", "Compressed tile bytes this node's worker sent")
SESSION_REFUSED = Counter("gpumesh_render_sessions_refused_total", "Render sessions (gateway) or tiles (worker) "
                          "refused, by reason", ["reason"])
SESSION_FRAME_SECONDS = Histogram("gpumesh_render_session_frame_seconds", "Render time of one session tile",
                                  buckets=(0.001, 0.002, 0.005, 0.01, 0.016, 0.025, 0.033, 0.05, 0.1, 0.25, 1))


class RenderSessions:
    """Both halves of render sessions on one node: the gateway (client-facing) and the worker (peer-facing)."""

    def __init__(self, peer_id: str, view: TrackedView, links: PeerLinks, executor: Executor, *,
                 require: Callable[[Call, str], Any]) -> None:
        self.peer_id = peer_id
        self.view = view
        self.links = links
        self.executor = executor
        self._require = require
        self.tenants = TenantSessions(MAX_SESSIONS_PER_TENANT)
        self.coordinators = TenantSessions(MAX_SESSIONS_PER_COORDINATOR)
        self.tickets = Tickets()

    def register(self, rpc: RpcServer) -> None:
        rpc.register("render.session", self._client_session)
        rpc.register("peer.render_session", self._peer_tile)
        rpc.register("render.attach", self._attach)

    # ================================================================ worker: one tile of a session
    async def _peer_tile(self, call: Call) -> dict[str, Any]:
        p = call.principal
        if p is None or getattr(p, "kind", "") != "peer":
            raise RpcError("forbidden", "peer.render_session is for nodes of this mesh")
        try:
            return await self.serve_tile(call, call.peer_id, call.body)
        except SessionError as e:
            raise rpc_error(e) from None

    async def serve_tile(self, io: Duplex, owner: str, body: Any) -> dict[str, Any]:
        """One tile of a session for gateway `owner`, over `io` (see the module doc). Returns the counts."""
        req = parse_tile_open(body)
        self.coordinators.open(owner, req.session)
        SESSIONS.labels("worker").inc()
        try:
            with trio.fail_after(OPEN_TIMEOUT_S):
                entry = await self._scene(await receive_scene(io), req)
            try:
                async with self.executor.reserved_slot(f"session:{owner}:{req.session}") as (device, handle):
                    return await self._run_tile(io, req, entry, device, handle)
            except Saturated as e:
                SESSION_REFUSED.labels("no_slot").inc()
                raise SessionError("unavailable", f"{self.peer_id}: {e}") from None
        except trio.TooSlowError:
            raise SessionError("unavailable", f"{self.peer_id}: the tile was not ready in {OPEN_TIMEOUT_S:g} s") from None
        finally:
            SESSIONS.labels("worker").dec()
            self.coordinators.close(owner, req.session)

    async def _scene(self, data: bytes, req: TileOpen) -> CachedScene:
        entry = CACHE.get(req.scene_hash, count=False)
        if entry is None:
            if not data:
                raise SessionError("bad_request", f"scene {req.scene_hash} is not held here: send it")
            try:
                scene = await trio.to_thread.run_sync(decode_scene, data)
            except SpecError as e:
                raise SessionError("bad_request", str(e)) from None
            if await trio.to_thread.run_sync(content_hash, scene) != req.scene_hash:
                raise SessionError("bad_request", "the scene does not match its scene_hash")
            entry = CACHE.put(scene, req.scene_hash)
        cam = entry.scene.camera
        if (cam.width, cam.height) != (req.width, req.height):
            raise SessionError("bad_request", f"the scene's camera is {cam.width}x{cam.height}, the session asks "
                                              f"for {req.width}x{req.height}")
        return entry

    async def _run_tile(self, io: Duplex, req: TileOpen, entry: CachedScene, device: Any, handle: Any) -> dict[str, Any]:
        if isinstance(handle, RunnerLease):
            await handle.acquire()
        tile = WorkerTile()
        encoder = TileEncoder()
        cam_pose = entry.scene.camera.pose

        async def render(pose: Pose) -> tuple[Any, float]:
            t0 = time.perf_counter()
            raw = await self._render(handle, entry, pose, req.tile)
            return raw, time.perf_counter() - t0

        try:
            for i in range(WARMUP_FRAMES):  # the first builds the kernel and uploads the scene: not timed
                seconds = (await render(cam_pose))[1]  # no view of the arena kept
                if i:
                    tile.times.observe(seconds)
        except RunnerError as e:
            raise SessionError("unavailable", f"{self.peer_id}: device {device.id}: {e}") from None
        why = admit(tile.times, req.fps, req.deadline_ms)
        if why is not None:
            SESSION_REFUSED.labels("deadline").inc()
            raise SessionError("deadline", f"device {device.id}: {why}")
        with self._ticket(io, req) as (ticket, attachment):
            ready = {"device": device.id, "estimate_ms": tile.times.estimate_s() * 1000}
            if ticket is not None:
                ready["attach"] = ticket
            await io.send({"ready": ready})
            counts = await self._frames(io, attachment, req, tile, encoder, render, device)
            if attachment is not None:
                attachment.result = counts
        await io.send({"end": counts})
        return counts

    @contextmanager
    def _ticket(self, io: Duplex, req: TileOpen) -> Iterator[tuple[str | None, Attachment | None]]:
        """A direct-attach ticket for a tile a remote gateway holds (session_attach); none for this node's own
        gateway, whose client is connected here already."""
        if isinstance(io, Pipe):
            yield None, None
            return
        with self.tickets.issue(req.session) as (ticket, attachment):
            yield ticket, attachment

    async def _frames(self, io: Duplex, attachment: Attachment | None, req: TileOpen, tile: WorkerTile,
                      encoder: TileEncoder, render: Callable[[Pose], Any], device: Any) -> dict[str, Any]:
        """Render the session's frames until its frames end: from the gateway (`io`), or from the client once it
        attached (`attachment`), whose stream then takes the tiles back too. Returns the tile's counts."""
        wake = trio.Event()
        lock = trio.Lock()
        ended = False
        out: Duplex = io  # where tiles go: the gateway, or the attached client

        rendered = SESSION_FRAMES.labels("rendered")

        def send_now(item: dict[str, Any]) -> bool:
            """Sent without waiting (the common case: no task switch); False, nothing sent: use `send`."""
            return not lock.locked() and out.send_nowait(item)

        async def send(item: dict[str, Any]) -> None:
            if send_now(item):
                return
            async with lock:
                await out.send(item)

        def dropped(d: Drop) -> dict[str, Any]:
            """A dropped frame, counted; its notice to the client."""
            SESSION_FRAMES.labels(f"dropped_{d.reason}").inc()
            return {"f": d.index, "drop": f"{d.reason}: {d.detail}"}

        late_drops: deque[dict[str, Any]] = deque()  # notices of drops as frames arrived that could not go at once

        def take(source: Duplex, item: Any) -> bool:
            """A frame, in the connection's reader task as it arrives (no task switch per frame): queued, and the
            renderer woken. One that does not parse is left to `reader`, which raises there."""
            if source is not out:  # relayed by the gateway after the client attached: the client's own wins
                return True
            try:
                frame = parse_frame(item, req.deadline_ms)
            except SessionError:
                return False
            for d in tile.arrive(frame, trio.current_time()):
                notice = dropped(d)
                if late_drops or not send_now(notice):
                    late_drops.append(notice)  # in order, by the renderer
            wake.set()
            return True

        async def reader(source: Duplex) -> None:
            nonlocal ended
            on_items = getattr(source, "on_items", None)  # a stream's (not an in-process pipe's)
            if on_items is not None:
                on_items(partial(take, source))
            try:
                while (item := await source.receive()) is not None:  # what `take` left, and the end
                    if not take(source, item):
                        parse_frame(item, req.deadline_ms)  # raises why it does not parse
                    while late_drops:
                        await send(late_drops.popleft())
            finally:
                if on_items is not None:
                    on_items(None)
            ended = True  # the gateway ended the session, or the attached client its frames
            wake.set()

        async def attached() -> None:
            nonlocal out
            assert attachment is not None
            try:
                client = await attachment.handoff_rx.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            async with lock:
                out = client
            await reader(client)

        async def renderer() -> None:
            nonlocal wake
            while True:
                while late_drops:
                    await send(late_drops.popleft())
                action = tile.next(trio.current_time())
                if action is None:
                    if ended:
                        return
                    await wake.wait()
                    wake = trio.Event()
                    continue
                if isinstance(action, Drop):
                    await send(dropped(action))
                    continue
                assert isinstance(action, Render)
                waited = trio.current_time() - action.arrived
                try:
                    raw, seconds = await render(action.pose)
                except RunnerError as e:
                    raise SessionError("unavailable", f"{self.peer_id}: device {device.id}: {e}") from None
                tile.rendered(seconds)
                t_enc = time.perf_counter()
                try:
                    enc = encoder.encode_raw(raw)
                finally:
                    del raw  # a view of the runner's arena (its next call reuses it)
                encode_s = time.perf_counter() - t_enc
                await send({"f": action.index, "tile": enc.header(), "p": enc.payload,
                            "render_ms": seconds * 1000, "est_ms": tile.times.estimate_s() * 1000,
                            "wait_ms": waited * 1000, "encode_ms": encode_s * 1000})
                rendered.inc()  # counted once the tile is on its way
                SESSION_FRAME_SECONDS.observe(seconds)
                SESSION_BYTES.inc(len(enc.payload))

        with flat_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader, io)
                if attachment is not None:
                    nursery.start_soon(attached)
                await renderer()
                nursery.cancel_scope.cancel()  # the other frame source, if any, has nothing left to say
        return {"device": device.id, **tile.counts()}

    async def _attach(self, call: Call) -> dict[str, Any]:
        """render.attach (a session's client, dialed with {"attach": "session"} in its HELLO): the tile its ticket
        opens takes frames from this stream and sends its tiles back on it until the tile ends (the answer:
        its counts)."""
        try:
            attachment = self.tickets.redeem(call.body.get("ticket") if isinstance(call.body, dict) else None)
        except SessionError as e:
            SESSION_REFUSED.labels("ticket").inc()
            raise rpc_error(e) from None
        try:
            attachment.handoff_tx.send_nowait(call)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            raise RpcError("unavailable", "the session's tile has ended") from None
        await attachment.ended.wait()
        return attachment.result

    @staticmethod
    async def _render(handle: Any, entry: CachedScene, pose: Pose, tile: Tile) -> Any:
        """The tile in its raw wire layout (`frame_codec.raw_bytes`: RGBA8 rows, then half-float depth rows)."""
        if isinstance(handle, RunnerLease):
            # the kernel writes the half-float depth; straight from the arena: the encoder is done with it
            # (compressed, and copied if it is the next delta's base) before this lease's next call
            return await render_tile_view(handle, None, entry, pose, tile, 1, half_depth=True)
        if handle is None:
            rgba, depth = await trio.to_thread.run_sync(reference.render, entry.prepared(), pose, tile)
        else:
            rgba, depth = await run_blocking(entry.render_on, handle, pose, tile)
        return raw_bytes(rgba, depth)

    # ================================================================ gateway: the client's session
    async def _client_session(self, call: Call) -> dict[str, Any]:
        principal = self._require(call, "submit")
        tenant = principal.token.name if principal.token is not None else ""
        try:
            req = parse_session_request(call.body)
            if req.width * req.height > MAX_SESSION_PIXELS:
                raise SessionError("bad_request", f"a session frame has at most {MAX_SESSION_PIXELS} pixels")
            sid = secrets.token_hex(8)
            self.tenants.open(tenant, sid)
        except SessionError as e:
            SESSION_REFUSED.labels(e.code).inc()
            raise rpc_error(e) from None
        SESSIONS.labels("gateway").inc()
        try:
            with flat_errors():
                return await self._gateway(call, req, sid)
        except SessionError as e:
            SESSION_REFUSED.labels(e.code).inc()
            raise rpc_error(e) from None
        finally:
            SESSIONS.labels("gateway").dec()
            self.tenants.close(tenant, sid)

    def _candidates(self, req: SessionRequest) -> list[Candidate]:
        out = []
        for p in self.view.peers():
            if req.peers is not None and p.peer_id not in req.peers:
                continue
            try:
                host = split_hostport(p.advert.data_addr)[0] if p.advert.data_addr else p.peer_id
            except AddressError:
                continue
            for d in p.devices():
                out.append(Candidate(p.peer_id, d.id, host, d.free_slots, float(d.f32_gflops or 0.0),
                                     self.view.standing(p.peer_id)))
        return out

    async def _gateway(self, call: Call, req: SessionRequest, sid: str) -> dict[str, Any]:
        scene = await receive_scene(call)
        chosen = choose_devices(self._candidates(req), req.tiles)
        if len(chosen) < req.tiles:
            raise SessionError("unavailable", f"{req.tiles} tile(s) asked for, {len(chosen)} peer(s) with a device "
                                              "in this node's view")
        tiles = split_frame(req.width, req.height, req.tiles)
        links = [TileLink(self, i, c.peer_id, TileOpen(sid, req.scene_hash, req.width, req.height, t, req.fps,
                                                       req.deadline_ms))
                 for i, (c, t) in enumerate(zip(chosen, tiles, strict=True))]
        frames = 0
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(OPEN_TIMEOUT_S), flat_errors():
                    async with trio.open_nursery() as opening:
                        for link in links:
                            opening.start_soon(nursery.start, link.run, scene, call, nursery.cancel_scope)
            except trio.TooSlowError:
                raise SessionError("unavailable", f"the session's devices were not ready in {OPEN_TIMEOUT_S:g} s") from None
            await call.send({"ready": {"session": sid, "tiles": [t.to_dict() for t in tiles],
                                       "workers": [lk.peer_id for lk in links],
                                       "devices": [lk.device for lk in links],
                                       "estimate_ms": [lk.estimate_ms for lk in links],
                                       "attach": [self._attach_info(lk) for lk in links]}})
            relayed = list(links)  # tiles whose frames go through here (the client attached to none yet)
            while (item := await call.receive()) is not None:
                if isinstance(item, dict) and "attached" in item:
                    relayed = _still_relayed(relayed, item["attached"])
                    continue
                frame = parse_frame(item, req.deadline_ms)
                if relayed and frames - min(lk.answered for lk in relayed) >= MAX_AHEAD:  # a flooding client costs workers nothing
                    SESSION_REFUSED.labels("overrun").inc()
                    for link in relayed:
                        await call.send({"f": frame.index, "t": link.index,
                                         "drop": f"overrun: {MAX_AHEAD} frames in flight at the gateway"})
                    continue
                frames += 1
                msg = {"f": frame.index, "pose": frame.pose.to_dict(), "budget_ms": frame.budget_ms}
                for link in relayed:
                    await link.send(msg)
            for link in links:
                await link.done_sending()
        for link in links:
            if link.error is not None:
                raise SessionError("worker_lost", f"tile {link.index} on {link.peer_id}: {link.error.message}")
        return {"session": sid, "frames": frames, "tiles": [lk.counts for lk in links]}

    def _attach_info(self, link: TileLink) -> dict[str, Any] | None:
        """Where and how the client may reach a tile's worker directly (session_attach), or None."""
        peer = self.view.get(link.peer_id) if link.ticket is not None else None
        if peer is None or not peer.advert.data_addr:
            return None
        return {"addr": peer.advert.data_addr, "peer": link.peer_id, "ticket": link.ticket}


def _still_relayed(relayed: list[TileLink], attached: Any) -> list[TileLink]:
    """The client said which tiles it attached to (their frames stop going through the gateway)."""
    if not isinstance(attached, list) or len(attached) > len(relayed) + 64 or \
            any(isinstance(t, bool) or not isinstance(t, int) for t in attached):
        raise SessionError("bad_request", "attached is a list of tile indexes")
    return [lk for lk in relayed if lk.index not in attached or lk.ticket is None]


class TileLink:
    """The gateway's end of one tile: a `peer.render_session` call on the worker's node, or a `Pipe` to this
    node's own worker."""

    def __init__(self, sessions: RenderSessions, index: int, peer_id: str, req: TileOpen) -> None:
        self.sessions = sessions
        self.index = index
        self.peer_id = peer_id
        self.req = req
        self.device = ""
        self.estimate_ms = math.inf
        self.counts: dict[str, Any] = {}
        self.error: SessionError | None = None
        self.answered = 0  # frames the worker answered (a tile or a drop): the rest are in flight
        self.ticket: str | None = None  # the worker's direct-attach ticket (session_attach), if it gave one
        self._io: Any = None

    async def run(self, scene: bytes, client: Call, session_scope: trio.CancelScope, *,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open the tile, send the scene, wait for its ready (then `started`), then forward its tiles to the
        client until the worker ends. A failure before ready raises (the session is refused); after it, the
        client is told the tile's worker is lost and the whole session is cancelled."""
        if self.peer_id == self.sessions.peer_id:
            mine, theirs = Pipe.pair()
            self._io = mine
            try:
                with flat_errors():
                    async with trio.open_nursery() as local:
                        local.start_soon(self._serve_locally, theirs)
                        await self._pump(scene, client, session_scope, task_status)
            finally:
                mine.close()
            return
        try:
            link = self.sessions.links.get(self.peer_id)
        except LinkError as e:
            raise SessionError("unavailable", str(e)) from None
        assert isinstance(link, RemoteLink)
        try:
            async with link.client.open("peer.render_session", self.req.to_wire(), uploads=True) as c:
                self._io = c
                await self._pump(scene, client, session_scope, task_status)
        except RpcError as e:  # the connection failed before the tile's call was opened
            raise SessionError(e.code, f"{self.peer_id}: {e.message or e.code}") from None

    async def _serve_locally(self, pipe: Pipe) -> None:
        try:
            await self.sessions.serve_tile(pipe, self.sessions.peer_id, self.req.to_wire())
        except SessionError as e:
            await pipe.send({"error": {"code": e.code, "message": e.message}})
        finally:
            await pipe.done_sending()

    async def _pump(self, scene: bytes, client: Call, session_scope: trio.CancelScope, task_status: Any) -> None:
        local = isinstance(self._io, Pipe)
        for i in range(0, len(scene), 1 << 20):
            chunk = scene[i:i + (1 << 20)]
            await (self._io.send(chunk) if local else self._io.send_bytes(chunk))
        await self._io.send({"scene": "end"})
        first = await self._next()
        if first is None or not isinstance(first.get("ready"), dict):
            raise self.error or SessionError("bad_response", f"{self.peer_id}: expected ready, got {first!r:.100}")
        self.device = str(first["ready"].get("device", ""))
        est = first["ready"].get("estimate_ms")
        self.estimate_ms = float(est) if isinstance(est, int | float) else math.inf
        self.ticket = None if local else ticket_of(first["ready"].get("attach"))
        task_status.started()
        max_payload = tile_payload_bound(self.req.tile)
        while (item := await self._next()) is not None:
            if "end" in item:
                self.counts = item["end"] if isinstance(item["end"], dict) else {}
                continue
            problem = check_tile_item(item, max_payload)
            if problem is not None:  # a worker's message goes to the client only in the shape the protocol says
                SESSION_REFUSED.labels("bad_tile").inc()
                self.error = SessionError("bad_response", f"{self.peer_id}: {problem}")
                break
            item["t"] = self.index
            self.answered += 1
            await client.send(item)
        if self.error is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await client.send({"lost": {"t": self.index, "worker": self.peer_id, "reason": self.error.message}})
            session_scope.cancel()

    async def _next(self) -> dict[str, Any] | None:
        """The next item from the worker; None at its end (`error` says why when it failed)."""
        item = await self._io.receive()
        if item is None:
            if not isinstance(self._io, Pipe):
                try:
                    await self._io.result()
                except RpcError as e:
                    self.error = SessionError(e.code, f"{self.peer_id}: {e.message or e.code}")
                    return None
            if self.error is None and not self.counts:
                self.error = SessionError("worker_lost", f"{self.peer_id}: the tile's stream ended early")
            return None
        if not isinstance(item, dict):
            self.error = SessionError("bad_response", f"{self.peer_id}: unexpected data frame")
            return None
        if "error" in item:
            err = item["error"] if isinstance(item["error"], dict) else {}
            self.error = SessionError(str(err.get("code", "error")), f"{self.peer_id}: {err.get('message', '')}")
            return None
        return item

    async def send(self, msg: dict[str, Any]) -> None:
        try:
            await self._io.send(msg)
        except (RpcError, SessionError):
            pass  # the tile's reader sees its call fail and says why

    async def done_sending(self) -> None:
        try:
            await self._io.done_sending()
        except (RpcError, SessionError):
            pass


__all__ = ["Pipe", "RenderSessions", "TileLink"]
