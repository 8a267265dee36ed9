"""The gossipsub settings of mesh/gossip.py (GossipTuning), flipped one at a time: CPU per advert and idle CPU.

`HOSTS` real libp2p hosts (noise, yamux, gossipsub) in one process on loopback, so one `time.process_time()`
covers all of them. For each variant: idle CPU over `IDLE_S` (heartbeats and timers only: adverts every 30 s),
then `ADVERTS` full adverts published from host 0 at `RATE` per second, and the CPU spent per advert and
receiving host (all hosts together, divided by the adverts times the receiving hosts) and the copies each host
received per advert (gossipsub duplicates). An advert overtaken on the way by a newer one is not accepted by
the view (it keeps the newest) but costs its copies all the same: `accepted_in_order_fraction` counts the
accepted ones, `hosts_with_the_last_advert` that every host ended with the newest. With 8 hosts, D=6 (4..12)
puts every host in host 0's mesh (one hop, no reordering): the copies, not the hops, are what it is about.
The figures are relative: the same machine, minutes apart.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import trio

from mesh import advert as advert_codec
from mesh.advert import Advert, DeviceAdvert
from mesh.gossip import TOPIC, GossipConfig, GossipService, GossipTuning
from mesh.identity import Identity
from mesh.membership import MembershipView

HOSTS = 8
IDLE_S = 10.0
ADVERTS = 200
RATE = 20.0
CHOSEN = GossipTuning()
VARIANTS = {
    "chosen": CHOSEN,
    "gossipsub signature on": replace(CHOSEN, signed=True),
    "credit after every read": replace(CHOSEN, batched_credit=False),
    "heartbeat 1 s": replace(CHOSEN, heartbeat_s=1),
    "D=6 (4..12)": replace(CHOSEN, degree=(6, 4, 12)),
    "before (all four)": GossipTuning(degree=(6, 4, 12), heartbeat_s=1, signed=True, batched_credit=False),
}
DEV = DeviceAdvert("0:0", "gpu", "v", "dev", 8, 8 << 30, True, True, 300.0, 1000.0, 1, 1, 0)


async def _variant(tuning: GossipTuning) -> dict:
    async with trio.open_nursery() as nursery:
        svcs: list[GossipService] = []
        for i in range(HOSTS):
            ident = Identity.generate()
            boot = [svcs[0].addrs[0]] if svcs else []
            ad = Advert("", b"", 0, 0.0, data_addr=f"127.0.0.1:{5000 + i}", devices=(DEV,))
            svc = GossipService(ident, GossipConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=boot, interval_s=30.0,
                                                    tuning=tuning),
                                MembershipView(ident.peer_id_str, 90.0), lambda ad=ad: ad)
            await nursery.start(svc.run)
            svcs.append(svc)
        ids = {s.identity.peer_id_str for s in svcs}
        with trio.fail_after(120):
            while not all(ids <= {p.peer_id for p in s.view.peers()} for s in svcs):
                await trio.sleep(0.1)
        await trio.sleep(2 * tuning.heartbeat_s + 2)  # meshes formed
        c0, t0 = time.process_time(), time.monotonic()
        await trio.sleep(IDLE_S)
        idle_pct = (time.process_time() - c0) / (time.monotonic() - t0) * 100 / HOSTS
        src, others = svcs[0], svcs[1:]
        got0 = [s.received for s in others]
        copies0 = [s.pubsub.received for s in others]
        c0, t0 = time.process_time(), time.monotonic()
        for k in range(ADVERTS):
            src._seq += 1
            ad = replace(src.current_advert(), labels={"k": str(k)})
            await src.pubsub.publish(TOPIC, advert_codec.encode(ad, src.identity))
            await trio.sleep(1 / RATE)
        last = src._seq
        src_id = src.identity.peer_id_str

        def reached() -> int:
            return sum(1 for s in others if (st := s.view.get(src_id)) is not None and st.advert.seq >= last)

        with trio.move_on_after(30):
            while reached() < len(others):
                await trio.sleep(0.05)
        # the CPU the adverts cost: what the window took, less what the same hosts spend idle in that time
        cpu = time.process_time() - c0 - idle_pct / 100 * HOSTS * (time.monotonic() - t0)
        accepted = sum(s.received for s in others) - sum(got0)
        copies = sum(s.pubsub.received for s in others) - sum(copies0)
        got_last = reached()
        nursery.cancel_scope.cancel()
    # per advert published and receiving host: an advert overtaken on the way by a newer one (several hops) is
    # not accepted by the view (it keeps the newest) but cost its copies all the same
    per = ADVERTS * len(others)
    return {"idle_cpu_pct_per_host": round(idle_pct, 3),
            "cpu_ms_per_advert_per_host": round(cpu / per * 1000, 3),
            "copies_per_advert_per_host": round(copies / per, 2),
            "accepted_in_order_fraction": round(accepted / per, 4),
            "hosts_with_the_last_advert": f"{got_last}/{len(others)}"}


def run() -> dict:
    out = {name: trio.run(_variant, t) for name, t in VARIANTS.items()}
    os.environ["PY_YAMUX_RELEASE_ON_READ"] = "0" if CHOSEN.batched_credit else "1"
    return {"hosts": HOSTS, "adverts": ADVERTS, "rate_per_s": RATE, "load_avg_1m": round(os.getloadavg()[0], 2),
            "variants": out}


def table(r: dict) -> list[tuple[str, str]]:
    rows = [(name, f"idle {v['idle_cpu_pct_per_host']:.3f} % CPU per host; {v['cpu_ms_per_advert_per_host']:.2f} ms "
                   f"CPU and {v['copies_per_advert_per_host']:.2f} copies per advert per host; "
                   f"{v['accepted_in_order_fraction'] * 100:.1f} % accepted in order; last advert at "
                   f"{v['hosts_with_the_last_advert']} hosts")
            for name, v in r["variants"].items()]
    rows.append(("setup", f"{r['hosts']} hosts in one process, {r['adverts']} adverts at {r['rate_per_s']:g}/s; "
                          f"load average {r['load_avg_1m']}"))
    return rows
