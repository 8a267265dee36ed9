"""The chaos suite's fault-injecting proxy on real loopback TCP: it forwards bytes unchanged, flips exactly the
bytes it was told to, holds traffic back while stalled, and resets connections on command."""

import pytest
import trio

from scheduler.devtools.faultproxy import FaultProxy


async def _echo_server(nursery) -> int:
    async def echo(stream):
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    listeners = await nursery.start(trio.serve_tcp, echo, 0)
    return listeners[0].socket.getsockname()[1]


async def _roundtrip(stream, data: bytes) -> bytes:
    await stream.send_all(data)
    got = b""
    while len(got) < len(data):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        got += chunk
    return got


@pytest.fixture
async def proxied(nursery):
    port = await _echo_server(nursery)
    proxy = FaultProxy("127.0.0.1", port, seed=3)
    await nursery.start(proxy.serve)
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    yield proxy, stream
    await stream.aclose()


async def test_forwards_unchanged_then_corrupts_exactly_what_it_was_told(proxied):
    proxy, stream = proxied
    data = bytes(range(256)) * 40
    assert await _roundtrip(stream, data) == data
    proxy.faults.corrupt_chunks = 1
    got = await _roundtrip(stream, data)
    diff = [i for i, (a, b) in enumerate(zip(data, got, strict=True)) if a != b]
    assert len(diff) == 1 and bin(data[diff[0]] ^ got[diff[0]]).count("1") == 1
    assert proxy.stats.corrupted == 1 and proxy.faults.corrupt_chunks == 0
    assert await _roundtrip(stream, data) == data


async def test_a_stall_holds_traffic_until_it_ends(proxied):
    proxy, stream = proxied
    proxy.faults.stall()
    await stream.send_all(b"held")
    with trio.move_on_after(0.3) as cs:
        await stream.receive_some(10)
    assert cs.cancelled_caught  # nothing came through while stalled
    proxy.faults.unstall()
    got = b""
    while len(got) < 4:
        got += await stream.receive_some(10)
    assert got == b"held"


async def test_reset_drops_the_connection(proxied):
    proxy, stream = proxied
    assert await _roundtrip(stream, b"x") == b"x"
    assert proxy.reset_all() == 1
    with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
        with trio.fail_after(10):
            while True:  # the reset arrives as an error or EOF; keep writing until it shows
                await stream.send_all(b"y" * 65536)
                if not await stream.receive_some(65536):
                    raise trio.BrokenResourceError("eof")
    assert proxy.stats.resets == 1
