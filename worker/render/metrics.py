"""Prometheus metrics of render.frame (default registry, module-level objects).

Code that counts into them refers to them through this module at call time (`metrics.SCENE_CACHE`, not an
imported name): in a runner process `worker.runner.metric_relay.record()` swaps them for recorders whose counts
reach the node.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TILES_RENDERED = Counter("gpumesh_render_tiles_rendered_total",
                         "Frames or tiles this node's worker rendered, by path (opencl or reference)", ["path"])
RENDER_SECONDS = Histogram("gpumesh_render_device_seconds", "Render time of one frame or tile, per device",
                           ["device"], buckets=(0.001, 0.002, 0.005, 0.01, 0.016, 0.033, 0.05, 0.1, 0.25, 0.5,
                                                1, 2.5, 10))
TILES_VERIFIED = Counter("gpumesh_render_tiles_verified_total",
                         "Remote frames or tiles spot-checked by this coordinator: accepted, rejected (the result "
                         "is re-placed and the peer's standing drops) or unverifiable (scene unknown here)",
                         ["outcome"])
SCENE_CACHE = Counter("gpumesh_render_scene_cache_total", "Scene cache lookups and evictions on this node",
                      ["event"])
SCENES_CACHED = Gauge("gpumesh_render_scenes_cached", "Scenes held in this node's render cache")
