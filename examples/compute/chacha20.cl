/* ChaCha20 encryption (RFC 8439): out = in XOR keystream, one 64-byte block per work item.
 *
 * params (12 x uint, __constant): key words 0..7, the initial block counter, nonce words 0..2, all as the
 * RFC reads them from bytes (little-endian). Block i of the message uses counter + i (32-bit, as in
 * RFC 8439 section 2.4; the caller keeps counter + blocks <= 2^32). nbytes need not be a multiple of 64:
 * the last work item handles the partial block byte by byte.
 *
 * Launch: global = ceil(nbytes / 64) (rounded up to the work-group size; extra items do nothing).
 */
/* shifts, not rotate(): PoCL does not lower that builtin to a rotate instruction (10x slower here) */
#define ROTL(v, c) (((v) << (c)) | ((v) >> (32 - (c))))
#define QR(a, b, c, d)                 \
    a += b; d ^= a; d = ROTL(d, 16);   \
    c += d; b ^= c; b = ROTL(b, 12);   \
    a += b; d ^= a; d = ROTL(d, 8);    \
    c += d; b ^= c; b = ROTL(b, 7);

__kernel void chacha20_xor(__global const uchar *in, __global uchar *out, const ulong nbytes,
                           __constant const uint *params)
{
    const ulong block = get_global_id(0);
    const ulong off = block * 64;
    if (off >= nbytes)
        return;

    /* the initial state: constants "expand 32-byte k", key, block counter, nonce (scalars: registers) */
    const uint j0 = 0x61707865u, j1 = 0x3320646eu, j2 = 0x79622d32u, j3 = 0x6b206574u;
    const uint j4 = params[0], j5 = params[1], j6 = params[2], j7 = params[3];
    const uint j8 = params[4], j9 = params[5], j10 = params[6], j11 = params[7];
    const uint j12 = params[8] + (uint)block, j13 = params[9], j14 = params[10], j15 = params[11];
    uint x0 = j0, x1 = j1, x2 = j2, x3 = j3, x4 = j4, x5 = j5, x6 = j6, x7 = j7;
    uint x8 = j8, x9 = j9, x10 = j10, x11 = j11, x12 = j12, x13 = j13, x14 = j14, x15 = j15;

    for (int i = 0; i < 10; i++) {  /* 20 rounds: a column round and a diagonal round each time */
        QR(x0, x4, x8,  x12);
        QR(x1, x5, x9,  x13);
        QR(x2, x6, x10, x14);
        QR(x3, x7, x11, x15);
        QR(x0, x5, x10, x15);
        QR(x1, x6, x11, x12);
        QR(x2, x7, x8,  x13);
        QR(x3, x4, x9,  x14);
    }
    const uint8 lo = (uint8)(x0 + j0, x1 + j1, x2 + j2, x3 + j3, x4 + j4, x5 + j5, x6 + j6, x7 + j7);
    const uint8 hi = (uint8)(x8 + j8, x9 + j9, x10 + j10, x11 + j11, x12 + j12, x13 + j13, x14 + j14, x15 + j15);

    const ulong left = nbytes - off;
#ifdef __ENDIAN_LITTLE__
    if (left >= 64) {  /* a whole block: 16 words (every block starts 64-byte aligned) */
        __global const uint *iw = (__global const uint *)(in + off);
        __global uint *ow = (__global uint *)(out + off);
        vstore8(vload8(0, iw) ^ lo, 0, ow);
        vstore8(vload8(1, iw) ^ hi, 1, ow);
        return;
    }
#endif
    uint w[16];  /* the keystream as the RFC serialises it: word i little-endian at bytes 4i .. 4i+3 */
    vstore8(lo, 0, w);
    vstore8(hi, 1, w);
    const int n = left >= 64 ? 64 : (int)left;
    for (int i = 0; i < n; i++)
        out[off + i] = in[off + i] ^ (uchar)(w[i >> 2] >> (8 * (i & 3)));
}
