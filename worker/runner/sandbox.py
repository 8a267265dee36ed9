"""What a runner does to itself first, before it loads any OpenCL driver (runner side).

- dies with its parent (`PR_SET_PDEATHSIG`: a daemon killed with -9 leaves no runner behind);
- no core dumps (a crashing kernel would otherwise write hundreds of MB per crash);
- memory: `RLIMIT_AS` at the runner's baseline plus twice the configured job memory (device buffers and the
  shared arena), so a huge allocation fails
  inside the runner (an allocation error, or at worst the runner's death) instead of pushing the machine into
  swap or the OOM killer;
- CPU time: `RLIMIT_CPU` is set for each task (`cpu_budget`): past it the kernel sends SIGXCPU and the runner dies,
  even if the daemon's wall-clock limit somehow did not fire;
- network: a network namespace of its own (`unshare(CLONE_NEWNET)`; unprivileged, inside a new user namespace
  where the kernel allows that), so a compromised runner has only a loopback interface that is down. Where
  neither is permitted, the runner keeps the host network and says so (`isolation()` reports what held).

Linux only (prctl, unshare); elsewhere each step reports that it is unavailable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
import sys
from typing import Any

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
BASELINE_AS = 2 << 30  # address space a runner needs before any job: Python, numpy, PoCL/LLVM, thread stacks

_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def die_with_parent(parent_pid: int) -> str:
    try:
        if _lib().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return f"not set (errno {ctypes.get_errno()})"
    except (OSError, AttributeError) as e:
        return f"unavailable ({e})"
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)
    return "yes"


def no_network() -> str:
    """A network namespace of our own; returns how (or why not)."""
    try:
        lib = _lib()
    except OSError as e:
        return f"no: {e}"
    if lib.unshare(CLONE_NEWNET) == 0:
        return "yes (network namespace)"
    err = ctypes.get_errno()
    uid, gid = os.getuid(), os.getgid()
    if lib.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        try:  # keep our own uid inside the user namespace (files we opened or read stay ours)
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
        except OSError:
            pass
        return "yes (user + network namespace)"
    return f"no: unshare refused (errno {err}: {os.strerror(err)}; errno {ctypes.get_errno()} unprivileged)"


def limit_memory(job_memory: int) -> str:
    if job_memory <= 0:
        return "unlimited"
    want = BASELINE_AS + 2 * job_memory  # the job's device buffers, and the arena its data comes through
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (ValueError, OSError) as e:
        return f"not set ({e})"
    return f"address space {want >> 20} MiB"


def no_core_dumps() -> None:
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass


_cpu: list[Any] = []  # [hard limit, the soft limit set last]: RLIMIT_CPU as this process left it


def cpu_budget(seconds: float) -> None:
    """Allow `seconds` more CPU time from now (SIGXCPU past it); <= 0: no limit. The limit stays until the next
    call (an idle runner burns no CPU), so a task costs one getrusage, and a setrlimit only when the limit moves."""
    try:
        if not _cpu:
            _cpu.extend([resource.getrlimit(resource.RLIMIT_CPU)[1], None])
        hard = _cpu[0]
        soft = hard
        if seconds > 0:
            r = resource.getrusage(resource.RUSAGE_SELF)
            soft = int(r.ru_utime + r.ru_stime + seconds) + 1
            if hard != resource.RLIM_INFINITY:
                soft = min(soft, hard)
        if soft != _cpu[1]:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
            _cpu[1] = soft
    except (ValueError, OSError):
        pass


def confine(parent_pid: int, job_memory: int, network: bool = False) -> dict[str, str]:
    """All of the above, in order; returns what held (for the runner's `ready` message and the logs)."""
    out = {"die_with_parent": die_with_parent(parent_pid)}
    no_core_dumps()
    out["network_isolated"] = "not asked" if network else no_network()
    out["memory"] = limit_memory(job_memory)
    out["platform"] = sys.platform
    return out
