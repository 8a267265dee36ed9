"""bigtcp stream multiplexer with per-stream credit flow control: sans-IO (no sockets, no trio).

One `Mux` is one connection's protocol state. Bytes from the wire go in (`get_buffer`/`advance`, or
`receive_data`), events come out; calls like `open_stream`/`send_data` queue frames that the I/O layer
takes with `data_to_send()` (a list of buffers for one scatter-gather send). Time is passed in
(`handle_timers(now)`), so keepalive and idle logic is tested with a fake clock.

Streams: ids are odd when opened by the dialer ("client"), even when opened by the listener; each side's
ids only grow. A stream is open until both halves ended (FLAG_END, see `close_stream`) or either side
reset it. Frames that cross a local reset on the wire are ignored; any other frame on a closed stream is
the peer's protocol error.

Flow control: each side announces in HELLO a per-stream `window` (bytes it will buffer for a stream that
the application has not consumed). DATA and MSG payloads spend the sender's credit; the receiver grants
credit back with WINDOW frames as the application consumes (`consumed`). A sender never exceeds the
credit (`send_credit(sid)`), so a slow reader on one stream blocks only that stream's sender. On top, a
connection-level window (`conn_window`, WINDOW frames on stream 0) bounds what all streams of a
connection may have buffered together: memory per connection is at most conn_window, not
window x max_streams. Its default is 4 stream windows, so one stalled reader (holding at most one
stream window) never stops the others. A sender that exceeds either credit is a peer protocol error.

Keepalive, dead-peer and idle timing is `liveness.Liveness`; events and errors live in `events`.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

from mesh.bigtcp import messages as m
from mesh.bigtcp.events import (  # re-exported: the mux's events and errors
    ConnectionClosing,
    ConnectionEnded,
    ConnectionLost,
    CreditReceived,
    DataReceived,
    Event,
    GoAwayReceived,
    HelloReceived,
    IdleTimeout,
    KeepaliveTimeout,
    MessageReceived,
    PongReceived,
    StreamEnded,
    StreamOpened,
    StreamReset,
    StreamResetReceived,
)
from mesh.bigtcp.framing import (
    DEFAULT_MAX_FRAME,
    FLAG_ACK,
    FLAG_END,
    Frame,
    FrameDecoder,
    FrameType,
    LocalProtocolError,
    PeerProtocolError,
    TransportError,
    encode_header,
    feed_through,
)
from mesh.bigtcp.limits import MAX_HELLO_BYTES
from mesh.bigtcp.liveness import Liveness

__all__ = [
    "ConnectionClosing",
    "ConnectionEnded",
    "ConnectionLost",
    "CreditReceived",
    "DataReceived",
    "Event",
    "GoAwayReceived",
    "HelloReceived",
    "IdleTimeout",
    "KeepaliveTimeout",
    "MessageReceived",
    "Mux",
    "PongReceived",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "StreamResetReceived",
]

DEFAULT_WINDOW = 16 * 1024 * 1024
DEFAULT_MAX_STREAMS = 1024
CONN_WINDOWS = 4  # default connection window, in stream windows
_UNLIMITED = 2**62
_SMALL = 4096  # payloads below this are joined with their header (fewer iovecs); bulk never is
_RESET_MEMORY = 4096  # locally reset stream ids remembered to ignore frames in flight


# ---------------------------------------------------------------------------------------------- state


class _Stream:
    __slots__ = ("id", "local_ended", "remote_ended", "send_credit", "recv_window", "buffered", "unacked")

    def __init__(self, sid: int, send_credit: int, recv_window: int) -> None:
        self.id = sid
        self.local_ended = False
        self.remote_ended = False
        self.send_credit = send_credit  # bytes we may still send
        self.recv_window = recv_window  # bytes the peer may still send us
        self.buffered = 0  # delivered to the application, not yet consumed
        self.unacked = 0  # consumed, not yet granted back


class Mux:
    def __init__(
        self,
        *,
        client: bool,
        peer_id: str = "",
        max_frame: int = DEFAULT_MAX_FRAME,
        window: int | None = None,
        max_streams: int = DEFAULT_MAX_STREAMS,
        keepalive: float | None = 15.0,
        dead_after: float | None = 45.0,
        idle_close: float | None = None,
        scratch: int = 64 * 1024,
        hello_extra: dict[str, Any] | None = None,
        conn_window: int | None = None,
    ) -> None:
        window = max(max_frame, DEFAULT_WINDOW) if window is None else window
        if window < max_frame:
            raise LocalProtocolError(f"window ({window}) must be at least max_frame ({max_frame})")
        conn_window = CONN_WINDOWS * window if conn_window is None else conn_window
        if conn_window < window:
            raise LocalProtocolError(f"conn_window ({conn_window}) must be at least the stream window ({window})")
        self.client = client
        self.local_hello = m.Hello(
            peer_id=peer_id, max_frame=max_frame, window=window, max_streams=max_streams, extra=hello_extra or {},
            conn_window=conn_window,
        )
        self._conn_send_credit = 0  # set from the peer's HELLO
        self._conn_recv_window = conn_window  # bytes the peer may still send us on all streams
        self._conn_unacked = 0  # consumed (or dropped), not yet granted back
        self._conn_grant_at = max(1, conn_window // 4)
        self.peer_hello: m.Hello | None = None
        self._decoder = FrameDecoder(max_frame, scratch=scratch, first_frame_max=MAX_HELLO_BYTES)
        self._out: list[bytes | bytearray | memoryview] = []
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if client else 2
        self._last_peer_id = 0
        self._local_open = 0  # streams we opened that are still in the table
        self._reset_recent: OrderedDict[int, None] = OrderedDict()
        self._open_payload: tuple[dict[str, Any], bytes] | None = None  # (meta, its OPEN payload) last sent
        self._grant_at = max(1, window // 4)
        self.goaway_sent: m.GoAway | None = None
        self.goaway_received: m.GoAway | None = None
        self.error: TransportError | None = None
        self.ended = False  # peer's byte stream ended
        self.liveness = Liveness(keepalive, dead_after, idle_close)
        # counters for metrics
        self.frames_sent = 0
        self.bytes_sent = 0
        self._queue_control(m.encode_control(self.local_hello), 0, 0)

    # ------------------------------------------------------------------ introspection

    @property
    def ready(self) -> bool:
        """The peer's HELLO arrived: streams may be opened and data sent."""
        return self.peer_hello is not None

    @property
    def frames_received(self) -> int:
        return self._decoder.frames_received

    @property
    def bytes_received(self) -> int:
        return self._decoder.bytes_received

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def buffered_bytes(self) -> int:
        return sum(s.buffered for s in self._streams.values())

    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def has_stream(self, sid: int) -> bool:
        return sid in self._streams

    def send_credit(self, sid: int) -> int:
        """What one frame on `sid` may carry now: the smaller of the stream's and the connection's credit."""
        s = self._streams.get(sid)
        return min(s.send_credit, self._conn_send_credit) if s is not None else 0

    def stream_send_credit(self, sid: int) -> int:
        s = self._streams.get(sid)
        return s.send_credit if s is not None else 0

    @property
    def conn_send_credit(self) -> int:
        return self._conn_send_credit

    @property
    def max_send_frame(self) -> int:
        """Largest DATA/MSG payload the peer accepts in one frame (its max frame)."""
        if self.peer_hello is None:
            raise LocalProtocolError("peer's HELLO not received yet")
        return self.peer_hello.max_frame

    @property
    def ids_left(self) -> int:
        """Streams this side can still open on this connection (ids only grow; a new connection resets them)."""
        return max(0, (0xFFFFFFFF - self._next_id) // 2 + 1)

    @property
    def can_open_stream(self) -> bool:
        return (
            self.peer_hello is not None
            and self._local_open < self.peer_hello.max_streams
            and self.error is None
            and not self.ended
            and self.goaway_received is None
            and self.goaway_sent is None
            and self._next_id <= 0xFFFFFFFF
        )

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> list[bytes | bytearray | memoryview]:
        out, self._out = self._out, []
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def _queue(self, ftype: FrameType, flags: int, sid: int, payload: bytes | bytearray | memoryview) -> None:
        hdr = encode_header(ftype, flags, sid, payload)
        n = len(payload)
        if n == 0:
            self._out.append(hdr)
        elif n < _SMALL:
            self._out.append(hdr + payload)
        else:
            self._out.append(hdr)
            self._out.append(payload)
        self.frames_sent += 1
        self.bytes_sent += 20 + n

    def _queue_control(self, typed: tuple[FrameType, bytes], flags: int, sid: int) -> None:
        self._queue(typed[0], flags, sid, typed[1])

    # ------------------------------------------------------------------ local actions

    def _check_alive(self) -> None:
        if self.error is not None:
            raise self.error
        if self.peer_hello is None:
            raise LocalProtocolError("connection not ready: peer's HELLO not received yet")

    def open_stream(self, meta: dict[str, Any] | None = None) -> int:
        self._check_alive()
        if self.goaway_received is not None or self.goaway_sent is not None or self.ended:
            raise ConnectionClosing("connection is going away; open the stream on a new connection")
        assert self.peer_hello is not None
        if self._local_open >= self.peer_hello.max_streams:
            raise LocalProtocolError(f"peer allows at most {self.peer_hello.max_streams} concurrent streams")
        sid = self._next_id
        if sid > 0xFFFFFFFF:
            raise ConnectionClosing("stream ids exhausted on this connection")
        self._next_id += 2
        self._streams[sid] = _Stream(sid, self.peer_hello.window, self.local_hello.window)
        self._local_open += 1
        meta = meta or {}
        cached = self._open_payload
        if cached is None or cached[0] != meta:  # most streams of a connection carry the same meta (RPC)
            cached = self._open_payload = (copy.deepcopy(meta), m.encode_control(m.Open(meta))[1])
        self._queue(FrameType.OPEN, 0, sid, cached[1])
        return sid

    def _sendable(self, sid: int, n: int) -> _Stream:
        if self.error is not None or self.peer_hello is None:
            self._check_alive()
        s = self._streams.get(sid)
        if s is None:
            raise LocalProtocolError(f"stream {sid} is not open")
        if s.local_ended:
            raise LocalProtocolError(f"stream {sid} is already closed for sending")
        if n > self.peer_hello.max_frame:  # type: ignore[union-attr]
            raise LocalProtocolError(f"payload of {n} bytes exceeds the peer's max frame {self.peer_hello.max_frame}")  # type: ignore[union-attr]
        if n > s.send_credit or n > self._conn_send_credit:
            raise LocalProtocolError(
                f"stream {sid}: payload of {n} bytes exceeds credit (stream {s.send_credit}, connection {self._conn_send_credit})"
            )
        return s

    def send_data(self, sid: int, data: bytes | bytearray | memoryview, *, end: bool = False) -> None:
        """Queue one DATA frame. The caller keeps `data` unchanged until it was written out."""
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        s = self._sendable(sid, n)
        s.send_credit -= n
        self._conn_send_credit -= n
        self._queue(FrameType.DATA, FLAG_END if end else 0, sid, data)
        if end:
            self._end_local(s)

    def send_message(self, sid: int, payload: bytes, *, end: bool = False) -> None:
        """Queue one MSG frame; `payload` from `messages.pack_message`."""
        s = self._sendable(sid, len(payload))
        s.send_credit -= len(payload)
        self._conn_send_credit -= len(payload)
        self._queue(FrameType.MSG, FLAG_END if end else 0, sid, payload)
        if end:
            self._end_local(s)

    def close_stream(self, sid: int) -> None:
        """Half-close: the peer gets end-of-stream after everything sent before."""
        self.send_data(sid, b"", end=True)

    def _end_local(self, s: _Stream) -> None:
        s.local_ended = True
        if s.remote_ended:
            self._remove(s.id)

    def reset_stream(self, sid: int, code: int = m.CODE_CANCEL, reason: str = "") -> bool:
        """Abort a stream; frames the peer already sent are ignored (and what was buffered for it counts
        as consumed for the connection window). False if it was not open."""
        s = self._streams.get(sid)
        if s is None:
            return False
        self._remove(sid)
        self._release_conn(s.buffered)
        self._remember_reset(sid)
        if self.error is None and not self.ended:
            self._queue_control(m.encode_control(m.Reset(code, reason)), 0, sid)
        return True

    def consumed(self, sid: int, n: int) -> None:
        """The application took `n` bytes (a DATA payload or a MSG's `size`) of stream `sid` (which may
        have finished meanwhile: the connection window still gets them back)."""
        if n <= 0:
            return
        s = self._streams.get(sid)
        if s is not None:
            if n > s.buffered:
                raise LocalProtocolError(f"stream {sid}: consumed {n} bytes but only {s.buffered} are buffered")
            s.buffered -= n
            s.unacked += n
            if s.unacked >= self._grant_at and not s.remote_ended and self.error is None:
                credit, s.unacked = s.unacked, 0
                s.recv_window += credit
                self._queue_control(m.encode_control(m.WindowUpdate(credit)), 0, sid)
        self._release_conn(n)

    def _release_conn(self, n: int) -> None:
        """`n` buffered bytes left the connection's buffers: grant them back (batched)."""
        if n <= 0:
            return
        self._conn_unacked += n
        if self._conn_unacked >= self._conn_grant_at and self.error is None and not self.ended:
            credit, self._conn_unacked = self._conn_unacked, 0
            self._conn_recv_window += credit
            self._queue_control(m.encode_control(m.WindowUpdate(credit)), 0, 0)

    def ping(self, now: float) -> int:
        """Queue a PING; its PongReceived event carries `now` back for the round-trip time."""
        if self.error is not None:
            raise self.error
        nonce = self.liveness.ping_sent(now)
        self._queue_control(m.encode_control(m.Ping(nonce)), 0, 0)
        return nonce

    def goaway(self, code: int = m.CODE_NO_ERROR, reason: str = "") -> None:
        """No new streams from the peer; existing ones finish. Idempotent."""
        if self.goaway_sent is not None or self.error is not None:
            return
        self.goaway_sent = m.GoAway(self._last_peer_id, code, reason)
        self._queue_control(m.encode_control(self.goaway_sent), 0, 0)

    def fail(self, error: TransportError) -> None:
        """Mark the connection dead (I/O error, timeout...): every later call raises `error`."""
        if self.error is None:
            self.error = error

    # ------------------------------------------------------------------ input

    def get_buffer(self) -> memoryview:
        if self.error is not None:
            raise self.error
        return self._decoder.get_buffer()

    def advance(self, n: int) -> list[Event]:
        """`n` bytes were written into `get_buffer()`. Raises PeerProtocolError (then the mux is dead and a
        GOAWAY saying why is queued)."""
        if self.error is not None:
            raise self.error
        events: list[Event] = []
        try:
            for frame in self._decoder.advance(n):
                self._handle(frame, events)
        except PeerProtocolError as e:
            self._protocol_failure(e)
            raise
        return events

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Copying convenience over get_buffer/advance; b"" means end of input."""
        if not len(data):
            return self.receive_eof()
        return feed_through(self.get_buffer, self.advance, data)

    def receive_eof(self) -> list[Event]:
        if self.error is not None:
            raise self.error
        try:
            self._decoder.eof()
        except PeerProtocolError as e:
            self._protocol_failure(e)
            raise
        self.ended = True
        return [ConnectionEnded(clean=self.goaway_received is not None)]

    def _protocol_failure(self, e: PeerProtocolError) -> None:
        if self.error is None:
            self.error = e
            self._out.clear()
            gid = self._last_peer_id
            self._queue_control(m.encode_control(m.GoAway(gid, m.CODE_PROTOCOL_ERROR, str(e))), 0, 0)

    def _remove(self, sid: int) -> None:
        self._streams.pop(sid, None)
        if (sid & 1) == (1 if self.client else 0):
            self._local_open -= 1

    def _remember_reset(self, sid: int) -> None:
        self._reset_recent[sid] = None
        if len(self._reset_recent) > _RESET_MEMORY:
            self._reset_recent.popitem(last=False)

    def _is_local_id(self, sid: int) -> bool:
        return (sid & 1) == (1 if self.client else 0)

    def _seen(self, sid: int) -> bool:
        """The id belongs to a stream that was opened at some point (now possibly closed)."""
        return sid < self._next_id if self._is_local_id(sid) else sid <= self._last_peer_id

    def _closed_stream(self, sid: int, what: str) -> None:
        """A frame for a stream not in the table: ignorable after a local reset, else the peer's error."""
        if sid in self._reset_recent:
            return
        if self._seen(sid):
            raise PeerProtocolError("closed_stream", f"{what} on closed stream {sid}")
        raise PeerProtocolError("unknown_stream", f"{what} on stream {sid}, which was never opened")

    def _handle(self, f: Frame, events: list[Event]) -> None:
        t = f.type
        if self.peer_hello is None and t is not FrameType.HELLO and t is not FrameType.GOAWAY:
            raise PeerProtocolError("no_hello", f"{t.name} before HELLO")  # (a GOAWAY may refuse us first)
        if t is FrameType.DATA or t is FrameType.MSG:
            sid = f.stream_id
            n = len(f.payload)
            if n > self._conn_recv_window:
                raise PeerProtocolError("flow_control", f"{n} bytes sent with {self._conn_recv_window} connection credit left")
            self._conn_recv_window -= n
            s = self._streams.get(sid)
            if s is None:
                self._closed_stream(sid, t.name)
                self._release_conn(n)  # crossed a local reset: dropped, so the connection gets it back
                return
            if s.remote_ended:
                raise PeerProtocolError("closed_stream", f"{t.name} on stream {sid} after its end")
            if n > s.recv_window:
                raise PeerProtocolError("flow_control", f"stream {sid}: {n} bytes sent with {s.recv_window} credit left")
            s.recv_window -= n
            s.buffered += n
            if t is FrameType.DATA:
                if n or not f.flags & FLAG_END:
                    events.append(DataReceived(sid, f.payload))  # type: ignore[arg-type]
            else:
                events.append(MessageReceived(sid, m.unpack_message(f.payload), n))
            if f.flags & FLAG_END:
                s.remote_ended = True
                events.append(StreamEnded(sid))
                if s.local_ended:
                    self._remove(sid)
            return
        if t is FrameType.WINDOW:
            msg = m.decode_control(f)
            if f.stream_id == 0:
                self._conn_send_credit += msg.credit  # type: ignore[union-attr]
                if self._conn_send_credit > 2**40:
                    raise PeerProtocolError("flow_control", f"connection credit overflow ({self._conn_send_credit})")
                events.append(CreditReceived(0))
                return
            s = self._streams.get(f.stream_id)
            if s is None:
                if not self._seen(f.stream_id):
                    raise PeerProtocolError("unknown_stream", f"WINDOW on stream {f.stream_id}, which was never opened")
                return  # credit for a stream that finished meanwhile
            s.send_credit += msg.credit  # type: ignore[union-attr]
            if s.send_credit > 2**32:
                raise PeerProtocolError("flow_control", f"stream {s.id}: credit overflow ({s.send_credit})")
            events.append(CreditReceived(s.id))
            return
        if t is FrameType.OPEN:
            msg = m.decode_control(f)
            sid = f.stream_id
            if self._is_local_id(sid):
                raise PeerProtocolError("bad_stream_id", f"peer opened stream {sid} with our parity")
            if sid <= self._last_peer_id:
                raise PeerProtocolError("closed_stream", f"peer reopened stream id {sid}")
            self._last_peer_id = sid
            peer_open = len(self._streams) - self._local_open
            if self.goaway_sent is not None or peer_open >= self.local_hello.max_streams:
                self._remember_reset(sid)
                why = "connection going away" if self.goaway_sent else f"more than {self.local_hello.max_streams} streams"
                self._queue_control(m.encode_control(m.Reset(m.CODE_REFUSED, why)), 0, sid)
                return
            assert self.peer_hello is not None
            s = _Stream(sid, self.peer_hello.window, self.local_hello.window)
            self._streams[sid] = s
            events.append(StreamOpened(sid, msg.meta))  # type: ignore[union-attr]
            if f.flags & FLAG_END:
                s.remote_ended = True
                events.append(StreamEnded(sid))
            return
        if t is FrameType.RESET:
            msg = m.decode_control(f)
            sid = f.stream_id
            if sid not in self._streams:
                if not self._seen(sid):
                    raise PeerProtocolError("unknown_stream", f"RESET on stream {sid}, which was never opened")
                return  # both sides reset, or it finished meanwhile
            s = self._streams[sid]
            self._remove(sid)
            self._release_conn(s.buffered)  # the application drops what it had not read
            events.append(StreamResetReceived(sid, msg.code, msg.reason))  # type: ignore[union-attr]
            return
        if t is FrameType.PING:
            msg = m.decode_control(f)
            if f.flags & FLAG_ACK:
                sent_at = self.liveness.pong_received(msg.nonce)  # type: ignore[union-attr]
                if sent_at is not None:
                    events.append(PongReceived(msg.nonce, sent_at))  # type: ignore[union-attr]
            elif self.error is None:
                self._queue(FrameType.PING, FLAG_ACK, 0, f.payload)
            return
        if t is FrameType.GOAWAY:
            msg = m.decode_control(f)
            assert isinstance(msg, m.GoAway)
            self.goaway_received = msg
            events.append(GoAwayReceived(msg.last_stream_id, msg.code, msg.reason))
            # our streams the peer never saw will not be served
            for sid in [sid for sid in self._streams if self._is_local_id(sid) and sid > msg.last_stream_id]:
                self._remove(sid)
                events.append(StreamResetReceived(sid, m.CODE_REFUSED, "connection going away before the stream was seen"))
            return
        if t is FrameType.HELLO:
            if self.peer_hello is not None:
                raise PeerProtocolError("bad_hello", "second HELLO")
            msg = m.decode_control(f)
            assert isinstance(msg, m.Hello)
            if msg.version != self.local_hello.version:
                raise PeerProtocolError("bad_version", f"HELLO version {msg.version}, we speak {self.local_hello.version}")
            if msg.window < msg.max_frame:
                raise PeerProtocolError("bad_hello", f"window {msg.window} below max frame {msg.max_frame}")
            if msg.conn_window and msg.conn_window < msg.window:
                raise PeerProtocolError("bad_hello", f"connection window {msg.conn_window} below stream window {msg.window}")
            self.peer_hello = msg
            self._conn_send_credit = msg.conn_window or _UNLIMITED
            events.append(HelloReceived(msg))
            return
        raise PeerProtocolError("unknown_type", f"unexpected {t.name}")  # pragma: no cover

    # ------------------------------------------------------------------ timers

    def handle_timers(self, now: float) -> list[Event]:
        """Keepalive pings, dead-peer detection, idle close (`Liveness`). Call at or after `next_deadline()`."""
        events: list[Event] = []
        if self.error is not None or self.ended:
            return events
        due = self.liveness.check(now, self._decoder.bytes_received, bool(self._streams))
        if due.dead_for is not None:
            self.error = ConnectionLost(f"peer silent for {due.dead_for:.1f}s (keepalive timeout {self.liveness.dead_after}s)")
            events.append(KeepaliveTimeout(due.dead_for))
            return events
        if due.ping:
            self.ping(now)
        if due.idle_for is not None:
            events.append(IdleTimeout(due.idle_for))
        return events

    def next_deadline(self, now: float) -> float:
        """When `handle_timers` has something to do next (calling earlier is harmless)."""
        if self.error is not None or self.ended:
            return now + 3600.0
        return self.liveness.next_deadline(now)
