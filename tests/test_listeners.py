"""Ports come from the kernel: every listener binds port 0 when asked and the node reports what it got (status and
DATA_DIR/endpoints.json); a busy port is one line naming the option and exit 2; a libp2p port in use is refused,
not shared. Harnesses leave no node behind: --exit-with-parent, stop on every path, wait_up that stops at once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scheduler.devtools.localmesh import NodeExited, NodeProc, make_nodes, running_mesh, start_nodes, wait_for
from scheduler.node import endpoints

QUIET = ["--devices", "none", "--advert-interval", "0.5"]
REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def node(tmp_path):
    nd = NodeProc(tmp_path / "n", list(QUIET))
    try:
        nd.start().wait_up()
        yield nd
    finally:
        nd.kill()


def test_port_0_listeners_report_what_they_bound(node):
    ep = node.endpoints
    assert ep.pid == node.process.pid and ep.peer_id == node.peer_id
    assert ep.data_port > 0 and ep.metrics_port and ep.libp2p_port > 0
    assert ep.libp2p[0] == f"/ip4/127.0.0.1/tcp/{ep.libp2p_port}/p2p/{node.peer_id}"
    assert Path(ep.control) == node.data_dir / "control.sock"
    st = node.call("status")
    assert st["listening"] == ep.to_dict()
    for port in (ep.data_port, ep.metrics_port, ep.libp2p_port):  # each one is really listening
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # the file is whole JSON (written by rename) and goes when the node stops
    assert json.loads(endpoints.path(node.data_dir).read_text())["data"] == ep.data
    assert node.stop() == 0
    assert not endpoints.path(node.data_dir).exists()


def test_a_stale_endpoints_file_is_not_taken_for_the_node(tmp_path):
    """A file left by a node killed -9 names another pid: wait_up waits for the new one's."""
    nd = NodeProc(tmp_path / "n", list(QUIET))
    nd.data_dir.mkdir(parents=True)
    endpoints.write(nd.data_dir, endpoints.Endpoints(pid=1, peer_id="x", data="127.0.0.1:9"))
    try:
        ep = nd.start().wait_up()
        assert ep.pid == nd.process.pid and ep.data_port != 9
    finally:
        nd.kill()


@pytest.mark.parametrize("option", ["--data-listen", "--metrics-listen", "--listen"])
def test_a_busy_port_is_one_line_naming_the_option_and_exit_2(tmp_path, option):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        value = f"/ip4/127.0.0.1/tcp/{port}" if option == "--listen" else f"127.0.0.1:{port}"
        opts = {"--listen": "/ip4/127.0.0.1/tcp/0", "--data-listen": "127.0.0.1:0", "--metrics-listen": "127.0.0.1:0"}
        opts[option] = value
        r = cli("run", "--data-dir", str(tmp_path), "--devices", "none", "--log-level", "error",
                *[x for kv in opts.items() for x in kv])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0] == f"mesh-node: {option} {value}: cannot listen: address already in use"
    assert not endpoints.path(tmp_path).exists()


def test_a_libp2p_port_of_another_node_is_refused_not_shared(node, tmp_path):
    """py-libp2p listens with SO_REUSEPORT: without the check, both nodes would listen and the kernel would
    split connections between them."""
    taken = f"/ip4/127.0.0.1/tcp/{node.p2p_port}"
    r = cli("run", "--data-dir", str(tmp_path / "second"), "--devices", "none", "--log-level", "error",
            "--listen", taken, "--data-listen", "127.0.0.1:0", "--metrics-listen", "off")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"mesh-node: --listen {taken}: cannot listen: address already in use"
    assert endpoints.listeners_on_port(node.p2p_port) == 1
    assert node.process.poll() is None


def test_shared_port_check_counts_reuseport_listeners():
    socks = []
    try:
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", socks[0].getsockname()[1] if socks else 0))
            s.listen(1)
            socks.append(s)
        port = socks[0].getsockname()[1]
        assert endpoints.listeners_on_port(port) == 2
        with pytest.raises(endpoints.BindError, match="address already in use"):
            endpoints.check_tcp_free("127.0.0.1", port, "--listen", "x")
    finally:
        for s in socks:
            s.close()


def test_wait_up_stops_as_soon_as_the_node_exits_and_shows_its_log(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        nd = NodeProc(tmp_path / "n", [*QUIET, "--data-listen", f"127.0.0.1:{busy.getsockname()[1]}"])
        # a timeout far beyond the test's own: only stopping at the exit can pass
        with pytest.raises(NodeExited) as exc:
            nd.start().wait_up(timeout=3600)
    assert "exited with 2" in str(exc.value)
    assert "--data-listen" in str(exc.value) and "address already in use" in str(exc.value)


def test_start_nodes_stops_the_started_ones_when_one_fails(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        nodes = make_nodes(tmp_path, 2, QUIET)
        nodes[1].extra += ["--metrics-listen", f"127.0.0.1:{busy.getsockname()[1]}"]
        with pytest.raises(NodeExited):
            start_nodes(nodes)
    assert all(nd.process.poll() is not None for nd in nodes)


def test_running_mesh_stops_every_node_when_the_body_raises(tmp_path):
    class Boom(Exception):
        pass

    with pytest.raises(Boom), running_mesh(tmp_path, 2, QUIET) as nodes:
        pids = [nd.process.pid for nd in nodes]
        raise Boom
    assert all(nd.process.returncode is not None for nd in nodes)
    assert not any(pid_alive(p) for p in pids)


HARNESS = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from scheduler.devtools.localmesh import NodeProc
    nd = NodeProc(Path(sys.argv[1]), ["--devices", "none"])
    nd.start().wait_up()
    print(nd.process.pid, flush=True)
    threading.Event().wait()  # until killed
""")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_node_dies_with_the_harness_that_started_it(tmp_path, how):
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, str(tmp_path / "n")], stdout=subprocess.PIPE,
                               text=True, cwd=REPO)
    try:
        node_pid = int(harness.stdout.readline())
        assert pid_alive(node_pid)
        harness.send_signal(how)  # no cleanup code runs on SIGKILL: only --exit-with-parent can stop the node
        harness.wait()
        wait_for(lambda: not pid_alive(node_pid), 60, "the node to exit after its harness died")
    finally:
        harness.kill()
        harness.wait()


async def test_parent_watch_fallback_fires_when_the_parent_pid_changes():
    """The portable half of --exit-with-parent (PR_SET_PDEATHSIG is Linux-only and thread-bound)."""
    import trio

    from scheduler.node import lifeline

    gone = trio.Event()
    assert lifeline.parent_alive(os.getppid())
    with trio.fail_after(30):
        await lifeline.watch_parent(os.getppid() + 1, gone.set, interval=0.01)  # "our parent" is not ours
    assert gone.is_set()
