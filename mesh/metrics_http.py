"""Serve Prometheus metrics from the node's own nursery (no background thread).

prometheus-client's `start_http_server` runs a daemon thread; this tiny trio server answers `GET /metrics`
(and `/` for humans) with `generate_latest()`, and stops with the node.
"""

from __future__ import annotations

import trio
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

MAX_REQUEST = 8192


async def serve(host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(trio.serve_listeners, _handle, [listener])


async def _handle(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            with trio.move_on_after(10):
                head = b""
                while b"\r\n\r\n" not in head and len(head) < MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    head += chunk
                line = head.split(b"\r\n", 1)[0].split()
                if len(line) < 2 or line[0] not in (b"GET", b"HEAD"):
                    await _reply(stream, b"405 Method Not Allowed", b"text/plain", b"only GET\n")
                elif line[1].split(b"?")[0] in (b"/metrics", b"/"):
                    body = await trio.to_thread.run_sync(generate_latest, REGISTRY)
                    await _reply(stream, b"200 OK", CONTENT_TYPE_LATEST.encode(), body if line[0] == b"GET" else b"")
                else:
                    await _reply(stream, b"404 Not Found", b"text/plain", b"metrics are at /metrics\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def _reply(stream: trio.SocketStream, status: bytes, ctype: bytes, body: bytes) -> None:
    head = b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: " + \
        str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    await stream.send_all(head + body)
