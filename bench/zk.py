"""zk benchmark (issues 8 and 19): Goldilocks NTT on OpenCL vs the numpy reference, Poseidon permutations/s on
every path, and, at the default (>= 100-bit) parameters, prove time, verify time and proof size per trace length
for the cubic and membership AIRs, with both security figures. Keys (issue 19): prove_s, verify_ms, proof_kb
({air: {log2 steps: value}}), security_bits_conjectured, security_bits_provable, ntt_2_20_speedup_vs_numpy.

Everything runs on the machine's one OpenCL device (PoCL on the CPU here). The machine is shared: each
comparison is interleaved so both sides see the same load, both sides get the same statistic (best-of, with
medians beside), and the process CPU time (PoCL's worker threads count towards it) is reported as a
cross-check that depends less on other processes. The load average at start and end is recorded.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from worker import zk
from worker.zk import field as F
from worker.zk import gpu
from worker.zk import membership as MB
from worker.zk import ntt as NT
from worker.zk import poseidon as PS
from worker.zk.backend import Backend

NTT_LOGS = (16, 20, 22)
PROVE_LOGS = {"cubic": (12, 14, 16, 18), "membership": (12, 14, 16)}
NUMPY_PROVE_LOGS = (12, 14)  # the numpy backend beside OpenCL (what `prove --local` used to be)
VERIFY_RUNS = 15
MEMBERS = 64  # membership statement: a depth-6 tree


def _statement(air: str, steps: int) -> dict:
    if air == "cubic":
        return {"air_name": "cubic", "public_inputs": {"x0": 3, "c": 5}, "steps": steps}
    root, wits = MB.make_tree([[i, 11, 22, 33] for i in range(MEMBERS)])
    public = {"depth": 6, **{f"root{i}": root[i] for i in range(4)}}
    return {"air_name": "membership", "public_inputs": public, "steps": steps, "witness": wits[7]}


def _timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of `repeats` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return wall, cpu


def bench_ntt(be) -> dict:
    """Device-resident transforms (the prover keeps data on the device between passes) against numpy.
    Both sides are interleaved and get the same statistics: best-of (the least-disturbed run on a shared
    machine) and median."""
    import pyopencl as cl

    out = {}
    rng = np.random.default_rng(1)
    for log_n in NTT_LOGS:
        n = 1 << log_n
        a = rng.integers(0, F.P, n, dtype=np.uint64)
        src = cl.Buffer(be.ctx, cl.mem_flags.READ_WRITE, a.nbytes)
        tmp = cl.Buffer(be.ctx, cl.mem_flags.READ_WRITE, a.nbytes)
        cl.enqueue_copy(be.queue, src, a)

        def device(src=src, tmp=tmp, n=n):
            be._ntt.transform(src, tmp, n, 1, False)
            be.queue.finish()

        device()  # warm-up: twiddle tables, first launch
        if not np.array_equal(be.ntt(a), NT.ntt(a)):
            raise AssertionError(f"OpenCL NTT 2^{log_n} disagrees with numpy")
        rounds = 3 if log_n <= 20 else 2
        d_wall, d_cpu, n_wall, n_cpu = [], [], [], []
        for _ in range(rounds):  # interleaved: device repeats around each numpy run
            w, c = _timed(device, 5)
            d_wall += w
            d_cpu += c
            w, c = _timed(lambda a=a: NT.ntt(a), 1)
            n_wall += w
            n_cpu += c
        copies, _ = _timed(lambda a=a: be.ntt(a), 3)
        med = statistics.median
        out[str(log_n)] = {
            "opencl_ms": min(d_wall) * 1e3,
            "opencl_median_ms": med(d_wall) * 1e3,
            "opencl_with_copies_ms": min(copies) * 1e3,
            "numpy_ms": min(n_wall) * 1e3,
            "numpy_median_ms": med(n_wall) * 1e3,
            "speedup": min(n_wall) / min(d_wall),
            "speedup_median": med(n_wall) / med(d_wall),
            "speedup_cpu_time": min(n_cpu) / min(d_cpu),
        }
    return out


def bench_poseidon(be) -> dict:
    rng = np.random.default_rng(2)
    n_cl, n_np, n_py = 1 << 16, 1 << 12, 100
    states = rng.integers(0, F.P, (12, n_cl), dtype=np.uint64)
    be.permute(states[:, :64])
    cl_wall, _ = _timed(lambda: be.permute(states), 5)
    np_wall, _ = _timed(lambda: PS.permute_np(states[:, :n_np]), 3)
    py_wall, _ = _timed(lambda: [PS.permute(list(range(12))) for _ in range(n_py)], 3)
    return {"opencl": n_cl / min(cl_wall), "numpy": n_np / min(np_wall), "python": n_py / min(py_wall)}


def bench_prove(be) -> dict:
    """Default (>= 100-bit) parameters, OpenCL backend: prove time, verify time (wall and process CPU: the
    machine is shared, CPU time is the steadier figure), proof size, per-phase breakdown."""
    out: dict = {"prove_s": {}, "verify_ms": {}, "verify_cpu_ms": {}, "verify_median_ms": {}, "proof_kb": {},
                 "prove_breakdown_s": {}, "security_bits_provable_by_size": {}, "prove_s_numpy_backend": {}}
    zk.prove(**_statement("cubic", 1 << 10), backend=be)  # warm-up: kernel builds, tables
    zk.prove(**_statement("membership", 1 << 10), backend=be)
    for air, logs in PROVE_LOGS.items():
        for key in out:
            out[key].setdefault(air, {})
        for log_n in logs:
            be.timings.clear()
            t = time.perf_counter()
            proof = zk.prove(**_statement(air, 1 << log_n), backend=be)
            out["prove_s"][air][str(log_n)] = time.perf_counter() - t
            out["prove_breakdown_s"][air][str(log_n)] = {k: round(v, 3) for k, v in be.timings.items()}
            verdict = zk.verify(proof)
            if not verdict.ok:
                raise AssertionError(f"{air} 2^{log_n}: {verdict.reason}")
            wall, cpu = _timed(lambda proof=proof: zk.verify(proof), VERIFY_RUNS)
            out["verify_ms"][air][str(log_n)] = min(wall) * 1e3
            out["verify_median_ms"][air][str(log_n)] = statistics.median(wall) * 1e3
            out["verify_cpu_ms"][air][str(log_n)] = min(cpu) * 1e3
            out["proof_kb"][air][str(log_n)] = len(proof) / 1000
            out["security_bits_provable_by_size"][air][str(log_n)] = verdict.provable_bits
            if log_n in NUMPY_PROVE_LOGS:
                t = time.perf_counter()
                same = zk.prove(**_statement(air, 1 << log_n), backend=Backend(), seed=1)
                out["prove_s_numpy_backend"][air][str(log_n)] = time.perf_counter() - t
                if same != zk.prove(**_statement(air, 1 << log_n), backend=be, seed=1):
                    raise AssertionError("numpy and OpenCL backends produced different proofs")
    return out


def run() -> dict:
    pair = gpu.default_queue()
    if pair is None:
        raise SystemExit("zk bench needs an OpenCL device (pocl-binary-distribution)")
    from worker.zk.clbackend import OpenCLBackend

    be = OpenCLBackend(*pair)
    load_start = os.getloadavg()[0]
    ntt = bench_ntt(be)
    perms = bench_poseidon(be)
    proving = bench_prove(be)
    dev = pair[1].device
    prm = zk.validate_spec({"air": "cubic", "public_inputs": {"x0": 3, "c": 5}, "steps": 1 << 16})
    from worker.zk.proof import Params

    default = Params(zk.AIRS["cubic"], 1 << 16, prm["blowup"], prm["queries"], prm["grinding"])
    return {
        "device": f"{dev.platform.name} / {dev.name}",
        "params": {"blowup": prm["blowup"], "queries": prm["queries"], "grinding": prm["grinding"],
                   "backend": "opencl"},
        "security_bits_conjectured": default.security_bits,
        "security_bits_provable": default.provable_bits,
        **proving,
        "ntt_2_20_speedup_vs_numpy": ntt["20"]["speedup"] if "20" in ntt else None,
        "ntt": ntt,
        "poseidon_perm_per_s": perms,
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
    }


# Published figures, for comparison only: not measured here (different machines, fields, AIRs, hashes).
PUBLISHED = [
    ("Winterfell: published, not measured here", "verification 2-6 ms for ~100-bit proofs (Rust, BLAKE3 "
                                                  "commitments, its own machines and AIRs)"),
    ("Plonky2: published, not measured here", "standard configuration blowup 8, 28 queries, 16 grinding bits = 100 "
                                              "bits conjectured (Rust, Poseidon over Goldilocks)"),
]


def table(r: dict) -> list[tuple[str, str]]:
    prm = r["params"]
    rows = [("device", r["device"]),
            ("parameters (default)", f"blowup {prm['blowup']}, {prm['queries']} queries, {prm['grinding']} grinding "
                                     f"bits: {r['security_bits_conjectured']} bits conjectured, "
                                     f"{r['security_bits_provable']} provable (2^16 steps)")]
    for log_n, v in r["ntt"].items():
        rows.append((f"NTT 2^{log_n} OpenCL / numpy",
                     f"{v['opencl_ms']:.1f} ms / {v['numpy_ms']:.0f} ms = {v['speedup']:.0f}x best-of "
                     f"({v['speedup_median']:.0f}x median, {v['speedup_cpu_time']:.0f}x CPU time; "
                     f"with host copies {v['opencl_with_copies_ms']:.1f} ms)"))
    p = r["poseidon_perm_per_s"]
    rows.append(("Poseidon permutations/s", f"OpenCL {p['opencl']:,.0f}, numpy {p['numpy']:,.0f}, Python {p['python']:,.0f}"))
    for air, per in r["prove_s"].items():
        for log_n, secs in per.items():
            np_part = r["prove_s_numpy_backend"][air].get(log_n)
            np_text = f" (numpy backend {np_part:.2f} s, {np_part / secs:.1f}x)" if np_part else ""
            rows.append((f"{air} 2^{log_n} steps",
                         f"prove {secs:.2f} s{np_text}, verify {r['verify_ms'][air][log_n]:.1f} ms best "
                         f"({r['verify_median_ms'][air][log_n]:.1f} ms median, {r['verify_cpu_ms'][air][log_n]:.1f} ms "
                         f"CPU), proof {r['proof_kb'][air][log_n]:.1f} KB"))
    rows += PUBLISHED
    la = r["load_average"]
    rows.append(("load average (shared machine)", f"{la['start']:.1f} at start, {la['end']:.1f} at end"))
    return rows
