"""Run a local mesh of real `mesh-node` processes on loopback: used by the demo, the benchmarks and the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh import control
from mesh.identity import load_or_create
from worker.faults import Faults


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns a truthy value; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the node may not be up yet
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


@dataclass
class NodeProc:
    data_dir: Path
    p2p_port: int
    data_port: int
    metrics_port: int
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # added to the node process's environment
    faults: Faults | None = None  # test-only misbehaviour: run through scheduler.devtools.faulty_node
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def process(self) -> subprocess.Popen:
        """The running (or exited) node process; only after start()."""
        assert self.proc is not None, f"node {self.data_dir} was never started"
        return self.proc

    @property
    def peer_id(self) -> str:
        return load_or_create(self.data_dir)[0].peer_id_str

    @property
    def multiaddr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.p2p_port}/p2p/{self.peer_id}"

    def start(self, bootstrap: Sequence[str] = ()) -> NodeProc:
        entry = ["scheduler.cli"] if self.faults is None else ["scheduler.devtools.faulty_node", self.faults.to_json()]
        args = [sys.executable, "-m", *entry, "run", "--data-dir", str(self.data_dir),
                "--listen", f"/ip4/127.0.0.1/tcp/{self.p2p_port}", "--data-listen", f"127.0.0.1:{self.data_port}",
                "--metrics-listen", f"127.0.0.1:{self.metrics_port}", *self.extra]
        for b in bootstrap:
            args += ["--bootstrap", b]
        self.log_path = self.data_dir / "node.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        logf.close()
        return self

    def call(self, method: str, **params: Any) -> Any:
        return control.call(self.data_dir, method, params, timeout=5)

    def wait_up(self, timeout: float = 60) -> None:
        def up():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}: {self.log_tail()}")
            return self.call("status")
        try:
            wait_for(up, timeout, f"node {self.data_dir} to answer")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; log: {self.log_tail()}") from None

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text()[-n:] if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
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


def make_nodes(root: Path, n: int, extra: Sequence[str] = ()) -> list[NodeProc]:
    nodes = []
    for i in range(n):
        nd = NodeProc(root / f"node{i}", free_port(), free_port(), free_port(), list(extra))
        nd.data_dir.mkdir(parents=True, exist_ok=True)
        load_or_create(nd.data_dir)
        nodes.append(nd)
    return nodes


def start_nodes(nodes: list[NodeProc]) -> list[NodeProc]:
    """Start prepared nodes (their options and environment set); node 0 is the bootstrap of the others.
    Returns once every node answers."""
    nodes[0].start()
    for nd in nodes[1:]:
        nd.start([nodes[0].multiaddr])
    for nd in nodes:
        nd.wait_up()
    return nodes


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
        for nd in nodes:
            nd.kill()


def sees_all(nodes: list[NodeProc]) -> bool:
    ids = {nd.peer_id for nd in nodes}
    return all({p["peer_id"] for p in nd.call("peers")} >= ids for nd in nodes)
