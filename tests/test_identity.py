import os
import stat

import pytest

from mesh.identity import KEY_FILE, IdentityError, load_or_create


def test_created_once_with_0600_and_reused(tmp_path):
    ident, created = load_or_create(tmp_path / "node")
    assert created
    path = tmp_path / "node" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created2 = load_or_create(tmp_path / "node")
    assert not created2
    assert again.peer_id_str == ident.peer_id_str
    assert ident.peer_id_str.startswith("12D3KooW")


def test_corrupt_key_is_an_error_not_a_new_identity(tmp_path):
    load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    path.write_bytes(b"garbage")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="corrupt"):
        load_or_create(tmp_path)
    assert path.read_bytes() == b"garbage"


def test_truncated_key_is_an_error(tmp_path):
    load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(IdentityError, match="corrupt"):
        load_or_create(tmp_path)


def test_world_readable_key_refused(tmp_path):
    load_or_create(tmp_path)
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create(tmp_path)
