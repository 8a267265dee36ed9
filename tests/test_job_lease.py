"""Client job leases on real node processes (a 3-node loopback mesh whose gateway runs nothing): jobs go from
the client straight to the leased worker and back, their results equal the kind's reference; what a lease
cannot carry goes through the gateway; a ticket opens its lease once and nothing else; the attached
connection can call nothing but lease.run; hostile job items are refused one by one; an expired lease is
renewed and a lost worker's jobs are run again through the gateway. Assertions are on events and counts."""

import math
import urllib.request

import numpy as np
import pytest
import trio
import trio.testing

from mesh.bigtcp.coalesce import Coalescer
from mesh.bigtcp.rpc import RpcError
from mesh.waiting import until, wait_for
from scheduler.client.client import Client, local_address, new_job
from scheduler.client.job_lease import open_lease
from scheduler.core.job import INLINE_INPUT_LIMIT
from scheduler.devtools.localmesh import make_nodes, sees_all, start_nodes, stop_all
from scheduler.node.job_lease import MAX_LEASE_SLOTS, LeaseError, LeaseTerms
from scheduler.node.lease_gateway import usage_of
from scheduler.node.tokens import TokenStore
from tests.attach_checks import dial, forged_tickets_are_refused, methods_are_refused
from worker.kinds_basic import Echo

FAST = ["--advert-interval", "0.5", "--advert-ttl", "10"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    nodes = make_nodes(tmp_path_factory.mktemp("lease-mesh"), 3, FAST)
    nodes[0].extra += ["--devices", "none"]  # a gateway that runs nothing: every lease is on another node
    try:
        start_nodes(nodes)
        wait_for(lambda: sees_all(nodes), 90, "3 nodes to see each other")
        yield nodes
    finally:
        stop_all(nodes)


def connect(node, token=None):
    addr, tok, pid, insecure = local_address(node.data_dir)
    return Client.connect(addr, token=token or tok, peer_id=pid, insecure=insecure)


def metric(node, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10).read().decode()
    want = f"{name}{{{labels}}} " if labels else f"{name} "
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(want))


def metric_sum(node, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10).read().decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith((name + "{", name + " ")))


def open_leases(nodes) -> float:
    return sum(metric(n, "gpumesh_client_leases_open", 'side="worker"') for n in nodes)


async def test_leased_jobs_run_on_the_worker_and_equal_the_reference(mesh):
    gateway = mesh[0]
    async with connect(gateway) as c, open_lease(c, "echo", slots=8) as lease:
        specs = [{"i": i, "s": "x" * (i % 7)} for i in range(40)]
        inputs = [bytes([i]) * i for i in range(40)]
        first = await lease.run(specs[0], input=inputs[0])
        assert lease.worker in (mesh[1].peer_id, mesh[2].peer_id)  # the gateway has no device
        assert first.worker == lease.worker and first.ok
        results = await lease.run_many(specs, inputs=inputs)
        for spec, data, r in zip(specs, inputs, results, strict=True):
            ref = Echo().reference(spec, data)
            assert r.ok and r.body == ref.body and r.output == (ref.output or b""), (spec, r.state, r.reason)
        assert lease.stats == {"on_lease": 41, "through_gateway": 0, "leases": 1}
        # not journaled: the gateway's job list does not have them
        listed = await c.list(limit=1000)
        assert not any(j.get("id", "").startswith("lease-") for j in listed)
    await until(lambda: open_leases(mesh) == 0, 60, "the lease to be given back when the block ends")


async def test_what_a_lease_cannot_carry_goes_through_the_gateway(mesh):
    big = b"\x01" * (INLINE_INPUT_LIMIT + 1)
    async with connect(mesh[0]) as c, open_lease(c, "echo", slots=2) as lease:
        r = await lease.run({"big": True}, input=big)
        assert r.ok and r.output == big and r.body["input_bytes"] == len(big)
        assert lease.stats["through_gateway"] == 1 and lease.stats["on_lease"] == 0
        # an unknown spec key is the kind's to judge: a refused job comes back rejected, not raised by run_many
        bad = await lease.run_many([{"ok": 1}, {"ok": 2}])
        assert all(b.ok for b in bad)


async def test_a_lease_refused_by_the_gateway_raises_as_the_job_would(mesh):
    reader, _ = TokenStore(mesh[0].data_dir).create("lease-reader", ["read"])
    async with connect(mesh[0], reader) as c, open_lease(c, "echo") as lease:
        with pytest.raises(RpcError) as e:
            await lease.run({})
        assert e.value.code == "forbidden"
        with pytest.raises(RpcError) as e:  # every job refused: raised once, not as a group of 10
            await lease.run_many([{}] * 10)
        assert e.value.code == "forbidden" and lease.stats["leases"] == 0
    async with connect(mesh[0]) as c, open_lease(c, "no.such.kind") as lease:
        with pytest.raises(RpcError) as e:
            await lease.run({})
        assert e.value.code == "unknown_kind"


async def _raw_lease(c: Client, kind: str = "echo", slots: int = 4):
    cm = c.rpc.open("job.lease", {"kind": kind, "slots": slots}, uploads=True)
    call = await cm.__aenter__()
    offer = await call.receive()
    return cm, call, offer


async def test_a_lease_ticket_opens_its_lease_once_and_nothing_else(mesh):
    async with connect(mesh[0]) as c:
        cm, call, offer = await _raw_lease(c)
        worker = next(n for n in mesh if n.peer_id == offer["peer"])
        refused = metric(worker, "gpumesh_client_leases_total", 'result="bad_ticket",side="worker"')
        try:
            assert offer["addr"] == f"127.0.0.1:{worker.data_port}" and offer["slots"] == 4
            async with dial(offer, "lease") as rpc:
                await forged_tickets_are_refused(rpc, "lease.run", offer["ticket"])
                job = {"job": new_job("echo", {"x": 1}).to_wire(trio.current_time())}
                await methods_are_refused(rpc, [
                    ("job.list", {}), ("job.submit", job), ("job.lease", {"kind": "echo"}), ("mesh.peers", {}),
                    ("peer.offer", {}), ("peer.job_lease", {}), ("peer.jobs", {}), ("render.session", {}),
                    ("render.attach", {"ticket": "a.b"})])
                async with rpc.open("lease.run", {"ticket": offer["ticket"]}, uploads=True) as run:
                    await run.send({"jobs": [{"n": 0, "job": new_job("echo", {"y": 2}).to_wire(trio.current_time())}]})
                    (item,) = (await run.receive())["items"]
                    assert item["n"] == 0 and item["state"] == "done" and item["result"]["body"]["echo"] == {"y": 2}
                    with pytest.raises(RpcError) as e:  # used: the same ticket opens nothing twice
                        await rpc.call("lease.run", {"ticket": offer["ticket"]})
                    assert e.value.code == "forbidden"
                    await run.done_sending()
                    assert await run.receive() is None
                    assert (await run.result())["jobs"] == 1
            # a session's attach principal cannot run leased jobs either
            async with dial(offer, "session") as rpc:
                with pytest.raises(RpcError) as e:
                    await rpc.call("lease.run", {"ticket": offer["ticket"]})
                assert e.value.code == "forbidden"
        finally:
            await cm.__aexit__(None, None, None)
    assert metric(worker, "gpumesh_client_leases_total", 'result="bad_ticket",side="worker"') == refused + 6
    await until(lambda: open_leases(mesh) == 0, 60, "the lease to end with its streams")


async def test_hostile_job_items_are_refused_one_by_one(mesh):
    now = trio.current_time()
    async with connect(mesh[0]) as c:
        cm, call, offer = await _raw_lease(c, slots=2)
        try:
            async with dial(offer, "lease") as rpc, \
                    rpc.open("lease.run", {"ticket": offer["ticket"]}, uploads=True) as run:
                fine = new_job("echo", {"x": "y" * 10}).to_wire(now)
                items = [
                    {"n": 1, "job": {"v": 1, "t": "job"}},                               # does not decode
                    {"n": 2, "job": new_job("sleep", {"seconds": 0}).to_wire(now)},    # not the lease's kind
                    {"n": 3, "job": fine},                                               # fine
                    {"n": 4, "job": "nope"},
                    # equal in value to the fine job (True == 1, 3.0 == 3) but not well-typed: refused even so
                    {"n": 5, "job": {**fine, "max_attempts": float(fine["max_attempts"])}},
                    {"n": 6, "job": {**fine, "v": True}},
                    {"n": 7, "job": dict(fine)},                                         # the same job again: fine
                ]
                await run.send({"jobs": items})
                got: dict[int, dict] = {}
                while len(got) < 7:
                    for it in (await run.receive())["items"]:
                        got[it["n"]] = it
                assert [got[i]["error"]["code"] for i in (1, 4, 5, 6)] == ["invalid"] * 4
                assert got[2]["error"]["code"] == "forbidden"
                assert got[3]["state"] == "done" and got[7]["state"] == "done"
                # a frame that is not {jobs: [1..256 items]} ends the stream with an error
                await run.send({"jobs": [{"n": -1, "job": {}}]})
                with pytest.raises(RpcError) as e:
                    while await run.receive() is not None:
                        pass
                    await run.result()
                assert e.value.code == "invalid"
        finally:
            await cm.__aexit__(None, None, None)
    await until(lambda: open_leases(mesh) == 0, 60, "the lease to end")


async def test_an_expired_lease_is_renewed_and_its_jobs_never_lost(mesh):
    async with connect(mesh[0]) as c, open_lease(c, "echo", slots=4, ttl_s=1.0) as lease:
        assert (await lease.run({"a": 1})).ok
        first = lease._held
        await until(lambda: first.lost, 30, "the lease to expire")  # the worker ended it: its life is over
        results = await lease.run_many([{"b": i} for i in range(10)])
        assert [r.body["echo"] for r in results] == [{"b": i} for i in range(10)]
        assert lease.stats["leases"] >= 2 and lease.stats["on_lease"] + lease.stats["through_gateway"] == 11


async def test_a_lost_worker_s_jobs_run_again_through_the_gateway(tmp_path):
    nodes = make_nodes(tmp_path, 3, FAST)
    nodes[0].extra += ["--devices", "none"]
    try:
        start_nodes(nodes)
        wait_for(lambda: sees_all(nodes), 90, "3 nodes to see each other")
        async with connect(nodes[0]) as c, open_lease(c, "sleep", slots=4) as lease:
            assert (await lease.run({"seconds": 0})).ok
            victim = next(n for n in nodes if n.peer_id == lease.worker)
            results: list = []

            async def run_some() -> None:
                results.extend(await lease.run_many([{"seconds": 2}] * 3, max_attempts=3))

            answered: list = []
            async with trio.open_nursery() as n:
                n.start_soon(run_some)
                await until(lambda: metric_sum(victim, "gpumesh_executor_running_jobs") >= 1, 30, "the jobs to start")
                # a fourth job sent without a task (the blocking SDK's way): told it did not run there, to run again
                assert lease.result_soon({"seconds": 2}, answered.append)
                victim.kill()
            assert len(results) == 3 and all(r.ok for r in results), [(r.state, r.reason) for r in results]
            assert lease.stats["through_gateway"] == 3 and all(r.worker != victim.peer_id for r in results)
            await until(lambda: answered == [None], 30, "the task-less job to be told the lease is gone")
    finally:
        stop_all(nodes)


def test_lease_terms_are_checked_where_they_are_decoded():
    good = {"tenant": "t", "kind": "echo", "slots": 4, "ttl_s": 30, "rate": 0}
    assert LeaseTerms.from_wire(good).slots == 4
    for bad in [None, [], {**good, "slots": 0}, {**good, "slots": MAX_LEASE_SLOTS + 1}, {**good, "slots": True},
                {**good, "ttl_s": 0}, {**good, "ttl_s": math.inf}, {**good, "rate": -1}, {**good, "rate": "fast"},
                {**good, "tenant": "x" * 200}, {**good, "kind": ""}, {**good, "requirements": {"device_kind": 7}}]:
        with pytest.raises(LeaseError):
            LeaseTerms.from_wire(bad)
    assert usage_of({"jobs": 3, "failed": -1, "crashes": True, "device_s": math.nan}) == {
        "jobs": 3, "failed": 0, "crashes": 0, "device_s": 0.0}
    assert usage_of("junk")["jobs"] == 0 and usage_of({"device_s": 1e300})["device_s"] == 1e9


async def test_items_queued_in_one_pass_go_in_one_batch():
    sent: list[list[int]] = []

    async def send(batch: list[int]) -> None:
        sent.append(batch)
        await trio.sleep(0)

    out = Coalescer(send, max_batch=4)

    async def producer(i: int) -> None:
        await trio.sleep(0)
        out.put(i)

    async with trio.open_nursery() as n:
        n.start_soon(out.run)
        for i in range(10):
            n.start_soon(producer, i)
        await trio.testing.wait_all_tasks_blocked(0.01)
        assert sorted(x for b in sent for x in b) == list(range(10))
        assert [len(b) for b in sent] == [4, 4, 2] and out.batches == 3  # one pass: one batch (in frames of 4)
        out.put(10)
        out.close()  # what is queued goes out, then run() returns
    assert sent[-1] == [10] and len(out) == 0

    async def broken(batch: list[int]) -> None:
        raise trio.BrokenResourceError("gone")

    out = Coalescer(broken, max_batch=4)
    out.put(1)
    with pytest.raises(trio.BrokenResourceError):
        await out.run()
    assert len(out) == 0


async def test_coalescer_sends_a_lone_item_from_put_and_keeps_order_otherwise():
    """With `send_now`, an item nobody else follows goes out from `put` itself; behind a queued or sending batch,
    or when `send_now` cannot take it, it waits its turn in the task (nothing overtakes, nothing is lost)."""
    sent: list[tuple[str, list[int]]] = []
    gate = trio.Event()
    accept = [True]
    more = [False]

    async def send(batch: list[int]) -> None:
        sent.append(("task", batch))
        await gate.wait()

    def send_now(batch: list[int]) -> bool:
        if accept[0]:
            sent.append(("now", batch))
        return accept[0]

    out = Coalescer(send, max_batch=4, more=lambda: more[0], send_now=send_now)
    out.put(1)  # alone: sent at once, before any task ran
    assert sent == [("now", [1])] and len(out) == 0 and out.batches == 1
    async with trio.open_nursery() as n:
        n.start_soon(out.run)
        accept[0] = False
        out.put(2)  # refused by send_now: queued for the task, which blocks in send
        await trio.testing.wait_all_tasks_blocked()
        assert sent[-1] == ("task", [2])
        accept[0] = True
        out.put(3)  # the task is still sending 2: 3 must not overtake it
        more[0] = True
        out.put(4)  # more on their way: batched by the task
        assert sent[-1] == ("task", [2]) and len(out) == 2
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sent[-1] == ("task", [3, 4])
        more[0] = False
        out.put(5)  # idle again: at once
        assert sent[-1] == ("now", [5])
        out.close()
        out.put(6)  # closed: only the task sends what is left
    assert sent[-1] == ("task", [6])


async def test_compute_jobs_on_a_lease_equal_numpy_and_verified_ones_are_journaled(mesh):
    from scheduler.client.compute_sdk import AsyncMesh, InOut
    saxpy = open("examples/compute/saxpy.cl").read()
    x = np.arange(256, dtype=np.float32)
    y = np.ones(256, dtype=np.float32)
    addr, tok, pid, insecure = local_address(mesh[0].data_dir)
    async with AsyncMesh.connect(addr, token=tok, peer_id=pid, insecure=insecure, lease=True) as m:
        for a in (2.0, 3.0):
            out = await m.compute(saxpy, "saxpy", [np.uint32(256), np.float32(a), x, InOut(y, "y")], global_size=256)
            np.testing.assert_allclose(out, a * x + y)
        assert m.lease is not None and m.lease.stats["on_lease"] == 2
        verified = await m.compute(saxpy, "saxpy", [np.uint32(256), np.float32(2.0), x, InOut(y, "y")],
                                   global_size=256, verify="redundant")
        np.testing.assert_allclose(verified, 2 * x + y)
        assert m.lease.stats["on_lease"] == 2  # two copies on two workers: never on the one leased worker


def test_a_blocking_mesh_runs_a_job_again_on_its_lease_without_a_task(mesh, monkeypatch):
    """`Mesh.run` of a job already run (its precheck passed) goes on the lease from the calling thread's hand-off
    (`JobLease.result_soon`), not through a task's `JobLease.result`; its outputs equal numpy's each time, and a
    refusal still raises as the job's."""
    from scheduler.client.compute_outcomes import ComputeRefused
    from scheduler.client.compute_sdk import InOut, Mesh, make_job
    from scheduler.client.job_lease import JobLease
    saxpy = open("examples/compute/saxpy.cl").read()
    x = np.arange(64, dtype=np.float32)
    awaited: list = []
    result = JobLease.result

    async def counted(self, *a, **kw):
        awaited.append(1)
        return await result(self, *a, **kw)

    monkeypatch.setattr(JobLease, "result", counted)
    with Mesh.local(mesh[0].data_dir, lease=True) as m:
        for a in (2.0, 3.0, 4.0, 5.0):
            job = make_job(saxpy, "saxpy", [np.uint32(64), np.float32(a), x, InOut(x.copy(), "y")], global_size=64)
            for _ in range(3):
                np.testing.assert_allclose(m.run(job)["y"], a * x + x)
        assert m.client is not None and m._amesh.lease is not None
        assert len(awaited) == 4 and m._amesh.lease.stats["on_lease"] == 12  # each job's first run only
        bad = make_job(saxpy, "saxpy", [np.uint32(64), np.float32(1.0), x, InOut(x.copy(), "y")], global_size=64)
        m.run(bad)
        bad.spec["kernel"] = "no_such_kernel"  # the same spec object, prechecked: straight to the lease
        with pytest.raises(ComputeRefused):
            m.run(bad)
        assert len(awaited) == 5


def test_a_blocking_mesh_gives_its_lease_back_on_close(mesh):
    from scheduler.client.compute_sdk import InOut, Mesh
    saxpy = open("examples/compute/saxpy.cl").read()
    x = np.arange(64, dtype=np.float32)
    with Mesh.local(mesh[0].data_dir, lease=True) as m:
        out = m.compute(saxpy, "saxpy", [np.uint32(64), np.float32(2.0), x, InOut(x.copy(), "y")], global_size=64)
        np.testing.assert_allclose(out, 3 * x)
        assert open_leases(mesh) == 1
    wait_for(lambda: open_leases(mesh) == 0, 60, "the lease to be given back when the mesh closes")


async def test_one_gateway_cannot_take_every_lease_of_a_worker():
    from contextlib import AsyncExitStack

    from scheduler.node.job_lease import MAX_LEASES_PER_GATEWAY, LeaseWorker
    from worker import kinds_basic
    from worker.devices import Device
    from worker.executor import Executor

    registry = kinds_basic.load_builtin_kinds()
    w = LeaseWorker("me", Executor([Device.cpu_reference()], registry=registry), registry, may_lend=lambda g, n: n)
    terms = LeaseTerms.from_wire({"tenant": "t", "kind": "echo", "slots": 4, "ttl_s": 30, "rate": 0})
    async with AsyncExitStack() as stack:
        tickets = {(await stack.enter_async_context(w.grant("hostile", terms)))[0]
                   for _ in range(MAX_LEASES_PER_GATEWAY)}
        assert len(tickets) == MAX_LEASES_PER_GATEWAY  # each its own ticket
        with pytest.raises(LeaseError) as e:
            await stack.enter_async_context(w.grant("hostile", terms))
        assert e.value.code == "busy"
        ticket, g = await stack.enter_async_context(w.grant("another", terms))  # other gateways still get theirs
        assert g.terms.slots == 4 and w.remote_slots() == 4 * (MAX_LEASES_PER_GATEWAY + 1)
    assert w.remote_slots() == 0 and len(w.tickets) == 0
    with pytest.raises(LeaseError) as e:
        async with w.grant("x", LeaseTerms.from_wire({**terms.to_wire(), "kind": "no.such"})):
            pass
    assert e.value.code == "unknown_kind"


async def test_a_producer_waits_while_its_peer_does_not_read():
    release = trio.Event()
    sent: list[list[int]] = []

    async def send(batch: list[int]) -> None:
        await release.wait()  # the peer reads nothing until released
        sent.append(batch)

    out = Coalescer(send, max_batch=2)
    passed: list[int] = []

    async def producer() -> None:
        for i in range(6):
            await out.wait_below(3)
            out.put(i)
            passed.append(i)

    async with trio.open_nursery() as n:
        n.start_soon(out.run)
        n.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert passed == [0, 1, 2, 3, 4] and len(out) == 3  # two in the stuck send, three queued: no more
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert passed == list(range(6)) and [x for b in sent for x in b] == list(range(6))
        n.cancel_scope.cancel()


async def test_a_token_holds_a_bounded_number_of_leases_through_a_gateway(mesh):
    from contextlib import AsyncExitStack

    from scheduler.node.lease_gateway import MAX_LEASES_PER_TOKEN
    async with connect(mesh[0]) as c, AsyncExitStack() as stack:
        for _ in range(MAX_LEASES_PER_TOKEN):
            call = await stack.enter_async_context(c.rpc.open("job.lease", {"kind": "echo", "slots": 1},
                                                               uploads=True))
            assert "ticket" in await call.receive()
        with pytest.raises(RpcError) as e:
            async with c.rpc.open("job.lease", {"kind": "echo", "slots": 1}, uploads=True) as call:
                await call.receive()
                await call.result()
        assert e.value.code == "quota"
    await until(lambda: open_leases(mesh) == 0, 60, "the leases to end with their streams")


async def test_a_lease_is_given_back_when_idle_but_not_under_a_running_job(mesh, monkeypatch):
    from scheduler.client import job_lease
    monkeypatch.setattr(job_lease, "IDLE_RETURN_S", 0.3)
    async with connect(mesh[0]) as c, open_lease(c, "sleep", slots=2) as lease:
        r = await lease.run({"seconds": 1.0})  # runs past the idle time: the lease stays, the job is answered on it
        assert r.ok and lease.stats == {"on_lease": 1, "through_gateway": 0, "leases": 1}
        first = lease._held
        await until(lambda: first.lost, 30, "the idle lease to be given back")
        assert (await lease.run({"seconds": 0})).ok
        assert lease.stats == {"on_lease": 2, "through_gateway": 0, "leases": 2}
    await until(lambda: open_leases(mesh) == 0, 60, "the leases to end")


async def test_a_worker_whose_queues_are_full_grants_no_lease():
    from scheduler.node.job_lease import LeaseWorker
    from worker import kinds_basic
    from worker.devices import Device
    from worker.executor import Executor, JobRequest

    registry = kinds_basic.load_builtin_kinds()
    ex = Executor([Device.cpu_reference()], registry=registry, slots=1, max_queued=1)
    w = LeaseWorker("me", ex, registry, may_lend=lambda g, n: n)
    terms = LeaseTerms.from_wire({"tenant": "t", "kind": "echo", "slots": 4, "ttl_s": 30, "rate": 0})
    async with trio.open_nursery() as n:
        await n.start(ex.run)
        async with w.grant("gw", terms):  # room: granted
            pass
        ex.submit(JobRequest("a", "sleep", {"seconds": 30}))  # takes the slot
        ex.submit(JobRequest("b", "sleep", {"seconds": 30}))  # fills the queue
        with pytest.raises(LeaseError) as e:
            async with w.grant("gw", terms):
                pass
        assert e.value.code == "busy" and "full queue" in e.value.message
        n.cancel_scope.cancel()
