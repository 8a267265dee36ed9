"""The AIRs a proof may name: the registry (`AIRS`, `get`). Its own module so that an AIR built on the classes
of `air` (the Merkle membership AIR) registers without an import cycle."""

from __future__ import annotations

from .air import CUBIC, FIBONACCI, Air
from .membership import MEMBERSHIP

AIRS: dict[str, Air] = {a.name: a for a in (FIBONACCI, CUBIC, MEMBERSHIP)}


def get(name: str) -> Air:
    try:
        return AIRS[name]
    except KeyError:
        raise ValueError(f"unknown AIR {name!r}; known: {', '.join(sorted(AIRS))}") from None
