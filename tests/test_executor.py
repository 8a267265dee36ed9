"""The executor: the pure PriorityQueues core (ordering, bounds, realtime admission, preemption, expiry) and the
trio runner around it, with trio's MockClock where time matters."""

import os
from dataclasses import replace

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from worker import kinds_basic
from worker.devices import Device, discover
from worker.executor import (
    DeadlineUnmeetable,
    DuplicateJob,
    Executor,
    JobRequest,
    Priority,
    PriorityQueues,
    Refused,
    Saturated,
    Unsatisfiable,
)
from worker.kinds import JobKind, KindRegistry, Requirements, Result, SpecError, UnknownKind

RT, IA, BA = Priority.REALTIME, Priority.INTERACTIVE, Priority.BATCH

# --- pure core -------------------------------------------------------------------------------------------------


def test_order_realtime_edf_then_interactive_then_batch_fifo():
    q = PriorityQueues({"d": 10})
    q.admit("b1", "d", BA, 1, None, None, 0)
    q.admit("i1", "d", IA, 1, None, None, 0)
    q.admit("r-late", "d", RT, 1, None, 100, 0)
    q.admit("b2", "d", BA, 1, None, None, 0)
    _, pos = q.admit("r-early", "d", RT, 1, None, 50, 0)
    assert pos == 0
    q.admit("i2", "d", IA, 1, None, None, 0)
    assert [e.job_id for e in q.queued("d")] == ["r-early", "r-late", "i1", "i2", "b1", "b2"]
    assert q.position("b2") == 5
    started, expired = q.grant("d", 0)
    assert [e.job_id for e in started] == ["r-early", "r-late", "i1", "i2", "b1", "b2"] and expired == []
    assert q.position("b2") is None  # running


def test_bounded_queues_and_separate_realtime_bound():
    q = PriorityQueues({"d": 1}, max_queued=3)
    for i in range(3):
        q.admit(f"b{i}", "d", BA, 1, None, None, 0)
    with pytest.raises(Saturated, match="limit 3") as ei:
        q.admit("b3", "d", IA, 1, None, None, 0)
    assert ei.value.queued == 3 and ei.value.reason == "saturated"
    for i in range(3):  # a batch flood does not lock realtime work out
        q.admit(f"r{i}", "d", RT, 0.1, None, 100, 0)
    with pytest.raises(Saturated, match="realtime"):
        q.admit("r3", "d", RT, 0.1, None, 100, 0)
    with pytest.raises(DuplicateJob):
        q.admit("b0", "d", BA, 1, None, None, 0)
    with pytest.raises(Unsatisfiable):
        q.admit("x", "nope", BA, 1, None, None, 0)
    with pytest.raises(ValueError):
        q.admit("y", "d", RT, 1, None, None, 0)


def test_realtime_admission_by_deadline():
    q = PriorityQueues({"d": 1})
    q.admit("batch", "d", BA, 10, 1, None, 0)
    q.grant("d", 0)  # batch runs; it reaches a checkpoint within 1 s
    q.admit("rt5", "d", RT, 2, None, 5, 0)  # starts by 1, ends by 3
    q.admit("rt4", "d", RT, 2, None, 4, 0)  # EDF: 1..3, then rt5 3..5: both fine
    with pytest.raises(DeadlineUnmeetable, match="would make queued realtime job rt5 miss"):
        q.admit("rt4.5", "d", RT, 1, None, 4.5, 0)  # rt4 1..3, it 3..4, rt5 4..6 > 5
    with pytest.raises(DeadlineUnmeetable, match="deadline cannot be met") as ei:
        q.admit("big", "d", RT, 5, None, 5.5, 0)
    assert ei.value.estimated_finish > 5.5
    with pytest.raises(DeadlineUnmeetable, match="already passed"):
        q.admit("past", "d", RT, 0.1, None, 9, 10)
    q.admit("later", "d", RT, 1, None, 6, 0)  # 5..6: just fits
    assert [e.job_id for e in q.queued("d")] == ["rt4", "rt5", "later"]
    assert len(q) == 4


def test_running_realtime_is_not_preempted_and_counts_in_full():
    q = PriorityQueues({"d": 1})
    q.admit("rt", "d", RT, 3, 0.1, 10, 0)
    q.grant("d", 0)
    assert not q.should_yield("rt")
    with pytest.raises(DeadlineUnmeetable):
        q.admit("rt2", "d", RT, 1, None, 3.5, 1)  # waits until 3 for the running realtime job, ends at 4
    q.admit("rt3", "d", RT, 1, None, 4, 1)
    assert not q.should_yield("rt")


def test_preemption_at_checkpoint_and_resume_order():
    q = PriorityQueues({"d": 1})
    q.admit("b1", "d", BA, 10, 1, None, 0)
    q.admit("b2", "d", BA, 10, 1, None, 0)
    q.grant("d", 0)
    assert not q.should_yield("b1")  # only batch waiting
    q.admit("i1", "d", IA, 2, 1, None, 1)
    assert q.should_yield("b1")
    e = q.suspend("b1", 2.5)
    assert e.state == "suspended" and e.ran_s == 2.5
    assert [x.job_id for x in q.queued("d")] == ["i1", "b1", "b2"]
    started, _ = q.grant("d", 2.5)
    assert [x.job_id for x in started] == ["i1"]
    q.admit("r", "d", RT, 1, None, 10, 3)
    assert q.should_yield("i1")  # realtime preempts interactive too
    q.suspend("i1", 3)
    assert [x.job_id for x in q.grant("d", 3)[0]] == ["r"]
    assert q.finish("r", 4).state == "finished"
    assert [x.job_id for x in q.grant("d", 4)[0]] == ["i1"]
    q.finish("i1", 5.5)
    resumed, _ = q.grant("d", 5.5)
    assert [x.job_id for x in resumed] == ["b1"]  # the preempted batch job before the later one
    assert resumed[0].started_at == 0 and resumed[0].remaining(5.5) == pytest.approx(7.5)
    with pytest.raises(ValueError):
        q.suspend("b2", 6)  # not running


def test_expired_realtime_job_is_not_run_late():
    q = PriorityQueues({"d": 1})
    q.admit("a", "d", RT, 5, None, 100, 0)
    q.grant("d", 0)
    q.admit("b", "d", RT, 2, None, 8, 0)  # 5..7 <= 8
    q.finish("a", 7)  # ran 2 s longer than estimated
    started, expired = q.grant("d", 7)
    assert started == [] and [e.job_id for e in expired] == ["b"]
    assert "b" not in q and q.load("d", 7).free_slots == 1


def test_estimates_load_and_device_removal():
    q = PriorityQueues({"d": 2, "e": 1})
    q.admit("x", "d", BA, 4, None, None, 0)
    q.admit("y", "d", BA, 2, None, None, 0)
    q.grant("d", 0)
    q.admit("z", "d", BA, 3, None, None, 0)
    est = q.estimate("d", BA, 1, None, 1)
    # slots free at 2 (y) and 4 (x); z takes the first (2..5), the probe the second (4..5)
    assert est.position == 1 and est.start == pytest.approx(4) and est.finish == pytest.approx(5)
    assert q.estimate("d", IA, 1, None, 1).start == pytest.approx(2)  # ahead of queued batch work
    ld = q.load("d", 1)
    assert (ld.running, ld.queued, ld.free_slots) == (2, 1, 0)
    assert ld.backlog_s == pytest.approx((3 + 1 + 3) / 2)
    dropped = q.remove_device("d")
    assert {e.job_id for e in dropped} == {"x", "y", "z"} and len(q) == 0 and q.devices() == ["e"]
    with pytest.raises(ValueError):
        q.add_device("f", 0)


ops = st.lists(st.tuples(st.sampled_from(["admit", "grant", "yield", "finish", "advance"]),
                         st.sampled_from([RT, IA, BA]), st.integers(0, 30), st.floats(0.01, 5)), max_size=80)


@given(ops, st.integers(1, 3))
@settings(max_examples=150, deadline=None)
def test_core_invariants_under_random_operations(program, slots):
    q = PriorityQueues({"d": slots}, max_queued=6)
    now = 0.0
    n = 0
    for op, prio, pick, x in program:
        ids = sorted(e.job_id for e in q.queued("d") + q.running("d"))
        if op == "admit":
            n += 1
            try:
                q.admit(f"j{n}", "d", prio, x, x / 4, now + x * 3 if prio is RT else None, now)
            except Refused:
                pass
        elif op == "grant":
            q.grant("d", now)
        elif op == "yield" and ids:
            jid = ids[pick % len(ids)]
            if q.should_yield(jid):
                q.suspend(jid, now)
        elif op == "finish" and ids:
            q.finish(ids[pick % len(ids)], now)
        elif op == "advance":
            now += x
        running, queued = q.running("d"), q.queued("d")
        assert len(running) <= slots
        assert [e.key for e in queued] == sorted(e.key for e in queued)
        assert all(e.state == "running" for e in running)
        assert all(e.state in ("queued", "suspended") for e in queued)
        assert len(q) == len(running) + len(queued)
        assert sum(1 for e in queued if e.state == "queued" and e.priority is not RT) <= 6
        for e in running:  # a running job yields only to a strictly more urgent waiting one
            assert q.should_yield(e.job_id) == bool(q.load("d", now).free_slots == 0 and queued
                                                   and queued[0].priority.rank < e.priority.rank)


# --- the trio runner --------------------------------------------------------------------------------------------


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0)


class Fail(JobKind):
    name = "fail"

    def cost_s(self, spec, input_size, device):
        return 0.1

    async def run(self, ctx):
        await ctx.checkpoint()
        raise RuntimeError("kernel exploded")


class NeedsGpu(JobKind):
    name = "needs-gpu"

    def requirements(self, spec):
        return Requirements(device_kind="gpu", opencl=True)

    def cost_s(self, spec, input_size, device):
        return 1.0

    async def run(self, ctx):
        return Result({"device": ctx.device.id})


class Work(JobKind):
    """Records which device it ran on and whether it got an OpenCL context; sleeps `seconds`."""

    name = "work"

    def cost_s(self, spec, input_size, device):
        return spec.get("seconds", 1.0)

    async def run(self, ctx):
        await trio.sleep(ctx.spec.get("seconds", 1.0))
        return Result({"device": ctx.device.id, "cl": ctx.cl is not None})


def registry():
    reg = KindRegistry()
    for k in (kinds_basic.ECHO, kinds_basic.SLEEP, kinds_basic.CHECKSUM, Fail(), NeedsGpu(), Work()):
        reg.register(k)
    return reg


def fake_gpu(i, **kw):
    return replace(Device(f"0:{i}", f"fp{i}", "P", "V", f"gpu{i}", "gpu", 8, 8 << 30, 256, True, True,
                          mulmod_mops=1000.0, f32_gflops=100.0), **kw)


async def no_cl(device):
    return None


async def started_executor(nursery, devices=(), **kw):
    kw.setdefault("registry", registry())
    kw.setdefault("open_device", no_cl)
    ex = Executor(list(devices), **kw)
    await nursery.start(ex.run)
    return ex


async def test_realtime_waits_at_most_one_batch_chunk(clock):
    async with trio.open_nursery() as n:
        ex = await started_executor(n)
        batch = ex.submit(JobRequest("b1", "sleep", {"seconds": 10, "chunk_s": 1}))
        later = ex.submit(JobRequest("b2", "sleep", {"seconds": 1}))
        assert (batch.position, later.position) == (0, 1)
        await trio.sleep(2.3)
        rt = ex.submit(JobRequest("r1", "sleep", {"seconds": 0.5}, priority="realtime",
                                  deadline=trio.current_time() + 2))
        assert rt.position == 1 and ex.position("b2") == 2
        o = await rt.wait()
        assert o.ok and o.queued_s <= 1.0 and not o.late
        assert batch.state == "running"  # got its slot back
        ob, ol = await batch.wait(), await later.wait()
        assert ob.ok and ob.result.body == {"slept_s": 10.0}
        assert ob.run_s == pytest.approx(10.5)  # 10 s of sleeping plus 0.5 s preempted
        assert ol.ok and ol.queued_s == pytest.approx(10.5)  # the preempted job went first
        n.cancel_scope.cancel()


async def test_realtime_refused_at_once_with_the_reason(clock):
    async with trio.open_nursery() as n:
        ex = await started_executor(n)
        ex.submit(JobRequest("long", "sleep", {"seconds": 5}, priority="realtime", deadline=trio.current_time() + 6))
        before = REGISTRY.get_sample_value("gpumesh_executor_refused_total", {"reason": "deadline"}) or 0
        with pytest.raises(DeadlineUnmeetable, match="deadline cannot be met") as ei:
            ex.submit(JobRequest("rt", "sleep", {"seconds": 1}, priority="realtime", deadline=trio.current_time() + 3))
        assert "estimated finish in 6.000 s" in str(ei.value)
        assert REGISTRY.get_sample_value("gpumesh_executor_refused_total", {"reason": "deadline"}) == before + 1
        assert ex.handle("rt") is None and ex.capacity().queue_depth == 0
        n.cancel_scope.cancel()


async def test_saturated_and_positions(clock):
    async with trio.open_nursery() as n:
        ex = await started_executor(n, max_queued=2)
        running = ex.submit(JobRequest("a", "sleep", {"seconds": 5}))
        await trio.testing.wait_all_tasks_blocked()
        assert running.state == "running"
        assert ex.submit(JobRequest("b", "sleep", {"seconds": 1})).position == 1
        assert ex.submit(JobRequest("c", "sleep", {"seconds": 1}, priority="interactive")).position == 1
        assert (ex.position("a"), ex.position("c"), ex.position("b"), ex.position("x")) == (0, 1, 2, None)
        with pytest.raises(Saturated, match="queue is full"):
            ex.submit(JobRequest("d", "sleep", {"seconds": 1}))
        cap = ex.capacity()
        assert (cap.free_slots, cap.queue_depth, cap.slots) == (0, 2, 1)
        assert cap.to_dict()["devices"][0]["device"] == "cpu-reference"
        assert ex.room() == {d.device_id: (d.slots, d.free_slots, d.queued, d.max_queued) for d in cap.devices}
        assert ex.handle("b").position == 1 and ex.handle("c") is not None
        n.cancel_scope.cancel()


async def test_a_quarantined_device_gives_out_no_slot_until_its_kernel_ends(clock):
    """A runaway kernel of a failed compute job still runs on the device (the runner's quarantine): the
    executor holds back its slots, so it neither starts queued work there nor advertises room, and gives them
    back when the runner says the kernel ended (from another thread, as OpenCL callbacks do)."""
    from worker.compute.quarantine import QuarantineInfo, set_quarantine

    async with trio.open_nursery() as n:
        ex = await started_executor(n)
        dev = ex.devices[0].id
        info = QuarantineInfo(dev, "runaway", "time_limit", 0.0)
        await trio.to_thread.run_sync(set_quarantine, dev, info)
        await trio.testing.wait_all_tasks_blocked()
        cap = ex.capacity()
        assert (cap.free_slots, cap.slots) == (0, 1) and cap.to_dict()["devices"][0]["quarantined"]
        job = ex.submit(JobRequest("w", "sleep", {"seconds": 1}))
        await trio.sleep(5)
        assert job.state == "queued" and ex.position("w") == 1
        await trio.to_thread.run_sync(set_quarantine, dev, None, info)
        o = await job.wait()
        assert o.ok and o.queued_s == pytest.approx(5, abs=0.1)
        assert ex.capacity().free_slots == 1 and not ex.capacity().devices[0].quarantined
        n.cancel_scope.cancel()


async def test_a_reserved_slot_is_given_to_no_job_until_the_session_ends(clock):
    """A real-time render session holds a slot (Executor.reserved_slot): a job waits for it, the advert shows it
    taken, a second reservation is refused, and the slot comes back when the block ends, however it ends."""
    async with trio.open_nursery() as n:
        ex = await started_executor(n)
        with pytest.raises(RuntimeError, match="session failed"):
            async with ex.reserved_slot("session-a") as (device, handle):
                assert device.id == "cpu-reference" and handle is None  # the CPU path: no runner, no context
                assert ex.capacity().free_slots == 0
                with pytest.raises(Saturated):
                    async with ex.reserved_slot("session-b"):
                        pass
                job = ex.submit(JobRequest("w", "sleep", {"seconds": 1}))
                await trio.sleep(3)
                assert job.state == "queued"
                raise RuntimeError("session failed")
        o = await job.wait()
        assert o.ok and o.queued_s == pytest.approx(3, abs=0.1)
        assert ex.capacity().free_slots == 1
        n.cancel_scope.cancel()


async def test_cancel_queued_and_running(clock):
    async with trio.open_nursery() as n:
        ex = await started_executor(n)
        long = ex.submit(JobRequest("long", "sleep", {"seconds": 1000, "chunk_s": 1}))
        queued = ex.submit(JobRequest("q", "sleep", {"seconds": 1}))
        nxt = ex.submit(JobRequest("next", "sleep", {"seconds": 2}))
        assert ex.cancel("q")
        oq = await queued.wait()
        assert oq.state == "cancelled" and oq.run_s == 0
        assert nxt.position == 2 and ex.position("next") == 1 and ex.capacity().queue_depth == 1
        await trio.sleep(3.5)
        t_cancel = trio.current_time()
        assert ex.cancel("long", reason="client asked")
        ol = await long.wait()
        assert ol.state == "cancelled" and ol.error == "client asked" and ol.result.body == {} and ol.result.output is None
        on = await nxt.wait()  # the slot went to the next job
        assert on.ok and on.queued_s == pytest.approx(t_cancel)
        assert not ex.cancel("long") and not ex.cancel("never-heard-of")
        n.cancel_scope.cancel()


async def test_failures_timeouts_and_bad_submissions(clock):
    async with trio.open_nursery() as n:
        ex = await started_executor(n)
        f = ex.submit(JobRequest("f", "fail"))
        t = ex.submit(JobRequest("t", "sleep", {"seconds": 100}, timeout_s=2))
        ok = ex.submit(JobRequest("ok", "echo", {"x": 1}, input=b"hi"))
        of = await f.wait()
        assert of.state == "failed" and "kernel exploded" in of.error
        ot = await t.wait()
        assert ot.state == "failed" and "timeout" in ot.error and ot.run_s == pytest.approx(2)
        oo = await ok.wait()
        assert oo.ok and oo.result.output == b"hi"
        with pytest.raises(UnknownKind, match="known kinds"):
            ex.submit(JobRequest("u", "nope"))
        with pytest.raises(SpecError, match="seconds"):
            ex.submit(JobRequest("s", "sleep", {"seconds": -1}))
        with pytest.raises(Unsatisfiable, match="cpu-reference .*needs an OpenCL device"):
            ex.submit(JobRequest("g", "needs-gpu"))
        with pytest.raises(Unsatisfiable, match="no device"):
            ex.submit(JobRequest("p", "echo", device_id="7:7"))
        ex.submit(JobRequest("dup", "sleep", {"seconds": 1}))
        with pytest.raises(DuplicateJob):
            ex.submit(JobRequest("dup", "sleep", {"seconds": 1}))
        with pytest.raises(ValueError, match="deadline"):
            JobRequest("r", "sleep", {"seconds": 1}, priority="realtime")
        with pytest.raises(ValueError, match="priority"):
            JobRequest("r", "sleep", {"seconds": 1}, priority="urgent")
        n.cancel_scope.cancel()


async def test_devices_slots_and_placement(clock):
    devs = [fake_gpu(0), fake_gpu(1)]
    async with trio.open_nursery() as n:
        ex = await started_executor(n, devs, slots={"0:0": 2, "0:1": 1})
        assert [d.id for d in ex.devices] == ["0:0", "0:1"]
        hs = [ex.submit(JobRequest(f"w{i}", "work", {"seconds": 1})) for i in range(3)]
        assert sorted(h.device_id for h in hs) == ["0:0", "0:0", "0:1"]  # spread by estimated finish
        assert ex.capacity().free_slots == 0
        outs = [await h.wait() for h in hs]
        assert all(o.ok and o.run_s == pytest.approx(1) for o in outs)  # ran concurrently
        pinned = ex.submit(JobRequest("pin", "needs-gpu", device_id="0:1"))
        assert (await pinned.wait()).result.body == {"device": "0:1"}
        assert ex.estimate("work", {"seconds": 2})[0].finish == pytest.approx(trio.current_time() + 2)
        n.cancel_scope.cancel()


async def test_device_going_away_fails_its_jobs(clock):
    async with trio.open_nursery() as n:
        ex = await started_executor(n, [fake_gpu(0)])
        run = ex.submit(JobRequest("run", "sleep", {"seconds": 100}))
        queued = ex.submit(JobRequest("queued", "sleep", {"seconds": 1}))
        await trio.sleep(1)
        ex.set_devices([fake_gpu(1)])
        oq, orun = await queued.wait(), await run.wait()
        assert oq.state == "failed" and "went away" in oq.error
        assert orun.state == "failed" and "went away" in orun.error
        again = ex.submit(JobRequest("again", "work", {"seconds": 1}))
        assert (await again.wait()).result.body == {"device": "0:1", "cl": False}
        ex.set_devices([])  # no OpenCL device left: the CPU reference pseudo-device takes jobs
        assert [d.id for d in ex.devices] == ["cpu-reference"]
        n.cancel_scope.cancel()


async def test_stopping_the_executor_ends_every_job(clock):
    ex = Executor([], registry=registry(), open_device=no_cl)
    async with trio.open_nursery() as n:
        await n.start(ex.run)
        running = ex.submit(JobRequest("a", "sleep", {"seconds": 100}))
        queued = ex.submit(JobRequest("b", "sleep", {"seconds": 100}))
        await trio.sleep(1)
        n.cancel_scope.cancel()
    for h in (running, queued):
        assert h.done and h.outcome.state == "cancelled" and h.outcome.error == "executor stopped"
    with pytest.raises(Refused):
        ex.submit(JobRequest("c", "echo"))


async def test_progress_and_on_change(clock):
    changes = 0

    def on_change():
        nonlocal changes
        changes += 1

    seen = []
    async with trio.open_nursery() as n:
        ex = await started_executor(n, on_change=on_change)
        base = changes
        h = ex.submit(JobRequest("s", "sleep", {"seconds": 1, "chunk_s": 0.25},
                                 progress=lambda f, m: seen.append(f)))
        assert changes > base
        await h.wait()
        assert seen == pytest.approx([0.25, 0.5, 0.75, 1.0]) and h.progress == 1.0
        n.cancel_scope.cancel()


async def test_checksum_on_the_opencl_device_with_streamed_input():
    dev = discover("all").devices[0]
    data = os.urandom(3 * (1 << 20) + 99)

    async def stream():
        for off in range(0, len(data), 700_000):
            yield data[off:off + 700_000]

    async with trio.open_nursery() as n:
        ex = Executor([dev])
        await n.start(ex.run)
        h = ex.submit(JobRequest("ck", "checksum", {}, input=stream(), input_size=len(data)))
        o = await h.wait()
        assert o.ok, o.error
        assert o.device_id == dev.id
        assert o.result.body == kinds_basic.CHECKSUM.reference({}, data).body
        short = ex.submit(JobRequest("short", "checksum", {}, input=stream(), input_size=len(data) + 1))
        os_ = await short.wait()
        assert os_.state == "failed" and "ended after" in os_.error
        n.cancel_scope.cancel()


def test_make_outcome_keeps_every_field_of_the_kinds_result_but_the_runs_own():
    """make_outcome copies the kind's Result field by field (no `dataclasses.replace`): a field added to Result
    and forgotten there fails here."""
    import dataclasses

    from worker.jobs import make_outcome

    given = Result({"k": 1}, b"out", "j-1", 3, ok=True, error="", retryable=True, worker="peer", device="elsewhere",
                   timings={"x": 1.0}, crashed=False)
    out = make_outcome("j-1", "crashed", given, "boom", "dev0", queued_s=0.5, run_s=2.0, late=True)
    own = {"ok": False, "error": "boom", "crashed": True, "device": "dev0", "timings": {"queue_s": 0.5, "run_s": 2.0}}
    for f in dataclasses.fields(Result):
        want = own[f.name] if f.name in own else getattr(given, f.name)
        assert getattr(out.result, f.name) == want, f.name
    assert out.state == "crashed" and out.late and out.job_id == "j-1"
    assert make_outcome("j-2", "failed").result == dataclasses.replace(Result(), ok=False, timings={"queue_s": 0.0,
                                                                                                    "run_s": 0.0})
