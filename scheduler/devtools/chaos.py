"""Chaos run: a local mesh of node processes under a steady job load (echo, checksum, zk proofs, render
frames, and poison compute jobs: out-of-bounds writes, image parameters, infinite loops, huge allocations;
`scheduler.devtools.poison`) while a driver kills -9 and restarts nodes (workers and coordinators alike), pauses them
(SIGSTOP/SIGCONT), and, through a fault-injecting proxy in front of every node's data plane
(`scheduler.devtools.faultproxy`), delays, stalls (partitions), corrupts and resets its traffic. At the end it checks:

  * no node process dies from a job (only the driver's kill -9 ends one);
  * every poison job fails with a crash or limit outcome (or is refused at submit) within 2 crashed runners;
  * every accepted job has exactly one outcome, and it is still there when asked again later;
  * every result is correct (echo returns its spec, checksum the SHA-256 of the bytes sent, a proof passes
    the verifier for its statement, a frame matches the numpy reference render);
  * surviving nodes' memory stays bounded;
  * once faults stop, every node is back in every view.

`python -m scheduler.devtools.chaos` (`make chaos`) runs the long version; the test suite runs a short one.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from mesh.bigtcp.rpc import RpcError
from scheduler.client.client import Client, JobResult, local_address
from scheduler.devtools import poison as poison_jobs
from scheduler.devtools.faultproxy import FaultProxy
from scheduler.devtools.localmesh import NodeProc, make_nodes, sees_all, stop_all, wait_for
from scheduler.node import endpoints
from worker.render import kind as rk
from worker.render import reference
from worker.render.camera import Tile, orbit
from worker.render.samples import example
from worker.render.scene import content_hash
from worker.zk import verify

REFUSALS = {"invalid", "invalid_spec", "unknown_kind"}  # RPC errors that are a submit's final answer
FAST = ["--advert-interval", "0.5", "--advert-ttl", "2.5", "--runner-memory-mb", str(poison_jobs.RUNNER_MEMORY_MB)]
MAX_RSS_BYTES = 1536 << 20


@dataclass
class Submitted:
    job_id: str
    node: int
    kind: str
    spec: dict
    input: bytes | None
    check: Callable[[JobResult], str | None]  # why a "done" result is wrong, or None
    poison: Callable[[str, str, str], str | None] | None = None  # a poison job: its outcome's check
    refusal: str = ""  # the submit's message when it was refused
    accepted: bool | None = None  # None: the submit's answer was lost (the node died): resubmit idempotently
    outcome: tuple | None = None
    problem: str | None = None


@dataclass
class Report:
    faults: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    retries: int = 0
    resubmits: int = 0
    violations: list[str] = field(default_factory=list)
    max_rss_mb: float = 0.0
    jobs: int = 0
    kinds: Counter = field(default_factory=Counter)
    poison: Counter = field(default_factory=Counter)  # poison jobs' outcomes
    duration_s: float = 0.0
    proxied_mb: float = 0.0
    corrupted_chunks: int = 0
    connections_reset: int = 0

    def table(self) -> str:
        rows = [("jobs submitted", self.jobs), ("run time", f"{self.duration_s:.0f} s")]
        rows += [(f"jobs: {k}", v) for k, v in sorted(self.kinds.items())]
        rows += [(f"fault: {k}", v) for k, v in sorted(self.faults.items())]
        rows += [(f"outcome: {k}", v) for k, v in sorted(self.outcomes.items())]
        rows += [(f"poison outcome: {k}", v) for k, v in sorted(self.poison.items())]
        rows += [("data plane through the proxies", f"{self.proxied_mb:.0f} MB"),
                 ("chunks corrupted / connections reset", f"{self.corrupted_chunks} / {self.connections_reset}"),
                 ("retries (attempts > 1)", self.retries), ("submits answered after a node came back", self.resubmits),
                 ("max RSS of a node", f"{self.max_rss_mb:.0f} MiB"), ("invariant violations", len(self.violations))]
        w = max(len(str(k)) for k, _ in rows)
        return "\n".join(f"  {str(k):<{w}}  {v}" for k, v in rows)


def _data_port(data_dir: Path) -> int | None:
    ep = endpoints.read(data_dir)
    return ep.data_port if ep is not None else None


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Chaos:
    def __init__(self, root: Path, n: int, seed: int, rate: float, poison: float = 0.08) -> None:
        self.rng = random.Random(seed)
        self.nodes: list[NodeProc] = make_nodes(root, n, FAST)
        self.proxies: list[FaultProxy] = []
        for i, nd in enumerate(self.nodes):  # peers and clients reach each node's data plane through its proxy
            # the node binds port 0 (a new port after each restart): the proxy reads it from its endpoints file
            self.proxies.append(FaultProxy("127.0.0.1", functools.partial(_data_port, nd.data_dir),
                                           seed=seed * 100 + i))
        self._render = _RenderJobs()
        self._net_todo: list[str] = []
        self.rate = rate
        self.poison_every = round(1 / poison) if poison > 0 else 0
        self.jobs: list[Submitted] = []
        self.report = Report()
        self.down: set[int] = set()
        self._seq = 0

    async def boot(self) -> None:
        """Start the nodes, each advertising its proxy's address (bound already). Processes are started from
        the main thread (it outlives them: their parent-death signal follows the thread that started them);
        only the waiting happens in worker threads."""
        for nd, proxy in zip(self.nodes, self.proxies, strict=True):
            nd.extra += ["--advertise-host", proxy.address]
        self.nodes[0].start()
        await trio.to_thread.run_sync(self.nodes[0].wait_up)
        for nd in self.nodes[1:]:
            nd.start([self.nodes[0].multiaddr])
        for nd in self.nodes[1:]:
            await trio.to_thread.run_sync(nd.wait_up)
        await trio.to_thread.run_sync(lambda: wait_for(lambda: sees_all(self.nodes), 120, "the mesh to converge",
                                                       interval=0.2))

    def restart(self, i: int) -> None:
        others = [ep.libp2p[0] for j, nd in enumerate(self.nodes)
                  if j != i and j not in self.down and (ep := nd.current_endpoints()) is not None]
        self.nodes[i].start(others)

    # ---- load ----------------------------------------------------------------------------------------
    def make_job(self, node: int) -> Submitted:
        self._seq += 1
        jid = f"chaos-{self._seq}"
        if self.poison_every and self._seq % self.poison_every == 0:  # every kind in turn, so short runs see all
            pk = poison_jobs.KINDS[(self._seq // self.poison_every - 1) % len(poison_jobs.KINDS)]
            pspec, pdata, pcheck = poison_jobs.job(pk, self._seq)
            return Submitted(jid, node, "compute.opencl", pspec, pdata, lambda res: None, poison=pcheck)
        r = self.rng.random()
        spec: dict[str, Any]
        if r < 0.45:
            spec = {"n": self._seq}
            return Submitted(jid, node, "echo", spec, None, _body_is({"echo": spec}))
        if r < 0.75:
            size = self.rng.choice([4096, 200_000, 1_500_000])
            data = self.rng.randbytes(size)
            return Submitted(jid, node, "checksum", {}, data,
                             _body_is({"sha256": hashlib.sha256(data).hexdigest(), "bytes": size}))
        if r < 0.9:
            spec = {"air": "cubic", "steps": 64,
                    "public_inputs": {"x0": self._seq, "c": 5}}
            return Submitted(jid, node, "zk.prove", spec, None, _proof_verifies(spec))
        spec, check = self._render.job(self.rng.randrange(8))
        return Submitted(jid, node, "render.frame", spec, None, check)

    async def submit(self, job: Submitted) -> None:
        try:
            addr, tok, pid, _ = local_address(self.nodes[job.node].data_dir)
            with trio.fail_after(20):
                async with Client.connect(addr, token=tok, peer_id=pid) as c:
                    ans = await c.submit(job.kind, job.spec, input=job.input, job_id=job.job_id, max_attempts=6)
            job.accepted = bool(ans["accepted"])
            job.refusal = "" if job.accepted else str(ans.get("message", ""))
        except RpcError as e:
            if e.code in REFUSALS:  # refused for what the job is (a bad spec): a definite answer
                job.accepted, job.refusal = False, f"{e.code}: {e.message}"
            else:
                job.accepted = None
        except Exception:
            job.accepted = None  # unknown: asked again at the end

    async def load(self, stop: trio.Event) -> None:
        async with trio.open_nursery() as n:
            while not stop.is_set():
                live = [i for i in range(len(self.nodes)) if i not in self.down]
                if live:
                    job = self.make_job(self.rng.choice(live))
                    self.jobs.append(job)
                    n.start_soon(self.submit, job)
                await trio.sleep(1 / self.rate)

    # ---- faults --------------------------------------------------------------------------------------
    async def faults(self, stop: trio.Event) -> None:
        """Faults one after another, in rounds that hold each kind in a shuffled order (so even a short run
        has every kind): kill -9, SIGSTOP, and two data-plane faults."""
        todo: list[str] = []
        while not stop.is_set():
            await trio.sleep(self.rng.uniform(1.0, 3.0))
            self.check_alive()
            up = [i for i in range(len(self.nodes)) if i not in self.down]
            if len(up) <= 2:
                continue
            if not todo:
                todo = ["kill", "stop", "network", "network"]
                self.rng.shuffle(todo)
            kind = todo.pop()
            i = self.rng.choice(up)
            nd = self.nodes[i]
            if kind == "network":
                await self.network_fault(self.proxies[i])
            elif kind == "kill":
                self.report.faults["kill -9 + restart"] += 1
                nd.process.send_signal(signal.SIGKILL)
                nd.process.wait()
                self.down.add(i)
                await trio.sleep(self.rng.uniform(0.5, 3.0))
                self.restart(i)
                self.down.discard(i)
            else:
                self.report.faults["SIGSTOP/SIGCONT"] += 1
                nd.process.send_signal(signal.SIGSTOP)
                await trio.sleep(self.rng.uniform(0.5, 4.0))
                nd.process.send_signal(signal.SIGCONT)
            self.report.max_rss_mb = max(self.report.max_rss_mb,
                                         max(_rss(x.process.pid) for x in self.nodes) / (1 << 20))

    async def network_fault(self, proxy: FaultProxy) -> None:
        """One fault on a node's data plane (all its connections, both directions)."""
        if not self._net_todo:
            self._net_todo = ["delay", "stall", "corrupt", "reset"]
            self.rng.shuffle(self._net_todo)
        f, r = proxy.faults, self._net_todo.pop()
        if r == "delay":
            self.report.faults["data plane: delay 20-200 ms per chunk"] += 1
            f.delay_s = self.rng.uniform(0.02, 0.2)
            await trio.sleep(self.rng.uniform(2.0, 5.0))
            f.delay_s = 0.0
        elif r == "stall":
            self.report.faults["data plane: stall (partition) 1-8 s"] += 1
            f.stall()
            await trio.sleep(self.rng.uniform(1.0, 8.0))
            f.unstall()
        elif r == "corrupt":
            self.report.faults["data plane: corrupt bytes"] += 1
            f.corrupt_chunks = self.rng.randint(1, 3)
            with trio.move_on_after(10):  # until traffic has carried them
                while f.corrupt_chunks:
                    await trio.sleep(0.1)
            f.corrupt_chunks = 0
        else:
            self.report.faults["data plane: reset connections"] += 1
            proxy.reset_all()

    # ---- checks --------------------------------------------------------------------------------------
    def check_alive(self) -> None:
        """No node dies but by the driver's hand (a job, poison or not, must never take one down)."""
        for i, nd in enumerate(self.nodes):
            if i not in self.down and nd.proc is not None and nd.proc.poll() is not None:
                self.report.violations.append(f"{nd.data_dir.name} died on its own (exit code {nd.proc.returncode}): "
                                              f"{nd.log_tail(600)!r}")
                self.down.add(i)  # restarted at the end, so the other checks can run

    async def settle(self, timeout: float) -> None:
        """Ask each job's coordinator for its outcome until every job has one (resubmitting unknown ones)."""
        deadline = trio.current_time() + timeout
        pending = list(self.jobs)
        while pending and trio.current_time() < deadline:
            for job in list(pending):
                if job.accepted is None:
                    await self.submit(job)
                    self.report.resubmits += 1
                    if job.accepted is None:
                        continue
                if job.accepted is False:
                    job.outcome = ("rejected", "", None, 0)
                    pending.remove(job)
                    continue
                try:
                    addr, tok, pid, _ = local_address(self.nodes[job.node].data_dir)
                    with trio.fail_after(30):
                        async with Client.connect(addr, token=tok, peer_id=pid) as c:
                            res = await c.result(job.job_id, wait=True)
                            st = await c.status(job.job_id)
                    job.outcome = (res.state, res.reason, res.body, st.get("attempt", 1))
                    if res.ok:
                        job.problem = await trio.to_thread.run_sync(job.check, res)
                    pending.remove(job)
                except Exception:
                    continue
            if pending:
                await trio.sleep(0.5)
        for job in pending:
            self.report.violations.append(f"{job.job_id} ({job.kind}, submitted to node{job.node}): no outcome "
                                          f"within {timeout:g} s; {await self._describe(job)}")

    async def _describe(self, job: Submitted) -> str:
        """What the job's coordinator says about it now (for a violation's message)."""
        if job.accepted is None:
            return "its submit was never answered"
        try:
            addr, tok, pid, _ = local_address(self.nodes[job.node].data_dir)
            with trio.fail_after(10):
                async with Client.connect(addr, token=tok, peer_id=pid) as c:
                    st = await c.status(job.job_id)
            return (f"status: {st.get('state')} attempt {st.get('attempt')} on {str(st.get('peer'))[-12:]}, "
                    f"failures {st.get('failures')}, reason {st.get('reason')!r}")
        except Exception as e:
            return f"status unavailable: {e!r}"

    async def recheck(self) -> None:
        """No result lost after it was reported: ask again, every outcome must be the same."""
        by_node: dict[int, list[Submitted]] = {}
        for j in self.jobs:
            if j.outcome and j.outcome[0] != "rejected":
                by_node.setdefault(j.node, []).append(j)
        for i, jobs in by_node.items():
            addr, tok, pid, _ = local_address(self.nodes[i].data_dir)
            async with Client.connect(addr, token=tok, peer_id=pid) as c:
                for j in jobs:
                    res = await c.result(j.job_id, wait=False)
                    state, _, body, _ = j.outcome or ("", "", None, 0)
                    if (res.state, res.body) != (state, body):
                        self.report.violations.append(f"{j.job_id}: outcome changed from {state} to {res.state}")

    def verdict(self) -> None:
        self.report.kinds = Counter(j.kind for j in self.jobs)
        self.report.proxied_mb = sum(p.stats.bytes for p in self.proxies) / 1e6
        self.report.corrupted_chunks = sum(p.stats.corrupted for p in self.proxies)
        self.report.connections_reset = sum(p.stats.resets for p in self.proxies)
        for j in self.jobs:
            if j.outcome is None:
                continue
            state, reason, body, attempt = j.outcome
            if j.poison is not None:
                self.report.poison[state] += 1
                problem = j.poison(state, reason, j.refusal)
                if problem:
                    self.report.violations.append(f"{j.job_id} (poison): {problem}")
                continue
            self.report.outcomes[state] += 1
            if attempt and attempt > 1:
                self.report.retries += 1
            if state == "done" and j.problem:
                self.report.violations.append(f"{j.job_id} ({j.kind}): wrong result: {j.problem}")
        for nd in self.nodes:
            rss = _rss(nd.process.pid)
            self.report.max_rss_mb = max(self.report.max_rss_mb, rss / (1 << 20))
            if rss > MAX_RSS_BYTES:
                self.report.violations.append(f"{nd.data_dir.name}: RSS {rss >> 20} MiB over {MAX_RSS_BYTES >> 20} MiB")


def _body_is(expected: dict) -> Callable[[JobResult], str | None]:
    def check(res: JobResult) -> str | None:
        wrong = {k: res.body.get(k) for k, v in expected.items() if res.body.get(k) != v}
        return f"{wrong} (expected {expected})" if wrong else None
    return check


def _proof_verifies(spec: dict) -> Callable[[JobResult], str | None]:
    def check(res: JobResult) -> str | None:
        v = verify(res.output, spec)
        return None if v.ok else f"the verifier rejects the proof: {v.reason}"
    return check


class _RenderJobs:
    """Small frames of the example scene from 8 orbit poses, each checked against the numpy reference (the
    scene, its hash and the poses are made once; each pose's reference frame when first needed)."""

    W, H = 48, 36

    def __init__(self) -> None:
        self.scene = example("spheres", self.W, self.H)
        self.scene_hash = content_hash(self.scene)
        self.poses = orbit((0.0, 0.3, 0.0), 2.6, 1.0, 8)
        self._refs: dict[int, Any] = {}

    def job(self, k: int) -> tuple[dict, Callable[[JobResult], str | None]]:
        spec = rk.make_spec(self.scene_hash, self.poses[k], scene=self.scene)

        def check(res: JobResult) -> str | None:
            if k not in self._refs:
                self._refs[k] = reference.render(self.scene, self.poses[k])[0]
            try:
                rgba, _ = rk.decode_output(Tile.full(self.W, self.H), res.output)
            except ValueError as e:
                return f"malformed frame: {e}"
            same = float(np.mean(np.all(rgba == self._refs[k], axis=-1)))
            return None if same >= 0.995 else f"only {same:.1%} of the pixels match the reference"
        return spec, check


async def _run(ch: Chaos, duration: float, min_faults: int, min_jobs: int, cap_s: float) -> None:
    async with trio.open_nursery() as proxies:
        for proxy in ch.proxies:
            await proxies.start(proxy.serve)
        await ch.boot()
        await _faults_and_checks(ch, duration, min_faults, min_jobs, cap_s)
        proxies.cancel_scope.cancel()


async def _faults_and_checks(ch: Chaos, duration: float, min_faults: int = 0, min_jobs: int = 0,
                             cap_s: float = 600.0) -> None:
    """Load and faults for `duration` seconds and, past it, until at least `min_faults` faults were injected
    and `min_jobs` jobs submitted (a slow machine takes longer, it does not test less), `cap_s` at most."""
    stop = trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(ch.load, stop)
        n.start_soon(ch.faults, stop)
        await trio.sleep(duration)
        with trio.move_on_after(max(0.0, cap_s - duration)):
            while sum(ch.report.faults.values()) < min_faults or len(ch.jobs) < min_jobs:
                await trio.sleep(0.2)
        stop.set()
    ch.check_alive()
    for p in ch.proxies:  # faults stop: the mesh must heal
        p.faults.delay_s, p.faults.corrupt_chunks = 0.0, 0
        p.faults.unstall()
    for i in sorted(ch.down):
        ch.restart(i)
    ch.down.clear()
    for nd in ch.nodes:
        if nd.process.poll() is None:
            nd.process.send_signal(signal.SIGCONT)
    def all_up() -> None:
        for nd in ch.nodes:
            nd.wait_up()

    await trio.to_thread.run_sync(all_up)
    await ch.settle(timeout=180)
    await ch.recheck()
    try:
        await trio.to_thread.run_sync(lambda: wait_for(lambda: sees_all(ch.nodes), 60, "all nodes back in all views"))
    except TimeoutError as e:
        ch.report.violations.append(str(e))


def run(duration: float = 60.0, nodes: int = 5, seed: int = 1, rate: float = 10.0, root: Path | None = None,
        min_faults: int = 0, min_jobs: int = 0, cap_s: float = 600.0, poison: float = 0.08) -> Report:
    """A chaos run of at least `duration` seconds that goes on until `min_faults` faults were injected and
    `min_jobs` jobs submitted (at most `cap_s` seconds of load); `poison`: the share of poison jobs."""
    with tempfile.TemporaryDirectory(prefix="gpumesh-chaos-") as tmp:
        ch = Chaos(Path(root or tmp), nodes, seed, rate, poison)
        t0 = time.monotonic()
        try:
            trio.run(_run, ch, duration, min_faults, min_jobs, cap_s)
            ch.verdict()
        finally:
            stop_all(ch.nodes)
        ch.report.jobs = len(ch.jobs)
        ch.report.duration_s = time.monotonic() - t0
        return ch.report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scheduler.devtools.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=float(os.environ.get("CHAOS_DURATION", 180)),
                   help="seconds of load under faults (default 180)")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=10.0, help="jobs submitted per second")
    p.add_argument("--poison", type=float, default=0.08,
                   help="share of the jobs that are poison (every kind of scheduler.devtools.poison in turn; 0: none)")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep the nodes' data dirs and logs in DIR (default: a temporary dir, removed)")
    args = p.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    rep = run(args.duration, args.nodes, args.seed, args.rate, root=args.keep, poison=args.poison)
    print("chaos run:")
    print(rep.table())
    for v in rep.violations[:50]:
        print("  VIOLATION", v)
    return 1 if rep.violations else 0


if __name__ == "__main__":
    sys.exit(main())
