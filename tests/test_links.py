"""RemoteLink (scheduler/node/links.py) against a real RpcServer on loopback: results without output are
group-sent in peer.results calls, with the error of a failed call reaching every sender of its batch."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from mesh.bigtcp.rpc import Call, MeshClient, RpcError, RpcServer
from mesh.bigtcp.transport import Transport
from mesh.identity import Identity
from scheduler.core.job import Result
from scheduler.node.links import LinkError, RemoteLink


@asynccontextmanager
async def link_to(rpc: RpcServer):
    server = Transport(Identity.generate(), host="127.0.0.1", port=0, insecure=True, handler=rpc.handle_stream)
    client = Transport(Identity.generate(), insecure=True, listen=False)
    async with trio.open_nursery() as n:
        await n.start(server.serve)
        await n.start(client.serve)
        yield RemoteLink(MeshClient(client, "127.0.0.1", server.port), server.peer_id)
        await client.aclose()
        await server.aclose()


def result(i: int) -> Result:
    return Result(job_id=f"job-{i}", attempt=1, ok=True, body={"i": i}, worker="w")


async def test_results_queued_during_a_call_go_together_in_the_next():
    calls: list[list[str]] = []
    first_arrived, release = trio.Event(), trio.Event()
    rpc = RpcServer()

    @rpc.method("peer.results")
    async def _results(call: Call):
        calls.append(sorted(r["id"] for r in call.body["results"]))
        first_arrived.set()
        await release.wait()
        return {}

    async with link_to(rpc) as link, trio.open_nursery() as n:
        n.start_soon(link.send_result, result(0), b"")
        await first_arrived.wait()
        for i in range(1, 5):
            n.start_soon(link.send_result, result(i), b"")
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert calls == [["job-0"], ["job-1", "job-2", "job-3", "job-4"]]


async def test_a_failed_batch_fails_every_sender_in_it():
    rpc = RpcServer()

    @rpc.method("peer.results")
    async def _results(call: Call):
        raise RpcError("forbidden", "not a peer")

    failures = []

    async def send(i: int) -> None:
        try:
            await link.send_result(result(i), b"")
        except LinkError as e:
            failures.append((i, e.code))

    async with link_to(rpc) as link, trio.open_nursery() as n:
        for i in range(3):
            n.start_soon(send, i)
    assert sorted(failures) == [(0, "forbidden"), (1, "forbidden"), (2, "forbidden")]


async def test_a_node_without_peer_results_gets_one_peer_result_each():
    got = []
    rpc = RpcServer()

    @rpc.method("peer.result")
    async def _result(call: Call):
        got.append(call.body["result"]["id"])
        return {}

    async with link_to(rpc) as link, trio.open_nursery() as n:
        for i in range(3):
            n.start_soon(link.send_result, result(i), b"")
    assert sorted(got) == ["job-0", "job-1", "job-2"]


@pytest.mark.parametrize("bad", [[], [{"v": 1, "t": "result"}], "x"])
async def test_peer_results_refuses_malformed_batches(bad):
    from scheduler.node.peer_api import PeerAPI

    class Principal:
        kind = "peer"

    class Inbox:  # nothing may reach the coordinator from a malformed batch
        async def result(self, *a):
            raise AssertionError("a malformed batch reached the coordinator")

    rpc = RpcServer()
    PeerAPI(Inbox(), Inbox()).register(rpc)  # type: ignore[arg-type]
    server = Transport(Identity.generate(), host="127.0.0.1", port=0, insecure=True, handler=rpc.handle_stream,
                       authorize=lambda *_a: Principal())
    async with trio.open_nursery() as n:
        await n.start(server.serve)
        async with MeshClient.connect("127.0.0.1", server.port, insecure=True) as c:
            with pytest.raises(RpcError) as e:
                await c.call("peer.results", {"results": bad})
            assert e.value.code == "invalid"
        await server.aclose()


async def test_offers_queued_during_a_call_go_together_and_each_gets_its_own_answer():
    from scheduler.core.job import Job, Offer, Reject

    calls: list[int] = []
    first_arrived, release = trio.Event(), trio.Event()
    rpc = RpcServer()

    @rpc.method("peer.offers")
    async def _offers(call: Call):
        offers = call.body["offers"]
        calls.append(len(offers))
        first_arrived.set()
        await release.wait()
        return {"answers": [Reject(o["job"]["id"], o["attempt"], f"no {o['job']['id']}").to_wire() for o in offers]}

    answers = {}

    async def offer(i: int) -> None:
        o = Offer(Job(kind="echo", job_id=f"job-{i}"), attempt=1, device_id="d", lease_s=6.0)
        answers[i] = await link.offer(o, 5.0)

    async with link_to(rpc) as link, trio.open_nursery() as n:
        n.start_soon(offer, 0)
        await first_arrived.wait()
        for i in range(1, 4):
            n.start_soon(offer, i)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert calls == [1, 3]
    assert {i: (a.job_id, a.reason) for i, a in answers.items()} == {i: (f"job-{i}", f"no job-{i}") for i in range(4)}
