"""Ready-made scenes for tests, benchmarks and demos: the shipped examples at any resolution, and seeded
random scenes that exercise every object, material and light kind."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from worker.render.camera import look_at
from worker.render.scene import Scene, from_dict, load_scene_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenes"


def at_resolution(scene: Scene, width: int, height: int) -> Scene:
    """The same scene rendered at another size (intrinsics change, the field of view stays vertical)."""
    return dataclasses.replace(scene, camera=dataclasses.replace(scene.camera, width=width, height=height))


def example(name: str, width: int | None = None, height: int | None = None) -> Scene:
    """examples/scenes/NAME.json, optionally at another resolution."""
    scene = load_scene_file(EXAMPLES / f"{name}.json")
    if width is not None and height is not None:
        scene = at_resolution(scene, width, height)
    return scene


def _material(rng: np.random.Generator) -> dict:
    m: dict = {
        "albedo": rng.uniform(0.05, 1.0, 3).round(3).tolist(),
        "roughness": round(float(rng.uniform()), 3),
    }
    if rng.uniform() < 0.35:
        m["metallic"] = round(float(rng.uniform(0.2, 1.0)), 3)
    if rng.uniform() < 0.25:
        m["opacity"] = round(float(rng.uniform(0.2, 0.9)), 3)
    if rng.uniform() < 0.1:
        m["emission"] = rng.uniform(0.0, 0.8, 3).round(3).tolist()
    return m


def _unit_quat(rng: np.random.Generator) -> list[float]:
    q = rng.normal(size=4)
    return (q / np.linalg.norm(q)).tolist()


def random_scene_dict(seed: int, width: int = 64, height: int = 48, triangles: int = 60) -> dict:
    """A seeded random scene dict: a ground plane, spheres, boxes, a triangle mesh, point + directional lights."""
    rng = np.random.default_rng(seed)
    objects: list[dict] = [
        {"type": "plane", "point": [0, 0, 0], "normal": [0, 1, 0], "material": _material(rng)}
    ]
    for _ in range(int(rng.integers(1, 4))):
        r = float(rng.uniform(0.15, 0.6))
        c = [float(rng.uniform(-1.5, 1.5)), r + float(rng.uniform(0, 0.5)), float(rng.uniform(-1.5, 1.5))]
        objects.append({"type": "sphere", "center": c, "radius": r, "material": _material(rng)})
    for _ in range(int(rng.integers(1, 3))):
        objects.append(
            {
                "type": "box",
                "center": [
                    float(rng.uniform(-1.5, 1.5)),
                    float(rng.uniform(0.2, 0.8)),
                    float(rng.uniform(-1.5, 1.5)),
                ],
                "size": rng.uniform(0.15, 0.7, 3).tolist(),
                "rotation": _unit_quat(rng),
                "material": _material(rng),
            }
        )
    nv = max(3, triangles // 2 + 2)
    verts = rng.uniform(-0.5, 0.5, (nv, 3))
    idx = rng.integers(0, nv, (triangles, 3))
    objects.append(
        {
            "type": "mesh",
            "vertices": verts.tolist(),
            "indices": idx.tolist(),
            "position": [float(rng.uniform(-1, 1)), 0.8, float(rng.uniform(-1, 1))],
            "rotation": _unit_quat(rng),
            "scale": float(rng.uniform(0.8, 1.5)),
            "material": _material(rng),
        }
    )
    a = float(rng.uniform(0, 2 * math.pi))
    pose = look_at((3.2 * math.sin(a), float(rng.uniform(0.8, 2.5)), 3.2 * math.cos(a)), (0.0, 0.4, 0.0))
    return {
        "camera": {
            "position": list(pose.position),
            "orientation": list(pose.orientation),
            "fov_y": float(rng.uniform(40, 75)),
            "width": width,
            "height": height,
            "near": 0.05,
            "far": 30.0,
        },
        "background": "transparent" if rng.uniform() < 0.5 else rng.uniform(0, 1, 3).tolist(),
        "objects": objects,
        "lights": [
            {
                "type": "point",
                "position": [float(rng.uniform(-2, 2)), 3.0, float(rng.uniform(-2, 2))],
                "intensity": 8.0,
            },
            {
                "type": "directional",
                "direction": [-0.3, -1.0, -0.2],
                "intensity": float(rng.uniform(0.2, 1.0)),
            },
        ],
    }


def random_scene(seed: int, width: int = 64, height: int = 48, triangles: int = 60) -> Scene:
    return from_dict(random_scene_dict(seed, width, height, triangles))
