"""Wire schemas: the one place where each message that crosses a trust boundary is decoded into typed,
bounded data (msgspec structs with lengths, ranges, enums and address syntax), or refused with a reason.

    advert.py   capacity adverts (gossip): body fields, devices, data-plane address, signed issue time
    hello.py    the data plane's HELLO extras (admission proof, API token) and size limits before auth

Refusals are counted in `gpumesh_wire_refused_total{message, reason}` (see `refused`).
"""

from __future__ import annotations

from prometheus_client import Counter

WIRE_REFUSED = Counter("gpumesh_wire_refused_total",
                       "Messages refused where they were decoded, by message type and reason", ["message", "reason"])


def refused(message: str, reason: str) -> None:
    """Count one refused message (`message`: advert, hello, rpc, job...; `reason`: a short label)."""
    WIRE_REFUSED.labels(message, reason).inc()
