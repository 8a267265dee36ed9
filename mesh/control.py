"""The local control endpoint: a Unix socket in the data dir that only the node's own user may use.

`mesh-node peers`, `devices`, `status` ask a running node through it. Access is enforced twice: the socket file
is 0600 inside a 0700 directory, and each connection's SO_PEERCRED uid must equal the node's uid.
Messages are msgpack maps with a 4-byte big-endian length prefix, one request and one response per call.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import trio

log = logging.getLogger("gpumesh.control")

SOCKET_NAME = "control.sock"
MAX_MESSAGE = 16 * 1024 * 1024
_LEN = struct.Struct(">I")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """The node could not be reached or answered with an error."""


def socket_path(data_dir: Path) -> Path:
    return Path(data_dir) / SOCKET_NAME


def _peer_uid(sock: socket.socket | trio.socket.SocketType) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


async def _read_exact(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


async def serve(data_dir: Path, methods: dict[str, Handler], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    path = socket_path(data_dir)
    if path.exists() or path.is_symlink():
        path.unlink()  # a stale socket of a previous run; the identity lock is the key file, not this
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    task_status.started(path)
    try:
        async with trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(_handle, stream, methods)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        path.unlink(missing_ok=True)


async def _handle(stream: trio.SocketStream, methods: dict[str, Handler]) -> None:
    async with stream:
        if _peer_uid(stream.socket) != os.getuid():
            log.warning("control connection from another user refused")
            return
        try:
            (n,) = _LEN.unpack(await _read_exact(stream, 4))
            if n > MAX_MESSAGE:
                return
            req = msgpack.unpackb(await _read_exact(stream, n), raw=False)
            method = req.get("method") if isinstance(req, dict) else None
            if method not in methods:
                resp = {"ok": False, "error": f"unknown method {method!r}; known: {', '.join(sorted(methods))}"}
            else:
                try:
                    resp = {"ok": True, "result": await methods[method](req.get("params") or {})}
                except Exception as e:  # the caller gets the reason; the node carries on
                    log.exception("control method %s failed", method)
                    resp = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            data = msgpack.packb(resp, use_bin_type=True, default=str)
            await stream.send_all(_LEN.pack(len(data)) + data)
        except (EOFError, trio.BrokenResourceError, ValueError, msgpack.UnpackException):
            return


def call(data_dir: Path, method: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Blocking client for the CLI: one request, one response."""
    path = socket_path(data_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no node running with data dir {data_dir} (no socket at {path}); "
                               "start one with `mesh-node run` or pass --data-dir") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: the node runs as another user") from None
        data = msgpack.packb({"method": method, "params": params or {}}, use_bin_type=True)
        s.sendall(_LEN.pack(len(data)) + data)
        head = _recv_exact(s, 4)
        (n,) = _LEN.unpack(head)
        resp = msgpack.unpackb(_recv_exact(s, n), raw=False)
    except TimeoutError:
        raise ControlError(f"node at {path} did not answer within {timeout:g} s") from None
    finally:
        s.close()
    if not resp.get("ok"):
        raise ControlError(resp.get("error", "unknown error"))
    return resp["result"]


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ControlError("node closed the control connection")
        buf += chunk
    return bytes(buf)
