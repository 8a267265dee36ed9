"""Kernel parameter kinds a runner can bind, and the ones it refuses before anything is transferred.

A compute job binds buffers (to `__global`/`__constant` pointers), scalars and `__local` scratch. OpenCL also
has images, samplers, pipes, device queues and events: bound to a plain buffer or a few bytes, a kernel that
reads an `image2d_t` or a `sampler_t` dereferences garbage (on PoCL, a SIGSEGV of the process that runs it).
They are refused twice, both times before any input moves:

- `unsupported_params(source)`: a scan of the kernel signatures in the source (at submit, on the coordinator
  and again on the worker: no compiler needed; a type hidden behind a macro is caught by the next check);
- `unsupported_kind(type_name)`: the runtime's own description of each parameter, after the build (the
  runner's argument check).
"""

from __future__ import annotations

import re

from worker.compute.spec import strip_comments

_KINDS = (
    (re.compile(r"^(?:__)?(?:read_only|write_only|read_write)?\s*image\w*_t$|^image\w*_t$"), "an image"),
    (re.compile(r"^sampler_t$"), "a sampler"),
    (re.compile(r"^pipe\b"), "a pipe"),
    (re.compile(r"^queue_t$"), "a device queue"),
    (re.compile(r"^(?:clk_event_t|event_t|reserve_id_t)$"), "an event"),
)
_TYPE_WORD = re.compile(r"\b(image[123]d\w*_t|sampler_t|pipe|queue_t|clk_event_t|event_t|reserve_id_t)\b")
_KERNEL = re.compile(r"\b(?:__kernel|kernel)\b(?:\s*__attribute__\s*\(\(.*?\)\))*\s*void\s+"
                     r"(?:__attribute__\s*\(\(.*?\)\)\s*)?(\w+)\s*\(([^)]*)\)", re.S)
SUPPORTED = "__global/__constant buffers, scalars (and vectors) and __local scratch"


def unsupported_kind(type_name: str | None) -> str | None:
    """'an image', 'a sampler', ... for a parameter type a runner cannot bind; None when it can."""
    t = " ".join((type_name or "").replace("*", " ").split())
    for pat, what in _KINDS:
        if pat.search(t):
            return what
    m = _TYPE_WORD.search(t)
    if m:
        return unsupported_kind(m.group(1))
    return None


def unsupported_params(source: str) -> list[tuple[str, int, str, str]]:
    """(kernel, parameter index, declaration, what) for every parameter of unsupported kind in `source`."""
    out = []
    for m in _KERNEL.finditer(strip_comments(source)):
        name, params = m.group(1), m.group(2)
        for i, decl in enumerate(p.strip() for p in params.split(",")):
            w = _TYPE_WORD.search(decl)
            if w:
                out.append((name, i, " ".join(decl.split()), unsupported_kind(w.group(1)) or "unsupported"))
    return out


def describe(kernel: str, index: int, decl: str, what: str) -> str:
    return (f"kernel {kernel!r} parameter {index} '{decl}' is {what}: runners bind only {SUPPORTED} "
            "(refused before any transfer)")
