"""Private data dir, swept uploads, and insecure mode refusing a mesh key or an allow list."""

import os
import stat

import pytest

from scheduler.node.config import ConfigError, load_settings
from scheduler.node.files import make_private, sweep_uploads


def mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_make_private_tightens_what_is_there_and_what_comes(tmp_path):
    old = os.umask(0o022)
    try:
        d = tmp_path / "data"
        (d / "spool").mkdir(parents=True)
        (d / "jobs.sqlite3").write_bytes(b"x")
        (d / "jobs.sqlite3-wal").write_bytes(b"x")
        os.chmod(d, 0o755)
        os.chmod(d / "jobs.sqlite3", 0o644)
        assert make_private(d) >= 3
        assert mode(d) == 0o700 and mode(d / "spool") == 0o700
        assert mode(d / "jobs.sqlite3") == 0o600 and mode(d / "jobs.sqlite3-wal") == 0o600
        (d / "new").write_bytes(b"y")  # created after: the umask makes it private
        assert mode(d / "new") == 0o600
    finally:
        os.umask(old)


def test_sweep_removes_partial_and_orphaned_uploads(tmp_path):
    spool, results = tmp_path / "spool", tmp_path / "results"
    spool.mkdir()
    results.mkdir()
    for p in (spool / "live", spool / "gone", spool / "x.part", results / "r", results / "r.part"):
        p.write_bytes(b"1")
    assert sweep_uploads(spool, results, keep=["live"]) == 3
    assert sorted(p.name for p in spool.iterdir()) == ["live"]
    assert sorted(p.name for p in results.iterdir()) == ["r"]


@pytest.mark.parametrize("flag", ["mesh_key_file", "allow_peers"])
def test_insecure_mode_refuses_a_mesh_key_or_allow_list(tmp_path, flag):
    f = tmp_path / "f"
    f.write_text("x\n")
    with pytest.raises(ConfigError) as e:
        load_settings({"data_dir": tmp_path, "data_plane_insecure": True, flag: f})
    msg = str(e.value)
    assert "\n" not in msg and "--data-plane-insecure cannot be combined" in msg
    load_settings({"data_dir": tmp_path, flag: f})  # with TLS: fine
