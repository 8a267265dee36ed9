"""The client's side of a render session against a worker it attached to directly, over real loopback TLS:
good tiles are decoded into their frames as they arrive (in the connection's reader task), and a hostile worker
(malformed, corrupt or out-of-order tiles) loses the session with a reason naming it instead of crashing the
client or handing it a wrong image."""

from __future__ import annotations

from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio

from mesh.bigtcp.rpc import Call, MeshClient, RpcServer
from mesh.bigtcp.transport import Transport
from mesh.identity import Identity
from scheduler.client.realtime import RealtimeSession, SessionLost
from worker.render.camera import Tile
from worker.render.frame_codec import BYTES_PER_PIXEL, TileEncoder
from worker.render.samples import example

W, H = 40, 30


def tile_image(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    depth = rng.uniform(0.5, 20.0, (H, W)).astype(np.float32)
    depth[:5] = np.inf
    return rgba, depth


@asynccontextmanager
async def attached_session(answer):
    """A RealtimeSession whose one tile is attached to a fake worker: `answer(frame_index, encoder)` gives the
    tile message the worker sends back for each frame."""
    rpc = RpcServer()

    @rpc.method("gateway")
    async def _gateway(call: Call):
        async for _ in call:
            pass
        return {}

    @rpc.method("attach")
    async def _attach(call: Call):
        enc = TileEncoder()
        async for item in call:
            if isinstance(item, dict) and "f" in item:
                await call.send(answer(item["f"], enc))
        return {}

    t = Transport(Identity.generate(), host="127.0.0.1", port=0, handler=rpc.handle_stream)
    async with trio.open_nursery() as n:
        await n.start(t.serve)
        async with MeshClient.connect("127.0.0.1", t.port, peer_id=t.peer_id) as client:
            async with client.open("gateway", {}, uploads=True) as gw, client.open("attach", {}, uploads=True) as tc:
                ready = {"session": "s1", "tiles": [Tile(0, 0, W, H).to_dict()], "workers": ["worker-1"],
                         "devices": ["d"], "estimate_ms": [1.0]}
                session = RealtimeSession(gw, example("spheres", W, H), ready, 10.0, 5000.0, {0: tc})
                async with trio.open_nursery() as readers:
                    readers.start_soon(session._reader)
                    readers.start_soon(session._direct_reader, 0, tc)
                    readers.start_soon(session._timer)
                    yield session
                    readers.cancel_scope.cancel()
        await t.aclose()


POSE = example("spheres", W, H).camera.pose


async def test_tiles_from_a_direct_worker_are_decoded_into_their_frames_in_order():
    images = [tile_image(s) for s in (1, 1, 2)]

    def answer(i, enc):
        t = enc.encode(*images[i])
        return {"f": i, "tile": t.header(), "p": t.payload, "render_ms": 1.0, "est_ms": 1.0}

    with trio.fail_after(20):
        async with attached_session(answer) as s:
            for i, (rgba, depth) in enumerate(images):
                f = await s.render(POSE)
                assert not f.dropped and f.index == i
                np.testing.assert_array_equal(f.rgba, rgba)
                assert (np.isinf(f.depth) == np.isinf(depth)).all()
            assert s.stats.delivered == 3 and len(s.stats.decode_s) == 3


NPX = W * H


@pytest.mark.parametrize("bad", [
    {"f": 0, "tile": {"key": True, "seq": 1, "n": NPX * BYTES_PER_PIXEL}, "p": "not bytes"},
    {"f": 0, "tile": {"key": True, "seq": 1, "n": NPX * BYTES_PER_PIXEL}, "p": b"\xff" * 64},  # corrupt LZ4
    {"f": 0, "tile": {"key": True, "seq": 1, "n": 10 ** 9}, "p": b"\x00"},  # a size that is not the tile's
    {"f": 0, "tile": {"key": False, "seq": 7, "n": NPX * BYTES_PER_PIXEL}, "p": b"\x00"},  # a delta, no base
    {"f": 0, "tile": "nope", "p": b"\x00"},
    {"f": "zero", "tile": {}, "p": b""},
    {"tile": {}},
])
async def test_a_hostile_direct_worker_loses_the_session_with_a_reason(bad):
    with trio.fail_after(20):
        async with attached_session(lambda i, enc: dict(bad)) as s:
            f = await s.render(POSE)
            assert f.dropped and "bad message from worker worker-1" in f.reason, f.reason
            with pytest.raises(SessionLost, match="worker-1"):
                await s.send(POSE)
