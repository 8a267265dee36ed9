"""Algebraic intermediate representations (AIRs): the computations the prover can attest.

An AIR gives the execution trace (columns over the trace domain of n = steps rows), transition constraints
between row i and row i+1 (required on rows 0..n-2) and boundary constraints (a column equals a public value
on a given row). Constraints are written once against a small arithmetic interface so the same code evaluates
them on numpy vectors over the LDE domain (prover, numpy backend), on extension-field scalars at the
out-of-domain point (verifier) and as generated OpenCL C (prover, OpenCL backend).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import field as F


class NpOps:
    """Base-field vectors (prover, over the LDE domain)."""

    add = staticmethod(F.np_add)
    sub = staticmethod(F.np_sub)
    mul = staticmethod(F.np_mul)

    @staticmethod
    def const(v: int):
        return np.uint64(v % F.P)


class ExtOps:
    """Extension-field scalars (verifier, at the out-of-domain point)."""

    add = staticmethod(F.eadd)
    sub = staticmethod(F.esub)
    mul = staticmethod(F.emul)

    @staticmethod
    def const(v: int):
        return (v % F.P, 0)


class CodegenOps:
    """OpenCL C expressions (the prover's composition kernel is generated from the same constraint code).
    Public values arrive as C expressions (e.g. "pub[1]") so one compiled kernel serves every input."""

    @staticmethod
    def add(a: str, b: str) -> str:
        return f"gl_add({a}, {b})"

    @staticmethod
    def sub(a: str, b: str) -> str:
        return f"gl_sub({a}, {b})"

    @staticmethod
    def mul(a: str, b: str) -> str:
        return f"gl_mul({a}, {b})"

    @staticmethod
    def const(v) -> str:
        return v if isinstance(v, str) else f"{v % F.P}UL"


@dataclass(frozen=True)
class Boundary:
    column: int
    row: int  # 0 or -1 (the last row)
    name: str  # the public value it pins


@dataclass(frozen=True)
class Air:
    name: str
    description: str
    width: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    degree: int  # highest degree of a transition constraint
    n_transitions: int
    boundaries: tuple[Boundary, ...]
    _trace: Callable[[dict[str, int], int], np.ndarray]
    _transition: Callable[[list[Any], list[Any], dict[str, Any], Any], list[Any]]

    @property
    def public_names(self) -> tuple[str, ...]:
        return self.inputs + self.outputs

    @property
    def chunks(self) -> int:
        """Composition polynomial pieces of degree < n: the quotient has degree < (degree - 1) * n."""
        return max(1, self.degree - 1)

    def trace(self, inputs: dict[str, int], n: int) -> np.ndarray:
        """(width, n) trace columns."""
        return self._trace(inputs, n)

    def transition(self, cur: list[Any], nxt: list[Any], public: dict[str, Any], ops: Any) -> list[Any]:
        return self._transition(cur, nxt, public, ops)

    def public_values(self, inputs: dict[str, int], trace: np.ndarray) -> dict[str, int]:
        """Inputs plus the outputs read off the trace's boundary rows."""
        out = dict(inputs)
        for b in self.boundaries:
            if b.name in self.outputs:
                out[b.name] = int(trace[b.column, b.row])
        return out


# ---------------------------------------------------------------- Fibonacci-style recurrence


def _fib_trace(inputs: dict[str, int], n: int) -> np.ndarray:
    a, b = inputs["a"] % F.P, inputs["b"] % F.P
    xs, ys = [0] * n, [0] * n
    for i in range(n):
        xs[i], ys[i] = a, b
        a, b = b, (a + b) % F.P
    return np.array([xs, ys], dtype=np.uint64)


def _fib_transition(cur, nxt, public, ops):
    return [ops.sub(nxt[0], cur[1]), ops.sub(nxt[1], ops.add(cur[0], cur[1]))]


FIBONACCI = Air(
    name="fibonacci",
    description="row i = (F_i, F_{i+1}) with F_0 = a, F_1 = b, F_{k+2} = F_k + F_{k+1} (mod p); "
    "out = F_steps (column 1 of the last row)",
    width=2,
    inputs=("a", "b"),
    outputs=("out",),
    degree=1,
    n_transitions=2,
    boundaries=(Boundary(0, 0, "a"), Boundary(1, 0, "b"), Boundary(1, -1, "out")),
    _trace=_fib_trace,
    _transition=_fib_transition,
)

# ---------------------------------------------------------------- iterated cubic map (VDF-like)


def _cubic_trace(inputs: dict[str, int], n: int) -> np.ndarray:
    x, c = inputs["x0"] % F.P, inputs["c"] % F.P
    p = F.P
    xs = [0] * n
    for i in range(n):
        xs[i] = x
        x = (x * x % p * x + c) % p
    return np.array([xs], dtype=np.uint64)


def _cubic_transition(cur, nxt, public, ops):
    x = cur[0]
    return [ops.sub(nxt[0], ops.add(ops.mul(ops.mul(x, x), x), ops.const(public["c"])))]


CUBIC = Air(
    name="cubic",
    description="x_{i+1} = x_i^3 + c (mod p) from x_0 = x0; out = x_{steps-1}, i.e. steps - 1 applications",
    width=1,
    inputs=("x0", "c"),
    outputs=("out",),
    degree=3,
    n_transitions=1,
    boundaries=(Boundary(0, 0, "x0"), Boundary(0, -1, "out")),
    _trace=_cubic_trace,
    _transition=_cubic_transition,
)

AIRS: dict[str, Air] = {a.name: a for a in (FIBONACCI, CUBIC)}


def get(name: str) -> Air:
    try:
        return AIRS[name]
    except KeyError:
        raise ValueError(f"unknown AIR {name!r}; known: {', '.join(sorted(AIRS))}") from None
