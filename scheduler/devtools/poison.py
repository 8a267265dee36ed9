"""Poison jobs for the chaos run: compute jobs that must fail, on their own, without harming any node.

Each kind says what a correct outcome is (`check(state, reason, refusal)` -> why not, or None):

| kind  | the job | a correct outcome |
|---|---|---|
| `oob`   | a kernel writing through a wild pointer (SIGSEGV wherever it runs) | failed, "poison: crashed 2 runners", never more than 2 crashes |
| `image` | a kernel with an `image2d_t` and a `sampler_t` parameter (bound to a buffer: a SIGSEGV) | refused at submit, naming the parameter |
| `loop`  | `while (1)`, 1 s time limit | failed at its time limit, the runner replaced |
| `huge`  | a 100 GB device buffer | refused at submit: no device that large |
| `big`   | a 1 GiB device buffer: fits the devices, not a runner (`--runner-memory-mb 512` in the chaos mesh) | failed: refused by the runner's memory limit before any transfer |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from scheduler.client.compute_sdk import Out, Scratch, make_job

KINDS = ("oob", "loop", "image", "huge", "big")  # in this order: a short run sees the crash and the loop first
RUNNER_MEMORY_MB = 512  # the chaos mesh's --runner-memory-mb

WILD = "__kernel void wild(__global int *out) { out[get_global_id(0) + ((size_t)1 << 40)] = 7; }"
IMAGE = """
__kernel void blur(__read_only image2d_t picture, sampler_t smp, __global float4 *out) {
    out[get_global_id(0)] = read_imagef(picture, smp, (int2)(get_global_id(0), 0));
}
"""
LOOP = "__kernel void forever(__global volatile int *out) { while (1) { out[0] += 1; } }"
SAXPY = """
__kernel void saxpy(const uint n, const float a, __global const float *x, __global float *y) {
    size_t i = get_global_id(0);
    if (i < n) y[i] = a * x[i] + y[i];
}
"""

Check = Callable[[str, str, str], "str | None"]


def job(kind: str, salt: int) -> tuple[dict[str, Any], bytes | None, Check]:
    """(spec, input, check) of one poison job; `salt` makes each source distinct (no two share a cache entry)."""

    tag = f"\n// poison {salt}\n"
    if kind == "oob":
        j = make_job(WILD + tag, "wild", [Out(16, np.int32)], global_size=16)
        return j.spec, j.input, _failed_with("runner crashed", poison=True)
    if kind == "image":  # by hand: the SDK would refuse it on the client already
        spec = {"v": 1, "source": IMAGE + tag, "kernel": "blur", "global_size": [4],
                "args": [{"kind": "in", "dtype": "float32", "data": bytes(256)},
                         {"kind": "scalar", "dtype": "uint32", "value": 0},
                         {"kind": "out", "dtype": "float32", "count": 16}]}
        return spec, None, _refused_with("'__read_only image2d_t picture' is an image")
    if kind == "loop":
        j = make_job(LOOP + tag, "forever", [Out(1, np.int32)], global_size=1, time_limit_s=1.0)
        return j.spec, j.input, _failed_with("exceeded time limit of 1 s")
    if kind == "huge":
        j = make_job(SAXPY + tag, "saxpy", [np.uint32(1), np.float32(1), Scratch(25 << 30, np.float32),
                                             Out(1, np.float32)], global_size=1)
        return j.spec, j.input, _refused_with(">= 100.0 GiB")
    if kind == "big":
        j = make_job(SAXPY + tag, "saxpy", [np.uint32(1), np.float32(1), Scratch(1 << 28, np.float32),
                                             Out(1, np.float32)], global_size=1)
        return j.spec, j.input, _failed_with("limit")
    raise ValueError(f"unknown poison kind {kind!r}; kinds: {', '.join(KINDS)}")


def _crashes(reason: str) -> int:
    return reason.count("runner crashed")


def _failed_with(words: str, poison: bool = False) -> Check:
    def check(state: str, reason: str, refusal: str) -> str | None:
        if state != "failed":
            return f"expected failed ({words}), got {state} {refusal or reason!r}"
        if words not in reason:
            return f"failed without {words!r}: {reason!r}"
        if _crashes(reason) > 2:
            return f"crashed {_crashes(reason)} runners (the poison rule stops at 2): {reason!r}"
        if poison and not reason.startswith("poison: crashed"):
            return f"not failed by the poison rule: {reason!r}"
        return None
    return check


def _refused_with(words: str) -> Check:
    def check(state: str, reason: str, refusal: str) -> str | None:
        if state != "rejected" or words not in refusal:
            return f"expected a refusal at submit naming {words!r}, got {state} {refusal or reason!r}"
        return None
    return check
