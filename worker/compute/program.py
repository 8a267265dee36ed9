"""pyopencl-shaped calls: `Program(source).build().kernel_name(queue, global_size, local_size, *args)`.

A pyopencl script ports by changing a few lines (docs/compute.md shows pyopencl's own demo ported)::

    prg = Program(SOURCE).build()                       # pyopencl: cl.Program(ctx, SOURCE).build()
    res = prg.sum(None, a.shape, None, a, b, Out.like(a))   # pyopencl: prg.sum(queue, a.shape, None, a_g, b_g, res_g)

- the queue argument is accepted and ignored (pass anything, or leave it out: a first argument that is not a
  size is taken for the queue);
- buffers are the numpy arrays themselves (`cl.Buffer(..., COPY_HOST_PTR, hostbuf=a)` becomes `a`); a buffer
  the kernel writes and you read back is `Out.like(a)` / `Out(shape, dtype)` (was `cl.Buffer(ctx,
  mf.WRITE_ONLY, nbytes)` plus `cl.enqueue_copy`), or `InOut(a)` for one it reads and writes;
- scalars are numpy scalars (`np.int32(n)`), or plain numbers after `knl.set_scalar_arg_dtypes([...])` as in
  pyopencl; vectors `pyopencl.cltypes.make_float4(...)`, structs 0-d structured arrays; `cl.LocalMemory(nbytes)`
  is taken as it is (or write `Local(nbytes)`);
- the call returns the output array (or a dict of outputs by name when there are several) instead of an event.

`Program` runs on this machine's device (`worker.compute.api.run_local`); `Mesh.program(...)` in
`scheduler.client.compute_sdk` is the same shape on the mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from worker.compute.api import ComputeJob, make_job, run_local
from worker.compute.runner import ComputeResult
from worker.compute.spec import kernel_names_in


def outputs_value(res: ComputeResult) -> np.ndarray | dict[str, np.ndarray]:
    """The single output array, or every output by name ("arg3" for an unnamed output at parameter 3)."""
    outs = {o.name or f"arg{o.index}": o.array for o in res.outputs}
    return next(iter(outs.values())) if len(outs) == 1 else outs


def _is_size(v: Any) -> bool:
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return True
    return isinstance(v, tuple | list) and 1 <= len(v) <= 3 and all(
        isinstance(x, int | np.integer) and not isinstance(x, bool) for x in v)


def split_call(args: Sequence[Any]) -> tuple[Any, Any, list[Any]]:
    """(global_size, local_size, kernel args) from pyopencl's `(queue, global_size, local_size, *args)`."""
    rest = list(args)
    if rest and not _is_size(rest[0]):
        rest = rest[1:]  # the queue
    if len(rest) < 2 or not _is_size(rest[0]) or not (rest[1] is None or _is_size(rest[1])):
        raise TypeError("call a kernel as kernel([queue,] global_size, local_size, *args): sizes are ints or "
                        "tuples of 1 to 3 ints, local_size may be None")
    return rest[0], rest[1], rest[2:]


class Kernel:
    """One kernel of a `Program`, called like a pyopencl Kernel."""

    def __init__(self, program: Program, name: str) -> None:
        self.program = program
        self.function_name = name
        self.scalar_arg_dtypes: list[Any] | None = None

    def set_scalar_arg_dtypes(self, dtypes: Sequence[Any]) -> None:
        """pyopencl's: the numpy dtype of each by-value parameter (None for the others), so plain Python numbers
        can be passed."""
        self.scalar_arg_dtypes = list(dtypes)

    def job(self, *args: Any, wait_for: Any = None, global_offset: Any = None, **kw: Any) -> ComputeJob:
        """The job a call would run (pyopencl's arguments; keywords of `make_job`)."""
        if global_offset is not None and any(global_offset):
            raise TypeError("global_offset is not supported: add the offset in the kernel")
        gsize, lsize, kargs = split_call(args)
        if self.scalar_arg_dtypes is not None:
            if len(self.scalar_arg_dtypes) != len(kargs):
                raise TypeError(f"kernel {self.function_name!r}: {len(kargs)} arguments, but set_scalar_arg_dtypes "
                                f"named {len(self.scalar_arg_dtypes)}")
            kargs = [np.dtype(dt).type(v) if dt is not None and not isinstance(v, np.generic | np.ndarray) else v
                     for dt, v in zip(self.scalar_arg_dtypes, kargs, strict=True)]
        opts = {**self.program.job_options, **kw}
        return make_job(self.program.source, self.function_name, kargs, gsize, lsize,
                        build_options=self.program.options, **opts)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self.program.execute(self.job(*args, **kw))


class Program:
    """pyopencl's Program shape (see the module doc); `execute(job)` runs a job (default: this machine)."""

    def __init__(self, source: str, options: str | Sequence[str] = (), *,
                 execute: Callable[[ComputeJob], Any] | None = None, **job_options: Any) -> None:
        self.source = source
        self.options: list[str] = [options] if isinstance(options, str) else list(options)
        self.job_options = job_options
        self._execute = execute
        self._kernels: dict[str, Kernel] = {}

    def build(self, options: str | Sequence[str] | None = None, devices: Any = None) -> Program:
        """Options as pyopencl takes them; the build happens on the device that runs each call (cached there)."""
        if options:
            self.options += [options] if isinstance(options, str) else list(options)
        return self

    def execute(self, job: ComputeJob) -> Any:
        if self._execute is not None:
            return self._execute(job)
        return outputs_value(run_local(job))

    @property
    def kernel_names(self) -> list[str]:
        return kernel_names_in(self.source)

    def __getattr__(self, name: str) -> Kernel:
        if name.startswith("_"):
            raise AttributeError(name)
        k = self._kernels.get(name)
        if k is None:  # one object per kernel, as pyopencl keeps them (set_scalar_arg_dtypes sticks)
            k = self._kernels[name] = Kernel(self, name)
        return k
