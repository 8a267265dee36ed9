"""The lifecycle table: the only moves a job can make, refused otherwise, in the core and on recovery."""

import pytest

from scheduler.core.coordinator_core import CoordinatorCore, StateChanged
from scheduler.core.job import Job, JobState, Result
from scheduler.core.lifecycle import TRANSITIONS, IllegalTransition, JobEvent, advance, allowed
from scheduler.core.observer import CoordinatorObserver
from tests.test_coordinator_core import H, run_to_done

S, E = JobState, JobEvent


def test_the_happy_path_and_a_lost_attempt():
    assert advance(S.SUBMITTED, E.ACCEPTED) is S.PLACED
    assert advance(S.PLACED, E.STARTED) is S.RUNNING
    assert advance(S.RUNNING, E.LOST) is S.SUBMITTED
    assert advance(S.RUNNING, E.SUCCEEDED) is S.DONE
    assert advance(S.PLACED, E.RESUMED) is S.SUBMITTED


@pytest.mark.parametrize("state", [S.DONE, S.FAILED, S.CANCELLED])
def test_no_way_out_of_a_final_state(state):
    for event in JobEvent:
        with pytest.raises(IllegalTransition):
            advance(state, event)
    assert not any(s is state for s, _e in TRANSITIONS)


@pytest.mark.parametrize(("state", "event"), [(S.PLACED, E.ACCEPTED), (S.RUNNING, E.ACCEPTED),
                                              (S.SUBMITTED, E.STARTED), (S.RUNNING, E.STARTED)])
def test_out_of_order_events_are_refused(state, event):
    with pytest.raises(IllegalTransition, match=event.value):
        advance(state, event)


def test_allowed_matches_the_table():
    assert allowed(S.SUBMITTED, S.PLACED) and allowed(S.RUNNING, S.SUBMITTED)
    assert not allowed(S.SUBMITTED, S.RUNNING) and not allowed(S.DONE, S.SUBMITTED)


class Recorder(CoordinatorObserver):
    def __init__(self):
        self.moves = []

    def state_changed(self, before, after):
        self.moves.append((before, after))


def test_the_core_moves_jobs_only_through_the_table_and_reports_each_move():
    obs = Recorder()
    h = H(observer=obs)
    h.submit(Job("echo", job_id="j"))
    run_to_done(h, "j", 0.1)
    assert obs.moves == [(None, S.SUBMITTED), (S.SUBMITTED, S.PLACED), (S.PLACED, S.DONE)]  # short: no "running"
    assert all(b is None or allowed(b, a) for b, a in obs.moves)


def test_a_forced_illegal_move_is_refused_not_applied():
    h = H()
    h.submit(Job("echo", job_id="j"))
    run_to_done(h, "j", 0.1)
    rec = h.core.get("j")
    with pytest.raises(IllegalTransition):
        h.core._move(rec, JobEvent.STARTED)
    assert rec.state is S.DONE
    assert h.core.on_result(rec.peer or "a", Result(job_id="j", attempt=rec.attempt, ok=True), 0.2) == []  # a duplicate is dropped


def test_journal_recovery_places_unfinished_jobs_again_through_the_table():
    class Entry:
        def __init__(self, job, state):
            self.job, self.state, self.reason, self.attempt, self.failures = job, state, "", 1, []
            self.result, self.submitted_at, self.finished_at = None, 0.0, None

    h = H()
    core = CoordinatorCore("me", h.view, h.placer, h.core.cfg, observer=(obs := Recorder()))
    acts = core.restore([Entry(Job("echo", job_id="r"), S.RUNNING), Entry(Job("echo", job_id="d"), S.DONE)], 1.0)
    assert core.get("r").state in (S.SUBMITTED, S.PLACED) and core.get("d").state is S.DONE
    assert (None, S.SUBMITTED) in obs.moves and not any(isinstance(a, StateChanged) and a.job_id == "d" for a in acts)
