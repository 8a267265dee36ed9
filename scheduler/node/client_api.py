"""The client-facing RPC methods (`job.submit`, `mesh.peers`): what a client with an API token may ask of the
coordinator of this node, checked against the token's scopes and the tenant's quotas.

    client --job.submit--> coordinator

The methods about existing jobs (`job.result`, `job.status`, `job.list`, `job.cancel`, `job.watch`) answer for
the whole mesh: scheduler/node/jobview.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import trio

from mesh.bigtcp.rpc import Call, RpcError, RpcServer
from scheduler.core.job import INLINE_INPUT_LIMIT, Job, JobState, Result, WireError
from scheduler.core.placement import TrackedView
from scheduler.core.quota import QuotaExceeded, Quotas
from scheduler.node import outputs, tenancy
from scheduler.node.admission import Principal
from scheduler.node.coordinator_io import CoordinatorIO
from scheduler.node.jobview import tagged_job_id
from scheduler.node.links import CHUNK
from scheduler.node.tokens import TokenError, TokenStore
from worker import kinds as kinds_mod

MANY_IN_FLIGHT = 256  # jobs of one job.submit_many call waited for at once
MANY_INLINE_OUTPUT = 64 * 1024  # job.submit_many: outputs up to this travel inside the result item


def describe_peers(view: TrackedView, self_id: str) -> list[dict[str, Any]]:
    """Every peer in the view (this node included), as `mesh-node peers` and `mesh.peers` show them."""
    now = trio.current_time()
    out = []
    for p in sorted(view.peers(), key=lambda p: p.peer_id):
        out.append({
            "peer_id": p.peer_id, "self": p.peer_id == self_id,
            "addrs": list(p.advert.addrs), "data_addr": p.advert.data_addr,
            "software": p.advert.software, "seq": p.advert.seq, "age_s": round(now - p.last_seen, 3),
            "standing": view.standing(p.peer_id),
            "free_slots": sum(d.free_slots for d in p.devices()),
            "queue_depth": sum(d.queue_depth for d in p.devices()),
            "devices": [d.__dict__ for d in p.devices()], "labels": dict(p.advert.labels),
        })
    return out


class ClientAPI:
    def __init__(self, coordinator: CoordinatorIO, *, registry: kinds_mod.KindRegistry, tokens: TokenStore,
                 quotas: Quotas, peers: Callable[[], list[dict[str, Any]]]) -> None:
        self.coordinator = coordinator
        self.registry = registry
        self.tokens = tokens
        self.quotas = quotas
        self._peers = peers

    def register(self, rpc: RpcServer) -> None:
        for name, fn in [("job.submit", self._submit), ("job.submit_many", self._submit_many),
                         ("mesh.peers", self._mesh_peers)]:
            rpc.register(name, fn)

    def require(self, call: Call, scope: str) -> Principal:
        p: Principal | None = call.principal
        if p is None or p.kind != "client" or p.token is None:
            raise RpcError("unauthenticated", (p.refusal if p is not None and p.refusal else
                                               "this method needs an API token (mesh-node token create)"))
        try:
            self.tokens.check(p.token, scope)
        except TokenError as e:
            raise RpcError("forbidden", str(e)) from None
        return p

    async def _submit(self, call: Call) -> dict[str, Any]:
        out = await self._admit(call, call.body.get("job"), uploads=call)
        if call.body.get("wait") is True and out["accepted"]:  # submit and result in one round trip
            out["outcome"] = await self.outcome(call, out["id"], wait=True,
                                                inline_output=call.body.get("inline_output") is True)
        return out

    async def _submit_many(self, call: Call) -> dict[str, Any]:
        """Pipelined submission on one stream: the client uploads items {"n": index, "job": job}, each job
        carrying its input inline; for each the server streams back {"n", "answer"} with, once the job has
        ended, "outcome" (the job's result, its output inline when at most MANY_INLINE_OUTPUT bytes; larger
        outputs are fetched with job.result). Items are answered in the order jobs end. At most MANY_IN_FLIGHT
        jobs of one call are waited for at once: the next upload is read only when one has ended, so a client
        that uploads faster meets the stream's flow control. Refusals (invalid job, quota, ...) are per item."""
        slots = trio.Semaphore(MANY_IN_FLIGHT)  # each job is authorized on its own (submit or compute scope)
        count = 0

        async def one(n: int, wire_job: Any) -> None:
            try:
                try:
                    answer = await self._admit(call, wire_job, uploads=None)
                except RpcError as e:
                    await call.send({"n": n, "error": e.to_wire()})
                    return
                item: dict[str, Any] = {"n": n, "answer": answer}
                if answer["accepted"]:
                    item["outcome"] = await self._outcome_inline(answer["id"])
                await call.send(item)
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            while True:
                await slots.acquire()
                upload = await call.receive()
                if upload is None:
                    slots.release()
                    break
                if not isinstance(upload, dict) or not isinstance(upload.get("n"), int) or "job" not in upload:
                    raise RpcError("bad_request", "job.submit_many uploads items {n: int, job: map}")
                count += 1
                nursery.start_soon(one, upload["n"], upload["job"])
        return {"submitted": count}

    async def _outcome_inline(self, job_id: str) -> dict[str, Any]:
        """The job's outcome once it has ended, its output inline when small (submit_many)."""
        settled = await self.coordinator.settled(job_id, True)
        if settled is None:
            return {"id": job_id, "state": "unknown", "reason": "the job is gone", "final": True, "result": None}
        state, reason, result = settled
        out = outcome_answer(job_id, state, reason, result)
        if result is not None and 0 < result.output_size <= MANY_INLINE_OUTPUT:
            output = await self.coordinator.small_output(job_id, result.output_size)
            if output is not None:
                out["output"] = output
        return out

    async def _admit(self, call: Call, wire_job: Any, *, uploads: Call | None) -> dict[str, Any]:
        """Validate, authorize and submit one job; its answer. A streamed input is read from `uploads`
        (None: only inline inputs are allowed)."""
        now = trio.current_time()
        try:
            # an id this node makes names it as the coordinator (see jobview): any node finds the job from it
            job = Job.from_wire(wire_job, now).validate().with_id(
                functools.partial(tagged_job_id, self.coordinator.peer_id))
        except WireError as e:
            raise RpcError("invalid", str(e)) from None
        try:
            kind = self.registry.get(job.kind)
        except kinds_mod.UnknownKind as e:
            raise RpcError("unknown_kind", str(e)) from None
        scope = "compute" if job.kind.startswith("compute.") else "submit"
        p = self.require(call, scope)
        try:
            kind.validate(job.spec, job.input_size)
            kreq = kind.requirements(job.spec)
        except ValueError as e:
            raise RpcError("invalid_spec", f"{job.kind}: {e}") from None
        try:
            req = job.requirements.merged(kreq)
        except ValueError as e:  # the client asked for another device kind than the job needs
            raise RpcError("invalid", f"{job.kind}: {e}") from None
        job = replace(job, requirements=req, submitted_by=p.name)
        try:
            self.quotas.check_output(p.name, kind.output_bytes(job.spec, job.input_size))
        except QuotaExceeded as e:
            raise RpcError("quota", str(e)) from None
        existing = self.coordinator.core.get(job.job_id)
        if existing is not None and not tenancy.owns(tenancy.of(p), existing.job.submitted_by):
            raise RpcError("conflict", f"job id {job.job_id!r} is taken; submit without an id or pick another")
        if existing is None:
            try:
                self.quotas.admit_submit(p.name, job.job_id, now, exempt=p.token is not None and "admin" in p.token.scopes)
            except QuotaExceeded as e:
                raise RpcError("quota", str(e)) from None
        if not job.inline and job.input_size > 0 and existing is None:
            if uploads is None:
                self.quotas.finished(p.name, job.job_id, 0.0, now)
                raise RpcError("invalid", f"job.submit_many carries inputs inline only (at most {INLINE_INPUT_LIMIT} "
                                          "bytes); submit larger inputs with job.submit")
            try:
                await self.coordinator.receive_input(job, uploads)
            except ValueError as e:
                self.quotas.finished(p.name, job.job_id, 0.0, now)
                raise RpcError("bad_input", str(e)) from None
            except BaseException:
                self.quotas.finished(p.name, job.job_id, 0.0, now)
                raise
        answer = await self.coordinator.submit(job)
        if not answer.accepted and existing is None:
            self.quotas.finished(p.name, job.job_id, 0.0, now)
            self.coordinator.drop_input(job.job_id)  # a refused upload goes at once
        out = {"id": answer.job_id, "accepted": answer.accepted, "state": answer.state.value if answer.state else "",
               "position": answer.position, "message": answer.message(), "code": answer.code,
               "duplicate": answer.duplicate}
        return out

    async def outcome(self, call: Call, job_id: str, wait: bool, *, inline_output: bool = False) -> dict[str, Any]:
        """The job's outcome (waiting for it if asked), its output bytes streamed on `call` first; with
        `inline_output` (the client said it reads it), an output up to MANY_INLINE_OUTPUT bytes rides in the
        outcome itself ("output"): the whole job is then one message each way."""
        settled = await self.coordinator.settled(job_id, wait)
        if settled is None:
            raise RpcError("not_found", f"no job {job_id!r} on this node")
        state, reason, result = settled
        if not state.terminal:
            return {"id": job_id, "state": state.value, "reason": reason, "final": False}
        out = outcome_answer(job_id, state, reason, result)
        if result is not None and result.output_size:
            small = await self.coordinator.small_output(job_id, result.output_size)
            if small is not None and inline_output:
                out["output"] = small
            elif small is not None:
                await call.send_bytes(small)
            else:
                path = self.coordinator.output_path(job_id)
                if path.exists():
                    await outputs.send_file(call, path, CHUNK)
        return out

    async def _mesh_peers(self, call: Call) -> dict[str, Any]:
        self.require(call, "read")
        return {"peers": self._peers()}


def outcome_answer(job_id: str, state: JobState, reason: str, result: Result | None) -> dict[str, Any]:
    """A job's outcome as job.result and job.submit_many answer it (the client's JobResult decodes it)."""
    return {"id": job_id, "state": state.value, "reason": reason, "final": state.terminal,
            "result": result.to_wire() if result is not None else None}


__all__ = ["ClientAPI", "describe_peers", "outcome_answer"]
