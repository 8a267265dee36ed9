"""A screenshot of the live viewer (docs/images/viewer.png): a 3-node loopback mesh, the viewer serving
examples/scenes/ar.json, a headless Chromium (Debian's `chromium`) orbiting it; the shot is taken once the
page has shown some frames, so its counters are live.

    python examples/viewer_screenshot.py [--out docs/images/viewer.png] [--frames 40]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import trio

from scheduler.client.client import Client, local_address
from scheduler.client.viewer import Viewer
from scheduler.devtools import chromium
from scheduler.devtools.localmesh import running_mesh
from worker.render.samples import example


async def shoot(data_dir: Path, out: Path, frames: int, width: int, height: int) -> None:
    addr, tok, pid, insecure = local_address(data_dir)
    scene = example("ar", width, height)
    async with Client.connect(addr, token=tok, peer_id=pid, insecure=insecure) as c, trio.open_nursery() as n:
        port = await n.start(Viewer(c, scene, tiles="auto").serve, "127.0.0.1", 0)
        with chromium.launch(f"http://127.0.0.1:{port}/?orbit=auto&speed=20", width=width + 160,
                             height=height + 120) as browser:
            async with browser.page() as page:
                await page.wait_for(f"window.viewer && window.viewer.state.shown >= {frames}", 300, f"{frames} frames")
                await page.screenshot(out)
        n.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images/viewer.png"))
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gm-viewer-shot-") as root:
        with running_mesh(Path(root), 3, ["--advert-interval", "0.5"]) as nodes:
            trio.run(shoot, nodes[0].data_dir, args.out, args.frames, args.width, args.height)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
