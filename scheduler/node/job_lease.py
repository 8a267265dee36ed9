"""Client job leases: a client with a stream of jobs of one kind holds slots on one worker and sends its jobs
to that worker itself, one hop each way, with no placement, claim or journal record per job.

    client --job.lease--> gateway --peer.job_lease--> worker      (held streams: the lease lives while they do)
    client --lease.run (ticket)--> worker                         (jobs in {"jobs": [...]}, results back)

The gateway admits the lease as it admits a job (the token's scope for the kind, its quotas: one active job
of the token, its submit rate passed on for the worker to enforce per lease), places it with the same placer
as a job of that kind and asks the worker for `slots` slots. The worker answers with a one-use ticket
(scheduler/node/session_attach.Tickets: 128-bit name, 256-bit secret, compared in constant time); the gateway
hands the ticket to the client with the worker's data-plane address and peer id. The client dials the worker
pinned to that peer id with `{"attach": "lease"}` in its HELLO (principal kind "lease": every method but
`lease.run` refuses it) and opens `lease.run` with the ticket.

Each job on the stream is decoded and checked where it arrives (Job.from_wire, the lease's kind only, the
kind's own spec check, inline input only, at most `slots` in flight, the token's rate) and run by the
worker's executor like any other job; results, refusals and outcomes travel back in batched frames
({"items": [{"n", ...}]}).

A lease ends when any of its three streams ends: the client is done or gone, the gateway is gone, the worker
drains, or its `ttl_s` passes (the worker then stops taking jobs, lets the running ones finish and ends the
stream). The worker reports what the lease used (jobs, device-seconds, crashed runners) to the gateway, which
charges the token as for journaled jobs. Jobs on a lease are not journaled: like a Ray task, a leased job is
owned by its client. A job the client gets no answer for (its worker lost, the lease ended) is run again
through the gateway by the client (scheduler/client/job_lease.py): at least once, as attempts are.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import msgpack
import trio
from prometheus_client import Counter, Gauge

from mesh.bigtcp.coalesce import Coalescer
from mesh.bigtcp.framing import TransportError
from mesh.bigtcp.rpc import Call, RpcError, RpcServer
from scheduler.core.job import INLINE_INPUT_LIMIT, LEASE_FRAME_JOBS, Job, Requirements, WireError
from scheduler.core.quota import TokenBucket
from scheduler.core.render_session import SessionError
from scheduler.node.admission import Principal
from scheduler.node.links import LEASE_INLINE_OUTPUT
from scheduler.node.session_attach import Tickets
from worker import kinds as kinds_mod
from worker.executor import Executor, JobRequest, Refused
from worker.jobs import Outcome

MAX_LEASE_SLOTS = 256  # jobs of one lease in flight at once
DEFAULT_TTL_S = 300.0  # a lease's life; the client takes a new one when it ends
MAX_TTL_S = 3600.0
ATTACH_TIMEOUT_S = 10.0  # the client must open lease.run within this of the grant
MAX_OPEN_LEASES = 1024  # leases one worker grants at once
ANSWER_LINGER_S = 0.0005  # while other jobs of a lease run, its answers wait this long at most for company
MAX_LEASES_PER_GATEWAY = 64  # of them for one gateway's clients (a hostile peer cannot take them all)

LEASE_JOBS = Counter("gpumesh_client_lease_jobs_total", "Jobs run on client leases, by how they ended "
                     "(done, failed, cancelled, crashed, or refused: invalid, busy, rate, kind)", ["outcome"])
LEASES = Counter("gpumesh_client_leases_total", "Client leases, by side (gateway: admitted and handed to a "
                 "client; worker: granted) and result (granted, refused; bad_ticket: a lease.run whose ticket "
                 "opened nothing)", ["side", "result"])
LEASES_OPEN = Gauge("gpumesh_client_leases_open", "Client leases this node holds open, by side", ["side"])


class LeaseError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class LeaseTerms:
    """What a gateway asks a worker for (and the worker checks): a kind, slots, a life and the token's rate."""

    tenant: str
    kind: str
    slots: int
    ttl_s: float
    rate: float  # jobs per second on this lease, 0: unlimited (an admin token)
    requirements: Requirements = field(default_factory=Requirements)

    def to_wire(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "kind": self.kind, "slots": self.slots, "ttl_s": self.ttl_s,
                "rate": self.rate, "requirements": self.requirements.to_wire()}

    @classmethod
    def from_wire(cls, d: Any) -> LeaseTerms:
        if not isinstance(d, dict):
            raise LeaseError("invalid", "lease terms: a map")
        tenant, kind, slots, ttl, rate = (d.get(k) for k in ("tenant", "kind", "slots", "ttl_s", "rate"))
        if not (isinstance(tenant, str) and len(tenant) <= 128 and isinstance(kind, str) and 0 < len(kind) <= 64):
            raise LeaseError("invalid", "lease terms: tenant (at most 128 chars) and kind (1 to 64) are strings")
        if isinstance(slots, bool) or not isinstance(slots, int) or not 0 < slots <= MAX_LEASE_SLOTS:
            raise LeaseError("invalid", f"lease terms: slots is an integer from 1 to {MAX_LEASE_SLOTS}")
        try:
            req = Requirements.from_wire(d.get("requirements") or {})
        except (WireError, ValueError) as e:
            raise LeaseError("invalid", f"lease terms: {e}") from None
        return cls(tenant, kind, slots, _number("ttl_s", ttl, 1.0, MAX_TTL_S), _number("rate", rate, 0.0, 1e9), req)


def _number(name: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise LeaseError("invalid", f"lease terms: {name} is a number from {lo:g} to {hi:g}")
    return float(v)


@dataclass
class Grant:
    """One lease on this worker, from its grant to its end."""

    lease_id: str
    gateway: str
    terms: LeaseTerms
    expires_at: float
    attached: trio.Event = field(default_factory=trio.Event)  # the client opened lease.run
    ended: trio.Event = field(default_factory=trio.Event)  # the client's lease.run stream is over
    reading: trio.CancelScope = field(default_factory=trio.CancelScope)  # lease.run taking jobs
    running: trio.CancelScope = field(default_factory=trio.CancelScope)  # lease.run's jobs
    jobs: int = 0
    failed: int = 0
    crashes: int = 0
    device_s: float = 0.0

    def stop(self) -> None:
        """No more jobs on this lease: the running ones finish and are answered, then lease.run ends."""
        self.reading.cancel()

    def revoke(self) -> None:
        """The lease is over now: its running jobs are cancelled and lease.run ends."""
        self.reading.cancel()
        self.running.cancel()

    def usage(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "failed": self.failed, "crashes": self.crashes, "device_s": round(self.device_s, 6)}


async def until_done_sending(call: Call) -> None:
    """Return once the caller of `call` has ended its uploads (or its connection broke)."""
    try:
        while await call.receive() is not None:
            pass
    except (TransportError, RpcError):
        pass


class LeaseWorker:
    """The worker's half: grants (`peer.job_lease`, or the gateway's own call when it is the worker) and the
    client's `lease.run` stream."""

    def __init__(self, peer_id: str, executor: Executor, registry: kinds_mod.KindRegistry, *,
                 may_lend: Callable[[str, int], int]) -> None:
        self.peer_id = peer_id
        self.executor = executor
        self.registry = registry
        self.may_lend = may_lend  # (gateway, slots asked) -> slots this node lends it now (0: none)
        self.tickets = Tickets(MAX_OPEN_LEASES)
        self._grants: dict[str, Grant] = {}

    def register(self, rpc: RpcServer) -> None:
        rpc.register("peer.job_lease", self._peer_lease)
        rpc.register("lease.run", self._run)

    def remote_slots(self) -> int:
        """Slots leased to other nodes' clients now (they count against --share with remote jobs)."""
        return sum(g.terms.slots for g in self._grants.values() if g.gateway != self.peer_id)

    def _slots_for(self, gateway: str, terms: LeaseTerms) -> int:
        """The slots this node grants `gateway`'s client now; LeaseError saying why it grants none."""
        try:
            self.registry.get(terms.kind)
        except kinds_mod.UnknownKind as e:
            raise LeaseError("unknown_kind", str(e)) from None
        fit = [d.id for d in self.executor.devices if terms.requirements.satisfied_by(d)]
        if not fit:
            raise LeaseError("unavailable", f"no device here can run {terms.kind} as asked")
        room = self.executor.room()
        if not any(free > 0 or waiting < most for _, free, waiting, most in (room[d] for d in fit if d in room)):
            # the claim of a lease: placement read gossip, which may be stale; this is the device's real load
            raise LeaseError("busy", f"every device here that can run {terms.kind} has a full queue")
        if sum(1 for g in self._grants.values() if g.gateway == gateway) >= MAX_LEASES_PER_GATEWAY:
            raise LeaseError("busy", f"{MAX_LEASES_PER_GATEWAY} leases of that gateway's clients are open here")
        if len(self.tickets) >= self.tickets.limit:
            raise LeaseError("busy", f"{len(self.tickets)} leases are open on this worker")
        slots = self.may_lend(gateway, terms.slots)
        if slots <= 0:
            raise LeaseError("busy", "this node lends no more slots now")
        return slots

    @asynccontextmanager
    async def grant(self, gateway: str, terms: LeaseTerms) -> AsyncIterator[tuple[str, Grant]]:
        """A lease for `gateway`'s client: (ticket, grant) while the block lasts; LeaseError if refused."""
        try:
            slots = self._slots_for(gateway, terms)
        except LeaseError:
            LEASES.labels("worker", "refused").inc()
            raise
        lid = secrets.token_hex(8)
        with self.tickets.issue(lid) as (ticket, _att):
            g = Grant(lid, gateway, replace(terms, slots=slots), trio.current_time() + terms.ttl_s)
            self._grants[lid] = g
            LEASES.labels("worker", "granted").inc()
            LEASES_OPEN.labels("worker").inc()
            try:
                yield ticket, g
            finally:
                del self._grants[lid]
                LEASES_OPEN.labels("worker").dec()
                g.revoke()

    async def lend(self, gateway: str, terms: LeaseTerms, requester: Call,
                   announce: Callable[[str, Grant], Awaitable[None]]) -> dict[str, Any]:
        """Grant a lease, `announce` its ticket, and hold it until it ends; what it used. It ends when the client
        attached within ATTACH_TIMEOUT_S is done, or when the lease expires or the `requester` (the gateway's
        stream; the client's own when the gateway is this node) ends its uploads: in those two cases the
        running jobs finish and are answered first."""
        async with self.grant(gateway, terms) as (ticket, g):
            await announce(ticket, g)
            async with trio.open_nursery() as n:
                async def requester_end() -> None:
                    await until_done_sending(requester)
                    g.stop()

                n.start_soon(requester_end)
                with trio.move_on_after(ATTACH_TIMEOUT_S):
                    await g.attached.wait()
                if g.attached.is_set():
                    await g.ended.wait()
                n.cancel_scope.cancel()
            return g.usage()

    # ---- peer.job_lease: a gateway asks for a lease for its client ----------------------------------------
    async def _peer_lease(self, call: Call) -> dict[str, Any]:
        p: Principal | None = call.principal
        if p is None or p.kind != "peer":
            raise RpcError("forbidden", "peer methods are for nodes of this mesh")
        async def announce(ticket: str, g: Grant) -> None:
            await call.send({"ticket": ticket, "lease": g.lease_id, "slots": g.terms.slots, "ttl_s": g.terms.ttl_s})

        try:
            return await self.lend(call.peer_id, LeaseTerms.from_wire(call.body.get("terms")), call, announce)
        except LeaseError as e:
            raise RpcError(e.code, e.message) from None

    # ---- lease.run: the client's own stream ---------------------------------------------------------------
    async def _run(self, call: Call) -> dict[str, Any]:
        p: Principal | None = call.principal
        if p is None or p.kind != "lease":
            raise RpcError("forbidden", "lease.run is for a client attached with a lease ticket")
        try:
            g = self._grants.get(self.tickets.redeem(call.body.get("ticket")).session)
        except SessionError:
            g = None
        if g is None:
            LEASES.labels("worker", "bad_ticket").inc()
            raise RpcError("forbidden", "no lease open for this ticket (unknown, used or ended)")
        if g.attached.is_set():
            raise RpcError("forbidden", "no lease open for this ticket (unknown, used or ended)")
        g.attached.set()
        try:
            return await _LeaseRun(self, g, call).serve()
        finally:
            g.ended.set()


def _error(n: int, code: str, message: str) -> dict[str, Any]:
    """A job of the stream refused or not run here (the client runs it through the gateway for some codes)."""
    return {"n": n, "error": {"code": code, "message": message}}


class _LeaseRun:
    """One attached client's stream: jobs in, outcomes out (batched both ways). No task per job: each job's
    end queues its answer (JobHandle.when_done), and the stream's coalescer sends what ended together."""

    def __init__(self, worker: LeaseWorker, g: Grant, call: Call) -> None:
        self.w, self.g, self.call = worker, g, call
        self.kind = worker.registry.get(g.terms.kind)
        self.bucket = TokenBucket(g.terms.rate, max(1.0, 2 * g.terms.rate)) if g.terms.rate > 0 else None
        self.in_flight: dict[int, str] = {}  # n -> the executor's job id
        self._none_left = trio.Event()
        # answers of jobs ending together go in one frame; while other jobs still run, a little longer
        self._answers = Coalescer(self._send, max_batch=LEASE_FRAME_JOBS, more=lambda: bool(self.in_flight),
                                  linger_s=ANSWER_LINGER_S, send_now=self._send_now)
        self.req = g.terms.requirements  # the executor merges each job's own (kind.requirements(spec))
        self._reading = False  # jobs are being taken (serve's reading part)
        # the last job's wire form (msgpack, which tells 1 from 1.0 and True) and its Job: the same bytes are the
        # same job (a Job is a value), and its spec the same object, which the kind's memos know by identity
        self._last: tuple[bytes, Job] | None = None

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        try:
            await self.call.send({"items": batch})
        except (TransportError, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the client is gone: its side sees the stream end

    def _send_now(self, batch: list[dict[str, Any]]) -> bool:
        return self.call.send_nowait({"items": batch})

    async def serve(self) -> dict[str, Any]:
        g = self.g
        ended, error = "done", None
        try:
            with g.running:
                async with trio.open_nursery() as io:
                    io.start_soon(self._answers.run)
                    g.reading.deadline = g.expires_at
                    with g.reading:
                        # frames of jobs are taken in the connection's reader task as they arrive (no task switch
                        # per frame); what the reader leaves (see _take_frame) is read here, in order
                        self._reading = True
                        self.call.on_items(self._take_frame)
                        try:
                            # a client that stops reading its answers stops being read: what waits to be sent
                            # stays within the lease's slots (each answer holds at most LEASE_INLINE_OUTPUT bytes)
                            while True:
                                await self._answers.wait_below(g.terms.slots)
                                item = await self.call.receive()
                                if item is None:
                                    break
                                for n, wire in self._items(item):
                                    self._take(n, wire)
                        except RpcError as e:  # a malformed frame ends the stream, once its jobs are answered
                            error = e
                        except TransportError:
                            ended = "lost"  # the client is gone: its running jobs are cancelled
                            g.running.cancel()
                        finally:
                            self._reading = False
                            self.call.on_items(None)
                    if g.reading.cancelled_caught:
                        ended = "expired"
                    if self.in_flight:
                        self._none_left = trio.Event()
                        await self._none_left.wait()
                    self._answers.close()  # what is queued goes out, then the stream ends
        finally:
            for job_id in list(self.in_flight.values()):  # revoked or lost: nobody waits for these any more
                self.w.executor.cancel(job_id, "the lease ended")
        if g.running.cancelled_caught and ended != "lost":
            ended = "revoked"
        if error is not None:
            raise error
        return {"ended": ended, **g.usage()}

    def _take_frame(self, item: dict[str, Any]) -> bool:
        """A frame of jobs, in the reader task: taken, or left for `serve` to read (and so, to keep the order,
        the frames behind it) when the answers back up (the same backpressure as `serve`'s) or it is malformed
        (`serve` then ends the stream)."""
        if not self._reading or len(self._answers) >= self.g.terms.slots:
            return False
        try:
            jobs = self._items(item)
        except RpcError:
            return False
        for n, wire in jobs:
            self._take(n, wire)
        return True

    def _items(self, item: Any) -> list[tuple[int, Any]]:
        jobs = item.get("jobs") if isinstance(item, dict) else None
        if not isinstance(jobs, list) or not 0 < len(jobs) <= LEASE_FRAME_JOBS:
            raise RpcError("invalid", f"lease.run uploads {{jobs: [1 to {LEASE_FRAME_JOBS} {{n, job}}]}}")
        out = []
        for j in jobs:
            n = j.get("n") if isinstance(j, dict) else None
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 1 << 53:
                raise RpcError("invalid", "lease.run: each job is {n: a non-negative integer, job: map}")
            out.append((n, j.get("job")))
        return out

    def _refuse(self, n: int, code: str, message: str, label: str) -> None:
        LEASE_JOBS.labels(label).inc()
        self._answers.put(_error(n, code, message))

    def _take(self, n: int, wire: Any) -> None:
        now = trio.current_time()
        raw = _packed(wire)
        last = self._last
        if raw is not None and last is not None and raw == last[0]:
            job = last[1]  # the same job again (a stream of one shape): decoded and checked already
        else:
            try:
                job = Job.from_wire(wire, now)  # validated there
            except WireError as e:
                return self._refuse(n, "invalid", str(e), "invalid")
            # kept for the next job only without a deadline (relative on the wire: one per job)
            self._last = (raw, job) if raw is not None and job.deadline is None else None
        if n in self.in_flight:
            return self._refuse(n, "invalid", f"job {n} is already running on this lease", "invalid")
        if job.kind != self.g.terms.kind:
            return self._refuse(n, "forbidden", f"this lease runs {self.g.terms.kind} jobs, not {job.kind}", "kind")
        if not job.inline and job.input_size > 0:
            return self._refuse(n, "too_large", f"a leased job carries its input inline (at most "
                                                f"{INLINE_INPUT_LIMIT} bytes)", "invalid")
        if len(self.in_flight) >= self.g.terms.slots:
            return self._refuse(n, "busy", f"the lease's {self.g.terms.slots} slots are all in use", "busy")
        if self.bucket is not None and not self.bucket.take(now):
            return self._refuse(n, "quota", f"more than {self.g.terms.rate:g} jobs/s on this lease (the token's "
                                            "rate)", "rate")
        job_id = f"lease-{self.g.lease_id}-{n}"
        try:  # the executor checks the spec (the kind's validate) and the devices' fit
            handle = self.w.executor.submit(JobRequest(
                job_id=job_id, kind=job.kind, spec=job.spec, input=job.input or b"", priority=job.priority,
                deadline=job.deadline, requirements=self.req, timeout_s=job.timeout_s))
        except Refused as e:
            return self._refuse(n, "busy", str(e), "busy")
        except (ValueError, kinds_mod.UnknownKind) as e:
            return self._refuse(n, "invalid_spec", f"{job.kind}: {e}", "invalid")
        self.in_flight[n] = job_id
        handle.when_done(partial(self._done, n, job_id))

    def _done(self, n: int, job_id: str, outcome: Outcome) -> None:
        g = self.g
        if self.in_flight.pop(n, None) is None:
            return
        output = outcome.result.output or b""
        if len(output) > LEASE_INLINE_OUTPUT:
            # too large for the lease's frames: the client runs it through its gateway, which streams outputs
            self._answers.put(_error(n, "too_large", f"an output of {len(output)} bytes is over the lease's "
                                                     f"{LEASE_INLINE_OUTPUT}-byte inline limit"))
        else:
            result = outcome.result.to_wire()  # the output's bytes are never in it: they go in "out"
            result.update(id=job_id, attempt=1, worker=self.w.peer_id)
            item: dict[str, Any] = {"n": n, "state": outcome.state, "reason": outcome.error or "", "result": result}
            if output:
                item["out"] = bytes(output)
            self._answers.put(item)
        # the answer is on its way: the lease's accounting now
        if not self.in_flight:
            self._none_left.set()
        g.jobs += 1
        g.device_s += max(0.0, outcome.run_s or 0.0)
        if outcome.state == "crashed":
            g.crashes += 1
        if outcome.state != "done":
            g.failed += 1
        LEASE_JOBS.labels(outcome.state).inc()


def _packed(wire: Any) -> bytes | None:
    """A decoded job map as msgpack again (None for what does not pack: it is then decoded as any job)."""
    try:
        return msgpack.packb(wire, use_bin_type=True)
    except Exception:  # noqa: BLE001 - msgpack raises several types (TypeError, ValueError for deep nesting...)
        return None


__all__ = ["LeaseError", "LeaseTerms", "LeaseWorker", "until_done_sending"]
