from scheduler.core.job import Cancel, Job, LeaseEntry, LeaseRenew, Offer, Reject, Result
from scheduler.core.worker_core import CancelJob, DeviceLoad, Send, StartJob, WorkerCore


class FakeExecutor:
    """Per-device slots and queue; what the worker core reads through load()."""

    def __init__(self, slots=1, max_queue=2):
        self.slots, self.max_queue = slots, max_queue
        self.running: list[str] = []
        self.queue: list[str] = []

    def load(self):
        return {"d0": DeviceLoad(self.slots - len(self.running), len(self.queue), self.max_queue, self.slots)}

    def put(self, job_id):
        (self.running if len(self.running) < self.slots else self.queue).append(job_id)


def offer(jid, attempt=1, max_wait=None, est=0.5, prio="batch", lease=6.0, **kw):
    job = Job("echo", job_id=jid, priority=prio, deadline=100.0 if prio == "realtime" else None, **kw)
    return Offer(job, attempt, "d0", lease, max_wait_s=max_wait, est_run_s=est, coordinator="C")


def sent(acts, cls):
    return [a.message for a in acts if isinstance(a, Send) and isinstance(a.message, cls)]


def test_accepts_only_with_real_room_and_reserves_until_enqueued():
    ex = FakeExecutor(slots=1, max_queue=2)
    w = WorkerCore("W", ex.load)
    a = w.on_offer("C", offer("j1"), 0.0)
    acc = sent(a, type(a[0].message))[0]
    assert acc.job_id == "j1" and acc.queue_position == 0 and acc.load == {"d0": (0, 0)}
    assert isinstance(a[1], StartJob) and a[1].device_id == "d0"
    # the executor has not seen j1 yet, but its slot is reserved: an offer allowing no wait is refused,
    # and so is one allowing less than the expected wait (1 job ahead x 0.5 s)
    for allowed in (0.0, 0.4):
        rej = sent(w.on_offer("C2", offer("j2", max_wait=allowed), 0.0), Reject)[0]
        assert rej.reason.startswith("busy") and "expected wait 0.500 s" in rej.reason and rej.load == {"d0": (0, 0)}
    # one allowing that wait is taken, at position 1
    a = w.on_offer("C2", offer("j3", max_wait=0.6), 0.0)
    assert a[0].message.queue_position == 1
    w.enqueued("j1", 1, 0.1)
    ex.put("j1")
    w.enqueued("j3", 1, 0.1)
    ex.put("j3")
    assert w.current_load() == {"d0": (0, 1)}
    # queue full: even a realtime job is refused; below the limit a realtime job needs no tolerance
    ex.queue.append("other")
    assert sent(w.on_offer("C", offer("rt", prio="realtime"), 0.2), Reject)[0].reason.startswith("queue full")
    ex.queue.pop()
    assert not sent(w.on_offer("C", offer("rt", prio="realtime"), 0.2), Reject)
    assert w.stats.accepted == 3 and w.stats.rejected == 3


def test_expected_wait_uses_the_run_times_observed_on_the_device():
    ex = FakeExecutor(slots=1, max_queue=5)
    w = WorkerCore("W", ex.load)
    for i in range(30):  # jobs there take 0.1 s, whatever offers estimate
        w.on_offer("C", offer(f"x{i}"), 0.0)
        w.enqueued(f"x{i}", 1, 0.0)
        w.finished(f"x{i}", 1, Result(job_id=f"x{i}", attempt=1, ok=True, timings={"run_s": 0.1}), 0.0)
    assert abs(w.typical_run_s("d0", 5.0) - 0.1) < 0.01
    ex.running.append("busy")
    ex.queue += ["q1", "q2"]  # 3 ahead of a new job: ~0.3 s
    assert not sent(w.on_offer("C", offer("y", max_wait=0.35, est=5.0), 0.0), Reject)
    assert sent(w.on_offer("C", offer("z", max_wait=0.35, est=5.0), 0.0), Reject)  # now 4 ahead


def test_unknown_device_and_draining():
    w = WorkerCore("W", FakeExecutor().load)
    o = offer("j")
    assert "no device" in sent(w.on_offer("C", Offer(o.job, 1, "gpu9", 6.0), 0.0), Reject)[0].reason
    w.accepting = False
    assert sent(w.on_offer("C", o, 0.0), Reject)[0].reason == "shutting down"


def test_repeated_offer_gets_the_same_answer_without_a_second_start():
    w = WorkerCore("W", FakeExecutor(slots=1).load)
    w.on_offer("C", offer("j1"), 0.0)
    again = w.on_offer("C", offer("j1"), 0.5)
    assert len(again) == 1 and again[0].message.job_id == "j1"
    assert not any(isinstance(a, StartJob) for a in again)


def test_leases_renewed_every_third_batched_per_coordinator_and_running_reported_at_once():
    ex = FakeExecutor(slots=4, max_queue=4)
    w = WorkerCore("W", ex.load)
    for jid in ("a", "b"):
        w.on_offer("C", offer(jid, lease=3.0), 0.0)
    w.on_offer("D", offer("c", lease=6.0), 0.0)
    assert w.tick(0.9) == []
    acts = w.tick(1.0)
    renew = [a for a in acts if isinstance(a, Send)]
    assert [a.peer_id for a in renew] == ["C"]
    assert renew[0].message == LeaseRenew((LeaseEntry("a", 1, False), LeaseEntry("b", 1, False)))
    assert w.next_wakeup() == 2.0
    assert sent(w.started("a", 1, 1.5), LeaseRenew)[0].entries == (LeaseEntry("a", 1, True),)
    acts = w.tick(2.0)
    assert {a.peer_id for a in acts} == {"C", "D"}


def test_cancel_and_finish():
    ex = FakeExecutor(slots=2)
    w = WorkerCore("W", ex.load)
    w.on_offer("C", offer("a"), 0.0)
    w.on_offer("C", offer("b"), 0.0)
    w.enqueued("a", 1, 0.0)
    w.enqueued("b", 1, 0.0)
    # only its coordinator can cancel it, and only the attempt it holds
    assert w.on_cancel("X", Cancel("a", 1), 0.1) == []
    assert w.on_cancel("C", Cancel("a", 2), 0.1) == []
    assert w.on_cancel("C", Cancel("a", 1, "cancelled by client"), 0.1) == [CancelJob("a", 1, "cancelled by client")]
    assert not w.holds("a", 1)
    assert w.finished("a", 1, Result(job_id="a", attempt=1, ok=False, error="cancelled"), 0.2) == []  # no result for a cancelled job
    out = w.finished("b", 1, Result(job_id="b", attempt=0, ok=True, body={"x": 1}), 0.3)
    res = sent(out, Result)[0]
    assert (res.job_id, res.attempt, res.worker, res.device, res.ok) == ("b", 1, "W", "d0", True)
    assert w.held() == [] and w.stats.results_sent == 1


def test_coordinator_lost_cancels_its_jobs_and_failed_start_is_retryable():
    w = WorkerCore("W", FakeExecutor(slots=3).load)
    w.on_offer("C", offer("a"), 0.0)
    w.on_offer("D", offer("b"), 0.0)
    w.on_offer("D", offer("c"), 0.0)
    acts = w.coordinator_lost("D", 1.0)
    assert sorted(a.job_id for a in acts) == ["b", "c"]
    assert [h.job.job_id for h in w.held()] == ["a"]
    assert w.current_load() == {"d0": (2, 0)}  # reservations of never-queued jobs released
    res = sent(w.failed_to_start("a", 1, "input hash mismatch", 1.0), Result)[0]
    assert res.retryable and not res.ok and res.error == "input hash mismatch"


def test_job_held_far_past_its_timeout_is_cancelled():
    w = WorkerCore("W", FakeExecutor().load)
    w.on_offer("C", offer("a", timeout_s=5.0, lease=3.0), 0.0)
    w.enqueued("a", 1, 0.0)
    t, cancelled = 0.0, []
    while t < 20 and not cancelled:
        t += 1.0
        cancelled = [a for a in w.tick(t) if isinstance(a, CancelJob)]
    assert cancelled and cancelled[0].reason == "held past its timeout" and 8.0 <= t <= 10.0
