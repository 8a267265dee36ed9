"""The render.frame job kind in-process: spec checks, the scene cache, both render paths, the cost model and
plan_tiles, and the spot-check verifier (honest, corrupted, malformed, unknown scene)."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import trio

from worker import faults
from worker.devices import Device
from worker.kinds import InputReader, KindRegistry, RunContext, SpecError
from worker.render import kind as rk
from worker.render import metrics as render_metrics
from worker.render import reference
from worker.render.camera import Tile, orbit
from worker.render.samples import example
from worker.render.scene import content_hash

W, H = 48, 36


@pytest.fixture(scope="module")
def scene():
    return example("spheres", W, H)


@pytest.fixture(scope="module")
def pose():
    return orbit((0.0, 0.3, 0.0), 2.6, 1.0, 8)[3]


@pytest.fixture
def cache():
    return rk.SceneCache(max_scenes=4)


@pytest.fixture(scope="module")
def dctx():
    from worker.render.opencl import default_queue

    ctx, queue = default_queue()
    return SimpleNamespace(device=SimpleNamespace(id="test-cl"), context=ctx, queue=queue)


def run(kind, spec, data=b"", cl=None):
    async def go():
        return await kind.run(RunContext("job#1", spec, InputReader(data, len(data)), device=None, cl=cl))
    return trio.run(go)


def device(gflops, kind="gpu", opencl=True):
    return Device(id="d", fingerprint="f", platform="", vendor="", name="", kind=kind, compute_units=1,
                  global_mem_bytes=1 << 30, max_work_group_size=64, fp64=False, int64=True, opencl=opencl,
                  f32_gflops=gflops)


# ---- spec ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,field", [
    ({"scene_hash": "0" * 64, "bogus": 1}, "bogus"),
    ({"scene_hash": "xyz"}, "scene_hash"),
    ({}, "scene_hash"),
    ({"scene_hash": "0" * 64, "pose": {"position": [0, 0, 0]}}, "pose"),
    ({"scene_hash": "0" * 64, "pose": {"position": [0, 0, 0], "orientation": [0, 0, 0, 2]}}, "pose"),
    ({"scene_hash": "0" * 64, "tile": {"x0": 0, "y0": 0, "w": 0, "h": 4}}, "tile.w"),
    ({"scene_hash": "0" * 64, "tile": {"x0": 0, "y0": 0, "w": 4}}, "tile.h"),
    ({"scene_hash": "0" * 64, "px_flops": -1}, "px_flops"),
    ({"scene": {"camera": {}}}, "scene"),
])
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(SpecError) as e:
        rk.RenderFrame(rk.SceneCache()).validate(spec, 0)
    assert e.value.field == field


def test_tile_outside_an_inline_scene_and_a_wrong_hash_are_refused(scene):
    k = rk.RenderFrame(rk.SceneCache())
    d = rk.make_spec(content_hash(scene), scene=scene, tile=Tile(40, 0, 20, 4))
    with pytest.raises(SpecError, match="outside") as e:
        k.validate(d, 0)
    assert e.value.field == "tile"
    with pytest.raises(SpecError) as e:
        k.validate(rk.make_spec("1" * 64, scene=scene), 0)
    assert e.value.field == "scene_hash"


def test_scene_in_the_input_round_trips_and_must_match_its_hash(scene, pose, cache):
    data = rk.encode_scene(scene)
    assert content_hash(rk.decode_scene(data)) == content_hash(scene)
    k = rk.RenderFrame(cache)
    with pytest.raises(SpecError, match="does not match"):
        run(k, rk.make_spec("2" * 64, pose), data)
    with pytest.raises(SpecError, match="msgpack"):
        run(k, rk.make_spec("2" * 64, pose), b"\xc1garbage")
    assert len(cache) == 0


# ---- running -----------------------------------------------------------------------------------------------------
def test_reference_path_sends_the_scene_once_then_renders_by_hash(scene, pose, cache):
    k = rk.RenderFrame(cache)
    h = content_hash(scene)
    tile = Tile(5, 7, 30, 20)
    with pytest.raises(rk.SceneNotCached) as e:
        run(k, rk.make_spec(h, pose, tile))
    assert rk.is_not_cached(str(e.value)) and h in str(e.value)
    first = run(k, rk.make_spec(h, pose, tile), rk.encode_scene(scene))
    again = run(k, rk.make_spec(h, pose, tile))  # by hash alone now
    want = reference.render(scene, pose, tile)
    for res in (first, again):
        assert res.body["tile"] == tile.to_dict() and res.body["scene_hash"] == h
        assert res.body["path"] == "reference" and (res.body["width"], res.body["height"]) == (W, H)
        rgba, depth = rk.decode_output(tile, res.output)
        np.testing.assert_array_equal(rgba, want[0])
        np.testing.assert_array_equal(depth, want[1])


def test_scene_inline_in_the_spec_and_the_default_pose_and_tile(scene, cache):
    k = rk.RenderFrame(cache)
    res = run(k, rk.make_spec(content_hash(scene), scene=scene))
    rgba, depth = rk.decode_output(Tile.full(W, H), res.output)
    np.testing.assert_array_equal(rgba, reference.render(scene)[0])


def test_opencl_path_matches_the_reference_and_a_tile_is_the_crop(scene, pose, cache, dctx):
    k = rk.RenderFrame(cache)
    h = content_hash(scene)
    full = run(k, rk.make_spec(h, pose), rk.encode_scene(scene), cl=dctx)
    assert full.body["path"] == "opencl" and full.body["device"] == "test-cl"
    rgba, depth = rk.decode_output(Tile.full(W, H), full.output)
    ref_rgba, ref_depth = reference.render(scene, pose)
    close = np.abs(rgba.astype(int) - ref_rgba.astype(int)).max(axis=-1) <= 2
    assert close.mean() >= 0.999
    tile = Tile(11, 3, 17, 29)
    part = run(k, rk.make_spec(h, pose, tile), cl=dctx)
    t_rgba, t_depth = rk.decode_output(tile, part.output)
    np.testing.assert_array_equal(t_rgba, rgba[3:32, 11:28])
    np.testing.assert_array_equal(t_depth, depth[3:32, 11:28])
    assert cache.get(h).on_device("test-cl")


def test_big_tiles_render_in_bands_with_checkpoints(scene, pose, cache):
    k = rk.RenderFrame(cache)
    spec = rk.make_spec(content_hash(scene), pose, px_flops=5e6)  # pretend heavy work: several bands
    checkpoints = []

    data = rk.encode_scene(scene)

    async def go():
        async def cp():
            checkpoints.append(1)
        return await k.run(RunContext("j#1", spec, InputReader(data, len(data)), checkpoint=cp))

    res = trio.run(go)
    assert len(checkpoints) >= 2
    np.testing.assert_array_equal(rk.decode_output(Tile.full(W, H), res.output)[0], reference.render(scene, pose)[0])


def test_bands_cover_the_tile_once():
    t = Tile(3, 5, 10, 7)
    bs = rk.bands(t, 3)
    assert sum(b.h for b in bs) == 7 and bs[0].y0 == 5 and all(b.x0 == 3 and b.w == 10 for b in bs)
    assert len(rk.bands(t, 100)) == 7


def test_corrupt_hook_corrupts_only_when_installed(scene, pose, cache):
    k = rk.RenderFrame(cache)
    h = content_hash(scene)
    honest = run(k, rk.make_spec(h, pose), rk.encode_scene(scene))
    with faults.installed(faults.Faults(corrupt_render=True)):
        bad = run(k, rk.make_spec(h, pose))
    again = run(k, rk.make_spec(h, pose))
    assert bad.output != honest.output and len(bad.output) == len(honest.output)
    assert again.output == honest.output  # uninstalled: honest again


def test_scene_cache_is_a_bounded_lru(scene):
    cache = rk.SceneCache(max_scenes=2)
    scenes = [example("spheres", 8 + i, 8) for i in range(3)]
    hashes = [cache.put(s).hash for s in scenes[:2]]
    assert cache.get(hashes[0]) is not None  # touch: scenes[1] is now the oldest
    cache.put(scenes[2])
    assert hashes[0] in cache and hashes[1] not in cache and len(cache) == 2


# ---- cost model and tiling ---------------------------------------------------------------------------------------
def test_cost_follows_pixels_device_speed_and_scene_upload(scene):
    k = rk.RenderFrame(rk.SceneCache())
    h = content_hash(scene)
    small = rk.make_spec(h, tile=Tile(0, 0, 8, 8), px_flops=3000)
    big = rk.make_spec(h, tile=Tile(0, 0, 48, 36), px_flops=3000)
    fast, slow, ref = device(1000.0), device(10.0, "cpu"), device(None, "reference", opencl=False)
    assert k.cost_s(small, 0, fast) < k.cost_s(big, 0, fast) < k.cost_s(big, 0, slow) < k.cost_s(big, 0, ref)
    carrying = k.cost_s(big, len(rk.encode_scene(scene)), fast)
    assert carrying > k.cost_s(big, 0, fast) + rk.SETUP_FIXED_S * 0.99
    assert 0 < k.chunk_s(big, 0, slow) <= k.cost_s(big, 0, slow)


def covered_once(tiles, w, h):
    grid = np.zeros((h, w), int)
    for t in tiles:
        grid[t.y0:t.y0 + t.h, t.x0:t.x0 + t.w] += 1
    return (grid == 1).all()


def test_plan_tiles_keeps_cheap_frames_whole_and_splits_expensive_ones():
    cheap = rk.plan_tiles(320, 240, 3, per_pixel_cost=1e-9, overhead_s=0.01)
    assert cheap.count == 1 and cheap.tiles[0] == Tile(0, 0, 320, 240)
    dear = rk.plan_tiles(1280, 720, 3, per_pixel_cost=1e-6, overhead_s=0.01)
    assert dear.count == 3 and dear.estimate_s < dear.single_s and covered_once(dear.tiles, 1280, 720)
    alone = rk.plan_tiles(1280, 720, 1, per_pixel_cost=1e-6, overhead_s=0.01)
    assert alone.count == 1
    # the break-even point moves with the overhead: same frame, costlier jobs, fewer tiles
    slow_net = rk.plan_tiles(1280, 720, 8, per_pixel_cost=1e-7, overhead_s=0.2)
    fast_net = rk.plan_tiles(1280, 720, 8, per_pixel_cost=1e-7, overhead_s=0.001)
    assert slow_net.count < fast_net.count


def test_plan_tiles_never_exceeds_candidates_or_rows_and_always_covers():
    rng = random.Random(7)
    for _ in range(200):
        w, h = rng.randint(1, 2000), rng.randint(1, 1200)
        n = rng.randint(1, 20)
        p = rk.plan_tiles(w, h, n, rng.uniform(0, 1e-5), rng.uniform(0, 0.1))
        assert 1 <= p.count <= min(max(n, 1), 16, h)
        assert covered_once(p.tiles, w, h)
        assert p.estimate_s <= p.single_s
    with pytest.raises(ValueError):
        rk.plan_tiles(0, 10, 3, 1e-6, 0.01)


# ---- verification ----------------------------------------------------------------------------------------------
@pytest.fixture
def honest(scene, pose):
    tile = Tile(4, 4, 40, 28)
    h = content_hash(scene)
    spec = rk.make_spec(h, pose, tile)
    res = rk.RenderFrame(rk.SceneCache()).reference(spec, rk.encode_scene(scene))
    return spec, rk.encode_scene(scene), res, tile


def job(spec, data):
    return SimpleNamespace(spec=spec, input=data)


def test_verifier_accepts_honest_tiles_and_caches_the_scene(honest, cache):
    spec, data, res, tile = honest
    check = rk.SpotCheck(cache=cache)
    assert check.check(spec, data, res.body, res.output) is None
    assert check.check(spec, None, res.body, res.output) is None  # by hash: the scene was cached above


def test_verifier_rejects_corrupted_tiles(honest, cache):
    spec, data, res, tile = honest
    rgba, depth = rk.decode_output(tile, res.output)
    check = rk.SpotCheck(cache=cache)
    for c, d in (rk.corrupt(rgba, depth), (rgba, depth * np.float32(1.01)), (np.zeros_like(rgba), depth)):
        reason = check.check(spec, data, res.body, rk.encode_output(c, d))
        assert reason is not None and "spot-check" in reason


def test_verifier_rejects_wrong_shapes_and_bodies(honest, cache):
    spec, data, res, tile = honest
    check = rk.SpotCheck(cache=cache)
    assert "malformed output" in check.check(spec, data, res.body, res.output[:-4])
    other = dict(res.body, tile={"x0": 0, "y0": 0, "w": 40, "h": 28})
    assert "asked for" in check.check(spec, data, other, res.output)
    assert "scene" in check.check(spec, data, dict(res.body, scene_hash="3" * 64), res.output)


def test_verifier_tolerates_a_few_edge_pixels_but_not_more(honest, cache):
    spec, data, res, tile = honest
    rgba, depth = rk.decode_output(tile, res.output)
    n = tile.w * tile.h
    check = rk.SpotCheck(cache=cache, samples=n, more_samples=0)  # sample every pixel: deterministic
    few = rgba.copy()
    few.reshape(-1, 4)[[3, 500]] ^= np.uint8(0x40)
    assert check.check(spec, data, res.body, rk.encode_output(few, depth)) is None
    more = rgba.copy()
    more.reshape(-1, 4)[[3, 500, 900]] ^= np.uint8(0x40)
    assert check.check(spec, data, res.body, rk.encode_output(more, depth)) is not None


def test_verifier_passes_unknown_scenes_as_unverifiable(honest):
    spec, data, res, tile = honest
    before = render_metrics.TILES_VERIFIED.labels("unverifiable")._value.get()
    assert rk.SpotCheck(cache=rk.SceneCache()).check(spec, None, res.body, res.output) is None
    assert render_metrics.TILES_VERIFIED.labels("unverifiable")._value.get() == before + 1


def test_a_streamed_scene_is_read_from_the_spool_only_when_not_cached(honest):
    """A scene over the inline limit travels streamed: the coordinator's verifier reads its spooled copy
    (once; later tiles of the same scene find it in the cache) and catches a corrupted tile."""
    spec, data, res, tile = honest
    streamed = SimpleNamespace(spec=spec, input=None, input_size=len(data))
    reads = []

    def read_input():
        reads.append(1)
        return data

    check = rk.SpotCheck(cache=rk.SceneCache())
    assert check.check(spec, None, res.body, res.output, read_input, len(data)) is None
    assert check.check(spec, None, res.body, res.output, read_input, len(data)) is None
    assert len(reads) == 1
    rgba, depth = rk.decode_output(tile, res.output)
    bad = rk.encode_output(*rk.corrupt(rgba, depth))
    assert "spot-check" in check.check(spec, None, res.body, bad, read_input, len(data))
    assert rk.verify_result(streamed, res, res.output, read_input) is None  # the service's hook passes it on


def test_service_verifier_hook_turns_spec_errors_into_rejections(honest):
    spec, data, res, tile = honest
    assert rk.verify_result(job(spec, data), res, res.output) is None
    assert "cannot check" in rk.verify_result(job({"bogus": 1}, None), res, res.output)


def test_the_render_family_registers_the_kind_and_its_verifier():
    registry, verifiers = KindRegistry(), {}
    rk.FAMILY.register(registry, verifiers)
    assert registry.get(rk.NAME) is rk.RENDER_FRAME and verifiers == {rk.NAME: rk.verify_result}
