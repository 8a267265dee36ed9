"""The examples in examples/compute/, run through the compute runner on the local OpenCL device (PoCL in CI),
each against its reference: numpy, or the `cryptography` package's ChaCha20 byte for byte."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from tests.opencl import requires_opencl
from worker.compute.api import arun_local, local_runner

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "compute"


pytestmark = requires_opencl


def load(name: str):
    """An example module by path (examples/ is not a package: libp2p's wheel ships a top-level 'examples')."""
    spec = importlib.util.spec_from_file_location(f"compute_example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def runner():
    return local_runner()


async def test_saxpy_matches_numpy(runner):
    ex = load("saxpy")
    rng = np.random.default_rng(1)
    n = 10_007  # not a multiple of the work-group size: the kernel's guard matters
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    res = await arun_local(ex.job(-1.75, x, y), runner)
    want = ex.reference(-1.75, x, y)
    assert res["y"].shape == (n,) and res["y"].dtype == np.float32
    np.testing.assert_allclose(res["y"], want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(res["y"], y)  # the output really changed


@pytest.mark.parametrize("m,k,n", [(128, 96, 64), (77, 45, 101)])  # a multiple of the tile, and ragged edges
async def test_tiled_matmul_within_float32_tolerance(runner, m, k, n):
    ex = load("matmul")
    rng = np.random.default_rng(m)
    a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    res = await arun_local(ex.job(a, b), runner)
    c = res["C"]
    assert c.shape == (m, n)
    np.testing.assert_allclose(c, ex.reference(a, b), **ex.tolerance(k))
    assert res.launches == 1 and res.kernel_s > 0


async def test_matmul_other_tile_shapes(runner):
    ex = load("matmul")
    rng = np.random.default_rng(7)
    a = rng.uniform(-1, 1, (40, 33)).astype(np.float32)
    b = rng.uniform(-1, 1, (33, 50)).astype(np.float32)
    res = await arun_local(ex.job(a, b, ts=16, wpt=4), runner)
    assert res.launches == 1
    np.testing.assert_allclose(res["C"], ex.reference(a, b), **ex.tolerance(33))


@pytest.mark.parametrize("stride,pad,relu", [(1, 1, True), (2, 0, False)])
async def test_conv2d_layer_matches_numpy(runner, stride, pad, relu):
    ex = load("conv2d")
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((2, 3, 17, 19)).astype(np.float32)
    w = (rng.standard_normal((5, 3, 3, 3)) * 0.3).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    res = await arun_local(ex.job(x, w, bias, stride=stride, pad=pad, relu=relu), runner)
    want = ex.reference(x, w, bias, stride, pad, relu)
    assert res["y"].shape == want.shape
    np.testing.assert_allclose(res["y"], want, rtol=1e-5, atol=1e-5)
    if relu:
        assert (res["y"] >= 0).all() and (want == 0).any()


# RFC 8439 section 2.4.2: the "sunscreen" test vector.
RFC_KEY = bytes(range(32))
RFC_NONCE = bytes.fromhex("000000000000004a00000000")
RFC_PLAINTEXT = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
                 b"sunscreen would be it.")
RFC_CIPHERTEXT_HEAD = bytes.fromhex("6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b")


async def test_chacha20_rfc8439_vector(runner):
    ex = load("chacha20")
    res = await arun_local(ex.job(RFC_KEY, RFC_NONCE, RFC_PLAINTEXT, counter=1), runner)
    ct = res["ciphertext"].tobytes()
    assert ct[:32] == RFC_CIPHERTEXT_HEAD
    assert ct == ex.reference(RFC_KEY, RFC_NONCE, RFC_PLAINTEXT, counter=1)
    back = await arun_local(ex.job(RFC_KEY, RFC_NONCE, ct, counter=1), runner)  # decrypting is encrypting
    assert back["ciphertext"].tobytes() == RFC_PLAINTEXT


@pytest.mark.parametrize("nbytes", [1, 63, 64, 65, 4096 + 17, (1 << 20) + 37])  # the last one streams
async def test_chacha20_matches_cryptography(runner, nbytes):
    ex = load("chacha20")
    key, nonce = os.urandom(32), os.urandom(12)
    data = os.urandom(nbytes)
    counter = 7 if nbytes < 100 else 0
    job = ex.job(key, nonce, data, counter=counter)
    assert bool(job.input) == (nbytes > (1 << 20))
    res = await arun_local(job, runner)
    assert res["ciphertext"].tobytes() == ex.reference(key, nonce, data, counter=counter)


def test_examples_run_as_scripts():
    """Each example's main() checks itself against its reference (exit code 0)."""
    assert load("saxpy").main(["1000"]) == 0
    assert load("matmul").main(["48"]) == 0
    assert load("chacha20").main(["1000"]) == 0
    assert load("conv2d").main([]) == 0


@pytest.mark.parametrize("m,k,n", [(64, 48, 32), (50, 37, 61)])  # whole tiles, and ragged edges
async def test_sgemm_pipeline_transpose_then_gemm(runner, m, k, n):
    ex = load("sgemm")
    rng = np.random.default_rng(k)
    a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    job = ex.job(a, b)
    assert [ln["kernel"] for ln in job.spec["launches"]] == ["transpose", "gemm_nt"]
    res = await arun_local(job, runner)
    np.testing.assert_allclose(res["C"], ex.reference(a, b), **ex.tolerance(k))
    assert res["C"].shape == (m, n) and res.launches == 2
    # only A and B went to the device and only C came back: the transposed copy stayed there
    assert res.bytes_in == a.nbytes + b.nbytes and res.bytes_out == m * n * 4
    assert [o.name for o in res.outputs] == ["C"]


@pytest.mark.parametrize("n", [1, 127, 100_003])
async def test_reduction_with_local_memory(runner, n):
    ex = load("reduction")
    x = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    res = await arun_local(ex.job(x), runner)
    assert res["sum"].shape == (1,) and res.bytes_out == 4 and res.launches == 2
    assert abs(float(res["sum"][0]) - ex.reference(x)) <= 1e-5 * max(1.0, float(np.abs(x).sum()))


@pytest.mark.parametrize("h,w,size", [(17, 23, 3), (32, 40, 5)])
async def test_image_convolution_matches_numpy(runner, h, w, size):
    ex = load("convolution")
    rng = np.random.default_rng(h)
    image = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    filt = rng.uniform(-1, 1, (size, size)).astype(np.float32)
    gain = (1.0, 0.5, 2.0, -1.0)
    res = await arun_local(ex.job(image, filt, gain), runner)
    got = ex.as_float(res["out"])
    assert got.shape == (h, w, 4)
    np.testing.assert_allclose(got, ex.reference(image, filt, gain), rtol=1e-5, atol=1e-3)


def test_new_examples_run_as_scripts():
    assert load("sgemm").main(["64"]) == 0
    assert load("reduction").main(["5000"]) == 0
    assert load("convolution").main([]) == 0
