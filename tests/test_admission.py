"""Mesh admission: the private-network key and the allow list, with real libp2p hosts on loopback."""

import os

import pytest
import trio

from mesh.admission import (
    AdmissionError,
    check_peer_proof,
    generate_mesh_key,
    peer_proof,
    read_allow_list,
    read_mesh_key,
)
from mesh.advert import Advert
from mesh.gossip import GossipConfig, GossipService
from mesh.identity import Identity
from mesh.membership import MembershipView
from mesh.waiting import until


def key_file(tmp_path, name="swarm.key", text=None):
    p = tmp_path / name
    p.write_text(text if text is not None else generate_mesh_key())
    os.chmod(p, 0o600)
    return p


def test_mesh_key_formats_and_errors(tmp_path):
    k = read_mesh_key(key_file(tmp_path))
    assert len(k) == 64
    assert read_mesh_key(key_file(tmp_path, "plain", "ab" * 32 + "\n")) == "ab" * 32
    with pytest.raises(AdmissionError, match="64 hex digits"):
        read_mesh_key(key_file(tmp_path, "short", "abcd"))
    loose = key_file(tmp_path, "loose")
    os.chmod(loose, 0o644)
    with pytest.raises(AdmissionError, match="chmod 600"):
        read_mesh_key(loose)
    with pytest.raises(AdmissionError, match="cannot read"):
        read_mesh_key(tmp_path / "missing")


def test_allow_list_parsing(tmp_path):
    a, b = Identity.generate().peer_id_str, Identity.generate().peer_id_str
    p = tmp_path / "allow"
    p.write_text(f"# ops team\n{a}\n\n{b}  # gpu box\n")
    assert read_allow_list(p) == {a, b}
    p.write_text("not-a-peer\n")
    with pytest.raises(AdmissionError, match=r"allow:1: 'not-a-peer' is not a peer id"):
        read_allow_list(p)


def test_data_plane_proof_binds_key_and_both_ids():
    k1, k2 = "11" * 32, "22" * 32
    proof = peer_proof(k1, "A", "B")
    assert check_peer_proof(k1, "A", "B", proof)
    assert not check_peer_proof(k2, "A", "B", proof)
    assert not check_peer_proof(k1, "B", "A", proof)


async def _node(nursery, psk=None, boot=(), admit=None):
    ident = Identity.generate()
    view = MembershipView(ident.peer_id_str, 5.0, admit=admit)
    svc = GossipService(ident, GossipConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=list(boot), interval_s=0.3,
                                            psk=psk), view, lambda: Advert("", b"", 0, 0.0), admit=admit)
    await nursery.start(svc.run)
    return svc


async def test_same_key_joins_wrong_key_cannot(tmp_path):
    k1 = read_mesh_key(key_file(tmp_path, "k1"))
    k2 = read_mesh_key(key_file(tmp_path, "k2"))
    async with trio.open_nursery() as n:
        a = await _node(n, psk=k1)
        b = await _node(n, psk=k1, boot=[a.addrs[0]])
        outsider = await _node(n, psk=k2, boot=[a.addrs[0]])
        await until(lambda: b.identity.peer_id_str in a.view and a.identity.peer_id_str in b.view)
        # the outsider keeps dialling a; give it several adverts' time while a and b keep hearing each other
        seen_b = b.view.get(a.identity.peer_id_str).advert.seq
        await until(lambda: b.view.get(a.identity.peer_id_str).advert.seq >= seen_b + 5)
        assert outsider.identity.peer_id_str not in a.view and outsider.identity.peer_id_str not in b.view
        assert len(outsider.view) == 1  # only itself
        n.cancel_scope.cancel()


async def test_allow_list_refuses_connection_and_adverts():
    async with trio.open_nursery() as n:
        friend_ident = Identity.generate()
        allowed = {friend_ident.peer_id_str}
        a = await _node(n, admit=lambda pid: pid in allowed)
        allowed.add(a.identity.peer_id_str)
        stranger = await _node(n, boot=[a.addrs[0]])
        # the friend: same code path, its id on the list
        view = MembershipView(friend_ident.peer_id_str, 5.0)
        friend = GossipService(friend_ident, GossipConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[a.addrs[0]],
                                                          interval_s=0.3), view, lambda: Advert("", b"", 0, 0.0))
        await n.start(friend.run)
        await until(lambda: friend_ident.peer_id_str in a.view)
        seen = a.view.get(friend_ident.peer_id_str).advert.seq
        await until(lambda: a.view.get(friend_ident.peer_id_str).advert.seq >= seen + 5)
        assert stranger.identity.peer_id_str not in a.view
        from mesh import metrics
        assert metrics.PEERS_REFUSED.labels("libp2p")._value.get() >= 1
        n.cancel_scope.cancel()
