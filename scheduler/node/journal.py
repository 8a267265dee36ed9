"""The coordinator's journal: accepted jobs and their outcomes in SQLite (stdlib sqlite3, WAL).

A coordinator killed with `kill -9` and restarted loads its journal (`load(now)`) and hands the entries to
`CoordinatorCore.restore`: unfinished jobs are placed again (attempt numbers continue after the journaled
ones, so results of attempts from before the crash are recognised as stale), finished ones keep answering
queries and idempotent resubmits until `retention_s` passes (`purge`).

Durability: WAL with synchronous=NORMAL survives a killed process (every committed transaction is in the
WAL file); pass `synchronous="FULL"` to also survive power loss. Blocking: every call does SQLite I/O,
so the trio service runs them in `trio.to_thread.run_sync`; one connection shared under a lock
(`check_same_thread=False`) is safe from any thread.

Clocks: the cores use a monotonic clock that restarts with the process, so times are stored as wall-clock
time (`wall()`, default time.time) and converted back on load: pass the core's `now` to every call.
A realtime job's deadline is kept as a wall-clock instant too.

Small outputs: an output of at most `outputs.SMALL_OUTPUT` bytes is kept in its job's row (`JournalOutput`,
committed in the same transaction as the job's finish record, so a job is never "done" without its output)
instead of a file in results/; `output(job_id)` reads it back.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from scheduler.core.coordinator_core import JournalAttempt, JournalFinish, JournalJob
from scheduler.core.job import Job, JobState, Result

SCHEMA_VERSION = 2  # 2: the output column (a version 1 journal gains it when opened)
FILENAME = "jobs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    job BLOB NOT NULL,             -- Job.to_wire(), its deadline relative to written_wall
    written_wall REAL NOT NULL,
    submitted_wall REAL NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    attempt INTEGER NOT NULL DEFAULT 0,
    failures BLOB,                 -- msgpack list of reasons of lost attempts
    result BLOB,                   -- Result.to_wire(), when the job has one
    finished_wall REAL,            -- NULL while unfinished
    output BLOB                    -- a small output (JournalOutput); NULL: none, or it is a file in results/
);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs(finished_wall);
"""


class JournalError(RuntimeError):
    pass


@dataclass(frozen=True)
class JournalOutput:
    """A finished job's small output, journaled with (in the same transaction as) its JournalFinish."""

    job_id: str
    data: bytes


RECORDS = (JournalJob, JournalAttempt, JournalFinish, JournalOutput)  # what `Journal.apply` writes


@dataclass
class JournalEntry:
    """One journaled job, times on the caller's (coordinator) clock; what `CoordinatorCore.restore` takes."""

    job: Job
    state: JobState
    reason: str
    attempt: int
    failures: list[str] = field(default_factory=list)
    result: Result | None = None
    submitted_at: float = 0.0
    finished_at: float | None = None


def _pack(x: Any) -> bytes:
    return msgpack.packb(x, use_bin_type=True)


def _unpack(b: bytes | None) -> Any:
    return None if b is None else msgpack.unpackb(b, raw=False)


class Journal:
    def __init__(self, path: str | os.PathLike, *, retention_s: float = 24 * 3600.0,
                 wall: Callable[[], float] = time.time, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.wall = wall
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
                raise JournalError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(f"journal {self.path} has schema version {version}, newer than this software "
                                   f"({SCHEMA_VERSION}): upgrade gpumesh or move the file away")
            self._db.executescript(_SCHEMA)
            if "output" not in {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}:  # version 1
                self._db.execute("ALTER TABLE jobs ADD COLUMN output BLOB")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise JournalError(f"cannot open journal {self.path}: {e}") from None

    @classmethod
    def open_in(cls, data_dir: str | os.PathLike, **kw: Any) -> Journal:
        return cls(Path(data_dir) / FILENAME, **kw)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ---------------------------------------------------------------------------------------

    def apply(self, actions: Iterable[Any], now: float) -> int:
        """Carry out the journal records (`RECORDS`) among `actions` (others are ignored) in one transaction.
        Returns how many were journal records."""
        todo = [a for a in actions if isinstance(a, RECORDS)]
        if not todo:
            return 0
        offset = self.wall() - now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for a in todo:
                    if isinstance(a, JournalJob):
                        self._job(a.job, a.submitted_at + offset, now, offset)
                    elif isinstance(a, JournalAttempt):
                        self._db.execute("UPDATE jobs SET attempt = max(attempt, ?), failures = ? WHERE job_id = ?",
                                         (a.attempt, _pack(list(a.failures)), a.job_id))
                    elif isinstance(a, JournalOutput):
                        self._db.execute("UPDATE jobs SET output = ? WHERE job_id = ?", (a.data, a.job_id))
                    else:
                        self._finish(a, offset)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(todo)

    def record_job(self, job: Job, submitted_at: float, now: float) -> bool:
        """Journal an accepted job; False if its id was already there (idempotent)."""
        offset = self.wall() - now
        with self._lock:
            return self._job(job, submitted_at + offset, now, offset)

    def record_attempt(self, job_id: str, attempt: int, failures: Iterable[str], now: float) -> None:
        self.apply([JournalAttempt(job_id, attempt, tuple(failures))], now)

    def record_finish(self, job_id: str, state: JobState, reason: str, result: Result | None, finished_at: float,
                      now: float) -> None:
        self.apply([JournalFinish(job_id, state, reason, result, finished_at)], now)

    def _job(self, job: Job, submitted_wall: float, now: float, offset: float) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO jobs (job_id, job, written_wall, submitted_wall, state) VALUES (?, ?, ?, ?, ?)",
            (job.job_id, _pack(job.to_wire(now)), now + offset, submitted_wall, JobState.SUBMITTED.value))
        return cur.rowcount == 1

    def _finish(self, a: JournalFinish, offset: float) -> None:
        self._db.execute(
            "UPDATE jobs SET state = ?, reason = ?, result = ?, finished_wall = ? WHERE job_id = ?",
            (JobState(a.state).value, a.reason, _pack(a.result.to_wire()) if a.result is not None else None,
             a.finished_at + offset, a.job_id))

    # --- reading ---------------------------------------------------------------------------------------

    def get(self, job_id: str, now: float) -> JournalEntry | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return self._entry(row, now) if row is not None else None

    def output(self, job_id: str) -> bytes | None:
        """A job's journaled small output (None: it has none, or its output is a file)."""
        with self._lock:
            row = self._db.execute("SELECT output FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def load(self, now: float) -> list[JournalEntry]:
        """Unfinished jobs and those finished within the retention time, oldest submission first."""
        wall = self.wall()
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLS} FROM jobs WHERE finished_wall IS NULL OR finished_wall >= ? ORDER BY submitted_wall",
                (wall - self.retention_s,)).fetchall()
        return [self._entry(r, now, wall) for r in rows]

    def ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        """Ids of journaled jobs that start with `prefix` (at most `limit`)."""
        with self._lock:
            rows = self._db.execute("SELECT job_id FROM jobs WHERE substr(job_id, 1, ?) = ? LIMIT ?",
                                    (len(prefix), prefix, limit)).fetchall()
        return [r[0] for r in rows]

    def recent(self, now: float, limit: int, since: float | None = None) -> list[JournalEntry]:
        """The `limit` most recently submitted jobs (submitted at `since` or later, on the caller's clock)."""
        wall = self.wall()
        since_wall = wall - (now - since) if since is not None else 0.0
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM jobs WHERE submitted_wall >= ? "
                                    "ORDER BY submitted_wall DESC LIMIT ?", (since_wall, limit)).fetchall()
        return [self._entry(r, now, wall) for r in rows]

    def purge(self, now: float) -> int:
        """Forget finished jobs older than the retention time; returns how many."""
        with self._lock:
            cur = self._db.execute("DELETE FROM jobs WHERE finished_wall IS NOT NULL AND finished_wall < ?",
                                   (self.wall() - self.retention_s,))
            return cur.rowcount

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())

    def _entry(self, row: tuple, now: float, wall: float | None = None) -> JournalEntry:
        job_id, job_b, written, submitted, state, reason, attempt, failures, result, finished = row
        offset = (self.wall() if wall is None else wall) - now  # wall - core clock, now
        job = Job.from_wire(_unpack(job_b), now=written - offset)
        res = Result.from_wire(_unpack(result)) if result is not None else None
        return JournalEntry(job=job, state=JobState(state), reason=reason, attempt=attempt,
                            failures=list(_unpack(failures) or []), result=res, submitted_at=submitted - offset,
                            finished_at=None if finished is None else finished - offset)


_COLS = "job_id, job, written_wall, submitted_wall, state, reason, attempt, failures, result, finished_wall"
