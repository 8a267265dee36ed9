"""Client job leases: a stream of jobs of one kind sent straight to worker slots the client holds.

    async with Client.connect(addr, token=tok) as c:
        async with open_lease(c, "echo", slots=64) as lease:
            r = await lease.run({"x": 1})                  # one hop each way: client -> worker -> client
            rs = await lease.run_many([{}] * 10_000)       # pipelined, batched in both directions

The gateway (the node `c` is connected to) admits the lease as it admits a job (the token's scope and quotas),
places it like a job of that kind and hands the client a one-use ticket for the chosen worker; the client dials
that worker itself (pinned to its peer id) and sends its jobs there on one held stream, many per frame when
they are queued together. No placement, claim or journal record per job: a leased job is not listed by
`mesh-node jobs` and is owned by this client, like a Ray task by its owner (scheduler/node/job_lease.py).

What does not fit a lease goes through the gateway as `Client.run` does, transparently: an input over the
inline limit, an output over the lease's inline limit, a job the worker has no room for, and every job in
flight when the lease is lost (its worker gone, the lease's life over): at least once, as attempts are. When
the mesh offers no lease (no worker, or none reachable from here), every job goes through the gateway and
another lease is asked for after RETRY_LEASE_S. `stats` counts which way jobs went. A lease unused for
IDLE_RETURN_S is given back; the next job takes a new one.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from mesh.bigtcp.coalesce import Coalescer
from mesh.bigtcp.framing import TransportError
from mesh.bigtcp.rpc import RpcError
from mesh.bigtcp.rpc_client import ClientCall, MeshClient
from scheduler.client.client import Client, JobFailed, JobResult, new_job
from scheduler.core.job import INLINE_INPUT_LIMIT, LEASE_FRAME_JOBS, Result, WireError

log = logging.getLogger("gpumesh.client")

ATTACH_TIMEOUT_S = 3.0  # to reach the leased worker; past it jobs go through the gateway
RETRY_LEASE_S = 5.0  # after a lease could not be had, jobs go through the gateway this long before asking again
IDLE_RETURN_S = 10.0  # a lease with no job for this long is given back
CLOSE_TIMEOUT_S = 5.0  # leaving the block: how long the lease's last answers and its return may take
FALLBACK_CODES = frozenset({"busy", "too_large", "unavailable"})  # worker refusals a gateway run can still serve


@dataclass
class _Wait:
    done: trio.Event = field(default_factory=trio.Event)
    result: JobResult | None = None  # None once done: not run on the lease (run it through the gateway)
    then: Callable[[JobResult | None], None] | None = None  # instead of a waiting task (`_Held.run_soon`)

    def finish(self) -> None:
        self.done.set()
        if self.then is not None:
            self.then(self.result)


class _Held:
    """One lease while it lives: its stream to the worker and the jobs waiting on it."""

    def __init__(self, call: ClientCall, offer: dict[str, Any], slots: int) -> None:
        self.call = call
        self.lease_id = str(offer.get("lease", ""))
        self.worker = str(offer.get("peer", ""))
        self.limiter = trio.CapacityLimiter(slots)
        self.pending: dict[int, _Wait] = {}
        self.lost = False
        self.last_used = trio.current_time()
        # jobs queued together go in one frame; a job alone in flight goes at once
        self._outbox = Coalescer(self._send, max_batch=LEASE_FRAME_JOBS, more=lambda: len(self.pending) > 1,
                                 send_now=self._send_now)
        self._ids = itertools.count()

    async def run(self, job: dict[str, Any]) -> JobResult | None:
        """The job (its wire form)'s result, or None when the lease could not run it."""
        async with self.limiter:
            if self.lost:
                return None
            n = next(self._ids)
            w = self.pending[n] = _Wait()
            self.last_used = trio.current_time()
            self._outbox.put({"n": n, "job": job})
            await w.done.wait()
            self.last_used = trio.current_time()
            return w.result

    def run_soon(self, job: dict[str, Any], then: Callable[[JobResult | None], None]) -> bool:
        """`run` without a waiting task: False (nothing sent) when the lease is lost or its slots are all in use;
        else the job is on its way and `then(result or None)` is called once it ends, from the task that learns
        it (the connection's reader, or whichever ends the lease): it must not block, nor raise."""
        if self.lost:
            return False
        borrower = object()
        try:
            self.limiter.acquire_on_behalf_of_nowait(borrower)
        except trio.WouldBlock:
            return False

        def ended(result: JobResult | None) -> None:
            then(result)  # first: the caller's thread wakes meanwhile
            self.limiter.release_on_behalf_of(borrower)
            self.last_used = trio.current_time()

        n = next(self._ids)
        self.pending[n] = _Wait(then=ended)
        self.last_used = trio.current_time()
        self._outbox.put({"n": n, "job": job})
        return True

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        if self.lost:
            return
        try:
            await self.call.send({"jobs": batch})
        except (TransportError, RpcError, trio.ClosedResourceError, trio.BrokenResourceError) as e:
            self.lose(f"sending to the worker: {e}")

    def _send_now(self, batch: list[dict[str, Any]]) -> bool:
        return self.lost or self.call.send_nowait({"jobs": batch})

    def answer_frame(self, frame: dict[str, Any]) -> bool:
        """One frame of answers from the worker: {items: [answer, ...]} (taken whatever it holds)."""
        items = frame.get("items")
        for it in items if isinstance(items, list) else ():
            self.answer(it)
        return True

    def answer(self, item: Any) -> None:
        n = item.get("n") if isinstance(item, dict) else None
        w = self.pending.pop(n, None) if isinstance(n, int) else None
        if w is None:
            return  # not ours (or answered already): ignored
        err = item.get("error")
        if isinstance(err, dict):
            code, message = str(err.get("code", "")), str(err.get("message", ""))
            w.result = None if code in FALLBACK_CODES else JobResult("", "rejected", f"{code}: {message}")
        else:
            job_id = f"lease-{self.lease_id}-{n}"
            try:
                out = item.get("out", b"")
                result = Result.from_wire(item.get("result"), bytes(out) if isinstance(out, bytes | bytearray) else b"")
                w.result = JobResult(job_id, str(item.get("state", "")), str(item.get("reason", "")), result)
            except (WireError, ValueError, TypeError) as e:
                w.result = JobResult(job_id, "failed", f"the worker's answer does not decode: {e}")
        w.finish()

    def lose(self, why: str) -> None:
        """The lease is over: what waits on it goes through the gateway."""
        if not self.lost:
            log.info("lease %s on %s ended (%s): %d job(s) in flight go through the gateway", self.lease_id,
                     self.worker[-12:], why, len(self.pending))
        self.lost = True
        waits = list(self.pending.values())
        self.pending.clear()
        for w in waits:
            w.finish()


class JobLease:
    """Jobs of one kind on worker slots this client holds (see the module's docstring)."""

    def __init__(self, client: Client, kind: str, *, slots: int, requirements: dict[str, Any] | None,
                 ttl_s: float | None, nursery: trio.Nursery) -> None:
        self.client, self.kind, self.slots = client, kind, slots
        self._body: dict[str, Any] = {"kind": kind, "slots": slots}
        if requirements:
            self._body["requirements"] = requirements
        if ttl_s is not None:
            self._body["ttl_s"] = ttl_s
        self._nursery = nursery
        self._held: _Held | None = None
        self._templates: dict[Any, dict[str, Any]] = {}
        self._lock = trio.Lock()
        self._retry_at = float("-inf")
        self._refused: RpcError | None = None  # the gateway's last refusal of a lease, until _retry_at
        self._closing = trio.Event()
        self._holding = 0  # holder tasks running
        self._released = trio.Event()  # set (and replaced) whenever one ends
        self.stats = {"on_lease": 0, "through_gateway": 0, "leases": 0}

    def close(self) -> None:
        """Give the lease back (its jobs in flight are answered first); jobs run after this go through the
        gateway. `open_lease` calls it when its block ends."""
        self._closing.set()

    async def closed(self) -> None:
        """Wait until no lease is held (after `close`)."""
        while self._holding:
            await self._released.wait()

    @property
    def worker(self) -> str | None:
        """The peer id of the worker the current lease is on (None: no lease now)."""
        return self._held.worker if self._held is not None and not self._held.lost else None

    async def run(self, spec: dict[str, Any] | None = None, *, input: bytes | None = None, **kw: Any) -> JobResult:
        """Run one job; its JobResult. Raises JobFailed if it does not end done (as `Client.run`). Keywords as
        for `Client.run` (priority, deadline_ms, timeout_s, ...)."""
        res = await self.result(spec, input=input, **kw)
        if not res.ok:
            raise JobFailed(res.job_id, res.state, res.reason)
        return res

    async def result(self, spec: dict[str, Any] | None = None, *, input: bytes | None = None, **kw: Any) -> JobResult:
        """Run one job; its JobResult whether it ended done or not ("rejected" when it was refused)."""
        if input is None or len(input) <= INLINE_INPUT_LIMIT:
            job = self._wire(spec, input, kw)
            held = await self._lease(spec)
            if held is not None:
                res = await held.run(job)
                if res is not None:
                    self.stats["on_lease"] += 1
                    return res
        self.stats["through_gateway"] += 1
        ans, res = await self.client.submit_wait(self.kind, spec, input=input, **kw)
        return res if res is not None else JobResult(ans.get("id", ""), "rejected", ans.get("message", ""))

    def result_soon(self, spec: dict[str, Any] | None, then: Callable[[JobResult | None], None], *,
                    input: bytes | None = None, **kw: Any) -> bool:
        """`result` without a task, for a caller on another thread (the blocking SDK, `compute_sdk.Mesh`): when a
        lease is held and has a free slot, the job is sent at once and True returned; `then(JobResult)` is called
        when it ends, `then(None)` when it did not run on the lease (run it with `result`, which falls back to
        the gateway). False: nothing was sent (no lease held now, no free slot, an input too large to ride
        inline): use `result`. `then` runs on the event loop: it must not block, nor raise."""
        held = self._held
        if held is None or held.lost or (input is not None and len(input) > INLINE_INPUT_LIMIT):
            return False

        def ended(res: JobResult | None) -> None:
            if res is not None:
                self.stats["on_lease"] += 1
            then(res)

        return held.run_soon(self._wire(spec, input, kw), ended)

    async def run_many(self, specs: Iterable[dict[str, Any]], *, inputs: Iterable[bytes | None] | None = None,
                       **kw: Any) -> list[JobResult]:
        """Every job's JobResult, in the order of `specs` (failed and refused ones included): up to the lease's
        slots in flight, sent and answered many per frame."""
        specs = list(specs)
        ins = list(inputs) if inputs is not None else [None] * len(specs)
        if len(ins) != len(specs):
            raise ValueError(f"{len(specs)} specs but {len(ins)} inputs")
        out: list[JobResult | None] = [None] * len(specs)
        todo = iter(range(len(specs)))
        refused: list[RpcError] = []

        async def worker() -> None:
            try:
                for i in todo:
                    out[i] = await self.result(specs[i], input=ins[i], **kw)
            except RpcError as e:  # the lease (so every job) was refused: raised once, as run() raises it
                refused.append(e)
                n.cancel_scope.cancel()

        async with trio.open_nursery() as n:
            for _ in range(min(self.slots, len(specs))):
                n.start_soon(worker)
        if refused:
            raise refused[0]
        return [r for r in out if r is not None]

    def _wire(self, spec: dict[str, Any] | None, input: bytes | None, kw: dict[str, Any]) -> dict[str, Any]:
        """The job's wire form: per distinct options a template (made and checked by `new_job` once), the spec
        and input filled in; a job with a deadline (relative to now) or unhashable options is made whole."""
        key: Any = None
        if kw.get("deadline_ms") is None:
            key = tuple(sorted(kw.items()))
            try:
                hash(key)
            except TypeError:
                key = None
        if key is None:
            return new_job(self.kind, spec, input=input, **kw).to_wire(trio.current_time())
        template = self._templates.get(key)
        if template is None:
            template = new_job(self.kind, {}, **kw).to_wire(trio.current_time())
            if len(self._templates) >= 16:
                self._templates.clear()
            self._templates[key] = template
        d = dict(template)
        d["spec"] = spec or {}
        if input is not None:
            d["input"] = bytes(input)
        return d

    # ---- holding the lease ----------------------------------------------------------------------------
    async def _lease(self, spec: dict[str, Any] | None) -> _Held | None:
        held = self._held
        if held is not None and not held.lost:
            return held
        async with self._lock:
            held = self._held
            if held is not None and not held.lost:
                return held
            if self._refused is not None and trio.current_time() < self._retry_at:
                raise self._refused
            if trio.current_time() < self._retry_at or self._closing.is_set():
                return None
            try:
                self._held = await self._nursery.start(self._hold, spec)
                self.stats["leases"] += 1
                self._refused = None
            except (RpcError, TransportError, OSError, ValueError) as e:
                if isinstance(e, RpcError) and e.code not in FALLBACK_CODES:
                    # the gateway refused the lease as it would refuse the job (forbidden, quota, unknown kind):
                    # raised, and to the callers queued behind this one without asking again for a while
                    self._refused, self._retry_at = e, trio.current_time() + RETRY_LEASE_S
                    raise
                log.info("no %s lease (%s): jobs go through the gateway for %.0f s", self.kind, e, RETRY_LEASE_S)
                self._retry_at = trio.current_time() + RETRY_LEASE_S
                self._held = None
            return self._held

    async def _hold(self, spec: dict[str, Any] | None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Take a lease (placed like the job `spec`) and hold it until it ends, is idle or the block closes."""
        held: _Held | None = None
        self._holding += 1
        try:
            async with self.client.rpc.open("job.lease", {**self._body, "spec": spec or {}}, uploads=True) as gcall:
                offer: Any = None
                async for item in gcall:
                    offer = item
                    break
                if not isinstance(offer, dict) or not all(isinstance(offer.get(k), str) for k in ("addr", "peer", "ticket")):
                    await gcall.result()  # the gateway's refusal, as RpcError
                    raise RpcError("unavailable", "the gateway offered no lease")
                slots = offer.get("slots")
                slots = slots if isinstance(slots, int) and 0 < slots <= self.slots else self.slots
                async with MeshClient.connect(offer["addr"], peer_id=offer["peer"],
                                              insecure=self.client.rpc.transport.insecure,
                                              hello_extra=lambda _local, _remote: {"attach": "lease"},
                                              handshake_timeout=ATTACH_TIMEOUT_S) as rpc:
                    async with rpc.open("lease.run", {"ticket": offer["ticket"]}, uploads=True) as wcall:
                        held = _Held(wcall, offer, slots)
                        wcall.on_items(held.answer_frame)  # answered in the reader task: no task switch per frame
                        task_status.started(held)
                        async with trio.open_nursery() as n:
                            n.start_soon(held._outbox.run)
                            n.start_soon(self._idle_watch, held, wcall)
                            try:
                                ended = await wcall.result()  # the answers went to held.answer_frame
                                why = str(ended.get("ended", "ended")) if isinstance(ended, dict) else "ended"
                            except (TransportError, RpcError, trio.ClosedResourceError, trio.BrokenResourceError) as e:
                                why = f"stream lost: {e}"
                            held.lose(why)
                            n.cancel_scope.cancel()
                with trio.move_on_after(1.0):
                    await gcall.done_sending()
                    await gcall.result()
        except (TransportError, RpcError, OSError, trio.ClosedResourceError, trio.BrokenResourceError) as e:
            if held is None:
                raise
            held.lose(str(e))  # after the lease was handed over: end it quietly, its jobs fall back
        finally:
            if held is not None:
                held.lose("closed")
            self._holding -= 1
            self._released.set()
            self._released = trio.Event()

    async def _idle_watch(self, held: _Held, wcall: ClientCall) -> None:
        """Give the lease back once it has had no job for IDLE_RETURN_S, or when the block closes."""
        while not self._closing.is_set() and not held.lost:
            deadline = held.last_used + IDLE_RETURN_S
            if trio.current_time() >= deadline:
                if not held.pending:
                    break
                deadline = trio.current_time() + IDLE_RETURN_S  # long jobs still running: look again later
            with trio.move_on_at(deadline):
                await self._closing.wait()
        held.lost = True  # no new jobs on it: the ones in flight are answered before the worker ends the stream
        try:
            await wcall.done_sending()
        except (TransportError, trio.ClosedResourceError, trio.BrokenResourceError):
            pass


@asynccontextmanager
async def open_lease(client: Client, kind: str, *, slots: int = 32, requirements: dict[str, Any] | None = None,
                     ttl_s: float | None = None) -> AsyncIterator[JobLease]:
    """A JobLease for jobs of `kind` on `slots` worker slots (1 to 256), held while the block runs and given
    back when it ends. `requirements` as for a job (device kind, memory, ...); `ttl_s` the lease's life
    (default: the gateway's, 300 s; it is renewed transparently). Raises RpcError when the gateway refuses
    the lease as it would refuse the job itself (no token scope, quota, unknown kind); when no worker can
    be leased, jobs go through the gateway."""
    if not 0 < slots <= 256:
        raise ValueError("slots is from 1 to 256")
    try:
        async with trio.open_nursery() as nursery:
            lease = JobLease(client, kind, slots=slots, requirements=requirements, ttl_s=ttl_s, nursery=nursery)
            try:
                yield lease
            finally:
                lease.close()  # the lease's jobs in flight are answered, then it is given back
                nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
    except BaseExceptionGroup as group:  # the caller's own error (or a lease's) as itself
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise


__all__ = ["JobLease", "open_lease"]
