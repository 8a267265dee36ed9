"""zk benchmark (issue 8): Goldilocks NTT on OpenCL vs the numpy reference, Poseidon permutations/s on every
path, and full prove/verify time and proof size per trace length.

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
from worker.zk import ntt as NT
from worker.zk import poseidon as PS
from worker.zk.backend import Backend

NTT_LOGS = (16, 20, 22)
PROVE_LOGS = tuple(range(12, 19))  # 2^12 .. 2^18 steps
NUMPY_PROVE_MAX_LOG = 16  # the numpy backend takes minutes beyond this on 2 cores
AIR, INPUTS, BLOWUP, QUERIES = "cubic", {"x0": 3, "c": 5}, 4, 41
PROVE_RUNS = 2


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


def bench_prove(be) -> tuple[dict, dict, dict, dict, dict, dict]:
    prove_s, verify_s, sizes, numpy_s, breakdown, cpu_s = {}, {}, {}, {}, {}, {}
    zk.prove(AIR, INPUTS, 1 << 10, BLOWUP, QUERIES, be)  # warm-up: kernel builds, tables
    for log_n in PROVE_LOGS:
        best = float("inf")
        for _ in range(PROVE_RUNS):  # best of: the machine is shared
            be.timings.clear()
            t, c = time.perf_counter(), time.process_time()
            proof = zk.prove(AIR, INPUTS, 1 << log_n, BLOWUP, QUERIES, be)
            if time.perf_counter() - t < best:
                best = time.perf_counter() - t
                cpu_s[str(log_n)] = time.process_time() - c
                breakdown[str(log_n)] = {k: round(v, 3) for k, v in be.timings.items()}
        prove_s[str(log_n)] = best
        verify_wall, _ = _timed(lambda proof=proof: zk.verify(proof), 3)
        verify_s[str(log_n)] = min(verify_wall)
        verdict = zk.verify(proof)
        if not verdict.ok:
            raise AssertionError(f"2^{log_n}: {verdict.reason}")
        sizes[str(log_n)] = len(proof)
        if log_n <= NUMPY_PROVE_MAX_LOG:
            t = time.perf_counter()
            same = zk.prove(AIR, INPUTS, 1 << log_n, BLOWUP, QUERIES, Backend())
            numpy_s[str(log_n)] = time.perf_counter() - t
            if same != proof:
                raise AssertionError("numpy and OpenCL backends produced different proofs")
    return prove_s, verify_s, sizes, numpy_s, breakdown, cpu_s


def run() -> dict:
    pair = gpu.default_queue()
    if pair is None:
        raise SystemExit("zk bench needs an OpenCL device (pocl-binary-distribution)")
    from worker.zk.clbackend import OpenCLBackend

    be = OpenCLBackend(*pair)
    load_start = os.getloadavg()[0]
    ntt = bench_ntt(be)
    perms = bench_poseidon(be)
    prove_s, verify_s, sizes, numpy_s, breakdown, cpu_s = bench_prove(be)
    dev = pair[1].device
    return {
        "device": f"{dev.platform.name} / {dev.name}",
        "ntt_2_20_speedup_vs_numpy": ntt["20"]["speedup"] if "20" in ntt else None,
        "ntt": ntt,
        "poseidon_perm_per_s": perms,
        "prove_s": prove_s,
        "verify_s": verify_s,
        "proof_bytes": sizes,
        "prove_cpu_s": cpu_s,
        "prove_s_numpy_backend": numpy_s,
        "prove_speedup_vs_numpy_backend": {k: numpy_s[k] / prove_s[k] for k in numpy_s},
        "prove_breakdown_s": breakdown,
        "params": {"air": AIR, "blowup": BLOWUP, "queries": QUERIES,
                   "security_bits": zk.security_bits(BLOWUP, QUERIES, BLOWUP << max(PROVE_LOGS)),
                   "backend": "opencl"},
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
    }


def table(r: dict) -> list[tuple[str, str]]:
    rows = [("device", r["device"])]
    for log_n, v in r["ntt"].items():
        rows.append((f"NTT 2^{log_n} OpenCL / numpy",
                     f"{v['opencl_ms']:.1f} ms / {v['numpy_ms']:.0f} ms = {v['speedup']:.0f}x best-of "
                     f"({v['speedup_median']:.0f}x median, {v['speedup_cpu_time']:.0f}x CPU time; "
                     f"with host copies {v['opencl_with_copies_ms']:.1f} ms)"))
    p = r["poseidon_perm_per_s"]
    rows.append(("Poseidon permutations/s", f"OpenCL {p['opencl']:,.0f}, numpy {p['numpy']:,.0f}, Python {p['python']:,.0f}"))
    prm = r["params"]
    for log_n in r["prove_s"]:
        np_part = r["prove_s_numpy_backend"].get(log_n)
        np_text = f" (numpy backend {np_part:.2f} s, {np_part / r['prove_s'][log_n]:.1f}x)" if np_part else ""
        rows.append((f"2^{log_n} steps ({prm['air']}, blowup {prm['blowup']}, {prm['queries']} queries)",
                     f"prove {r['prove_s'][log_n]:.2f} s" + np_text
                     + f", verify {r['verify_s'][log_n] * 1e3:.0f} ms, proof {r['proof_bytes'][log_n] / 1024:.0f} KiB"))
    la = r["load_average"]
    rows.append(("load average (shared machine)", f"{la['start']:.1f} at start, {la['end']:.1f} at end"))
    return rows
