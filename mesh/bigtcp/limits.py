"""What the data plane gives anyone before and after they proved who they are: connection caps, and the
per-principal caps on concurrent calls and stalled sends.

Sans-IO: `ConnectionGate` counts connections by source IP (pending = TCP accepted, handshake not done;
established = TLS + HELLO + authorization done) and says whether one more may start. The transport asks it
at accept time (a refused socket is closed at once, before TLS allocates anything) and tells it when a
handshake finishes and when a connection ends. Every refusal is counted in
`gpumesh_transport_connections_refused_total{reason}`.

Memory before authentication is bounded per connection (a 16 KiB TLS read buffer, the frame decoder's
64 KiB scratch, a HELLO frame of at most `MAX_HELLO_BYTES`) and in total by `max_pending`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections import Counter as _Tally
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

MAX_HELLO_BYTES = 4096  # a HELLO frame's payload, checked from its header before the payload is read

REFUSED = Counter("gpumesh_transport_connections_refused_total",
                  "Inbound data-plane connections closed at accept time by a cap", ["reason"])
PENDING = Gauge("gpumesh_transport_pending_connections", "Inbound connections still in their handshake")


@dataclass(frozen=True)
class ConnectionLimits:
    max_pending: int = 256  # handshakes in progress, all sources
    max_pending_per_ip: int = 32
    max_connections: int = 4096  # established + pending, all sources
    max_per_ip: int = 512
    # the handshake deadline (TLS + HELLO + authorization) is the transport's `handshake_timeout`


@dataclass
class ConnectionGate:
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    _pending: _Tally = field(default_factory=_Tally)
    _total: _Tally = field(default_factory=_Tally)

    @property
    def pending(self) -> int:
        return sum(self._pending.values())

    @property
    def total(self) -> int:
        return sum(self._total.values())

    def admit(self, ip: str) -> str | None:
        """None and the connection counts as pending, or the reason it is refused (and counted)."""
        lim = self.limits
        reason = None
        if self._pending[ip] >= lim.max_pending_per_ip:
            reason = "pending_per_ip"
        elif self.pending >= lim.max_pending:
            reason = "pending_total"
        elif self._total[ip] >= lim.max_per_ip:
            reason = "per_ip"
        elif self.total >= lim.max_connections:
            reason = "total"
        if reason is not None:
            REFUSED.labels(reason).inc()
            return reason
        self._pending[ip] += 1
        self._total[ip] += 1
        PENDING.inc()
        return None

    def established(self, ip: str) -> None:
        """The handshake of a connection from `ip` finished (it still counts towards the totals)."""
        self._drop(self._pending, ip)
        PENDING.dec()

    def closed(self, ip: str, *, was_pending: bool) -> None:
        if was_pending:
            self._drop(self._pending, ip)
            PENDING.dec()
        self._drop(self._total, ip)

    @staticmethod
    def _drop(tally: _Tally, ip: str) -> None:
        tally[ip] -= 1
        if tally[ip] <= 0:
            del tally[ip]


_libc_trim: Any = None


def give_back_memory() -> bool:
    """Return freed heap memory to the kernel (glibc `malloc_trim`). The transport keeps freed MiB-sized
    buffers for reuse (`tune_allocator`); after a burst (an attack, or a big transfer) a node calls this
    now and then so what the burst took does not stay with the process. Returns whether it ran."""
    global _libc_trim
    if _libc_trim is None:
        try:
            _libc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _libc_trim = False
    if not _libc_trim:
        return False
    _libc_trim(0)
    return True
