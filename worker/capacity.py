"""What the executor reports of its devices' room: `Capacity` (per device `DeviceCapacity`), for the advert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DeviceCapacity:
    device_id: str
    kind: str
    slots: int
    free_slots: int
    running: int
    queued: int
    max_queued: int
    backlog_s: float
    quarantined: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device_id, "kind": self.kind, "slots": self.slots, "free_slots": self.free_slots,
                "running": self.running, "queued": self.queued, "max_queued": self.max_queued,
                "backlog_s": self.backlog_s, "quarantined": self.quarantined}


@dataclass(frozen=True)
class Capacity:
    devices: tuple[DeviceCapacity, ...]

    @property
    def free_slots(self) -> int:
        return sum(d.free_slots for d in self.devices)

    @property
    def queue_depth(self) -> int:
        return sum(d.queued for d in self.devices)

    @property
    def slots(self) -> int:
        return sum(d.slots for d in self.devices)

    def to_dict(self) -> dict[str, Any]:
        return {"free_slots": self.free_slots, "queue_depth": self.queue_depth,
                "devices": [d.to_dict() for d in self.devices]}
