"""The data plane's HELLO: the one message an unauthenticated peer gets decoded.

Before anything else, the frame decoder holds the first frame to `MAX_HELLO_BYTES` (from its header, before
the payload is read); the payload is then unpacked with msgpack's own limits (no string, binary, array or
map longer than the HELLO could honestly need) and checked field by field. `extra` (application data: the
admission proof, a client's API token) is a small flat map of short strings, bytes and integers.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mesh.bigtcp.limits import MAX_HELLO_BYTES

MAX_EXTRA_KEYS = 8
MAX_EXTRA_KEY = 32
MAX_EXTRA_VALUE = 1024
MAX_AGENT = 128
MAX_PEER_ID = 128

_LIMITS = dict(max_str_len=MAX_EXTRA_VALUE, max_bin_len=MAX_EXTRA_VALUE, max_array_len=16, max_map_len=16,
               max_ext_len=0)


class HelloError(ValueError):
    """A HELLO that is refused; `reason` is a short label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def unpack(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The HELLO payload as a map, unpacked within msgpack limits; HelloError otherwise."""
    if len(payload) > MAX_HELLO_BYTES:
        raise HelloError("oversized", f"HELLO of {len(payload)} bytes exceeds {MAX_HELLO_BYTES}")
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, **_LIMITS)
    except Exception as e:  # ValueError, ExtraData, StackError, UnicodeError...
        raise HelloError("malformed", f"undecodable msgpack ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise HelloError("malformed", f"expected a map, got {type(obj).__name__}")
    return obj


def check_extra(x: Any) -> dict[str, str | bytes | int]:
    """`extra` as a flat map of short values; HelloError otherwise."""
    if not isinstance(x, dict):
        raise HelloError("malformed", f"extra must be a map, not {type(x).__name__}")
    if len(x) > MAX_EXTRA_KEYS:
        raise HelloError("malformed", f"extra has {len(x)} keys (at most {MAX_EXTRA_KEYS})")
    for k, v in x.items():
        if not isinstance(k, str) or not 0 < len(k) <= MAX_EXTRA_KEY:
            raise HelloError("malformed", "extra keys are strings of 1..32 characters")
        if isinstance(v, bool) or not isinstance(v, str | bytes | int):
            raise HelloError("malformed", f"extra[{k!r}] must be a string, bytes or an integer")
        if isinstance(v, int) and not -(2**63) <= v < 2**64:
            raise HelloError("malformed", f"extra[{k!r}] out of range")
    return x
