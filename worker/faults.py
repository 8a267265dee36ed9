"""Fault injection for tests and chaos: an explicit hook object, never an environment variable.

Production code asks `current()` what to do wrong, and by default the answer is nothing (`Faults()`).
A test installs faults in its own process (`installed(...)`, a context manager); a test or chaos run that
needs a misbehaving *node process* starts it through `python -m scheduler.devtools.faulty_node` (see
`scheduler.devtools.localmesh.NodeProc.faults`), which installs the hook and then runs `mesh-node`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Faults:
    corrupt_render: bool = False  # render.frame: every channel XOR 0x80, depth doubled
    corrupt_proofs: bool = False  # zk.prove: one bit of every proof flipped
    corrupt_compute: tuple[str, ...] = ()  # compute.opencl: the lowest output bit flipped for these kernels ("*": all)

    @property
    def any(self) -> bool:
        return self != Faults()

    def corrupts_compute(self, kernels: Iterable[str]) -> bool:
        names = set(self.corrupt_compute)
        return "*" in names or bool(names & set(kernels))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Faults:
        d = json.loads(text)
        return cls(corrupt_render=bool(d.get("corrupt_render")), corrupt_proofs=bool(d.get("corrupt_proofs")),
                   corrupt_compute=tuple(str(k) for k in d.get("corrupt_compute", ())))


_current = Faults()


def current() -> Faults:
    return _current


def install(faults: Faults) -> None:
    """Make this process misbehave as `faults` says (tests, chaos and `faulty_node` only)."""
    global _current
    _current = faults


@contextmanager
def installed(faults: Faults) -> Iterator[Faults]:
    before = current()
    install(faults)
    try:
        yield faults
    finally:
        install(before)


__all__ = ["Faults", "current", "install", "installed"]
