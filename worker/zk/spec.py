"""Validation of zk job specs: every bad spec is a ValueError whose message says what to change."""

from __future__ import annotations

from typing import Any

from . import field as F
from .air import AIRS, get

BLOWUPS = (2, 4, 8)
MIN_STEPS = 8
MAX_STEPS = 1 << 22
MAX_LDE = 1 << 24  # the largest transform the kernels are sized and tested for
MAX_QUERIES = 128
DEFAULTS = {"blowup": 4, "queries": 41}  # 81 bits conjectured
SPEC_KEYS = ("air", "public_inputs", "steps", "blowup", "queries")


def check_params(steps: int, blowup: int, queries: int) -> None:
    for name, v in (("steps", steps), ("blowup", blowup), ("queries", queries)):
        if type(v) is not int:
            raise ValueError(f"{name} must be an integer, got {type(v).__name__}")
    if steps < MIN_STEPS or steps > MAX_STEPS or steps & (steps - 1):
        raise ValueError(f"steps must be a power of two between {MIN_STEPS} and 2^22, got {steps}")
    if blowup not in BLOWUPS:
        raise ValueError(f"blowup must be one of {BLOWUPS}, got {blowup}")
    if steps * blowup > MAX_LDE:
        raise ValueError(f"steps * blowup = {steps * blowup} exceeds the 2^24 evaluation-domain limit")
    if not 1 <= queries <= MAX_QUERIES:
        raise ValueError(f"queries must be between 1 and {MAX_QUERIES}, got {queries}")


def check_public_inputs(air_name: str, inputs: Any) -> dict[str, int]:
    air = get(air_name)
    if not isinstance(inputs, dict):
        raise ValueError(f"public_inputs must be a map of {list(air.inputs)}")
    missing = [k for k in air.inputs if k not in inputs]
    extra = [k for k in inputs if k not in air.inputs]
    if missing or extra:
        raise ValueError(
            f"AIR {air_name!r} takes public inputs {list(air.inputs)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )
    out = {}
    for k in air.inputs:
        v = inputs[k]
        if type(v) is not int or not 0 <= v < F.P:
            raise ValueError(f"public input {k!r} must be an integer in [0, p) with p = 2^64 - 2^32 + 1, got {v!r}")
        out[k] = v
    return out


def validate_spec(spec: Any) -> dict[str, Any]:
    """Check a zk.prove job spec; returns it normalised (defaults filled in).

    {"air": "fibonacci" | "cubic", "public_inputs": {...}, "steps": 2^k, "blowup": 2|4|8, "queries": 1..128}
    """
    if not isinstance(spec, dict):
        raise ValueError("a zk spec must be a map")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ValueError(f"unknown zk spec field(s) {unknown}; allowed: {list(SPEC_KEYS)}")
    for key in ("air", "public_inputs", "steps"):
        if key not in spec:
            raise ValueError(f"zk spec needs {key!r}")
    if not isinstance(spec["air"], str) or spec["air"] not in AIRS:
        raise ValueError(f"unknown AIR {spec['air']!r}; known: {', '.join(sorted(AIRS))}")
    out = {**DEFAULTS, **spec}
    check_params(out["steps"], out["blowup"], out["queries"])
    out["public_inputs"] = check_public_inputs(out["air"], out["public_inputs"])
    return out
