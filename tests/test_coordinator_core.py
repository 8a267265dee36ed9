from dataclasses import replace
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from mesh.advert import Advert, DeviceAdvert
from scheduler.core.coordinator_core import (
    CoordinatorConfig,
    CoordinatorCore,
    Deliver,
    Finish,
    JournalAttempt,
    JournalFinish,
    JournalJob,
    SendCancel,
    SendOffer,
    StateChanged,
)
from scheduler.core.job import Accept, Job, JobState, LeaseEntry, LeaseRenew, Reject, Requirements, Result
from scheduler.core.placement import Placer, TrackedView
from scheduler.node.metrics import PrometheusCoordinatorObserver

GIB = 1 << 30
GPU = DeviceAdvert("d0", "gpu", "nv", "g", 80, 8 * GIB, True, True, 5000.0, 10000.0, 1, 1, 0)


def ad(pid, seq=1, **dev):
    return Advert(pid, b"k" * 32, seq, 0.0, data_addr=f"{pid}:4002", devices=(replace(GPU, **dev),))


class H:
    """A coordinator "me" with a view of peers a..e (a best, then b, c, ...)."""

    def __init__(self, peers="abcde", observer=None, **cfg):
        self.view = TrackedView("me", ttl_s=6.0)
        self.seqs = {}
        for i, p in enumerate(peers):
            self.advert(p, 0.0, f32_gflops=10000.0 - 1000 * i)
        self.placer = Placer(self.view, lambda job, d: 1.0 / d.f32_gflops, seed=0, d=1, jitter=0.0)
        self.core = CoordinatorCore("me", self.view, self.placer, CoordinatorConfig(**cfg), observer=observer)

    def advert(self, pid, now, **dev):
        self.seqs[pid] = self.seqs.get(pid, 0) + 1
        self.view.apply(ad(pid, self.seqs[pid], **dev), now)

    def submit(self, job, now=0.0):
        ans, acts = self.core.submit(job, now)
        return ans, acts


def offers(acts):
    return [(a.peer_id, a.offer.attempt) for a in acts if isinstance(a, SendOffer)]


def of(acts, cls):
    return [a for a in acts if isinstance(a, cls)]


def run_to_done(h, job_id, now):
    rec = h.core.get(job_id)
    h.core.on_accept(rec.peer, Accept(job_id, rec.attempt, rec.device), now)
    return h.core.on_result(rec.peer, Result(job_id=job_id, attempt=rec.attempt, ok=True, body={"v": job_id}), now)


def test_submit_journals_then_offers_to_the_best_peer():
    h = H()
    ans, acts = h.submit(Job("echo", job_id="j1"))
    assert ans.accepted and ans.state is JobState.SUBMITTED and ans.message() == "submitted"
    kinds = [type(a) for a in acts]
    assert kinds == [JournalJob, JournalAttempt, SendOffer]
    so = acts[-1]
    assert so.peer_id == "a" and so.offer.attempt == 1 and so.offer.device_id == "d0"
    assert so.offer.coordinator == "me" and so.offer.lease_s == 6.0 and so.offer.est_run_s == pytest.approx(1e-4)
    # it may queue there as long as its own run time there, or longer if the next best (b) is worse by more
    assert so.offer.max_wait_s == pytest.approx(1e-4 * 1.25)
    h2 = H(peers="bx")
    h2.advert("x", 0.0, f32_gflops=1000.0)  # b 1/10000 s, x 1/1000 s: b may queue up to the difference
    _, acts = h2.submit(Job("echo", job_id="j2"))
    assert acts[-1].offer.max_wait_s == pytest.approx((1 / 1000 - 1 / 10000) * 1.25)


def test_resubmit_is_idempotent_and_conflicts_are_refused():
    h = H()
    h.submit(Job("echo", {"x": 1}, job_id="j1"))
    ans, acts = h.submit(Job("echo", {"x": 1}, job_id="j1"))
    assert ans.accepted and ans.duplicate and acts == []
    ans, _ = h.submit(Job("echo", {"x": 2}, job_id="j1"))
    assert not ans.accepted and ans.code == "conflict"
    run_to_done(h, "j1", 1.0)
    ans, acts = h.submit(Job("echo", {"x": 1}, job_id="j1"), 2.0)
    assert ans.duplicate and ans.state is JobState.DONE and acts == []
    assert h.core.stats.submitted == 1


def test_reject_feeds_load_back_and_the_next_candidate_gets_a_new_attempt():
    h = H()
    _, acts = h.submit(Job("echo", job_id="j1"))
    assert offers(acts) == [("a", 1)]
    acts = h.core.on_reject("a", Reject("j1", 1, "busy", {"d0": (0, 7)}), 0.01)
    assert offers(acts) == [("b", 2)]
    assert h.view.get("a").devices()[0].queue_depth == 7
    # a late/duplicated answer about attempt 1 changes nothing
    assert h.core.on_reject("a", Reject("j1", 1, "busy"), 0.02) == []
    # accept of attempt 1 from a (which had refused): withdrawn
    acts = h.core.on_accept("a", Accept("j1", 1, "d0"), 0.02)
    assert of(acts, SendCancel)[0].cancel.attempt == 1
    assert h.core.get("j1").state is JobState.SUBMITTED and h.core.stats.claims_rejected == 1


def test_an_accept_overtaken_by_its_lease_renewal_changes_nothing():
    h = H()
    h.submit(Job("echo", job_id="j1"))
    acts = h.core.on_lease("a", LeaseRenew((LeaseEntry("j1", 1, True),)), 0.01)
    assert h.core.get("j1").state is JobState.RUNNING and not of(acts, SendCancel)
    assert h.core.on_accept("a", Accept("j1", 1, "d0"), 0.02) == []
    assert h.core.get("j1").state is JobState.RUNNING


def test_full_lifecycle_with_exactly_one_result():
    h = H()
    h.submit(Job("echo", job_id="j1", priority="interactive"))
    acts = h.core.on_accept("a", Accept("j1", 1, "d0", 0, {"d0": (0, 0)}), 0.01)
    assert of(acts, StateChanged)[0].state is JobState.PLACED
    assert h.view.get("a").devices()[0].free_slots == 0  # the accept's load is in the view at once
    acts = h.core.on_lease("a", LeaseRenew((LeaseEntry("j1", 1, True),)), 0.02)
    assert of(acts, StateChanged)[0].state is JobState.RUNNING
    acts = h.core.on_result("a", Result(job_id="j1", attempt=1, ok=True, body={"sum": 3}, timings={"run_s": 0.5}), 0.5)
    assert [type(a) for a in acts] == [Deliver, JournalFinish, Finish]
    assert acts[0].result.body == {"sum": 3} and acts[2].state is JobState.DONE
    # duplicates and strays are dropped and counted
    assert h.core.on_result("a", Result(job_id="j1", attempt=1, ok=True, body={"sum": 3}), 0.6) == []
    assert h.core.on_result("b", Result(job_id="nope", attempt=1, ok=True), 0.6) == []
    assert h.core.stats.duplicates_dropped == 2 and h.core.in_flight == 0
    # a lease renewal for a finished job: the worker is told to drop it
    acts = h.core.on_lease("a", LeaseRenew((LeaseEntry("j1", 1, True),)), 0.7)
    assert of(acts, SendCancel)


def test_lease_expiry_replaces_excluding_the_worker_until_max_attempts():
    h = H()
    h.submit(Job("echo", job_id="j1", max_attempts=3))
    now, holders = 0.0, []
    for _ in range(3):
        rec = h.core.get("j1")
        holders.append(rec.peer)
        h.core.on_accept(rec.peer, Accept("j1", rec.attempt, "d0"), now)
        for p in "abcde":  # everybody stays in the view
            h.advert(p, now)
        now += 7.0  # no renewal: the lease (6 s) expires
        for p in "abcde":
            h.advert(p, now - 0.5)
        acts = h.core.tick(now)
        assert of(acts, SendCancel)[0].peer_id == holders[-1]
    assert holders == ["a", "b", "c"]
    rec = h.core.get("j1")
    assert rec.state is JobState.FAILED
    assert rec.reason.startswith("failed on 3 attempts: lease on a expired; lease on b expired; lease on c expired")
    fin = of(acts, Finish)[0]
    assert fin.state is JobState.FAILED and fin.result is None
    assert h.core.stats.retries == 2 and h.view.standing("a") == pytest.approx(0.95)


def test_crashes_dent_standing_once_per_lease_and_never_below_the_floor():
    h = H(peers="ab")
    for i in range(30):
        h.submit(Job("echo", job_id=f"j{i}"))
        rec = h.core.get(f"j{i}")
        h.core.on_accept(rec.peer, Accept(f"j{i}", rec.attempt, "d0"), 0.0)
    h.core.worker_lost("a", 1.0)  # many jobs lost at once: one dent
    assert h.view.standing("a") == pytest.approx(0.95)
    for t in range(2, 200, 7):  # it keeps crashing, for a long time
        h.advert("a", float(t))
        h.advert("b", float(t))
        h.submit(Job("echo", job_id=f"k{t}"), float(t))
        rec = h.core.get(f"k{t}")
        if rec.peer == "a":
            h.core.on_accept("a", Accept(f"k{t}", rec.attempt, "d0"), float(t))
        h.core.worker_lost("a", float(t) + 0.5)
    assert h.view.standing("a") == pytest.approx(0.5)  # still eligible (min_standing 0.25)
    h.advert("a", 300.0)  # only a is alive now
    h.submit(Job("echo", job_id="good"), 300.0)
    assert h.core.get("good").peer == "a"
    run_to_done(h, "good", 300.1)
    assert h.view.standing("a") == pytest.approx(0.51)  # good results earn it back


def test_results_of_an_older_attempt_are_dropped_after_replacement():
    h = H()
    h.submit(Job("echo", job_id="j1"))
    h.core.on_accept("a", Accept("j1", 1, "d0"), 0.0)
    acts = h.core.worker_lost("a", 1.0, "connection lost")
    assert offers(acts) == [("b", 2)]
    assert h.core.on_result("a", Result(job_id="j1", attempt=1, ok=True), 1.1) == []  # a's late result: stale
    assert h.core.stats.duplicates_dropped == 1
    acts = run_to_done(h, "j1", 1.2)
    assert len(of(acts, Deliver)) == 1 and h.core.get("j1").failures == ["worker a lost (connection lost)"]


def test_advert_expiry_alone_keeps_a_leased_job_and_nothing_new_goes_to_an_expired_peer():
    """Gossip runs late under load: a holder whose adverts stop but whose lease renewals still arrive keeps
    its job; when the renewals stop too, the lease expiry re-places it, never on a peer expired from the view."""
    h = H()
    h.submit(Job("echo", job_id="j1"))
    h.core.on_accept("a", Accept("j1", 1, "d0"), 0.0)
    h.core.on_lease("a", LeaseRenew((LeaseEntry("j1", 1, True),)), 5.0)  # its lease is fine until 11.0
    for p in "cde":
        h.advert(p, 5.0)  # a and b fall silent; a holds the job
    assert h.core.tick(6.5) == [] and h.core.get("j1").peer == "a"
    h.core.on_lease("a", LeaseRenew((LeaseEntry("j1", 1, True),)), 7.0)  # still alive on the data plane
    for p in "cde":
        h.advert(p, 10.0)
    assert h.core.tick(12.9) == [] and h.core.get("j1").failures == []
    acts = h.core.tick(13.0)  # the renewals stopped too: lost
    assert offers(acts) == [("c", 2)]  # not b: expired from the view too (no expire() call needed)
    assert h.core.get("j1").failures == ["lease on a expired"]


def test_an_offer_waiting_on_a_peer_whose_adverts_expire_goes_to_the_next_candidate():
    h = H(claim_timeout_s=30.0)
    h.submit(Job("echo", job_id="j1"))
    assert h.core.get("j1").peer == "a" and h.core.get("j1").offer_pending
    for p in "bcde":
        h.advert(p, 6.0)
    acts = h.core.tick(6.5)  # a silent for longer than the ttl, its answer still missing
    assert [a for a in acts if isinstance(a, SendCancel)] and offers(acts)[0][0] != "a"
    assert h.core.get("j1").failures == []


def test_claim_timeout_moves_on_and_withdraws_the_offer():
    h = H(claim_timeout_s=2.0)
    h.submit(Job("echo", job_id="j1"))
    assert h.core.next_wakeup() == 2.0
    assert h.core.tick(1.9) == []
    acts = h.core.tick(2.0)
    assert of(acts, SendCancel)[0].peer_id == "a" and offers(acts) == [("b", 2)]
    assert h.core.stats.claims_timed_out == 1 and h.core.get("j1").failures == []


def test_cancel_reaches_the_holder_and_late_results_are_dropped():
    h = H()
    h.submit(Job("echo", job_id="j1"))
    h.core.on_accept("a", Accept("j1", 1, "d0"), 0.0)
    rec, acts = h.core.cancel("j1", 0.5)
    assert rec.state is JobState.CANCELLED and of(acts, SendCancel)[0].cancel.attempt == 1
    assert of(acts, Finish)[0].reason == "cancelled by client"
    assert h.core.on_result("a", Result(job_id="j1", attempt=1, ok=True), 0.6) == []
    assert h.core.cancel("j1", 0.7)[1] == []  # already final
    assert h.core.in_flight == 0


def test_impossible_requirements_and_deadlines_are_refused_at_once():
    h = H()
    ans, acts = h.submit(Job("k", requirements=Requirements(device_kind="gpu", min_memory_bytes=16 * GIB)))
    assert not ans.accepted and acts == [] and ans.code == "no_match"
    assert ans.message().startswith("rejected: no peer has a gpu with >= 16 GiB")
    ans, _ = h.submit(Job("k", priority="realtime", deadline=0.0005), now=0.0)
    assert not ans.accepted and ans.code == "deadline" and "deadline cannot be met" in ans.reason
    ans, _ = h.submit(Job("k", job_id="bad id"))
    assert not ans.accepted and ans.code == "invalid"
    assert h.core.jobs() == [] and h.core.stats.refused == 3


def test_bounded_admission_queue_positions_and_priority_order():
    h = H(max_in_flight=2, max_queued=3)
    for j in ("b1", "b2"):
        assert h.submit(Job("echo", job_id=j))[0].position == 0
    assert h.submit(Job("echo", job_id="b3"))[0].message() == "queued (position 1)"
    assert h.submit(Job("echo", job_id="b4"))[0].message() == "queued (position 2)"
    ans, _ = h.submit(Job("echo", job_id="i1", priority="interactive"))
    assert ans.message() == "queued (position 1)"  # ahead of batch
    ans, _ = h.submit(Job("echo", job_id="b5"))
    assert not ans.accepted and ans.message() == "rejected: saturated (coordinator queue full: 3 jobs)"
    ans, _ = h.submit(Job("echo", job_id="r1", when_saturated="reject"))
    assert not ans.accepted and ans.code == "saturated"
    acts = run_to_done(h, "b1", 1.0)
    assert [a.offer.job.job_id for a in of(acts, SendOffer)] == ["i1"]
    acts = run_to_done(h, "b2", 1.0)
    assert [a.offer.job.job_id for a in of(acts, SendOffer)] == ["b3"]
    assert h.core.queued == 1 and h.core.stats.max_queued == 3


def test_every_worker_refusing_backs_off_then_places_when_room_appears():
    h = H(peers="ab", retry_backoff_s=0.1)
    h.submit(Job("echo", job_id="j1"))
    h.core.on_reject("a", Reject("j1", 1, "busy", {"d0": (0, 5)}), 0.01)
    acts = h.core.on_reject("b", Reject("j1", 2, "busy", {"d0": (0, 5)}), 0.02)
    assert offers(acts) == [] and h.core.queued == 1 and h.core.in_flight == 0
    h.advert("b", 0.05, free_slots=1)  # b frees up
    assert h.core.tick(0.1) == []
    acts = h.core.tick(0.13)
    assert offers(acts) == [("b", 3)]
    # a client that asked not to wait is told at once instead
    h2 = H(peers="ab")
    h2.submit(Job("echo", job_id="j2", when_saturated="reject"))
    h2.core.on_reject("a", Reject("j2", 1, "busy", {"d0": (0, 5)}), 0.01)
    acts = h2.core.on_reject("b", Reject("j2", 2, "busy", {"d0": (0, 5)}), 0.02)
    assert of(acts, Finish)[0].reason == "rejected: saturated (every suitable worker refused the offer)"


def test_timeout_and_deadline_miss():
    h = H()
    h.submit(Job("echo", job_id="t", timeout_s=5.0))
    h.submit(Job("echo", job_id="rt", priority="realtime", deadline=1.0))
    acts = h.core.tick(1.0)
    assert of(acts, Finish)[0].job_id == "rt" and h.core.get("rt").reason.startswith("deadline missed")
    assert h.core.stats.deadline_misses == 1
    acts = h.core.tick(5.0)
    assert h.core.get("t").reason == "timed out after 5 s (submitted)"
    assert of(acts, SendCancel)  # the worker holding the offer is told


def test_worker_failures_retryable_or_final_and_verification():
    h = H()
    h.submit(Job("echo", job_id="r"))
    h.core.on_accept("a", Accept("r", 1, "d0"), 0.0)
    acts = h.core.on_result("a", Result(job_id="r", attempt=1, ok=False, error="device lost", retryable=True), 0.1)
    assert offers(acts) == [("b", 2)] and not of(acts, Deliver)
    h.submit(Job("echo", job_id="f"))
    rec = h.core.get("f")
    h.core.on_accept(rec.peer, Accept("f", 1, "d0"), 0.0)
    acts = h.core.on_result(rec.peer, Result(job_id="f", attempt=1, ok=False, error="bad spec"), 0.1)
    assert of(acts, Deliver) and of(acts, Finish)[0].state is JobState.FAILED and h.core.get("f").reason == "bad spec"
    # verification: a wrong answer is an attempt lost, and costs standing
    h2 = H()
    h2.submit(Job("echo", job_id="v"))
    h2.core.on_accept("a", Accept("v", 1, "d0"), 0.0)
    bad = Result(job_id="v", attempt=1, ok=True, body={"ok": False})
    assert h2.core.expects_result("a", bad).job_id == "v" and h2.core.expects_result("b", bad) is None
    acts = h2.core.on_result("a", bad, 0.1, problem="wrong checksum")
    assert offers(acts) == [("b", 2)] and h2.view.standing("a") == pytest.approx(0.75)
    assert "failed verification: wrong checksum" in h2.core.get("v").failures[0]
    assert h2.core.expects_result("a", bad) is None  # stale now: not worth verifying
    acts = h2.core.on_result("b", Result(job_id="v", attempt=2, ok=True, body={"ok": True}), 0.2)
    assert of(acts, Finish)[0].state is JobState.DONE


def test_restore_after_restart_continues_attempts_and_serves_finished():
    h = H()
    job = Job("echo", job_id="u")
    entries = [
        SimpleNamespace(job=job, state="placed", reason="", attempt=4, failures=["x"], result=None,
                        submitted_at=-1.0, finished_at=None),
        SimpleNamespace(job=Job("echo", job_id="f"), state="done", reason="", attempt=1, failures=[],
                        result=Result(job_id="f", attempt=1, ok=True, body={"r": 1}), submitted_at=-2.0, finished_at=-1.5),
    ]
    acts = h.core.restore(entries, 0.0)
    assert offers(acts) == [("a", 5)]
    assert h.core.get("f").state is JobState.DONE and h.core.get("f").result.body == {"r": 1}
    ans, _ = h.submit(Job("echo", job_id="f"), 0.1)
    assert ans.duplicate and ans.state is JobState.DONE


def test_finished_jobs_are_forgotten_after_retention():
    h = H(finished_retention_s=10.0)
    h.submit(Job("echo", job_id="j"))
    run_to_done(h, "j", 1.0)
    h.core.tick(10.5)
    assert h.core.get("j") is not None
    h.core.tick(11.5)
    assert h.core.get("j") is None


def test_memory_bounded_under_many_jobs():
    h = H(finished_retention_s=1e9, max_finished=100)
    for i in range(1000):
        now = i / 1000
        h.submit(Job("echo", job_id=f"j{i}", timeout_s=3600), now)
        run_to_done(h, f"j{i}", now)
        h.core.tick(now)
    assert len(h.core._jobs) <= 101 and len(h.core._timers) <= 1024 + 8 * 2 + 10


def test_metrics_follow_the_lifecycle():
    """The node's Prometheus observer, passed into the core, counts what the core reports."""

    def val(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (val("gpumesh_jobs_finished_total", kind="metricsjob", state="done"),
              val("gpumesh_results_dropped_total", reason="duplicate"),
              val("gpumesh_claims_total", outcome="rejected"),
              val("gpumesh_job_latency_seconds_count", priority="interactive"),
              val("gpumesh_jobs_refused_total", reason="no_match"))
    h = H(observer=PrometheusCoordinatorObserver())
    h.submit(Job("metricsjob", job_id="m1", priority="interactive"))
    h.core.on_reject("a", Reject("m1", 1, "busy"), 0.0)
    run_to_done(h, "m1", 0.1)
    h.core.on_result("b", Result(job_id="m1", attempt=2, ok=True), 0.2)
    h.submit(Job("metricsjob", requirements=Requirements(min_memory_bytes=1 << 50)))
    after = (val("gpumesh_jobs_finished_total", kind="metricsjob", state="done"),
             val("gpumesh_results_dropped_total", reason="duplicate"),
             val("gpumesh_claims_total", outcome="rejected"),
             val("gpumesh_job_latency_seconds_count", priority="interactive"),
             val("gpumesh_jobs_refused_total", reason="no_match"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1, 1]


def test_fair_queueing_between_submitters():
    """A tenant with many queued jobs delays another tenant's next job by about one job, not all of them."""
    h = H(max_in_flight=1)
    for i in range(10):
        h.submit(Job("echo", job_id=f"a{i}", submitted_by="alice"))
    h.submit(Job("echo", job_id="b0", submitted_by="bob"))
    h.submit(Job("echo", job_id="b1", submitted_by="bob"))
    order = []
    now = 0.0
    while len(order) < 12:
        running = [r for r in h.core.jobs([JobState.SUBMITTED, JobState.PLACED, JobState.RUNNING]) if r.peer]
        assert len(running) == 1
        order.append(running[0].job_id)
        now += 1.0
        run_to_done(h, running[0].job_id, now)
        for p in "abcde":  # fresh adverts: every worker idle again
            h.advert(p, now)
        h.core.tick(now)
    assert order.index("b0") <= 2 and order.index("b1") <= 4, order
    assert sorted(order) == sorted([f"a{i}" for i in range(10)] + ["b0", "b1"])


def test_a_refusal_explained_by_the_coordinators_own_jobs_costs_no_standing():
    """A burst of this coordinator's jobs fills a worker before its next advert: its refusals are honest. Free
    slots a fresh advert showed that neither this coordinator's jobs nor leases hold, and a claim finds none
    of: a capacity lie, a small dent in standing, counted."""
    lies = []
    obs = SimpleNamespace(**{n: (lambda *a, **k: None) for n in dir(PrometheusCoordinatorObserver) if not n.startswith("_")})
    obs.advert_lie = lies.append
    h = H(peers="a", observer=obs)
    h.advert("a", 0.0, slots=2, free_slots=2)
    for j in ("j1", "j2", "j3"):
        h.submit(Job("echo", job_id=j), 0.1)
    offered = [j for j in ("j1", "j2", "j3") if h.core.get(j).peer == "a" and h.core.get(j).offer_pending]
    assert len(offered) == 3, offered  # the worker may queue: all three go out on the advert's word
    h.core.on_accept("a", Accept("j1", 1, "d0"), 0.2)
    h.core.on_accept("a", Accept("j2", 1, "d0"), 0.2)
    h.core.on_reject("a", Reject("j3", 1, "full", {"d0": (0, 2)}), 0.2)
    assert h.view.standing("a") == 1.0 and lies == []  # two free, both taken by j1 and j2: honest
    h2 = H(peers="a", observer=obs)
    h2.advert("a", 0.0, slots=2, free_slots=2)
    h2.submit(Job("echo", job_id="k1"), 0.1)
    h2.core.on_reject("a", Reject("k1", 1, "full", {"d0": (0, 0)}), 0.2)
    assert h2.view.standing("a") == pytest.approx(0.99) and lies == ["capacity"]  # two free, none found
    h2.submit(Job("echo", job_id="k2"), 5.0)
    rec = h2.core.get("k2")
    if rec.peer == "a" and rec.offer_pending:  # the advert is 5 s old by now: its load may have changed
        h2.core.on_reject("a", Reject("k2", rec.attempt, "full", {"d0": (0, 0)}), 5.1)
    assert lies == ["capacity"]
