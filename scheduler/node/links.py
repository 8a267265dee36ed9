"""Peer links: how a node's coordinator reaches a worker and its worker reaches a coordinator.

The coordinator I/O (`coordinator_io`) and the worker I/O (`worker_io`) never call each other. Each talks
to a peer through a `PeerLink`, and receives from peers through its inbox (`CoordinatorInbox`,
`WorkerInbox`). A link to another node is a `RemoteLink` (bigtcp RPC, answered there by `peer_api`); the
link to this node itself is a `LoopbackLink`, which hands the same typed messages to the local inboxes
without a network hop. So the node's own worker is placed, leased, cancelled and heard from exactly like a
remote one.

    coordinator_io --PeerLink.offer / cancel--------------> WorkerInbox (worker_io)
    worker_io ------PeerLink.renew / send_result / read_input--> CoordinatorInbox (coordinator_io)

A slot lease (scheduler/core/leases.py) is a `LeaseChannel` from `PeerLink.lease`: one held stream
(`peer.direct`) that carries the coordinator's jobs to the worker, several per frame when they queue
together, and the worker's results (outputs up to LEASE_INLINE_OUTPUT inline) and refusals back.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import trio

from mesh.bigtcp.framing import TransportError
from mesh.bigtcp.rpc import ClientCall, MeshClient, RpcError
from mesh.bigtcp.tls import HandshakeError
from mesh.bigtcp.transport import Transport
from mesh.wire.advert import AddressError, split_hostport
from scheduler.core.job import Accept, Cancel, LeaseRenew, Offer, Reject, Result, WireError
from scheduler.core.placement import TrackedView

log = logging.getLogger("gpumesh.scheduler")

T = TypeVar("T")
A = TypeVar("A")

CHUNK = 1 << 20
RESULT_UPLOAD_TIMEOUT_S = 300
INPUT_TIMEOUT_S = 3600
MAX_BATCH = 256  # offers (peer.offers) or results without output (peer.results) sent together in one call
LEASE_INLINE_OUTPUT = 64 * 1024  # a result on a lease stream carries an output up to this inline


class LinkError(Exception):
    """A peer could not be reached or refused a message. `code` names why (an RpcError code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LeaseReplies(Protocol):
    """The worker's way back on a lease stream."""

    async def send_result(self, result: Result, output: bytes) -> None: ...

    async def send_reject(self, reject: Reject) -> None: ...


class WorkerInbox(Protocol):
    """What a coordinator may ask of this node's worker (implemented by `WorkerIO`)."""

    async def offer(self, coordinator: str, offer: Offer) -> Accept | Reject: ...

    async def cancel(self, coordinator: str, cancel: Cancel) -> None: ...

    async def direct(self, coordinator: str, lease_id: str, offer: Offer) -> Reject | None:
        """A job sent on a slot lease: None when it is taken (no answer), else the Reject."""
        ...

    def open_lease(self, coordinator: str, lease_id: str, replies: LeaseReplies | None) -> bool:
        """The coordinator opened the stream of a lease it was granted (False: no such grant). Results of its
        jobs go back through `replies` (None: the usual link, as for this node itself)."""
        ...

    def close_lease(self, lease_id: str) -> None: ...


class CoordinatorInbox(Protocol):
    """What a worker may tell this node's coordinator (implemented by `CoordinatorIO`)."""

    async def lease(self, worker: str, renew: LeaseRenew) -> None: ...

    async def result(self, worker: str, result: Result, output: bytes | Path | None) -> None: ...

    async def receive_output(self, worker: str, result: Result, chunks: AsyncIterable[Any]) -> Path | None:
        """Stream a result's output bytes to a file, bounded and checked (RpcError 'bad_output' otherwise)."""
        ...

    def progress(self, worker: str, job_id: str, attempt: int, fraction: float, stage: str) -> None: ...

    def read_input(self, worker: str, job_id: str) -> AsyncIterator[bytes]:
        """The spooled input of a job placed on `worker` (LinkError 'forbidden'/'not_found' otherwise)."""
        ...

    async def refused(self, worker: str, reject: Reject) -> None:
        """The worker would not run a job sent on a slot lease."""
        ...


class LeaseChannel(Protocol):
    """A held slot lease, as its coordinator uses it."""

    def send(self, offer: Offer) -> None:
        """Queue a job on the lease (never blocks; the coordinator core bounds how many are in flight)."""
        ...

    def close(self) -> None:
        """Give the lease back: no more jobs; `run` returns once the worker has closed its side."""
        ...

    async def run(self) -> None:
        """Open the lease's stream and carry jobs out and results back until closed; LinkError if the
        stream fails (the worker died, the grant is unknown)."""
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

    async def progress(self, job_id: str, attempt: int, fraction: float, stage: str) -> None: ...

    def read_input(self, job_id: str) -> AsyncIterator[bytes]: ...

    def lease(self, lease_id: str, inbox: CoordinatorInbox) -> LeaseChannel:
        """The channel of a slot lease this peer granted; its results and refusals reach `inbox`."""
        ...

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

    async def progress(self, job_id: str, attempt: int, fraction: float, stage: str) -> None:
        self._coordinator.progress(self.peer_id, job_id, attempt, fraction, stage)
        await trio.lowlevel.checkpoint()

    def read_input(self, job_id: str) -> AsyncIterator[bytes]:
        return self._coordinator.read_input(self.peer_id, job_id)

    def lease(self, lease_id: str, inbox: CoordinatorInbox) -> LeaseChannel:
        return LoopbackLease(self.peer_id, lease_id, inbox, self._worker)

    async def warm(self) -> None:
        await trio.lowlevel.checkpoint()


class LoopbackLease:
    """A slot lease on this node's own worker: jobs handed over in-process, results by the loopback link."""

    def __init__(self, peer_id: str, lease_id: str, inbox: CoordinatorInbox, worker: WorkerInbox) -> None:
        self.peer_id, self.lease_id = peer_id, lease_id
        self._inbox, self._worker = inbox, worker
        self._send, self._receive = trio.open_memory_channel[Offer](math.inf)

    def send(self, offer: Offer) -> None:
        self._send.send_nowait(offer)

    def close(self) -> None:
        self._send.close()

    async def run(self) -> None:
        if not self._worker.open_lease(self.peer_id, self.lease_id, None):
            raise LinkError("not_found", f"no lease {self.lease_id} here")
        try:
            async for offer in self._receive:
                reject = await self._worker.direct(self.peer_id, self.lease_id, offer)
                if reject is not None:
                    await self._inbox.refused(self.peer_id, reject)
        finally:
            self._worker.close_lease(self.lease_id)


class RemoteLease:
    """A slot lease on another node: one `peer.direct` call held open. Jobs queued together go in one frame
    ({"offers": [...]}); the worker answers with {"items": [...]}: results {"r", "out"} and refusals {"x"}."""

    def __init__(self, client: MeshClient, peer_id: str, lease_id: str, inbox: CoordinatorInbox) -> None:
        self.client, self.peer_id, self.lease_id = client, peer_id, lease_id
        self._inbox = inbox
        self._send, self._receive = trio.open_memory_channel[Offer](math.inf)

    def send(self, offer: Offer) -> None:
        try:
            self._send.send_nowait(offer)
        except trio.ClosedResourceError:
            pass  # given back meanwhile: the core sends no job on a lease it gave back

    def close(self) -> None:
        self._send.close()

    async def run(self) -> None:
        try:
            # results being delivered are never cancelled (a result half-handed to the coordinator would leave
            # its job done but unanswered): they get their own nursery, which the stream's end only waits for
            async with trio.open_nursery() as deliveries, \
                    self.client.open("peer.direct", {"lease": self.lease_id}, uploads=True) as call:
                async with trio.open_nursery() as uploads:
                    uploads.start_soon(self._upload, call)
                    async for item in call:
                        if not isinstance(item, dict) or not isinstance(items := item.get("items"), list) \
                                or len(items) > MAX_BATCH:
                            raise LinkError("invalid", "peer.direct: a reply is {items: [...]}")
                        for one in items:
                            deliveries.start_soon(self._deliver, one)
                    uploads.cancel_scope.cancel()  # the worker ended the call (or it broke): stop uploading
                await call.result()
        except* (RpcError, HandshakeError, TransportError, LinkError) as group:
            e = group.exceptions[0]
            while isinstance(e, BaseExceptionGroup):
                e = e.exceptions[0]
            raise LinkError(getattr(e, "code", "unavailable"), str(e)) from e

    async def _upload(self, call: ClientCall) -> None:
        async with self._receive:
            while True:
                try:
                    batch = [await self._receive.receive()]
                except trio.EndOfChannel:
                    await call.done_sending()
                    return
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                now = trio.current_time()
                await call.send({"offers": [o.to_wire(now) for o in batch]})

    async def _deliver(self, item: Any) -> None:
        """One reply item: a refusal, or a result with its output inline (checked like an uploaded one)."""
        try:
            if isinstance(item, dict) and "x" in item:
                await self._inbox.refused(self.peer_id, Reject.from_wire(item["x"]))
                return
            if not isinstance(item, dict) or "r" not in item:
                raise WireError("malformed", "a lease reply item is {r: result, out: bytes} or {x: reject}")
            result = Result.from_wire(item["r"])
        except WireError as e:
            log.info("lease %s of %s: bad reply dropped: %s", self.lease_id, self.peer_id, e)
            return
        out = item.get("out", b"")
        if not isinstance(out, bytes) or len(out) > LEASE_INLINE_OUTPUT or len(out) != result.output_size or \
                (out and hashlib.sha256(out).hexdigest() != result.output_sha256):
            log.info("lease %s of %s: result of %s dropped: its inline output does not match it", self.lease_id,
                     self.peer_id, result.job_id)
            return  # the attempt then runs out of lease time and is placed again
        await self._inbox.result(self.peer_id, result, out or None)  # checked against the job's limit there


class _Slot(Generic[A]):
    __slots__ = ("answer", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: A | None = None
        self.error: LinkError | None = None

    def fail(self, error: LinkError) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class GroupSender(Generic[T, A]):
    """Group sending to one peer: messages queued while a call is under way go together in the next call.

    The first task that finds no call under way sends everything queued (calls of at most `max_batch`),
    then whatever queued meanwhile, until nothing is left; the others wait for the call that carried their
    message. Alone, a message goes at once (no timer); under load, batches grow by themselves.
    `send_batch(items)` returns one answer per item, in order, or raises LinkError, which reaches every
    sender of that call. A sender cancelled mid-call fails what it had taken and what was queued."""

    def __init__(self, send_batch: Callable[[list[T]], Awaitable[list[A]]], *, max_batch: int) -> None:
        self._send_batch = send_batch
        self.max_batch = max_batch
        self._pending: list[tuple[T, _Slot[A]]] = []
        self._busy = False
        self.calls = 0  # calls made (for tests and metrics: items sent / calls = the batching achieved)

    async def send(self, item: T) -> A:
        slot: _Slot[A] = _Slot()
        self._pending.append((item, slot))
        if not self._busy:
            await self._send_all()
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.answer  # type: ignore[return-value]

    async def _send_all(self) -> None:
        self._busy = True
        taken: list[tuple[T, _Slot[A]]] = []
        try:
            while self._pending:
                taken, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
                self.calls += 1
                try:
                    answers = await self._send_batch([item for item, _ in taken])
                    if len(answers) != len(taken):
                        raise LinkError("bad_response", f"{len(answers)} answers to {len(taken)} messages")
                except LinkError as e:
                    for _, slot in taken:
                        slot.fail(e)
                else:
                    for (_, slot), answer in zip(taken, answers, strict=True):
                        slot.answer = answer
                        slot.done.set()
                taken = []
        finally:
            self._busy = False
            gone = LinkError("unavailable", "the task sending this batch was cancelled")
            for _, slot in taken + self._pending:  # only after a cancellation or a bug: nobody sends these
                slot.fail(gone)
            self._pending = []


class RemoteLink:
    """The link to another node: the `peer.*` RPC methods over a pooled bigtcp connection."""

    def __init__(self, client: MeshClient, peer_id: str) -> None:
        self.client = client
        self.peer_id = peer_id
        self._offer_timeout = 2.0  # the claim timeout of the latest offer (the coordinator's, the same for all)
        self._offers: GroupSender[dict[str, Any], dict[str, Any]] = GroupSender(self._call_offers, max_batch=MAX_BATCH)
        self._results: GroupSender[dict[str, Any], None] = GroupSender(self._call_results, max_batch=MAX_BATCH)

    async def offer(self, offer: Offer, timeout: float) -> Accept | Reject:
        """Group-sent with the other offers queued meanwhile (peer.offers); the claim is per offer."""
        self._offer_timeout = timeout
        answer = await self._offers.send(offer.to_wire(trio.current_time()))
        try:
            return Accept.from_wire(answer) if isinstance(answer, dict) and answer.get("t") == "accept" \
                else Reject.from_wire(answer)
        except (WireError, KeyError, TypeError) as e:
            raise LinkError("invalid", str(e)) from e

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
        if not output:
            await self._send_small_result(result)
            return
        try:
            async with self.client.open("peer.result", {"result": result.to_wire()}, uploads=True,
                                        timeout=RESULT_UPLOAD_TIMEOUT_S) as call:
                for off in range(0, len(output), CHUNK):
                    await call.send_bytes(memoryview(output)[off:off + CHUNK])
                await call.done_sending()
                await call.result()
        except (RpcError, HandshakeError) as e:
            raise LinkError(getattr(e, "code", "unavailable"), str(e)) from e

    async def _send_small_result(self, result: Result) -> None:
        """A result without output, in one peer.results call with every other one queued meanwhile."""
        await self._results.send(result.to_wire())

    async def _call_results(self, items: list[dict[str, Any]]) -> list[None]:
        try:
            try:
                await self.client.call("peer.results", {"results": items}, timeout=RESULT_UPLOAD_TIMEOUT_S)
            except RpcError as e:
                if e.code != "unknown_method":
                    raise
                for item in items:  # a node of an earlier version: one call per result
                    await self.client.call("peer.result", {"result": item}, timeout=RESULT_UPLOAD_TIMEOUT_S)
        except (RpcError, HandshakeError) as e:
            raise LinkError(getattr(e, "code", "unavailable"), str(e)) from e
        return [None] * len(items)

    async def _call_offers(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            try:
                resp = await self.client.call("peer.offers", {"offers": items}, timeout=self._offer_timeout)
                answers = resp.get("answers")
                if not isinstance(answers, list):
                    raise LinkError("invalid", "peer.offers: no list of answers")
                return answers
            except RpcError as e:
                if e.code != "unknown_method":
                    raise
                out = []
                for item in items:  # a node of an earlier version: one call per offer
                    resp = await self.client.call("peer.offer", {"offer": item}, timeout=self._offer_timeout)
                    out.append(resp["answer"])
                return out
        except (RpcError, HandshakeError, KeyError, TypeError) as e:
            raise LinkError(getattr(e, "code", "invalid"), str(e)) from e

    async def progress(self, job_id: str, attempt: int, fraction: float, stage: str) -> None:
        try:
            await self.client.call("peer.progress", {"id": job_id, "attempt": attempt, "fraction": fraction,
                                                     "stage": stage}, timeout=5)
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

    def lease(self, lease_id: str, inbox: CoordinatorInbox) -> LeaseChannel:
        return RemoteLease(self.client, self.peer_id, lease_id, inbox)

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


__all__ = ["CHUNK", "LEASE_INLINE_OUTPUT", "MAX_BATCH", "CoordinatorInbox", "GroupSender", "LeaseChannel",
           "LeaseReplies", "LinkError", "LoopbackLease", "LoopbackLink", "PeerLink", "PeerLinks", "RemoteLease",
           "RemoteLink", "WorkerInbox"]
