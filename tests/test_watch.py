"""`mesh-node watch`: events become live progress bars (one per unfinished job, its stage as the bar) and a
finished job leaves the live area as a line; the CLI's plain form off a terminal prints one line per event."""

import io

from rich.console import Console

from scheduler.cli import watch


def view():
    out = io.StringIO()
    con = Console(file=out, force_terminal=True, width=140, color_system=None)
    progress = watch.make_progress(con)
    return watch.WatchView(progress), progress, out


def bars(progress):
    return {t.description.split()[0]: (t.completed, t.fields["state"]) for t in progress.tasks[1:]}


def test_bars_follow_each_jobs_stage_and_finished_jobs_leave_as_lines():
    v, progress, out = view()
    v.seed([{"id": "old-done", "kind": "echo", "state": "done"},
            {"id": "queued-1", "kind": "zk.prove", "state": "submitted", "attempt": 0, "peer": ""}])
    assert bars(progress) == {"queued-1": (0, "[cyan]submitted[/]")}
    v.event({"id": "queued-1", "kind": "zk.prove", "state": "placed", "attempt": 1, "peer": "12D3KooWabcdefXYZ"})
    v.event({"id": "queued-1", "kind": "zk.prove", "state": "running", "attempt": 1, "peer": "12D3KooWabcdefXYZ"})
    v.event({"id": "j2", "kind": "echo", "state": "submitted", "attempt": 0, "peer": ""})
    assert bars(progress)["queued-1"][0] == 2 and "attempt 1 on" in bars(progress)["queued-1"][1]
    overall = progress.tasks[0]
    assert (overall.total, overall.completed) == (2, 0)
    v.event({"id": "queued-1", "kind": "zk.prove", "state": "done", "reason": "", "final": True})
    v.event({"id": "j2", "kind": "echo", "state": "failed", "reason": "no peer has a gpu", "final": True})
    assert bars(progress) == {}
    overall = progress.tasks[0]
    assert (overall.total, overall.completed) == (2, 2) and v.outcomes == {"done": 1, "failed": 1}
    text = out.getvalue()
    assert "job queued-1 (zk.prove) done" in text and "job j2 (echo) failed: no peer has a gpu" in text


def test_bars_are_capped_but_every_job_is_counted():
    v, progress, _ = view()
    for i in range(watch.MAX_BARS + 5):
        v.event({"id": f"j{i}", "state": "submitted", "attempt": 0, "peer": ""})
    assert len(progress.tasks) == 1 + watch.MAX_BARS and progress.tasks[0].total == watch.MAX_BARS + 5
