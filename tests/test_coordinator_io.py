"""CoordinatorIO against a real journal, with a stub link to one worker: when a job's end is answered
relative to the commit of its finish record."""

import threading

import trio
import trio.testing

from mesh.advert import Advert
from scheduler.core.coordinator_core import JournalFinish
from scheduler.core.job import Accept, Job, JobState, Result
from scheduler.core.placement import TrackedView
from scheduler.core.quota import Quotas
from scheduler.node.coordinator_io import CoordinatorIO
from scheduler.node.daemon import job_kinds
from scheduler.node.links import LinkError
from tests.test_coordinator_core import GPU


class Worker:
    """The link to worker "w": it takes every offer (no lease)."""

    peer_id = "w"

    async def offer(self, offer, timeout):
        return Accept(offer.job.job_id, offer.attempt, offer.device_id)

    async def cancel(self, cancel):
        pass

    def lease(self, lease_id, inbox):
        raise LinkError("unavailable", "no leases here")


class Links:
    def get(self, peer_id):
        return Worker()

    def forget(self, peer_id):
        pass


class HeldCommits:
    """Wraps Journal.apply: a transaction holding a finish record waits until `release()`."""

    def __init__(self, journal):
        self.apply, self.gate = journal.apply, threading.Event()
        journal.apply = self

    def __call__(self, actions, now):
        if any(isinstance(a, JournalFinish) for a in actions):
            self.gate.wait(10)
        return self.apply(actions, now)


async def _coordinator(nursery, tmp_path) -> tuple[CoordinatorIO, HeldCommits]:
    view = TrackedView("me", ttl_s=60.0)
    view.apply(Advert("w", b"k" * 32, 1, 0.0, data_addr="w:4002", devices=(GPU,)), trio.current_time())
    registry, verifiers = job_kinds()
    cio = CoordinatorIO("me", view, Links(), registry=registry, verifiers=verifiers, quotas=Quotas(),
                        data_dir=tmp_path)
    await cio.open()
    held = HeldCommits(cio.journal)
    await nursery.start(cio.run)
    return cio, held


async def _run_to(cio: CoordinatorIO, job: Job, result: Result, output: bytes | None, nursery) -> trio.Event:
    """Submit `job`, let the worker take it and report `result`: the event is set once the result has been
    carried out (its records committed)."""
    assert (await cio.submit(job)).accepted
    await trio.testing.wait_all_tasks_blocked()  # the offer is accepted
    assert cio.expects_result("w", result) is not None
    delivered = trio.Event()

    async def deliver():
        await cio.result("w", result, output)
        delivered.set()

    nursery.start_soon(deliver)
    return delivered


async def test_a_done_job_is_answered_while_its_finish_record_commits(tmp_path):
    async with trio.open_nursery() as nursery:
        cio, held = await _coordinator(nursery, tmp_path)
        answered = []

        async def wait_for_it(job_id):
            answered.append(await cio.settled(job_id, True))

        job = Job("echo", {}, job_id="j1", input=b"out")
        async with cio.watch() as events:
            delivered = await _run_to(cio, job, Result(job_id="j1", attempt=1, ok=True, body={}, worker="w",
                                                       output=b"out"), b"out", nursery)
            nursery.start_soon(wait_for_it, "j1")
            await trio.testing.wait_all_tasks_blocked()
            assert not delivered.is_set()  # the finish record is still committing ...
            assert [s[0] for s in answered] == [JobState.DONE]  # ... and the job is answered, its output kept
            assert await cio.small_output("j1", 3) == b"out"
            seen = [events.receive_nowait() for _ in range(events.statistics().current_buffer_used)]
            assert [e["state"] for e in seen if e.get("final")] == ["done"]  # watchers are told with it
        held.gate.set()
        with trio.fail_after(10):
            await delivered.wait()
        entry = await cio.journal_entry("j1")
        assert entry.state is JobState.DONE and cio.journal.output("j1") == b"out"
        assert await cio.small_output("j1", 3) == b"out"
        nursery.cancel_scope.cancel()


async def test_a_failed_job_is_answered_only_once_its_finish_record_committed(tmp_path):
    async with trio.open_nursery() as nursery:
        cio, held = await _coordinator(nursery, tmp_path)
        answered = []

        async def wait_for_it(job_id):
            answered.append(await cio.settled(job_id, True))

        job = Job("echo", {}, job_id="j2", max_attempts=1)
        delivered = await _run_to(cio, job, Result(job_id="j2", attempt=1, ok=False, error="boom", worker="w"),
                                  None, nursery)
        nursery.start_soon(wait_for_it, "j2")
        await trio.testing.wait_all_tasks_blocked()
        assert cio.core.get("j2").state is JobState.FAILED and answered == [] and not delivered.is_set()
        held.gate.set()
        with trio.fail_after(10):
            await delivered.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert [s[0] for s in answered] == [JobState.FAILED]
        assert (await cio.journal_entry("j2")).state is JobState.FAILED
        nursery.cancel_scope.cancel()
