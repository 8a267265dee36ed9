"""Client authorisation on a real node: no token, bad, revoked, wrong scope; peer methods closed to clients."""

import pytest

from mesh.bigtcp.rpc import RpcError
from scheduler.client.client import SyncClient, local_address
from scheduler.devtools.localmesh import start_mesh
from scheduler.node.tokens import TokenStore


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    (nd,) = start_mesh(tmp_path_factory.mktemp("sec"), 1, extra=["--advert-interval", "0.5"])
    try:
        yield nd
    finally:
        nd.kill()


def connect(node, token):
    addr, _tok, pid, insecure = local_address(node.data_dir)
    return SyncClient(addr, token=token, peer_id=pid, insecure=insecure)


def test_no_token_is_refused_with_a_clear_error(node):
    with connect(node, None) as c:
        with pytest.raises(RpcError, match="needs an API token") as e:
            c.submit("echo", {})
        assert e.value.code == "unauthenticated"


@pytest.mark.parametrize("token,needle", [("garbage", "malformed"), ("gpm_000000000000_" + "A" * 43, "unknown")])
def test_bad_token(node, token, needle):
    with connect(node, token) as c:
        with pytest.raises(RpcError, match=needle):
            c.list()


def test_revoked_token_stops_working_on_a_live_connection(node):
    store = TokenStore(node.data_dir)
    tok, _ = store.create("tmp-revoke", ["submit"])
    with connect(node, tok) as c:
        assert c.run("echo", {"a": 1}).ok
        store.revoke("tmp-revoke")
        with pytest.raises(RpcError, match="revoked"):
            c.submit("echo", {})


def test_scopes(node):
    store = TokenStore(node.data_dir)
    reader, _ = store.create("reader", ["read"])
    submitter, _ = store.create("submitter", ["submit"])
    with connect(node, reader) as c:
        assert isinstance(c.list(), list)
        with pytest.raises(RpcError, match="lacks scope 'submit'") as e:
            c.submit("echo", {})
        assert e.value.code == "forbidden"
    with connect(node, submitter) as c:
        with pytest.raises(RpcError, match="lacks scope 'compute'"):
            c.submit("compute.opencl", {"source": "kernel void k(global float* x){}", "kernel": "k",
                                        "args": [], "global_size": [1]})
        res = c.run("echo", {})
        assert c.status(res.job_id)["submitted_by"] == "submitter"


def test_clients_cannot_call_peer_methods(node):
    with connect(node, TokenStore(node.data_dir).create("peerish", ["admin"])[0]) as c:
        with pytest.raises(RpcError, match="peer methods"):
            c._rpc.call("peer.cancel", {"cancel": {}})
