"""Coordinator I/O: drives the pure `CoordinatorCore` for the jobs clients submit to this node.

It carries the core's actions out (offers and cancels to workers over `PeerLink`s, journal records,
result files, watcher updates) and feeds back what happened (answers, lease renewals, results, membership
changes, time). It is the `CoordinatorInbox` of its node: workers, remote or this node's own through the
loopback link, report here. It never calls the worker I/O.

Inputs larger than the inline limit are spooled (data_dir/spool/) so a re-placed attempt can fetch them
again; outputs are kept until the journal's retention passes: small ones (at most outputs.SMALL_OUTPUT bytes)
in the journal itself, committed with the job's finish record, larger ones in data_dir/results/.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from mesh.advert import DeviceAdvert
from mesh.membership import Event, Joined, Left
from scheduler.core.coordinator_core import (
    CoordinatorConfig,
    CoordinatorCore,
    Crashed,
    Deliver,
    Finish,
    JournalJob,
    OpenLease,
    ReturnLease,
    SendCancel,
    SendDirect,
    SendOffer,
    StateChanged,
    SubmitAnswer,
)
from scheduler.core.job import Accept, Job, JobState, LeaseRenew, Reject, Result
from scheduler.core.placement import Placer, TrackedView
from scheduler.core.quota import Quotas
from scheduler.node import outputs
from scheduler.node.files import sweep_uploads
from scheduler.node.journal import RECORDS, Journal, JournalEntry, JournalOutput
from scheduler.node.links import CHUNK, LeaseChannel, LinkError, PeerLinks
from scheduler.node.metrics import PrometheusCoordinatorObserver
from worker import kinds as kinds_mod
from worker.devices import Device

log = logging.getLogger("gpumesh.scheduler")

TICK_MAX_S = 0.5  # the core's timers are checked at least this often
SMALL_OUTPUTS_KEPT = 256  # recent small outputs also kept in memory, to answer with them inline

# `verifier(job, result, output, read_input) -> str | None` checks a remote worker's result (None = accept);
# `read_input()` reads a streamed input from the spool (None when the input was inline)
Verifier = Callable[..., str | None]


@functools.lru_cache(maxsize=4096)
def device_of(d: DeviceAdvert) -> Device:
    """A peer's advertised device, as the job kinds' cost models take it."""
    return Device(id=d.id, fingerprint="", platform="", vendor=d.vendor, name=d.name,
                  kind="cpu" if d.kind == "reference" else d.kind, compute_units=d.compute_units,
                  global_mem_bytes=d.global_mem_bytes, max_work_group_size=d.max_work_group_size, fp64=d.fp64,
                  int64=d.int64, opencl=d.kind != "reference", mulmod_mops=d.mulmod_mops or None,
                  f32_gflops=d.f32_gflops or None, max_work_item_sizes=tuple(d.max_work_item_sizes),
                  max_alloc_bytes=d.max_alloc_bytes, local_mem_bytes=d.local_mem_bytes,
                  opencl_version=d.opencl_version, non_uniform_work_groups=d.non_uniform_work_groups)


def spool_name(job_id: str) -> str:
    """A file name for a job id (ids are [A-Za-z0-9._:-]; ':' is fine on Linux, '/' cannot occur)."""
    return hashlib.sha256(job_id.encode()).hexdigest()[:32]


class CoordinatorIO:
    """The coordinator half of one node."""

    def __init__(self, peer_id: str, view: TrackedView, links: PeerLinks, *, registry: kinds_mod.KindRegistry,
                 verifiers: dict[str, Verifier], quotas: Quotas, data_dir: Path,
                 config: CoordinatorConfig | None = None) -> None:
        self.peer_id = peer_id
        self.view = view
        self.links = links
        self.registry = registry
        self.verifiers = verifiers
        self.quotas = quotas
        # the kinds' cost models, corrected by the run times results report (realtime admission relies on them)
        self.placer = Placer(view, cost_fn=self._cost, correct_costs=True)
        self.core = CoordinatorCore(peer_id, view, self.placer, config or CoordinatorConfig(),
                                    observer=PrometheusCoordinatorObserver(), perf_clock=time.perf_counter)
        self.spool = Path(data_dir) / "spool"
        self.results_dir = Path(data_dir) / "results"
        self._data_dir = Path(data_dir)
        self.journal: Journal | None = None
        self._verify_limiter = trio.CapacityLimiter(2)  # results verified at once (CPU-bound, in threads)
        self._received: dict[tuple[str, int], outputs.Pending] = {}  # output awaiting the core's verdict
        self._finished: dict[str, trio.Event] = {}
        self._finishing: set[str] = set()  # jobs whose output/journal/waiters are being settled right now
        self._watchers: set[trio.MemorySendChannel] = set()
        self._nursery: trio.Nursery | None = None
        self._journal_pending: list = []
        self._journal_done = trio.Event()
        self._journal_busy = False
        self._leases: dict[str, LeaseChannel] = {}  # held slot leases' channels, by lease id
        self._small_outputs: OrderedDict[str, bytes] = OrderedDict()  # recent small outputs (also journaled)
        self._unsaved: dict[str, bytes] = {}  # small outputs whose journal records are still committing

    @property
    def _tasks(self) -> trio.Nursery:
        assert self._nursery is not None, "CoordinatorIO.run() is not running"
        return self._nursery

    @property
    def _journal(self) -> Journal:
        assert self.journal is not None, "CoordinatorIO.open() has not opened the journal yet"
        return self.journal

    # ---- running ------------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the spool and results folders and open the journal (before the data plane serves)."""
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.journal = await trio.to_thread.run_sync(Journal.open_in, self._data_dir)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Resume the journal's jobs, then run the core's timers until cancelled."""
        if self.journal is None:
            await self.open()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                entries = await trio.to_thread.run_sync(self._journal.load, trio.current_time())
                if entries:
                    log.info("journal: resuming %d job(s)", len(entries))
                await self._execute(self.core.restore(entries, trio.current_time()))
                live = [spool_name(r.job_id) for r in self.core.jobs() if not r.state.terminal]
                await trio.to_thread.run_sync(sweep_uploads, self.spool, self.results_dir, live)
                task_status.started()
                while True:
                    now = trio.current_time()
                    wake = self.core.next_wakeup()
                    await trio.sleep(max(0.0, min(now + TICK_MAX_S, wake if wake is not None else now + TICK_MAX_S) - now))
                    await self._execute(self.core.tick(trio.current_time()))
        finally:
            self._nursery = None
            self._journal.close()

    def on_membership(self, ev: Event) -> None:
        if isinstance(ev, Joined) and self._nursery is not None and ev.peer_id != self.peer_id:
            # dial ahead: the first offer's round trip then measures the network, not the TLS handshake
            self._tasks.start_soon(self._warm, ev.peer_id)
        if isinstance(ev, Left) and self._nursery is not None:
            now = trio.current_time()
            if ev.reason != "expired":  # removed (not allowed any more): forget its address too
                self.links.forget(ev.peer_id)
            self._tasks.start_soon(self._execute, self.core.worker_expired(ev.peer_id, now) if ev.reason == "expired"
                                   else self.core.worker_lost(ev.peer_id, now, f"peer {ev.peer_id} left ({ev.reason})"))

    async def _warm(self, peer_id: str) -> None:
        with trio.move_on_after(10):
            try:
                await self.links.get(peer_id).warm()
            except Exception as e:  # the peer may not listen yet; offers will dial again
                log.debug("pre-dial of %s failed: %s", peer_id, e)

    def _cost(self, job: Job, dev: DeviceAdvert) -> float:
        try:
            kind = self.registry.get(job.kind)
        except kinds_mod.UnknownKind:
            return float("inf")
        try:
            cost = kind.cost_s(job.spec, job.input_size, device_of(dev))
        except (ArithmeticError, ValueError, TypeError):  # a peer's figures that no cost model can use
            return float("inf")
        return cost if cost == cost else float("inf")

    def output_limit(self, job: Job) -> int:
        """The most output bytes this coordinator takes for `job`: what its spec declares, within the quota."""
        try:
            declared = self.registry.get(job.kind).output_bytes(job.spec, job.input_size)
        except (kinds_mod.UnknownKind, ValueError):
            declared = None
        return min(self.quotas.limits.max_output_bytes, declared if declared is not None else 2**62)

    def drop_input(self, job_id: str) -> None:
        """The spooled input of a job that was refused (or is over): deleted at once."""
        (self.spool / spool_name(job_id)).unlink(missing_ok=True)

    # ---- for the client API -------------------------------------------------------------------------------
    async def receive_input(self, job: Job, chunks: AsyncIterable[Any]) -> None:
        """Spool a streamed input, checking its declared size and sha256 (ValueError says what is wrong)."""
        path = self.spool / spool_name(job.job_id)
        tmp = path.with_suffix(".part")
        h, n = hashlib.sha256(), 0
        try:
            async with await trio.open_file(tmp, "wb") as f:
                async for item in chunks:
                    if not isinstance(item, bytes | bytearray):
                        continue
                    n += len(item)
                    if n > job.input_size:
                        raise ValueError(f"input is longer than its declared {job.input_size} bytes")
                    h.update(item)
                    await f.write(item)
            if n != job.input_size:
                raise ValueError(f"input ended after {n} of {job.input_size} bytes")
            if h.hexdigest() != job.input_sha256:
                raise ValueError("input does not match its sha256")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    async def submit(self, job: Job) -> SubmitAnswer:
        answer, acts = self.core.submit(job, trio.current_time())
        await self._execute(acts)
        if answer.accepted and not answer.duplicate:
            log.info("job %s (%s, %s) submitted by %s", job.job_id, job.kind, job.priority.value,
                     job.submitted_by or "?")
        return answer

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel an active job: its summary, or None if there is no such active job."""
        rec, acts = self.core.cancel(job_id, trio.current_time())
        if rec is None:
            return None
        await self._execute(acts)
        return rec.summary()

    async def journal_entry(self, job_id: str) -> JournalEntry | None:
        return await trio.to_thread.run_sync(self._journal.get, job_id, trio.current_time())

    async def settled(self, job_id: str, wait: bool) -> tuple[JobState, str, Result | None] | None:
        """(state, reason, result) of a job, waiting for its end if asked; None if this node never had it."""
        rec = self.core.get(job_id)
        # the core flips a job to done before its output is kept: wait until it is (a job restored as finished
        # from the journal is settled already). A done job is answered while its finish record commits, any
        # other end once it has committed (see _execute)
        if rec is not None and wait and (not rec.state.terminal or rec.job_id in self._finishing):
            ev = self._finished.setdefault(job_id, trio.Event())
            await ev.wait()
            rec = self.core.get(job_id)
        if rec is not None:
            return rec.state, rec.reason, rec.result
        entry = await self.journal_entry(job_id)
        if entry is None:
            return None
        return JobState(entry.state), entry.reason, entry.result

    def output_path(self, job_id: str) -> Path:
        return self.results_dir / spool_name(job_id)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[trio.MemoryReceiveChannel]:
        """A channel of job updates (placed, running, done ...) while the context is open."""
        send, recv = trio.open_memory_channel[dict[str, Any]](1024)
        self._watchers.add(send)
        try:
            yield recv
        finally:
            self._watchers.discard(send)

    # ---- the CoordinatorInbox (workers report here) -------------------------------------------------------
    async def lease(self, worker: str, renew: LeaseRenew) -> None:
        await self._execute(self.core.on_lease(worker, renew, trio.current_time()))

    async def refused(self, worker: str, reject: Reject) -> None:
        await self._execute(self.core.on_reject(worker, reject, trio.current_time()))

    def expects_result(self, worker: str, result: Result) -> Job | None:
        return self.core.expects_result(worker, result)

    def upload_path(self, result: Result) -> Path:
        return self.results_dir / f"{spool_name(result.job_id)}.{result.attempt}"

    async def result(self, worker: str, result: Result, output: outputs.Pending | None) -> None:
        """A worker's result (its output checked against size and sha256 by whoever carried it): verified in a
        thread when it comes from another node (a proof check takes ~0.2 s: never on the event loop), then
        handed with the verdict to the core."""
        job = self.core.expects_result(worker, result)
        if isinstance(output, bytes) and worker != self.peer_id and job is not None \
                and len(output) > self.output_limit(job):  # inline on a lease stream: bounded like an upload
            log.info("result of %s from %s dropped: %d output bytes, over its limit", result.job_id, worker,
                     len(output))
            return
        if output:
            outputs.discard(self._received.pop((result.job_id, result.attempt), None))
            self._received[(result.job_id, result.attempt)] = output
        fn = self.verifiers.get(job.kind) if job is not None else None
        problem = None
        if job is not None and fn is not None and result.ok and worker != self.peer_id:
            spooled = self.spool / spool_name(job.job_id)
            read_input = spooled.read_bytes if not job.inline and job.input_size else None
            problem = await trio.to_thread.run_sync(_verify, fn, job, result, output, read_input,
                                                    limiter=self._verify_limiter)
        await self._execute(self.core.on_result(worker, result, trio.current_time(), problem))

    async def receive_output(self, worker: str, result: Result, chunks: AsyncIterable[Any]) -> Path | None:
        """A remote worker's output, streamed to a file (never gathered in memory), bounded by what the job may
        produce and checked against the result's size and sha256. A late or duplicate result's bytes are read
        past, never kept (the core drops the result)."""
        job = self.core.expects_result(worker, result)
        if job is None:
            async for _ in chunks:
                pass
            return None
        path = self.results_dir / f"{spool_name(result.job_id)}.{result.attempt}"
        return await outputs.receive(chunks, path, result.output_size, result.output_sha256, self.output_limit(job))

    async def read_input(self, worker: str, job_id: str) -> AsyncIterator[bytes]:
        rec = self.core.get(job_id)
        if rec is None or rec.peer != worker:
            raise LinkError("forbidden", f"job {job_id!r} is not placed on {worker}")
        path = self.spool / spool_name(job_id)
        if not path.exists():
            raise LinkError("not_found", f"input of {job_id!r} is gone")
        async with await trio.open_file(path, "rb") as f:
            while chunk := await f.read(CHUNK):
                yield chunk

    # ---- carrying out the core's actions ------------------------------------------------------------------
    async def _execute(self, actions: list) -> None:
        # a job's output is on disk before the journal says it is done: a small one in the same transaction as
        # its finish record, a larger file before it. A coordinator killed in between restarts with the job
        # unfinished (placed again), never "done" with its output lost
        for a in actions:
            if isinstance(a, Finish):
                self._finishing.add(a.job_id)
        journal = [a for a in actions if isinstance(a, RECORDS)]
        for a in actions:
            if isinstance(a, Deliver) and (small := await self._deliver(a)) is not None:
                journal.append(small)
        for a in actions:
            # a done job's waiters are answered now, while its finish record commits: its result is accepted
            # and its output kept (a small one in memory until committed). A coordinator killed before the
            # commit restarts with the job unfinished and runs it again (at least once, like any attempt); the
            # client has its result. Its submit was answered only after the job's own record committed, and the
            # group commit keeps order: an answer that waited for a later commit comes after this one is on disk.
            if isinstance(a, Finish) and a.state is JobState.DONE:
                self._settle(a)
        early: set[int] = set()
        if journal:
            # a new job's first attempt goes out while its records commit: its submit is answered only after
            # the commit, so a coordinator killed before it leaves no job to resume (the client, unanswered,
            # submits again) and a late result of that attempt finds no job (dropped). Later attempts wait.
            new = {a.job.job_id for a in journal if isinstance(a, JournalJob)}
            for a in actions:
                if new and isinstance(a, SendOffer | SendDirect) and a.offer.attempt == 1 and a.offer.job.job_id in new:
                    early.add(id(a))
                    if isinstance(a, SendDirect):
                        self._send_direct(a)
                    else:
                        self._tasks.start_soon(self._offer, a)
            await self._journal_commit(journal)
        for a in actions:
            if id(a) in early:
                continue
            if isinstance(a, SendDirect):
                self._send_direct(a)
            elif isinstance(a, OpenLease):
                self._open_lease(a)
            elif isinstance(a, ReturnLease):
                channel = self._leases.pop(a.lease_id, None)
                if channel is not None:
                    channel.close()
            elif isinstance(a, SendOffer):
                self._tasks.start_soon(self._offer, a)
            elif isinstance(a, SendCancel):
                self._tasks.start_soon(self._send_cancel, a)
            elif isinstance(a, Finish):
                self._on_finish(a)
            elif isinstance(a, Crashed):  # the submitter's doing: its token pays, the worker does not
                self.quotas.crashed(a.submitted_by, trio.current_time())
            elif isinstance(a, StateChanged):
                rec = self.core.get(a.job_id)
                self._broadcast({"id": a.job_id, "kind": rec.job.kind if rec else "", "state": a.state.value,
                                 "attempt": a.attempt, "peer": a.peer_id, "by": rec.job.submitted_by if rec else ""})

    async def _journal_commit(self, actions: list) -> None:
        """Group commit: callers queue their journal records and wait until a transaction holding them has
        committed; one writer thread commits everything queued since its last transaction at once."""
        self._journal_pending.extend(actions)
        done = self._journal_done
        if not self._journal_busy:
            self._journal_busy = True
            try:
                while self._journal_pending:
                    batch, self._journal_pending = self._journal_pending, []
                    batch_done, self._journal_done = self._journal_done, trio.Event()
                    try:
                        await trio.to_thread.run_sync(self._journal.apply, batch, trio.current_time())
                    finally:
                        batch_done.set()
            finally:
                self._journal_busy = False
        await done.wait()

    async def _offer(self, a: SendOffer) -> None:
        try:
            answer = await self.links.get(a.peer_id).offer(a.offer, self.core.cfg.claim_timeout_s)
        except LinkError as e:
            log.info("offer of %s to %s failed: %s", a.offer.job.job_id, a.peer_id, e)
            if e.code == "deadline_exceeded":  # slow, not gone: the core's claim timer withdraws this offer
                return
            await self._execute(self.core.worker_lost(a.peer_id, trio.current_time(), f"offer failed: {e}"))
            return
        now = trio.current_time()
        if isinstance(answer, Accept):
            await self._execute(self.core.on_accept(a.peer_id, answer, now))
        else:
            await self._execute(self.core.on_reject(a.peer_id, answer, now))

    def _open_lease(self, a: OpenLease) -> None:
        """Hold a granted slot lease: its channel is registered at once (jobs may be sent on it before its
        stream is open: they wait in the channel) and run in a task until given back or broken."""
        try:
            channel = self.links.get(a.peer_id).lease(a.lease_id, self)
        except LinkError as e:
            self._tasks.start_soon(self._execute, self.core.lease_lost(a.lease_id, trio.current_time(), str(e)))
            return
        self._leases[a.lease_id] = channel
        self._tasks.start_soon(self._hold_lease, a, channel)

    async def _hold_lease(self, a: OpenLease, channel: LeaseChannel) -> None:
        reason = "its stream ended"
        try:
            await channel.run()
        except LinkError as e:
            reason = str(e)
        except Exception as e:  # a bug must cost the lease and its jobs' attempts, never the node
            log.exception("lease %s on %s failed", a.lease_id, a.peer_id)
            reason = f"{type(e).__name__}: {e}"
        if self._leases.get(a.lease_id) is channel:
            del self._leases[a.lease_id]
        # given back meanwhile: nothing to do (the core forgot the lease); otherwise its jobs are lost
        acts = self.core.lease_lost(a.lease_id, trio.current_time(), reason)
        if acts:
            log.info("lease %s on %s lost: %s", a.lease_id, a.peer_id, reason)
        await self._execute(acts)

    def _send_direct(self, a: SendDirect) -> None:
        channel = self._leases.get(a.lease_id)
        if channel is None:  # its stream failed a moment ago: the job goes the normal way
            self._tasks.start_soon(self._execute, self.core.lease_lost(a.lease_id, trio.current_time(), "closed"))
            return
        channel.send(a.offer)

    async def _send_cancel(self, a: SendCancel) -> None:
        try:
            await self.links.get(a.peer_id).cancel(a.cancel)
        except LinkError as e:
            log.debug("cancel to %s: %s", a.peer_id, e)

    async def _deliver(self, a: Deliver) -> JournalOutput | None:
        """Keep the delivered output: a small one (in memory already) is returned as the journal record that
        commits it with the job's finish, a larger one is moved into results/ now."""
        output = self._received.pop((a.job_id, a.result.attempt), None)
        if not output:
            return None
        if isinstance(output, bytes) and len(output) <= outputs.SMALL_OUTPUT:
            self._unsaved[a.job_id] = output  # until its record commits (then in _small_outputs: _on_finish)
            return JournalOutput(a.job_id, output)
        await trio.to_thread.run_sync(outputs.settle, output, self.output_path(a.job_id))
        return None

    async def small_output(self, job_id: str, size: int) -> bytes | None:
        """A finished job's output when it is at most SMALL_OUTPUT bytes: from memory when recent, else from
        the journal (or from results/, where versions before the journal kept it); None when larger or gone."""
        if not 0 < size <= outputs.SMALL_OUTPUT:
            return None
        kept = self._unsaved.get(job_id) or self._small_outputs.get(job_id)
        if kept is not None and len(kept) == size:
            return kept
        data = await trio.to_thread.run_sync(self._journal.output, job_id)
        if data is None:
            try:
                data = await trio.Path(self.output_path(job_id)).read_bytes()
            except FileNotFoundError:
                return None
        return data if len(data) == size else None

    def _settle(self, a: Finish) -> None:
        """The job's end may be answered (once per job): its quota released, watchers told, waiters woken."""
        if a.job_id not in self._finishing:
            return
        self._finishing.discard(a.job_id)
        rec = self.core.get(a.job_id)
        if rec is not None:
            run_s = float(a.result.timings.get("run_s", 0.0)) if a.result is not None else 0.0
            self.quotas.finished(rec.job.submitted_by, a.job_id, run_s, trio.current_time())
        self._broadcast({"id": a.job_id, "kind": rec.job.kind if rec else "", "state": a.state.value,
                         "reason": a.reason, "final": True, "by": rec.job.submitted_by if rec else ""})
        ev = self._finished.pop(a.job_id, None)
        if ev is not None:
            ev.set()

    def _on_finish(self, a: Finish) -> None:
        """The job's finish record has committed."""
        self._settle(a)
        output = self._unsaved.pop(a.job_id, None)
        if output is not None:
            self._small_outputs[a.job_id] = output
            while len(self._small_outputs) > SMALL_OUTPUTS_KEPT:
                self._small_outputs.popitem(last=False)
        rec = self.core.get(a.job_id)
        if rec is not None:
            took = trio.current_time() - rec.submitted_at
            worker = a.result.worker if a.result is not None else ""
            log.info("job %s (%s) %s after %.2f s%s%s", a.job_id, rec.job.kind, a.state.value, took,
                     f" on {worker}" if worker else "", f": {a.reason}" if a.reason else "")
        if rec is None or (not rec.job.inline and rec.job.input_size):  # only a streamed input is spooled
            self.drop_input(a.job_id)
        # drop outputs of attempts that were not delivered
        for k in [k for k in self._received if k[0] == a.job_id]:
            outputs.discard(self._received.pop(k))

    def progress(self, worker: str, job_id: str, attempt: int, fraction: float, stage: str) -> None:
        """A worker's progress on the attempt it holds, passed on to watchers (others are ignored)."""
        rec = self.core.get(job_id)
        if rec is None or rec.peer != worker or rec.attempt != attempt or rec.state.terminal:
            return
        self._broadcast({"id": job_id, "kind": rec.job.kind, "state": rec.state.value, "attempt": attempt,
                         "peer": worker, "progress": round(fraction, 4), "stage": stage})

    def _broadcast(self, item: dict[str, Any]) -> None:
        for ch in list(self._watchers):
            try:
                ch.send_nowait(item)
            except trio.WouldBlock:
                pass  # a slow watcher misses progress; the final state is always in job.status
            except trio.ClosedResourceError:
                self._watchers.discard(ch)


def _verify(fn: Verifier, job: Job, result: Result, output: outputs.Pending | None, read_input) -> str | None:
    try:
        return fn(job, result, outputs.read(output), read_input)
    except Exception as e:  # a verifier crash rejects the result rather than the node
        log.exception("verifier for %s failed", job.kind)
        return f"verification error: {e}"



__all__ = ["CoordinatorIO", "Verifier", "device_of", "spool_name"]
