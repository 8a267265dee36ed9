"""Typed request/response on bigtcp streams: `RpcServer` (node side), `MeshClient` (trio), `SyncMeshClient`.

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

Client errors: `RpcError` for everything the call produced (server errors, deadline, and connection loss
as code "unavailable" with the transport error as __cause__). Refusals at connection time
(`HandshakeError`, `PeerIdMismatch`, `ConnectError`) propagate unchanged: they mean wrong address, wrong
identity or wrong mode, not a failed call.

`SyncMeshClient` is for code that does not use trio: it runs one trio event loop in a private thread for
the client's lifetime (one connection, reused by every call) and each method blocks the calling thread
via `trio.from_thread.run`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import outcome
import trio

from mesh.bigtcp import messages as m
from mesh.bigtcp import transport_metrics as tm
from mesh.bigtcp.framing import LocalProtocolError, TransportError
from mesh.bigtcp.mux import ConnectionClosing, ConnectionLost, StreamReset
from mesh.bigtcp.transport import ConnectError, Connection, EndOfStream, Stream, Transport
from mesh.identity import Identity

log = logging.getLogger("gpumesh.rpc")

__all__ = ["Call", "ClientCall", "MeshClient", "RpcError", "RpcServer", "SyncCall", "SyncMeshClient"]

RPC_META = {"rpc": 1}
_MAX_MESSAGE = 2048
_MAX_TIMEOUT = 7 * 24 * 3600.0


class RpcError(Exception):
    """An RPC failed: `code` (short string), `message` (for humans), optional `data` (a msgpack value)."""

    def __init__(self, code: str, message: str = "", data: Any = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.data = data

    def to_wire(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message[:_MAX_MESSAGE]}
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


Handler = Callable[["Call"], Awaitable[dict[str, Any] | None]]


# ============================================================================================== server


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

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Stream one raw data frame to the client (at most `stream.max_frame_size` bytes)."""
        await self.stream.send_bytes(data)

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
        t0 = trio.current_time()
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
                    and 0 < timeout <= _MAX_TIMEOUT):
            call_id = call_id if isinstance(call_id, int) and 0 <= call_id < 2**63 else 0
            await self._reply_error(stream, call_id, RpcError("bad_request", "request needs m (str), b (map), id (int)"))
            tm.RPC_REQUESTS.labels("-", "bad_request").inc()
            return
        handler = self._methods.get(method)
        if handler is None:
            await self._reply_error(stream, call_id, RpcError("unknown_method", f"no method {method!r}"))
            tm.RPC_REQUESTS.labels("-", "unknown_method").inc()
            return
        deadline = t0 + timeout if timeout else None
        call = Call(stream, method, body, call_id, deadline)
        code = "ok"
        with trio.CancelScope(deadline=deadline if deadline is not None else float("inf")) as scope:
            stream.cancel_on_reset(scope)
            try:
                result = await handler(call)
                if result is None:
                    result = {}
                if not isinstance(result, dict):
                    raise TypeError(f"handler returned {type(result).__name__}, not a dict")
                await stream.send_msg({"ok": result}, end=True)
            except RpcError as e:
                code = e.code
                await self._reply_error(stream, call_id, e)
            except (StreamReset, ConnectionLost):
                code = "cancelled"  # the client went away: nobody to answer
            except TransportError as e:
                code = "internal"
                log.warning("rpc %s from %s: transport error in handler: %s", method, call.peer_id, e)
                await self._reply_error(stream, call_id, RpcError("internal", f"{type(e).__name__}: {e}"))
            except Exception as e:
                code = "internal"
                log.exception("rpc %s from %s failed", method, call.peer_id)
                await self._reply_error(stream, call_id, RpcError("internal", f"{type(e).__name__}: {e}"))
        if scope.cancelled_caught:
            if deadline is not None and trio.current_time() >= deadline and stream._error is None and stream._lost is None:
                code = "deadline_exceeded"
                await self._reply_error(stream, call_id, RpcError("deadline_exceeded", f"{method} took longer than {timeout}s"))
            else:
                code = "cancelled"
        self._observe(method, code, trio.current_time() - t0)

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


# ============================================================================================== client


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

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Upload one raw data frame."""
        await self._guard(self.stream.send_bytes(data))

    async def done_sending(self) -> None:
        """No more uploads (the handler's `call.receive()` then returns None)."""
        await self._guard(self.stream.close())

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
        host, port = _split_address(host, port)
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
                return await ClientCall(stream, method, call_id).result()
            except (StreamReset, ConnectionLost) as e:
                raise _unavailable(e) from e
            except RpcError as e:
                if attempt == 1 and _refused_unseen(e):
                    continue  # the server was closing and never saw the request: safe to send it again
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


def _split_address(host: str, port: int | None) -> tuple[str, int]:
    if port is not None:
        return host, int(port)
    h, sep, p = host.rpartition(":")
    if not sep or not p.isdigit():
        raise ValueError(f"address {host!r} needs a port (host:port)")
    return h.strip("[]"), int(p)


# ============================================================================================== sync client


class SyncMeshClient:
    """Blocking `MeshClient` for code without trio. Runs trio in a private thread (one event loop and one
    connection for the client's lifetime); each method blocks until done. Thread-safe: calls from several
    threads run concurrently on the same connection.

        with SyncMeshClient("10.0.0.5:4002", peer_id=pid) as c:
            print(c.call("job.status", {"id": 7}))
            with c.open("job.results", {"id": 7}) as call:
                for item in call:
                    ...
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        peer_id: str | None = None,
        identity: Identity | None = None,
        insecure: bool = False,
        connect_timeout: float = 30.0,
        **transport_options: Any,
    ) -> None:
        self._args = (host, port)
        self._kw = dict(peer_id=peer_id, identity=identity, insecure=insecure, **transport_options)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._client: MeshClient | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._thread = threading.Thread(target=self._run, name="gpumesh-sync-client", daemon=True)
        self._thread.start()
        if not self._ready.wait(connect_timeout):
            raise TimeoutError(f"could not connect to {host}:{port} within {connect_timeout}s")
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error

    def _run(self) -> None:
        async def main() -> None:
            try:
                async with MeshClient.connect(*self._args, **self._kw) as client:
                    async with trio.open_nursery() as nursery:  # hosts the tasks of open SyncCalls
                        self._client = client
                        self._nursery = nursery
                        self._token = trio.lowlevel.current_trio_token()
                        self._stop = trio.Event()
                        self._ready.set()
                        await self._stop.wait()
                        nursery.cancel_scope.cancel()
            except BaseException as e:  # noqa: BLE001 - handed to the constructing thread
                if not self._ready.is_set():
                    self._startup_error = e
                    self._ready.set()
                else:
                    raise

        trio.run(main)

    @property
    def peer_id(self) -> str | None:
        return self._client.peer_id if self._client else None

    @property
    def client(self) -> MeshClient:
        """The async client on the private loop: use its methods through `run_async` only."""
        assert self._client is not None
        return self._client

    def run_async(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        """Run `await fn(*args, **kw)` on the private loop and return its result (or raise its error)."""
        if self._token is None or not self._thread.is_alive():
            raise RuntimeError("SyncMeshClient is closed")

        async def go() -> Any:
            return await fn(*args, **kw)

        return trio.from_thread.run(go, trio_token=self._token)

    def call(self, method: str, body: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        assert self._client is not None
        return self.run_async(self._client.call, method, body, timeout=timeout)

    def open(self, method: str, body: dict[str, Any] | None = None, *, timeout: float | None = None, uploads: bool = False) -> SyncCall:
        """A streaming call: use as a context manager."""
        assert self._client is not None
        return SyncCall(self, self._client.open(method, body, timeout=timeout, uploads=uploads))

    def close(self) -> None:
        if self._token is not None and self._thread.is_alive() and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join()
        self._token = None

    def __enter__(self) -> SyncMeshClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _AbortCall(Exception):
    """Raised inside a SyncCall's task when the `with` block exited with an exception."""


class SyncCall:
    """Blocking view of a `ClientCall`. The call lives in its own trio task (cancel scopes and the
    stream belong to one task); each method sends it a command and waits for the outcome."""

    def __init__(self, client: SyncMeshClient, cm: Any) -> None:
        self._client = client
        self._cm = cm
        self._cmd: trio.MemorySendChannel | None = None
        self._res: trio.MemoryReceiveChannel | None = None

    async def _worker(self, cmd_recv, res_send, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with self._cm as call:
                task_status.started()
                started = True
                async for op, args in cmd_recv:
                    if op == "__exit__":
                        if args:
                            raise _AbortCall(args[0])
                        break
                    await res_send.send(await outcome.acapture(getattr(call, op), *args))
        except _AbortCall:
            await res_send.send(outcome.Value(None))
            return
        except BaseException as e:
            if not started:
                raise
            await res_send.send(outcome.Error(e) if not isinstance(e, trio.Cancelled) else outcome.Error(RpcError("cancelled", "client closed")))
            return
        await res_send.send(outcome.Value(None))

    async def _start(self) -> None:
        cmd_send, cmd_recv = trio.open_memory_channel(0)
        res_send, res_recv = trio.open_memory_channel(1)
        assert self._client._nursery is not None
        await self._client._nursery.start(self._worker, cmd_recv, res_send)
        self._cmd, self._res = cmd_send, res_recv

    async def _roundtrip(self, op: str, args: tuple) -> Any:
        assert self._cmd is not None and self._res is not None
        await self._cmd.send((op, args))
        return (await self._res.receive()).unwrap()

    def _do(self, op: str, *args: Any) -> Any:
        return self._client.run_async(self._roundtrip, op, args)

    def __enter__(self) -> SyncCall:
        self._client.run_async(self._start)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._do("__exit__", *((repr(exc),) if exc_type is not None else ()))

    def send(self, item: dict[str, Any]) -> None:
        self._do("send", item)

    def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        self._do("send_bytes", data)

    def done_sending(self) -> None:
        self._do("done_sending")

    def receive(self) -> dict[str, Any] | bytes | bytearray | None:
        return self._do("receive")

    def __iter__(self) -> Iterator[Any]:
        while (item := self.receive()) is not None:
            yield item

    def result(self) -> dict[str, Any]:
        return self._do("result")
