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


async def start(nursery, n: int, interval: float = 0.3, ttl: float = 1.2):
    services = []
    for i in range(n):
        ident = Identity.generate()
        view = MembershipView(ident.peer_id_str, ttl)
        boot = [services[0][0].addrs[0]] if services else []

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
        await until(lambda: b.view.get(a.identity.peer_id_str).advert.devices[0].queue_depth == 3, timeout=20)
        nursery.cancel_scope.cancel()


async def test_dns_bootstrap_resolved_with_the_system_resolver():
    from mesh.gossip import resolve_bootstrap

    pid = Identity.generate().peer_id_str
    info = await resolve_bootstrap(f"/dns4/localhost/tcp/4001/p2p/{pid}")
    assert info.peer_id.to_base58() == pid
    assert [str(a) for a in info.addrs] == ["/ip4/127.0.0.1/tcp/4001"]
    assert await resolve_bootstrap(f"/dns4/no-such-host.invalid/tcp/4001/p2p/{pid}") is None
