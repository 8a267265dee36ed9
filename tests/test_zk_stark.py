"""Prove-then-verify for every AIR on both backends, the security floor, and rejection (with a reason) of
tampered proofs."""

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
from worker.zk import security as SEC

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
    """Small proofs reused by the tampering tests (1024 steps at the default parameters: three committed FRI
    layers and a remainder); a plain cache because hypothesis tests cannot take function-scoped fixtures."""
    if not _PROOFS:
        _PROOFS.update({air: zk.prove(air, pub, 1024) for air, pub in CASES})
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
@pytest.mark.parametrize("steps,blowup,queries,grinding", [(16, 8, 30, 16), (64, 4, 44, 16), (256, 2, 90, 12)])
def test_prove_verify_numpy(air, pub, steps, blowup, queries, grinding):
    proof = zk.prove(air, pub, steps, blowup=blowup, queries=queries, grinding=grinding)
    v = zk.verify(proof, expect={"air": air, "steps": steps, "public_inputs": pub})
    assert v.ok, v.reason
    want = fib_out(pub["a"], pub["b"], steps) if air == "fibonacci" else cubic_out(pub["x0"], pub["c"], steps)
    assert v.public["out"] == want and v.steps == steps and v.air == air


@pytest.mark.parametrize("air,pub", CASES)
def test_backends_produce_identical_proofs(air, pub):
    pair = gpu.default_queue()
    if pair is None:
        pytest.skip("no OpenCL device")
    cl_proof = zk.prove(air, pub, 512, backend=pair)
    assert zk.verify(cl_proof).ok
    assert cl_proof == zk.prove(air, pub, 512, backend="numpy")


def test_security_is_stated_and_checked(proofs):
    v = zk.verify(proofs["cubic"])
    assert v.ok and v.security_bits == PF.security_bits(8, 30, 8192, 16) == 105  # 30 x 3 + 16, minus one
    assert 50 <= v.provable_bits < 70 and v.provable_bits == zk.inspect(proofs["cubic"])["provable_bits"]
    assert zk.security_bits(8, 27, 1 << 21) == 80  # 27 queries x 3 bits, minus one, no grinding
    assert zk.security_bits(8, 28, 1 << 19, 16) == 99  # Plonky2's figure (100) before winterfell's "- 1"
    assert zk.security_bits(2, 40, 16) == 3  # only 4 distinct cosets to query: 4 x 1 bit, minus one
    assert zk.security_bits(8, 128, 1 << 24) == 102  # capped by the field: 128 - 24 - 1, minus one
    low = zk.verify(proofs["cubic"], min_security_bits=110)
    assert not low.ok and "below the 110-bit floor" in low.reason
    low = zk.verify(proofs["cubic"], min_provable_bits=100)
    assert not low.ok and "provable security" in low.reason


def test_provable_bits_follow_the_johnson_bound():
    """Each query is worth at most log2(1/sqrt(rho)) = log2(blowup)/2 provable bits (plus grinding), and the
    provable figure grows with queries and grinding but never passes the conjectured one."""
    domains = (1 << 19, 1 << 17, 1 << 15, 1 << 13, 1 << 11, 1 << 9)
    base = SEC.provable_bits(8, 30, 16, 1 << 16, 7 << 16, domains)
    assert base <= 30 * 1.5 + 16 < SEC.conjectured_bits(8, 30, 16, 1 << 19)
    more = SEC.provable_bits(8, 60, 16, 1 << 16, 7 << 16, domains)
    assert base + 10 < more < base + 30  # until the commit phase's (proximity-gap) error takes over
    assert base + 2 <= SEC.provable_bits(8, 30, 20, 1 << 16, 7 << 16, domains) <= base + 4  # the optimal mu shifts


def test_prover_refuses_bad_parameters():
    with pytest.raises(ValueError, match="power of two"):
        zk.prove("cubic", {"x0": 1, "c": 1}, 100)
    with pytest.raises(ValueError, match="unknown AIR"):
        zk.prove("sha256", {}, 64)


def test_floor_everywhere(monkeypatch):
    """The audit's forgery ran at --queries 4 --blowup 4 (7 bits): the prover, the spec validation and the
    verifier all refuse such parameters, with the reason."""
    with pytest.raises(ValueError, match="below the 100-bit floor"):
        zk.prove("cubic", {"x0": 3, "c": 5}, 64, blowup=4, queries=4)
    with pytest.raises(ValueError, match="below the 100-bit floor"):
        zk.validate_spec({"air": "cubic", "public_inputs": {"x0": 3, "c": 5}, "steps": 64, "queries": 28, "grinding": 0})
    with pytest.raises(ValueError, match="below the 100-bit floor"):  # tiny domain: only 16 distinct cosets
        zk.prove("cubic", {"x0": 3, "c": 5}, 8)
    monkeypatch.setattr(SEC, "MIN_SECURITY_BITS", 0)  # a forger's prover has no floor
    weak = zk.prove("cubic", {"x0": 3, "c": 5}, 64, blowup=4, queries=4, grinding=0)
    assert zk.verify(weak).ok
    monkeypatch.undo()
    v = zk.verify(weak)
    assert not v.ok and "below the 100-bit floor" in v.reason and v.security_bits == 7
    assert not zk.verify(weak, min_security_bits=0).ok  # a caller cannot lower the floor


def test_grinding_is_bound_into_the_transcript(proofs):
    b = body(proofs["cubic"])
    b["pow_nonce"] = (b["pow_nonce"] + 1) % F.P
    v = zk.verify(repack(b))
    assert not v.ok and ("proof of work" in v.reason or "Merkle" in v.reason)
    b = body(proofs["cubic"])
    b["grinding"], b["security_bits"] = 20, 109  # claim more work than was done
    b["provable_bits"] = PF.Params(PF.get("cubic"), 1024, 8, 30, 20).provable_bits
    v = zk.verify(repack(b))
    assert not v.ok and ("proof of work" in v.reason or "out-of-domain" in v.reason)


# ---------------------------------------------------------------- tampering: each rejected with a reason


def test_changed_public_input(proofs):
    b = body(proofs["fibonacci"])
    b["public"]["out"] = (b["public"]["out"] + 1) % F.P
    v = zk.verify(repack(b))
    assert not v.ok and "out-of-domain" in v.reason
    b = body(proofs["cubic"])
    b["public"]["c"] += 1
    assert "out-of-domain" in zk.verify(repack(b)).reason


def flip_byte(blob: bytes, index: int) -> bytes:
    a = bytearray(blob)
    a[index % len(a)] ^= 1
    return bytes(a)


def test_flipped_merkle_path(proofs):
    for key, name in (("trace_open", "trace"), ("comp_open", "composition")):
        b = body(proofs["cubic"])
        b[key]["nodes"] = flip_byte(b[key]["nodes"], 5)
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
    b["fri_roots"][1] = flip_byte(b["fri_roots"][1], 0)
    assert not zk.verify(repack(b)).ok
    b = body(proofs["cubic"])
    b["remainder"] = flip_element(b["remainder"], 0)
    reason = zk.verify(repack(b)).reason  # the remainder is in the transcript: the queries move
    assert any(s in reason for s in ("remainder", "committed value was altered", "Merkle path", "proof of work"))


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
    leaves, nodes = b["trace_open"]["leaves"], b["trace_open"]["nodes"]
    b["trace_open"]["leaves"] = leaves[: len(leaves) - 8 * 2]  # half a leaf (4 rows x 1 column) ...
    assert "truncated" in zk.verify(repack(b)).reason  # ... inconsistent sizes
    b["trace_open"]["leaves"] = leaves[: len(leaves) - 8 * 4]  # the last leaf
    assert "openings dropped or added" in zk.verify(repack(b)).reason
    b["trace_open"]["leaves"] = leaves
    b["trace_open"]["nodes"] = nodes[:-32]  # one digest of the multiproof
    assert "openings dropped or added" in zk.verify(repack(b)).reason
    b["trace_open"]["nodes"] = nodes[:-5]
    assert "truncated" in zk.verify(repack(b)).reason


def test_wrong_version(proofs):
    p = bytearray(proofs["fibonacci"])
    p[len(PF.MAGIC)] = 1
    v = zk.verify(bytes(p))
    assert not v.ok and "unsupported proof format version 1" in v.reason


def test_changed_parameters(proofs):
    for key, value, reason in (("steps", 2048, ""), ("queries", 31, "stated security"), ("blowup", 3, "blowup"),
                               ("security_bits", 99, "stated security"), ("provable_bits", 99, "stated provable"),
                               ("grinding", 17, "stated security"), ("air", "sha", "unknown AIR")):
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
    assert not zk.verify(proofs["cubic"], expect={"air": "fibonacci"}).ok
    assert not zk.verify(proofs["cubic"], expect={"public_inputs": {"out": 1}}).ok  # outputs can be pinned too
    assert not zk.verify(proofs["cubic"], expect={"public_inputs": {"root0": 1}}).ok  # a name it does not have
    assert zk.verify(proofs["cubic"], expect=zk.validate_spec(
        {"air": "cubic", "steps": 1024, "public_inputs": {"x0": 3, "c": 5}})).ok
    out = zk.verify(proofs["cubic"]).public["out"]
    assert zk.verify(proofs["cubic"], expect={"public_inputs": {"out": out, "x0": 3}}).ok


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
        "assert zk.verify(zk.prove('cubic', {'x0': 1, 'c': 2}, 16)).ok\n"
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


BLOBS = ["trace_root", "comp_root", "ood", "remainder", ("trace_open", "leaves"), ("trace_open", "nodes"),
         ("comp_open", "leaves"), ("comp_open", "nodes"), ("fri_open", 0, "leaves"), ("fri_open", 1, "nodes"),
         ("fri_roots", 0)]
DIGESTS = {"trace_root", "comp_root", "nodes", 0}


@settings(max_examples=20, deadline=None)
@given(where=st.sampled_from(BLOBS), index=st.integers(0, 10**6), delta=st.integers(1, F.P - 1))
def test_any_single_element_corruption_is_rejected(where, index, delta):
    b = body(_proof("cubic"))
    path = where if isinstance(where, tuple) else (where,)
    parent = b
    for key in path[:-1]:
        parent = parent[key]
    if path[-1] in DIGESTS:  # digests are bytes, not field elements: flip a bit
        parent[path[-1]] = flip_byte(parent[path[-1]], index)
    else:
        parent[path[-1]] = flip_element(parent[path[-1]], index, delta)
    v = zk.verify(repack(b))
    assert not v.ok and v.reason
