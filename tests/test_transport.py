"""bigtcp connections and streams over trio memory streams (fast, deterministic; no sockets)."""

from __future__ import annotations

import hashlib
import random
import socket
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from mesh.bigtcp import messages as m
from mesh.bigtcp.framing import FrameDecoder, FrameType, PeerProtocolError, encode_frame
from mesh.bigtcp.transport import (
    ConnectionConfig,
    ConnectionLost,
    EndOfStream,
    LocalProtocolError,
    StreamReset,
    WrongItemKind,
    connect_over_stream,
)
from mesh.bigtcp.wire import SocketWire
from mesh.identity import Identity

KiB = 1024


@asynccontextmanager
async def memory_pair(handler=None, client_handler=None, config=None, server_config=None):
    """(client connection, server connection) over trio memory streams."""
    a_stream, b_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        out = {}

        async def side(name, stream, outbound, h, cfg):
            out[name] = await connect_over_stream(stream, nursery=nursery, outbound=outbound, handler=h, config=cfg)

        async with trio.open_nursery() as hn:
            hn.start_soon(side, "a", a_stream, True, client_handler, config)
            hn.start_soon(side, "b", b_stream, False, handler, server_config or config)
        yield out["a"], out["b"]
        nursery.cancel_scope.cancel()


async def echo(stream):
    async for item in stream:
        if isinstance(item, dict):
            await stream.send_msg(item)
        else:
            await stream.send_bytes(item)
    await stream.close()


async def test_messages_and_bytes_in_order():
    async with memory_pair(echo) as (a, b):
        assert a.peer_id == b._mux.local_hello.peer_id and b.peer_id == a._mux.local_hello.peer_id
        async with await a.open_stream({"proto": "test"}) as s:
            await s.send_msg({"n": 1})
            await s.send_bytes(b"raw bytes")
            await s.send_bytes(memoryview(bytearray(b"xyz")))
            await s.send_msg({"n": 2, "blob": b"\x00\xff"})
            await s.close()
            assert await s.receive_msg() == {"n": 1}
            with pytest.raises(WrongItemKind):
                await s.receive_msg()  # next is a data frame: nothing consumed
            assert await s.receive_bytes() == b"raw bytes"
            assert await s.receive() == b"xyz"
            assert await s.receive() == {"n": 2, "blob": b"\x00\xff"}
            with pytest.raises(EndOfStream):
                await s.receive()
        assert a.open_streams == 0
        await trio.testing.wait_all_tasks_blocked()
        assert b.open_streams == 0


async def test_send_msg_nowait_keeps_order_and_refuses_what_would_wait():
    """A message sent without waiting arrives in order with awaited sends; when the peer's window has no room
    for it, or the stream cannot send, nothing is queued and False says to use send_msg."""
    cfg = ConnectionConfig(window=64 * KiB, max_frame=64 * KiB)
    got: list = []
    release = trio.Event()

    async def slow_reader(stream):
        await release.wait()
        async for item in stream:
            got.append(item)

    async with memory_pair(slow_reader, config=cfg) as (a, b):
        s = await a.open_stream()
        await s.send_msg({"n": 0})
        assert s.send_msg_nowait({"n": 1}) is True
        await s.send_msg({"n": 2})
        assert s.send_msg_nowait({"n": 3}) is True
        big = {"blob": b"x" * (40 * KiB)}
        await s.send_msg(big)  # most of the peer's window, unread
        assert s.send_msg_nowait(big) is False  # no room for a second: nothing queued
        with trio.fail_after(10):
            release.set()
            await s.send_msg(big)  # waits for the credit instead
            await s.close()
            while len(got) < 6:
                await trio.sleep(0.01)
        assert [g.get("n") for g in got[:4]] == [0, 1, 2, 3] and got[4:] == [big, big]
        assert s.send_msg_nowait({"n": 4}) is False  # closed for sending: refused, not raised


async def test_take_messages_in_the_reader_keeps_order_with_receive():
    """Messages a taker accepts never reach receive(); from the first it leaves, everything queues in order
    (later ones too, even if the taker would accept them) until receive() has drained the queue."""
    taken: list[int] = []
    accept = {"on": True}
    opened: list = []
    ready = trio.Event()

    def taker(msg):
        if accept["on"] and msg.get("n", -1) % 5 != 4:
            taken.append(msg["n"])
            return True
        return False

    async def handler(stream):
        assert (await stream.receive())["n"] == 0  # it may come with the OPEN, before the taker is set
        stream.take_messages(taker)
        opened.append(stream)
        ready.set()
        await trio.sleep_forever()

    async with memory_pair(handler) as (a, b):
        s = await a.open_stream()
        await s.send_msg({"n": 0})
        await ready.wait()
        for n in range(1, 10):
            await s.send_msg({"n": n})
        await s.send_bytes(b"raw")
        await trio.testing.wait_all_tasks_blocked()
        srv = opened[0]
        assert taken == [1, 2, 3]  # 4 was left: 5..9 queue behind it, in order
        got = [(await srv.receive())["n"] for _ in range(6)]
        assert got == [4, 5, 6, 7, 8, 9] and await srv.receive() == b"raw"
        await s.send_msg({"n": 10})  # the queue is empty again: the taker sees it
        await trio.testing.wait_all_tasks_blocked()
        assert taken[-1] == 10
        srv.take_messages(None)
        await s.send_msg({"n": 11})
        assert (await srv.receive())["n"] == 11 and taken[-1] == 10


async def test_a_failing_message_taker_resets_only_its_stream():
    """An error in a stream's taker (code running in the connection's reader) resets that stream with code
    internal; the connection and its other streams carry on."""
    seen = trio.Event()

    def broken(msg):
        raise RuntimeError("bug in the taker")

    async def handler(stream):
        if stream.meta.get("broken"):
            await stream.receive()  # the first may come with the OPEN, before the taker is set
            stream.take_messages(broken)
            seen.set()
            await trio.sleep_forever()
        await echo(stream)

    async with memory_pair(handler) as (a, b):
        bad = await a.open_stream({"broken": 1})
        await bad.send_msg({"n": 0})
        await seen.wait()
        await bad.send_msg({"n": 1})
        await bad.send_msg({"n": 2})
        good = await a.open_stream()
        await good.send_msg({"still": "fine"})
        assert await good.receive_msg() == {"still": "fine"}
        await trio.testing.wait_all_tasks_blocked()
        streams = [s for s in b._streams.values() if s.meta.get("broken")]
        assert not streams or not streams[0].usable  # reset (and dropped by the connection)
        with pytest.raises(StreamReset):
            with trio.fail_after(10):
                await bad.receive()
        assert not a.closed and not b.closed


async def test_many_concurrent_streams_keep_their_data_apart():
    rng = random.Random(5)

    async def one(conn, i):
        blobs = [rng.randbytes(rng.choice([0, 1, 100, 5000, 70_000, 300_000])) for _ in range(4)]
        async with await conn.open_stream({"i": i}) as s:
            for blob in blobs:
                await s.send_bytes(blob)
            await s.send_msg({"i": i})
            await s.close()
            for blob in blobs:
                assert hashlib.sha256(await s.receive_bytes()).digest() == hashlib.sha256(blob).digest()
            assert await s.receive_msg() == {"i": i}

    async with memory_pair(echo) as (a, b):
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                for i in range(60):
                    n.start_soon(one, a, i)
        assert a.open_streams == 0


async def test_slow_reader_does_not_block_other_streams_and_memory_stays_bounded():
    cfg = ConnectionConfig(max_frame=16 * KiB, window=64 * KiB)
    slow_stream = {}
    release = trio.Event()

    async def handler(stream):
        if stream.meta.get("slow"):
            slow_stream["s"] = stream
            await release.wait()  # does not read until told
            total = 0
            async for item in stream:
                total += len(item)
            await stream.send_msg({"total": total})
        else:
            await echo(stream)

    async with memory_pair(handler, config=cfg) as (a, b):
        slow = await a.open_stream({"slow": True})
        sent = 0

        async def push_slow():
            nonlocal sent
            for _ in range(40):
                await slow.send_bytes(b"s" * 16 * KiB)
                sent += 1
            await slow.close()

        async with trio.open_nursery() as n:
            n.start_soon(push_slow)
            # meanwhile another stream moves 4 MiB through the same connection
            async with await a.open_stream() as fast:
                async def pump():
                    for _ in range(256):
                        await fast.send_bytes(b"f" * 16 * KiB)
                    await fast.close()

                n.start_soon(pump)
                got = 0
                async for chunk in fast:
                    got += len(chunk)
                assert got == 256 * 16 * KiB
            await trio.testing.wait_all_tasks_blocked()
            # the slow stream's sender is stuck on credit; the receiver holds at most one window
            assert sent == 4
            assert slow_stream["s"].buffered == 64 * KiB
            assert b._mux.buffered_bytes <= 64 * KiB
            release.set()
        assert await slow.receive_msg() == {"total": 40 * 16 * KiB}


async def test_reset_frees_memory_and_reaches_the_peer():
    got_stream = {}
    arrived = trio.Event()

    async def handler(stream):
        got_stream["s"] = stream
        arrived.set()
        await trio.sleep_forever()

    async with memory_pair(handler) as (a, b):
        s = await a.open_stream()
        for _ in range(3):
            await s.send_bytes(b"x" * 16 * KiB)
        await arrived.wait()
        srv = got_stream["s"]
        await trio.testing.wait_all_tasks_blocked()
        assert srv.buffered == 48 * KiB and b._mux.buffered_bytes == 48 * KiB
        srv.reset("not wanted")
        assert srv.buffered == 0
        assert b._mux.buffered_bytes == 0 and not b._mux.has_stream(s.id) and b.open_streams == 0
        with pytest.raises(StreamReset) as ei:
            await srv.receive()
        assert not ei.value.by_peer
        with trio.fail_after(5):
            with pytest.raises(StreamReset) as ei:
                await s.receive()
        assert ei.value.by_peer and ei.value.reason == "not wanted" and ei.value.code == m.CODE_CANCEL
        with pytest.raises(StreamReset):
            await s.send_bytes(b"late")
        assert a.open_streams == 0 and not a._mux.has_stream(s.id)


async def test_handler_exception_resets_the_stream_with_internal_code():
    async def handler(stream):
        await stream.receive_msg()
        raise ValueError("boom")

    async with memory_pair(handler) as (a, b):
        s = await a.open_stream()
        await s.send_msg({"go": 1})
        with trio.fail_after(5), pytest.raises(StreamReset) as ei:
            await s.receive()
        assert ei.value.code == m.CODE_INTERNAL and ei.value.by_peer


async def test_peer_death_surfaces_on_every_open_stream():
    async def handler(stream):
        await stream.send_msg({"hello": stream.id})
        await trio.sleep_forever()

    async with memory_pair(handler) as (a, b):
        errors = []

        async def reader(s):
            assert (await s.receive_msg())["hello"] == s.id
            try:
                await s.receive()
            except ConnectionLost as e:
                errors.append(e)

        streams = [await a.open_stream() for _ in range(6)]
        async with trio.open_nursery() as n:
            for s in streams:
                await s.send_msg({})
                n.start_soon(reader, s)
            await trio.testing.wait_all_tasks_blocked()
            b.abort()  # the peer goes away without a word
        assert len(errors) == 6
        assert all("without GOAWAY" in str(e) for e in errors)
        for s in streams:
            with pytest.raises(ConnectionLost):
                await s.send_bytes(b"x")
        assert a.error is not None and a.closed
        with pytest.raises(ConnectionLost):
            await a.open_stream()


async def test_graceful_close_delivers_everything_sent():
    received = []
    done = trio.Event()

    async def handler(stream):
        async for chunk in stream:
            received.append(len(chunk))
        done.set()

    async with memory_pair(handler) as (a, b):
        s = await a.open_stream()
        for i in range(20):
            await s.send_bytes(b"d" * (1000 + i))
        await s.close()
        with trio.fail_after(10):
            await a.aclose()
            await done.wait()
            await b._done.wait()
        assert received == [1000 + i for i in range(20)]
        assert a.error is None and b.error is None


async def test_send_larger_than_peer_max_frame_is_local_error():
    cfg = ConnectionConfig(max_frame=4096, window=8192)
    async with memory_pair(echo, config=cfg) as (a, b):
        async with await a.open_stream() as s:
            assert s.max_frame_size == 4096
            with pytest.raises(LocalProtocolError, match="max frame"):
                await s.send_bytes(b"x" * 4097)
            await s.send_bytes(b"x" * 4096)  # still usable
            assert len(await s.receive_bytes()) == 4096


async def test_ping_measures_rtt():
    async with memory_pair(echo) as (a, b):
        rtt = await a.ping()
        assert rtt >= 0 and a.rtt == rtt


# ------------------------------------------------------------------------- against a hand-driven peer


class FakePeer:
    """The far end of a memory stream, driven by hand: raw frames in and out."""

    def __init__(self, stream):
        self.stream = stream
        self.decoder = FrameDecoder()

    async def send(self, ftype, flags, sid, payload=b""):
        await self.stream.send_all(b"".join(bytes(p) for p in encode_frame(ftype, flags, sid, payload)))

    async def send_control(self, msg, flags=0, sid=0):
        t, p = m.encode_control(msg)
        await self.send(t, flags, sid, p)

    async def hello(self):
        await self.send_control(m.Hello(peer_id="fake", max_frame=1 << 20, window=1 << 20, max_streams=10))

    async def frames(self):
        while True:
            data = await self.stream.receive_some()
            if not data:
                return
            for f in self.decoder.feed(data):
                yield f


@asynccontextmanager
async def with_fake_peer(config=None):
    a_stream, fake_stream = trio.testing.memory_stream_pair()
    fake = FakePeer(fake_stream)
    async with trio.open_nursery() as n:
        await fake.hello()
        conn = await connect_over_stream(a_stream, nursery=n, outbound=True, config=config)
        yield conn, fake
        n.cancel_scope.cancel()


async def test_peer_protocol_error_kills_connection_and_says_why():
    before = REGISTRY.get_sample_value("gpumesh_transport_protocol_errors_total", {"kind": "bad_magic"}) or 0
    async with with_fake_peer() as (conn, fake):
        s = await conn.open_stream()
        await fake.stream.send_all(b"HTTP/1.1 200 OK\r\n\r\nnot bigtcp at all")
        with trio.fail_after(5), pytest.raises(ConnectionLost) as ei:
            await s.receive()
        assert isinstance(ei.value.__cause__, PeerProtocolError) or "bad_magic" in str(ei.value)
        assert "bad_magic" in str(conn.error)
        # the peer was told why in a GOAWAY before the connection closed
        goaways = [f async for f in fake.frames() if f.type is FrameType.GOAWAY]
        assert goaways and "bad_magic" in m.decode_control(goaways[-1]).reason
    after = REGISTRY.get_sample_value("gpumesh_transport_protocol_errors_total", {"kind": "bad_magic"})
    assert after == before + 1


async def test_keepalive_detects_a_silent_peer(autojump_clock):
    cfg = ConnectionConfig(keepalive=1.0, dead_after=3.0)
    async with with_fake_peer(cfg) as (conn, fake):
        s = await conn.open_stream()
        with trio.fail_after(10):
            with pytest.raises(ConnectionLost, match="silent"):
                await s.receive()
        pings = [f async for f in fake.frames() if f.type is FrameType.PING]
        assert len(pings) >= 2  # it asked before giving up


async def test_idle_connection_is_closed_cleanly(autojump_clock):
    cfg = ConnectionConfig(idle_close=5.0, keepalive=None, dead_after=None)
    async with memory_pair(echo, config=cfg) as (a, b):
        async with await a.open_stream() as s:
            await s.send_msg({"x": 1})
            await s.receive_msg()
        with trio.fail_after(30):
            await a._done.wait()
            await b._done.wait()
        assert a.error is None and b.error is None


# ------------------------------------------------------------------------- wire: cancellation safety


async def test_cancelled_socket_send_never_cuts_a_frame():
    left, right = socket.socketpair()
    right.setblocking(False)
    wire = SocketWire(left)
    payload = bytes(range(256)) * (16 * KiB)  # 4 MiB: more than the socket buffers hold
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as n:
            async def send():
                await wire.send([b"HEADER", memoryview(payload)])

            n.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()  # the kernel buffer is full: send is waiting
            scope.cancel()
    assert wire.has_backlog
    # whatever was not written is kept (copied) and goes out first on the next send
    received = bytearray()

    async def drain():
        while len(received) < 6 + len(payload) + 5:
            try:
                chunk = right.recv(1 << 20)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(right)
                continue
            received.extend(chunk)

    async with trio.open_nursery() as n:
        n.start_soon(drain)
        await wire.send([b"AFTER"])
    assert bytes(received) == b"HEADER" + payload + b"AFTER"
    left.close()
    right.close()


async def test_identity_of_memory_connections_is_a_claim():
    ident = Identity.generate()
    a_stream, b_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as n:
        async def server():
            await connect_over_stream(b_stream, nursery=n, outbound=False, identity=ident)

        n.start_soon(server)
        conn = await connect_over_stream(a_stream, nursery=n, outbound=True, expected_peer_id=ident.peer_id_str)
        assert conn.peer_id == ident.peer_id_str and not conn.secure
        n.cancel_scope.cancel()


async def test_connection_window_bounds_memory_across_stalled_streams():
    """Five streams push into handlers that do not read yet: together they buffer at most the connection
    window (not five stream windows); once the handlers read, everything arrives."""
    cfg = ConnectionConfig(max_frame=16 * KiB, window=64 * KiB, conn_window=128 * KiB)
    go = trio.Event()
    totals = []

    async def handler(stream):
        await go.wait()
        total = 0
        async for chunk in stream:
            total += len(chunk)
        totals.append(total)
        await stream.send_msg({"total": total})

    async with memory_pair(handler, config=cfg) as (a, b):
        streams = [await a.open_stream() for _ in range(5)]

        async def push(s):
            for _ in range(8):
                await s.send_bytes(b"z" * 16 * KiB)
            await s.close()
            assert (await s.receive_msg())["total"] == 8 * 16 * KiB

        async with trio.open_nursery() as n:
            for s in streams:
                n.start_soon(push, s)
            await trio.testing.wait_all_tasks_blocked()
            assert b._mux.buffered_bytes == 128 * KiB  # all senders wait: the connection window is full
            go.set()
        assert totals == [8 * 16 * KiB] * 5
