"""The render.frame cost model: work per pixel of a scene (`flops_per_pixel`), a device's ray-tracing rate and
the seconds per pixel it gives, and the constants the kind prices a frame with (launch latency per band, scene
setup, defaults for a spec that names an unknown scene). Pure: no I/O.
"""

from __future__ import annotations

import math

from worker.devices import Device
from worker.kinds import DEFAULT_F32_GFLOPS
from worker.render.scene import Box, Plane, Scene, Sphere
from worker.render.tile_output import OUTPUT_BYTES_PER_PIXEL

# Cost model. Work per pixel is counted in "flops" of a simple operation count (see flops_per_pixel); the
# ray tracer is branchy and divergent, so it runs at a fraction of the calibrated FMA peak. The weights and
# EFFICIENCY were fitted to PoCL on a shared 2-core EPYC (~25 GFLOP/s calibrated): spheres.json and mesh.json
# at 320x240 to 1280x720 within about 2x of the measured kernel times. Not yet fitted on a GPU.
EFFICIENCY = 0.3
REFERENCE_GFLOPS = 0.4  # the numpy reference's effective rate in the same units (no OpenCL device)
LAUNCH_S = 0.5e-3  # per band: launch + read-back latency
OUTPUT_BPS_GPU = 8e9
OUTPUT_BPS_HOST = 4e9
SETUP_FIXED_S = 0.02  # parse + pack + upload of a small scene
SETUP_S_PER_TRIANGLE = 4e-6  # BVH build on the host
SETUP_S_PER_INPUT_BYTE = 1 / 50e6  # a scene in the input: parse + BVH, estimated from its size
DEFAULT_PIXELS = 640 * 480
DEFAULT_PX_FLOPS = 4000.0
BAND_TARGET_S = 0.05  # a band of a big frame: about this long between checkpoints


def flops_per_pixel(scene: Scene) -> float:
    """Estimated operations per pixel: intersection tests of the primary ray, one shadow ray per light, and the
    secondary rays of reflective / see-through materials (weighted by how common they are)."""
    analytic = sum(1 for o in scene.objects if isinstance(o, Sphere | Box | Plane))
    tris = scene.triangle_count
    isect = 100.0 * analytic + (40.0 * math.log2(tris + 1) + 100.0 if tris else 0.0)
    shade = 80.0
    per_ray = isect + shade + len(scene.lights) * (isect + 40.0)
    n = max(len(scene.objects), 1)
    secondary = sum(1 for o in scene.objects if o.material.metallic > 0 or o.material.opacity < 1) / n
    return 150.0 + per_ray * (1.0 + secondary)


def device_rate(device: Device | None) -> float:
    """Effective ray-tracing rate of a device, in the units of flops_per_pixel per second."""
    if device is not None and not device.opencl:
        return REFERENCE_GFLOPS * 1e9
    g = device.f32_gflops if device is not None and device.f32_gflops else DEFAULT_F32_GFLOPS
    return g * 1e9 * EFFICIENCY


def pixel_cost_s(px_flops: float, device: Device | None) -> float:
    """Seconds per pixel on `device` (render and read-back)."""
    bps = OUTPUT_BPS_GPU if device is not None and device.kind == "gpu" else OUTPUT_BPS_HOST
    return px_flops / device_rate(device) + OUTPUT_BYTES_PER_PIXEL / bps


def pixel_cost_for(px_flops: float, kind: str, f32_gflops: float) -> float:
    """`pixel_cost_s` for a device known only by its advert: kind ("gpu", "cpu", "reference", ...) and
    calibrated GFLOP/s (0: not calibrated)."""
    if kind == "reference":
        rate = REFERENCE_GFLOPS * 1e9
    else:
        rate = (f32_gflops or DEFAULT_F32_GFLOPS) * 1e9 * EFFICIENCY
    bps = OUTPUT_BPS_GPU if kind == "gpu" else OUTPUT_BPS_HOST
    return px_flops / rate + OUTPUT_BYTES_PER_PIXEL / bps
