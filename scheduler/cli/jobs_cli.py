"""`mesh-node jobs`, `job`, `result`: the mesh's jobs from any node (see scheduler/node/jobview.py).

    mesh-node jobs --state running --kind render --since 1h --limit 50
    mesh-node job 7Hk2Qa-3f            # a unique prefix of the id is enough
    mesh-node result 7Hk2Qa-3f --out result/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from scheduler.node.tokens import parse_duration

STATES = ("submitted", "queued", "placed", "running", "done", "failed", "cancelled")


def add_parsers(job_cmd: Any) -> None:
    """`job_cmd(name, help)` makes a subcommand with the node options (--node/--token/--json)."""
    jp = job_cmd("jobs", "list the jobs of the mesh (every node in view), newest first; render tiles under their frame")
    jp.add_argument("--state", action="append", choices=STATES, help="only jobs in this state (repeatable)")
    jp.add_argument("--kind", default="", help="only this kind, or this family of kinds (e.g. render)")
    jp.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")
    jp.add_argument("--since", metavar="DURATION", help="only jobs submitted within this long, e.g. 15m, 2h, 1d")
    jp.add_argument("--local", action="store_true", help="only the jobs the asked node coordinates")
    j1 = job_cmd("job", "show one job of the mesh (its id, or a unique prefix of it)")
    j1.add_argument("id")
    rp = job_cmd("result", "get a job's result from any node (waits for the job to end unless --no-wait); "
                           "exit status follows the job's outcome")
    rp.add_argument("id", help="job id, or a unique prefix of it")
    rp.add_argument("--out", type=Path, metavar="DIR", help="write result.json and output.bin here")
    rp.add_argument("--no-wait", action="store_true", help="answer at once, even if the job has not ended")


def _clock(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else ""


def _took(r: dict[str, Any]) -> str:
    start, end = r.get("started") or r.get("submitted"), r.get("finished")
    if not start or not end:
        return ""
    s = max(0.0, end - start)
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def group_tiles(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(row, tiles): a frame's tiles under one row for the frame, in the order of its newest tile; other jobs
    with no tiles."""
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    frames: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        frame = r.get("frame")
        if not frame:
            out.append((r, []))
            continue
        if frame not in frames:
            frames[frame] = []
            out.append(({"id": frame, "frame": frame}, frames[frame]))
        frames[frame].append(r)
    for head, tiles in out:
        if tiles:
            states = sorted({t["state"] for t in tiles})
            head.update(kind=tiles[0]["kind"], state=states[0] if len(states) == 1 else "/".join(states),
                        priority=tiles[0].get("priority", ""), submitted=min(t.get("submitted") or 0 for t in tiles),
                        started=None, finished=max((t.get("finished") or 0) for t in tiles) or None,
                        peer=f"{len({t.get('peer') for t in tiles if t.get('peer')})} worker(s)",
                        coordinator=tiles[0].get("coordinator", ""), reason=f"{len(tiles)} tile(s)")
            tiles.sort(key=lambda t: t["id"])
    return out


def job_table(rows: list[dict[str, Any]], title: str):
    t = Table(title=title)
    t.add_column("id", overflow="fold", min_width=20)
    for col in ("kind", "state", "submitted", "ended", "took", "worker", "coordinator", "reason"):
        t.add_column(col, overflow="fold")

    def add(r: dict[str, Any], indent: str = "") -> None:
        peer = r.get("peer") or ""
        t.add_row(indent + r["id"], r.get("kind", ""), r.get("state", ""), _clock(r.get("submitted")),
                  _clock(r.get("finished")), _took(r), peer if " " in peer else peer[-12:],
                  (r.get("coordinator") or "")[-12:], r.get("reason", ""))

    for head, tiles in group_tiles(rows):
        add(head)
        for tile in tiles:
            add(tile, "  └ ")
    return t


def list_body(args: argparse.Namespace) -> dict[str, Any]:
    since = time.time() - parse_duration(args.since) if args.since else 0.0
    return {"limit": args.limit, "state": args.state or [], "kind": args.kind, "since": since, "local": args.local}


def show_job(r: dict[str, Any]) -> str:
    lines = []
    for k, v in r.items():
        if k in ("submitted", "started", "finished"):
            v = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v)) if v else "-"
        elif isinstance(v, list):
            v = "; ".join(map(str, v)) or "-"
        elif v is None or v == "":
            v = "-"
        lines.append(f"{k + ':':<14}{v}")
    return "\n".join(lines)


def write_outcome(res: Any, out_dir: Path | None, as_json: bool) -> dict[str, Any]:
    """A JobResult printed (and written to out_dir/result.json + output.bin)."""
    out = {"id": res.job_id, "state": res.state, "reason": res.reason, "body": res.body, "worker": res.worker,
           "attempt": res.attempt, "output_bytes": len(res.output), "timings": res.timings}
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "result.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
        if res.output:
            (out_dir / "output.bin").write_bytes(res.output)
    if as_json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(f"job {out['id']} {out['state']}" + (f": {out['reason']}" if out["reason"] else "")
              + f" on {out['worker'][-12:] or '?'}\n{json.dumps(out['body'], default=str)[:2000]}")
        if out_dir:
            print(f"written to {out_dir}/ (result.json{', output.bin' if res.output else ''})")
        elif res.output:
            print(f"({len(res.output):,} output bytes: --out DIR writes them)", file=sys.stderr)
    return out
