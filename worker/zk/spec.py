"""Validation of zk job specs: every bad spec is a ValueError whose message says what to change."""

from __future__ import annotations

from typing import Any

from . import field as F
from .airs import AIRS, get
from .params import (  # re-exported: the limits of a parameter set
    DEFAULTS,
    check_params,
)
from .proof import Params

SPEC_KEYS = ("air", "public_inputs", "steps", "blowup", "queries", "grinding", "witness")


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
    air.min_rows(out)  # AIR-specific range checks (e.g. the membership depth)
    return out


def validate_spec(spec: Any) -> dict[str, Any]:
    """Check a zk.prove job spec; returns it normalised (defaults filled in).

    {"air": "fibonacci" | "cubic" | "membership", "public_inputs": {...}, "steps": 2^k, "blowup": 2|4|8,
     "queries": 1..128, "grinding": 0..24, "witness": {...} (membership only: private)}
    The parameters must reach the security floor (100 bits conjectured).
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
    check_params(out["steps"], out["blowup"], out["queries"], out["grinding"])
    out["public_inputs"] = check_public_inputs(out["air"], out["public_inputs"])
    air = get(out["air"])
    if air._witness is not None:
        if "witness" not in out:
            raise ValueError(f"AIR {air.name!r} needs a private 'witness'")
        air.check_witness(out["witness"], out["public_inputs"])
    elif "witness" in out:
        raise ValueError(f"AIR {air.name!r} takes no private witness")
    Params(air, out["steps"], out["blowup"], out["queries"], out["grinding"]).check_statement(out["public_inputs"])
    return out


def statement(spec: dict[str, Any]) -> dict[str, Any]:
    """The public part of a validated spec (what a verifier may be told to expect): no witness."""
    return {k: v for k, v in spec.items() if k != "witness"}


EXPECT_KEYS = ("air", "steps", "blowup", "queries", "grinding", "public_inputs")


def validate_expect(expect: Any) -> dict[str, Any]:
    """An expected statement for the verifier: any subset of a spec's public keys; `public_inputs` may pin
    any public value (outputs included). No witness: a verifier never sees one."""
    if not isinstance(expect, dict):
        raise ValueError("an expected statement must be a map")
    unknown = [k for k in expect if k not in EXPECT_KEYS]
    if unknown:
        raise ValueError(f"unknown expected-statement field(s) {unknown}; allowed: {list(EXPECT_KEYS)}")
    if "air" in expect and expect["air"] not in AIRS:
        raise ValueError(f"unknown AIR {expect['air']!r}; known: {', '.join(sorted(AIRS))}")
    for key in ("steps", "blowup", "queries", "grinding"):
        if key in expect and type(expect[key]) is not int:
            raise ValueError(f"expected {key} must be an integer")
    pub = expect.get("public_inputs", {})
    if not isinstance(pub, dict) or len(pub) > 64:
        raise ValueError("expected public_inputs must be a map of at most 64 names")
    for k, v in pub.items():
        if not isinstance(k, str) or type(v) is not int or not 0 <= v < F.P:
            raise ValueError(f"expected public value {k!r} must be an integer in [0, p)")
    return dict(expect)
