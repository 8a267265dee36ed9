"""Running your own OpenCL kernels on the mesh: the compute SDK.

    from scheduler.client.compute_sdk import InOut, Mesh, Out

    with Mesh.local() as mesh:                       # or Mesh.connect("10.0.0.5:4002", token=tok)
        y2 = mesh.compute(SAXPY, "saxpy", args=[np.uint32(n), np.float32(2.0), x, InOut(y, "y")],
                          global_size=n)              # -> the one output array (several: a dict by name)
        outs = mesh.map(SAXPY, "saxpy", [[np.uint32(n), np.float32(a), x, InOut(y, "y")] for a in alphas],
                        global_size=n)                # many independent launches, spread over peers, in order
        y3 = mesh.compute(..., verify="redundant")    # run on two different peers, outputs compared bit for bit

**pyopencl-shaped** (a pyopencl script ports by changing a few lines; docs/compute.md ports pyopencl's demo)::

        prg = mesh.program(SOURCE).build()                 # cl.Program(ctx, SOURCE).build()
        res = prg.sum(mesh, a.shape, None, a, b, Out.like(a))  # knl(queue, gsize, lsize, a_g, b_g, res_g)
        res = mesh.launch(SOURCE, "sum", a.shape, None, a, b, Out.like(a))   # the same in one call

**Pipelines** (`worker.compute.api.Pipeline`: launches over named in/out/inout/scratch buffers) run with
`mesh.run(pipeline.job())`; `mesh-node compute PIPELINE.yaml` runs the same from a spec file
(`scheduler.cli.compute_spec_file`).

`AsyncMesh` is the trio twin (`async with AsyncMesh.local() as mesh: await mesh.compute(...)`). Arguments are
those of `worker.compute.api.make_job` (re-exported here: `In`, `InOut`, `Out`, `Scalar`, `Local`), in kernel
parameter order; a prebuilt `ComputeJob` (e.g. an example's `job()`) runs with `mesh.run(job)`, which returns a
`ComputeRun` (outputs, the worker, timings) instead of bare arrays.

**Outputs**: `compute` returns the single output array (reshaped like its `Out(shape)` / `InOut(array)`), or a
dict keyed by each output's name (`"arg3"` for an unnamed output at parameter index 3) when there are several.

**Errors** (all `ComputeFailed`, a `scheduler.client.client.JobFailed`): `BuildFailed` (`.log`: the compiler's log),
`TimeLimitExceeded` (the kernel ran past `time_limit_s`; the worker stays healthy), `ComputeRefused` (refused
before running: a bad spec, a token without the `compute` scope, no peer able to run it; `.code` says which),
`BufferTooLarge` (a `ComputeRefused`: the buffers need more memory than any device on the mesh has, found
before a byte of input is sent), `VerificationFailed` (redundant outputs differ), `RedundancyUnavailable`
(no second peer ran the job).

**Redundant verification** (`verify="redundant"`): the job is submitted twice at once under two job ids
(`<id>.r0`, `<id>.r1`); each result names the worker that ran it. If both ran on the same worker, another copy
(`<id>.r2`, ...) is submitted with the `avoid_peers` placement requirement naming that worker, so the scheduler
places it elsewhere (refused at once if no other peer can run it: `RedundancyUnavailable`). Against a scheduler
without `avoid_peers` (detected from its refusal of the field) copies are resubmitted plainly until two
different workers have answered, up to `redundancy_tries` copies in all (placement then picks at random among
equally good peers, so each copy has a fair chance of landing elsewhere). The outputs of two different workers
are compared: bit for bit by default; `rtol`/`atol` allow a float tolerance (`np.isclose`, NaNs equal; integer
outputs always exact). A mismatch raises `VerificationFailed` naming both workers and the first differing
element; no output is returned unverified. The first copy's outputs are returned, with `verified_by` (the two
workers) and every copy's job id in `job_ids`.

**Batches** (`map`, `run_many`): every launch is its own job, submitted with at most `max_in_flight`
outstanding; the coordinator spreads them over peers like any jobs. Results come back in input order. The
first failure cancels the jobs still outstanding and is raised with `.index` set to the item that failed.

**Before any transfer**: the spec is checked on the client (`make_job`: the worker's own parser), and the
buffers' total size is compared with the largest OpenCL device the mesh advertises (`precheck=True`); the
coordinator then checks the spec, the token's scope and placement before it accepts the job.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import trio

from mesh.bigtcp.rpc import RpcError
from scheduler.client.client import Client, JobResult, SyncClient, local_address
from scheduler.client.compute_outcomes import (
    BufferTooLarge,
    BuildFailed,
    ComputeFailed,
    ComputeRefused,
    ComputeRun,
    RedundancyUnavailable,
    TimeLimitExceeded,
    VerificationFailed,
    _failure,
)
from scheduler.client.job_lease import CLOSE_TIMEOUT_S, JobLease, open_lease
from scheduler.core.job import WireError
from scheduler.core.local import default_data_dir
from worker.compute.api import KIND, ComputeJob, In, InOut, Local, Out, Pipeline, Scalar, Scratch, make_job
from worker.compute.compare import compare_outputs
from worker.compute.limits import validate
from worker.compute.program import Program, split_call
from worker.compute.spec import DEFAULT_TIME_LIMIT_S, SpecError, parse_spec

PEERS_TTL_S = 5.0
DEFAULT_MAX_IN_FLIGHT = 64
LEASE_SLOTS = 64  # jobs in flight on a compute lease (`lease=True`)
DEFAULT_REDUNDANCY_TRIES = 6


@dataclass
class _Options:
    verify: str | None = None
    rtol: float = 0.0
    atol: float = 0.0
    priority: str = "interactive"
    timeout_s: float | None = None
    max_attempts: int = 3
    precheck: bool = True
    redundancy_tries: int = DEFAULT_REDUNDANCY_TRIES
    observer: Any = None  # a JobObserver: told of upload bytes, each job id as it is accepted, download bytes
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verify not in (None, "none", "redundant"):
            raise ValueError(f"verify must be None or 'redundant', not {self.verify!r}")
        if self.verify == "none":
            self.verify = None
        if self.rtol < 0 or self.atol < 0:
            raise ValueError("rtol and atol must not be negative")
        if self.redundancy_tries < 2:
            raise ValueError("redundancy_tries must be at least 2")


_OPTION_NAMES = ("verify", "rtol", "atol", "priority", "timeout_s", "max_attempts", "precheck", "redundancy_tries",
                 "observer")


class JobObserver:
    """What `run(..., observer=...)` reports as it goes (e.g. the CLI's progress bars); every method is optional
    to override and does nothing here."""

    def upload(self, sent: int, total: int) -> None:
        """Input bytes sent so far, of `total` (a streamed input)."""

    def submitted(self, job_id: str) -> None:
        """A job was accepted (a redundant run submits several copies)."""

    def download(self, received: int) -> None:
        """Output bytes received so far (a streamed output)."""


def _split_options(kw: dict[str, Any], default_priority: str) -> tuple[_Options, dict[str, Any]]:
    opts = {k: kw.pop(k) for k in _OPTION_NAMES if k in kw}
    opts.setdefault("priority", default_priority)
    return _Options(**opts), kw


def _only_options(kw: dict[str, Any], default_priority: str) -> _Options:
    """`_split_options` for a call that takes nothing else (TypeError naming what it does not take)."""
    opts, rest = _split_options(kw, default_priority)
    if rest:
        raise TypeError(f"unexpected keyword(s): {', '.join(rest)}")
    return opts


# ---- the async SDK -------------------------------------------------------------------------------------------

class AsyncMesh:
    """Compute on the mesh from trio code. Make one with `AsyncMesh.connect(...)` / `AsyncMesh.local()`
    (async context managers) or around an existing `scheduler.client.client.Client`."""

    def __init__(self, client: Client, *, lease: JobLease | None = None) -> None:
        self.client = client
        self.lease = lease  # jobs without verification or an observer go on it (scheduler/client/job_lease.py)
        self._peers: list[dict[str, Any]] | None = None
        self._peers_at = -math.inf
        self._avoid_supported: bool | None = None  # does the scheduler take the avoid_peers requirement?
        self._prechecked: tuple[Any, Any] | None = None  # (spec, peers) of the last job that passed _precheck

    @classmethod
    @asynccontextmanager
    async def connect(cls, address: str, *, token: str | None, peer_id: str | None = None,
                      insecure: bool = False, lease: bool = False) -> AsyncIterator[AsyncMesh]:
        """With `lease`, jobs run on a job lease the client holds (one hop each way, no journal record per job:
        see docs/job-leases.md)."""
        async with Client.connect(address, token=token, peer_id=peer_id, insecure=insecure) as c:
            if not lease:
                yield cls(c)
                return
            async with open_lease(c, KIND, slots=LEASE_SLOTS) as jl:
                yield cls(c, lease=jl)

    @classmethod
    @asynccontextmanager
    async def local(cls, data_dir: Path | str | None = None, *, lease: bool = False) -> AsyncIterator[AsyncMesh]:
        """The node running on this machine (its data dir: `data_dir`, $GPUMESH_DATA_DIR or the default)."""
        addr, tok, pid, insecure = await trio.to_thread.run_sync(local_address, resolve_data_dir(data_dir))
        async with cls.connect(addr, token=tok, peer_id=pid, insecure=insecure, lease=lease) as m:
            yield m

    # -- one launch --
    async def compute(self, source: str, kernel: str, args: Sequence[Any], global_size: Any = None,
                      local_size: Any = None, **kw: Any) -> np.ndarray | dict[str, np.ndarray]:
        """Build a job from numpy arguments (see `make_job`), run it on the mesh, return its output(s).

        Keywords: those of `make_job` (`build_options`, `time_limit_s`, `launches`, `repeat`, `device_kind`,
        `memory_limit_bytes`, `flops_per_item`, ...) and of `run` (`verify`, `rtol`, `atol`, `priority`,
        `timeout_s`, `max_attempts`, `precheck`, `redundancy_tries`)."""
        opts, mk = _split_options(kw, "interactive")
        job = make_job(source, kernel, args, global_size, local_size, **mk)
        return (await self._run(job, opts)).value()

    async def launch(self, source: str, kernel: str, *args: Any, **kw: Any) -> np.ndarray | dict[str, np.ndarray]:
        """pyopencl's call shape: `launch(source, kernel, global_size, local_size, *args)` (a leading queue
        argument is ignored); keywords as `compute`. Returns the output(s)."""
        gsize, lsize, kargs = split_call(args)
        return await self.compute(source, kernel, kargs, gsize, lsize, **kw)

    def program(self, source: str, options: str | Sequence[str] = (), **kw: Any) -> Program:
        """pyopencl's Program shape on the mesh: `await mesh.program(src).build().name(queue, g, l, *args)`.
        Keywords: `make_job`'s and `run`'s, applied to every call."""
        opts, mk = _split_options(dict(kw), "interactive")

        async def execute(job: ComputeJob) -> Any:
            return (await self._run(job, opts)).value()

        return Program(source, options, execute=execute, **mk)

    async def run(self, job: ComputeJob, **kw: Any) -> ComputeRun:
        """Run a prebuilt job (`make_job(...)`, an example's `job()`); the outputs with worker and timings."""
        return await self._run(job, _only_options(kw, "interactive"))

    # -- batches --
    async def map(self, source: str, kernel: str, arg_lists: Sequence[Sequence[Any]], global_size: Any = None,
                  local_size: Any = None, *, details: bool = False, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                  **kw: Any) -> list[Any]:
        """One launch per argument list, all submitted at once (at most `max_in_flight` outstanding) and spread
        over peers; the outputs in input order (`details=True`: the `ComputeRun`s). `global_size` and
        `local_size` are shared, or callables of the argument list for per-item sizes."""
        opts, mk = _split_options(kw, "batch")
        jobs = []
        for args in arg_lists:
            gs = global_size(args) if callable(global_size) else global_size
            ls = local_size(args) if callable(local_size) else local_size
            jobs.append(make_job(source, kernel, args, gs, ls, **mk))
        runs = await self._run_many(jobs, opts, max_in_flight)
        return runs if details else [r.value() for r in runs]

    async def run_many(self, jobs: Sequence[ComputeJob], *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                       **kw: Any) -> list[ComputeRun]:
        return await self._run_many(list(jobs), _only_options(kw, "batch"), max_in_flight)

    async def peers(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        """The mesh as the coordinator sees it (`mesh-node peers`), cached for a few seconds."""
        now = trio.current_time()
        if refresh or self._peers is None or now - self._peers_at > PEERS_TTL_S:
            self._peers = (await self.client.rpc.call("mesh.peers", {}))["peers"]
            self._peers_at = now
        return self._peers

    # -- internals --
    async def _run_many(self, jobs: list[ComputeJob], opts: _Options, max_in_flight: int) -> list[ComputeRun]:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        out: list[ComputeRun | None] = [None] * len(jobs)
        limit = trio.CapacityLimiter(max_in_flight)
        submitted: set[str] = set()
        failure: list[ComputeFailed] = []
        if opts.precheck:  # every item's memory checked before anything is sent
            for job in jobs:
                await self._precheck(job)
        batch = uuid.uuid4().hex[:16]

        async def one(i: int, nursery: trio.Nursery) -> None:
            async with limit:
                try:
                    out[i] = await self._run(jobs[i], opts, job_id=f"{batch}.{i}", submitted=submitted,
                                             precheck=False)
                except ComputeFailed as e:
                    e.index = i
                    e.add_note(f"batch item {i} of {len(jobs)}")
                    failure.append(e)
                    nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for i in range(len(jobs)):
                nursery.start_soon(one, i, nursery)
        if failure:
            await self._cancel_all(submitted)
            raise failure[0]
        return [r for r in out if r is not None]

    async def _cancel_all(self, job_ids: set[str]) -> None:
        with trio.move_on_after(10) as scope:
            scope.shield = True
            for jid in sorted(job_ids):
                try:
                    await self.client.cancel(jid)
                except RpcError:
                    pass  # already finished (not_found) or unreachable: nothing to cancel

    async def _run(self, job: ComputeJob, opts: _Options, *, job_id: str = "", submitted: set[str] | None = None,
                   precheck: bool | None = None) -> ComputeRun:
        if precheck if precheck is not None else opts.precheck:
            await self._precheck(job)
        if self._lease_for(opts) is not None:
            return await self._leased(job, opts)  # the lease names its jobs itself
        base = job_id or uuid.uuid4().hex
        if opts.verify != "redundant":
            return await self._once(job, base, opts, submitted)
        return await self._redundant(job, base, opts, submitted)

    def _lease_for(self, opts: _Options) -> JobLease | None:
        """The lease a job with these options goes on, if any: not one verified redundantly, nor observed."""
        return self.lease if opts.verify != "redundant" and opts.observer is None else None

    async def _leased(self, job: ComputeJob, opts: _Options) -> ComputeRun:
        """One job on the client's lease (what the lease cannot carry goes through the gateway by itself)."""
        assert self.lease is not None
        t0 = time.perf_counter()
        try:
            res = await self.lease.result(job.spec, **_lease_options(job, opts))
        except RpcError as e:
            raise ComputeRefused("", e.code, e.message or e.code) from None
        return _leased_run(job, res, t0)

    def _leased_soon(self, job: ComputeJob, opts: _Options, then: Callable[[JobResult | None], None]) -> bool:
        """On the loop, without a task (the blocking `Mesh.run`): `job` sent on the lease now, as `_run` would send
        it, and `then(result or None)` called when it ends (`JobLease.result_soon`); False: `_run` it instead (no
        lease held now, options a lease does not carry, a precheck still to make)."""
        lease = self._lease_for(opts)
        if lease is None or (opts.precheck and not self._passed_precheck(job)):
            return False
        return lease.result_soon(job.spec, then, **_lease_options(job, opts))

    async def _redundant(self, job: ComputeJob, base: str, opts: _Options, submitted: set[str] | None) -> ComputeRun:
        t0 = time.perf_counter()
        runs: list[ComputeRun] = [None, None]  # type: ignore[list-item]

        async def copy(k: int) -> None:
            runs[k] = await self._once(job, f"{base}.r{k}", opts, submitted)

        async with trio.open_nursery() as n:  # two copies at once: placed independently
            n.start_soon(copy, 0)
            n.start_soon(copy, 1)
        while len({r.worker for r in runs}) < 2 and len(runs) < opts.redundancy_tries:
            try:  # both on one worker: another copy, kept off that worker where the scheduler supports it
                runs.append(await self._once(job, f"{base}.r{len(runs)}", opts, submitted,
                                             avoid=sorted({r.worker for r in runs})))
            except ComputeRefused as e:
                if e.code != "excluded":
                    raise
                break  # no peer left once that worker is excluded
        first = runs[0]
        second = next((r for r in runs if r.worker != first.worker), None)
        if second is None:
            raise RedundancyUnavailable(first.job_id, "unverified",
                                        f"every copy of the job ran on worker {first.worker} ({len(runs)} copies): "
                                        f"no second peer to compare with (fewer than two eligible OpenCL devices "
                                        f"on the mesh?)", worker=first.worker)
        problem = compare_outputs(first.result, second.result, opts.rtol, opts.atol)
        if problem is not None:
            raise VerificationFailed((first.job_id, second.job_id), (first.worker, second.worker), *problem)
        first.verified_by = (first.worker, second.worker)
        first.job_ids = tuple(r.job_id for r in runs)
        first.wall_s = time.perf_counter() - t0
        return first

    async def _submit(self, job: ComputeJob, job_id: str, opts: _Options, timeout_s: float,
                      avoid: Sequence[str]) -> tuple[dict[str, Any], JobResult | None]:
        """Submit and wait for the outcome in one round trip (`Client.submit_wait`); with an observer (progress
        to show: the id once accepted, the download's bytes) only submit, and `_once` fetches the outcome (the
        JobResult is None then, as for a refused job). With `avoid`, ask placement to keep off those peers (the
        `avoid_peers` requirement) if this client and the coordinator know it, else submit plainly (the caller
        checks where the job ran)."""
        kw: dict[str, Any] = dict(input=job.input or None, job_id=job_id, priority=opts.priority,
                                  timeout_s=timeout_s, max_attempts=opts.max_attempts)
        send = self.client.submit_wait
        if opts.observer is not None:
            kw["on_upload"] = opts.observer.upload
            send = self._submit_only
        if avoid and self._avoid_supported is not False:
            try:
                answer = await send(KIND, job.spec, requirements={"avoid_peers": list(avoid)}, **kw)
                self._avoid_supported = True
                return answer
            except WireError:  # this client's scheduler.core.job has no avoid_peers
                self._avoid_supported = False
            except RpcError as e:
                if e.code != "invalid" or "avoid_peers" not in (e.message or ""):
                    raise
                self._avoid_supported = False  # the coordinator does not know it
        return await send(KIND, job.spec, **kw)

    async def _submit_only(self, kind: str, spec: dict[str, Any] | None = None,
                           **kw: Any) -> tuple[dict[str, Any], JobResult | None]:
        return await self.client.submit(kind, spec, **kw), None

    async def _once(self, job: ComputeJob, job_id: str, opts: _Options, submitted: set[str] | None,
                    avoid: Sequence[str] = ()) -> ComputeRun:
        t0 = time.perf_counter()
        timeout_s = _timeout_s(job, opts)
        if submitted is not None:  # the id is ours: cancellable while the call is under way
            submitted.add(job_id)
        try:
            ans, res = await self._submit(job, job_id, opts, timeout_s, avoid)
        except RpcError as e:
            raise ComputeRefused(job_id, e.code, e.message or e.code) from None
        if not ans.get("accepted"):
            if submitted is not None:
                submitted.discard(job_id)
            raise ComputeRefused(ans.get("id", job_id), ans.get("code") or "rejected", ans.get("message", ""))
        if res is None:  # an observer follows the job: its id once accepted, then the download
            opts.observer.submitted(ans["id"])
            res = await self.client.result(ans["id"], on_download=opts.observer.download)
        if submitted is not None:
            submitted.discard(job_id)
        return _completed(job, res, t0)

    def _passed_precheck(self, job: ComputeJob) -> bool:
        """The job (the same spec object) passed `_precheck` against the peer list cached now."""
        passed = self._prechecked
        return (passed is not None and passed[0] is job.spec and passed[1] is self._peers
                and trio.current_time() - self._peers_at <= PEERS_TTL_S)

    async def _precheck(self, job: ComputeJob) -> None:
        """Refuse, before any transfer, a job whose buffers exceed every OpenCL device the mesh advertises
        (`BufferTooLarge`), or that no advertised device can launch (`ComputeRefused`, code `device_limits`:
        work-group sizes and `reqd_work_group_size` against each device's maximum, non-uniform work-groups, local
        memory, largest allocation, fp64; the message is the closest device's refusal, naming the field).
        A job run again (the same spec object) against the same cached peer list passed already: not checked
        again (the check is advisory: the coordinator validates every job, also one whose spec was edited)."""
        if self._passed_precheck(job):
            return
        spec = parse_spec(job.spec)
        req = spec.requirements()
        need = req.min_memory_bytes
        try:
            peers = await self.peers()
        except RpcError:
            return  # cannot see the mesh: the coordinator decides
        devs = [d for p in peers for d in p.get("devices", ()) if d.get("kind") not in ("reference", None)]
        fit = [d for d in devs if (not req.fp64 or d.get("fp64")) and (not req.int64 or d.get("int64"))
               and (req.device_kind is None or d.get("kind") == req.device_kind)]
        if not fit:
            return  # nothing matching in view (yet): the coordinator gives the precise refusal
        best = max(int(d.get("global_mem_bytes", 0)) for d in fit)
        if need > best:
            raise BufferTooLarge("", "too_large",
                                 f"the job's buffers need {_fmt(need)} but the largest OpenCL device on the mesh "
                                 f"has {_fmt(best)} ({len(fit)} device{'s' * (len(fit) != 1)} seen); nothing was "
                                 f"sent")
        refusals: list[tuple[dict[str, Any], SpecError]] = []
        for d in fit:
            try:
                validate(spec, d)
                self._prechecked = (job.spec, peers)
                return
            except SpecError as err:
                refusals.append((d, err))
        dev, why = refusals[0]
        raise ComputeRefused("", "device_limits",
                             f"no OpenCL device on the mesh can run this job ({len(fit)} seen); on "
                             f"{dev.get('name') or dev.get('id')}: {why}; nothing was sent")


def _timeout_s(job: ComputeJob, opts: _Options) -> float:
    """The job's time on the mesh (queue and retries included): the caller's, else generous beside its limit."""
    limit = float(job.spec.get("time_limit_s", DEFAULT_TIME_LIMIT_S))
    return opts.timeout_s if opts.timeout_s is not None else max(3600.0, 2 * limit + 300.0)


def _lease_options(job: ComputeJob, opts: _Options) -> dict[str, Any]:
    """What a leased job carries besides its spec (`JobLease.result` and `result_soon`)."""
    return {"input": job.input or None, "priority": opts.priority, "timeout_s": _timeout_s(job, opts),
            "max_attempts": opts.max_attempts}


def _leased_run(job: ComputeJob, res: JobResult, t0: float) -> ComputeRun:
    """The run of a job that went on a lease (refused there: `ComputeRefused`)."""
    if res.state == "rejected":
        code, _, message = res.reason.partition(": ")
        raise ComputeRefused(res.job_id, code or "rejected", message or res.reason)
    return _completed(job, res, t0)


def _completed(job: ComputeJob, res: JobResult, t0: float) -> ComputeRun:
    """The run of one job that ended (`_failure` raised unless done), its outputs decoded."""
    if not res.ok:
        raise _failure(res)
    return ComputeRun(res.job_id, res.worker, job.decode(res.body, res.output), time.perf_counter() - t0,
                      float(res.timings.get("queue_s", 0.0)), float(res.timings.get("run_s", 0.0)),
                      job_ids=(res.job_id,))


def _fmt(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def resolve_data_dir(data_dir: Path | str | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)

    return Path(os.environ.get("GPUMESH_DATA_DIR") or default_data_dir())


# ---- the blocking SDK ----------------------------------------------------------------------------------------

async def _new_lease(sync: SyncClient) -> JobLease:
    return JobLease(sync.client, KIND, slots=LEASE_SLOTS, requirements=None, ttl_s=None, nursery=sync.nursery)


async def _close_lease(lease: JobLease) -> None:
    lease.close()
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        await lease.closed()


class Mesh:
    """Compute on the mesh from ordinary (blocking) code: the same methods as `AsyncMesh`, run on a
    `SyncClient`'s private trio thread. Use as a context manager, or call `close()`."""

    def __init__(self, sync: SyncClient, *, lease: bool = False) -> None:
        self._sync = sync
        jl = sync.run_async(_new_lease, sync) if lease else None
        self._amesh = AsyncMesh(sync.client, lease=jl)

    @classmethod
    def connect(cls, address: str, *, token: str | None, peer_id: str | None = None, insecure: bool = False,
                lease: bool = False) -> Mesh:
        """With `lease`, jobs run on a job lease the client holds (one hop each way, no journal record per
        job; `AsyncMesh.connect`)."""
        return cls(SyncClient(address, token=token, peer_id=peer_id, insecure=insecure), lease=lease)

    @classmethod
    def local(cls, data_dir: Path | str | None = None, *, lease: bool = False) -> Mesh:
        addr, tok, pid, insecure = local_address(resolve_data_dir(data_dir))
        return cls.connect(addr, token=tok, peer_id=pid, insecure=insecure, lease=lease)

    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self._sync.run_async(fn, *args, **kw)

    def compute(self, source: str, kernel: str, args: Sequence[Any], global_size: Any = None, local_size: Any = None,
                **kw: Any) -> np.ndarray | dict[str, np.ndarray]:
        return self._call(self._amesh.compute, source, kernel, args, global_size, local_size, **kw)

    def run(self, job: ComputeJob, **kw: Any) -> ComputeRun:
        if self._amesh.lease is not None:  # the common case, answered without a task on the loop: ~80 us less
            t0 = time.perf_counter()
            opts = _only_options(dict(kw), "interactive")
            sent, res = self._sync.run_soon(partial(self._amesh._leased_soon, job, opts))
            if sent and res is not None:
                return _leased_run(job, res, t0)
        return self._call(self._amesh.run, job, **kw)  # not sent, or not run on the lease: the whole way

    def launch(self, source: str, kernel: str, *args: Any, **kw: Any) -> np.ndarray | dict[str, np.ndarray]:
        """pyopencl's call shape: `launch(source, kernel, global_size, local_size, *args)`."""
        return self._call(self._amesh.launch, source, kernel, *args, **kw)

    def program(self, source: str, options: str | Sequence[str] = (), **kw: Any) -> Program:
        """pyopencl's Program shape: `mesh.program(src).build().name(queue, global_size, local_size, *args)`
        (the queue argument is ignored: pass the mesh, or leave it out). Returns the output(s) of each call."""
        opts, mk = _split_options(dict(kw), "interactive")
        return Program(source, options, execute=lambda job: self._call(self._amesh._run, job, opts).value(), **mk)

    def map(self, source: str, kernel: str, arg_lists: Sequence[Sequence[Any]], global_size: Any = None,
            local_size: Any = None, **kw: Any) -> list[Any]:
        return self._call(self._amesh.map, source, kernel, arg_lists, global_size, local_size, **kw)

    def run_many(self, jobs: Sequence[ComputeJob], **kw: Any) -> list[ComputeRun]:
        return self._call(self._amesh.run_many, jobs, **kw)

    def peers(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        return self._call(self._amesh.peers, refresh=refresh)

    @property
    def client(self) -> SyncClient:
        return self._sync

    def close(self) -> None:
        if self._amesh.lease is not None:
            self._sync.run_async(_close_lease, self._amesh.lease)
        self._sync.close()

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["AsyncMesh", "BufferTooLarge", "BuildFailed", "ComputeFailed", "ComputeJob", "ComputeRefused",
           "ComputeRun", "In", "InOut", "Local", "Mesh", "Out", "Pipeline", "Program", "RedundancyUnavailable",
           "Scalar", "Scratch", "TimeLimitExceeded", "VerificationFailed", "compare_outputs", "make_job"]
