"""Tiles on the wire: lossless RGBA, quantized depth, each a delta against the tile's previous frame, LZ4.

A render session sends the same tile of every frame down one stream, so both ends keep the last tile they
exchanged and the next one travels as its XOR against it (unchanged pixels become zeros, which LZ4 squeezes
to almost nothing; an AR scene's empty background never changes). A moving camera shifts every pixel and then a
delta is larger than the tile itself: the encoder sends whichever compresses smaller on a sample of the tile (a key
tile, no delta, also first and after a change of size). The colour is exact; depth is quantized to IEEE half floats (relative error
at most 2**-11, +inf stays +inf: no hit), which halves it before compression.

Payload: LZ4 block (fast mode, `LZ4_ACCELERATION`) of `rgba (h*w*4 bytes) || depth as <f2 (h*w*2 bytes)`,
each XOR the previous tile's when `key` is false. The header `{"key", "n"}` travels beside it (the session's
frame message); `n` is the raw size, which the decoder checks against the tile before decompressing
(`lz4.block.decompress` with a known size: a hostile payload cannot expand past it).

Encoder and decoder are plain objects (no I/O); one per tile of a session at each end. Both must see every
tile in the same order: a decoder that was not fed a tile (or was fed one out of order) refuses the next delta
(`CodecError`) instead of producing a wrong image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lz4.block
import numpy as np

BYTES_PER_PIXEL = 6  # RGBA8 + float16 depth, before compression
MAX_PIXELS = 4096 * 4096
SAMPLE_BLOCK, SAMPLE_EVERY = 4096, 8  # key or delta is decided on every 8th 4 KiB block
MAX_SKIP = 3  # after the delta lost clearly, up to this many tiles go as key tiles without trying it again
CLEAR_LOSS = 1.25  # the delta's sample compressed this much larger than the tile's: a moving camera
# LZ4's fast mode: measured on a 320x240 orbit of the spheres example (2-core VM, compressing after an 8 ms idle
# gap as a worker does), acceleration 1 / 4 / 8 took 661-714 / 558-569 / 514-525 us per tile for 65.2 / 70.4 /
# 77.7 KB. 4 takes ~0.12 ms off every tile for 8 % more bytes (~40 us more wire time at 1 Gbit/s).
LZ4_ACCELERATION = 4


def _sample(data: np.ndarray) -> np.ndarray:
    """Every SAMPLE_EVERY-th SAMPLE_BLOCK of `data` (a strided view), or all of it when it is small."""
    n = data.size // SAMPLE_BLOCK
    if n < SAMPLE_EVERY:
        return data
    return data[:n * SAMPLE_BLOCK].reshape(n, SAMPLE_BLOCK)[::SAMPLE_EVERY]


def _compress(data: Any) -> bytes:
    return lz4.block.compress(data, mode="fast", acceleration=LZ4_ACCELERATION, store_size=False)


def _lz4_size(data: np.ndarray) -> int:
    return len(_compress(np.ascontiguousarray(data)))


class CodecError(ValueError):
    """A tile payload that does not decode (wrong size, corrupt, a delta without its base)."""


@dataclass(frozen=True)
class EncodedTile:
    key: bool
    seq: int  # tiles encoded so far by this encoder (the decoder checks it follows the one it holds)
    raw_size: int
    payload: bytes

    def header(self) -> dict[str, Any]:
        return {"key": self.key, "seq": self.seq, "n": self.raw_size}


def quantize_depth(depth: np.ndarray) -> np.ndarray:
    """float32 metres to IEEE half (+inf stays +inf; beyond 65504 m is +inf too)."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(depth, np.float32).astype("<f2")


_HALF_MIN_BITS, _INF_BITS = 0x38800000, 0x7F800000  # float32 bits of 2**-14 (the least normal half) and of +inf
_REBIAS = np.uint32((0xFFF - (112 << 23)) & 0xFFFFFFFF)  # round-half bias, exponent 127 -> 15 (mod 2**32)


def _half_into(depth: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> bool:
    """`quantize_depth` written into `out` (<u2, bit-exact: round to nearest even, past 65504 and +inf -> +inf)
    with integer arithmetic, which is faster than numpy's conversion, when every value is at least 2**-14 or
    +inf (a depth: metres, +inf for no hit); False (nothing written) otherwise: numpy then converts."""
    b = depth.reshape(-1).view(np.uint32)
    if b.size == 0 or b.min() < _HALF_MIN_BITS or b.max() > _INF_BITS:  # zero, tiny, negative or NaN
        return False
    np.right_shift(b, 13, out=tmp)
    np.bitwise_and(tmp, 1, out=tmp)  # round half to even: the bit that stays decides
    np.add(tmp, b, out=tmp)
    np.add(tmp, _REBIAS, out=tmp)
    np.right_shift(tmp, 13, out=tmp)
    np.minimum(tmp, 0x7C00, out=out, casting="unsafe")  # overflow and +inf -> +inf
    return True


def raw_bytes(rgba: np.ndarray, depth: np.ndarray, out: np.ndarray | None = None,
              tmp: np.ndarray | None = None) -> np.ndarray:
    """The tile as one uint8 array: RGBA rows then half-float depth rows (`quantize_depth`), written into `out`
    when it has that size (else a new array); `tmp` (uint32, one per depth value) lets the depth take the
    integer conversion."""
    c = np.ascontiguousarray(rgba, np.uint8).reshape(-1)
    d = np.ascontiguousarray(depth, np.float32).reshape(-1)
    n = c.size + 2 * d.size
    buf = out if out is not None and out.size == n else np.empty(n, np.uint8)
    buf[:c.size] = c
    if tmp is not None and tmp.size == d.size and _half_into(d, buf[c.size:].view("<u2"), tmp):
        return buf
    with np.errstate(over="ignore"):
        buf[c.size:].view("<f2")[:] = d  # the cast of quantize_depth, without its intermediate array
    return buf


class TileEncoder:
    """One tile's sender side. It keeps the previous tile (the delta's base) only while the next tile will try
    the delta, in one of two buffers it reuses, so a tile costs no allocation beyond its payload."""

    def __init__(self) -> None:
        self._prev: np.ndarray | None = None
        self._spare: np.ndarray | None = None
        self._xor: np.ndarray | None = None
        self._tmp: np.ndarray | None = None
        self._seq = 0
        self._skip = 0  # tiles still to send as key tiles without trying the delta
        self._backoff = 0  # the last skip (doubles while the delta keeps losing clearly, up to MAX_SKIP)

    def encode(self, rgba: np.ndarray, depth: np.ndarray) -> EncodedTile:
        """The tile as a delta or a key tile, whichever compresses smaller on a sample of 1 block in
        SAMPLE_EVERY (so one full compression per tile: a moving camera shifts every pixel and then the
        delta is larger than the tile itself; a still one sends almost nothing). The delta is computed in
        full only when it is sent. While the camera moves (the delta's sample CLEAR_LOSS larger) the next 1,
        2, then MAX_SKIP tiles go as key tiles without the trial: a camera that stops is sending deltas again
        within MAX_SKIP + 1 tiles."""
        if self._tmp is None or self._tmp.size != np.size(depth):
            self._tmp = np.empty(np.size(depth), np.uint32)
        raw, self._spare = raw_bytes(rgba, depth, out=self._spare, tmp=self._tmp), None
        return self._encode(raw, owned=True)

    def encode_raw(self, tile: Any) -> EncodedTile:
        """`encode` of a tile already in the raw layout (`raw_bytes`: RGBA8 rows, then half-float depth rows),
        e.g. a runner's arena that the kernel wrote so (`render_tile_view(half_depth=True)`): compressed from
        `tile` itself, and copied only when the next tile tries the delta against it. `tile`: any buffer; the
        encoder keeps no view of it."""
        return self._encode(np.frombuffer(tile, np.uint8), owned=False)

    def _encode(self, raw: np.ndarray, *, owned: bool) -> EncodedTile:
        prev, self._prev = self._prev, None
        self._seq += 1
        payload: Any = raw
        key = True
        if self._skip:
            self._skip -= 1
        elif prev is not None and prev.shape == raw.shape:
            sample = _sample(raw)
            xs = np.bitwise_xor(sample, _sample(prev))
            delta_size, key_size = _lz4_size(xs), _lz4_size(sample)
            if delta_size > CLEAR_LOSS * key_size:
                self._backoff = self._skip = min(MAX_SKIP, 2 * self._backoff or 1)
            else:
                self._backoff = 0
            if delta_size < key_size:
                key = False
                if sample is raw:  # a small tile: the sample was all of it
                    payload = xs
                else:
                    if self._xor is None or self._xor.shape != raw.shape:
                        self._xor = np.empty_like(raw)
                    payload = np.bitwise_xor(raw, prev, out=self._xor)
        data = _compress(payload)
        if prev is not None:
            self._spare = prev  # free for the next tile
        if self._skip:  # the next tile goes as a key tile without the trial: it needs no base
            if owned:
                self._spare = raw
        elif owned:
            self._prev = raw
        else:
            spare, self._spare = self._spare, None
            self._prev = spare if spare is not None and spare.shape == raw.shape else np.empty_like(raw)
            np.copyto(self._prev, raw)
        return EncodedTile(key, self._seq, int(raw.size), data)


class TileDecoder:
    """One tile's receiver side: `decode(header, payload, w, h)` -> (rgba uint8 (h, w, 4), depth float32 (h, w))."""

    def __init__(self) -> None:
        self._prev: np.ndarray | None = None
        self._seq = 0

    def decode(self, header: Any, payload: bytes, w: int, h: int, rgba_out: np.ndarray | None = None,
               depth_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rgba, depth) of the tile; with `rgba_out` (uint8 (h, w, 4)) and `depth_out` (float32 (h, w)), e.g.
        the tile's place in the frame, written there (one pass each, no intermediate arrays) and returned."""
        if not isinstance(header, dict):
            raise CodecError("tile header is not a map")
        key, seq, n = header.get("key"), header.get("seq"), header.get("n")
        if not isinstance(key, bool) or isinstance(seq, bool) or not isinstance(seq, int):
            raise CodecError("tile header needs key (bool) and seq (int)")
        npx = w * h
        if not 0 < npx <= MAX_PIXELS or n != npx * BYTES_PER_PIXEL:
            raise CodecError(f"tile of {w}x{h} has {npx * BYTES_PER_PIXEL} raw bytes, header says {n!r}")
        prev = self._prev
        if not key and (prev is None or prev.size != n or seq != self._seq + 1):
            raise CodecError(f"delta tile {seq} does not follow the tile held ({self._seq})")
        try:
            body = np.frombuffer(lz4.block.decompress(payload, uncompressed_size=n), np.uint8)
        except (lz4.block.LZ4BlockError, ValueError) as e:
            raise CodecError(f"corrupt tile payload: {e}") from None
        if body.size != n:
            raise CodecError(f"tile payload decompressed to {body.size} bytes, not {n}")
        raw = body if key or prev is None else np.bitwise_xor(body, prev)
        self._prev, self._seq = raw, seq
        rgba = raw[:npx * 4].reshape(h, w, 4)
        half = raw[npx * 4:].view("<f2").reshape(h, w)
        if rgba_out is None or depth_out is None:
            return rgba, half_to_float32(half, np.empty((h, w), np.float32))
        rgba_out[...] = rgba
        return rgba_out, half_to_float32(half, depth_out)


_HALF_NORMAL_MIN, _HALF_INF = 0x0400, 0x7C00  # the least positive normal half, and +inf, as bits
_EXP_REBIAS = np.uint32((127 - 15) << 23)  # half exponent -> float32 exponent
_INF_NAN_EXTRA = np.uint32((255 - 143) << 23)  # half exponent 31 (inf, NaN) -> float32 exponent 255


def half_to_float32(half: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`half` (<f2) widened into `out` (float32, same shape), exactly; with integer arithmetic (51 us against
    numpy's 105 us for a 320x240 depth here) when every value is a positive normal half, +inf or NaN (a decoded
    depth: metres, +inf for no hit), else numpy converts."""
    u = half.reshape(-1).view(np.uint16)
    bits = out.reshape(-1).view(np.uint32) if out.flags.c_contiguous else None
    top = int(u.max()) if u.size else 0
    if bits is None or u.size == 0 or u.min() < _HALF_NORMAL_MIN or top >= 0x8000:  # zero, tiny or negative
        np.copyto(out, half, casting="same_kind")
        return out
    np.left_shift(u, 13, out=bits, dtype=np.uint32)
    np.add(bits, _EXP_REBIAS, out=bits)
    if top >= _HALF_INF:  # +inf (or NaN): their exponent goes to the top
        np.add(bits, _INF_NAN_EXTRA, out=bits, where=u >= _HALF_INF)
    return out


def depth_tolerance(depth: np.ndarray) -> np.ndarray:
    """The most a decoded depth can differ from the rendered one (half-float rounding), per pixel."""
    return np.abs(np.nan_to_num(depth, posinf=0.0)) * 2.0 ** -11


__all__ = ["BYTES_PER_PIXEL", "MAX_SKIP", "CodecError", "EncodedTile", "TileDecoder", "TileEncoder", "depth_tolerance",
           "quantize_depth"]
