"""A fault-injecting TCP proxy for chaos runs: it sits in front of a node's data plane (the node advertises the
proxy's address with `--advertise-host HOST:PORT`), forwards bytes both ways, and on command delays them,
holds them back (a partition: TCP keeps the bytes, nothing arrives), flips bytes (corruption the TLS record MAC
or the frame CRC must catch), or resets every connection through it (connections dropped).

`Faults` is the switchboard the chaos driver flips; `FaultProxy.serve` runs in the driver's nursery.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

CHUNK = 64 * 1024


@dataclass
class Faults:
    """What the proxy does to traffic right now (changed at any time by the driver)."""

    delay_s: float = 0.0  # added before each forwarded chunk
    corrupt_chunks: int = 0  # flip one byte in each of the next N chunks (either direction)
    _unstalled: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self._unstalled.set()

    @property
    def stalled(self) -> bool:
        return not self._unstalled.is_set()

    def stall(self) -> None:
        """Forward nothing until `unstall()`: a partition (the bytes wait in the sockets' buffers)."""
        if not self.stalled:
            self._unstalled = trio.Event()

    def unstall(self) -> None:
        self._unstalled.set()

    async def wait_unstalled(self) -> None:
        await self._unstalled.wait()


@dataclass
class ProxyStats:
    connections: int = 0
    bytes: int = 0
    corrupted: int = 0
    resets: int = 0


class FaultProxy:
    """`target_port` may be a function returning the port at each new connection (None: nothing to reach
    now), for a node that binds port 0 and gets a new port each time it restarts."""

    def __init__(self, target_host: str, target_port: int | Callable[[], int | None], *, seed: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.faults = Faults()
        self.stats = ProxyStats()
        self.port = 0
        self._rng = random.Random(seed)
        self._conns: set[tuple[trio.CancelScope, trio.SocketStream, trio.SocketStream]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    def reset_all(self) -> int:
        """Drop every connection through the proxy now (both sides see a reset). Returns how many."""
        n = 0
        for scope, a, b in list(self._conns):
            for s in (a, b):
                _abort(s)
            scope.cancel()
            n += 1
        self.stats.resets += n
        return n

    async def _handle(self, client: trio.SocketStream) -> None:
        port = self.target_port() if callable(self.target_port) else self.target_port
        try:
            if port is None:
                raise OSError("target not listening")
            upstream = await trio.open_tcp_stream(self.target_host, port)
        except OSError:
            await client.aclose()
            return
        self.stats.connections += 1
        with trio.CancelScope() as scope:
            entry = (scope, client, upstream)
            self._conns.add(entry)
            try:
                async with trio.open_nursery() as n:
                    n.start_soon(self._pump, client, upstream, n.cancel_scope)
                    n.start_soon(self._pump, upstream, client, n.cancel_scope)
            finally:
                self._conns.discard(entry)
        for s in (client, upstream):
            with trio.move_on_after(1) as cs:
                cs.shield = True
                await s.aclose()

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, pair: trio.CancelScope) -> None:
        try:
            while True:
                data = await src.receive_some(CHUNK)
                if self.faults.stalled:
                    await self.faults.wait_unstalled()
                if self.faults.delay_s > 0:
                    await trio.sleep(self.faults.delay_s)
                if not data:
                    await dst.send_eof()
                    return
                if self.faults.corrupt_chunks > 0:
                    self.faults.corrupt_chunks -= 1
                    buf = bytearray(data)
                    i = self._rng.randrange(len(buf))
                    buf[i] ^= 1 << self._rng.randrange(8)
                    data = bytes(buf)
                    self.stats.corrupted += 1
                self.stats.bytes += len(data)
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pair.cancel()  # one side is gone: so is the connection


def _abort(stream: trio.SocketStream) -> None:
    """Close with RST (SO_LINGER 0), as a crashed host or a middlebox dropping the flow would."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
