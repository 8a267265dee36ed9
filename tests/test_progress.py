"""Progress on long work: the prover reports its stages, workers stream progress to the coordinator, the CLI
shows it (bars on a terminal, JSON lines on stderr with --json), uploads and downloads count bytes, and the
daemon logs each job's start and end."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from scheduler.cli import watch
from scheduler.cli.progress import JobProgress
from scheduler.devtools.localmesh import running_mesh, wait_for

REPO = Path(__file__).resolve().parent.parent
FAST = ["--advert-interval", "0.5", "--advert-ttl", "10"]


def test_prover_reports_every_stage_in_order():
    from worker.zk.stark import prove

    seen: list[tuple[float, str]] = []
    prove("fibonacci", {"a": 1, "b": 1}, 256, backend="numpy", progress=lambda f, s: seen.append((f, s)))
    stages = [s for _, s in seen]
    assert stages[:4] == ["trace", "LDE", "commit", "composition"]
    rounds = [s for s in stages if s.startswith("FRI round")]
    assert rounds and rounds[-1].endswith(f"{len(rounds)}/{len(rounds)}")
    assert stages[-2:] == ["queries", "done"]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0


def test_watch_bar_advances_with_the_workers_progress():
    out = io.StringIO()
    progress = watch.make_progress(Console(file=out, force_terminal=True, width=140, color_system=None))
    v = watch.WatchView(progress)
    v.event({"id": "p1", "kind": "zk.prove", "state": "running", "attempt": 1, "peer": "12D3KooWxyz"})
    v.event({"id": "p1", "kind": "zk.prove", "state": "running", "attempt": 1, "peer": "12D3KooWxyz",
             "progress": 0.5, "stage": "FRI round 2/5"})
    (task,) = progress.tasks[1:]
    assert task.completed == 2.5 and "FRI round 2/5" in task.fields["state"]


def test_json_mode_prints_one_line_per_update(capsys):
    with JobProgress("json") as p:
        p.upload(1 << 20, 2 << 20)
        p.job({"id": "j", "state": "running", "progress": 0.5, "stage": "commit"})
        p.job({"id": "j", "state": "done", "final": True})
        p.download(10)
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert [x["event"] for x in lines] == ["upload", "job", "job", "download"]
    assert lines[1]["fraction"] == 0.55 and lines[1]["stage"] == "commit" and lines[2]["fraction"] == 1.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("prog"), 2, FAST) as nodes:
        yield nodes


def cli(node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args, "--data-dir", str(node.data_dir)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_prove_on_the_mesh_streams_stages(mesh, tmp_path):
    r = cli(mesh[0], "prove", "fibonacci", "--steps", "4096", "--out", str(tmp_path / "p.bin"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes"] == (tmp_path / "p.bin").stat().st_size
    events = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    job = [e for e in events if e["event"] == "job"]
    assert any(e.get("stage") for e in job), job  # the worker's own report, relayed by the coordinator
    assert job[-1]["state"] == "done" and job[-1]["fraction"] == 1.0
    assert [e["fraction"] for e in job] == sorted(e["fraction"] for e in job)
    assert any(e["event"] == "download" for e in events)


def test_submit_wait_shows_upload_and_download_bytes(mesh, tmp_path):
    data = os.urandom(3 << 20)  # over the inline limit: streamed
    (tmp_path / "in.bin").write_bytes(data)
    r = cli(mesh[1], "submit", "echo", "--input", str(tmp_path / "in.bin"), "--wait", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    ups = [e for e in events if e["event"] == "upload"]
    downs = [e for e in events if e["event"] == "download"]
    assert ups and ups[-1]["bytes"] == ups[-1]["total"] == len(data)
    assert downs and downs[-1]["bytes"] == len(data)
    assert json.loads(r.stdout)["output_bytes"] == len(data)


def test_daemon_logs_job_start_and_end_at_info(mesh, tmp_path):
    (tmp_path / "spec.json").write_text('{"seconds": 0.3}')
    r = cli(mesh[0], "submit", "sleep", "--spec", str(tmp_path / "spec.json"), "--wait", "--id", "logged-sleep-1")
    assert r.returncode == 0, r.stderr

    def logged() -> bool:
        text = "\n".join(nd.log_tail(2000) for nd in mesh)
        return ("INFO    gpumesh.scheduler: job logged-sleep-1 (sleep, batch) submitted by local-cli" in text
                and "job logged-sleep-1 started" in text and "job logged-sleep-1 (sleep) done after" in text)
    wait_for(logged, 60, "the job's start and end in the nodes' logs")
