"""The mesh-node CLI: help, config errors, and real node processes on loopback."""

import json
import os
import signal
import subprocess
import sys

import pytest

from scheduler.devtools.localmesh import sees_all, start_mesh, wait_for


def cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_help_lists_commands_and_every_run_option():
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("run", "peers", "devices", "id", "status"):
        assert cmd in r.stdout
    r = cli("run", "--help")
    assert r.returncode == 0
    from scheduler.node.config import NodeSettings
    for name in NodeSettings.model_fields:
        assert "--" + name.replace("_", "-") in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--listen", "not-a-multiaddr"], "listen: bad multiaddr"),
    (["--bootstrap", "/ip4/127.0.0.1/tcp/4001"], "must end with /p2p/"),
    (["--data-listen", "nowhere"], "data-listen"),
    (["--advert-interval", "-3"], "advert-interval"),
    (["--advertise-host", "10.0.0.1:99999"], "advertise-host must be HOST:PORT"),
    (["--config", "/nonexistent/gpumesh.toml"], "cannot read config file"),
])
def test_bad_config_exits_nonzero_with_one_clear_line(tmp_path, args, needle):
    r = cli("run", "--data-dir", str(tmp_path), *args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "control.sock").exists()


def test_unknown_key_in_config_file(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('advert_interval = 1.0\nbogus_key = 3\n')
    r = cli("run", "--data-dir", str(tmp_path), "--config", str(cfg))
    assert r.returncode == 2 and "unknown key(s) bogus_key" in r.stderr


def test_precedence_flag_over_env_over_file(tmp_path):
    from scheduler.node.config import load_settings
    cfg = tmp_path / "node.toml"
    cfg.write_text("advert_interval = 5.0\nslots_per_device = 3\nmax_queue = 7\n")
    os.environ["GPUMESH_SLOTS_PER_DEVICE"] = "4"
    os.environ["GPUMESH_MAX_QUEUE"] = "9"
    try:
        s = load_settings({"max_queue": 11}, cfg)
    finally:
        del os.environ["GPUMESH_SLOTS_PER_DEVICE"], os.environ["GPUMESH_MAX_QUEUE"]
    assert (s.advert_interval, s.slots_per_device, s.max_queue) == (5.0, 4, 11)


def test_corrupt_identity_is_a_clear_error(tmp_path):
    (tmp_path / "identity.key").write_bytes(b"junk")
    os.chmod(tmp_path / "identity.key", 0o600)
    r = cli("run", "--data-dir", str(tmp_path), "--listen", "/ip4/127.0.0.1/tcp/0")
    assert r.returncode == 2 and "corrupt" in r.stderr


def test_peers_without_a_node_says_so(tmp_path):
    r = cli("peers", "--data-dir", str(tmp_path))
    assert r.returncode == 3 and "no node running" in r.stderr


def scrape(port: int) -> dict:
    """Unlabelled samples of a node's /metrics as {name: value}, plus the raw text."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict = {"_text": text}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_three_processes_see_each_other_and_stop_cleanly(tmp_path):
    nodes = start_mesh(tmp_path, 3, extra=["--advert-interval", "0.5"])
    try:
        wait_for(lambda: sees_all(nodes), 60, "three nodes to see each other")
        r = cli("peers", "--json", "--data-dir", str(nodes[1].data_dir))
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        assert {row["peer_id"] for row in rows} == {nd.peer_id for nd in nodes}
        local = json.loads(cli("devices", "--json", "--data-dir", str(nodes[0].data_dir)).stdout)
        other = next(row for row in rows if row["peer_id"] == nodes[0].peer_id)
        assert [d["id"] for d in other["devices"]] == [d["id"] for d in local["devices"]]
        assert all(row["data_addr"].startswith("127.0.0.1:") for row in rows)
        metrics = scrape(nodes[1].metrics_port)
        assert metrics["gpumesh_peers_known"] == 2
        assert metrics["gpumesh_adverts_sent_total"] >= 1
        assert metrics["gpumesh_adverts_received_total"] >= 2
        assert metrics["gpumesh_devices"] == len(local["devices"])
        assert 'gpumesh_build_info{version="0.1.0"}' in metrics["_text"]
        # a node that stops expires from the others' views
        assert nodes[2].stop(signal.SIGTERM) == 0
        assert "node stopped" in nodes[2].log_tail()
        wait_for(lambda: all(nodes[2].peer_id not in {p["peer_id"] for p in nd.call("peers")} for nd in nodes[:2]),
                 30, "the stopped node to expire")
    finally:
        for nd in nodes:
            nd.kill()
