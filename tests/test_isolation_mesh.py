"""Poison jobs on a real 3-node mesh (three `mesh-node` processes on loopback, each with the machine's OpenCL
device, kernels in runner processes): every case leaves every node running, fails the job with a clear reason,
and the mesh still runs honest work afterwards.

- an out-of-bounds write (through a wild pointer: a SIGSEGV wherever it runs) crashes a runner on one peer,
  then on another, and fails as "poison: crashed 2 runners (... SIGSEGV in kernel 'wild' ...)"; it never
  reaches the third; the runners it killed were replaced;
- a `while(1)` kernel fails at its time limit, its runner killed and replaced (no device held until a restart);
- a 100 GB allocation is refused before anything is sent, by the SDK and, asked directly, by the coordinator;
  a 2 GiB one (which the devices could hold) by the worker's runner, whose memory limit is 1 GiB;
- an `image2d_t` parameter (the kernel that used to kill workers) is refused at submit, naming the parameter.
Waits are on conditions; nothing asserts on timing.
"""

from __future__ import annotations

import numpy as np
import pytest

from mesh.bigtcp.rpc import RpcError
from scheduler.client.client import SyncClient, local_address
from scheduler.client.compute_sdk import (
    BufferTooLarge,
    ComputeFailed,
    ComputeRefused,
    InOut,
    Mesh,
    Out,
    Scratch,
    make_job,
)
from scheduler.devtools.localmesh import make_nodes, sees_all, start_nodes, wait_for
from tests.opencl import requires_opencl
from worker.compute.spec import SpecError

pytestmark = requires_opencl

SAXPY = """
__kernel void saxpy(const uint n, const float a, __global const float *x, __global float *y) {
    size_t i = get_global_id(0);
    if (i < n) y[i] = a * x[i] + y[i];
}
"""
WILD = """
__kernel void wild(__global int *out) {
    size_t i = get_global_id(0);
    out[i + ((size_t)1 << 40)] = 7;  /* far out of bounds: unmapped on every runner */
}
"""
FOREVER = """
__kernel void forever(__global volatile int *out) {
    while (1) { out[0] += 1; }
}
"""
IMAGE = """
__kernel void blur(__read_only image2d_t picture, sampler_t smp, __global float4 *out) {
    out[get_global_id(0)] = read_imagef(picture, smp, (int2)(get_global_id(0), 0));
}
"""


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    nodes = make_nodes(tmp_path_factory.mktemp("isolation-mesh"), 3,
                       ["--advert-interval", "0.5", "--advert-ttl", "5", "--runner-memory-mb", "1024"])
    try:
        start_nodes(nodes)
        wait_for(lambda: sees_all(nodes), 120, "3 nodes to converge", interval=0.2)
        yield nodes
    finally:
        for nd in nodes:
            nd.stop()


def all_alive(nodes) -> None:
    for nd in nodes:
        assert nd.proc is not None and nd.proc.poll() is None, f"node died: {nd.log_tail()}"
        assert nd.call("status")["peer_id"]


def honest_work(mesh: Mesh, n: int = 3) -> None:
    x = np.arange(4096, dtype=np.float32)
    for _ in range(n):
        run = mesh.run(make_job(SAXPY, "saxpy", [np.uint32(x.size), np.float32(2), x, InOut(np.ones_like(x), "y")],
                                global_size=x.size))
        np.testing.assert_allclose(run["y"], 2 * x + 1)


def runner_pids(nodes) -> dict[int, set[int]]:
    return {i: {r["pid"] for r in nd.call("runners")} for i, nd in enumerate(nodes)}


def test_an_out_of_bounds_write_is_poison_after_two_runners_and_every_node_lives(nodes):
    wait_for(lambda: all(len(p) >= 1 and 0 not in p for p in runner_pids(nodes).values()), 120, "runners up")
    before = runner_pids(nodes)
    with Mesh.local(nodes[0].data_dir) as mesh:
        with pytest.raises(ComputeFailed) as e:
            mesh.run(make_job(WILD, "wild", [Out(16, np.int32)], global_size=16))
        reason = e.value.reason
        assert e.value.state == "failed" and reason.startswith("poison: crashed 2 runners"), reason
        assert reason.count("runner crashed: SIGSEGV in kernel 'wild'") == 2, reason
        all_alive(nodes)
        honest_work(mesh)
    def every_node_has_a_runner():
        p = runner_pids(nodes)
        return p if all(p.values()) else None

    after = wait_for(every_node_has_a_runner, 120, "replacement runners")
    replaced = [i for i in before if not before[i] & after[i]]
    assert len(replaced) == 2, (before, after)  # two peers lost a runner each; the third never saw the job
    all_alive(nodes)


def test_a_kernel_that_never_returns_is_killed_at_its_limit_and_the_device_is_not_held(nodes):
    with Mesh.local(nodes[0].data_dir) as mesh:
        with pytest.raises(ComputeFailed) as e:
            mesh.run(make_job(FOREVER, "forever", [Out(1, np.int32)], global_size=1, time_limit_s=2.0))
        assert "exceeded time limit of 2 s" in e.value.reason and "replaced" in e.value.reason, e.value.reason
        all_alive(nodes)
        honest_work(mesh, 6)  # every device takes work again: nothing is quarantined until a restart
        assert not any(d.get("quarantined") for p in mesh.peers() for d in p["devices"])
    all_alive(nodes)


def test_a_100_gb_allocation_is_refused_before_anything_is_sent(nodes):
    huge = make_job(SAXPY, "saxpy", [np.uint32(1), np.float32(1), Scratch(25 << 30, np.float32),
                                     Out(1, np.float32)], global_size=1)  # 100 GiB on the device, nothing back
    with Mesh.local(nodes[0].data_dir) as mesh:
        with pytest.raises(BufferTooLarge) as e:
            mesh.run(huge)
        assert "GiB" in str(e.value) or "bytes" in str(e.value)
    addr, tok, pid, insecure = local_address(nodes[1].data_dir)
    with SyncClient(addr, token=tok, peer_id=pid, insecure=insecure) as c:  # past the SDK: the mesh refuses too
        ans = c.submit("compute.opencl", huge.spec)
        assert not ans["accepted"] and ">= 100.0 GiB" in ans["message"], ans
    # within what the devices have, beyond what a runner may hold (--runner-memory-mb 1024): refused by the
    # worker's runner before any input moves, naming its limit
    big = make_job(SAXPY, "saxpy", [np.uint32(1), np.float32(1), Scratch(1 << 29, np.float32), Out(1, np.float32)],
                   global_size=1)
    with Mesh.local(nodes[0].data_dir) as mesh:
        with pytest.raises(ComputeRefused) as e:
            mesh.run(big)
        assert "limit" in e.value.reason and str(1 << 30) in e.value.reason, e.value.reason  # the runner's 1 GiB
        honest_work(mesh, 1)
    all_alive(nodes)


def test_image_and_sampler_parameters_are_refused_at_submit_naming_them(nodes):
    spec = {"v": 1, "source": IMAGE, "kernel": "blur", "global_size": [4],  # what any client could send
            "args": [{"kind": "in", "dtype": "float32", "data": bytes(256)},
                     {"kind": "scalar", "dtype": "uint32", "value": 0}, {"kind": "out", "dtype": "float32", "count": 16}]}
    addr, tok, pid, insecure = local_address(nodes[2].data_dir)
    with SyncClient(addr, token=tok, peer_id=pid, insecure=insecure) as c:
        with pytest.raises(RpcError) as e:
            c.submit("compute.opencl", spec)
        assert e.value.code == "invalid_spec", e.value
        assert "'__read_only image2d_t picture' is an image" in e.value.message, e.value.message
    with pytest.raises(SpecError):  # and the SDK refuses it on the client, before anything is sent
        make_job(IMAGE, "blur", [np.zeros(64, np.float32), np.uint32(0), Out(16, np.float32)], global_size=4)
    with Mesh.local(nodes[2].data_dir) as mesh:
        honest_work(mesh, 1)
    all_alive(nodes)
