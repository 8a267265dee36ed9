"""Attacks on a live mesh, as an outsider, a mesh member and a token holder would make them: used by the
hostile-mesh tests and by `make fuzz`. Nothing here is used by a node.

    rss_bytes(pid), fd_count(pid)       what a node process holds (from /proc)
    tls_socket(host, port)              a TLS connection to a data plane, before any HELLO (a fresh identity)
    hello_bomb(host, port, size)        a HELLO frame header claiming `size` bytes, then that many bytes
    slowloris(host, port, n)            n TCP connections that never say anything
    GossipMember                        a libp2p member of the mesh's gossip: publishes any bytes as adverts,
                                        records the adverts it sees, by peer
    signed_advert(identity, body)       an advert body (any map) signed with a member's own key
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import trio

from mesh import advert_delta, gossip
from mesh.advert import Advert, DeviceAdvert
from mesh.bigtcp.framing import FrameType, encode_header
from mesh.bigtcp.tls import make_contexts
from mesh.identity import Identity
from mesh.membership import MembershipView


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tls_socket(host: str, port: int, timeout: float = 5.0) -> ssl.SSLSocket:
    ctx = make_contexts(Identity.generate()).client
    raw = socket.create_connection((host, port), timeout=timeout)
    return ctx.wrap_socket(raw)


def frame_header(ftype: FrameType, length: int, stream_id: int = 0) -> bytes:
    """A valid header announcing `length` payload bytes (CRC of an empty payload: the CRC is only checked
    once the payload is read, which a bounded receiver never does for an oversized frame)."""
    hdr = bytearray(encode_header(ftype, 0, stream_id, b""))
    hdr[12:16] = length.to_bytes(4, "big")
    return bytes(hdr)


def hello_bomb(host: str, port: int, size: int = 16 << 20) -> str:
    """Send a HELLO of `size` bytes of empty msgpack maps (0x80) over TLS; returns how the node answered:
    'closed' (the connection ended before we sent it all) or 'accepted' (it read every byte)."""
    s = tls_socket(host, port)
    try:
        s.sendall(frame_header(FrameType.HELLO, size))
        chunk = b"\x80" * (1 << 16)
        sent = 0
        while sent < size:
            s.sendall(chunk[: min(len(chunk), size - sent)])
            sent += min(len(chunk), size - sent)
        s.settimeout(5)
        return "accepted" if s.recv(1) else "closed"
    except OSError:
        return "closed"
    finally:
        s.close()


@contextmanager
def slowloris(host: str, port: int, n: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(n):
            try:
                socks.append(socket.create_connection((host, port), timeout=2))
            except OSError:
                break
        yield socks
    finally:
        for s in socks:
            s.close()


def signed_advert(identity: Identity, body: dict[str, Any]) -> bytes:
    raw = msgpack.packb(body, use_bin_type=True)
    return msgpack.packb({"b": raw, "s": identity.sign(raw)}, use_bin_type=True)


def advert_body(identity: Identity, seq: int, over: dict[str, Any] | None = None) -> dict[str, Any]:
    """A well-formed advert body of `identity`; `over` replaces fields (its "device" entry: device fields)."""
    over = dict(over or {})
    dev = dict(id="0:0", kind="cpu", vendor="x", name="x", compute_units=1, global_mem_bytes=1 << 30, fp64=True,
               int64=True, mulmod_mops=100.0, f32_gflops=1.0, slots=1, free_slots=1, queue_depth=0)
    dev.update(over.pop("device", {}))
    body = dict(peer_id=identity.peer_id_str, public_key=identity.key_pair.public_key.to_bytes(), seq=seq,
                timestamp=time.time(), addrs=[], data_addr="127.0.0.1:9", devices=[list(dev.values())],
                software="hostile", interval_s=1.0, labels={}, version=1)
    body.update(over)
    return body


class GossipMember:
    """A member of the mesh's gossip (it holds no mesh key: for meshes without one) that publishes what it is
    told to and records every advert it receives, raw, by the peer that signed it.

        async with trio.open_nursery() as n:
            m = GossipMember(bootstrap)
            await n.start(m.run)
            await m.publish(bytes)
    """

    def __init__(self, bootstrap: list[str], identity: Identity | None = None) -> None:
        self.identity = identity or Identity.generate()
        self.view = MembershipView(self.identity.peer_id_str, ttl_s=3600)
        self.seen: dict[str, list[bytes]] = defaultdict(list)
        dev = DeviceAdvert("0:0", "cpu", "x", "x", 1, 1 << 30, True, True, 1.0, 1.0, 0, 0, 0)
        self.service = gossip.GossipService(
            self.identity, gossip.GossipConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=bootstrap, interval_s=1.0),
            self.view, lambda: Advert("", b"", 0, 0.0, data_addr="127.0.0.1:9", devices=(dev,)))
        self._scope = trio.CancelScope()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        seen = self.seen

        def recording_decode(data: bytes) -> Any:
            ad = advert_delta.decode(data)
            if isinstance(ad, Advert):  # full adverts only: what a replay needs
                seen[ad.peer_id].append(bytes(data))
            return ad

        gossip.advert_delta = _DeltaShim(recording_decode)  # type: ignore[assignment]
        try:
            with self._scope:
                await self.service.run(task_status=task_status)
        finally:
            gossip.advert_delta = advert_delta

    async def publish(self, data: bytes) -> None:
        await self.service.pubsub.publish(gossip.TOPIC, data)

    def stop(self) -> None:
        self._scope.cancel()


class _DeltaShim:
    """`mesh.advert_delta` with a recording `decode` (the member's own gossip service only)."""

    def __init__(self, decode) -> None:
        self.decode = decode
        self.diff = advert_delta.diff
        self.encode = advert_delta.encode


def reencoded(wire: bytes, variant: int) -> bytes:
    """The same signed advert in another msgpack encoding (key order, map and bin header widths): a replay
    that gossip's content-id de-duplication does not catch, so it reaches the node's own checks. Up to 54
    distinct variants."""
    outer = msgpack.unpackb(wire, raw=False)
    keys = list(outer)
    if variant % 2:
        keys.reverse()
    variant //= 2
    map_fmt, variant = variant % 3, variant // 3
    bin_fmts = (variant % 3, (variant // 3) % 3)
    n = len(keys)
    out = bytearray([0x80 | n] if map_fmt == 0 else [0xDE, 0, n] if map_fmt == 1 else [0xDF, 0, 0, 0, n])
    for i, k in enumerate(keys):
        out += msgpack.packb(k)
        v: bytes = outer[k]
        fmt = bin_fmts[i % 2]
        if fmt == 0 and len(v) < 256:
            out += bytes([0xC4, len(v)])
        elif fmt <= 1 and len(v) < 65536:
            out += bytes([0xC5]) + len(v).to_bytes(2, "big")
        else:
            out += bytes([0xC6]) + len(v).to_bytes(4, "big")
        out += v
    return bytes(out)
