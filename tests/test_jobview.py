"""One mesh, one job view: jobs, job, cancel and result answer from any node for a job submitted through any
node; ids carry their coordinator's tag; unique prefixes work, ambiguous ones are refused; `jobs` filters,
has times and groups render tiles under their frame."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.bigtcp.rpc import RpcError
from scheduler.client.client import SyncClient, local_address
from scheduler.devtools.localmesh import running_mesh, wait_for
from scheduler.node.jobview import Filters, frame_of, id_tag

FAST = ["--advert-interval", "0.5", "--advert-ttl", "10"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("jv"), 2, FAST) as nodes:
        yield nodes


def client_of(node) -> SyncClient:
    addr, tok, pid, insecure = local_address(node.data_dir)
    return SyncClient(addr, token=tok, peer_id=pid, insecure=insecure)


def cli(node, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args, "--data-dir", str(node.data_dir)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, "COLUMNS": "200"})


def test_an_id_names_its_coordinator(mesh):
    with client_of(mesh[0]) as c:
        job_id = c.submit("echo", {"x": 1})["id"]
    assert job_id.startswith(id_tag(mesh[0].peer_id) + "-")


def test_status_result_and_list_from_another_node(mesh, tmp_path):
    with client_of(mesh[0]) as c0:
        job_id = c0.submit("echo", {"hello": "mesh"})["id"]
    with client_of(mesh[1]) as c1:
        res = c1.result(job_id)  # waits, from the node that did not coordinate it
        assert res.state == "done" and res.body["echo"] == {"hello": "mesh"}
        st = c1.status(job_id)
        assert st["id"] == job_id and st["state"] == "done" and st["coordinator"] == mesh[0].peer_id
        assert st["submitted"] <= st["finished"] <= time.time() + 1
        rows = c1.list(50)
        assert job_id in {r["id"] for r in rows}
        local_only = c1.list(50, local=True)
        assert job_id not in {r["id"] for r in local_only}
    # the CLI: `result` after a submit without --wait, through the other node
    r = cli(mesh[1], "result", job_id, "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "result.json").read_text())["body"]["echo"] == {"hello": "mesh"}


def test_streamed_output_is_relayed_through_the_node_asked(mesh):
    data = os.urandom(3 << 20)
    with client_of(mesh[0]) as c0:
        job_id = c0.submit("echo", {}, input=data)["id"]  # echo returns its input as output
    with client_of(mesh[1]) as c1:
        res = c1.result(job_id)
    assert res.state == "done" and res.output == data


def test_unique_prefix_works_and_ambiguous_is_refused(mesh):
    with client_of(mesh[0]) as c0:
        a = c0.submit("echo", {}, job_id="prefixcase-alpha")["id"]
        b = c0.submit("echo", {}, job_id="prefixcase-beta")["id"]
        c0.result(a)
        c0.result(b)
    with client_of(mesh[1]) as c1:
        assert c1.status("prefixcase-al")["id"] == a
        with pytest.raises(RpcError) as e:
            c1.status("prefixcase-")
        assert e.value.code == "ambiguous" and a in e.value.message and b in e.value.message
        with pytest.raises(RpcError) as e:
            c1.status("nosuchjob-at-all")
        assert e.value.code == "not_found"
        own = c1.list(50)
        tagged = next(r["id"] for r in own if r["id"].startswith(id_tag(mesh[0].peer_id) + "-"))
        assert c1.status(tagged[:12])["id"] == tagged


def test_cancel_from_another_node(mesh):
    with client_of(mesh[0]) as c0:
        job_id = c0.submit("sleep", {"seconds": 30.0})["id"]
    with client_of(mesh[1]) as c1:
        wait_for(lambda: c1.status(job_id)["state"] in ("placed", "running"), 60, "the sleep to be placed")
        c1.cancel(job_id[:14])
        assert c1.result(job_id).state == "cancelled"


def test_filters_and_not_found_exit_code(mesh):
    with client_of(mesh[0]) as c0:
        done_id = c0.submit("echo", {"f": 1})["id"]
        c0.result(done_id)
    with client_of(mesh[1]) as c1:
        echoes = c1.list(100, kind="echo", state="done")
        assert echoes and all(r["kind"] == "echo" and r["state"] == "done" for r in echoes)
        assert done_id in {r["id"] for r in echoes}
        assert not c1.list(100, kind="echo", since=time.time() + 3600)
        assert len(c1.list(1)) == 1
    r = cli(mesh[1], "jobs", "--kind", "echo", "--state", "done", "--since", "1h", "--json")
    assert r.returncode == 0, r.stderr
    assert done_id in {row["id"] for row in json.loads(r.stdout)}
    r = cli(mesh[1], "job", "nosuchjob-at-all")
    assert r.returncode == 6 and "not_found" in r.stderr


def test_jobs_piped_into_head_has_no_broken_pipe(mesh):
    with client_of(mesh[0]) as c0:
        for i in range(5):
            c0.submit("echo", {"i": i})
    p = subprocess.run(f"{sys.executable} -m scheduler.cli jobs --data-dir {mesh[1].data_dir} | head -1",
                       shell=True, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "Broken pipe" not in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_tiles_are_grouped_under_their_frame():
    from scheduler.cli.jobs_cli import group_tiles

    assert frame_of("render-ab12-7-f3t1") == "render-ab12-f3" and frame_of("x7Qp2a-3f9d") is None
    rows = [{"id": f"render-ab12-{k}-f3t{k}", "kind": "render.frame", "state": "done", "frame": "render-ab12-f3",
             "peer": f"p{k % 2}", "submitted": 1.0 + k, "finished": 2.0 + k} for k in range(4)]
    rows.insert(2, {"id": "echo-1", "kind": "echo", "state": "done", "frame": None})
    grouped = group_tiles(rows)
    assert [h["id"] for h, _ in grouped] == ["render-ab12-f3", "echo-1"]
    head, tiles = grouped[0]
    assert len(tiles) == 4 and head["state"] == "done" and head["reason"] == "4 tile(s)"
    assert head["peer"] == "2 worker(s)"


def test_filters_are_validated():
    with pytest.raises(RpcError):
        Filters({"state": ["nonsense"]})
    f = Filters({"state": "done", "kind": "render", "limit": 10**9})
    assert f.limit == 1000
    assert f.keep({"state": "done", "kind": "render.frame", "submitted": 5.0})
    assert not f.keep({"state": "done", "kind": "echo", "submitted": 5.0})


def test_watch_on_one_node_follows_jobs_of_another(mesh):
    import selectors

    proc = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "watch", "--json", "--data-dir",
                             str(mesh[1].data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        events: list[dict] = []

        def read_some() -> None:
            if proc.poll() is not None:
                raise AssertionError(f"watch exited: {proc.stderr.read()}")
            if sel.select(timeout=0.5):
                events.append(json.loads(proc.stdout.readline()))

        with client_of(mesh[0]) as c0:
            probes: set[str] = set()

            def relayed() -> bool:  # node 1 follows node 0 once it shows one of node 0's jobs
                probes.add(c0.submit("echo", {"probe": True})["id"])
                read_some()
                return any(e["id"] in probes for e in events)
            wait_for(relayed, 120, "node 1's watch to relay node 0's jobs", interval=0.5)
            job_id = c0.submit("sleep", {"seconds": 1.0})["id"]
            wait_for(lambda: read_some() or any(e["id"] == job_id and e.get("final") for e in events), 120,
                     "the job's final state on the other node's watch", interval=0.0)
        mine = [e["state"] for e in events if e["id"] == job_id]
        assert mine[-1] == "done" and "running" in mine
    finally:
        proc.kill()
        proc.wait()
