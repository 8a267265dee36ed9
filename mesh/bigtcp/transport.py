"""bigtcp trio adapter: listener, pooled dialer, connections and streams over TCP (TLS or plaintext).

What was measured before choosing (loopback on this 2-core VM, sender and receiver in separate processes,
1 MiB frames; the VM is shared, so wall-clock rates swing 2-3x between runs — `python -m bench transport`
also reports CPU time per MiB, which is steadier):
  * Raw trio SocketStream 1 GiB: 0.7-2.4 GB/s (CPU ~300-360 us/MiB per side). TLS building blocks, quiet:
    SSLObject.write (AES-256-GCM) 464 us/MiB, SSLObject.read 513 us/MiB, MemoryBIO copies 60-80 us/MiB;
    AES-128-GCM is ~15-40% cheaper, so both ends prefer it. A prototype of the design below moved
    ~930 MB/s with TLS (256 KiB socket reads; 1 MiB reads were slower, ~760 MB/s), where trio's
    SSLStream gives ~230 MB/s (one 16 KiB record per receive_some) and py-libp2p noise+yamux 30-67 MB/s.
  * Fresh memory is expensive in this VM (~5 ms to touch a never-used MiB; bytearray(n) zero-fills, ~40
    us/MiB), so payload buffers are allocated uninitialised and big TLS output is taken in 256 KiB pieces.
  * 64-byte ping-pong: raw trio ~60-150 us p50 across processes; per message our framing+mux costs ~11
    us each way (msgpack ~1.3 us); the rest of a round trip is trio scheduling (one extra task hop per
    side: the connection's reader hands the item to the waiting task) and socket wake-ups.

Design:
  * Plaintext: one `sendmsg([header, payload, header, payload, ...])` per flush (scatter-gather, bulk
    never joined in Python) on a non-blocking socket driven by trio.lowlevel.wait_readable/writable (one
    system call per operation, no wrapper); `recv_into` straight into the frame decoder's buffers: small
    frames land in a reusable 64 KiB scratch buffer, a large frame's payload in place in its own buffer.
  * TLS: an `ssl.SSLObject` over MemoryBIOs, fed by 256 KiB socket reads, decrypting record after record
    directly into the decoder's payload buffer; outgoing frames are encrypted in one go (so a cancelled
    send never leaves half a frame: the ciphertext we own is finished by the next send).
  * Sends happen in the caller's task under a FIFO lock (no hand-off to a writer task on the hot path);
    frames the reader produces (WINDOW, PONG) are written by the reader without waiting when the lock is
    free and the kernel takes them, else by a writer task. The reader never waits for the send lock, so
    two peers sending to each other cannot deadlock.
  * Metrics are read from live connections at scrape time (transport_metrics.TRAFFIC): no prometheus
    call per frame.
  * glibc's allocator is told to keep freed large buffers (`tune_allocator`): without it every fresh
    1 MiB payload buffer page-faulted during the kernel's copy and the plaintext receiver needed 2.3x
    the CPU of a raw trio receiver (0.43x raw throughput in one bench run; with it, on par).

Task ownership: `Transport.serve` owns a nursery; every connection runs its reader, writer and timer tasks
in a nursery inside it, and each incoming stream's handler runs in its own task in the transport's
nursery. `Transport.aclose()` (or cancelling `serve`) stops all of them.

Errors (all `TransportError`): `PeerProtocolError` (peer's fault; the connection is dead and says why),
`LocalProtocolError` (our misuse), `HandshakeError`/`PeerIdMismatch` (refused before use),
`StreamReset`, `ConnectionLost` (on every open stream when the peer dies), `ConnectionClosing`,
`ConnectError`, `EndOfStream` (the peer half-closed the stream).
"""

from __future__ import annotations

import errno
import logging
import os
import socket as _socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from mesh.bigtcp import messages as m
from mesh.bigtcp import transport_metrics as tm
from mesh.bigtcp.framing import (
    DEFAULT_MAX_FRAME,
    LocalProtocolError,
    PeerProtocolError,
    TransportError,
    encode_frame,
)
from mesh.bigtcp.limits import ConnectionGate, ConnectionLimits
from mesh.bigtcp.mux import (
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
    Mux,
    PongReceived,
    StreamEnded,
    StreamOpened,
    StreamReset,
    StreamResetReceived,
)
from mesh.bigtcp.tls import HandshakeError, PeerIdMismatch, TlsContexts, TlsSession, make_contexts
from mesh.identity import Identity

__all__ = [
    "ConnectError",
    "Connection",
    "ConnectionClosing",
    "ConnectionConfig",
    "ConnectionLost",
    "EndOfStream",
    "HandshakeError",
    "LocalProtocolError",
    "PeerIdMismatch",
    "PeerProtocolError",
    "Stream",
    "StreamReset",
    "Transport",
    "TransportError",
    "WrongItemKind",
    "connect_over_stream",
]

log = logging.getLogger("gpumesh.transport")

_IOV_BATCH = 512  # buffers per sendmsg (IOV_MAX is 1024 on Linux)
_TLS_READ = 256 * 1024
_TLS_HANDSHAKE_READ = 16 * 1024  # before the peer is authenticated (grown to _TLS_READ after the handshake)
_SMALL_JOIN = 16 * 1024  # TLS: consecutive buffers below this are joined into one record


_allocator_tuned = False


def tune_allocator() -> bool:
    """Keep freed large buffers in the process (glibc only; once per process; GPUMESH_NO_MALLOPT=1 skips).

    Every received frame gets a fresh payload buffer (the application keeps it). With glibc's default
    trim/mmap thresholds, freed MiB-sized buffers go back to the kernel and the next one page-faults
    while the kernel copies into it: measured here 2.3x the receiver's CPU (700 vs 300 us/MiB, 1.4 vs
    3.3-4.3 GB/s on loopback). Raising M_MMAP_THRESHOLD to 32 MiB (above the 16 MiB max frame) and
    M_TRIM_THRESHOLD to 128 MiB keeps that memory mapped for reuse, at the cost of up to ~128 MiB of
    freed memory staying in the process. Called by Transport(); returns whether it applied."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get("GPUMESH_NO_MALLOPT"):
        return False
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 32 << 20) == 1 and mallopt(m_trim_threshold, 128 << 20) == 1
    _allocator_tuned = ok
    return ok


class EndOfStream(TransportError):
    """The peer half-closed the stream and everything it sent was received."""


class ConnectError(TransportError):
    """The peer could not be reached (DNS, refused, unreachable, timeout)."""


class WrongItemKind(LocalProtocolError):
    """`receive_msg` found a data frame next (or `receive_bytes` a message); nothing was consumed."""


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


# ============================================================================================== wires


class _Wire:
    """Moves bytes for one connection. `send` is cancellation-safe: whatever it did not write is kept
    (copied) and goes out first on the next call, so frames are never cut. `send_nowait` writes what
    the kernel takes without waiting and keeps the rest for the next `send`."""

    secure = False

    @property
    def has_backlog(self) -> bool:
        raise NotImplementedError

    async def send(self, bufs: list) -> bool:
        """Write all of `bufs` (after any backlog). True if it had to wait (passed through the scheduler)."""
        raise NotImplementedError

    def send_nowait(self, bufs: list) -> bool:
        """True if everything went out; else the rest is kept (a later `send` must flush it)."""
        raise NotImplementedError

    async def recv_into(self, view: memoryview) -> int:
        raise NotImplementedError

    async def send_eof(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection at once (RST where possible)."""
        raise NotImplementedError


class _SocketWire(_Wire):
    """A non-blocking stdlib socket driven with trio's wait_readable/wait_writable (the socket calls are
    made directly: one system call per operation, no wrapper, no extra scheduler pass)."""

    def __init__(self, sock: _socket.socket) -> None:
        sock.setblocking(False)
        self.raw = sock
        self._backlog: list = []

    @property
    def has_backlog(self) -> bool:
        return bool(self._backlog)

    def _push(self, bufs: list) -> tuple[list, int]:
        """Write from `bufs` without blocking; returns (bufs, index of the first unsent buffer) with
        bufs[index] trimmed to its unsent part."""
        raw = self.raw
        i, nb = 0, len(bufs)
        while i < nb:
            try:
                n = raw.sendmsg(bufs[i : i + _IOV_BATCH])
            except BlockingIOError:
                break
            while n:
                k = len(bufs[i])
                if n >= k:
                    n -= k
                    i += 1
                else:
                    bufs[i] = memoryview(bufs[i])[n:]
                    n = 0
            while i < nb and not len(bufs[i]):
                i += 1
        return bufs, i

    async def send(self, bufs: list) -> bool:
        if self._backlog:
            bufs = self._backlog + bufs
            self._backlog = []
        waited = False
        try:
            while True:
                bufs, i = self._push(bufs)
                if i == len(bufs):
                    return waited
                bufs = bufs[i:]
                waited = True
                await trio.lowlevel.wait_writable(self.raw.fileno())
        except trio.Cancelled:
            # the caller may reuse its buffers after we return: keep private copies of the rest
            self._backlog = [bytes(b) for b in bufs]
            raise

    def send_nowait(self, bufs: list) -> bool:
        if self._backlog:
            self._backlog += [bytes(b) for b in bufs]
            return False
        bufs, i = self._push(bufs)
        if i == len(bufs):
            return True
        self._backlog = [bytes(b) for b in bufs[i:]]
        return False

    async def recv_into(self, view: memoryview) -> int:
        raw = self.raw
        while True:
            try:
                return raw.recv_into(view)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(raw.fileno())

    async def send_eof(self) -> None:
        try:
            self.raw.shutdown(_socket.SHUT_WR)
        except OSError:
            pass

    def _close(self) -> None:
        if self.raw.fileno() != -1:
            trio.lowlevel.notify_closing(self.raw.fileno())
            self.raw.close()

    async def aclose(self) -> None:
        self._close()

    def abort(self) -> None:
        try:
            self.raw.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        self._close()


class _TlsWire(_SocketWire):
    secure = True

    def __init__(self, sock: _socket.socket, session: TlsSession) -> None:
        super().__init__(sock)
        self.session = session
        self._rbuf = bytearray(_TLS_HANDSHAKE_READ)
        self._rview = memoryview(self._rbuf)
        self._pending: memoryview | None = None  # ciphertext taken from the session, not yet sent

    @property
    def has_backlog(self) -> bool:
        return bool(self._pending) or self.session.output_pending > 0

    async def _recv_raw(self) -> int:
        raw = self.raw
        while True:
            try:
                return raw.recv_into(self._rbuf)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(raw.fileno())

    async def handshake(self) -> None:
        s = self.session
        while not s.handshake_step():
            await self._drain()
            n = await self._recv_raw()
            if n == 0:
                raise HandshakeError("tls", "peer closed the connection during the TLS handshake")
            s.feed(self._rview[:n])
        await self._drain()

    def grow(self) -> None:
        """The peer is authenticated: read in large batches from now on."""
        if len(self._rbuf) < _TLS_READ:
            self._rbuf = bytearray(_TLS_READ)
            self._rview = memoryview(self._rbuf)

    def _drain_nowait(self) -> bool:
        """Send pending ciphertext without blocking; True when all of it is out."""
        s, raw = self.session, self.raw
        while True:
            if not self._pending:
                if not s.output_pending:
                    self._pending = None
                    return True
                self._pending = memoryview(s.take_output())
            try:
                n = raw.send(self._pending)
            except BlockingIOError:
                return False
            self._pending = self._pending[n:]

    async def _drain(self) -> bool:
        waited = False
        while not self._drain_nowait():
            waited = True
            await trio.lowlevel.wait_writable(self.raw.fileno())
        return waited

    def _encrypt(self, bufs: list) -> None:
        write = self.session.write
        small: list = []
        for b in bufs:
            if len(b) < _SMALL_JOIN:
                small.append(b)
                continue
            if small:
                write(b"".join(small) if len(small) > 1 else small[0])
                small = []
            write(b)
        if small:
            write(b"".join(small) if len(small) > 1 else small[0])

    async def send(self, bufs: list) -> bool:
        # Encrypt everything first (synchronously): a cancellation can then only interrupt the sending
        # of ciphertext we own, and the next call continues it.
        self._encrypt(bufs)
        return await self._drain()

    def send_nowait(self, bufs: list) -> bool:
        self._encrypt(bufs)
        return self._drain_nowait()

    async def recv_into(self, view: memoryview) -> int:
        s = self.session
        while True:
            n = s.read_into(view)
            if n >= 0:
                return n
            k = await self._recv_raw()
            if k == 0:
                return 0  # TCP EOF (with or without close_notify): the mux decides if it was clean
            s.feed(self._rview[:k])

    async def send_eof(self) -> None:
        self.session.close_notify()
        try:
            await self._drain()
        except OSError:
            pass
        await super().send_eof()


class _StreamWire(_Wire):
    """Over any trio Stream (memory streams in tests). Plaintext only. trio streams cannot take a
    cancelled send_all back, so sends are shielded (bounded by a timeout)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._left = memoryview(b"")
        self._backlog: list = []

    @property
    def has_backlog(self) -> bool:
        return bool(self._backlog)

    async def send(self, bufs: list) -> bool:
        if self._backlog:
            bufs = self._backlog + bufs
            self._backlog = []
        if bufs:
            data = b"".join(bytes(b) if isinstance(b, memoryview) else b for b in bufs)
            # trio streams are not cancel-safe (a cancelled send_all may have sent part of the data), so
            # the write is shielded; a peer that stops reading for long breaks the connection instead.
            with trio.CancelScope(shield=True):
                with trio.move_on_after(10.0) as scope:
                    await self.stream.send_all(data)
            if scope.cancelled_caught:
                raise trio.BrokenResourceError("peer stopped reading (send timed out)")
        return True

    def send_nowait(self, bufs: list) -> bool:
        self._backlog += [bytes(b) for b in bufs]  # trio streams cannot send synchronously
        return False

    async def recv_into(self, view: memoryview) -> int:
        if not self._left:
            data = await self.stream.receive_some(max(len(view), 65536))
            if not data:
                return 0
            self._left = memoryview(data)
        n = min(len(view), len(self._left))
        view[:n] = self._left[:n]
        self._left = self._left[n:]
        return n

    async def send_eof(self) -> None:
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            try:
                await self.stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    def abort(self) -> None:
        raise NotImplementedError("stream wires close when the connection's tasks end")


_IO_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


# ============================================================================================== stream



class Stream:
    """One logical stream: messages (`send_msg`/`receive_msg`, msgpack maps) and bulk data frames
    (`send_bytes`/`receive_bytes`, raw), in order, with per-stream flow control.

    One `send_bytes` call is one DATA frame and one `receive_bytes` result (at most `max_frame_size`
    bytes). `close()` half-closes (the peer reads everything, then `EndOfStream`); `reset()` aborts both
    directions at once. As an async context manager: normal exit closes, an exception resets.
    """

    def __init__(self, conn: Connection, sid: int, meta: dict[str, Any], outbound: bool) -> None:
        self._conn = conn
        self.id = sid
        self.meta = meta
        self.outbound = outbound  # opened by this side
        self._items: deque[tuple[Any, int]] = deque()
        self._eof = False  # peer half-closed
        self._send_closed = False
        self._error: TransportError | None = None  # reset (local or peer): fatal for both directions
        self._lost: TransportError | None = None  # connection died: buffered items still readable
        self._discard = False  # nobody reads any more: drop incoming data and grant credit
        self._lot = trio.lowlevel.ParkingLot()  # receivers waiting for items, senders for credit
        self._scopes: list[trio.CancelScope] = []

    def __repr__(self) -> str:
        return f"<Stream {self.id} peer={self.peer_id[:16]}…>"

    # -- properties

    @property
    def peer_id(self) -> str:
        return self._conn.peer_id

    @property
    def connection(self) -> Connection:
        return self._conn

    @property
    def max_frame_size(self) -> int:
        """Largest payload one `send_bytes` / `send_msg` may carry (the peer's max frame)."""
        return self._conn._mux.max_send_frame

    @property
    def buffered(self) -> int:
        """Bytes received on this stream and not yet taken by the application."""
        return sum(size for _item, size in self._items)

    @property
    def closed_for_receiving(self) -> bool:
        return (self._eof and not self._items) or self._error is not None

    # -- sending

    async def send_msg(self, msg: dict[str, Any], *, end: bool = False) -> None:
        """Send one msgpack map (a control message of the application). `end=True` also half-closes."""
        await self._send(m.pack_message(msg), end, True)

    async def send_bytes(self, data: bytes | bytearray | memoryview, *, end: bool = False) -> None:
        """Send one raw data frame. Waits for flow-control credit; returns once the bytes were handed to
        the kernel (or encrypted), so the caller may then reuse `data`. If cancelled, the frame may or may
        not still be delivered (it is never cut)."""
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        await self._send(mv, end, False)

    async def close(self) -> None:
        """Half-close: the peer receives `EndOfStream` after everything sent before. Idempotent."""
        if self._send_closed or self._error is not None:
            await trio.lowlevel.checkpoint()
            return
        await self._send(b"", True, False)

    def _check_send(self) -> None:
        if self._error is not None:
            raise self._error
        if self._lost is not None:
            raise self._lost
        if self._send_closed:
            raise LocalProtocolError(f"stream {self.id} is closed for sending")

    async def _send(self, payload: bytes | memoryview, end: bool, is_msg: bool) -> None:
        conn = self._conn
        mux = conn._mux
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_send()
        n = len(payload)
        if n > mux.max_send_frame:
            raise LocalProtocolError(f"payload of {n} bytes exceeds the peer's max frame ({mux.max_send_frame}); send it in parts")
        waited = False
        if mux.send_credit(self.id) < n:
            waited = True
            t0 = trio.current_time()
            stall = conn._config.stall_timeout
            try:
                with trio.move_on_after(stall if stall is not None else float("inf")) as stalled:
                    while True:
                        self._check_send()
                        if mux.stream_send_credit(self.id) < n:
                            await self._lot.park()  # this stream's reader is behind
                        elif mux.conn_send_credit < n:
                            await conn._conn_credit_lot.park()  # the connection's window is full
                        else:
                            break
                if stalled.cancelled_caught:  # never granted: reset, so its buffers and task are freed
                    tm.STALLED.labels("stream").inc()
                    self.reset(f"no credit granted for {stall:g} s", m.CODE_FLOW_CONTROL)
                    self._check_send()
            finally:
                conn._blocked_s += trio.current_time() - t0
        if is_msg:
            mux.send_message(self.id, payload, end=end)  # type: ignore[arg-type]
        else:
            mux.send_data(self.id, payload, end=end)
        if end:
            self._send_closed = True
            conn._maybe_forget(self)
        if await conn._flush_now() or waited:
            return
        # Sent without waiting for anything: yield now and then so a busy sender cannot starve the
        # other tasks (bulk frames always; small messages every 16th send).
        conn._unyielded += 1
        if n >= 65536 or conn._unyielded >= 16:
            conn._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    # -- receiving

    async def receive(self) -> dict[str, Any] | bytes | bytearray:
        """The next item: a dict (message) or a bytes-like object (data frame)."""
        return await self._receive(None)

    async def receive_msg(self) -> dict[str, Any]:
        return await self._receive(dict)  # type: ignore[return-value]

    async def receive_bytes(self) -> bytes | bytearray:
        return await self._receive(bytes)  # type: ignore[return-value]

    async def _receive(self, kind: type | None) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        parked = False
        while not self._items:
            if self._error is not None:
                raise self._error
            if self._eof:
                raise EndOfStream(f"stream {self.id}: peer closed its end")
            if self._lost is not None:
                raise self._lost
            if self._conn._mux.has_output:
                self._conn._wake_writer()  # e.g. our OPEN frame, not yet flushed
            parked = True
            await self._lot.park()
        item, size = self._items[0]
        if kind is not None and (kind is dict) != isinstance(item, dict):
            if not parked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            want = "a message" if kind is dict else "a data frame"
            got = "a message" if isinstance(item, dict) else "a data frame"
            raise WrongItemKind(f"stream {self.id}: expected {want}, next is {got}")
        self._items.popleft()
        conn = self._conn
        if size:
            conn._consumed(self.id, size)
        if not parked:
            # The item was already here. Yield now and then (bulk frames always, small items every 16th)
            # so a consumer that never runs dry cannot starve other tasks, without paying a scheduler
            # pass on every small message.
            conn._unyielded += 1
            if size >= 65536 or conn._unyielded >= 16:
                conn._unyielded = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    def __aiter__(self):
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except EndOfStream:
            raise StopAsyncIteration from None

    # -- aborting

    def reset(self, reason: str = "", code: int = m.CODE_CANCEL) -> None:
        """Abort the stream both ways: buffered data is dropped, the peer gets StreamReset. Idempotent."""
        if self._error is not None:
            return
        conn = self._conn
        self._error = StreamReset(self.id, code, reason, by_peer=False)
        self._items.clear()
        if conn._mux.reset_stream(self.id, code, reason):
            tm.STREAM_RESETS.labels("local").inc()
            conn._wake_writer()
        conn._maybe_forget(self)
        self._lot.unpark_all()

    def cancel_on_reset(self, scope: trio.CancelScope) -> None:
        """Cancel `scope` if the peer resets this stream or the connection dies (a handler whose caller
        went away stops working)."""
        if self._error is not None or self._lost is not None:
            scope.cancel()
        else:
            self._scopes.append(scope)

    async def aclose(self) -> None:
        """Finish with the stream: half-close if still open for sending, ignore further incoming data."""
        if self._error is None and self._lost is None and not self._send_closed:
            try:
                await self.close()
            except TransportError:
                pass
        self._stop_receiving()

    def _stop_receiving(self) -> None:
        if self._discard:
            return
        self._discard = True
        dropped = sum(size for _i, size in self._items)
        self._items.clear()
        if dropped:
            self._conn._consumed(self.id, dropped)

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            await self.aclose()
        else:
            self.reset(f"{exc_type.__name__} in the stream's user" if not issubclass(exc_type, trio.Cancelled) else "cancelled")

    # -- called by the connection

    def _on_peer_reset(self, code: int, reason: str) -> None:
        self._error = StreamReset(self.id, code, reason, by_peer=True)
        self._items.clear()
        self._wake_all()

    def _on_lost(self, error: TransportError) -> None:
        if self._lost is None and self._error is None:
            self._lost = error
        self._wake_all()

    def _wake_all(self) -> None:
        self._lot.unpark_all()
        self._conn._conn_credit_lot.unpark_all()  # a sender of ours may wait there
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()


# ============================================================================================== connection


class Connection:
    """One authenticated connection to a peer carrying many streams. Made by `Transport.connect`/accept."""

    def __init__(
        self,
        *,
        wire: _Wire,
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
        self._spawn = spawn
        self._handler = handler
        self._on_close = on_close
        self._streams: dict[int, Stream] = {}
        self._send_lock = trio.StrictFIFOLock()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._writer_wanted = False
        self._open_lot = trio.lowlevel.ParkingLot()  # waiting for a free stream slot
        self._conn_credit_lot = trio.lowlevel.ParkingLot()  # senders waiting for connection-level credit
        self._idle_lot = trio.lowlevel.ParkingLot()  # waiting for no open streams
        self._nursery: trio.Nursery | None = None
        self._error: TransportError | None = None
        self._closing = False
        self._clean = False  # ended by a graceful close (ours or the peer's)
        self._done = trio.Event()
        self._ping_lot = trio.lowlevel.ParkingLot()
        self.rtt: float | None = None
        self._direction = "out" if outbound else "in"
        self._blocked_s = 0.0  # time senders waited for credit (metric)
        self._m_rtt = tm.RTT.labels(peer_id)
        self._unyielded = 0  # sends since the last scheduler yield
        self._bulk = trio.Semaphore(max(1, config.bulk_senders))

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

    # -- internals: sending

    def _wake_writer(self) -> None:
        self._writer_wanted = True
        self._writer_lot.unpark()

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
        """Write everything queued, in the calling task (under the FIFO send lock). True if it had to
        wait (and so passed through the scheduler)."""
        lock = self._send_lock
        waited = False
        if not lock.locked():
            lock.acquire_nowait()
        else:
            await lock.acquire()
            waited = True
        try:
            waited |= await self._flush()
        finally:
            lock.release()
        return waited

    async def _flush(self) -> bool:
        mux, wire = self._mux, self._wire
        waited = False
        while True:
            bufs = mux.data_to_send()
            if not bufs and not wire.has_backlog:
                return waited
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
            except _IO_ERRORS as e:
                err = ConnectionLost(f"connection to {self.peer_id} lost while sending: {_describe(e)}")
                self._fail(err)
                raise err from e

    def _flush_from_reader(self) -> None:
        """Send frames the reader produced (WINDOW, PONG) without waiting: if the send lock is free and
        the kernel takes them, no task switch; otherwise the writer task finishes the job."""
        lock = self._send_lock
        if lock.locked() or self._wire.has_backlog:
            self._wake_writer()
            return
        lock.acquire_nowait()
        try:
            if not self._wire.send_nowait(self._mux.data_to_send()):
                self._wake_writer()
        except _IO_ERRORS as e:
            self._fail(ConnectionLost(f"connection to {self.peer_id} lost while sending: {_describe(e)}"))
        finally:
            lock.release()

    def _consumed(self, sid: int, size: int) -> None:
        mux = self._mux
        if self._error is None:
            mux.consumed(sid, size)
            if mux.has_output:
                self._flush_from_reader()

    def _maybe_forget(self, st: Stream) -> None:
        """Drop the Stream once the mux no longer tracks it (both halves ended, or reset)."""
        if self._mux.has_stream(st.id) or self._streams.get(st.id) is not st:
            return
        del self._streams[st.id]
        if st.outbound:
            self._open_lot.unpark_all()
        if not self._streams:
            self._idle_lot.unpark_all()

    # -- internals: lifecycle

    def _fail(self, error: TransportError) -> None:
        if self._error is not None:
            return
        self._error = error
        self._mux.fail(error)
        for st in list(self._streams.values()):
            st._on_lost(error)
        self._streams.clear()
        self._open_lot.unpark_all()
        self._idle_lot.unpark_all()
        self._ping_lot.unpark_all()
        self._conn_credit_lot.unpark_all()
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

    async def _run(self, initial_events: list | None = None, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
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
                if not self._send_lock.locked():
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
                    self._flush_from_reader()
        except PeerProtocolError as e:
            tm.PROTOCOL_ERRORS.labels(e.kind).inc()
            tm.CONNECTIONS_LOST.labels("protocol_error").inc()
            log.warning("protocol error from %s at %s: %s", self.peer_id, self.remote_address, e)
            err = ConnectionLost(f"connection to {self.peer_id} killed: {e}")
            err.__cause__ = e
            self._fail(err)
        except _IO_ERRORS as e:
            tm.CONNECTIONS_LOST.labels("io").inc()
            self._fail(ConnectionLost(f"connection to {self.peer_id} lost: {_describe(e)}"))
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
                if st is None:
                    self._consumed(ev.stream_id, size)  # nobody to deliver to: free its credit
                    continue
                if st._discard:
                    self._consumed(st.id, size)
                    continue
                st._items.append((ev.message if t is MessageReceived else ev.data, size))
                st._lot.unpark_all()
            elif t is CreditReceived:
                if ev.stream_id == 0:
                    self._conn_credit_lot.unpark_all()
                else:
                    st = streams.get(ev.stream_id)
                    if st is not None:
                        st._lot.unpark_all()
            elif t is StreamOpened:
                st = Stream(self, ev.stream_id, ev.meta, outbound=False)
                streams[st.id] = st
                if self._handler is None:
                    st.reset("this peer accepts no streams", m.CODE_REFUSED)
                else:
                    self._spawn(self._run_handler, st)
            elif t is StreamEnded:
                st = streams.get(ev.stream_id)
                if st is not None:
                    st._eof = True
                    st._lot.unpark_all()
                    self._maybe_forget(st)
            elif t is StreamResetReceived:
                st = streams.get(ev.stream_id)
                if st is not None:
                    tm.STREAM_RESETS.labels("peer").inc()
                    st._on_peer_reset(ev.code, ev.reason)
                    self._maybe_forget(st)
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

    async def _run_handler(self, st: Stream) -> None:
        assert self._handler is not None
        try:
            await self._handler(st)
        except TransportError as e:
            log.debug("stream %d from %s ended with %s", st.id, self.peer_id, e)
            st.reset(f"handler: {e}", m.CODE_INTERNAL)
        except Exception:
            log.exception("stream handler failed (stream %d from %s)", st.id, self.peer_id)
            st.reset("handler failed", m.CODE_INTERNAL)
        except trio.Cancelled:
            st.reset("cancelled", m.CODE_CANCEL)
            raise
        else:
            await st.aclose()


async def _tcp_connect(host: str, port: int) -> _socket.socket:
    """A connected non-blocking TCP socket (TCP_NODELAY); tries each resolved address in turn."""
    infos = await trio.socket.getaddrinfo(host, port, type=_socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host} resolves to no address")
    last: OSError | None = None
    for family, type_, proto, _name, sockaddr in infos:
        sock = _socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            err = sock.connect_ex(sockaddr)
            if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                await trio.lowlevel.wait_writable(sock.fileno())
                err = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            return sock
        except OSError as e:
            sock.close()
            last = e
        except BaseException:
            sock.close()
            raise
    assert last is not None
    raise last


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} (errno {e.errno})"
    return str(e) or type(e).__name__


# ============================================================================================== establishing


async def _establish(
    wire: _Wire,
    *,
    outbound: bool,
    identity: Identity,
    config: ConnectionConfig,
    expected_peer_id: str | None,
    address: str,
    hello_extra: Callable[[str, str | None], dict[str, Any]] | None = None,
    authorize: Callable[[str, dict[str, Any], bool], Any] | None = None,
) -> tuple[Mux, str, list, Any]:
    """TLS handshake (if any), identity check, HELLO exchange, authorization. Returns (mux, peer id,
    events that arrived after the peer's HELLO, principal from `authorize`).

    The dialer sends its HELLO first; the listener answers with its own only once it accepted the dialer,
    or with a GOAWAY(refused) saying why — so a refused dialer gets HandshakeError('refused') from
    connect(), not a connection that dies later."""
    peer_id: str | None = None
    if isinstance(wire, _TlsWire):
        await wire.handshake()
        peer_id = wire.session.peer_id()
        if expected_peer_id is not None and peer_id != expected_peer_id:
            raise PeerIdMismatch(expected_peer_id, peer_id, address)
    mux = Mux(
        client=outbound,
        peer_id=identity.peer_id_str,
        max_frame=config.max_frame,
        window=config.window,
        max_streams=config.max_streams,
        keepalive=config.keepalive,
        dead_after=config.dead_after,
        idle_close=config.idle_close,
        hello_extra=hello_extra(identity.peer_id_str, peer_id or expected_peer_id) if hello_extra else None,
        conn_window=config.conn_window,
    )
    our_hello = mux.data_to_send()
    if outbound:
        await wire.send(our_hello)
    events: list = []
    try:
        while not mux.ready:
            n = await wire.recv_into(mux.get_buffer())
            if n == 0:
                raise HandshakeError("hello", f"{address} closed the connection before its HELLO")
            events += mux.advance(n)
            if mux.goaway_received is not None and not mux.ready:
                g = mux.goaway_received
                raise HandshakeError("refused", f"{address} refused the connection: {g.reason or m.CODE_NAMES.get(g.code, g.code)}")
    except PeerProtocolError as e:
        raise HandshakeError("hello", f"{address} sent a bad HELLO: {e}") from None
    hello = events.pop(0).hello
    if peer_id is not None:
        if hello.peer_id != peer_id:
            raise HandshakeError("hello", f"{address} claims {hello.peer_id!r} in HELLO but its certificate proves {peer_id}")
    else:
        # plaintext: the id is only a claim (nothing proves it); still refuse a wrong one
        if expected_peer_id is not None and hello.peer_id != expected_peer_id:
            raise PeerIdMismatch(expected_peer_id, hello.peer_id or "(none)", address)
        peer_id = hello.peer_id or f"unauthenticated:{address}"
    principal = None
    if authorize is not None:
        refusal: HandshakeError | None = None
        try:
            principal = authorize(peer_id, hello.extra, outbound)
        except HandshakeError as e:
            refusal = e
        except Exception as e:
            refusal = HandshakeError("refused", f"peer {peer_id} at {address} is not authorized: {e}")
        if refusal is not None:
            t, payload = m.encode_control(m.GoAway(0, m.CODE_REFUSED, "not authorized"))
            with trio.move_on_after(1.0):
                try:
                    await wire.send(encode_frame(t, 0, 0, payload))
                    await wire.send_eof()
                except _IO_ERRORS:
                    pass
            raise refusal
    if not outbound:
        await wire.send(our_hello)
    return mux, peer_id, events, principal


async def connect_over_stream(
    stream: trio.abc.Stream,
    *,
    nursery: trio.Nursery,
    outbound: bool,
    identity: Identity | None = None,
    handler: Callable[[Stream], Awaitable[None]] | None = None,
    expected_peer_id: str | None = None,
    config: ConnectionConfig | None = None,
) -> Connection:
    """A plaintext bigtcp connection over an already-connected trio Stream (e.g. memory streams in
    tests). The connection's tasks and stream handlers run in `nursery`."""
    config = config or ConnectionConfig()
    identity = identity or Identity.generate()
    tune_allocator()
    wire = _StreamWire(stream)
    with trio.fail_after(config.handshake_timeout):
        mux, peer_id, events, _principal = await _establish(
            wire, outbound=outbound, identity=identity, config=config, expected_peer_id=expected_peer_id, address="stream"
        )
    conn = Connection(
        wire=wire, mux=mux, peer_id=peer_id, outbound=outbound, address="stream", config=config,
        spawn=nursery.start_soon, handler=handler,
    )
    await nursery.start(conn._run, events)
    return conn


# ============================================================================================== transport


class Transport:
    """The node's data-plane endpoint: a listener plus a pool of connections (one per peer, reused).

        transport = Transport(identity, port=4002, handler=handle_stream)
        await nursery.start(transport.serve)       # binds; .port / .address are set after this
        conn = await transport.connect(host, port, expected_peer_id)
        async with await conn.open_stream() as s: ...
        await transport.aclose()

    `insecure=True` runs plaintext (peer ids are then unauthenticated claims): only for
    `--data-plane-insecure`. `listen=False` makes a dial-only endpoint (clients).
    `hello_extra(local_id, remote_id)` adds a dict to our HELLO (e.g. an admission proof);
    `authorize(peer_id, extra, outbound)` sees the peer's dict and returns a principal stored as
    `Connection.principal`, or raises HandshakeError('refused', ...) to refuse the peer.
    """

    def __init__(
        self,
        identity: Identity | None = None,
        *,
        host: str = "0.0.0.0",
        port: int = 4002,
        insecure: bool = False,
        max_frame: int = DEFAULT_MAX_FRAME,
        window: int | None = None,
        conn_window: int | None = None,
        max_streams: int = 1024,
        keepalive: float | None = 15.0,
        dead_after: float | None = 45.0,
        idle_close: float | None = 300.0,
        handshake_timeout: float = 10.0,
        close_timeout: float = 5.0,
        stall_timeout: float | None = 60.0,
        handler: Callable[[Stream], Awaitable[None]] | None = None,
        listen: bool = True,
        backlog: int = 128,
        hello_extra: Callable[[str, str | None], dict[str, Any]] | None = None,
        authorize: Callable[[str, dict[str, Any], bool], Any] | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.identity = identity or Identity.generate()
        self._gate = ConnectionGate(limits or ConnectionLimits())
        tune_allocator()
        self.host = host
        self.port = port
        self.insecure = insecure
        self.handler = handler
        self.listen = listen
        self.backlog = backlog
        self.config = ConnectionConfig(
            max_frame=max_frame, window=window, conn_window=conn_window, max_streams=max_streams,
            keepalive=keepalive, dead_after=dead_after,
            idle_close=idle_close, handshake_timeout=handshake_timeout, close_timeout=close_timeout,
            stall_timeout=stall_timeout,
        )
        self._hello_extra = hello_extra
        self._authorize = authorize
        self._tls: TlsContexts | None = None if insecure else make_contexts(self.identity)
        self._nursery: trio.Nursery | None = None
        self._serve_scope: trio.CancelScope | None = None
        self._listener: _socket.socket | None = None
        self._by_peer: dict[str, Connection] = {}
        self._by_addr: dict[tuple[str, int], Connection] = {}
        self._all: set[Connection] = set()
        self._dialing: dict[Any, trio.Event] = {}
        self._closed = False

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id_str

    @property
    def address(self) -> str:
        """`host:port` we listen on (port resolved after `serve` started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def connections(self) -> list[Connection]:
        return [c for c in self._all if not c.closed]

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bind (if listening) and run until `aclose()` or cancellation. Use with `nursery.start`."""
        if self._nursery is not None:
            raise LocalProtocolError("Transport.serve() is already running")
        if self.listen:  # bind before the nursery opens, so a busy port raises plainly (no exception group)
            family = _socket.AF_INET6 if ":" in self.host else _socket.AF_INET
            sock = _socket.socket(family, _socket.SOCK_STREAM)
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
                sock.listen(self.backlog)
            except OSError as e:
                sock.close()
                raise ConnectError(f"cannot listen on {self.address}: {_describe(e)}") from e
            sock.setblocking(False)
            self._listener = sock
            self.port = sock.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._serve_scope = nursery.cancel_scope
                if self._listener is not None:
                    nursery.start_soon(self._accept_loop, self._listener)
                    log.info("data plane listening on %s (%s)", self.address, "plaintext" if self.insecure else "TLS")
                task_status.started(self.address)
                await trio.sleep_forever()
        finally:
            self._close_listener()
            self._nursery = None

    def _close_listener(self) -> None:
        if self._listener is not None and self._listener.fileno() != -1:
            trio.lowlevel.notify_closing(self._listener.fileno())
            self._listener.close()

    async def aclose(self, timeout: float | None = None) -> None:
        """Close every connection gracefully (bounded by `timeout`), then stop `serve`."""
        self._closed = True
        self._close_listener()
        conns = list(self._all)
        if conns:
            with trio.move_on_after(self.config.close_timeout if timeout is None else timeout):
                async with trio.open_nursery() as n:
                    for c in conns:
                        n.start_soon(c.aclose, timeout)
        for c in list(self._all):
            if not c.closed:
                c.abort()
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- dialing

    async def connect(self, host: str, port: int, expected_peer_id: str | None = None) -> Connection:
        """A usable connection to the peer at host:port — the pooled one if there is one. With
        `expected_peer_id` (from the peer's advert), any other identity is refused (PeerIdMismatch)."""
        if self._nursery is None or self._closed:
            raise LocalProtocolError("Transport is not running: start serve() in a nursery first")
        addr = (host, int(port))
        key: Any = expected_peer_id or addr
        while True:
            conn = self._pooled(expected_peer_id, addr)
            if conn is not None:
                await trio.lowlevel.checkpoint()
                return conn
            ev = self._dialing.get(key)
            if ev is None:
                break
            await ev.wait()  # someone else dials the same peer: share their connection
        ev = self._dialing[key] = trio.Event()
        try:
            return await self._dial(addr, expected_peer_id)
        finally:
            del self._dialing[key]
            ev.set()

    def _pooled(self, expected_peer_id: str | None, addr: tuple[str, int]) -> Connection | None:
        conn = self._by_peer.get(expected_peer_id) if expected_peer_id else self._by_addr.get(addr)
        return conn if conn is not None and conn.usable else None

    async def _dial(self, addr: tuple[str, int], expected_peer_id: str | None) -> Connection:
        address = f"{addr[0]}:{addr[1]}"
        try:
            with trio.fail_after(self.config.handshake_timeout):
                sock = await _tcp_connect(*addr)
        except (OSError, trio.TooSlowError) as e:
            raise ConnectError(f"cannot connect to {address}: {_describe(e)}") from e
        conn = await self._setup(sock, outbound=True, address=address, expected_peer_id=expected_peer_id)
        self._by_addr[addr] = conn
        return conn

    async def _accept_loop(self, lsock: _socket.socket) -> None:
        assert self._nursery is not None
        while True:
            try:
                sock, addr = lsock.accept()
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(lsock.fileno())
                except trio.ClosedResourceError:
                    return  # aclose() closed the listener
                continue
            except OSError as e:
                if e.errno in (24, 23, 105, 12):  # EMFILE, ENFILE, ENOBUFS, ENOMEM: back off, keep serving
                    log.error("data plane accept failed: %s; retrying", _describe(e))
                    await trio.sleep(0.1)
                    continue
                if self._closed:
                    return
                raise
            refusal = self._gate.admit(addr[0])
            if refusal is not None:  # over a cap: closed before TLS allocates anything
                sock.close()
                log.debug("data plane: closed a connection from %s at accept (%s cap)", addr[0], refusal)
                continue
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            self._nursery.start_soon(self._serve_inbound, sock, f"{addr[0]}:{addr[1]}", addr[0])

    async def _serve_inbound(self, sock: _socket.socket, address: str, ip: str) -> None:
        pending = True
        try:
            try:
                conn = await self._setup(sock, outbound=False, address=address, expected_peer_id=None)
            except TransportError as e:
                log.info("refused data-plane connection from %s: %s", address, e)
                return
            self._gate.established(ip)
            pending = False
            await conn._done.wait()
        finally:
            self._gate.closed(ip, was_pending=pending)

    async def _setup(self, sock, *, outbound: bool, address: str, expected_peer_id: str | None) -> Connection:
        assert self._nursery is not None
        wire: _Wire = _SocketWire(sock) if self._tls is None else _TlsWire(sock, TlsSession(self._tls, server_side=not outbound))
        try:
            with trio.fail_after(self.config.handshake_timeout):
                mux, peer_id, events, principal = await _establish(
                    wire, outbound=outbound, identity=self.identity, config=self.config,
                    expected_peer_id=expected_peer_id, address=address, hello_extra=self._hello_extra,
                    authorize=self._authorize,
                )
        except HandshakeError as e:
            tm.HANDSHAKE_FAILURES.labels(e.reason).inc()
            await self._abandon(wire)
            raise
        except trio.TooSlowError:
            tm.HANDSHAKE_FAILURES.labels("timeout").inc()
            await self._abandon(wire)
            raise HandshakeError("timeout", f"handshake with {address} timed out after {self.config.handshake_timeout}s") from None
        except PeerProtocolError as e:  # TLS record errors during HELLO
            tm.HANDSHAKE_FAILURES.labels("tls").inc()
            await self._abandon(wire)
            raise HandshakeError("tls", f"{address}: {e}") from None
        except _IO_ERRORS as e:
            tm.HANDSHAKE_FAILURES.labels("io").inc()
            await self._abandon(wire)
            raise HandshakeError("io", f"connection to {address} failed during the handshake: {_describe(e)}") from None
        except BaseException:
            await self._abandon(wire)
            raise
        if isinstance(wire, _TlsWire):
            wire.grow()
        conn = Connection(
            wire=wire, mux=mux, peer_id=peer_id, outbound=outbound, address=address, config=self.config,
            spawn=self._nursery.start_soon, handler=self.handler, on_close=self._unpool, principal=principal,
        )
        self._all.add(conn)
        self._by_peer[peer_id] = conn  # newest wins; the older one keeps serving its streams
        await self._nursery.start(self._run_connection, conn, events)
        return conn

    async def _run_connection(self, conn: Connection, events: list, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await conn._run(events, task_status=task_status)
        finally:
            self._unpool(conn)
            self._all.discard(conn)
            if not any(c.peer_id == conn.peer_id for c in self._all):
                tm.forget_peer(conn.peer_id)

    @staticmethod
    async def _abandon(wire: _Wire) -> None:
        with trio.CancelScope(shield=True):
            try:
                await wire.aclose()
            except Exception:  # pragma: no cover
                pass

    def _unpool(self, conn: Connection) -> None:
        if self._by_peer.get(conn.peer_id) is conn:
            del self._by_peer[conn.peer_id]
        for addr, c in list(self._by_addr.items()):
            if c is conn:
                del self._by_addr[addr]
