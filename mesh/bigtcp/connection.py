"""bigtcp connections: one authenticated connection to a peer carrying many streams.

`Connection` drives the sans-IO `Mux` with a `Wire` (reader, writer and timer tasks in its own nursery)
and implements `StreamLink`, the one interface its `Stream`s use. Made by `Transport.connect`/accept or
`connect_over_stream`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from mesh.bigtcp import messages as m
from mesh.bigtcp import transport_metrics as tm
from mesh.bigtcp.events import (
    ConnectionClosing,
    ConnectionEnded,
    ConnectionLost,
    CreditReceived,
    DataReceived,
    GoAwayReceived,
    HelloReceived,
    IdleTimeout,
    KeepaliveTimeout,
    MessageReceived,
    PongReceived,
    StreamEnded,
    StreamOpened,
    StreamResetReceived,
)
from mesh.bigtcp.framing import DEFAULT_MAX_FRAME, PeerProtocolError, TransportError
from mesh.bigtcp.handlers import HandlerTasks
from mesh.bigtcp.mux import Mux
from mesh.bigtcp.stream import ParkedTasks, Stream
from mesh.bigtcp.wire import IO_ERRORS, Wire, describe_io_error

__all__ = ["Connection", "ConnectionConfig"]

log = logging.getLogger("gpumesh.transport")


@dataclass(frozen=True)
class ConnectionConfig:
    max_frame: int = DEFAULT_MAX_FRAME  # largest frame we accept (and announce)
    window: int | None = None  # per-stream receive window; default max(max_frame, 16 MiB)
    conn_window: int | None = None  # receive window of all streams together; default 4 stream windows
    max_streams: int = 1024  # concurrent streams the peer may open to us
    keepalive: float | None = 15.0  # ping after this much silence
    dead_after: float | None = 45.0  # connection lost after this much silence
    idle_close: float | None = 300.0  # close a connection without streams after this long
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0  # graceful close: wait this long for open streams, then for the peer's EOF
    stall_timeout: float | None = 60.0  # a send waiting this long for credit is reset (for the socket: lost)
    bulk_senders: int = 4  # streams of one connection reading bulk data to send at once (`Connection.bulk_slot`)


class Connection:
    """One authenticated connection to a peer carrying many streams. Made by `Transport.connect`/accept."""

    def __init__(
        self,
        *,
        wire: Wire,
        mux: Mux,
        peer_id: str,
        outbound: bool,
        address: str,
        config: ConnectionConfig,
        spawn: Callable[..., None],
        handler: Callable[[Stream], Awaitable[None]] | None,
        on_close: Callable[[Connection], None] | None = None,
        principal: Any = None,
    ) -> None:
        self._wire = wire
        self._mux = mux
        self.peer_id = peer_id
        self.outbound = outbound
        self.remote_address = address
        self.secure = wire.secure
        self.principal = principal  # what `authorize` returned for this peer
        self._config = config
        self._handlers = HandlerTasks(handler, spawn, peer_id) if handler is not None else None
        self._on_close = on_close
        self._streams: dict[int, Stream] = {}
        # one task writes at a time (frames are queued in order in the mux; the writer takes them all). A
        # flag, not a trio lock: the uncontended case is every send. Waiters queue in FIFO order and the
        # release hands the turn straight to the first of them.
        self._writing = False
        self._write_turn = ParkedTasks()
        self._writer_lot = ParkedTasks()
        self._writer_wanted = False
        self._open_lot = ParkedTasks()  # waiting for a free stream slot
        self._conn_credit_lot = ParkedTasks()  # senders waiting for connection-level credit
        self._idle_lot = ParkedTasks()  # waiting for no open streams
        self._nursery: trio.Nursery | None = None
        self._error: TransportError | None = None
        self._closing = False
        self._clean = False  # ended by a graceful close (ours or the peer's)
        self._done = trio.Event()
        self._ping_lot = ParkedTasks()
        self.rtt: float | None = None
        self._direction = "out" if outbound else "in"
        self._blocked_s = 0.0  # time senders waited for credit (metric)
        self._m_rtt = tm.RTT.labels(peer_id)
        self._unyielded = 0  # sends and receives since the last scheduler yield
        self.stall_timeout = config.stall_timeout
        self._bulk = trio.Semaphore(max(1, config.bulk_senders))
        # StreamLink: the mux's own methods where a stream needs nothing more
        self.send_credit = mux.send_credit
        self.queue_message = mux.send_message
        self.queue_data = mux.send_data
        self.max_send_frame = mux.max_send_frame  # the peer's HELLO came before the connection was made
        self.flush = self._flush_now

    def bulk_slot(self) -> trio.Semaphore:
        """`async with conn.bulk_slot():` around reading a chunk of bulk data and sending it. At most
        `bulk_senders` streams of this connection hold a chunk in memory at once, so a peer that opens many
        streams and reads none of them costs one chunk per slot, not one per stream."""
        return self._bulk

    def __repr__(self) -> str:
        state = "closed" if self.closed else "closing" if self._closing else "open"
        return f"<Connection {self._direction} {self.remote_address} peer={self.peer_id[:20]}… {state} streams={len(self._streams)}>"

    # -- public

    @property
    def closed(self) -> bool:
        return self._done.is_set() or self._error is not None

    @property
    def usable(self) -> bool:
        """Open and accepting new streams (what the pool hands out)."""
        return not self.closed and not self._closing and self._mux.goaway_received is None and self._mux.ids_left > 0

    @property
    def error(self) -> TransportError | None:
        """Why the connection died (None while open or after a clean close)."""
        return None if self._clean else self._error

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def open_stream(self, meta: dict[str, Any] | None = None) -> Stream:
        """A new stream to the peer; waits while the peer's concurrent-stream limit is reached."""
        await trio.lowlevel.checkpoint_if_cancelled()
        mux = self._mux
        while not mux.can_open_stream:
            if self._error is not None:
                raise ConnectionLost(str(self._error)) from self._error
            if self._closing or mux.goaway_received is not None or mux.goaway_sent is not None:
                raise ConnectionClosing(f"connection to {self.peer_id} is closing; open the stream on a new connection")
            if mux.ids_left == 0:
                # every stream id was used: retire this connection (the pool dials a fresh one)
                self._closing = True
                if self._on_close:
                    self._on_close(self)
                if self._nursery is not None:
                    self._nursery.start_soon(self.aclose)
                raise ConnectionClosing(f"connection to {self.peer_id} used all its stream ids; open the stream on a new connection")
            await self._open_lot.park()
        sid = mux.open_stream(meta)
        st = Stream(self, sid, meta or {}, outbound=True)
        self._streams[sid] = st
        return st

    async def ping(self) -> float:
        """Round-trip time to the peer in seconds (a PING frame)."""
        if self._error is not None:
            raise self._error
        nonce = self._mux.ping(trio.current_time())
        await self._flush_now()
        while self._last_pong != nonce:
            if self._error is not None:
                raise self._error
            await self._ping_lot.park()
        assert self.rtt is not None
        return self.rtt

    _last_pong = -1

    async def aclose(self, timeout: float | None = None) -> None:
        """Graceful close: GOAWAY (no new streams), wait for open streams to finish (up to `timeout`),
        deliver everything queued, then close. Open streams left at the timeout get ConnectionLost."""
        timeout = self._config.close_timeout if timeout is None else timeout
        if not self._done.is_set() and self._error is None:
            self._closing = True
            if self._on_close:
                self._on_close(self)
            self._mux.goaway(m.CODE_NO_ERROR, "closing")
            self._wake_writer()
            with trio.move_on_after(timeout):
                while self._streams and self._error is None:
                    await self._idle_lot.park()
            await self._shutdown(timeout)
        await self._done.wait()

    def abort(self) -> None:
        """Drop the connection now (RST to the peer, ConnectionLost on every stream). For tests and
        emergencies; use `aclose()` normally."""
        self._fail(ConnectionLost("connection aborted locally"))
        try:
            self._wire.abort()
        except NotImplementedError:
            pass

    # -- the StreamLink interface (used by this connection's streams)

    def window_blocking(self, sid: int, n: int) -> str | None:
        mux = self._mux
        if mux.stream_send_credit(sid) < n:
            return "stream"
        if mux.conn_send_credit < n:
            return "connection"
        return None

    async def wait_connection_credit(self) -> None:
        await self._conn_credit_lot.park()

    def note_blocked(self, seconds: float) -> None:
        self._blocked_s += seconds

    def yield_due(self, size: int) -> bool:
        self._unyielded += 1
        if size >= 65536 or self._unyielded >= 16:
            self._unyielded = 0
            return True
        return False

    def consumed(self, sid: int, size: int) -> None:
        mux = self._mux
        if self._error is None:
            mux.consumed(sid, size)
            if mux.has_output:
                self.flush_soon()

    def reset_stream(self, sid: int, code: int, reason: str) -> None:
        if self._mux.reset_stream(sid, code, reason):
            tm.STREAM_RESETS.labels("local").inc()
            self._wake_writer()

    def stream_done(self, stream: Stream) -> None:
        """Drop the Stream once the mux no longer tracks it (both halves ended, or reset)."""
        if self._mux.has_stream(stream.id) or self._streams.get(stream.id) is not stream:
            return
        del self._streams[stream.id]
        if stream.outbound:
            self._open_lot.unpark_all()
        if not self._streams:
            self._idle_lot.unpark_all()

    def push_pending(self) -> None:
        if self._mux.has_output:
            self._wake_writer()

    # -- internals: sending

    def _wake_writer(self) -> None:
        self._writer_wanted = True
        self._writer_lot.unpark_one()

    def stream_counts(self) -> tuple[int, int]:
        """(open streams we opened, open streams the peer opened) — for the metrics collector."""
        streams = list(self._streams.values())
        out = sum(1 for st in streams if st.outbound)
        return out, len(streams) - out

    def traffic(self) -> tuple[int, int, int, int, float]:
        """(bytes sent, frames sent, bytes received, frames received, seconds blocked on credit)."""
        mux = self._mux
        return mux.bytes_sent, mux.frames_sent, mux.bytes_received, mux.frames_received, self._blocked_s

    async def _flush_now(self) -> bool:
        """Write everything queued, in the calling task (holding the write turn). True if it had to wait
        (and so passed through the scheduler)."""
        waited = False
        if not self._writing:
            self._writing = True
        else:
            await self._write_turn.park()  # the releasing task hands us the turn (_writing stays True)
            waited = True
        try:
            waited |= await self._flush()
        finally:
            self._release_write_turn()
        return waited

    def _release_write_turn(self) -> None:
        if not self._write_turn.unpark_one():
            self._writing = False

    async def _flush(self) -> bool:
        mux, wire = self._mux, self._wire
        waited = False
        while True:
            bufs = mux.data_to_send()
            if not bufs and not wire.has_backlog:
                return waited
            if bufs and not wire.has_backlog:
                # the common case (the kernel takes it all, bulk frames included): no stall timer, no
                # cancel scope. What the kernel does not take (plaintext: the rest of `bufs`, uncopied;
                # TLS: ciphertext the wire owns) goes out with the timed send below.
                try:
                    bufs = wire.send_some(bufs)
                except IO_ERRORS as e:
                    err = ConnectionLost(f"connection to {self.peer_id} lost while sending: {describe_io_error(e)}")
                    self._fail(err)
                    raise err from e
                if not bufs and not wire.has_backlog:
                    if not mux.has_output:
                        return waited
                    continue
            try:
                stall = self._config.stall_timeout
                with trio.move_on_after(stall if stall is not None else float("inf")) as stalled:
                    waited |= await wire.send(bufs)  # synchronous unless the kernel buffer is full
                if stalled.cancelled_caught:
                    tm.STALLED.labels("connection").inc()
                    err = ConnectionLost(f"{self.peer_id} read nothing of what we sent for {stall:g} s")
                    self._fail(err)
                    self.abort()
                    raise err
            except trio.Cancelled:
                self._wake_writer()  # the writer task sends the rest
                raise
            except IO_ERRORS as e:
                err = ConnectionLost(f"connection to {self.peer_id} lost while sending: {describe_io_error(e)}")
                self._fail(err)
                raise err from e

    def flush_soon(self) -> None:
        """Send what is queued without waiting (frames the reader produced: WINDOW, PONG; a stream's
        `send_msg_nowait`): if no task holds the write turn and the kernel takes them, no task switch;
        otherwise the writer task finishes the job."""
        if self._writing or self._wire.has_backlog:
            self._wake_writer()
            return
        try:
            if not self._wire.send_nowait(self._mux.data_to_send()):
                self._wake_writer()
        except IO_ERRORS as e:
            self._fail(ConnectionLost(f"connection to {self.peer_id} lost while sending: {describe_io_error(e)}"))

    # -- internals: lifecycle

    def _fail(self, error: TransportError) -> None:
        if self._error is not None:
            return
        self._error = error
        self._mux.fail(error)
        for st in list(self._streams.values()):
            st.connection_lost(error)
        self._streams.clear()
        self._open_lot.unpark_all()
        self._idle_lot.unpark_all()
        self._ping_lot.unpark_all()
        self._conn_credit_lot.unpark_all()
        if self._handlers is not None:
            self._handlers.close()
        if self._on_close:
            self._on_close(self)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _shutdown(self, timeout: float) -> None:
        """Flush, send EOF, wait for the peer's EOF (the reader then ends the connection)."""
        with trio.move_on_after(timeout):
            try:
                await self._flush_now()
                await self._wire.send_eof()
            except TransportError:
                pass
            await self._done.wait()
        if not self._done.is_set():
            self._fail(ConnectionLost("peer did not close the connection in time"))

    async def wait_closed(self) -> None:
        """Return once the connection has ended (cleanly or not) and its tasks are done."""
        await self._done.wait()

    async def run(self, initial_events: list | None = None, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the connection's reader, writer and timer tasks until it ends (for the transport)."""
        tm.CONNECTIONS.labels(self._direction).inc()
        tm.TRAFFIC.add(self)
        try:
            async with trio.open_nursery() as n:
                self._nursery = n
                if self._error is not None:
                    n.cancel_scope.cancel()
                if initial_events:
                    self._dispatch(initial_events)
                n.start_soon(self._reader)
                n.start_soon(self._writer)
                n.start_soon(self._timers)
                task_status.started()
        finally:
            if self._error is None:
                self._fail(ConnectionLost(f"connection to {self.peer_id} closed"))
            with trio.CancelScope(shield=True):
                if not self._writing:
                    with trio.move_on_after(0.5):
                        try:
                            await self._flush_now()  # e.g. the GOAWAY that explains a protocol error
                            await self._wire.send_eof()
                        except Exception:
                            pass
                try:
                    await self._wire.aclose()
                except Exception:  # pragma: no cover
                    pass
            tm.TRAFFIC.remove(self)
            self._done.set()

    async def _reader(self) -> None:
        mux, wire = self._mux, self._wire
        reads = 0
        try:
            while True:
                reads += 1
                if reads >= 16:  # the socket may never run dry: let other tasks run now and then
                    reads = 0
                    await trio.lowlevel.checkpoint()
                view = mux.get_buffer()
                n = await wire.recv_into(view)
                if n == 0:
                    events = mux.receive_eof()
                    self._dispatch(events)
                    clean = self._closing or (isinstance(events[0], ConnectionEnded) and events[0].clean)
                    self._clean = clean and not self._streams
                    if not clean:
                        tm.CONNECTIONS_LOST.labels("eof").inc()
                    why = "peer closed the connection" if clean else "connection closed by the peer without GOAWAY (peer died?)"
                    self._fail(ConnectionLost(f"{why} ({self.peer_id} at {self.remote_address})"))
                    return
                events = mux.advance(n)
                if events:
                    self._dispatch(events)
                if mux.has_output:
                    self.flush_soon()
        except PeerProtocolError as e:
            tm.PROTOCOL_ERRORS.labels(e.kind).inc()
            tm.CONNECTIONS_LOST.labels("protocol_error").inc()
            log.warning("protocol error from %s at %s: %s", self.peer_id, self.remote_address, e)
            err = ConnectionLost(f"connection to {self.peer_id} killed: {e}")
            err.__cause__ = e
            self._fail(err)
        except IO_ERRORS as e:
            tm.CONNECTIONS_LOST.labels("io").inc()
            self._fail(ConnectionLost(f"connection to {self.peer_id} lost: {describe_io_error(e)}"))
        except TransportError as e:
            self._fail(e if isinstance(e, ConnectionLost) else ConnectionLost(str(e)))

    async def _writer(self) -> None:
        try:
            while True:
                while not self._writer_wanted:
                    await self._writer_lot.park()
                self._writer_wanted = False
                await self._flush_now()
        except TransportError:
            pass

    async def _timers(self) -> None:
        mux = self._mux
        while True:
            events = mux.handle_timers(trio.current_time())
            if events:
                self._dispatch(events)
            if mux.has_output:
                self._wake_writer()
            await trio.sleep_until(mux.next_deadline(trio.current_time()))

    def _dispatch(self, events: list) -> None:
        streams = self._streams
        for ev in events:
            t = type(ev)
            if t is DataReceived or t is MessageReceived:
                st = streams.get(ev.stream_id)
                size = ev.size if t is MessageReceived else len(ev.data)
                if st is None or st.discarding:
                    self.consumed(ev.stream_id, size)  # nobody to deliver to: free its credit
                    continue
                st.deliver(ev.message if t is MessageReceived else ev.data, size)
            elif t is CreditReceived:
                if ev.stream_id == 0:
                    self._conn_credit_lot.unpark_all()
                else:
                    st = streams.get(ev.stream_id)
                    if st is not None:
                        st.credit_granted()
            elif t is StreamOpened:
                st = Stream(self, ev.stream_id, ev.meta, outbound=False)
                streams[st.id] = st
                if self._handlers is None:
                    st.reset("this peer accepts no streams", m.CODE_REFUSED)
                else:
                    self._handlers.start(st)
            elif t is StreamEnded:
                st = streams.get(ev.stream_id)
                if st is not None:
                    st.end_received()
                    self.stream_done(st)
            elif t is StreamResetReceived:
                st = streams.get(ev.stream_id)
                if st is not None:
                    tm.STREAM_RESETS.labels("peer").inc()
                    st.peer_reset(ev.code, ev.reason)
                    self._conn_credit_lot.unpark_all()  # a sender of that stream may wait there
                    self.stream_done(st)
            elif t is PongReceived:
                self.rtt = trio.current_time() - ev.sent_at
                self._last_pong = ev.nonce
                self._m_rtt.set(self.rtt)
                self._ping_lot.unpark_all()
            elif t is GoAwayReceived:
                if ev.code not in (m.CODE_NO_ERROR, m.CODE_IDLE, m.CODE_SHUTDOWN):
                    log.warning("peer %s closes the connection: %s %s", self.peer_id, m.CODE_NAMES.get(ev.code, ev.code), ev.reason)
                if self._on_close:
                    self._on_close(self)  # out of the pool: no new streams here
                self._open_lot.unpark_all()
            elif t is KeepaliveTimeout:
                tm.CONNECTIONS_LOST.labels("keepalive").inc()
                self._fail(ConnectionLost(f"connection to {self.peer_id}: {self._mux.error}"))
            elif t is IdleTimeout:
                if self._nursery is not None:
                    self._nursery.start_soon(self._close_idle)
            elif t is HelloReceived or t is ConnectionEnded:
                pass

    async def _close_idle(self) -> None:
        if not self._streams:
            log.debug("closing idle connection to %s", self.peer_id)
            self._closing = True
            if self._on_close:
                self._on_close(self)
            self._mux.goaway(m.CODE_IDLE, "idle")
            await self._shutdown(self._config.close_timeout)
