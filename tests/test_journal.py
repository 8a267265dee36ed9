import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from scheduler.core.coordinator_core import CoordinatorCore, JournalFinish, SendOffer
from scheduler.core.job import Accept, Job, JobState, Result
from scheduler.core.placement import Placer
from scheduler.node.journal import Journal, JournalError, JournalOutput
from tests.test_coordinator_core import H


class Wall:
    """A wall clock the test moves along with the core's clock: wall = base + now."""

    def __init__(self, base=1_000_000.0):
        self.base, self.now = base, 0.0

    def at(self, now):
        self.now = now
        return now

    def __call__(self):
        return self.base + self.now


def test_roundtrip_and_idempotent_record(tmp_path):
    wall = Wall()
    j = Journal.open_in(tmp_path, wall=wall)
    job = Job("echo", {"a": 1}, job_id="j1", input=b"xyz", priority="realtime", deadline=15.0)
    assert j.record_job(job, submitted_at=10.0, now=wall.at(10.0))
    assert not j.record_job(job, submitted_at=10.0, now=10.0)
    j.record_attempt("j1", 2, ["worker x lost"], now=wall.at(11.0))
    e = j.get("j1", now=11.0)
    assert e.job == job and e.state is JobState.SUBMITTED and e.attempt == 2 and e.failures == ["worker x lost"]
    assert e.submitted_at == pytest.approx(10.0)
    res = Result(job_id="j1", attempt=2, ok=True, body={"sum": 9}, worker="w")
    j.record_finish("j1", JobState.DONE, "", res, finished_at=12.0, now=wall.at(12.0))
    e = j.get("j1", now=12.0)
    assert e.state is JobState.DONE and e.result == res and e.finished_at == pytest.approx(12.0)
    assert j.get("nope", 12.0) is None
    assert j.counts() == {"done": 1}
    j.close()


def test_times_survive_a_restart_on_another_monotonic_clock(tmp_path):
    wall = Wall(5000.0)
    j = Journal.open_in(tmp_path, wall=wall)
    j.record_job(Job("echo", job_id="rt", priority="realtime", deadline=102.0), submitted_at=100.0,
                 now=wall.at(100.0))
    j.close()
    # one second later (wall 5101), the restarted process's monotonic clock reads 7.0
    wall.base, wall.now = 5094.0, 7.0
    e = Journal.open_in(tmp_path, wall=wall).load(now=7.0)[0]
    assert e.submitted_at == pytest.approx(6.0) and e.job.deadline == pytest.approx(8.0)


def test_retention_and_purge(tmp_path):
    wall = Wall()
    j = Journal.open_in(tmp_path, wall=wall, retention_s=100.0)
    for i in range(3):
        j.record_job(Job("echo", job_id=f"j{i}"), 0.0, 0.0)
    j.record_finish("j0", JobState.DONE, "", None, 0.0, 0.0)
    j.record_finish("j1", JobState.FAILED, "boom", None, 50.0, wall.at(50.0))
    wall.at(120.0)
    assert sorted(e.job.job_id for e in j.load(120.0)) == ["j1", "j2"]
    assert j.purge(120.0) == 1
    assert j.get("j0", 120.0) is None and j.get("j2", 120.0).state is JobState.SUBMITTED


def test_newer_schema_refused(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(JournalError, match="schema version 99"):
        Journal(path)


def test_a_small_output_is_kept_with_its_finish_record(tmp_path):
    wall = Wall()
    j = Journal.open_in(tmp_path, wall=wall)
    j.record_job(Job("echo", job_id="j1"), 0.0, 0.0)
    j.record_job(Job("echo", job_id="j2"), 0.0, 0.0)
    res = Result(job_id="j1", attempt=1, ok=True, body={}, worker="w")
    assert j.apply([JournalFinish("j1", JobState.DONE, "", res, 1.0), JournalOutput("j1", b"\x00out")], 1.0) == 2
    j.close()
    j = Journal.open_in(tmp_path, wall=wall)  # reopened: the output is there, beside its finish record
    assert j.output("j1") == b"\x00out" and j.get("j1", 1.0).state is JobState.DONE
    assert j.output("j2") is None and j.output("nope") is None
    j.close()


def test_a_version_1_journal_gains_the_output_column(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE jobs (job_id TEXT PRIMARY KEY, job BLOB NOT NULL, written_wall REAL NOT NULL,
        submitted_wall REAL NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL DEFAULT 0, failures BLOB, result BLOB, finished_wall REAL);
        PRAGMA user_version=1;""")
    db.close()
    j = Journal(path)
    j.record_job(Job("echo", job_id="old"), 0.0, 0.0)
    j.apply([JournalOutput("old", b"x")], 0.0)
    assert j.output("old") == b"x" and j.get("old", 0.0).state is JobState.SUBMITTED
    j.close()


def test_committed_jobs_survive_kill_9(tmp_path):
    """A child journals jobs and SIGKILLs itself (no close, no clean exit); everything committed is there."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from scheduler.node.journal import Journal
        from scheduler.core.job import Job, JobState
        j = Journal.open_in({str(tmp_path)!r})
        for i in range(50):
            j.record_job(Job("echo", {{"i": i}}, job_id=f"j{{i}}"), 0.0, 0.0)
        j.record_finish("j7", JobState.DONE, "", None, 1.0, 1.0)
        print("committed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL and "committed" in p.stdout, p.stderr
    j = Journal.open_in(tmp_path)
    entries = j.load(0.0)
    assert len(entries) == 50
    assert {e.job.job_id: e.state for e in entries}["j7"] is JobState.DONE


def test_coordinator_resumes_from_the_journal_after_a_crash(tmp_path):
    wall = Wall()
    h = H()
    journal = Journal.open_in(tmp_path, wall=wall)
    # two jobs: one finishes, one is running on a when the coordinator dies
    for jid in ("done", "running"):
        _, acts = h.core.submit(Job("echo", job_id=jid), 0.0)
        journal.apply(acts, 0.0)
    rec = h.core.get("done")
    h.core.on_accept(rec.peer, Accept("done", rec.attempt, "d0"), 0.1)
    journal.apply(h.core.on_result(rec.peer, Result(job_id="done", attempt=rec.attempt, ok=True, body={"v": 1}), 0.2), wall.at(0.2))
    run = h.core.get("running")
    h.core.on_accept(run.peer, Accept("running", run.attempt, "d0"), 0.1)
    old_attempt, old_peer = run.attempt, run.peer
    journal.close()

    # kill -9 ... restart: a new core on the same view, journal reopened, a fresh monotonic clock
    wall.base, wall.now = wall.base + 0.8, 0.5
    journal = Journal.open_in(tmp_path, wall=wall)
    core = CoordinatorCore("me", h.view, Placer(h.view, seed=1), h.core.cfg)
    acts = core.restore(journal.load(now=0.5), now=0.5)
    journal.apply(acts, 0.5)
    offers = [a for a in acts if isinstance(a, SendOffer)]
    assert [(o.offer.job.job_id, o.offer.attempt) for o in offers] == [("running", old_attempt + 1)]
    # the old attempt's result arriving now is stale; the finished job still answers
    assert core.on_result(old_peer, Result(job_id="running", attempt=old_attempt, ok=True), 0.6) == []
    assert core.get("done").state is JobState.DONE and core.get("done").result.body == {"v": 1}
    ans, acts = core.submit(Job("echo", job_id="done"), 0.7)
    assert ans.duplicate and acts == []
    assert journal.get("running", 0.7).attempt == old_attempt + 1


def test_prefix_lookup_and_recent_jobs_newest_first(tmp_path):
    wall = Wall()
    j = Journal.open_in(tmp_path, wall=wall)
    for i, jid in enumerate(["ab-1", "ab-2", "cd-1", "a_bc"]):
        j.record_job(Job("echo", job_id=jid), submitted_at=float(i), now=wall.at(float(i)))
    assert sorted(j.ids_with_prefix("ab-", 10)) == ["ab-1", "ab-2"]
    assert j.ids_with_prefix("a_", 10) == ["a_bc"]  # no LIKE wildcards: "_" is a plain character
    assert len(j.ids_with_prefix("a", 1)) == 1
    assert [e.job.job_id for e in j.recent(now=3.0, limit=3)] == ["a_bc", "cd-1", "ab-2"]
    assert [e.job.job_id for e in j.recent(now=3.0, limit=10, since=2.0)] == ["a_bc", "cd-1"]
    j.close()
