"""One mapping from the errors that end a command to its exit status (scheduler.cli.common.ERROR_EXITS), used by
every command, and the exit statuses docs/cli.md documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mesh.bigtcp.framing import TransportError
from mesh.bigtcp.rpc import RpcError
from mesh.bigtcp.tls import HandshakeError
from mesh.control import ControlError
from scheduler.cli import common
from scheduler.cli.common import exit_status
from scheduler.cli.main import main
from scheduler.client.client import JobFailed
from scheduler.client.compute_sdk import BuildFailed, ComputeFailed, ComputeRefused
from scheduler.client.known_nodes import IdentityMismatch
from scheduler.client.realtime import SessionLost
from scheduler.node.config import ConfigError
from scheduler.node.endpoints import BindError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


@pytest.mark.parametrize(("error", "code", "line"), [
    (common.UsageError("--arg 'x': bad"), 2, "mesh-node: --arg 'x': bad"),
    (common.CommandFailed("unavailable: no device"), 1, "mesh-node: unavailable: no device"),
    (SessionLost("worker lost"), 1, "mesh-node: the session ended: worker lost"),
    (ConfigError("unknown key(s) bogus"), 2, "mesh-node: unknown key(s) bogus"),
    (BindError("--data-listen", "0.0.0.0:1", "address already in use"), 2,
     "mesh-node: --data-listen 0.0.0.0:1: cannot listen: address already in use"),
    (ControlError("no node running"), 3, "mesh-node: no node running"),
    (RpcError("not_found", "no job abc"), 6, "mesh-node: no job abc (not_found)"),
    (RpcError("unavailable", "down"), 3, None),
    (RpcError("forbidden", "scope"), 2, None),
    (IdentityMismatch("h:1", "X", "Y", "--peer-id"), 1, None),
    (HandshakeError("bad_key", "wrong mesh key"), 3, None),
    (TransportError("reset"), 3, None),
    (ComputeRefused("j", "no_match", "no device"), 4, "mesh-node: refused (no_match): no device"),
    (BuildFailed("j", "failed", "BuildError: kernel:\nline 3: oops", worker="w1"), 1, None),
    (ComputeFailed("j", "failed", "time limit"), 1, "mesh-node: time limit"),
    (JobFailed("j", "failed", "boom"), 1, "mesh-node: job j failed: boom"),
    (FileNotFoundError(2, "No such file or directory", "x.bin"), 1, "mesh-node: No such file or directory: x.bin"),
    (KeyboardInterrupt(), 130, None),
])
def test_each_error_has_one_exit_status_and_one_line(error, code, line, capsys):
    assert exit_status(error) == code
    err = capsys.readouterr().err
    if line is not None:
        assert err == line + "\n"
    # the same error inside an exception group (trio's nurseries) maps the same way
    assert exit_status(BaseExceptionGroup("nursery", [error])) == code


def test_an_unknown_error_is_a_bug_and_keeps_its_traceback(capsys):
    assert exit_status(ZeroDivisionError("x")) is None
    assert capsys.readouterr().err == ""
    assert exit_status(SystemExit(0)) is None


def test_every_documented_exit_status_is_the_code_s():
    table = dict(re.findall(r"^\| (\d+) \| (.+) \|$", DOCS.read_text(), re.M))
    code = {common.EXIT_OK: "success", common.EXIT_FAIL: "failure", common.EXIT_USAGE: "bad usage",
            common.EXIT_UNAVAILABLE: "no node", common.EXIT_REJECTED: "rejected", common.EXIT_CANCELLED: "cancelled",
            common.EXIT_NOT_FOUND: "not_found", common.EXIT_BROKEN_PIPE: "went away"}
    assert sorted(int(k) for k in table) == sorted(code)
    for status, word in code.items():
        assert word in table[str(status)], (status, table[str(status)])


@pytest.mark.parametrize("argv", [
    ["compute", "k.cl", "--kernel", "k"],  # no --global
    ["render", "no-such-scene.json"],
    ["prove", "cubic", "--steps", "64", "--public", "x0"],
    ["submit", "echo", "--spec", "-", "--input", "/no/such/file"],
    ["label", "novalue"],
])
def test_bad_arguments_exit_2_with_one_line_from_every_command(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "k.cl").write_text("__kernel void k() {}")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("{}"))
    assert main([*argv, "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mesh-node: ") and err.count("\n") == 1, err
