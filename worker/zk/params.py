"""The limits of a proof's parameter set (steps, blowup, queries, grinding) and their check: shared by spec
validation and the proof format (its own module, so neither imports the other for it)."""

from __future__ import annotations

from . import security as SEC

BLOWUPS = (2, 4, 8)
MIN_STEPS = 8
MAX_STEPS = 1 << 22
MAX_LDE = 1 << 24  # the largest transform the kernels are sized and tested for
MAX_QUERIES = 128
MAX_GRINDING = 24  # 2^24 hashes: ~20 s on one core
DEFAULTS = {"blowup": 8, "queries": 30, "grinding": 16}  # 105 bits conjectured, 58 provable at 2^16


def check_params(steps: int, blowup: int, queries: int, grinding: int, floor: int | None = None) -> None:
    floor = SEC.MIN_SECURITY_BITS if floor is None else floor
    for name, v in (("steps", steps), ("blowup", blowup), ("queries", queries), ("grinding", grinding)):
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
    if not 0 <= grinding <= MAX_GRINDING:
        raise ValueError(f"grinding must be between 0 and {MAX_GRINDING} bits, got {grinding}")
    bits = SEC.conjectured_bits(blowup, queries, grinding, steps * blowup)
    if bits < floor:
        raise ValueError(
            f"these parameters give {bits} bits of conjectured security, below the {floor}-bit floor "
            f"(each query is worth log2(blowup) bits, grinding adds its bits, and a domain of steps*blowup/4 "
            f"cosets caps the useful queries): use the defaults (blowup 8, queries 30, grinding 16: "
            f"105 bits), more queries or more grinding"
        )
