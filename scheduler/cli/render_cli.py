"""`mesh-node render`: render a camera path of a scene on the mesh, write the frames, print latency stats.

    mesh-node render examples/scenes/spheres.json --frames 30 --out frames/
    mesh-node render scene.json --poses path.json --fps 60 --deadline-ms 16 --width 320 --height 240
    mesh-node render examples/scenes/ar.json --serve 8080      # the live viewer: http://127.0.0.1:8080/
    mesh-node render scene.json --realtime --fps 30 --deadline-ms 33   # a real-time render session

Without `--poses` the camera orbits the point it looks at. Frames go through `render_stream` (in order; with
`--deadline-ms`, each frame is a realtime job set and a frame late for its deadline is dropped and counted).
With `--realtime` the frames go through a real-time render session instead (`scheduler.client.realtime`: the
scene uploaded once, slots reserved, one message per frame each way; refused with the measured frame time when
it cannot make the deadline). `--out DIR` gets `frame_NNNN.png` (RGBA, straight alpha as PNG wants it) and `frame_NNNN_depth.npy` (float32 metres, +inf
where nothing is hit) per rendered frame, and `stats.json`.

`add_parser(subparsers)` adds the command to mesh-node's parser; `run(args)` runs it (exit 0 when at least one
frame was rendered).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mesh.bigtcp.rpc import RpcError
from scheduler.cli.common import EXIT_FAIL, EXIT_OK, CommandFailed, UsageError
from scheduler.client.client import Client, address_from_args
from scheduler.client.realtime import open_session
from scheduler.client.render_client import Frame, StreamStats, render_stream
from scheduler.client.viewer import Viewer, parse_listen, url_of
from scheduler.node.config import add_node_options
from worker.render import png
from worker.render.camera import Pose, matrix_to_quat, quat_to_matrix
from worker.render.compositing import straight_alpha
from worker.render.errors import SceneError
from worker.render.samples import at_resolution
from worker.render.scene import from_dict, load_scene_file, pose_from_dict, to_dict


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    help_ = "render a camera path of a scene on the mesh: PNG + depth frames and per-frame latency stats"
    p = subparsers.add_parser("render", help=help_, description=help_ + ". Without --poses the camera orbits the "
                              "point it looks at; with --deadline-ms a frame not back in time is dropped and counted.")
    p.add_argument("scene", type=Path, metavar="SCENE.json", help="scene file (docs/scene-format.md)")
    p.add_argument("--poses", type=Path, metavar="FILE",
                   help="camera poses: a JSON list of {position, orientation} (or {\"poses\": [...]}, or one per line)")
    p.add_argument("--frames", type=int, default=30, help="frames of the default orbit, or the first N poses (default 30)")
    p.add_argument("--width", type=int, help="render at this width instead of the scene's (with --height)")
    p.add_argument("--height", type=int, help="render at this height instead of the scene's (with --width)")
    p.add_argument("--fps", type=float, default=30.0, help="frames issued per second (default 30)")
    p.add_argument("--deadline-ms", type=float, default=None,
                   help="per-frame deadline from its issue: frames become realtime jobs and late ones are dropped "
                        "(default: no deadline, every frame is rendered)")
    p.add_argument("--tiles", default="auto",
                   help="'auto' (split when the cost model says it pays), 'none', or a tile count (default auto)")
    p.add_argument("--max-in-flight", type=int, default=None,
                   help="frames in flight at once (default 4; 2 with --serve)")
    p.add_argument("--serve", metavar="[HOST:]PORT",
                   help="instead of a camera path, serve the live viewer page at http://HOST:PORT/ (default host "
                        "127.0.0.1; PORT 0 picks one): orbit with the mouse (or WebXR), frames shown as they "
                        "arrive with latency, fps and dropped-frame counters; runs until interrupted")
    p.add_argument("--realtime", action="store_true",
                   help="a real-time render session: the scene is uploaded once, a realtime slot is reserved per "
                        "tile, each frame is one message each way (--tiles N: N devices, distinct hosts first; "
                        "auto: 1). Refused when the devices' measured frame time cannot make --deadline-ms "
                        "(default 1000/--fps)")
    p.add_argument("--relay", action="store_true",
                   help="with --realtime: keep every frame on the gateway's stream instead of reaching each tile's "
                        "worker directly (the default, one hop each way instead of two; a worker this machine "
                        "cannot reach stays relayed anyway)")
    p.add_argument("--out", type=Path, metavar="DIR", help="write frame_NNNN.png, frame_NNNN_depth.npy and stats.json")
    add_node_options(p, "API token")
    p.add_argument("--json", action="store_true", help="machine-readable output (one JSON object at the end)")
    p.add_argument("--quiet", action="store_true", help="no per-frame lines")
    return p


def default_orbit(scene: Any, frames: int) -> list:
    """An orbit around the point the scene's camera looks at (the point of its view axis nearest the world
    origin, at least 1 m ahead): the camera's own pose turned about the vertical axis through that point, so
    frame 0 is exactly the scene camera (roll and pitch included) and every frame keeps its height, distance
    and roll."""

    cam = scene.camera
    pos = np.asarray(cam.position, np.float64)
    rot = quat_to_matrix(cam.orientation)
    t = max(1.0, float(-pos @ -rot[:, 2]))
    target = pos + t * -rot[:, 2]
    poses = [cam.pose]
    for i in range(1, frames):
        a = 2 * math.pi * i / frames
        c, s = math.cos(a), math.sin(a)
        turn = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # about +Y, the world's up
        p = target + turn @ (pos - target)
        poses.append(Pose((float(p[0]), float(p[1]), float(p[2])), matrix_to_quat(turn @ rot)))
    return poses


def load_poses(path: Path) -> list:
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = data.get("poses")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of poses")
    return [pose_from_dict(d, f"{path}[{i}]") for i, d in enumerate(data)]


def _tiles(value: str) -> Any:
    if value == "auto":
        return "auto"
    if value in ("none", "1"):
        return None
    n = int(value)
    if n < 1:
        raise ValueError("--tiles must be auto, none or a positive count")
    return n


def run(args: argparse.Namespace) -> int:
    try:
        scene = load_scene_file(args.scene)
        if (args.width is None) != (args.height is None):
            raise ValueError("give both --width and --height")
        if args.width is not None:
            scene = from_dict(to_dict(at_resolution(scene, args.width, args.height), binary=True))  # validated
        poses = load_poses(args.poses)[:args.frames] if args.poses else default_orbit(scene, args.frames)
        tiles = _tiles(args.tiles)
        if args.max_in_flight is None:
            args.max_in_flight = 2 if args.serve else 4
        if args.fps <= 0 or args.frames < 1 or args.max_in_flight < 1:
            raise ValueError("--fps, --frames and --max-in-flight must be positive")
        listen = None
        if args.serve:
            listen = parse_listen(args.serve)
    except (OSError, ValueError, SceneError) as e:  # SceneError is a ValueError
        raise UsageError(str(e)) from e
    if listen is not None:
        return serve(args, scene, tiles, listen)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    addr, tok, pid, insecure = address_from_args(args)
    stats = StreamStats()
    per_frame: list[dict[str, Any]] = []

    def write(i: int, rgba: Any, depth: Any) -> None:
        png.write_png(args.out / f"frame_{i:04d}.png", straight_alpha(rgba))
        np.save(args.out / f"frame_{i:04d}_depth.npy", depth)

    con = Console(stderr=False)
    bars = not args.quiet and not args.json and con.is_terminal  # a frames bar on a terminal, lines otherwise

    session_info: dict[str, Any] = {}

    @asynccontextmanager
    async def frames_of(c: Client) -> AsyncIterator[AsyncIterator[Frame]]:
        if not args.realtime:
            async with render_stream(c, scene, poses, fps=args.fps, deadline_ms=args.deadline_ms, tiles=tiles,
                                     max_in_flight=args.max_in_flight, stats=stats) as frames:
                yield frames
            return
        deadline = args.deadline_ms if args.deadline_ms is not None else 1000.0 / args.fps
        async with open_session(c, scene, fps=args.fps, deadline_ms=deadline,
                                tiles=tiles if isinstance(tiles, int) else 1, direct=not args.relay) as s:
            session_info.update(workers=s.workers, devices=s.devices, direct=sorted(s.direct),
                                estimate_ms=[round(e, 2) for e in s.estimate_ms])
            if not args.json and not args.quiet:
                print(f"session on {len(s.workers)} device(s), measured frame time "
                      f"{', '.join(f'{e:.1f}' for e in s.estimate_ms)} ms, deadline {deadline:g} ms")

            async def recorded() -> AsyncIterator[Frame]:
                async for f in s.stream(poses, max_in_flight=args.max_in_flight):
                    stats.record(f)
                    yield f

            yield recorded()
            session_info.update(bytes_per_frame=s.stats.summary()["bytes_per_frame"], ended=s.ended)

    async def main() -> None:
        async with Client.connect(addr, token=tok, peer_id=pid, insecure=insecure) as c:
            async with frames_of(c) as frames:
                with Progress(TextColumn("frames"), BarColumn(bar_width=30), MofNCompleteColumn(),
                              TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=con,
                              disable=not bars) as bar:
                    task = bar.add_task("frames", total=len(poses), info="")
                    async for f in frames:
                        row: dict[str, Any] = {"frame": f.index, "dropped": f.dropped, "reason": f.reason,
                               "latency_ms": round(f.latency_s * 1e3, 2), "tiles": len(f.tiles),
                               "workers": sorted(f.workers)}
                        per_frame.append(row)
                        if not f.dropped and args.out:
                            await trio.to_thread.run_sync(write, f.index, f.rgba, f.depth)
                        if args.json:  # one line per frame on stderr; stdout keeps the one summary
                            print(json.dumps({"event": "frame", **row}), file=sys.stderr, flush=True)
                        elif bars:
                            bar.update(task, advance=1, info=f"last {row['latency_ms']:.0f} ms"
                                       + (f", {stats.dropped} dropped" if stats.dropped else ""))
                        elif not args.quiet:
                            if f.dropped:
                                print(f"frame {f.index:4d}: DROPPED ({f.reason})")
                            else:
                                print(f"frame {f.index:4d}: {row['latency_ms']:8.1f} ms, {row['tiles']} tile(s) on "
                                      f"{len(row['workers'])} peer(s)")

    try:
        trio.run(main)  # SessionLost: exit 1 (common.ERROR_EXITS)
    except RpcError as e:  # a session refused (deadline with the measurement, no device, limit): the render failed
        raise CommandFailed(f"{e.code}: {e.message}") from e
    summary = {"scene": str(args.scene), "width": scene.camera.width, "height": scene.camera.height,
               "fps": args.fps, "deadline_ms": args.deadline_ms, **stats.summary(),
               "out": str(args.out) if args.out else None}
    if session_info:
        summary["session"] = session_info
    if args.out:
        (args.out / "stats.json").write_text(json.dumps({**summary, "frames_detail": per_frame}, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.dropped_by_reason.items()))
        p50, p99 = summary["p50_ms"], summary["p99_ms"]
        lat = f"latency p50 {p50} ms, p99 {p99} ms" if p50 is not None else "no frame rendered"
        print(f"{stats.frames} frames of {scene.camera.width}x{scene.camera.height}: {stats.rendered} rendered, "
              f"{stats.dropped} dropped" + (f" ({reasons})" if reasons else "") + f"; {lat}"
              + (f"; frames in {args.out}" if args.out else ""))
    return EXIT_OK if stats.rendered else EXIT_FAIL


def serve(args: argparse.Namespace, scene: Any, tiles: Any, listen: tuple[str, int]) -> int:
    """`--serve`: the live viewer until interrupted (exit 0), or 1 when the node cannot be reached."""

    addr, tok, pid, insecure = address_from_args(args)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with Client.connect(addr, token=tok, peer_id=pid, insecure=insecure) as c:
                viewer = Viewer(c, scene, tiles=tiles, deadline_ms=args.deadline_ms,
                                max_in_flight=args.max_in_flight, realtime=args.realtime, direct=not args.relay)
                async with trio.open_nursery() as nursery:
                    port = await nursery.start(viewer.serve, listen[0], listen[1])
                    print(f"viewer of {args.scene} ({scene.camera.width}x{scene.camera.height}) at "
                          f"{url_of(listen[0], port)} (Ctrl-C to stop)", flush=True)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break

    trio.run(main)  # an OSError (the node, the viewer's port): exit 1, common.ERROR_EXITS
    return EXIT_OK


__all__ = ["add_parser", "default_orbit", "load_poses", "run", "serve"]
