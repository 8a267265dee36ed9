"""`mesh-node watch` on a terminal: the node's job events as live rich progress bars, one per unfinished job (its
lifecycle stage, submitted -> placed -> running (advanced by the worker's progress reports) -> finished, as the bar; the attempt and the worker beside it)
under a bar of finished / seen jobs. A job that ends leaves the live area as one coloured line that stays.

`WatchView` only turns events into rich state; the CLI feeds it from the `job.watch` stream (and the jobs the
node already had, from `job.list`). Off a terminal, and with --json, the CLI prints plain lines instead.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

STAGES = {"submitted": 0, "placed": 1, "running": 2}
FINISHED = {"done": "green", "failed": "red", "cancelled": "yellow"}
MAX_BARS = 40  # more unfinished jobs than this: the rest are counted, not drawn


def make_progress(console: Console) -> Progress:
    """Refreshed by the caller (`refresh()` after events, and on a timer for spinners): no refresh thread."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                    TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=console, auto_refresh=False,
                    redirect_stdout=False, redirect_stderr=False)


def line(e: dict[str, Any]) -> str:
    """One event as a line with rich markup (the plain, non-terminal form)."""
    style = FINISHED.get(e["state"], "cyan")
    return (f"{time.strftime('%H:%M:%S')} job {e['id']}" + (f" ({e['kind']})" if e.get("kind") else "")
            + f" [{style}]{e['state']}[/]"
            + (f" attempt {e['attempt']} on {e['peer'][-12:]}" if e.get("peer") else "")
            + (f": {e['reason']}" if e.get("reason") else ""))


class WatchView:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.overall = progress.add_task("[bold]finished / seen", total=0, state="")
        self.bars: dict[str, TaskID] = {}
        self.outcomes: Counter[str] = Counter()
        self._seen: set[str] = set()

    def seed(self, rows: list[dict[str, Any]]) -> None:
        """The node's jobs at start: unfinished ones get bars (finished ones are history, not shown)."""
        for r in rows:
            if r.get("state") in STAGES:
                self.event({"id": r["id"], "kind": r.get("kind", ""), "state": r["state"],
                            "attempt": r.get("attempt", 0), "peer": r.get("peer", "")})

    def event(self, e: dict[str, Any]) -> None:
        job_id, state = e["id"], e["state"]
        if job_id not in self._seen:
            self._seen.add(job_id)
            self.progress.update(self.overall, total=len(self._seen))
        bar = self.bars.get(job_id)
        if state in FINISHED:
            if bar is not None:
                self.progress.remove_task(bar)
                del self.bars[job_id]
            self.outcomes[state] += 1
            self.progress.update(self.overall, completed=sum(self.outcomes.values()),
                                 state=" ".join(f"[{FINISHED[k]}]{k} {v}[/]" for k, v in sorted(self.outcomes.items())))
            self.progress.console.print(line(e))
            return
        where = f"attempt {e['attempt']} on {e['peer'][-12:]}" if e.get("peer") else ""
        stage = f" {e['stage']}" if e.get("stage") else ""
        label = f"[cyan]{state}{stage}[/] {where}".rstrip()
        done = STAGES.get(state, 0) + (min(max(float(e.get("progress") or 0.0), 0.0), 1.0) if state == "running" else 0.0)
        if bar is None:
            if len(self.bars) >= MAX_BARS:  # still counted in the overall bar
                return
            desc = f"{job_id[:24]}" + (f" {e['kind']}" if e.get("kind") else "")
            self.bars[job_id] = self.progress.add_task(desc, total=3, state=label)
            self.progress.update(self.bars[job_id], completed=done)
        else:
            self.progress.update(bar, completed=done, state=label)
