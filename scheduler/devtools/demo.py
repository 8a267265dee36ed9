"""`make demo`: start a local 3-node mesh, wait until each node sees the others, show the mesh's devices,
run the demo jobs, and stop the nodes cleanly."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from scheduler.cli.main import console as make_console
from scheduler.cli.main import device_table
from scheduler.client.client import SyncClient, local_address
from scheduler.devtools.localmesh import NodeExited, make_nodes, sees_all, start_nodes, stop_all, wait_for
from worker.zk import verify

OUT = Path("demo-out")


def render(console, node) -> None:
    """A short orbit of an example scene rendered on the mesh (frames as PNG + depth .npy)."""

    out = OUT / "frames"
    cmd = [sys.executable, "-m", "scheduler.cli", "render", "examples/scenes/spheres.json", "--frames", "12",
           "--width", "320", "--height", "240", "--fps", "30", "--out", str(out), "--data-dir", str(node.data_dir),
           "--quiet"]
    console.print("[bold]render[/]: 12 frames of examples/scenes/spheres.json at 320x240 on the mesh ...")
    r = subprocess.run(cmd, capture_output=True, text=True)
    console.print((r.stdout + r.stderr).strip(), soft_wrap=True)
    if r.returncode != 0:
        raise SystemExit(f"render failed (exit {r.returncode})")
    console.print(f"frames are in {out}/ (frame_NNNN.png, frame_NNNN_depth.npy, stats.json)", soft_wrap=True)


def prove(console, node) -> None:
    """A zk proof made on the mesh (the coordinator verifies it before delivering), verified again here."""

    spec = {"air": "fibonacci", "steps": 1024, "public_inputs": {"a": 1, "b": 1}}  # default (105-bit) parameters
    addr, tok, pid, insecure = local_address(node.data_dir)
    with SyncClient(addr, token=tok, peer_id=pid, insecure=insecure) as c:
        t0 = time.perf_counter()
        res = c.run("zk.prove", spec, priority="interactive")
        elapsed = time.perf_counter() - t0
    path = OUT / "proof.bin"
    path.write_bytes(res.output)
    v = verify(res.output, spec)
    console.print(f"[bold]zk proof[/]: fibonacci, 1024 steps, proved on {res.worker[-12:]} in {elapsed:.2f} s "
                  f"(end to end), {len(res.output):,} bytes, {v.security_bits}-bit conjectured security; "
                  f"verified here: {'[green]valid[/]' if v.ok else '[red]INVALID: ' + v.reason + '[/]'} -> {path}",
                  soft_wrap=True)  # one line in a pipe too (the terminal wraps it, not rich)
    if not v.ok:
        raise SystemExit(1)


def main() -> int:
    console = make_console()
    OUT.mkdir(exist_ok=True)
    root = OUT / "nodes"
    console.print(f"[bold]gpumesh demo[/]: starting 3 nodes on 127.0.0.1 (data dirs under {root}/)")
    t0 = time.time()
    nodes = make_nodes(root, 3, extra=["--advert-interval", "1.0"])
    try:  # every path out (an error, Ctrl-C, a timeout) stops the nodes; they also die with this process
        start_nodes(nodes)
        wait_for(lambda: sees_all(nodes), 120, "the three nodes to see each other", interval=0.1)
        console.print(f"mesh converged in {time.time() - t0:.1f} s: each node sees the other two")
        peers = nodes[0].call("peers")
        rows = [(p["peer_id"][-8:] + (" (self)" if p["self"] else ""), d) for p in peers for d in p["devices"]]
        console.print(device_table(rows, "devices of the mesh, as node 0 sees them"))
        for nd in nodes:
            console.print(f"  node {nd.peer_id}  libp2p {nd.multiaddr}  metrics http://127.0.0.1:{nd.metrics_port}/metrics",
                          soft_wrap=True)
        render(console, nodes[0])
        prove(console, nodes[0])
    except (NodeExited, TimeoutError) as e:
        console.print(f"[red]demo failed[/]: {e}", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    finally:
        stop_all(nodes)
    console.print(f"stopped the nodes cleanly; logs are in {root}/node*/node.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
