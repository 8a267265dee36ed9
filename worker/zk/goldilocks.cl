// Goldilocks field p = 2^64 - 2^32 + 1 on OpenCL. 128-bit products come from mul_hi; the reduction uses
// 2^64 = 2^32 - 1 and 2^96 = -1 (mod p). Every function takes and returns canonical values (< p).
#define GL_P 0xFFFFFFFF00000001UL
#define GL_EPS 0xFFFFFFFFUL

inline ulong gl_add(ulong a, ulong b) {
    ulong s = a + b;
    s += (s < a) ? GL_EPS : 0UL;          // wrapped past 2^64: add back 2^64 mod p
    return (s >= GL_P) ? s - GL_P : s;
}

inline ulong gl_sub(ulong a, ulong b) {
    ulong d = a - b;
    return (a < b) ? d - GL_EPS : d;      // wrapped below 0: a - b + 2^64 -> a - b + p
}

inline ulong gl_neg(ulong a) { return a ? GL_P - a : 0UL; }

inline ulong gl_reduce128(ulong hi, ulong lo) {
    ulong hi_hi = hi >> 32;
    ulong hi_lo = hi & GL_EPS;
    ulong t0 = lo - hi_hi;
    t0 -= (lo < hi_hi) ? GL_EPS : 0UL;
    ulong t1 = hi_lo * GL_EPS;
    ulong t2 = t0 + t1;
    t2 += (t2 < t1) ? GL_EPS : 0UL;
    return (t2 >= GL_P) ? t2 - GL_P : t2;
}

inline ulong gl_mul(ulong a, ulong b) { return gl_reduce128(mul_hi(a, b), a * b); }

inline ulong gl_sqr(ulong a) { return gl_mul(a, a); }

// x * 2^k for 0 <= k < 64
inline ulong gl_mul_pow2_lt64(ulong x, uint k) {
    return k ? gl_reduce128(x >> (64 - k), x << k) : x;
}

// x * 2^e for 0 <= e < 192 (the powers of two hold every 64th root of unity; 2^96 = -1, 2^192 = 1).
// Meant for compile-time-known e, where it compiles to shifts and one or two reductions.
inline ulong gl_mul_pow2(ulong x, uint e) {
    uint k = e % 96;
    ulong r = (k < 64) ? gl_mul_pow2_lt64(x, k) : gl_reduce128(gl_mul_pow2_lt64(x, k - 64), 0UL);
    return (e >= 96) ? gl_neg(r) : r;
}

// quadratic extension F_p[X]/(X^2 - 7), values as (c0, c1)
inline ulong2 gle_mul(ulong2 a, ulong2 b) {
    ulong2 r;
    r.x = gl_add(gl_mul(a.x, b.x), gl_mul(gl_mul(a.y, b.y), 7UL));
    r.y = gl_add(gl_mul(a.x, b.y), gl_mul(a.y, b.x));
    return r;
}
inline ulong2 gle_add(ulong2 a, ulong2 b) { return (ulong2)(gl_add(a.x, b.x), gl_add(a.y, b.y)); }
inline ulong2 gle_sub(ulong2 a, ulong2 b) { return (ulong2)(gl_sub(a.x, b.x), gl_sub(a.y, b.y)); }
inline ulong2 gle_scale(ulong2 a, ulong s) { return (ulong2)(gl_mul(a.x, s), gl_mul(a.y, s)); }

// ---- 4-wide versions (ulong4 lanes are independent field elements): on the CPU device these become AVX2
// code, where the 32x32->64 products of the Poseidon MDS and the reductions run four at a time.
#define GLV_MASK(c) as_ulong4(c)
inline ulong4 glv_add(ulong4 a, ulong4 b) {
    ulong4 s = a + b;
    s += GLV_MASK(s < a) & GL_EPS;
    return s - (GLV_MASK(s >= GL_P) & GL_P);
}
inline ulong4 glv_reduce128(ulong4 hi, ulong4 lo) {
    ulong4 hh = hi >> 32;
    ulong4 hl = hi & GL_EPS;
    ulong4 t0 = lo - hh;
    t0 -= GLV_MASK(lo < hh) & GL_EPS;
    ulong4 t1 = hl * GL_EPS;
    ulong4 t2 = t0 + t1;
    t2 += GLV_MASK(t2 < t1) & GL_EPS;
    return t2 - (GLV_MASK(t2 >= GL_P) & GL_P);
}
// hi * 2^64 + lo mod p, result < 2^64 but possibly >= p: for intermediate products that only feed other
// products (every mul accepts any 64-bit input)
inline ulong4 glv_reduce128_nc(ulong4 hi, ulong4 lo) {
    ulong4 hh = hi >> 32;
    ulong4 hl = hi & GL_EPS;
    ulong4 t0 = lo - hh;
    t0 -= GLV_MASK(lo < hh) & GL_EPS;
    ulong4 t1 = hl * GL_EPS;
    ulong4 t2 = t0 + t1;
    return t2 + (GLV_MASK(t2 < t1) & GL_EPS);
}

// 4 products of 32-bit limbs give both halves of the 128-bit product (mul_hi plus a separate 64-bit multiply
// would redo them: AVX2 has no 64x64 multiply); measured faster than mul_hi on PoCL.
inline ulong4 glv_mul(ulong4 a, ulong4 b) {
    ulong4 al = a & GL_EPS, ah = a >> 32, bl = b & GL_EPS, bh = b >> 32;
    ulong4 ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    ulong4 mid = lh + (ll >> 32);              // < 2^64
    ulong4 mid2 = hl + (mid & GL_EPS);         // < 2^64
    ulong4 lo = (mid2 << 32) | (ll & GL_EPS);
    ulong4 hi = hh + (mid >> 32) + (mid2 >> 32);
    return glv_reduce128(hi, lo);
}

inline ulong4 glv_mul_nc(ulong4 a, ulong4 b) {  // glv_mul without the final canonicalisation
    ulong4 al = a & GL_EPS, ah = a >> 32, bl = b & GL_EPS, bh = b >> 32;
    ulong4 ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    ulong4 mid = lh + (ll >> 32);
    ulong4 mid2 = hl + (mid & GL_EPS);
    ulong4 lo = (mid2 << 32) | (ll & GL_EPS);
    ulong4 hi = hh + (mid >> 32) + (mid2 >> 32);
    return glv_reduce128_nc(hi, lo);
}
inline ulong4 glv_sub(ulong4 a, ulong4 b) {
    ulong4 d = a - b;
    return d - (GLV_MASK(a < b) & GL_EPS);
}
inline ulong4 glv_neg(ulong4 a) { return (GL_P - a) & GLV_MASK(a != 0UL); }
inline ulong4 glv_mul_pow2_lt64(ulong4 x, uint k) {
    return k ? glv_reduce128(x >> (64 - k), x << k) : x;
}
inline ulong4 glv_mul_pow2(ulong4 x, uint e) {
    uint k = e % 96;
    ulong4 r = (k < 64) ? glv_mul_pow2_lt64(x, k) : glv_reduce128(glv_mul_pow2_lt64(x, k - 64), (ulong4)0UL);
    return (e >= 96) ? glv_neg(r) : r;
}
