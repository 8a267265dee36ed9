"""A render.frame result's output bytes (RGBA8 rows, then float32 view depth rows: `encode_output`,
`decode_output`), the tile its body names (`tile_of_body`) and the test-only corrupting fault (`corrupt`,
`corrupting`: see `worker.faults.Faults.corrupt_render`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worker import faults
from worker.render.camera import Tile
from worker.render.frame_spec import parse_tile

OUTPUT_BYTES_PER_PIXEL = 8


def encode_output(rgba: np.ndarray, depth: np.ndarray) -> bytes:
    return np.ascontiguousarray(rgba, np.uint8).tobytes() + np.ascontiguousarray(depth, "<f4").tobytes()


def decode_output(tile: Tile, output: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    """(rgba (h, w, 4) uint8, depth (h, w) float32) of a tile from result output bytes."""
    n = tile.w * tile.h
    if len(output) != n * OUTPUT_BYTES_PER_PIXEL:
        raise ValueError(f"output of {len(output)} bytes; a {tile.w}x{tile.h} tile needs {n * OUTPUT_BYTES_PER_PIXEL}")
    rgba = np.frombuffer(output, np.uint8, n * 4).reshape(tile.h, tile.w, 4)
    depth = np.frombuffer(output, "<f4", n, offset=n * 4).reshape(tile.h, tile.w).astype(np.float32, copy=False)
    return rgba, depth


def tile_of_body(body: dict[str, Any]) -> Tile:
    t = body.get("tile")
    if not isinstance(t, dict):
        raise ValueError("result body has no tile")
    return parse_tile(t)


def corrupt(rgba: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The test-only fault: every channel XOR 0x80, depth doubled (`worker.faults.Faults.corrupt_render`)."""
    return rgba ^ np.uint8(0x80), depth * np.float32(2.0)


def corrupting() -> bool:
    return faults.current().corrupt_render
