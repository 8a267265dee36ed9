"""compute.opencl on real node processes (a 3-node loopback mesh) through the SDK (`scheduler.client.compute_sdk`) and
`mesh-node compute`.

The mesh: node 0 is a gateway coordinator that runs nothing (`--devices none`), so every job crosses the network
to node 1 or node 2; node 2 carries the test-only fault hook Faults.corrupt_compute for the kernel
`scale_corruptible` only (one bit of its first output byte flipped), so every other kernel is honest there.
Checked: each example (saxpy, tiled matmul, conv2d, ChaCha20) against numpy / `cryptography`; a build failure
returns the compiler's log; a kernel past its time limit fails with that reason and the next job on that worker
runs; oversized buffers are refused before any transfer; a token without the compute scope is refused; a batch
spreads over both workers; redundant verification catches the corrupt worker (bit for bit) and accepts a
tolerance when asked; the CLI writes .npy outputs. Waits are on conditions; nothing asserts on timing.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from scheduler.cli.common import UsageError
from scheduler.cli.compute_cli import parse_arg
from scheduler.client.client import Client, local_address
from scheduler.client.compute_sdk import (
    AsyncMesh,
    BufferTooLarge,
    BuildFailed,
    ComputeRefused,
    InOut,
    Mesh,
    Out,
    TimeLimitExceeded,
    VerificationFailed,
    compare_outputs,
    make_job,
)
from scheduler.devtools.localmesh import make_nodes, sees_all, start_nodes, wait_for
from scheduler.node.tokens import TokenStore
from tests.opencl import requires_opencl
from worker.compute.runner import ComputeResult, OutputBuffer
from worker.faults import Faults

pytestmark = requires_opencl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "compute"
SAXPY = (EXAMPLES / "saxpy.cl").read_text()
CORRUPTIBLE = """
__kernel void scale_corruptible(__global const float *x, __global float *y, const float a) {
    size_t i = get_global_id(0);
    y[i] = a * x[i] + 0.1f;
}
"""
# one work item spinning through `iters` rounds of xorshift (~0.25 s per 10^8 rounds on a 2-core machine)
SPIN = """
__kernel void spin(__global ulong *out, const uint iters) {
    ulong x = get_global_id(0) + 88172645463325252UL;
    for (uint i = 0; i < iters; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; }
    out[get_global_id(0)] = x;
}
"""
TRIES = 16  # redundant copies allowed: placement picks at random between the two equal workers


def load(name: str):
    """An example module by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"compute_mesh_example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    # adverts every 0.5 s; a TTL of 5 s (not 3 intervals) so that a worker whose trio loop stalls while a
    # runaway kernel finishes (the runner frees a host-transfer event that waits: see the time-limit test) is
    # not expired from the view mid-test
    gateway, honest, corrupt = make_nodes(tmp_path_factory.mktemp("compute-mesh"), 3,
                                          ["--advert-interval", "0.5", "--advert-ttl", "5"])
    gateway.extra += ["--devices", "none"]
    corrupt.faults = Faults(corrupt_compute=("scale_corruptible",))
    nodes = [gateway, honest, corrupt]
    try:
        start_nodes(nodes)
        wait_for(lambda: sees_all(nodes), 90, "three nodes to see each other")
        yield nodes
    finally:
        for nd in nodes:
            nd.kill()


@pytest.fixture(scope="module")
def gw(mesh):
    with Mesh.local(mesh[0].data_dir) as m:
        yield m


def saxpy_args(n: int, a: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    return [np.uint32(n), np.float32(a), x, InOut(y, "y")], np.float32(a) * x + y


# ---- the examples, each through the gateway to a worker --------------------------------------------------------

async def test_examples_on_the_mesh_match_numpy_and_cryptography(mesh):
    saxpy, matmul, conv2d, chacha20 = (load(n) for n in ("saxpy", "matmul", "conv2d", "chacha20"))
    workers = {mesh[1].peer_id, mesh[2].peer_id}
    rng = np.random.default_rng(1)
    async with AsyncMesh.local(mesh[0].data_dir) as m:
        # SAXPY, 1,000,003 elements: x and y (4 MB each) stream to the worker, y comes back
        n = 1_000_003
        x, y = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
        run = await m.run(saxpy.job(2.5, x, y))
        assert run.worker in workers and run.result.bytes_in == 2 * 4 * n
        np.testing.assert_allclose(run["y"], saxpy.reference(2.5, x, y), rtol=1e-6, atol=1e-6)
        # tiled matmul with ragged edges (not a multiple of the 32x32 tile)
        a, b = rng.standard_normal((70, 45), dtype=np.float32), rng.standard_normal((45, 90), dtype=np.float32)
        run = await m.run(matmul.job(a, b))
        assert run.worker in workers and run["C"].shape == (70, 90)
        np.testing.assert_allclose(run["C"], matmul.reference(a, b), **matmul.tolerance(45))
        # conv2d: a batch of 2 RGB 20x20 images, 8 3x3 filters, stride 1, padding 1, ReLU
        xi = rng.standard_normal((2, 3, 20, 20)).astype(np.float32)
        wt = (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32)
        bias = rng.standard_normal(8).astype(np.float32)
        run = await m.run(conv2d.job(xi, wt, bias, stride=1, pad=1, relu=True))
        assert run.worker in workers and run["y"].shape == (2, 8, 20, 20)
        np.testing.assert_allclose(run["y"], conv2d.reference(xi, wt, bias, 1, 1, True), rtol=1e-4, atol=1e-4)
        # ChaCha20 over 1.5 MiB + 5 bytes (streamed, partial last block), byte for byte
        key, nonce, data = os.urandom(32), os.urandom(12), os.urandom((3 << 19) + 5)
        run = await m.run(chacha20.job(key, nonce, data, counter=7))
        assert run.worker in workers
        assert run["ciphertext"].tobytes() == chacha20.reference(key, nonce, data, counter=7)
        # the one-call form returns the array itself
        args, expect = saxpy_args(1000, -1.5, seed=2)
        out = await m.compute(SAXPY, "saxpy", args, global_size=1024, local_size=64)
        assert isinstance(out, np.ndarray) and out.shape == (1000,)
        np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)


# ---- failures ----------------------------------------------------------------------------------------------

def _leases_held(node) -> float:
    """Slot leases the node holds as coordinator now (acquired minus given back, refused, revoked, lost)."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10).read().decode()
    held = 0.0
    for line in text.splitlines():
        if line.startswith("gpumesh_leases_total{"):
            event, value = line.split('"')[1], float(line.rsplit(" ", 1)[1])
            held += value if event == "acquired" else -value if event != "direct" else 0.0
    return held


def test_a_program_that_fails_to_build_returns_the_compiler_log(gw):
    args, _ = saxpy_args(64, 1.0)
    broken = SAXPY.replace("y[i] = a * x[i] + y[i];", "y[i] = a * x[i] + undeclared_thing;")
    with pytest.raises(BuildFailed) as e:
        gw.compute(broken, "saxpy", args, global_size=64)
    assert "undeclared_thing" in e.value.log and "program.cl" in e.value.log, e.value.log
    assert e.value.state == "failed" and e.value.worker in {p["peer_id"] for p in gw.peers()}


def test_a_kernel_past_its_time_limit_fails_and_the_next_job_on_that_worker_runs(mesh, gw):
    workers = {mesh[1].peer_id, mesh[2].peer_id}
    # about half a second of spinning against a 0.1 s limit. (Known worker issue, reported: when the failed
    # job's frames are freed, pyopencl's NannyEvent of the read-back waits for the still-running kernel on the
    # worker's trio thread, stalling that node until the kernel ends; the mesh's advert TTL above absorbs it.)
    with pytest.raises(TimeLimitExceeded) as e:
        gw.compute(SPIN, "spin", [Out(1, np.uint64), np.uint32(200_000_000)], global_size=1, time_limit_s=0.1)
    assert "exceeded time limit of 0.1 s" in e.value.reason and "spin" in e.value.reason, e.value.reason
    victim = e.value.worker
    assert victim in workers
    args, expect = saxpy_args(4096, 3.0, seed=3)
    ran_on = []
    for _ in range(30):  # placement picks either worker: go on until a job lands on the one that timed out
        # each job placed afresh: a slot lease would keep the stream of jobs on the worker it is on, so wait
        # until the gateway has given its leases back (idle) before the next one
        wait_for(lambda: _leases_held(mesh[0]) == 0, 60, "the gateway's slot leases given back")
        run = gw.run(make_job(SAXPY, "saxpy", args, global_size=4096))  # (it waits out the runaway kernel)
        np.testing.assert_allclose(run["y"], expect, rtol=1e-6, atol=1e-6)
        ran_on.append(run.worker)
        if run.worker == victim:
            break
    assert victim in ran_on, "no later job ran on the worker that timed out"


def test_oversized_buffers_are_refused_before_any_transfer(mesh, gw):
    biggest = max(d["global_mem_bytes"] for p in gw.peers(refresh=True) for d in p["devices"]
                  if d["kind"] != "reference")
    jobs_before = {j["id"] for j in gw.client.list()}
    x = np.zeros(1 << 19, dtype=np.float32)  # 2 MiB: would be streamed
    too_big = Out(biggest // 4 + (1 << 20), np.float32)
    with pytest.raises(BufferTooLarge, match="largest OpenCL device on the mesh") as e:
        gw.compute(SAXPY, "saxpy", [np.uint32(1), np.float32(1), x, too_big], global_size=64)
    assert e.value.code == "too_large"
    assert {j["id"] for j in gw.client.list()} == jobs_before, "a job reached the coordinator"
    assert not any((mesh[0].data_dir / "spool").iterdir()), "input was spooled"
    # without the client's check, the coordinator refuses it at submit: the per-job output limit (the spec
    # declares its output bytes) or placement (no device that large), whichever is smaller
    with pytest.raises(ComputeRefused, match="no peer has|output bytes, more than the") as e:
        gw.compute(SAXPY, "saxpy", [np.uint32(1), np.float32(1), x[:16], too_big], global_size=64, precheck=False)
    assert e.value.code in ("no_match", "quota", "output_bytes"), e.value.code


def test_a_token_without_the_compute_scope_is_refused(mesh):
    store = TokenStore(mesh[0].data_dir)
    submit_only, _ = store.create("no-kernels", ["submit"])
    compute_tok, _ = store.create("kernels", ["compute"])
    addr, _, pid, insecure = local_address(mesh[0].data_dir)
    args, expect = saxpy_args(256, 2.0, seed=4)
    with Mesh.connect(addr, token=submit_only, peer_id=pid, insecure=insecure) as m:
        with pytest.raises(ComputeRefused, match="compute") as e:
            m.compute(SAXPY, "saxpy", args, global_size=256)
        assert e.value.code == "forbidden"
        assert m.client.run("echo", {}).ok  # the token itself works for ordinary jobs
    with Mesh.connect(addr, token=compute_tok, peer_id=pid, insecure=insecure) as m:
        np.testing.assert_allclose(m.compute(SAXPY, "saxpy", args, global_size=256), expect, rtol=1e-6)


def test_pyopencl_demo_ported_runs_on_the_mesh(gw):
    """pyopencl's examples/demo.py, five lines changed (examples/compute/pyopencl_demo.py), on the mesh."""
    assert load("pyopencl_demo").main([], mesh=gw) == 0


def test_pyopencl_shaped_calls(mesh, gw):
    args, expect = saxpy_args(3000, 1.5, seed=9)
    prg = gw.program(SAXPY).build()
    np.testing.assert_allclose(prg.saxpy(gw, (3072,), (64,), *args), expect, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gw.launch(SAXPY, "saxpy", 3072, None, *args), expect, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="global_size, local_size"):
        prg.saxpy(gw, *args)


def test_sgemm_pipeline_moves_only_what_it_needs(mesh, gw):
    sgemm = load("sgemm")
    rng = np.random.default_rng(11)
    a = rng.uniform(-1, 1, (96, 80)).astype(np.float32)
    b = rng.uniform(-1, 1, (80, 72)).astype(np.float32)
    job = sgemm.job(a, b)
    run = gw.run(job)
    np.testing.assert_allclose(run["C"], sgemm.reference(a, b), **sgemm.tolerance(80))
    assert run.worker in {mesh[1].peer_id, mesh[2].peer_id}
    needed = a.nbytes + b.nbytes + run["C"].nbytes
    sent = len(job.input) + sum(len(x.get("data", b"")) for x in job.spec["args"])
    moved = sent + sum(o.array.nbytes for o in run.result.outputs)
    assert moved == needed  # bytes_moved_ratio 1.0: the transposed B never left the worker's device
    assert run.result.bytes_in == a.nbytes + b.nbytes and run.result.bytes_out == run["C"].nbytes


def test_device_limits_from_the_adverts_refuse_before_any_transfer(mesh, gw):
    devs = [d for p in gw.peers(refresh=True) for d in p["devices"] if d["kind"] != "reference"]
    assert devs and all(d["max_work_group_size"] > 0 and d["opencl_version"] for d in devs)
    jobs_before = {j["id"] for j in gw.client.list()}
    big = np.zeros(1 << 19, np.float32)  # 2 MiB: would be streamed
    if not any(d["non_uniform_work_groups"] for d in devs):  # PoCL: OpenCL 3.0 without non-uniform groups
        with pytest.raises(ComputeRefused, match="non-uniform.*does not support.*nothing was sent") as e:
            gw.compute(SAXPY, "saxpy", [np.uint32(1000), np.float32(1), big, Out(1000, np.float32)],
                       global_size=1000, local_size=64)
        assert e.value.code == "device_limits"
    wg = max(d["max_work_group_size"] for d in devs) * 2
    src = f"__kernel __attribute__((reqd_work_group_size({wg}, 1, 1))) void k(__global const float *x, " \
          "__global float *y) { y[get_global_id(0)] = x[get_global_id(0)]; }"
    with pytest.raises(ComputeRefused, match=f"work-group of {wg} work items exceeds the device's maximum") as e:
        gw.compute(src, "k", [big, Out(big.size, np.float32)], global_size=big.size, local_size=wg)
    assert e.value.code == "device_limits"
    assert {j["id"] for j in gw.client.list()} == jobs_before, "a job reached the coordinator"


def test_cli_runs_a_pipeline_spec_file(mesh, tmp_path, capsys):
    from scheduler.cli.main import main

    for name in ("sgemm.yaml", "sgemm.cl"):
        (tmp_path / name).write_text((EXAMPLES / name).read_text())
    rng = np.random.default_rng(12)
    a = rng.standard_normal((256, 256), dtype=np.float32)
    b = rng.standard_normal((256, 256), dtype=np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    out = tmp_path / "out"
    rc = main(["compute", str(tmp_path / "sgemm.yaml"), "--out", str(out), "--json",
               "--data-dir", str(mesh[0].data_dir)])
    text = capsys.readouterr()
    assert rc == 0, text.err
    np.testing.assert_allclose(np.load(out / "C.npy"), a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
    assert sorted(p.name for p in out.iterdir()) == ["C.npy"]  # the scratch buffer is not an output
    import json

    info = json.loads(text.out)
    assert info["timings"]["launches"] == 2 and info["timings"]["bytes_out"] == 256 * 256 * 4
    # the same file with --kernel is a usage error; a file that breaks the schema names where
    assert main(["compute", str(tmp_path / "sgemm.yaml"), "--kernel", "x", "--data-dir", str(mesh[0].data_dir)]) == 2
    assert "not used with a pipeline spec file" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text((EXAMPLES / "sgemm.yaml").read_text().replace("role: scratch", "role: tmp"))
    assert main(["compute", str(tmp_path / "bad.yaml"), "--data-dir", str(mesh[0].data_dir)]) == 2
    assert "buffers/BT/role" in capsys.readouterr().err


# ---- batches and redundancy --------------------------------------------------------------------------------

def test_a_batch_spreads_over_workers_and_returns_in_order(mesh, gw):
    items = [saxpy_args(2000, float(a), seed=a) for a in range(16)]
    runs = gw.map(SAXPY, "saxpy", [args for args, _ in items], global_size=2048, local_size=64, details=True)
    assert len(runs) == 16
    for run, (_, expect) in zip(runs, items, strict=True):
        np.testing.assert_allclose(run.value(), expect, rtol=1e-6, atol=1e-6)
    assert {r.worker for r in runs} == {mesh[1].peer_id, mesh[2].peer_id}, "the batch ran on one worker"
    # the plain form: arrays, in order
    outs = gw.map(SAXPY, "saxpy", [args for args, _ in items[:4]], global_size=2048)
    for out, (_, expect) in zip(outs, items[:4], strict=True):
        np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)
    # an item the worker refuses (a float64 scalar for the kernel's `float a`) fails the batch, naming the item
    bad = [np.uint32(2000), np.float64(1.0), *items[0][0][2:]]
    with pytest.raises(ComputeRefused, match="pass np.float32\\(...\\) \\(dtype float32\\)") as e:
        gw.map(SAXPY, "saxpy", [items[1][0], items[2][0], bad], global_size=2048)
    assert e.value.index == 2 and e.value.code == "invalid_spec"


def test_redundant_runs_agree_on_honest_workers(mesh, gw):
    args, expect = saxpy_args(5000, 0.5, seed=5)
    run = gw.run(make_job(SAXPY, "saxpy", args, global_size=5000), verify="redundant", redundancy_tries=TRIES)
    assert set(run.verified_by) == {mesh[1].peer_id, mesh[2].peer_id}
    assert len(run.job_ids) >= 2
    np.testing.assert_allclose(run["y"], expect, rtol=1e-6, atol=1e-6)


def test_redundant_verification_catches_the_corrupt_worker(mesh, gw):
    x = np.random.default_rng(6).standard_normal(3000).astype(np.float32)
    args = [x, Out(3000, np.float32, "y"), np.float32(2.0)]
    # unverified, whichever worker runs it answers (node 2's answer is wrong by one bit)
    with pytest.raises(VerificationFailed) as e:
        gw.compute(CORRUPTIBLE, "scale_corruptible", args, global_size=3000, verify="redundant",
                   redundancy_tries=TRIES)
    assert set(e.value.workers) == {mesh[1].peer_id, mesh[2].peer_id}
    assert e.value.output == "y" and "1 of 3000 elements differ bit for bit; first at [0]" in e.value.detail
    assert mesh[2].peer_id in str(e.value)
    # a float tolerance that covers one ulp accepts the pair (the caller's explicit choice)
    y = gw.compute(CORRUPTIBLE, "scale_corruptible", args, global_size=3000, verify="redundant",
                   redundancy_tries=TRIES, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y, np.float32(2.0) * x + np.float32(0.1), rtol=1e-6, atol=1e-6)


# ---- the CLI -----------------------------------------------------------------------------------------------

def test_cli_runs_a_kernel_file_and_writes_npy_outputs(mesh, tmp_path, capsys):
    from scheduler.cli.main import main

    n = 1000
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "saxpy.cl").write_text(SAXPY)
    out = tmp_path / "out"
    rc = main(["compute", str(tmp_path / "saxpy.cl"), "--kernel", "saxpy", "--global", "1024", "--local", "64",
               "--arg", f"scalar:uint32:{n}", "--arg", "scalar:float32:2.5", "--arg", f"in:float32:{tmp_path / 'x.npy'}",
               "--arg", f"y=inout:float32:{tmp_path / 'y.npy'}", "--out", str(out),
               "--data-dir", str(mesh[0].data_dir)])
    text = capsys.readouterr()
    assert rc == 0, text.err
    np.testing.assert_allclose(np.load(out / "y.npy"), np.float32(2.5) * x + y, rtol=1e-6, atol=1e-6)
    assert "saxpy ran on" in text.out and "kernel" in text.out and "wall" in text.out
    # a build failure exits 1 with the compiler's log on stderr; a bad --arg exits 2 before contacting the mesh
    (tmp_path / "bad.cl").write_text(SAXPY.replace("a * x[i]", "a * nope[i]"))
    rc = main(["compute", str(tmp_path / "bad.cl"), "--kernel", "saxpy", "--global", "1024",
               "--arg", f"scalar:uint32:{n}", "--arg", "scalar:float32:2.5", "--arg", "in:float32:=1,2,3",
               "--arg", "out:float32:1024", "--data-dir", str(mesh[0].data_dir)])
    text = capsys.readouterr()
    assert rc == 1 and "nope" in text.err and "failed to build" in text.err
    rc = main(["compute", str(tmp_path / "saxpy.cl"), "--kernel", "saxpy", "--global", "1024",
               "--arg", "scalar:float128:1", "--data-dir", str(mesh[0].data_dir)])
    assert rc == 2 and "unknown dtype 'float128'" in capsys.readouterr().err


async def test_raw_client_cannot_bypass_the_scope_check(mesh):
    """The scope is the coordinator's check, not the SDK's: a raw submit with a submit-only token is refused."""
    tok, _ = TokenStore(mesh[0].data_dir).create("raw-no-kernels", ["submit"])
    addr, _, pid, insecure = local_address(mesh[0].data_dir)
    args, _ = saxpy_args(64, 1.0)
    job = make_job(SAXPY, "saxpy", args, global_size=64)
    async with Client.connect(addr, token=tok, peer_id=pid, insecure=insecure) as c:
        from mesh.bigtcp.rpc import RpcError

        with pytest.raises(RpcError) as e:
            await c.submit(job.kind, job.spec, input=job.input or None)
        assert e.value.code == "forbidden" and "compute" in e.value.message


# ---- pieces without a mesh -----------------------------------------------------------------------------------

def test_cli_arg_syntax(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(4, dtype=np.int64))
    np.save(tmp_path / "f.npy", np.ones(4))
    (tmp_path / "raw.bin").write_bytes(np.arange(3, dtype=np.float32).tobytes())
    a = parse_arg(f"in:int32:{tmp_path / 'a.npy'}", 0)  # int64 .npy converted within its kind
    assert a.array.dtype == np.int32 and a.array.tolist() == [0, 1, 2, 3]
    assert parse_arg(f"v=inout:float32:{tmp_path / 'raw.bin'}", 1).array.tolist() == [0.0, 1.0, 2.0]
    assert parse_arg("in:uint8:=1,2,0x10", 0).array.tolist() == [1, 2, 16]
    out = parse_arg("C=out:float32:64x32", 0)
    assert (out.shape, out.name, np.dtype(out.dtype)) == ((64, 32), "C", np.float32)
    assert parse_arg("out:uint8:100", 0).shape == 100
    s = parse_arg("scalar:uint64:0x10", 0)
    assert (s.dtype, s.value) == ("uint64", 16)
    assert parse_arg("local:float32:256", 0).nbytes == 1024 and parse_arg("local:512", 0).nbytes == 512
    for bad, msg in [("foo:1", "unknown kind"), ("in:float128:x", "unknown dtype"), ("out:float32:0", "positive"),
                     ("scalar:float32:abc", "not a float32"), ("1x=in:int32:=1", "identifier"),
                     (f"in:int32:{tmp_path / 'missing.npy'}", "no such file"), ("in:float32", "expected in:DTYPE"),
                     (f"in:int32:{tmp_path / 'f.npy'}", "does not convert")]:
        with pytest.raises(UsageError, match=msg):
            parse_arg(bad, 0)


def test_compare_outputs_bitwise_and_with_tolerance():
    def res(*vals, dtype=np.float32):
        return ComputeResult([OutputBuffer(1, "y", np.dtype(dtype).name, np.array(vals, dtype=dtype))])

    a, b = res(1.0, np.nan, 3.0), res(1.0, np.nan, np.nextafter(np.float32(3.0), np.float32(4.0)))
    assert compare_outputs(a, a) is None  # NaNs with the same bits are equal bit for bit
    name, detail = compare_outputs(a, b)
    assert name == "y" and "1 of 3 elements differ bit for bit; first at [2]" in detail
    assert compare_outputs(a, b, rtol=1e-6) is None
    assert compare_outputs(a, res(1.0, 0.0, 3.0), rtol=1e-3) is not None  # NaN vs a number is never close
    assert compare_outputs(res(5, dtype=np.int32), res(6, dtype=np.int32), atol=10) is not None  # ints: exact
    assert "outputs" in compare_outputs(a, ComputeResult([]))[1]


def test_compare_outputs_of_vector_complex_and_struct_outputs():
    import pyopencl.cltypes as cltypes

    def res(arr):
        return ComputeResult([OutputBuffer(0, "o", "x", arr)])

    v = np.arange(8, dtype=np.float32).view(cltypes.float4)
    w = v.copy()
    w.view(np.float32)[5] = np.nextafter(np.float32(5), np.float32(6))
    name, detail = compare_outputs(res(v), res(w))
    assert name == "o" and "1 of 8 elements differ bit for bit; first at [5]" in detail
    assert compare_outputs(res(v), res(w), rtol=1e-6) is None
    c = np.array([1 + 2j, 3 - 1j], np.complex128)
    assert "first at [1]" in compare_outputs(res(c), res(c + np.array([0, 1e-9j])))[1]
    assert compare_outputs(res(c), res(c + np.array([0, 1e-9j])), atol=1e-6) is None
    st = np.zeros(3, np.dtype({"names": ["a", "b"], "formats": ["f8", "i4"], "offsets": [0, 8], "itemsize": 16}))
    st2 = st.copy()
    st2["b"][2] = 1
    assert "1 of 3 elements differ bit for bit; first at [2]" in compare_outputs(res(st), res(st2), rtol=1.0)[1]
