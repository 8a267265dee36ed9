"""Smooth normals, textures, the shadow catcher and premultiplied alpha (issue 22): each checked for what it
means on its own, and the OpenCL kernel against the numpy reference on scenes that use them."""

import dataclasses
import json
import math

import numpy as np
import pytest
from PIL import Image

from tests.opencl import requires_opencl
from worker.render import compositing, reference
from worker.render.camera import look_at
from worker.render.errors import SceneError
from worker.render.obj import parse_obj
from worker.render.samples import EXAMPLES, example
from worker.render.scene import from_dict, load_scene_file, vertex_normals

PIXEL_TOL = 2
MIN_FRACTION = 0.999


def agree(a, b) -> float:
    (ra, _da), (rb, _db) = a, b
    close = np.abs(ra.astype(int) - rb.astype(int)).max(axis=-1) <= PIXEL_TOL
    return float(close.mean())


def _cam(w=64, h=48, eye=(0.0, 0.8, 2.2), target=(0.0, 0.25, 0.0)):
    p = look_at(eye, target)
    return {"position": list(p.position), "orientation": list(p.orientation), "fov_y": 45, "width": w,
            "height": h, "near": 0.05, "far": 20}


def _sphere_mesh(n_lat=10, n_lon=16, r=0.3):
    """A UV sphere as a triangle mesh, with its exact (analytic) vertex normals and uvs."""
    verts, uvs, idx = [], [], []
    for i in range(n_lat + 1):
        th = math.pi * i / n_lat
        for j in range(n_lon + 1):
            ph = 2 * math.pi * j / n_lon
            verts.append([r * math.sin(th) * math.cos(ph), r * math.cos(th), r * math.sin(th) * math.sin(ph)])
            uvs.append([j / n_lon, 1 - i / n_lat])
    for i in range(n_lat):
        for j in range(n_lon):
            a, b = i * (n_lon + 1) + j, (i + 1) * (n_lon + 1) + j
            idx += [[a, a + 1, b], [a + 1, b + 1, b]]
    v = np.array(verts)
    return v, np.array(idx), v / r, np.array(uvs)


def _scene(objects, background="transparent", w=64, h=48):
    return from_dict({"camera": _cam(w, h), "background": background, "objects": objects,
                      "lights": [{"type": "point", "position": [1, 3, 2], "intensity": 9},
                                 {"type": "directional", "direction": [-0.3, -1, -0.2], "intensity": 0.6}]})


def test_obj_vt_vn_become_per_vertex_uvs_and_normals():
    m = parse_obj("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvn 0 0 1\nvn 0 0 -1\n"
                  "f 1/1/1 2/2/1 3/3/1\nf 1/1/2 3/3/2 4/4/2\n")
    # vertex 1 and 3 appear with two different normals: each distinct (v, vt, vn) is a vertex of its own
    assert m.vertices.shape == (6, 3) and m.normals.shape == (6, 3) and m.uvs.shape == (6, 2)
    for tri, want_n in zip(m.indices, ([0, 0, 1], [0, 0, -1]), strict=True):
        assert (m.normals[tri] == want_n).all()
        np.testing.assert_array_equal(m.uvs[tri], m.vertices[tri][:, :2])  # here uv == xy
    with pytest.raises(SceneError, match="m.obj:3: normal index 2 out of range"):
        parse_obj("v 0 0 0\nvn 0 0 1\nf 1//1 1//1 1//2\n", "m.obj")
    with pytest.raises(SceneError, match="normal 1 is the zero vector"):
        parse_obj("v 0 0 0\nv 1 0 0\nv 0 1 0\nvn 0 0 0\nf 1//1 2//1 3//1\n", "m.obj")


def test_computed_normals_are_area_weighted_and_unit():
    v, idx, exact, _ = _sphere_mesh(24, 48)
    n = vertex_normals(v, idx)
    assert np.allclose(np.linalg.norm(n, axis=1), 1)
    # away from the poles (where the seam duplicates vertices) the computed normals approach the sphere's
    body = np.abs(v[:, 1]) < 0.25
    assert np.degrees(np.arccos(np.clip((n[body] * exact[body]).sum(1), -1, 1))).max() < 5


def test_load_scene_file_gives_obj_meshes_smooth_normals_and_reads_textures(tmp_path):
    (tmp_path / "quad.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
                                       "f 1/1 2/2 3/3 4/4\n")
    Image.fromarray(np.full((4, 8, 3), 7, np.uint8)).save(tmp_path / "t.png")
    d = {"camera": _cam(), "objects": [
        {"type": "mesh", "obj": "quad.obj", "material": {"texture": "t.png"}},
        {"type": "mesh", "obj": "quad.obj", "smooth": False, "material": "tex"}],
        "materials": {"tex": {"texture": "t.png"}}}
    (tmp_path / "s.json").write_text(json.dumps(d))
    s = load_scene_file(tmp_path / "s.json")
    smooth, flat = s.objects
    assert smooth.normals is not None and np.allclose(smooth.normals, [0, 0, 1]) and flat.normals is None
    assert smooth.uvs is not None and smooth.material.texture.width == 8 and smooth.material.texture.height == 4
    assert (smooth.material.texture.pixels[..., :3] == 7).all()
    d["objects"][0]["material"]["texture"] = "missing.png"
    (tmp_path / "s.json").write_text(json.dumps(d))
    with pytest.raises(SceneError, match="missing.png: cannot read texture image"):
        load_scene_file(tmp_path / "s.json")


@pytest.mark.parametrize("obj,match", [
    ({"type": "sphere", "center": [0, 0, 0], "radius": 1,
      "material": {"texture": {"width": 1, "height": 1, "pixels": b"\0\0\0\0"}}}, "only meshes with uvs"),
    ({"type": "mesh", "vertices": [[0, 0, 0], [1, 0, 0], [0, 1, 0]], "indices": [[0, 1, 2]],
      "material": {"texture": {"width": 1, "height": 1, "pixels": b"\0\0\0\0"}}}, "needs texture coordinates"),
    ({"type": "mesh", "vertices": [[0, 0, 0], [1, 0, 0], [0, 1, 0]], "indices": [[0, 1, 2]],
      "uvs": [[0, 0], [1, 0]]}, "2 uvs for 3 vertices"),
    ({"type": "mesh", "vertices": [[0, 0, 0], [1, 0, 0], [0, 1, 0]], "indices": [[0, 1, 2]],
      "normals": [[0, 0, 1], [0, 0, 0], [0, 0, 1]]}, r"normals\[1\]: a normal must not be the zero vector"),
    ({"type": "mesh", "vertices": [[0, 0, 0], [1, 0, 0], [0, 1, 0]], "indices": [[0, 1, 2]],
      "uvs": [[0, 0], [1, 0], [0, 1]], "material": {"texture": {"width": 2, "height": 1, "pixels": b"\0" * 4}}},
     "4 bytes, a 2x1 RGBA8 texture has 8"),
    ({"type": "plane", "point": [0, 0, 0], "normal": [0, 1, 0], "material": {"shadow_catcher": 1}},
     "shadow_catcher: expected true or false"),
])
def test_bad_normals_uvs_textures_are_named(obj, match):
    with pytest.raises(SceneError, match=match):
        from_dict({"camera": _cam(), "objects": [obj]})


def test_smooth_shading_differs_from_flat_and_matches_analytic_normals():
    """A faceted sphere mesh with its exact normals shades (nearly) like the analytic sphere; flat-shaded it
    does not; the depth is the mesh's either way."""
    v, idx, exact, _ = _sphere_mesh(24, 48)
    mat = {"albedo": [0.8, 0.5, 0.3], "roughness": 0.7}
    mesh = {"type": "mesh", "vertices": v.tolist(), "indices": idx.tolist(), "position": [0, 0.3, 0],
            "material": mat}
    flat = reference.render(_scene([mesh]))
    smooth = reference.render(_scene([{**mesh, "normals": exact.tolist()}]))
    analytic = reference.render(_scene([{"type": "sphere", "center": [0, 0.3, 0], "radius": 0.3, "material": mat}]))
    both = (flat[0][..., 3] == 255) & (analytic[0][..., 3] == 255)
    err = lambda a: np.abs(a[0][both][:, :3].astype(int) - analytic[0][both][:, :3].astype(int)).mean()  # noqa: E731
    assert err(smooth) < 0.5 * err(flat) and err(smooth) < 3
    np.testing.assert_array_equal(flat[1], smooth[1])
    # "smooth" computes the normals
    computed = reference.render(_scene([{**mesh, "normals": "smooth"}]))
    assert err(computed) < 0.5 * err(flat)


def test_texture_is_sampled_at_the_uvs():
    """A camera-facing quad with a 2x1 texture (red left, blue right, albedo 1): the left part of the quad is
    red and the right part blue (bilinear in between)."""
    px = bytes([255, 0, 0, 255, 0, 0, 255, 255])
    quad = {"type": "mesh", "vertices": [[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]],
            "indices": [[0, 1, 2], [0, 2, 3]], "uvs": [[0, 0], [1, 0], [1, 1], [0, 1]],
            "material": {"albedo": [1, 1, 1], "emission": [0, 0, 0],
                         "texture": {"width": 2, "height": 1, "pixels": px}}}
    cam = {"position": [0, 0, 2], "orientation": [0, 0, 0, 1], "fov_y": 40, "width": 40, "height": 20}
    s = from_dict({"camera": cam, "objects": [quad], "ambient": [1, 1, 1]})
    rgba, _ = reference.render(s)
    row = rgba[10]
    hit = np.flatnonzero(row[:, 3] == 255)
    left, right = row[hit[: len(hit) // 2]], row[hit[len(hit) // 2:]]
    assert (left[:, 0] > left[:, 2]).all() and left[:, 0].max() >= 245 and left[:, 1].max() == 0
    assert (right[:, 2] > right[:, 0]).all() and right[:, 2].max() >= 245
    # a texture changes the image; the same scene with the texels swapped mirrors the colours
    swapped = from_dict({"camera": cam, "objects": [{**quad, "material": {**quad["material"], "texture": {
        "width": 2, "height": 1, "pixels": px[4:] + px[:4]}}}], "ambient": [1, 1, 1]})
    row2 = reference.render(swapped)[0][10]
    np.testing.assert_array_equal(row2[hit][:, [2, 0]], row[hit][:, [0, 2]])


def _catcher_scene(background="transparent", strength=1.0):
    return _scene([{"type": "plane", "point": [0, 0, 0], "normal": [0, 1, 0],
                    "material": {"shadow_catcher": True, "opacity": strength}},
                   {"type": "sphere", "center": [0, 0.35, 0], "radius": 0.25, "material": {"albedo": [0.9, 0.2, 0.2]}}],
                  background)


def test_shadow_catcher_is_transparent_except_its_shadows():
    rgba, depth = reference.render(_catcher_scene())
    sphere = reference.render(_scene([{"type": "sphere", "center": [0, 0.35, 0], "radius": 0.25,
                                       "material": {"albedo": [0.9, 0.2, 0.2]}}]))
    ground = (sphere[0][..., 3] == 0) & np.isfinite(depth)  # catcher pixels (not behind the sphere)
    shadow = ground & (rgba[..., 3] > 0)
    assert ground.sum() > 1000 and 20 < shadow.sum() < 0.5 * ground.sum()
    assert (rgba[ground][:, :3] == 0).all()  # premultiplied black: only alpha carries the shadow
    assert rgba[ground][:, 3].max() > 200  # the umbra is near fully dark
    # the sphere's own pixels are exactly those of the sphere rendered alone (the catcher does not light it)
    on_sphere = sphere[0][..., 3] == 255
    np.testing.assert_array_equal(rgba[on_sphere], sphere[0][on_sphere])
    # strength scales the shadow; over an opaque background the catcher darkens the background instead
    half = reference.render(_catcher_scene(strength=0.5))[0]
    assert abs(int(half[shadow][:, 3].max()) - 128) <= 20
    bg = reference.render(_catcher_scene(background=[0.5, 0.5, 0.5]))[0]
    assert (bg[..., 3] == 255).all()
    plain = bg[ground & ~shadow]
    assert (plain[:, :3] == plain[0, :3]).all() and (bg[shadow][:, 0] < plain[0, 0]).all()


def test_output_is_premultiplied_alpha():
    """A half-transparent card over a transparent background: alpha 0.5 and colour = 0.5 * its shaded colour
    (linear), where the straight-alpha form is the opaque card's colour."""
    ball = {"type": "mesh", "vertices": [[-0.3, 0, 0], [0.3, 0, 0], [0.3, 0.6, 0], [-0.3, 0.6, 0]],
            "indices": [[0, 1, 2], [0, 2, 3]], "material": {"albedo": [0.9, 0.9, 0.9]}}
    opaque = reference.render(_scene([ball]))[0]
    half = reference.render(_scene([{**ball, "material": {"albedo": [0.9, 0.9, 0.9], "opacity": 0.5}}]))[0]
    m = opaque[..., 3] == 255
    assert (half[m][:, 3] == 128).all()
    lin = lambda c: reference.srgb_to_linear(c)  # noqa: E731
    np.testing.assert_allclose(lin(half[m][:, :3]), 0.5 * lin(opaque[m][:, :3]), atol=0.01)
    straight = compositing.straight_alpha(half)
    assert np.abs(straight[m][:, :3].astype(int) - opaque[m][:, :3].astype(int)).max() <= 2


def test_compositing_over_a_photo_and_openxr_depth():
    rgba, depth = reference.render(_catcher_scene())
    photo = np.full(rgba.shape[:2] + (3,), 180, np.uint8)
    out = compositing.composite_over(rgba, photo)
    clear = rgba[..., 3] == 0
    assert (out[clear] == 180).all()  # transparent pixels show the photo untouched
    shadow = (rgba[..., 3] > 0) & (rgba[..., :3].max(-1) == 0)
    assert (out[shadow] < 180).all()  # shadows darken it
    near, far = 0.05, 20.0
    d01 = compositing.openxr_depth(depth, near, far)
    assert d01.dtype == np.float32 and (d01[~np.isfinite(depth)] == 1).all()
    assert compositing.openxr_depth(np.array([near, far]), near, far).tolist() == [0.0, 1.0]
    fin = np.isfinite(depth)
    np.testing.assert_allclose(compositing.view_depth(d01[fin], near, far), depth[fin], rtol=1e-4)


FEATURE_SCENES = {
    "ar-example-96x72": lambda: example("ar", 96, 72),
    "catcher-opaque-bg": lambda: _catcher_scene([0.3, 0.4, 0.5]),
    "catcher-half": lambda: _catcher_scene(strength=0.5),
    "smooth-textured-sphere": lambda: _scene([
        {"type": "plane", "point": [0, 0, 0], "normal": [0, 1, 0], "material": {"shadow_catcher": True}},
        {"type": "mesh", **dict(zip(("vertices", "indices", "normals", "uvs"),
                                    (a.tolist() for a in _sphere_mesh()), strict=True)),
         "position": [0, 0.35, 0], "material": {"albedo": [1, 1, 1], "metallic": 0.2, "texture": {
             "width": 4, "height": 2, "pixels": bytes(np.random.default_rng(1).integers(0, 256, 32, np.uint8))}}},
        {"type": "sphere", "center": [0.6, 0.3, -0.3], "radius": 0.2,
         "material": {"albedo": [0.9, 0.9, 0.9], "metallic": 1.0, "roughness": 0.05}},
        {"type": "sphere", "center": [-0.5, 0.25, 0.4], "radius": 0.2, "material": {"opacity": 0.4}}], w=80, h=60),
}


@requires_opencl
@pytest.mark.parametrize("name", sorted(FEATURE_SCENES))
def test_kernel_matches_reference_with_smooth_normals_textures_and_catchers(name):
    from worker.render.opencl import SceneOnDevice, default_queue

    scene = FEATURE_SCENES[name]()
    ctx, queue = default_queue()
    dev = SceneOnDevice(ctx, queue, scene)
    for pose in (None, look_at((1.5, 1.0, 1.8), (0.0, 0.3, 0.0))):
        a, b = dev.render(pose), reference.render(scene, pose)
        assert agree(a, b) >= MIN_FRACTION
        fin = np.isfinite(b[1])
        assert (np.isfinite(a[1]) == fin).mean() >= MIN_FRACTION
    dev.release()


@requires_opencl
def test_kernel_agreement_check_sees_a_wrong_texture():
    """The comparison above can fail: the kernel given another texture than the reference disagrees."""
    from worker.render.opencl import SceneOnDevice, default_queue

    scene = example("ar", 96, 72)
    card = next(i for i, o in enumerate(scene.objects) if o.material.texture is not None)
    tex = scene.objects[card].material.texture
    other = dataclasses.replace(tex, pixels=np.ascontiguousarray(tex.pixels[:, ::-1]))
    objs = list(scene.objects)
    objs[card] = dataclasses.replace(objs[card], material=dataclasses.replace(objs[card].material, texture=other))
    ctx, queue = default_queue()
    a = SceneOnDevice(ctx, queue, dataclasses.replace(scene, objects=tuple(objs))).render()
    assert agree(a, reference.render(scene)) < 0.99


def test_ar_example_uses_every_feature():
    s = example("ar")
    assert s.background is None
    assert any(o.material.shadow_catcher for o in s.objects)
    assert any(getattr(o, "normals", None) is not None for o in s.objects)
    assert any(o.material.texture is not None for o in s.objects)
    assert (EXAMPLES / "checker.png").exists()
