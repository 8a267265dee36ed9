"""One mesh, one job view: the client API's `job.status`, `job.list`, `job.cancel`, `job.result` and `job.watch`
answer for any job of the mesh, whichever node the client asks and whichever node coordinates the job.

A job lives on its coordinator (the node it was submitted through). Ids the coordinator makes start with a tag
of its peer id (`<last 6 characters of the peer id>-<random hex>`), so the node asked finds the coordinator
from the id alone; an id the client chose, or a prefix that is too short to hold the tag, is looked up on every
node in view. A unique prefix is as good as the whole id; an ambiguous one is refused with the candidates.

The node asked checks the client's token, then forwards the request over the data plane with `peer.jobs`
(only nodes of the mesh may call it: the mesh key / allow list already admitted them). The client's principal
(token name, scopes) travels with the request and the coordinator answers as it would answer that client:
every local operation below takes the principal it acts for.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any

import trio

from mesh.bigtcp.rpc import Call, RpcError
from mesh.bigtcp.tls import HandshakeError
from scheduler.core.job import JobState
from scheduler.node import tenancy
from scheduler.node.links import LinkError

if TYPE_CHECKING:
    from scheduler.core.placement import TrackedView
    from scheduler.node.client_api import ClientAPI
    from scheduler.node.coordinator_io import CoordinatorIO
    from scheduler.node.links import PeerLinks

log = logging.getLogger("gpumesh.scheduler")

TAG_LEN = 6
MIN_PREFIX = 4  # shorter prefixes match too much to be useful
MAX_LIST = 1000
FORWARD_TIMEOUT_S = 10.0
MAX_MATCHES = 5
_TILE_ID = re.compile(r"^(?P<frame>.+)-\d+-(?P<f>f\d+)t(?P<t>\d+)$")  # render client: render-<session>-<seq>-f<i>t<j>


def id_tag(peer_id: str) -> str:
    return peer_id[-TAG_LEN:]


def tagged_job_id(coordinator: str) -> str:
    """A new job id that names its coordinator: `<tag>-<20 random hex digits>`."""

    return f"{id_tag(coordinator)}-{os.urandom(10).hex()}"


def frame_of(job_id: str) -> str | None:
    """The frame a render tile's job belongs to (`render-<session>-f<i>`), None for other jobs."""
    m = _TILE_ID.match(job_id)
    return f"{m.group('frame')}-{m.group('f')}" if m else None


def principal_wire(p: Any) -> dict[str, Any]:
    """The caller's principal as it travels in a forwarded request (who it is and what it may do)."""
    return tenancy.of(p)


def principal_from_wire(d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise RpcError("invalid", "peer.jobs needs the caller's principal")
    name, scopes = d.get("name", ""), d.get("scopes", [])
    if not isinstance(name, str) or len(name) > 128 or not isinstance(scopes, list) or len(scopes) > 8 \
            or not all(isinstance(s, str) and len(s) <= 32 for s in scopes):
        raise RpcError("invalid", "malformed principal")
    return {"name": name, "scopes": scopes}


class Filters:
    """`jobs --state --kind --limit --since`, validated from the request body."""

    def __init__(self, body: dict[str, Any]) -> None:
        states = body.get("state") or []
        if isinstance(states, str):
            states = [states]
        known = {s.value for s in JobState}
        if not isinstance(states, list) or not all(isinstance(s, str) and s in known for s in states):
            raise RpcError("invalid", f"state must be among {', '.join(sorted(known))}")
        self.states = set(states)
        kind = body.get("kind") or ""
        if not isinstance(kind, str) or len(kind) > 64:
            raise RpcError("invalid", "kind must be a job kind (or its prefix, e.g. render)")
        self.kind = kind
        try:
            self.limit = max(1, min(int(body.get("limit", 200)), MAX_LIST))
            self.since = float(body.get("since") or 0.0)  # wall-clock seconds since the epoch
        except (TypeError, ValueError):
            raise RpcError("invalid", "limit must be an integer and since a time") from None

    def to_wire(self) -> dict[str, Any]:
        return {"state": sorted(self.states), "kind": self.kind, "limit": self.limit, "since": self.since}

    def keep(self, row: dict[str, Any]) -> bool:
        return ((not self.states or row["state"] in self.states)
                and (not self.kind or row["kind"] == self.kind or row["kind"].startswith(self.kind + "."))
                and row.get("submitted", 0.0) >= self.since)


class JobView:
    def __init__(self, api: ClientAPI, coordinator: CoordinatorIO, links: PeerLinks, view: TrackedView) -> None:
        self.api = api  # token checks and the streamed outcome of a local job
        self.coordinator = coordinator
        self.links = links
        self.view = view
        self.peer_id = coordinator.peer_id

    def register(self, rpc: Any) -> None:
        for name, fn in [("job.status", self._m_status), ("job.list", self._m_list), ("job.cancel", self._m_cancel),
                         ("job.result", self._m_result), ("job.watch", self._m_watch), ("peer.jobs", self._m_peer_jobs)]:
            rpc.register(name, fn)

    @property
    def tag(self) -> str:
        return id_tag(self.peer_id)

    # ---- this node's jobs (as their coordinator) ----------------------------------------------------------
    def _walls(self) -> tuple[float, float]:
        return time.time(), trio.current_time()

    @staticmethod
    def _wall(t: float | None, walls: tuple[float, float]) -> float | None:
        return None if t is None else round(walls[0] - (walls[1] - t), 3)

    def _record_row(self, rec: Any, walls: tuple[float, float]) -> dict[str, Any]:
        row = rec.summary()
        row.update(submitted=self._wall(rec.submitted_at, walls), started=self._wall(rec.started_at, walls),
                   finished=self._wall(rec.finished_at, walls), coordinator=self.peer_id,
                   frame=frame_of(rec.job_id))
        return row

    def _entry_row(self, entry: Any, walls: tuple[float, float]) -> dict[str, Any]:
        res = entry.result
        return {"id": entry.job.job_id, "kind": entry.job.kind, "state": JobState(entry.state).value,
                "reason": entry.reason, "priority": entry.job.priority.value, "attempt": entry.attempt,
                "failures": list(entry.failures), "peer": res.worker if res else "",
                "submitted_by": entry.job.submitted_by, "ok": res.ok if res else None,
                "submitted": self._wall(entry.submitted_at, walls), "started": None,
                "finished": self._wall(entry.finished_at, walls), "coordinator": self.peer_id,
                "frame": frame_of(entry.job.job_id)}

    async def local_find(self, q: str, principal: dict[str, Any]) -> list[str]:
        """Full ids of this coordinator's jobs that are `q` or start with it (an exact match alone if any)."""
        core, journal = self.coordinator.core, self.coordinator._journal
        rec = core.get(q)
        if rec is not None:
            return [q] if tenancy.owns(principal, rec.job.submitted_by) else []
        entry = await trio.to_thread.run_sync(journal.get, q, trio.current_time())
        if entry is not None:
            return [q] if tenancy.owns(principal, entry.job.submitted_by) else []
        if len(q) < MIN_PREFIX:
            return []
        found = {r.job_id for r in core.jobs() if r.job_id.startswith(q) and tenancy.owns(principal, r.job.submitted_by)}
        for jid in await trio.to_thread.run_sync(journal.ids_with_prefix, q, MAX_MATCHES + 1):
            if jid not in found and await self._owns(jid, principal):
                found.add(jid)
        return sorted(found)[: MAX_MATCHES + 1]

    async def _owns(self, job_id: str, principal: dict[str, Any]) -> bool:
        """Does the caller own `job_id` (a tenant sees only its own jobs; admin sees all)?"""
        rec = self.coordinator.core.get(job_id)
        if rec is not None:
            return tenancy.owns(principal, rec.job.submitted_by)
        entry = await self.coordinator.journal_entry(job_id)
        return entry is not None and tenancy.owns(principal, entry.job.submitted_by)

    async def local_status(self, job_id: str, principal: dict[str, Any]) -> dict[str, Any]:
        walls = self._walls()
        rec = self.coordinator.core.get(job_id)
        if rec is not None and tenancy.owns(principal, rec.job.submitted_by):
            return self._record_row(rec, walls)
        entry = None if rec is not None else await self.coordinator.journal_entry(job_id)
        if entry is None or not tenancy.owns(principal, entry.job.submitted_by):
            raise RpcError("not_found", f"no job {job_id!r} in the mesh (or it finished too long ago)")
        return self._entry_row(entry, walls)

    async def local_list(self, f: Filters, principal: dict[str, Any]) -> list[dict[str, Any]]:
        walls = self._walls()
        rows = {r.job_id: self._record_row(r, walls) for r in self.coordinator.core.jobs()}
        since_mono = walls[1] - (walls[0] - f.since) if f.since else None
        older = await trio.to_thread.run_sync(self.coordinator._journal.recent, trio.current_time(), f.limit,
                                              since_mono)
        for entry in older:
            rows.setdefault(entry.job.job_id, self._entry_row(entry, walls))
        keep = sorted((r for r in tenancy.visible(principal, rows.values()) if f.keep(r)),
                      key=lambda r: r["submitted"] or 0.0, reverse=True)
        return keep[: f.limit]

    async def local_cancel(self, job_id: str, principal: dict[str, Any]) -> dict[str, Any]:
        if not await self._owns(job_id, principal) or await self.coordinator.cancel(job_id) is None:
            raise RpcError("not_found", f"job {job_id!r} is not active (finished already, or never was)")
        rec = self.coordinator.core.get(job_id)
        return self._record_row(rec, self._walls()) if rec is not None else await self.local_status(job_id, principal)

    # ---- finding a job's coordinator ----------------------------------------------------------------------
    def _peers(self) -> list[str]:
        return [p.peer_id for p in self.view.peers(include_self=False) if p.advert.data_addr]

    def _client(self, peer: str) -> Any:
        """The pooled MeshClient of another node."""
        try:
            link = self.links.get(peer)
        except LinkError as e:
            raise RpcError(e.code, str(e)) from None
        client = getattr(link, "client", None)
        if client is None:
            raise RpcError("internal", f"no data-plane client for {peer}")
        return client

    async def _forward(self, peer: str, op: str, principal: dict[str, Any], **body: Any) -> dict[str, Any]:
        try:
            return await self._client(peer).call("peer.jobs", {"op": op, "principal": principal, **body},
                                                 timeout=FORWARD_TIMEOUT_S)
        except HandshakeError as e:
            raise RpcError("unavailable", f"{peer}: {e}") from None

    async def locate(self, q: str, principal: dict[str, Any]) -> tuple[str, str]:
        """(coordinator peer id, full job id) of the one job `q` names; not_found / ambiguous otherwise."""
        if not q or len(q) > 256:
            raise RpcError("invalid", "give a job id (or a unique prefix of one)")
        local = await self.local_find(q, principal)
        if local == [q]:
            return self.peer_id, q
        tag = q.split("-", 1)[0] if "-" in q else ""
        peers = self._peers()
        by_tag = [p for p in peers if len(tag) == TAG_LEN and id_tag(p) == tag]
        ask = by_tag or ([] if tag == self.tag else peers)
        matches: list[tuple[str, str]] = [(self.peer_id, i) for i in local]
        unreachable: list[str] = []

        async def find(peer: str) -> None:
            try:
                ans = await self._forward(peer, "find", principal, q=q)
            except RpcError as e:
                unreachable.append(f"{peer[-8:]} ({e.code})")
                return
            ids = ans.get("ids", [])
            if isinstance(ids, list):
                matches.extend((peer, str(i)) for i in ids[: MAX_MATCHES + 1])

        async with trio.open_nursery() as n:
            for p in ask:
                n.start_soon(find, p)
        exact = [m for m in matches if m[1] == q]
        if len(exact) == 1:
            return exact[0]
        found = sorted(set(exact or matches))
        if len(found) == 1:
            return found[0]
        if not found:
            where = f" ({len(unreachable)} node(s) did not answer: {', '.join(unreachable)})" if unreachable else ""
            raise RpcError("not_found", f"no job {q!r} in the mesh{where}")
        names = ", ".join(i for _, i in found[:MAX_MATCHES])
        raise RpcError("ambiguous", f"{q!r} matches several jobs: {names}{', ...' if len(found) > MAX_MATCHES else ''}"
                                    "; give more of the id")

    # ---- client API ---------------------------------------------------------------------------------------
    def _principal(self, call: Call, scope: str) -> dict[str, Any]:
        return principal_wire(self.api.require(call, scope))

    async def _m_status(self, call: Call) -> dict[str, Any]:
        principal = self._principal(call, "read")
        owner, job_id = await self.locate(str(call.body.get("id", "")), principal)
        if owner == self.peer_id:
            return await self.local_status(job_id, principal)
        return (await self._forward(owner, "status", principal, id=job_id))["job"]

    async def _m_cancel(self, call: Call) -> dict[str, Any]:
        principal = self._principal(call, "submit")
        owner, job_id = await self.locate(str(call.body.get("id", "")), principal)
        if owner == self.peer_id:
            return await self.local_cancel(job_id, principal)
        return (await self._forward(owner, "cancel", principal, id=job_id))["job"]

    async def _m_list(self, call: Call) -> dict[str, Any]:
        """This node's jobs and, unless `local` is asked, every other node's in view (each asked at once)."""
        principal = self._principal(call, "read")
        f = Filters(call.body)
        rows = await self.local_list(f, principal)
        unreachable: list[str] = []
        if not call.body.get("local"):
            async def ask(peer: str) -> None:
                try:
                    ans = await self._forward(peer, "list", principal, filters=f.to_wire())
                    got = ans.get("jobs", [])
                    if isinstance(got, list):
                        rows.extend(r for r in got[: f.limit] if isinstance(r, dict) and "id" in r)
                except RpcError as e:
                    unreachable.append(peer)
                    log.info("jobs: %s did not answer: %s", peer, e)

            async with trio.open_nursery() as n:
                for p in self._peers():
                    n.start_soon(ask, p)
        rows.sort(key=lambda r: r.get("submitted") or 0.0, reverse=True)
        return {"jobs": rows[: f.limit], "unreachable": unreachable}

    async def _m_result(self, call: Call) -> dict[str, Any]:
        """Wait (if asked) for the job's outcome; stream its output bytes, then the result as the response. A job
        of another coordinator: its bytes are relayed as they come."""
        principal = self._principal(call, "read")
        owner, job_id = await self.locate(str(call.body.get("id", "")), principal)
        wait = bool(call.body.get("wait", True))
        if owner == self.peer_id:
            return await self.api.outcome(call, job_id, wait=wait)
        body = {"op": "result", "principal": principal, "id": job_id, "wait": wait}
        async with self._client(owner).open("peer.jobs", body) as fwd:
            async for item in fwd:
                if isinstance(item, bytes | bytearray):
                    await call.send_bytes(item)
                elif isinstance(item, dict):
                    await call.send(item)
            return await fwd.result()

    async def _local_events(self, send: Any, principal: dict[str, Any]) -> None:
        """State changes of this coordinator's jobs, as they happen, to `send` (until cancelled)."""
        async with self.coordinator.watch() as updates:
            async for item in updates:
                if tenancy.owns(principal, item.get("by", "")):
                    await send({k: v for k, v in item.items() if k != "by"})

    async def _m_watch(self, call: Call) -> dict[str, Any]:
        """State changes of every job of the mesh: this node's, and each node's in view (relayed; a node that
        joins later is followed from when it is seen, one that goes is dropped)."""
        principal = self._principal(call, "read")
        out_tx, out_rx = trio.open_memory_channel[dict[str, Any]](1024)
        following: set[str] = set()

        async def relay(peer: str) -> None:
            try:
                async with self._client(peer).open("peer.jobs", {"op": "watch", "principal": principal}) as fwd:
                    async for item in fwd:
                        if isinstance(item, dict):
                            await out_tx.send(item)
            except (RpcError, HandshakeError, OSError) as e:
                log.debug("watch: stopped following %s: %s", peer, e)
            finally:
                following.discard(peer)

        async def follow_peers(n: trio.Nursery) -> None:
            while True:
                for peer in self._peers():
                    if peer not in following:
                        following.add(peer)
                        n.start_soon(relay, peer)
                await trio.sleep(1.0)

        async with trio.open_nursery() as n:
            n.start_soon(self._local_events, out_tx.send, principal)
            if not call.body.get("local"):
                n.start_soon(follow_peers, n)
            async for item in out_rx:
                await call.send(item)
        return {}

    # ---- peer.jobs: a request forwarded by another node of the mesh ---------------------------------------
    async def _m_peer_jobs(self, call: Call) -> dict[str, Any]:
        p = call.principal
        if p is None or getattr(p, "kind", "") != "peer":  # nodes of this mesh only
            raise RpcError("forbidden", "peer methods are for nodes of this mesh")
        principal = principal_from_wire(call.body.get("principal"))
        op = call.body.get("op")
        job_id = str(call.body.get("id", ""))
        if op == "find":
            return {"ids": await self.local_find(str(call.body.get("q", ""))[:256], principal)}
        if op == "status":
            return {"job": await self.local_status(job_id, principal)}
        if op == "cancel":
            return {"job": await self.local_cancel(job_id, principal)}
        if op == "list":
            filters = call.body.get("filters")
            return {"jobs": await self.local_list(Filters(filters if isinstance(filters, dict) else {}), principal)}
        if op == "watch":
            await self._local_events(call.send, principal)
            return {}
        if op == "result":
            if not await self._owns(job_id, principal):
                raise RpcError("not_found", f"no job {job_id!r} on this node")
            return await self.api.outcome(call, job_id, wait=bool(call.body.get("wait", True)))
        raise RpcError("invalid", f"unknown peer.jobs op {op!r}")
