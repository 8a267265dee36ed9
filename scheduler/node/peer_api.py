"""The `peer.*` RPC methods: the far end of a `RemoteLink`, decoding what another node of the mesh sends
into typed messages for this node's inboxes. Only connections whose principal is a mesh peer may call.

    coordinator --peer.offer--> worker          (claim: the answer is Accept/Reject)
    coordinator --peer.offers--> worker         (several offers queued together: one answer each, in order)
    worker --peer.input--> coordinator          (streamed input, from the spool)
    worker --peer.lease--> coordinator          (lease renewals, batched per coordinator)
    worker --peer.result--> coordinator (+ output bytes)   (one per attempt; duplicates dropped)
    worker --peer.results--> coordinator        (results without output, several queued together in one call)
    coordinator --peer.cancel--> worker
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

from mesh.bigtcp.rpc import Call, RpcError, RpcServer
from scheduler.core.job import Cancel, LeaseRenew, Offer, Result, WireError
from scheduler.node.admission import Principal
from scheduler.node.links import MAX_BATCH, CoordinatorInbox, LinkError, WorkerInbox

M = TypeVar("M")


class PeerAPI:
    def __init__(self, coordinator: CoordinatorInbox, worker: WorkerInbox) -> None:
        self.coordinator = coordinator
        self.worker = worker

    def register(self, rpc: RpcServer) -> None:
        for name, fn in [("peer.offer", self._offer), ("peer.offers", self._offers), ("peer.lease", self._lease),
                         ("peer.result", self._result), ("peer.results", self._results),
                         ("peer.cancel", self._cancel), ("peer.input", self._input),
                         ("peer.progress", self._progress)]:
            rpc.register(name, fn)

    def _peer(self, call: Call) -> str:
        p: Principal | None = call.principal
        if p is None or p.kind != "peer":
            raise RpcError("forbidden", "peer methods are for nodes of this mesh")
        return call.peer_id

    def _parse(self, call: Call, key: str, decode: Callable[[Any], M]) -> tuple[str, M]:
        """(the calling peer, `decode(body[key])`); RpcError('forbidden') for a caller that is not a mesh peer,
        RpcError('invalid') naming what is wrong with a message that does not decode."""
        peer = self._peer(call)
        return peer, self._decode(decode, call.body.get(key))

    @staticmethod
    def _decode(decode: Callable[[Any], M], value: Any) -> M:
        try:
            return decode(value)
        except WireError as e:
            raise RpcError("invalid", str(e)) from None

    def _batch(self, call: Call, key: str, decode: Callable[[Any], M]) -> tuple[str, list[M]]:
        """(the calling peer, every item of the list `body[key]` decoded): 1 to MAX_BATCH of them."""
        peer = self._peer(call)
        items = call.body.get(key)
        if not isinstance(items, list) or not 0 < len(items) <= MAX_BATCH:
            raise RpcError("invalid", f"{key}: a list of 1 to {MAX_BATCH} {key}")
        return peer, [self._decode(decode, item) for item in items]

    async def _offer(self, call: Call) -> dict[str, Any]:
        peer, offer = self._parse(call, "offer", lambda d: Offer.from_wire(d, trio.current_time()))
        answer = await self.worker.offer(peer, offer)
        return {"answer": answer.to_wire()}

    async def _offers(self, call: Call) -> dict[str, Any]:
        """Offers group-sent by a coordinator's link (at most MAX_BATCH), each claimed on its own, in order."""
        now = trio.current_time()
        peer, offers = self._batch(call, "offers", lambda d: Offer.from_wire(d, now))
        return {"answers": [(await self.worker.offer(peer, offer)).to_wire() for offer in offers]}

    async def _lease(self, call: Call) -> dict[str, Any]:
        peer, msg = self._parse(call, "renew", LeaseRenew.from_wire)
        await self.coordinator.lease(peer, msg)
        return {}

    async def _progress(self, call: Call) -> dict[str, Any]:
        """A worker's progress on an attempt it holds (fraction 0..1 and a short stage name), for watchers."""
        peer = self._peer(call)
        b = call.body
        job_id, attempt, fraction, stage = b.get("id"), b.get("attempt"), b.get("fraction"), b.get("stage", "")
        if not (isinstance(job_id, str) and len(job_id) <= 256 and isinstance(attempt, int)
                and isinstance(fraction, int | float) and isinstance(stage, str)):
            raise RpcError("invalid", "peer.progress needs id, attempt, fraction and stage")
        self.coordinator.progress(peer, job_id, attempt, min(max(float(fraction), 0.0), 1.0), stage[:64])
        return {}

    async def _result(self, call: Call) -> dict[str, Any]:
        peer, result = self._parse(call, "result", Result.from_wire)
        output = await self.coordinator.receive_output(peer, result, call)
        await self.coordinator.result(peer, result, output)
        return {}

    async def _results(self, call: Call) -> dict[str, Any]:
        """Results without output bytes, batched by the worker's link (at most MAX_BATCH)."""
        peer, results = self._batch(call, "results", Result.from_wire)
        if any(r.output_size for r in results):
            raise RpcError("invalid", "a result with output goes with its bytes, in peer.result")
        for r in results:
            await self.coordinator.result(peer, r, None)
        return {}

    async def _cancel(self, call: Call) -> dict[str, Any]:
        peer, msg = self._parse(call, "cancel", Cancel.from_wire)
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
