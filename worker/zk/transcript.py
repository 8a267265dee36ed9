"""Fiat-Shamir transcript on BLAKE2s, with proof-of-work grinding bound into it.

absorb() appends canonical field elements (8 bytes little-endian each) and absorb_bytes() a length-prefixed
byte string to a pending buffer. The next challenge first folds the buffer into the state,
    state = BLAKE2s(state || pending, person="gmzk-fs"),
then squeezes blocks BLAKE2s(state || counter, person="gmzk-ch") (counter from 0, 8 bytes LE), each giving two
challenges: 16-byte little-endian integers reduced mod p (bias < 2^-64). The initial state is
BLAKE2s(label, person="gmzk-fs").

Grinding: at the point the protocol says, the prover looks for a nonce (< p) with
    BLAKE2s(state || nonce as 8 bytes LE, person="gmzk-pw") starting with `bits` zero bits (big-endian),
and the nonce is absorbed like any element, so every later challenge (the FRI query positions) depends on
it: a forger must redo 2^bits hashes per attempt.
"""

from __future__ import annotations

import hashlib
from itertools import count

from . import field as F

_FS, _CH, _PW = b"gmzk-fs", b"gmzk-ch", b"gmzk-pw"


def _h(data: bytes, person: bytes) -> bytes:
    return hashlib.blake2s(data, person=person).digest()


class Transcript:
    def __init__(self, label: bytes):
        self._state = _h(label, _FS)
        self._pending = bytearray()
        self._counter = 0
        self._out: list[int] = []

    def absorb(self, elems) -> None:
        for e in elems:
            e = int(e)
            if not 0 <= e < F.P:
                raise ValueError(f"transcript: {e} is not a canonical field element")
            self._pending += e.to_bytes(8, "little")
        self._out.clear()

    def absorb_bytes(self, data: bytes) -> None:
        self._pending += len(data).to_bytes(8, "little") + bytes(data)
        self._out.clear()

    def _flush(self) -> None:
        if self._pending:
            self._state = _h(self._state + bytes(self._pending), _FS)
            self._pending.clear()
            self._counter = 0

    def challenge(self) -> int:
        if self._pending or not self._out:
            self._flush()
            block = _h(self._state + self._counter.to_bytes(8, "little"), _CH)
            self._counter += 1
            self._out = [int.from_bytes(block[:16], "little") % F.P, int.from_bytes(block[16:], "little") % F.P]
        return self._out.pop(0)

    def challenge_ext(self) -> F.Ext:
        return (self.challenge(), self.challenge())

    def challenge_indices(self, count: int, bound: int) -> list[int]:
        """`count` indices below `bound` (a power of two): low bits of challenges."""
        if bound & (bound - 1):
            raise ValueError("index bound must be a power of two")
        return [self.challenge() & (bound - 1) for _ in range(count)]

    # ------------------------------------------------------------ proof of work
    def _pow_prefix(self):
        self._flush()
        return hashlib.blake2s(self._state, person=_PW)

    def grind(self, bits: int) -> int:
        """The prover's search: the least nonce meeting the target (expected 2^bits hashes)."""
        prefix = self._pow_prefix()
        shift = 64 - bits
        for nonce in count():
            h = prefix.copy()
            h.update(nonce.to_bytes(8, "little"))
            if bits == 0 or int.from_bytes(h.digest()[:8], "big") >> shift == 0:
                return nonce
        raise AssertionError("unreachable")

    def check_pow(self, nonce: int, bits: int) -> bool:
        h = self._pow_prefix()  # flushes the pending input exactly as grind() does, whatever the outcome
        if not 0 <= nonce < F.P:
            return False
        if bits == 0:
            return True
        h.update(nonce.to_bytes(8, "little"))
        return int.from_bytes(h.digest()[:8], "big") >> (64 - bits) == 0
