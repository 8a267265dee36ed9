"""The `peer.*` RPC methods: the far end of a `RemoteLink`, decoding what another node of the mesh sends
into typed messages for this node's inboxes. Only connections whose principal is a mesh peer may call.

    coordinator --peer.offer--> worker          (claim: the answer is Accept/Reject)
    worker --peer.input--> coordinator          (streamed input, from the spool)
    worker --peer.lease--> coordinator          (lease renewals, batched per coordinator)
    worker --peer.result--> coordinator (+ output bytes)   (one per attempt; duplicates dropped)
    coordinator --peer.cancel--> worker
"""

from __future__ import annotations

from typing import Any

import trio

from mesh.bigtcp.rpc import Call, RpcError, RpcServer
from scheduler.core.job import Cancel, LeaseRenew, Offer, Result, WireError
from scheduler.node import outputs
from scheduler.node.admission import Principal
from scheduler.node.links import CoordinatorInbox, LinkError, WorkerInbox


class PeerAPI:
    def __init__(self, coordinator: CoordinatorInbox, worker: WorkerInbox) -> None:
        self.coordinator = coordinator
        self.worker = worker

    def register(self, rpc: RpcServer) -> None:
        for name, fn in [("peer.offer", self._offer), ("peer.lease", self._lease), ("peer.result", self._result),
                         ("peer.cancel", self._cancel), ("peer.input", self._input)]:
            rpc.register(name, fn)

    def _peer(self, call: Call) -> str:
        p: Principal | None = call.principal
        if p is None or p.kind != "peer":
            raise RpcError("forbidden", "peer methods are for nodes of this mesh")
        return call.peer_id

    async def _offer(self, call: Call) -> dict[str, Any]:
        peer = self._peer(call)
        try:
            offer = Offer.from_wire(call.body.get("offer"), trio.current_time())
        except WireError as e:
            raise RpcError("invalid", str(e)) from None
        answer = await self.worker.offer(peer, offer)
        return {"answer": answer.to_wire()}

    async def _lease(self, call: Call) -> dict[str, Any]:
        peer = self._peer(call)
        try:
            msg = LeaseRenew.from_wire(call.body.get("renew"))
        except WireError as e:
            raise RpcError("invalid", str(e)) from None
        await self.coordinator.lease(peer, msg)
        return {}

    async def _result(self, call: Call) -> dict[str, Any]:
        peer = self._peer(call)
        try:
            result = Result.from_wire(call.body.get("result"))
        except WireError as e:
            raise RpcError("invalid", str(e)) from None
        job = self.coordinator.expects_result(peer, result)
        if job is None:  # late or duplicate: its bytes are read past (never kept), the core drops it
            async for _ in call:
                pass
            await self.coordinator.result(peer, result, None)
            return {}
        # streamed to disk (never gathered in memory), bounded by what the job may produce
        path = self.coordinator.upload_path(result)
        output = await outputs.receive(call, path, result.output_size, result.output_sha256,
                                       self.coordinator.output_limit(job))
        await self.coordinator.result(peer, result, output)
        return {}

    async def _cancel(self, call: Call) -> dict[str, Any]:
        peer = self._peer(call)
        try:
            msg = Cancel.from_wire(call.body.get("cancel"))
        except WireError as e:
            raise RpcError("invalid", str(e)) from None
        await self.worker.cancel(peer, msg)
        return {}

    async def _input(self, call: Call) -> dict[str, Any]:
        peer = self._peer(call)
        try:
            async for chunk in self.coordinator.read_input(peer, str(call.body.get("id", ""))):
                await call.send_bytes(chunk)
        except LinkError as e:
            raise RpcError(e.code, str(e)) from None
        return {}


__all__ = ["PeerAPI"]
