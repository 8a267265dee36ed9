"""The job-kind registry and the small kinds: validation names the field, requirements, the run paths
(OpenCL and CPU) agree with the reference, streamed input is checked against its declared size."""

import hashlib
import os
from dataclasses import replace

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import kinds_basic
from worker.devices import Device, discover
from worker.kinds import (
    REGISTRY,
    InputReader,
    JobKind,
    KindRegistry,
    Requirements,
    Result,
    RunContext,
    SpecError,
    UnknownKind,
    get,
)
from worker.kinds_basic import load_builtin_kinds
from worker.opencl import device_context

load_builtin_kinds()


def _gpu(**kw):
    base = dict(id="0:0", fingerprint="f", platform="P", vendor="V", name="G", kind="gpu", compute_units=8,
                global_mem_bytes=8 << 30, max_work_group_size=256, fp64=True, int64=True,
                mulmod_mops=1000.0, f32_gflops=100.0)
    base.update(kw)
    return Device(**base)


# --- registry --------------------------------------------------------------------------------------------------


def test_builtin_kinds_registered_and_unknown_kind_lists_them():
    assert {"echo", "sleep", "checksum"} <= set(REGISTRY.names())
    with pytest.raises(UnknownKind) as ei:
        get("render-nope")
    msg = str(ei.value)
    assert "'render-nope'" in msg and "checksum, echo" in msg and "sleep" in msg


def test_register_rules():
    reg = KindRegistry()

    class K(JobKind):
        name = "k"

    k = reg.register(K())
    assert reg.get("k") is k and "k" in reg
    reg.register(k)  # the same object again is fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register(K())
    reg.register(K(), replace=True)

    class Bad(JobKind):
        name = "has space"

    with pytest.raises(ValueError):
        reg.register(Bad())
    with pytest.raises(TypeError):
        reg.register("echo")  # type: ignore[arg-type]
    with pytest.raises(UnknownKind, match="known kinds: k"):
        reg.get("x")


# --- requirements ----------------------------------------------------------------------------------------------


def test_requirements_unmet_reasons():
    cpu_ref = Device.cpu_reference()
    gpu = _gpu()
    assert Requirements().satisfied_by(gpu) and Requirements().satisfied_by(cpu_ref)
    assert "OpenCL" in Requirements(opencl=True).unmet(cpu_ref)
    assert "gpu" in Requirements(device_kind="gpu").unmet(_gpu(kind="cpu"))
    assert "bytes" in Requirements(min_memory_bytes=16 << 30).unmet(gpu)
    assert Requirements(fp64=True).unmet(_gpu(fp64=False)) == "needs fp64"
    assert "mulmod" in Requirements(min_mulmod_mops=2000).unmet(gpu)
    assert "mulmod" in Requirements(min_mulmod_mops=1).unmet(_gpu(mulmod_mops=None))  # uncalibrated
    assert "GFLOP" in Requirements(min_f32_gflops=101).unmet(gpu)
    assert Requirements(device_kind="gpu", min_memory_bytes=1 << 30, fp64=True, int64=True,
                        min_mulmod_mops=500, min_f32_gflops=50, opencl=True).satisfied_by(gpu)


def test_requirements_merge_and_wire():
    a = Requirements(device_kind="gpu", min_memory_bytes=10)
    b = Requirements(min_memory_bytes=20, fp64=True)
    m = a.merged(b)
    assert m == Requirements(device_kind="gpu", min_memory_bytes=20, fp64=True)
    with pytest.raises(ValueError, match="conflicting"):
        a.merged(Requirements(device_kind="cpu"))
    assert Requirements.from_wire(m.to_wire()) == m and m.to_wire() == {"device_kind": "gpu", "min_memory_bytes": 20,
                                                                         "fp64": True}
    with pytest.raises(ValueError, match="unknown"):
        Requirements.from_wire({"min_memory": 1})
    with pytest.raises(ValueError, match="'fp64' must be bool, not int"):
        Requirements.from_wire({"fp64": 1})
    with pytest.raises(ValueError, match="must be int, not bool"):
        Requirements.from_wire({"min_memory_bytes": True})
    with pytest.raises(ValueError, match="finite"):
        Requirements.from_wire({"min_f32_gflops": float("nan")})
    with pytest.raises(ValueError):
        Requirements(device_kind="tpu")
    with pytest.raises(ValueError):
        Requirements(min_memory_bytes=-1)


# --- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,spec,size,field",
    [
        ("sleep", {}, 0, "seconds"),
        ("sleep", {"seconds": "1"}, 0, "seconds"),
        ("sleep", {"seconds": True}, 0, "seconds"),
        ("sleep", {"seconds": -1}, 0, "seconds"),
        ("sleep", {"seconds": float("nan")}, 0, "seconds"),
        ("sleep", {"seconds": 1, "chunk_s": 0}, 0, "chunk_s"),
        ("sleep", {"seconds": 1, "extra": 1}, 0, "extra"),
        ("sleep", {"seconds": 1}, 5, "input"),
        ("checksum", {"algorithm": "md5"}, 10, "algorithm"),
        ("checksum", {"x": 1}, 10, "x"),
        ("echo", {"blob": b"x" * 70000}, 0, ""),
        ("echo", {}, 17 << 20, "input"),
        ("echo", [], 0, ""),
        ("echo", {1: 2}, 0, "1"),
        ("echo", {"o": object()}, 0, ""),
    ],
)
def test_validation_names_the_field(kind, spec, size, field):
    with pytest.raises(SpecError) as ei:
        get(kind).validate(spec, size)
    assert ei.value.field == field
    if field:
        assert repr(field) in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_valid_specs_and_costs():
    get("sleep").validate({"seconds": 2.5, "chunk_s": 0.5}, 0)
    get("checksum").validate({}, 1 << 30)
    get("echo").validate({"anything": [1, "two", {"three": 3.0}]}, 100)
    sleep = get("sleep")
    assert sleep.cost_s({"seconds": 2.5}, 0, None) == 2.5
    assert sleep.chunk_s({"seconds": 2.5, "chunk_s": 0.5}, 0, None) == 0.5
    ck = get("checksum")
    assert 0 < ck.chunk_s({}, 1 << 30, _gpu()) < ck.cost_s({}, 1 << 30, _gpu())
    assert ck.cost_s({}, 2 << 30, None) > ck.cost_s({}, 1 << 30, None)
    assert get("echo").cost_s({}, 0, None) > 0


# --- input --------------------------------------------------------------------------------------------------


async def _stream(chunks):
    for c in chunks:
        yield c


async def test_input_reader_checks_declared_size():
    assert [c async for c in InputReader(b"abcdefg", 7, chunk_size=3)] == [b"abc", b"def", b"g"]
    assert await InputReader(_stream([b"ab", b"", b"cd"]), 4).read_all() == b"abcd"
    with pytest.raises(ValueError, match="longer than its declared size"):
        await InputReader(_stream([b"abc", b"def"]), 4).read_all()
    with pytest.raises(ValueError, match="ended after 3 of 4"):
        await InputReader(_stream([b"abc"]), 4).read_all()
    with pytest.raises(ValueError, match="exceeds the limit"):
        await InputReader(b"abcdef", 6).read_all(limit=5)
    r = InputReader(b"x", 1)
    await r.read_all()
    with pytest.raises(RuntimeError, match="only once"):
        await r.read_all()


# --- runs ------------------------------------------------------------------------------------------------------


def _ctx(spec, data, *, chunk=1 << 20, device=None, cl=None, stream=None, **kw):
    src = stream if stream is not None else data
    return RunContext("job-1", spec, InputReader(src, len(data), chunk), device, cl, **kw)


async def test_echo_returns_spec_and_input():
    spec = {"hello": ["world", 1]}
    r = await get("echo").run(_ctx(spec, b"payload"))
    assert r.body == {"echo": spec, "input_bytes": 7} and r.output == b"payload"
    assert r.body == get("echo").reference(spec, b"payload").body
    assert (await get("echo").run(_ctx({}, b""))).output is None


def test_sleep_sleeps_in_chunks_with_checkpoints():
    clock = trio.testing.MockClock(autojump_threshold=0)
    marks = []
    progress = []

    async def checkpoint():
        marks.append(trio.current_time())

    async def main():
        t0 = trio.current_time()
        r = await get("sleep").run(_ctx({"seconds": 1.0, "chunk_s": 0.25}, b"", checkpoint=checkpoint,
                                        progress=lambda f, m=None: progress.append(f)))
        return r, trio.current_time() - t0, t0

    r, elapsed, t0 = trio.run(main, clock=clock)  # virtual time: the kind takes its time from trio
    assert r.body == {"slept_s": 1.0}
    assert elapsed == pytest.approx(1.0)
    assert [m - t0 for m in marks] == pytest.approx([0.25, 0.5, 0.75])  # between chunks, not after the last
    assert progress == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert trio.run(get("sleep").run, _ctx({"seconds": 0}, b"")).body == {"slept_s": 0.0}


@given(st.binary(max_size=3000), st.integers(1, 700))
@settings(max_examples=60, deadline=None)
def test_checksum_cpu_path_matches_reference(data, chunk):
    r = trio.run(get("checksum").run, _ctx({}, data, chunk=chunk))
    assert r.body == get("checksum").reference({}, data).body
    assert r.body["sha256"] == hashlib.sha256(data).hexdigest() and r.body["bytes"] == len(data)
    assert r.body["byte_sum"] == sum(data)


@pytest.fixture(scope="module")
def dctx():
    return device_context(discover("all").devices[0])


@pytest.mark.parametrize("size,chunk", [(0, 1 << 20), (1, 1 << 20), (12345, 1000), (3 * (1 << 20) + 7, 5 << 20)])
async def test_checksum_opencl_path_matches_reference(dctx, size, chunk):
    data = os.urandom(size)
    checkpoints = 0

    async def checkpoint():
        nonlocal checkpoints
        checkpoints += 1

    r = await get("checksum").run(_ctx({}, data, chunk=chunk, device=dctx.device, cl=dctx, checkpoint=checkpoint))
    assert r.body == get("checksum").reference({}, data).body
    assert checkpoints == -(-size // min(chunk, kinds_basic.Checksum.PIECE))  # one per piece


async def test_checksum_streamed_input(dctx):
    parts = [os.urandom(n) for n in (10, 70000, 1, 333333)]
    data = b"".join(parts)
    r = await get("checksum").run(_ctx({}, data, stream=_stream(parts), device=dctx.device, cl=dctx))
    assert r.body["sha256"] == hashlib.sha256(data).hexdigest()


async def test_checksum_device_cross_check_can_fail(dctx, monkeypatch):
    monkeypatch.setattr(kinds_basic, "BYTE_SUM_CL", kinds_basic.BYTE_SUM_CL.replace("s += data[i];", "s += data[i] + 1;"))
    with pytest.raises(kinds_basic.DeviceSumMismatch):
        await get("checksum").run(_ctx({}, b"abc" * 100, device=dctx.device, cl=dctx))


def test_result_type_checks():
    assert Result({"a": 1}, b"x").output == b"x"
    with pytest.raises(TypeError):
        Result(["not a dict"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Result({}, "str output")  # type: ignore[arg-type]


def test_result_describes_its_output_and_travels_without_it():
    """One Result from the kind to the coordinator: the bytes are described (size, sha256) where they are
    produced; the wire form carries the description, never the bytes, and decodes back to the same result."""
    r = Result({"a": 1}, b"xyz")
    assert (r.output_size, r.output_sha256) == (3, hashlib.sha256(b"xyz").hexdigest())
    sent = replace(r, job_id="j1", attempt=2, worker="w", output=None)
    wire = sent.to_wire()
    assert wire["out_size"] == 3 and b"xyz" not in repr(wire).encode() and "output" not in wire
    assert Result.from_wire(wire) == sent
    assert Result({}, b"").output_size == 0  # empty output: nothing to describe
