"""What users read: --version, `status` as a table, `token list` with a header and expiry, one JSON key for
f32 GFLOP/s, and a package build without the project.license deprecation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mesh import __version__
from scheduler.cli.tables import duration
from scheduler.devtools.localmesh import NodeProc

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "COLUMNS": "160"})


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    nd = NodeProc(tmp_path_factory.mktemp("out") / "n", ["--advert-interval", "0.5"])
    try:
        nd.start().wait_up()
        yield nd
    finally:
        nd.kill()


def test_version():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"mesh-node (gpumesh) {__version__}"


def test_status_is_a_table_without_python_reprs(node):
    r = cli("status", "--data-dir", str(node.data_dir))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    ep = node.endpoints
    assert node.peer_id in out and f"http://{ep.metrics}/metrics" in out and ep.data in out
    assert "uptime" in out and not any(c in out for c in ("[", "{", "None", "True", "False"))
    uptime = next(line for line in out.splitlines() if "uptime" in line)
    assert "." not in uptime  # rounded


def test_uptime_is_rounded():
    assert [duration(s) for s in (0.4, 42.6, 303, 7620, 3 * 86400 + 4 * 3600 + 5)] == \
        ["0 s", "43 s", "5 min 3 s", "2 h 7 min", "3 d 4 h"]


def test_token_list_has_a_header_and_expiry(tmp_path):
    assert cli("token", "create", "--name", "ci", "--expires", "12h", "--data-dir", str(tmp_path)).returncode == 0
    assert cli("token", "create", "--name", "forever", "--data-dir", str(tmp_path)).returncode == 0
    r = cli("token", "list", "--data-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(line for line in lines if "name" in line and "expires" in line)
    assert "scopes" in header and "state" in header
    ci = next(line for line in lines if " ci " in line)
    forever = next(line for line in lines if "forever" in line)
    assert "never" in forever and "live" in ci and "never" not in ci


def test_f32_gflops_has_one_key_in_every_json_output(node):
    devices = json.loads(cli("devices", "--json", "--data-dir", str(node.data_dir)).stdout)["devices"]
    peers = json.loads(cli("peers", "--json", "--data-dir", str(node.data_dir)).stdout)
    dumped = json.dumps([devices, peers])
    assert "fma_gflops" not in dumped
    assert all("f32_gflops" in d for d in devices) and all("f32_gflops" in d for p in peers for d in p["devices"])


def test_pyproject_license_is_an_spdx_string():
    """setuptools >= 77 warns on `license = {text = ...}` (a TOML table) at every build."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in meta["build-system"]["requires"]


def test_demo_proof_line_stays_one_line_in_a_pipe(node, tmp_path, monkeypatch):
    """`make demo | cat`: rich wrapped the proof line at 140 columns, splitting "verified here:" from "valid"."""
    import io

    from rich.console import Console

    from scheduler.devtools import demo

    monkeypatch.setattr(demo, "OUT", tmp_path)
    out = io.StringIO()
    con = Console(file=out, width=140)  # as the demo's console is in a pipe: not a terminal, 140 columns
    assert not con.is_terminal
    demo.prove(con, node)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "verified here: valid ->" in lines[0], lines
    assert len(lines[0]) > 140  # the case that wrapped
