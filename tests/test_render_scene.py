"""Scene format: validation errors name the bad field, limits hold, the content hash is canonical, OBJ and
PNG round-trip. No OpenCL here."""

import copy
import json
import math
import re

import numpy as np
import pytest

from worker.render import scene as sc
from worker.render import scene_parse
from worker.render.camera import (
    Pose,
    Tile,
    camera_frame,
    look_at,
    matrix_to_quat,
    primary_directions,
    quat_to_matrix,
)
from worker.render.errors import SceneError
from worker.render.limits import MAX_LIGHTS, MAX_OBJECTS
from worker.render.obj import load_obj, parse_obj
from worker.render.png import decode_png, encode_png, write_png
from worker.render.samples import EXAMPLES, example, random_scene_dict


def base() -> dict:
    return {
        "camera": {
            "position": [0, 1, 3],
            "orientation": [0, 0, 0, 1],
            "fov_y": 60,
            "width": 32,
            "height": 24,
        },
        "materials": {"red": {"albedo": [1, 0, 0]}},
        "objects": [
            {"type": "plane", "point": [0, 0, 0], "normal": [0, 1, 0]},
            {"type": "sphere", "center": [0, 1, 0], "radius": 0.5, "material": "red"},
            {"type": "box", "center": [1, 0.5, 0], "size": [0.5, 0.5, 0.5]},
            {"type": "mesh", "vertices": [[0, 0, 0], [1, 0, 0], [0, 1, 0]], "indices": [[0, 1, 2]]},
        ],
        "lights": [
            {"type": "point", "position": [1, 3, 1]},
            {"type": "directional", "direction": [0, -1, 0]},
        ],
    }


def mutate(path: str, value=None, delete: bool = False) -> dict:
    d = base()
    *parents, last = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    node = d
    for p in parents:
        node = node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return d


BAD = [
    # (path to change, new value, expected message fragment)
    ("objects.1.material", {"albedo": [1, 2, 0]}, "objects[1].material.albedo: expected 3 numbers in [0, 1]"),
    ("objects.2.material", {"roughness": -0.1}, "objects[2].material.roughness: expected a number in [0, 1]"),
    ("objects.2.material", {"metallic": "shiny"}, "objects[2].material.metallic: expected a number"),
    ("objects.2.material", {"opacity": 1.5}, "objects[2].material.opacity: expected a number in [0, 1]"),
    ("objects.2.material", {"emission": [-1, 0, 0]}, "objects[2].material.emission: expected 3 numbers >= 0"),
    (
        "objects.2.material",
        {"albedo": [0.5, 0.5, 0.5], "shine": 1},
        "objects[2].material: unknown field 'shine'",
    ),
    ("objects.1.material", "blue", "objects[1].material: unknown material 'blue'"),
    ("objects.1.radius", 0, "objects[1].radius: expected a number > 0"),
    ("objects.1.radius", float("nan"), "objects[1].radius: expected a number > 0"),
    ("objects.1.center", [0, 1], "objects[1].center: expected 3 numbers"),
    ("objects.1.center", [0, True, 1], "objects[1].center: expected 3 numbers"),
    ("objects.1.type", "cone", "objects[1].type: expected 'sphere', 'box', 'plane' or 'mesh', got 'cone'"),
    ("objects.2.size", [1, 0, 1], "objects[2].size: expected 3 numbers > 0"),
    ("objects.2.rotation", [0, 0, 0, 2], "objects[2].rotation: quaternion must have unit length"),
    ("objects.0.normal", [0, 0, 0], "objects[0].normal: must not be the zero vector"),
    (
        "objects.3.indices",
        [[0, 1, 5]],
        "objects[3].indices[0][2]: index 5 out of range (mesh has 3 vertices)",
    ),
    ("objects.3.indices", [[0, 1, -1]], "objects[3].indices[0][2]: index -1 out of range"),
    ("objects.3.indices", [[0, 1.5, 2]], "objects[3].indices[0][1]: expected an integer index"),
    (
        "objects.3.vertices",
        [[0, 0, 0], [1, 0], [0, 1, 0]],
        "objects[3].vertices[1]: expected [x, y, z] vertices",
    ),
    (
        "objects.3.vertices",
        [[0, 0, 0], [1, "a", 0], [0, 1, 0]],
        "objects[3].vertices[1][1]: expected a number",
    ),
    (
        "objects.3.vertices",
        [[0, 0, 0], [1, float("inf"), 0], [0, 1, 0]],
        "objects[3].vertices[1][1]: expected a finite",
    ),
    ("objects.3.vertices", b"\x00" * 25, "objects[3].vertices: 25 bytes is not a whole number"),
    ("objects.3.scale", -1, "objects[3].scale: expected a number > 0"),
    ("objects.3.obj", "x.obj", "objects[3].obj: OBJ references are resolved by load_scene_file()"),
    ("objects.1.radus", 1, "objects[1]: unknown field 'radus'"),
    ("objects.1", "sphere", "objects[1]: expected an object, got str"),
    ("camera.width", 0, "camera.width: expected an integer in [1, 4096]"),
    ("camera.height", 10000, "camera.height: expected an integer in [1, 4096]"),
    ("camera.width", 32.5, "camera.width: expected an integer"),
    ("camera.fov_y", 180, "camera.fov_y: expected a vertical field of view in degrees in (0, 180)"),
    ("camera.near", 0, "camera.near: expected a number > 0"),
    ("camera.far", 0.001, "camera.far: must be greater than near"),
    ("camera.orientation", [0, 0, 1], "camera.orientation: expected a quaternion [x, y, z, w] of 4 numbers"),
    ("camera.orientation", [0, 0, 0, 0], "camera.orientation: quaternion must have unit length"),
    ("camera.zoom", 2, "camera: unknown field 'zoom'"),
    ("lights.0.color", [2, 1, 1], "lights[0].color: expected 3 numbers in [0, 1]"),
    ("lights.0.intensity", -1, "lights[0].intensity: expected a number >= 0"),
    ("lights.1.direction", [0, 0, 0], "lights[1].direction: must not be the zero vector"),
    ("lights.1.type", "spot", "lights[1].type: expected 'point' or 'directional', got 'spot'"),
    ("background", "black", "background: expected 'transparent' or 3 numbers in [0, 1]"),
    ("background", [0, 0, 2], "background: expected 3 numbers in [0, 1]"),
    ("ambient", [0.1, 0.1], "ambient: expected 3 numbers in [0, 1]"),
    ("version", 2, "version: this renderer reads version 1, got 2"),
    ("objects", {}, "objects: expected a list, got dict"),
    ("materials", [], "materials: expected an object mapping names to materials"),
    ("extra", 1, "scene: unknown field 'extra'"),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[b[0] + ":" + b[2][:30] for b in BAD])
def test_each_bad_field_is_named_in_the_error(path, value, message):
    with pytest.raises(SceneError) as e:
        sc.from_dict(mutate(path, value))
    assert message in str(e.value)


@pytest.mark.parametrize(
    "path", ["camera", "objects", "camera.width", "objects.1.radius", "objects.3.indices"]
)
def test_missing_required_field_is_named(path):
    with pytest.raises(
        SceneError, match=re.escape(path.replace(".1.", "[1].").replace(".3.", "[3].")) + ": missing"
    ):
        sc.from_dict(mutate(path, delete=True))


def test_scene_error_is_a_value_error_and_base_scene_is_valid():
    assert issubclass(SceneError, ValueError)
    s = sc.from_dict(base())
    assert isinstance(s.objects[1], sc.Sphere) and s.objects[1].material.albedo == (1.0, 0.0, 0.0)
    assert s.background is None and s.triangle_count == 1


def test_limits(monkeypatch):
    d = base()
    d["camera"]["width"], d["camera"]["height"] = 4096, 4096
    with pytest.raises(SceneError, match=r"camera: resolution 4096x4096 exceeds the limit of 8294400 pixels"):
        sc.from_dict(d)
    d = base()
    d["objects"] = [{"type": "sphere", "center": [0, 0, 0], "radius": 1}] * (MAX_OBJECTS + 1)
    with pytest.raises(SceneError, match=r"objects: 257 objects exceeds the limit of 256"):
        sc.from_dict(d)
    d = base()
    d["lights"] = [{"type": "point", "position": [0, 0, 0]}] * (MAX_LIGHTS + 1)
    with pytest.raises(SceneError, match=r"lights: 17 lights exceeds the limit of 16"):
        sc.from_dict(d)
    monkeypatch.setattr(scene_parse, "MAX_TRIANGLES", 3)  # the limit from_dict reads
    d = base()
    d["objects"].append(copy.deepcopy(d["objects"][3]))
    d["objects"][3]["indices"] = [[0, 1, 2]] * 2
    d["objects"][4]["indices"] = [[0, 1, 2]] * 2
    with pytest.raises(
        SceneError, match=r"objects\[4\].indices: 2 triangles takes the scene over the limit of 3"
    ):
        sc.from_dict(d)


def test_content_hash_is_canonical():
    d = base()
    h = sc.content_hash(sc.from_dict(d))
    # key order, int vs float, named vs inline material, explicit defaults, bytes vs lists: same hash
    d2 = json.loads(json.dumps(d, sort_keys=True))
    d2["objects"][1]["material"] = {"albedo": [1.0, 0.0, 0.0]}
    d2["camera"]["near"] = 0.01
    d2["objects"][2]["rotation"] = [0, 0, 0, 1.0]
    d2["objects"][0]["normal"] = [-0.0, 1, 0]
    assert sc.content_hash(sc.from_dict(d2)) == h
    s = sc.from_dict(d)
    assert sc.content_hash(sc.from_dict(sc.to_dict(s))) == h
    assert sc.content_hash(sc.from_dict(sc.to_dict(s, binary=True))) == h
    assert sc.content_hash(sc.from_dict(json.loads(json.dumps(sc.to_dict(s))))) == h
    assert len(h) == 64 and int(h, 16) >= 0


@pytest.mark.parametrize(
    "path,value",
    [
        ("objects.1.radius", 0.5000001),
        ("objects.3.vertices", [[0, 0, 0], [1, 0, 0], [0, 1, 1e-9]]),
        ("objects.3.indices", [[0, 2, 1]]),
        ("camera.width", 33),
        ("background", [0, 0, 0]),
        ("lights.0.intensity", 1.01),
    ],
)
def test_content_hash_changes_with_content(path, value):
    assert sc.content_hash(sc.from_dict(mutate(path, value))) != sc.content_hash(sc.from_dict(base()))


def test_pose_and_tile_validation():
    p = sc.pose_from_dict({"position": [1, 2, 3], "orientation": [0, 0, 0, 1]})
    assert p == Pose((1.0, 2.0, 3.0), (0.0, 0.0, 0.0, 1.0))
    assert sc.pose_from_dict(p.to_dict()) == p
    with pytest.raises(SceneError, match=r"pose.orientation: quaternion must have unit length"):
        sc.pose_from_dict({"position": [1, 2, 3], "orientation": [0, 0, 0, 3]})
    with pytest.raises(SceneError, match=r"poses\[3\].position: expected 3 numbers"):
        sc.pose_from_dict({"position": [1, 2], "orientation": [0, 0, 0, 1]}, "poses[3]")
    with pytest.raises(SceneError, match=r"tile: \(30, 0, 8x8\) lies outside the 32x24 frame"):
        Tile(30, 0, 8, 8).check(32, 24)
    with pytest.raises(SceneError, match=r"tile: empty tile 0x8"):
        Tile(0, 0, 0, 8).check(32, 24)
    assert sc.tile_from_dict(Tile(1, 2, 3, 4).to_dict(), 32, 24) == Tile(1, 2, 3, 4)
    with pytest.raises(SceneError, match=r"tiles\[2\].w: expected an integer"):
        sc.tile_from_dict({"x0": 0, "y0": 0, "w": "8", "h": 8}, 32, 24, "tiles[2]")
    with pytest.raises(SceneError, match=r"tile: unknown field 'z'"):
        sc.tile_from_dict({"x0": 0, "y0": 0, "w": 8, "h": 8, "z": 1}, 32, 24)
    with pytest.raises(SceneError, match=r"tile: \(0, 20, 8x8\) lies outside"):
        sc.tile_from_dict({"x0": 0, "y0": 20, "w": 8, "h": 8}, 32, 24)
    tiles = Tile.grid(37, 23, 3, 2)
    cover = np.zeros((23, 37), int)
    for t in tiles:
        t.check(37, 23)
        cover[t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w] += 1
    assert (cover == 1).all() and len(tiles) == 6


def test_camera_conventions():
    # identity looks down -Z with +Y up; pixel (0, 0) is top-left
    cam = camera_frame(Pose((0, 0, 0), (0, 0, 0, 1)), 90.0, 4, 2)
    d = primary_directions(cam, np.array([0, 3, 0]), np.array([0, 0, 1]))
    assert d[0, 0] < 0 and d[0, 1] > 0 and d[0, 2] < 0  # top-left pixel: left, up, forward
    assert d[1, 0] > 0 and d[2, 1] < 0
    # 90 degrees about +Y turns the view from -Z to -X
    s = math.sqrt(0.5)
    r = quat_to_matrix((0, s, 0, s))
    assert np.allclose(-r[:, 2], [-1, 0, 0])
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        m = quat_to_matrix(tuple(q))
        assert np.allclose(m @ m.T, np.eye(3)) and np.isclose(np.linalg.det(m), 1)
        assert np.allclose(quat_to_matrix(matrix_to_quat(m)), m)
    p = look_at((1, 2, 3), (0, 0, 0))
    fwd = -quat_to_matrix(p.orientation)[:, 2]
    assert np.allclose(fwd, -np.array([1, 2, 3]) / np.linalg.norm([1, 2, 3]))


def test_mesh_transform_and_box_axes():
    d = base()
    d["objects"][3].update(position=[1, 2, 3], scale=2.0, rotation=[0, math.sqrt(0.5), 0, math.sqrt(0.5)])
    m = sc.from_dict(d).objects[3]
    assert np.allclose(m.world_vertices(), [[1, 2, 3], [1, 2, 1], [1, 4, 3]])
    assert not m.vertices.flags.writeable


def test_obj_parse_triangulates_and_resolves_indices():
    m = parse_obj(
        "# a quad and a relative triangle\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvn 0 0 1\n"
        "g quad\nusemtl x\nf 1/1/1 2/1/1 3//1 4\nf -1 -2 -3\n"
    )
    v, f = m.vertices, m.indices
    assert v.shape == (4, 3) and f.tolist() == [[0, 1, 2], [0, 2, 3], [3, 2, 1]]
    assert m.normals is None and m.uvs is None  # some corners name no vt / vn: the mesh gets neither


@pytest.mark.parametrize(
    "text,message",
    [
        ("v 0 0\n", "m.obj:1: a 'v' line needs 3 coordinates, got 2"),
        ("v 0 0 0\nv 1 x 0\n", "m.obj:2: bad vertex coordinate"),
        ("v 0 0 0\nv nan 0 0\n", "m.obj:2: vertex coordinates must be finite"),
        ("v 0 0 0\nv 1 0 0\nf 1 2\n", "m.obj:3: a face needs at least 3 vertices, got 2"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 0\n", "m.obj:4: vertex index 0 is invalid"),
        (
            "v 0 0 0\nv 1 0 0\nv 0 1 0\n\nf 1 2 9\n",
            "m.obj:5: vertex index 9 out of range (file has 3 vertices)",
        ),
        ("v 0 0 0\nf -1 -2 -3\n", "m.obj:2: relative index -2 reaches before the first vertex"),
        ("v 0 0 0\nf 1 a 2\n", "m.obj:2: bad vertex index 'a'"),
        ("v 0 0 0\n", "m.obj: no faces"),
    ],
)
def test_obj_errors_name_the_line(text, message):
    with pytest.raises(SceneError) as e:
        parse_obj(text, "m.obj")
    assert message in str(e.value)


def test_load_scene_file_inlines_obj(tmp_path):
    (tmp_path / "tri.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3 4\n")
    d = base()
    d["objects"][3] = {"type": "mesh", "obj": "tri.obj", "scale": 2}
    (tmp_path / "s.json").write_text(json.dumps(d))
    s = sc.load_scene_file(tmp_path / "s.json")
    assert s.objects[3].triangle_count == 2 and s.objects[3].scale == 2.0
    d["objects"][3]["obj"] = "missing.obj"
    (tmp_path / "s.json").write_text(json.dumps(d))
    with pytest.raises(SceneError, match="missing.obj: cannot read OBJ file"):
        sc.load_scene_file(tmp_path / "s.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SceneError, match="bad.json: not valid JSON"):
        sc.load_scene_file(tmp_path / "bad.json")
    with pytest.raises(SceneError, match="cannot read OBJ"):
        load_obj(tmp_path / "nope.obj")


def test_examples_are_valid_and_one_has_a_mesh():
    names = sorted(p.stem for p in EXAMPLES.glob("*.json"))
    assert len(names) >= 2
    scenes = [example(n) for n in names]
    assert any(s.triangle_count > 0 for s in scenes)
    assert any(isinstance(o, sc.Sphere) and o.material.metallic > 0 for s in scenes for o in s.objects)
    assert all(s.lights for s in scenes)


def test_random_scenes_are_valid():
    for seed in range(5):
        sc.from_dict(random_scene_dict(seed))


def test_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    data = encode_png(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert np.array_equal(decode_png(data), img)
    write_png(tmp_path / "x.png", img)
    assert np.array_equal(decode_png((tmp_path / "x.png").read_bytes()), img)
    corrupt = bytearray(data)
    corrupt[20] ^= 1
    with pytest.raises(ValueError, match="bad CRC"):
        decode_png(bytes(corrupt))
    with pytest.raises(ValueError, match="uint8"):
        encode_png(img.astype(np.float32))
