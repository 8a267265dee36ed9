"""The trio RPC client: `MeshClient` (calls a node's methods over a pooled bigtcp connection) and
`ClientCall` (a streaming call in progress). The protocol is described in `rpc_protocol.py`.

Client errors: `RpcError` for everything the call produced (server errors, deadline, and connection loss
as code "unavailable" with the transport error as __cause__). Refusals at connection time
(`HandshakeError`, `PeerIdMismatch`, `ConnectError`) propagate unchanged: they mean wrong address, wrong
identity or wrong mode, not a failed call.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from mesh.bigtcp import messages as m
from mesh.bigtcp.connection import Connection
from mesh.bigtcp.events import ConnectionClosing, ConnectionLost, StreamReset
from mesh.bigtcp.framing import TransportError
from mesh.bigtcp.rpc_protocol import RPC_META, RpcError, item_taker
from mesh.bigtcp.stream import EndOfStream, Stream
from mesh.bigtcp.transport import ConnectError, Transport
from mesh.identity import Identity

__all__ = ["ClientCall", "MeshClient", "split_address"]


def _refused_unseen(e: RpcError) -> bool:
    """The call failed because the server refused the stream before reading it (GOAWAY race)."""
    cause = e.__cause__
    return isinstance(cause, StreamReset) and cause.by_peer and cause.code == m.CODE_REFUSED


def _unavailable(e: TransportError) -> RpcError:
    err = RpcError("unavailable", str(e))
    err.__cause__ = e
    return err


class ClientCall:
    """A call in progress (from `MeshClient.open`): upload, read streamed results, then `result()`."""

    def __init__(self, stream: Stream, method: str, call_id: int) -> None:
        self.stream = stream
        self.method = method
        self.id = call_id
        self._final: dict[str, Any] | None = None
        self._error: RpcError | None = None

    async def send(self, item: dict[str, Any]) -> None:
        """Upload one item (the handler gets it from `call.receive()`)."""
        await self._guard(self.stream.send_msg({"i": item}))

    def send_nowait(self, item: dict[str, Any]) -> bool:
        """Upload one item without waiting (`Stream.send_msg_nowait`): False, and nothing sent, when that would
        have to wait or the call cannot send; then use `send`."""
        return self.stream.send_msg_nowait({"i": item})

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Upload one raw data frame."""
        await self._guard(self.stream.send_bytes(data))

    async def done_sending(self) -> None:
        """No more uploads (the handler's `call.receive()` then returns None)."""
        await self._guard(self.stream.close())

    def on_items(self, fn: Callable[[dict[str, Any]], bool] | None) -> None:
        """Hand each streamed result item (a map) to `fn` as it arrives, in the connection's reader task, instead
        of to `receive`: True when `fn` took it, False to leave it (and, to keep the order, what follows while it
        waits) for `receive`, which also sees data frames and the final response. For a caller that answers many
        waiters from one stream and would otherwise wake a task to read it; `fn` must not block. None: stop."""
        self.stream.take_messages(item_taker(fn) if fn is not None else None)

    async def _guard(self, aw: Awaitable[Any]) -> Any:
        try:
            return await aw
        except (StreamReset, ConnectionLost) as e:
            raise _unavailable(e) from e

    async def receive(self) -> dict[str, Any] | bytes | bytearray | None:
        """The next streamed result (item dict or data frame), or None once the final response arrived."""
        if self._final is not None or self._error is not None:
            return None
        try:
            item = await self.stream.receive()
        except EndOfStream:
            self._error = RpcError("bad_response", "stream ended without a final response")
            return None
        except (StreamReset, ConnectionLost) as e:
            self._error = _unavailable(e)
            return None
        if not isinstance(item, dict):
            return item
        if "i" in item:
            return item["i"]
        if "ok" in item:
            body = item["ok"]
            self._final = body if isinstance(body, dict) else {"value": body}
        elif "err" in item:
            self._error = RpcError.from_wire(item["err"])
        else:
            self._error = RpcError("bad_response", f"unexpected message {sorted(item)}")
        return None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items()

    async def _items(self) -> AsyncIterator[Any]:
        while (item := await self.receive()) is not None:
            yield item

    async def result(self) -> dict[str, Any]:
        """The final response body; streamed results not read yet are skipped. Raises RpcError."""
        while await self.receive() is not None:
            pass
        if self._error is not None:
            raise self._error
        assert self._final is not None
        return self._final


class MeshClient:
    """Client of one node's RPC methods over a pooled bigtcp connection.

        async with MeshClient.connect("10.0.0.5", 4002, peer_id=pid) as c:
            status = await c.call("job.status", {"id": job_id})
            async with c.open("job.results", {"id": job_id}) as call:
                async for item in call: ...
                summary = await call.result()

    Without `peer_id`, the first identity the server proves is pinned for later reconnects (traffic is
    still encrypted and the server authenticated, but not against a known id). A node reuses its own
    transport with `MeshClient(transport, host, port, peer_id)`.
    """

    def __init__(self, transport: Transport, host: str, port: int, peer_id: str | None = None) -> None:
        self.transport = transport
        self.host = host
        self.port = int(port)
        self._peer_id = peer_id
        self._ids = itertools.count(1)
        self._conn: Connection | None = None  # last connection used (the pool keeps it too)

    @property
    def peer_id(self) -> str | None:
        """The server's peer id (known after the first connection)."""
        return self._peer_id

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        host: str,
        port: int | None = None,
        *,
        peer_id: str | None = None,
        identity: Identity | None = None,
        insecure: bool = False,
        **transport_options: Any,
    ) -> AsyncIterator[MeshClient]:
        """Connect to `host:port` (or `host` as "host:port"); `identity` defaults to an ephemeral key."""
        host, port = split_address(host, port)
        transport = Transport(identity or Identity.generate(), insecure=insecure, listen=False, **transport_options)
        try:
            async with trio.open_nursery() as nursery:  # the transport's tasks only
                await nursery.start(transport.serve)
                try:
                    client = cls(transport, host, port, peer_id)
                    await client.connection()  # fail early: wrong address / identity / mode
                    yield client
                finally:
                    with trio.CancelScope(shield=True):
                        await transport.aclose()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # the caller's own exception (or a connect error) comes out of the nursery wrapped: unwrap it
            if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
                raise group.exceptions[0] from group.exceptions[0].__cause__
            raise

    async def connection(self) -> Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        conn = self._conn = await self.transport.connect(self.host, self.port, self._peer_id)
        if self._peer_id is None:
            self._peer_id = conn.peer_id
        return conn

    async def _open_stream(self) -> Stream:
        for attempt in (1, 2):
            try:
                conn = await self.connection()
                return await conn.open_stream(RPC_META)
            except (ConnectionClosing, ConnectionLost) as e:
                if attempt == 2:
                    raise _unavailable(e) from e
            except ConnectError as e:
                raise _unavailable(e) from e
        raise AssertionError("unreachable")  # pragma: no cover

    async def call(self, method: str, body: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        """One request, one response. Streamed items the method may send are skipped."""
        call_id = next(self._ids)
        req: dict[str, Any] = {"id": call_id, "m": method, "b": body or {}}
        if timeout is not None:
            req["t"] = timeout
        if timeout is None:
            return await self._call(method, req, call_id)
        with trio.move_on_after(timeout):
            return await self._call(method, req, call_id)
        raise RpcError("deadline_exceeded", f"{method}: no response within {timeout}s") from None

    async def _call(self, method: str, req: dict[str, Any], call_id: int) -> dict[str, Any]:
        for attempt in (1, 2):
            stream = await self._open_stream()
            try:
                await stream.send_msg(req, end=True)
                while True:  # ClientCall.result() without a ClientCall: this is the hot path
                    item = await stream.receive()
                    if type(item) is not dict:
                        continue  # a streamed data frame: skipped
                    if "ok" in item:
                        result = item["ok"]
                        return result if isinstance(result, dict) else {"value": result}
                    if "err" in item:
                        raise RpcError.from_wire(item["err"])
                    if "i" not in item:
                        raise RpcError("bad_response", f"unexpected message {sorted(item)}")
            except EndOfStream:
                raise RpcError("bad_response", "stream ended without a final response") from None
            except (StreamReset, ConnectionLost) as e:
                err = _unavailable(e)
                if attempt == 1 and _refused_unseen(err):
                    continue  # the server was closing and never saw the request: safe to send it again
                raise err from e
            except RpcError:
                raise
            except BaseException:
                stream.reset("call abandoned")
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    @asynccontextmanager
    async def open(
        self, method: str, body: dict[str, Any] | None = None, *, timeout: float | None = None, uploads: bool = False
    ) -> AsyncIterator[ClientCall]:
        """A streaming call. With `uploads=True` the request stays open for `send`/`send_bytes` until
        `done_sending()`; otherwise the client's side ends with the request. Leaving the block early
        (exception, cancellation) resets the stream, which cancels the handler."""
        call_id = next(self._ids)
        req: dict[str, Any] = {"id": call_id, "m": method, "b": body or {}}
        if timeout is not None:
            req["t"] = timeout
        with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
            stream = await self._open_stream()
            c = ClientCall(stream, method, call_id)
            try:
                await c._guard(stream.send_msg(req, end=not uploads))
                yield c
            except BaseException:
                stream.reset("call abandoned")
                raise
            else:
                if c._final is None and c._error is None:
                    stream.reset("call closed before its final response")
                else:
                    await stream.aclose()
        if scope.cancelled_caught:
            raise RpcError("deadline_exceeded", f"{method}: not finished within {timeout}s")


def split_address(host: str, port: int | None) -> tuple[str, int]:
    if port is not None:
        return host, int(port)
    h, sep, p = host.rpartition(":")
    if not sep or not p.isdigit():
        raise ValueError(f"address {host!r} needs a port (host:port)")
    return h.strip("[]"), int(p)
