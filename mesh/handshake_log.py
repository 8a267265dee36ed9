"""Refused libp2p connections, said out loud: py-libp2p logs a failed inbound handshake (a peer with another
mesh key, or none) at debug level and carries on, so an operator saw nothing but an alert minutes later. This
turns those records into one warning per remote address and minute, with the likely reason, and counts them.

Another mesh key is also found at once, on both sides: under a private-network key every libp2p connection
starts with multistream-select's header, encrypted. py-libp2p's PSK layer does not check it, so under another
key each side decrypted noise, read a garbage length from it and waited for that many bytes: the dialer until
its 5 s dial timeout, the listener 30 s. `install` makes the PSK layer check the header's bytes as they arrive;
noise instead fails the handshake on the first read, so the listener closes and both sides say why at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import libp2p.network.swarm as _swarm
from libp2p.io.exceptions import IOException
from libp2p.security.pnet.psk_conn import PskConn

from mesh import metrics

log = logging.getLogger("gpumesh.gossip")

SWARM_LOGGER = "libp2p.network.swarm"
INTERVAL_S = 60.0
_PREFIX = "failed to upgrade security for peer at"


class _HandshakeFailures(logging.Filter):
    def __init__(self, private: bool) -> None:
        super().__init__()
        self.private = private
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_PREFIX):
            metrics.PEERS_REFUSED.labels("libp2p").inc()
            where = str(record.args[0]) if isinstance(record.args, tuple) and record.args else "?"
            host = where.split("/tcp/")[0]
            now = time.monotonic()
            if now - self._last.get(host, -1e9) >= INTERVAL_S:
                self._last[host] = now
                if len(self._last) > 1024:
                    self._last.clear()
                why = ("it does not hold this mesh's key (a different --mesh-key-file, or none)" if self.private
                       else "its handshake failed (it uses a mesh key and this node none, or it is not a gpumesh node)")
                log.warning("refused a libp2p connection from %s: %s", where, why)
        # py-libp2p's own debug records stay as quiet as before unless the node runs at debug level
        return logging.getLogger().isEnabledFor(logging.DEBUG)


MULTISTREAM_HEADER = b"\x13/multistream/1.0.0\n"  # varint length 19, then the protocol id and a newline


class MeshKeyMismatch(IOException):
    """The peer's first bytes did not decrypt to multistream-select's header: it holds another mesh key."""


class CheckedPskConn(PskConn):
    """py-libp2p's PSK connection, checking that the first plaintext it reads is MULTISTREAM_HEADER."""

    def __init__(self, conn: Any, psk: str) -> None:
        super().__init__(conn, psk)
        self._checked = 0

    async def read(self, n: int | None = None) -> bytes:
        data = await super().read(n)
        if self._checked < len(MULTISTREAM_HEADER) and data:
            want = MULTISTREAM_HEADER[self._checked:self._checked + len(data)]
            if data[:len(want)] != want:
                raise MeshKeyMismatch("the peer's handshake does not decrypt under this mesh's key: it holds "
                                      "another mesh key (private-network handshake)")
            self._checked += len(want)
        return data


def new_checked_conn(conn: Any, psk: str) -> PskConn:
    if len(psk) != 64:
        raise ValueError("Expected 32-byte pre shared key (PSK)")
    return CheckedPskConn(conn, psk)


def install(private: bool) -> None:
    """Watch py-libp2p's swarm logger for refused handshakes, and check PSK handshakes as they arrive
    (idempotent)."""
    _swarm.new_protected_conn = new_checked_conn  # type: ignore[assignment]  # what the swarm calls per conn
    swarm = logging.getLogger(SWARM_LOGGER)
    for f in list(swarm.filters):
        if isinstance(f, _HandshakeFailures):
            swarm.removeFilter(f)
    swarm.addFilter(_HandshakeFailures(private))
    swarm.setLevel(logging.DEBUG)


def describe_dial_failure(error: BaseException, private: bool) -> str:
    """Why dialing a peer failed, for the operator (the libp2p exception chain, shortened)."""
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__ or error.__context__
    while cause is not None and len(text) < 300:
        text += f" <- {type(cause).__name__}: {cause}"
        cause = cause.__cause__ or cause.__context__
    if text.startswith("TooSlowError"):
        hint = ("no libp2p handshake within the dial timeout: the peer may hold another mesh key (compare "
                "--mesh-key-file on both nodes), or it is overloaded" if private else
                "no libp2p handshake within the dial timeout: the peer may use a mesh key (--mesh-key-file), or it "
                "is overloaded")
        return hint
    if "holds another mesh key" in text:
        hint = ("the peer holds another mesh key (compare --mesh-key-file on both nodes)" if private
                else "the peer uses a mesh key and this node none (--mesh-key-file)")
        return f"the libp2p handshake failed: {hint}"
    if "security" in text.lower() or "handshake" in text.lower() or "upgrade" in text.lower() or "pnet" in text.lower():
        hint = ("the peer does not hold this mesh's key (compare --mesh-key-file on both nodes)" if private
                else "the peer uses a mesh key and this node none (--mesh-key-file)")
        return f"the libp2p handshake failed: {hint} [{text[:300]}]"
    return text[:300]
