"""The prover backend on OpenCL: NTT/LDE, Poseidon leaf hashing and Merkle levels, FRI folding and the DEEP
composition run as kernels; host arrays in and out (on the CPU device a copy is a memcpy, cheap next to
the kernels, and it keeps the prover's host code identical for both backends)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import composition as CP
from . import field as F
from . import fri_math as FM
from . import gpu
from . import merkle as MK
from . import ntt as NT
from . import poseidon as PS
from .backend import Backend
from .ntt_cl import DEFAULT_MAX_RADIX, ClNtt

try:
    import pyopencl as cl
except ImportError:  # pragma: no cover
    cl = None  # type: ignore[assignment]

MF = cl.mem_flags if cl is not None else None
DEEP_CHUNK = 32
INV_CHUNK = 32
POW_CHUNK = 64


class OpenCLBackend(Backend):
    """Takes the caller's pyopencl Context and CommandQueue. Programs, kernel objects and read-only tables
    are cached per context, so a backend per proof is cheap; scratch buffers belong to the instance.
    Not thread-safe: use one backend (and one context's kernels) from one thread at a time, since
    pyopencl kernel objects carry their arguments between set and enqueue."""

    def __init__(self, ctx, queue, max_radix: int = DEFAULT_MAX_RADIX):
        super().__init__(name="opencl")
        if cl is None:
            raise RuntimeError("pyopencl is not installed")
        self.ctx, self.queue, self.max_radix = ctx, queue, max_radix
        self.program = gpu.zk_program(ctx)
        self._ntt = ClNtt(ctx, queue, self.program, max_radix=max_radix)
        self._pool: dict[str, Any] = {}  # scratch buffers by role, grown on demand

    # ------------------------------------------------------------ buffers
    def _to_dev(self, a: np.ndarray, role: str | None = None):
        """Upload; with a role, into a pooled scratch buffer (fresh buffers cost page faults on first touch,
        ~20 ms per 16 MB on PoCL)."""
        a = gpu.u64(a)
        if role is None:
            return cl.Buffer(self.ctx, MF.READ_WRITE | MF.COPY_HOST_PTR, hostbuf=a if a.size else np.zeros(1, np.uint64))
        buf = self._empty(a.size, role)
        if a.size:
            cl.enqueue_copy(self.queue, buf, a)
        return buf

    def _empty(self, count: int, role: str | None = None):
        nbytes = max(count, 1) * 8
        if role is None:
            return cl.Buffer(self.ctx, MF.READ_WRITE, nbytes)
        buf = self._pool.get(role)
        if buf is None or buf.size < nbytes:
            buf = self._pool[role] = cl.Buffer(self.ctx, MF.READ_WRITE, nbytes)
        return buf

    def release(self) -> None:
        """Drop pooled scratch buffers and this context's cached tables (they are rebuilt on demand)."""
        self._pool.clear()
        gpu.drop_tables(self.ctx)

    def _to_host(self, buf, shape) -> np.ndarray:
        out = np.empty(shape, dtype=np.uint64)
        cl.enqueue_copy(self.queue, out, buf)
        return out

    def _k(self, name: str):
        return self.program.kernel(name)

    # ------------------------------------------------------------ NTT family
    def _transform(self, a: np.ndarray, inverse: bool) -> np.ndarray:
        a = gpu.u64(a)
        n = a.shape[-1]
        NT._check_size(n)
        cols = a.size // n
        src, tmp = self._to_dev(a, "in"), self._empty(a.size, "tmp")
        res = self._ntt.transform(src, tmp, n, cols, inverse)
        return self._to_host(res, a.shape)

    def ntt(self, a: np.ndarray) -> np.ndarray:
        with self.timed("ntt"):
            return self._transform(a, False)

    def intt(self, a: np.ndarray) -> np.ndarray:
        with self.timed("ntt"):
            return self._transform(a, True)

    def coset_intt(self, values: np.ndarray, shift: int) -> np.ndarray:
        with self.timed("ntt"):
            values = gpu.u64(values)
            n = values.shape[-1]
            cols = values.size // n
            src, tmp = self._to_dev(values, "in"), self._empty(values.size, "tmp")
            res = self._ntt.transform(src, tmp, n, cols, True)
            gpu.launch(self._k("scale_table"), self.queue, n, res, self._ntt.coset_table(n, F.inv(shift)),
                       np.uint32(n), cols=cols)
            return self._to_host(res, values.shape)

    def lde(self, coeffs: np.ndarray, blowup: int, shift: int) -> np.ndarray:
        with self.timed("lde"):
            return self._lde_raw(coeffs, blowup, shift)

    def _lde_raw(self, coeffs: np.ndarray, blowup: int, shift: int) -> np.ndarray:
        coeffs = gpu.u64(coeffs)
        n = coeffs.shape[-1]
        cols = coeffs.size // n
        m = n * blowup
        NT._check_size(m)
        src, a, b = self._to_dev(coeffs, "src"), self._empty(cols * m, "in"), self._empty(cols * m, "tmp")
        gpu.launch(self._k("scale_pad"), self.queue, m, src, self._ntt.coset_table(n, shift), a,
                   np.uint32(n), np.uint32(m), cols=cols)
        res = self._ntt.transform(a, b, m, cols, False)
        return self._to_host(res, (*coeffs.shape[:-1], m))

    def batch_inv(self, a: np.ndarray) -> np.ndarray:
        with self.timed("batch_inv"):
            a = gpu.u64(a)
            if not np.all(a):
                raise ZeroDivisionError("inverse of zero in Goldilocks")
            return self._to_host(self._batch_inv_dev(self._to_dev(a, "src"), a.size), a.shape)

    def _batch_inv_dev(self, src, n: int):
        """Inverses of n non-zero elements already on the device."""
        out = self._empty(n, "inv")
        gpu.launch(self._k("batch_inv"), self.queue, -(-n // INV_CHUNK), src, out, np.uint32(n))
        return out

    def _powers_dev(self, start: int, base: int, n: int):
        """Device buffer [start * base^i for i < n], cached (domains and folding tables recur)."""
        def make():
            buf = self._empty(n)
            gpu.launch(self._k("powers"), self.queue, -(-n // POW_CHUNK), buf, np.uint64(start), np.uint64(base),
                       np.uint32(n))
            self.queue.finish()  # shared with backends on other queues of this context
            return buf

        return gpu.table(self.ctx, ("powers", start, base, n), make)

    def composition(self, air, public, lde, n, blowup, last, alphas) -> np.ndarray:
        with self.timed("constraints"):
            m = n * blowup
            lde = gpu.u64(lde)
            prog = gpu.build(self.ctx, gpu.source("goldilocks.cl") + CP.kernel_source(air))
            g = F.root_of_unity(n)
            xs = self._powers_dev(CP.SHIFT, F.root_of_unity(m), m)
            group_rows = CP.group_rows(air, public, last, n)
            rows = self._to_dev(np.array([pow(g, r, F.P) for r in group_rows], dtype=np.uint64))
            prod = self._empty(m, "tmp")
            gpu.launch(prog.kernel(f"boundary_prod_{air.name}"), self.queue, m, xs, rows, np.uint32(m), prod)
            inv_prod = self._batch_inv_dev(prod, m)
            pub = np.array([public[k] for k in air.public_names] or [0], dtype=np.uint64)
            alpha = np.array([v for a in alphas for v in a], dtype=np.uint64)
            bval = np.array(air.boundary_values(public), dtype=np.uint64)
            per = CP.periodic_tables(air, n, blowup)
            zt_host = CP.zt_inverse(n, blowup, last, self._lde_raw)
            zt_inv = self._to_dev(zt_host)
            out = self._empty(2 * m, "out")
            gpu.launch(prog.kernel(f"composition_{air.name}"), self.queue, m, self._to_dev(lde, "in"), np.uint32(m),
                       np.uint32(blowup), self._to_dev(pub), self._to_dev(alpha), xs, zt_inv,
                       self._to_dev(per if per.size else np.zeros(1, np.uint64)), np.uint32(per.shape[1]), rows,
                       self._to_dev(bval), inv_prod, out)
            return self._to_host(out, (2, m))

    # ------------------------------------------------------------ Poseidon
    def permute(self, states: np.ndarray) -> np.ndarray:
        with self.timed("poseidon"):
            rows = np.ascontiguousarray(np.asarray(states, dtype=np.uint64).T)
            n = rows.shape[0]
            buf = self._to_dev(rows, "in")
            gpu.launch(self._k("poseidon_perm"), self.queue, -(-n // 4), buf, np.uint32(n))
            return np.ascontiguousarray(self._to_host(buf, rows.shape).T)

    def hash_rows(self, rows: np.ndarray) -> np.ndarray:
        with self.timed("poseidon"):
            rows = gpu.u64(rows)
            n, length = rows.shape
            src, out = self._to_dev(rows, "in"), self._empty(n * PS.DIGEST, "out")
            gpu.launch(self._k("hash_rows"), self.queue, -(-n // 4), src, np.uint32(length), np.uint32(n), out)
            return self._to_host(out, (n, PS.DIGEST))

    # ------------------------------------------------------------ Merkle commitments (BLAKE2s)
    def commit(self, cols: np.ndarray, salt: np.ndarray | None = None) -> MK.MerkleTree:
        with self.timed("merkle"):
            rows = MK.leaf_rows(cols, salt=salt)
            n, length = rows.shape
            leaf, node = MK.PERSON_WORDS["leaf"], MK.PERSON_WORDS["node"]
            cur = self._empty(n * 4, "merkle0")  # n x 8 uint = n x 4 ulong
            gpu.launch(self._k("b2s_leaves"), self.queue, n, self._to_dev(rows, "in"), np.uint32(length),
                       np.uint32(n), np.uint32(leaf[0]), np.uint32(leaf[1]), cur)
            bufs = [(cur, n)]
            while n > 1:
                nxt = self._empty((n // 2) * 4, f"merkle{len(bufs)}")
                gpu.launch(self._k("b2s_level"), self.queue, n // 2, cur, np.uint32(n // 2), np.uint32(node[0]),
                           np.uint32(node[1]), nxt)
                cur, n = nxt, n // 2
                bufs.append((cur, n))
            levels = [self._to_host(buf, (count, 4)).tobytes() for buf, count in bufs]
            return MK.MerkleTree(levels=levels, leaves=rows)

    # ------------------------------------------------------------ FRI and DEEP
    def fold4(self, values: np.ndarray, beta: F.Ext, shift: int) -> np.ndarray:
        with self.timed("fri_fold"):
            n = values.shape[1]
            if n < 16:
                return FM.fold4_np(values, beta, shift)
            # 1/(2x) on the first half of shift * <w_n>: inv(2 shift) * w_n^-i
            s2 = shift * shift % F.P
            ta = self._powers_dev(F.inv(2 * shift % F.P), F.inv(F.root_of_unity(n)), n // 2)
            tb = self._powers_dev(F.inv(2 * s2 % F.P), F.inv(F.root_of_unity(n // 2)), n // 4)
            src, dst = self._to_dev(values, "in"), self._empty(n // 2, "out")
            gpu.launch(self._k("fri_fold4"), self.queue, n // 4, src, dst, ta, tb, np.uint32(n),
                       np.uint64(beta[0]), np.uint64(beta[1]))
            return self._to_host(dst, (2, n // 4))

    def deep(self, trace: np.ndarray, comp: np.ndarray, coeffs: FM.DeepCoeffs, shift: int) -> np.ndarray:
        with self.timed("deep"):
            trace, comp = gpu.u64(trace), gpu.u64(comp)
            w, n = trace.shape
            cc = comp.shape[0]
            if n < DEEP_CHUNK * 4:
                return FM.deep_np(trace, comp, coeffs, shift)
            k = coeffs
            coef = np.array([v for pair in (*k.a_trace, *k.b_trace, *k.e_comp) for v in pair], dtype=np.uint64)
            z, gz = k.z, k.gz
            prm = np.array([*k.const_z, *k.const_gz, *z, *gz, 7 * z[1] * z[1] % F.P, 7 * gz[1] * gz[1] % F.P],
                           dtype=np.uint64)
            h = F.root_of_unity(n)
            chunk_x = F.np_powers(pow(h, DEEP_CHUNK, F.P), n // DEEP_CHUNK, start=shift)
            out = self._empty(2 * n, "out")
            gpu.launch(self._k("deep"), self.queue, n // DEEP_CHUNK, self._to_dev(trace, "src"), np.uint32(w),
                            self._to_dev(comp, "in"), np.uint32(cc), self._to_dev(coef), self._to_dev(prm),
                            self._to_dev(chunk_x), np.uint64(h), np.uint32(n), out)
            return self._to_host(out, (2, n))


def resolve(backend) -> Backend:
    """"numpy" | "opencl" (first OpenCL device) | a Backend | a (Context, CommandQueue) pair."""
    if isinstance(backend, Backend):
        return backend
    if backend is None or backend == "numpy":
        return Backend()
    if backend == "opencl":
        pair = gpu.default_queue()
        if pair is None:
            raise RuntimeError("backend 'opencl' requested but no OpenCL device is available")
        return OpenCLBackend(*pair)
    if isinstance(backend, tuple) and len(backend) == 2:
        return OpenCLBackend(*backend)
    raise ValueError(f"unknown backend {backend!r}: use 'numpy', 'opencl', a Backend or (context, queue)")
