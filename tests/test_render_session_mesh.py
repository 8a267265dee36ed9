"""Real-time render sessions on real node processes (3-node loopback meshes): frames arrive and equal the one-shot
render (and the reference renderer); a frame that cannot make its deadline is dropped before rendering and
counted; slots are released when the session closes and when its client dies; a worker killed mid-session
ends the session's frames with a reason naming it. Assertions are on events and counts: the deadlines here
are far beyond any frame's cost, except where a frame is sent with no time left on purpose."""

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import urllib.request

import numpy as np
import pytest
import trio
import trio_websocket

from mesh.bigtcp.rpc import RpcError
from mesh.waiting import until, wait_for
from scheduler.client.client import Client, local_address, new_job
from scheduler.client.realtime import SessionLost, open_session
from scheduler.client.render_client import render_frame
from scheduler.client.viewer import Viewer
from scheduler.devtools.localmesh import running_mesh
from tests.attach_checks import dial, forged_tickets_are_refused, methods_are_refused
from worker.render import reference
from worker.render.camera import orbit
from worker.render.frame_codec import depth_tolerance
from worker.render.samples import example

FAST = ["--advert-interval", "0.5", "--advert-ttl", "10"]
W, H = 64, 48
GENEROUS_MS = 10_000.0
SLOW_FPS = 1.0  # admission checks the measured frame time against the period too: far beyond it here


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("session-mesh"), 3, FAST) as nodes:
        yield nodes


def connect(node):
    addr, tok, pid, insecure = local_address(node.data_dir)
    return Client.connect(addr, token=tok, peer_id=pid, insecure=insecure)


def metric(node, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10).read().decode()
    want = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(want):
            return float(line.split()[-1])
    return 0.0


def worker_sessions(node) -> float:
    return metric(node, "gpumesh_render_sessions", 'role="worker"')


def free_slots(node) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10).read().decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("gpumesh_executor_free_slots{"))


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "relayed"])
async def test_frames_arrive_and_equal_the_one_shot_render_and_the_reference(mesh, direct):
    scene = example("spheres", W, H)
    prepared = reference.prepare(scene)
    poses = orbit((0.0, 0.3, 0.0), 2.6, 1.0, 24)[::4]
    async with connect(mesh[0]) as c:
        async with open_session(c, scene, fps=SLOW_FPS, deadline_ms=GENEROUS_MS, tiles=2, direct=direct,
                                peers=[mesh[1].peer_id, mesh[2].peer_id]) as s:
            assert sorted(s.workers) == sorted([mesh[1].peer_id, mesh[2].peer_id])
            assert sorted(s.direct) == ([0, 1] if direct else []), "each remote tile's worker reached directly"
            assert all(0 < e < GENEROUS_MS for e in s.estimate_ms), "no measured frame time before admission"
            frames = [await s.render(p) for p in poses]
        for f in frames:
            assert not f.dropped, f.reason
            one_shot = await render_frame(c, scene, f.pose, deadline_ms=GENEROUS_MS)
            assert not one_shot.dropped
            np.testing.assert_array_equal(f.rgba, one_shot.rgba)  # colour is lossless on the wire
            fin = np.isfinite(one_shot.depth)
            assert (np.isfinite(f.depth) == fin).all()
            assert (np.abs(f.depth[fin] - one_shot.depth[fin]) <= depth_tolerance(one_shot.depth)[fin]).all()
            ref_rgba, ref_depth = reference.render(prepared, f.pose)
            off = (np.abs(f.rgba.astype(int) - ref_rgba.astype(int)).max(axis=-1) > 2).sum()
            assert off <= max(1, int(0.001 * W * H)), f"frame {f.index}: {off} pixels off the reference"
    assert [f.index for f in frames] == list(range(len(poses)))
    assert s.stats.delivered == len(poses) and s.stats.dropped == 0 and all(b > 0 for b in s.stats.frame_bytes)
    assert s.ended is not None and [t["rendered"] for t in s.ended["tiles"]] == [len(poses)] * 2


async def test_a_frame_that_cannot_make_its_deadline_is_dropped_before_rendering_and_counted(mesh):
    worker = mesh[2]
    scene = example("mesh", W, H)
    before = metric(worker, "gpumesh_render_session_tiles_total", 'outcome="dropped_deadline"')
    pose = orbit((0.0, 0.3, 0.0), 2.6, 1.0, 8)[3]
    async with connect(mesh[0]) as c:
        async with open_session(c, scene, fps=SLOW_FPS, deadline_ms=GENEROUS_MS, peers=[worker.peer_id]) as s:
            ok = await s.render(pose)
            await s.send(pose, budget_ms=0.0)  # no time left when it arrives: the worker must not render it
            late = await s.next_frame()
            again = await s.render(pose)  # the session carries on
    assert not ok.dropped and not again.dropped
    assert late.dropped and late.reason.startswith("deadline") and late.rgba is None
    assert s.stats.dropped_by_reason == {"deadline": 1} and s.stats.delivered == 2
    tile = s.ended["tiles"][0]
    assert tile["rendered"] == 2 and tile["dropped"] == {"deadline": 1}
    assert metric(worker, "gpumesh_render_session_tiles_total", 'outcome="dropped_deadline"') == before + 1


async def test_frames_sent_straight_to_a_worker_are_checked_as_they_arrive(mesh):
    """On a client's direct stream the worker takes frames in the connection's reader: a frame whose index is not
    after the last one is answered dropped (stale) and counted, and the session carries on; a frame that does not
    parse ends that worker's part of the session with the reason, which the client sees."""
    worker = mesh[1]
    scene = example("spheres", W, H)
    pose = orbit((0.0, 0.3, 0.0), 2.6, 1.0, 8)[2]
    before = metric(worker, "gpumesh_render_session_tiles_total", 'outcome="dropped_stale"')
    async with connect(mesh[0]) as c:
        with contextlib.suppress(SessionLost):  # leaving a lost session may say so again
            async with open_session(c, scene, fps=SLOW_FPS, deadline_ms=GENEROUS_MS, peers=[worker.peer_id]) as s:
                assert sorted(s.direct) == [0]
                assert not (await s.render(pose)).dropped
                await s.direct[0].send({"f": 0, "pose": pose.to_dict()})  # index 0 again
                await until(lambda: metric(worker, "gpumesh_render_session_tiles_total",
                                           'outcome="dropped_stale"') == before + 1, 30, "the stale frame's drop")
                assert not (await s.render(pose)).dropped  # frame 1: the session carries on
                await s.direct[0].send({"f": "two", "pose": pose.to_dict()})
                lost = await s.render(pose)
                assert lost.dropped and "frame index must be a non-negative integer" in lost.reason, lost.reason
                with pytest.raises(SessionLost):
                    await s.render(pose)


async def test_slots_are_held_during_a_session_and_released_when_it_closes(mesh):
    worker = mesh[1]
    scene = example("spheres", W, H)
    slots = free_slots(worker)
    async with connect(mesh[0]) as c:
        async with open_session(c, scene, fps=SLOW_FPS, deadline_ms=GENEROUS_MS, peers=[worker.peer_id]) as s:
            await s.render(scene.camera.pose)
            assert worker_sessions(worker) == 1 and free_slots(worker) == slots - 1
        await until(lambda: worker_sessions(worker) == 0 and free_slots(worker) == slots, 60,
                    "the worker to release the session's slot")
        assert metric(mesh[0], "gpumesh_render_sessions", 'role="gateway"') == 0


CLIENT = textwrap.dedent("""
    import sys, trio
    from scheduler.client.client import Client, local_address, new_job
    from scheduler.client.realtime import open_session
    from worker.render.samples import example

    async def main(data_dir, peer):
        addr, tok, pid, insecure = local_address(data_dir)
        async with Client.connect(addr, token=tok, peer_id=pid, insecure=insecure) as c:
            scene = example("spheres", 64, 48)
            async with open_session(c, scene, fps=1.0, deadline_ms=10000.0, peers=[peer]) as s:
                await s.render(scene.camera.pose)
                print("open", flush=True)
                await trio.sleep_forever()

    trio.run(main, sys.argv[1], sys.argv[2])
""")


async def test_a_client_that_dies_mid_session_releases_the_slots(mesh):
    worker = mesh[1]
    slots = free_slots(worker)
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(mesh[0].data_dir), worker.peer_id],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == "open", f"the client did not open its session: {line!r}"
        assert worker_sessions(worker) == 1 and free_slots(worker) == slots - 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    await until(lambda: worker_sessions(worker) == 0 and free_slots(worker) == slots, 60,
                "the worker to release the dead client's slot")
    await until(lambda: metric(mesh[0], "gpumesh_render_sessions", 'role="gateway"') == 0, 60,
                "the gateway to end the dead client's session")


async def test_refusals_name_their_reason(mesh):
    scene = example("spheres", W, H)
    async with connect(mesh[0]) as c:
        with pytest.raises(RpcError) as e:
            async with open_session(c, scene, tiles=3, peers=[mesh[1].peer_id]):
                pass
        assert e.value.code == "unavailable" and "3 tile(s)" in e.value.message
        with pytest.raises(RpcError) as e:
            async with open_session(c, scene, fps=1e6):
                pass
        assert e.value.code == "bad_request" and "fps" in e.value.message


async def test_the_live_viewer_serves_a_page_through_a_session(mesh):
    scene = example("spheres", 32, 24)
    async with connect(mesh[0]) as c, trio.open_nursery() as nursery:
        viewer = Viewer(c, scene, tiles=1, deadline_ms=GENEROUS_MS, max_in_flight=2, realtime=True)
        port = await nursery.start(viewer.serve, "127.0.0.1", 0)
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
            assert json.loads(await ws.get_message())["type"] == "hello"
            for seq in range(3):
                await ws.send_message(json.dumps({"type": "pose", "seq": seq, **scene.camera.pose.to_dict()}))
                data = await ws.get_message()
                assert isinstance(data, bytes), data
                (n,) = struct.unpack(">I", data[:4])
                assert json.loads(data[4:4 + n])["seq"] == seq
                got = np.frombuffer(data[4 + n:], np.uint8).reshape(24, 32, 4)
                ref, _ = reference.render(scene)
                assert (np.abs(got.astype(int) - ref.astype(int)).max(-1) > 2).sum() <= 1
            sessions_open = metric(mesh[0], "gpumesh_render_sessions", 'role="gateway"')
        assert sessions_open == 1 and viewer.states[-1].sent == 3
        nursery.cancel_scope.cancel()
    await until(lambda: metric(mesh[0], "gpumesh_render_sessions", 'role="gateway"') == 0, 60,
                "the page's session to end")


def test_mesh_node_render_realtime_runs_a_session(mesh, tmp_path):
    out = subprocess.run([sys.executable, "-m", "scheduler.cli", "render", "examples/scenes/spheres.json", "--realtime",
                          "--frames", "4", "--fps", "1", "--deadline-ms", "10000", "--width", "48", "--height", "36",
                          "--tiles", "2", "--json", "--out", str(tmp_path), "--data-dir", str(mesh[0].data_dir)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["rendered"] == 4 and summary["dropped"] == 0
    assert len(summary["session"]["workers"]) == 2 and summary["session"]["bytes_per_frame"] > 0
    assert len(list(tmp_path.glob("frame_*.png"))) == 4
    refused = subprocess.run([sys.executable, "-m", "scheduler.cli", "render", "examples/scenes/spheres.json",
                              "--realtime", "--tiles", "9", "--data-dir", str(mesh[0].data_dir)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "unavailable" in refused.stderr and "Traceback" not in refused.stderr


@pytest.fixture(scope="module")
def fresh_mesh(tmp_path_factory):
    """A mesh whose nodes the tests below kill: the first kills node 1 (a worker), the second node 0 (the
    gateway), each test using only nodes the other leaves alive until it runs (one mesh start for both)."""
    with running_mesh(tmp_path_factory.mktemp("doomed-mesh"), 3, FAST) as nodes:
        yield nodes


async def test_a_killed_worker_ends_the_sessions_frames_with_a_clear_reason(fresh_mesh):
    gateway, victim = fresh_mesh[0], fresh_mesh[1]
    scene = example("spheres", W, H)
    async with connect(gateway) as c:
        async with open_session(c, scene, fps=SLOW_FPS, deadline_ms=GENEROUS_MS, peers=[victim.peer_id]) as s:
            assert not (await s.render(scene.camera.pose)).dropped
            victim.kill()
            with pytest.raises(SessionLost) as lost:
                for _ in range(50):  # frames sent before the loss is known come back dropped, naming it
                    f = await s.render(scene.camera.pose)
                    assert f.dropped and "lost" in f.reason and victim.peer_id in f.reason, f.reason
    assert victim.peer_id in str(lost.value)
    assert s.stats.delivered == 1
    wait_for(lambda: metric(gateway, "gpumesh_render_sessions", 'role="gateway"') == 0, 60,
             "the gateway to end the session")


async def test_a_lost_gateway_releases_the_workers_slots(fresh_mesh):
    gateway, worker = fresh_mesh[0], fresh_mesh[2]
    scene = example("spheres", W, H)
    slots = free_slots(worker)
    async with connect(gateway) as c:
        with pytest.raises(SessionLost):
            async with open_session(c, scene, fps=SLOW_FPS, deadline_ms=GENEROUS_MS, peers=[worker.peer_id]) as s:
                assert not (await s.render(scene.camera.pose)).dropped
                assert worker_sessions(worker) == 1
                gateway.kill()
                for _ in range(50):
                    await s.render(scene.camera.pose)
    await until(lambda: worker_sessions(worker) == 0 and free_slots(worker) == slots, 60,
                "the worker to release the lost gateway's slot")


async def test_a_session_mixes_a_tile_on_the_gateways_own_device_with_a_direct_one(mesh):
    scene = example("spheres", W, H)
    poses = orbit((0.0, 0.3, 0.0), 2.6, 1.0, 24)[::6]
    async with connect(mesh[0]) as c:
        async with open_session(c, scene, fps=SLOW_FPS, deadline_ms=GENEROUS_MS, tiles=2,
                                peers=[mesh[0].peer_id, mesh[1].peer_id]) as s:
            mine = s.workers.index(mesh[0].peer_id)
            assert sorted(s.direct) == [1 - mine], "the gateway's own tile is relayed, the other one direct"
            frames = [await s.render(p) for p in poses]
        for f in frames:
            ref_rgba, _ = reference.render(reference.prepare(scene), f.pose)
            assert not f.dropped, f.reason
            assert (np.abs(f.rgba.astype(int) - ref_rgba.astype(int)).max(axis=-1) > 2).sum() <= max(1, W * H // 1000)
    assert [t["rendered"] for t in s.ended["tiles"]] == [len(poses)] * 2


async def _raw_session(c, scene, worker):
    """A render.session opened by hand up to its ready answer: (call, ready)."""
    from worker.render.kind import encode_scene
    from worker.render.scene import content_hash
    body = {"scene_hash": content_hash(scene), "width": W, "height": H, "tiles": 1, "fps": SLOW_FPS,
            "deadline_ms": GENEROUS_MS, "peers": [worker.peer_id]}
    cm = c.rpc.open("render.session", body, uploads=True)
    call = await cm.__aenter__()
    await call.send_bytes(encode_scene(scene))
    await call.send({"scene": "end"})
    first = await call.receive()
    return cm, call, first["ready"]


async def test_a_session_ticket_opens_its_tile_once_and_only_its_tile(mesh):
    worker = mesh[2]
    scene = example("spheres", W, H)
    refused = metric(worker, "gpumesh_render_sessions_refused_total", 'reason="ticket"')

    async with connect(mesh[0]) as c:
        cm, call, ready = await _raw_session(c, scene, worker)
        try:
            offer = ready["attach"][0]
            assert offer["peer"] == worker.peer_id and offer["addr"] == f"127.0.0.1:{worker.data_port}"
            async with dial(offer, "session") as rpc:
                await forged_tickets_are_refused(rpc, "render.attach", offer["ticket"])
                job = {"job": new_job("echo", {"x": 1}).to_wire(trio.current_time())}
                await methods_are_refused(rpc, [("job.list", {}), ("job.submit", job), ("mesh.peers", {}),
                                                ("peer.offer", {}), ("peer.jobs", {}), ("render.session", {})])
                async with rpc.open("render.attach", {"ticket": offer["ticket"]}, uploads=True) as tile:
                    await call.send({"attached": [0]})
                    await tile.send({"f": 0, "pose": scene.camera.pose.to_dict(), "budget_ms": GENEROUS_MS})
                    item = await tile.receive()
                    assert item["f"] == 0 and isinstance(item["p"], bytes), sorted(item)
                    with pytest.raises(RpcError) as e:  # used: the same ticket opens nothing twice
                        await rpc.call("render.attach", {"ticket": offer["ticket"]})
                    assert e.value.code == "forbidden"
                    await tile.done_sending()
                    assert await tile.receive() is None
                    assert (await tile.result())["rendered"] == 1
            await call.done_sending()
            while await call.receive() is not None:
                pass
            assert (await call.result())["tiles"][0]["rendered"] == 1
        finally:
            await cm.__aexit__(None, None, None)
    assert metric(worker, "gpumesh_render_sessions_refused_total", 'reason="ticket"') == refused + 6
    await until(lambda: worker_sessions(worker) == 0, 60, "the tile to end")


async def test_an_unreachable_worker_leaves_its_tile_relayed(mesh):
    from scheduler.client import realtime
    async with connect(mesh[0]) as c, contextlib.AsyncExitStack() as stack:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()  # nothing listens there
        offers = [{"addr": f"127.0.0.1:{port}", "peer": mesh[1].peer_id, "ticket": "a.b"}, None, {"addr": 3}]
        assert await realtime._attach(stack, c, offers, 3) == {}
