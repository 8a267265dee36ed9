"""Job priority classes: the one definition, used by the executor's queues, the job wire format and placement."""

from __future__ import annotations

import enum


class Priority(enum.StrEnum):
    REALTIME = "realtime"  # has a deadline; earliest deadline first; rejected at once if it cannot be met
    INTERACTIVE = "interactive"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def parse(cls, value: Priority | str) -> Priority:
        if isinstance(value, Priority):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"priority must be one of realtime, interactive, batch, not {value!r}") from None


_RANK = {Priority.REALTIME: 0, Priority.INTERACTIVE: 1, Priority.BATCH: 2}

__all__ = ["Priority"]
