"""Control-frame payloads: typed dataclasses <-> msgpack maps (the one place that maps them).

Every frame type except DATA carries a msgpack map. Field names on the wire are short; unknown keys are
ignored (forward compatibility), missing or ill-typed required keys are the peer's protocol error.
Application messages (`Stream.send_msg`, frame type MSG) are any msgpack map with string keys.

Decoding never raises anything but `PeerProtocolError`; msgpack's own limits are bounded by the payload
length, which the frame decoder already capped at the max frame size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from mesh.bigtcp.framing import VERSION, Frame, FrameType, LocalProtocolError, PeerProtocolError
from mesh.wire import hello as wire_hello

# RESET / GOAWAY codes
CODE_NO_ERROR = 0
CODE_PROTOCOL_ERROR = 1
CODE_CANCEL = 2  # the application reset the stream (Stream.reset)
CODE_REFUSED = 3  # too many streams, or the connection is going away
CODE_INTERNAL = 4  # the handler failed
CODE_FLOW_CONTROL = 5
CODE_IDLE = 6  # GOAWAY: idle connection closed
CODE_SHUTDOWN = 7  # GOAWAY: node shutting down

CODE_NAMES = {
    CODE_NO_ERROR: "no_error",
    CODE_PROTOCOL_ERROR: "protocol_error",
    CODE_CANCEL: "cancel",
    CODE_REFUSED: "refused",
    CODE_INTERNAL: "internal",
    CODE_FLOW_CONTROL: "flow_control",
    CODE_IDLE: "idle",
    CODE_SHUTDOWN: "shutdown",
}

_MAX_REASON = 1024


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame in each direction: who I claim to be and what I accept."""

    peer_id: str
    max_frame: int
    window: int
    max_streams: int
    version: int = VERSION
    agent: str = "gpumesh"
    extra: dict[str, Any] = field(default_factory=dict)  # application data, e.g. an admission proof
    conn_window: int = 0  # bytes buffered for all streams together; 0 = no connection-level limit


@dataclass(frozen=True, slots=True)
class Open:
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    credit: int


@dataclass(frozen=True, slots=True)
class Reset:
    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_stream_id: int
    code: int = CODE_NO_ERROR
    reason: str = ""


Control = Hello | Open | WindowUpdate | Reset | Ping | GoAway

_NAMES = {t: t.name for t in FrameType}  # Enum.name is a descriptor call: slow on the per-frame path
_TYPE_OF = {Hello: FrameType.HELLO, Open: FrameType.OPEN, WindowUpdate: FrameType.WINDOW, Reset: FrameType.RESET, Ping: FrameType.PING, GoAway: FrameType.GOAWAY}


def _pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_control(msg: Control) -> tuple[FrameType, bytes]:
    """(frame type, payload) for a control message."""
    if isinstance(msg, WindowUpdate):  # hot path first
        return FrameType.WINDOW, _pack({"c": msg.credit})
    if isinstance(msg, Hello):
        d = {"v": msg.version, "id": msg.peer_id, "mf": msg.max_frame, "w": msg.window, "ms": msg.max_streams, "a": msg.agent}
        if msg.extra:
            d["x"] = msg.extra
        if msg.conn_window:
            d["cw"] = msg.conn_window
        return FrameType.HELLO, _pack(d)
    if isinstance(msg, Open):
        return FrameType.OPEN, _pack({"m": msg.meta} if msg.meta else {})
    if isinstance(msg, Reset):
        return FrameType.RESET, _pack({"c": msg.code, "r": msg.reason[:_MAX_REASON]})
    if isinstance(msg, Ping):
        return FrameType.PING, _pack({"n": msg.nonce})
    if isinstance(msg, GoAway):
        return FrameType.GOAWAY, _pack({"l": msg.last_stream_id, "c": msg.code, "r": msg.reason[:_MAX_REASON]})
    raise LocalProtocolError(f"not a control message: {msg!r}")


def _unpack_map(payload: bytes | bytearray | memoryview, what: str) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises many types (ValueError, ExtraData, StackError, UnicodeError...)
        raise PeerProtocolError("bad_payload", f"{what}: undecodable msgpack ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise PeerProtocolError("bad_payload", f"{what}: expected a msgpack map, got {type(obj).__name__}")
    return obj


def _get(d: dict[str, Any], key: str, typ: type | tuple[type, ...], what: str, default: Any = ...) -> Any:
    v = d.get(key, default)
    if v is ...:
        raise PeerProtocolError("bad_payload", f"{what}: missing field {key!r}")
    if not isinstance(v, typ) or isinstance(v, bool) and typ is int:
        raise PeerProtocolError("bad_payload", f"{what}: field {key!r} has type {type(v).__name__}")
    return v


def _uint(d: dict[str, Any], key: str, what: str, default: Any = ..., *, lo: int = 0, hi: int = 2**63) -> int:
    v = _get(d, key, int, what, default)
    if not lo <= v <= hi:
        raise PeerProtocolError("bad_payload", f"{what}: field {key!r}={v} out of range [{lo}, {hi}]")
    return v


def decode_control(frame: Frame) -> Control:
    """The typed control message carried by a non-DATA, non-MSG frame."""
    t = frame.type
    if t is FrameType.HELLO:
        return _decode_hello(frame.payload)
    what = _NAMES[t]
    d = _unpack_map(frame.payload, what)
    if t is FrameType.WINDOW:
        return WindowUpdate(_uint(d, "c", what, lo=1, hi=2**32))
    if t is FrameType.OPEN:
        return Open(meta=_get(d, "m", dict, what, {}))
    if t is FrameType.RESET:
        return Reset(code=_uint(d, "c", what, hi=2**32), reason=_get(d, "r", str, what, "")[:_MAX_REASON])
    if t is FrameType.PING:
        return Ping(nonce=_uint(d, "n", what))
    if t is FrameType.GOAWAY:
        return GoAway(
            last_stream_id=_uint(d, "l", what, hi=0xFFFFFFFF),
            code=_uint(d, "c", what, hi=2**32),
            reason=_get(d, "r", str, what, "")[:_MAX_REASON],
        )
    raise LocalProtocolError(f"{what} frames carry no control message")


def _decode_hello(payload: bytes | bytearray | memoryview) -> Hello:
    """The schema of the one message an unauthenticated peer gets decoded (limits: `mesh.wire.hello`)."""
    what = "HELLO"
    try:
        d = wire_hello.unpack(payload)
        peer_id = _get(d, "id", str, what, "")
        agent = _get(d, "a", str, what, "")
        if len(peer_id) > wire_hello.MAX_PEER_ID or len(agent) > wire_hello.MAX_AGENT:
            raise PeerProtocolError("bad_payload", f"{what}: peer id or agent too long")
        extra = wire_hello.check_extra(d.get("x", {}))
    except wire_hello.HelloError as e:
        raise PeerProtocolError("bad_payload", f"{what}: {e}") from None
    return Hello(
        version=_uint(d, "v", what, hi=255),
        peer_id=peer_id,
        max_frame=_uint(d, "mf", what, lo=1, hi=0xFFFFFFFF),
        window=_uint(d, "w", what, lo=1, hi=2**32),
        max_streams=_uint(d, "ms", what, lo=1, hi=2**32),
        agent=agent,
        extra=extra,
        conn_window=_uint(d, "cw", what, 0, hi=2**40),
    )


def pack_message(msg: dict[str, Any]) -> bytes:
    """An application message (MSG frame payload). Raises LocalProtocolError if not a packable map."""
    if not isinstance(msg, dict):
        raise LocalProtocolError(f"messages are dicts, got {type(msg).__name__}")
    try:
        return msgpack.packb(msg, use_bin_type=True)
    except Exception as e:  # TypeError / ValueError / OverflowError from unsupported values
        raise LocalProtocolError(f"message cannot be encoded as msgpack: {e}") from e


def unpack_message(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    return _unpack_map(payload, "MSG")
