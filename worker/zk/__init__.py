"""Zero-knowledge proofs on the mesh: a FRI-based STARK over Goldilocks with numpy and OpenCL backends.

Public API (used by the zk.prove / zk.verify job kinds and `mesh-node prove/verify`):

    validate_spec(spec) -> dict          # ValueError with a clear message for a bad zk.prove spec
    prove(air, public_inputs, steps, blowup=4, queries=41, backend="numpy") -> bytes
    prove_spec(spec, backend="numpy") -> bytes
    verify(proof_bytes, expect=None, min_security_bits=0) -> Verdict(ok, reason, security_bits, air, steps, public)
    inspect(proof_bytes) -> dict         # what a proof claims, without verifying it

`backend` is "numpy", "opencl" (first OpenCL device), a Backend, or a (pyopencl.Context, CommandQueue) pair.
The verifier needs no OpenCL. The proof format is docs/proof-format.md.
"""

from __future__ import annotations

from typing import Any

from . import proof as _proof
from .air import AIRS
from .backend import Backend
from .clbackend import resolve
from .proof import VERSION as PROOF_VERSION
from .proof import ProofFormatError, security_bits
from .spec import validate_spec
from .stark import Verdict, prove, verify


def prove_spec(spec: dict[str, Any], backend: object = "numpy") -> bytes:
    """Prove a zk.prove job spec (validated first)."""
    s = validate_spec(spec)
    return prove(s["air"], s["public_inputs"], s["steps"], s["blowup"], s["queries"], backend)


def inspect(proof_bytes: bytes) -> dict[str, Any]:
    """The statement a proof claims (not verified): air, steps, blowup, queries, security_bits, public."""
    p = _proof.decode(proof_bytes)
    return {
        "version": PROOF_VERSION,
        "air": p.params.air.name,
        "steps": p.params.steps,
        "blowup": p.params.blowup,
        "queries": p.params.queries,
        "security_bits": p.params.security_bits,
        "public": dict(p.public),
        "bytes": len(proof_bytes),
    }


__all__ = [
    "AIRS",
    "PROOF_VERSION",
    "Backend",
    "ProofFormatError",
    "Verdict",
    "inspect",
    "prove",
    "prove_spec",
    "resolve",
    "security_bits",
    "validate_spec",
    "verify",
]
