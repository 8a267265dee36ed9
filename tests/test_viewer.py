"""The live viewer (issue 22): its pose/frame bookkeeping and message validation on their own, and the real
page in a real headless Chromium (Debian's `chromium`) against a real 2-node mesh: the page orbits by itself,
at least 30 frames arrive and are drawn, and the pixels the page drew (read back from its WebGL canvas) match
the numpy reference renderer at the poses the page sent. Waits are on conditions, never on timing."""

import base64
import json
import struct

import numpy as np
import pytest
import trio
import trio_websocket

from scheduler.client.client import Client, local_address
from scheduler.client.render_client import Frame
from scheduler.client.viewer import (
    BadMessage,
    PoseRequest,
    Viewer,
    ViewerState,
    encode_frame,
    orbit_target,
    parse_listen,
    parse_pose_message,
)
from scheduler.devtools import chromium
from scheduler.devtools.localmesh import running_mesh
from worker.render import reference
from worker.render.camera import Pose
from worker.render.samples import example

FAST = ["--advert-interval", "0.5", "--advert-ttl", "10"]
W, H = 96, 72
FRAMES = 30


def _pose_msg(seq, **kw):
    d = {"type": "pose", "seq": seq, "position": [0, 1, 2], "orientation": [0, 0, 0, 1], **kw}
    return json.dumps(d)


def test_pose_messages_are_validated():
    req = parse_pose_message(_pose_msg(3))
    assert req == PoseRequest(3, Pose((0.0, 1.0, 2.0), (0.0, 0.0, 0.0, 1.0)))
    for bad, match in [(b"\x00", "text"), ("{", "not JSON"), (json.dumps({"type": "x"}), "type"),
                       (_pose_msg(-1), "seq"), (_pose_msg(True), "seq"), (_pose_msg(1, orientation=[0, 0, 0, 2]),
                                                                           "unit length"),
                       (_pose_msg(1, position=[0, "a", 0]), "position"), (_pose_msg(1, extra=1), "pose")]:
        if match == "pose":
            assert parse_pose_message(bad).seq == 1  # unknown keys beside the pose are ignored
            continue
        with pytest.raises(BadMessage, match=match):
            parse_pose_message(bad)


def test_newest_pose_wins_and_old_frames_are_not_sent():
    s = ViewerState()
    p = Pose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    assert s.offer(PoseRequest(1, p)) == (True, None)
    assert s.offer(PoseRequest(2, p)) == (True, PoseRequest(1, p))  # 1 is skipped: the page is told
    assert s.skipped == 1 and s.take().seq == 2 and s.take() is None
    assert s.offer(PoseRequest(2, p)) == (False, None)  # an old or repeated seq is ignored
    assert s.offer(PoseRequest(5, p))[0] and s.take().seq == 5
    assert s.finished(5, None) == "send" and s.finished(2, None) == "stale"
    assert s.finished(6, "deadline: late") == "drop"
    assert (s.sent, s.stale, s.dropped, s.reasons) == (1, 1, 1, {"deadline": 1})


def test_frame_encoding_and_listen_addresses():
    rgba = np.arange(4 * 3 * 4, dtype=np.uint8).reshape(3, 4, 4)
    f = Frame(0, Pose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), rgba, np.zeros((3, 4), np.float32), 0.01)
    data = encode_frame(f, 7, ViewerState())
    (n,) = struct.unpack(">I", data[:4])
    header = json.loads(data[4:4 + n])
    assert header["seq"] == 7 and (header["width"], header["height"]) == (4, 3)
    assert data[4 + n:] == rgba.tobytes()
    assert parse_listen("8080") == ("127.0.0.1", 8080) and parse_listen("0.0.0.0:81") == ("0.0.0.0", 81)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("x:y")
    scene = example("spheres", 32, 24)
    t = np.asarray(orbit_target(scene))
    assert np.linalg.norm(t - np.asarray(scene.camera.position)) >= 1.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("viewer-mesh"), 2, FAST) as nodes:
        yield nodes


def connect(node):
    addr, tok, pid, insecure = local_address(node.data_dir)
    return Client.connect(addr, token=tok, peer_id=pid, insecure=insecure)


async def test_the_server_refuses_bad_messages_and_serves_only_the_page(mesh):
    scene = example("spheres", 32, 24)
    async with connect(mesh[0]) as c, trio.open_nursery() as nursery:
        viewer = Viewer(c, scene, tiles=None)
        port = await nursery.start(viewer.serve, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 404")
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        page = b""
        while chunk := await stream.receive_some(65536):
            page += chunk
        assert page.startswith(b"HTTP/1.1 200") and b"viewer.js" in page
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
            hello = json.loads(await ws.get_message())
            assert hello["type"] == "hello" and (hello["width"], hello["height"]) == (32, 24)
            await ws.send_message("not json")
            assert json.loads(await ws.get_message())["type"] == "error"
            await ws.send_message(_pose_msg(0, **scene.camera.pose.to_dict()))
            data = await ws.get_message()
            (n,) = struct.unpack(">I", data[:4])
            header = json.loads(data[4:4 + n])
            assert header["seq"] == 0
            ref, _ = reference.render(scene)
            got = np.frombuffer(data[4 + n:], np.uint8).reshape(24, 32, 4)
            assert (np.abs(got.astype(int) - ref.astype(int)).max(-1) > 2).sum() <= 1
        assert viewer.states[-1].bad == 1 and viewer.states[-1].sent == 1
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(chromium.find() is None,
                    reason=f"no Chromium: install the Debian package '{chromium.PACKAGE}' (apt-get install chromium)")
async def test_the_page_in_headless_chromium_shows_30_frames_that_match_the_reference(mesh, tmp_path):
    scene = example("ar", W, H)
    prepared = reference.prepare(scene)
    async with connect(mesh[0]) as c, trio.open_nursery() as nursery:
        viewer = Viewer(c, scene, tiles="auto")
        port = await nursery.start(viewer.serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{port}/?orbit=auto&speed=40&keep={FRAMES + 10}"
        with chromium.launch(url) as browser:
            async with browser.page() as page:
                await page.wait_for(f"window.viewer && window.viewer.state.shown >= {FRAMES + 2}", 240,
                                    f"{FRAMES + 2} frames on the page")
                # one evaluation: frames keep arriving, the three must describe the same moment
                stats, log, kept = await page.evaluate(
                    "[window.viewer.stats(), window.viewer.log(), window.viewer.kept()]")
                hud = await page.evaluate("document.getElementById('hud').textContent")
                # the mouse: a vertical drag pitches the orbit (the auto orbit only turns the yaw)
                pitch0 = await page.evaluate("window.viewer.state.pitch")
                box = await page.evaluate("(() => { const r = document.getElementById('view')"
                                          ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
                await page.mouse("mousePressed", box[0], box[1])
                await page.mouse("mouseMoved", box[0], box[1] + 40)
                await page.mouse("mouseReleased", box[0], box[1] + 40, buttons=0)
                pitch1 = await page.evaluate("window.viewer.state.pitch")
                await page.screenshot(tmp_path / "viewer.png")
        nursery.cancel_scope.cancel()
    assert stats["connected"] and stats["errors"] == 0 and stats["renderer"] == "webgl", stats
    assert stats["shown"] >= FRAMES + 2 and len(log) >= FRAMES
    # every pose the page sent got exactly one answer (or is still in flight)
    assert stats["shown"] + stats["dropped"] + stats["skipped"] + stats["stale"] + stats["pending"] == stats["sent"]
    seqs = [e["seq"] for e in log]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, each once
    assert all(e["latency_ms"] is not None and e["latency_ms"] > 0 for e in log)
    assert "latency" in hud and "fps" in hud and "dropped" in hud
    assert abs(pitch1 - pitch0) > 0.2  # 40 px at 0.01 rad/px
    poses = {e["seq"]: e["pose"] for e in log}
    assert len({tuple(p["position"]) for p in poses.values()}) >= FRAMES  # the camera really orbits
    checked = 0
    for k in kept:
        pose = Pose(tuple(poses[k["seq"]]["position"]), tuple(poses[k["seq"]]["orientation"]))
        drawn = np.frombuffer(base64.b64decode(k["pixels"]), np.uint8).reshape(H, W, 4)
        ref, _ = reference.render(prepared, pose)
        off = (np.abs(drawn.astype(int) - ref.astype(int)).max(-1) > 2).sum()
        assert off <= max(1, int(0.001 * W * H)), f"frame {k['seq']}: {off} pixels drawn differ from the reference"
        assert (drawn[..., 3] == 0).any() and (drawn[..., 3] == 255).any()  # transparent AR frame, solid objects
        checked += 1
    assert checked >= FRAMES
    assert (tmp_path / "viewer.png").stat().st_size > 1000


def test_mesh_node_render_serve_prints_the_url_serves_the_page_and_stops_on_interrupt(mesh):
    import signal
    import subprocess
    import sys
    import urllib.request

    from worker.render.samples import EXAMPLES

    proc = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "render", str(EXAMPLES / "spheres.json"),
                             "--width", "32", "--height", "24", "--serve", "127.0.0.1:0",
                             "--data-dir", str(mesh[0].data_dir)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "viewer of" in line and "http://127.0.0.1:" in line, line
        url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and b"<canvas" in r.read()
        with urllib.request.urlopen(url + "viewer.js", timeout=10) as r:
            assert b"WebSocket" in r.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_mesh_node_render_serve_refuses_a_bad_address(capsys):
    from scheduler.cli.main import main
    from worker.render.samples import EXAMPLES

    for bad in ("host:port", "127.0.0.1:70000"):
        assert main(["render", str(EXAMPLES / "spheres.json"), "--serve", bad]) == 2  # main maps the errors
    err = capsys.readouterr().err
    assert "HOST:PORT" in err and "[0, 65535]" in err
