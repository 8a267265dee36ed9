"""Shared memory between the daemon and one runner: a sealed memfd, mapped on both sides.

The daemon creates the arena at a fixed size and seals it (no shrink, no grow): a runner that tries to
truncate it gets an error instead of leaving the daemon a mapping that faults (SIGBUS) when read. The fd
travels to the runner with the call that first uses it (`SCM_RIGHTS`); both map it `MAP_SHARED`, so inputs
written by the daemon and outputs written by the runner are never copied through the socket. Pages are
charged to the memory the kernel gives shared memory (tmpfs), bounded by the arena's size.
"""

from __future__ import annotations

import fcntl
import mmap
import os

MIN_ARENA = 1 << 20
KEEP_ARENA = 64 << 20  # an arena bigger than this is dropped after the call that needed it


def _round(n: int) -> int:
    size = MIN_ARENA
    while size < n:
        size <<= 1
    return size


class Arena:
    """A sealed shared-memory region of `size` bytes (daemon side: creates it)."""

    def __init__(self, need: int, name: str = "gpumesh-arena") -> None:
        self.size = _round(max(need, 1))
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, self.size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self.mm = mmap.mmap(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise
        self.view = memoryview(self.mm)
        self.sent = False  # the runner has the fd

    def close(self) -> None:
        self.view.release()
        try:
            self.mm.close()
        except BufferError:  # a view is still exported somewhere: the mapping goes with it
            pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Mapped:
    """Runner side: an arena received as an fd."""

    def __init__(self, fd: int, size: int) -> None:
        try:
            self.mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.size = size
        self.view = memoryview(self.mm)

    def close(self) -> None:
        self.view.release()
        try:
            self.mm.close()
        except BufferError:
            pass


class StatusPage:
    """A small sealed page the runner writes what it is doing into ("kernel 'k'"); the daemon reads it when the
    runner dies, to say where. Daemon side creates it; the fd is inherited by the runner."""

    SIZE = 4096

    def __init__(self) -> None:
        self.fd = os.memfd_create("gpumesh-runner-status", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, self.SIZE)
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        self.mm = mmap.mmap(self.fd, self.SIZE)

    def read(self) -> str:
        raw = self.mm[:self.SIZE - 1]
        text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return "".join(c for c in text if c.isprintable())[:200]

    def close(self) -> None:
        self.mm.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_status(mm: mmap.mmap, text: str) -> None:
    """Runner side: what it is doing now (cheap: a memcpy into the shared page)."""
    data = text.encode("utf-8", "replace")[:StatusPage.SIZE - 1] + b"\0"
    mm[:len(data)] = data
