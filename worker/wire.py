"""Checked accessors for the maps that travel between nodes (msgpack): one set of rules for the job result
(`worker.result`) and the claim protocol's messages (`scheduler.core.job`).

Every decoder raises `WireError` (never anything else) for a map of another version, of the wrong type, with
missing or ill-typed fields, or with values out of range; `reason` is a short label for metrics and client
errors: version, malformed, invalid, input_too_large.
"""

from __future__ import annotations

import math
import re
from typing import Any

WIRE_VERSION = 1
MAX_JOB_ID_LEN = 128
MAX_REASON_LEN = 1024
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")


class WireError(ValueError):
    """A message that cannot be accepted; `reason` is a short label for metrics and client errors:
    version, malformed, invalid, input_too_large."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_version(d: Any, type_: str) -> None:
    """Raise WireError unless `d` is a map of this wire version and of message type `type_`."""
    if not isinstance(d, dict):
        raise WireError("malformed", f"{type_}: expected a map, got {type(d).__name__}")
    v = d.get("v")
    if type(v) is not int or v != WIRE_VERSION:  # not True, nor 1.0
        raise WireError("version", f"{type_}: wire version {v!r} not supported (this node speaks {WIRE_VERSION})")
    t = d.get("t")
    if t != type_:
        raise WireError("malformed", f"expected a {type_!r} message, got type {t!r}")


def get(d: dict, key: str, types: type | tuple[type, ...], what: str, default: Any = ...) -> Any:
    """`d[key]`, which must be of `types` (a bool is not an int here); `default` when absent, if given."""
    if key not in d:
        if default is ...:
            raise WireError("malformed", f"{what}: missing field {key!r}")
        return default
    v = d[key]
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise WireError("malformed", f"{what}: field {key!r} must be {_tname(types)}, not bool")
    if not isinstance(v, types):
        raise WireError("malformed", f"{what}: field {key!r} must be {_tname(types)}, not {type(v).__name__}")
    return v


def _tname(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in ts)


def num(d: dict, key: str, what: str, default: Any = ...) -> float:
    """A finite number field."""
    v = get(d, key, (int, float), what, default)
    if v is not None and not math.isfinite(v):
        raise WireError("invalid", f"{what}: field {key!r} must be finite")
    return v


def job_id(v: Any, what: str) -> str:
    """A job id: 1..MAX_JOB_ID_LEN characters of letters, digits, '.', '_', ':', '-'."""
    if not isinstance(v, str) or not v or len(v) > MAX_JOB_ID_LEN or not _JOB_ID_RE.match(v):
        raise WireError("invalid", f"{what}: job id must be 1..{MAX_JOB_ID_LEN} characters of letters, digits, "
                                   f"'.', '_', ':', '-' (got {str(v)[:40]!r})")
    return v


def reason(v: str) -> str:
    """A free-text reason, cut to MAX_REASON_LEN characters."""
    return v if len(v) <= MAX_REASON_LEN else v[:MAX_REASON_LEN - 3] + "..."


def attempt(d: dict, what: str) -> int:
    """The attempt number (>= 1)."""
    a = get(d, "attempt", int, what)
    if a < 1:
        raise WireError("invalid", f"{what}: attempt must be >= 1")
    return a


__all__ = ["MAX_JOB_ID_LEN", "MAX_REASON_LEN", "WIRE_VERSION", "WireError", "attempt", "check_version", "get",
           "job_id", "num", "reason"]
