"""Run a local mesh of real `mesh-node` processes on loopback: used by the demo, the benchmarks and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh import control
from mesh.identity import load_or_create
from mesh.waiting import Abort, wait_for
from scheduler.node import endpoints
from scheduler.node.endpoints import Endpoints
from worker.faults import Faults

__all__ = ["NodeExited", "NodeProc", "make_nodes", "running_mesh", "sees_all", "start_mesh", "start_nodes",
           "stop_all", "wait_for", "listening_ports"]


LOG_TAIL_LINES = 20


@dataclass
class NodeProc:
    """One `mesh-node run` process on loopback. Every listener binds port 0: the node picks its ports and
    reports them in DATA_DIR/endpoints.json, read by `wait_up` (never guessed beforehand). The node runs
    with --exit-with-parent, so it stops when the harness process dies, however it dies."""

    data_dir: Path
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # added to the node process's environment
    faults: Faults | None = None  # test-only misbehaviour: run through scheduler.devtools.faulty_node
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    ep: Endpoints | None = None  # what the running node bound; set by wait_up

    @property
    def process(self) -> subprocess.Popen:
        """The running (or exited) node process; only after start()."""
        assert self.proc is not None, f"node {self.data_dir} was never started"
        return self.proc

    @property
    def endpoints(self) -> Endpoints:
        ep = self.current_endpoints()
        assert ep is not None, f"node {self.data_dir} is not up yet (call wait_up)"
        return ep

    def current_endpoints(self) -> Endpoints | None:
        """What this node's current process bound, once it wrote them; None before."""
        if self.ep is None and self.proc is not None:
            ep = endpoints.read(self.data_dir)
            if ep is not None and ep.pid == self.proc.pid:
                self.ep = ep
        return self.ep

    @property
    def peer_id(self) -> str:
        return load_or_create(self.data_dir)[0].peer_id_str

    @property
    def p2p_port(self) -> int:
        return self.endpoints.libp2p_port

    @property
    def data_port(self) -> int:
        return self.endpoints.data_port

    @property
    def metrics_port(self) -> int:
        port = self.endpoints.metrics_port
        assert port is not None, "this node runs with --metrics-listen off"
        return port

    @property
    def multiaddr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.p2p_port}/p2p/{self.peer_id}"

    def start(self, bootstrap: Sequence[str] = ()) -> NodeProc:
        entry = ["scheduler.cli"] if self.faults is None else ["scheduler.devtools.faulty_node", self.faults.to_json()]
        args = [sys.executable, "-m", *entry, "run", "--data-dir", str(self.data_dir),
                "--listen", "/ip4/127.0.0.1/tcp/0", "--data-listen", "127.0.0.1:0",
                "--metrics-listen", "127.0.0.1:0", "--exit-with-parent", *self.extra]
        for b in bootstrap:
            args += ["--bootstrap", b]
        self.log_path = self.data_dir / "node.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ep = None
        logf = open(self.log_path, "ab")
        try:
            # the node's parent-death signal fires when the *thread* that started it exits: start nodes from a
            # thread that lives as long as the harness (the main thread, normally)
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        finally:
            logf.close()
        return self

    def call(self, method: str, **params: Any) -> Any:
        return control.call(self.data_dir, method, params, timeout=5)

    def wait_up(self, timeout: float = 120) -> Endpoints:
        """Wait until the node wrote its endpoints and answers; stop at once (with its last log lines) if the
        process exits meanwhile."""
        proc = self.process

        def up() -> Endpoints | None:
            if proc.poll() is not None:
                raise Abort(f"node {self.data_dir} exited with {proc.returncode} before it was up; "
                            f"last log lines:\n{self.log_tail()}")
            ep = endpoints.read(self.data_dir)
            if ep is None or ep.pid != proc.pid:
                return None
            self.call("status")
            return ep

        try:
            self.ep = wait_for(up, timeout, f"node {self.data_dir} to answer")
        except Abort as e:
            raise NodeExited(str(e)) from None
        except TimeoutError as e:
            raise TimeoutError(f"{e}; last log lines:\n{self.log_tail()}") from None
        return self.ep

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if not (self.log_path and self.log_path.exists()):
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        """Ask the node to stop; kill it if it has not within `timeout` (it is gone either way)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class NodeExited(RuntimeError):
    """A node process exited while the harness waited for it to come up."""


def make_nodes(root: Path, n: int, extra: Sequence[str] = ()) -> list[NodeProc]:
    nodes = []
    for i in range(n):
        nd = NodeProc(root / f"node{i}", list(extra))
        nd.data_dir.mkdir(parents=True, exist_ok=True)
        load_or_create(nd.data_dir)
        nodes.append(nd)
    return nodes


def start_nodes(nodes: list[NodeProc]) -> list[NodeProc]:
    """Start prepared nodes (their options and environment set); node 0 is the bootstrap of the others.
    Returns once every node answers. On any failure (Ctrl-C included) every node started here is killed."""
    try:
        nodes[0].start().wait_up()
        for nd in nodes[1:]:
            nd.start([nodes[0].multiaddr])
        for nd in nodes[1:]:
            nd.wait_up()
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def stop_all(nodes: Sequence[NodeProc], timeout: float = 10) -> None:
    """Stop every node (SIGTERM, then SIGKILL for one that does not stop in time); never raises for a node."""
    for nd in nodes:
        if nd.proc is not None and nd.proc.poll() is None:
            nd.proc.send_signal(signal.SIGTERM)
            nd.proc.send_signal(signal.SIGCONT)  # a paused node (SIGSTOP) takes the SIGTERM now
    for nd in nodes:
        if nd.proc is None:
            continue
        try:
            nd.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            nd.kill()


def start_mesh(root: Path, n: int, extra: Sequence[str] = ()) -> list[NodeProc]:
    """Start n nodes with the same options; node 0 is the bootstrap of the others. Returns once every node answers."""
    return start_nodes(make_nodes(root, n, extra))


@contextmanager
def running_mesh(root: Path, n: int, extra: Sequence[str] = (), converge_s: float = 90) -> Iterator[list[NodeProc]]:
    """start_mesh, then wait until every node sees every other; every node is killed on the way out."""
    nodes = make_nodes(root, n, extra)
    try:
        start_nodes(nodes)
        wait_for(lambda: sees_all(nodes), converge_s, f"{n} nodes to see each other")
        yield nodes
    finally:
        stop_all(nodes)


def listening_ports(pid: int) -> list[int]:
    """TCP ports a process (not started by us with port reporting, e.g. prometheus given port 0) listens on,
    from its socket inodes in /proc/PID/fd and /proc/net/tcp{,6}."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return []
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def sees_all(nodes: list[NodeProc]) -> bool:
    ids = {nd.peer_id for nd in nodes}
    return all({p["peer_id"] for p in nd.call("peers")} >= ids for nd in nodes)
