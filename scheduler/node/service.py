"""The scheduler's I/O layer: drives the pure coordinator and worker cores over the bigtcp data plane.

Every node is both: a **coordinator** for the jobs clients submit to it and a **worker** for the jobs placed
on it (its own included, without a network hop). The cores decide; this module only carries their actions
out and feeds back what happened:

    client --job.submit--> coordinator --peer.offer--> worker          (claim: the answer is Accept/Reject)
    worker --peer.input--> coordinator                                  (streamed input, from the spool)
    worker --peer.lease--> coordinator                                  (lease renewals, batched per coordinator)
    worker --peer.result--> coordinator (+ output bytes)               (one per attempt; duplicates dropped)
    coordinator --peer.cancel--> worker
    client --job.result / job.status / job.list / job.cancel / job.watch--> coordinator

Inputs larger than the inline limit are spooled by the coordinator (data_dir/spool/) so a re-placed attempt
can fetch them again; outputs are kept (data_dir/results/) until the journal's retention passes.
Who may call what: connections carry a principal (see `Admission`): peers of the mesh may call `peer.*`;
clients present an API token and may call `job.*` within its scopes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from mesh import admission as adm
from mesh import metrics as mesh_metrics
from mesh.advert import DeviceAdvert
from mesh.bigtcp.rpc import Call, MeshClient, RpcError, RpcServer
from mesh.bigtcp.tls import HandshakeError
from mesh.bigtcp.transport import Transport
from mesh.membership import Event, Joined, Left
from scheduler.core.coordinator_core import (
    CoordinatorConfig,
    CoordinatorCore,
    Crashed,
    Deliver,
    Finish,
    JournalAttempt,
    JournalFinish,
    JournalJob,
    SendCancel,
    SendOffer,
    StateChanged,
)
from scheduler.core.job import (
    INLINE_INPUT_LIMIT,
    Accept,
    Cancel,
    Job,
    JobState,
    LeaseRenew,
    Offer,
    Reject,
    Result,
    WireError,
)
from scheduler.core.placement import Placer
from scheduler.core.quota import QuotaExceeded, Quotas
from scheduler.core.worker_core import CancelJob, DeviceLoad, Send, StartJob, WorkerCore
from scheduler.node.journal import Journal
from scheduler.node.tokens import TokenError, TokenRecord, TokenStore
from worker import kinds as kinds_mod
from worker.devices import Device
from worker.executor import JobRequest, Refused

if TYPE_CHECKING:
    from scheduler.node.daemon import Node

log = logging.getLogger("gpumesh.scheduler")

CHUNK = 1 << 20
STARTED_NOTICE_S = 0.05  # a job still running after this long is reported "running" to its coordinator
CAPACITY_LIE_PENALTY = 0.01  # per refused claim that a fresh advert said had room
LOCAL_TOKEN_FILE = "local.token"


# ---- who is calling ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Principal:
    kind: str  # "peer" | "client"
    token: TokenRecord | None = None
    refusal: str = ""  # a client whose token failed: every call answers with this reason

    @property
    def name(self) -> str:
        return self.token.name if self.token else ""


class Admission:
    """The data plane's half of mesh admission, as the transport's hello/authorize hooks.

    A dialing peer proves it holds the mesh key (HMAC over both peer ids) when the mesh has one; a client
    presents an API token instead. Anyone else is refused at connection time and counted.
    """

    def __init__(self, self_id: str, psk: str | None, allow: frozenset[str] | None, tokens: TokenStore) -> None:
        self.self_id, self.psk, self.allow, self.tokens = self_id, psk, allow, tokens

    def hello_extra(self, local_id: str, remote_id: str | None) -> dict[str, Any]:
        if self.psk and remote_id:
            return {"proof": adm.peer_proof(self.psk, local_id, remote_id)}
        return {}

    def authorize(self, peer_id: str, extra: dict[str, Any], outbound: bool) -> Principal:
        if "token" in extra:
            # a client with a bad token stays connected only to be told why on each call: a clear error
            # beats a closed socket, and it can reach nothing else
            try:
                return Principal("client", self.tokens.authenticate(str(extra["token"]), "read"))
            except TokenError as e:
                mesh_metrics.PEERS_REFUSED.labels("client").inc()
                return Principal("client", None, str(e))
        if self.allow is not None and peer_id not in self.allow:
            mesh_metrics.PEERS_REFUSED.labels("dataplane").inc()
            raise HandshakeError("refused", f"peer {peer_id} is not on this mesh's allow list")
        if self.psk and not outbound:
            proof = extra.get("proof")
            if not isinstance(proof, bytes) or not adm.check_peer_proof(self.psk, peer_id, self.self_id, proof):
                mesh_metrics.PEERS_REFUSED.labels("dataplane").inc()
                raise HandshakeError("refused", f"peer {peer_id} did not prove it holds the mesh key")
        return Principal("peer")


def local_token(data_dir: Path, store: TokenStore) -> str:
    """The admin token the node's own user's CLI uses (data_dir/local.token, 0600), created on first start."""
    path = Path(data_dir) / LOCAL_TOKEN_FILE
    if path.exists():
        tok = path.read_text().strip()
        try:
            store.authenticate(tok, "admin")
            return tok
        except TokenError:
            pass  # revoked or lost: make a new one
    for rec in store.records():
        if rec.name == "local-cli" and rec.revoked is None:
            store.revoke(rec.id)
    tok, _ = store.create("local-cli", ["admin"])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tok + "\n")
    return tok


def read_local_token(data_dir: Path) -> str | None:
    try:
        return (Path(data_dir) / LOCAL_TOKEN_FILE).read_text().strip()
    except OSError:
        return None


@functools.lru_cache(maxsize=4096)
def device_of(d: DeviceAdvert) -> Device:
    """A peer's advertised device, as the job kinds' cost models take it."""
    return Device(id=d.id, fingerprint="", platform="", vendor=d.vendor, name=d.name,
                  kind="cpu" if d.kind == "reference" else d.kind, compute_units=d.compute_units,
                  global_mem_bytes=d.global_mem_bytes, max_work_group_size=0, fp64=d.fp64, int64=d.int64,
                  opencl=d.kind != "reference", mulmod_mops=d.mulmod_mops or None, fma_gflops=d.f32_gflops or None)


class JobService:
    """Coordinator + worker of one node, and the RPC methods that reach them."""

    def __init__(self, node: Node, *, coordinator_config: CoordinatorConfig | None = None) -> None:
        self.node = node
        s = node.settings
        self.peer_id = node.identity.peer_id_str
        self.registry = kinds_mod.load_builtin_kinds()
        if "compute.opencl" not in self.registry:
            from worker.compute.kind import register_kind

            register_kind(self.registry)
        from worker.zk import kind as zk_kind

        zk_kind.register(self.registry)
        self.tokens = TokenStore(s.data_dir)
        self.placer = Placer(node.view, cost_fn=self._cost)
        self.core = CoordinatorCore(self.peer_id, node.view, self.placer, coordinator_config or CoordinatorConfig())
        self._verify_limiter = trio.CapacityLimiter(2)  # results verified at once (CPU-bound, in threads)
        self.worker = WorkerCore(self.peer_id, self._load)
        self.executor = node.executor
        self.journal: Journal | None = None
        self.spool = Path(s.data_dir) / "spool"
        self.results_dir = Path(s.data_dir) / "results"
        self.admission = Admission(self.peer_id, node.psk, node.allow, self.tokens)
        host, port = node.data_host_port
        self.rpc = RpcServer()
        self.transport = Transport(node.identity, host=host, port=port, insecure=s.data_plane_insecure,
                                   handler=self.rpc.handle_stream, hello_extra=self.admission.hello_extra,
                                   authorize=self.admission.authorize)
        self._clients: dict[str, MeshClient] = {}
        self._outputs: dict[tuple[str, int], bytes] = {}  # worker side: output of an attempt until sent
        self._received: dict[tuple[str, int], bytes] = {}  # coordinator side: output awaiting the core's verdict
        self._finished: dict[str, trio.Event] = {}
        self._finishing: set[str] = set()  # jobs whose output/journal/waiters are being settled right now
        self._watchers: set[trio.MemorySendChannel] = set()
        self._verifiers: dict[str, Any] = {}
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._journal_pending: list = []
        self._journal_done = trio.Event()
        self._journal_busy = False
        self.quotas = Quotas()
        self._register_methods()
        self.register_verifier("zk.prove", zk_kind.check_remote_proof)
        from worker.render.kind import register as register_render  # render.frame and its spot-check verifier

        register_render(self)

    # ---- wiring -------------------------------------------------------------------------------------------
    def _register_methods(self) -> None:
        for name, fn in [("job.submit", self._m_submit), ("job.result", self._m_result), ("job.status", self._m_status),
                         ("job.list", self._m_list), ("job.cancel", self._m_cancel), ("job.watch", self._m_watch),
                         ("mesh.peers", self._m_peers), ("peer.offer", self._m_offer), ("peer.lease", self._m_lease),
                         ("peer.result", self._m_peer_result), ("peer.cancel", self._m_peer_cancel),
                         ("peer.input", self._m_input)]:
            self.rpc.register(name, fn)

    @property
    def _tasks(self) -> trio.Nursery:
        assert self._nursery is not None, "JobService.run() is not running"
        return self._nursery

    @property
    def _journal(self) -> Journal:
        assert self.journal is not None, "JobService.run() has not opened the journal yet"
        return self.journal

    def register_verifier(self, kind: str, fn) -> None:
        """`fn(job, result, output: bytes, read_input) -> str | None` checks a remote worker's result (None =
        accept); `read_input()` reads a streamed input from the spool (None when the input was inline)."""
        self._verifiers[kind] = fn

    def on_membership(self, ev: Event) -> None:
        if isinstance(ev, Joined) and self._nursery is not None and ev.peer_id != self.peer_id:
            # dial ahead: the first offer's round trip then measures the network, not the TLS handshake
            self._tasks.start_soon(self._warm, ev.peer_id)
        if isinstance(ev, Left) and self._nursery is not None:
            now = trio.current_time()
            if ev.reason != "expired":  # removed (not allowed any more): forget its address too
                self._clients.pop(ev.peer_id, None)
            self._tasks.start_soon(self._execute, self.core.worker_expired(ev.peer_id, now) if ev.reason == "expired"
                                     else self.core.worker_lost(ev.peer_id, now, f"peer {ev.peer_id} left ({ev.reason})"))

    async def _warm(self, peer_id: str) -> None:
        with trio.move_on_after(10):
            try:
                await self._client(peer_id).connection()
            except Exception as e:  # the peer may not listen yet; offers will dial again
                log.debug("pre-dial of %s failed: %s", peer_id, e)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        s = self.node.settings
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.journal = await trio.to_thread.run_sync(lambda: Journal.open_in(s.data_dir))
        await trio.to_thread.run_sync(local_token, s.data_dir, self.tokens)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.transport.serve)
                entries = await trio.to_thread.run_sync(self.journal.load, trio.current_time())
                if entries:
                    log.info("journal: resuming %d job(s)", len(entries))
                await self._execute(self.core.restore(entries, trio.current_time()))
                nursery.start_soon(self._tick_loop)
                task_status.started(self.transport.port)
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self.transport.aclose(timeout=1.0)
            self.journal.close()

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

    def poke(self) -> None:
        self._wake.set()

    async def _tick_loop(self) -> None:
        while True:
            now = trio.current_time()
            wakes = [w for w in (self.core.next_wakeup(), self.worker.next_wakeup()) if w is not None]
            delay = max(0.0, min([now + 0.5, *wakes]) - now)
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            await self._execute(self.core.tick(now))
            await self._execute_worker(self.worker.tick(now))

    # ---- placement inputs ---------------------------------------------------------------------------------
    def _cost(self, job: Job, dev: DeviceAdvert) -> float:
        try:
            kind = self.registry.get(job.kind)
        except kinds_mod.UnknownKind:
            return float("inf")
        return kind.cost_s(job.spec, job.input_size, device_of(dev))

    def _load(self) -> dict[str, DeviceLoad]:
        out = {}
        for c in self.executor.capacity().devices:
            out[c.device_id] = DeviceLoad(c.free_slots, c.queued, c.max_queued, c.slots)
        return out

    async def _on_result(self, peer_id: str, result: Result) -> None:
        """Verify a current result from another peer in a thread (a proof check takes ~0.2 s: never on the
        event loop), then hand result and verdict to the core."""
        job = self.core.expects_result(peer_id, result)
        fn = self._verifiers.get(job.kind) if job is not None else None
        problem = None
        if job is not None and fn is not None and result.ok and peer_id != self.peer_id:
            output = self._received.get((result.job_id, result.attempt), b"")
            spooled = self.spool / _safe(job.job_id)
            read_input = spooled.read_bytes if not job.inline and job.input_size else None
            problem = await trio.to_thread.run_sync(_verify, fn, job, result, output, read_input,
                                                    limiter=self._verify_limiter)
        await self._execute(self.core.on_result(peer_id, result, trio.current_time(), problem))

    # ---- carrying out coordinator actions -----------------------------------------------------------------
    async def _execute(self, actions: list) -> None:
        # a job's output is on disk before the journal says it is done: a coordinator killed in between
        # restarts with the job unfinished (placed again), never "done" with its output lost
        for a in actions:
            if isinstance(a, Finish):
                self._finishing.add(a.job_id)
        for a in actions:
            if isinstance(a, Deliver):
                await self._deliver(a)
        journal = [a for a in actions if isinstance(a, JournalJob | JournalAttempt | JournalFinish)]
        if journal:
            await self._journal_commit(journal)
        for a in actions:
            if isinstance(a, SendOffer):
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
                                 "attempt": a.attempt, "peer": a.peer_id})

    async def _offer(self, a: SendOffer) -> None:
        now = trio.current_time()
        if a.peer_id == self.peer_id:
            answer = await self._local_offer(a.offer)
        else:
            try:
                resp = await self._client(a.peer_id).call("peer.offer", {"offer": a.offer.to_wire(now)},
                                                          timeout=self.core.cfg.claim_timeout_s)
                answer = Accept.from_wire(resp["answer"]) if resp["answer"].get("t") == "accept" \
                    else Reject.from_wire(resp["answer"])
            except (RpcError, WireError, KeyError, TypeError, HandshakeError) as e:
                log.info("offer of %s to %s failed: %s", a.offer.job.job_id, a.peer_id, e)
                await self._execute(self.core.worker_lost(a.peer_id, trio.current_time(), f"offer failed: {e}"))
                return
        now = trio.current_time()
        if isinstance(answer, Accept):
            await self._execute(self.core.on_accept(a.peer_id, answer, now))
        else:
            self._check_capacity_claim(a.peer_id, answer, now)
            await self._execute(self.core.on_reject(a.peer_id, answer, now))

    def _check_capacity_claim(self, peer_id: str, answer: Reject, now: float) -> None:
        """A worker whose fresh advert shows free slots but whose claims keep finding none is lying about its
        capacity (to attract work, or to look big): each such refusal costs a little standing."""
        st = self.node.view.get(peer_id)
        if st is None or peer_id == self.peer_id or now - st.last_seen > st.advert.interval_s:
            return
        advertised = sum(d.free_slots for d in st.advert.devices)
        actual = sum(v[0] for v in answer.load.values()) if answer.load else None
        if advertised > 0 and actual == 0 and "share" not in answer.reason and "rate" not in answer.reason:
            self.node.view.adjust_standing(peer_id, -CAPACITY_LIE_PENALTY)
            mesh_metrics.ADVERT_LIES.labels("capacity").inc()

    async def _send_cancel(self, a: SendCancel) -> None:
        if a.peer_id == self.peer_id:
            await self._execute_worker(self.worker.on_cancel(self.peer_id, a.cancel, trio.current_time()))
            return
        try:
            await self._client(a.peer_id).call("peer.cancel", {"cancel": a.cancel.to_wire()}, timeout=5)
        except (RpcError, HandshakeError) as e:
            log.debug("cancel to %s: %s", a.peer_id, e)

    async def _deliver(self, a: Deliver) -> None:
        key = (a.job_id, a.result.attempt)
        output = self._received.pop(key, None)
        if output is None:
            output = self._outputs.pop(key, b"")
        if output:
            await trio.to_thread.run_sync(_write_atomically, self.results_dir / _safe(a.job_id), output)

    def _on_finish(self, a: Finish) -> None:
        self._finishing.discard(a.job_id)
        rec = self.core.get(a.job_id)
        if rec is not None:
            run_s = float(a.result.timings.get("run_s", 0.0)) if a.result is not None else 0.0
            self.quotas.finished(rec.job.submitted_by, a.job_id, run_s, trio.current_time())
        ev = self._finished.pop(a.job_id, None)
        if ev is not None:
            ev.set()
        self._broadcast({"id": a.job_id, "kind": rec.job.kind if rec else "", "state": a.state.value,
                         "reason": a.reason, "final": True})
        spooled = self.spool / _safe(a.job_id)
        spooled.unlink(missing_ok=True)
        # drop outputs of attempts that were not delivered
        for k in [k for k in self._received if k[0] == a.job_id]:
            del self._received[k]

    def _broadcast(self, item: dict[str, Any]) -> None:
        for ch in list(self._watchers):
            try:
                ch.send_nowait(item)
            except trio.WouldBlock:
                pass  # a slow watcher misses progress; the final state is always in job.status
            except trio.ClosedResourceError:
                self._watchers.discard(ch)

    def _client(self, peer_id: str) -> MeshClient:
        c = self._clients.get(peer_id)
        peer = self.node.view.get(peer_id)
        if peer is None and c is not None:
            # its adverts are late (gossip under load) or stopped: the last address it gave still serves the
            # jobs under way with it (lease renewals, results); its connection failing is what says it is gone
            return c
        if peer is None or not peer.advert.data_addr:
            raise RpcError("unavailable", f"peer {peer_id} is not in this node's view")
        host, _, port = peer.advert.data_addr.rpartition(":")
        if c is None or (c.host, c.port) != (host, int(port)):
            c = self._clients[peer_id] = MeshClient(self.transport, host, int(port), peer_id)
        return c

    # ---- carrying out worker actions ----------------------------------------------------------------------
    async def _local_offer(self, offer: Offer) -> Accept | Reject:
        acts = self.worker.on_offer(self.peer_id, offer, trio.current_time())
        answer = await self._execute_worker(acts, answer_to=self.peer_id)
        assert answer is not None, "the worker core answers every offer"
        return answer

    async def _execute_worker(self, actions: list, answer_to: str | None = None) -> Accept | Reject | None:
        answer = None
        for a in actions:
            if isinstance(a, Send):
                if answer_to is not None and a.peer_id == answer_to and isinstance(a.message, Accept | Reject):
                    answer = a.message
                else:
                    self._tasks.start_soon(self._worker_send, a)
            elif isinstance(a, StartJob):
                self._tasks.start_soon(self._run_job, a)
            elif isinstance(a, CancelJob):
                self.executor.cancel(_exec_id(a.job_id, a.attempt), a.reason)
        return answer

    async def _worker_send(self, a: Send) -> None:
        msg, now = a.message, trio.current_time()
        if a.peer_id == self.peer_id:  # our own coordinator
            if isinstance(msg, LeaseRenew):
                await self._execute(self.core.on_lease(self.peer_id, msg, now))
            elif isinstance(msg, Result):
                self._outputs_to_received(msg)
                await self._execute(self.core.on_result(self.peer_id, msg, now))
            return
        try:
            client = self._client(a.peer_id)
            if isinstance(msg, LeaseRenew):
                await client.call("peer.lease", {"renew": msg.to_wire()}, timeout=10)
            elif isinstance(msg, Result):
                output = self._outputs.pop((msg.job_id, msg.attempt), b"")
                async with client.open("peer.result", {"result": msg.to_wire()}, uploads=True, timeout=300) as call:
                    for off in range(0, len(output), CHUNK):
                        await call.send_bytes(memoryview(output)[off:off + CHUNK])
                    await call.done_sending()
                    await call.result()
        except (RpcError, HandshakeError) as e:
            log.info("coordinator %s unreachable (%s): cancelling its jobs here", a.peer_id, e)
            await self._execute_worker(self.worker.coordinator_lost(a.peer_id, trio.current_time()))

    def _outputs_to_received(self, result: Result) -> None:
        key = (result.job_id, result.attempt)
        if key in self._outputs:
            self._received[key] = self._outputs.pop(key)

    async def _input_stream(self, job: Job, coordinator: str) -> AsyncIterator[bytes]:
        if coordinator == self.peer_id:
            async with await trio.open_file(self.spool / _safe(job.job_id), "rb") as f:
                while chunk := await f.read(CHUNK):
                    yield chunk
            return
        async with self._client(coordinator).open("peer.input", {"id": job.job_id}, timeout=3600) as call:
            async for item in call:
                if isinstance(item, bytes | bytearray):
                    yield bytes(item)
            await call.result()

    async def _run_job(self, a: StartJob) -> None:
        job, attempt = a.job, a.attempt
        now = trio.current_time()
        if not self.worker.holds(job.job_id, attempt):
            return
        if job.inline or job.input_size == 0:
            source: Any = job.input or b""
        else:
            source = self._input_stream(job, a.coordinator)
        try:
            req = JobRequest(job_id=_exec_id(job.job_id, attempt), kind=job.kind, spec=job.spec, input=source,
                             input_size=job.input_size, priority=job.priority.value, deadline=job.deadline,
                             device_id=a.device_id, timeout_s=job.timeout_s)
            handle = self.executor.submit(req)
        except (Refused, ValueError, kinds_mod.UnknownKind) as e:
            await self._execute_worker(self.worker.failed_to_start(job.job_id, attempt, str(e), now))
            return
        await self._execute_worker(self.worker.enqueued(job.job_id, attempt, trio.current_time()))
        async with trio.open_nursery() as n:
            n.start_soon(self._report_start, handle, job.job_id, attempt)
            outcome = await handle.wait()
            n.cancel_scope.cancel()
        output = (outcome.result.output if outcome.result is not None else None) or b""
        retryable = outcome.state == "cancelled" and "device" in (outcome.error or "")
        result = Result(job.job_id, attempt, ok=outcome.ok, body=outcome.result.body if outcome.result else {},
                        error=outcome.error or "", retryable=retryable, output_size=len(output),
                        output_sha256=hashlib.sha256(output).hexdigest() if output else "",
                        worker=self.peer_id, device=outcome.device_id,
                        timings={"queue_s": outcome.queued_s, "run_s": outcome.run_s},
                        crashed=outcome.state == "crashed")
        if output:
            self._outputs[(job.job_id, attempt)] = bytes(output)
        await self._execute_worker(self.worker.finished(job.job_id, attempt, result, trio.current_time()))

    async def _report_start(self, handle, job_id: str, attempt: int) -> None:
        """Tell the coordinator a job runs, unless it is over within STARTED_NOTICE_S: for short jobs the
        result says it (one RPC less per job; the task is cancelled when the job ends)."""
        await handle.started.wait()
        await trio.sleep(STARTED_NOTICE_S)
        await self._execute_worker(self.worker.started(job_id, attempt, trio.current_time()))

    # ---- RPC methods: clients -----------------------------------------------------------------------------
    def _require(self, call: Call, scope: str) -> Principal:
        p: Principal | None = call.principal
        if p is None or p.kind != "client" or p.token is None:
            raise RpcError("unauthenticated", (p.refusal if p is not None and p.refusal else
                                               "this method needs an API token (mesh-node token create)"))
        try:
            self.tokens.check(p.token, scope)
        except TokenError as e:
            raise RpcError("forbidden", str(e)) from None
        return p

    async def _m_submit(self, call: Call) -> dict[str, Any]:
        now = trio.current_time()
        try:
            job = Job.from_wire(call.body.get("job"), now).validate().with_id()
        except WireError as e:
            raise RpcError("invalid", str(e)) from None
        try:
            kind = self.registry.get(job.kind)
        except kinds_mod.UnknownKind as e:
            raise RpcError("unknown_kind", str(e)) from None
        scope = "compute" if job.kind.startswith("compute.") else "submit"
        p = self._require(call, scope)
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
        existing = self.core.get(job.job_id)
        if existing is None:
            try:
                self.quotas.admit_submit(p.name, job.job_id, now, exempt=p.token is not None and "admin" in p.token.scopes)
            except QuotaExceeded as e:
                raise RpcError("quota", str(e)) from None
        if not job.inline and job.input_size > 0 and existing is None:
            try:
                await self._receive_input(call, job)
            except BaseException:
                self.quotas.finished(p.name, job.job_id, 0.0, now)
                raise
        answer, acts = self.core.submit(job, now)
        if not answer.accepted and existing is None:
            self.quotas.finished(p.name, job.job_id, 0.0, now)
        await self._execute(acts)
        out = {"id": answer.job_id, "accepted": answer.accepted, "state": answer.state.value if answer.state else "",
               "position": answer.position, "message": answer.message(), "code": answer.code,
               "duplicate": answer.duplicate}
        if call.body.get("wait") is True and answer.accepted:  # submit and result in one round trip
            out["outcome"] = await self._outcome(call, answer.job_id, wait=True)
        return out

    async def _receive_input(self, call: Call, job: Job) -> None:
        path = self.spool / _safe(job.job_id)
        tmp = path.with_suffix(".part")
        h, n = hashlib.sha256(), 0
        try:
            async with await trio.open_file(tmp, "wb") as f:
                async for item in call:
                    if not isinstance(item, bytes | bytearray):
                        continue
                    n += len(item)
                    if n > job.input_size:
                        raise RpcError("bad_input", f"input is longer than its declared {job.input_size} bytes")
                    h.update(item)
                    await f.write(item)
            if n != job.input_size:
                raise RpcError("bad_input", f"input ended after {n} of {job.input_size} bytes")
            if h.hexdigest() != job.input_sha256:
                raise RpcError("bad_input", "input does not match its sha256")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    async def _m_status(self, call: Call) -> dict[str, Any]:
        self._require(call, "read")
        job_id = str(call.body.get("id", ""))
        rec = self.core.get(job_id)
        if rec is not None:
            return rec.summary()
        entry = await trio.to_thread.run_sync(self._journal.get, job_id, trio.current_time())
        if entry is None:
            raise RpcError("not_found", f"no job {job_id!r} on this node (wrong node, or finished too long ago)")
        return {"id": job_id, "kind": entry.job.kind, "state": JobState(entry.state).value, "reason": entry.reason,
                "attempt": entry.attempt, "failures": entry.failures, "ok": entry.result.ok if entry.result else None}

    async def _m_list(self, call: Call) -> dict[str, Any]:
        self._require(call, "read")
        limit = int(call.body.get("limit", 200))
        recs = sorted(self.core.jobs(), key=lambda r: r.submitted_at, reverse=True)[:limit]
        return {"jobs": [r.summary() for r in recs]}

    async def _m_cancel(self, call: Call) -> dict[str, Any]:
        self._require(call, "submit")
        job_id = str(call.body.get("id", ""))
        rec, acts = self.core.cancel(job_id, trio.current_time())
        if rec is None:
            raise RpcError("not_found", f"no active job {job_id!r} on this node")
        await self._execute(acts)
        return rec.summary()

    async def _m_result(self, call: Call) -> dict[str, Any]:
        """Wait (if asked) for the job's outcome; stream its output bytes, then the result as the response."""
        self._require(call, "read")
        return await self._outcome(call, str(call.body.get("id", "")), wait=bool(call.body.get("wait", True)))

    async def _outcome(self, call: Call, job_id: str, wait: bool) -> dict[str, Any]:
        """The job's outcome (waiting for it if asked), its output bytes streamed on `call` first."""
        rec = self.core.get(job_id)
        # the core flips a job to done before its output and journal record are on disk: wait for its Finish
        # action, which comes after both (a job restored as finished from the journal is settled already)
        if rec is not None and wait and (not rec.state.terminal or rec.job_id in self._finishing):
            ev = self._finished.setdefault(job_id, trio.Event())
            await ev.wait()
            rec = self.core.get(job_id)
        if rec is None:
            entry = await trio.to_thread.run_sync(self._journal.get, job_id, trio.current_time())
            if entry is None:
                raise RpcError("not_found", f"no job {job_id!r} on this node")
            state, reason, result = JobState(entry.state), entry.reason, entry.result
        else:
            state, reason, result = rec.state, rec.reason, rec.result
        if not state.terminal:
            return {"id": job_id, "state": state.value, "reason": reason, "final": False}
        path = self.results_dir / _safe(job_id)
        if result is not None and result.output_size and path.exists():
            async with await trio.open_file(path, "rb") as f:
                while chunk := await f.read(CHUNK):
                    await call.send_bytes(chunk)
        return {"id": job_id, "state": state.value, "reason": reason, "final": True,
                "result": result.to_wire() if result is not None else None}

    async def _m_watch(self, call: Call) -> dict[str, Any]:
        self._require(call, "read")
        send, recv = trio.open_memory_channel(1024)
        self._watchers.add(send)
        try:
            async for item in recv:
                await call.send(item)
        finally:
            self._watchers.discard(send)
        return {}

    async def _m_peers(self, call: Call) -> dict[str, Any]:
        self._require(call, "read")
        return {"peers": await self.node._c_peers({})}

    # ---- RPC methods: peers -------------------------------------------------------------------------------
    def _peer(self, call: Call) -> str:
        p: Principal | None = call.principal
        if p is None or p.kind != "peer":
            raise RpcError("forbidden", "peer methods are for nodes of this mesh")
        return call.peer_id

    async def _m_offer(self, call: Call) -> dict[str, Any]:
        peer = self._peer(call)
        try:
            offer = Offer.from_wire(call.body.get("offer"), trio.current_time())
        except WireError as e:
            raise RpcError("invalid", str(e)) from None
        now = trio.current_time()
        refusal = ""
        if not self.quotas.admit_offer(peer, now):
            refusal = "rate limited: too many offers from this coordinator"
        elif self._remote_held() >= self._remote_slots():
            refusal = f"this node lends at most {self.node.settings.share:.0%} of its slots to the mesh (--share)"
        if refusal:
            return {"answer": Reject(offer.job.job_id, offer.attempt, refusal, self.worker.current_load()).to_wire()}
        if peer not in self.node.view:  # only nodes that gossip with us may place work here
            reject = Reject(offer.job.job_id, offer.attempt, "unknown coordinator: not in this node's view yet",
                            self.worker.current_load())
            return {"answer": reject.to_wire()}
        answer = await self._execute_worker(self.worker.on_offer(peer, offer, trio.current_time()), answer_to=peer)
        if answer is None:
            raise RpcError("internal", "worker core gave no answer to an offer")
        return {"answer": answer.to_wire()}

    def _remote_held(self) -> int:
        return sum(1 for h in self.worker.held() if h.coordinator != self.peer_id)

    def _remote_slots(self) -> int:
        """How many jobs of other coordinators this node runs at once: --share of its slots."""
        slots = self.executor.capacity().slots
        return int(slots * self.node.settings.share + 1e-9) if self.node.settings.share < 1.0 else slots * 1_000_000

    async def _m_lease(self, call: Call) -> dict[str, Any]:
        peer = self._peer(call)
        try:
            msg = LeaseRenew.from_wire(call.body.get("renew"))
        except WireError as e:
            raise RpcError("invalid", str(e)) from None
        await self._execute(self.core.on_lease(peer, msg, trio.current_time()))
        return {}

    async def _m_peer_result(self, call: Call) -> dict[str, Any]:
        peer = self._peer(call)
        try:
            result = Result.from_wire(call.body.get("result"))
        except WireError as e:
            raise RpcError("invalid", str(e)) from None
        chunks, n = [], 0
        async for item in call:
            if isinstance(item, bytes | bytearray):
                n += len(item)
                if n > max(result.output_size, 0):
                    raise RpcError("bad_output", "output longer than the result declares")
                chunks.append(bytes(item))
        output = b"".join(chunks)
        if len(output) != result.output_size or (output and hashlib.sha256(output).hexdigest() != result.output_sha256):
            raise RpcError("bad_output", "output does not match the result's size and sha256")
        if output:
            self._received[(result.job_id, result.attempt)] = output
        await self._on_result(peer, result)
        return {}

    async def _m_peer_cancel(self, call: Call) -> dict[str, Any]:
        peer = self._peer(call)
        try:
            msg = Cancel.from_wire(call.body.get("cancel"))
        except WireError as e:
            raise RpcError("invalid", str(e)) from None
        await self._execute_worker(self.worker.on_cancel(peer, msg, trio.current_time()))
        return {}

    async def _m_input(self, call: Call) -> dict[str, Any]:
        peer = self._peer(call)
        job_id = str(call.body.get("id", ""))
        rec = self.core.get(job_id)
        if rec is None or rec.peer != peer:
            raise RpcError("forbidden", f"job {job_id!r} is not placed on {peer}")
        path = self.spool / _safe(job_id)
        if not path.exists():
            raise RpcError("not_found", f"input of {job_id!r} is gone")
        async with await trio.open_file(path, "rb") as f:
            while chunk := await f.read(CHUNK):
                await call.send_bytes(chunk)
        return {}


def _exec_id(job_id: str, attempt: int) -> str:
    return f"{job_id}#{attempt}"


def _safe(job_id: str) -> str:
    """A file name for a job id (ids are [A-Za-z0-9._:-]; ':' is fine on Linux, '/' cannot occur)."""
    return hashlib.sha256(job_id.encode()).hexdigest()[:32]


__all__ = ["Admission", "JobService", "Principal", "local_token", "read_local_token", "INLINE_INPUT_LIMIT"]


def _verify(fn, job: Job, result: Result, output: bytes, read_input) -> str | None:
    try:
        return fn(job, result, output, read_input)
    except Exception as e:  # a verifier crash rejects the result rather than the node
        log.exception("verifier for %s failed", job.kind)
        return f"verification error: {e}"


def _write_atomically(path: Path, data: bytes) -> None:
    """Whole or absent, never half written (a kill -9 mid-write leaves only the temporary file)."""
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
