"""Job kinds `zk.prove` and `zk.verify`, and the coordinator's check of proofs from remote peers.

A proof from an untrusted peer is worthless until the verifier accepts it for the statement that was asked
for: the coordinator verifies every remote proof (`check_remote_proof`) and a rejected proof re-places the
job elsewhere and lowers that peer's standing.
"""

from __future__ import annotations

import math
from typing import Any

import trio
from prometheus_client import Counter, Histogram

from worker import faults
from worker import opencl as ocl
from worker.devices import Device
from worker.kinds import JobKind, KindFamily, KindRegistry, Requirements, Result, RunContext, SpecError
from worker.runner.zk import prove
from worker.zk import MIN_SECURITY_BITS, prove_spec, statement, validate_spec, verify
from worker.zk.spec import validate_expect

PROOFS = Counter("gpumesh_zk_proofs_total", "Proofs generated (by this node) or checked", ["event"])
# event: generated | verified | rejected
PROVE_SECONDS = Histogram("gpumesh_zk_prove_seconds", "Time to generate a proof",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
VERIFY_SECONDS = Histogram("gpumesh_zk_verify_seconds", "Time to verify a proof",
                           buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

MAX_PROOF_BYTES = 64 << 20


def _spec(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return validate_spec(spec)
    except ValueError as e:
        raise SpecError("spec", str(e)) from None


def _mulmods(s: dict[str, Any]) -> float:
    """Rough size of a proof in Goldilocks mul-mods: LDE NTTs, Merkle hashing and FRI over steps*blowup rows."""
    m = s["steps"] * s["blowup"]
    width = 40 if s["air"] == "membership" else 1  # trace columns and constraint work relative to cubic
    return m * width * (12 * math.log2(m) + 900) + s["queries"] * 5000 + 2 ** s["grinding"] * 300


class ZkProve(JobKind):
    name = "zk.prove"
    description = "prove an AIR's computation (FRI-based STARK over Goldilocks); output: the proof bytes"

    def validate(self, spec: dict[str, Any], input_size: int) -> None:
        _spec(spec)
        if input_size:
            raise SpecError("input", "zk.prove takes no input bytes")

    def requirements(self, spec: dict[str, Any]) -> Requirements:
        return Requirements(int64=True)

    def cost_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        s = _spec(spec)
        rate = (device.mulmod_mops if device and device.mulmod_mops else 20.0) * 1e6  # numpy path ~20 M/s
        return 0.02 + _mulmods(s) / rate

    async def run(self, ctx: RunContext) -> Result:
        s = _spec(ctx.spec)
        def stage(fraction: float, name: str) -> None:  # called in the prover's thread
            trio.from_thread.run_sync(ctx.progress, fraction, name)

        with PROVE_SECONDS.time():
            if ctx.runner is not None:  # the node's way: the prover's kernels run in a runner process

                proof = await prove(ctx, s)
            else:
                backend: Any = (ctx.context, ctx.queue) if ctx.cl is not None else "numpy"
                proof = await ocl.run_blocking(prove_spec, s, backend, stage)
        PROOFS.labels("generated").inc()
        if faults.current().corrupt_proofs:  # test-only fault hook: this worker returns broken proofs
            proof = _corrupt(proof)
        return Result({"air": s["air"], "steps": s["steps"], "bytes": len(proof)}, proof)

    def reference(self, spec: dict[str, Any], input_bytes: bytes) -> Result:
        s = _spec(spec)
        proof = prove_spec(s, "numpy")
        return Result({"air": s["air"], "steps": s["steps"], "bytes": len(proof)}, proof)


class ZkVerify(JobKind):
    name = "zk.verify"
    description = "verify a proof (the input bytes) against an optional expected statement"
    max_input_bytes = MAX_PROOF_BYTES

    def validate(self, spec: dict[str, Any], input_size: int) -> None:
        unknown = set(spec) - {"expect", "min_security_bits"}
        if unknown:
            raise SpecError(sorted(unknown)[0], f"unknown zk.verify field(s) {sorted(unknown)}")
        if "expect" in spec:
            try:
                validate_expect(spec["expect"])
            except ValueError as e:
                raise SpecError("expect", str(e)) from None
        floor = spec.get("min_security_bits", MIN_SECURITY_BITS)
        if type(floor) is not int or not 0 <= floor <= 128:
            raise SpecError("min_security_bits", "min_security_bits must be an integer in [0, 128] (proofs below "
                            f"the {MIN_SECURITY_BITS}-bit floor are refused whatever it says)")
        if not 0 < input_size <= MAX_PROOF_BYTES:
            raise SpecError("input", f"zk.verify needs the proof as input (1..{MAX_PROOF_BYTES} bytes)")

    def cost_s(self, spec: dict[str, Any], input_size: int, device: Device | None) -> float:
        return 0.01 + input_size / 20e6

    async def run(self, ctx: RunContext) -> Result:
        proof = await ctx.input.read_all(MAX_PROOF_BYTES)
        return self.reference(ctx.spec, proof)

    def reference(self, spec: dict[str, Any], input_bytes: bytes) -> Result:
        expect = validate_expect(spec["expect"]) if "expect" in spec else None
        with VERIFY_SECONDS.time():
            v = verify(input_bytes, expect, spec.get("min_security_bits", MIN_SECURITY_BITS))
        PROOFS.labels("verified" if v.ok else "rejected").inc()
        return Result({"ok": v.ok, "reason": v.reason, "security_bits": v.security_bits,
                       "provable_bits": v.provable_bits, "air": v.air, "steps": v.steps, "public": v.public,
                       "statement": v.statement, "params": v.params})


def _corrupt(proof: bytes) -> bytes:
    b = bytearray(proof)
    b[len(b) // 2] ^= 0x01
    return bytes(b)


def check_remote_proof(job, result, output: bytes, read_input=None) -> str | None:
    """Coordinator-side: None if `output` is a valid proof of exactly the statement the job asked for."""
    with VERIFY_SECONDS.time():
        v = verify(output, statement(_spec(job.spec)))
    if v.ok:
        PROOFS.labels("verified").inc()
        return None
    PROOFS.labels("rejected").inc()
    return f"proof rejected by the verifier: {v.reason}"


FAMILY = KindFamily("zk", (ZkProve(), ZkVerify()), verifiers={"zk.prove": check_remote_proof})


def register(registry: KindRegistry) -> None:
    for k in FAMILY.kinds:
        if k.name not in registry:
            registry.register(k)
