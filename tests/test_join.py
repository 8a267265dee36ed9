"""Joining by address and knowing whom a client talks to: --join HOST:PORT learns the node's peer id and libp2p
addresses over the data plane (the mesh key still checked); a refused join is a warning on both sides, with the
reason; a remote client checks the node's proven identity (--peer-id, or trust on first use recorded in the
known-nodes file) before its token leaves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from mesh.bigtcp.transport import Transport
from mesh.identity import Identity
from scheduler.client.client import Client
from scheduler.client.known_nodes import IdentityMismatch, KnownNodes
from scheduler.devtools.localmesh import NodeProc, sees_all, stop_all, wait_for

REPO = Path(__file__).resolve().parent.parent
QUIET = ["--devices", "none", "--advert-interval", "0.5"]


# ---- the client's side: identity before token ------------------------------------------------------------
async def _server(nursery, seen: list):
    ident = Identity.generate()

    def authorize(peer_id, extra, outbound):
        seen.append(dict(extra))
        return "client"

    t = Transport(ident, host="127.0.0.1", port=0, authorize=authorize)
    await nursery.start(t.serve)
    return ident.peer_id_str, f"127.0.0.1:{t.port}", t


async def test_token_is_never_sent_to_a_node_with_another_identity(tmp_path):
    seen: list = []
    async with trio.open_nursery() as n:
        real_id, addr, t = await _server(n, seen)
        impostor = Identity.generate().peer_id_str
        known = KnownNodes(tmp_path / "known_nodes")
        known.remember(addr, impostor)  # what the client pinned earlier: not who answers now
        with pytest.raises(IdentityMismatch) as e:
            async with Client.connect(addr, token="s3cret", known=known):
                pass
        assert seen == []  # the node never saw a HELLO, so never the token
        msg = str(e.value)
        assert real_id in msg and impostor in msg and str(known.path) in msg and "--peer-id" in msg
        with pytest.raises(IdentityMismatch):
            async with Client.connect(addr, token="s3cret", peer_id=impostor, known=False):
                pass
        assert seen == []
        async with Client.connect(addr, token="s3cret", peer_id=real_id, known=False):
            pass
        assert seen == [{"token": "s3cret"}]
        await t.aclose()


async def test_trust_on_first_use_records_then_pins(tmp_path):
    seen: list = []
    known = KnownNodes(tmp_path / "cfg" / "known_nodes")
    async with trio.open_nursery() as n:
        real_id, addr, t = await _server(n, seen)
        async with Client.connect(addr, token="tok", known=known):
            pass
        assert known.get(addr) == real_id and len(seen) == 1
        async with Client.connect(addr, token="tok", known=known):  # pinned now, and it matches
            pass
        assert len(seen) == 2 and known.path.read_text().count(addr) == 1
        await t.aclose()


def test_cli_reports_a_mismatch_clearly(tmp_path):
    nd = NodeProc(tmp_path / "n", list(QUIET))
    try:
        nd.start().wait_up()
        tok = (nd.data_dir / "local.token").read_text().strip()
        wrong = Identity.generate().peer_id_str
        r = subprocess.run([sys.executable, "-m", "scheduler.cli", "jobs", "--node", nd.endpoints.data,
                            "--token", tok, "--peer-id", wrong], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 1
        assert f"is {nd.peer_id}, but --peer-id says {wrong}: refusing to send the token" in r.stderr
        assert "Traceback" not in r.stderr
        r = subprocess.run([sys.executable, "-m", "scheduler.cli", "jobs", "--node", nd.endpoints.data,
                            "--token", tok, "--peer-id", nd.peer_id], capture_output=True, text=True, cwd=REPO,
                           timeout=120)
        assert r.returncode == 0, r.stderr
    finally:
        nd.kill()


# ---- the node's side: --join, and refusals said out loud ----------------------------------------------------
def _warnings(nd: NodeProc, needle: str) -> list[str]:
    return [ln for ln in nd.log_tail(5000).splitlines() if "WARNING" in ln and needle in ln]


@pytest.fixture
def keys(tmp_path):
    out = []
    for name in ("k1", "k2"):
        r = subprocess.run([sys.executable, "-m", "scheduler.cli", "mesh-key"], capture_output=True, text=True,
                           cwd=REPO, timeout=60)
        path = tmp_path / name
        path.write_text(r.stdout)
        path.chmod(0o600)
        out.append(path)
    return out


def test_join_by_data_plane_address_and_refusals_on_both_sides(tmp_path, keys):
    k1, k2 = keys
    a = NodeProc(tmp_path / "a", [*QUIET, "--mesh-key-file", str(k1)])
    b = NodeProc(tmp_path / "b", [*QUIET, "--mesh-key-file", str(k1)])
    c = NodeProc(tmp_path / "c", [*QUIET, "--mesh-key-file", str(k2)])
    nodes = [a, b, c]
    try:
        a.start().wait_up()
        b.extra += ["--join", a.endpoints.data]  # no peer id, no libp2p address: learned over the data plane
        c.extra += ["--join", a.endpoints.data, "--bootstrap", a.multiaddr]  # another mesh key
        b.start()
        c.start()
        b.wait_up()
        c.wait_up()
        wait_for(lambda: sees_all([a, b]), 120, "the node that joined by address to see the other")
        assert f"joining through {a.endpoints.data}: node {a.peer_id}" in b.log_tail(5000)

        # the data plane: the refusing node says why, the refused one hears it
        wait_for(lambda: _warnings(a, f"refused peer {c.peer_id} on the data plane") and
                 _warnings(c, f"cannot join through {a.endpoints.data}"), 120, "the data-plane refusal on both sides")
        (refused,) = _warnings(a, f"refused peer {c.peer_id} on the data plane")[:1]
        heard = _warnings(c, f"cannot join through {a.endpoints.data}")[0]
        # the refused side heard the refusing side's own reason (sent in the handshake's answer, so at once), not
        # a timeout of its own: asserted on the events, not on their timestamps (a loaded machine stretches those)
        assert "did not prove it holds this mesh's key" in refused and "did not prove it holds this mesh's key" in heard
        # libp2p (--bootstrap): the same, from py-libp2p's handshake failure
        wait_for(lambda: _warnings(a, "refused a libp2p connection from") and
                 _warnings(c, f"cannot join through bootstrap peer {a.peer_id}"), 120, "the libp2p refusal on both sides")
        assert "mesh's key" in _warnings(a, "refused a libp2p connection from")[0]
        dialer = _warnings(c, "cannot join through bootstrap peer")[0]
        assert "libp2p handshake failed" in dialer and "--mesh-key-file" in dialer
        # the dialer read the refusal from the handshake itself (the key check of the first bytes), not from
        # running into its dial timeout (which only guesses: "no libp2p handshake within the dial timeout")
        assert "dial timeout" not in dialer and "does not hold this mesh's key" in dialer, dialer
        assert c.peer_id not in {p["peer_id"] for p in a.call("peers")}
    finally:
        stop_all(nodes)


def test_libp2p_join_refused_by_the_allow_list_is_a_warning_on_both_sides(tmp_path):
    """The mesh key is right, so the libp2p connection comes up; the allow list then refuses the dialer, which
    is told why (a refusal notice) before the connection is dropped."""
    a = NodeProc(tmp_path / "a", QUIET)
    c = NodeProc(tmp_path / "c", QUIET)
    allow = tmp_path / "allow"
    allow.write_text(f"{a.peer_id}  # only itself\n")
    a.extra += ["--allow-peers", str(allow)]
    nodes = [a, c]
    try:
        a.start().wait_up()
        c.start(bootstrap=[a.multiaddr]).wait_up()
        wait_for(lambda: _warnings(a, f"refused libp2p connection from {c.peer_id}") and
                 _warnings(c, f"cannot join through bootstrap peer {a.peer_id}: it refused this node"), 120,
                 "the allow-list refusal on both sides")
        refused = _warnings(a, f"refused libp2p connection from {c.peer_id}")[0]
        heard = _warnings(c, f"cannot join through bootstrap peer {a.peer_id}: it refused this node")[0]
        assert "not on this mesh's allow list (--allow-peers)" in refused
        assert "not on this mesh's allow list (--allow-peers)" in heard
        assert c.peer_id not in {p["peer_id"] for p in a.call("peers")}
    finally:
        stop_all(nodes)


def test_join_option_is_validated(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scheduler.cli", "run", "--data-dir", str(tmp_path), "--join", "nowhere"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and re.search(r"join must be HOST:PORT", r.stderr)


def test_a_refusal_notice_is_bounded_and_printable():
    from mesh.refusal_notice import MAX_REASON, clean_reason

    assert clean_reason(b"not on this mesh's allow list") == "not on this mesh's allow list"
    assert clean_reason(b"\x1b[2Jfake\nline\xff") == "?[2Jfake?line\ufffd"  # no terminal escapes, one line
    assert len(clean_reason(b"x" * 100_000)) == MAX_REASON
    assert clean_reason(b"") == "no reason given"


async def test_another_mesh_key_fails_the_psk_handshake_on_its_first_bytes():
    """Both sides' first read under another key is noise: refused at once, not after a garbage-length read."""
    import secrets

    from mesh import handshake_log
    from mesh.handshake_log import MeshKeyMismatch, new_checked_conn

    class Pipe:  # the raw connection: what the peer sent, under its key
        def __init__(self, data: bytes) -> None:
            self.data = data

        async def read(self, n=None):
            out, self.data = self.data[:n or len(self.data)], self.data[n or len(self.data):]
            return out

        async def write(self, data):
            self.data_written = data

    def sent_under(key: str) -> bytes:
        from Crypto.Cipher import Salsa20

        nonce = b"12345678"
        return nonce + Salsa20.new(key=bytes.fromhex(key), nonce=nonce).encrypt(handshake_log.MULTISTREAM_HEADER)

    mine, theirs = secrets.token_hex(32), secrets.token_hex(32)
    ok = new_checked_conn(Pipe(sent_under(mine)), mine)
    assert await ok.read(1) + await ok.read(100) == handshake_log.MULTISTREAM_HEADER  # byte by byte is fine
    bad = new_checked_conn(Pipe(sent_under(theirs)), mine)
    with pytest.raises(MeshKeyMismatch, match="another mesh key"):
        await bad.read(100)
