"""The poison rule (coordinator core, pure) and crash accounting against the submitter's token (quotas, pure).

A crashed attempt is not a lost lease: the worker keeps its standing, the job goes once more to a different
peer, and a second crash fails it ("poison: crashed 2 runners (...)"); each crash is a `Crashed` action for the
submitter's token; after a restart the crash count comes back from the journaled failures.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from scheduler.core.coordinator_core import Crashed, Deliver, Finish, JournalFinish
from scheduler.core.job import Accept, Job, JobState, Result, WireError
from scheduler.core.quota import Limits, QuotaExceeded, Quotas
from tests.test_coordinator_core import H, of, offers

SEGV = "runner crashed: SIGSEGV in kernel 'k'"


def crash(h, job_id, now):
    rec = h.core.get(job_id)
    peer, attempt = rec.peer, rec.attempt
    h.core.on_accept(peer, Accept(job_id, attempt, rec.device), now)
    return peer, h.core.on_result(peer, Result(job_id=job_id, attempt=attempt, ok=False, error=SEGV, crashed=True), now + 0.1)


def test_a_crash_is_retried_once_on_another_peer_then_the_job_is_poison():
    h = H()
    h.submit(Job("compute.opencl", job_id="p", submitted_by="alice", max_attempts=5))
    first, acts = crash(h, "p", 0.0)
    assert first == "a" and offers(acts) == [("b", 2)]  # once more, elsewhere
    assert of(acts, Crashed) == [Crashed("p", "alice", "a", SEGV)]
    assert h.view.standing("a") == pytest.approx(1.0)  # not the worker's fault
    assert not of(acts, Finish) and not of(acts, Deliver)
    second, acts = crash(h, "p", 1.0)
    assert second == "b"
    fin = of(acts, Finish)
    assert fin and fin[0].state is JobState.FAILED
    assert fin[0].reason.startswith("poison: crashed 2 runners (a: runner crashed: SIGSEGV in kernel 'k'; b: ")
    assert of(acts, JournalFinish) and not offers(acts)  # it does not walk on to c, d, e
    assert of(acts, Crashed)[0].peer_id == "b"
    assert h.view.standing("b") == pytest.approx(1.0)


def test_an_ordinary_failure_is_still_final_and_a_crash_count_survives_a_restart():
    h = H()
    h.submit(Job("echo", job_id="f"))
    rec = h.core.get("f")
    h.core.on_accept(rec.peer, Accept("f", 1, "d0"), 0.0)
    acts = h.core.on_result(rec.peer, Result(job_id="f", attempt=1, ok=False, error="TimeLimitExceeded: exceeded time limit"), 0.1)
    assert of(acts, Finish)[0].state is JobState.FAILED and not of(acts, Crashed)
    h2 = H()
    entries = [SimpleNamespace(job=Job("compute.opencl", job_id="r"), state="placed", reason="", attempt=1,
                               failures=[f"crashed on a: {SEGV}"], result=None, submitted_at=0.0, finished_at=None)]
    acts = h2.core.restore(entries, 0.0)
    assert offers(acts) and offers(acts)[0][1] == 2
    _, acts = crash(h2, "r", 1.0)
    assert of(acts, Finish)[0].reason.startswith("poison: crashed 2 runners")


def test_crashed_travels_on_the_wire_and_is_type_checked():
    r = Result(job_id="j", attempt=1, ok=False, error=SEGV, crashed=True)
    assert Result.from_wire(r.to_wire()) == r
    assert "crashed" not in Result(job_id="j", attempt=1, ok=True).to_wire()
    bad = r.to_wire()
    bad["crashed"] = "yes"
    with pytest.raises(WireError):
        Result.from_wire(bad)


def test_crashes_count_against_the_token_until_it_is_refused():
    q = Quotas(Limits(max_crashes=3, crash_device_s=60.0, window_s=100.0))
    q.admit_submit("alice", "j0", 0.0)
    for i in range(3):
        assert q.standing("alice", float(i)) == pytest.approx(1 - i / 3)
        q.crashed("alice", float(i))
    assert q.device_seconds("alice", 3.0) == pytest.approx(180.0)
    with pytest.raises(QuotaExceeded, match="crashed 3 runners") as e:
        q.admit_submit("alice", "j1", 3.0)
    assert e.value.limit == "crashes"
    q.admit_submit("bob", "j2", 3.0)  # other tokens are not affected
    q.admit_submit("alice", "j3", 103.0)  # the window moved on
    assert q.standing("alice", 103.0) == 1.0
