// BLAKE2s-256 (RFC 7693) with an 8-byte personalisation, for the Merkle commitments (merkle.py): the leaf
// digest of a row of field elements (little-endian uint64, person "gmzkleaf") and the node digest of two
// child digests (person "gmzknode"). Digests are 8 uint words (the 32 output bytes, little-endian words).

__constant uint B2S_IV[8] = {0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
                             0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};
#define B2S_G(a, b, c, d, x, y)          \
    v[a] = v[a] + v[b] + (x);            \
    v[d] = rotate(v[d] ^ v[a], 16u);     \
    v[c] = v[c] + v[d];                  \
    v[b] = rotate(v[b] ^ v[c], 20u);     \
    v[a] = v[a] + v[b] + (y);            \
    v[d] = rotate(v[d] ^ v[a], 24u);     \
    v[c] = v[c] + v[d];                  \
    v[b] = rotate(v[b] ^ v[c], 25u);
// rotate() is a left rotation: right by 16, 12, 8, 7 = left by 16, 20, 24, 25.

inline void b2s_compress(uint *h, const uint *m, uint t, int last) {
    uint v[16];
    #pragma unroll
    for (int i = 0; i < 8; i++) { v[i] = h[i]; v[i + 8] = B2S_IV[i]; }
    v[12] ^= t;
    if (last) v[14] = ~v[14];
    B2S_ROUNDS  // ten rounds with the message schedule as literal indices (gpu.blake2s_source)
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

inline void b2s_init(uint *h, uint person_lo, uint person_hi) {
    for (int i = 0; i < 8; i++) h[i] = B2S_IV[i];
    h[0] ^= 0x01010020u;  // digest 32 bytes, no key, fanout 1, depth 1
    h[6] ^= person_lo;
    h[7] ^= person_hi;
}

// rows: n x len ulong (row-major); out: n x 8 uint.
__kernel void b2s_leaves(__global const ulong *rows, const uint len, const uint n, const uint person_lo,
                         const uint person_hi, __global uint *out) {
    uint g = get_global_id(0);
    if (g >= n) return;
    __global const ulong *row = rows + (size_t)g * len;
    uint h[8], m[16];
    b2s_init(h, person_lo, person_hi);
    uint done = 0;  // elements consumed
    do {
        uint take = min(len - done, 8u);
        #pragma unroll
        for (uint i = 0; i < 8; i++) {
            ulong e = i < take ? row[done + i] : 0UL;
            m[2 * i] = (uint)e;
            m[2 * i + 1] = (uint)(e >> 32);
        }
        done += take;
        b2s_compress(h, m, 8u * done, done == len);
    } while (done < len);
    for (int i = 0; i < 8; i++) out[(size_t)g * 8 + i] = h[i];
}

// children: 2n x 8 uint; parents: n x 8 uint, parent i = node digest of children 2i, 2i + 1.
__kernel void b2s_level(__global const uint *children, const uint n, const uint person_lo, const uint person_hi,
                        __global uint *parents) {
    uint g = get_global_id(0);
    if (g >= n) return;
    uint h[8], m[16];
    #pragma unroll
    for (int i = 0; i < 16; i++) m[i] = children[(size_t)g * 16 + i];
    b2s_init(h, person_lo, person_hi);
    b2s_compress(h, m, 64u, 1);
    for (int i = 0; i < 8; i++) parents[(size_t)g * 8 + i] = h[i];
}
