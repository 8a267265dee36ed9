"""Composite an AR frame over a camera photo: the frame's premultiplied colour + the photo * (1 - alpha), in
linear light. The shadow-catcher ground is transparent except for the shadows it receives, so the virtual
objects stand on the photo's floor with contact shadows.

    python examples/ar_composite.py [PHOTO.jpg] [--out docs/images/ar_composite.png]

Without a photo a synthetic one is made (a wall and a wooden floor whose horizon matches the scene camera).
Renders examples/scenes/ar.json with OpenCL when there is a device, else with the numpy reference. Also
writes the frame itself (straight alpha, as PNG wants) and its depth as an OpenXR [0, 1] depth image.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image

from worker.render import compositing, reference
from worker.render.samples import example


def synthetic_photo(width: int, height: int, horizon: float, seed: int = 7) -> np.ndarray:
    """(h, w, 3) uint8 sRGB: a plain wall above `horizon` (a fraction of the height) and wooden planks below,
    converging towards the horizon."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    hy = horizon * height
    img = np.empty((height, width, 3))
    img[:] = (0.78, 0.76, 0.72)  # the wall
    img *= (0.85 + 0.15 * (y / height))[..., None]
    floor = y > hy
    depth = np.where(floor, 1.0 / np.maximum(y - hy, 1.0), 0.0)  # ~ 1 / distance on the floor
    u = (x - width / 2) * depth * 12  # planks run away from the camera
    near = np.clip((y - hy) / (0.35 * height), 0, 1)  # detail fades towards the horizon (no aliasing)
    plank = (np.floor(u) % 2) * near
    grain = 0.05 * np.sin(u * 7 + rng.normal(0, 0.3, size=u.shape)) * near
    wood = np.stack([0.55 + 0.08 * plank + grain, 0.38 + 0.05 * plank + grain, 0.22 + 0.03 * plank], -1)
    img[floor] = wood[floor] * (0.75 + 0.25 * np.clip((y[floor] - hy) / (height - hy), 0, 1))[:, None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render(scene):
    try:
        from worker.render.opencl import SceneOnDevice, default_queue

        ctx, queue = default_queue()
        return SceneOnDevice(ctx, queue, scene).render()
    except Exception:  # no OpenCL runtime or device here: the reference gives the same image
        return reference.render(scene)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photo", nargs="?", type=Path, help="a camera photo (any size; it is resized to the frame)")
    ap.add_argument("--out", type=Path, default=Path("docs/images/ar_composite.png"))
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    args = ap.parse_args()
    scene = example("ar", args.width, args.height)
    rgba, depth = render(scene)
    cam = scene.camera
    if args.photo:
        photo = np.asarray(Image.open(args.photo).convert("RGB").resize((cam.width, cam.height)))
    else:
        # the ground plane's horizon: where the camera's pitch puts the view direction parallel to the floor
        down = -2 * math.asin(cam.orientation[0])  # the camera's pitch below level (a turn about x, as in ar.json)
        horizon = 0.5 - math.tan(down) / (2 * math.tan(math.radians(cam.fov_y) / 2))
        photo = synthetic_photo(cam.width, cam.height, horizon)
    out = compositing.composite_over(rgba, photo)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out).save(args.out)
    stem = args.out.with_suffix("")
    Image.fromarray(compositing.straight_alpha(rgba), "RGBA").save(f"{stem}_frame.png")
    d01 = compositing.openxr_depth(depth, cam.near, cam.far)
    Image.fromarray((d01 * 65535).astype(np.uint16)).save(f"{stem}_depth.png")
    print(f"wrote {args.out}, {stem}_frame.png and {stem}_depth.png (OpenXR depth, near {cam.near} m, "
          f"far {cam.far} m, 16-bit)")


if __name__ == "__main__":
    main()
