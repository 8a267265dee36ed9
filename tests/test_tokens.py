import stat

import pytest

from scheduler.node.tokens import TokenError, TokenStore, parse_duration


def test_create_authenticate_scopes_and_hashing(tmp_path):
    store = TokenStore(tmp_path)
    token, rec = store.create("alice", ["submit"])
    assert token.startswith("gpm_")
    text = (tmp_path / "tokens.json").read_text()
    assert token.split("_", 2)[2] not in text  # only the hash is stored
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    other = TokenStore(tmp_path)  # a running node reading the file
    assert other.authenticate(token, "submit").name == "alice"
    assert other.authenticate(token, "read").name == "alice"
    with pytest.raises(TokenError, match="lacks scope 'compute'"):
        other.authenticate(token, "compute")
    admin, _ = store.create("root", ["admin"])
    assert other.authenticate(admin, "compute").name == "root"


@pytest.mark.parametrize("bad,reason", [(None, "no API token"), ("", "no API token"), ("hello", "malformed"),
                                        ("gpm_000000000000_" + "A" * 43, "unknown")])
def test_bad_tokens(tmp_path, bad, reason):
    TokenStore(tmp_path).create("a", ["read"])
    with pytest.raises(TokenError, match=reason):
        TokenStore(tmp_path).authenticate(bad, "read")


def test_wrong_secret_for_a_real_id(tmp_path):
    token, _ = TokenStore(tmp_path).create("a", ["read"])
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(TokenError, match="unknown"):
        TokenStore(tmp_path).authenticate(forged, "read")


def test_revoked_token_refused_by_a_store_already_loaded(tmp_path):
    store = TokenStore(tmp_path)
    token, _ = store.create("bob", ["submit"])
    node_view = TokenStore(tmp_path)
    assert node_view.authenticate(token, "submit")
    TokenStore(tmp_path).revoke("bob")
    with pytest.raises(TokenError, match="revoked"):
        node_view.authenticate(token, "submit")


def test_expiry(tmp_path):
    store = TokenStore(tmp_path)
    token, rec = store.create("tmp", ["read"], expires_in_s=60)
    assert store.authenticate(token, "read", now=rec.created + 59)
    with pytest.raises(TokenError, match="expired"):
        store.authenticate(token, "read", now=rec.created + 61)


def test_validation(tmp_path):
    store = TokenStore(tmp_path)
    with pytest.raises(ValueError, match="scope"):
        store.create("x", ["root"])
    with pytest.raises(ValueError, match="name"):
        store.create("has space", ["read"])
    store.create("dup", ["read"])
    with pytest.raises(ValueError, match="exists"):
        store.create("dup", ["read"])
    with pytest.raises(ValueError, match="no live token"):
        store.revoke("nobody")
    assert parse_duration("30d") == 30 * 86400
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_corrupt_file_is_an_error(tmp_path):
    (tmp_path / "tokens.json").write_text("{not json")
    with pytest.raises(TokenError, match="corrupt"):
        TokenStore(tmp_path).authenticate("gpm_000000000000_" + "A" * 43, "read")
