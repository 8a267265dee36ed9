"""bigtcp frame codec: sans-IO (bytes in, frames out; no sockets, no trio), like h11.

Wire format of one frame (all integers big-endian), a fixed 20-byte header then the payload:

    offset size field
       0    4   magic      b"BTCP"
       4    1   version    1
       5    1   type       FrameType
       6    1   flags      FLAG_END (DATA, MSG, OPEN), FLAG_ACK (PING); other bits must be 0
       7    1   reserved   must be 0
       8    4   stream id  0 for connection frames (HELLO, PING, GOAWAY), non-zero for stream frames;
                           WINDOW may be either (0 = connection-level credit)
      12    4   length     payload length, checked against the receiver's max frame size BEFORE buffering
      16    4   crc32c     CRC32C (Castagnoli) of the payload
      20    -   payload    raw bytes (DATA) or a msgpack map (every other type; see mesh/bigtcp/messages.py)

Sending: `encode_frame` returns `[header, payload]` so the I/O layer hands both to one `sendmsg`
(scatter-gather); a bulk payload is never concatenated with its header in Python.

Receiving: `FrameDecoder` owns its buffers. The I/O layer asks `get_buffer()` for the memoryview to read
into (`recv_into`) and reports `advance(n)`. Small frames are parsed out of a reusable scratch buffer;
once a large frame's header is known, `get_buffer()` returns the tail of that frame's own preallocated
payload buffer, so the kernel (or the TLS decryptor) writes the payload exactly once, where it stays.

Errors: `PeerProtocolError` is the peer's fault (bad magic/version/CRC/type/flags, oversized, ...); after
one, the decoder is dead and re-raises it. `LocalProtocolError` is our own misuse. Both derive from
`TransportError`, the base of every data-plane error.
"""

from __future__ import annotations

import ctypes
import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from crc32c import crc32c

MAGIC = b"BTCP"
VERSION = 1
HEADER = struct.Struct(">4sBBBBIII")
HEADER_SIZE = HEADER.size  # 20
_pack = HEADER.pack
_unpack_from = HEADER.unpack_from
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
MAX_STREAM_ID = 2**32 - 1

T = TypeVar("T")

FLAG_END = 0x01  # DATA / MSG / OPEN: the sender's half of the stream ends with this frame
FLAG_ACK = 0x02  # PING: this is the answer


class FrameType(enum.IntEnum):
    HELLO = 1  # stream 0: version, peer id claim, max frame, window, max streams (first frame each way)
    OPEN = 2  # new stream, with optional metadata
    DATA = 3  # raw bulk bytes
    MSG = 4  # one msgpack map for the application (Stream.send_msg)
    WINDOW = 5  # flow-control credit for a stream (stream 0: for the whole connection)
    RESET = 6  # abort a stream (code, reason)
    PING = 7  # stream 0: keepalive / RTT; FLAG_ACK on the answer
    GOAWAY = 8  # stream 0: no new streams; connection closing (code, reason)


_CONNECTION_TYPES = frozenset({FrameType.HELLO, FrameType.PING, FrameType.GOAWAY})
_ALLOWED_FLAGS = {
    FrameType.HELLO: 0,
    FrameType.OPEN: FLAG_END,
    FrameType.DATA: FLAG_END,
    FrameType.MSG: FLAG_END,
    FrameType.WINDOW: 0,
    FrameType.RESET: 0,
    FrameType.PING: FLAG_ACK,
    FrameType.GOAWAY: 0,
}
_TYPES = {int(t): t for t in FrameType}
# per type (by int): (allowed flag bits, stream-id rule). The rule is the value of (stream_id != 0) that
# is an error: True for connection frames (must be 0), False for stream frames (must not be 0), None for
# WINDOW, which is valid on both (stream 0 = connection-level credit).
_SHAPE = {
    int(t): (_ALLOWED_FLAGS[t], True if t in _CONNECTION_TYPES else None if t is FrameType.WINDOW else False)
    for t in FrameType
}


# ---------------------------------------------------------------------------------------------- errors


class TransportError(Exception):
    """Base of every data-plane (bigtcp) error."""


class LocalProtocolError(TransportError):
    """We misused the protocol (a bug or bad argument on this side); the connection is not affected."""


class PeerProtocolError(TransportError):
    """The peer broke the protocol. The connection is dead; `kind` says why (also the metric label)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"peer protocol error ({kind}): {message}")
        self.kind = kind
        self.detail = message


# ---------------------------------------------------------------------------------------------- frames


@dataclass(slots=True)
class Frame:
    type: FrameType
    flags: int
    stream_id: int
    payload: bytes | bytearray | memoryview

    @property
    def end(self) -> bool:
        return bool(self.flags & FLAG_END)

    @property
    def ack(self) -> bool:
        return bool(self.flags & FLAG_ACK)


def _check_shape(ftype: int, flags: int, stream_id: int) -> str | None:
    """None if (type, flags, stream id) is a legal combination, else the reason."""
    allowed, rule = _SHAPE[ftype]
    if flags & ~allowed:
        return f"flags 0x{flags:02x} not allowed on {FrameType(ftype).name}"
    if rule is True and stream_id != 0:
        return f"{FrameType(ftype).name} must be on stream 0, got {stream_id}"
    if rule is False and stream_id == 0:
        return f"{FrameType(ftype).name} needs a stream id, got 0"
    return None


def encode_header(ftype: FrameType, flags: int, stream_id: int, payload: bytes | bytearray | memoryview) -> bytes:
    """The 20-byte header for `payload` (CRC included). Raises LocalProtocolError on an illegal frame."""
    shape = _SHAPE.get(ftype)
    if shape is None:
        raise LocalProtocolError(f"unknown frame type {ftype}")
    if flags & ~shape[0] or (stream_id != 0) == shape[1] or not 0 <= stream_id <= MAX_STREAM_ID:
        raise LocalProtocolError(_check_shape(ftype, flags, stream_id) or f"stream id {stream_id} out of range")
    n = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    if n > 0xFFFFFFFF:
        raise LocalProtocolError(f"payload of {n} bytes does not fit a frame")
    return _pack(MAGIC, VERSION, ftype, flags, 0, stream_id, n, crc32c(payload))


def encode_frame(
    ftype: FrameType, flags: int, stream_id: int, payload: bytes | bytearray | memoryview = b""
) -> list[bytes | bytearray | memoryview]:
    """`[header, payload]` ready for one scatter-gather send (payload omitted when empty)."""
    hdr = encode_header(ftype, flags, stream_id, payload)
    return [hdr, payload] if len(payload) else [hdr]


# ---------------------------------------------------------------------------------------------- decoder


def feed_through(get_buffer: Callable[[], memoryview], advance: Callable[[int], list[T]],
                 data: bytes | bytearray | memoryview) -> list[T]:
    """The copying convenience of a zero-copy receiver (`FrameDecoder`, `Mux`): copy `data` into the
    buffers `get_buffer()` hands out, report each with `advance(n)`, return what those returned, in order."""
    out: list[T] = []
    mv = memoryview(data).cast("B")
    while len(mv):
        buf = get_buffer()
        k = min(len(buf), len(mv))
        buf[:k] = mv[:k]
        mv = mv[k:]
        out.extend(advance(k))
    return out


def _make_alloc():
    """bytearray(n) zero-fills n bytes that the wire is about to overwrite anyway (~40 us per MiB here);
    CPython's PyByteArray_FromStringAndSize(NULL, n) does not. The decoder only hands out a payload
    buffer once every byte of it was written, so the uninitialised contents are never visible."""
    try:
        fn = ctypes.pythonapi.PyByteArray_FromStringAndSize
        fn.restype = ctypes.py_object
        fn.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
        probe = fn(None, 8)
        if type(probe) is bytearray and len(probe) == 8:
            return lambda n: fn(None, n)
    except Exception:  # pragma: no cover - not CPython
        pass
    return bytearray  # pragma: no cover


_alloc = _make_alloc()

_HEADER = 0
_PAYLOAD = 1


class FrameDecoder:
    """Incremental decoder. Feed with `get_buffer()`/`advance(n)` (zero-copy) or `feed(data)` (simple).

    Memory is bounded: one scratch buffer (`scratch` bytes) plus at most one partial payload of at most
    `max_frame` bytes, allocated only after its header passed every check.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, *, scratch: int = 64 * 1024, direct_min: int = 16 * 1024,
                 first_frame_max: int | None = None) -> None:
        if max_frame < 1 or max_frame > 0xFFFFFFFF:
            raise LocalProtocolError(f"max_frame {max_frame} out of range")
        if scratch < HEADER_SIZE:
            raise LocalProtocolError("scratch buffer smaller than a header")
        self.max_frame = max_frame
        # the first frame (a HELLO, before the peer is authenticated) may be held to a smaller size
        self.first_frame_max = max_frame if first_frame_max is None else min(first_frame_max, max_frame)
        self._buf = bytearray(scratch)
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte in _buf
        self._end = 0  # end of valid bytes in _buf
        self._direct_min = direct_min
        self._compact_below = min(direct_min + HEADER_SIZE, scratch // 2)
        self._state = _HEADER
        # a payload being received directly into its own buffer
        self._hdr: tuple[FrameType, int, int, int, int] | None = None  # type, flags, sid, length, crc
        self._payload: bytearray | None = None
        self._payload_view: memoryview | None = None
        self._got = 0
        self.error: PeerProtocolError | None = None
        self.bytes_received = 0
        self.frames_received = 0

    # -- zero-copy interface

    def get_buffer(self) -> memoryview:
        """Where the next bytes from the wire should be written (never empty)."""
        if self.error is not None:
            raise self.error
        if self._state == _PAYLOAD:
            assert self._payload_view is not None
            return self._payload_view[self._got :]
        if self._start == self._end:
            self._start = self._end = 0
        elif self._start and len(self._buf) - self._end < self._compact_below:
            # compact: move the unparsed tail (a partial header or small frame) to the front
            n = self._end - self._start
            self._buf[:n] = self._view[self._start : self._end]
            self._start, self._end = 0, n
        return self._view[self._end :]

    def advance(self, n: int) -> list[Frame]:
        """`n` bytes were written into the last `get_buffer()` view; returns the completed frames."""
        if self.error is not None:
            raise self.error
        if n <= 0:
            raise LocalProtocolError("advance() needs n > 0; report end of input with eof()")
        self.bytes_received += n
        frames: list[Frame] = []
        if self._state == _PAYLOAD:
            self._got += n
            if self._got < len(self._payload):  # type: ignore[arg-type]
                return frames
            frames.append(self._finish_direct())
        else:
            self._end += n
        self._parse(frames)
        return frames

    def eof(self) -> None:
        """The input ended. Raises PeerProtocolError if it ended inside a frame."""
        if self.error is not None:
            raise self.error
        if self._state == _PAYLOAD or self._end != self._start:
            self._fail("truncated", "connection ended inside a frame")

    # -- copying convenience (tests, memory streams)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        return feed_through(self.get_buffer, self.advance, data)

    # -- internals

    def _fail(self, kind: str, message: str) -> None:
        self.error = PeerProtocolError(kind, message)
        self._payload = self._payload_view = None
        raise self.error

    def _parse(self, frames: list[Frame]) -> None:
        buf, view = self._buf, self._view
        while self._end - self._start >= HEADER_SIZE:
            s = self._start
            magic, version, ftype, flags, reserved, sid, length, crc = _unpack_from(buf, s)
            t = _TYPES.get(ftype)
            shape = _SHAPE.get(ftype)
            if magic != MAGIC or version != VERSION or t is None or reserved or flags & ~shape[0] or (sid != 0) == shape[1]:  # type: ignore[index]
                self._header_error(magic, version, ftype, flags, reserved, sid)
            limit = self.max_frame if self.frames_received else self.first_frame_max
            if length > limit:
                self._fail("oversized", f"{t.name} frame of {length} bytes exceeds max frame {limit}"  # type: ignore[union-attr]
                           + ("" if self.frames_received else " (the first frame, a HELLO)"))
            avail = self._end - s - HEADER_SIZE
            if length <= avail:
                payload = bytes(view[s + HEADER_SIZE : s + HEADER_SIZE + length])
                self._start = s + HEADER_SIZE + length
                if crc32c(payload) != crc:
                    self._fail("bad_crc", f"CRC mismatch on {t.name} frame of stream {sid}")  # type: ignore[union-attr]
                self.frames_received += 1
                frames.append(Frame(t, flags, sid, payload))  # type: ignore[arg-type]
                continue
            if length >= self._direct_min or HEADER_SIZE + length > len(buf):
                # large frame: receive the rest straight into its own buffer
                payload_buf = _alloc(length)
                payload_buf[:avail] = view[s + HEADER_SIZE : self._end]
                self._start = self._end = 0
                self._hdr = (t, flags, sid, length, crc)  # type: ignore[assignment]
                self._payload = payload_buf
                self._payload_view = memoryview(payload_buf)
                self._got = avail
                self._state = _PAYLOAD
            return

    def _header_error(self, magic: bytes, version: int, ftype: int, flags: int, reserved: int, sid: int) -> None:
        if magic != MAGIC:
            self._fail("bad_magic", f"bad magic {bytes(magic)!r} (not a bigtcp peer?)")
        if version != VERSION:
            self._fail("bad_version", f"unsupported protocol version {version} (we speak {VERSION})")
        if ftype not in _TYPES:
            self._fail("unknown_type", f"unknown frame type {ftype}")
        if reserved:
            self._fail("bad_header", "reserved header byte is not zero")
        self._fail("bad_header", _check_shape(ftype, flags, sid) or "bad header")

    def _finish_direct(self) -> Frame:
        assert self._hdr is not None and self._payload is not None
        t, flags, sid, _length, crc = self._hdr
        payload = self._payload
        self._hdr = self._payload = self._payload_view = None
        self._state = _HEADER
        if crc32c(payload) != crc:
            self._fail("bad_crc", f"CRC mismatch on {t.name} frame of stream {sid}")
        self.frames_received += 1
        return Frame(t, flags, sid, payload)
