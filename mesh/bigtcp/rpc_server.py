"""The RPC server: `RpcServer` (a method table whose `handle_stream` is a Transport's stream handler) and
`Call` (one incoming request as a handler sees it). The protocol is described in `rpc_protocol.py`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from mesh.bigtcp import messages as m
from mesh.bigtcp import transport_metrics as tm
from mesh.bigtcp.events import ConnectionLost, StreamReset
from mesh.bigtcp.framing import LocalProtocolError, TransportError
from mesh.bigtcp.rpc_protocol import MAX_TIMEOUT, RpcError, item_taker
from mesh.bigtcp.stream import EndOfStream, Stream

log = logging.getLogger("gpumesh.rpc")

__all__ = ["Call", "Handler", "RpcServer"]

Handler = Callable[["Call"], Awaitable[dict[str, Any] | None]]


class Call:
    """One incoming request, as a handler sees it."""

    __slots__ = ("stream", "method", "body", "id", "deadline")

    def __init__(self, stream: Stream, method: str, body: dict[str, Any], call_id: int, deadline: float | None) -> None:
        self.stream = stream
        self.method = method
        self.body = body
        self.id = call_id
        self.deadline = deadline  # trio time by which the client stops waiting, if it said

    @property
    def peer_id(self) -> str:
        return self.stream.peer_id

    @property
    def principal(self) -> Any:
        """What the transport's `authorize` hook returned for this peer (None without one)."""
        return self.stream.connection.principal

    async def send(self, item: dict[str, Any]) -> None:
        """Stream one result item to the client (before the final response)."""
        await self.stream.send_msg({"i": item})

    def send_nowait(self, item: dict[str, Any]) -> bool:
        """Stream one result item without waiting (`Stream.send_msg_nowait`): False, and nothing sent, when that
        would have to wait or the stream cannot send; then use `send`."""
        return self.stream.send_msg_nowait({"i": item})

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Stream one raw data frame to the client (at most `stream.max_frame_size` bytes)."""
        await self.stream.send_bytes(data)

    def on_items(self, fn: Callable[[dict[str, Any]], bool] | None) -> None:
        """Hand each uploaded item (a map) to `fn` as it arrives, in the connection's reader task: True when `fn`
        took it, False to leave it (and, to keep the order, what follows while it waits) for `receive`, which also
        sees data frames and the end of the uploads. `fn` must not block. None: stop."""
        self.stream.take_messages(item_taker(fn) if fn is not None else None)

    async def receive(self) -> dict[str, Any] | bytes | bytearray | None:
        """The client's next upload: an item (dict), a data frame (bytes-like), or None when it is done."""
        try:
            item = await self.stream.receive()
        except EndOfStream:
            return None
        if isinstance(item, dict):
            if "i" not in item:
                raise RpcError("bad_request", "upload message without 'i'")
            return item["i"]
        return item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._uploads()

    async def _uploads(self) -> AsyncIterator[Any]:
        while (item := await self.receive()) is not None:
            yield item


class RpcServer:
    """Method table + stream handler. Use `server.handle_stream` as the Transport's handler.

    `limit_key(stream)` names who is calling (e.g. an API token, a peer id; None: unlimited): each key may
    have at most `max_calls` calls in progress on all its connections together; more are refused (stream
    reset, counted as code "busy"). A stream that sends no request within `request_timeout` s is reset."""

    def __init__(self, *, limit_key: Callable[[Stream], str | None] | None = None, max_calls: int = 256,
                 request_timeout: float = 30.0) -> None:
        self._methods: dict[str, Handler] = {}
        self._metric_children: dict[tuple[str, str], tuple[Any, Any]] = {}  # labels() is slow on the hot path
        self._limit_key = limit_key
        self.max_calls = max_calls
        self.request_timeout = request_timeout
        self._active: dict[str, int] = {}

    def register(self, method: str, handler: Handler) -> None:
        if method in self._methods:
            raise ValueError(f"method {method!r} is already registered")
        self._methods[method] = handler

    def method(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator form of `register`."""

        def deco(fn: Handler) -> Handler:
            self.register(name, fn)
            return fn

        return deco

    @property
    def methods(self) -> list[str]:
        return sorted(self._methods)

    async def handle_stream(self, stream: Stream) -> None:
        key = self._limit_key(stream) if self._limit_key is not None else None
        if key is None:
            await self._serve(stream)
            return
        if self._active.get(key, 0) >= self.max_calls:
            stream.reset(f"more than {self.max_calls} calls in progress", m.CODE_REFUSED)
            tm.RPC_REQUESTS.labels("-", "busy").inc()
            return
        self._active[key] = self._active.get(key, 0) + 1
        try:
            await self._serve(stream)
        finally:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]

    async def _serve(self, stream: Stream) -> None:
        t0 = time.perf_counter()  # for the duration metric; deadlines use trio's clock
        req = None
        try:
            if stream.buffered:  # the request came with the stream's OPEN (the usual case): no timer
                req = await stream.receive_msg()
            else:
                with trio.move_on_after(self.request_timeout):
                    req = await stream.receive_msg()
        except (EndOfStream, LocalProtocolError):
            pass
        if req is None:
            stream.reset("expected an RPC request message", m.CODE_PROTOCOL_ERROR)
            tm.RPC_REQUESTS.labels("-", "bad_request").inc()
            return
        call_id = req.get("id", 0)
        method = req.get("m")
        body = req.get("b", {})
        timeout = req.get("t")
        if not isinstance(method, str) or len(method) > 64 or not isinstance(body, dict) \
                or not isinstance(call_id, int) or isinstance(call_id, bool) or not 0 <= call_id < 2**63 or not (
                    timeout is None or isinstance(timeout, int | float) and not isinstance(timeout, bool)
                    and 0 < timeout <= MAX_TIMEOUT):
            call_id = call_id if isinstance(call_id, int) and 0 <= call_id < 2**63 else 0
            await self._reply_error(stream, call_id, RpcError("bad_request", "request needs m (str), b (map), id (int)"))
            tm.RPC_REQUESTS.labels("-", "bad_request").inc()
            return
        handler = self._methods.get(method)
        if handler is None:
            await self._reply_error(stream, call_id, RpcError("unknown_method", f"no method {method!r}"))
            tm.RPC_REQUESTS.labels("-", "unknown_method").inc()
            return
        deadline = trio.current_time() + timeout if timeout else None
        call = Call(stream, method, body, call_id, deadline)
        scope = stream.handler_scope
        if scope is not None:  # the connection's handler task: use its scope (no scope per call)
            if deadline is not None:
                scope.deadline = deadline
            stream.cancel_on_reset(scope)
            try:
                code = await self._respond(stream, call, handler)
            except trio.Cancelled:
                if not scope.cancel_called:
                    raise  # not ours (the node is shutting down)
                with trio.CancelScope(shield=True), trio.move_on_after(self.request_timeout):
                    code = await self._after_cancel(stream, call, timeout)
        else:
            with trio.CancelScope(deadline=deadline if deadline is not None else math.inf) as scope:
                stream.cancel_on_reset(scope)
                code = await self._respond(stream, call, handler)
            if scope.cancelled_caught:
                code = await self._after_cancel(stream, call, timeout)
        self._observe(method, code, time.perf_counter() - t0)

    async def _respond(self, stream: Stream, call: Call, handler: Handler) -> str:
        """Run the handler and send its final response; the result code for the metric."""
        try:
            result = await handler(call)
            if result is None:
                result = {}
            if not isinstance(result, dict):
                raise TypeError(f"handler returned {type(result).__name__}, not a dict")
            await stream.send_msg({"ok": result}, end=True)
            return "ok"
        except RpcError as e:
            await self._reply_error(stream, call.id, e)
            return e.code
        except (StreamReset, ConnectionLost):
            return "cancelled"  # the client went away: nobody to answer
        except TransportError as e:
            log.warning("rpc %s from %s: transport error in handler: %s", call.method, call.peer_id, e)
            await self._reply_error(stream, call.id, RpcError("internal", f"{type(e).__name__}: {e}"))
            return "internal"
        except Exception as e:
            log.exception("rpc %s from %s failed", call.method, call.peer_id)
            await self._reply_error(stream, call.id, RpcError("internal", f"{type(e).__name__}: {e}"))
            return "internal"

    async def _after_cancel(self, stream: Stream, call: Call, timeout: float | None) -> str:
        """The handler was cancelled: by its deadline (answered, if the client is still there) or because
        the client reset the stream or went away."""
        if call.deadline is not None and trio.current_time() >= call.deadline and stream.usable:
            await self._reply_error(stream, call.id, RpcError("deadline_exceeded", f"{call.method} took longer than {timeout}s"))
            return "deadline_exceeded"
        return "cancelled"

    def _observe(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        children = self._metric_children.get(key)
        if children is None:
            children = self._metric_children[key] = (tm.RPC_REQUESTS.labels(method, code), tm.RPC_SECONDS.labels(method))
        children[0].inc()
        children[1].observe(seconds)

    @staticmethod
    async def _reply_error(stream: Stream, call_id: int, err: RpcError) -> None:
        try:
            await stream.send_msg({"err": err.to_wire()}, end=True)
        except TransportError:
            pass  # the client is gone
        except LocalProtocolError:
            pass
