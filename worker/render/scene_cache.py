"""The render scene cache: scenes by content hash (LRU, bounded by count and size), each with its reference
renderer form and its uploads per OpenCL device (`CachedScene.render_on`). A node's jobs and spot-checks share
`CACHE`; each runner process keeps its own (`worker.runner.render`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from worker.render import metrics, reference
from worker.render.camera import Pose, Tile
from worker.render.cost import flops_per_pixel
from worker.render.scene import Scene, content_hash


class CachedScene:
    """One scene on this node: the parsed Scene, its reference form (lazy) and its uploads per device."""

    def __init__(self, scene: Scene, scene_hash: str) -> None:
        self.scene = scene
        self.hash = scene_hash
        self.px_flops = flops_per_pixel(scene)
        self.size_bytes = 4096 + scene.triangle_count * 200  # host + device copies, roughly
        self._lock = threading.Lock()
        self._prepared: reference.Prepared | None = None
        self._devices: dict[str, Any] = {}  # device id -> SceneOnDevice
        self._device_locks: dict[str, threading.Lock] = {}

    def prepared(self) -> reference.Prepared:
        """The reference renderer's form (built on first use; blocking)."""
        with self._lock:
            if self._prepared is None:
                self._prepared = reference.prepare(self.scene)
            return self._prepared

    def on_device(self, device_id: str) -> bool:
        return device_id in self._devices

    def render_on(self, dctx: Any, pose: Pose, tile: Tile,
                  into: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Render a tile on an OpenCL device (blocking: run it through run_blocking), read back into `into`
        (see `SceneOnDevice.enqueue`) or new arrays. Uploads the scene to the device on first use; renders of
        one scene on one device are serialised (SceneOnDevice is not thread-safe)."""
        # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
        from worker.render.opencl import SceneOnDevice
        dev_id = dctx.device.id
        with self._lock:
            lock = self._device_locks.setdefault(dev_id, threading.Lock())
        with lock:
            dev = self._devices.get(dev_id)
            if dev is None:

                dev = SceneOnDevice(dctx.context, dctx.queue, self.scene)
                self._devices[dev_id] = dev
            return dev.render(pose, tile, into=into)

    def release(self) -> None:
        """Free device memory (the scene left the cache). A render in progress keeps its own reference."""
        for dev_id, dev in list(self._devices.items()):
            lock = self._device_locks.get(dev_id)
            if lock is not None and lock.acquire(blocking=False):
                try:
                    dev.release()
                finally:
                    lock.release()
        self._devices.clear()


class SceneCache:
    """Scenes by content hash, least recently used evicted beyond `max_scenes` or `max_bytes`. Thread-safe."""

    def __init__(self, max_scenes: int = 16, max_bytes: int = 512 << 20) -> None:
        self.max_scenes = max_scenes
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, CachedScene] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, scene_hash: object) -> bool:
        return scene_hash in self._items

    def get(self, scene_hash: str | None, *, count: bool = True) -> CachedScene | None:
        if scene_hash is None:
            return None
        with self._lock:
            entry = self._items.get(scene_hash)
            if entry is not None:
                self._items.move_to_end(scene_hash)
        if count:
            metrics.SCENE_CACHE.labels("hit" if entry is not None else "miss").inc()
        return entry

    def put(self, scene: Scene, scene_hash: str | None = None) -> CachedScene:
        h = scene_hash or content_hash(scene)
        evicted = []
        with self._lock:
            entry = self._items.get(h)
            if entry is None:
                entry = CachedScene(scene, h)
                self._items[h] = entry
                metrics.SCENE_CACHE.labels("insert").inc()
            self._items.move_to_end(h)
            total = sum(e.size_bytes for e in self._items.values())
            while len(self._items) > 1 and (len(self._items) > self.max_scenes or total > self.max_bytes):
                _, old = self._items.popitem(last=False)
                total -= old.size_bytes
                evicted.append(old)
            metrics.SCENES_CACHED.set(len(self._items))
        for old in evicted:
            metrics.SCENE_CACHE.labels("evict").inc()
            old.release()
        return entry

    def clear(self) -> None:
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
            metrics.SCENES_CACHED.set(0)
        for e in items:
            e.release()


CACHE = SceneCache()
