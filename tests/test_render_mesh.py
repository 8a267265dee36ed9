"""render.frame on real node processes (a 3-node loopback mesh): a 30-frame stream arrives in order and matches
the reference renderer, a tiled frame equals the untiled one, and a worker that corrupts its tiles (the
test-only Faults.corrupt_render hook) is caught by the coordinator's spot-check: the frame is still
right and the worker's standing drops. Small frames keep it quick; waits are on conditions, with generous
deadlines (no timing assertions: the realtime deadlines here are far beyond any frame's cost)."""

import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import trio

from scheduler.client.client import Client, local_address
from scheduler.client.render_client import StreamStats, render_frame, render_stream
from scheduler.devtools.localmesh import make_nodes, running_mesh, sees_all, start_nodes, wait_for
from worker.faults import Faults
from worker.render import reference
from worker.render.camera import Tile, orbit
from worker.render.samples import example

FAST = ["--advert-interval", "0.5", "--advert-ttl", "10"]  # a long ttl: loaded CI machines deliver gossip late
W, H = 48, 36
GENEROUS_MS = 20_000  # a realtime deadline no frame here should come near: drops would mean a broken mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("render-mesh"), 3, FAST) as nodes:
        yield nodes


def connect(node):
    addr, tok, pid, insecure = local_address(node.data_dir)
    return Client.connect(addr, token=tok, peer_id=pid, insecure=insecure)


def assert_matches_reference(frame, prepared, what):
    """The kernel test's tolerance: >= 99.9% of pixels within 2/255 on every channel, same coverage, depth
    within 1e-4 relative (at 48x36 that allows one odd silhouette pixel)."""
    assert not frame.dropped, f"{what} dropped: {frame.reason}"
    ref_rgba, ref_depth = reference.render(prepared, frame.pose)
    close = np.abs(frame.rgba.astype(int) - ref_rgba.astype(int)).max(axis=-1) <= 2
    hit, ref_hit = np.isfinite(frame.depth), np.isfinite(ref_depth)
    both = hit & ref_hit
    rel = np.abs(frame.depth[both].astype(np.float64) - ref_depth[both]) / np.abs(ref_depth[both])
    allowed = max(1, int(0.001 * W * H))
    assert (~close).sum() <= allowed, f"{what}: {(~close).sum()} pixels off the reference"
    assert (hit != ref_hit).sum() <= allowed, f"{what}: coverage differs"
    assert (rel > 1e-4).sum() <= allowed, f"{what}: depth differs"


async def test_a_30_frame_stream_arrives_in_order_and_matches_the_reference(mesh):
    scene = example("spheres", W, H)
    prepared = reference.prepare(scene)
    poses = orbit((0.0, 0.3, 0.0), 2.6, 1.0, 30)
    stats = StreamStats()
    frames = []
    async with connect(mesh[0]) as c:
        async with render_stream(c, scene, poses, fps=60, deadline_ms=GENEROUS_MS, tiles=2, stats=stats) as rx:
            async for f in rx:
                frames.append(f)
    assert [f.index for f in frames] == list(range(30))
    assert [f.pose for f in frames] == poses
    for f in frames:
        assert_matches_reference(f, prepared, f"frame {f.index}")
        assert [t.tile for t in f.tiles] == Tile.grid(W, H, 1, 2)
    assert stats.rendered == 30 and stats.dropped == 0 and len(stats.latencies_s) == 30
    # the scene went with the warm-up jobs (and rides along, bounded, until every peer returned a result for
    # it); the stream's frames then carry only its hash
    sent = sum(t.scene_sent for f in frames for t in f.tiles)
    assert sent <= 3 * 4 + stats.scene_resends, "the scene rode along after every peer had it"
    assert len({t.worker for f in frames for t in f.tiles}) >= 2, "60 tiles all placed on one node"


async def test_a_tiled_frame_equals_the_untiled_frame(mesh):
    scene = example("mesh", W, H)
    pose = orbit((0.0, 0.3, 0.0), 2.6, 1.0, 8)[5]
    async with connect(mesh[1]) as c:
        whole = await render_frame(c, scene, pose, deadline_ms=GENEROUS_MS)
        tiled = await render_frame(c, scene, pose, tiles=3, deadline_ms=GENEROUS_MS)
        uneven = await render_frame(c, scene, pose, tiles=[Tile(0, 0, 10, H), Tile(10, 0, W - 10, 7),
                                                           Tile(10, 7, W - 10, H - 7)])
    assert not whole.dropped and not tiled.dropped and not uneven.dropped
    assert len(whole.tiles) == 1 and len(tiled.tiles) == 3 and len(uneven.tiles) == 3
    for f in (tiled, uneven):  # one kernel on every node here: tiles are exact crops of the frame
        np.testing.assert_array_equal(f.rgba, whole.rgba)
        np.testing.assert_array_equal(f.depth, whole.depth)
    assert_matches_reference(whole, reference.prepare(scene), "whole frame")


def standing_seen_by(node, peer_id: str) -> float:
    out = subprocess.run([sys.executable, "-m", "scheduler.cli", "peers", "--json", "--data-dir", str(node.data_dir)],
                         capture_output=True, text=True, timeout=60, check=True)
    return next(p["standing"] for p in json.loads(out.stdout) if p["peer_id"] == peer_id)


def metric(node, name: str, labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def mesh_with_a_corrupt_worker(tmp_path):
    """A coordinator that runs nothing itself (--devices none), an honest worker, and a worker started with
    the corrupt hook: every frame's tiles go to the two workers, so the corrupt one gets some."""
    coord, bad, good = make_nodes(tmp_path, 3, FAST)
    coord.extra += ["--devices", "none"]
    bad.faults = Faults(corrupt_render=True)
    try:
        start_nodes([coord, bad, good])
        wait_for(lambda: sees_all([coord, bad, good]), 90, "three nodes to see each other")
        yield coord, bad, good
    finally:
        for nd in (coord, bad, good):
            nd.kill()


async def test_a_worker_corrupting_its_tiles_is_caught_and_loses_standing(mesh_with_a_corrupt_worker):
    coord, bad, good = mesh_with_a_corrupt_worker
    scene = example("spheres", W, H)
    prepared = reference.prepare(scene)
    poses = orbit((0.0, 0.2, 0.0), 2.4, 0.8, 30)
    replaced = 0
    async with connect(coord) as c:
        for i, pose in enumerate(poses):
            f = await render_frame(c, scene, pose, tiles=4, deadline_ms=GENEROUS_MS)
            assert_matches_reference(f, prepared, f"frame {i}")
            assert f.workers == {good.peer_id}, "a corrupted tile was accepted"
            replaced += sum(t.attempt > 1 for t in f.tiles)
            standing = await trio.to_thread.run_sync(lambda: next(
                p["standing"] for p in coord.call("peers") if p["peer_id"] == bad.peer_id))
            if standing < 1.0 and replaced:
                break
        else:
            pytest.fail("the corrupt worker got no tile in 30 frames of 4 tiles (or was never caught)")
    assert await trio.to_thread.run_sync(standing_seen_by, coord, bad.peer_id) < 1.0
    assert await trio.to_thread.run_sync(standing_seen_by, coord, good.peer_id) == 1.0
    rejected = await trio.to_thread.run_sync(metric, coord, "gpumesh_render_tiles_verified_total",
                                             'outcome="rejected"')
    accepted = await trio.to_thread.run_sync(metric, coord, "gpumesh_render_tiles_verified_total",
                                             'outcome="accepted"')
    assert rejected >= 1 and accepted >= 1


def cli_args(*argv):
    import argparse

    from scheduler.cli import render_cli

    parser = argparse.ArgumentParser(prog="mesh-node")
    render_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["render", *argv])


async def test_mesh_node_render_writes_frames_depth_and_stats(mesh, tmp_path, capsys):
    from scheduler.cli import render_cli
    from worker.render.png import decode_png
    from worker.render.samples import EXAMPLES

    poses = orbit((0.0, 0.3, 0.0), 2.6, 1.0, 4)
    (tmp_path / "poses.json").write_text(json.dumps([p.to_dict() for p in poses]))
    out = tmp_path / "frames"
    args = cli_args(str(EXAMPLES / "mesh.json"), "--poses", str(tmp_path / "poses.json"), "--width", "40",
                    "--height", "30", "--fps", "50", "--tiles", "2", "--out", str(out),
                    "--data-dir", str(mesh[2].data_dir))
    assert await trio.to_thread.run_sync(render_cli.run, args) == 0
    printed = capsys.readouterr().out
    assert "4 frames of 40x30: 4 rendered, 0 dropped" in printed and "p99" in printed
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rendered"] == 4 and [f["frame"] for f in stats["frames_detail"]] == [0, 1, 2, 3]
    prepared = reference.prepare(example("mesh", 40, 30))
    for i, pose in enumerate(poses):
        rgba = decode_png((out / f"frame_{i:04d}.png").read_bytes())
        depth = np.load(out / f"frame_{i:04d}_depth.npy")
        assert rgba.shape == (30, 40, 4) and depth.shape == (30, 40) and depth.dtype == np.float32
        ref_rgba, _ = reference.render(prepared, pose)
        assert (np.abs(rgba.astype(int) - ref_rgba).max(axis=-1) > 2).sum() <= 2


def test_mesh_node_render_refuses_bad_arguments(tmp_path, capsys):
    from scheduler.cli.main import main  # its errors' exit statuses are mapped in one place
    from worker.render.samples import EXAMPLES

    assert main(["render", str(tmp_path / "missing.json")]) == 2
    assert main(["render", str(EXAMPLES / "spheres.json"), "--width", "64"]) == 2
    assert main(["render", str(EXAMPLES / "spheres.json"), "--width", "9000", "--height", "10"]) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "--height" in err and "width" in err


def test_default_orbit_circles_the_point_the_camera_looks_at():
    from scheduler.cli.render_cli import default_orbit

    for name in ("spheres", "mesh"):
        scene = example(name, 32, 24)
        poses = default_orbit(scene, 8)
        assert len(poses) == 8
        np.testing.assert_allclose(poses[0].position, scene.camera.position, atol=1e-6)
        centre = np.mean([p.position for p in poses], axis=0)
        radii = [np.linalg.norm(np.subtract(p.position, centre)) for p in poses]
        assert np.ptp(radii) < 1e-6 and radii[0] > 0.1


def test_default_orbit_frame_0_is_the_scene_camera_with_its_roll():
    """A rolled camera (30 degrees about its view axis): frame 0 is exactly its pose, and every frame of the
    orbit keeps the roll (the angle between the image's up and the world's vertical plane)."""
    import dataclasses
    import math

    from scheduler.cli.render_cli import default_orbit
    from worker.render.camera import look_at, matrix_to_quat, quat_to_matrix

    scene = example("spheres", 32, 24)
    base = look_at((0.5, 1.2, 3.0), (0.0, 0.3, 0.0))
    r = quat_to_matrix(base.orientation)
    a = math.radians(30)
    roll = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rolled = matrix_to_quat(r @ roll)
    scene = dataclasses.replace(scene, camera=dataclasses.replace(scene.camera, position=base.position,
                                                                  orientation=rolled))
    poses = default_orbit(scene, 12)
    assert poses[0].position == scene.camera.position and poses[0].orientation == scene.camera.orientation

    def roll_of(q):
        m = quat_to_matrix(q)
        right, _up, fwd = m[:, 0], m[:, 1], -m[:, 2]
        level = np.cross(fwd, (0.0, 1.0, 0.0))  # the right vector of an unrolled camera
        level /= np.linalg.norm(level)
        return math.degrees(math.atan2(np.dot(np.cross(level, right), fwd), np.dot(level, right)))

    assert abs(abs(roll_of(poses[0].orientation)) - 30) < 1e-6
    for p in poses:
        assert abs(roll_of(p.orientation) - roll_of(poses[0].orientation)) < 1e-6
        assert abs(p.position[1] - scene.camera.position[1]) < 1e-9
