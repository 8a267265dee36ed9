"""Slot leases with direct dispatch (scheduler/core/leases.py): the pure table, the coordinator and worker
cores together (time passed in, driven synchronously), and a real 3-node loopback mesh (counts from the
node's metrics, never time)."""

import signal
import urllib.request
from collections import Counter

import pytest

from scheduler.core.coordinator_core import (
    Deliver,
    Finish,
    OpenLease,
    ReturnLease,
    SendCancel,
    SendDirect,
    SendOffer,
)
from scheduler.core.job import Job, JobState, Offer, Reject, Requirements, Result
from scheduler.core.leases import LeaseConfig, LeaseTable, Shape, shape_of
from scheduler.core.worker_core import DeviceLoad, Send, StartJob, WorkerCore
from scheduler.devtools.localmesh import make_nodes, sees_all, start_nodes, wait_for
from tests.test_coordinator_core import H, of

SHAPE = Shape("echo", Requirements(), "batch", "alice")


# --- the table alone ---------------------------------------------------------------------------------------

def test_one_lease_request_per_shape_at_a_time_and_only_asked_grants_are_taken():
    t = LeaseTable(LeaseConfig(ask_timeout_s=2.0))
    assert t.wants(SHAPE, 0.0)
    assert not t.wants(SHAPE, 1.0)  # one request in flight per shape
    assert t.wants(SHAPE, 2.5)  # unanswered for ask_timeout_s: ask again
    assert t.granted(SHAPE, "L1", "w", "d0", 3.0) is not None
    assert t.granted(SHAPE, "L2", "w", "d0", 3.0) is None  # nobody asked for this one
    assert t.stats.acquired == 1 and t.stats.refused == 1
    assert t.granted(None, "L3", "w", "d0", 3.0) is None  # a job without a lease shape


def test_a_lease_carries_about_pipeline_s_of_estimated_work():
    t = LeaseTable(LeaseConfig(depth=64, pipeline_s=0.05, max_per_shape=4))
    depths = []
    for lid, est in (("L1", 0.0001), ("L2", 0.01), ("L3", 2.0)):
        t.wants(SHAPE, 0.0)
        depths.append(t.granted(SHAPE, lid, "w", "d0", 0.0, est_run_s=est).depth)
    assert depths == [64, 5, 1]


def test_route_spreads_over_leases_up_to_their_depth_and_skips_excluded_peers():
    t = LeaseTable(LeaseConfig(depth=2, max_per_shape=2))
    for lid, peer in (("L1", "a"), ("L2", "b")):
        assert t.wants(SHAPE, 0.0)
        t.granted(SHAPE, lid, peer, "d0", 0.0)
    assert not t.wants(SHAPE, 0.0)  # max_per_shape reached
    sent = []
    for i in range(4):
        lease = t.route(SHAPE, 0.1)
        assert lease is not None
        t.sent(lease, f"j{i}", 0.1)
        sent.append(lease.peer_id)
    assert sorted(sent) == ["a", "a", "b", "b"]
    assert t.route(SHAPE, 0.1) is None  # every lease at its depth: the normal way
    t.done("L1", "j0", 0.2)
    assert t.route(SHAPE, 0.2, exclude={"a"}) is None
    assert t.route(SHAPE, 0.2).lease_id == "L1"
    assert t.route(Shape("echo", Requirements(), "batch", "bob"), 0.2) is None  # another tenant's shape


def test_idle_leases_are_given_back_and_expired_ones_take_nothing_new():
    t = LeaseTable(LeaseConfig(idle_s=1.0, term_s=10.0))
    t.wants(SHAPE, 0.0)
    lease = t.granted(SHAPE, "L1", "w", "d0", 0.0)
    t.sent(lease, "j1", 0.5)
    assert t.tick(5.0) == []  # busy: never idle
    t.done("L1", "j1", 5.0)
    assert t.next_wakeup() == 6.0
    assert t.tick(5.9) == []
    back = t.tick(6.0)
    assert [(b.lease.lease_id, b.reason) for b in back] == [("L1", "idle")] and len(t) == 0
    # expiry: past its term a lease takes no new job; it goes back once its jobs are out
    t.wants(SHAPE, 20.0)
    lease = t.granted(SHAPE, "L2", "w", "d0", 20.0)
    t.sent(lease, "j2", 29.0)
    assert t.route(SHAPE, 30.0) is None
    assert t.tick(30.5) == []
    t.done("L2", "j2", 31.0)
    assert [(b.lease.lease_id, b.reason) for b in t.tick(31.0)] == [("L2", "expired")]


def test_revoking_a_peer_removes_its_leases_with_their_jobs():
    t = LeaseTable(LeaseConfig(max_per_shape=4))
    for lid, peer in (("L1", "a"), ("L2", "b"), ("L3", "a")):
        t.wants(SHAPE, 0.0)
        t.sent(t.granted(SHAPE, lid, peer, "d0", 0.0), f"j-{lid}", 0.0)
    gone = t.revoke_peer("a")
    assert sorted(x.lease_id for x in gone) == ["L1", "L3"] and gone[0].jobs
    assert [x.lease_id for x in t.leases()] == ["L2"] and t.stats.revoked == 2


def test_realtime_jobs_with_a_deadline_have_no_lease_shape():
    assert shape_of(Job("echo", priority="realtime", deadline=5.0)) is None
    assert shape_of(Job("echo", submitted_by="alice")) == SHAPE


# --- coordinator core and worker core together --------------------------------------------------------------

class Mesh:
    """A coordinator "me" (peers a..e in its view) and real WorkerCores for the peers, messages carried by
    hand. `deliver` runs actions to a fixpoint, the way the I/O layers would."""

    def __init__(self, **cfg):
        self.h = H(**cfg)
        self.workers = {p: WorkerCore(p, lambda: {"d0": DeviceLoad(2, 0, 64, 2)}) for p in "abcde"}
        self.dead: set[str] = set()
        self.started: list[tuple[str, str, int]] = []  # (worker, job id, attempt)
        self.finished: Counter = Counter()
        self.delivered: Counter = Counter()

    def deliver(self, acts, now):
        queue = list(acts)
        while queue:
            a = queue.pop(0)
            if isinstance(a, Finish):
                self.finished[a.job_id] += 1
            elif isinstance(a, Deliver):
                self.delivered[a.job_id] += 1
            peer = getattr(a, "peer_id", None)
            if peer in self.dead:
                continue
            w = self.workers.get(peer) if peer else None
            if isinstance(a, SendOffer):
                queue += self.worker(w, w.on_offer("me", a.offer, now), now)
            elif isinstance(a, SendDirect):
                queue += self.worker(w, w.on_direct("me", a.lease_id, a.offer, now), now)
            elif isinstance(a, OpenLease):
                assert w.lease_opened("me", a.lease_id)
            elif isinstance(a, ReturnLease):
                w.lease_closed(a.lease_id)
            elif isinstance(a, SendCancel):
                self.worker(w, w.on_cancel("me", a.cancel, now), now)

    def worker(self, w, acts, now):
        back = []
        for a in acts:
            if isinstance(a, Send):
                back += self.h.core.handle(w.peer_id, a.message, now)
            elif isinstance(a, StartJob):
                self.started.append((w.peer_id, a.job.job_id, a.attempt))
                w.enqueued(a.job.job_id, a.attempt, now)
        return back

    def submit(self, job_id, now):
        ans, acts = self.h.core.submit(Job("echo", job_id=job_id, submitted_by="alice"), now)
        assert ans.accepted
        self.deliver(acts, now)

    def finish(self, worker, job_id, attempt, now):
        w = self.workers[worker]
        self.deliver(self.worker(w, w.finished(job_id, attempt, Result(job_id=job_id, attempt=attempt, body={"id": job_id}), now),
                                 now), now)


def test_a_stream_of_one_shape_takes_one_claim_then_goes_direct_and_the_lease_returns_when_idle():
    m = Mesh()
    for i in range(10):
        m.submit(f"j{i}", 0.01 * i)
    core = m.h.core
    assert core.stats.offers == 1 and core.stats.placements == 1  # one placement and one claim for ten jobs
    assert core.leases.stats.acquired == 1 and core.leases.stats.direct == 9
    assert {w for w, _, _ in m.started} == {"a"} and len(m.started) == 10
    for w, job_id, attempt in list(m.started):
        m.finish(w, job_id, attempt, 0.5)
    assert all(core.get(f"j{i}").state is JobState.DONE for i in range(10))
    assert set(m.finished.values()) == {1} and set(m.delivered.values()) == {1} and len(m.finished) == 10
    # idle: given back after idle_s, on the coordinator's timer, and the worker drops its grant
    assert core.next_wakeup() <= 0.5 + core.cfg.leases.idle_s
    assert of(core.tick(1.0), ReturnLease) == []
    back = of(core.tick(1.5), ReturnLease)
    assert [(b.peer_id, b.reason) for b in back] == [("a", "idle")]
    m.deliver(back, 1.5)
    assert m.workers["a"].grants() == {} and len(core.leases) == 0
    # the next job of the shape claims again (and takes a new lease)
    m.submit("again", 2.0)
    assert core.stats.offers == 2 and core.leases.stats.acquired == 2


def test_a_lease_granted_with_an_accept_that_its_jobs_result_overtook_is_still_taken():
    m = Mesh()
    core, w = m.h.core, m.workers["a"]
    ans, acts = core.submit(Job("echo", job_id="fast", submitted_by="alice"), 0.0)
    offer = of(acts, SendOffer)[0].offer
    accept = w.on_offer("me", offer, 0.0)[0].message
    assert accept.lease_id
    w.enqueued("fast", 1, 0.0)
    result = w.finished("fast", 1, Result(job_id="fast", attempt=1), 0.001)[0].message
    core.on_result("a", result, 0.002)  # the result first (another call), then the accept
    acts = core.on_accept("a", accept, 0.003)
    assert [type(a) for a in acts] == [OpenLease] and core.leases.stats.acquired == 1
    assert core.get("fast").state is JobState.DONE


def test_worker_loss_revokes_the_lease_and_every_job_on_it_ends_exactly_once_elsewhere():
    m = Mesh()
    for i in range(6):
        m.submit(f"j{i}", 0.0)
    assert {w for w, _, _ in m.started} == {"a"}
    m.finish("a", "j0", 1, 0.1)  # one done before the loss
    m.dead.add("a")
    acts = m.h.core.worker_lost("a", 0.2, "connection lost")
    assert [r.reason for r in of(acts, ReturnLease)] == ["revoked"]
    m.deliver(acts, 0.2)
    # the five in flight went back to the normal path: placed and claimed again on another worker
    again = [(w, j) for w, j, _ in m.started if w != "a"]
    assert sorted(j for _, j in again) == ["j1", "j2", "j3", "j4", "j5"]
    for w, job_id, attempt in [s for s in m.started if s[0] != "a"]:
        m.finish(w, job_id, attempt, 0.5)
    # a late result of the dead worker's attempt is stale
    assert m.h.core.on_result("a", Result(job_id="j3", attempt=1), 0.6) == []
    assert all(m.h.core.get(f"j{i}").state is JobState.DONE for i in range(6))
    assert m.finished == Counter({f"j{i}": 1 for i in range(6)}) and m.delivered == m.finished


def test_a_broken_lease_stream_sends_its_jobs_to_the_retry_path():
    m = Mesh()
    for i in range(3):
        m.submit(f"j{i}", 0.0)
    lease = m.h.core.leases.leases()[0]
    acts = m.h.core.lease_lost(lease.lease_id, 0.3, "stream reset")
    # j0's claim took the lease (it holds the slot), j1 and j2 went on it
    assert sorted(c.cancel.job_id for c in of(acts, SendCancel)) == ["j0", "j1", "j2"]
    assert m.h.core.get("j1").failures == ["lease on a lost (stream reset)"]
    assert len(of(acts, SendOffer)) == 3 and "a" not in {a.peer_id for a in of(acts, SendOffer)}  # excluded
    assert m.h.core.lease_lost(lease.lease_id, 0.4, "again") == []  # once


def test_a_job_the_worker_refuses_on_its_lease_goes_the_normal_way_at_no_cost():
    m = Mesh()
    m.submit("j0", 0.0)
    lease = m.h.core.leases.leases()[0]
    m.workers["a"].lease_closed(lease.lease_id)  # the worker restarted, say: it no longer knows the grant
    m.submit("j1", 0.1)
    core = m.h.core
    rec = core.get("j1")
    assert rec.failures == [] and core.leases.stats.revoked == 1
    assert core.leases.get(lease.lease_id) is None
    assert rec.state is JobState.PLACED and rec.lease_id != lease.lease_id  # claimed (taking a new lease)
    assert core.stats.offers == 2 and rec.attempt == 2


def test_the_worker_refuses_jobs_on_a_lease_it_did_not_grant_to_that_coordinator():
    w = WorkerCore("w", lambda: {"d0": DeviceLoad(1, 0, 4, 1)})
    job = Job("echo", job_id="j1")
    acts = w.on_offer("c1", Offer(job, 1, "d0", 6.0, want_lease=True), 0.0)
    lease_id = acts[0].message.lease_id
    assert lease_id
    direct = Offer(Job("echo", job_id="j2"), 1, "d0", 6.0)
    refused = w.on_direct("c1", lease_id, direct, 0.1)  # not opened yet
    assert isinstance(refused[0].message, Reject) and refused[0].lease_id == lease_id
    assert not w.lease_opened("c2", lease_id) and w.lease_opened("c1", lease_id)
    assert isinstance(w.on_direct("c2", lease_id, direct, 0.1)[0].message, Reject)
    assert isinstance(w.on_direct("c1", lease_id, Offer(direct.job, 1, "d1", 6.0), 0.1)[0].message, Reject)
    taken = w.on_direct("c1", lease_id, direct, 0.1)
    assert [type(a) for a in taken] == [StartJob] and w.on_direct("c1", lease_id, direct, 0.1) == []
    w.coordinator_lost("c1", 1.0)
    assert w.grants() == {}


def test_unopened_grants_expire_and_grants_are_bounded_per_coordinator():
    from scheduler.core.worker_core import MAX_GRANTS_PER_COORDINATOR, UNOPENED_GRANT_S
    w = WorkerCore("w", lambda: {"d0": DeviceLoad(100, 0, 400, 100)})
    ids = [w.on_offer("c", Offer(Job("echo", job_id=f"j{i}"), 1, "d0", 6.0, want_lease=True), 0.0)[0].message.lease_id
           for i in range(MAX_GRANTS_PER_COORDINATOR + 2)]
    assert sum(1 for x in ids if x) == MAX_GRANTS_PER_COORDINATOR
    later = w.on_offer("c", Offer(Job("echo", job_id="late"), 1, "d0", 6.0, want_lease=True), UNOPENED_GRANT_S + 1)
    assert later[0].message.lease_id and len(w.grants()) == 1


def test_the_simulation_with_churn_uses_leases_and_every_job_ends_exactly_once():
    from scheduler.devtools.sim import run
    from scheduler.devtools.sim_report import SimConfig
    r = run(SimConfig(nodes=30, jobs=800, seed=3, gateways=5, kill_fraction=0.1))
    assert not r.missing and not r.multiple and not r.double_delivered and not r.illegal_transitions
    assert r.jobs_on_leases > r.jobs / 4 and r.leases_acquired > 0  # (long jobs go one per lease: many are claimed)


# --- a real 3-node mesh on loopback ------------------------------------------------------------------------

FAST = ["--advert-interval", "0.5", "--advert-ttl", "10"]


def _metric(node, name: str) -> Counter:
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10).read().decode()
    out: Counter = Counter()
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1:].rsplit("} ", 1)
            out[labels.split('"')[1]] += float(value)
    return out


@pytest.fixture
def gateway_mesh(tmp_path):
    nodes = make_nodes(tmp_path, 3, FAST)
    nodes[0].extra += ["--devices", "none"]  # a gateway: every job crosses to a worker
    try:
        start_nodes(nodes)
        wait_for(lambda: sees_all(nodes), 90, "three nodes to see each other")
        yield nodes
    finally:
        for nd in nodes:
            nd.kill()


def _client(node):
    from scheduler.client.client import SyncClient, local_address
    addr, tok, pid, insecure = local_address(node.data_dir)
    return SyncClient(addr, token=tok, peer_id=pid, insecure=insecure)


def test_a_stream_of_jobs_through_a_gateway_uses_leases_not_a_claim_per_job(gateway_mesh):
    gw = gateway_mesh[0]
    with _client(gw) as c:
        c.run("echo", {})  # the first claim (and its lease)
        claims0, leases0 = _metric(gw, "gpumesh_claims_total"), _metric(gw, "gpumesh_leases_total")
        results = [c.run("echo", {"i": i}) for i in range(30)]  # one after the other: one lease serves them
        many = c.run_many("echo", [{"i": i} for i in range(60)])
    assert [r.body["echo"] for r in results] == [{"i": i} for i in range(30)]
    assert all(r.ok for r in many)
    claims, leases = _metric(gw, "gpumesh_claims_total"), _metric(gw, "gpumesh_leases_total")
    direct = leases["direct"] - leases0["direct"]
    new_claims = claims["accepted"] - claims0["accepted"]
    assert leases["acquired"] - leases0["acquired"] <= 4  # at most the per-shape limit, not one per job
    assert direct >= 60 and new_claims <= 30, (claims, leases)


def test_a_worker_killed_under_its_lease_every_job_gets_exactly_one_outcome(gateway_mesh):
    """The lease is revoked and the job on it, with every other, ends exactly once (jobs sent directly on a lease
    and caught by a worker's death: the core test and the simulation with churn above)."""
    gw = gateway_mesh[0]
    with _client(gw) as c:
        first = c.submit("sleep", {"seconds": 5.0})["id"]  # its claim takes a lease, busy while it runs
        wait_for(lambda: _metric(gw, "gpumesh_leases_total")["acquired"] >= 1, 60, "a lease")
        lease_peer = wait_for(lambda: c.status(first)["peer"], 60, "the first job placed")
        # (a lease carries about 50 ms of estimated work: these 1.5 s jobs are claimed, spread over both
        # workers, and may take leases of their own; the first holds its lease while it runs)
        ids = [first] + [c.submit("sleep", {"seconds": 1.5})["id"] for _ in range(8)]
        victim = next(nd for nd in gateway_mesh if nd.peer_id == lease_peer)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        results = [c.result(j, timeout=180) for j in ids]
        assert all(r.ok for r in results), [r.reason for r in results]
        assert {r.worker for r in results} - {lease_peer}
        listed = Counter(j["id"] for j in c.list(500) if j["id"] in ids)
    assert listed == Counter({j: 1 for j in ids})  # one record, one outcome per job
    leases = _metric(gw, "gpumesh_leases_total")
    assert leases["revoked"] + leases["lost"] >= 1, leases
