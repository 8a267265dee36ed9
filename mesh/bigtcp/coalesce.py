"""Coalesced sends: items queued by many tasks (or callbacks) of one event loop go out together, one frame per
batch.

`put` only queues (no await, no task per item). The coalescer's own task (`run`, in its owner's nursery) wakes
when something is queued and yields once to the scheduler first, so that every task already runnable in that
pass (the other jobs that ended together, the other callers woken by one frame of results) queues its item too;
then it sends everything queued, at most `max_batch` items per call of `send`. A wait for the whole loop to go
idle (trio.testing.wait_all_tasks_blocked) was measured instead: it batched no better under a pipelined load
and cost a further 35 us per message when sequential.

When its owner knows more items are on their way (`linger()` is true: say, jobs still running whose answers
will follow), the batch waits for them a little longer: until the next item, at most `linger_s` in all, or a
full batch. A sequential caller (nothing else in flight) never waits.

Producers are bounded by their owners (a lease's slots), not here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")

LINGER_S = 0.0005  # the longest a batch waits for more items its owner said were coming


class Coalescer(Generic[T]):
    def __init__(self, send: Callable[[list[T]], Awaitable[None]], *, max_batch: int,
                 linger: Callable[[], bool] | None = None, linger_s: float = LINGER_S) -> None:
        self._send = send
        self.max_batch = max_batch
        self._linger = linger
        self.linger_s = linger_s
        self._outbox: list[T] = []
        self._ready = trio.Event()
        self._closed = False
        self._taken = trio.Event()  # set (and replaced) whenever a batch leaves the queue for `send`
        self.batches = 0  # calls of `send` so far (items / batches: how well sends coalesce)

    def __len__(self) -> int:
        return len(self._outbox)

    def put(self, item: T) -> None:
        """Queue `item` for the next batch."""
        self._outbox.append(item)
        self._ready.set()

    async def wait_below(self, n: int) -> None:
        """Until fewer than `n` items wait to be sent (backpressure for a producer whose peer stops reading: what
        it holds is then at most `n` waiting plus one batch in a `send` that does not return)."""
        while len(self._outbox) >= n:
            await self._taken.wait()

    async def _wait_for_more(self) -> None:
        end = trio.current_time() + self.linger_s
        while not self._closed and len(self._outbox) < self.max_batch and self._linger is not None and self._linger():
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
                if not self._closed:
                    await trio.lowlevel.checkpoint()  # the rest of this pass queues first
                    if self._linger is not None:
                        await self._wait_for_more()
                while self._outbox:
                    batch = self._outbox[:self.max_batch]
                    del self._outbox[:self.max_batch]
                    self._taken.set()
                    self._taken = trio.Event()
                    self.batches += 1
                    await self._send(batch)
                if self._closed:
                    return
        finally:
            self._outbox.clear()


__all__ = ["Coalescer"]
