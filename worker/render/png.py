"""A minimal PNG writer/reader for 8-bit RGBA frames (zlib + struct), so frames need no imaging library."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(rgba: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of an (h, w, 4) uint8 image (straight alpha: convert frames with compositing.straight_alpha). Rows use the Up filter, which suits renders."""
    a = np.asarray(rgba)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 4 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"encode_png: expected a non-empty (h, w, 4) uint8 array, got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    rows = a.reshape(h, w * 4)
    up = rows.copy()
    up[1:] = rows[1:] - rows[:-1]  # uint8 arithmetic wraps mod 256, as the filter requires
    raw = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)  # 8-bit, colour type 6 (RGBA)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


def write_png(path: str | Path, rgba: np.ndarray) -> None:
    Path(path).write_bytes(encode_png(rgba))


def decode_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGBA, non-interlaced PNG that uses filters None, Sub or Up (what encode_png and most
    simple writers produce); enough to read back our own frames."""
    if not data.startswith(_SIGNATURE):
        raise ValueError("not a PNG file")
    pos, idat, w = 8, b"", 0
    h = 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if zlib.crc32(tag + body) & 0xFFFFFFFF != struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0]:
            raise ValueError(f"PNG chunk {tag!r}: bad CRC")
        if tag == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if (depth, ctype, interlace) != (8, 6, 0):
                raise ValueError("decode_png reads 8-bit RGBA non-interlaced images only")
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * 4)
    out = np.zeros((h, w * 4), np.uint8)
    for y in range(h):
        f, row = raw[y, 0], raw[y, 1:]
        if f == 0:
            out[y] = row
        elif f == 1:
            acc = row.reshape(w, 4).astype(np.uint64).cumsum(axis=0) % 256
            out[y] = acc.astype(np.uint8).ravel()
        elif f == 2:
            out[y] = row + (out[y - 1] if y else 0)
        else:
            raise ValueError(f"decode_png: filter {f} not supported")
    return out.reshape(h, w, 4)
