"""How a frame is cut up: into tiles over peers (`plan_tiles`, from the cost model's estimates), into strips of
rows over devices in proportion to their rates (`split_rows`) and into bands between checkpoints (`bands`).
Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from worker.render.camera import Tile


@dataclass(frozen=True)
class TilePlan:
    """How to split a frame: `tiles` (one per peer used), and the model's estimates in seconds."""

    tiles: tuple[Tile, ...]
    estimate_s: float
    single_s: float

    @property
    def count(self) -> int:
        return len(self.tiles)


def split_count(k: int) -> tuple[int, int]:
    """(cols, rows) for k tiles: horizontal bands up to 4, else a near-square grid with k cells or fewer."""
    if k <= 4:
        return 1, k
    cols = int(math.floor(math.sqrt(k)))
    return cols, k // cols


def plan_tiles(width: int, height: int, n_candidates: int, per_pixel_cost: float, overhead_s: float,
               *, serial_share: float = 0.25, max_tiles: int = 16) -> TilePlan:
    """Decide whether (and how far) to split a width x height frame over `n_candidates` peers.

    A frame on one peer takes `overhead_s + pixels * per_pixel_cost`. Split into k tiles on k peers that run
    in parallel it takes `pixels * per_pixel_cost / k` plus the overhead, which grows with k: each extra tile
    is another job to submit, place and collect, costing `serial_share * overhead_s` that does not overlap.
    k is the count (1..min(n_candidates, max_tiles)) with the least estimated time; tiling pays when the
    render time saved exceeds the added overhead. Pure: no I/O.
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame must be at least 1x1, got {width}x{height}")
    if per_pixel_cost < 0 or overhead_s < 0:
        raise ValueError("costs must not be negative")
    pixels = width * height
    single = overhead_s + pixels * per_pixel_cost
    best_k, best_t = 1, single
    for k in range(2, max(1, min(n_candidates, max_tiles, height)) + 1):
        cols, rows = split_count(k)
        n = cols * rows
        t = overhead_s * (1 + serial_share * (n - 1)) + math.ceil(pixels / n) * per_pixel_cost
        if t < best_t * 0.95:  # a split must win clearly: estimates are rough
            best_k, best_t = k, t
    cols, rows = split_count(best_k)
    return TilePlan(tuple(Tile.grid(width, height, cols, rows)), best_t, single)


def split_rows(tile: Tile, rates: list[float]) -> list[Tile | None]:
    """`tile` cut into horizontal strips, one per rate, with rows in proportion to the rates (None for a
    device that gets no row: more devices than rows, or a rate of 0)."""
    total = sum(max(r, 0.0) for r in rates)
    if total <= 0:
        rates, total = [1.0] * len(rates), float(len(rates))
    ys, acc = [tile.y0], 0.0
    for r in rates:
        acc += max(r, 0.0)
        ys.append(tile.y0 + round(tile.h * acc / total))
    ys[-1] = tile.y0 + tile.h
    return [Tile(tile.x0, ys[i], tile.w, ys[i + 1] - ys[i]) if ys[i + 1] > ys[i] else None
            for i in range(len(rates))]


def bands(tile: Tile, n: int) -> list[Tile]:
    """`tile` cut into n horizontal bands (fewer if it has fewer rows)."""
    n = max(1, min(n, tile.h))
    ys = [tile.y0 + tile.h * i // n for i in range(n + 1)]
    return [Tile(tile.x0, ys[i], tile.w, ys[i + 1] - ys[i]) for i in range(n) if ys[i + 1] > ys[i]]
