"""`make demo`: start a local 3-node mesh, wait until each node sees the others, show the mesh's devices,
run the demo jobs, and stop the nodes cleanly."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from scheduler.cli import console as make_console
from scheduler.cli import device_table
from scheduler.localmesh import sees_all, start_mesh, wait_for

OUT = Path("demo-out")


def main() -> int:
    console = make_console()
    OUT.mkdir(exist_ok=True)
    root = OUT / "nodes"
    console.print(f"[bold]gpumesh demo[/]: starting 3 nodes on 127.0.0.1 (data dirs under {root}/)")
    t0 = time.time()
    nodes = start_mesh(root, 3, extra=["--advert-interval", "1.0"])
    try:
        wait_for(lambda: sees_all(nodes), 60, "the three nodes to see each other", interval=0.1)
        console.print(f"mesh converged in {time.time() - t0:.1f} s: each node sees the other two")
        peers = nodes[0].call("peers")
        rows = [(p["peer_id"][-8:] + (" (self)" if p["self"] else ""), d) for p in peers for d in p["devices"]]
        console.print(device_table(rows, "devices of the mesh, as node 0 sees them"))
        for nd in nodes:
            console.print(f"  node {nd.peer_id}  libp2p {nd.multiaddr}  metrics http://127.0.0.1:{nd.metrics_port}/metrics")
    finally:
        for nd in nodes:
            nd.stop()
    console.print(f"stopped the nodes cleanly; logs are in {root}/node*/node.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
