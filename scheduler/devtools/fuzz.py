"""`make fuzz`: random and mutated adverts, HELLOs and RPCs at a live 3-node mesh, for a bounded time; every
node must stay up and keep answering (its control socket, and a real job through its data plane).

    python -m scheduler.devtools.fuzz --seconds 60 [--seed N] [--keep DIR]

Exit status 0 when every node survived and answered every check, 1 otherwise (the failing node's log tail is
printed). Three attackers run at once: a gossip member (signed adverts and deltas with random and mutated
fields, and unsigned garbage), an outsider (TLS connections with random, mutated and oversized HELLO frames),
and a token holder (every RPC method, known and not, with random and mutated bodies and job specs).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import trio

from mesh.bigtcp import messages as m
from mesh.bigtcp.framing import FrameType, encode_frame
from mesh.bigtcp.rpc import RpcError
from scheduler.client.client import Client, local_address
from scheduler.devtools import hostile
from scheduler.devtools.localmesh import NodeProc, running_mesh
from scheduler.node.tokens import TokenStore

FLAGS = ["--advert-interval", "0.5", "--stall-timeout", "3", "--max-client-calls", "32"]
METHODS = ["job.submit", "job.result", "job.status", "job.list", "job.cancel", "job.watch", "mesh.peers",
           "peer.offer", "peer.lease", "peer.result", "peer.cancel", "peer.input", "peer.jobs", "nope", ""]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 3 or r < 0.5:
        return rng.choice([None, True, False, rng.randint(-(2**63), 2**64 - 1), rng.randint(-5, 5), rng.random() * 1e6,
                           float("nan"), float("inf"), "", "x" * rng.randint(0, 300), "evilhost",
                           "127.0.0.1:" + str(rng.randint(0, 70000)), bytes(rng.randbytes(rng.randint(0, 64))),
                           [1, 2], {}])
    if r < 0.75:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["id", "kind", "spec", "v", "t", "x", "wait", "limit", str(rng.random())]): random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def mutate(rng: random.Random, d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        if op < 0.5 and d:
            d[rng.choice(sorted(d))] = random_value(rng)
        elif op < 0.7 and d:
            d.pop(rng.choice(sorted(d)))
        else:
            d[rng.choice(["zz", "by", "req", "input", "deadline_ms", "prio"])] = random_value(rng)
    return d


def job_wire(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["echo", "sleep", "checksum", "compute.opencl", "render.frame", "zk.prove", "nope"])
    return {"v": 1, "t": "job", "kind": kind, "spec": {"seconds": 0.01} if kind == "sleep" else {},
            "timeout_s": 30.0, "max_attempts": 1}


class Fuzz:
    def __init__(self, nodes: list[NodeProc], token: str, seed: int) -> None:
        self.nodes = nodes
        self.token = token
        self.rng = random.Random(seed)
        self.sent = {"advert": 0, "hello": 0, "rpc": 0}
        self.failures: list[str] = []

    async def adverts(self, until: float) -> None:
        member = hostile.GossipMember([self.nodes[0].multiaddr])
        async with trio.open_nursery() as n:
            await n.start(member.run)
            rng, ident = self.rng, member.identity
            seq = int(time.time() * 1000) + 10**6
            while trio.current_time() < until:
                seq += 1
                r = rng.random()
                if r < 0.5:
                    body = hostile.advert_body(ident, seq)
                    if rng.random() < 0.5:
                        dev = list(body["devices"][0])
                        dev[rng.randrange(len(dev))] = random_value(rng)
                        body["devices"] = [dev]
                    if rng.random() < 0.7:
                        body = mutate(rng, body)
                    data = hostile.signed_advert(ident, body)
                elif r < 0.75:
                    delta = {"v": 1, "p": ident.peer_id_str, "k": ident.key_pair.public_key.to_bytes(), "q": seq,
                             "b": seq - 1, "t": time.time(), "i": 1.0, "l": {}}
                    raw = msgpack.packb(mutate(rng, delta), use_bin_type=True)
                    data = msgpack.packb({"d": raw, "s": ident.sign(raw)}, use_bin_type=True)
                else:
                    data = rng.randbytes(rng.randint(0, 2000))
                try:
                    await member.publish(data)
                    self.sent["advert"] += 1
                except Exception:  # our own publish refusing (e.g. unpackable): not the node's problem
                    pass
                await trio.sleep(0.12)  # gossipsub drops more than 10 messages/s from one peer
            member.stop()
            n.cancel_scope.cancel()

    def _hello_once(self) -> None:
        rng = self.rng
        node = rng.choice(self.nodes)
        try:
            s = hostile.tls_socket("127.0.0.1", node.data_port, timeout=3)
        except OSError:
            return  # a cap closed it: fine
        try:
            r = rng.random()
            if r < 0.4:
                d = {"v": 1, "id": "x", "mf": 1 << 20, "w": 1 << 24, "ms": 8, "x": {"token": "t"}}
                payload = msgpack.packb(mutate(rng, d), use_bin_type=True)
                data = b"".join(bytes(b) for b in encode_frame(FrameType.HELLO, 0, 0, payload))
            elif r < 0.6:
                data = hostile.frame_header(FrameType.HELLO, rng.choice([4097, 1 << 20, 16 << 20, 0xFFFFFFFF]))
                data += b"\x80" * rng.randint(0, 8192)
            elif r < 0.8:
                t, payload = m.encode_control(m.Hello(peer_id="x" * rng.randint(0, 200), max_frame=1 << 20,
                                                      window=1 << 24, max_streams=8,
                                                      extra={"token": "garbage" * rng.randint(0, 200)}))
                data = b"".join(bytes(b) for b in encode_frame(t, 0, 0, payload))
            else:
                data = rng.randbytes(rng.randint(1, 4096))
            s.sendall(data)
            s.settimeout(1)
            try:
                s.recv(1 << 16)
            except OSError:
                pass
        except OSError:
            pass
        finally:
            s.close()
        self.sent["hello"] += 1

    async def hellos(self, until: float) -> None:
        while trio.current_time() < until:
            await trio.to_thread.run_sync(self._hello_once)

    async def rpcs(self, until: float) -> None:
        rng = self.rng
        addr, _tok, pid, insecure = local_address(self.nodes[0].data_dir)
        while trio.current_time() < until:
            try:
                async with Client.connect(addr, token=self.token, peer_id=pid, insecure=insecure) as c:
                    for _ in range(20):
                        method = rng.choice(METHODS)
                        r = rng.random()
                        body: Any = random_value(rng)
                        if r < 0.4 and method == "job.submit":
                            body = {"job": mutate(rng, job_wire(rng))}
                        elif r < 0.7:
                            body = {"id": random_value(rng), "wait": False, "limit": random_value(rng)}
                        if not isinstance(body, dict):
                            body = {"b": body}
                        with trio.move_on_after(2):
                            try:
                                await c.rpc.call(method, body, timeout=2)
                            except (RpcError, ValueError, TypeError, OverflowError):
                                pass
                        self.sent["rpc"] += 1
            except Exception as e:  # a refused connection (a cap) is fine; the liveness checks decide
                print(f"rpc fuzz connection: {type(e).__name__}: {e}"[:200], file=sys.stderr)
                await trio.sleep(0.2)

    async def watchdog(self, until: float) -> None:
        """Every node answers its control socket, and runs a real job, throughout."""
        while trio.current_time() < until:
            for i, nd in enumerate(self.nodes):
                if nd.process.poll() is not None:
                    self.failures.append(f"node {i} exited with {nd.process.returncode}:\n{nd.log_tail()}")
                    return
                try:
                    await trio.to_thread.run_sync(nd.call, "status")
                    addr, tok, pid, insecure = local_address(nd.data_dir)
                    with trio.fail_after(30):
                        async with Client.connect(addr, token=tok, peer_id=pid, insecure=insecure) as c:
                            res = await c.run("echo", {"alive": i}, input=hashlib.sha256(str(i).encode()).digest())
                            if not res.ok:
                                raise RuntimeError(f"job failed: {res.reason}")
                except Exception as e:
                    self.failures.append(f"node {i} stopped answering: {type(e).__name__}: {e}\n{nd.log_tail()}")
                    return
            await trio.sleep(1.0)

    async def run(self, seconds: float) -> None:
        until = trio.current_time() + seconds
        async with trio.open_nursery() as n:
            n.start_soon(self.adverts, until)
            n.start_soon(self.hellos, until)
            n.start_soon(self.rpcs, until)
            n.start_soon(self.watchdog, until)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to attack (default 60)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: time); printed to rerun a failure")
    ap.add_argument("--keep", type=Path, default=None, help="keep the nodes' data dirs and logs here")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else int(time.time())
    root = a.keep or Path(tempfile.mkdtemp(prefix="gpumesh-fuzz-"))
    print(f"fuzz: 3 nodes, {a.seconds:g} s, seed {seed}, in {root}", flush=True)
    try:
        with running_mesh(root, 3, extra=FLAGS) as nodes:
            token = TokenStore(nodes[0].data_dir).create("fuzzer", ["compute"])[0]
            f = Fuzz(nodes, token, seed)
            trio.run(f.run, a.seconds)
            for i, nd in enumerate(nodes):
                if nd.process.poll() is not None and not f.failures:
                    f.failures.append(f"node {i} exited with {nd.process.returncode}:\n{nd.log_tail()}")
            print(f"fuzz: sent {f.sent['advert']} adverts, {f.sent['hello']} HELLOs, {f.sent['rpc']} RPCs", flush=True)
            if f.failures:
                print(f"fuzz: FAILED (seed {seed})\n" + "\n".join(f.failures), file=sys.stderr)
                return 1
            print("fuzz: every node stayed up and kept answering")
            return 0
    finally:
        if a.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
