"""bigtcp wires: moving a connection's bytes over a non-blocking socket (plaintext or TLS) or a trio Stream.

A `Wire` knows nothing of frames or streams: `Connection` hands it lists of buffers to send and a
memoryview to receive into (the frame decoder's buffer). Measurements and design notes: see
`mesh/bigtcp/transport.py`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket as _socket

import trio

from mesh.bigtcp.tls import HandshakeError, TlsSession

__all__ = ["IO_ERRORS", "SocketWire", "StreamWire", "TlsWire", "Wire", "describe_io_error", "tcp_connect", "tune_allocator"]


_IOV_BATCH = 512  # buffers per sendmsg (IOV_MAX is 1024 on Linux)
_TLS_READ = 256 * 1024
_TLS_CHUNK = 256 * 1024  # ciphertext taken from the session per send
_TLS_HANDSHAKE_READ = 16 * 1024  # before the peer is authenticated (grown to _TLS_READ after the handshake)
_SMALL_JOIN = 16 * 1024  # TLS: consecutive buffers below this are joined into one record
# A short read smaller than this emptied the socket of a request or reply: the next read waits for
# readability first (no recv that fails with EAGAIN). A bigger one is part of a bulk transfer, whose
# sender has most likely written more meanwhile: the next read goes straight to the socket (waiting first
# there costs a scheduler pass per read: ~9 us where a recv is ~1 us).
_STREAMING_READ = 64 * 1024


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
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    ok = mallopt(m_mmap_threshold, 32 << 20) == 1 and mallopt(m_trim_threshold, 128 << 20) == 1
    # few arenas: buffers read in worker threads and freed on the event loop otherwise scatter over one arena
    # per thread, and what a burst leaves there is not given back (measured: a 200-stream credit-starvation
    # attack left +22 MiB with the default arenas, nothing with 2)
    mallopt(m_arena_max, 2)
    _allocator_tuned = ok
    return ok


class Wire:
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

    def send_some(self, bufs: list) -> list:
        """Write what the kernel takes now (only with no backlog) and return the rest: views of `bufs`,
        not copies, for a `send` that the caller makes before it reuses them (TLS: always empty, the
        ciphertext left over is the wire's own backlog)."""
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


class SocketWire(Wire):
    """A non-blocking stdlib socket driven with trio's wait_readable/wait_writable (the socket calls are
    made directly: one system call per operation, no wrapper, no extra scheduler pass)."""

    def __init__(self, sock: _socket.socket) -> None:
        sock.setblocking(False)
        self.raw = sock
        self._backlog: list = []
        # the last read returned less than asked (and less than _STREAMING_READ): the socket was empty
        # then, so the next read waits for readability first (level-triggered: returns at once if data
        # came meanwhile) and skips a read that would fail with EAGAIN (a system call and an exception per
        # message on a request path)
        self._drained = False

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
        rest = self.send_some(bufs)
        if rest:
            self._backlog = [bytes(b) for b in rest]
            return False
        return True

    def send_some(self, bufs: list) -> list:
        bufs, i = self._push(bufs)
        return bufs[i:] if i < len(bufs) else []

    async def recv_into(self, view: memoryview) -> int:
        raw = self.raw
        if self._drained:  # the last read emptied the socket: wait first instead of a read that fails
            await trio.lowlevel.wait_readable(raw.fileno())
        while True:
            try:
                n = raw.recv_into(view)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(raw.fileno())
                continue
            self._drained = n < len(view) and n < _STREAMING_READ
            return n

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


class TlsWire(SocketWire):
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
        if self._drained:
            await trio.lowlevel.wait_readable(raw.fileno())
        while True:
            try:
                n = raw.recv_into(self._rbuf)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(raw.fileno())
                continue
            self._drained = n < len(self._rbuf) and n < _STREAMING_READ
            return n

    def grow(self) -> None:
        """The peer is authenticated: read in large batches from now on."""
        if len(self._rbuf) < _TLS_READ:
            self._rbuf = bytearray(_TLS_READ)
            self._rview = memoryview(self._rbuf)

    async def handshake(self) -> None:
        s = self.session
        while not s.handshake_step():
            await self._drain()
            n = await self._recv_raw()
            if n == 0:
                raise HandshakeError("tls", "peer closed the connection during the TLS handshake")
            s.feed(self._rview[:n])
        await self._drain()

    def _drain_nowait(self) -> bool:
        """Send pending ciphertext without blocking; True when all of it is out."""
        s, raw = self.session, self.raw
        pending = self._pending
        while True:
            if not pending:
                data = s.take_output(_TLS_CHUNK)
                if not data:
                    self._pending = None
                    return True
                try:
                    n = raw.send(data)
                except BlockingIOError:
                    self._pending = memoryview(data)
                    return False
                if n == len(data) and n < _TLS_CHUNK:  # a short take emptied the session's output
                    self._pending = None
                    return True
                pending = memoryview(data)[n:]
                continue
            try:
                n = raw.send(pending)
            except BlockingIOError:
                self._pending = pending
                return False
            pending = pending[n:]

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

    def send_some(self, bufs: list) -> list:
        self._encrypt(bufs)
        self._drain_nowait()
        return []

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


class StreamWire(Wire):
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

    def send_some(self, bufs: list) -> list:
        return bufs

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


IO_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


async def tcp_connect(host: str, port: int) -> _socket.socket:
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


def describe_io_error(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} (errno {e.errno})"
    return str(e) or type(e).__name__

