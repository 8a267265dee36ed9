"""Waiting for a condition: the one helper harnesses and tests use (never a fixed sleep).

    wait_for(lambda: node.call("status"), 60, "node 0 to answer")           # blocking code
    await until(lambda: peer in view, 10, "the peer to join")              # trio code

The timeout is a generous cap, not a measurement: a slow machine waits longer, a fast one returns at once.
An `Abort` raised by the predicate ends the wait at once (the thing waited for can never happen, e.g. the
process died); other exceptions count as "not yet" (the node may not listen yet) and are named on timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio


class Abort(Exception):
    """Raised by a predicate: stop waiting, the condition can never become true."""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns a truthy value (returned); TimeoutError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Abort:
            raise
        except Exception as e:  # not yet
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}"
                               + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)


async def until(predicate: Callable[[], Any], timeout: float = 120.0, what: str = "a condition",
                interval: float = 0.02) -> Any:
    """The trio version of `wait_for`, for effects that cannot be awaited directly (a metric bumped by another
    task, a view filled by gossip). Exceptions of the predicate propagate."""
    with trio.move_on_after(timeout) as scope:
        while not (value := predicate()):
            await trio.sleep(interval)
        return value
    assert scope.cancelled_caught
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
