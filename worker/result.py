"""A job's result: one type from the job kind that produces it to the coordinator that receives it.

A kind's `run` returns `Result(body, output)`. The executor completes it with how the run ended (`ok`,
`error`, `crashed`, `device`, `timings`), the worker core stamps it with the attempt it answers (`job_id`,
`attempt`, `worker`), and it travels to the coordinator as `to_wire()` (the output bytes travel after it,
described by `output_size` and `output_sha256`). The coordinator decodes a peer's map with `from_wire`,
which refuses anything ill-formed with a `WireError` naming why.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from worker import wire
from worker.wire import WIRE_VERSION, WireError


@dataclass(frozen=True)
class Result:
    """What a job produced: a msgpack-able `body` and optional bulk `output` bytes, and, once reported, the
    attempt it answers and how it ended.

    `ok=False` with `retryable=True` means the worker could not run it (device lost, shutting down): the
    coordinator places it again; `ok=False`, `retryable=False` is the job's own failure (bad input, kernel
    error, timed out), delivered as is; `crashed=True`: the job's device code killed the runner that ran it
    (the poison rule: placed once more on another peer, then failed; counted against the submitter, not the
    worker). `output_size` and `output_sha256` describe `output` (computed from it when it is given); a
    decoded result has them without the bytes."""

    body: dict[str, Any] = field(default_factory=dict)
    output: bytes | None = None  # the bytes themselves, where they are at hand (never in `to_wire()`)
    job_id: str = ""
    attempt: int = 0
    ok: bool = True
    error: str = ""
    retryable: bool = False
    output_size: int = 0
    output_sha256: str = ""
    worker: str = ""  # peer id of the worker that ran it
    device: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # queue_s, run_s, input_s, ... (worker clock)
    crashed: bool = False

    TYPE: ClassVar[str] = "result"

    def __post_init__(self) -> None:
        if not isinstance(self.body, dict):
            raise TypeError("Result.body must be a dict")
        if self.output is not None:
            if not isinstance(self.output, bytes | bytearray | memoryview):
                raise TypeError("Result.output must be bytes or None")
            if self.output and not self.output_size:
                object.__setattr__(self, "output_size", len(self.output))
                object.__setattr__(self, "output_sha256", hashlib.sha256(self.output).hexdigest())

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": WIRE_VERSION, "t": self.TYPE, "id": self.job_id, "attempt": self.attempt,
                             "ok": self.ok, "body": self.body}
        if self.error:
            d["error"] = self.error
        if self.retryable:
            d["retryable"] = True
        if self.crashed:
            d["crashed"] = True
        if self.output_size:
            d["out_size"] = self.output_size
            d["out_sha256"] = self.output_sha256
        if self.worker:
            d["worker"] = self.worker
        if self.device:
            d["device"] = self.device
        if self.timings:
            d["timings"] = self.timings
        return d

    @classmethod
    def from_wire(cls, d: Any, output: bytes | None = None) -> Result:
        """A peer's result map, checked (WireError otherwise); the output bytes are not in it (`output`: the
        bytes that came with it, if at hand)."""
        wire.check_version(d, cls.TYPE)
        w = "result"
        timings = wire.get(d, "timings", dict, w, {})
        if not all(isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
                   for k, v in timings.items()):
            raise WireError("malformed", "result: timings must map names to numbers")
        return cls(
            job_id=wire.job_id(wire.get(d, "id", str, w), w),
            attempt=wire.attempt(d, w),
            ok=wire.get(d, "ok", bool, w),
            body=wire.get(d, "body", dict, w, {}),
            error=wire.reason(wire.get(d, "error", str, w, "")),
            retryable=wire.get(d, "retryable", bool, w, False),
            crashed=wire.get(d, "crashed", bool, w, False),
            output_size=wire.get(d, "out_size", int, w, 0),
            output_sha256=wire.get(d, "out_sha256", str, w, ""),
            worker=wire.get(d, "worker", str, w, ""),
            device=wire.get(d, "device", str, w, ""),
            timings={k: float(v) for k, v in timings.items()},
            output=output,
        )


__all__ = ["Result", "WireError"]
