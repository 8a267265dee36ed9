"""Several OpenCL devices per frame on one node (issue 22): a render.frame job borrows the node's other idle
OpenCL devices for its duration and splits its rows over them. The lending is checked in the pure queue
core; the whole path on a real node process whose PoCL exposes two devices (POCL_DEVICES="pthread pthread"):
the job's result says both devices rendered rows and the frame matches the reference."""

import numpy as np

from scheduler.client.client import Client, local_address
from scheduler.devtools.localmesh import make_nodes, start_nodes, wait_for
from tests.opencl import requires_opencl
from worker.executor import Priority, PriorityQueues
from worker.render import reference
from worker.render.camera import Tile, look_at
from worker.render.kind import NAME, decode_output, make_spec, split_rows
from worker.render.samples import example


def test_only_an_idle_device_lends_a_slot_and_a_lent_slot_is_not_granted():
    q = PriorityQueues({"a": 1, "b": 1, "c": 1})
    q.admit("busy", "c", Priority.BATCH, 1.0, 1.0, None, 0.0)
    q.admit("waiting", "c", Priority.BATCH, 1.0, 1.0, None, 0.0)
    q.grant("c", 0.0)  # c: one running, one queued
    assert q.lend("b", "job") and q.counts("b") == (1, 0, 0)
    assert not q.lend("b", "other")  # no free slot left
    assert not q.lend("c", "job")  # busy with a queue: never lent
    assert not q.lend("nope", "job")
    q.admit("later", "b", Priority.INTERACTIVE, 0.1, 0.1, None, 0.0)
    started, _ = q.grant("b", 0.0)
    assert started == []  # the lent slot is not given out...
    q.give_back("b", "job")
    started, _ = q.grant("b", 0.0)
    assert [e.job_id for e in started] == ["later"]  # ...until it is given back
    q.hold("a", True)
    assert not q.lend("a", "job")  # a quarantined device lends nothing


def test_split_rows_follows_the_rates_and_covers_the_tile_once():
    t = Tile(3, 10, 20, 9)
    parts = split_rows(t, [1.0, 2.0])
    assert [p.h for p in parts] == [3, 6] and parts[0].y0 == 10 and parts[1].y0 == 13
    assert split_rows(Tile(0, 0, 4, 1), [1.0, 1.0]) in ([None, Tile(0, 0, 4, 1)], [Tile(0, 0, 4, 1), None])
    assert [p.h for p in split_rows(t, [0.0, 0.0])] == [4, 5]


@requires_opencl
async def test_a_node_with_two_pocl_devices_renders_one_frame_on_both(tmp_path):
    nodes = make_nodes(tmp_path, 1, ["--advert-interval", "0.5"])
    nodes[0].env["POCL_DEVICES"] = "pthread pthread"
    try:
        start_nodes(nodes)
        nd = nodes[0]

        def two_devices():
            peers = nd.call("peers")
            me = [p for p in peers if p["peer_id"] == nd.peer_id]
            return me and len(me[0].get("devices", [])) >= 2 and me[0]["devices"]

        devices = wait_for(two_devices, 60, "the node to advertise two OpenCL devices")
        assert len({d["id"] for d in devices}) == 2
        scene = example("spheres", 64, 48)
        pose = look_at((1.2, 1.0, 2.4), (0.0, 0.3, 0.0))
        addr, tok, pid, insecure = local_address(nd.data_dir)
        from worker.render.kind import encode_scene
        from worker.render.scene import content_hash

        async with Client.connect(addr, token=tok, peer_id=pid, insecure=insecure) as c:
            res = await c.run(NAME, make_spec(content_hash(scene), pose), input=encode_scene(scene))
        assert res.ok, res.reason
        assert sorted(res.body["devices"]) == sorted(d["id"] for d in devices), res.body
        rgba, depth = decode_output(Tile.full(64, 48), res.output)
        ref, ref_depth = reference.render(scene, pose)
        assert (np.abs(rgba.astype(int) - ref.astype(int)).max(-1) > 2).sum() <= 3
        assert (np.isfinite(depth) != np.isfinite(ref_depth)).sum() <= 3
    finally:
        for n in nodes:
            n.kill()


