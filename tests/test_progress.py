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


def _saxpy_files(tmp_path, n: int) -> tuple[list[str], object, object]:
    import numpy as np

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "saxpy.cl").write_text((REPO / "examples" / "compute" / "saxpy.cl").read_text())
    argv = ["compute", str(tmp_path / "saxpy.cl"), "--kernel", "saxpy", "--global", str(n),
            "--arg", f"scalar:uint32:{n}", "--arg", "scalar:float32:2.0", "--arg", f"in:float32:{tmp_path / 'x.npy'}",
            "--arg", f"y=inout:float32:{tmp_path / 'y.npy'}", "--out", str(tmp_path / "out")]
    return argv, x, y


N_STREAMED = 1 << 19  # two 2 MiB buffers in, one out: over the inline limit both ways, so bytes are streamed


def test_compute_json_streams_upload_job_and_download_lines(mesh, tmp_path):
    import numpy as np

    argv, x, y = _saxpy_files(tmp_path, N_STREAMED)
    r = cli(mesh[0], *argv, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)  # stdout keeps the one summary
    events = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    ups = [e for e in events if e["event"] == "upload"]
    job = [e for e in events if e["event"] == "job"]
    downs = [e for e in events if e["event"] == "download"]
    assert ups and ups[-1]["bytes"] == ups[-1]["total"] >= 2 * 4 * N_STREAMED
    assert job and {e["id"] for e in job} == {info["job_id"]}
    assert job[-1]["state"] == "done" and job[-1]["fraction"] == 1.0
    assert [e["fraction"] for e in job] == sorted(e["fraction"] for e in job)
    assert any(e.get("peer") for e in job)  # the worker it ran on
    assert downs and downs[-1]["bytes"] >= 4 * N_STREAMED
    assert [e["event"] for e in events].index("upload") < [e["event"] for e in events].index("download")
    np.testing.assert_allclose(np.load(tmp_path / "out" / "y.npy"), 2.0 * x + y, rtol=1e-6, atol=1e-6)


def test_compute_shows_bars_on_a_terminal(mesh, tmp_path, monkeypatch, capsys):
    from scheduler.cli import compute_cli
    from scheduler.cli.main import main

    out = io.StringIO()
    terminal = Console(file=out, force_terminal=True, width=140, color_system=None)
    monkeypatch.setattr(compute_cli, "console", lambda: terminal)
    argv, _, _ = _saxpy_files(tmp_path, N_STREAMED)
    assert main([*argv, "--data-dir", str(mesh[1].data_dir)]) == 0, capsys.readouterr().err
    import re

    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", out.getvalue())  # cursor moves and clears: line breaks
    lines = [ln.strip() for ln in screen.splitlines() if ln.strip()]
    bars = {line.split()[0]: line for line in lines[-3:]}  # the bars as they were left
    assert set(bars) == {"upload", "compute", "download"}, lines[-6:]
    assert "100%" in bars["upload"] and "4.0 MiB of 4.0 MiB" in bars["upload"], bars
    assert "100%" in bars["compute"] and "saxpy" in bars["compute"] and " done" in bars["compute"], bars
    assert bars["download"].endswith("2.0 MiB"), bars  # the output's bytes
    assert "ran on" in capsys.readouterr().out  # the summary still follows
