"""The libp2p side of a node: host (noise + yamux over TCP), gossipsub capacity adverts, peer discovery.

Gossip is lossy and slow (see shared/README.md): each node publishes its whole state every interval and right
after a change (debounced); receivers keep the newest advert per peer and expire peers after a TTL. Nothing
that must arrive travels here.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.address_validation import get_available_interfaces

from mesh import advert as advert_codec
from mesh import metrics
from mesh.advert import Advert, AdvertError
from mesh.identity import Identity
from mesh.membership import Event, Joined, Left, MembershipView, Updated

log = logging.getLogger("gpumesh.gossip")

TOPIC = "/gpumesh/capacity/1"
GOSSIPSUB_PROTOCOLS = ["/meshsub/1.1.0", "/meshsub/1.0.0"]
DEBOUNCE_S = 0.1
TARGET_CONNECTIONS = 8


def parse_bootstrap(addr: str) -> PeerInfo:
    """A bootstrap multiaddr must name its peer: /ip4/1.2.3.4/tcp/4001/p2p/12D3KooW..."""
    try:
        ma = multiaddr.Multiaddr(addr)
    except Exception as e:
        raise ValueError(f"bad bootstrap multiaddr {addr!r}: {e}") from None
    if "/p2p/" not in str(ma):
        raise ValueError(f"bootstrap address {addr!r} must end with /p2p/<peer-id> (see `mesh-node id` on that host)")
    try:
        return info_from_p2p_addr(ma)
    except Exception as e:
        raise ValueError(f"bad bootstrap multiaddr {addr!r}: {e}") from None


async def resolve_bootstrap(addr: str) -> PeerInfo | None:
    """A bootstrap address with /dns4/ or /dns/ resolved by the system resolver (so /etc/hosts and container
    DNS work; py-libp2p asks DNS servers directly). Re-resolved on every attempt: the peer may move."""
    parts = addr.split("/")
    if len(parts) > 2 and parts[1] in ("dns", "dns4"):
        try:
            infos = await trio.socket.getaddrinfo(parts[2], None, family=socket.AF_INET)
        except OSError as e:
            log.info("bootstrap %s: cannot resolve %s: %s", addr, parts[2], e)
            return None
        parts[1:3] = ["ip4", infos[0][4][0]]
        addr = "/".join(parts)
    return parse_bootstrap(addr)


@dataclass
class GossipConfig:
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"])
    bootstrap: list[str] = field(default_factory=list)
    mdns: bool = False
    interval_s: float = 2.0
    psk: str | None = None  # private-network key (hex), see --mesh-key-file


class _AdmissionNotifee(INotifee):
    """Hands every new libp2p connection's peer id to the gossip service, which drops peers not admitted."""

    def __init__(self, send: trio.MemorySendChannel) -> None:
        self._send = send

    async def connected(self, network, conn) -> None:
        try:
            self._send.send_nowait(conn.muxed_conn.peer_id)
        except (trio.WouldBlock, trio.ClosedResourceError, AttributeError):
            pass

    async def opened_stream(self, network, stream) -> None: ...
    async def closed_stream(self, network, stream) -> None: ...
    async def disconnected(self, network, conn) -> None: ...
    async def listen(self, network, multiaddr) -> None: ...
    async def listen_close(self, network, multiaddr) -> None: ...


class GossipService:
    """Publishes this node's advert and keeps `view` up to date from everyone else's."""

    def __init__(
        self,
        identity: Identity,
        config: GossipConfig,
        view: MembershipView,
        snapshot: Callable[[], Advert],
        on_event: Callable[[Event], None] | None = None,
        admit: Callable[[str], bool] | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        self.view = view
        self._snapshot = snapshot  # the node's current state; seq, timestamp and addrs are filled in here
        self._on_event = on_event or (lambda _e: None)
        self._admit = admit  # allow list: peers it refuses are disconnected as soon as they connect
        self._changed = trio.Event()
        self._seq = int(time.time() * 1000)  # a restarted node's adverts are newer than its old ones
        self._last_key: tuple | None = None
        self.host: Any = None  # the libp2p host (IHost) once run() has started
        self.pubsub: Any = None  # its Pubsub
        self.addrs: list[str] = []
        self.ready = trio.Event()

    def changed(self) -> None:
        """Capacity changed: publish soon instead of waiting for the next interval."""
        self._changed.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        kp = self.identity.key_pair
        noise = NoiseTransport(libp2p_keypair=kp, noise_privkey=create_x25519_key_pair().private_key)
        listen = [multiaddr.Multiaddr(a) for a in self.config.listen]
        host = new_host(
            key_pair=kp,
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            listen_addrs=listen,
            enable_mDNS=self.config.mdns,
            psk=self.config.psk,
        )
        router = GossipSub(
            protocols=[TProtocol(p) for p in GOSSIPSUB_PROTOCOLS],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
            heartbeat_initial_delay=0.1,
            # Adverts are few and periodic; the default 10/s/peer limit would drop relayed adverts in a big mesh.
            max_messages_per_topic_per_second=1000.0,
            # All peers may share one IP (loopback tests, NAT); IP diversity would refuse them a mesh.
            eclipse_protection_enabled=False,
        )
        pubsub = Pubsub(host, router)
        self.host, self.pubsub = host, pubsub
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(host.run(listen_addrs=listen))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))
            await pubsub.wait_until_ready()
            sub = await pubsub.subscribe(TOPIC)
            self.addrs = self._dialable_addrs()
            async with trio.open_nursery() as nursery:
                if self._admit is not None:
                    send, recv = trio.open_memory_channel(256)
                    host.get_network().register_notifee(_AdmissionNotifee(send))
                    nursery.start_soon(self._refuse_loop, recv)
                nursery.start_soon(self._receive_loop, sub)
                nursery.start_soon(self._publish_loop)
                nursery.start_soon(self._expire_loop)
                nursery.start_soon(self._connect_loop)
                self.ready.set()
                task_status.started(self)
                await trio.sleep_forever()

    def _dialable_addrs(self) -> list[str]:
        out: list[str] = []
        suffix = f"/p2p/{self.identity.peer_id_str}"
        for a in self.host.get_transport_addrs():
            s = str(a)
            if s.startswith("/ip4/0.0.0.0/"):
                port = int(a.value_for_protocol("tcp"))
                out += [str(x) + suffix for x in get_available_interfaces(port) if str(x).startswith("/ip4/")]
            else:
                out.append(s + suffix)
        return sorted(set(out))

    def current_advert(self) -> Advert:
        return replace(self._snapshot(), peer_id=self.identity.peer_id_str,
                       public_key=self.identity.key_pair.public_key.to_bytes(),
                       seq=self._seq, timestamp=time.time(), addrs=tuple(self.addrs),
                       interval_s=self.config.interval_s)

    async def _publish_loop(self) -> None:
        while True:
            self._seq += 1
            ad = self.current_advert()
            self._last_key = ad.capacity_key()
            self._deliver(self.view.apply(ad, trio.current_time()))
            try:
                await self.pubsub.publish(TOPIC, advert_codec.encode(ad, self.identity))
                metrics.ADVERTS_SENT.inc()
            except Exception as e:  # a publish failure must not stop the node; the next interval retries
                metrics.GOSSIP_PUBLISH_ERRORS.inc()
                log.warning("advert publish failed: %s", e)
            with trio.move_on_after(self.config.interval_s):
                await self._changed.wait()
                await trio.sleep(DEBOUNCE_S)
            self._changed = trio.Event()

    async def _receive_loop(self, sub) -> None:
        while True:
            msg = await sub.get()
            try:
                ad = advert_codec.decode(msg.data)
            except AdvertError as e:
                metrics.ADVERTS_REJECTED.labels(e.reason).inc()
                log.debug("dropped advert: %s", e)
                continue
            if ad.peer_id == self.identity.peer_id_str:
                continue
            stale, refused, replays = self.view.stale, self.view.refused, self.view.replays
            ev = self.view.apply(ad, trio.current_time())
            if self.view.stale > stale:
                metrics.ADVERTS_REJECTED.labels("stale").inc()
                if self.view.replays > replays:
                    metrics.ADVERT_LIES.labels("replay").inc()
            elif self.view.refused > refused:
                metrics.ADVERTS_REJECTED.labels("not_admitted").inc()
            else:
                metrics.ADVERTS_RECEIVED.inc()
            self._deliver(ev)

    async def _refuse_loop(self, recv: trio.MemoryReceiveChannel) -> None:
        async for peer_id in recv:
            if self._admit is not None and not self._admit(peer_id.to_base58()):
                metrics.PEERS_REFUSED.labels("libp2p").inc()
                log.info("refused libp2p connection from %s: not on the allow list", peer_id)
                with trio.move_on_after(5):
                    try:
                        await self.host.disconnect(peer_id)
                    except Exception as e:
                        log.debug("disconnect %s: %s", peer_id, e)

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(min(self.config.interval_s, self.view.ttl_s) / 2)
            for ev in self.view.expire(trio.current_time()):
                metrics.ADVERTS_EXPIRED.inc()
                self._deliver(ev)

    def _deliver(self, ev: Event | None) -> None:
        if ev is None:
            return
        name = {Joined: "join", Updated: "update", Left: "leave"}[type(ev)]
        metrics.MEMBERSHIP_EVENTS.labels(name).inc()
        metrics.PEERS_KNOWN.set(len(self.view.peers(include_self=False)))
        if isinstance(ev, Joined | Left) and ev.peer_id != self.identity.peer_id_str:
            log.info("peer %s %s", ev.peer_id, name if isinstance(ev, Joined) else f"left ({ev.reason})")
        self._on_event(ev)

    async def _connect_loop(self) -> None:
        """Keep dialling bootstrap peers until connected, and peers learned from adverts up to a target."""
        backoff = 0.2
        while True:
            resolved = [await resolve_bootstrap(a) for a in self.config.bootstrap]
            boot = [b for b in resolved if b is not None]
            connected = set(self.host.get_network().connections.keys())
            metrics.LIBP2P_CONNECTED.set(len(connected))
            targets = [b for b in boot if b.peer_id not in connected and b.peer_id != self.host.get_id()]
            if len(connected) < TARGET_CONNECTIONS:
                for p in self.view.peers(include_self=False):
                    pid = ID.from_base58(p.peer_id)
                    if pid not in connected and p.advert.addrs and len(targets) < TARGET_CONNECTIONS:
                        try:
                            targets.append(info_from_p2p_addr(multiaddr.Multiaddr(p.advert.addrs[0])))
                        except Exception:
                            continue
            failed = False
            net = self.host.get_network()
            for info in targets:
                if hasattr(net, "unblock_peer"):
                    # py-libp2p blocks a peer for 60 s after a failed dial; our own backoff decides retries,
                    # so a restarted bootstrap peer is found again within a few seconds
                    net.unblock_peer(info.peer_id)
                try:
                    with trio.fail_after(5):
                        await self.host.connect(info)
                except Exception as e:
                    failed = True
                    log.debug("dial %s failed: %s", info.peer_id, e)
            backoff = min(backoff * 2, self.config.interval_s * 2) if failed else 0.2
            await trio.sleep(backoff if failed else self.config.interval_s)
