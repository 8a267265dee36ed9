"""Fiat-Shamir transcript: a Poseidon duplex sponge over Goldilocks (the same permutation the commitments
use, so one primitive carries all of the proof's hashing).

Absorbed elements are buffered; a challenge first absorbs the buffer (8 elements per permutation, overwriting
the rate lanes), then hands out rate lanes 0..7 one at a time, permuting again when they run out. Bytes are
absorbed as their length followed by little-endian 7-byte chunks, so each chunk is below p.
"""

from __future__ import annotations

from . import field as F
from . import poseidon as PS


class Transcript:
    def __init__(self, label: bytes):
        self._state = [0] * PS.WIDTH
        self._in: list[int] = []
        self._out: list[int] = []
        self.absorb_bytes(label)

    def absorb(self, elems) -> None:
        for e in elems:
            e = int(e)
            if not 0 <= e < F.P:
                raise ValueError(f"transcript: {e} is not a canonical field element")
            self._in.append(e)
        self._out.clear()

    def absorb_bytes(self, data: bytes) -> None:
        self.absorb([len(data)] + [int.from_bytes(data[i : i + 7], "little") for i in range(0, len(data), 7)])

    def _duplex(self) -> None:
        if not self._in:
            self._state = PS.permute(self._state)
        for start in range(0, len(self._in), PS.RATE):
            chunk = self._in[start : start + PS.RATE]
            self._state[: len(chunk)] = chunk
            self._state = PS.permute(self._state)
        self._in.clear()
        self._out = list(self._state[: PS.RATE])

    def challenge(self) -> int:
        if self._in or not self._out:
            self._duplex()
        return self._out.pop(0)

    def challenge_ext(self) -> F.Ext:
        return (self.challenge(), self.challenge())

    def challenge_indices(self, count: int, bound: int) -> list[int]:
        """`count` indices below `bound` (a power of two): low bits of challenges, bias < 2^-32."""
        if bound & (bound - 1):
            raise ValueError("index bound must be a power of two")
        return [self.challenge() & (bound - 1) for _ in range(count)]
