"""bigtcp connection events and errors: what the sans-IO `Mux` reports to the I/O layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesh.bigtcp import messages as m
from mesh.bigtcp.framing import TransportError

# ---------------------------------------------------------------------------------------------- errors


class StreamReset(TransportError):
    """The stream was reset (by the peer, or locally); no more data moves on it."""

    def __init__(self, stream_id: int, code: int, reason: str, *, by_peer: bool) -> None:
        who = "peer" if by_peer else "local side"
        name = m.CODE_NAMES.get(code, str(code))
        super().__init__(f"stream {stream_id} reset by {who} ({name})" + (f": {reason}" if reason else ""))
        self.stream_id = stream_id
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


class ConnectionLost(TransportError):
    """The connection died (peer gone, keepalive timeout, protocol error); raised on every open stream."""


class ConnectionClosing(TransportError):
    """The connection is shutting down (GOAWAY sent or received): no new streams on it."""


# ---------------------------------------------------------------------------------------------- events


@dataclass(slots=True)
class HelloReceived:
    hello: m.Hello


@dataclass(slots=True)
class StreamOpened:
    stream_id: int
    meta: dict[str, Any]


@dataclass(slots=True)
class DataReceived:
    stream_id: int
    data: bytes | bytearray


@dataclass(slots=True)
class MessageReceived:
    stream_id: int
    message: dict[str, Any]
    size: int  # payload bytes (what `consumed` must be told once the application took it)


@dataclass(slots=True)
class StreamEnded:
    stream_id: int


@dataclass(slots=True)
class StreamResetReceived:
    stream_id: int
    code: int
    reason: str


@dataclass(slots=True)
class CreditReceived:
    stream_id: int


@dataclass(slots=True)
class PongReceived:
    nonce: int
    sent_at: float


@dataclass(slots=True)
class GoAwayReceived:
    last_stream_id: int
    code: int
    reason: str


@dataclass(slots=True)
class ConnectionEnded:
    """The peer's byte stream ended. `clean`: it said GOAWAY first."""

    clean: bool


@dataclass(slots=True)
class KeepaliveTimeout:
    silent_for: float


@dataclass(slots=True)
class IdleTimeout:
    idle_for: float


Event = (
    HelloReceived
    | StreamOpened
    | DataReceived
    | MessageReceived
    | StreamEnded
    | StreamResetReceived
    | CreditReceived
    | PongReceived
    | GoAwayReceived
    | ConnectionEnded
    | KeepaliveTimeout
    | IdleTimeout
)
