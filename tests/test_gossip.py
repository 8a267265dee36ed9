"""Real libp2p hosts on 127.0.0.1: convergence and expiry of capacity adverts."""

import trio

from mesh.advert import Advert, DeviceAdvert
from mesh.gossip import GossipConfig, GossipService
from mesh.identity import Identity
from mesh.membership import MembershipView
from mesh.waiting import until


def device(i: int) -> DeviceAdvert:
    return DeviceAdvert(f"0:{i}", "gpu" if i % 2 else "cpu", "v", f"dev{i}", 2 + i, (1 + i) << 30, True, True,
                        100.0 * (i + 1), 10.0, 1, 1, 0)


async def start(nursery, n: int, interval: float = 0.3, ttl: float = 1.2, bootstrap: str | None = None):
    services = []
    for i in range(n):
        ident = Identity.generate()
        view = MembershipView(ident.peer_id_str, ttl)
        boot = [bootstrap] if bootstrap else [services[0][0].addrs[0]] if services else []

        def snap(i=i):
            return Advert("", b"", 0, 0.0, data_addr=f"127.0.0.1:{5000 + i}", devices=(device(i),))

        svc = GossipService(ident, GossipConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=boot, interval_s=interval),
                            view, snap)
        scope = trio.CancelScope()

        async def run(svc=svc, scope=scope, task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await svc.run(task_status=task_status)

        await nursery.start(run)
        services.append((svc, scope))
    return services


async def test_three_nodes_converge_then_a_stopped_node_expires():
    async with trio.open_nursery() as nursery:
        nodes = await start(nursery, 3)
        ids = [s.identity.peer_id_str for s, _ in nodes]
        await until(lambda: all(set(ids) <= {p.peer_id for p in s.view.peers()} for s, _ in nodes))
        for s, _ in nodes:
            for i, pid in enumerate(ids):
                peer = s.view.get(pid)
                assert peer.advert.devices == (device(i),)
                assert peer.advert.data_addr == f"127.0.0.1:{5000 + i}"
        # stop node 2: the others expire it after the TTL
        nodes[2][1].cancel()
        await until(lambda: all(ids[2] not in s.view for s, _ in nodes[:2]))
        assert all(ids[1] in nodes[0][0].view and ids[0] in nodes[1][0].view for _ in [0])
        nursery.cancel_scope.cancel()


async def test_peers_that_share_only_a_bootstrap_dial_each_other_from_adverts():
    """Nodes 1 and 2 know only node 0; each learns the other's address from its advert and connects to it directly
    (a mesh with fewer than TARGET_CONNECTIONS connections dials the peers it hears of)."""
    async with trio.open_nursery() as nursery:
        nodes = await start(nursery, 3)
        (_, _), (b, _), (c, _) = nodes

        def direct(x: GossipService, y: GossipService) -> bool:
            return y.identity.peer_id_str in {str(pid) for pid in x.host.get_network().connections}

        await until(lambda: direct(b, c) and direct(c, b))
        assert c.identity.peer_id_str in b.view and b.identity.peer_id_str in c.view
        nursery.cancel_scope.cancel()


async def test_capacity_change_is_published_before_the_next_interval():
    async with trio.open_nursery() as nursery:
        nodes = await start(nursery, 2, interval=30.0, ttl=90.0)
        (a, _), (b, _) = nodes
        await until(lambda: a.identity.peer_id_str in b.view)
        assert b.view.get(a.identity.peer_id_str).advert.devices[0].free_slots == 1
        busy = Advert("", b"", 0, 0.0, devices=(DeviceAdvert(**{**device(0).__dict__, "free_slots": 0, "queue_depth": 3}),))
        a._snapshot = lambda: busy
        a.changed()
        # interval is 30 s, so only the change-triggered publish can satisfy this within the deadline
        await until(lambda: b.view.get(a.identity.peer_id_str).advert.devices[0].queue_depth == 3)
        # (that one may have gone out full, with the full advert a owed b for joining); the next is a delta
        deltas = a.sent["delta"]
        busier = Advert("", b"", 0, 0.0, devices=(DeviceAdvert(**{**device(0).__dict__, "free_slots": 0, "queue_depth": 7}),))
        a._snapshot = lambda: busier
        a.changed()
        await until(lambda: b.view.get(a.identity.peer_id_str).advert.devices[0].queue_depth == 7)
        assert a.sent["delta"] == deltas + 1  # a delta on the full advert b already holds
        assert b.view.get(a.identity.peer_id_str).base.devices[0].queue_depth != 7
        assert b.stats()["messages_received"] >= 2 and b.stats()["adverts_received"] >= 2
        nursery.cancel_scope.cancel()


async def test_a_late_joiner_gets_full_adverts_long_before_the_next_refresh():
    async with trio.open_nursery() as nursery:
        nodes = await start(nursery, 2, interval=30.0, ttl=90.0)
        ids = [s.identity.peer_id_str for s, _ in nodes]
        await until(lambda: all(set(ids) <= {p.peer_id for p in s.view.peers()} for s, _ in nodes))
        # the first two have published their first full adverts; the next refreshes are 30 s away
        (late, _), = await start(nursery, 1, interval=30.0, ttl=90.0, bootstrap=nodes[0][0].addrs[0])
        await until(lambda: set(ids) <= {p.peer_id for p in late.view.peers()})
        # the first one, and one for the newcomer, long before the 30 s refresh (the newcomer may have had the
        # first ones already from gossipsub's message history, so this is waited for, not read at that moment)
        await until(lambda: all(s.sent["full"] >= 2 for s, _ in nodes))
        nursery.cancel_scope.cancel()


async def test_gossipsub_messages_are_unsigned_and_identified_by_content():
    from mesh.gossip import message_id

    async with trio.open_nursery() as nursery:
        (a, _), = await start(nursery, 1)
        assert a.pubsub.strict_signing is False and a.pubsub.sign_key is None  # one signature: the advert's
        nursery.cancel_scope.cancel()

    class Msg:
        def __init__(self, data: bytes) -> None:
            self.data, self.from_id, self.seqno = data, b"forged-sender", b"\x00" * 8

    # a forged message reusing a real one's (from, seqno) gets another id: it cannot shadow the real one
    assert message_id(Msg(b"real advert")) != message_id(Msg(b"forged advert"))
    assert message_id(Msg(b"same")) == message_id(Msg(b"same"))


async def test_dns_bootstrap_resolved_with_the_system_resolver():
    from mesh.gossip import resolve_bootstrap

    pid = Identity.generate().peer_id_str
    info = await resolve_bootstrap(f"/dns4/localhost/tcp/4001/p2p/{pid}")
    assert info.peer_id.to_base58() == pid
    assert [str(a) for a in info.addrs] == ["/ip4/127.0.0.1/tcp/4001"]
    assert await resolve_bootstrap(f"/dns4/no-such-host.invalid/tcp/4001/p2p/{pid}") is None
