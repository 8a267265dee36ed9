"""Progress of one job as the CLI shows it: `submit --wait`, `prove`, `result` and `compute`.

On a terminal: rich bars for the upload (bytes), the job (its state, then the worker's own progress, e.g. a
prover's stages: trace, LDE, commit, FRI rounds, queries) and the download (bytes). With --json: each update as
one JSON line on stderr (stdout keeps the command's one JSON answer). Otherwise (a pipe, --quiet): nothing.

Progress comes from the node's `job.watch` stream (workers report it to the coordinator, which passes it on);
the stream is opened before the job is submitted, so its first states are not missed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from scheduler.client.compute_sdk import JobObserver

STATE_SHARE = {"submitted": 0.0, "queued": 0.02, "placed": 0.05, "running": 0.1}


class JobProgress:
    def __init__(self, mode: str, console: Any = None, title: str = "job") -> None:
        """`mode`: "bars" (a terminal), "json" (lines on stderr) or "off"."""
        self.mode = mode
        self.title = title
        self.events: list[dict[str, Any]] = []  # every update shown (for tests and --json)
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._ended: set[str] = set()  # jobs whose final state was shown
        if mode == "bars":

            self._progress = Progress(TextColumn("{task.description:<10}"), BarColumn(bar_width=30),
                                      TaskProgressColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                                      console=console, transient=False)

    def __enter__(self) -> JobProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _emit(self, item: dict[str, Any]) -> None:
        self.events.append(item)
        if self.mode == "json":
            print(json.dumps(item), file=sys.stderr, flush=True)

    def _bar(self, name: str, description: str, total: float | None) -> Any:
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(description, total=total, info="")
        return self._tasks[name]

    def upload(self, sent: int, total: int) -> None:
        self._emit({"event": "upload", "bytes": sent, "total": total})
        if self._progress is not None:
            self._progress.update(self._bar("up", "upload", total), completed=sent, total=total,
                                  info=f"{_mib(sent)} of {_mib(total)}")

    def download(self, received: int) -> None:
        self._emit({"event": "download", "bytes": received})
        if self._progress is not None:
            self._progress.update(self._bar("down", "download", None), completed=received, info=_mib(received))

    def job(self, e: dict[str, Any]) -> None:
        """A `job.watch` event of this job."""
        state = e.get("state", "")
        fraction = 1.0 if e.get("final") else STATE_SHARE.get(state, 0.0)
        if state == "running" and e.get("progress") is not None:
            fraction = 0.1 + 0.9 * float(e["progress"])
        item = {"event": "job", "id": e.get("id"), "state": state, "fraction": round(fraction, 4)}
        if e.get("final"):
            self._ended.add(str(e.get("id")))
        for k in ("stage", "peer", "attempt", "reason"):
            if e.get(k):
                item[k] = e[k]
        self._emit(item)
        if self._progress is not None:
            info = state + (f": {e['stage']}" if e.get("stage") else "") + (f" on {e['peer'][-12:]}" if e.get("peer") else "")
            self._progress.update(self._bar("job", self.title, 1.0), completed=fraction, info=info)


    def ended(self, job_id: str, state: str, reason: str = "") -> None:
        """The job's end, from its result, unless its watch event showed it already (the coordinator sends both
        at once, on different streams: the result may come first)."""
        if job_id not in self._ended:
            self.job({"id": job_id, "state": state, "reason": reason, "final": True})


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def mode_for(args: Any, console: Any) -> str:
    if getattr(args, "json", False):
        return "json"
    if getattr(args, "quiet", False):
        return "off"
    return "bars" if console.is_terminal else "off"


@asynccontextmanager
async def following(client: Any, progress: JobProgress, *, local: bool) -> AsyncIterator[Callable[[str], None]]:
    """While open, `job.watch` events of the job named by `track(job_id)` (called once its id is known) go to
    `progress`; events that came before are replayed."""
    wanted: dict[str, str] = {}
    early: list[dict[str, Any]] = []

    def track(job_id: str) -> None:
        wanted["id"] = job_id
        for e in early:
            if e.get("id") == job_id:
                progress.job(e)
        early.clear()

    async with client.watch(local=local) as events, trio.open_nursery() as n:
        async def pump() -> None:
            async for e in events:
                if "id" not in wanted:
                    early.append(e)
                    del early[:-256]
                elif e.get("id") == wanted["id"]:
                    progress.job(e)

        n.start_soon(pump)
        yield track
        n.cancel_scope.cancel()


async def submit_and_follow(client: Any, progress: JobProgress, kind: str, spec: dict[str, Any], *,
                            wait: bool, input: bytes | Path | None = None, **kw: Any) -> tuple[dict[str, Any], Any]:
    """Submit a job with its progress shown; (the submit's answer, the JobResult if `wait` and accepted)."""
    async with following(client, progress, local=True) as track:
        ans = await client.submit(kind, spec, input=input, on_upload=progress.upload, **kw)
        track(ans["id"])
        res = await client.result(ans["id"], on_download=progress.download) if wait and ans["accepted"] else None
    if res is not None:
        progress.ended(res.job_id, res.state, res.reason)
    return ans, res


async def result_and_follow(client: Any, progress: JobProgress, job_id: str, *, wait: bool) -> Any:
    """`result ID` with its progress: the job may be coordinated by any node, so the watch is mesh-wide."""
    async with following(client, progress, local=False) as track:
        st = await client.status(job_id)  # the whole id (a prefix may have been given)
        track(st["id"])
        progress.job(st)
        res = await client.result(st["id"], wait=wait, on_download=progress.download)
    if res.state in ("done", "failed", "cancelled"):
        progress.ended(res.job_id, res.state, res.reason)
    return res


class ProgressObserver(JobObserver):
    """The compute SDK's observer (`AsyncMesh.run(..., observer=)`) feeding `progress`: upload and download
    bytes to their bars, and the first accepted job to `track` (from `following`), whose state and worker
    progress then follow. A redundant run's other copies are not shown."""

    def __init__(self, progress: JobProgress, track: Callable[[str], None]) -> None:
        self.progress, self.track = progress, track
        self.job_id = ""

    def upload(self, sent: int, total: int) -> None:
        self.progress.upload(sent, total)

    def submitted(self, job_id: str) -> None:
        if not self.job_id:
            self.job_id = job_id
            self.track(job_id)

    def download(self, received: int) -> None:
        self.progress.download(received)
