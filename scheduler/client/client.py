"""The job client: submit jobs to any node of the mesh and get their results, over the data plane.

    async with Client.connect("10.0.0.5:4002", token=tok) as c:
        out = await c.run("checksum", {}, input=Path("big.bin"))
        print(out.body, len(out.output))

`SyncClient` wraps it for code that does not use trio. Inputs up to the inline limit travel inside the
request; larger ones (or files) are streamed after it, checked by size and SHA-256 on arrival.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from mesh import control
from mesh.bigtcp.rpc import MeshClient, RpcError, SyncMeshClient
from scheduler.client.known_nodes import IdentityMismatch, KnownNodes, check_identity
from scheduler.core.job import INLINE_INPUT_LIMIT, Job, Priority, Requirements, Result, WhenSaturated
from scheduler.core.local import read_local_token

CHUNK = 1 << 20
log = logging.getLogger("gpumesh.client")


class JobFailed(Exception):
    """A job ended failed or cancelled; `state` and `reason` say how and why."""

    def __init__(self, job_id: str, state: str, reason: str) -> None:
        super().__init__(f"job {job_id} {state}: {reason}")
        self.job_id, self.state, self.reason = job_id, state, reason


@dataclass
class JobResult:
    """How a job ended, as its client sees it: `state` ("done", "failed", "cancelled"; "rejected" for a job
    that was refused) and `reason`, and the worker's `result`: the same `Result` its worker reported, decoded
    and checked (`Result.from_wire`), its `output` the bytes that came with it. `body`, `output`, `worker`,
    `attempt` and `timings` read through to it."""

    job_id: str
    state: str
    reason: str
    result: Result = field(default_factory=Result)

    @property
    def ok(self) -> bool:
        return self.state == "done"

    @property
    def body(self) -> dict[str, Any]:
        return self.result.body

    @property
    def output(self) -> bytes:
        return bytes(self.result.output or b"")

    @property
    def worker(self) -> str:
        return self.result.worker

    @property
    def attempt(self) -> int:
        return self.result.attempt

    @property
    def timings(self) -> dict[str, float]:
        return self.result.timings


def _job_result(job_id: str, final: dict[str, Any], output: bytes) -> JobResult:
    """A JobResult from a job.result answer (or the outcome in a waited-for submit's answer); a result map
    that does not decode raises WireError."""
    wire = final.get("result")
    result = replace(Result.from_wire(wire), output=output) if wire is not None else Result(output=output)
    return JobResult(str(final.get("id") or job_id), final["state"], final.get("reason", ""), result)


def new_job(kind: str, spec: dict[str, Any] | None = None, *, input: bytes | None = None, job_id: str = "",
            priority: str = "batch", deadline_ms: float | None = None, timeout_s: float = 3600.0,
            max_attempts: int = 3, requirements: dict[str, Any] | None = None,
            when_saturated: str = "queue") -> Job:
    """The Job a client submits, from its keyword options (a deadline `deadline_ms` from now; `input` inline,
    at most INLINE_INPUT_LIMIT bytes: `Client.submit` and `run` stream larger ones)."""
    if input is not None and len(input) > INLINE_INPUT_LIMIT:
        raise ValueError(f"an input of {len(input)} bytes is over the {INLINE_INPUT_LIMIT}-byte inline limit: "
                         "submit it with submit() or run(), which stream it")
    return Job(kind=kind, spec=spec or {}, input=bytes(input) if input is not None else None, job_id=job_id, priority=Priority(priority),
               deadline=trio.current_time() + deadline_ms / 1000 if deadline_ms is not None else None,
               timeout_s=timeout_s, max_attempts=max_attempts, requirements=Requirements.from_wire(requirements or {}),
               when_saturated=WhenSaturated(when_saturated))


def _file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def pinned_hello(address: str, token: str | None, peer_id: str | None,
                 known: KnownNodes | None | bool) -> Callable[[str, str | None], dict[str, Any]]:
    """The HELLO extra of a client: the token, but only once the node's proven peer id was checked (see
    known_nodes); raises IdentityMismatch instead."""
    extra = {"token": token} if token else {}
    book = KnownNodes() if known is True else (known or None)

    def hello(_local: str, remote: str | None) -> dict[str, Any]:
        if remote is None:  # --insecure: no certificate, nothing proven to check
            return extra
        first = check_identity(address, remote, peer_id=peer_id, known=book)
        if first is not None and book is not None:
            book.remember(address, first)
            log.warning("trusting node %s at %s on first use (recorded in %s)", first, address, book.path)
        return extra

    return hello


class Client:
    def __init__(self, rpc: MeshClient) -> None:
        self.rpc = rpc

    @classmethod
    @asynccontextmanager
    async def connect(cls, address: str, *, token: str | None, peer_id: str | None = None,
                      insecure: bool = False, known: KnownNodes | None | bool = True) -> AsyncIterator[Client]:
        """Connect to the node at `address`. Its identity is checked before the token is sent: against
        `peer_id`, else against the known-nodes file (`known`: True for the default file, a KnownNodes, or
        False/None not to pin), where an address seen for the first time is recorded."""
        async with MeshClient.connect(address, insecure=insecure,
                                      hello_extra=pinned_hello(address, token, peer_id, known)) as rpc:
            yield cls(rpc)

    async def submit(self, kind: str, spec: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """Submit a job; returns the coordinator's answer ({id, accepted, state, position, message, code}).
        Keywords: input (bytes or a file Path; streamed when large), job_id (idempotent), priority, deadline_ms,
        timeout_s, max_attempts, requirements (dict), when_saturated ("queue" or "reject")."""
        answer, _ = await self._submit(kind, spec, wait=False, **kw)
        return answer

    async def _submit(self, kind: str, spec: dict[str, Any] | None = None, *, wait: bool,
                      input: bytes | Path | None = None, on_upload: Callable[[int, int], None] | None = None,
                      **options: Any) -> tuple[dict[str, Any], bytes]:
        """(answer, output bytes). With `wait`, the coordinator answers when the job has ended, its result in
        answer["result"] and its output streamed on the same call: one round trip instead of submit + result.
        `options`: those of `new_job`."""
        base = new_job(kind, spec, **options)  # before the input is read: a deadline counts from the call
        stream_path: Path | None = None
        stream_bytes: bytes | None = None
        if isinstance(input, Path):
            size, digest = await trio.to_thread.run_sync(_file_digest, input)
            if size <= INLINE_INPUT_LIMIT:
                job = replace(base, input=await trio.Path(input).read_bytes())
            else:
                job, stream_path = replace(base, input_size=size, input_sha256=digest), input
        elif input is not None and len(input) > INLINE_INPUT_LIMIT:
            job = replace(base, input_size=len(input), input_sha256=hashlib.sha256(input).hexdigest())
            stream_bytes = bytes(input)
        else:
            job = replace(base, input=bytes(input)) if input is not None else base
        body: dict[str, Any] = {"job": job.to_wire(trio.current_time())}
        streamed = stream_path is not None or stream_bytes is not None
        if not streamed and not wait:
            return await self.rpc.call("job.submit", body), b""
        if wait:
            body["wait"] = True
            body["inline_output"] = True  # a small output may come inside the outcome (one message back)
        chunks: list[bytes] = []
        async with self.rpc.open("job.submit", body, uploads=streamed) as call:
            total, sent = job.input_size, 0
            if stream_bytes is not None:
                view = memoryview(stream_bytes)
                for off in range(0, len(view), CHUNK):
                    await call.send_bytes(view[off:off + CHUNK])
                    sent = min(off + CHUNK, total)
                    if on_upload is not None:
                        on_upload(sent, total)
            elif stream_path is not None:
                async with await trio.open_file(stream_path, "rb") as f:
                    while chunk := await f.read(CHUNK):
                        await call.send_bytes(chunk)
                        sent += len(chunk)
                        if on_upload is not None:
                            on_upload(sent, total)
            if streamed:
                await call.done_sending()
            async for item in call:
                if isinstance(item, bytes | bytearray):
                    chunks.append(bytes(item))
            answer = await call.result()
            inline = (answer.get("outcome") or {}).pop("output", None) if wait else None
            if isinstance(inline, bytes) and not chunks:
                chunks.append(inline)
            return answer, b"".join(chunks)

    @asynccontextmanager
    async def submit_many(self, kind: str, specs: Iterable[dict[str, Any]], *,
                          inputs: Iterable[bytes | None] | None = None,
                          **kw: Any) -> AsyncIterator[AsyncIterator[tuple[int, JobResult]]]:
        """Submit many jobs of one kind on one stream and get their results as they end (pipelined: no
        round trip per job). Yields (index into `specs`, JobResult) in the order the jobs end; a job that was
        refused or failed comes as a JobResult whose `ok` is False (state "rejected", "failed", ...), it
        does not stop the others. Inputs (one per spec, optional) travel inline, so at most
        INLINE_INPUT_LIMIT bytes each; outputs up to 64 KiB come back inline, larger ones are fetched.
        Other keywords as for `submit` (the same for every job).

            async with c.submit_many("echo", [{}] * 1000) as results:
                async for i, r in results:
                    ...
        """
        try:
            async with self._many(kind, specs, inputs, kw) as results:
                yield results
        except BaseExceptionGroup as group:  # one error of the upload task or the caller: as itself
            if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
                raise group.exceptions[0] from group.exceptions[0].__cause__
            raise

    @asynccontextmanager
    async def _many(self, kind: str, specs: Iterable[dict[str, Any]], inputs: Iterable[bytes | None] | None,
                    kw: dict[str, Any]) -> AsyncIterator[AsyncIterator[tuple[int, JobResult]]]:
        async with self.rpc.open("job.submit_many", {}, uploads=True) as call:
            async with trio.open_nursery() as nursery:
                async def upload() -> None:
                    ins = iter(inputs) if inputs is not None else None
                    for n, spec in enumerate(specs):
                        job = new_job(kind, spec, input=next(ins, None) if ins is not None else None, **kw)
                        await call.send({"n": n, "job": job.to_wire(trio.current_time())})
                    await call.done_sending()

                nursery.start_soon(upload)

                async def results() -> AsyncIterator[tuple[int, JobResult]]:
                    async for item in call:
                        if isinstance(item, dict):
                            yield item.get("n", -1), await self._many_result(item)

                yield results()
                nursery.cancel_scope.cancel()  # the caller stopped reading: stop uploading

    async def _many_result(self, item: dict[str, Any]) -> JobResult:
        if "error" in item:
            err = RpcError.from_wire(item["error"])
            return JobResult("", "rejected", f"{err.code}: {err.message}")
        ans = item.get("answer") or {}
        if not ans.get("accepted"):
            return JobResult(ans.get("id", ""), "rejected", ans.get("message", ""))
        final = item.get("outcome") or {}
        output = final.get("output", b"")
        res = _job_result(ans["id"], final, bytes(output))
        if res.result.output_size and not output:  # too large to come inline: fetch it
            return await self.result(ans["id"])
        return res

    async def run_many(self, kind: str, specs: Iterable[dict[str, Any]], **kw: Any) -> list[JobResult]:
        """`submit_many` gathered: every job's JobResult, in the order of `specs` (failed ones included)."""
        out: dict[int, JobResult] = {}
        async with self.submit_many(kind, specs, **kw) as results:
            async for n, r in results:
                out[n] = r
        return [out[n] for n in sorted(out)]

    async def result(self, job_id: str, *, wait: bool = True, timeout: float | None = None,
                     on_download: Callable[[int], None] | None = None) -> JobResult:
        """The job's outcome (waiting for its end unless `wait` is false), its output bytes with it;
        `on_download(bytes so far)` as they arrive. `job_id` may be a unique prefix, of a job of any node."""
        chunks: list[bytes] = []
        received = 0
        async with self.rpc.open("job.result", {"id": job_id, "wait": wait}, timeout=timeout) as call:
            async for item in call:
                if isinstance(item, bytes | bytearray):
                    chunks.append(bytes(item))
                    received += len(item)
                    if on_download is not None:
                        on_download(received)
            final = await call.result()
        return _job_result(job_id, final, b"".join(chunks))

    async def submit_wait(self, kind: str, spec: dict[str, Any] | None = None,
                          **kw: Any) -> tuple[dict[str, Any], JobResult | None]:
        """Submit and wait for the outcome in one round trip (the job and a small input in one message, the
        result and its output back on the same stream): the coordinator's answer and, unless it refused the
        job, its JobResult, failed or not. Keywords as for `submit`."""
        ans, output = await self._submit(kind, spec, wait=True, **kw)
        if not ans["accepted"]:
            return ans, None
        final = ans.get("outcome")
        # a node of an earlier version answers a submit at once: ask for the result then
        return ans, (_job_result(ans["id"], final, output) if final is not None else await self.result(ans["id"]))

    async def run(self, kind: str, spec: dict[str, Any] | None = None, **kw: Any) -> JobResult:
        """Submit and wait for the result (one round trip); raises JobFailed if the job does not end done."""
        ans, res = await self.submit_wait(kind, spec, **kw)
        if res is None:
            raise JobFailed(ans["id"], "rejected", ans["message"])
        if not res.ok:
            raise JobFailed(res.job_id, res.state, res.reason)
        return res

    async def status(self, job_id: str) -> dict[str, Any]:
        return await self.rpc.call("job.status", {"id": job_id})

    async def list(self, limit: int = 200, *, state: list[str] | str | None = None, kind: str = "",
                   since: float = 0.0, local: bool = False) -> list[dict[str, Any]]:
        """Jobs of the whole mesh (every node in the asked node's view; `local`: that node's only), newest
        first. Filters: `state` (one or a list), `kind` (a kind or its family, e.g. render), `since` (wall-clock
        time, seconds since the epoch)."""
        states = [state] if isinstance(state, str) else list(state or [])
        body = {"limit": limit, "state": states, "kind": kind, "since": since, "local": local}
        return (await self.rpc.call("job.list", body))["jobs"]

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self.rpc.call("job.cancel", {"id": job_id})

    @asynccontextmanager
    async def watch(self, *, local: bool = False) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Job state changes (and workers' progress reports) of the whole mesh as they happen (`local`: of the
        jobs this node coordinates only): `async with c.watch() as events: async for e in events`."""
        async with self.rpc.open("job.watch", {"local": local}) as call:
            async def items() -> AsyncIterator[dict[str, Any]]:
                async for item in call:
                    if isinstance(item, dict):
                        yield item
            yield items()


class SyncClient:
    """Blocking wrapper for code that does not use trio: a `Client` on the private loop of a
    `mesh.bigtcp.rpc.SyncMeshClient` (one thread for the client's lifetime)."""

    def __init__(self, address: str, *, token: str | None, peer_id: str | None = None, insecure: bool = False,
                 known: KnownNodes | None | bool = True) -> None:
        self._rpc = SyncMeshClient(address, insecure=insecure,
                                   hello_extra=pinned_hello(address, token, peer_id, known))
        self._client = Client(self._rpc.client)

    @property
    def client(self) -> Client:
        """The async `Client` on the private loop: use it through `run_async` only."""
        return self._client

    @property
    def nursery(self) -> trio.Nursery:
        """The private loop's nursery, for tasks that live as long as the client (async APIs built on `client`)."""
        return self._rpc.nursery

    def run_async(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run `await fn(*args, **kw)` on the private loop (for async APIs built on `client`)."""
        return self._rpc.run_async(fn, *args, **kw)

    def run_soon(self, start: Any) -> tuple[bool, Any]:
        """`SyncMeshClient.run_soon` on the private loop (a call a callback answers, without a task)."""
        return self._rpc.run_soon(start)

    def submit(self, kind: str, spec: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        return self._rpc.run_async(self._client.submit, kind, spec, **kw)

    def run(self, kind: str, spec: dict[str, Any] | None = None, **kw: Any) -> JobResult:
        return self._rpc.run_async(self._client.run, kind, spec, **kw)

    def run_many(self, kind: str, specs: Iterable[dict[str, Any]], **kw: Any) -> list[JobResult]:
        return self._rpc.run_async(self._client.run_many, kind, list(specs), **kw)

    def result(self, job_id: str, **kw: Any) -> JobResult:
        return self._rpc.run_async(self._client.result, job_id, **kw)

    def status(self, job_id: str) -> dict[str, Any]:
        return self._rpc.run_async(self._client.status, job_id)

    def list(self, limit: int = 200, **kw: Any) -> list[dict[str, Any]]:
        return self._rpc.run_async(self._client.list, limit, **kw)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._rpc.run_async(self._client.cancel, job_id)

    def close(self) -> None:
        self._rpc.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def local_address(data_dir: Path) -> tuple[str, str | None, str | None, bool]:
    """(address, token, peer id, insecure) of the node running with `data_dir`, for the CLI."""

    st = control.call(data_dir, "status", timeout=5)
    return st["data_addr"], read_local_token(data_dir), st["peer_id"], bool(st.get("insecure"))


def address_from_args(args: Any) -> tuple[str, str | None, str | None, bool]:
    """(address, token, peer id, insecure) for a CLI command: --node/--token/--peer-id/--insecure when given,
    else the node running with --data-dir and its own token."""
    if args.node:
        return args.node, args.token, getattr(args, "peer_id", None), args.insecure
    addr, tok, pid, insecure = local_address(args.data_dir)
    return addr, args.token or tok, pid, insecure or args.insecure


__all__ = ["Client", "IdentityMismatch", "JobFailed", "JobResult", "RpcError", "SyncClient", "address_from_args",
           "local_address", "new_job"]
