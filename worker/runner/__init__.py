"""Runner processes: where device code runs, outside the daemon.

Every job kind that runs device code (compute.opencl, render.frame, zk.prove) runs it in a long-lived child
process of the node, a *runner*, one or more per device. A kernel that writes out of bounds, loops forever
or asks for more memory than allowed takes down (or is killed with) its runner, never the daemon: the job it
held fails with the cause (`runner crashed: SIGSEGV in kernel 'k'`), a new runner takes its place, and the
node, its adverts and its other jobs carry on.

- `wire`: the daemon <-> runner protocol (length-prefixed msgpack frames on a Unix socket, bounded).
- `arena`: shared memory (sealed memfd) that carries inputs and outputs, so large buffers are never copied
  through the socket.
- `sandbox`: what a runner does to itself before it loads OpenCL: dies with its parent, no core dumps,
  memory rlimit, a network namespace of its own where the OS allows one.
- `child`: the runner's main loop (`python -m worker.runner.child`) and the task registry.
- `pool`: the daemon side: the pools that start, lease and replace runners per device (trio; the event loop
  never blocks on a runner); `process`: one runner, called and killed; `spawn`: forking runners and waiting
  for them to exit; `errors`: what a call can end in besides its result.
- `compute`, `render`, `zk`: per kind, the daemon side (`run_*`, called from the kind's `run`) and the runner
  side (the task) of one job.

See docs/isolation.md for what this boundary protects against and what it does not.
"""

from worker.runner.errors import RunnerCrashed, RunnerError, RunnerTimeLimit, RunnerUnavailable, TaskFailed
from worker.runner.pool import RunnerLease, RunnerPool, RunnerSettings

__all__ = ["RunnerCrashed", "RunnerError", "RunnerLease", "RunnerPool", "RunnerSettings", "RunnerTimeLimit",
           "RunnerUnavailable", "TaskFailed"]
