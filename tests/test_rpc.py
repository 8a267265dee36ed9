"""RPC layer (mesh/bigtcp/rpc.py): unary and streaming calls, error mapping, deadlines, cancellation, sync client."""

from __future__ import annotations

import hashlib
from contextlib import asynccontextmanager

import pytest
import trio
from prometheus_client import REGISTRY

from mesh.bigtcp.rpc import Call, MeshClient, RpcError, RpcServer, SyncMeshClient
from mesh.bigtcp.transport import PeerIdMismatch, Transport
from mesh.identity import Identity

KiB = 1024


def build_server(events: dict) -> RpcServer:
    rpc = RpcServer()

    @rpc.method("echo")
    async def _echo(call: Call):
        return {"body": call.body, "peer": call.peer_id}

    @rpc.method("fail")
    async def _fail(call: Call):
        raise RpcError("not_found", f"no job {call.body['id']}", data={"id": call.body["id"]})

    @rpc.method("crash")
    async def _crash(call: Call):
        raise ValueError("broken invariant")

    @rpc.method("download")
    async def _download(call: Call):
        n = call.body["n"]
        for i in range(n):
            await call.send({"i": i})
            await call.send_bytes(bytes([i]) * (100 * KiB))
        return {"count": n}

    @rpc.method("upload")
    async def _upload(call: Call):
        h = hashlib.sha256()
        items = []
        async for item in call:
            if isinstance(item, dict):
                items.append(item)
            else:
                h.update(item)
        return {"sha256": h.hexdigest(), "items": items}

    @rpc.method("hang")
    async def _hang(call: Call):
        try:
            events["hang_started"].set()
            await trio.sleep_forever()
        finally:
            events["hang_cancelled"].set()

    @rpc.method("fails_when_cancelled")
    async def _fails_when_cancelled(call: Call):
        async def fail_on_cancel():
            try:
                await trio.sleep_forever()
            finally:
                raise ValueError("cleanup failed")  # beside the other tasks' Cancelled: an exception group

        async with trio.open_nursery() as n:
            n.start_soon(fail_on_cancel)
            n.start_soon(trio.sleep_forever)
            events["hang_started"].set()
            await trio.sleep_forever()

    return rpc


@asynccontextmanager
async def rpc_server(insecure=False):
    events = {"hang_started": trio.Event(), "hang_cancelled": trio.Event()}
    rpc = build_server(events)
    t = Transport(Identity.generate(), host="127.0.0.1", port=0, insecure=insecure, handler=rpc.handle_stream)
    async with trio.open_nursery() as n:
        await n.start(t.serve)
        yield t, events
        await t.aclose()


def count(method, code) -> float:
    return REGISTRY.get_sample_value("gpumesh_dataplane_rpc_requests_total", {"method": method, "code": code}) or 0.0


@pytest.mark.parametrize("insecure", [False, True])
async def test_unary_call(insecure):
    async with rpc_server(insecure) as (t, _ev):
        before = count("echo", "ok")
        async with MeshClient.connect("127.0.0.1", t.port, peer_id=t.peer_id, insecure=insecure) as c:
            me = c.transport.peer_id
            assert await c.call("echo", {"x": [1, 2], "s": "é"}) == {"body": {"x": [1, 2], "s": "é"}, "peer": me}
            assert await c.call("echo") == {"body": {}, "peer": me}
            assert c.peer_id == t.peer_id
        assert count("echo", "ok") == before + 2


async def test_address_string_and_identity_pinning():
    async with rpc_server() as (t, _ev):
        ident = Identity.generate()
        async with MeshClient.connect(f"127.0.0.1:{t.port}", identity=ident) as c:
            assert c.peer_id == t.peer_id  # learned from the server's certificate, then pinned
            assert (await c.call("echo"))["peer"] == ident.peer_id_str
        with pytest.raises(PeerIdMismatch):
            async with MeshClient.connect("127.0.0.1", t.port, peer_id=Identity.generate().peer_id_str):
                pass
        with pytest.raises(KeyError):  # the caller's exceptions come out as they went in (no group)
            async with MeshClient.connect("127.0.0.1", t.port):
                raise KeyError("mine")


async def test_error_mapping():
    async with rpc_server() as (t, _ev):
        async with MeshClient.connect("127.0.0.1", t.port, peer_id=t.peer_id) as c:
            with pytest.raises(RpcError) as ei:
                await c.call("fail", {"id": 7})
            assert (ei.value.code, ei.value.message, ei.value.data) == ("not_found", "no job 7", {"id": 7})
            with pytest.raises(RpcError) as ei:
                await c.call("crash")
            assert ei.value.code == "internal" and "ValueError: broken invariant" in ei.value.message
            with pytest.raises(RpcError) as ei:
                await c.call("no.such.method")
            assert ei.value.code == "unknown_method"
            assert await c.call("echo", {"still": "fine"})  # errors do not hurt the connection
    assert count("fail", "not_found") >= 1 and count("crash", "internal") >= 1


async def test_streamed_download():
    async with rpc_server() as (t, _ev):
        async with MeshClient.connect("127.0.0.1", t.port, peer_id=t.peer_id) as c:
            async with c.open("download", {"n": 5}) as call:
                got = [item async for item in call]
                assert await call.result() == {"count": 5}
            assert [x for x in got if isinstance(x, dict)] == [{"i": i} for i in range(5)]
            assert [bytes(x[:1]) for x in got if not isinstance(x, dict)] == [bytes([i]) for i in range(5)]
            # call() on a streaming method skips the items and returns the final body
            assert await c.call("download", {"n": 3}) == {"count": 3}


async def test_streamed_upload():
    async with rpc_server() as (t, _ev):
        async with MeshClient.connect("127.0.0.1", t.port, peer_id=t.peer_id) as c:
            blobs = [bytes([i]) * (300 * KiB) for i in range(4)]
            async with c.open("upload", uploads=True) as call:
                for b in blobs:
                    await call.send_bytes(b)
                await call.send({"name": "scene.obj"})
                await call.done_sending()
                res = await call.result()
            assert res == {"sha256": hashlib.sha256(b"".join(blobs)).hexdigest(), "items": [{"name": "scene.obj"}]}


async def test_many_concurrent_calls_share_one_connection():
    async with rpc_server() as (t, _ev):
        async with MeshClient.connect("127.0.0.1", t.port, peer_id=t.peer_id) as c:
            results = []

            async def one(i):
                results.append((await c.call("echo", {"i": i}))["body"]["i"])

            async with trio.open_nursery() as n:
                for i in range(50):
                    n.start_soon(one, i)
            assert sorted(results) == list(range(50))
            assert len(c.transport.connections()) == 1


async def test_deadline_cancels_the_handler():
    async with rpc_server() as (t, ev):
        async with MeshClient.connect("127.0.0.1", t.port, peer_id=t.peer_id) as c:
            with pytest.raises(RpcError) as ei:
                await c.call("hang", timeout=0.3)
            assert ei.value.code == "deadline_exceeded"
            with trio.fail_after(10):
                await ev["hang_cancelled"].wait()


async def test_abandoning_a_streaming_call_cancels_the_handler():
    async with rpc_server() as (t, ev):
        async with MeshClient.connect("127.0.0.1", t.port, peer_id=t.peer_id) as c:
            with pytest.raises(KeyError):
                async with c.open("hang"):
                    await ev["hang_started"].wait()
                    raise KeyError("client gives up")
            with trio.fail_after(10):
                await ev["hang_cancelled"].wait()


async def test_a_handler_failing_while_cancelled_stays_on_its_stream():
    """A handler whose nursery raises beside the Cancelled of a client's reset (a BaseExceptionGroup, not an
    Exception) ends that stream only: the server and the connection carry on."""
    async with rpc_server() as (t, ev):
        async with MeshClient.connect("127.0.0.1", t.port, peer_id=t.peer_id) as c:
            for _ in range(2):
                ev["hang_started"] = trio.Event()
                with pytest.raises(KeyError):
                    async with c.open("fails_when_cancelled"):
                        await ev["hang_started"].wait()
                        raise KeyError("client gives up")
                assert (await c.call("echo", {"x": 1}))["body"] == {"x": 1}


async def test_connection_loss_is_unavailable():
    async with rpc_server() as (t, ev):
        async with MeshClient.connect("127.0.0.1", t.port, peer_id=t.peer_id) as c:
            async with trio.open_nursery() as n:
                async def kill():
                    await ev["hang_started"].wait()
                    for conn in t.connections():
                        conn.abort()

                n.start_soon(kill)
                with pytest.raises(RpcError) as ei:
                    await c.call("hang")
            assert ei.value.code == "unavailable" and ei.value.__cause__ is not None
            # the next call dials a new connection
            assert (await c.call("echo"))["body"] == {}


async def test_sync_client():
    async with rpc_server() as (t, _ev):
        def blocking_user():
            with SyncMeshClient(f"127.0.0.1:{t.port}", peer_id=t.peer_id) as c:
                assert c.peer_id == t.peer_id
                assert c.call("echo", {"a": 1})["body"] == {"a": 1}
                with pytest.raises(RpcError) as ei:
                    c.call("fail", {"id": 3})
                assert ei.value.code == "not_found"
                with c.open("download", {"n": 3}) as call:
                    items = list(call)
                    assert call.result() == {"count": 3}
                assert len(items) == 6
                with c.open("upload", uploads=True) as call:
                    call.send_bytes(b"abc")
                    call.send({"k": 1})
                    call.done_sending()
                    assert call.result()["items"] == [{"k": 1}]
                with pytest.raises(RpcError) as ei:
                    c.call("hang", timeout=0.2)
                assert ei.value.code == "deadline_exceeded"
            with pytest.raises(RuntimeError, match="closed"):
                c.call("echo")

        with trio.fail_after(60):
            await trio.to_thread.run_sync(blocking_user)


async def test_sync_client_call_in_flight_when_closed_raises_instead_of_hanging():
    """A blocking call still running on the private loop when another thread closes the client ends with a
    RuntimeError in its caller (not a hang, not trio.Cancelled); calls from threads run concurrently."""
    import threading

    async with rpc_server() as (t, _ev):
        def blocking_user():
            c = SyncMeshClient(f"127.0.0.1:{t.port}", peer_id=t.peer_id)
            errors: list[BaseException] = []

            def hang():
                try:
                    c.call("hang")
                except BaseException as e:  # noqa: BLE001 - what the caller sees
                    errors.append(e)

            th = threading.Thread(target=hang)
            th.start()
            assert c.call("echo", {"b": 2})["body"] == {"b": 2}  # meanwhile, on the same connection
            c.close()
            th.join(30)
            assert not th.is_alive() and len(errors) == 1
            assert isinstance(errors[0], RuntimeError) and "closed" in str(errors[0])

        with trio.fail_after(60):
            await trio.to_thread.run_sync(blocking_user)


async def test_sync_client_run_soon_is_answered_by_a_callback_on_the_loop():
    """`run_soon(start)`: `start(done)` runs on the private loop; its later `done(value)` (here from a callback the
    loop runs) answers the blocked caller; a start that declines gives (False, None), one that raises raises in
    the caller; a caller whose answer never comes gets RuntimeError once another thread closes the client."""
    import threading

    async with rpc_server() as (t, _ev):
        def blocking_user():
            c = SyncMeshClient(f"127.0.0.1:{t.port}", peer_id=t.peer_id)
            on_loop: list[bool] = []

            def start(done):
                on_loop.append(threading.current_thread() is c._thread)
                trio.lowlevel.current_trio_token().run_sync_soon(done, 42)  # answered later, by the loop
                return True

            assert c.run_soon(start) == (True, 42) and on_loop == [True]
            assert c.run_soon(lambda done: False) == (False, None)

            def broken(done):
                raise ValueError("no such thing")

            with pytest.raises(ValueError, match="no such thing"):
                c.run_soon(broken)
            assert c.call("echo", {"c": 3})["body"] == {"c": 3}  # the loop carries on
            errors: list[BaseException] = []
            waiting = threading.Event()

            def never_answered():
                try:
                    c.run_soon(lambda done: waiting.set() or True)
                except BaseException as e:  # noqa: BLE001 - what the caller sees
                    errors.append(e)

            th = threading.Thread(target=never_answered)
            th.start()
            assert waiting.wait(30)  # started on the loop: its caller waits for an answer that will not come
            c.close()
            th.join(30)
            assert not th.is_alive() and len(errors) == 1
            assert isinstance(errors[0], RuntimeError) and "closed" in str(errors[0])
            with pytest.raises(RuntimeError, match="closed"):
                c.run_soon(start)

        with trio.fail_after(60):
            await trio.to_thread.run_sync(blocking_user)


async def test_sync_client_reports_connect_errors():
    async with rpc_server() as (t, _ev):
        def wrong_id():
            with pytest.raises(PeerIdMismatch):
                SyncMeshClient("127.0.0.1", t.port, peer_id=Identity.generate().peer_id_str)

        await trio.to_thread.run_sync(wrong_id)


async def test_call_refused_by_a_closing_server_is_retried_once():
    """A server that refuses the stream before reading it (GOAWAY race, stream limit) never ran the
    request, so MeshClient sends it again; a second refusal is an error."""
    import trio.testing

    from mesh.bigtcp import messages as msgs
    from mesh.bigtcp.framing import FLAG_END, FrameDecoder, FrameType, encode_frame
    from mesh.bigtcp.transport import connect_over_stream

    async def serve_fake(stream, refusals):
        def frame(t, flags, sid, payload=b""):
            return b"".join(bytes(p) for p in encode_frame(t, flags, sid, payload))

        t, p = msgs.encode_control(msgs.Hello(peer_id="fake", max_frame=1 << 20, window=1 << 20, max_streams=8))
        await stream.send_all(frame(t, 0, 0, p))
        dec = FrameDecoder()
        while data := await stream.receive_some():
            for f in dec.feed(data):
                if f.type is FrameType.MSG:
                    if refusals:
                        refusals -= 1
                        t, p = msgs.encode_control(msgs.Reset(msgs.CODE_REFUSED, "going away"))
                        await stream.send_all(frame(t, 0, f.stream_id, p))
                    else:
                        body = msgs.unpack_message(f.payload)["b"]
                        await stream.send_all(frame(FrameType.MSG, FLAG_END, f.stream_id, msgs.pack_message({"ok": body})))

    class FixedTransport:
        def __init__(self, conn):
            self.conn = conn

        async def connect(self, host, port, peer_id):
            return self.conn

    for refusals, ok in ((1, True), (2, False)):
        a, b = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as n:
            n.start_soon(serve_fake, b, refusals)
            conn = await connect_over_stream(a, nursery=n, outbound=True)
            client = MeshClient(FixedTransport(conn), "fake", 1, "fake")  # type: ignore[arg-type]
            if ok:
                assert await client.call("echo", {"n": 1}) == {"n": 1}
            else:
                with pytest.raises(RpcError) as ei:
                    await client.call("echo", {"n": 1})
                assert ei.value.code == "unavailable" and "going away" in ei.value.message
            n.cancel_scope.cancel()


async def test_server_side_deadline_answers_and_the_next_call_still_works():
    """The server's own deadline ("t") cancels the handler and answers deadline_exceeded while the client
    still listens (the client here sets no timer of its own); the handler task that was cancelled ends and
    the next calls are served (by a fresh task, then by reused ones)."""
    async with rpc_server() as (t, ev):
        before = count("hang", "deadline_exceeded")
        client = Transport(Identity.generate(), listen=False)
        async with trio.open_nursery() as n:
            await n.start(client.serve)
            conn = await client.connect("127.0.0.1", t.port, t.peer_id)
            async with await conn.open_stream({"rpc": 1}) as s:
                await s.send_msg({"id": 1, "m": "hang", "b": {}, "t": 0.2}, end=True)
                with trio.fail_after(10):
                    reply = await s.receive_msg()
            assert reply["err"]["code"] == "deadline_exceeded"
            assert ev["hang_cancelled"].is_set()
            assert count("hang", "deadline_exceeded") == before + 1
            c = MeshClient(client, "127.0.0.1", t.port, t.peer_id)
            for i in range(20):
                assert (await c.call("echo", {"i": i}))["body"] == {"i": i}
            await client.aclose()


async def test_a_reset_after_a_call_does_not_cancel_the_next_call_on_the_same_handler_task():
    """Handler tasks are reused: a reset of a stream whose call already finished (its handler answered
    while the client's side was still open) must not cancel the call the same task serves next."""
    async with rpc_server() as (t, ev):
        async with MeshClient.connect("127.0.0.1", t.port, peer_id=t.peer_id) as c:
            async with c.open("echo", {"a": 1}, uploads=True) as first:  # the client's side stays open
                assert (await first.result())["body"] == {"a": 1}
                async with trio.open_nursery() as n:
                    n.start_soon(c.call, "hang")  # served by the now idle handler task of "echo"
                    with trio.fail_after(10):
                        await ev["hang_started"].wait()
                    first.stream.reset("late reset after the final response")
                    assert (await c.call("echo", {"b": 2}))["body"] == {"b": 2}  # the reset was read before this
                    assert not ev["hang_cancelled"].is_set()
                    n.cancel_scope.cancel()
