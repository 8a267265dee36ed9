"""The scheduler bench's echo workload on Ray (the `bench` extra), for ratios in the same run.

Same shapes as bench/scheduler.py: a no-op task that returns its (empty) argument, SEQUENTIAL one at a time
after a warm-up, then PIPELINED with CONCURRENCY in flight (a window kept full with `ray.wait`). Ray runs a
local cluster in this process (driver) plus its own raylet/GCS processes, with as many CPUs as the machine.
A helper, not a benchmark of its own (`python -m bench` skips modules whose name starts with `_`):
bench/scheduler.py calls `measure`.
"""

from __future__ import annotations

import logging
import time
from typing import Any


def available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def measure(sequential: int, pipelined: int, concurrency: int) -> dict[str, Any]:
    """{"rtts": [s], "jobs_per_s": float, "version": str}; raises ImportError without Ray."""
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
    try:
        @ray.remote
        def echo(body: dict) -> dict:
            return body

        for _ in range(20):  # warm up: worker processes started, function exported
            ray.get(echo.remote({}))
        rtts = []
        for _ in range(sequential):
            t0 = time.perf_counter()
            ray.get(echo.remote({}))
            rtts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        in_flight = [echo.remote({}) for _ in range(min(concurrency, pipelined))]
        submitted, done = len(in_flight), 0
        while in_flight:
            ready, in_flight = ray.wait(in_flight, num_returns=1)
            ray.get(ready)
            done += len(ready)
            while submitted < pipelined and len(in_flight) < concurrency:
                in_flight.append(echo.remote({}))
                submitted += 1
        elapsed = time.perf_counter() - t0
        return {"rtts": rtts, "jobs_per_s": done / elapsed, "version": ray.__version__}
    finally:
        ray.shutdown()
