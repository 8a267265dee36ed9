// gpumesh AR ray tracer: one work-item per pixel of a tile, float32 throughout.
//
// The same maths as worker/render/reference.py (the float64 definition of the image) and
// docs/scene-format.md ("Rendering model"): primary ray clipped to [near, far] in view depth, direct lighting
// with one shadow ray per light (attenuated by the most opaque occluder), one reflection bounce weighted
// by metallic, one see-through step for opacity < 1, sRGB-encoded RGBA8 with alpha = coverage, view-space
// depth in metres (+inf where nothing is hit), as float32 or, with depth_half, as the IEEE half a session tile
// carries on the wire (worker/render/frame_codec.py). Buffer layouts are documented in worker/render/pack.py.

#define OFFSET 1e-4f
#define F0_DIELECTRIC 0.04f
#define STACK_SIZE 64

#define PRIM_SPHERE 0
#define PRIM_BOX 1
#define PRIM_PLANE 2
#define LIGHT_POINT 0

#define KIND_NONE 0
#define KIND_PRIM 1
#define KIND_TRI 2

// PoCL's CPU builtins (dot, fmin, fabs, ...) compile to out-of-line calls; these small always-inline
// versions made the kernel several times faster there. The host defines GPUMESH_CLANG_BUILTINS on PoCL to
// reach sqrt/floor/copysign as single instructions; other compilers get the standard builtins.
#define INL inline __attribute__((always_inline))
#ifdef GPUMESH_CLANG_BUILTINS
#define SQRT(x) __builtin_sqrtf(x)
#define FLOOR(x) __builtin_floorf(x)
#define COPYSIGN(a, b) __builtin_copysignf(a, b)
#else
#define SQRT(x) sqrt(x)
#define FLOOR(x) floor(x)
#define COPYSIGN(a, b) copysign(a, b)
#endif

INL float dot3(float3 a, float3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
INL float3 cross3(float3 a, float3 b) {
    return (float3)(a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x);
}
INL float min1(float a, float b) { return a < b ? a : b; }
INL float max1(float a, float b) { return a > b ? a : b; }
INL float abs1(float a) { return a < 0.0f ? -a : a; }
INL float3 min3(float3 a, float3 b) { return (float3)(min1(a.x, b.x), min1(a.y, b.y), min1(a.z, b.z)); }
INL float3 max3(float3 a, float3 b) { return (float3)(max1(a.x, b.x), max1(a.y, b.y), max1(a.z, b.z)); }
INL float len3(float3 v) { return SQRT(dot3(v, v)); }
INL float3 unit3(float3 v) { return v / len3(v); }

typedef struct {
    __global const float4 *prim;      // 4 per primitive
    __global const int4 *prim_info;   // (type, material, 0, 0)
    int nprims;
    __global const float4 *v0;
    __global const float4 *e1;
    __global const float4 *e2;
    __global const int *tri_mat;
    int ntris;
    __global const float4 *bmin;
    __global const float4 *bmax;
    __global const int4 *meta;
    int nnodes;
    int use_bvh;
    __global const float4 *tri_n;     // 3 per triangle: corner normals; tri_n[3i].w = 1 if smooth
    __global const float4 *tri_uv;    // 2 per triangle: (u0, v0, u1, v1), (u2, v2, 0, 0)
    __global const float4 *mat;       // 4 per material
    __global const float4 *light;     // 2 per light
    int nlights;
    __global const uchar4 *texels;    // every texture, sRGB8, row-major from the top row
    __global const float *srgb_lin;   // 256: sRGB code -> linear
    float3 ambient;
    float3 miss;
} Scene;

typedef struct {
    float t;
    int kind;
    int idx;
} Hit;

INL float pick_t(float tn, float tf, float tmin, float tmax) {
    float t = tn > tmin ? tn : tf;
    return (t > tmin && t < tmax) ? t : INFINITY;
}

INL float isect_sphere(float3 o, float3 d, float tmin, float tmax, float4 s) {
    float3 oc = o - s.xyz;
    float b = dot3(oc, d);
    float3 f = oc - b * d;
    float r2 = s.w * s.w;
    float disc = r2 - dot3(f, f);
    if (disc < 0.0f) return INFINITY;
    float sq = SQRT(disc);
    float c2 = dot3(oc, oc) - r2;
    float q = -b - COPYSIGN(sq, b);
    float t0 = (q != 0.0f) ? c2 / q : 0.0f;
    return pick_t(min1(t0, q), max1(t0, q), tmin, tmax);
}

INL float3 nonzero3(float3 v) {
    return (float3)(v.x == 0.0f ? 1e-30f : v.x, v.y == 0.0f ? 1e-30f : v.y, v.z == 0.0f ? 1e-30f : v.z);
}

INL float isect_box(float3 o, float3 d, float tmin, float tmax, __global const float4 *p) {
    float3 oc = o - p[0].xyz;
    float3 ax = p[1].xyz, ay = p[2].xyz, az = p[3].xyz;
    float3 h = (float3)(p[1].w, p[2].w, p[3].w);
    float3 ol = (float3)(dot3(oc, ax), dot3(oc, ay), dot3(oc, az));
    float3 inv = 1.0f / nonzero3((float3)(dot3(d, ax), dot3(d, ay), dot3(d, az)));
    float3 t1 = (-h - ol) * inv, t2 = (h - ol) * inv;
    float3 lo = min3(t1, t2), hi = max3(t1, t2);
    float tn = max1(max1(lo.x, lo.y), lo.z);
    float tf = min1(min1(hi.x, hi.y), hi.z);
    if (tn > tf) return INFINITY;
    return pick_t(tn, tf, tmin, tmax);
}

INL float isect_plane(float3 o, float3 d, float tmin, float tmax, __global const float4 *p) {
    float3 n = p[1].xyz;
    float den = dot3(d, n);
    if (den == 0.0f) return INFINITY;
    float t = dot3(p[0].xyz - o, n) / den;
    return (t > tmin && t < tmax) ? t : INFINITY;
}

// Möller-Trumbore; returns t > tmin or INFINITY (the caller compares with its best t, ties included).
INL float isect_tri(float3 o, float3 d, float tmin, float3 v0, float3 e1, float3 e2) {
    float3 pvec = cross3(d, e2);
    float det = dot3(e1, pvec);
    if (det == 0.0f) return INFINITY;
    float inv = 1.0f / det;
    float3 tvec = o - v0;
    float u = dot3(tvec, pvec) * inv;
    if (u < 0.0f || u > 1.0f) return INFINITY;
    float3 qvec = cross3(tvec, e1);
    float v = dot3(d, qvec) * inv;
    if (v < 0.0f || u + v > 1.0f) return INFINITY;
    float t = dot3(e2, qvec) * inv;
    return t > tmin ? t : INFINITY;
}

// A triangle replaces the best hit if nearer, or equally near with a lower index: the same winner whatever
// order BVH traversal visits triangles in, so BVH and brute force give identical images.
INL void consider_tri(const Scene *s, float3 o, float3 d, float tmin, int i, Hit *h) {
    float t = isect_tri(o, d, tmin, s->v0[i].xyz, s->e1[i].xyz, s->e2[i].xyz);
    if (t < h->t || (t == h->t && h->kind == KIND_TRI && i < h->idx)) {
        h->t = t;
        h->kind = KIND_TRI;
        h->idx = i;
    }
}

INL Hit closest(const Scene *s, float3 o, float3 d, float tmin, float tmax) {
    Hit h;
    h.t = tmax;
    h.kind = KIND_NONE;
    h.idx = -1;
    for (int i = 0; i < s->nprims; ++i) {
        int type = s->prim_info[i].x;
        __global const float4 *p = s->prim + 4 * i;
        float t;
        if (type == PRIM_SPHERE) t = isect_sphere(o, d, tmin, h.t, p[0]);
        else if (type == PRIM_BOX) t = isect_box(o, d, tmin, h.t, p);
        else t = isect_plane(o, d, tmin, h.t, p);
        if (t < h.t) {
            h.t = t;
            h.kind = KIND_PRIM;
            h.idx = i;
        }
    }
    if (s->ntris > 0) {
        if (!s->use_bvh) {
            for (int i = 0; i < s->ntris; ++i) consider_tri(s, o, d, tmin, i, &h);
        } else {
            float3 inv = 1.0f / nonzero3(d);
            int stack[STACK_SIZE];
            int sp = 0;
            int node = 0;
            while (1) {
                float3 t1 = (s->bmin[node].xyz - o) * inv;
                float3 t2 = (s->bmax[node].xyz - o) * inv;
                float3 lo = min3(t1, t2), hi = max3(t1, t2);
                float tn = max1(max1(lo.x, lo.y), lo.z);
                float tf = min1(min1(hi.x, hi.y), hi.z);
                if (tn <= tf && tf >= tmin && tn <= h.t) {
                    int4 m = s->meta[node];
                    if (m.y > 0) {
                        for (int i = m.x; i < m.x + m.y; ++i) consider_tri(s, o, d, tmin, i, &h);
                    } else {
                        float da = m.z == 0 ? d.x : (m.z == 1 ? d.y : d.z);
                        int first = node + 1, second = m.x;
                        if (da < 0.0f) {
                            first = m.x;
                            second = node + 1;
                        }
                        stack[sp++] = second;
                        node = first;
                        continue;
                    }
                }
                if (sp == 0) break;
                node = stack[--sp];
            }
        }
    }
    if (h.kind == KIND_NONE) h.t = INFINITY;
    return h;
}

INL int material_of(const Scene *s, Hit h) {
    return h.kind == KIND_TRI ? s->tri_mat[h.idx] : s->prim_info[h.idx].y;
}

INL float opacity_of(const Scene *s, int mat) {
    return s->mat[4 * mat + 2].x;
}

// How much of a shadow ray (0, tmax) is blocked: the largest opacity among everything it hits. Order-free
// (max is exact), so it may stop at the first fully opaque hit and BVH and brute force still agree.
INL float occlusion(const Scene *s, float3 o, float3 d, float tmax) {
    float occ = 0.0f;
    for (int i = 0; i < s->nprims; ++i) {
        int4 info = s->prim_info[i];
        __global const float4 *p = s->prim + 4 * i;
        float t;
        if (info.x == PRIM_SPHERE) t = isect_sphere(o, d, 0.0f, tmax, p[0]);
        else if (info.x == PRIM_BOX) t = isect_box(o, d, 0.0f, tmax, p);
        else t = isect_plane(o, d, 0.0f, tmax, p);
        if (t < tmax) {
            occ = max1(occ, opacity_of(s, info.y));
            if (occ >= 1.0f) return 1.0f;
        }
    }
    if (s->ntris == 0) return occ;
    if (!s->use_bvh) {
        for (int i = 0; i < s->ntris; ++i) {
            if (isect_tri(o, d, 0.0f, s->v0[i].xyz, s->e1[i].xyz, s->e2[i].xyz) < tmax) {
                occ = max1(occ, opacity_of(s, s->tri_mat[i]));
                if (occ >= 1.0f) return 1.0f;
            }
        }
        return occ;
    }
    float3 inv = 1.0f / nonzero3(d);
    int stack[STACK_SIZE];
    int sp = 0;
    int node = 0;
    while (1) {
        float3 t1 = (s->bmin[node].xyz - o) * inv;
        float3 t2 = (s->bmax[node].xyz - o) * inv;
        float3 lo = min3(t1, t2), hi = max3(t1, t2);
        float tn = max1(max1(lo.x, lo.y), lo.z);
        float tf = min1(min1(hi.x, hi.y), hi.z);
        if (tn <= tf && tf >= 0.0f && tn <= tmax) {
            int4 m = s->meta[node];
            if (m.y > 0) {
                for (int i = m.x; i < m.x + m.y; ++i) {
                    if (isect_tri(o, d, 0.0f, s->v0[i].xyz, s->e1[i].xyz, s->e2[i].xyz) < tmax) {
                        occ = max1(occ, opacity_of(s, s->tri_mat[i]));
                        if (occ >= 1.0f) return 1.0f;
                    }
                }
            } else {
                stack[sp++] = m.x;
                node = node + 1;
                continue;
            }
        }
        if (sp == 0) break;
        node = stack[--sp];
    }
    return occ;
}

// Schlick's rational stand-in for x^e on [0, 1] (no pow: the highlight shape is part of the model).
INL float schlick_pow(float x, float e) {
    return x / (e - e * x + x);
}

// What a ray hit: point, geometric normal ng and shading normal n (both facing the ray), material, albedo.
typedef struct {
    float3 p;
    float3 ng;
    float3 n;
    int mat;
    float3 albedo;
} Surface;

INL float3 texel(const Scene *s, int base, int w, int x, int y) {
    uchar4 c = s->texels[base + y * w + x];
    return (float3)(s->srgb_lin[c.x], s->srgb_lin[c.y], s->srgb_lin[c.z]);
}

// Bilinear, wrapping, in linear light; v = 0 is the image's bottom row (OBJ), texel centres at half-integers.
INL float3 sample_texture(const Scene *s, float4 m3, float u, float v) {
    int base = (int)m3.x, w = (int)m3.y, h = (int)m3.z;
    float x = u * (float)w - 0.5f, y = (1.0f - v) * (float)h - 0.5f;
    float x0 = FLOOR(x), y0 = FLOOR(y);
    float fx = x - x0, fy = y - y0;
    int ix0 = (int)(x0 - FLOOR(x0 / (float)w) * (float)w), iy0 = (int)(y0 - FLOOR(y0 / (float)h) * (float)h);
    ix0 = ix0 >= w ? ix0 - w : (ix0 < 0 ? ix0 + w : ix0);
    iy0 = iy0 >= h ? iy0 - h : (iy0 < 0 ? iy0 + h : iy0);
    int ix1 = ix0 + 1 == w ? 0 : ix0 + 1, iy1 = iy0 + 1 == h ? 0 : iy0 + 1;
    float3 top = texel(s, base, w, ix0, iy0) * (1.0f - fx) + texel(s, base, w, ix1, iy0) * fx;
    float3 bottom = texel(s, base, w, ix0, iy1) * (1.0f - fx) + texel(s, base, w, ix1, iy1) * fx;
    return top * (1.0f - fy) + bottom * fy;
}

INL Surface surface_at(const Scene *s, Hit h, float3 o, float3 d) {
    Surface sf;
    float3 p = o + h.t * d;
    float3 n;
    sf.p = p;
    sf.mat = material_of(s, h);
    float4 m0 = s->mat[4 * sf.mat], m3 = s->mat[4 * sf.mat + 3];
    sf.albedo = m0.xyz;
    if (h.kind == KIND_TRI) {
        float3 e1 = s->e1[h.idx].xyz, e2 = s->e2[h.idx].xyz;
        n = unit3(cross3(e1, e2));
        float4 c0 = s->tri_n[3 * h.idx];
        if (c0.w != 0.0f || m3.y > 0.0f) {  // smooth or textured: barycentrics of the hit
            float3 pvec = cross3(d, e2);
            float inv = 1.0f / dot3(e1, pvec);
            float3 tvec = o - s->v0[h.idx].xyz;
            float bu = dot3(tvec, pvec) * inv;
            float bv = dot3(d, cross3(tvec, e1)) * inv;
            float bw = 1.0f - bu - bv;
            float flip = dot3(n, d) > 0.0f ? -1.0f : 1.0f;
            sf.ng = flip * n;
            sf.n = sf.ng;
            if (c0.w != 0.0f) {
                float3 sn = bw * c0.xyz + bu * s->tri_n[3 * h.idx + 1].xyz + bv * s->tri_n[3 * h.idx + 2].xyz;
                float len = len3(sn);
                if (len > 1e-12f) sf.n = flip * (sn / len);
            }
            if (m3.y > 0.0f) {
                float4 uv01 = s->tri_uv[2 * h.idx], uv2 = s->tri_uv[2 * h.idx + 1];
                float u = bw * uv01.x + bu * uv01.z + bv * uv2.x;
                float v = bw * uv01.y + bu * uv01.w + bv * uv2.y;
                sf.albedo *= sample_texture(s, m3, u, v);
            }
            return sf;
        }
    } else {
        __global const float4 *q = s->prim + 4 * h.idx;
        int type = s->prim_info[h.idx].x;
        if (type == PRIM_SPHERE) {
            n = (p - q[0].xyz) / q[0].w;
        } else if (type == PRIM_BOX) {
            float3 r = p - q[0].xyz;
            float lx = dot3(r, q[1].xyz) / q[1].w, ly = dot3(r, q[2].xyz) / q[2].w, lz = dot3(r, q[3].xyz) / q[3].w;
            float ax = abs1(lx), ay = abs1(ly), az = abs1(lz);
            if (ax >= ay && ax >= az) n = (lx > 0.0f ? 1.0f : (lx < 0.0f ? -1.0f : 0.0f)) * q[1].xyz;
            else if (ay >= az) n = (ly > 0.0f ? 1.0f : (ly < 0.0f ? -1.0f : 0.0f)) * q[2].xyz;
            else n = (lz > 0.0f ? 1.0f : (lz < 0.0f ? -1.0f : 0.0f)) * q[3].xyz;
        } else {
            n = q[1].xyz;
        }
    }
    sf.ng = dot3(n, d) > 0.0f ? -n : n;
    sf.n = sf.ng;
    return sf;
}

INL float offset_at(float3 p) {
    return OFFSET * (1.0f + max1(max1(abs1(p.x), abs1(p.y)), abs1(p.z)));
}

// Direction to light i from os, the radiance arriving, and the distance (INFINITY for a directional light).
INL float3 light_dir(const Scene *s, int i, float3 os, float3 *rad, float *dist) {
    float4 l0 = s->light[2 * i], l1 = s->light[2 * i + 1];
    if ((int)l0.w == LIGHT_POINT) {
        float3 lv = l0.xyz - os;
        float dd = len3(lv);
        if (!(dd > 0.0f)) dd = 1e-30f;
        *dist = dd;
        *rad = l1.xyz / (dd * dd);
        return lv / dd;
    }
    *dist = INFINITY;
    *rad = l1.xyz;
    return l0.xyz;
}

INL float3 shade_direct(const Scene *s, const Surface *sf, float3 d) {
    int mat = sf->mat;
    float4 m0 = s->mat[4 * mat], m1 = s->mat[4 * mat + 1], m2 = s->mat[4 * mat + 2];
    float3 alb = sf->albedo, n = sf->n;
    float met = m0.w;
    float3 kd = alb * (1.0f - met);
    float3 f0 = F0_DIELECTRIC * (1.0f - met) + alb * met;
    float3 c = m1.xyz + s->ambient * alb;
    float3 os = sf->p + sf->ng * offset_at(sf->p);
    for (int i = 0; i < s->nlights; ++i) {
        float3 rad;
        float dist;
        float3 l = light_dir(s, i, os, &rad, &dist);
        float ndotl = dot3(n, l);
        if (!(ndotl > 0.0f)) continue;
        float trans = 1.0f - occlusion(s, os, l, dist);
        if (trans <= 0.0f) continue;
        float3 hv = unit3(l - d);
        float ndoth = max1(dot3(n, hv), 0.0f);
        float3 spec = f0 * schlick_pow(ndoth, m2.y);
        c += rad * (trans * ndotl) * (kd + spec);
    }
    return c;
}

// A shadow catcher's shadow: 1 - lit / unblocked light (each light weighted by its mean channel times n.l),
// times the catcher's opacity; 0 where no light reaches it at all.
INL float shadow_of(const Scene *s, const Surface *sf) {
    float3 os = sf->p + sf->ng * offset_at(sf->p);
    float full = 0.0f, lit = 0.0f;
    for (int i = 0; i < s->nlights; ++i) {
        float3 rad;
        float dist;
        float3 l = light_dir(s, i, os, &rad, &dist);
        float wgt = (rad.x + rad.y + rad.z) / 3.0f * max1(dot3(sf->n, l), 0.0f);
        if (!(wgt > 0.0f)) continue;
        full += wgt;
        lit += wgt * (1.0f - occlusion(s, os, l, dist));
    }
    float sh = full > 0.0f ? 1.0f - lit / full : 0.0f;
    return min1(max1(sh, 0.0f), 1.0f) * s->mat[4 * sf->mat + 2].x;
}

// Premultiplied colour of a surface with direct light only; a shadow catcher shows `behind` (premultiplied
// colour, *alpha on entry) darkened by its shadow, anything else is opaque.
INL float3 shade(const Scene *s, const Surface *sf, float3 d, float3 behind, float *alpha) {
    if (s->mat[4 * sf->mat + 2].z != 0.0f) {
        float sh = shadow_of(s, sf);
        *alpha = *alpha + (1.0f - *alpha) * sh;
        return behind * (1.0f - sh);
    }
    *alpha = 1.0f;
    return shade_direct(s, sf, d);
}

// What a secondary ray sees, premultiplied; a miss is miss_rgb with coverage miss_alpha.
INL float3 radiance(const Scene *s, float3 o, float3 d, float3 miss_rgb, float miss_alpha, float *alpha) {
    Hit h = closest(s, o, d, 0.0f, INFINITY);
    *alpha = miss_alpha;
    if (h.kind == KIND_NONE) return miss_rgb * miss_alpha;
    Surface sf = surface_at(s, h, o, d);
    return shade(s, &sf, d, miss_rgb * miss_alpha, alpha);
}

// sRGB-encode and quantise: Ian Taylor's three-sqrt approximation of the sRGB curve (within 0.25 of a code)
// gives a first guess, then the 256 linear thresholds where the 8-bit code steps (srgb8[k] = the linear value
// at which code k begins; srgb8[0] = -inf, srgb8[256] = +inf) correct it by one either way: the exact
// floor(srgb(v) * 255 + 0.5) of the reference, at the cost of three sqrt and two table reads, no pow.
INL uchar encode_srgb8(float v, __global const float *srgb8) {
    v = min1(max1(v, 0.0f), 1.0f);
    float s1 = SQRT(v), s2 = SQRT(s1), s3 = SQRT(s2);
    float e = v <= 0.0031308f ? 12.92f * v
                              : 0.662002687f * s1 + 0.684122060f * s2 - 0.323583601f * s3 - 0.0225411470f * v;
    int k = (int)(e * 255.0f + 0.5f);
    k = k < 0 ? 0 : (k > 255 ? 255 : k);
    k += v >= srgb8[k + 1] ? 1 : 0;
    k -= v < srgb8[k] ? 1 : 0;
    return (uchar)k;
}

__kernel void render(
    __global uchar4 *out_rgba, __global float *out_depth,
    int x0, int y0, int w, int h, int width, int height,
    float4 cam_o, float4 cam_r, float4 cam_u, float4 cam_f, float near, float far,
    __global const float4 *prim, __global const int4 *prim_info, int nprims,
    __global const float4 *v0, __global const float4 *e1, __global const float4 *e2,
    __global const int *tri_mat, int ntris,
    __global const float4 *tri_n, __global const float4 *tri_uv,
    __global const float4 *bmin, __global const float4 *bmax, __global const int4 *meta, int nnodes,
    int use_bvh,
    __global const float4 *mat, __global const float4 *light, int nlights,
    __global const uchar4 *texels, __global const float *srgb_lin,
    float4 ambient, float4 miss, float4 background, __global const float *srgb8, int depth_half)
{
    int x = get_global_id(0), y = get_global_id(1);
    if (x >= w || y >= h) return;
    Scene s;
    s.prim = prim; s.prim_info = prim_info; s.nprims = nprims;
    s.v0 = v0; s.e1 = e1; s.e2 = e2; s.tri_mat = tri_mat; s.ntris = ntris;
    s.tri_n = tri_n; s.tri_uv = tri_uv;
    s.bmin = bmin; s.bmax = bmax; s.meta = meta; s.nnodes = nnodes; s.use_bvh = use_bvh && nnodes > 0;
    s.mat = mat; s.light = light; s.nlights = nlights;
    s.texels = texels; s.srgb_lin = srgb_lin;
    s.ambient = ambient.xyz; s.miss = miss.xyz;

    float sx = 2.0f * ((float)(x0 + x) + 0.5f) / (float)width - 1.0f;
    float sy = 1.0f - 2.0f * ((float)(y0 + y) + 0.5f) / (float)height;
    float3 o = cam_o.xyz;
    float3 d = unit3(cam_f.xyz + sx * cam_r.xyz + sy * cam_u.xyz);
    float cosv = dot3(d, cam_f.xyz);
    int transparent = background.w == 0.0f;
    float bg_alpha = transparent ? 0.0f : 1.0f;
    float3 bg = background.xyz * bg_alpha;

    Hit hit = closest(&s, o, d, near / cosv, far / cosv);
    float3 rgb = bg;  // premultiplied throughout
    float alpha = bg_alpha;
    float depth = INFINITY;
    if (hit.kind != KIND_NONE) {
        Surface sf = surface_at(&s, hit, o, d);
        float4 m0 = s.mat[4 * sf.mat], m2 = s.mat[4 * sf.mat + 2];
        float a = bg_alpha;
        float3 c = shade(&s, &sf, d, bg, &a);
        if (m2.z == 0.0f) {  // not a shadow catcher: reflection and see-through
            float3 p = sf.p, n = sf.n, ng = sf.ng;
            float met = m0.w;
            if (met > 0.0f) {
                float3 rd = d - 2.0f * dot3(d, n) * n;
                float ra;
                float3 cr = radiance(&s, p + ng * offset_at(p), rd, s.miss, 1.0f, &ra);
                c += met * sf.albedo * cr;
            }
            float op = m2.x;
            if (op < 1.0f) {
                float ab;
                float3 cb = radiance(&s, p - ng * offset_at(p), d, background.xyz, bg_alpha, &ab);
                a = op + (1.0f - op) * ab;
                c = op * c + (1.0f - op) * cb;
            }
        }
        rgb = c;
        alpha = a;
        depth = hit.t * cosv;
    }
    int k = y * w + x;
    out_rgba[k] = (uchar4)(encode_srgb8(rgb.x, srgb8), encode_srgb8(rgb.y, srgb8), encode_srgb8(rgb.z, srgb8),
                           (uchar)FLOOR(min1(max1(alpha, 0.0f), 1.0f) * 255.0f + 0.5f));
    if (depth_half)  // a session tile's wire form: IEEE half, round to nearest even (+inf stays +inf)
        vstore_half_rte(depth, k, (__global half *)out_depth);
    else
        out_depth[k] = depth;
}
