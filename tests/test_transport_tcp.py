"""bigtcp over real TCP on 127.0.0.1: TLS identity binding, refusals, pooling, concurrency, peer death."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
import textwrap
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from mesh.bigtcp.transport import (
    ConnectError,
    ConnectionClosing,
    ConnectionLost,
    EndOfStream,
    HandshakeError,
    PeerIdMismatch,
    Transport,
)
from mesh.identity import Identity
from mesh.waiting import until

KiB, MiB = 1024, 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


def sample(name: str, labels: dict) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def echo(stream):
    async for item in stream:
        if isinstance(item, dict):
            await stream.send_msg(item)
        else:
            await stream.send_bytes(item)
    await stream.close()


@asynccontextmanager
async def pair(handler=echo, insecure=False, **kw):
    server = Transport(Identity.generate(), host="127.0.0.1", port=0, insecure=insecure, handler=handler, **kw)
    client = Transport(Identity.generate(), insecure=insecure, listen=False, **kw)
    async with trio.open_nursery() as n:
        await n.start(server.serve)
        await n.start(client.serve)
        yield server, client
        with trio.fail_after(10):
            await client.aclose()
            await server.aclose()


@pytest.mark.parametrize("insecure", [False, True])
async def test_round_trip_and_identities(insecure):
    async with pair(insecure=insecure) as (server, client):
        conn = await client.connect("127.0.0.1", server.port, server.peer_id)
        assert conn.peer_id == server.peer_id and conn.secure is (not insecure)
        async with await conn.open_stream() as s:
            big = os.urandom(16 * MiB)  # the largest frame allowed by default
            await s.send_bytes(big)
            await s.send_msg({"k": "v"})
            await s.close()
            assert hashlib.sha256(await s.receive_bytes()).digest() == hashlib.sha256(big).digest()
            assert await s.receive_msg() == {"k": "v"}
            with pytest.raises(EndOfStream):
                await s.receive()
        [inbound] = server.connections()
        assert inbound.peer_id == client.peer_id  # the server knows (TLS: has verified) who dialed
        assert server.address == f"127.0.0.1:{server.port}"


async def test_wrong_identity_is_refused_with_both_ids_named():
    before = sample("gpumesh_transport_handshake_failures_total", {"reason": "peer_id_mismatch"})
    async with pair() as (server, client):
        other = Identity.generate().peer_id_str
        with pytest.raises(PeerIdMismatch) as ei:
            await client.connect("127.0.0.1", server.port, other)
        msg = str(ei.value)
        assert other in msg and server.peer_id in msg and f"127.0.0.1:{server.port}" in msg
        assert ei.value.expected == other and ei.value.actual == server.peer_id
        assert not client.connections()
        # the right id still works afterwards
        conn = await client.connect("127.0.0.1", server.port, server.peer_id)
        assert conn.peer_id == server.peer_id
    assert sample("gpumesh_transport_handshake_failures_total", {"reason": "peer_id_mismatch"}) == before + 1


async def test_plaintext_wrong_claim_is_refused_too():
    async with pair(insecure=True) as (server, client):
        with pytest.raises(PeerIdMismatch):
            await client.connect("127.0.0.1", server.port, Identity.generate().peer_id_str)


async def test_tls_and_plaintext_do_not_mix():
    async with pair() as (tls_server, _c), pair(insecure=True) as (plain_server, _c2):
        plain_client = Transport(Identity.generate(), insecure=True, listen=False, handshake_timeout=5)
        tls_client = Transport(Identity.generate(), listen=False, handshake_timeout=5)
        async with trio.open_nursery() as n:
            await n.start(plain_client.serve)
            await n.start(tls_client.serve)
            with pytest.raises(HandshakeError):
                await plain_client.connect("127.0.0.1", tls_server.port)
            with pytest.raises(HandshakeError):
                await tls_client.connect("127.0.0.1", plain_server.port)
            await plain_client.aclose()
            await tls_client.aclose()


async def test_client_without_certificate_is_refused_and_counted():
    before = sample("gpumesh_transport_handshake_failures_total", {"reason": "missing_identity"})
    async with pair() as (server, _client):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
        tls = trio.SSLStream(tcp, ctx, server_hostname=None)
        await tls.do_handshake()  # TLS 1.3: the client finishes first; the server checks afterwards
        with trio.fail_after(10):
            with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
                while await tls.receive_some():  # the server sends nothing and hangs up
                    pass
                raise trio.BrokenResourceError
        await trio.aclose_forcefully(tls)
        await until(lambda: sample("gpumesh_transport_handshake_failures_total", {"reason": "missing_identity"}) == before + 1)
        assert not server.connections()


async def test_connection_refused_is_a_connect_error():
    async with pair() as (server, client):
        port = server.port
    c = Transport(Identity.generate(), listen=False)
    async with trio.open_nursery() as n:
        await n.start(c.serve)
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
            await c.connect("127.0.0.1", port)
        await c.aclose()


async def test_pool_keeps_one_connection_per_peer():
    async with pair() as (server, client):
        conns = []

        async def dial():
            conns.append(await client.connect("127.0.0.1", server.port, server.peer_id))

        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(dial)
        assert len({id(c) for c in conns}) == 1 and len(client.connections()) == 1
        assert await client.connect("127.0.0.1", server.port) is conns[0]  # by address too
        await conns[0].aclose()
        again = await client.connect("127.0.0.1", server.port, server.peer_id)
        assert again is not conns[0] and again.usable


async def test_64_concurrent_streams_over_tls():
    async with pair() as (server, client):
        conn = await client.connect("127.0.0.1", server.port, server.peer_id)

        async def one(i):
            data = os.urandom(256 * KiB + i)
            async with await conn.open_stream() as s:
                for k in range(0, len(data), 64 * KiB):
                    await s.send_bytes(data[k : k + 64 * KiB])
                await s.close()
                back = bytearray()
                async for chunk in s:
                    back += chunk
            assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()

        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for i in range(64):
                    n.start_soon(one, i)
        assert sample("gpumesh_transport_sent_bytes_total", {"peer": server.peer_id}) > 64 * 256 * KiB
        assert sample("gpumesh_transport_received_frames_total", {"peer": server.peer_id}) >= 64 * 5
        assert conn.stream_counts() == (0, 0)


async def test_peer_killed_mid_stream_surfaces_on_every_stream():
    started = trio.Event()
    count = 0

    async def handler(stream):
        nonlocal count
        await stream.receive_bytes()
        count += 1
        if count == 8:
            started.set()
        await trio.sleep_forever()

    async with pair(handler) as (server, client):
        conn = await client.connect("127.0.0.1", server.port, server.peer_id)
        errors = []

        async def reader(s):
            try:
                await s.receive()
            except ConnectionLost as e:
                errors.append(e)

        streams = []
        async with trio.open_nursery() as n:
            for _ in range(8):
                s = await conn.open_stream()
                await s.send_bytes(b"x" * 100_000)
                streams.append(s)
                n.start_soon(reader, s)
            await started.wait()
            [inbound] = server.connections()
            inbound.abort()  # RST: as if the peer's process died
        assert len(errors) == 8
        for s in streams:
            with pytest.raises(ConnectionLost):
                await s.send_bytes(b"more")
        assert conn.closed and not conn.usable


PEER_SCRIPT = textwrap.dedent(
    """
    import sys, trio
    from mesh.identity import Identity
    from mesh.bigtcp.transport import Transport

    async def handler(stream):
        await stream.receive_msg()
        await stream.send_msg({"ready": True})
        await trio.sleep_forever()

    async def main():
        t = Transport(Identity.generate(), host="127.0.0.1", port=0, handler=handler)
        async with trio.open_nursery() as n:
            await n.start(t.serve)
            print(t.port, t.peer_id, flush=True)

    trio.run(main)
    """
)


async def test_peer_process_killed_surfaces_on_every_stream():
    proc = subprocess.Popen([sys.executable, "-c", PEER_SCRIPT], stdout=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        port, peer_id = line.split()
        client = Transport(Identity.generate(), listen=False)
        async with trio.open_nursery() as n:
            await n.start(client.serve)
            conn = await client.connect("127.0.0.1", int(port), peer_id)
            streams = []
            for _ in range(4):
                s = await conn.open_stream()
                await s.send_msg({})
                assert await s.receive_msg() == {"ready": True}
                streams.append(s)
            proc.kill()
            for s in streams:
                with trio.fail_after(10), pytest.raises(ConnectionLost):
                    await s.receive()
            await client.aclose()
    finally:
        proc.kill()
        proc.wait()


async def test_slow_reader_and_reset_over_tls():
    """On a real TLS connection: a stream whose reader stalls holds one window and blocks only its own
    sender; resetting it frees the buffered bytes at once."""
    holders = {}
    release = trio.Event()

    async def handler(stream):
        if stream.meta.get("slow"):
            holders["slow"] = stream
            await release.wait()
            return
        await echo(stream)

    async with pair(handler, max_frame=64 * KiB, window=256 * KiB) as (server, client):
        conn = await client.connect("127.0.0.1", server.port, server.peer_id)
        slow = await conn.open_stream({"slow": True})
        sent = 0

        async def push_slow():
            nonlocal sent
            while True:
                await slow.send_bytes(b"s" * 64 * KiB)
                sent += 1

        async with trio.open_nursery() as n:
            n.start_soon(push_slow)
            async with await conn.open_stream() as fast:
                data = os.urandom(8 * MiB)

                async def pump():
                    for k in range(0, len(data), 64 * KiB):
                        await fast.send_bytes(data[k : k + 64 * KiB])
                    await fast.close()

                n.start_soon(pump)
                back = bytearray()
                async for chunk in fast:
                    back += chunk
                assert back == data
            # the slow sender is out of credit and waits; nothing more moves on that stream
            await until(lambda: sent == 4 and conn._mux.send_credit(slow.id) == 0)
            assert sent == 4  # exactly one window (256 KiB) in flight
            srv = holders["slow"]
            await until(lambda: srv.buffered == 256 * KiB)
            srv.reset("enough")
            assert srv.buffered == 0 and srv.connection._mux.buffered_bytes == 0
            n.cancel_scope.cancel()
        with trio.fail_after(5):
            with pytest.raises(Exception) as ei:
                await slow.receive()
        assert "enough" in str(ei.value)
        release.set()


async def test_graceful_close_over_tls_delivers_everything():
    got = []
    done = trio.Event()

    async def handler(stream):
        async for chunk in stream:
            got.append(bytes(chunk))
        done.set()

    async with pair(handler) as (server, client):
        conn = await client.connect("127.0.0.1", server.port, server.peer_id)
        s = await conn.open_stream()
        chunks = [os.urandom(100_000 + i) for i in range(30)]
        for c in chunks:
            await s.send_bytes(c)
        await s.close()
        with trio.fail_after(10):
            await conn.aclose()
            await done.wait()
        assert got == chunks and conn.error is None


async def test_admission_hooks_refuse_before_connect_returns():
    """hello_extra/authorize: the dialer's HELLO carries a proof; the listener refuses without one, and
    the dialer's connect() fails with the reason instead of returning a connection that dies later."""

    def authorize(peer_id, extra, outbound):
        if outbound:
            return "node"
        if extra.get("proof") != "sesame":
            raise HandshakeError("refused", "no mesh proof")
        return ("peer", peer_id)

    server = Transport(Identity.generate(), host="127.0.0.1", port=0, handler=echo, authorize=authorize)
    good = Transport(Identity.generate(), listen=False, hello_extra=lambda me, them: {"proof": "sesame"})
    bad = Transport(Identity.generate(), listen=False)
    before = sample("gpumesh_transport_handshake_failures_total", {"reason": "refused"})
    async with trio.open_nursery() as n:
        for t in (server, good, bad):
            await n.start(t.serve)
        conn = await good.connect("127.0.0.1", server.port, server.peer_id)
        [inbound] = server.connections()
        assert inbound.principal == ("peer", good.peer_id)
        async with await conn.open_stream() as s:
            await s.send_msg({"x": 1})
            assert await s.receive_msg() == {"x": 1}
        with pytest.raises(HandshakeError, match="refused") as ei:
            await bad.connect("127.0.0.1", server.port, server.peer_id)
        assert ei.value.reason == "refused"
        assert len(server.connections()) == 1
        for t in (bad, good, server):
            await t.aclose()
    # counted on both ends: the listener refused, the dialer was refused
    assert sample("gpumesh_transport_handshake_failures_total", {"reason": "refused"}) == before + 2


async def test_connection_out_of_stream_ids_is_retired_and_replaced():
    async with pair() as (server, client):
        conn = await client.connect("127.0.0.1", server.port, server.peer_id)
        conn._mux._next_id = 0xFFFFFFFF - 2  # two ids left
        streams = [await conn.open_stream(), await conn.open_stream()]
        assert not conn.usable
        with pytest.raises(ConnectionClosing, match="stream ids"):
            await conn.open_stream()
        fresh = await client.connect("127.0.0.1", server.port, server.peer_id)
        assert fresh is not conn and fresh.usable
        for s in streams:  # the old connection still serves its streams, then closes
            await s.send_msg({"k": 1})
            assert await s.receive_msg() == {"k": 1}
            await s.close()
            with pytest.raises(EndOfStream):
                await s.receive()
        with trio.fail_after(10):
            await conn._done.wait()
        assert conn.error is None


async def test_tls_is_1_3_with_a_preferred_suite():
    async with pair() as (server, client):
        conn = await client.connect("127.0.0.1", server.port, server.peer_id)
        obj = conn._wire.session.obj
        assert obj.version() == "TLSv1.3"
        assert obj.cipher()[0] in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384")
        assert obj.selected_alpn_protocol() == "gpumesh-bigtcp/1"


async def test_busy_port_is_a_plain_connect_error():
    async with pair() as (server, _client):
        busy = Transport(Identity.generate(), host="127.0.0.1", port=server.port)
        async with trio.open_nursery() as n:
            with pytest.raises(ConnectError, match="cannot listen"):
                await n.start(busy.serve)
