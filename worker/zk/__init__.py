"""Zero-knowledge proofs on the mesh: a FRI-based STARK over Goldilocks with numpy and OpenCL backends.

Public API (used by the zk.prove / zk.verify job kinds and `mesh-node prove/verify`):

    validate_spec(spec) -> dict          # ValueError with a clear message for a bad zk.prove spec
    prove(air, public_inputs, steps, blowup=8, queries=30, backend="numpy", *, grinding=16, witness=None) -> bytes
    prove_spec(spec, backend="numpy") -> bytes
    verify(proof_bytes, expect=None, min_security_bits=0, min_provable_bits=0)
        -> Verdict(ok, reason, security_bits, air, steps, public, provable_bits, params)
    inspect(proof_bytes) -> dict         # what a proof claims, without verifying it

Every parameter set must reach the floor (security.MIN_SECURITY_BITS = 100 bits conjectured): the prover,
spec validation and the verifier refuse anything below it.

`backend` is "numpy", "opencl" (first OpenCL device), a Backend, or a (pyopencl.Context, CommandQueue) pair.
The verifier needs no OpenCL. The proof format is docs/proof-format.md.
"""

from __future__ import annotations

from typing import Any

from . import proof as _proof
from .airs import AIRS
from .backend import Backend
from .clbackend import resolve
from .proof import VERSION as PROOF_VERSION
from .proof import ProofFormatError, security_bits
from .security import MIN_SECURITY_BITS
from .spec import statement, validate_spec
from .stark import Verdict, prove, verify


def prove_spec(spec: dict[str, Any], backend: object = "numpy", progress: Any = None) -> bytes:
    """Prove a zk.prove job spec (validated first); `progress(fraction, stage)` as stages start."""
    s = validate_spec(spec)
    return prove(s["air"], s["public_inputs"], s["steps"], s["blowup"], s["queries"], backend,
                 grinding=s["grinding"], witness=s.get("witness"), progress=progress)


def inspect(proof_bytes: bytes) -> dict[str, Any]:
    """The statement a proof claims (not verified): air, steps, blowup, queries, security_bits, public."""
    p = _proof.decode(proof_bytes)
    return {
        "version": PROOF_VERSION,
        "air": p.params.air.name,
        "steps": p.params.steps,
        "blowup": p.params.blowup,
        "queries": p.params.queries,
        "grinding": p.params.grinding,
        "security_bits": p.params.security_bits,
        "provable_bits": p.params.provable_bits,
        "public": dict(p.public),
        "bytes": len(proof_bytes),
    }


__all__ = [
    "AIRS",
    "MIN_SECURITY_BITS",
    "PROOF_VERSION",
    "Backend",
    "ProofFormatError",
    "Verdict",
    "inspect",
    "prove",
    "prove_spec",
    "resolve",
    "security_bits",
    "statement",
    "validate_spec",
    "verify",
]
