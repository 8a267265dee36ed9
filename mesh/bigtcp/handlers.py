"""The tasks that run a connection's stream handlers (one inbound stream at a time each).

A task per inbound stream costs a spawn and, for an RPC, a cancel scope per call. `HandlerTasks` instead
keeps up to `IDLE_HANDLERS` finished handler tasks parked and hands the next inbound stream to one of
them (a wakeup); it spawns only when none is idle. Each task has one cancel scope for its life, offered
to the handler as `Stream.handler_scope` (a deadline, cancel-on-reset); once a peer reset or a deadline
cancelled it, that task ends and later streams get another.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import trio

from mesh.bigtcp import messages as m
from mesh.bigtcp.framing import TransportError
from mesh.bigtcp.stream import Stream

__all__ = ["IDLE_HANDLERS", "HandlerTasks"]

log = logging.getLogger("gpumesh.transport")

IDLE_HANDLERS = 8  # finished handler tasks kept parked per connection (a burst leaves a few, not one per call)


class HandlerTasks:
    """Runs `handler(stream)` for each inbound stream of one connection, in tasks made by `spawn` (the
    transport's nursery). `close()` (the connection ended) lets the idle tasks end."""

    def __init__(self, handler: Callable[[Stream], Awaitable[None]], spawn: Callable[..., None], peer_id: str) -> None:
        self._handler = handler
        self._spawn = spawn
        self._peer_id = peer_id
        self._idle: list[trio.lowlevel.Task] = []  # tasks parked in _next_stream
        self.closed = False

    def start(self, st: Stream) -> None:
        """Run the handler for a new inbound stream: in an idle task if there is one, else a new one."""
        if self._idle:
            trio.lowlevel.reschedule(self._idle.pop(), outcome.Value(st))
        else:
            self._spawn(self._task, st)

    def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        for task in idle:
            trio.lowlevel.reschedule(task, outcome.Value(None))  # no more streams: the task ends

    async def _task(self, st: Stream | None) -> None:
        with trio.CancelScope() as scope:
            while st is not None:
                st.handler_scope = scope
                try:
                    await self._run(st)
                finally:
                    st.handler_finished()
                if scope.cancel_called:
                    return
                if scope.deadline != math.inf:
                    scope.deadline = math.inf
                st = await self._next_stream()

    async def _next_stream(self) -> Stream | None:
        if self.closed or len(self._idle) >= IDLE_HANDLERS:
            return None
        task = trio.lowlevel.current_task()
        self._idle.append(task)

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            if task in self._idle:
                self._idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    async def _run(self, st: Stream) -> None:
        try:
            await self._handler(st)
        except trio.Cancelled:
            st.reset("cancelled", m.CODE_CANCEL)
            raise
        except BaseExceptionGroup as group:  # a handler's nursery: errors beside a cancellation stay here
            cancelled, failed = group.split(trio.Cancelled)
            if failed is not None:
                self._failed(st, failed)
            if cancelled is not None:
                st.reset("cancelled", m.CODE_CANCEL)
                raise cancelled from None
        except Exception as e:
            self._failed(st, e)
        else:
            await st.aclose()

    def _failed(self, st: Stream, e: BaseException) -> None:
        """The handler failed: a transport error (the peer went, the stream broke) is routine; anything else a
        bug, logged with its traceback. Either way only this stream ends."""
        transport_only = isinstance(e, TransportError) or (
            isinstance(e, BaseExceptionGroup) and e.split(TransportError)[1] is None)
        if transport_only:
            log.debug("stream %d from %s ended with %s", st.id, self._peer_id, e)
            st.reset(f"handler: {e}", m.CODE_INTERNAL)
        else:
            log.error("stream handler failed (stream %d from %s)", st.id, self._peer_id, exc_info=e)
            st.reset("handler failed", m.CODE_INTERNAL)
