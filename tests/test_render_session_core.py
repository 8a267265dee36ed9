"""Render sessions, the pure parts: hostile requests and frames refused with a reason, the frame-time EWMA and
admission, a worker's tile dropping frames it can no longer finish (time passed in), per-owner limits, device
choice over distinct hosts, the client's frame assembly, and the tile codec (lossless colour, bounded depth
error, deltas that need their base)."""

import math

import lz4.block
import numpy as np
import pytest

from scheduler.core.render_session import (
    MAX_PENDING,
    Candidate,
    Drop,
    FrameAssembly,
    FrameRequest,
    FrameTimes,
    Render,
    SessionError,
    TenantSessions,
    WorkerTile,
    admit,
    choose_devices,
    parse_frame,
    parse_session_request,
    parse_tile_open,
    split_frame,
)
from worker.render.camera import Pose, Tile
from worker.render.frame_codec import (
    BYTES_PER_PIXEL,
    MAX_SKIP,
    CodecError,
    TileDecoder,
    TileEncoder,
    depth_tolerance,
    quantize_depth,
)

POSE = {"position": [0.0, 1.0, 3.0], "orientation": [0.0, 0.0, 0.0, 1.0]}
HASH = "ab" * 32


def good_request(**kw):
    body = {"scene_hash": HASH, "width": 320, "height": 240, "tiles": 2, "fps": 30.0, "deadline_ms": 33.0}
    body.update(kw)
    return body


def test_a_good_session_request_parses():
    r = parse_session_request(good_request(peers=["a", "b"]))
    assert (r.width, r.height, r.tiles, r.fps, r.deadline_ms, r.peers) == (320, 240, 2, 30.0, 33.0, ("a", "b"))


@pytest.mark.parametrize("bad", [
    {"scene_hash": "xyz"}, {"width": 0}, {"width": 5000}, {"height": 1.5}, {"tiles": 0}, {"tiles": 17},
    {"tiles": True}, {"fps": 0}, {"fps": math.inf}, {"fps": 1e9}, {"deadline_ms": -1}, {"deadline_ms": math.nan},
    {"deadline_ms": 1e7}, {"peers": "a"}, {"peers": ["x" * 500]}, {"peers": ["p"] * 40}, {"surprise": 1},
])
def test_hostile_session_requests_are_refused_with_a_reason(bad):
    with pytest.raises(SessionError) as e:
        parse_session_request(good_request(**bad))
    assert e.value.code == "bad_request" and e.value.message


@pytest.mark.parametrize("bad", [
    None, [], {"f": -1, "pose": POSE}, {"f": "1", "pose": POSE}, {"f": True, "pose": POSE}, {"f": 1},
    {"f": 1, "pose": {"position": [0, 0, 1e9], "orientation": [0, 0, 0, 1]}},
    {"f": 1, "pose": {"position": [0, 0, math.nan], "orientation": [0, 0, 0, 1]}},
    {"f": 1, "pose": {"position": [0, 0, 0], "orientation": [0, 0, 0, 2]}},
    {"f": 1, "pose": POSE, "budget_ms": 1e6}, {"f": 1, "pose": POSE, "budget_ms": -5},
])
def test_hostile_frames_are_refused(bad):
    with pytest.raises(SessionError):
        parse_frame(bad, 33.0)


def test_a_frame_parses_with_the_session_deadline_as_its_default_budget():
    f = parse_frame({"f": 7, "pose": POSE}, 33.0)
    assert f.index == 7 and f.budget_ms == 33.0 and f.pose.position == (0.0, 1.0, 3.0)


def test_a_tile_request_must_lie_inside_its_frame():
    body = {"session": "s1", "scene_hash": HASH, "width": 64, "height": 48, "tile": {"x0": 0, "y0": 40, "w": 64,
                                                                                       "h": 8}, "fps": 30,
            "deadline_ms": 33}
    assert parse_tile_open(body).tile == Tile(0, 40, 64, 8)
    for tile in ({"x0": 0, "y0": 41, "w": 64, "h": 8}, {"x0": 0, "y0": 0, "w": 0, "h": 8}, {"x0": 0, "y0": 0},
                 {"x0": 0.5, "y0": 0, "w": 1, "h": 1}):
        with pytest.raises(SessionError):
            parse_tile_open({**body, "tile": tile})


def test_frame_times_follow_the_measurements():
    t = FrameTimes()
    assert math.isinf(t.estimate_s())
    for _ in range(30):
        t.observe(0.010)
    assert t.estimate_s() == pytest.approx(0.010, rel=1e-6)
    for _ in range(30):
        t.observe(0.020)
    assert 0.019 < t.estimate_s() < 0.0215  # moved to the new level (mean plus a decaying deviation)
    t.observe(math.nan)
    t.observe(-1.0)
    assert t.count == 60


def test_admission_uses_the_measured_frame_time():
    t = FrameTimes()
    t.observe(0.040)
    assert "deadline" in admit(t, 10.0, 33.0)
    assert "keep up" in admit(t, 30.0, 100.0)
    assert admit(t, 20.0, 50.0) is None


def frame(i: int, budget_ms: float = 33.0) -> FrameRequest:
    return FrameRequest(i, Pose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), budget_ms)


def test_a_worker_drops_a_frame_it_can_no_longer_finish_before_rendering_it():
    w = WorkerTile()
    w.times.observe(0.010)
    assert w.arrive(frame(0), now=100.0) == []
    assert isinstance(w.next(now=100.0), Render)
    w.rendered(0.010)
    w.arrive(frame(1), now=100.010)
    act = w.next(now=100.040)  # 3 ms left, frames take 10 ms
    assert isinstance(act, Drop) and act.reason == "deadline" and act.index == 1
    w.arrive(frame(2, budget_ms=0.0), now=101.0)
    assert isinstance(w.next(now=101.0), Drop)
    assert w.counts()["rendered"] == 1 and w.counts()["dropped"] == {"deadline": 2}


def test_a_worker_drops_the_oldest_frames_when_too_many_wait_and_refuses_stale_ones():
    w = WorkerTile()
    drops = []
    for i in range(MAX_PENDING + 2):
        drops += w.arrive(frame(i), now=0.0)
    assert [d.index for d in drops] == [0, 1] and {d.reason for d in drops} == {"overrun"}
    assert w.arrive(frame(3), now=0.0)[0].reason == "stale"
    assert isinstance(w.next(now=0.0), Render)
    assert w.next(now=0.0).index == 3


def test_owners_have_a_session_limit_and_closing_frees_it():
    s = TenantSessions(2)
    s.open("alice", "a1")
    s.open("alice", "a2")
    s.open("bob", "b1")
    with pytest.raises(SessionError) as e:
        s.open("alice", "a3")
    assert e.value.code == "limit"
    s.close("alice", "a1")
    s.open("alice", "a3")
    assert s.count("alice") == 2 and s.count() == 3


def test_devices_are_chosen_on_distinct_hosts_first():
    cands = [Candidate("p1", "0", "hostA", 1, 100.0), Candidate("p2", "0", "hostA", 1, 90.0),
             Candidate("p3", "0", "hostB", 1, 10.0), Candidate("p4", "0", "hostC", 0, 500.0),
             Candidate("p5", "0", "hostD", 1, 50.0, standing=0.1)]
    assert [c.peer_id for c in choose_devices(cands, 2)] == ["p1", "p3"]
    assert [c.peer_id for c in choose_devices(cands, 3)] == ["p1", "p3", "p4"]  # p4's advert may lag: tried last
    assert [c.peer_id for c in choose_devices(cands, 5)] == ["p1", "p3", "p4", "p2"]  # p5's standing is too low


def test_a_frame_splits_into_bands_covering_every_row():
    tiles = split_frame(320, 240, 3)
    assert sum(t.h for t in tiles) == 240 and all(t.w == 320 for t in tiles) and tiles[0].y0 == 0


def test_the_client_assembles_frames_in_order_and_counts_drops():
    a = FrameAssembly(2, 0.033)
    a.issue(0, 0.0)
    a.issue(1, 0.010)
    a.issue(2, 0.020)
    assert a.tile(1, 0, 0.015) and a.tile(1, 1, 0.016)
    assert a.take() == []  # frame 0 still waits: order is kept
    assert a.tile(0, 1, 0.020)
    a.tile_dropped(2, 0, "deadline: 1 ms left")
    a.expire(0.034)  # frame 0's second tile never came
    done = a.take()
    assert [(d.index, d.dropped.split(":")[0]) for d in done] == [(0, "deadline"), (1, ""), (2, "deadline")]
    assert a.delivered == 1 and a.dropped == {"deadline": 2}
    assert not a.tile(2, 1, 0.03)  # a tile of a finished frame is not wanted


def test_a_tile_after_the_deadline_drops_its_frame():
    a = FrameAssembly(1, 0.010)
    a.issue(0, 0.0)
    assert not a.tile(0, 0, 0.5)
    assert a.take()[0].dropped.startswith("deadline")


def rendered(seed: int, w: int = 40, h: int = 30):
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[: h // 2] = 0  # an empty half, as an AR frame's background
    depth = rng.uniform(0.1, 80.0, (h, w)).astype(np.float32)
    depth[: h // 2] = np.inf
    return rgba, depth


def test_the_codec_is_lossless_for_colour_and_bounded_for_depth_over_key_and_delta_tiles():
    enc, dec = TileEncoder(), TileDecoder()
    base_rgba, base_depth = rendered(1)
    kinds = []
    for i in range(12):
        rgba, depth = base_rgba.copy(), base_depth.copy()
        rgba[20 + i % 5, 3:9] = i  # a small change: the delta wins
        if i == 6:
            rgba, depth = rendered(99)  # everything changed: a key tile wins
        t = enc.encode(rgba, depth)
        kinds.append(t.key)
        c, d = dec.decode(t.header(), t.payload, 40, 30)
        np.testing.assert_array_equal(c, rgba)
        assert (np.isinf(d) == np.isinf(depth)).all()
        fin = np.isfinite(depth)
        assert (np.abs(d[fin] - depth[fin]) <= depth_tolerance(depth)[fin]).all()
    assert kinds[0] and not all(kinds[1:]), "no tile went as a delta"
    assert len(t.payload) < 40 * 30 * BYTES_PER_PIXEL


def test_the_decoder_refuses_bad_payloads_and_deltas_without_their_base():
    enc = TileEncoder()
    rgba, depth = rendered(2)
    first = enc.encode(rgba, depth)
    rgba2 = rgba.copy()
    rgba2[25, 0] = 1
    second = enc.encode(rgba2, depth)
    assert not second.key
    with pytest.raises(CodecError):
        TileDecoder().decode(second.header(), second.payload, 40, 30)  # its base was never seen
    dec = TileDecoder()
    with pytest.raises(CodecError):
        dec.decode(first.header(), first.payload, 41, 30)  # wrong size for the tile
    with pytest.raises(CodecError):
        dec.decode({**first.header(), "n": 10 ** 9}, first.payload, 40, 30)
    with pytest.raises(CodecError):
        dec.decode(first.header(), b"\xff" * 50, 40, 30)
    bomb = lz4.block.compress(bytes(40 * 30 * BYTES_PER_PIXEL * 4), store_size=False)
    with pytest.raises(CodecError):
        dec.decode(first.header(), bomb, 40, 30)  # decompresses past the tile's size: refused
    with pytest.raises(CodecError):
        dec.decode("nope", first.payload, 40, 30)


def test_the_decoders_half_to_float_conversion_is_exact_for_every_half_and_decodes_in_place():
    from worker.render.frame_codec import half_to_float32

    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    positive = every[(every.view(np.uint16) >= 0x0400) & (every.view(np.uint16) < 0x8000)]  # the integer path
    for halves in (every, positive, np.array([np.inf, 1.0, 65504.0], np.float16)):
        got = half_to_float32(halves, np.empty(halves.shape, np.float32))
        want = halves.astype(np.float32)
        same = np.isnan(want)
        assert np.isnan(got[same]).all()
        np.testing.assert_array_equal(got[~same].view(np.uint32), want[~same].view(np.uint32))
    enc, dec, dec2 = TileEncoder(), TileDecoder(), TileDecoder()
    frame_rgba = np.zeros((50, 60, 4), np.uint8)
    frame_depth = np.zeros((50, 60), np.float32)
    for seed in (3, 3, 4):
        rgba, depth = rendered(seed)
        t = enc.encode(rgba, depth)
        c, d = dec.decode(t.header(), t.payload, 40, 30)
        c2, d2 = dec2.decode(t.header(), t.payload, 40, 30, frame_rgba[5:35, 7:47], frame_depth[5:35, 7:47])
        np.testing.assert_array_equal(c2, c)
        np.testing.assert_array_equal(d2, d)
        np.testing.assert_array_equal(frame_rgba[5:35, 7:47], rgba)  # written in the frame's own arrays
        assert frame_rgba[:5].sum() == 0 and (frame_depth[:, :7] == 0).all()


def test_the_gateway_passes_on_only_well_formed_tile_messages():
    from scheduler.node.session_wire import check_tile_item, tile_payload_bound

    bound = tile_payload_bound(Tile(0, 0, 40, 30))
    good = {"f": 3, "tile": {"key": True, "seq": 1, "n": 7200}, "p": b"x" * 100, "render_ms": 1.0, "est_ms": 2.0}
    assert check_tile_item(good, bound) is None
    assert check_tile_item({"f": 4, "drop": "deadline: 1 ms left"}, bound) is None
    for bad in ({**good, "p": b"x" * (bound + 1)}, {**good, "f": -1}, {**good, "f": True}, {**good, "p": "str"},
                {**good, "extra": 1}, {**good, "render_ms": "slow"}, {"f": 1, "drop": 5}, {"f": 1, "drop": "x" * 5000},
                {k: v for k, v in good.items() if k != "tile"}):
        assert check_tile_item(bad, bound) is not None, bad



def test_the_encoders_fast_half_float_conversion_matches_numpy_bit_for_bit():
    rng = np.random.default_rng(7)
    lo, inf = 0x38800000, 0x7F800000  # 2**-14 (the least normal half) .. +inf, as float32 bits
    edges = [lo, inf, 0x3F800000, 0x3F801000, 0x3F803000, 0x3F800FFF, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x47800000]
    bits = np.concatenate([rng.integers(lo, inf + 1, 200_000, dtype=np.uint32), np.array(edges, np.uint32)])
    for depth in (bits.view(np.float32), np.array([0.0, 1.0, np.nan, -2.0, 1e-6, np.inf], np.float32)):
        w = depth.size // 2
        rgba = rng.integers(0, 256, (1, 2 * w, 4), dtype=np.uint8)
        d = depth[:2 * w].reshape(1, 2 * w)
        t = TileEncoder().encode(rgba, d)  # the second case (zero, NaN, negative, tiny) goes through numpy
        body = np.frombuffer(lz4.block.decompress(t.payload, uncompressed_size=t.raw_size), np.uint8)
        np.testing.assert_array_equal(body[d.size * 4:].view("<u2"), quantize_depth(d).reshape(-1).view("<u2"))


def test_a_tile_given_in_its_raw_layout_encodes_as_the_same_tiles_and_is_copied_not_kept():
    from worker.render.frame_codec import raw_bytes

    by_arrays, by_raw, dec = TileEncoder(), TileEncoder(), TileDecoder()
    keys = []
    arena = np.empty(40 * 30 * BYTES_PER_PIXEL, np.uint8)  # as a runner's arena: reused for every tile
    moving = [1 + i % 2 * 98 for i in range(8)]  # the delta loses: trials back off, tiles are not kept
    for seed in (1, 1, 5, 5, 99, *moving, *[99] * (MAX_SKIP + 3)):
        rgba, depth = rendered(seed)
        want = by_arrays.encode(rgba, depth)
        arena[:] = raw_bytes(rgba, depth)
        got = by_raw.encode_raw(memoryview(arena))
        arena[:] = 0  # the next call overwrites the arena: the encoder must hold its own copy (the delta's base)
        assert (got.key, got.seq, got.raw_size, got.payload) == (want.key, want.seq, want.raw_size, want.payload)
        keys.append(got.key)
        c, _ = dec.decode(got.header(), got.payload, 40, 30)
        np.testing.assert_array_equal(c, rgba)
    assert keys[0] and not all(keys[1:5]) and not all(keys[-MAX_SKIP - 2:]), keys  # the copies served as bases


def test_a_camera_that_stops_after_moving_sends_deltas_again_within_a_few_tiles():
    enc, dec = TileEncoder(), TileDecoder()
    moving = [rendered(1 + i % 2 * 98) for i in range(8)]
    still = [rendered(99)] * (MAX_SKIP + 3)
    keys = []
    for rgba, depth in moving + still:
        t = enc.encode(rgba, depth)
        keys.append(t.key)
        c, _ = dec.decode(t.header(), t.payload, 40, 30)
        np.testing.assert_array_equal(c, rgba)
    assert not all(keys[len(moving) + 1:len(moving) + MAX_SKIP + 2]), keys


def test_a_session_ticket_opens_its_tile_once_while_it_lives_and_tickets_are_bounded():
    from scheduler.node.session_attach import Tickets
    tickets = Tickets(limit=2)
    with tickets.issue("s1") as (t1, att1), tickets.issue("s2") as (t2, _):
        assert t1 != t2 and len(tickets) == 2
        with pytest.raises(SessionError) as e, tickets.issue("s3"):
            pass
        assert e.value.code == "limit"
        name, _, secret = t1.partition(".")
        for bad in [f"{name}.{secret[:-1]}", f"{name}.", name, t1 + "x", "", "é" * 10, b"x", None, 3, t1 * 3]:
            with pytest.raises(SessionError):
                tickets.redeem(bad)
        assert tickets.redeem(t1) is att1 and att1.session == "s1"
        with pytest.raises(SessionError):
            tickets.redeem(t1)  # once
    assert len(tickets) == 0 and att1.ended.is_set()
    with pytest.raises(SessionError):
        tickets.redeem(t2)  # its tile ended
