"""Device discovery (real PoCL and a fake OpenCL module), selection, the rescan watcher, device metrics,
and the shared OpenCL helpers (one context per device, the program cache)."""

import sys
import types

import msgpack
import numpy as np
import pyopencl as cl
import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from worker import opencl
from worker.devices import (
    CPU_REFERENCE_ID,
    Device,
    DeviceGone,
    DeviceSelectionError,
    DeviceWatcher,
    DiscoveryResult,
    discover,
    parse_selection,
    publish_metrics,
)

# --- a fake pyopencl module ------------------------------------------------------------------------------


class FakeLogicError(Exception):
    pass


class FakeDev:
    def __init__(self, name, type_bits, *, vendor="ACME", cu=4, mem=1 << 30, wg=256, fp64=True, profile="FULL_PROFILE",
                 nv_bus=None, broken=False):
        self.name = name
        self.vendor = vendor
        self.type = type_bits
        self.max_compute_units = cu
        self.global_mem_size = mem
        self.max_work_group_size = wg
        self.double_fp_config = 63 if fp64 else 0
        self.extensions = "cl_khr_fp64" if fp64 else ""
        self.profile = profile
        self.driver_version = "1.0"
        self._nv_bus = nv_bus
        self._broken = broken

    @property
    def pci_bus_id_nv(self):
        if self._nv_bus is None:
            raise FakeLogicError("INVALID_VALUE")
        return self._nv_bus

    @property
    def pci_slot_id_nv(self):
        return 0

    def __getattribute__(self, item):
        if item == "max_compute_units" and object.__getattribute__(self, "_broken"):
            raise FakeLogicError("clGetDeviceInfo failed")
        return object.__getattribute__(self, item)


class FakePlatform:
    def __init__(self, name, devices, fail=False):
        self.name = name
        self._devices = devices
        self._fail = fail

    def get_devices(self):
        if self._fail:
            raise FakeLogicError("clGetDeviceIDs failed: DEVICE_NOT_FOUND")
        return self._devices


def fake_cl(platforms=None, raise_on_platforms=None):
    m = types.SimpleNamespace()
    m.device_type = types.SimpleNamespace(CPU=2, GPU=4, ACCELERATOR=8, CUSTOM=16)
    m.LogicError = FakeLogicError

    def get_platforms():
        if raise_on_platforms is not None:
            raise raise_on_platforms
        return platforms

    m.get_platforms = get_platforms
    return lambda: m


# --- real discovery ----------------------------------------------------------------------------------------


def test_discovers_the_pocl_cpu_device():
    r = discover("all")
    assert r.problem is None
    assert len(r.devices) >= 1
    pocl = [d for d in r.devices if "Portable Computing Language" in d.platform]
    assert pocl, r.devices
    d = pocl[0]
    assert d.kind == "cpu"
    assert d.compute_units >= 1 and d.global_mem_bytes > 0 and d.max_work_group_size >= 1
    assert d.int64 and d.fp64
    assert d.opencl and not d.calibrated
    assert len(d.fingerprint) == 16
    assert discover("all").devices == r.devices  # stable across runs (id and fingerprint)


def test_selection_by_id_name_and_none():
    d = discover("all").devices[0]
    assert discover([d.id]).devices == (d,)
    assert discover(d.name[:5].upper()).devices == (d,)  # case-insensitive substring
    assert discover(f"{d.id},{d.fingerprint}").devices == (d,)  # comma list, no duplicates
    none = discover("none")
    assert none.devices == () and none.problem is None


def test_selection_of_a_missing_device_is_a_clear_error():
    present = discover("all").devices[0]
    with pytest.raises(DeviceSelectionError) as ei:
        discover(["no-such-gpu"])
    msg = str(ei.value)
    assert "'no-such-gpu'" in msg and present.id in msg and present.name in msg
    lenient = discover(["no-such-gpu"], strict=False)
    assert lenient.devices == () and "no-such-gpu" in lenient.problem
    assert any("no-such-gpu" in w for w in lenient.warnings)


def test_parse_selection():
    assert parse_selection(None) == "all"
    assert parse_selection(" ALL ") == "all"
    assert parse_selection("none") == "none"
    assert parse_selection("0:0, RTX ,") == ["0:0", "RTX"]
    assert parse_selection(["0:1", "all"]) == "all"
    with pytest.raises(DeviceSelectionError):
        parse_selection(["none", "0:0"])
    with pytest.raises(DeviceSelectionError):
        parse_selection([" ", ""])


# --- no runtime, no platforms, odd drivers ------------------------------------------------------------------


def test_no_opencl_runtime_gives_zero_devices_and_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyopencl", None)  # import pyopencl -> ImportError
    r = discover("all")
    assert r.devices == ()
    assert "no OpenCL runtime" in r.problem
    r2 = discover(["0:0"])  # even with a selection: no raise, the runtime problem is what matters
    assert r2.devices == () and r2.problem


def test_platform_not_found_gives_zero_devices_and_a_reason():
    err = cl.LogicError("clGetPlatformIDs failed: PLATFORM_NOT_FOUND_KHR")
    real_like = fake_cl(raise_on_platforms=err)
    r = discover("all", opencl=real_like)
    assert r.devices == ()
    assert "no platforms" in r.problem and "PLATFORM_NOT_FOUND" in r.problem
    assert discover("all", opencl=fake_cl(platforms=[])).problem


def test_fake_platforms_kinds_ids_and_warnings():
    gpu_a = FakeDev("Fake RTX 9000", 4, nv_bus=1)
    gpu_b = FakeDev("Fake RTX 9000", 4, nv_bus=2)  # identical model, other slot
    acc = FakeDev("Fake FPGA", 8, fp64=False, profile="EMBEDDED_PROFILE")
    broken = FakeDev("Broken", 4, broken=True)
    mod = fake_cl([FakePlatform("P0", [gpu_a, gpu_b]), FakePlatform("Empty", [], fail=True),
                   FakePlatform("P2", [acc, broken])])
    r = discover("all", opencl=mod)
    assert [d.id for d in r.devices] == ["0:0", "0:1", "2:0"]
    a, b, f = r.devices
    assert a.kind == b.kind == "gpu" and f.kind == "accelerator"
    assert a.fingerprint != b.fingerprint  # PCI location tells identical GPUs apart
    assert not f.fp64 and not f.int64  # embedded profile without cles_khr_int64
    assert len(r.warnings) == 2 and any("Empty" in w for w in r.warnings) and any("2:1" in w for w in r.warnings)
    assert discover("all", opencl=mod).devices == r.devices  # fingerprints stable
    assert [d.id for d in discover("rtx", opencl=mod).devices] == ["0:0", "0:1"]
    with pytest.raises(DeviceSelectionError, match="Fake FPGA"):
        discover(["9:9"], opencl=mod)


def test_device_record_round_trips_and_cpu_reference():
    d = discover("all").devices[0].with_calibration(300.5, 20.25)
    assert d.calibrated
    assert Device.from_dict(msgpack.unpackb(msgpack.packb(d.to_dict()))) == d
    with pytest.raises(ValueError, match="lacks"):
        Device.from_dict({"id": "0:0"})
    ref = Device.cpu_reference()
    assert ref.id == CPU_REFERENCE_ID and not ref.opencl and ref.kind == "reference"


def test_device_metrics_are_published_and_removed():
    d = discover("all").devices[0].with_calibration(300.0, 20.0)
    publish_metrics([d])
    assert REGISTRY.get_sample_value("gpumesh_devices") == 1
    assert REGISTRY.get_sample_value("gpumesh_device_goldilocks_mulmod_ops_per_second", {"device": d.id}) == 300e6
    assert REGISTRY.get_sample_value("gpumesh_device_fp32_flops_per_second", {"device": d.id}) == 20e9
    publish_metrics([], problem="gone")
    assert REGISTRY.get_sample_value("gpumesh_devices") == 0
    assert REGISTRY.get_sample_value("gpumesh_device_discovery_problem") == 1
    assert REGISTRY.get_sample_value("gpumesh_device_global_memory_bytes", {"device": d.id}) is None


# --- rescan ----------------------------------------------------------------------------------------------------


def _dev(i, fp=None):
    return Device(f"0:{i}", fp or f"fp{i}", "P", "V", f"dev{i}", "gpu", 1, 1 << 30, 256, True, True)


async def test_watcher_reports_changes_only(autojump_clock):
    script = [DiscoveryResult((_dev(0),)), DiscoveryResult((_dev(0),)), DiscoveryResult((_dev(0), _dev(1))),
              DiscoveryResult((_dev(1),)), DiscoveryResult((_dev(1, "other"),))]
    script += [script[-1]] * 100
    calls = []
    seen = []

    def fake_discover(selection, strict):
        calls.append((selection, strict))
        return script[min(len(calls) - 1, len(script) - 1)]

    async def on_change(result):
        seen.append([d.id for d in result.devices])

    w = DeviceWatcher("all", interval_s=5, discover_fn=fake_discover, on_change=on_change)
    async with trio.open_nursery() as n:
        await n.start(w.run)
        assert w.devices == (_dev(0),) and w.generation == 1
        start = trio.current_time()
        r = await w.wait_changed()  # the second scan is the same; the third adds a device
        assert [d.id for d in r.devices] == ["0:0", "0:1"]
        assert w.scans == 3 and trio.current_time() - start == pytest.approx(10)
        assert (await w.wait_changed()).devices == (_dev(1),)
        assert (await w.wait_changed()).devices[0].fingerprint == "other"  # same slot, new hardware
        n.cancel_scope.cancel()
    assert seen == [["0:0"], ["0:0", "0:1"], ["0:1"], ["0:1"]]
    assert all(c == ("all", False) for c in calls)


async def test_watcher_survives_a_failing_discover(autojump_clock):
    n_calls = 0

    def flaky(selection, strict):
        nonlocal n_calls
        n_calls += 1
        if n_calls == 2:
            raise RuntimeError("boom")
        return DiscoveryResult((_dev(n_calls),))

    w = DeviceWatcher(interval_s=1, discover_fn=flaky, initial=DiscoveryResult((_dev(0),)))
    async with trio.open_nursery() as n:
        await n.start(w.run)
        r = await w.wait_changed()
        assert r.devices == (_dev(1),)
        r = await w.wait_changed()
        assert r.devices == (_dev(3),)
        n.cancel_scope.cancel()
    with pytest.raises(ValueError):
        DeviceWatcher(interval_s=0)


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


# --- OpenCL helpers ----------------------------------------------------------------------------------------------

SRC = """__kernel void add1(__global ulong *a) { a[get_global_id(0)] += ADD; }"""


def test_device_context_is_shared_and_runs_a_kernel():
    d = discover("all").devices[0]
    c1 = opencl.device_context(d)
    assert opencl.device_context(d) is c1
    assert opencl.programs_for(c1.context) is c1.programs
    knl = c1.kernel(SRC, "add1", "-DADD=5")
    assert c1.kernel(SRC, "add1", ["-DADD=5"]) is knl  # fetched once
    a = np.arange(16, dtype=np.uint64)
    buf = cl.Buffer(c1.context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=a)
    knl(c1.queue, (16,), None, buf)
    out = np.empty_like(a)
    cl.enqueue_copy(c1.queue, out, buf).wait()
    assert out.tolist() == [i + 5 for i in range(16)]


def test_program_cache_keys_and_lru_bound():
    d = discover("all").devices[0]
    ctx = opencl.device_context(d).context
    cache = opencl.ProgramCache(ctx, max_programs=2)
    p1 = cache.program(SRC, "-DADD=1")
    assert cache.program(SRC, "-DADD=1") is p1 and cache.stats.hits == 1
    p2 = cache.program(SRC, "-DADD=2")
    assert p2 is not p1
    k1 = cache.kernel(SRC, "add1", "-DADD=1")
    cache.program(SRC, "-DADD=3")  # evicts the least recently used (ADD=2)
    assert len(cache) == 2 and cache.stats.evictions == 1
    assert opencl.program_key(SRC, "-DADD=2") not in cache
    assert cache.kernel(SRC, "add1", "-DADD=1") is k1
    cache.program(SRC, "-DADD=2")
    assert opencl.program_key(SRC, "-DADD=3") not in cache
    with pytest.raises(cl.RuntimeError):
        cache.program("__kernel void broken( {")
    with pytest.raises(ValueError):
        opencl.ProgramCache(ctx, max_programs=0)


async def test_async_build_and_wait():
    d = discover("all").devices[0]
    dctx = await opencl.open_device(d)
    knl = await opencl.kernel(dctx.context, SRC, "add1", "-DADD=7")
    assert await dctx.akernel(SRC, "add1", "-DADD=7") is knl
    a = np.zeros(8, dtype=np.uint64)
    buf = cl.Buffer(dctx.context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=a)
    knl(dctx.queue, (8,), None, buf)
    await opencl.finish(dctx.queue)
    evt = cl.enqueue_copy(dctx.queue, a, buf, is_blocking=False)
    await opencl.wait(evt)
    assert a.tolist() == [7] * 8


def test_find_cl_device_checks_the_fingerprint():
    d = discover("all").devices[0]
    assert opencl.find_cl_device(d).name == d.name
    from dataclasses import replace

    with pytest.raises(DeviceGone, match="no longer present"):
        opencl.find_cl_device(replace(d, fingerprint="0000000000000000"))
    with pytest.raises(DeviceGone):
        opencl.find_cl_device(Device.cpu_reference())


async def test_async_cache_paths_never_block_the_trio_thread():
    import threading

    d = discover("all").devices[0]
    dctx = opencl.device_context(d)
    knl = dctx.kernel(SRC, "add1", "-DADD=9")
    held, release = threading.Event(), threading.Event()

    def hold():  # a build in progress elsewhere holds the cache lock
        with dctx.programs._lock:
            held.set()
            release.wait()

    async with trio.open_nursery() as n:
        n.start_soon(trio.to_thread.run_sync, hold)
        try:
            await trio.to_thread.run_sync(held.wait)
            assert dctx.programs.cached_kernel(SRC, "add1", "-DADD=9") is None  # at once, no deadlock
            assert dctx.programs.cached_program(SRC, "-DADD=9") is None
        finally:
            release.set()
    assert await dctx.akernel(SRC, "add1", "-DADD=9") is knl
    assert opencl.cached_device_context(d) is dctx
