"""`mesh-node compute`: run an OpenCL kernel file, or a pipeline spec file, on the mesh from the shell.

    mesh-node compute saxpy.cl --kernel saxpy --global 1024 --local 64 \\
        --arg scalar:uint32:1000 --arg scalar:float32:2.5 --arg in:float32:x.npy --arg y=inout:float32:y.npy \\
        --out results/
    mesh-node compute sgemm.yaml --out results/      # a sequence of launches (worker.compute.pipeline_file)

`--arg` (repeatable, in kernel parameter order), `[NAME=]KIND:...`: see ARG_HELP.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import trio

from scheduler.cli import progress
from scheduler.cli.common import EXIT_OK, UsageError, console
from scheduler.client.client import address_from_args
from scheduler.client.compute_sdk import AsyncMesh
from scheduler.node.config import add_node_options
from worker.compute.api import In, InOut, Local, Out, Scalar, Scratch, make_job
from worker.compute.cltypes import from_numpy, named_types_help, type_named
from worker.compute.pipeline_file import load_pipeline, pipeline_from_document, read_document

ARG_HELP = """FILE is an OpenCL C source (one launch, described by --kernel, --global, --local and --arg) or a
pipeline spec file (.yaml, .yml or .json: named buffers with roles in/out/inout/scratch and a sequence of
launches; the format and its JSON Schema: docs/compute-pipeline.md). With a spec file, --kernel, --global,
--local and --arg are not used; -D, --build-option and --time-limit add to / override the file's.

--arg (repeatable, in kernel parameter order) is [NAME=]KIND:...

    in:DTYPE:FILE        input buffer from FILE (.npy, or raw binary read as DTYPE); FILE may be =V1,V2,...
                         for literal values (in:int32:=1,2,3)
    inout:DTYPE:FILE     the same, and read back
    out:DTYPE:SHAPE      output buffer, zero-filled: an element count (1024) or a shape (64x64)
    scratch:DTYPE:SHAPE  device-only buffer, zero-filled, never read back
    scalar:DTYPE:VALUE   by value (uint32:1000, float32:2.5, int64:0x10, ushort:7; vectors
                         float32x4:1,2,3,4 or float4:1,2,3,4)
    local:NBYTES         __local scratch per work-group (or local:DTYPE:COUNT)

DTYPE: int8 uint8 int16 uint16 int32 uint32 int64 uint64 float16 float32 float64, the OpenCL spellings char
uchar short ushort int uint long ulong half float double, vectors float32x4 / uint8x16 (or float4, uchar16;
widths 2 3 4 8 16), complex64 complex128. Each output (out/inout) is written to DIR/NAME.npy (NAME from
NAME=..., else argI with I its parameter index) when --out is given, else summarised. Timings (wall, queue, kernel, build) and the worker are printed.
Exit status: 0 done, 1 the job failed (build error: the compiler's log on stderr; time limit; verification
mismatch), 2 bad arguments, 4 refused by the mesh (spec, scope, no device able to run it).
"""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")




def add_parser(sub: Any) -> argparse.ArgumentParser:
    desc = ("Run an OpenCL C kernel on the mesh: buffers in, output buffers back as .npy files. Needs a token "
            "with the compute scope (the local node's own token has it).")
    p = sub.add_parser("compute", help="run an OpenCL kernel file or a pipeline spec file on the mesh",
                       description=desc, epilog=ARG_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, metavar="FILE",
                   help="OpenCL C source file, or a pipeline spec file (.yaml/.yml/.json)")
    p.add_argument("--kernel", help="kernel function to launch (an OpenCL C FILE)")
    p.add_argument("--arg", dest="args", action="append", default=[], metavar="[NAME=]KIND:...",
                   help="a kernel argument, in parameter order (see below)")
    p.add_argument("--global", dest="global_size", metavar="N[,N[,N]]",
                   help="global work size, 1 to 3 dimensions (1024 or 512,512 or 512x512)")
    p.add_argument("--local", dest="local_size", metavar="N[,N[,N]]",
                   help="work-group size (must divide --global; default: the runtime picks)")
    p.add_argument("-D", "--define", action="append", default=[], metavar="NAME[=VALUE]",
                   help="preprocessor definition (build option -D)")
    p.add_argument("--build-option", action="append", default=[], metavar="OPT",
                   help="other allow-listed build option, e.g. -cl-mad-enable (repeatable)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="the job's time limit on the worker (default 60, or the spec file's)")
    p.add_argument("--verify", choices=("none", "redundant"), default="none",
                   help="redundant: run on two different peers and compare the outputs")
    p.add_argument("--rtol", type=float, default=0.0, help="with --verify redundant: float tolerance (default exact)")
    p.add_argument("--atol", type=float, default=0.0, help="with --verify redundant: float tolerance (default exact)")
    p.add_argument("--priority", choices=("realtime", "interactive", "batch"), default="interactive",
                   help="scheduling class (default interactive)")
    p.add_argument("--out", type=Path, metavar="DIR", help="write each output as DIR/NAME.npy")
    p.add_argument("--json", action="store_true",
                   help="machine-readable summary on stdout, and progress (upload, job, download) as JSON lines "
                        "on stderr (without it: progress bars on a terminal)")
    add_node_options(p, "API token with the compute scope")
    return p


def parse_sizes(text: str, what: str) -> list[int]:
    parts = [t for t in re.split(r"[,x]", text.strip()) if t]
    try:
        dims = [int(t, 0) for t in parts]
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected 1 to 3 positive integers (e.g. 1024 or 512,512)") from None
    if not 1 <= len(dims) <= 3 or any(d <= 0 for d in dims):
        raise UsageError(f"{what} {text!r}: expected 1 to 3 positive integers (e.g. 1024 or 512,512)")
    return dims


def _dtype(text: str, where: str) -> Any:
    t = type_named(text)
    if t is None:
        raise UsageError(f"{where}: unknown dtype {text!r} (one of {named_types_help()})")
    return t.dtype


def _load(value: str, dt: Any, where: str) -> Any:
    if value.startswith("="):
        items = [v for v in value[1:].split(",") if v.strip()]
        if not items:
            raise UsageError(f"{where}: no values after '='")
        try:
            nums = [int(v, 0) if dt.kind in "iu" else float(v) for v in items]
            return np.array(nums, dtype=dt)
        except (ValueError, OverflowError) as e:
            raise UsageError(f"{where}: bad literal values: {e}") from None
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"{where}: no such file {value!r}")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.dtype != dt:
            if not np.can_cast(arr.dtype, dt, casting="same_kind"):
                raise UsageError(f"{where}: {value} holds {arr.dtype}, which does not convert to {dt} without "
                               f"changing kind")
            arr = arr.astype(dt)
        return arr
    raw = path.read_bytes()
    if len(raw) % dt.itemsize:
        raise UsageError(f"{where}: {value} is {len(raw)} bytes, not a whole number of {dt} elements")
    return np.frombuffer(raw, dtype=dt).copy()


def parse_arg(text: str, index: int) -> Any:
    """One --arg into a make_job argument (In/InOut/Out/Scratch/Scalar/Local)."""

    where = f"--arg {index + 1} ({text!r})"
    name = ""
    head, sep, rest = text.partition("=")
    if sep and ":" not in head:
        if not _NAME.match(head):
            raise UsageError(f"{where}: name {head!r} must be an identifier")
        name, text = head, rest
    parts = text.split(":", 2)
    kind = parts[0]
    if kind == "local":
        try:
            if len(parts) == 2:
                return Local(int(parts[1], 0), name)
            if len(parts) == 3:
                return Local(int(parts[2], 0) * _dtype(parts[1], where).itemsize, name)
        except ValueError:
            pass
        raise UsageError(f"{where}: expected local:NBYTES or local:DTYPE:COUNT")
    if kind not in ("in", "inout", "out", "scratch", "scalar"):
        raise UsageError(f"{where}: unknown kind {kind!r} (in, inout, out, scratch, scalar, local)")
    if len(parts) != 3 or not parts[2]:
        what = {"out": "SHAPE", "scratch": "SHAPE", "scalar": "VALUE"}.get(kind, "FILE")
        raise UsageError(f"{where}: expected {kind}:DTYPE:{what}")
    dts, value = parts[1], parts[2]
    dt = _dtype(dts, where)
    if kind == "scalar":
        t = from_numpy(dt)
        base = np.dtype(t.base) if t.base else None
        if base is None:
            raise UsageError(f"{where}: a struct cannot be given on the command line (use a spec file)")
        try:
            nums = [int(v, 0) if base.kind in "iu" else float(v) for v in value.split(",")]
        except ValueError:
            raise UsageError(f"{where}: {value!r} is not a {t.describe()} value") from None
        if t.kind == "complex" and len(nums) == 1:
            nums.append(0.0)
        return Scalar(t.wire(), nums[0] if t.kind == "scalar" else nums, name)
    if kind in ("out", "scratch"):
        shape = parse_sizes(value, where)
        return (Out if kind == "out" else Scratch)(shape[0] if len(shape) == 1 else tuple(shape), dt, name)
    arr = _load(value, dt, where)
    if arr.size == 0:
        raise UsageError(f"{where}: an empty buffer")
    return InOut(arr, name) if kind == "inout" else In(arr, name)


SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def build_job(args: argparse.Namespace) -> Any:
    """The job the command line describes: a spec file, or a kernel file with --kernel/--global/--arg."""

    options = [f"-D{d}" for d in args.define] + list(args.build_option)
    if args.source.suffix in SPEC_SUFFIXES:

        unused = [f for f, v in (("--kernel", args.kernel), ("--global", args.global_size),
                                 ("--local", args.local_size), ("--arg", args.args)) if v]
        if unused:
            raise UsageError(f"{', '.join(unused)}: not used with a pipeline spec file (the file says it)")
        if not options and args.time_limit is None:
            return load_pipeline(args.source)
        doc = read_document(args.source)
        if isinstance(doc, dict):
            if options:
                base = doc.get("build_options", [])
                doc["build_options"] = ([base] if isinstance(base, str) else list(base)) + options
            if args.time_limit is not None:
                doc["time_limit_s"] = args.time_limit
        return pipeline_from_document(doc, args.source.parent, str(args.source))
    if not args.kernel or not args.global_size:
        raise UsageError("an OpenCL C file needs --kernel and --global (or give a pipeline spec file)")
    source = args.source.read_text()
    kargs = [parse_arg(a, i) for i, a in enumerate(args.args)]
    gsize = parse_sizes(args.global_size, "--global")
    lsize = parse_sizes(args.local_size, "--local") if args.local_size else None
    return make_job(source, args.kernel, kargs, gsize, lsize, build_options=options,
                    time_limit_s=args.time_limit if args.time_limit is not None else 60.0)


def run(args: argparse.Namespace) -> int:
    try:
        job = build_job(args)
    except (ValueError, TypeError) as e:  # SpecError is a ValueError: the worker's own message
        raise UsageError(str(e)) from e
    except OSError as e:  # an input file that cannot be read is a bad argument here
        raise UsageError(f"{e.strerror or e}: {e.filename or ''}") from e

    addr, tok, pid, insecure = address_from_args(args)

    con = console()

    async def go():
        async with AsyncMesh.connect(addr, token=tok, peer_id=pid, insecure=insecure) as mesh:
            title = f"compute {args.kernel or args.source.name}"
            with progress.JobProgress(progress.mode_for(args, con), con, title) as prog:
                async with progress.following(mesh.client, prog, local=True) as track:
                    observer = progress.ProgressObserver(prog, track)
                    res = await mesh.run(job, verify=None if args.verify == "none" else args.verify,
                                         rtol=args.rtol, atol=args.atol, priority=args.priority, observer=observer)
                if observer.job_id:
                    prog.ended(observer.job_id, "done")
                return res

    res = trio.run(go)  # BuildFailed, ComputeRefused, ComputeFailed: exit statuses in common.ERROR_EXITS

    written = {}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, arr in res.outputs.items():
            path = args.out / f"{name}.npy"
            np.save(path, arr)
            written[name] = str(path)
    t = res.timings
    info = {"job_id": res.job_id, "worker": res.worker, "verified_by": list(res.verified_by),
            "outputs": {n: {"dtype": str(a.dtype), "shape": list(a.shape), **({"file": written[n]} if n in written
                                                                               else {})}
                        for n, a in res.outputs.items()},
            "timings": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in t.items()},
            "warnings": list(res.result.warnings)}
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    where = res.worker + (f" (verified against {res.verified_by[1]})" if res.verified_by else "")
    print(f"{args.kernel or args.source.name} ran on {where}")
    for n, a in res.outputs.items():
        dest = f" -> {written[n]}" if n in written else f": {np.array2string(a.ravel()[:6], precision=6)}" + (
            " ..." if a.size > 6 else "")
        print(f"  {n}: {a.dtype}{list(a.shape)}{dest}")
    build = "cached" if t["cache_hit"] else f"{t['build_s'] * 1e3:.1f} ms"
    print(f"  wall {t['wall_s'] * 1e3:.1f} ms, queue {t['queue_s'] * 1e3:.1f} ms, worker run {t['run_s'] * 1e3:.1f} ms, "
          f"kernel {t['kernel_s'] * 1e3:.3f} ms ({t['launches']} launch{'es' * (t['launches'] != 1)}), build {build}, "
          f"{t['bytes_in']} B in / {t['bytes_out']} B out")
    for w in res.result.warnings:
        print(f"  warning: {w}")
    return EXIT_OK
