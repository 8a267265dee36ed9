"""A runner that lies, for tests/test_runner_handoff.py: the real runner (`worker.runner.child`) with tasks whose
replies a compromised runner could send. Started by a pool whose `python` is a shim running
`python -m tests.hostile_runner -m worker.runner.child --sock ...` (the pool's command line, this module first)."""

from __future__ import annotations

import sys
from typing import Any

from worker.runner import child


async def outside(host: Any, dctx: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    """Output regions that run past the end of the arena, or start before it."""
    size = host.arena.size if host.arena is not None else 0
    return {}, [[size - 4, 64]] if args.get("past_end", True) else [[-8, 16]]


async def short_compute(host: Any, dctx: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    """A compute.opencl 'result' that is not what the spec returns (one byte, inside the arena)."""
    return {"outputs": []}, [[0, 1]]


child.TASKS.update({"evil.outside": "tests.hostile_runner:outside",
                    "compute.opencl": "tests.hostile_runner:short_compute"})

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:2] == ["-m", "worker.runner.child"]:
        argv = argv[2:]
    sys.exit(child.main(argv))
