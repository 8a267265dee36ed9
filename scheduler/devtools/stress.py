"""Run a command while busy-loop processes load the CPU cores: `make stress-test` runs the whole test suite this
way (a slow, shared CI machine, on purpose), `python -m scheduler.devtools.stress -- make demo` the demo.

    python -m scheduler.devtools.stress [--busy N] -- COMMAND [ARG ...]

The busy loops are stopped on every path: when the command ends, on an error or Ctrl-C in this driver, and, if
this driver is killed outright, by the kernel (each loop asks for SIGKILL when its parent dies) or by the loop
itself, which checks its parent pid. The command sees their pids in $GPUMESH_STRESS_PIDS. Exit status: the
command's.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

# a loop that burns one core and ends when its parent goes (checked every ~5e6 iterations, about 0.1-0.5 s)
BUSY_LOOP = """
import ctypes, ctypes.util, os, signal, sys
try:
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").prctl(1, int(signal.SIGKILL), 0, 0, 0)
except OSError:
    pass
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(5_000_000):
        pass
"""


def start_busy(n: int) -> list[subprocess.Popen]:
    me = str(os.getpid())
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, me]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def run(command: list[str], busy: int) -> int:
    loops: list[subprocess.Popen] = []
    try:
        loops = start_busy(busy)
        env = {**os.environ, "GPUMESH_STRESS_PIDS": " ".join(str(p.pid) for p in loops)}
        print(f"stress: {busy} busy loop(s) {env['GPUMESH_STRESS_PIDS']} while running: {' '.join(command)}",
              file=sys.stderr, flush=True)
        cmd = subprocess.Popen(command, env=env)
        try:
            return cmd.wait()
        except BaseException:  # Ctrl-C or SIGTERM here: the command is stopped too
            if cmd.poll() is None:
                cmd.send_signal(signal.SIGTERM)
                try:
                    cmd.wait(30)
                except subprocess.TimeoutExpired:
                    cmd.kill()
                    cmd.wait()
            raise
    finally:
        stop(loops)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scheduler.devtools.stress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busy", type=int, default=os.cpu_count() or 2,
                   help="busy-loop processes (default: one per CPU core)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to run after --")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup, as for Ctrl-C
    try:
        return run(command, args.busy)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
