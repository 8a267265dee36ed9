"""Packing a Scene into the flat float32/int32 arrays raytrace.cl reads (no OpenCL here, so it is testable
and reusable by any device backend). Layouts are described next to each field and mirrored in raytrace.cl."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.render import bvh as bvh_mod
from worker.render.scene import Box, DirectionalLight, Mesh, Plane, PointLight, Scene, Sphere

PRIM_SPHERE, PRIM_BOX, PRIM_PLANE = 0, 1, 2
LIGHT_POINT, LIGHT_DIRECTIONAL = 0, 1
SPEC_MIN = 1e-3  # keep equal to reference.SPEC_MIN


@dataclass(frozen=True)
class PackedScene:
    # (P, 4, 4) float32: sphere [c, r]; box [c, 0], [axis_x, hx], [axis_y, hy], [axis_z, hz];
    # plane [point, 0], [unit normal, 0]
    prim: np.ndarray
    prim_info: np.ndarray  # (P, 4) int32: (type, material, 0, 0)
    v0: np.ndarray  # (M, 4) float32, triangles in BVH leaf order
    e1: np.ndarray  # (M, 4) float32: v1 - v0 (computed in float64)
    e2: np.ndarray  # (M, 4) float32: v2 - v0
    tri_mat: np.ndarray  # (M,) int32
    # (M, 3, 4) float32: unit world normal at each corner; [i, 0, 3] (w of the first) = 1 for smooth triangles
    tri_n: np.ndarray
    tri_uv: np.ndarray  # (M, 2, 4) float32: (u0, v0, u1, v1), (u2, v2, 0, 0)
    bvh: bvh_mod.FlatBVH
    # (K, 4, 4) float32: [albedo, metallic], [emission, roughness], [opacity, shininess, shadow catcher 0/1, 0],
    # [first texel, texture width, texture height, 0] (width 0: no texture)
    material: np.ndarray
    texels: np.ndarray  # (T, 4) uint8: every texture's sRGB texels, row-major from the top row
    # (L, 2, 4) float32: [position or direction *towards* the light, type], [colour * intensity, 0]
    light: np.ndarray
    ambient: np.ndarray  # (4,) float32
    miss: np.ndarray  # (4,) float32: what reflection rays see when they hit nothing
    background: np.ndarray  # (4,) float32: rgb, w = 1 for a colour, 0 for transparent

    @property
    def triangle_count(self) -> int:
        return int(self.tri_mat.shape[0])


def _f4(v, w: float = 0.0) -> list[float]:
    return [float(v[0]), float(v[1]), float(v[2]), float(w)]


def pack(scene: Scene) -> PackedScene:
    """Flatten a validated scene; builds the BVH over all meshes' world-space triangles."""
    prims: list[list[list[float]]] = []
    infos: list[list[int]] = []
    mats: list[list[list[float]]] = []
    tris: list[np.ndarray] = []
    tri_mats: list[np.ndarray] = []
    tri_ns: list[np.ndarray] = []
    tri_uvs: list[np.ndarray] = []
    texels: list[np.ndarray] = []
    tex_at: dict[int, float] = {}  # id(texture) -> first texel
    n_texels = 0
    for o in scene.objects:
        mid = len(mats)
        m = o.material
        shin = 2.0 / max(m.roughness**4, SPEC_MIN)
        tex_row = [0.0, 0.0, 0.0, 0.0]
        if m.texture is not None:
            if id(m.texture) not in tex_at:
                tex_at[id(m.texture)] = float(n_texels)
                texels.append(m.texture.pixels.reshape(-1, 4))
                n_texels += m.texture.width * m.texture.height
            tex_row = [tex_at[id(m.texture)], float(m.texture.width), float(m.texture.height), 0.0]
        mats.append([_f4(m.albedo, m.metallic), _f4(m.emission, m.roughness),
                     [m.opacity, shin, 1.0 if m.shadow_catcher else 0.0, 0.0], tex_row])
        if isinstance(o, Sphere):
            prims.append([_f4(o.center, o.radius), [0.0] * 4, [0.0] * 4, [0.0] * 4])
            infos.append([PRIM_SPHERE, mid, 0, 0])
        elif isinstance(o, Box):
            ax = o.axes()
            h = np.asarray(o.size, np.float64) / 2
            prims.append([_f4(o.center), _f4(ax[0], h[0]), _f4(ax[1], h[1]), _f4(ax[2], h[2])])
            infos.append([PRIM_BOX, mid, 0, 0])
        elif isinstance(o, Plane):
            prims.append([_f4(o.point), _f4(o.unit_normal()), [0.0] * 4, [0.0] * 4])
            infos.append([PRIM_PLANE, mid, 0, 0])
        elif isinstance(o, Mesh):
            w = o.world_vertices()
            tris.append(w[o.indices])
            tri_mats.append(np.full(o.triangle_count, mid, np.int32))
            tn = np.zeros((o.triangle_count, 3, 4))
            wn = o.world_normals()
            if wn is not None:
                tn[:, :, :3] = wn[o.indices]
                tn[:, 0, 3] = 1.0
            tri_ns.append(tn)
            tuv = np.zeros((o.triangle_count, 2, 4))
            if o.uvs is not None:
                c = o.uvs[o.indices]  # (m, 3, 2)
                tuv[:, 0, :] = c[:, :2].reshape(-1, 4)
                tuv[:, 1, :2] = c[:, 2]
            tri_uvs.append(tuv)
    all_tris = np.concatenate(tris) if tris else np.zeros((0, 3, 3))
    all_mats = np.concatenate(tri_mats) if tri_mats else np.zeros(0, np.int32)
    tree = bvh_mod.build(all_tris)
    t = all_tris[tree.order]

    def col4(a: np.ndarray) -> np.ndarray:
        out = np.zeros((a.shape[0], 4), np.float32)
        out[:, :3] = a
        return out

    lights = []
    for light in scene.lights:
        rad = np.asarray(light.color, np.float64) * light.intensity
        if isinstance(light, PointLight):
            lights.append([_f4(light.position, LIGHT_POINT), _f4(rad)])
        else:
            assert isinstance(light, DirectionalLight)
            lights.append([_f4(-light.unit_direction(), LIGHT_DIRECTIONAL), _f4(rad)])
    bg = scene.background
    return PackedScene(
        prim=np.asarray(prims, np.float32).reshape(-1, 4, 4),
        prim_info=np.asarray(infos, np.int32).reshape(-1, 4),
        v0=col4(t[:, 0]),
        e1=col4(t[:, 1] - t[:, 0]),
        e2=col4(t[:, 2] - t[:, 0]),
        tri_mat=all_mats[tree.order].astype(np.int32),
        tri_n=(np.concatenate(tri_ns) if tri_ns else np.zeros((0, 3, 4)))[tree.order].astype(np.float32),
        tri_uv=(np.concatenate(tri_uvs) if tri_uvs else np.zeros((0, 2, 4)))[tree.order].astype(np.float32),
        bvh=tree,
        material=np.asarray(mats, np.float32).reshape(-1, 4, 4),
        texels=np.concatenate(texels) if texels else np.zeros((0, 4), np.uint8),
        light=np.asarray(lights, np.float32).reshape(-1, 2, 4),
        ambient=np.asarray(_f4(scene.ambient), np.float32),
        miss=np.asarray(_f4(scene.miss_color()), np.float32),
        background=np.asarray(_f4((0, 0, 0), 0.0) if bg is None else _f4(bg, 1.0), np.float32),
    )
