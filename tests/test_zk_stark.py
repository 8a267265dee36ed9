"""Prove-then-verify for both AIRs on both backends, and rejection (with a reason) of tampered proofs."""

from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import zk
from worker.zk import field as F
from worker.zk import gpu
from worker.zk import proof as PF

CASES = [("fibonacci", {"a": 1, "b": 1}), ("cubic", {"x0": 3, "c": 5})]
HEADER = len(PF.MAGIC) + 1


def fib_out(a, b, steps):
    for _ in range(steps):
        a, b = b, (a + b) % F.P
    return a


def cubic_out(x, c, steps):
    for _ in range(steps - 1):
        x = (x**3 + c) % F.P
    return x


_PROOFS: dict[str, bytes] = {}


def _small_proofs() -> dict[str, bytes]:
    """Small proofs reused by the tampering tests (1024 steps: two committed FRI layers and a remainder);
    a plain cache because hypothesis tests cannot take function-scoped fixtures."""
    if not _PROOFS:
        _PROOFS.update({air: zk.prove(air, pub, 1024, blowup=2, queries=12) for air, pub in CASES})
    return _PROOFS


@pytest.fixture
def proofs():
    return _small_proofs()


def _proof(air: str) -> bytes:
    return _small_proofs()[air]


def body(proof: bytes) -> dict:
    return msgpack.unpackb(proof[HEADER:], raw=False)


def repack(b: dict) -> bytes:
    return PF.MAGIC + bytes([PF.VERSION]) + msgpack.packb(b, use_bin_type=True)


def flip_element(blob: bytes, index: int, delta: int = 1) -> bytes:
    a = np.frombuffer(blob, dtype="<u8").copy()
    a[index % a.size] = (int(a[index % a.size]) + delta) % F.P
    return a.tobytes()


@pytest.mark.parametrize("air,pub", CASES)
@pytest.mark.parametrize("steps,blowup", [(8, 2), (32, 8), (256, 4)])
def test_prove_verify_numpy(air, pub, steps, blowup):
    proof = zk.prove(air, pub, steps, blowup=blowup, queries=8)
    v = zk.verify(proof, expect={"air": air, "steps": steps, "public_inputs": pub})
    assert v.ok, v.reason
    want = fib_out(pub["a"], pub["b"], steps) if air == "fibonacci" else cubic_out(pub["x0"], pub["c"], steps)
    assert v.public["out"] == want and v.steps == steps and v.air == air


@pytest.mark.parametrize("air,pub", CASES)
def test_backends_produce_identical_proofs(air, pub):
    pair = gpu.default_queue()
    if pair is None:
        pytest.skip("no OpenCL device")
    cl_proof = zk.prove(air, pub, 512, blowup=4, queries=10, backend=pair)
    assert zk.verify(cl_proof).ok
    assert cl_proof == zk.prove(air, pub, 512, blowup=4, queries=10, backend="numpy")


def test_security_is_stated_and_checked(proofs):
    v = zk.verify(proofs["cubic"])
    assert v.ok and v.security_bits == PF.security_bits(2, 12, 2048) == 11
    assert zk.security_bits(8, 27, 1 << 21) == 80  # 27 queries x 3 bits, minus one
    assert zk.security_bits(2, 40, 16) == 3  # only 4 distinct cosets to query: 4 x 1 bit, minus one
    assert zk.security_bits(8, 128, 1 << 24) == 102  # capped by the field: 128 - 24 - 1, minus one
    low = zk.verify(proofs["cubic"], min_security_bits=80)
    assert not low.ok and "below the required 80" in low.reason


def test_prover_refuses_bad_parameters():
    with pytest.raises(ValueError, match="power of two"):
        zk.prove("cubic", {"x0": 1, "c": 1}, 100)
    with pytest.raises(ValueError, match="unknown AIR"):
        zk.prove("sha256", {}, 64)


# ---------------------------------------------------------------- tampering: each rejected with a reason


def test_changed_public_input(proofs):
    b = body(proofs["fibonacci"])
    b["public"]["out"] = (b["public"]["out"] + 1) % F.P
    v = zk.verify(repack(b))
    assert not v.ok and "out-of-domain" in v.reason
    b = body(proofs["cubic"])
    b["public"]["c"] += 1
    assert "out-of-domain" in zk.verify(repack(b)).reason


def test_flipped_merkle_path(proofs):
    for key, name in (("trace_open", "trace"), ("comp_open", "composition")):
        b = body(proofs["cubic"])
        b[key]["paths"] = flip_element(b[key]["paths"], 5)
        v = zk.verify(repack(b))
        assert not v.ok and f"{name} commitment: Merkle path" in v.reason


def test_changed_trace_row(proofs):
    b = body(proofs["fibonacci"])
    b["trace_open"]["leaves"] = flip_element(b["trace_open"]["leaves"], 0)
    assert "trace commitment: Merkle path" in zk.verify(repack(b)).reason


def test_changed_fri_layer(proofs):
    b = body(proofs["cubic"])
    b["fri_open"][0]["leaves"] = flip_element(b["fri_open"][0]["leaves"], 3)
    assert "FRI layer 1" in zk.verify(repack(b)).reason
    b = body(proofs["cubic"])
    b["fri_roots"][1] = flip_element(b["fri_roots"][1], 0)
    assert not zk.verify(repack(b)).ok
    b = body(proofs["cubic"])
    b["remainder"] = flip_element(b["remainder"], 0)
    reason = zk.verify(repack(b)).reason  # the remainder is in the transcript: the queries move
    assert "remainder" in reason or "committed value was altered" in reason or "Merkle path" in reason


def test_changed_ood_value(proofs):
    b = body(proofs["cubic"])
    b["ood"] = flip_element(b["ood"], 2)
    assert "out-of-domain" in zk.verify(repack(b)).reason


def test_truncated_proof(proofs):
    p = proofs["fibonacci"]
    for cut in (3, HEADER, len(p) // 2, len(p) - 1):
        v = zk.verify(p[:cut])
        assert not v.ok and v.reason.startswith("malformed proof") and ("truncated" in v.reason or "magic" in v.reason)


def test_dropped_query_opening(proofs):
    b = body(proofs["cubic"])
    leaves, paths = b["trace_open"]["leaves"], b["trace_open"]["paths"]
    b["trace_open"]["leaves"] = leaves[: len(leaves) - 8 * 4]  # the last leaf (4 rows x 1 column) ...
    assert "truncated" in zk.verify(repack(b)).reason  # ... without its path: inconsistent sizes
    b["trace_open"]["paths"] = paths[: len(paths) - 8 * 4 * 9]  # ... and its path (depth 9)
    assert "openings dropped or added" in zk.verify(repack(b)).reason


def test_wrong_version(proofs):
    p = bytearray(proofs["fibonacci"])
    p[len(PF.MAGIC)] = 2
    v = zk.verify(bytes(p))
    assert not v.ok and "unsupported proof format version 2" in v.reason


def test_changed_parameters(proofs):
    for key, value, reason in (("steps", 2048, ""), ("queries", 13, "stated security"), ("blowup", 3, "blowup"),
                               ("security_bits", 99, "stated security"), ("air", "sha", "unknown AIR")):
        b = body(proofs["cubic"])
        b[key] = value
        v = zk.verify(repack(b))
        assert not v.ok and reason in v.reason, (key, v.reason)


def test_extra_field_rejected(proofs):
    b = body(proofs["cubic"])
    b["note"] = "hi"
    assert "unexpected ['note']" in zk.verify(repack(b)).reason


def test_valid_proof_of_another_statement(proofs):
    v = zk.verify(proofs["cubic"], expect={"air": "cubic", "steps": 1024, "public_inputs": {"x0": 4, "c": 5}})
    assert not v.ok and "different statement" in v.reason
    assert not zk.verify(proofs["cubic"], expect={"steps": 2048}).ok
    assert zk.verify(proofs["cubic"], expect=zk.validate_spec(
        {"air": "cubic", "steps": 1024, "public_inputs": {"x0": 3, "c": 5}, "queries": 12, "blowup": 2})).ok


def test_trailing_bytes_rejected(proofs):
    v = zk.verify(proofs["cubic"] + b"\x00")
    assert not v.ok and "malformed proof" in v.reason


def test_verifier_needs_no_opencl(proofs, tmp_path):
    """A fresh interpreter where importing pyopencl fails still verifies (and proves on numpy)."""
    import subprocess
    import sys

    path = tmp_path / "proof.bin"
    path.write_bytes(proofs["fibonacci"])
    code = (
        "import sys; sys.modules['pyopencl'] = None\n"
        "from worker import zk\n"
        f"v = zk.verify(open({str(path)!r}, 'rb').read())\n"
        "assert v.ok, v.reason\n"
        "assert zk.verify(zk.prove('cubic', {'x0': 1, 'c': 2}, 16, queries=4)).ok\n"
        "assert 'pyopencl' not in sys.modules or sys.modules['pyopencl'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).resolve().parents[1]))


def test_garbage_is_rejected_not_raised():
    for junk in (b"", b"GMZK", b"GMZK\x01\xc1", b"\x00" * 100, "not bytes", None):
        v = zk.verify(junk)
        assert not v.ok and v.reason


# ---------------------------------------------------------------- property: single corruptions


@settings(max_examples=20, deadline=None)
@given(pos=st.integers(0, 10**9), bit=st.integers(0, 7))
def test_any_bit_flip_is_rejected(pos, bit):
    p = bytearray(_proof("fibonacci"))
    p[pos % len(p)] ^= 1 << bit
    assert not zk.verify(bytes(p)).ok


BLOBS = ["trace_root", "comp_root", "ood", "remainder", ("trace_open", "leaves"), ("trace_open", "paths"),
         ("comp_open", "leaves"), ("comp_open", "paths"), ("fri_open", 0, "leaves"), ("fri_open", 1, "paths"),
         ("fri_roots", 0)]


@settings(max_examples=20, deadline=None)
@given(where=st.sampled_from(BLOBS), index=st.integers(0, 10**6), delta=st.integers(1, F.P - 1))
def test_any_single_element_corruption_is_rejected(where, index, delta):
    b = body(_proof("cubic"))
    path = where if isinstance(where, tuple) else (where,)
    parent = b
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = flip_element(parent[path[-1]], index, delta)
    v = zk.verify(repack(b))
    assert not v.ok and v.reason
