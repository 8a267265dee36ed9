"""`--exit-with-parent`: a node started by a harness (the demo, tests, benches, chaos) stops when that harness
dies, however it dies (kill -9 included), so no node is left behind.

Two mechanisms, because each has a gap: Linux's PR_SET_PDEATHSIG sends us SIGTERM the moment our parent dies
(but fires when the parent *thread* that forked us exits, and only on Linux), and a watch that polls
`os.getppid()`, which changes when the parent process is gone and we are re-parented (any POSIX system).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from collections.abc import Callable

import trio

log = logging.getLogger("gpumesh.node")

PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 0.5


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` when our parent dies (Linux only); whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def parent_alive(original_ppid: int) -> bool:
    return os.getppid() == original_ppid


async def watch_parent(original_ppid: int, on_gone: Callable[[], None], interval: float = WATCH_INTERVAL_S) -> None:
    """Call `on_gone()` once the process that started us has exited (our parent pid changed)."""
    while parent_alive(original_ppid):
        await trio.sleep(interval)
    log.info("parent process %d is gone (--exit-with-parent): shutting down", original_ppid)
    on_gone()
