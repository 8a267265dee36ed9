"""Calibration: the Goldilocks kernel against Python ints, the fp32 kernel against numpy, positive figures,
the per-fingerprint JSON cache, and that a device computing wrong results is caught."""

import json

import numpy as np
import pyopencl as cl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker import calibration as C
from worker.calibration import GOLDILOCKS_P as P
from worker.devices import Device, discover
from worker.opencl import device_context

MASK64 = (1 << 64) - 1
EPS = (1 << 32) - 1


def reduce128_model(hi: int, lo: int) -> int:
    """The kernel's gl_reduce128, step by step with 64-bit wrap-around, in Python."""
    hi_hi, hi_lo = hi >> 32, hi & EPS
    t0 = (lo - hi_hi) & MASK64
    if lo < hi_hi:
        t0 = (t0 - EPS) & MASK64
    t1 = hi_lo * EPS
    t2 = (t0 + t1) & MASK64
    if t2 < t1:
        t2 = (t2 + EPS) & MASK64
    if t2 >= P:
        t2 -= P
    return t2


@given(st.integers(0, P - 1), st.integers(0, P - 1))
@example(P - 1, P - 1)
@example((1 << 32), (1 << 32))
@settings(max_examples=400, deadline=None)
def test_reduction_algorithm_matches_python_ints(a, b):
    x = a * b
    assert reduce128_model(x >> 64, x & MASK64) == x % P


@given(st.integers(0, MASK64), st.integers(0, MASK64))
@example(MASK64, 0)  # borrow branch
@example(MASK64, MASK64)  # carry branch
@example(1 << 40, 5)
@settings(max_examples=300, deadline=None)
def test_reduction_is_canonical_for_any_128_bit_input(hi, lo):
    assert reduce128_model(hi, lo) == ((hi << 64) | lo) % P


@pytest.fixture(scope="module")
def dctx():
    return device_context(discover("all").devices[0])


def _run_pairs(dctx, a, b, source=None):
    ha, hb = np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)
    out = np.empty_like(ha)
    mf = cl.mem_flags
    ba = cl.Buffer(dctx.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=ha)
    bb = cl.Buffer(dctx.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=hb)
    bo = cl.Buffer(dctx.context, mf.WRITE_ONLY, out.nbytes)
    knl = dctx.kernel(source or C.CALIBRATION_CL, "gl_mul_pairs", C.BUILD_OPTIONS)
    knl(dctx.queue, (len(a),), None, ba, bb, bo)
    cl.enqueue_copy(dctx.queue, out, bo).wait()
    return out.tolist()


def test_device_mulmod_matches_python_ints(dctx):
    rng = np.random.default_rng(7)
    edges = list(C.EDGE_VALUES)
    a = [x for x in edges for _ in edges] + [int(v) for v in rng.integers(0, P, 4096, dtype=np.uint64)]
    b = [y for _ in edges for y in edges] + [int(v) for v in rng.integers(0, P, 4096, dtype=np.uint64)]
    got = _run_pairs(dctx, a, b)
    assert got == [(x * y) % P for x, y in zip(a, b, strict=True)]


def test_chain_reference_equals_iteration():
    x, y = 123456789123, P - 5
    acc = 0
    for j in range(C.MULMOD_CHAINS):
        v = (x + j) % P
        for _ in range(37):
            v = v * y % P
        acc ^= v
    assert C.chain_reference(x, y, 37) == acc


def test_measure_gives_positive_checked_figures(dctx):
    cal = C.measure(dctx)
    assert cal.mulmod_mops > 0 and cal.f32_gflops > 0
    assert cal.checked > 100


def test_fma_reference_matches_device(dctx):
    rng = np.random.default_rng(3)
    n = 256
    a = rng.uniform(0.5, 0.999, n).astype(np.float32)
    b = rng.uniform(-1, 1, n).astype(np.float32)
    out = np.empty(n, dtype=np.float32)
    mf = cl.mem_flags
    ba = cl.Buffer(dctx.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=a)
    bb = cl.Buffer(dctx.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=b)
    bo = cl.Buffer(dctx.context, mf.WRITE_ONLY, out.nbytes)
    knl = dctx.kernel(C.CALIBRATION_CL, "fma_chain", C.BUILD_OPTIONS)
    knl(dctx.queue, (n,), None, ba, bb, bo, np.uint32(20))
    cl.enqueue_copy(dctx.queue, out, bo).wait()
    want = C.fma_reference(a, b, 20)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(out, C.fma_reference(a, b, 21), rtol=1e-4, atol=1e-4)  # the check can tell


def test_wrong_arithmetic_is_caught(dctx, monkeypatch):
    # Drop the borrow correction from the reduction: most products are still right, edge cases are not.
    broken = C.CALIBRATION_CL.replace("if (lo < hi_hi) t0 -= GL_EPS;", "")
    assert broken != C.CALIBRATION_CL
    monkeypatch.setattr(C, "CALIBRATION_CL", broken)
    with pytest.raises(C.CalibrationError, match="Goldilocks"):
        C.measure(dctx)


def test_wrong_float_results_are_caught(dctx, monkeypatch):
    broken = C.CALIBRATION_CL.replace("x = x * a + b;", "x = x * a + b * 1.01f;")
    assert broken != C.CALIBRATION_CL
    monkeypatch.setattr(C, "CALIBRATION_CL", broken)
    with pytest.raises(C.CalibrationError, match="FMA"):
        C.measure(dctx)


# --- calibrate() and its cache ---------------------------------------------------------------------------------


def _fake_dev(i):
    return Device(f"0:{i}", f"fp{i}", "P", "V", f"dev{i}", "gpu", 8, 1 << 30, 256, True, True)


async def test_calibrate_real_device_then_cache(tmp_path):
    dev = discover("all").devices[0]
    out = await C.calibrate([dev, Device.cpu_reference()], tmp_path)
    assert out.measured == (dev.id,) and out.failed == {}
    d, ref = out.devices
    assert d.calibrated and d.mulmod_mops > 0 and d.f32_gflops > 0
    assert not ref.calibrated and not ref.opencl  # passed through
    body = json.loads((tmp_path / C.CACHE_FILE).read_text())
    assert body["version"] == C.CALIBRATION_VERSION
    assert body["devices"][dev.fingerprint]["mulmod_mops"] == d.mulmod_mops

    def must_not_measure(*a, **k):
        raise AssertionError("recalibrated despite the cache")

    again = await C.calibrate([dev], tmp_path, measure_fn=must_not_measure)
    assert again.cached == (dev.id,) and again.devices[0].mulmod_mops == d.mulmod_mops


async def test_recalibrate_option_and_corrupt_cache(tmp_path):
    calls = []

    def fake_measure(dctx, target_s):
        calls.append(dctx)
        return C.Calibration(100.0 + len(calls), 5.0)

    opened = lambda d: d  # noqa: E731
    devs = [_fake_dev(0), _fake_dev(1)]
    out = await C.calibrate(devs, tmp_path, open_fn=opened, measure_fn=fake_measure)
    assert [d.mulmod_mops for d in out.devices] == [101.0, 102.0]
    out = await C.calibrate(devs, tmp_path, open_fn=opened, measure_fn=fake_measure)
    assert len(calls) == 2 and out.cached == ("0:0", "0:1")
    out = await C.calibrate(devs[:1], tmp_path, recalibrate=True, open_fn=opened, measure_fn=fake_measure)
    assert len(calls) == 3 and out.devices[0].mulmod_mops == 103.0
    cache = C.load_cache(tmp_path)
    assert cache["fp0"].mulmod_mops == 103.0 and cache["fp1"].mulmod_mops == 102.0  # others kept
    (tmp_path / C.CACHE_FILE).write_text("{not json")
    assert C.load_cache(tmp_path) == {}
    out = await C.calibrate(devs[:1], tmp_path, open_fn=opened, measure_fn=fake_measure)
    assert out.measured == ("0:0",) and len(calls) == 4
    (tmp_path / C.CACHE_FILE).write_text(json.dumps({"version": 1, "devices": {"fp0": {"mulmod_mops": -1, "f32_gflops": 1}}}))
    assert C.load_cache(tmp_path) == {}  # non-positive figures are not trusted


async def test_a_failing_device_is_left_out(tmp_path):
    def fake_measure(dctx, target_s):
        if dctx.id == "0:1":
            raise C.CalibrationError("0:1: Goldilocks 3 * 5 gave 16, expected 15")
        return C.Calibration(50.0, 2.0)

    out = await C.calibrate([_fake_dev(0), _fake_dev(1)], tmp_path, open_fn=lambda d: d, measure_fn=fake_measure)
    assert [d.id for d in out.devices] == ["0:0"]
    assert "expected 15" in out.failed["0:1"]
    assert "fp1" not in C.load_cache(tmp_path)
