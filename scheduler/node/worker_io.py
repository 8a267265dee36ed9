"""Worker I/O: drives the pure `WorkerCore` for the jobs coordinators place on this node.

It is the `WorkerInbox` of its node: coordinators, remote or this node's own through the loopback link,
offer and cancel here. It carries the core's actions out (answers, lease renewals and results to the
coordinator over its `PeerLink`, jobs into the executor) and never calls the coordinator I/O.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import trio

from mesh.membership import MembershipView
from scheduler.core.job import Accept, Cancel, Offer, Reject, Result
from scheduler.core.quota import Quotas
from scheduler.core.worker_core import CancelJob, DeviceLoad, Send, StartJob, WorkerCore
from scheduler.node.links import LEASE_INLINE_OUTPUT, LeaseReplies, LinkError, PeerLinks
from scheduler.node.metrics import PrometheusWorkerObserver
from worker import kinds as kinds_mod
from worker.executor import Executor, JobRequest, Refused

log = logging.getLogger("gpumesh.scheduler")

STARTED_NOTICE_S = 0.05  # a job still running after this long is reported "running" to its coordinator
TICK_MAX_S = 0.5  # the core's timers are checked at least this often


PROGRESS_INTERVAL_S = 0.2


class ProgressMailbox:
    """The latest (fraction, stage) a running job reported; older unsent ones are superseded."""

    def __init__(self) -> None:
        self._latest: tuple[float, str] | None = None
        self._ready = trio.Event()

    def put(self, fraction: float, stage: str | None = None) -> None:
        self._latest = (float(fraction), stage or "")
        self._ready.set()

    async def get(self) -> tuple[float, str]:
        await self._ready.wait()
        self._ready = trio.Event()
        assert self._latest is not None
        return self._latest


def exec_id(job_id: str, attempt: int) -> str:
    return f"{job_id}#{attempt}"


class WorkerIO:
    """The worker half of one node."""

    def __init__(self, peer_id: str, view: MembershipView, links: PeerLinks, executor: Executor, *,
                 quotas: Quotas, share: float) -> None:
        self.peer_id = peer_id
        self.view = view
        self.links = links
        self.executor = executor
        self.quotas = quotas
        self.share = share  # fraction of this node's slots lent to other coordinators
        self.core = WorkerCore(peer_id, self._load, observer=PrometheusWorkerObserver())
        self._lease_replies: dict[str, LeaseReplies] = {}  # open slot lease streams, by lease id
        self.leased_out: Callable[[], int] = lambda: 0  # slots leased to other nodes' clients (job_lease)
        self._nursery: trio.Nursery | None = None

    @property
    def _tasks(self) -> trio.Nursery:
        assert self._nursery is not None, "WorkerIO.run() is not running"
        return self._nursery

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the core's timers (lease renewals) until cancelled; the jobs run in this task's nursery."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    now = trio.current_time()
                    wake = self.core.next_wakeup()
                    await trio.sleep(max(0.0, min(now + TICK_MAX_S, wake if wake is not None else now + TICK_MAX_S) - now))
                    await self._execute(self.core.tick(trio.current_time()))
        finally:
            self._nursery = None

    def _load(self) -> dict[str, DeviceLoad]:
        return {dev: DeviceLoad(free, queued, max_queued, slots)
                for dev, (slots, free, queued, max_queued) in self.executor.room().items()}

    # ---- the WorkerInbox (coordinators ask here) ----------------------------------------------------------
    async def offer(self, coordinator: str, offer: Offer) -> Accept | Reject:
        if coordinator != self.peer_id:
            now = trio.current_time()
            refusal = ""
            if not self.quotas.admit_offer(coordinator, now):
                refusal = "rate limited: too many offers from this coordinator"
            elif self._remote_held() >= self._remote_slots():
                refusal = f"this node lends at most {self.share:.0%} of its slots to the mesh (--share)"
            elif coordinator not in self.view:  # only nodes that gossip with us may place work here
                refusal = "unknown coordinator: not in this node's view yet"
            if refusal:
                return Reject(offer.job.job_id, offer.attempt, refusal, self.core.current_load())
        answer = await self._execute(self.core.on_offer(coordinator, offer, trio.current_time()), answer_to=coordinator)
        assert answer is not None, "the worker core answers every offer"
        return answer

    async def direct(self, coordinator: str, lease_id: str, offer: Offer) -> Reject | None:
        answer = await self._execute(self.core.on_direct(coordinator, lease_id, offer, trio.current_time()),
                                     answer_to=coordinator)
        return answer if isinstance(answer, Reject) else None

    def open_lease(self, coordinator: str, lease_id: str, replies: LeaseReplies | None) -> bool:
        if not self.core.lease_opened(coordinator, lease_id):
            return False
        if replies is not None:
            self._lease_replies[lease_id] = replies
        return True

    def close_lease(self, lease_id: str) -> None:
        self.core.lease_closed(lease_id)
        self._lease_replies.pop(lease_id, None)

    async def cancel(self, coordinator: str, cancel: Cancel) -> None:
        await self._execute(self.core.on_cancel(coordinator, cancel, trio.current_time()))

    def _remote_held(self) -> int:
        """Jobs of other coordinators held here, plus the slots leased to their clients."""
        return sum(1 for h in self.core.held() if h.coordinator != self.peer_id) + self.leased_out()

    def lendable(self) -> int:
        """Slots this node may still lend to other nodes (jobs or client leases) under --share."""
        return self._remote_slots() - self._remote_held()

    def _remote_slots(self) -> int:
        """How many jobs of other coordinators this node runs at once: --share of its slots."""
        slots = sum(r[0] for r in self.executor.room().values())
        return int(slots * self.share + 1e-9) if self.share < 1.0 else slots * 1_000_000

    # ---- carrying out the core's actions ------------------------------------------------------------------
    async def _execute(self, actions: list, answer_to: str | None = None) -> Accept | Reject | None:
        answer = None
        for a in actions:
            if isinstance(a, Send):
                if answer_to is not None and a.peer_id == answer_to and isinstance(a.message, Accept | Reject):
                    answer = a.message
                else:
                    self._tasks.start_soon(self._send, a)
            elif isinstance(a, StartJob):
                self._tasks.start_soon(self._run_job, a)
            elif isinstance(a, CancelJob):
                self.executor.cancel(exec_id(a.job_id, a.attempt), a.reason)
        return answer

    async def _send(self, a: Send) -> None:
        msg = a.message
        try:
            link = self.links.get(a.peer_id)
            if isinstance(msg, Result):  # the output bytes travel after the result, not in it
                output = bytes(msg.output or b"")
                msg = replace(msg, output=None)
                replies = self._lease_replies.get(a.lease_id) if a.lease_id else None
                if replies is not None and len(output) <= LEASE_INLINE_OUTPUT:
                    try:
                        await replies.send_result(msg, output)  # back on the lease's stream
                        return
                    except LinkError:
                        pass  # the lease stream closed meanwhile: the usual way
                await link.send_result(msg, output)
            elif not isinstance(msg, Accept | Reject):
                await link.renew(msg)
        except LinkError as e:
            log.info("coordinator %s unreachable (%s): cancelling its jobs here", a.peer_id, e)
            await self._execute(self.core.coordinator_lost(a.peer_id, trio.current_time()))

    async def _run_job(self, a: StartJob) -> None:
        job, attempt = a.job, a.attempt
        now = trio.current_time()
        if not self.core.holds(job.job_id, attempt):
            return
        source: Any = (job.input or b"") if job.inline or job.input_size == 0 else self._input(job.job_id, a.coordinator)
        latest = ProgressMailbox()
        try:
            req = JobRequest(job_id=exec_id(job.job_id, attempt), kind=job.kind, spec=job.spec, input=source,
                             input_size=job.input_size, priority=job.priority, deadline=job.deadline,
                             device_id=a.device_id, timeout_s=job.timeout_s, progress=latest.put)
            handle = self.executor.submit(req)
        except (Refused, ValueError, kinds_mod.UnknownKind) as e:
            await self._execute(self.core.failed_to_start(job.job_id, attempt, str(e), now))
            return
        await self._execute(self.core.enqueued(job.job_id, attempt, trio.current_time()))
        async with trio.open_nursery() as n:
            n.start_soon(self._report, handle, latest, job.job_id, attempt, a.coordinator)
            outcome = await handle.wait()
            n.cancel_scope.cancel()
        log.info("job %s (%s) of %s %s on %s in %.2f s%s", job.job_id, job.kind, a.coordinator[-12:], outcome.state,
                 outcome.device_id or "?", outcome.run_s or 0.0, f": {outcome.error}" if outcome.error else "")
        # the executor's Result, as is: the core stamps it with this attempt and worker; a job cancelled because
        # its device went away may run elsewhere
        retryable = outcome.state == "cancelled" and "device" in (outcome.error or "")
        result = replace(outcome.result, retryable=retryable) if retryable else outcome.result
        await self._execute(self.core.finished(job.job_id, attempt, result, trio.current_time()))

    async def _input(self, job_id: str, coordinator: str) -> AsyncIterator[bytes]:
        """A streamed input, from its coordinator (read as the job consumes it; a failure fails the job)."""
        async for chunk in self.links.get(coordinator).read_input(job_id):
            yield chunk

    async def _report(self, handle, latest: ProgressMailbox, job_id: str, attempt: int, coordinator: str) -> None:
        """While the job runs (the task is cancelled when it ends): tell the coordinator it runs, unless it is
        over within STARTED_NOTICE_S (for short jobs the result says it: one RPC less per job), then its progress,
        the latest report at most every PROGRESS_INTERVAL_S (a lost or late report costs nothing: the next one,
        or the result, supersedes it). One task per job for both."""
        await handle.started.wait()
        await trio.sleep(STARTED_NOTICE_S)
        log.info("job %s started", job_id)  # as the notice: a shorter job's end line says all
        await self._execute(self.core.started(job_id, attempt, trio.current_time()))
        while True:
            fraction, stage = await latest.get()
            try:
                await self.links.get(coordinator).progress(job_id, attempt, fraction, stage)
            except LinkError as e:
                log.debug("progress of %s not sent: %s", job_id, e)
            await trio.sleep(PROGRESS_INTERVAL_S)


__all__ = ["WorkerIO", "exec_id"]
