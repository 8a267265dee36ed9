"""Algebraic intermediate representations (AIRs): the computations the prover can attest.

An AIR gives the execution trace (columns over the first `rows` rows of the trace domain), transition
constraints between row i and row i+1 (required on every computation row but the last), boundary
constraints (a column equals a public value or a constant on a given row) and optional periodic columns
(fixed values repeating every P rows, e.g. round constants). Constraints are written once against a small
arithmetic interface so the same code evaluates them on numpy vectors over the LDE domain (prover, numpy
backend), on extension-field scalars at the out-of-domain point (verifier) and as generated OpenCL C
(prover, OpenCL backend).

An AIR with a private witness (`zk=True`) gets zero-knowledge treatment from the prover (random trace rows
after the computation, masked composition chunks, a FRI randomizer and salted Merkle leaves; see stark.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import field as F
from . import poseidon as PS


class NpOps:
    """Base-field vectors (prover, over the LDE domain)."""

    add = staticmethod(F.np_add)
    sub = staticmethod(F.np_sub)
    mul = staticmethod(F.np_mul)

    @staticmethod
    def const(v: int):
        return np.uint64(v % F.P)

    @staticmethod
    def mds(u: list[Any]) -> list[Any]:
        out = PS.mds_np(np.stack([np.broadcast_to(np.asarray(x, np.uint64), np.shape(u[0])) for x in u]))
        return list(out)


class ExtOps:
    """Extension-field scalars (verifier, at the out-of-domain point)."""

    add = staticmethod(F.eadd)
    sub = staticmethod(F.esub)
    mul = staticmethod(F.emul)

    @staticmethod
    def const(v: int):
        return (v % F.P, 0)

    @staticmethod
    def mds(u: list[F.Ext]) -> list[F.Ext]:
        m = PS.mds_rows()
        return [(sum(c * x[0] for c, x in zip(row, u, strict=True)) % F.P,
                 sum(c * x[1] for c, x in zip(row, u, strict=True)) % F.P) for row in m]


class CodegenOps:
    """OpenCL C statements (the prover's composition kernel is generated from the same constraint code). Each
    operation appends `ulong tK = ...;` to `lines` and returns tK, so shared subexpressions (an S-box feeding
    twelve MDS rows) are computed once. Public values arrive as C expressions (e.g. "pub[1]") so one compiled
    kernel serves every input."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _emit(self, expr: str) -> str:
        name = f"t{len(self.lines)}"
        self.lines.append(f"ulong {name} = {expr};")
        return name

    def add(self, a: str, b: str) -> str:
        return self._emit(f"gl_add({a}, {b})")

    def sub(self, a: str, b: str) -> str:
        return self._emit(f"gl_sub({a}, {b})")

    def mul(self, a: str, b: str) -> str:
        return self._emit(f"gl_mul({a}, {b})")

    @staticmethod
    def const(v) -> str:
        return v if isinstance(v, str) else f"{v % F.P}UL"

    def mds(self, u: list[str]) -> list[str]:
        out = []
        for row in PS.mds_rows():
            terms = [self._emit(f"gl_mul({c}UL, {x})") for c, x in zip(row, u, strict=True) if c]
            acc = terms[0]
            for t in terms[1:]:
                acc = self.add(acc, t)
            out.append(acc)
        return out


@dataclass(frozen=True)
class Boundary:
    column: int
    group: int  # boundaries of one group share a row (Air.rows gives each group's row)
    value: str | int  # the public value it pins (by name), or a constant


@dataclass(frozen=True)
class Air:
    name: str
    description: str
    width: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    trace_degree: int  # highest degree of a transition constraint in the trace cells
    n_transitions: int
    boundaries: tuple[Boundary, ...]
    _trace: Callable[[dict[str, int], Any, int], np.ndarray]
    _transition: Callable[[list[Any], list[Any], list[Any], dict[str, Any], Any], list[Any]]
    _rows: Callable[[dict[str, int], int], tuple[int, ...]]  # (public, last computation row) -> row per group
    periodic: tuple[tuple[int, ...], ...] = ()  # columns of a common power-of-two period
    periodic_degree: int = 0  # most periodic factors in one term of a transition constraint
    zk: bool = False  # has a private witness: the prover blinds the trace and masks what it opens
    _min_rows: Callable[[dict[str, int]], int] = field(default=lambda public: 2)
    _witness: Callable[[Any, dict[str, int]], Any] | None = None  # validates a private witness

    @property
    def public_names(self) -> tuple[str, ...]:
        return self.inputs + self.outputs

    @property
    def period(self) -> int:
        return len(self.periodic[0]) if self.periodic else 1

    def numerator_degree(self, n: int) -> int:
        """A bound on the degree of a transition constraint evaluated on the trace polynomials (degree < n)
        and the periodic columns (as polynomials in x, degree <= n - n/P)."""
        return self.trace_degree * (n - 1) + self.periodic_degree * (n - n // self.period)

    def min_rows(self, public: dict[str, int]) -> int:
        return self._min_rows(public)

    def rows(self, public: dict[str, int], last: int) -> tuple[int, ...]:
        return self._rows(public, last)

    def check_witness(self, witness: Any, public: dict[str, int]) -> Any:
        if self._witness is None:
            if witness is not None:
                raise ValueError(f"AIR {self.name!r} takes no private witness")
            return None
        return self._witness(witness, public)

    def trace(self, inputs: dict[str, int], witness: Any, rows: int) -> np.ndarray:
        """(width, rows) computation rows."""
        return self._trace(inputs, witness, rows)

    def transition(self, cur: list[Any], nxt: list[Any], per: list[Any], public: dict[str, Any], ops: Any) -> list[Any]:
        return self._transition(cur, nxt, per, public, ops)

    def boundary_values(self, public: dict[str, int]) -> list[int]:
        return [public[b.value] if isinstance(b.value, str) else b.value % F.P for b in self.boundaries]

    def public_values(self, inputs: dict[str, int], trace: np.ndarray) -> dict[str, int]:
        """Inputs plus the outputs read off the trace's boundary rows (trace: the computation rows)."""
        out = dict(inputs)
        rows = self.rows(inputs, trace.shape[1] - 1)
        for b in self.boundaries:
            if b.value in self.outputs:
                out[str(b.value)] = int(trace[b.column, rows[b.group]])
        return out


def _first_last(public: dict[str, int], last: int) -> tuple[int, ...]:
    return (0, last)


# ---------------------------------------------------------------- Fibonacci-style recurrence


def _fib_trace(inputs: dict[str, int], witness: Any, n: int) -> np.ndarray:
    a, b = inputs["a"] % F.P, inputs["b"] % F.P
    xs, ys = [0] * n, [0] * n
    for i in range(n):
        xs[i], ys[i] = a, b
        a, b = b, (a + b) % F.P
    return np.array([xs, ys], dtype=np.uint64)


def _fib_transition(cur, nxt, per, public, ops):
    return [ops.sub(nxt[0], cur[1]), ops.sub(nxt[1], ops.add(cur[0], cur[1]))]


FIBONACCI = Air(
    name="fibonacci",
    description="row i = (F_i, F_{i+1}) with F_0 = a, F_1 = b, F_{k+2} = F_k + F_{k+1} (mod p); "
    "out = F_steps (column 1 of the last row)",
    width=2,
    inputs=("a", "b"),
    outputs=("out",),
    trace_degree=1,
    n_transitions=2,
    boundaries=(Boundary(0, 0, "a"), Boundary(1, 0, "b"), Boundary(1, 1, "out")),
    _trace=_fib_trace,
    _transition=_fib_transition,
    _rows=_first_last,
)

# ---------------------------------------------------------------- iterated cubic map (VDF-like)


def _cubic_trace(inputs: dict[str, int], witness: Any, n: int) -> np.ndarray:
    x, c = inputs["x0"] % F.P, inputs["c"] % F.P
    p = F.P
    xs = [0] * n
    for i in range(n):
        xs[i] = x
        x = (x * x % p * x + c) % p
    return np.array([xs], dtype=np.uint64)


def _cubic_transition(cur, nxt, per, public, ops):
    x = cur[0]
    return [ops.sub(nxt[0], ops.add(ops.mul(ops.mul(x, x), x), ops.const(public["c"])))]


CUBIC = Air(
    name="cubic",
    description="x_{i+1} = x_i^3 + c (mod p) from x_0 = x0; out = x_{steps-1}, i.e. steps - 1 applications",
    width=1,
    inputs=("x0", "c"),
    outputs=("out",),
    trace_degree=3,
    n_transitions=1,
    boundaries=(Boundary(0, 0, "x0"), Boundary(0, 1, "out")),
    _trace=_cubic_trace,
    _transition=_cubic_transition,
    _rows=_first_last,
)
