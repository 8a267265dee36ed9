"""The job model and the claim protocol's messages: typed, versioned, msgpack-able.

Every message is a dataclass with `to_wire()` -> a msgpack-able map (string keys, `"v"` the wire version,
`"t"` the message type) and `from_wire(map)` -> the dataclass, which raises `WireError` (never anything
else) for a map of another version, of the wrong type, with missing or ill-typed fields, or with values
out of range. `decode_message(map)` dispatches on `"t"`.

Times: a realtime job's `deadline` is absolute on the *coordinator's* clock (whatever clock the caller
passes as `now`); on the wire it travels as milliseconds remaining (`deadline_ms`), because peers' clocks
are not comparable. `Job.to_wire(now)` and `Job.from_wire(d, now)` convert.

`attempt` numbers key everything about one placement of a job (offer, accept/reject, lease, result,
cancel): the coordinator starts a new attempt whenever an earlier one may still be alive somewhere
(a lost worker, an expired lease, an offer that was never answered), so any message carrying an older
attempt is stale by construction and is dropped.
"""

from __future__ import annotations

import enum
import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from worker.kinds import Requirements  # one definition for coordinator and worker; re-exported here
from worker.priority import Priority  # the same: one definition for coordinator, wire and executor
from worker.result import Result  # the same: one result type from the job kind to the coordinator
from worker.wire import WIRE_VERSION, WireError  # re-exported: one set of wire rules
from worker.wire import attempt as _attempt
from worker.wire import check_version as _check_version
from worker.wire import get as _get
from worker.wire import job_id as _job_id
from worker.wire import num as _num
from worker.wire import reason as _reason

INLINE_INPUT_LIMIT = 1 << 20  # bytes; larger inputs are streamed (input_size + input_sha256)
LEASE_FRAME_JOBS = 256  # jobs (or their answers) in one frame of a client job lease's stream (lease.run)
MAX_KIND_LEN = 64
MAX_TIMEOUT_S = 7 * 24 * 3600.0
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS_LIMIT = 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def new_job_id() -> str:
    return uuid.uuid4().hex


MAX_LEASE_ID_LEN = 64
_LEASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")


def lease_id(v: Any) -> str:
    """A slot lease's id as a worker grants it ("" = none): at most MAX_LEASE_ID_LEN id characters."""
    if v == "":
        return v
    if not isinstance(v, str) or len(v) > MAX_LEASE_ID_LEN or not _LEASE_ID_RE.match(v):
        raise WireError("invalid", f"lease id must be 1..{MAX_LEASE_ID_LEN} letters, digits, '.', '_', ':', '-'")
    return v


# --- requirements: one definition, shared with the worker (`worker.kinds.Requirements`) --------------------

def _requirements(d: Any) -> Requirements:
    try:
        return Requirements.from_wire(d)
    except ValueError as e:
        raise WireError("malformed" if d is not None and not isinstance(d, dict) else "invalid", str(e)) from None


# --- job -------------------------------------------------------------------------------------------------

class WhenSaturated(enum.StrEnum):
    QUEUE = "queue"  # wait at the coordinator (answer: "queued (position N)")
    REJECT = "reject"  # answer "rejected: saturated" at once


class JobState(enum.StrEnum):
    SUBMITTED = "submitted"  # accepted by the coordinator; queued there or being offered
    PLACED = "placed"  # a worker accepted it (queued on its device)
    RUNNING = "running"  # the worker reported it started
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Job:
    """A unit of work. `job_id` is client-chosen for idempotency (resubmitting the same id returns the same
    job), or assigned by the coordinator. Inputs up to `INLINE_INPUT_LIMIT` ride inline in `input`; larger
    ones are streamed and described by `input_size` and `input_sha256` (content address)."""

    kind: str
    spec: dict[str, Any] = field(default_factory=dict)
    job_id: str = ""
    input: bytes | None = None
    input_size: int = 0
    input_sha256: str = ""
    requirements: Requirements = field(default_factory=Requirements)
    priority: Priority = Priority.BATCH
    deadline: float | None = None  # absolute, coordinator's clock; required for realtime
    timeout_s: float = DEFAULT_TIMEOUT_S  # end to end: from acceptance by the coordinator to the result
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    submitted_by: str = ""  # API token name ("" = local user)
    when_saturated: WhenSaturated = WhenSaturated.QUEUE

    def __post_init__(self) -> None:
        if self.input is not None:
            if self.input_size == 0 and self.input:
                object.__setattr__(self, "input_size", len(self.input))
            if self.input_size != len(self.input):
                raise WireError("invalid", f"job: input_size {self.input_size} != inline input length {len(self.input)}")
        if type(self.priority) is not Priority:
            object.__setattr__(self, "priority", Priority(self.priority))
        if type(self.when_saturated) is not WhenSaturated:
            object.__setattr__(self, "when_saturated", WhenSaturated(self.when_saturated))

    @property
    def inline(self) -> bool:
        return self.input is not None

    def with_id(self, make_id: Callable[[], str] = new_job_id) -> Job:
        return self if self.job_id else replace(self, job_id=make_id())

    def validate(self, inline_limit: int = INLINE_INPUT_LIMIT) -> Job:
        """Raise WireError unless the job is well-formed; returns self."""
        w = "job"
        if self.job_id:
            _job_id(self.job_id, w)
        if not isinstance(self.kind, str) or not self.kind or len(self.kind) > MAX_KIND_LEN:
            raise WireError("invalid", f"job: kind must be 1..{MAX_KIND_LEN} characters")
        if not isinstance(self.spec, dict) or not all(isinstance(k, str) for k in self.spec):
            raise WireError("invalid", "job: spec must be a map with string keys")
        if self.input is not None and len(self.input) > inline_limit:
            raise WireError("input_too_large", f"job: inline input of {len(self.input)} bytes exceeds the "
                                               f"{inline_limit}-byte limit; stream it instead")
        if self.input_size < 0:
            raise WireError("invalid", "job: input_size must not be negative")
        if self.input is None and self.input_size > 0 and not _SHA256_RE.match(self.input_sha256):
            raise WireError("invalid", "job: a streamed input needs input_sha256 (64 lowercase hex digits)")
        if self.priority is Priority.REALTIME and self.deadline is None:
            raise WireError("invalid", "job: a realtime job needs a deadline")
        if self.priority is not Priority.REALTIME and self.deadline is not None:
            raise WireError("invalid", "job: only realtime jobs have a deadline")
        if not (0 < self.timeout_s <= MAX_TIMEOUT_S):
            raise WireError("invalid", f"job: timeout_s must be in (0, {MAX_TIMEOUT_S:g}]")
        if not (1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT):
            raise WireError("invalid", f"job: max_attempts must be in 1..{MAX_ATTEMPTS_LIMIT}")
        return self

    def sha256(self) -> str:
        """Content address of the input (computed for inline input)."""
        if self.input is not None:
            return hashlib.sha256(self.input).hexdigest()
        return self.input_sha256

    def to_wire(self, now: float | None = None, *, with_input: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"v": WIRE_VERSION, "t": "job", "kind": self.kind, "spec": self.spec}
        if self.job_id:
            d["id"] = self.job_id
        if self.input is not None and with_input:
            d["input"] = self.input
        else:
            if self.input_size:
                d["input_size"] = self.input_size
                d["input_sha256"] = self.sha256()
        req = self.requirements.to_wire()
        if req:
            d["req"] = req
        d["prio"] = self.priority.value
        if self.deadline is not None:
            if now is None:
                raise ValueError("Job.to_wire needs `now` to send a deadline (relative on the wire)")
            d["deadline_ms"] = (self.deadline - now) * 1000.0
        d["timeout_s"] = self.timeout_s
        d["max_attempts"] = self.max_attempts
        if self.submitted_by:
            d["by"] = self.submitted_by
        if self.when_saturated is not WhenSaturated.QUEUE:
            d["sat"] = self.when_saturated.value
        return d

    @classmethod
    def from_wire(cls, d: Any, now: float = 0.0, *, inline_limit: int = INLINE_INPUT_LIMIT) -> Job:
        _check_version(d, "job")
        w = "job"
        try:
            prio = Priority(_get(d, "prio", str, w, "batch"))
        except ValueError:
            raise WireError("invalid", f"job: priority must be one of {', '.join(p.value for p in Priority)}, "
                                       f"not {d.get('prio')!r}") from None
        try:
            sat = WhenSaturated(_get(d, "sat", str, w, "queue"))
        except ValueError:
            raise WireError("invalid", f"job: when_saturated must be queue or reject, not {d.get('sat')!r}") from None
        inp = _get(d, "input", (bytes, type(None)), w, None)
        deadline_ms = _num(d, "deadline_ms", w, None)
        jid = _get(d, "id", str, w, "")
        try:
            job = cls(
                kind=_get(d, "kind", str, w),
                spec=_get(d, "spec", dict, w, {}),
                job_id=jid,
                input=inp,
                input_size=_get(d, "input_size", int, w, len(inp) if inp is not None else 0),
                input_sha256=_get(d, "input_sha256", str, w, ""),
                requirements=_requirements(d.get("req")),
                priority=prio,
                deadline=None if deadline_ms is None else now + deadline_ms / 1000.0,
                timeout_s=float(_num(d, "timeout_s", w, DEFAULT_TIMEOUT_S)),
                max_attempts=_get(d, "max_attempts", int, w, DEFAULT_MAX_ATTEMPTS),
                submitted_by=_get(d, "by", str, w, ""),
                when_saturated=sat,
            )
        except WireError:
            raise
        except (TypeError, ValueError) as e:
            raise WireError("invalid", f"job: {e}") from None
        return job.validate(inline_limit)


# --- claim protocol --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Offer:
    """Coordinator -> worker: run `job` (attempt `attempt`) on device `device_id`. The worker accepts only if
    it has a free slot, or if the job would wait in its queue no longer than `max_wait_s` (beyond that the
    coordinator's next-best device is expected to finish it sooner; None = any wait, 0 = only a free slot).
    `est_run_s`: the coordinator's estimate of the run time there. `lease_s`: the worker renews at least
    every lease_s/3 or the coordinator presumes it lost."""

    job: Job
    attempt: int
    device_id: str
    lease_s: float
    max_wait_s: float | None = None
    est_run_s: float = 0.0
    coordinator: str = ""  # peer id of the coordinator
    want_lease: bool = False  # the coordinator asks for a slot lease with this claim (scheduler/core/leases.py)

    TYPE: ClassVar[str] = "offer"

    def to_wire(self, now: float | None = None) -> dict[str, Any]:
        d = {"v": WIRE_VERSION, "t": self.TYPE, "job": self.job.to_wire(now), "attempt": self.attempt,
             "device": self.device_id, "lease_s": self.lease_s, "est_run_s": self.est_run_s, "coord": self.coordinator}
        if self.max_wait_s is not None:
            d["max_wait_s"] = self.max_wait_s
        if self.want_lease:
            d["want_lease"] = True
        return d

    @classmethod
    def from_wire(cls, d: Any, now: float = 0.0) -> Offer:
        _check_version(d, cls.TYPE)
        w = "offer"
        lease = float(_num(d, "lease_s", w))
        if lease <= 0:
            raise WireError("invalid", "offer: lease_s must be positive")
        job = Job.from_wire(_get(d, "job", dict, w), now)
        if not job.job_id:
            raise WireError("invalid", "offer: the job has no id")
        max_wait = _num(d, "max_wait_s", w, None)
        return cls(job=job, attempt=_attempt(d, w), device_id=_get(d, "device", str, w), lease_s=lease,
                   max_wait_s=None if max_wait is None else max(0.0, float(max_wait)),
                   est_run_s=max(0.0, float(_num(d, "est_run_s", w, 0.0))), coordinator=_get(d, "coord", str, w, ""),
                   want_lease=_get(d, "want_lease", bool, w, False))


DeviceLoad = dict[str, tuple[int, int]]  # device id -> (free_slots, queue_depth)


def _load_from_wire(v: Any, w: str) -> DeviceLoad:
    if not isinstance(v, dict):
        raise WireError("malformed", f"{w}: load must be a map")
    out: DeviceLoad = {}
    for k, x in v.items():
        if not (isinstance(k, str) and isinstance(x, list | tuple) and len(x) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x)):
            raise WireError("malformed", f"{w}: load entries must be device -> [free_slots, queue_depth]")
        out[k] = (x[0], x[1])
    return out


@dataclass(frozen=True)
class Accept:
    """Worker -> coordinator: taken. `load` is the worker's load right after taking it (fed into the
    coordinator's view, so its next decisions see this job without waiting for the next advert)."""

    job_id: str
    attempt: int
    device_id: str
    queue_position: int = 0  # 0 = starts now; N = N jobs ahead of it on that device
    load: DeviceLoad = field(default_factory=dict)
    lease_id: str = ""  # a slot lease granted with this claim (the offer asked for one); "" = none

    TYPE: ClassVar[str] = "accept"

    def to_wire(self) -> dict[str, Any]:
        d = {"v": WIRE_VERSION, "t": self.TYPE, "id": self.job_id, "attempt": self.attempt,
             "device": self.device_id, "pos": self.queue_position,
             "load": {k: list(v) for k, v in self.load.items()}}
        if self.lease_id:
            d["lease"] = self.lease_id
        return d

    @classmethod
    def from_wire(cls, d: Any) -> Accept:
        _check_version(d, cls.TYPE)
        w = "accept"
        return cls(_job_id(_get(d, "id", str, w), w), _attempt(d, w), _get(d, "device", str, w),
                   max(0, _get(d, "pos", int, w, 0)), _load_from_wire(d.get("load", {}), w),
                   lease_id(_get(d, "lease", str, w, "")))


@dataclass(frozen=True)
class Reject:
    """Worker -> coordinator: not taking it. `load` is the worker's own current load per device, which
    replaces the coordinator's (possibly stale) gossip view of it until the worker's next advert."""

    job_id: str
    attempt: int
    reason: str
    load: DeviceLoad = field(default_factory=dict)

    TYPE: ClassVar[str] = "reject"

    def to_wire(self) -> dict[str, Any]:
        return {"v": WIRE_VERSION, "t": self.TYPE, "id": self.job_id, "attempt": self.attempt,
                "reason": self.reason, "load": {k: list(v) for k, v in self.load.items()}}

    @classmethod
    def from_wire(cls, d: Any) -> Reject:
        _check_version(d, cls.TYPE)
        w = "reject"
        return cls(_job_id(_get(d, "id", str, w), w), _attempt(d, w), _reason(_get(d, "reason", str, w, "")),
                   _load_from_wire(d.get("load", {}), w))


@dataclass(frozen=True)
class LeaseEntry:
    job_id: str
    attempt: int
    running: bool  # False: still queued on the worker's device


@dataclass(frozen=True)
class LeaseRenew:
    """Worker -> coordinator, every lease_s/3: the jobs of that coordinator it still holds (batched)."""

    entries: tuple[LeaseEntry, ...]

    TYPE: ClassVar[str] = "lease"

    def to_wire(self) -> dict[str, Any]:
        return {"v": WIRE_VERSION, "t": self.TYPE, "jobs": [[e.job_id, e.attempt, e.running] for e in self.entries]}

    @classmethod
    def from_wire(cls, d: Any) -> LeaseRenew:
        _check_version(d, cls.TYPE)
        jobs = _get(d, "jobs", list, "lease")
        out = []
        for x in jobs:
            if not (isinstance(x, list | tuple) and len(x) == 3 and isinstance(x[1], int) and isinstance(x[2], bool)):
                raise WireError("malformed", "lease: entries must be [job_id, attempt, running]")
            out.append(LeaseEntry(_job_id(x[0], "lease"), x[1], x[2]))
        return cls(tuple(out))


@dataclass(frozen=True)
class Cancel:
    """Coordinator -> worker: stop this attempt (reaches the kernel at its next chunk boundary)."""

    job_id: str
    attempt: int
    reason: str = ""

    TYPE: ClassVar[str] = "cancel"

    def to_wire(self) -> dict[str, Any]:
        return {"v": WIRE_VERSION, "t": self.TYPE, "id": self.job_id, "attempt": self.attempt, "reason": self.reason}

    @classmethod
    def from_wire(cls, d: Any) -> Cancel:
        _check_version(d, cls.TYPE)
        w = "cancel"
        return cls(_job_id(_get(d, "id", str, w), w), _attempt(d, w), _reason(_get(d, "reason", str, w, "")))


Message = Offer | Accept | Reject | LeaseRenew | Cancel | Result
_MESSAGES: dict[str, Any] = {c.TYPE: c for c in (Offer, Accept, Reject, LeaseRenew, Cancel, Result)}


def decode_message(d: Any, now: float = 0.0) -> Message:
    """Any claim-protocol message from its wire map (an Offer's deadline is rebased on `now`)."""
    if not isinstance(d, dict):
        raise WireError("malformed", f"expected a map, got {type(d).__name__}")
    t = d.get("t")
    cls = _MESSAGES.get(t) if isinstance(t, str) else None
    if cls is None:
        raise WireError("malformed", f"unknown message type {t!r:.64}")
    if cls is Offer:
        return Offer.from_wire(d, now)
    return cls.from_wire(d)
