"""Coalesced sends: items queued by many tasks of one event loop go out together, in one frame per batch.

A task that queues an item when no send is under way becomes the sender: it first lets every other runnable
task run (until the loop has nothing left to run but waiting, or `max_wait_s` passes, whichever is first), so
that the items those tasks queue in the same pass (the answers of jobs that ended together, the next jobs of
a pipelined client woken by one frame of results) join its batch; then it sends everything queued, at most
`max_batch` items per call of `send`. Tasks that queue while it sends return at once: their items go in its
next call. Waiting for the loop to go idle is trio's `wait_all_tasks_blocked` (trio.testing: the only public
hook at the end of a scheduler batch); it costs one pass of the loop, about 10-20 us, when nothing else runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio
import trio.testing

T = TypeVar("T")

MAX_WAIT_S = 0.0005  # a busy loop (never idle) still sends within this


class Coalescer(Generic[T]):
    def __init__(self, send: Callable[[list[T]], Awaitable[None]], *, max_batch: int,
                 max_wait_s: float = MAX_WAIT_S) -> None:
        self._send = send
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._outbox: list[T] = []
        self._sending = False
        self.batches = 0  # calls of `send` so far (items / batches: how well sends coalesce)

    def __len__(self) -> int:
        return len(self._outbox)

    async def put(self, item: T) -> None:
        """Queue `item`; the task that finds no send under way sends (an error of `send` is raised to it, and
        what was queued is dropped: the other side sees the same broken stream)."""
        self._outbox.append(item)
        if self._sending:
            return
        self._sending = True
        try:
            with trio.move_on_after(self.max_wait_s):
                await trio.testing.wait_all_tasks_blocked()
            while self._outbox:
                batch = self._outbox[:self.max_batch]
                del self._outbox[:self.max_batch]
                self.batches += 1
                await self._send(batch)
        except BaseException:
            self._outbox.clear()
            raise
        finally:
            self._sending = False


__all__ = ["Coalescer"]
