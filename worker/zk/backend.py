"""Prover backends: the same operations on numpy (CPU reference, no device) or OpenCL.

The prover is written against `Backend`; everything else it does (trace generation, constraint evaluation,
transcript) is host numpy/Python. Each backend adds up wall time per operation in `timings` so the node can
export kernel time by kernel.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from . import composition as CP
from . import field as F
from . import fri_math as FM
from . import merkle as MK
from . import ntt as NT
from . import poseidon as PS


@dataclass
class Backend:
    """Numpy implementation; subclasses override the heavy operations."""

    name: str = "numpy"
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per operation
    cpu_timings: dict[str, float] = field(default_factory=dict)  # process CPU seconds (device threads count)

    @contextmanager
    def timed(self, op: str):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.timings[op] = self.timings.get(op, 0.0) + time.perf_counter() - t0
            self.cpu_timings[op] = self.cpu_timings.get(op, 0.0) + time.process_time() - c0

    def ntt(self, a: np.ndarray) -> np.ndarray:
        with self.timed("ntt"):
            return NT.ntt(a)

    def intt(self, a: np.ndarray) -> np.ndarray:
        with self.timed("ntt"):
            return NT.intt(a)

    def coset_intt(self, values: np.ndarray, shift: int) -> np.ndarray:
        with self.timed("ntt"):
            return NT.coset_intt(values, shift)

    def lde(self, coeffs: np.ndarray, blowup: int, shift: int) -> np.ndarray:
        with self.timed("lde"):
            return NT.lde(coeffs, blowup, shift)

    def batch_inv(self, a: np.ndarray) -> np.ndarray:
        """Element-wise inverses (ZeroDivisionError on a zero)."""
        with self.timed("batch_inv"):
            return F.batch_inv_np(a)

    def composition(self, air, public: dict[str, int], lde: np.ndarray, n: int, blowup: int, last: int,
                    alphas: list[F.Ext]) -> np.ndarray:
        """The composition polynomial on the LDE domain, (2, n * blowup); transitions hold below row `last`."""
        with self.timed("constraints"):
            return CP.composition_np(air, public, lde, n, blowup, last, alphas, self.batch_inv, NT.lde)

    def hash_rows(self, rows: np.ndarray) -> np.ndarray:
        """Poseidon sponge digest of each row (the statements' hash; commitments use BLAKE2s)."""
        with self.timed("poseidon"):
            return PS.hash_rows_np(rows)

    def permute(self, states: np.ndarray) -> np.ndarray:
        """Poseidon on (12, n) lane-major states."""
        with self.timed("poseidon"):
            return PS.permute_np(states)

    def commit(self, cols: np.ndarray, salt: np.ndarray | None = None) -> MK.MerkleTree:
        """Merkle tree over the rows of (c, n) columns, one leaf per arity-4 coset (salted: zero knowledge).
        BLAKE2s on the host for every backend (merkle.py says why)."""
        with self.timed("merkle"):
            rows = MK.leaf_rows(cols, salt=salt)
            return MK.MerkleTree(levels=MK.build_levels(MK.hash_leaves(rows)), leaves=rows)

    def fold4(self, values: np.ndarray, beta: F.Ext, shift: int) -> np.ndarray:
        with self.timed("fri_fold"):
            return FM.fold4_np(values, beta, shift)

    def deep(self, trace: np.ndarray, comp: np.ndarray, coeffs: FM.DeepCoeffs, shift: int) -> np.ndarray:
        with self.timed("deep"):
            return FM.deep_np(trace, comp, coeffs, shift)
