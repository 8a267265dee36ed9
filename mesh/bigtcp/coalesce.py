"""Coalesced sends: items queued by many tasks (or callbacks) of one event loop go out together, one frame per
batch.

`put` only queues (no await, no task per item). The coalescer's own task (`run`, in its owner's nursery) wakes
when something is queued and yields once to the scheduler first, so that every task already runnable in that
pass (the other jobs that ended together, the other callers woken by one frame of results) queues its item too;
then it sends everything queued, at most `max_batch` items per call of `send`. A wait for the whole loop to go
idle (trio.testing.wait_all_tasks_blocked) was measured instead: it batched no better under a pipelined load
and cost a further 35 us per message when sequential.

Its owner says whether more items may be on their way (`more()`: say, other jobs still in flight). When none
are (a sequential caller), the item goes at once, without that pass: with `send_now` (a send that never waits,
False when it would have to), from `put` itself, in the caller's task (no task switch) when nothing is queued
or being sent before it; else from the coalescer's task. When some are, the batch may also wait
for them a little longer (`linger_s`, 0 by default): until the next item, at most `linger_s` in all, or a full
batch.

Producers are bounded by their owners (a lease's slots), not here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Coalescer(Generic[T]):
    def __init__(self, send: Callable[[list[T]], Awaitable[None]], *, max_batch: int,
                 more: Callable[[], bool] | None = None, linger_s: float = 0.0,
                 send_now: Callable[[list[T]], bool] | None = None) -> None:
        self._send = send
        self._send_now = send_now
        self._sending = False  # the task is in `send`: a direct send could overtake what it sends
        self.max_batch = max_batch
        self._more = more if more is not None else (lambda: True)
        self.linger_s = linger_s
        self._outbox: list[T] = []
        self._ready = trio.Event()
        self._closed = False
        self._taken = trio.Event()  # set (and replaced) whenever a batch leaves the queue for `send`
        self.batches = 0  # calls of `send` so far (items / batches: how well sends coalesce)

    def __len__(self) -> int:
        return len(self._outbox)

    def put(self, item: T) -> None:
        """Queue `item` for the next batch (or send it at once: see the module doc)."""
        if (self._send_now is not None and not self._outbox and not self._sending and not self._closed
                and not self._more() and self._send_now([item])):
            self.batches += 1
            return
        self._outbox.append(item)
        self._ready.set()

    async def wait_below(self, n: int) -> None:
        """Until fewer than `n` items wait to be sent (backpressure for a producer whose peer stops reading: what
        it holds is then at most `n` waiting plus one batch in a `send` that does not return)."""
        while len(self._outbox) >= n:
            await self._taken.wait()

    async def _wait_for_more(self) -> None:
        end = trio.current_time() + self.linger_s
        while not self._closed and len(self._outbox) < self.max_batch and self._more():
            self._ready = trio.Event()
            with trio.move_on_at(end) as scope:
                await self._ready.wait()
            if scope.cancelled_caught:
                return

    def close(self) -> None:
        """No more items: `run` sends what is queued and returns."""
        self._closed = True
        self._ready.set()

    async def run(self) -> None:
        """The sending task, until `close` (then what was queued is sent first) or cancelled; an error of
        `send` ends it, and what was queued is dropped."""
        try:
            while True:
                await self._ready.wait()
                self._ready = trio.Event()
                if not self._closed and self._more():
                    await trio.lowlevel.checkpoint()  # the rest of this pass queues first
                    if self.linger_s > 0:
                        await self._wait_for_more()
                while self._outbox:
                    batch = self._outbox[:self.max_batch]
                    del self._outbox[:self.max_batch]
                    self._taken.set()
                    self._taken = trio.Event()
                    self.batches += 1
                    self._sending = True
                    try:
                        await self._send(batch)
                    finally:
                        self._sending = False
                if self._closed:
                    return
        finally:
            self._outbox.clear()


__all__ = ["Coalescer"]
