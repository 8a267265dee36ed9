"""A short calibration per device so peers can compare speeds of different devices.

Two figures, each from a fixed kernel timed with OpenCL event profiling (the device's own clock, so the
trio clock, mocked or not, plays no part):
- `mulmod_mops`: Goldilocks (p = 2^64 - 2^32 + 1) 64-bit modular multiplications per second, in millions.
  The 128-bit product comes from `a * b` and `mul_hi(a, b)`; the reduction uses 2^64 = 2^32 - 1 (mod p)
  and 2^96 = -1 (mod p). Edge-case products and a sample of the timed chains are checked against Python
  integers; a mismatch is a `CalibrationError` (a device that gets arithmetic wrong must not be offered).
- `f32_gflops`: float32 multiply-add throughput in GFLOP/s (one multiply-add = 2 flops), written `x * a + b`
  and built with `-cl-mad-enable` so it contracts to FMA where the hardware has it. (PoCL 3.0 lowers the
  `fma()` builtin to a scalar call, ~2 GFLOP/s on 2 cores, which would measure PoCL, not the device.)
  A sample checked against numpy.

Each kernel's iteration count grows until one launch takes about `target_s` (20 ms by default), then the
best of `repeats` launches counts: well under a second per device on PoCL (after the first build, which
pyopencl caches on disk).

Figures are cached per device fingerprint in `<cache_dir>/calibration.json`, so a restart does not
recalibrate; `recalibrate=True` measures again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.devices import Device
from worker.opencl import DeviceContext, device_context, run_blocking

log = logging.getLogger(__name__)

CALIBRATION_VERSION = 1
CACHE_FILE = "calibration.json"

GOLDILOCKS_P = (1 << 64) - (1 << 32) + 1

# OpenCL C: Goldilocks field helpers, usable by any kernel that #includes this text.
GOLDILOCKS_CL = r"""
#define GL_P   0xFFFFFFFF00000001UL
#define GL_EPS 0x00000000FFFFFFFFUL   /* 2^64 mod p = 2^32 - 1 */

/* (hi * 2^64 + lo) mod p, canonical (in [0, p)). */
inline ulong gl_reduce128(ulong hi, ulong lo) {
    ulong hi_hi = hi >> 32;           /* times 2^96 = -1 */
    ulong hi_lo = hi & GL_EPS;        /* times 2^64 = 2^32 - 1 */
    ulong t0 = lo - hi_hi;
    if (lo < hi_hi) t0 -= GL_EPS;     /* borrow of 2^64 = EPS (mod p) */
    ulong t1 = hi_lo * GL_EPS;        /* < 2^64, exact */
    ulong t2 = t0 + t1;
    if (t2 < t1) t2 += GL_EPS;        /* carry of 2^64; cannot overflow again */
    if (t2 >= GL_P) t2 -= GL_P;
    return t2;
}

inline ulong gl_mul(ulong a, ulong b) { return gl_reduce128(mul_hi(a, b), a * b); }

inline ulong gl_add(ulong a, ulong b) {   /* a, b canonical */
    ulong s = a + b;
    if (s < a) s += GL_EPS;
    if (s >= GL_P) s -= GL_P;
    return s;
}
"""

CALIBRATION_CL = GOLDILOCKS_CL + r"""
__kernel void gl_mul_pairs(__global const ulong *a, __global const ulong *b, __global ulong *out) {
    size_t i = get_global_id(0);
    out[i] = gl_mul(a[i], b[i]);
}

/* Four independent chains x <- x * y per work item; out = xor of the four. */
__kernel void gl_mulmod_chain(__global const ulong *xs, __global const ulong *ys, __global ulong *out,
                              uint iters) {
    size_t i = get_global_id(0);
    ulong y = ys[i];
    ulong x0 = xs[i];
    ulong x1 = gl_add(x0, 1UL), x2 = gl_add(x0, 2UL), x3 = gl_add(x0, 3UL);
    for (uint k = 0; k < iters; k++) {
        x0 = gl_mul(x0, y); x1 = gl_mul(x1, y); x2 = gl_mul(x2, y); x3 = gl_mul(x3, y);
    }
    out[i] = x0 ^ x1 ^ x2 ^ x3;
}

/* Sixteen independent chains x <- x * a + b per work item (two float8: explicit vectors, because PoCL
   vectorises them and not the scalar form; GPUs split them into scalar FMAs); out = their sum.
   Built with -cl-mad-enable so the compiler may contract each multiply-add into one FMA. */
__kernel void fma_chain(__global const float *as, __global const float *bs, __global float *out, uint iters) {
    size_t i = get_global_id(0);
    float8 a = (float8)(as[i]), b = (float8)(bs[i]);
    float8 x = (float8)(0.0f, 0.0625f, 0.125f, 0.1875f, 0.25f, 0.3125f, 0.375f, 0.4375f);
    float8 y = x + 0.5f;
    for (uint k = 0; k < iters; k++) {
        x = x * a + b;
        y = y * a + b;
    }
    float8 s = x + y;
    float4 s4 = s.lo + s.hi;
    float2 s2 = s4.lo + s4.hi;
    out[i] = s2.x + s2.y;
}
"""

MULMOD_CHAINS = 4
FMA_CHAINS = 16
FMA_STARTS = tuple(j / 16 for j in range(16))
BUILD_OPTIONS = "-cl-mad-enable"
MAX_ITERS = 1 << 20

EDGE_VALUES = (0, 1, 2, GOLDILOCKS_P - 1, GOLDILOCKS_P - 2, (1 << 32) - 1, 1 << 32, (1 << 32) + 1,
               (1 << 63), GOLDILOCKS_P >> 1, 0xFFFFFFFF00000000, 0x00000000FFFFFFFF, 0x123456789ABCDEF0 % GOLDILOCKS_P)


class CalibrationError(RuntimeError):
    """The device computed a wrong result (or could not run the calibration kernels)."""


@dataclass(frozen=True)
class Calibration:
    mulmod_mops: float
    f32_gflops: float
    measured_at: float = 0.0  # unix time, for humans reading the cache file
    checked: int = 0  # results compared against the host


def _global_size(device: Device) -> int:
    if device.kind == "cpu":
        n = device.compute_units * 1024
        return max(1024, min(n, 1 << 16))
    n = device.compute_units * 2048
    return max(4096, min(n, 1 << 20))


def _elapsed_s(event: Any, fallback: float) -> float:
    try:
        return (event.profile.end - event.profile.start) * 1e-9
    except Exception:  # a queue without profiling: host wall time of the launch
        return fallback


def _launch(dctx: DeviceContext, knl: Any, n: int, *args: Any) -> float:
    t0 = time.perf_counter()
    evt = knl(dctx.queue, (n,), None, *args)
    evt.wait()
    return max(_elapsed_s(evt, time.perf_counter() - t0), 1e-9)


def _timed(dctx: DeviceContext, knl: Any, n: int, make_args: Callable[[int], tuple[Any, ...]],
           target_s: float, repeats: int) -> tuple[int, float]:
    """Grow iterations until a launch takes ~target_s; then (iters, best time of `repeats` launches)."""
    iters = 16
    _launch(dctx, knl, n, *make_args(iters))  # warm-up (first launch pays for JIT/thread start)
    while True:
        t = _launch(dctx, knl, n, *make_args(iters))
        if t >= target_s * 0.5 or iters >= MAX_ITERS:
            break
        iters = min(MAX_ITERS, iters * max(2, min(64, math.ceil(target_s / t))))
    best = t
    for _ in range(repeats - 1):
        best = min(best, _launch(dctx, knl, n, *make_args(iters)))
    return iters, best


def _check_pairs(dctx: DeviceContext, rng: np.random.Generator) -> int:
    # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
    import pyopencl as cl
    a = [x for x in EDGE_VALUES for _ in EDGE_VALUES] + [int(v) for v in rng.integers(0, GOLDILOCKS_P, 256, dtype=np.uint64)]
    b = [y for _ in EDGE_VALUES for y in EDGE_VALUES] + [int(v) for v in rng.integers(0, GOLDILOCKS_P, 256, dtype=np.uint64)]
    ha, hb = np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)
    out = np.empty_like(ha)
    mf = cl.mem_flags
    ctx = dctx.context
    ba = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=ha)
    bb = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=hb)
    bo = cl.Buffer(ctx, mf.WRITE_ONLY, out.nbytes)
    knl = dctx.kernel(CALIBRATION_CL, "gl_mul_pairs", BUILD_OPTIONS)
    knl(dctx.queue, (len(a),), None, ba, bb, bo)
    cl.enqueue_copy(dctx.queue, out, bo).wait()
    for x, y, got in zip(a, b, out.tolist(), strict=True):
        want = (x * y) % GOLDILOCKS_P
        if got != want:
            raise CalibrationError(f"{dctx.device.id}: Goldilocks {x} * {y} gave {got}, expected {want}")
    return len(a)


def chain_reference(x: int, y: int, iters: int) -> int:
    """What gl_mulmod_chain computes for one work item, with Python ints."""
    xs = [(x + j) % GOLDILOCKS_P for j in range(MULMOD_CHAINS)]
    yp = pow(y, iters, GOLDILOCKS_P)  # x * y^iters, the same value as iterating
    acc = 0
    for v in xs:
        acc ^= (v * yp) % GOLDILOCKS_P
    return acc


def measure_mulmod(dctx: DeviceContext, *, target_s: float = 0.02, repeats: int = 2,
                   seed: int = 1) -> tuple[float, int]:
    """(million Goldilocks mul-mods per second, results checked). Blocking."""
    # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
    import pyopencl as cl

    rng = np.random.default_rng(seed)
    checked = _check_pairs(dctx, rng)
    n = _global_size(dctx.device)
    xs = rng.integers(0, GOLDILOCKS_P, n, dtype=np.uint64)
    ys = rng.integers(2, GOLDILOCKS_P, n, dtype=np.uint64)
    out = np.empty(n, dtype=np.uint64)
    mf = cl.mem_flags
    ctx = dctx.context
    bx = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=xs)
    by = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=ys)
    bo = cl.Buffer(ctx, mf.WRITE_ONLY, out.nbytes)
    knl = dctx.kernel(CALIBRATION_CL, "gl_mulmod_chain", BUILD_OPTIONS)
    iters, t = _timed(dctx, knl, n, lambda it: (bx, by, bo, np.uint32(it)), target_s, repeats)
    cl.enqueue_copy(dctx.queue, out, bo).wait()
    sample = sorted({0, n - 1, *rng.integers(0, n, 14).tolist()})
    for i in sample:
        want = chain_reference(int(xs[i]), int(ys[i]), iters)
        if int(out[i]) != want:
            raise CalibrationError(f"{dctx.device.id}: Goldilocks mul-mod chain item {i} gave {int(out[i])}, "
                                   f"expected {want} ({iters} iterations)")
    mops = n * MULMOD_CHAINS * iters / t / 1e6
    return mops, checked + len(sample)


def fma_reference(a: np.ndarray, b: np.ndarray, iters: int) -> np.ndarray:
    """What fma_chain computes, in float64 (the device's float32 result agrees to ~1e-3 relative)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    x = np.array(FMA_STARTS, dtype=np.float64)[:, None] + np.zeros_like(a64)[None, :]
    for _ in range(iters):
        x = x * a64 + b64
    return x.sum(axis=0)


def measure_fma(dctx: DeviceContext, *, target_s: float = 0.02, repeats: int = 2,
                seed: int = 2) -> tuple[float, int]:
    """(float32 GFLOP/s from FMA chains, results checked). Blocking."""
    # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
    import pyopencl as cl

    rng = np.random.default_rng(seed)
    n = _global_size(dctx.device)
    a = rng.uniform(0.5, 0.999, n).astype(np.float32)
    b = rng.uniform(-1.0, 1.0, n).astype(np.float32)
    out = np.empty(n, dtype=np.float32)
    mf = cl.mem_flags
    ctx = dctx.context
    ba = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=a)
    bb = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=b)
    bo = cl.Buffer(ctx, mf.WRITE_ONLY, out.nbytes)
    knl = dctx.kernel(CALIBRATION_CL, "fma_chain", BUILD_OPTIONS)
    iters, t = _timed(dctx, knl, n, lambda it: (ba, bb, bo, np.uint32(it)), target_s, repeats)
    cl.enqueue_copy(dctx.queue, out, bo).wait()
    idx = np.unique(np.concatenate([[0, n - 1], rng.integers(0, n, 62)]))
    want = fma_reference(a[idx], b[idx], min(iters, 1 << 14))
    if iters > (1 << 14):  # long chains have converged to the fixed point b / (1 - a)
        want = FMA_CHAINS * b[idx].astype(np.float64) / (1.0 - a[idx].astype(np.float64))
    if not np.allclose(out[idx], want, rtol=2e-3, atol=2e-3):
        bad = int(idx[np.argmax(np.abs(out[idx] - want))])
        raise CalibrationError(f"{dctx.device.id}: float32 FMA chain item {bad} gave {out[bad]}, "
                               f"expected about {want[list(idx).index(bad)]}")
    gflops = n * FMA_CHAINS * 2 * iters / t / 1e9
    return gflops, len(idx)


def measure(dctx: DeviceContext, *, target_s: float = 0.02, repeats: int = 2) -> Calibration:
    """Both figures for one device (blocking; raises CalibrationError)."""
    try:
        mops, c1 = measure_mulmod(dctx, target_s=target_s, repeats=repeats)
        gflops, c2 = measure_fma(dctx, target_s=target_s, repeats=repeats)
    except CalibrationError:
        raise
    except Exception as e:  # build failure, out of resources, lost device
        raise CalibrationError(f"{dctx.device.id}: calibration kernels failed: {type(e).__name__}: {e}") from e
    if not (mops > 0 and gflops > 0 and math.isfinite(mops) and math.isfinite(gflops)):
        raise CalibrationError(f"{dctx.device.id}: calibration gave non-positive figures {mops}, {gflops}")
    return Calibration(mops, gflops, measured_at=time.time(), checked=c1 + c2)


# --- cache ----------------------------------------------------------------------------------------------


def load_cache(cache_dir: Path | str) -> dict[str, Calibration]:
    """fingerprint -> Calibration from the cache file; {} when missing, unreadable, corrupt or outdated."""
    path = Path(cache_dir) / CACHE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("calibration cache %s unreadable (%s); recalibrating", path, e)
        return {}
    if not isinstance(raw, dict) or raw.get("version") != CALIBRATION_VERSION or not isinstance(raw.get("devices"), dict):
        return {}
    out: dict[str, Calibration] = {}
    for fp, rec in raw["devices"].items():
        try:
            cal = Calibration(float(rec["mulmod_mops"]), float(rec.get("f32_gflops", rec.get("fma_gflops"))),
                              float(rec.get("measured_at", 0.0)), int(rec.get("checked", 0)))
        except (KeyError, TypeError, ValueError):
            continue
        if cal.mulmod_mops > 0 and cal.f32_gflops > 0 and math.isfinite(cal.mulmod_mops) and math.isfinite(cal.f32_gflops):
            out[str(fp)] = cal
    return out


def save_cache(cache_dir: Path | str, entries: dict[str, Calibration], names: dict[str, str] | None = None) -> Path:
    """Write the cache atomically (temp file + rename)."""
    d = Path(cache_dir)
    d.mkdir(parents=True, exist_ok=True)
    body = {
        "version": CALIBRATION_VERSION,
        "devices": {
            fp: {"mulmod_mops": c.mulmod_mops, "f32_gflops": c.f32_gflops, "measured_at": c.measured_at,
                 "checked": c.checked, **({"name": names[fp]} if names and fp in names else {})}
            for fp, c in sorted(entries.items())
        },
    }
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".calibration-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=1)
            f.write("\n")
        os.replace(tmp, d / CACHE_FILE)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return d / CACHE_FILE


@dataclass(frozen=True)
class CalibrationOutcome:
    devices: tuple[Device, ...]  # calibrated (and pseudo-devices passed through); failed ones left out
    measured: tuple[str, ...] = ()  # ids measured now
    cached: tuple[str, ...] = ()  # ids whose figures came from the cache
    failed: dict[str, str] = field(default_factory=dict)  # id -> reason (device not offered)


async def calibrate(
    devices: Sequence[Device],
    cache_dir: Path | str,
    *,
    recalibrate: bool = False,
    target_s: float = 0.02,
    open_fn: Callable[[Device], DeviceContext] = device_context,
    measure_fn: Callable[..., Calibration] = measure,
) -> CalibrationOutcome:
    """Calibrate `devices` (one at a time, each in a worker thread), using and updating the cache.

    A device whose kernels give wrong results or fail is left out of the outcome's devices, with its
    reason in `failed`. Devices without OpenCL (the cpu-reference pseudo-device) pass through unmeasured.
    """
    cache = {} if recalibrate else load_cache(cache_dir)
    full = load_cache(cache_dir) if recalibrate else dict(cache)
    out: list[Device] = []
    measured: list[str] = []
    cached: list[str] = []
    failed: dict[str, str] = {}
    names: dict[str, str] = {}
    for dev in devices:
        if not dev.opencl:
            out.append(dev)
            continue
        cal = cache.get(dev.fingerprint)
        if cal is not None:
            out.append(dev.with_calibration(cal.mulmod_mops, cal.f32_gflops))
            cached.append(dev.id)
            continue

        def work(dev: Device = dev) -> Calibration:
            return measure_fn(open_fn(dev), target_s=target_s)

        try:
            cal = await run_blocking(work)
        except Exception as e:
            reason = str(e) if isinstance(e, CalibrationError) else f"{type(e).__name__}: {e}"
            log.error("device %s %r not offered: %s", dev.id, dev.name, reason)
            failed[dev.id] = reason
            continue
        full[dev.fingerprint] = cal
        names[dev.fingerprint] = dev.name
        out.append(dev.with_calibration(cal.mulmod_mops, cal.f32_gflops))
        measured.append(dev.id)
        log.info("calibrated %s %r: %.0f M mulmod/s, %.1f GFLOP/s fp32", dev.id, dev.name,
                 cal.mulmod_mops, cal.f32_gflops)
    if measured:
        try:
            save_cache(cache_dir, full, names)
        except OSError as e:
            log.warning("cannot write calibration cache in %s: %s", cache_dir, e)
    return CalibrationOutcome(tuple(out), tuple(measured), tuple(cached), failed)
