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

Modules: `wire` (bytes over a socket, TLS or a trio Stream), `stream` (`Stream` and `StreamLink`, the
interface it uses), `connection` (`Connection`: drives the sans-IO `Mux` over a wire, implements
`StreamLink`), this module (handshake, listener, pooled dialer). Sans-IO below them: `framing`, `mux`, `tls`.

Task ownership: `Transport.serve` owns a nursery; every connection runs its reader, writer and timer tasks
in a nursery inside it, and each incoming stream's handler runs in its own task in the transport's
nursery. `Transport.aclose()` (or cancelling `serve`) stops all of them.

Errors (all `TransportError`): `PeerProtocolError` (peer's fault; the connection is dead and says why),
`LocalProtocolError` (our misuse), `HandshakeError`/`PeerIdMismatch` (refused before use),
`StreamReset`, `ConnectionLost` (on every open stream when the peer dies), `ConnectionClosing`,
`ConnectError`, `EndOfStream` (the peer half-closed the stream).
"""

from __future__ import annotations

import logging
import socket as _socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from mesh.bigtcp import messages as m
from mesh.bigtcp import transport_metrics as tm
from mesh.bigtcp.connection import Connection, ConnectionConfig
from mesh.bigtcp.events import ConnectionClosing, ConnectionLost, StreamReset
from mesh.bigtcp.framing import (
    DEFAULT_MAX_FRAME,
    LocalProtocolError,
    PeerProtocolError,
    TransportError,
    encode_frame,
)
from mesh.bigtcp.limits import ConnectionGate, ConnectionLimits
from mesh.bigtcp.mux import Mux
from mesh.bigtcp.stream import EndOfStream, Stream, WrongItemKind
from mesh.bigtcp.tls import HandshakeError, PeerIdMismatch, TlsContexts, TlsSession, make_contexts
from mesh.bigtcp.wire import (
    IO_ERRORS,
    SocketWire,
    StreamWire,
    TlsWire,
    Wire,
    describe_io_error,
    tcp_connect,
    tune_allocator,
)
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


class ConnectError(TransportError):
    """The peer could not be reached (DNS, refused, unreachable, timeout)."""


# ============================================================================================== establishing


async def _establish(
    wire: Wire,
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
    if isinstance(wire, TlsWire):
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
            # the reason goes to the refused peer too: it can then log why it cannot join
            t, payload = m.encode_control(m.GoAway(0, m.CODE_REFUSED, str(refusal)[:200]))
            with trio.move_on_after(1.0):
                try:
                    await wire.send(encode_frame(t, 0, 0, payload))
                    await wire.send_eof()
                except IO_ERRORS:
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
    wire = StreamWire(stream)
    with trio.fail_after(config.handshake_timeout):
        mux, peer_id, events, _principal = await _establish(
            wire, outbound=outbound, identity=identity, config=config, expected_peer_id=expected_peer_id, address="stream"
        )
    conn = Connection(
        wire=wire, mux=mux, peer_id=peer_id, outbound=outbound, address="stream", config=config,
        spawn=nursery.start_soon, handler=handler,
    )
    await nursery.start(conn.run, events)
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
                raise ConnectError(f"cannot listen on {self.address}: {describe_io_error(e)}") from e
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
                sock = await tcp_connect(*addr)
        except (OSError, trio.TooSlowError) as e:
            raise ConnectError(f"cannot connect to {address}: {describe_io_error(e)}") from e
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
                    log.error("data plane accept failed: %s; retrying", describe_io_error(e))
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
            await conn.wait_closed()
        finally:
            self._gate.closed(ip, was_pending=pending)

    async def _setup(self, sock, *, outbound: bool, address: str, expected_peer_id: str | None) -> Connection:
        assert self._nursery is not None
        wire: Wire = SocketWire(sock) if self._tls is None else TlsWire(sock, TlsSession(self._tls, server_side=not outbound))
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
        except IO_ERRORS as e:
            tm.HANDSHAKE_FAILURES.labels("io").inc()
            await self._abandon(wire)
            raise HandshakeError("io", f"connection to {address} failed during the handshake: {describe_io_error(e)}") from None
        except BaseException:
            await self._abandon(wire)
            raise
        if isinstance(wire, TlsWire):
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
            await conn.run(events, task_status=task_status)
        finally:
            self._unpool(conn)
            self._all.discard(conn)
            if not any(c.peer_id == conn.peer_id for c in self._all):
                tm.forget_peer(conn.peer_id)

    @staticmethod
    async def _abandon(wire: Wire) -> None:
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
