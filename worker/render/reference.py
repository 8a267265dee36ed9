"""The numpy reference renderer (float64): the definition of the image that raytrace.cl must reproduce.

It works straight from the Scene dataclasses (not the device's packed float32 arrays), tests every triangle
(no BVH), and vectorises over rays, so it is slow but independent. The shading model is specified in
docs/scene-format.md ("Rendering model"); keep the two in step with raytrace.cl.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.render.camera import Pose, Tile, camera_frame, primary_directions
from worker.render.errors import SceneError
from worker.render.scene import Box, DirectionalLight, Mesh, Plane, PointLight, Scene, Sphere

SPEC_MIN = 1e-3  # specular exponent = 2 / max(roughness^4, SPEC_MIN): 2 (rough) .. 2000 (polished)
OFFSET = 1e-4  # secondary-ray origins move OFFSET * (1 + max|p|) off the surface (scale-aware, no acne)
DF_F0 = 0.04  # reflectance at normal incidence of non-metals
CHUNK_ELEMS = 1 << 20  # rays x triangles tested per numpy step


@dataclass(frozen=True)
class Prepared:
    """A scene in the reference's own float64 working form (world-space triangles, material table)."""

    scene: Scene
    prims: tuple  # (kind, params...) per analytic object, scene order
    prim_mat: np.ndarray  # (P,) material id
    v0: np.ndarray  # (M, 3) triangles in world space
    e1: np.ndarray
    e2: np.ndarray
    tri_mat: np.ndarray  # (M,)
    tri_normals: np.ndarray  # (M, 3, 3) unit world normals at the corners (smooth triangles only)
    tri_smooth: np.ndarray  # (M,) bool
    tri_uvs: np.ndarray  # (M, 3, 2) texture coordinates at the corners (0 without)
    mesh_ranges: tuple  # (start, end, bbox_lo, bbox_hi) per mesh
    albedo: np.ndarray  # (K, 3)
    emission: np.ndarray
    metallic: np.ndarray  # (K,)
    roughness: np.ndarray
    opacity: np.ndarray
    catcher: np.ndarray  # (K,) bool: shadow catchers
    textures: tuple  # per material: (h, w, 3) linear float64 texels, or None


def prepare(scene: Scene) -> Prepared:
    """Transform meshes to world space and tabulate materials; reuse the result across poses."""
    mats: list = []
    prims: list = []
    prim_mat: list[int] = []
    v0s, e1s, e2s, tmats, ranges, tnorms, tsmooth, tuvs = [], [], [], [], [], [], [], []
    start = 0
    for o in scene.objects:
        mid = len(mats)
        mats.append(o.material)
        if isinstance(o, Sphere):
            prims.append(("sphere", np.asarray(o.center, np.float64), float(o.radius)))
            prim_mat.append(mid)
        elif isinstance(o, Box):
            half = np.asarray(o.size, np.float64) / 2
            prims.append(("box", np.asarray(o.center, np.float64), half, o.axes()))
            prim_mat.append(mid)
        elif isinstance(o, Plane):
            prims.append(("plane", np.asarray(o.point, np.float64), o.unit_normal()))
            prim_mat.append(mid)
        elif isinstance(o, Mesh):
            w = o.world_vertices()
            t = w[o.indices]
            v0s.append(t[:, 0])
            e1s.append(t[:, 1] - t[:, 0])
            e2s.append(t[:, 2] - t[:, 0])
            tmats.append(np.full(t.shape[0], mid))
            wn = o.world_normals()
            tnorms.append(wn[o.indices] if wn is not None else np.zeros(t.shape))
            tsmooth.append(np.full(t.shape[0], wn is not None))
            tuvs.append(o.uvs[o.indices] if o.uvs is not None else np.zeros((t.shape[0], 3, 2)))
            end = start + t.shape[0]
            if end > start:
                ranges.append((start, end, t.min(axis=(0, 1)), t.max(axis=(0, 1))))
            start = end

    def cat(parts: list, shape: tuple) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(shape)

    return Prepared(
        scene=scene,
        prims=tuple(prims),
        prim_mat=np.asarray(prim_mat, np.int64),
        v0=cat(v0s, (0, 3)),
        e1=cat(e1s, (0, 3)),
        e2=cat(e2s, (0, 3)),
        tri_mat=cat(tmats, (0,)).astype(np.int64),
        tri_normals=cat(tnorms, (0, 3, 3)),
        tri_smooth=cat(tsmooth, (0,)).astype(bool),
        tri_uvs=cat(tuvs, (0, 3, 2)),
        mesh_ranges=tuple(ranges),
        albedo=np.array([m.albedo for m in mats], np.float64).reshape(-1, 3),
        emission=np.array([m.emission for m in mats], np.float64).reshape(-1, 3),
        metallic=np.array([m.metallic for m in mats], np.float64),
        roughness=np.array([m.roughness for m in mats], np.float64),
        opacity=np.array([m.opacity for m in mats], np.float64),
        catcher=np.array([m.shadow_catcher for m in mats], bool),
        textures=tuple(None if m.texture is None else srgb_to_linear(m.texture.pixels[..., :3]) for m in mats),
    )


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """8-bit sRGB codes -> linear [0, 1] (float64), the exact transfer function."""
    v = np.asarray(c, np.float64) / 255.0
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def sample_texture(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear sample (N, 3) of linear texels (h, w, 3) at uv (N, 2), wrapping around; v = 0 is the bottom
    row of the image (OBJ convention), texel centres at half-integers."""
    h, w = tex.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    ix0, iy0 = np.mod(x0, w).astype(np.int64), np.mod(y0, h).astype(np.int64)
    ix1, iy1 = (ix0 + 1) % w, (iy0 + 1) % h
    top = tex[iy0, ix0] * (1 - fx) + tex[iy0, ix1] * fx
    bottom = tex[iy1, ix0] * (1 - fx) + tex[iy1, ix1] * fx
    return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------------------------------------------------------
# Intersection: every routine returns t (inf where missed) for rays (o, d) with tmin < t < tmax.


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def _sphere(o, d, tmin, tmax, c, r):
    oc = o - c
    b = _dot(oc, d)
    f = oc - b[:, None] * d
    disc = r * r - _dot(f, f)
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0.0))
    c2 = _dot(oc, oc) - r * r
    q = -b - np.copysign(sq, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = np.where(q != 0, c2 / q, 0.0)
    tn, tf = np.minimum(t0, q), np.maximum(t0, q)
    t = np.where(tn > tmin, tn, tf)
    return np.where(ok & (t > tmin) & (t < tmax), t, np.inf)


def _box(o, d, tmin, tmax, c, half, axes):
    ol = (o - c) @ axes.T
    dl = d @ axes.T
    dl = np.where(dl == 0, 1e-30, dl)
    inv = 1.0 / dl
    t1 = (-half - ol) * inv
    t2 = (half - ol) * inv
    tn = np.minimum(t1, t2).max(axis=1)
    tf = np.maximum(t1, t2).min(axis=1)
    t = np.where(tn > tmin, tn, tf)
    return np.where((tn <= tf) & (t > tmin) & (t < tmax), t, np.inf)


def _plane(o, d, tmin, tmax, p0, n):
    den = d @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ((p0 - o) @ n) / den
    return np.where((den != 0) & (t > tmin) & (t < tmax), t, np.inf)


def _overlaps(o, d, tmin, tmax, lo, hi) -> np.ndarray:
    """Whether each ray segment (tmin, tmax) passes through the box [lo, hi] (padded): mesh culling only."""
    pad = 1e-6 * (1.0 + np.abs(np.concatenate([lo, hi])).max())
    dd = np.where(d == 0, 1e-30, d)
    t1 = (lo - pad - o) / dd
    t2 = (hi + pad - o) / dd
    tn = np.minimum(t1, t2).max(axis=1)
    tf = np.maximum(t1, t2).min(axis=1)
    return (tn <= tf) & (tf >= tmin) & (tn <= tmax)


def _triangles(o, d, tmin, tmax, v0, e1, e2):
    """Möller-Trumbore for N rays x C triangles at once: t (N, C)."""
    d3, o3 = d[:, None, :], o[:, None, :]
    pvec = np.cross(d3, e2[None])
    det = np.einsum("ck,nck->nc", e1, pvec)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / det
        tvec = o3 - v0[None]
        u = np.einsum("nck,nck->nc", tvec, pvec) * inv
        qvec = np.cross(tvec, e1[None])
        v = np.einsum("nk,nck->nc", d, qvec) * inv
        t = np.einsum("ck,nck->nc", e2, qvec) * inv
        ok = (
            (det != 0)
            & (u >= 0)
            & (u <= 1)
            & (v >= 0)
            & (u + v <= 1)
            & (t > tmin[:, None])
            & (t < tmax[:, None])
        )
    return np.where(ok, t, np.inf)


def _closest(ps: Prepared, o, d, tmin, tmax):
    """Nearest hit per ray: (t, kind 0 none / 1 analytic / 2 triangle, index). Ties go to the earlier
    object, analytic objects before triangles, as in raytrace.cl."""
    n = o.shape[0]
    best = tmax.astype(np.float64).copy()
    kind = np.zeros(n, np.int8)
    idx = np.full(n, -1, np.int64)
    for i, prim in enumerate(ps.prims):
        if prim[0] == "sphere":
            t = _sphere(o, d, tmin, best, prim[1], prim[2])
        elif prim[0] == "box":
            t = _box(o, d, tmin, best, prim[1], prim[2], prim[3])
        else:
            t = _plane(o, d, tmin, best, prim[1], prim[2])
        upd = t < best
        best[upd], kind[upd], idx[upd] = t[upd], 1, i
    for start, end, lo, hi in ps.mesh_ranges:
        rays = np.flatnonzero(_overlaps(o, d, tmin, best, lo, hi))
        if rays.size == 0:
            continue
        step = max(1, CHUNK_ELEMS // rays.size)
        for c0 in range(start, end, step):
            c1 = min(end, c0 + step)
            t = _triangles(o[rays], d[rays], tmin[rays], best[rays], ps.v0[c0:c1], ps.e1[c0:c1], ps.e2[c0:c1])
            j = np.argmin(t, axis=1)
            tj = t[np.arange(rays.size), j]
            upd = tj < best[rays]
            r = rays[upd]
            best[r], kind[r], idx[r] = tj[upd], 2, c0 + j[upd]
    return np.where(kind > 0, best, np.inf), kind, idx


def _occlusion(ps: Prepared, o, d, tmax) -> np.ndarray:
    """Largest opacity among everything a shadow ray (0, tmax) hits, 0 where it hits nothing."""
    n = o.shape[0]
    tmin = np.zeros(n)
    occ = np.zeros(n)
    for i, prim in enumerate(ps.prims):
        if prim[0] == "sphere":
            t = _sphere(o, d, tmin, tmax, prim[1], prim[2])
        elif prim[0] == "box":
            t = _box(o, d, tmin, tmax, prim[1], prim[2], prim[3])
        else:
            t = _plane(o, d, tmin, tmax, prim[1], prim[2])
        occ = np.where(t < np.inf, np.maximum(occ, ps.opacity[ps.prim_mat[i]]), occ)
    for start, end, lo, hi in ps.mesh_ranges:
        rays = np.flatnonzero(_overlaps(o, d, tmin, tmax, lo, hi))
        if rays.size == 0:
            continue
        step = max(1, CHUNK_ELEMS // rays.size)
        for c0 in range(start, end, step):
            c1 = min(end, c0 + step)
            t = _triangles(o[rays], d[rays], tmin[rays], tmax[rays], ps.v0[c0:c1], ps.e1[c0:c1], ps.e2[c0:c1])
            op = np.where(t < np.inf, ps.opacity[ps.tri_mat[c0:c1]][None, :], 0.0).max(axis=1)
            occ[rays] = np.maximum(occ[rays], op)
    return occ


@dataclass
class Surface:
    """What rays hit: point, geometric normal `ng` and shading normal `n` (both facing the ray), material id
    and albedo (the material's, times its texture at the hit)."""

    p: np.ndarray
    ng: np.ndarray
    n: np.ndarray
    mat: np.ndarray
    albedo: np.ndarray


def _barycentric(ps: Prepared, o, d, k):
    """(u, v) of the hits of rays (o, d) on triangles k (Möller-Trumbore again for the winners)."""
    e1, e2 = ps.e1[k], ps.e2[k]
    pvec = np.cross(d, e2)
    inv = 1.0 / _dot(e1, pvec)
    tvec = o - ps.v0[k]
    u = _dot(tvec, pvec) * inv
    v = _dot(d, np.cross(tvec, e1)) * inv
    return u, v


def _surface(ps: Prepared, o, d, t, kind, idx) -> Surface:
    """The Surface of rays that hit (kind > 0)."""
    p = o + t[:, None] * d
    n = np.zeros_like(p)
    mat = np.zeros(t.shape[0], np.int64)
    tri = kind == 2
    smooth_rows: np.ndarray | None = None  # rows with an interpolated normal, and that normal
    smooth_n: np.ndarray | None = None
    uv = None
    if tri.any():
        k = idx[tri]
        nn = np.cross(ps.e1[k], ps.e2[k])
        n[tri] = nn / np.linalg.norm(nn, axis=1, keepdims=True)
        mat[tri] = ps.tri_mat[k]
        u, v = _barycentric(ps, o[tri], d[tri], k)
        w = np.stack([1 - u - v, u, v], axis=1)[:, :, None]
        uv = (w * ps.tri_uvs[k]).sum(axis=1)
        smooth = ps.tri_smooth[k]
        if smooth.any():
            sn = (w * ps.tri_normals[k]).sum(axis=1)
            length = np.linalg.norm(sn, axis=1)
            ok = smooth & (length > 1e-12)
            smooth_rows = np.flatnonzero(tri)[ok]
            smooth_n = sn[ok] / length[ok][:, None]
    for i, prim in enumerate(ps.prims):
        sel = (kind == 1) & (idx == i)
        if not sel.any():
            continue
        mat[sel] = ps.prim_mat[i]
        if prim[0] == "sphere":
            n[sel] = (p[sel] - prim[1]) / prim[2]
        elif prim[0] == "box":
            q = (p[sel] - prim[1]) @ prim[3].T / prim[2]
            a = np.argmax(np.abs(q), axis=1)
            s = np.sign(q[np.arange(a.size), a])
            n[sel] = s[:, None] * prim[3][a]
        else:
            n[sel] = prim[2]
    flip = _dot(n, d) > 0
    n[flip] = -n[flip]
    shade_n = n
    if smooth_rows is not None and smooth_n is not None:
        shade_n = n.copy()
        shade_n[smooth_rows] = np.where(flip[smooth_rows, None], -smooth_n, smooth_n)
    albedo = ps.albedo[mat].copy()
    if uv is not None:
        tri_rows = np.flatnonzero(tri)
        tmat = mat[tri_rows]
        for m in np.unique(tmat):
            tex = ps.textures[m]
            if tex is not None:
                sel = tmat == m
                albedo[tri_rows[sel]] *= sample_texture(tex, uv[sel])
    return Surface(p, n, shade_n, mat, albedo)


def _offset(p: np.ndarray) -> np.ndarray:
    return OFFSET * (1.0 + np.abs(p).max(axis=1))


def schlick_pow(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Schlick's rational stand-in for x**e on [0, 1]: the highlight shape of the model (cheap on devices)."""
    return x / (e - e * x + x)


def _lights(ps: Prepared, os_: np.ndarray):
    """Per light: (direction to it (N, 3), radiance arriving (N, 3), distance (N,)) from points os_."""
    for light in ps.scene.lights:
        rad = np.asarray(light.color) * light.intensity
        if isinstance(light, PointLight):
            lv = np.asarray(light.position) - os_
            dist = np.linalg.norm(lv, axis=1)
            dist = np.where(dist > 0, dist, 1e-30)
            yield lv / dist[:, None], rad[None, :] / (dist * dist)[:, None], dist
        else:
            assert isinstance(light, DirectionalLight)
            yield (np.broadcast_to(-light.unit_direction(), os_.shape), np.broadcast_to(rad, os_.shape),
                   np.full(os_.shape[0], np.inf))


def _shadow(ps: Prepared, s: Surface) -> np.ndarray:
    """How much of the light a shadow catcher would get is blocked: 1 - sum(lit) / sum(unblocked) over the
    lights, each weighted by the mean of its radiance's channels times n.l (0 where no light reaches it at
    all), times the catcher's opacity (the shadows' strength)."""
    os_ = s.p + s.ng * _offset(s.p)[:, None]
    full = np.zeros(s.p.shape[0])
    lit = np.zeros(s.p.shape[0])
    for lv, radiance, dist in _lights(ps, os_):
        wgt = radiance.mean(axis=1) * np.maximum(_dot(s.n, lv), 0.0)
        on = np.flatnonzero(wgt > 0)
        if on.size == 0:
            continue
        full[on] += wgt[on]
        lit[on] += wgt[on] * (1.0 - _occlusion(ps, os_[on], lv[on], dist[on]))
    shadow = np.where(full > 0, 1.0 - lit / np.where(full > 0, full, 1.0), 0.0)
    return np.clip(shadow, 0.0, 1.0) * ps.opacity[s.mat]


def _shade_direct(ps: Prepared, s: Surface, d):
    """Emission + ambient + each light (Lambert diffuse + Blinn-Phong specular), dimmed by the largest opacity
    among the occluders between the surface and the light."""
    sc = ps.scene
    p, n, mat, alb = s.p, s.n, s.mat, s.albedo
    met, rough = ps.metallic[mat], ps.roughness[mat]
    kd = alb * (1 - met)[:, None]
    f0 = DF_F0 * (1 - met)[:, None] + alb * met[:, None]
    shin = 2.0 / np.maximum(rough**4, SPEC_MIN)
    c = ps.emission[mat] + np.asarray(sc.ambient) * alb
    os_ = p + s.ng * _offset(p)[:, None]
    for lv, radiance, dist in _lights(ps, os_):
        ndotl = _dot(n, lv)
        lit = np.flatnonzero(ndotl > 0)
        if lit.size == 0:
            continue
        trans = 1.0 - _occlusion(ps, os_[lit], lv[lit], dist[lit])
        h = lv[lit] - d[lit]
        h = h / np.linalg.norm(h, axis=1, keepdims=True)
        ndoth = np.maximum(_dot(n[lit], h), 0.0)
        spec = f0[lit] * schlick_pow(ndoth, shin[lit])[:, None]
        c[lit] += radiance[lit] * (trans * ndotl[lit])[:, None] * (kd[lit] + spec)
    return c


def _shade(ps: Prepared, s: Surface, d, behind_rgb, behind_alpha):
    """Premultiplied (rgb, alpha) of surfaces seen along d, with direct light only: a shadow catcher shows
    `behind` (premultiplied rgb, alpha) darkened by its shadow S: rgb * (1 - S), alpha + (1 - alpha) * S;
    anything else is opaque."""
    rgb = _shade_direct(ps, s, d)
    alpha = np.ones(rgb.shape[0])
    c = np.flatnonzero(ps.catcher[s.mat])
    if c.size:
        sub = Surface(s.p[c], s.ng[c], s.n[c], s.mat[c], s.albedo[c])
        shadow = _shadow(ps, sub)
        rgb[c] = behind_rgb[c] * (1.0 - shadow)[:, None]
        alpha[c] = behind_alpha[c] + (1.0 - behind_alpha[c]) * shadow
    return rgb, alpha


def _radiance(ps: Prepared, o, d, miss_rgb, miss_alpha):
    """Direct shading of the nearest hit along secondary rays, or the given miss colour/alpha (premultiplied:
    a miss has rgb miss_rgb * miss_alpha)."""
    t, kind, idx = _closest(ps, o, d, np.zeros(o.shape[0]), np.full(o.shape[0], np.inf))
    rgb = np.broadcast_to(np.asarray(miss_rgb, np.float64) * float(miss_alpha), o.shape).copy()
    alpha = np.full(o.shape[0], float(miss_alpha))
    hit = kind > 0
    if hit.any():
        s = _surface(ps, o[hit], d[hit], t[hit], kind[hit], idx[hit])
        rgb[hit], alpha[hit] = _shade(ps, s, d[hit], rgb[hit], alpha[hit])
    return rgb, alpha


def encode_srgb8(v: np.ndarray) -> np.ndarray:
    """Linear [0, 1] (clamped) -> sRGB-encoded uint8, rounding half up."""
    v = np.clip(v, 0.0, 1.0)
    s = np.where(v <= 0.0031308, 12.92 * v, 1.055 * np.power(v, 1 / 2.4) - 0.055)
    return np.floor(s * 255 + 0.5).astype(np.uint8)


def _render_rays(ps: Prepared, pose: Pose, px: np.ndarray, py: np.ndarray):
    sc = ps.scene
    cam = sc.camera
    frame = camera_frame(pose, cam.fov_y, cam.width, cam.height)
    d = primary_directions(frame, px, py)
    n = d.shape[0]
    o = np.broadcast_to(frame.origin, d.shape).copy()
    cos = d @ frame.forward
    t, kind, idx = _closest(ps, o, d, cam.near / cos, cam.far / cos)
    transparent = sc.background is None
    bg = np.zeros(3) if transparent else np.asarray(sc.background, np.float64)
    rgb = np.broadcast_to(bg, (n, 3)).copy()
    alpha = np.full(n, 0.0 if transparent else 1.0)
    depth = np.full(n, np.inf)
    hit = np.flatnonzero(kind > 0)
    if hit.size:
        dh = d[hit]
        s = _surface(ps, o[hit], dh, t[hit], kind[hit], idx[hit])
        p, nrm, ng, mat = s.p, s.n, s.ng, s.mat
        c, a = _shade(ps, s, dh, rgb[hit], alpha[hit])
        solid = ~ps.catcher[mat]  # a shadow catcher neither reflects nor lets anything through
        met = ps.metallic[mat]
        refl = np.flatnonzero((met > 0) & solid)
        if refl.size:
            rd = dh[refl] - 2 * _dot(dh[refl], nrm[refl])[:, None] * nrm[refl]
            ro = p[refl] + ng[refl] * _offset(p[refl])[:, None]
            cr, _ = _radiance(ps, ro, rd, sc.miss_color(), 1.0)
            c[refl] += (met[refl] * 1.0)[:, None] * s.albedo[refl] * cr
        op = ps.opacity[mat]
        thru = np.flatnonzero((op < 1) & solid)
        if thru.size:
            to = p[thru] - ng[thru] * _offset(p[thru])[:, None]
            cb, ab = _radiance(ps, to, dh[thru], bg, 0.0 if transparent else 1.0)
            o_ = op[thru]
            a[thru] = o_ + (1 - o_) * ab
            c[thru] = o_[:, None] * c[thru] + (1 - o_)[:, None] * cb  # premultiplied: cb carries its alpha
        rgb[hit], alpha[hit] = c, a
        depth[hit] = t[hit] * cos[hit]
    rgba = np.empty((n, 4), np.uint8)
    rgba[:, :3] = encode_srgb8(rgb)
    rgba[:, 3] = np.floor(np.clip(alpha, 0, 1) * 255 + 0.5).astype(np.uint8)
    return rgba, depth.astype(np.float32)


def _prepared(scene: Scene | Prepared) -> Prepared:
    return scene if isinstance(scene, Prepared) else prepare(scene)


def render(scene: Scene | Prepared, pose: Pose | None = None, tile: Tile | None = None):
    """Render a frame (or one tile of it): (rgba (h, w, 4) uint8, depth (h, w) float32, +inf where no hit)."""
    ps = _prepared(scene)
    cam = ps.scene.camera
    tile = tile or Tile.full(cam.width, cam.height)
    tile.check(cam.width, cam.height)
    ys, xs = np.mgrid[tile.y0 : tile.y0 + tile.h, tile.x0 : tile.x0 + tile.w]
    rgba, depth = _render_rays(ps, pose or cam.pose, xs.ravel(), ys.ravel())
    return rgba.reshape(tile.h, tile.w, 4), depth.reshape(tile.h, tile.w)


def render_pixels(scene: Scene | Prepared, pose: Pose | None, pixels) -> tuple[np.ndarray, np.ndarray]:
    """Render only full-frame pixels [(x, y), ...]: (rgba (N, 4) uint8, depth (N,) float32). This is the
    scheduler's cheap spot-check of a remote tile."""
    ps = _prepared(scene)
    cam = ps.scene.camera
    xy = np.asarray(pixels, dtype=np.int64).reshape(-1, 2)
    bad = np.flatnonzero((xy[:, 0] < 0) | (xy[:, 0] >= cam.width) | (xy[:, 1] < 0) | (xy[:, 1] >= cam.height))
    if bad.size:
        i = int(bad[0])
        raise SceneError(
            f"pixels[{i}]: ({int(xy[i, 0])}, {int(xy[i, 1])}) lies outside the {cam.width}x{cam.height} frame"
        )
    return _render_rays(ps, pose or cam.pose, xy[:, 0], xy[:, 1])
