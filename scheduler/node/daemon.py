"""The composition root: builds a node from its settings and runs every part in one nursery.

The one place that imports mesh/, worker/ and scheduler/ together. Each background task is owned by the
node's nursery and stops when it is cancelled (SIGINT/SIGTERM or the caller).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from mesh import __version__, control, metrics, metrics_http
from mesh.admission import read_allow_list, read_mesh_key
from mesh.advert import Advert, DeviceAdvert
from mesh.bigtcp.framing import TransportError
from mesh.bigtcp.limits import give_back_memory
from mesh.bigtcp.rpc import Call, MeshClient, RpcError, RpcServer
from mesh.bigtcp.tls import HandshakeError
from mesh.bigtcp.transport import Transport
from mesh.gossip import GossipConfig, GossipService
from mesh.identity import Identity, load_or_create
from mesh.membership import Event
from scheduler.core.coordinator_core import CoordinatorConfig
from scheduler.core.placement import TrackedView
from scheduler.core.quota import Quotas
from scheduler.node import endpoints, tenancy
from scheduler.node.admission import Admission, local_token
from scheduler.node.client_api import ClientAPI, describe_peers
from scheduler.node.config import NodeSettings, has_port, parse_hostport
from scheduler.node.coordinator_io import CoordinatorIO, Verifier
from scheduler.node.endpoints import BindError, Endpoints, binding
from scheduler.node.files import make_private
from scheduler.node.job_lease import LeaseWorker
from scheduler.node.jobview import JobView
from scheduler.node.lease_gateway import LeaseGateway
from scheduler.node.links import LoopbackLink, PeerLinks
from scheduler.node.peer_api import PeerAPI
from scheduler.node.session_io import RenderSessions
from scheduler.node.tokens import TokenStore
from scheduler.node.worker_io import WorkerIO
from worker import calibration, kinds_basic
from worker import devices as worker_devices
from worker.compute import kind as compute_kind
from worker.devices import Device, DeviceWatcher, DiscoveryResult
from worker.executor import Executor
from worker.kinds import KindFamily, KindRegistry
from worker.render import kind as render_kind
from worker.runner import RunnerPool, RunnerSettings
from worker.zk import kind as zk_kind

log = logging.getLogger("gpumesh.node")

MEMORY_TRIM_S = 15.0

# every job kind a node offers, with the verifiers its coordinator runs on remote results
KIND_FAMILIES: tuple[KindFamily, ...] = (kinds_basic.FAMILY, compute_kind.FAMILY, zk_kind.FAMILY, render_kind.FAMILY)


def job_kinds(families: tuple[KindFamily, ...] = KIND_FAMILIES) -> tuple[KindRegistry, dict[str, Verifier]]:
    registry = KindRegistry()
    verifiers: dict[str, Verifier] = {}
    for family in families:
        family.register(registry, verifiers)
    return registry, verifiers


@dataclass
class Node:
    settings: NodeSettings
    identity: Identity = field(init=False)
    view: TrackedView = field(init=False)
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        make_private(self.settings.data_dir)
        self.identity, created = load_or_create(self.settings.data_dir)
        if created:
            log.info("created identity %s in %s", self.identity.peer_id_str, self.settings.data_dir)
        self.psk = read_mesh_key(self.settings.mesh_key_file) if self.settings.mesh_key_file else None
        self.allow = read_allow_list(self.settings.allow_peers) if self.settings.allow_peers else None
        allow = self.allow
        admit = allow.__contains__ if allow is not None else None
        # (x 1.1: a refresh may come up to its jitter later than the interval it announced)
        s = self.settings
        self.view = TrackedView(self.identity.peer_id_str, s.ttl_s, admit=admit, ttl_intervals=s.ttl_intervals,
                                max_ttl_s=s.ttl_intervals * s.advert_max_interval * 1.1)
        self.devices: tuple[Device, ...] = ()
        self.device_problem: str | None = None
        self.watcher: DeviceWatcher | None = None
        self.gossip: GossipService | None = None
        self.metrics_port: int | None = None
        self.metrics_addr: str | None = None  # HOST:PORT bound, None with --metrics-listen off
        self.control_path = ""
        self.data_addr = ""
        self.ready = trio.Event()
        self._event_listeners: list = []
        self.registry, verifiers = job_kinds()
        runner_settings = RunnerSettings()
        if self.settings.runner_memory_mb:
            runner_settings.memory_bytes = self.settings.runner_memory_mb << 20
        # device code runs in runner processes (worker.runner): a crashing kernel takes down a runner, not the node
        self.runners = RunnerPool(runner_settings)
        self.executor = Executor((), slots=self.settings.slots_per_device, max_queued=self.settings.max_queue,
                                 registry=self.registry, on_change=self._capacity_changed, runners=self.runners)
        self.labels: dict[str, str] = {}
        self.data_host_port = parse_hostport(self.settings.data_listen, "data-listen")
        self._data_host = self.data_host_port[0]
        # the data plane: one transport and RPC server; the coordinator and worker halves reach peers (and each
        # other, through the loopback link) only over peer links
        s, peer_id = self.settings, self.identity.peer_id_str
        self.tokens = TokenStore(s.data_dir)
        self.quotas = Quotas()
        self.admission = Admission(peer_id, self.psk, self.allow, self.tokens)
        self.rpc = RpcServer(limit_key=tenancy.call_limit_key, max_calls=s.max_client_calls)
        self.transport = Transport(self.identity, host=self.data_host_port[0], port=self.data_host_port[1],
                                   insecure=s.data_plane_insecure, handler=self.rpc.handle_stream,
                                   hello_extra=self.admission.hello_extra, authorize=self.admission.authorize,
                                   stall_timeout=s.stall_timeout)
        self.links = PeerLinks(peer_id, self.transport, self.view)
        self.coordinator = CoordinatorIO(peer_id, self.view, self.links, registry=self.registry, verifiers=verifiers,
                                         quotas=self.quotas, data_dir=s.data_dir, config=CoordinatorConfig())
        self.worker = WorkerIO(peer_id, self.view, self.links, self.executor, quotas=self.quotas, share=s.share)
        self.links.set_loopback(LoopbackLink(peer_id, self.coordinator, self.worker))
        PeerAPI(self.coordinator, self.worker).register(self.rpc)
        client_api = ClientAPI(self.coordinator, registry=self.registry, tokens=self.tokens, quotas=self.quotas,
                               peers=lambda: describe_peers(self.view, peer_id))
        client_api.register(self.rpc)
        # render.session / peer.render_session: real-time render sessions on held streams
        RenderSessions(peer_id, self.view, self.links, self.executor, require=client_api.require).register(self.rpc)
        # job.status / list / cancel / result / watch: for any job of the mesh, through any node
        JobView(client_api, self.coordinator, self.links, self.view).register(self.rpc)
        # job.lease / peer.job_lease / lease.run: a client's jobs straight to the worker slots it holds
        self.leases = LeaseWorker(peer_id, self.executor, self.registry, may_lend=self._may_lend)
        self.leases.register(self.rpc)
        self.worker.leased_out = self.leases.remote_slots
        LeaseGateway(peer_id, worker=self.leases, links=self.links, placer=self.coordinator.placer, view=self.view,
                     registry=self.registry, quotas=self.quotas, require=client_api.require).register(self.rpc)
        self.rpc.register("peer.hello", self._peer_hello)
        self._event_listeners.append(self.coordinator.on_membership)

    def _may_lend(self, gateway: str, slots: int) -> int:
        """How many of `slots` this node leases to `gateway`'s client now: all for its own clients; for another
        node's, what --share leaves after the jobs and leases it already lends, if the node is in the view and
        within its offer rate (a lease is claimed as an offer is)."""
        if gateway == self.identity.peer_id_str:
            return slots
        if gateway not in self.view or not self.quotas.admit_offer(gateway, trio.current_time()):
            return 0
        return max(0, min(slots, self.worker.lendable()))

    # ---- state that goes into the advert ---------------------------------------------------------------
    def snapshot(self) -> Advert:
        """This node's advert content: every device the executor runs jobs on, with its live load."""
        cap = {c.device_id: c for c in self.executor.capacity().devices}
        devs = []
        for d in self.executor.devices:
            c = cap[d.id]
            devs.append(DeviceAdvert(
                id=d.id, kind="reference" if not d.opencl else d.kind, vendor=d.vendor, name=d.name,
                compute_units=d.compute_units, global_mem_bytes=d.global_mem_bytes, fp64=d.fp64, int64=d.int64,
                mulmod_mops=float(d.mulmod_mops or 0.0), f32_gflops=float(d.f32_gflops or 0.0),
                slots=c.slots, free_slots=c.free_slots, queue_depth=c.queued,
                max_work_group_size=d.max_work_group_size if d.opencl else 0,
                max_work_item_sizes=tuple(d.max_work_item_sizes), max_alloc_bytes=d.max_alloc_bytes,
                local_mem_bytes=d.local_mem_bytes, opencl_version=d.opencl_version,
                non_uniform_work_groups=d.non_uniform_work_groups))
        return Advert(peer_id="", public_key=b"", seq=0, timestamp=0.0, data_addr=self.data_addr,
                      devices=tuple(devs), software=f"gpumesh/{__version__}", labels=dict(self.labels))

    def _capacity_changed(self) -> None:
        if self.gossip is not None:
            self.gossip.changed()

    def _on_event(self, ev: Event) -> None:
        self._update_mesh_gauges()
        for fn in self._event_listeners:
            fn(ev)

    def _update_mesh_gauges(self) -> None:
        by_kind: dict[str, int] = {}
        free: dict[str, int] = {}
        for p in self.view.peers():
            for d in p.devices():
                by_kind[d.kind] = by_kind.get(d.kind, 0) + 1
                free[d.kind] = free.get(d.kind, 0) + d.free_slots
        for kind in ("gpu", "cpu", "accelerator"):
            metrics.MESH_DEVICES.labels(kind).set(by_kind.get(kind, 0))
            metrics.MESH_FREE_SLOTS.labels(kind).set(free.get(kind, 0))
        known = {p.peer_id for p in self.view.peers(include_self=False)}
        for pid in known:
            metrics.PEER_STANDING.labels(pid).set(self.view.standing(pid))
        metrics.reset_peer_labels(known)

    # ---- devices ---------------------------------------------------------------------------------------
    async def _set_devices(self, result: DiscoveryResult) -> None:
        """Calibrate (cached per device fingerprint in the data dir) and offer the discovered devices."""
        outcome = await calibration.calibrate(result.devices, self.settings.data_dir)
        for dev_id, reason in outcome.failed.items():
            log.error("device %s not offered: %s", dev_id, reason)
        self.devices = outcome.devices
        # --devices none: a gateway that coordinates but runs nothing; no OpenCL at all: the CPU reference path
        self.executor.set_devices(self.devices, reference_fallback=self.settings.devices.strip() != "none")
        self.device_problem = result.problem
        if result.problem:
            log.warning("no compute devices: %s", result.problem)
        worker_devices.publish_metrics(self.devices, result.problem)
        if self.gossip is not None:
            self.gossip.changed()

    # ---- control endpoint ------------------------------------------------------------------------------
    async def _c_status(self, _p: dict[str, Any]) -> dict[str, Any]:
        return {"peer_id": self.identity.peer_id_str, "version": __version__,
                "uptime_s": time.time() - self.started_at, "peers": len(self.view.peers(include_self=False)),
                "devices": len(self.devices), "device_problem": self.device_problem,
                "addrs": self.gossip.addrs if self.gossip else [], "data_addr": self.data_addr,
                "metrics_port": self.metrics_port, "insecure": self.settings.data_plane_insecure,
                "gossip": self.gossip.stats() if self.gossip else {},
                "listening": self.endpoints().to_dict()}

    def endpoints(self) -> Endpoints:
        """What every listener actually bound (port 0 resolved by the kernel)."""
        return Endpoints(pid=os.getpid(), peer_id=self.identity.peer_id_str,
                         libp2p=list(self.gossip.addrs) if self.gossip else [],
                         data=self.transport.address, data_addr=self.data_addr, metrics=self.metrics_addr,
                         control=self.control_path)

    async def _c_peers(self, _p: dict[str, Any]) -> list[dict[str, Any]]:
        return describe_peers(self.view, self.identity.peer_id_str)

    async def _c_devices(self, _p: dict[str, Any]) -> dict[str, Any]:
        return {"devices": [d.to_dict() for d in self.devices], "problem": self.device_problem}

    async def _c_label(self, p: dict[str, Any]) -> dict[str, str]:
        """Operator labels (e.g. zone=rack1) travel in the advert; a change is published at once."""
        for k, v in (p.get("set") or {}).items():
            if not (isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 64 and len(v) <= 256):
                raise ValueError("labels are KEY=VALUE strings (key 1..64 chars, value up to 256)")
            self.labels[k] = v
        for k in p.get("unset") or []:
            self.labels.pop(k, None)
        if len(self.labels) > 32:
            raise ValueError("at most 32 labels")
        if self.gossip is not None:
            self.gossip.changed()
        return dict(self.labels)

    async def _c_runners(self, _p: dict[str, Any]) -> list[dict[str, Any]]:
        """The runner processes (worker.runner): pid, device, whether leased, and what their sandbox holds."""
        return self.runners.status()

    def control_methods(self) -> dict[str, Any]:
        return {"status": self._c_status, "peers": self._c_peers, "devices": self._c_devices,
                "label": self._c_label, "runners": self._c_runners}

    def _set_data_addr(self, data_port: int) -> None:
        host = self._advertised_host()
        self.data_addr = host if has_port(host) else f"{host}:{data_port}"

    def _advertised_host(self) -> str:
        """Where peers should dial our data plane: --advertise-host (HOST or HOST:PORT), the bound host, or our
        libp2p address."""
        if self.settings.advertise_host:
            return self.settings.advertise_host
        if self._data_host not in ("0.0.0.0", "::", ""):
            return self._data_host
        ips = [a.split("/")[2] for a in (self.gossip.addrs if self.gossip else []) if a.startswith("/ip4/")]
        public = [ip for ip in ips if not ip.startswith("127.")]
        return (public or ips or ["127.0.0.1"])[0]

    async def _give_back_memory(self) -> None:
        """Every MEMORY_TRIM_S, hand freed heap back to the kernel (a burst does not stay with the node)."""
        while True:
            await trio.sleep(MEMORY_TRIM_S)
            await trio.to_thread.run_sync(give_back_memory)

    # ---- run -------------------------------------------------------------------------------------------
    async def _run_data_plane(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Journal, local token, transport, then the coordinator (resuming its journal) and worker halves."""
        await self.coordinator.open()
        await trio.to_thread.run_sync(local_token, self.settings.data_dir, self.tokens)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.transport.serve)
                await nursery.start(self.worker.run)
                await nursery.start(self.coordinator.run)
                task_status.started(self.transport.port)
        finally:
            with trio.CancelScope(shield=True):
                await self.transport.aclose(timeout=1.0)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        initial = await trio.to_thread.run_sync(lambda: worker_devices.discover(s.devices, strict=True))
        for w in initial.warnings:
            log.info("devices: %s", w)
        await self._set_devices(initial)
        self.watcher = DeviceWatcher(s.devices, s.rescan_interval, initial=initial,
                                     on_change=self._set_devices)
        self.gossip = GossipService(
            self.identity,
            GossipConfig(listen=list(s.listen), bootstrap=list(s.bootstrap), mdns=s.mdns,
                         interval_s=s.advert_interval, max_interval_s=s.advert_max_interval, psk=self.psk),
            self.view, self.snapshot, on_event=self._on_event, admit=self.view.admit)
        for addr in s.listen:  # py-libp2p shares a busy port (SO_REUSEPORT): refuse it here instead
            host, port = _tcp_of_multiaddr(addr)
            if host is not None:
                endpoints.check_tcp_free(host, port, "--listen", addr)
        endpoints.remove(s.data_dir)  # a file left by a node killed -9 must not be taken for ours
        try:
            async with trio.open_nursery() as nursery:
                await self._start_listeners(nursery)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            endpoints.remove(s.data_dir, os.getpid())

    async def _start_listeners(self, nursery: trio.Nursery) -> None:
        """Start every part; once every listener is up, write the endpoints file."""
        s = self.settings
        assert self.gossip is not None and self.watcher is not None
        if s.metrics_listen != "off":
            mhost, mport = parse_hostport(s.metrics_listen, "metrics-listen")
            with binding("--metrics-listen", s.metrics_listen):
                self.metrics_port = await nursery.start(metrics_http.serve, mhost, mport)
            self.metrics_addr = f"{mhost}:{self.metrics_port}"
        await nursery.start(self.executor.run)
        with binding("--data-listen", s.data_listen):
            data_port = await nursery.start(self._run_data_plane)
        if s.advertise_host or self._data_host not in ("0.0.0.0", "::", ""):
            self._set_data_addr(data_port)  # known now: the first advert carries it
        await nursery.start(self.gossip.run)
        self._check_libp2p_bound()
        self._set_data_addr(data_port)  # else derived from the libp2p addresses (peers skip us until then)
        self.gossip.changed()
        for address in s.join:
            nursery.start_soon(self._join, address)
        await nursery.start(self.watcher.run)
        with binding("control socket", str(s.data_dir)):
            self.control_path = str(await nursery.start(control.serve, s.data_dir, self.control_methods()))
        nursery.start_soon(self._give_back_memory)
        await trio.to_thread.run_sync(endpoints.write, s.data_dir, self.endpoints())
        log.info("node %s up: libp2p %s, data plane %s, metrics %s", self.identity.peer_id_str,
                 " ".join(self.gossip.addrs), self.data_addr, self.metrics_addr or "off")
        # everything made while starting (modules, libp2p, OpenCL, the kinds: ~136,000 objects) lives as long as
        # the node: out of the collector's sight, so a full collection scans only what came since. Measured: a
        # full collection of that heap stalls the event loop 34 ms (a real-time frame's whole budget), ~0 after.
        gc.freeze()
        self.ready.set()

    async def _peer_hello(self, call: Call) -> dict[str, Any]:
        """For a node joining with --join: who we are and where our libp2p host listens. Peers only (the
        connection already proved the mesh key and passed the allow list)."""
        p = call.principal
        if p is None or getattr(p, "kind", "") != "peer":
            raise RpcError("forbidden", "peer.hello is for nodes of this mesh")
        return {"peer_id": self.identity.peer_id_str, "libp2p": list(self.gossip.addrs) if self.gossip else []}

    async def _join(self, address: str) -> None:
        """--join HOST:PORT: learn that node's peer id (its TLS certificate proves it) and libp2p addresses over
        the data plane, then let gossip dial it like a --bootstrap peer. Retried with backoff until it works;
        a refusal (another mesh key, not on its allow list) is logged at warning with the node's reason."""
        host, port = parse_hostport(address, "join")
        backoff, last = 0.5, ""
        while True:
            try:
                with trio.fail_after(15):
                    client = MeshClient(self.transport, host, port, None)
                    info = await client.call("peer.hello", {})
                peer = client.peer_id or ""
                addrs = [a for a in info.get("libp2p", []) if isinstance(a, str) and a.endswith(f"/p2p/{peer}")][:16]
                if peer and addrs and self.gossip is not None:
                    self.gossip.add_bootstrap(addrs)
                    log.info("joining through %s: node %s at %s", address, peer, " ".join(addrs))
                    return
                why = f"it answered without libp2p addresses ({info!r:.200})"
            except HandshakeError as e:
                why = str(e)
            except (RpcError, TransportError, OSError, trio.TooSlowError) as e:
                why = f"not reachable ({e or type(e).__name__})"
            if why != last:
                log.warning("cannot join through %s: %s (retrying)", address, why)
                last = why
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def _check_libp2p_bound(self) -> None:
        """py-libp2p logs a failed listen and carries on; a node that cannot be dialled is refused here. A port
        shared with another process (both with SO_REUSEPORT, bound between our probe and our bind) too."""
        assert self.gossip is not None
        bound = [str(a) for a in self.gossip.host.get_transport_addrs()]
        for addr in self.settings.listen:
            host, port = _tcp_of_multiaddr(addr)
            if host is None:
                continue
            mine = [b for b in bound if port == 0 or f"/tcp/{port}" in b]
            if not mine:
                raise BindError("--listen", addr, "py-libp2p could not listen there (see the log above)")
            if port and endpoints.listeners_on_port(port) > len(mine):
                raise BindError("--listen", addr, "address already in use (another process shares the port)")


def _tcp_of_multiaddr(addr: str) -> tuple[str | None, int]:
    """(host, port) of an /ip4|ip6/HOST/tcp/PORT multiaddr; (None, 0) for other transports."""
    parts = addr.strip("/").split("/")
    if len(parts) >= 4 and parts[0] in ("ip4", "ip6") and parts[2] == "tcp" and parts[3].isdigit():
        return parts[1], int(parts[3])
    return None, 0
