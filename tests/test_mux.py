"""Sans-IO multiplexer (mesh/bigtcp/mux.py): streams, flow control, resets, timers — two Mux objects, no sockets."""

from __future__ import annotations

import pytest

from mesh.bigtcp import messages as m
from mesh.bigtcp.framing import (
    FLAG_END,
    FrameDecoder,
    FrameType,
    LocalProtocolError,
    PeerProtocolError,
    encode_frame,
)
from mesh.bigtcp.mux import (
    ConnectionClosing,
    ConnectionEnded,
    ConnectionLost,
    CreditReceived,
    DataReceived,
    GoAwayReceived,
    HelloReceived,
    IdleTimeout,
    KeepaliveTimeout,
    MessageReceived,
    Mux,
    PongReceived,
    StreamEnded,
    StreamOpened,
    StreamResetReceived,
)

KiB = 1024


def flush(src: Mux, dst: Mux) -> list:
    data = b"".join(bytes(b) for b in src.data_to_send())
    return dst.receive_data(data) if data else []


def pair(**kw) -> tuple[Mux, Mux]:
    a = Mux(client=True, peer_id="A", **kw)
    b = Mux(client=False, peer_id="B", **kw)
    assert isinstance(flush(a, b)[0], HelloReceived)
    assert isinstance(flush(b, a)[0], HelloReceived)
    return a, b


def frames_of(mux: Mux):
    return FrameDecoder().feed(b"".join(bytes(x) for x in mux.data_to_send()))


def raw(ftype, flags, sid, payload=b"") -> bytes:
    return b"".join(bytes(p) for p in encode_frame(ftype, flags, sid, payload))


def ctl(msg, flags=0, sid=0) -> bytes:
    t, p = m.encode_control(msg)
    return raw(t, flags, sid, p)


def test_hello_exchange_and_not_ready_before():
    a = Mux(client=True, peer_id="A")
    with pytest.raises(LocalProtocolError, match="not ready"):
        a.open_stream()
    b = Mux(client=False, peer_id="B")
    [ev] = flush(a, b)
    assert ev.hello.peer_id == "A" and b.ready and not a.ready
    flush(b, a)
    assert a.ready and a.peer_hello.peer_id == "B"


def test_frames_before_hello_are_a_peer_error():
    b = Mux(client=False)
    with pytest.raises(PeerProtocolError) as ei:
        b.receive_data(ctl(m.Open(), sid=1))
    assert ei.value.kind == "no_hello"
    # the mux is dead, says why, and tells the peer in a GOAWAY
    assert b.error is ei.value
    [f] = frames_of(b)
    assert f.type is FrameType.GOAWAY and "no_hello" in m.decode_control(f).reason


def test_stream_lifecycle_data_messages_and_half_close():
    a, b = pair()
    sid = a.open_stream({"proto": "x"})
    assert sid == 1 and a.open_stream() == 3
    a.send_message(sid, m.pack_message({"hi": 1}))
    a.send_data(sid, b"bulk", end=True)
    evs = flush(a, b)
    assert evs[0] == StreamOpened(1, {"proto": "x"})
    assert evs[1] == StreamOpened(3, {})
    assert isinstance(evs[2], MessageReceived) and evs[2].message == {"hi": 1}
    assert evs[3] == DataReceived(1, b"bulk")
    assert evs[4] == StreamEnded(1)
    with pytest.raises(LocalProtocolError, match="closed for sending"):
        a.send_data(sid, b"more")
    assert b.has_stream(1)
    b.send_data(1, b"reply")
    b.close_stream(1)
    assert not b.has_stream(1)  # both halves ended: gone
    evs = flush(b, a)
    assert evs == [DataReceived(1, b"reply"), StreamEnded(1)]
    assert not a.has_stream(1) and a.has_stream(3)
    assert b.open_streams == 1 and b.stream_ids() == [3]


def test_server_stream_ids_are_even():
    a, b = pair()
    assert b.open_stream() == 2
    assert flush(b, a) == [StreamOpened(2, {})]


def test_credit_blocks_sender_and_consumption_grants_more():
    a, b = pair(max_frame=16 * KiB, window=64 * KiB)
    sid = a.open_stream()
    flush(a, b)
    chunk = b"x" * (16 * KiB)
    for _ in range(4):
        a.send_data(sid, chunk)
    assert a.send_credit(sid) == 0
    with pytest.raises(LocalProtocolError, match="credit"):
        a.send_data(sid, b"y")
    evs = flush(a, b)
    assert len(evs) == 4 and b.buffered_bytes == 64 * KiB
    b.consumed(sid, 16 * KiB)  # = window/4: one WINDOW frame
    evs = flush(b, a)
    assert evs == [CreditReceived(sid)] and a.send_credit(sid) == 16 * KiB
    with pytest.raises(LocalProtocolError, match="consumed"):
        b.consumed(sid, 64 * KiB)


def test_slow_reader_blocks_only_its_own_stream_and_memory_is_bounded():
    a, b = pair(max_frame=8 * KiB, window=32 * KiB)
    slow, fast = a.open_stream(), a.open_stream()
    flush(a, b)
    moved = 0
    for _ in range(100):
        if a.send_credit(slow) >= 8 * KiB:
            a.send_data(slow, b"s" * 8 * KiB)
        a.send_data(fast, b"f" * 8 * KiB)
        for ev in flush(a, b):
            if isinstance(ev, DataReceived) and ev.stream_id == fast:
                b.consumed(fast, len(ev.data))  # fast reader consumes at once
                moved += len(ev.data)
        flush(b, a)
        assert b.buffered_bytes <= 32 * KiB  # the slow stream holds at most its window
    assert moved == 100 * 8 * KiB
    assert a.send_credit(slow) == 0


def test_peer_exceeding_its_credit_is_a_peer_error():
    a, b = pair(max_frame=1024, window=2048)
    sid = a.open_stream()
    flush(a, b)
    with pytest.raises(PeerProtocolError) as ei:
        b.receive_data(raw(FrameType.DATA, 0, sid, b"x" * 1024) * 3)
    assert ei.value.kind == "flow_control"


def test_oversized_frame_from_peer_refused():
    a, b = pair(max_frame=1024, window=4096)
    with pytest.raises(PeerProtocolError) as ei:
        b.receive_data(raw(FrameType.DATA, 0, 1, b"x" * 1025))
    assert ei.value.kind == "oversized"


def test_send_larger_than_peer_max_frame_is_local_error():
    a, b = pair(max_frame=1024, window=4096)
    sid = a.open_stream()
    with pytest.raises(LocalProtocolError, match="max frame"):
        a.send_data(sid, b"x" * 1025)
    assert a.max_send_frame == 1024


def test_local_reset_frees_state_and_ignores_frames_in_flight():
    a, b = pair()
    sid = a.open_stream()
    flush(a, b)
    b.send_data(sid, b"in flight 1")
    in_flight = b"".join(bytes(x) for x in b.data_to_send())
    assert a.reset_stream(sid, reason="no longer needed")
    assert not a.has_stream(sid) and a.open_streams == 0
    assert a.receive_data(in_flight) == []  # crossed the reset on the wire: ignored
    assert not a.reset_stream(sid)  # idempotent
    evs = flush(a, b)
    assert evs == [StreamResetReceived(sid, m.CODE_CANCEL, "no longer needed")]
    assert b.open_streams == 0 and b.buffered_bytes == 0
    with pytest.raises(LocalProtocolError, match="not open"):
        b.send_data(sid, b"late")


def test_frames_on_closed_or_unknown_streams():
    a, b = pair()
    sid = a.open_stream()
    a.close_stream(sid)
    flush(a, b)
    with pytest.raises(PeerProtocolError) as ei:
        b.receive_data(raw(FrameType.DATA, 0, sid, b"after end"))
    assert ei.value.kind == "closed_stream"
    a, b = pair()
    with pytest.raises(PeerProtocolError) as ei:
        b.receive_data(raw(FrameType.MSG, 0, 99, m.pack_message({})))
    assert ei.value.kind == "unknown_stream"
    a, b = pair()
    with pytest.raises(PeerProtocolError) as ei:
        a.receive_data(ctl(m.Open(), sid=5))  # a is the client: odd ids are its own
    assert ei.value.kind == "bad_stream_id"
    a, b = pair()
    a.open_stream()
    a.open_stream()
    flush(a, b)
    with pytest.raises(PeerProtocolError) as ei:
        b.receive_data(ctl(m.Open(), sid=1))
    assert ei.value.kind == "closed_stream"


def test_window_and_reset_for_finished_streams_are_ignored():
    a, b = pair()
    sid = a.open_stream()
    a.close_stream(sid)
    flush(a, b)
    b.close_stream(sid)
    flush(b, a)
    assert not a.has_stream(sid)
    assert a.receive_data(ctl(m.WindowUpdate(10), sid=sid) + ctl(m.Reset(2), sid=sid)) == []
    with pytest.raises(PeerProtocolError, match="never opened"):
        a.receive_data(ctl(m.WindowUpdate(10), sid=41))


def test_max_streams_refuses_extra_streams_with_reset():
    a, b = pair(max_streams=2)
    s1, _s2 = a.open_stream(), a.open_stream()
    assert not a.can_open_stream
    with pytest.raises(LocalProtocolError, match="at most 2"):
        a.open_stream()
    flush(a, b)
    # a misbehaving peer opening a third one gets RESET(refused), not a dead connection
    evs = b.receive_data(ctl(m.Open(), sid=5) + raw(FrameType.DATA, 0, 5, b"ignored"))
    assert evs == []
    [f] = frames_of(b)
    assert f.type is FrameType.RESET and m.decode_control(f).code == m.CODE_REFUSED
    a.reset_stream(s1)
    assert a.can_open_stream


def test_goaway_refuses_new_streams_and_unseen_ones():
    a, b = pair()
    s1 = a.open_stream()
    flush(a, b)
    s3 = a.open_stream()  # in flight when b says goodbye
    b.goaway(m.CODE_SHUTDOWN, "restart")
    evs = flush(b, a)
    assert evs[0] == GoAwayReceived(s1, m.CODE_SHUTDOWN, "restart")
    assert evs[1] == StreamResetReceived(s3, m.CODE_REFUSED, "connection going away before the stream was seen")
    assert a.has_stream(s1) and not a.has_stream(s3)
    with pytest.raises(ConnectionClosing):
        a.open_stream()
    flush(a, b)  # b refuses stream 3 with a RESET, which a ignores
    assert flush(b, a) == []
    a.send_data(s1, b"still works", end=True)
    assert flush(a, b) == [DataReceived(s1, b"still works"), StreamEnded(s1)]
    assert b.receive_eof() == [ConnectionEnded(clean=False)]
    assert a.receive_eof() == [ConnectionEnded(clean=True)]


def test_ping_pong():
    a, b = pair()
    nonce = a.ping(now=10.0)
    assert flush(a, b) == []
    assert flush(b, a) == [PongReceived(nonce, 10.0)]
    # an unsolicited or stale pong is ignored
    assert a.receive_data(ctl(m.Ping(999), flags=0x02)) == []


def test_keepalive_dead_peer_and_idle_close_with_fake_clock():
    a, b = pair(keepalive=10.0, dead_after=30.0, idle_close=60.0)
    t = 1000.0
    assert a.handle_timers(t) == []
    assert a.next_deadline(t) == t + 10.0
    assert a.handle_timers(t + 10.0) == []
    [f] = frames_of(a)
    assert f.type is FrameType.PING  # idle: keepalive ping
    assert a.handle_timers(t + 15.0) == [] and not a.has_output  # one ping per keepalive interval
    # the peer answers: a hears something, the silence clock restarts
    b.receive_data(raw(f.type, f.flags, f.stream_id, f.payload))
    flush(b, a)
    assert a.handle_timers(t + 25.0) == []
    # then nothing for dead_after: dead
    evs = a.handle_timers(t + 25.0 + 30.0)
    assert len(evs) == 1 and isinstance(evs[0], KeepaliveTimeout)
    assert isinstance(a.error, ConnectionLost)
    with pytest.raises(ConnectionLost):
        a.open_stream()
    # idle close: no streams for idle_close seconds (while the peer keeps talking)
    c, d = pair(keepalive=None, dead_after=None, idle_close=60.0)
    assert c.handle_timers(0.0) == []
    sid = c.open_stream()
    assert c.handle_timers(59.0) == []
    c.reset_stream(sid)
    assert c.handle_timers(60.0) == []
    assert c.handle_timers(119.9) == []
    assert c.handle_timers(120.0) == [IdleTimeout(60.0)]
    assert c.handle_timers(200.0) == []  # reported once


def test_truncated_eof_is_a_peer_error():
    a, b = pair()
    sid = a.open_stream()
    a.send_data(sid, b"abcdef")
    data = b"".join(bytes(x) for x in a.data_to_send())
    b.receive_data(data[:-2])
    with pytest.raises(PeerProtocolError, match="truncated"):
        b.receive_eof()


def test_second_hello_and_bad_version():
    a, b = pair()
    with pytest.raises(PeerProtocolError, match="second HELLO"):
        b.receive_data(ctl(m.Hello(peer_id="x", max_frame=10, window=10, max_streams=1)))
    c = Mux(client=False)
    with pytest.raises(PeerProtocolError) as ei:
        c.receive_data(ctl(m.Hello(peer_id="x", max_frame=10, window=10, max_streams=1, version=9)))
    assert ei.value.kind == "bad_version"


def test_open_with_end_flag_and_empty_messages():
    a, b = pair()
    evs = b.receive_data(ctl(m.Open({"k": 1}), flags=FLAG_END, sid=1))
    assert evs == [StreamOpened(1, {"k": 1}), StreamEnded(1)]
    evs = b.receive_data(ctl(m.Open(), sid=3) + raw(FrameType.DATA, 0, 3, b""))
    assert evs == [StreamOpened(3, {}), DataReceived(3, b"")]


def test_stream_ids_run_out_cleanly():
    a, b = pair()
    a._next_id = 0xFFFFFFFF  # the last odd id
    assert a.ids_left == 1 and a.can_open_stream
    assert a.open_stream() == 0xFFFFFFFF
    assert a.ids_left == 0 and not a.can_open_stream
    with pytest.raises(ConnectionClosing, match="exhausted"):
        a.open_stream()


def test_connection_window_bounds_all_streams_together():
    a, b = pair(max_frame=16 * KiB, window=64 * KiB, conn_window=96 * KiB)
    s1, s2 = a.open_stream(), a.open_stream()
    flush(a, b)
    for _ in range(4):
        a.send_data(s1, b"1" * 16 * KiB)  # s1: stream window used up
    a.send_data(s2, b"2" * 16 * KiB)
    a.send_data(s2, b"2" * 16 * KiB)  # connection window used up
    assert a.conn_send_credit == 0 and a.stream_send_credit(s2) == 32 * KiB and a.send_credit(s2) == 0
    with pytest.raises(LocalProtocolError, match="connection 0"):
        a.send_data(s2, b"2")
    flush(a, b)
    assert b.buffered_bytes == 96 * KiB
    b.consumed(s1, 16 * KiB)  # below a quarter of the connection window: nothing yet
    b.consumed(s1, 16 * KiB)  # 32 KiB >= 24 KiB: connection credit (and s1 stream credit) go back
    evs = flush(b, a)
    assert CreditReceived(0) in evs and CreditReceived(s1) in evs
    assert a.conn_send_credit == 32 * KiB and a.send_credit(s2) == 32 * KiB


def test_connection_credit_returns_for_reset_and_dropped_data():
    a, b = pair(max_frame=16 * KiB, window=64 * KiB, conn_window=64 * KiB)
    s1 = a.open_stream()
    flush(a, b)
    for _ in range(4):
        a.send_data(s1, b"x" * 16 * KiB)
    flush(a, b)
    assert a.conn_send_credit == 0
    b.reset_stream(s1)  # 64 KiB buffered and never read: the connection gets it back
    evs = flush(b, a)
    assert CreditReceived(0) in evs and a.conn_send_credit == 64 * KiB
    # frames that cross a reset on the wire are dropped, and their connection credit returned too
    s3 = a.open_stream()
    flush(a, b)
    b.reset_stream(s3)
    for _ in range(4):
        a.send_data(s3, b"y" * 16 * KiB)
    flush(a, b)  # ignored by b
    flush(b, a)  # RESET + WINDOW(0)
    assert a.conn_send_credit == 64 * KiB and not a.has_stream(s3)


def test_peer_exceeding_connection_window_is_a_peer_error():
    a, b = pair(max_frame=1024, window=1024, conn_window=2048)
    for sid in (a.open_stream(), a.open_stream(), a.open_stream()):
        flush(a, b)
        if sid < 5:
            b.receive_data(raw(FrameType.DATA, 0, sid, b"x" * 1024))
    with pytest.raises(PeerProtocolError) as ei:
        b.receive_data(raw(FrameType.DATA, 0, 5, b"x" * 1024))
    assert ei.value.kind == "flow_control" and "connection" in str(ei.value)


def test_window_frame_on_stream_zero_is_connection_credit():
    [f] = FrameDecoder().feed(ctl(m.WindowUpdate(5), sid=0))
    assert f.type is FrameType.WINDOW and f.stream_id == 0


def test_open_meta_is_encoded_afresh_when_it_changed_in_place():
    """The mux reuses the OPEN payload of the last meta it sent; a meta dict changed in place (a nested
    value too) must still reach the peer as it is now."""
    a, b = Mux(client=True), Mux(client=False)
    b.receive_data(b"".join(bytes(x) for x in a.data_to_send()))
    a.receive_data(b"".join(bytes(x) for x in b.data_to_send()))
    meta = {"rpc": 1, "tags": {"k": 1}}
    seen = []
    for value in (1, 1, 2):
        meta["tags"]["k"] = value
        a.open_stream(meta)
        evs = b.receive_data(b"".join(bytes(x) for x in a.data_to_send()))
        seen += [e.meta for e in evs if isinstance(e, StreamOpened)]
    assert seen == [{"rpc": 1, "tags": {"k": 1}}, {"rpc": 1, "tags": {"k": 1}}, {"rpc": 1, "tags": {"k": 2}}]
