"""The scheduler on real node processes on loopback: streamed inputs, worker and coordinator kill -9,
cancel, and bad input. Each test waits on conditions with generous deadlines."""

import hashlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

from scheduler.client.client import SyncClient, local_address
from scheduler.devtools.localmesh import make_nodes, running_mesh, sees_all, start_mesh, start_nodes, wait_for
from scheduler.node.outputs import SMALL_OUTPUT

FAST = ["--advert-interval", "0.5", "--advert-ttl", "10"]  # a long ttl: loaded CI machines deliver gossip late


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("mesh"), 3, FAST) as nodes:
        yield nodes


def client_of(node) -> SyncClient:
    addr, tok, pid, insecure = local_address(node.data_dir)
    return SyncClient(addr, token=tok, peer_id=pid, insecure=insecure)


def placed_on(c: SyncClient, job_id: str) -> str:
    return wait_for(lambda: (st := c.status(job_id))["state"] == "running" and st["peer"], 60,
                    f"job {job_id} to run")


def test_checksum_of_a_256_mib_streamed_input(mesh, tmp_path):
    path = tmp_path / "big.bin"
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(256):
            block = hashlib.sha256(str(i).encode()).digest() * (1 << 15)  # 1 MiB, cheap to make
            f.write(block)
            h.update(block)
    with client_of(mesh[0]) as c:
        res = c.run("checksum", {}, input=path, timeout_s=600)
    assert res.body["sha256"] == h.hexdigest()
    assert res.body["bytes"] == 256 << 20


def test_worker_killed_mid_job_completes_elsewhere_exactly_once(tmp_path):
    nodes = make_nodes(tmp_path, 3, FAST)
    nodes[0].extra += ["--devices", "none"]  # the coordinator runs nothing, so the jobs run on workers
    try:
        start_nodes(nodes)
        wait_for(lambda: sees_all(nodes), 90, "three nodes to see each other")
        with client_of(nodes[0]) as c:
            ids = [c.submit("sleep", {"seconds": 4.0})["id"] for _ in range(2)]
            victim_job = ids[0]
            victim = placed_on(c, victim_job)
            victim_node = next(nd for nd in nodes if nd.peer_id == victim)
            victim_node.proc.send_signal(signal.SIGKILL)
            victim_node.proc.wait()
            res = c.result(victim_job, timeout=120)
            assert res.ok, res.reason
            assert res.worker != victim
            status = c.status(victim_job)
            assert status["attempt"] >= 2 and status["state"] == "done"
            assert len(status["failures"]) >= 1
            others = [c.result(j, timeout=120) for j in ids]
            assert all(r.ok for r in others), [(r.reason, c.status(r.job_id)) for r in others]
            listed = [j for j in c.list() if j["id"] == victim_job]
            assert len(listed) == 1
    finally:
        for nd in nodes:
            nd.kill()


def test_coordinator_kill_9_keeps_jobs_and_results(tmp_path):
    nodes = start_mesh(tmp_path, 2, extra=FAST)
    try:
        wait_for(lambda: sees_all(nodes), 90, "two nodes to see each other")
        coord = nodes[0]
        with client_of(coord) as c:
            done = c.run("echo", {"n": 7}, job_id="kept-result", input=b"output bytes")
            assert done.body["echo"] == {"n": 7} and done.output == b"output bytes"
            lost = c.run("echo", {"n": 8}, job_id="file-gone", input=os.urandom(SMALL_OUTPUT + 1))
            c.submit("sleep", {"seconds": 2.0}, job_id="resumed-job")
        coord.proc.send_signal(signal.SIGKILL)
        coord.proc.wait()
        # a small output is kept in the journal, not as a file: it is served from there after the restart
        assert not [p for p in (coord.data_dir / "results").iterdir() if p.read_bytes() == done.output]
        # a finished job whose output file went missing (the disk, an operator) must still answer, not hang
        outputs = [p for p in (coord.data_dir / "results").iterdir() if p.read_bytes() == lost.output]
        assert len(outputs) == 1
        outputs[0].unlink()
        coord.start([nodes[1].multiaddr])
        coord.wait_up()
        with client_of(coord) as c:
            assert c.status("kept-result")["state"] == "done"
            again = c.result("kept-result")
            assert again.ok and again.body["echo"] == {"n": 7} and again.output == b"output bytes"
            assert c.result("file-gone", timeout=30).state == "done"
            resumed = c.result("resumed-job", timeout=120)
            assert resumed.ok, resumed.reason
            # idempotent resubmit of a finished job id: the same job, not a new run
            ans = c.submit("echo", {"n": 7}, job_id="kept-result", input=b"output bytes")
            assert ans["duplicate"] and ans["id"] == "kept-result"
    finally:
        for nd in nodes:
            nd.kill()


def _rpc_served(node, method: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("gpumesh_dataplane_rpc_requests_total{") and f'method="{method}"' in line)


def test_run_is_one_round_trip_with_inline_and_streamed_input(mesh):
    """`Client.run` submits and gets the outcome (and the output bytes) on one call: no job.result request."""
    big = os.urandom((1 << 20) + 12345)  # over the inline limit: streamed up, and echoed back as output
    before = _rpc_served(mesh[1], "job.result"), _rpc_served(mesh[1], "job.submit")
    with client_of(mesh[1]) as c:
        small = c.run("echo", {"k": 1}, input=b"abc")
        large = c.run("echo", {"k": 2}, input=big)
    assert small.ok and small.output == b"abc" and small.body["echo"] == {"k": 1}
    assert large.ok and large.output == big and large.body["input_bytes"] == len(big)
    assert (_rpc_served(mesh[1], "job.result"), _rpc_served(mesh[1], "job.submit")) == (before[0], before[1] + 2)


def test_watch_streams_every_state_of_a_job(mesh):
    """`mesh-node watch --json` (the form for scripts; on a terminal it draws progress bars) follows a job."""
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "watch", "--json", "--data-dir",
                             str(mesh[2].data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        events: list[dict] = []
        deadline = time.monotonic() + 60

        def read_until(done) -> None:
            while not done():
                assert time.monotonic() < deadline, \
                    f"watch showed only {events}; {proc.stderr.read() if proc.poll() is not None else ''}"
                if sel.select(timeout=1.0):
                    events.append(json.loads(proc.stdout.readline()))

        with client_of(mesh[2]) as c:
            # the stream is live once it has shown an event: until then, probe jobs (their early states may be
            # missed), then follow a job submitted after that from its first state to its last
            while not events:
                c.submit("echo", {"probe": True})
                probe_until = time.monotonic() + 2
                read_until(lambda: bool(events) or time.monotonic() > probe_until)  # noqa: B023 - read at once
            job_id = c.submit("sleep", {"seconds": 1.0})["id"]  # long enough to be placed, then reported running
            read_until(lambda: any(e["id"] == job_id and e.get("final") for e in events))
        mine = [e for e in events if e["id"] == job_id]
        changes = [e for e in mine if "progress" not in e]  # the worker's progress reports come in between
        assert [e["state"] for e in changes] == ["placed", "running", "done"] and all(e["kind"] == "sleep" for e in mine)
        reports = [e for e in mine if "progress" in e]
        assert all(e["state"] == "running" and 0.0 <= e["progress"] <= 1.0 for e in reports)
    finally:
        proc.kill()
        proc.wait()


def test_cancel_of_a_long_sleep_frees_the_slot(mesh):
    with client_of(mesh[1]) as c:
        job = c.submit("sleep", {"seconds": 600})["id"]
        worker = placed_on(c, job)
        node = next(nd for nd in mesh if nd.peer_id == worker)

        def free_slots():
            me = next(p for p in node.call("peers") if p["self"])
            return me["free_slots"]

        wait_for(lambda: free_slots() == 0, 120, "the worker's slot to be taken")
        assert c.cancel(job)["state"] == "cancelled"
        wait_for(lambda: free_slots() == 1, 120, "the worker's slot to be freed")
        res = c.result(job)
        assert res.state == "cancelled" and "cancelled" in res.reason


@pytest.mark.parametrize("kind,spec,kw,needle", [
    ("no.such.kind", {}, {}, "unknown job kind"),
    ("sleep", {"seconds": -1}, {}, "seconds"),
    ("sleep", {"seconds": 1, "bogus": 2}, {}, "bogus"),
    ("echo", {}, {"requirements": {"device_kind": "gpu", "min_memory_bytes": 1 << 50}}, "no "),
])
def test_bad_jobs_get_a_clear_error(mesh, kind, spec, kw, needle):
    from mesh.bigtcp.rpc import RpcError
    with client_of(mesh[0]) as c:
        try:
            ans = c.submit(kind, spec, **kw)
        except RpcError as e:
            assert needle in e.message
        else:
            assert not ans["accepted"] and needle in ans["message"], ans
        assert c.run("echo", {"still": "fine"}).ok


def test_oversized_inline_input_is_refused(mesh):
    from mesh.bigtcp.rpc import RpcError
    from scheduler.core.job import INLINE_INPUT_LIMIT, Job
    with client_of(mesh[0]) as c:
        job = Job(kind="echo", input=os.urandom(INLINE_INPUT_LIMIT + 1))
        with pytest.raises(RpcError, match="inline input"):
            c._rpc.call("job.submit", {"job": job.to_wire(0.0)})


def test_submit_many_streams_every_result_on_one_call(mesh):
    """`Client.submit_many`: 40 jobs on one job.submit_many stream, each result back with its own output
    inline (no job.submit, no job.result per job); a refused job comes as a failed item and stops nothing; an
    output over the inline size is fetched with job.result."""
    inputs = [os.urandom(n) for n in range(40)]
    specs = [{"i": n} for n in range(40)]
    before = {m: _rpc_served(mesh[1], m) for m in ("job.submit", "job.result", "job.submit_many")}
    with client_of(mesh[1]) as c:
        results = c.run_async(c.client.run_many, "echo", specs, inputs=inputs)
        mixed = c.run_async(c.client.run_many, "sleep", [{"seconds": 0.01}, {"seconds": -1}, {"seconds": 0.01}])
        big = os.urandom(100_000)
        fetched = c.run_async(c.client.run_many, "echo", [{"big": True}], inputs=[big])
    assert [r.ok for r in results] == [True] * 40
    assert [r.body["echo"] for r in results] == specs
    assert [r.output for r in results] == inputs
    assert [r.ok for r in mixed] == [True, False, True]
    assert mixed[1].state == "rejected" and "seconds" in mixed[1].reason
    assert fetched[0].ok and fetched[0].output == big
    after = {m: _rpc_served(mesh[1], m) for m in before}
    assert after == {"job.submit": before["job.submit"], "job.result": before["job.result"] + 1,
                     "job.submit_many": before["job.submit_many"] + 3}


def test_submit_many_refuses_inputs_over_the_inline_limit(mesh):
    from scheduler.core.job import INLINE_INPUT_LIMIT
    with client_of(mesh[0]) as c:
        with pytest.raises(ValueError, match="inline limit"):
            c.run_async(c.client.run_many, "echo", [{}], inputs=[b"x" * (INLINE_INPUT_LIMIT + 1)])
