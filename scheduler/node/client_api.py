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
from scheduler.core.job import Job, WireError
from scheduler.core.placement import TrackedView
from scheduler.core.quota import QuotaExceeded, Quotas
from scheduler.node import outputs, tenancy
from scheduler.node.admission import Principal
from scheduler.node.coordinator_io import CoordinatorIO
from scheduler.node.jobview import tagged_job_id
from scheduler.node.links import CHUNK
from scheduler.node.tokens import TokenError, TokenStore
from worker import kinds as kinds_mod


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
        for name, fn in [("job.submit", self._submit), ("mesh.peers", self._mesh_peers)]:
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
        now = trio.current_time()
        try:
            # an id this node makes names it as the coordinator (see jobview): any node finds the job from it
            job = Job.from_wire(call.body.get("job"), now).validate().with_id(
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
            try:
                await self.coordinator.receive_input(job, call)
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
        if call.body.get("wait") is True and answer.accepted:  # submit and result in one round trip
            out["outcome"] = await self.outcome(call, answer.job_id, wait=True)
        return out

    async def outcome(self, call: Call, job_id: str, wait: bool) -> dict[str, Any]:
        """The job's outcome (waiting for it if asked), its output bytes streamed on `call` first."""
        settled = await self.coordinator.settled(job_id, wait)
        if settled is None:
            raise RpcError("not_found", f"no job {job_id!r} on this node")
        state, reason, result = settled
        if not state.terminal:
            return {"id": job_id, "state": state.value, "reason": reason, "final": False}
        path = self.coordinator.output_path(job_id)
        if result is not None and result.output_size and path.exists():
            await outputs.send_file(call, path, CHUNK)
        return {"id": job_id, "state": state.value, "reason": reason, "final": True,
                "result": result.to_wire() if result is not None else None}

    async def _mesh_peers(self, call: Call) -> dict[str, Any]:
        self.require(call, "read")
        return {"peers": self._peers()}


__all__ = ["ClientAPI", "describe_peers"]
