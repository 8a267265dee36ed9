"""Peer links: how a node's coordinator reaches a worker and its worker reaches a coordinator.

The coordinator I/O (`coordinator_io`) and the worker I/O (`worker_io`) never call each other. Each talks
to a peer through a `PeerLink`, and receives from peers through its inbox (`CoordinatorInbox`,
`WorkerInbox`). A link to another node is a `RemoteLink` (bigtcp RPC, answered there by `peer_api`); the
link to this node itself is a `LoopbackLink`, which hands the same typed messages to the local inboxes
without a network hop. So the node's own worker is placed, leased, cancelled and heard from exactly like a
remote one.

    coordinator_io --PeerLink.offer / cancel--------------> WorkerInbox (worker_io)
    worker_io ------PeerLink.renew / send_result / read_input--> CoordinatorInbox (coordinator_io)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import trio

from mesh.bigtcp.rpc import MeshClient, RpcError
from mesh.bigtcp.tls import HandshakeError
from mesh.bigtcp.transport import Transport
from mesh.wire.advert import AddressError, split_hostport
from scheduler.core.job import Accept, Cancel, Job, LeaseRenew, Offer, Reject, Result, WireError
from scheduler.core.placement import TrackedView
from scheduler.node.outputs import Pending

log = logging.getLogger("gpumesh.scheduler")

CHUNK = 1 << 20
RESULT_UPLOAD_TIMEOUT_S = 300
INPUT_TIMEOUT_S = 3600


class LinkError(Exception):
    """A peer could not be reached or refused a message. `code` names why (an RpcError code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class WorkerInbox(Protocol):
    """What a coordinator may ask of this node's worker (implemented by `WorkerIO`)."""

    async def offer(self, coordinator: str, offer: Offer) -> Accept | Reject: ...

    async def cancel(self, coordinator: str, cancel: Cancel) -> None: ...


class CoordinatorInbox(Protocol):
    """What a worker may tell this node's coordinator (implemented by `CoordinatorIO`)."""

    async def lease(self, worker: str, renew: LeaseRenew) -> None: ...

    async def result(self, worker: str, result: Result, output: Pending | None) -> None: ...

    def expects_result(self, worker: str, result: Result) -> Job | None:
        """The job if `result` is the one its current attempt waits for (else it is late: read past it)."""
        ...

    def upload_path(self, result: Result) -> Path:
        """Where a remote worker's output for `result` is streamed to (a partial file until settled)."""
        ...

    def output_limit(self, job: Job) -> int:
        """The most output bytes `job` may produce."""
        ...

    def read_input(self, worker: str, job_id: str) -> AsyncIterator[bytes]:
        """The spooled input of a job placed on `worker` (LinkError 'forbidden'/'not_found' otherwise)."""
        ...


class PeerLink(Protocol):
    """One peer, as both halves of this node see it. Failures raise LinkError."""

    peer_id: str

    # coordinator -> worker
    async def offer(self, offer: Offer, timeout: float) -> Accept | Reject: ...

    async def cancel(self, cancel: Cancel) -> None: ...

    # worker -> coordinator
    async def renew(self, renew: LeaseRenew) -> None: ...

    async def send_result(self, result: Result, output: bytes) -> None: ...

    def read_input(self, job_id: str) -> AsyncIterator[bytes]: ...

    async def warm(self) -> None:
        """Connect ahead of the first message (so it measures the network, not the handshake)."""
        ...


class LoopbackLink:
    """The link from this node to itself: typed messages handed straight to the local inboxes."""

    def __init__(self, peer_id: str, coordinator: CoordinatorInbox, worker: WorkerInbox) -> None:
        self.peer_id = peer_id
        self._coordinator = coordinator
        self._worker = worker

    async def offer(self, offer: Offer, timeout: float) -> Accept | Reject:
        return await self._worker.offer(self.peer_id, offer)

    async def cancel(self, cancel: Cancel) -> None:
        await self._worker.cancel(self.peer_id, cancel)

    async def renew(self, renew: LeaseRenew) -> None:
        await self._coordinator.lease(self.peer_id, renew)

    async def send_result(self, result: Result, output: bytes) -> None:
        await self._coordinator.result(self.peer_id, result, output)

    def read_input(self, job_id: str) -> AsyncIterator[bytes]:
        return self._coordinator.read_input(self.peer_id, job_id)

    async def warm(self) -> None:
        await trio.lowlevel.checkpoint()


class RemoteLink:
    """The link to another node: the `peer.*` RPC methods over a pooled bigtcp connection."""

    def __init__(self, client: MeshClient, peer_id: str) -> None:
        self.client = client
        self.peer_id = peer_id

    async def offer(self, offer: Offer, timeout: float) -> Accept | Reject:
        try:
            resp = await self.client.call("peer.offer", {"offer": offer.to_wire(trio.current_time())}, timeout=timeout)
            return Accept.from_wire(resp["answer"]) if resp["answer"].get("t") == "accept" \
                else Reject.from_wire(resp["answer"])
        except (RpcError, WireError, KeyError, TypeError, HandshakeError) as e:
            raise LinkError(getattr(e, "code", "invalid"), str(e)) from e

    async def cancel(self, cancel: Cancel) -> None:
        try:
            await self.client.call("peer.cancel", {"cancel": cancel.to_wire()}, timeout=5)
        except (RpcError, HandshakeError) as e:
            raise LinkError(getattr(e, "code", "unavailable"), str(e)) from e

    async def renew(self, renew: LeaseRenew) -> None:
        try:
            await self.client.call("peer.lease", {"renew": renew.to_wire()}, timeout=10)
        except (RpcError, HandshakeError) as e:
            raise LinkError(getattr(e, "code", "unavailable"), str(e)) from e

    async def send_result(self, result: Result, output: bytes) -> None:
        try:
            async with self.client.open("peer.result", {"result": result.to_wire()}, uploads=True,
                                        timeout=RESULT_UPLOAD_TIMEOUT_S) as call:
                for off in range(0, len(output), CHUNK):
                    await call.send_bytes(memoryview(output)[off:off + CHUNK])
                await call.done_sending()
                await call.result()
        except (RpcError, HandshakeError) as e:
            raise LinkError(getattr(e, "code", "unavailable"), str(e)) from e

    async def read_input(self, job_id: str) -> AsyncIterator[bytes]:
        try:
            async with self.client.open("peer.input", {"id": job_id}, timeout=INPUT_TIMEOUT_S) as call:
                async for item in call:
                    if isinstance(item, bytes | bytearray):
                        yield bytes(item)
                await call.result()
        except (RpcError, HandshakeError) as e:
            raise LinkError(getattr(e, "code", "unavailable"), str(e)) from e

    async def warm(self) -> None:
        await self.client.connection()


class PeerLinks:
    """Links by peer id: the loopback for this node, a RemoteLink (one pooled MeshClient) for the others,
    dialled at the data-plane address the peer advertises."""

    def __init__(self, self_id: str, transport: Transport, view: TrackedView) -> None:
        self.self_id = self_id
        self._transport = transport
        self._view = view
        self._remote: dict[str, RemoteLink] = {}
        self._loopback: LoopbackLink | None = None

    def set_loopback(self, link: LoopbackLink) -> None:
        self._loopback = link

    def get(self, peer_id: str) -> PeerLink:
        """The link to `peer_id`; LinkError('unavailable') if it has no known data-plane address."""
        if peer_id == self.self_id:
            assert self._loopback is not None, "the composition root sets the loopback link"
            return self._loopback
        link = self._remote.get(peer_id)
        peer = self._view.get(peer_id)
        if peer is None and link is not None:
            # its adverts are late (gossip under load) or stopped: the last address it gave still serves the
            # jobs under way with it (lease renewals, results); its connection failing is what says it is gone
            return link
        if peer is None or not peer.advert.data_addr:
            raise LinkError("unavailable", f"peer {peer_id} is not in this node's view")
        try:
            host, port = split_hostport(peer.advert.data_addr)  # checked when decoded; never trusted twice
        except AddressError as e:
            raise LinkError("unavailable", f"peer {peer_id}: bad data address: {e}") from None
        if link is None or (link.client.host, link.client.port) != (host, port):
            link = self._remote[peer_id] = RemoteLink(MeshClient(self._transport, host, port, peer_id), peer_id)
        return link

    def forget(self, peer_id: str) -> None:
        """Drop a removed peer's address (it is not allowed any more)."""
        self._remote.pop(peer_id, None)


__all__ = ["CHUNK", "CoordinatorInbox", "LinkError", "LoopbackLink", "PeerLink", "PeerLinks", "RemoteLink",
           "WorkerInbox"]
