"""Read-only device tables (twiddles, domains, folding tables) cached per OpenCL context, shared by every
backend on it. Its own module so that the NTT kernels and the program builder can both use it (no cycle)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

TABLE_CACHE = 48  # read-only device tables kept per context (twiddles, domains, folding tables)
_TABLES: dict[int, OrderedDict] = {}


def table(ctx, key: tuple, make) -> Any:
    """A read-only device table shared by every backend on `ctx` (so a backend per proof does not recompute
    twiddles and domains), least recently used evicted first. `make()` builds it on a miss."""
    cache = _TABLES.setdefault(ctx.int_ptr, OrderedDict())
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = make()
        while len(cache) > TABLE_CACHE:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return hit


def drop_tables(ctx) -> None:
    _TABLES.pop(ctx.int_ptr, None)
