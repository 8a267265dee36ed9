// Poseidon over Goldilocks, width 12, x^7; one permutation per work-item. The host prepends goldilocks.cl
// and a generated header: POSEIDON_RC (the round constants), POSEIDON_MDS_ROW(r, lo, hi) (the MDS row r
// applied to 32-bit limbs, with the small entries as literals), POSEIDON_HALF and POSEIDON_PARTIAL.

inline ulong sbox7(ulong x) {
    ulong x2 = gl_sqr(x);
    ulong x4 = gl_sqr(x2);
    return gl_mul(gl_mul(x, x2), x4);
}

// value = a + b * 2^32 with a, b < 2^46: b = bh * 2^32 + bl, and 2^64 = EPS (mod p)
inline ulong reduce_small(ulong a, ulong b) {
    ulong t = a + (b >> 32) * GL_EPS;       // < 2^47 < p
    return gl_add(t, (b & GL_EPS) << 32);   // (b & EPS) << 32 < p
}

inline void mds(ulong s[12]) {
    ulong lo[12], hi[12];
    for (int i = 0; i < 12; i++) { lo[i] = s[i] & GL_EPS; hi[i] = s[i] >> 32; }
    POSEIDON_MDS_ALL
}

inline void poseidon_permute(ulong s[12]) {
    for (int r = 0; r < 2 * POSEIDON_HALF + POSEIDON_PARTIAL; r++) {
        for (int i = 0; i < 12; i++) s[i] = gl_add(s[i], POSEIDON_RC[12 * r + i]);
        if (r < POSEIDON_HALF || r >= POSEIDON_HALF + POSEIDON_PARTIAL) {
            for (int i = 0; i < 12; i++) s[i] = sbox7(s[i]);
        } else {
            s[0] = sbox7(s[0]);
        }
        mds(s);
    }
}

// states: n x 12 row-major, permuted in place
__kernel void poseidon_perm(__global ulong *states, const uint n) {
    size_t g = get_global_id(0);
    if (g >= n) return;
    ulong s[12];
    for (int i = 0; i < 12; i++) s[i] = states[12 * g + i];
    poseidon_permute(s);
    for (int i = 0; i < 12; i++) states[12 * g + i] = s[i];
}

// Sponge digest of each row: rows n x len row-major -> out n x 4. Lane 8 starts at len; each chunk of 8
// overwrites lanes 0..7 (zero-padded), then permute.
__kernel void hash_rows(__global const ulong *rows, const uint len, const uint n, __global ulong *out) {
    size_t g = get_global_id(0);
    if (g >= n) return;
    ulong s[12];
    for (int i = 0; i < 12; i++) s[i] = 0UL;
    s[8] = len;
    __global const ulong *row = rows + (size_t)len * g;
    uint start = 0;
    do {
        for (uint i = 0; i < 8; i++) s[i] = (start + i < len) ? row[start + i] : 0UL;
        poseidon_permute(s);
        start += 8;
    } while (start < len);
    for (int i = 0; i < 4; i++) out[4 * g + i] = s[i];
}

// One Merkle level: children 2n x 4 -> parents n x 4, parent i = compress(child 2i, child 2i + 1).
__kernel void merkle_level(__global const ulong *children, const uint n, __global ulong *parents) {
    size_t g = get_global_id(0);
    if (g >= n) return;
    ulong s[12];
    for (int i = 0; i < 8; i++) s[i] = children[8 * g + i];
    for (int i = 8; i < 12; i++) s[i] = 0UL;
    poseidon_permute(s);
    for (int i = 0; i < 4; i++) parents[4 * g + i] = s[i];
}
