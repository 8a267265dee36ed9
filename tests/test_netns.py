"""Four "hosts" as Linux network namespaces on one bridge: each node has its own address and joins by address.

    hub namespace: bridge br0  <- veth ->  host0 (10.99.0.11)  host1 (.12)  host2 (.13)  host3 (.14)

Views converge; jobs submitted on host0 (a gateway that runs none itself) run on the other hosts; the link of
a host running a job is cut (`ip link set eth0 down` in its namespace): the others expire it, it expires them,
and its job is placed again and finishes elsewhere exactly once; the link comes back and it rejoins. Needs root
and iproute2 (CI runs as root); skips with the reason otherwise. Everything lives in namespaces created here (nothing touches the host's own
network), and they are deleted on the way out, pass or fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from scheduler.devtools.localmesh import NodeProc, wait_for

SUBNET = "10.99.0"
N_HOSTS = 4
P2P_PORT, DATA_PORT, METRICS_PORT = 4001, 4002, 9464
ADVERT = ["--advert-interval", "0.5", "--advert-ttl", "3"]
SLEEP_S = 8.0  # long enough to be cut mid-job: seeing it placed and the TTL expiry take a few seconds


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


class Net:
    """A bridge in its own namespace and one namespace per host, wired with veth pairs."""

    def __init__(self, n: int):
        tag = uuid.uuid4().hex[:6]
        self.hub = f"gm{tag}hub"
        self.hosts = [f"gm{tag}h{i}" for i in range(n)]
        self.veths = [f"gm{tag}v{i}" for i in range(n)]  # hub side; 11 chars, under IFNAMSIZ
        self.addrs = [f"{SUBNET}.{11 + i}" for i in range(n)]
        self.created: list[str] = []

    def up(self) -> None:
        ip("netns", "add", self.hub)
        self.created.append(self.hub)
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for ns, veth, addr in zip(self.hosts, self.veths, self.addrs, strict=True):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", self.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.hub, "link", "set", veth, "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for ns in reversed(self.created):  # deleting a namespace deletes its links, veth peers and the bridge
            ip("netns", "del", ns, check=False)
        self.created.clear()

    def set_link(self, i: int, state: str) -> None:
        ip("-n", self.hosts[i], "link", "set", "eth0", state)


class NsNode(NodeProc):
    """A real mesh-node process inside a namespace, listening on that host's address."""

    netns: str = ""
    addr: str = ""

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.addr}/tcp/{P2P_PORT}/p2p/{self.peer_id}"

    def start(self, bootstrap: list[str] = ()) -> NsNode:
        # fixed ports are safe here: each host is its own network namespace, nothing else binds there
        args = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "scheduler.cli", "run",
                "--data-dir", str(self.data_dir), "--listen", f"/ip4/{self.addr}/tcp/{P2P_PORT}",
                "--data-listen", f"{self.addr}:{DATA_PORT}", "--metrics-listen", f"{self.addr}:{METRICS_PORT}",
                "--exit-with-parent", *self.extra]
        for b in bootstrap:
            args += ["--bootstrap", b]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "node.log"
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                         cwd=Path(__file__).resolve().parent.parent)
        return self


@pytest.fixture
def net():
    if shutil.which("ip") is None:
        pytest.skip("ip not found: install the Debian package 'iproute2' (apt-get install iproute2)")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    n = Net(N_HOSTS)
    try:
        n.up()
    except RuntimeError as e:
        n.down()
        pytest.skip(f"network namespaces unavailable here: {e}")
    try:
        yield n
    finally:
        n.down()
        leftover = [ns for ns in n.hosts + [n.hub] if ns in ip("netns", "list", check=False).stdout]
        assert not leftover, f"namespaces left behind: {leftover}"


def view(nd: NodeProc) -> set[str]:
    return {p["peer_id"] for p in nd.call("peers") if not p["self"]}


# A client living inside a host's namespace (its data plane is only reachable there): one process, one
# connection, commands as JSON lines on stdin, answers as JSON lines on stdout.
CLIENT = """
import json, sys
from pathlib import Path
from scheduler.client.client import SyncClient, local_address
addr, tok, pid, insecure = local_address(Path(sys.argv[1]))
with SyncClient(addr, token=tok, peer_id=pid, insecure=insecure) as c:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        method, args = json.loads(line)
        try:
            out = {"ok": getattr(c, method)(*args)}
        except Exception as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out, default=str), flush=True)
"""


class NsClient:
    def __init__(self, nd: NsNode):
        self.proc = subprocess.Popen(["ip", "netns", "exec", nd.netns, sys.executable, "-c", CLIENT, str(nd.data_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=Path(__file__).resolve().parent.parent)
        assert json.loads(self.proc.stdout.readline() or "{}").get("ready"), "client did not start"

    def __call__(self, method: str, *args):
        self.proc.stdin.write(json.dumps([method, list(args)]) + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        if "error" in out:
            raise RuntimeError(out["error"])
        return out["ok"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_four_hosts_converge_expire_a_cut_host_and_take_it_back(net, tmp_path):
    nodes: list[NsNode] = []
    clients: list[NsClient] = []
    for i, (ns, addr) in enumerate(zip(net.hosts, net.addrs, strict=True)):
        gateway = ["--devices", "none"] if i == 0 else []  # host0 coordinates and runs nothing itself
        nd = NsNode(tmp_path / f"host{i}", [*ADVERT, *gateway])
        nd.netns, nd.addr = ns, addr
        nodes.append(nd)
    try:
        nodes[0].start()
        nodes[0].wait_up()
        for nd in nodes[1:]:
            nd.start([nodes[0].multiaddr])  # bootstrapped by address, across the bridge
        for nd in nodes:
            nd.wait_up()
        ids = [nd.peer_id for nd in nodes]

        def converged() -> bool:
            return all(view(nd) == set(ids) - {nd.peer_id} for nd in nodes)
        wait_for(converged, 120, "4 hosts to see each other")

        # each host advertises its own address for libp2p and the data plane (once its data plane is up)
        def addresses_right() -> bool:
            for p in nodes[0].call("peers"):
                i = ids.index(p["peer_id"])
                if p["data_addr"] != f"{net.addrs[i]}:{DATA_PORT}" or not any(
                        a.startswith(f"/ip4/{net.addrs[i]}/tcp/{P2P_PORT}") for a in p["addrs"]):
                    return False
            return True
        wait_for(addresses_right, 60, "every host to advertise its own libp2p and data-plane address")

        # jobs submitted on host0 (which runs none itself) run on the other hosts, across the bridge
        client = NsClient(nodes[0])
        clients.append(client)
        jobs = [client("submit", "sleep", {"seconds": SLEEP_S})["id"] for _ in range(2)]

        def first_running() -> tuple[str, str] | None:
            for r in client("list"):
                if r["id"] in jobs and r["state"] == "running" and r["peer"]:
                    return r["id"], r["peer"]
            return None
        victim_job, victim_peer = wait_for(first_running, 90, "a job to run on another host")
        assert victim_peer != ids[0], "the gateway ran a job"

        # cut the link of the host running it: the others expire it, it expires them, and its job is placed
        # again and finishes on another host, once
        cut = ids.index(victim_peer)
        net.set_link(cut, "down")
        others = [nd for i, nd in enumerate(nodes) if i != cut]
        wait_for(lambda: all(ids[cut] not in view(nd) for nd in others), 60, "the others to expire the cut host")
        wait_for(lambda: view(nodes[cut]) == set(), 60, "the cut host to expire everyone")
        # on a loaded machine a live peer's advert can lapse for a moment too: wait for the steady state
        wait_for(lambda: all(view(nd) == set(ids) - {nd.peer_id, ids[cut]} for nd in others), 60,
                 "the others to see each other and not the cut host")
        finals = {}
        for j in jobs:
            finals[j] = wait_for(lambda j=j: (st := client("status", j))["state"] in ("done", "failed") and st,
                                 120, f"job {j} to finish")
        assert all(f["state"] == "done" for f in finals.values()), finals
        assert all(f["peer"] not in (victim_peer, ids[0]) for f in finals.values()), finals
        assert finals[victim_job]["attempt"] >= 2, finals[victim_job]
        assert len(client("list")) == len(jobs)  # each job once, no duplicate from the retry

        # restore it: it rejoins every view, and sees everyone again
        net.set_link(cut, "up")
        wait_for(converged, 120, "the restored host to rejoin every view")
    except Exception:
        for nd in nodes:
            print(f"--- {nd.data_dir.name} ({nd.addr})\n{nd.log_tail()}")
        raise
    finally:
        for c in clients:
            c.close()
        for nd in nodes:
            try:
                nd.stop()
            except Exception:
                nd.kill()
