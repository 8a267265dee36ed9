"""The RPC protocol on bigtcp streams: what a call looks like on the wire, and its error type.

One call is one stream (opened with meta {"rpc": 1}); on it, in order:

    client -> server   MSG {"id": n, "m": method, "b": body, "t": timeout_s?}      the request
                       then optionally uploads: DATA frames and MSG {"i": item}; then end of stream
    server -> client   optionally streamed results: DATA frames and MSG {"i": item}
                       then exactly one final MSG {"ok": body} or {"err": {"code", "message", "data"?}},
                       with end of stream

Bodies are msgpack maps. A server-side `RpcError(code, message)` (or any other exception, as "internal")
reaches the client as `RpcError` with the same code and message. Codes are short strings; the layer itself
uses: bad_request, unknown_method, internal, deadline_exceeded, cancelled, unavailable. If the client resets
the stream (timeout, cancellation) or goes away, the handler is cancelled.

The server is `rpc_server.py`, the trio client `rpc_client.py`, the blocking client `rpc_sync.py`; `rpc.py`
exports all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MAX_MESSAGE", "MAX_TIMEOUT", "RPC_META", "RpcError", "item_taker"]

RPC_META = {"rpc": 1}  # the OPEN metadata of an RPC stream
MAX_MESSAGE = 2048  # characters of an error message sent to the client
MAX_TIMEOUT = 7 * 24 * 3600.0  # largest "t" a request may carry


class RpcError(Exception):
    """An RPC failed: `code` (short string), `message` (for humans), optional `data` (a msgpack value)."""

    def __init__(self, code: str, message: str = "", data: Any = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.data = data

    def to_wire(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message[:MAX_MESSAGE]}
        if self.data is not None:
            err["data"] = self.data
        return err

    @classmethod
    def from_wire(cls, err: Any) -> RpcError:
        if not isinstance(err, dict):
            return cls("bad_response", f"malformed error: {err!r:.200}")
        code = err.get("code")
        message = err.get("message", "")
        return cls(code if isinstance(code, str) else "unknown", message if isinstance(message, str) else str(message), err.get("data"))


def item_taker(fn: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    """For `Stream.take_messages`: hands `fn` the item of each {"i": item} message whose item is a map (True:
    taken; False: left for `receive`, which sees everything else too)."""

    def take(msg: dict[str, Any]) -> bool:
        if len(msg) != 1 or type(item := msg.get("i")) is not dict:
            return False
        return fn(item)

    return take
