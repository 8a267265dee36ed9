"""The daemon <-> runner protocol: length-prefixed msgpack maps on a Unix stream socket.

A frame is a 4-byte little-endian length and a msgpack map. The daemon sends `call` (a task with its args),
`ans` (the answer to a runner's `ask`) and `stop` (abandon the current call); the runner sends `ready` once,
then per call any number of `ask` (`cp`: a checkpoint, `input`: fill the arena, `alloc`: a bigger arena) and
one `res` or `err`. Every message about a call carries its number `c`.

A runner runs untrusted kernels in its own address space, so after its first job it is as hostile as a
stranger: the daemon reads its frames with a size bound and msgpack limits, never accepts file descriptors
from it (it reads with plain `recv`, which drops any), and checks every offset it names against the arena.
File descriptors go one way, daemon -> runner (`SCM_RIGHTS`, with the frame that announces a new arena).
"""

from __future__ import annotations

import array
import select
import socket
import struct
from collections import deque
from typing import Any

import msgpack
import trio

HEADER = struct.Struct("<I")
MAX_FRAME = 8 << 20  # a compute spec with inline source and data fits; bulk data goes through the arena
RECV_CHUNK = 1 << 16


class ProtocolError(Exception):
    """A frame that breaks the protocol (too big, not msgpack, not a map): the peer is not to be trusted."""


def pack(msg: dict[str, Any]) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Sans-IO frame decoder: `feed(bytes)`, then `next()` until None."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> dict[str, Any] | None:
        if len(self._buf) < HEADER.size:
            return None
        (n,) = HEADER.unpack_from(self._buf)
        if n > self.max_frame:
            raise ProtocolError(f"frame of {n} bytes announced, limit {self.max_frame}")
        if len(self._buf) < HEADER.size + n:
            return None
        body = bytes(self._buf[HEADER.size:HEADER.size + n])
        del self._buf[:HEADER.size + n]
        try:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception as e:  # msgpack raises several types for garbage
            raise ProtocolError(f"not msgpack: {e}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
            raise ProtocolError("a frame must be a map with a string 't'")
        return msg


# Socket I/O for both sides, on the plain non-blocking socket: the call is made at once and trio is asked to wait
# only when it would block (no trio socket wrapper, whose checkpoints around every send and recv cost a pass of
# the event loop each; a hand-off is a handful of these).


async def send_all(sock: socket.socket, data: bytes, fd: int | None = None) -> None:
    """Write all of `data` (with `fd` attached to its first bytes, SCM_RIGHTS, when given)."""
    view = memoryview(data)
    while fd is not None:
        try:
            view = view[sock.sendmsg([view], fd_ancillary(fd)):]
            fd = None
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock.fileno())
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock.fileno())


async def recv_some(sock: socket.socket, *, wait_first: bool = False) -> bytes:
    """What the socket has (b"" at EOF); waits in trio until it has something. File descriptors are dropped.
    `wait_first`: nothing can be there yet (the peer answers what was just sent): no recv that would only fail."""
    if wait_first:
        await trio.lowlevel.wait_readable(sock.fileno())
    while True:
        try:
            return sock.recv(RECV_CHUNK)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock.fileno())


async def recv_with_fds(sock: socket.socket, fds: deque[int], *, idle: bool = False) -> bytes:
    """What the socket has (b"" at EOF), with the file descriptors that came along appended to `fds`. `idle`:
    the process has nothing else to do until this returns (a runner between calls), so it blocks in poll(2)
    instead of going through trio's event loop: one wake-up less per call."""
    if idle:  # the next call is rarely there yet: wait first (poll, recvmsg; not recvmsg, poll, recvmsg)
        p = select.poll()
        p.register(sock, select.POLLIN)
        p.poll()
    while True:
        try:
            data, anc, _flags, _addr = sock.recvmsg(RECV_CHUNK, socket.CMSG_SPACE(4 * 4))
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock.fileno())
            continue
        fds.extend(fds_from_ancillary(anc))
        return data


def fd_ancillary(fd: int) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]


def fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> deque[int]:
    out: deque[int] = deque()
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(data[:len(data) - len(data) % a.itemsize])
            out.extend(a)
    return out


def want_int(msg: dict[str, Any], key: str, lo: int = 0, hi: int = 1 << 62) -> int:
    v = msg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError(f"field {key!r} must be an integer in [{lo}, {hi}], got {str(v)[:40]!r}")
    return v


def want_str(msg: dict[str, Any], key: str, limit: int = 4096) -> str:
    v = msg.get(key, "")
    if not isinstance(v, str):
        raise ProtocolError(f"field {key!r} must be a string")
    return v[:limit]
