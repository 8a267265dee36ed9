"""bigtcp streams: one logical, flow-controlled stream of messages and data frames within a connection.

A `Stream` talks to its connection only through `StreamLink` (below), and the connection talks to the
stream only through the stream's "connection side" methods (`deliver`, `credit_granted`, `end_received`,
`peer_reset`, `connection_lost`, `discarding`). Neither touches the other's private state, so either can
change its insides alone.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import trio

from mesh.bigtcp import messages as m
from mesh.bigtcp import transport_metrics as tm
from mesh.bigtcp.events import StreamReset
from mesh.bigtcp.framing import LocalProtocolError, TransportError

__all__ = ["EndOfStream", "ParkedTasks", "Stream", "StreamLink", "WrongItemKind"]

log = logging.getLogger("gpumesh.transport")


class EndOfStream(TransportError):
    """The peer half-closed the stream and everything it sent was received."""


class WrongItemKind(LocalProtocolError):
    """`receive_msg` found a data frame next (or `receive_bytes` a message); nothing was consumed."""


class ParkedTasks:
    """Tasks parked until woken, in FIFO order: what trio's ParkingLot does, with less work per park and
    per wakeup (no breaker bookkeeping, no OrderedDict; an empty check is a list's truth value). Used on
    every stream (its reader waiting for items, a sender waiting for credit) and by the connection."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: list[trio.lowlevel.Task] = []

    async def park(self) -> None:
        task = trio.lowlevel.current_task()
        tasks = self._tasks
        tasks.append(task)

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def unpark_all(self) -> None:
        if self._tasks:
            tasks, self._tasks = self._tasks, []
            for task in tasks:
                trio.lowlevel.reschedule(task)

    def unpark_one(self) -> bool:
        """Wake the longest-parked task; False if none was parked."""
        if not self._tasks:
            return False
        trio.lowlevel.reschedule(self._tasks.pop(0))
        return True


class StreamLink(Protocol):
    """What a Stream needs from its connection (implemented by `Connection`)."""

    peer_id: str
    principal: Any  # what the transport's `authorize` returned for this peer
    stall_timeout: float | None  # a send waiting this long for credit is reset

    def send_credit(self, sid: int, /) -> int:
        """Credit available to send on stream `sid` (the smaller of the stream's and the connection's)."""
        ...

    def queue_message(self, sid: int, payload: bytes, /, *, end: bool = False) -> None:
        """Queue one message frame (the caller checked the credit)."""
        ...

    def queue_data(self, sid: int, payload: bytes | memoryview, /, *, end: bool = False) -> None:
        """Queue one data frame (the caller checked the credit)."""
        ...

    @property
    def max_send_frame(self) -> int: ...

    def window_blocking(self, sid: int, n: int) -> str | None:
        """'stream' or 'connection': which window lacks credit for `n` bytes; None if both have it."""
        ...

    async def wait_connection_credit(self) -> None:
        """Park until the connection-level window may have opened (or the connection died)."""
        ...

    def note_blocked(self, seconds: float) -> None:
        """Account time a sender waited for credit (a metric)."""
        ...

    async def flush(self) -> bool:
        """Write what is queued, in the calling task. True if it had to wait (passed the scheduler)."""
        ...

    def flush_soon(self) -> None:
        """Write what is queued without waiting: now, when no task holds the write turn and the kernel takes
        it; else the connection's writer task finishes it."""
        ...

    def yield_due(self, size: int) -> bool:
        """Whether a send/receive of `size` bytes that did not wait should yield to the scheduler now."""
        ...

    def consumed(self, sid: int, size: int) -> None:
        """The application took `size` bytes of stream `sid`: grant the peer that much credit back."""
        ...

    def reset_stream(self, sid: int, code: int, reason: str) -> None:
        """Tell the peer the stream is aborted."""
        ...

    def stream_done(self, stream: Stream) -> None:
        """The stream may have ended both ways: forget it once the protocol no longer tracks it."""
        ...

    def push_pending(self) -> None:
        """Make sure frames queued on the connection (e.g. our OPEN) go out soon."""
        ...


class Stream:
    """One logical stream: messages (`send_msg`/`receive_msg`, msgpack maps) and bulk data frames
    (`send_bytes`/`receive_bytes`, raw), in order, with per-stream flow control.

    One `send_bytes` call is one DATA frame and one `receive_bytes` result (at most `max_frame_size`
    bytes). `close()` half-closes (the peer reads everything, then `EndOfStream`); `reset()` aborts both
    directions at once. As an async context manager: normal exit closes, an exception resets.
    """

    def __init__(self, link: StreamLink, sid: int, meta: dict[str, Any], outbound: bool) -> None:
        self._link = link
        self.id = sid
        self.meta = meta
        self.outbound = outbound  # opened by this side
        self._items: deque[tuple[Any, int]] = deque()
        self._eof = False  # peer half-closed
        self._send_closed = False
        self._error: TransportError | None = None  # reset (local or peer): fatal for both directions
        self._lost: TransportError | None = None  # connection died: buffered items still readable
        self._discard = False  # nobody reads any more: drop incoming data and grant credit
        self._taker: Callable[[dict[str, Any]], bool] | None = None  # see `take_messages`
        self._lot = ParkedTasks()  # receivers waiting for items, senders for credit
        self._scopes: list[trio.CancelScope] = []
        # the cancel scope of the connection's handler task while it serves this stream (inbound streams):
        # a handler may use it (a deadline, `cancel_on_reset`) instead of opening a scope of its own
        self.handler_scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<Stream {self.id} peer={self.peer_id[:16]}…>"

    # -- properties

    @property
    def peer_id(self) -> str:
        return self._link.peer_id

    @property
    def connection(self) -> StreamLink:
        """The connection carrying this stream (a `Connection`)."""
        return self._link

    @property
    def max_frame_size(self) -> int:
        """Largest payload one `send_bytes` / `send_msg` may carry (the peer's max frame)."""
        return self._link.max_send_frame

    @property
    def buffered(self) -> int:
        """Bytes received on this stream and not yet taken by the application."""
        items = self._items
        if len(items) <= 1:
            return items[0][1] if items else 0
        return sum(size for _item, size in items)

    @property
    def usable(self) -> bool:
        """Neither reset (by either side) nor cut off by the connection's loss."""
        return self._error is None and self._lost is None

    @property
    def closed_for_receiving(self) -> bool:
        return (self._eof and not self._items) or self._error is not None

    # -- sending

    async def send_msg(self, msg: dict[str, Any], *, end: bool = False) -> None:
        """Send one msgpack map (a control message of the application). `end=True` also half-closes."""
        await self._send(m.pack_message(msg), end, True)

    def send_msg_nowait(self, msg: dict[str, Any]) -> bool:
        """Send one msgpack map without waiting, for code that cannot await (a callback): True once it is queued
        in order behind what was sent before, and on its way (the connection's writer finishes what the kernel
        does not take at once); False, and nothing queued, when it would have to wait for flow-control credit or
        the stream cannot send (then use `send_msg`, which waits or raises)."""
        if self._error is not None or self._lost is not None or self._send_closed:
            return False
        payload = m.pack_message(msg)
        link = self._link
        n = len(payload)
        if n > link.max_send_frame or link.send_credit(self.id) < n:
            return False
        link.queue_message(self.id, payload)
        link.flush_soon()
        return True

    async def send_bytes(self, data: bytes | bytearray | memoryview, *, end: bool = False) -> None:
        """Send one raw data frame. Waits for flow-control credit; returns once the bytes were handed to
        the kernel (or encrypted), so the caller may then reuse `data`. If cancelled, the frame may or may
        not still be delivered (it is never cut)."""
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        await self._send(mv, end, False)

    async def close(self) -> None:
        """Half-close: the peer receives `EndOfStream` after everything sent before. Idempotent."""
        if self._send_closed or self._error is not None:
            await trio.lowlevel.checkpoint()
            return
        await self._send(b"", True, False)

    def _check_send(self) -> None:
        if self._error is not None:
            raise self._error
        if self._lost is not None:
            raise self._lost
        if self._send_closed:
            raise LocalProtocolError(f"stream {self.id} is closed for sending")

    async def _send(self, payload: bytes | memoryview, end: bool, is_msg: bool) -> None:
        link = self._link
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._error is not None or self._lost is not None or self._send_closed:
            self._check_send()
        n = len(payload)
        limit = link.max_send_frame
        if n > limit:
            raise LocalProtocolError(f"payload of {n} bytes exceeds the peer's max frame ({limit}); send it in parts")
        waited = False
        if link.send_credit(self.id) < n:
            waited = True
            t0 = trio.current_time()
            stall = link.stall_timeout
            try:
                with trio.move_on_after(stall if stall is not None else float("inf")) as stalled:
                    while True:
                        self._check_send()
                        blocking = link.window_blocking(self.id, n)
                        if blocking == "stream":
                            await self._lot.park()  # this stream's reader is behind
                        elif blocking == "connection":
                            await link.wait_connection_credit()  # the connection's window is full
                        else:
                            break
                if stalled.cancelled_caught:  # never granted: reset, so its buffers and its task are freed
                    tm.STALLED.labels("stream").inc()
                    self.reset(f"no credit granted for {stall:g} s", m.CODE_FLOW_CONTROL)
                    self._check_send()
            finally:
                link.note_blocked(trio.current_time() - t0)
        if is_msg:
            link.queue_message(self.id, payload, end=end)  # type: ignore[arg-type]
        else:
            link.queue_data(self.id, payload, end=end)
        if end:
            self._send_closed = True
            link.stream_done(self)
        if await link.flush() or waited:
            return
        # Sent without waiting for anything: yield now and then so a busy sender cannot starve the
        # other tasks (bulk frames always; small messages every 16th send).
        if link.yield_due(n):
            await trio.lowlevel.cancel_shielded_checkpoint()

    # -- receiving

    async def receive(self) -> dict[str, Any] | bytes | bytearray:
        """The next item: a dict (message) or a bytes-like object (data frame)."""
        return await self._receive(None)

    async def receive_msg(self) -> dict[str, Any]:
        return await self._receive(dict)  # type: ignore[no-any-return]

    async def receive_bytes(self) -> bytes | bytearray:
        return await self._receive(bytes)  # type: ignore[no-any-return]

    async def _receive(self, kind: type | None) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        parked = False
        while not self._items:
            if self._error is not None:
                raise self._error
            if self._eof:
                raise EndOfStream(f"stream {self.id}: peer closed its end")
            if self._lost is not None:
                raise self._lost
            self._link.push_pending()  # e.g. our OPEN frame, not yet flushed
            parked = True
            await self._lot.park()
        item, size = self._items[0]
        if kind is not None and (kind is dict) != isinstance(item, dict):
            if not parked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            want = "a message" if kind is dict else "a data frame"
            got = "a message" if isinstance(item, dict) else "a data frame"
            raise WrongItemKind(f"stream {self.id}: expected {want}, next is {got}")
        self._items.popleft()
        link = self._link
        if size:
            link.consumed(self.id, size)
        # The item was already here. Yield now and then (bulk frames always, small items every 16th)
        # so a consumer that never runs dry cannot starve other tasks, without paying a scheduler
        # pass on every small message.
        if not parked and link.yield_due(size):
            await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    def __aiter__(self):
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except EndOfStream:
            raise StopAsyncIteration from None

    # -- aborting

    def reset(self, reason: str = "", code: int = m.CODE_CANCEL) -> None:
        """Abort the stream both ways: buffered data is dropped, the peer gets StreamReset. Idempotent."""
        if self._error is not None:
            return
        self._error = StreamReset(self.id, code, reason, by_peer=False)
        self._items.clear()
        self._link.reset_stream(self.id, code, reason)
        self._link.stream_done(self)
        self._lot.unpark_all()

    def cancel_on_reset(self, scope: trio.CancelScope) -> None:
        """Cancel `scope` if the peer resets this stream or the connection dies (a handler whose caller
        went away stops working)."""
        if self._error is not None or self._lost is not None:
            scope.cancel()
        else:
            self._scopes.append(scope)

    async def aclose(self) -> None:
        """Finish with the stream: half-close if still open for sending, ignore further incoming data."""
        if self._error is None and self._lost is None and not self._send_closed:
            try:
                await self.close()
            except TransportError:
                pass
        self._stop_receiving()

    def _stop_receiving(self) -> None:
        if self._discard:
            return
        self._discard = True
        dropped = sum(size for _i, size in self._items)
        self._items.clear()
        if dropped:
            self._link.consumed(self.id, dropped)

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            await self.aclose()
        else:
            self.reset(f"{exc_type.__name__} in the stream's user" if not issubclass(exc_type, trio.Cancelled) else "cancelled")

    # -- the connection side (called by the connection only)

    @property
    def discarding(self) -> bool:
        """Nobody reads this stream any more: the connection frees incoming data's credit at once."""
        return self._discard

    def take_messages(self, fn: Callable[[dict[str, Any]], bool] | None) -> None:
        """Have `fn(message)` see each message as it arrives, in the connection's reader task (no task switch to
        a receiver): True when it took the message (its credit is freed at once), False to queue it for
        `receive` as usual. Only while nothing is queued ahead of it (order is kept). `fn` must not block. An
        error it raises resets this stream (code internal) and is logged: it reaches neither the connection's
        reader nor its other streams. None: back to `receive` only."""
        self._taker = fn

    def deliver(self, item: Any, size: int) -> None:
        """An item (message dict or data buffer) of `size` credit bytes arrived."""
        if self._taker is not None and not self._items and type(item) is dict:
            try:
                taken = self._taker(item)
            except Exception:
                log.exception("the message taker of stream %d failed: the stream is reset", self.id)
                self._taker = None
                if size:
                    self._link.consumed(self.id, size)
                self.reset("the receiver failed", m.CODE_INTERNAL)
                return
            if taken:
                if size:
                    self._link.consumed(self.id, size)
                return
        self._items.append((item, size))
        self._lot.unpark_all()

    def handler_finished(self) -> None:
        """The handler task is done with this stream: a later reset must not cancel what it runs next."""
        self.handler_scope = None
        self._scopes.clear()

    def credit_granted(self) -> None:
        self._lot.unpark_all()

    def end_received(self) -> None:
        self._eof = True
        self._lot.unpark_all()

    def peer_reset(self, code: int, reason: str) -> None:
        self._error = StreamReset(self.id, code, reason, by_peer=True)
        self._items.clear()
        self._wake_all()

    def connection_lost(self, error: TransportError) -> None:
        if self._lost is None and self._error is None:
            self._lost = error
        self._wake_all()

    def _wake_all(self) -> None:
        self._lot.unpark_all()
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()
