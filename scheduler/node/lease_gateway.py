"""Client job leases, the gateway's half: `job.lease` from a client with an API token (the protocol and the
worker's half: scheduler/node/job_lease.py).

The gateway admits the lease as it admits a job: the token's scope for the kind, one active job of the token
(its quotas), and its submit rate, passed on for the worker to enforce per lease. It places the lease with the
placer a job of that kind would meet (the first job's spec: a kind's requirements may depend on it), asks the
best candidates in turn for it (GRANT_TRIES), hands the grant to the client and holds the two streams until
the lease ends; then it charges the token with what the worker reports the lease used.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import trio

from mesh.bigtcp.framing import TransportError
from mesh.bigtcp.rpc import Call, RpcError, RpcServer
from mesh.membership import MembershipView
from scheduler.core.job import Job, WireError
from scheduler.core.placement import Placer
from scheduler.core.quota import QuotaExceeded, Quotas
from scheduler.node.admission import Principal
from scheduler.node.job_lease import (
    DEFAULT_TTL_S,
    LEASES,
    LEASES_OPEN,
    LeaseError,
    LeaseTerms,
    LeaseWorker,
    until_done_sending,
)
from scheduler.node.links import LinkError, PeerLinks, RemoteLink
from worker import kinds as kinds_mod

MAX_LEASES_PER_TOKEN = 16  # leases one API token holds through this gateway at once
MAX_CRASH_CHARGES = 100  # crashed runners one lease report may charge (bounded work at the gateway)
GRANT_TRIES = 3  # placement candidates the gateway asks in turn


def usage_of(d: Any) -> dict[str, Any]:
    """A worker's usage report, bounded: what it cannot say right counts as nothing used."""
    d = d if isinstance(d, dict) else {}

    def count(k: str) -> int:
        v = d.get(k)
        return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 53 else 0

    s = d.get("device_s")
    device_s = float(s) if isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s) else 0.0
    return {"jobs": count("jobs"), "failed": count("failed"), "crashes": count("crashes"),
            "device_s": min(max(device_s, 0.0), 1e9)}


class LeaseGateway:
    """The gateway's half: `job.lease` from a client with an API token."""

    def __init__(self, peer_id: str, *, worker: LeaseWorker, links: PeerLinks, placer: Placer, view: MembershipView,
                 registry: kinds_mod.KindRegistry, quotas: Quotas, require: Callable[[Call, str], Principal]) -> None:
        self.peer_id = peer_id
        self.worker = worker
        self.links = links
        self.placer = placer
        self.view = view
        self.registry = registry
        self.quotas = quotas
        self.require = require
        self._open: dict[str, int] = {}  # token name -> leases held through this gateway now

    def register(self, rpc: RpcServer) -> None:
        rpc.register("job.lease", self._lease)

    def _terms(self, call: Call) -> tuple[Principal, LeaseTerms, Job]:
        b = call.body
        kind_name = b.get("kind")
        if not isinstance(kind_name, str) or not 0 < len(kind_name) <= 64:
            raise RpcError("invalid", "job.lease needs kind (a job kind's name)")
        try:
            kind = self.registry.get(kind_name)
        except kinds_mod.UnknownKind as e:
            raise RpcError("unknown_kind", str(e)) from None
        p = self.require(call, "compute" if kind_name.startswith("compute.") else "submit")
        exempt = p.token is not None and "admin" in p.token.scopes
        wire = {"tenant": p.name, "kind": kind_name, "slots": b.get("slots", 16), "ttl_s": b.get("ttl_s", DEFAULT_TTL_S),
                "rate": 0.0 if exempt else self.quotas.limits.submit_rate, "requirements": b.get("requirements")}
        try:
            terms = LeaseTerms.from_wire(wire)
        except LeaseError as e:
            raise RpcError("invalid", e.message) from None
        # the lease is placed like its first job (`spec`): the kind's requirements may depend on the spec
        spec = b.get("spec") or {}
        try:
            job = Job(kind=kind_name, spec=spec, submitted_by=p.name).validate()
            kind.validate(spec, 0)
            req = terms.requirements.merged(kind.requirements(spec))
        except WireError as e:
            raise RpcError("invalid", str(e)) from None
        except ValueError as e:
            raise RpcError("invalid_spec", f"{kind_name}: {e}") from None
        return p, replace(terms, requirements=req), replace(job, requirements=req)

    async def _lease(self, call: Call) -> dict[str, Any]:
        p, terms, job = self._terms(call)
        now = trio.current_time()
        if self._open.get(p.name, 0) >= MAX_LEASES_PER_TOKEN:
            LEASES.labels("gateway", "refused").inc()
            raise RpcError("quota", f"token {p.name!r} holds {MAX_LEASES_PER_TOKEN} job leases through this node "
                                    "(the limit); give one back first")
        self._open[p.name] = self._open.get(p.name, 0) + 1
        try:
            return await self._admitted(call, p, terms, job, now)
        finally:
            self._open[p.name] -= 1
            if not self._open[p.name]:
                del self._open[p.name]

    async def _admitted(self, call: Call, p: Principal, terms: LeaseTerms, job: Job, now: float) -> dict[str, Any]:
        key = f"lease:{secrets.token_hex(8)}"
        try:
            self.quotas.admit_submit(p.name, key, now, exempt=p.token is not None and "admin" in p.token.scopes)
        except QuotaExceeded as e:
            raise RpcError("quota", str(e)) from None
        usage: dict[str, Any] = {}
        try:
            tried: list[str] = []
            last = RpcError("unavailable", f"no peer in this node's view can run {terms.kind}")
            for c in list(self.placer.place(job, now))[:GRANT_TRIES]:
                peer = c.peer_id
                if peer in tried:
                    continue
                tried.append(peer)
                addr = self._data_addr(peer)
                if not addr:
                    continue
                try:
                    usage = await self._hold(call, peer, addr, terms)
                    return {"ended": "done", **usage}
                except RpcError as e:
                    if e.code not in ("busy", "unavailable", "unknown_kind"):
                        raise
                    last = e
            LEASES.labels("gateway", "refused").inc()
            raise last
        finally:
            self.quotas.finished(p.name, key, float(usage.get("device_s", 0.0) or 0.0), trio.current_time())
            for _ in range(min(MAX_CRASH_CHARGES, int(usage.get("crashes", 0) or 0))):
                self.quotas.crashed(p.name, trio.current_time())

    def _data_addr(self, peer: str) -> str:
        st = self.view.get(peer)
        return st.advert.data_addr if st is not None and st.advert.data_addr else ""

    async def _hold(self, call: Call, peer: str, addr: str, terms: LeaseTerms) -> dict[str, Any]:
        """Ask `peer` for the lease, hand its ticket to the client, and hold it until it ends; the usage the
        worker reports. RpcError when the worker refuses before granting."""
        async def offer(ticket: str, lid: str, slots: int, ttl: float) -> None:
            await call.send({"peer": peer, "addr": addr, "ticket": ticket, "lease": lid, "slots": slots,
                             "ttl_s": ttl, "kind": terms.kind})
            LEASES.labels("gateway", "granted").inc()

        LEASES_OPEN.labels("gateway").inc()
        try:
            if peer == self.peer_id:  # this node's own worker: no network hop to grant
                try:
                    return await self.worker.lend(peer, terms, call, lambda ticket, g: offer(
                        ticket, g.lease_id, g.terms.slots, g.terms.ttl_s))
                except LeaseError as e:
                    raise RpcError(e.code, e.message) from None
            try:
                link = self.links.get(peer)
            except LinkError as e:
                raise RpcError("unavailable", str(e)) from None
            if not isinstance(link, RemoteLink):
                raise RpcError("unavailable", f"{peer}: no remote link")
            try:
                async with link.client.open("peer.job_lease", {"terms": terms.to_wire()}, uploads=True) as wc:
                    first = None
                    async for item in wc:
                        first = item
                        break
                    if not isinstance(first, dict) or not isinstance(first.get("ticket"), str):
                        await wc.result()  # raises the worker's refusal
                        raise RpcError("unavailable", f"{peer} granted no lease")
                    slots, ttl = first.get("slots"), first.get("ttl_s")
                    if not (isinstance(slots, int) and isinstance(ttl, int | float)):
                        raise RpcError("unavailable", f"{peer}: a malformed grant")
                    await offer(first["ticket"], str(first.get("lease", "")), slots, float(ttl))
                    async with trio.open_nursery() as n:
                        async def relay_end() -> None:  # the client is done: so is the lease, at the worker
                            await until_done_sending(call)
                            try:
                                await wc.done_sending()
                            except (TransportError, trio.ClosedResourceError):
                                pass

                        n.start_soon(relay_end)
                        usage = await wc.result()
                        n.cancel_scope.cancel()
                    return usage_of(usage)
            except (TransportError, OSError) as e:
                raise RpcError("unavailable", f"{peer}: {e}") from None
        finally:
            LEASES_OPEN.labels("gateway").dec()


__all__ = ["LeaseGateway", "usage_of"]
