"""The live render viewer: a web page that orbits (or, in WebXR, tracks) a camera and shows the mesh's frames
as they arrive, served over HTTP + one WebSocket on one port by `mesh-node render SCENE --serve PORT`.

    async with Client.connect(addr, token=tok) as c:
        viewer = Viewer(c, scene, tiles="auto")
        port = await nursery.start(viewer.serve, "127.0.0.1", 8080)   # http://127.0.0.1:8080/

The page (viewer_page/) sends camera poses; this server renders them through the render client
(`RenderSession.frame`, the same path as `render_stream`) and sends each frame back. Newest pose wins: a
pose that arrives while `max_in_flight` frames are rendering replaces the one still waiting, which counts as
skipped; a frame that finishes after a newer one was sent is stale and not sent; a frame the mesh drops
(deadline, error) is reported. The page counts all of these and measures latency (pose sent -> frame drawn).

WebSocket protocol (GET /ws):
- server -> page, first: text `{"type": "hello", "width", "height", "fov_y", "near", "far", "camera":
  {position, orientation}, "target": [x, y, z], "tiles", "deadline_ms", "max_in_flight"}`.
- page -> server: text `{"type": "pose", "seq": n, "position": [x, y, z], "orientation": [x, y, z, w]}`
  (seq increasing). Anything else is answered `{"type": "error", "message"}` and counted; after
  MAX_BAD_MESSAGES the connection is closed. Messages over MAX_MESSAGE bytes close it (1009).
- server -> page, exactly one answer per accepted pose: a binary frame = 4-byte big-endian header length,
  JSON header `{"type": "frame", "seq", "width", "height", "mesh_ms", "tiles", "workers", "skipped",
  "stale", "dropped"}`, then the frame's RGBA8 (sRGB, premultiplied alpha, row 0 at the top); or text
  `{"type": "dropped", "seq", "reason"}`, `{"type": "skipped", "seq"}` or `{"type": "stale", "seq"}`.

With `realtime=True` (`mesh-node render --serve PORT --realtime`) each page gets its own real-time render
session (`scheduler.client.realtime`): the scene is uploaded once and each pose is one message on a held stream;
a session the mesh refuses (its measured frame time cannot make the deadline, no device free) is told to the
page as an error and the connection closed.

The HTTP side serves only the page, its script and the WebSocket; requests are bounded (8 KiB head, 10 s).
"""

from __future__ import annotations

import json
import logging
import struct
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import trio
import trio_websocket

from mesh.bigtcp.rpc import RpcError
from scheduler.client.client import Client
from scheduler.client.realtime import RealtimeSession, open_session
from scheduler.client.render_client import Frame, session_for
from scheduler.core.render_session import MAX_FPS, MIN_FPS
from worker.render.camera import Pose, quat_to_matrix
from worker.render.errors import SceneError
from worker.render.scene import Scene, pose_from_dict

log = logging.getLogger("gpumesh.viewer")

MAX_HEAD = 8192
HEAD_TIMEOUT_S = 10.0
MAX_MESSAGE = 4096
MAX_BAD_MESSAGES = 20
MAX_VIEWERS = 8
DEFAULT_REALTIME_DEADLINE_MS = 100.0  # a realtime page's frame deadline when none is given
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/index.html": ("index.html", "text/html; charset=utf-8"),
              "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8")}


def orbit_target(scene: Scene) -> tuple[float, float, float]:
    """The point the scene camera orbits: on its view axis, nearest the world origin, at least 1 m ahead
    (as `mesh-node render`'s default orbit)."""
    cam = scene.camera
    pos = np.asarray(cam.position, np.float64)
    fwd = -quat_to_matrix(cam.orientation)[:, 2]
    t = pos + max(1.0, float(-pos @ fwd)) * fwd
    return (float(t[0]), float(t[1]), float(t[2]))


@dataclass(frozen=True)
class PoseRequest:
    seq: int
    pose: Pose


class BadMessage(ValueError):
    pass


def parse_pose_message(message: str | bytes) -> PoseRequest:
    """A page's pose message, validated; BadMessage says what is wrong."""
    if not isinstance(message, str):
        raise BadMessage("expected a text (JSON) message")
    try:
        d = json.loads(message)
    except json.JSONDecodeError as e:
        raise BadMessage(f"not JSON: {e}") from None
    if not isinstance(d, dict) or d.get("type") != "pose":
        raise BadMessage("expected {\"type\": \"pose\", ...}")
    seq = d.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**53:
        raise BadMessage(f"seq: expected an integer in [0, 2^53), got {seq!r}")
    try:
        pose = pose_from_dict({k: d.get(k) for k in ("position", "orientation")})
    except SceneError as e:
        raise BadMessage(str(e)) from None
    return PoseRequest(seq, pose)


@dataclass
class ViewerState:
    """One page's pose/frame bookkeeping (sans-IO): the newest pose waiting to render, what was sent."""

    waiting: PoseRequest | None = None
    last_seq: int = -1  # newest pose accepted
    last_sent: int = -1  # newest frame sent
    skipped: int = 0  # poses replaced by a newer one before they were rendered
    stale: int = 0  # frames finished after a newer frame was sent
    dropped: int = 0  # frames the mesh dropped (deadline or error)
    sent: int = 0
    bad: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def offer(self, req: PoseRequest) -> tuple[bool, PoseRequest | None]:
        """A pose from the page: (accepted, the waiting pose it replaced, now skipped). An old seq is
        ignored (not accepted)."""
        if req.seq <= self.last_seq:
            return False, None
        replaced = self.waiting
        if replaced is not None:
            self.skipped += 1
        self.waiting, self.last_seq = req, req.seq
        return True, replaced

    def take(self) -> PoseRequest | None:
        req, self.waiting = self.waiting, None
        return req

    def finished(self, seq: int, dropped_reason: str | None) -> str:
        """What to do with a finished frame: "send", "drop" (report it) or "stale" (a newer one was sent)."""
        if dropped_reason is not None:
            self.dropped += 1
            key = dropped_reason.split(":", 1)[0]
            self.reasons[key] = self.reasons.get(key, 0) + 1
            return "drop"
        if seq < self.last_sent:
            self.stale += 1
            return "stale"
        self.last_sent = seq
        self.sent += 1
        return "send"


def encode_frame(frame: Frame, seq: int, state: ViewerState) -> bytes:
    assert frame.rgba is not None
    h, w = frame.rgba.shape[:2]
    header = json.dumps({"type": "frame", "seq": seq, "width": w, "height": h,
                         "mesh_ms": round(frame.latency_s * 1e3, 2), "tiles": len(frame.tiles),
                         "workers": sorted(frame.workers), "skipped": state.skipped, "stale": state.stale,
                         "dropped": state.dropped}).encode()
    return struct.pack(">I", len(header)) + header + np.ascontiguousarray(frame.rgba).tobytes()


class _Replay(trio.abc.Stream):
    """A stream whose first bytes were already read (the HTTP head): handed back before the rest."""

    def __init__(self, stream: trio.abc.Stream, head: bytes) -> None:
        self._stream, self._head = stream, head

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            n = len(self._head) if max_bytes is None else max_bytes
            out, self._head = self._head[:n], self._head[n:]
            return out
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(bytes(data) if isinstance(data, bytearray) else data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _read_head(stream: trio.abc.Stream) -> bytes:
    buf = b""
    with trio.fail_after(HEAD_TIMEOUT_S):
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HEAD:
                raise ValueError("request head too large")
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise ValueError("connection closed before the request head ended")
            buf += chunk
    return buf


def _page_file(name: str) -> bytes:
    return resources.files("scheduler.client").joinpath("viewer_page", name).read_bytes()


def _response(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode() + body


class Viewer:
    """Serves the viewer page and renders the poses of every connected page on the mesh."""

    def __init__(self, client: Client, scene: Scene, *, tiles: Any = "auto", deadline_ms: float | None = None,
                 max_in_flight: int = 2, realtime: bool = False, direct: bool = True) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.client, self.scene = client, scene
        self.tiles, self.deadline_ms, self.max_in_flight = tiles, deadline_ms, max_in_flight
        self.realtime = realtime  # each page gets a real-time render session (scheduler.client.realtime)
        self.direct = direct  # its tiles' workers reached directly when they can be (open_session's `direct`)
        self.session = session_for(client, scene)
        self.viewers = 0
        self.states: list[ViewerState] = []  # every page's bookkeeping, for summaries and tests
        self.port: int | None = None

    def hello(self) -> dict[str, Any]:
        cam = self.scene.camera
        return {"type": "hello", "width": cam.width, "height": cam.height, "fov_y": cam.fov_y, "near": cam.near,
                "far": cam.far, "camera": cam.pose.to_dict(), "target": list(orbit_target(self.scene)),
                "tiles": len(self.tiles) if isinstance(self.tiles, list | tuple) else self.tiles,
                "deadline_ms": self.deadline_ms, "max_in_flight": self.max_in_flight}

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Put the scene on the peers, listen, report the bound port, and serve until cancelled."""
        if not self.realtime:
            await self.session.warm()
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                try:
                    head = await _read_head(stream)
                except (ValueError, trio.TooSlowError, trio.BrokenResourceError):
                    return
                line, _, rest = head.partition(b"\r\n")
                parts = line.decode("latin-1").split()
                if len(parts) != 3 or parts[0] != "GET":
                    await stream.send_all(_response("405 Method Not Allowed", b"GET only\n"))
                    return
                path = parts[1].split("?", 1)[0]
                upgrade = b"upgrade: websocket" in rest.lower()
                if path == "/ws" and upgrade:
                    await self._websocket(_Replay(stream, head))
                elif path in PAGE_FILES:
                    name, ctype = PAGE_FILES[path]
                    await stream.send_all(_response("200 OK", _page_file(name), ctype))
                else:
                    await stream.send_all(_response("404 Not Found", b"not found\n"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # one page's failure (the node went away, a protocol error) ends that page only
            log.exception("viewer connection failed")

    async def _websocket(self, stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            req = await trio_websocket.wrap_server_stream(nursery, stream, max_message_size=MAX_MESSAGE)
            if self.viewers >= MAX_VIEWERS:
                await req.reject(503, body=f"at most {MAX_VIEWERS} viewers\n".encode())
                return
            ws = await req.accept()
            self.viewers += 1
            try:
                await self._page(ws)
            except trio_websocket.ConnectionClosed:
                pass
            finally:
                self.viewers -= 1
                nursery.cancel_scope.cancel()

    async def _page(self, ws: trio_websocket.WebSocketConnection) -> None:
        state = ViewerState()
        self.states.append(state)
        del self.states[:-64]
        changed = trio.Condition()
        send_lock = trio.Lock()
        await ws.send_message(json.dumps(self.hello()))

        async def receive() -> None:
            while True:
                msg = await ws.get_message()
                try:
                    req = parse_pose_message(msg)
                except BadMessage as e:
                    state.bad += 1
                    async with send_lock:
                        await ws.send_message(json.dumps({"type": "error", "message": str(e)}))
                    if state.bad >= MAX_BAD_MESSAGES:
                        await ws.aclose(1008, "too many bad messages")
                        return
                    continue
                accepted, replaced = state.offer(req)
                if replaced is not None:
                    async with send_lock:
                        await ws.send_message(json.dumps({"type": "skipped", "seq": replaced.seq}))
                if accepted:
                    async with changed:
                        changed.notify_all()

        async def render(nursery: trio.Nursery) -> None:
            while True:
                async with changed:
                    while (req := state.take()) is None:
                        await changed.wait()
                if live is not None:
                    frame = await live.render(req.pose)
                else:
                    issued = trio.current_time()
                    deadline_at = issued + self.deadline_ms / 1000.0 if self.deadline_ms is not None else None
                    frame = await self.session.frame(req.pose, index=req.seq, tiles=self.tiles,
                                                     deadline_at=deadline_at, issued_at=issued, background=nursery)
                verdict = state.finished(req.seq, frame.reason if frame.dropped else None)
                async with send_lock:
                    if verdict == "send":
                        await ws.send_message(encode_frame(frame, req.seq, state))
                    elif verdict == "drop":
                        await ws.send_message(json.dumps({"type": "dropped", "seq": req.seq, "reason": frame.reason}))
                    else:
                        await ws.send_message(json.dumps({"type": "stale", "seq": req.seq}))

        live: RealtimeSession | None = None
        async with AsyncExitStack() as stack:
            if self.realtime:  # one session per page: the scene uploaded once, one message per frame each way
                deadline = self.deadline_ms if self.deadline_ms is not None else DEFAULT_REALTIME_DEADLINE_MS
                try:
                    live = await stack.enter_async_context(open_session(
                        self.client, self.scene, fps=min(max(1000.0 / deadline, MIN_FPS), MAX_FPS), deadline_ms=deadline,
                        tiles=self.tiles if isinstance(self.tiles, int) else 1, direct=self.direct))
                except RpcError as e:  # refused (deadline, no device, too many sessions): the page says why
                    await ws.send_message(json.dumps({"type": "error", "message": f"render session refused: {e}"}))
                    await ws.aclose(1011, "render session refused")
                    return
            async with trio.open_nursery() as nursery:
                for _ in range(self.max_in_flight):
                    nursery.start_soon(render, nursery)
                await receive()
                nursery.cancel_scope.cancel()


def parse_listen(value: str) -> tuple[str, int]:
    """'PORT' or 'HOST:PORT' (default host 127.0.0.1: the page controls the stream, keep it local unless asked)."""
    host, _, port = value.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"--serve: expected PORT or HOST:PORT, got {value!r}") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"--serve: port must be in [0, 65535], got {p}")
    return (host.strip("[]") or "127.0.0.1"), p


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


__all__ = ["BadMessage", "PoseRequest", "Viewer", "ViewerState", "encode_frame", "orbit_target", "parse_listen",
           "parse_pose_message", "url_of"]

