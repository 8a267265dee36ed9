"""The process-wide registry of quarantined devices: a device on which a kernel of a failed or cancelled compute
job still runs (`quarantined_devices`), and the listeners told when one is quarantined or free again
(`add_quarantine_listener`: the executor holds back its slots). `ComputeRunner` sets and clears entries
(`set_quarantine`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from worker.compute import metrics

log = logging.getLogger("worker.compute.runner")

@dataclass(frozen=True)
class QuarantineInfo:
    device_id: str
    job_id: str
    reason: str
    since: float  # time.monotonic()


_quarantined: dict[str, QuarantineInfo] = {}
_quarantined_lock = threading.Lock()
QuarantineListener = Callable[[str, "QuarantineInfo | None"], None]
_listeners: list[QuarantineListener] = []


def quarantined_devices() -> dict[str, QuarantineInfo]:
    """Devices (by id) on which a kernel of a failed or cancelled compute job still runs."""
    with _quarantined_lock:
        return dict(_quarantined)


def add_quarantine_listener(fn: QuarantineListener) -> Callable[[], None]:
    """Call `fn(device_id, info)` when a device is quarantined and `fn(device_id, None)` when it is free again.

    Called from any thread (an OpenCL callback thread when a quarantine clears): a trio consumer should hop
    with `trio.from_thread` / `TrioToken.run_sync_soon`. Returns a function that removes the listener.
    The executor uses this to hold back a quarantined device's slots so it is not double-booked.
    """
    with _quarantined_lock:
        _listeners.append(fn)

    def remove() -> None:
        with _quarantined_lock:
            if fn in _listeners:
                _listeners.remove(fn)

    return remove


def set_quarantine(device_id: str, info: QuarantineInfo | None, expect: QuarantineInfo | None = None) -> None:
    with _quarantined_lock:
        if info is None:
            if _quarantined.get(device_id) is not expect:
                return
            del _quarantined[device_id]
        else:
            _quarantined[device_id] = info
        metrics.QUARANTINED.set(len(_quarantined))
        listeners = list(_listeners)
    for fn in listeners:
        try:
            fn(device_id, info)
        except Exception:  # noqa: BLE001 - a listener must not break the runner (or the OpenCL callback thread)
            log.exception("quarantine listener failed")
