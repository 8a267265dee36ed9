"""Proofs on a 3-node loopback mesh: a batch spread over peers, every proof verified by the coordinator, and a
peer that returns bad proofs (test-only fault hook) caught, its jobs re-run elsewhere and its standing lowered."""

from scheduler.client.client import SyncClient, local_address
from scheduler.devtools.localmesh import make_nodes, sees_all, start_nodes, wait_for
from worker.faults import Faults
from worker.zk import membership as MB
from worker.zk import statement, verify


def test_batch_of_proofs_with_a_lying_peer(tmp_path):
    nodes = make_nodes(tmp_path, 3, ["--advert-interval", "0.5", "--advert-ttl", "10"])  # long ttl: loaded CI
    nodes[0].extra += ["--devices", "none"]  # the coordinator runs nothing: every proof comes from a peer
    nodes[2].faults = Faults(corrupt_proofs=True)
    try:
        start_nodes(nodes)
        wait_for(lambda: sees_all(nodes), 90, "three nodes to see each other")
        addr, tok, pid, _ = local_address(nodes[0].data_dir)
        liar = nodes[2].peer_id
        with SyncClient(addr, token=tok, peer_id=pid) as c:
            specs = [{"air": "fibonacci" if i % 2 else "cubic", "steps": 64,
                      "public_inputs": ({"a": 1, "b": i} if i % 2 else {"x0": i, "c": 5})} for i in range(6)]
            root, wits = MB.make_tree([[i, 2, 3, 4] for i in range(4)])  # a private statement too
            specs.append({"air": "membership", "steps": 512, "witness": wits[1],
                          "public_inputs": {"depth": 2, **{f"root{i}": root[i] for i in range(4)}}})
            ids = [c.submit("zk.prove", s, priority="batch", max_attempts=4)["id"] for s in specs]
            results = [c.result(j, timeout=300) for j in ids]
            for spec, res in zip(specs, results, strict=True):
                assert res.ok, res.reason
                assert res.worker != liar
                v = verify(res.output, statement(spec))
                assert v.ok, v.reason
            statuses = [c.status(j) for j in ids]
            assert any("proof rejected" in f for st in statuses for f in st["failures"]), \
                [(st["peer"][-6:], st["attempt"], st["failures"]) for st in statuses] + [liar[-6:]]
        standing = {p["peer_id"]: p["standing"] for p in nodes[0].call("peers")}
        assert standing[liar] < 1.0
        assert standing[nodes[1].peer_id] >= standing[liar]
    finally:
        for nd in nodes:
            nd.kill()
