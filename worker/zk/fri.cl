// FRI folding and the DEEP composition on OpenCL (prepended: goldilocks.cl). Extension values are stored
// as two planes: plane 0 (constant part) at [0, n), plane 1 (X part) at [n, 2n).
#define GL_INV2 0x7FFFFFFF80000001UL

inline ulong gl_pow_pm2(ulong a) {   // a^(p-2) = a^-1, p - 2 = 0xFFFFFFFEFFFFFFFF
    ulong r = 1UL, b = a, e = 0xFFFFFFFEFFFFFFFFUL;
    while (e) {
        if (e & 1UL) r = gl_mul(r, b);
        b = gl_sqr(b);
        e >>= 1;
    }
    return r;
}

inline ulong2 fold_pair(ulong2 lo, ulong2 hi, ulong inv2x, ulong2 beta) {
    ulong2 e = gle_scale(gle_add(lo, hi), GL_INV2);
    ulong2 d = gle_scale(gle_sub(lo, hi), inv2x);
    return gle_add(e, gle_mul(d, beta));
}

// Arity-4 step = binary fold by beta on (n, shift), then by beta^2 on (n/2, shift^2).
// src: (2, n) -> dst: (2, n/4). inv2x_a: 1/(2x) on the first half of the size-n domain;
// inv2x_b: the same for the size-n/2 domain.
__kernel void fri_fold4(__global const ulong *src, __global ulong *dst, __global const ulong *inv2x_a,
                        __global const ulong *inv2x_b, const uint n, const ulong b0, const ulong b1) {
    uint i = get_global_id(0);
    uint q = n / 4u;
    if (i >= q) return;
    ulong2 beta = (ulong2)(b0, b1);
    ulong2 beta2 = gle_mul(beta, beta);
    ulong2 v0 = (ulong2)(src[i], src[n + i]);
    ulong2 v1 = (ulong2)(src[q + i], src[n + q + i]);
    ulong2 v2 = (ulong2)(src[2u * q + i], src[n + 2u * q + i]);
    ulong2 v3 = (ulong2)(src[3u * q + i], src[n + 3u * q + i]);
    ulong2 g0 = fold_pair(v0, v2, inv2x_a[i], beta);
    ulong2 g1 = fold_pair(v1, v3, inv2x_a[q + i], beta);
    ulong2 r = fold_pair(g0, g1, inv2x_b[i], beta2);
    dst[i] = r.x;
    dst[q + i] = r.y;
}

#define DEEP_CHUNK 32
// DEEP composition, DEEP_CHUNK consecutive points per work-item so the 2 * DEEP_CHUNK inversions share two
// exponentiations (Montgomery's trick). x_i = chunk_x[g] * h^k.
// prm: A0 A1 B0 B1 z0 z1 gz0 gz1 7*z1^2 7*gz1^2; coef: ext (c0, c1) pairs, w for trace@z, w for trace@gz,
// cc for comp@z.
__kernel void deep(__global const ulong *tr, const uint w, __global const ulong *cp, const uint cc,
                   __global const ulong *coef, __global const ulong *prm, __global const ulong *chunk_x,
                   const ulong h, const uint n, __global ulong *out) {
    uint g = get_global_id(0);
    if (g >= n / DEEP_CHUNK) return;
    uint i0 = g * DEEP_CHUNK;
    const ulong z0 = prm[4], z1 = prm[5], gz0 = prm[6], gz1 = prm[7], wz = prm[8], wgz = prm[9];
    ulong xs[DEEP_CHUNK], nz[DEEP_CHUNK], ngz[DEEP_CHUNK], pz[DEEP_CHUNK], pgz[DEEP_CHUNK];
    ulong x = chunk_x[g], accz = 1UL, accgz = 1UL;
    for (int k = 0; k < DEEP_CHUNK; k++) {
        xs[k] = x;
        ulong a = gl_sub(x, z0);
        ulong b = gl_sub(x, gz0);
        nz[k] = gl_sub(gl_sqr(a), wz);     // norm(x - z) = (x - z0)^2 - 7 z1^2, never 0 as z1 != 0
        ngz[k] = gl_sub(gl_sqr(b), wgz);
        pz[k] = accz; accz = gl_mul(accz, nz[k]);
        pgz[k] = accgz; accgz = gl_mul(accgz, ngz[k]);
        x = gl_mul(x, h);
    }
    ulong iz = gl_pow_pm2(accz), igz = gl_pow_pm2(accgz);
    for (int k = DEEP_CHUNK - 1; k >= 0; k--) {
        ulong nzi = gl_mul(iz, pz[k]);  iz = gl_mul(iz, nz[k]);
        ulong ngzi = gl_mul(igz, pgz[k]); igz = gl_mul(igz, ngz[k]);
        ulong2 inv_z = (ulong2)(gl_mul(gl_sub(xs[k], z0), nzi), gl_mul(z1, nzi));
        ulong2 inv_gz = (ulong2)(gl_mul(gl_sub(xs[k], gz0), ngzi), gl_mul(gz1, ngzi));
        size_t i = i0 + (uint)k;
        ulong2 numz = (ulong2)(gl_neg(prm[0]), gl_neg(prm[1]));
        ulong2 numgz = (ulong2)(gl_neg(prm[2]), gl_neg(prm[3]));
        for (uint c = 0; c < w; c++) {
            ulong v = tr[(size_t)c * n + i];
            numz = gle_add(numz, gle_scale((ulong2)(coef[2 * c], coef[2 * c + 1]), v));
            numgz = gle_add(numgz, gle_scale((ulong2)(coef[2 * (w + c)], coef[2 * (w + c) + 1]), v));
        }
        for (uint c = 0; c < cc; c++) {
            ulong v = cp[(size_t)c * n + i];
            numz = gle_add(numz, gle_scale((ulong2)(coef[2 * (2 * w + c)], coef[2 * (2 * w + c) + 1]), v));
        }
        ulong2 r = gle_add(gle_mul(numz, inv_z), gle_mul(numgz, inv_gz));
        out[i] = r.x;
        out[n + i] = r.y;
    }
}

#define INV_CHUNK 32
// Batch inversion, INV_CHUNK elements per work-item sharing one exponentiation (Montgomery's trick).
// Inputs must be non-zero (the host checks).
__kernel void batch_inv(__global const ulong *a, __global ulong *out, const uint n) {
    uint i0 = get_global_id(0) * INV_CHUNK;
    if (i0 >= n) return;
    uint cnt = min((uint)INV_CHUNK, n - i0);
    ulong pre[INV_CHUNK];
    ulong acc = 1UL;
    for (uint k = 0; k < cnt; k++) { pre[k] = acc; acc = gl_mul(acc, a[i0 + k]); }
    ulong inv = gl_pow_pm2(acc);
    for (int k = (int)cnt - 1; k >= 0; k--) {
        out[i0 + k] = gl_mul(inv, pre[k]);
        inv = gl_mul(inv, a[i0 + k]);
    }
}

#define POW_CHUNK 64
// out[i] = start * base^i; one exponentiation per POW_CHUNK outputs
__kernel void powers(__global ulong *out, const ulong start, const ulong base, const uint n) {
    uint i0 = get_global_id(0) * POW_CHUNK;
    if (i0 >= n) return;
    ulong r = 1UL, b = base;
    for (uint e = i0; e; e >>= 1) {
        if (e & 1u) r = gl_mul(r, b);
        b = gl_sqr(b);
    }
    ulong v = gl_mul(start, r);
    uint end = min(i0 + POW_CHUNK, n);
    for (uint i = i0; i < end; i++) { out[i] = v; v = gl_mul(v, base); }
}
