"""The libp2p side of a node: host (noise + yamux over TCP), gossipsub capacity adverts, peer discovery.

Gossip is lossy and slow (see shared/README.md): each node publishes its whole state every refresh interval
(which grows with the size of the view) and a delta right after a change (debounced, from a budget shared
across the view), as mesh/advert_schedule.py decides; receivers keep the newest advert per peer and expire a
peer after a few of its own refresh intervals. Nothing that must arrive travels here.

One signature to trust: gossipsub messages go unsigned (`strict_signing=False`, message ids by content); the
advert's own Ed25519 signature (mesh/advert.py) is what binds it to its sender. The settings of the router below
are measured for this traffic: see docs/gossip.md.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import random
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
from libp2p.network.config import RetryConfig
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
from mesh import advert_delta, handshake_log, metrics, refusal_notice
from mesh.advert import Advert, AdvertError
from mesh.advert_delta import AdvertDelta
from mesh.advert_schedule import AdvertSchedule, Publish, ScheduleConfig
from mesh.handshake_log import describe_dial_failure
from mesh.identity import Identity
from mesh.membership import Event, Joined, Left, MembershipView, Updated

log = logging.getLogger("gpumesh.gossip")

TOPIC = "/gpumesh/capacity/1"
GOSSIPSUB_PROTOCOLS = ["/meshsub/1.1.0", "/meshsub/1.0.0"]
TARGET_CONNECTIONS = 8
# a connection without a pubsub stream after this long is dropped and dialled again: py-libp2p gives up opening
# the stream on a negotiation error other than a closed stream (seen under load: 5 of 20 nodes left deaf and mute)
NOT_ALLOWED = "not on this mesh's allow list (--allow-peers)"  # the reason a refused peer is told, and logged
STREAMLESS_S = 10.0



@dataclass(frozen=True)
class GossipTuning:
    """gossipsub settings, each measured for our traffic (a few small adverts per second): docs/gossip.md and
    `make bench B=gossip_settings`. The defaults are the chosen ones; the benchmark flips them one at a time."""

    degree: tuple[int, int, int] = (4, 3, 6)  # D, D_low, D_high: a node receives each advert about D times
    heartbeat_s: int = 2  # mesh upkeep and IHAVE gossip; an idle mesh pays for every heartbeat
    seen_ttl_s: int = 60  # longer than any advert takes to spread; a copy after it is a stale advert anyway
    signed: bool = False  # gossipsub's own message signature, on top of the advert's
    # py-libp2p's yamux returns credit with a window update after every read (one more encrypted frame back for
    # each message received); batched, credit goes back once half the window is used, as go-yamux does
    batched_credit: bool = True


def _yamux_credit(batched: bool) -> None:
    os.environ["PY_YAMUX_RELEASE_ON_READ"] = "0" if batched else "1"  # read by py-libp2p at each window update


def message_id(msg) -> bytes:
    """Gossipsub message id by content: unsigned messages carry no trustworthy (from, seqno), and a forged
    message with a real one's id must not shadow it in the seen cache."""
    return hashlib.blake2b(msg.data, digest_size=20).digest()


def parse_bootstrap(addr: str) -> PeerInfo:
    """A bootstrap multiaddr must name its peer: /ip4/1.2.3.4/tcp/4001/p2p/12D3KooW... (a new PeerInfo each call)."""
    peer_id, addrs = _parsed_bootstrap(addr)
    return PeerInfo(peer_id, list(addrs))


@functools.lru_cache(maxsize=64)
def _parsed_bootstrap(addr: str) -> tuple[ID, tuple[multiaddr.Multiaddr, ...]]:
    """The parse itself, once per address: ~0.3-0.5 ms of the event loop (py-libp2p decodes the peer id), which the
    connect loop would otherwise spend on every bootstrap address every advert interval. Failures are not kept."""
    try:
        ma = multiaddr.Multiaddr(addr)
    except Exception as e:
        raise ValueError(f"bad bootstrap multiaddr {addr!r}: {e}") from None
    if "/p2p/" not in str(ma):
        raise ValueError(f"bootstrap address {addr!r} must end with /p2p/<peer-id> (see `mesh-node id` on that host)")
    try:
        info = info_from_p2p_addr(ma)
    except Exception as e:
        raise ValueError(f"bad bootstrap multiaddr {addr!r}: {e}") from None
    return info.peer_id, tuple(info.addrs)


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
    interval_s: float = 2.0  # the shortest refresh interval (small meshes); it grows with the view
    # the longest (a view bigger than refresh_budget * this belongs in shards); None: always interval_s, for a
    # view whose TTL is fixed rather than following the interval each peer announces
    max_interval_s: float | None = None
    psk: str | None = None  # private-network key (hex), see --mesh-key-file
    tuning: GossipTuning = field(default_factory=GossipTuning)

    def schedule(self) -> ScheduleConfig:
        return ScheduleConfig(min_refresh_s=self.interval_s,
                              max_refresh_s=max(self.interval_s, self.max_interval_s or self.interval_s))


class CountingPubsub(Pubsub):
    """Pubsub that counts the messages peers send us, duplicates included (the seen cache drops those after
    they have cost a decrypt and a parse): what gossip costs a node."""

    received = 0

    async def push_msg(self, msg_forwarder, msg) -> None:
        if msg_forwarder != self.my_id:
            self.received += 1
            metrics.GOSSIP_MESSAGES_RECEIVED.inc()
        await super().push_msg(msg_forwarder, msg)


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
        self._wake = trio.Event()
        self._seq = int(time.time() * 1000)  # a restarted node's adverts are newer than its old ones
        self.schedule = AdvertSchedule(config.schedule(), now=0.0, rng=random.Random())
        self._last_full: Advert | None = None  # the base of our deltas
        self._last_key: tuple | None = None  # capacity key of the last advert sent (full or delta)
        self.sent = {"full": 0, "delta": 0}
        self._streamless: dict[Any, float] = {}  # connected peer -> since when it has no pubsub stream
        self.redialled = 0
        self.received = 0  # adverts and deltas accepted
        self.host: Any = None  # the libp2p host (IHost) once run() has started
        self.pubsub: Any = None  # its Pubsub
        self.addrs: list[str] = []
        self.ready = trio.Event()
        self._dial_warned: dict[str, tuple[float, str]] = {}
        self._refusal_warned: dict[str, float] = {}
        self.refusals = refusal_notice.RefusalLog(self._describe_peer)
        self._waiting_until = -math.inf  # when the publish loop wakes by itself (it is not waiting: -inf)

    def changed(self) -> None:
        """Capacity changed: publish soon (debounced, within the change budget) instead of at the next refresh.
        The publish loop is woken only when that moves its next publication earlier: a busy executor changes
        capacity with every job, and waking the loop for each cost ~40 us a job for nothing. A change already
        pending has had its say: later ones publish with it, at the same time."""
        if self.schedule.pending:
            return
        now = trio.current_time()
        self.schedule.changed(now)
        if self.schedule.due(now, len(self.view)) < self._waiting_until:
            self._wake.set()

    def stats(self) -> dict[str, Any]:
        """Counters for the control endpoint and the benchmark."""
        return {"adverts_sent": dict(self.sent), "adverts_received": self.received,
                "messages_received": self.pubsub.received if self.pubsub is not None else 0,
                "refresh_interval_s": self.schedule.interval_s, "view": len(self.view),
                "deltas_without_base": self.view.no_base, "expired": self.view.expired, "redialled": self.redialled}

    def add_bootstrap(self, addrs: list[str]) -> None:
        """More peers to join through (e.g. learned with --join); dialled by the connect loop."""
        for a in addrs:
            if a not in self.config.bootstrap:
                self.config.bootstrap.append(a)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        handshake_log.install(private=self.config.psk is not None)
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
        # one attempt per dial: _connect_loop retries with its own backoff, and a refused handshake (another mesh
        # key) is reported at once instead of after py-libp2p's three silent retries
        host.get_network().retry_config = RetryConfig(max_retries=0)  # type: ignore[attr-defined]  # the Swarm
        tune = self.config.tuning
        _yamux_credit(tune.batched_credit)
        d, d_lo, d_hi = tune.degree
        router = GossipSub(
            protocols=[TProtocol(p) for p in GOSSIPSUB_PROTOCOLS],
            degree=d,
            degree_low=d_lo,
            degree_high=d_hi,
            heartbeat_interval=tune.heartbeat_s,
            heartbeat_initial_delay=0.1,
            # Adverts are few and periodic; the default 10/s/peer limit would drop relayed adverts in a big mesh.
            max_messages_per_topic_per_second=1000.0,
            # All peers may share one IP (loopback tests, NAT); IP diversity would refuse them a mesh.
            eclipse_protection_enabled=False,
            # Its "network health" raises the degree and gossip factor when few messages flow, i.e. when idle.
            adaptive_gossip_enabled=False,
        )
        pubsub = CountingPubsub(host, router, strict_signing=tune.signed, msg_id_constructor=message_id,
                                seen_ttl=tune.seen_ttl_s)
        self.host, self.pubsub = host, pubsub
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(host.run(listen_addrs=listen))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))
            await pubsub.wait_until_ready()
            sub = await pubsub.subscribe(TOPIC)
            self.addrs = self._dialable_addrs()
            host.set_stream_handler(refusal_notice.REFUSED_PROTOCOL, self.refusals.handle)
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
                       interval_s=self.schedule.announced_interval_s)

    async def _publish_loop(self) -> None:
        while True:
            now = trio.current_time()
            kind = self.schedule.poll(now, len(self.view))
            if kind is not None:
                await self._publish(kind)
                continue
            self._wake = trio.Event()
            self._waiting_until = self.schedule.due(now, len(self.view))
            with trio.move_on_at(self._waiting_until):
                await self._wake.wait()
            self._waiting_until = -math.inf  # busy: changes meanwhile are seen by the next poll

    async def _publish(self, kind: Publish) -> None:
        self._seq += 1
        ad = self.current_advert()
        if kind is Publish.CHANGE and ad.capacity_key() == self._last_key:
            return  # the change was undone before it went out (or never reached the advert)
        delta = advert_delta.diff(self._last_full, ad) if kind is Publish.CHANGE and self._last_full else None
        self._last_key = ad.capacity_key()
        self._deliver(self.view.apply(ad, trio.current_time()))
        try:
            if delta is not None:
                await self.pubsub.publish(TOPIC, advert_delta.encode(delta, self.identity))
                metrics.ADVERT_DELTAS_SENT.inc()
            else:
                await self.pubsub.publish(TOPIC, advert_codec.encode(ad, self.identity))
                self._last_full = ad
            metrics.ADVERTS_SENT.inc()
            self.sent["delta" if delta is not None else "full"] += 1
        except Exception as e:  # a publish failure must not stop the node; the next refresh retries
            metrics.GOSSIP_PUBLISH_ERRORS.inc()
            log.warning("advert publish failed: %s", e)

    async def _receive_loop(self, sub) -> None:
        while True:
            msg = await sub.get()
            try:
                ad: Advert | AdvertDelta = advert_delta.decode(msg.data)
                # signed issue time within the sender's TTL: a replay of a peer that is gone cannot bring it back
                advert_codec.check_fresh(ad.peer_id, ad.timestamp, time.time(), self.view.ttl_for(ad))
            except AdvertError as e:
                metrics.ADVERTS_REJECTED.labels(e.reason).inc()
                log.debug("dropped advert: %s", e)
                continue
            if ad.peer_id == self.identity.peer_id_str:
                continue
            stale, refused, replays, no_base = self.view.stale, self.view.refused, self.view.replays, self.view.no_base
            now = trio.current_time()
            ev = self.view.apply(ad, now)
            if isinstance(ev, Joined):
                self.schedule.peer_joined(now)  # it needs our full state to apply our deltas
                self._wake.set()
            if self.view.no_base > no_base:
                metrics.ADVERTS_REJECTED.labels("no_base").inc()
            elif self.view.stale > stale:
                metrics.ADVERTS_REJECTED.labels("replay" if self.view.replays > replays else "stale").inc()
            elif self.view.refused > refused:
                metrics.ADVERTS_REJECTED.labels("not_admitted").inc()
            else:
                metrics.ADVERTS_RECEIVED.inc()
                self.received += 1
            self._deliver(ev)

    async def _refuse_loop(self, recv: trio.MemoryReceiveChannel) -> None:
        async for peer_id in recv:
            if self._admit is not None and not self._admit(peer_id.to_base58()):
                metrics.PEERS_REFUSED.labels("libp2p").inc()
                now = time.monotonic()
                if now - self._refusal_warned.get(str(peer_id), -1e9) >= 60.0:  # once a minute per peer
                    if len(self._refusal_warned) > 1024:
                        self._refusal_warned.clear()
                    self._refusal_warned[str(peer_id)] = now
                    log.warning("refused libp2p connection from %s: %s", peer_id, NOT_ALLOWED)
                await refusal_notice.tell_refused(self.host, peer_id, NOT_ALLOWED)
                with trio.move_on_after(5):
                    try:
                        await self.host.disconnect(peer_id)
                    except Exception as e:
                        log.debug("disconnect %s: %s", peer_id, e)

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(min(self.config.interval_s, self.view.ttl_s) / 2)  # peers' TTLs are at least ttl_s
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

    async def _drop_streamless(self, connected: set) -> None:
        now = trio.current_time()
        self._streamless = {pid: self._streamless.get(pid, now) for pid in connected if pid not in self.pubsub.peers}
        for pid, since in list(self._streamless.items()):
            if now - since >= STREAMLESS_S:
                log.info("peer %s: connected %.0f s without a pubsub stream; dropping the connection to redial",
                         pid, now - since)
                self.redialled += 1
                del self._streamless[pid]
                with trio.move_on_after(5):
                    try:
                        await self.host.disconnect(pid)
                    except Exception as e:
                        log.debug("disconnect %s: %s", pid, e)

    def _describe_peer(self, peer_id: str) -> str:
        boot = set()
        for a in self.config.bootstrap:
            try:
                boot.add(str(parse_bootstrap(a).peer_id))
            except ValueError:
                continue
        return f"cannot join through bootstrap peer {peer_id}: it" if peer_id in boot else f"peer {peer_id}"

    def _dial_failed(self, info: PeerInfo, error: Exception, *, bootstrap: bool) -> None:
        """A failed dial: at warning for a bootstrap peer (once a minute, or when the reason changes: this node
        cannot join without it), at debug for the others."""
        why = describe_dial_failure(error, self.config.psk is not None)
        key = str(info.peer_id)
        last = self._dial_warned.get(key)
        now = time.monotonic()
        if bootstrap and (last is None or last[1] != why[:80] or now - last[0] >= 60.0):
            self._dial_warned[key] = (now, why[:80])
            log.warning("cannot join through bootstrap peer %s: %s", key, why)
        else:
            log.debug("dial %s failed: %s", key, why)

    async def _connect_loop(self) -> None:
        """Keep dialling bootstrap peers until connected, and peers learned from adverts up to a target."""
        backoff = 0.2
        while True:
            resolved = [await resolve_bootstrap(a) for a in self.config.bootstrap]
            boot = [b for b in resolved if b is not None]
            connected = set(self.host.get_network().connections.keys())
            metrics.LIBP2P_CONNECTED.set(len(connected))
            await self._drop_streamless(connected)
            targets = [b for b in boot if b.peer_id not in connected and b.peer_id != self.host.get_id()]
            if len(connected) < TARGET_CONNECTIONS:
                connected_ids = {str(c) for c in connected}  # as strings: decoding each peer's id costs ~50 us
                for p in self.view.peers(include_self=False):
                    if len(targets) >= TARGET_CONNECTIONS:
                        break
                    if p.peer_id not in connected_ids and p.advert.addrs:
                        try:
                            targets.append(info_from_p2p_addr(multiaddr.Multiaddr(p.advert.addrs[0])))
                        except Exception:
                            continue
            failed = False
            net = self.host.get_network()
            boot_ids = {b.peer_id for b in boot}
            for info in targets:
                if hasattr(net, "unblock_peer"):
                    # py-libp2p blocks a peer for 60 s after a failed dial; our own backoff decides retries,
                    # so a restarted bootstrap peer is found again within a few seconds
                    net.unblock_peer(info.peer_id)
                try:
                    with trio.fail_after(5):
                        await self.host.connect(info)
                    self._dial_warned.pop(str(info.peer_id), None)
                except Exception as e:
                    failed = True
                    self._dial_failed(info, e, bootstrap=info.peer_id in boot_ids)
            backoff = min(backoff * 2, self.config.interval_s * 2) if failed else 0.2
            await trio.sleep(backoff if failed else self.config.interval_s)
