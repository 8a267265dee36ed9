"""`SyncMeshClient`, for code that does not use trio: it runs one trio event loop in a private thread for
the client's lifetime (one connection, reused by every call) and each method blocks the calling thread via
`trio.from_thread.run`. `SyncCall` is the blocking view of a streaming call."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import outcome
import trio

from mesh.bigtcp.rpc_client import MeshClient
from mesh.bigtcp.rpc_protocol import RpcError
from mesh.identity import Identity

__all__ = ["SyncCall", "SyncMeshClient"]


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
    def nursery(self) -> trio.Nursery:
        """The private loop's nursery: tasks that live as long as the client (use from the loop only)."""
        assert self._nursery is not None
        return self._nursery

    @property
    def client(self) -> MeshClient:
        """The async client on the private loop: use its methods through `run_async` only."""
        assert self._client is not None
        return self._client

    def _hand_off(self, what: str) -> tuple[threading.Lock, list[outcome.Outcome]]:
        """For a call from another thread: a held lock its answer releases, and the box the answer goes in."""
        if self._token is None or not self._thread.is_alive():
            raise RuntimeError("SyncMeshClient is closed")
        if threading.current_thread() is self._thread:
            raise RuntimeError(f"SyncMeshClient.{what} called from its own event loop (await the call instead)")
        done = threading.Lock()
        done.acquire()
        return done, []

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Have the private loop call `fn` (a plain function) as soon as it can."""
        token = self._token
        try:
            if token is None:
                raise trio.RunFinishedError
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            raise RuntimeError("SyncMeshClient is closed") from None

    def run_async(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        """Run `await fn(*args, **kw)` on the private loop and return its result (or raise its error).

        The hand-off is a task started in the loop's nursery and a lock the caller blocks on: about 30 us less
        per call than `trio.from_thread.run` (a system task and a queue) on a 2-core machine, where a blocking
        `Mesh.run` of a small job costs well under 2 ms in all."""
        done, box = self._hand_off("run_async")

        async def go() -> None:
            try:
                box.append(await outcome.acapture(fn, *args, **kw))
            finally:
                done.release()

        def start() -> None:  # on the loop
            try:
                self.nursery.start_soon(go)
            except RuntimeError:  # the nursery is closing
                box.append(outcome.Error(RuntimeError("SyncMeshClient is closed")))
                done.release()

        self._on_loop(start)
        done.acquire()
        result = box[0]
        if isinstance(result, outcome.Error) and isinstance(result.error, trio.Cancelled):
            raise RuntimeError("SyncMeshClient closed while the call ran")
        return result.unwrap()

    def run_soon(self, start: Callable[[Callable[[Any], None]], bool]) -> tuple[bool, Any]:
        """Call `start(done)` on the private loop: a plain function (it must not block) that returns True once it
        has arranged for `done(value)` to be called on the loop later (a callback of the connection's reader),
        or False to decline. Blocks until then: (True, value), or (False, None) when it declined. No task is
        started on the loop: about 80 us less than `run_async` for a call that a callback can answer."""
        done, box = self._hand_off("run_soon")

        def settle(result: outcome.Outcome) -> None:  # the first answer counts
            if not box:
                box.append(result)
                done.release()

        def on_loop() -> None:
            try:
                if not start(lambda value: settle(outcome.Value((True, value)))):
                    settle(outcome.Value((False, None)))
            except BaseException as e:  # noqa: BLE001 - raised in the calling thread
                settle(outcome.Error(e))

        self._on_loop(on_loop)
        while not done.acquire(timeout=1.0):
            if not self._thread.is_alive():
                raise RuntimeError("SyncMeshClient closed while the call ran")
        return box[0].unwrap()

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
