// Poseidon over Goldilocks, width 12, x^7. Each work-item permutes FOUR states, one per ulong4 lane, so the
// arithmetic vectorises on CPU devices (measured ~2x over one state per work-item on PoCL/AVX2). The host
// prepends goldilocks.cl and a generated header: POSEIDON_RC (round constants), mds_half (the circulant
// MDS on 32-bit limbs), POSEIDON_HALF and POSEIDON_PARTIAL.

inline ulong4 sbox7(ulong4 x) {  // intermediates stay unreduced (< 2^64); the result is canonical
    ulong4 x2 = glv_mul_nc(x, x);
    ulong4 x4 = glv_mul_nc(x2, x2);
    return glv_mul(glv_mul_nc(x, x2), x4);
}

// value = a + b * 2^32 with a, b < 2^46: b = bh * 2^32 + bl, and 2^64 = EPS (mod p)
inline ulong4 reduce_small(ulong4 a, ulong4 b) {
    ulong4 t = a + (b >> 32) * GL_EPS;           // < 2^47 < p
    return glv_add(t, (b & GL_EPS) << 32);       // (b & EPS) << 32 < p
}

// MDS on 32-bit limbs with exact (signed) integer arithmetic, then one reduction per lane: the generated
// mds_half uses the matrix's frequency-domain form (shifts and adds, see gpu.mds_frequency_constants).
inline void mds(ulong4 s[12]) {
    long4 lo[12], hi[12], ylo[12], yhi[12];
    for (int i = 0; i < 12; i++) { lo[i] = as_long4(s[i] & GL_EPS); hi[i] = as_long4(s[i] >> 32); }
    mds_half(lo, ylo);
    mds_half(hi, yhi);
    for (int i = 0; i < 12; i++) s[i] = reduce_small(as_ulong4(ylo[i]), as_ulong4(yhi[i]));
}

inline void poseidon_permute(ulong4 s[12]) {
    for (int r = 0; r < 2 * POSEIDON_HALF + POSEIDON_PARTIAL; r++) {
        for (int i = 0; i < 12; i++) s[i] = glv_add(s[i], (ulong4)POSEIDON_RC[12 * r + i]);
        if (r < POSEIDON_HALF || r >= POSEIDON_HALF + POSEIDON_PARTIAL) {
            for (int i = 0; i < 12; i++) s[i] = sbox7(s[i]);
        } else {
            s[0] = sbox7(s[0]);
        }
        mds(s);
    }
}

// element e of item g + t (t = lane), items of `len` elements, clamped to the last item for the tail
inline ulong4 gather4(__global const ulong *base, size_t g, uint len, uint e, uint n) {
    size_t last = n - 1;
    return (ulong4)(base[min(g, last) * len + e], base[min(g + 1, last) * len + e],
                    base[min(g + 2, last) * len + e], base[min(g + 3, last) * len + e]);
}

inline void scatter4(__global ulong *base, size_t g, uint len, uint e, uint n, ulong4 v) {
    base[g * len + e] = v.s0;
    if (g + 1 < n) base[(g + 1) * len + e] = v.s1;
    if (g + 2 < n) base[(g + 2) * len + e] = v.s2;
    if (g + 3 < n) base[(g + 3) * len + e] = v.s3;
}

// states: n x 12 row-major, permuted in place; work-item i handles states 4i .. 4i+3
__kernel void poseidon_perm(__global ulong *states, const uint n) {
    size_t g = 4 * get_global_id(0);
    if (g >= n) return;
    ulong4 s[12];
    for (uint i = 0; i < 12; i++) s[i] = gather4(states, g, 12, i, n);
    poseidon_permute(s);
    for (uint i = 0; i < 12; i++) scatter4(states, g, 12, i, n, s[i]);
}

// Sponge digest of each row: rows n x len row-major -> out n x 4. Lane 8 starts at len; each chunk of 8
// overwrites lanes 0..7 (zero-padded), then permute.
__kernel void hash_rows(__global const ulong *rows, const uint len, const uint n, __global ulong *out) {
    size_t g = 4 * get_global_id(0);
    if (g >= n) return;
    ulong4 s[12];
    for (int i = 0; i < 12; i++) s[i] = (ulong4)0UL;
    s[8] = (ulong4)len;
    uint start = 0;
    do {
        for (uint i = 0; i < 8; i++) s[i] = (start + i < len) ? gather4(rows, g, len, start + i, n) : (ulong4)0UL;
        poseidon_permute(s);
        start += 8;
    } while (start < len);
    for (uint i = 0; i < 4; i++) scatter4(out, g, 4, i, n, s[i]);
}
