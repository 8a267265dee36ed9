"""Frame codec (mesh/bigtcp/framing.py) and control-message mapping (mesh/bigtcp/messages.py): no sockets."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.bigtcp import messages as m
from mesh.bigtcp.framing import (
    FLAG_ACK,
    FLAG_END,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    Frame,
    FrameDecoder,
    FrameType,
    LocalProtocolError,
    PeerProtocolError,
    TransportError,
    encode_frame,
    encode_header,
)


def wire(frames: list[list]) -> bytes:
    return b"".join(bytes(part) for f in frames for part in f)


def as_tuple(f: Frame):
    return (f.type, f.flags, f.stream_id, bytes(f.payload))


CONTROL_SAMPLES = [
    (m.Hello(peer_id="12D3KooWabc", max_frame=1 << 20, window=1 << 22, max_streams=7, agent="t"), 0, 0),
    (m.Open({"proto": "rpc/1", "n": 3}), 0, 5),
    (m.Open(), FLAG_END, 7),
    (m.WindowUpdate(123456), 0, 9),
    (m.Reset(m.CODE_CANCEL, "bye"), 0, 11),
    (m.Ping(42), 0, 0),
    (m.Ping(42), FLAG_ACK, 0),
    (m.GoAway(17, m.CODE_SHUTDOWN, "restart"), 0, 0),
]


def sample_stream(rng: random.Random) -> tuple[list[tuple], bytes]:
    """A mixed byte stream of every frame type, small and large payloads."""
    frames = []
    for ctl, flags, sid in CONTROL_SAMPLES:
        t, payload = m.encode_control(ctl)
        frames.append((t, flags, sid, payload))
    for size in (0, 1, 100, 4095, 4096, 16 * 1024, 70_000, 300_000):
        frames.append((FrameType.DATA, rng.choice([0, FLAG_END]), rng.randrange(1, 1000), rng.randbytes(size)))
    frames.append((FrameType.MSG, 0, 3, m.pack_message({"k": "v", "n": [1, 2, 3], "b": b"\x00" * 50})))
    rng.shuffle(frames)
    return frames, wire([encode_frame(*f) for f in frames])


def test_round_trip_every_frame_type():
    seen = set()
    for ctl, flags, sid in CONTROL_SAMPLES:
        t, payload = m.encode_control(ctl)
        [f] = FrameDecoder().feed(wire([encode_frame(t, flags, sid, payload)]))
        assert (f.type, f.flags, f.stream_id) == (t, flags, sid)
        assert m.decode_control(f) == ctl
        seen.add(t)
    for payload in (b"", b"x", bytes(range(256)) * 300):
        [f] = FrameDecoder().feed(wire([encode_frame(FrameType.DATA, FLAG_END, 1, memoryview(payload))]))
        assert as_tuple(f) == (FrameType.DATA, FLAG_END, 1, payload)
        assert f.end
    msg = {"id": 1, "method": "job.submit", "body": {"x": 1.5, "blob": b"\xff" * 10}}
    [f] = FrameDecoder().feed(wire([encode_frame(FrameType.MSG, 0, 3, m.pack_message(msg))]))
    assert m.unpack_message(f.payload) == msg
    seen |= {FrameType.DATA, FrameType.MSG}
    assert seen == set(FrameType)


def test_header_layout_is_fixed():
    hdr = encode_header(FrameType.DATA, FLAG_END, 0x01020304, b"abc")
    assert len(hdr) == HEADER_SIZE == 20
    magic, ver, t, flags, res, sid, length, _crc = HEADER.unpack(hdr)
    assert (magic, ver, t, flags, res, sid, length) == (MAGIC, 1, 3, 1, 0, 0x01020304, 3)
    parts = encode_frame(FrameType.DATA, 0, 1, memoryview(b"payload"))
    assert len(parts) == 2 and isinstance(parts[1], memoryview)  # header and payload stay separate


@pytest.mark.parametrize("scratch", [HEADER_SIZE, 64, 4096, 64 * 1024])
def test_whole_bytewise_and_random_chunks_agree(scratch):
    rng = random.Random(scratch)
    frames, data = sample_stream(rng)
    expected = [(t, fl, sid, bytes(p)) for t, fl, sid, p in frames]

    whole = [as_tuple(f) for f in FrameDecoder(scratch=scratch).feed(data)]
    assert whole == expected

    d = FrameDecoder(scratch=scratch)
    got = []
    # one byte at a time (for the large payloads: bytewise through their head, then the rest)
    i = 0
    while i < len(data):
        step = 1 if i % 50_000 < 2_000 else 997
        got += [as_tuple(f) for f in d.feed(data[i : i + step])]
        i += step
    assert got == expected

    for seed in range(3):
        r = random.Random(seed)
        d = FrameDecoder(scratch=scratch)
        got, i = [], 0
        while i < len(data):
            k = r.choice([1, 2, 7, 19, 20, 21, 100, 4096, 65_536, 200_000])
            got += [as_tuple(f) for f in d.feed(data[i : i + k])]
            i += k
        d.eof()
        assert got == expected


def test_zero_copy_interface_writes_large_payload_in_place():
    payload = bytes(range(256)) * 1024  # 256 KiB
    data = wire([encode_frame(FrameType.DATA, 0, 1, payload)])
    d = FrameDecoder(scratch=4096)
    buf = d.get_buffer()
    buf[: len(buf)] = data[: len(buf)]
    assert d.advance(len(buf)) == []
    pos = len(buf)
    view = d.get_buffer()  # now the payload buffer itself
    assert len(view) == len(data) - pos
    view[:] = data[pos:]
    [f] = d.advance(len(view))
    assert bytes(f.payload) == payload and isinstance(f.payload, bytearray)


def corrupt(data: bytes, offset: int, value: int) -> bytes:
    b = bytearray(data)
    b[offset] = value
    return bytes(b)


GOOD = wire([encode_frame(FrameType.DATA, 0, 1, b"hello")])


@pytest.mark.parametrize(
    "data,kind",
    [
        (corrupt(GOOD, 0, ord("X")), "bad_magic"),
        (corrupt(GOOD, 4, 2), "bad_version"),
        (corrupt(GOOD, 5, 99), "unknown_type"),
        (corrupt(GOOD, 5, 0), "unknown_type"),
        (corrupt(GOOD, 6, 0x80), "bad_header"),  # unknown flag bit
        (corrupt(GOOD, 7, 1), "bad_header"),  # reserved byte
        (corrupt(GOOD, 11, 0), "bad_header"),  # DATA on stream 0
        (corrupt(wire([encode_frame(FrameType.PING, 0, 0, b"\x80")]), 11, 5), "bad_header"),  # PING on stream 5
        (corrupt(GOOD, HEADER_SIZE + 1, ord("X")), "bad_crc"),
    ],
)
def test_peer_errors_have_kinds_and_are_sticky(data, kind):
    d = FrameDecoder()
    with pytest.raises(PeerProtocolError) as ei:
        d.feed(data)
    assert ei.value.kind == kind
    assert isinstance(ei.value, TransportError)
    with pytest.raises(PeerProtocolError) as again:  # the decoder is dead and says why
        d.feed(GOOD)
    assert again.value is ei.value


def test_oversized_is_refused_from_the_header_alone():
    d = FrameDecoder(max_frame=1000)
    hdr = HEADER.pack(MAGIC, 1, FrameType.DATA, 0, 0, 1, 1001, 0)
    with pytest.raises(PeerProtocolError) as ei:
        d.feed(hdr)  # no payload byte needed: refused before anything is buffered
    assert ei.value.kind == "oversized"
    assert d._payload is None
    huge = HEADER.pack(MAGIC, 1, FrameType.DATA, 0, 0, 1, 0xFFFFFFFF, 0)
    with pytest.raises(PeerProtocolError, match="oversized"):
        FrameDecoder().feed(huge)


def test_truncated_input_at_eof():
    d = FrameDecoder()
    d.feed(GOOD[:-1])
    with pytest.raises(PeerProtocolError) as ei:
        d.eof()
    assert ei.value.kind == "truncated"
    d = FrameDecoder()
    d.feed(GOOD)
    d.eof()  # clean boundary: fine


def test_local_misuse_is_a_local_error():
    with pytest.raises(LocalProtocolError):
        encode_header(FrameType.DATA, 0, 0, b"")  # stream 0
    with pytest.raises(LocalProtocolError):
        encode_header(FrameType.PING, FLAG_END, 0, b"")
    with pytest.raises(LocalProtocolError):
        encode_header(FrameType.DATA, 0, 2**32, b"")
    with pytest.raises(LocalProtocolError):
        FrameDecoder().advance(0)
    with pytest.raises(LocalProtocolError):
        m.pack_message({"x": object()})
    with pytest.raises(LocalProtocolError):
        m.pack_message([1, 2])  # type: ignore[arg-type]
    assert not issubclass(LocalProtocolError, PeerProtocolError)


@pytest.mark.parametrize(
    "ftype,payload",
    [
        (FrameType.WINDOW, msgpack.packb([1, 2])),
        (FrameType.WINDOW, msgpack.packb({"c": 0})),
        (FrameType.WINDOW, msgpack.packb({"c": "x"})),
        (FrameType.WINDOW, msgpack.packb({"c": True})),
        (FrameType.HELLO, msgpack.packb({"v": 1})),
        (FrameType.RESET, b"\xc1"),  # never-used msgpack byte
        (FrameType.GOAWAY, msgpack.packb({"l": -1})),
        (FrameType.OPEN, msgpack.packb({"m": 3})),
        (FrameType.PING, msgpack.packb({"n": 1}) + b"x"),  # trailing data
        (FrameType.OPEN, msgpack.packb({1: 2})),  # non-string key
    ],
)
def test_bad_control_payloads_are_peer_errors(ftype, payload):
    sid = 0 if ftype in (FrameType.HELLO, FrameType.PING, FrameType.GOAWAY) else 1
    [f] = FrameDecoder().feed(wire([encode_frame(ftype, 0, sid, payload)]))
    with pytest.raises(PeerProtocolError) as ei:
        m.decode_control(f)
    assert ei.value.kind == "bad_payload"


def test_control_messages_ignore_unknown_keys():
    payload = msgpack.packb({"c": 5, "future": [1, 2]})
    [f] = FrameDecoder().feed(wire([encode_frame(FrameType.WINDOW, 0, 1, payload)]))
    assert m.decode_control(f) == m.WindowUpdate(5)


# ---------------------------------------------------------------------------------- property tests

MAX = 4096
SCRATCH = 256


def check_bounded(d: FrameDecoder) -> None:
    assert len(d._buf) == SCRATCH
    assert d._payload is None or len(d._payload) <= MAX


def decode_all(d: FrameDecoder, data: bytes, chunk: int) -> list[Frame]:
    out: list[Frame] = []
    for i in range(0, len(data), chunk):
        out += d.feed(data[i : i + chunk])
        check_bounded(d)
    return out


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(1, 64))
def test_any_bytes_parse_or_raise_peer_error(data, chunk):
    d = FrameDecoder(MAX, scratch=SCRATCH)
    try:
        frames = decode_all(d, data, chunk)
        for f in frames:
            if f.type not in (FrameType.DATA, FrameType.MSG):
                m.decode_control(f)
            elif f.type is FrameType.MSG:
                m.unpack_message(f.payload)
    except PeerProtocolError:
        pass


frame_st = st.tuples(
    st.sampled_from(list(FrameType)),
    st.sampled_from([0, FLAG_END, FLAG_ACK]),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=MAX + 10),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame_st, max_size=5), st.data())
def test_valid_frames_then_mutations(frames, data):
    parts = []
    for t, fl, sid, payload in frames:
        try:
            parts.append(encode_frame(t, fl, sid, payload))
        except LocalProtocolError:
            continue
    stream = bytearray(wire(parts))
    n_mut = data.draw(st.integers(0, 3))
    for _ in range(n_mut):
        if stream:
            i = data.draw(st.integers(0, len(stream) - 1))
            stream[i] = data.draw(st.integers(0, 255))
    d = FrameDecoder(MAX, scratch=SCRATCH)
    try:
        decode_all(d, bytes(stream), data.draw(st.integers(1, 500)))
        d.eof()
    except PeerProtocolError:
        pass
