"""`mesh-node prove` and `mesh-node verify`: STARK proofs from the shell.

    mesh-node prove cubic --steps 65536 --public x0=3 --public c=5 --local
    mesh-node prove membership --steps 2048 --witness member.json --public depth=16 --public root0=... --local
    mesh-node verify proof.bin --expect air=cubic --expect x0=3 --expect out=1234

Exit status: 0 proved / valid, 1 invalid or failed, 2 bad arguments, 3 no node reachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from scheduler.cli import progress
from scheduler.cli.common import EXIT_FAIL, EXIT_OK, EXIT_REJECTED, UsageError, console
from scheduler.cli.common import run_client as _run_client
from scheduler.cli.common import show as _print
from worker.zk import AIRS, MIN_SECURITY_BITS, gpu, prove_spec, statement, validate_spec, verify
from worker.zk.spec import DEFAULTS, validate_expect

PARAM_KEYS = ("air", "steps", "blowup", "queries", "grinding")


def add_parsers(sub, add_node_options) -> None:
    airs = ", ".join(sorted(AIRS))
    pv = sub.add_parser(
        "prove", help="prove an AIR's computation (on the mesh, or --local on this machine)",
        description="Generate a STARK proof. By default the proof is made on the mesh (any peer; the coordinator "
                    "verifies it before delivering it); --local proves here, on the OpenCL device when there is "
                    f"one (numpy otherwise). Parameters below the {MIN_SECURITY_BITS}-bit security floor are "
                    "refused. A membership witness sent to the mesh is seen by the peer that proves it: prove "
                    "private statements with --local, or only on peers you trust with the witness.")
    pv.add_argument("air", help=f"one of: {airs}")
    pv.add_argument("--steps", type=int, required=True, help="trace length (a power of two)")
    pv.add_argument("--blowup", type=int, default=DEFAULTS["blowup"], choices=(2, 4, 8),
                    help=f"LDE blowup: log2(blowup) conjectured bits a query (default {DEFAULTS['blowup']})")
    pv.add_argument("--queries", type=int, default=DEFAULTS["queries"],
                    help=f"FRI queries (default {DEFAULTS['queries']})")
    pv.add_argument("--grinding", type=int, default=DEFAULTS["grinding"],
                    help=f"proof-of-work bits bound into the transcript (default {DEFAULTS['grinding']})")
    pv.add_argument("--public", action="append", default=[], metavar="NAME=INT",
                    help="public input of the AIR (repeatable; fibonacci/cubic inputs default to 1)")
    pv.add_argument("--witness", type=Path, metavar="FILE",
                    help='private witness as JSON (membership: {"secret": [4 ints], "path": [[s0,s1,s2,s3,bit], ...]})')
    pv.add_argument("--out", type=Path, default=Path("proof.bin"), help="where to write the proof (default proof.bin)")
    pv.add_argument("--local", action="store_true", help="prove on this machine instead of on the mesh")
    pv.add_argument("--numpy", action="store_true", help="with --local: use the numpy prover even if OpenCL is there")
    add_node_options(pv)
    pv.add_argument("--json", action="store_true", help="machine-readable output")

    vf = sub.add_parser(
        "verify", help="verify a proof file (pure Python; needs no node and no OpenCL)",
        description="Check a proof and print the statement it proves (AIR, public values, steps, parameters) and "
                    "its security, conjectured and provable. --expect pins what the proof must be about: a proof "
                    "of another statement is INVALID even if it is a correct proof. Proofs below the "
                    f"{MIN_SECURITY_BITS}-bit floor are refused.")
    vf.add_argument("proof", type=Path)
    vf.add_argument("--expect", action="append", default=[], metavar="NAME=VALUE",
                    help="required value (repeatable): air=NAME, steps=, blowup=, queries=, grinding=, or any "
                         "public value of the AIR (x0=3, out=..., root0=...)")
    vf.add_argument("--min-security-bits", type=int, default=MIN_SECURITY_BITS,
                    help=f"refuse proofs below this many conjectured bits (at least {MIN_SECURITY_BITS})")
    vf.add_argument("--min-provable-bits", type=int, default=0, help="refuse proofs below this many provable bits")
    vf.add_argument("--json", action="store_true")


def _int(text: str) -> int:
    return int(text, 0)


def parse_expect(items: list[str]) -> dict[str, Any]:
    """NAME=VALUE pairs -> an expected statement (validated)."""

    out: dict[str, Any] = {}
    pub: dict[str, int] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValueError(f"--expect {item!r} must be NAME=VALUE")
        try:
            if k == "air":
                out[k] = v
            elif k in PARAM_KEYS:
                out[k] = _int(v)
            else:
                pub[k] = _int(v)
        except ValueError:
            raise ValueError(f"--expect {item!r}: {v!r} is not an integer") from None
    if pub:
        out["public_inputs"] = pub
    return validate_expect(out)


def _local_backend(force_numpy: bool) -> tuple[object, str]:
    """The OpenCL prover on the first device when there is one, numpy otherwise; and a name for it."""
    if not force_numpy:

        pair = gpu.default_queue()
        if pair is not None:
            dev = pair[1].device
            return pair, f"OpenCL ({dev.platform.name.strip()} / {dev.name.strip()})"
    return "numpy", "numpy (no OpenCL device)" if not force_numpy else "numpy (--numpy)"


def cmd_prove(args: argparse.Namespace) -> int:
    spec: dict = {"air": args.air, "steps": args.steps, "blowup": args.blowup, "queries": args.queries,
                  "grinding": args.grinding}
    public = {}
    for item in args.public:
        k, sep, v = item.partition("=")
        try:
            if not sep:
                raise ValueError
            public[k] = _int(v)
        except ValueError:
            raise UsageError(f"--public {item!r} must be NAME=INT") from None
    air = AIRS.get(args.air)
    if air is not None and air.zk:
        spec["public_inputs"] = public
        if args.witness is None:
            raise UsageError(f"AIR {args.air!r} needs --witness FILE (its private input)")
    elif air is not None:
        spec["public_inputs"] = {name: public.get(name, 1) for name in air.inputs} | public
    if args.witness is not None:
        try:
            spec["witness"] = json.loads(args.witness.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the witness {args.witness}: {e}") from e
    try:
        spec = validate_spec(spec)
    except ValueError as e:
        raise UsageError(str(e)) from e
    t0 = time.perf_counter()
    if args.local:
        backend, where = _local_backend(args.numpy)
        proof = prove_spec(spec, backend)
        where = f"this machine, {where}"
    else:

        con = console()

        async def go(c):
            with progress.JobProgress(progress.mode_for(args, con), con, f"prove {args.steps} steps") as prog:
                return await progress.submit_and_follow(c, prog, "zk.prove", spec, wait=True, priority="interactive")

        ans, res = _run_client(args, go)
        if not ans["accepted"]:
            print(f"mesh-node: proof job {ans['id']} {ans['message']}", file=sys.stderr)
            return EXIT_REJECTED
        if not res.ok:
            print(f"mesh-node: proof job {res.job_id} {res.state}: {res.reason}", file=sys.stderr)
            return EXIT_FAIL
        proof, where = res.output, res.worker
    elapsed = time.perf_counter() - t0
    args.out.write_bytes(proof)
    stmt = statement(spec)
    info = {"proof": str(args.out), "bytes": len(proof), "seconds": round(elapsed, 3), "prover": where,
            "air": spec["air"], "steps": spec["steps"], "public_inputs": stmt["public_inputs"]}
    _print(info, args.json, lambda d: print(f"proved {d['air']} ({d['steps']} steps) on {d['prover']} in "
                                            f"{d['seconds']} s: {d['bytes']} bytes -> {d['proof']}"))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        expect = parse_expect(args.expect) if args.expect else None
    except ValueError as e:
        raise UsageError(str(e)) from e
    t0 = time.perf_counter()
    v = verify(args.proof.read_bytes(), expect, args.min_security_bits, args.min_provable_bits)
    info = {"ok": v.ok, "reason": v.reason, "statement": v.statement if v.air else None, "air": v.air,
            "steps": v.steps, "public": v.public, "params": v.params, "security_bits": v.security_bits,
            "provable_bits": v.provable_bits, "expected": expect, "seconds": round(time.perf_counter() - t0, 4)}

    def show(d):
        print(("VALID" if d["ok"] else "INVALID") + f": {d['reason']}")
        if d["air"]:
            prm = ", ".join(f"{k} {v}" for k, v in d["params"].items())
            print(f"  statement: {d['statement']}")
            print(f"  parameters: {prm}; security {d['security_bits']} bits conjectured, "
                  f"{d['provable_bits']} bits provable")
        if d["expected"]:
            print(f"  expected: {json.dumps(d['expected'])}")
        print(f"  checked in {d['seconds']} s")

    _print(info, args.json, show)
    return EXIT_OK if v.ok else EXIT_FAIL
