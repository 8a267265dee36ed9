"""OpenCL device discovery: what compute this node has, described as plain data.

`discover()` enumerates OpenCL platforms and devices with pyopencl and returns frozen `Device` records
(no pyopencl handles inside, so they can go into adverts, logs and JSON). A node without an OpenCL runtime,
or with a runtime but no platforms, gets zero devices and a human reason in `DiscoveryResult.problem`;
discovery never raises for that. A `--devices` selection that names something that does not exist is a
configuration error (`DeviceSelectionError`, listing what exists) when `strict=True`, and a warning otherwise
(the periodic rescan uses `strict=False`, so a device that disappears does not kill the node).

`DeviceWatcher` re-runs discovery every N seconds (in a worker thread: the OpenCL ICD loader may block) and
reports when the set of devices changes.

worker/ knows nothing of the network: this module only describes devices.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

import trio
from prometheus_client import Gauge

log = logging.getLogger(__name__)

DEVICE_KINDS = ("gpu", "cpu", "accelerator", "reference")  # "reference": only the cpu-reference pseudo-device
CPU_REFERENCE_ID = "cpu-reference"


DEFAULT_BLOCKING_THREADS = 2  # the machines this runs on in CI have 2 cores

_limiter_var: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("gpumesh_opencl_limiter")


def blocking_limiter() -> trio.CapacityLimiter:
    """The limiter for blocking OpenCL calls in the current trio run (one per run, created on first use)."""
    try:
        return _limiter_var.get()
    except LookupError:
        lim = trio.CapacityLimiter(DEFAULT_BLOCKING_THREADS)
        _limiter_var.set(lim)
        return lim

# --- metrics (default registry, module-level) -----------------------------------------------------------
DEVICES_GAUGE = Gauge("gpumesh_devices", "OpenCL devices this node offers (the cpu-reference pseudo-device excluded)")
DEVICE_INFO = Gauge(
    "gpumesh_device_info",
    "One series per offered device, value 1; labels describe it",
    ["device", "fingerprint", "vendor", "name", "kind"],
)
DEVICE_MEMORY = Gauge("gpumesh_device_global_memory_bytes", "Global memory of the device", ["device"])
DEVICE_COMPUTE_UNITS = Gauge("gpumesh_device_compute_units", "Compute units of the device", ["device"])
DEVICE_MULMOD = Gauge(
    "gpumesh_device_goldilocks_mulmod_ops_per_second",
    "Calibrated Goldilocks 64-bit modular multiplications per second",
    ["device"],
)
DEVICE_FMA = Gauge(
    "gpumesh_device_fp32_flops_per_second",
    "Calibrated float32 FMA throughput in floating-point operations per second (1 FMA = 2 flops)",
    ["device"],
)
DISCOVERY_PROBLEMS = Gauge(
    "gpumesh_device_discovery_problem", "1 while the last discovery reported a problem (see logs), else 0"
)


class DeviceSelectionError(ValueError):
    """A device selection names a device that does not exist (the message lists those that do)."""


class DeviceGone(LookupError):
    """A Device record no longer matches any OpenCL device present."""


@dataclass(frozen=True)
class Device:
    """One compute device, as plain data.

    `id` is "<platform-idx>:<device-idx>" in enumeration order (what a user types in `--devices`);
    `fingerprint` is a stable hash of what the device *is* (platform, vendor, name, driver, size, PCI
    location where the driver reports one), so it survives restarts and keys the calibration cache.
    Two identical devices whose driver reports no PCI location share a fingerprint (and so a calibration,
    which is what one wants); `id` still tells them apart.
    """

    id: str
    fingerprint: str
    platform: str
    vendor: str
    name: str
    kind: str  # "gpu" | "cpu" | "accelerator" ("reference" for the cpu-reference pseudo-device)
    compute_units: int
    global_mem_bytes: int
    max_work_group_size: int
    fp64: bool
    int64: bool
    driver_version: str = ""
    opencl: bool = True  # False only for the cpu-reference pseudo-device (no OpenCL context)
    # OpenCL limits a compute job is checked against before transfer (0 / "" / (): unknown)
    max_work_item_sizes: tuple[int, ...] = ()
    max_alloc_bytes: int = 0
    local_mem_bytes: int = 0
    opencl_version: str = ""  # "3.0"
    non_uniform_work_groups: bool = False
    # calibration figures, None until measured (worker.calibration)
    mulmod_mops: float | None = None
    f32_gflops: float | None = None

    @property
    def calibrated(self) -> bool:
        return self.mulmod_mops is not None and self.f32_gflops is not None

    def with_calibration(self, mulmod_mops: float, f32_gflops: float) -> Device:
        return replace(self, mulmod_mops=float(mulmod_mops), f32_gflops=float(f32_gflops))

    def same_hardware(self, other: Device) -> bool:
        """Same slot and same device, calibration aside."""
        return self.id == other.id and self.fingerprint == other.fingerprint

    def to_dict(self) -> dict[str, Any]:
        """msgpack/JSON-able description (for adverts, `mesh-node devices --json`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Device:
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in d and f.default is MISSING]
        if missing:
            raise ValueError(f"device record lacks {', '.join(missing)}")
        vals = {k: v for k, v in d.items() if k in known}
        if "max_work_item_sizes" in vals:
            vals["max_work_item_sizes"] = tuple(vals["max_work_item_sizes"])
        return cls(**vals)

    @classmethod
    def cpu_reference(cls) -> Device:
        """The pseudo-device a node without OpenCL uses to run jobs on their CPU reference paths."""
        try:
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            mem = 0
        return cls(
            id=CPU_REFERENCE_ID,
            fingerprint=CPU_REFERENCE_ID,
            platform="",
            vendor="",
            name="CPU reference path (no OpenCL)",
            kind="reference",
            compute_units=os.cpu_count() or 1,
            global_mem_bytes=int(mem),
            max_work_group_size=1,
            fp64=True,
            int64=True,
            opencl=False,
        )


@dataclass(frozen=True)
class DiscoveryResult:
    """Selected devices; `problem` says why there are none (None when zero devices is simply the selection)."""

    devices: tuple[Device, ...]
    problem: str | None = None
    warnings: tuple[str, ...] = ()
    available: tuple[Device, ...] = field(default=(), compare=False)  # everything found, before selection


# --- discovery ----------------------------------------------------------------------------------------


def fingerprint_of(platform: str, vendor: str, name: str, driver: str, compute_units: int,
                   global_mem: int, location: str = "") -> str:
    raw = "\x1f".join([platform, vendor, name, driver, str(compute_units), str(global_mem), location])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _kind_of(cl: Any, type_bits: int) -> str:
    if type_bits & cl.device_type.GPU:
        return "gpu"
    if type_bits & cl.device_type.ACCELERATOR:
        return "accelerator"
    if type_bits & cl.device_type.CPU:
        return "cpu"
    return "accelerator"  # CUSTOM and anything newer


def _info(dev: Any, attr: str, default: Any) -> Any:
    try:
        return getattr(dev, attr)
    except Exception:  # a driver that does not know an info query answers INVALID_VALUE
        return default


def _location(dev: Any) -> str:
    """PCI location where the driver reports one (distinguishes identical GPUs); '' otherwise."""
    info = _info(dev, "pci_bus_info_khr", None)  # cl_khr_pci_bus_info
    if info is not None:
        try:
            return f"pci:{info.pci_domain:04x}:{info.pci_bus:02x}:{info.pci_device:02x}.{info.pci_function}"
        except Exception:
            pass
    bus = _info(dev, "pci_bus_id_nv", None)  # cl_nv_device_attribute_query
    slot = _info(dev, "pci_slot_id_nv", None)
    if bus is not None:
        return f"nv:{bus}:{slot}"
    topo = _info(dev, "topology_amd", None)  # cl_amd_device_attribute_query
    if topo is not None:
        try:
            return f"amd:{topo.bus}:{topo.device}.{topo.function}"
        except Exception:
            pass
    return ""


def describe(cl: Any, platform_idx: int, device_idx: int, platform: Any, dev: Any) -> Device:
    """A `Device` record from a pyopencl device (raises on a device whose basic info cannot be read)."""
    pname = str(_info(platform, "name", "")).strip()
    vendor = str(dev.vendor).strip()
    name = str(dev.name).strip()
    driver = str(_info(dev, "driver_version", "")).strip()
    cu = int(dev.max_compute_units)
    mem = int(dev.global_mem_size)
    extensions = str(_info(dev, "extensions", ""))
    fp64 = bool(_info(dev, "double_fp_config", 0)) or "cl_khr_fp64" in extensions
    # 64-bit integers are mandatory in the full profile; the embedded profile has them only by extension.
    int64 = str(_info(dev, "profile", "FULL_PROFILE")) == "FULL_PROFILE" or "cles_khr_int64" in extensions
    return Device(
        id=f"{platform_idx}:{device_idx}",
        fingerprint=fingerprint_of(pname, vendor, name, driver, cu, mem, _location(dev)),
        platform=pname,
        vendor=vendor,
        name=name,
        kind=_kind_of(cl, int(dev.type)),
        compute_units=cu,
        global_mem_bytes=mem,
        max_work_group_size=int(dev.max_work_group_size),
        fp64=fp64,
        int64=int64,
        driver_version=driver,
        **_opencl_limits(dev),
    )


def _opencl_limits(dev: Any) -> dict[str, Any]:
    """The limits `worker.compute` checks a job against (what cannot be read stays unknown)."""
    version = device_opencl_version(dev)
    return {
        "max_work_item_sizes": tuple(int(x) for x in _info(dev, "max_work_item_sizes", ()))[:3],
        "max_alloc_bytes": int(_info(dev, "max_mem_alloc_size", 0)),
        "local_mem_bytes": int(_info(dev, "local_mem_size", 0)),
        "opencl_version": version,
        "non_uniform_work_groups": device_non_uniform(dev, version),
    }


def device_opencl_version(d: Any) -> str:
    """"3.0" from a pyopencl device's "OpenCL 3.0 PoCL ..." version string ("" if unreadable)."""
    m = re.match(r"OpenCL (\d+)\.(\d+)", str(getattr(d, "version", "")))
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def device_non_uniform(d: Any, version: str) -> bool:
    """Whether kernels may run with a partial last work-group: mandatory in OpenCL 2.x (with OpenCL C 2.0),
    optional in 3.0 (CL_DEVICE_NON_UNIFORM_WORK_GROUP_SUPPORT)."""
    major = int(version.split(".")[0]) if version else 0
    if major < 2:
        return False
    if major == 2:
        return True
    try:
        return bool(d.non_uniform_work_group_support)
    except Exception:  # noqa: BLE001 - a runtime that cannot answer: say no
        return False



def _import_opencl() -> Any:
    # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
    import pyopencl
    return pyopencl


def enumerate_opencl(cl: Any) -> tuple[list[tuple[Device, Any]], str | None, list[str]]:
    """[(Device, pyopencl.Device)], problem, warnings. Never raises for a missing runtime or platform."""
    warnings: list[str] = []
    try:
        platforms = cl.get_platforms()
    except Exception as e:  # cl.LogicError / cl.RuntimeError: PLATFORM_NOT_FOUND_KHR and friends
        return [], f"OpenCL runtime found but it lists no platforms ({e}); install a driver or pocl", []
    if not platforms:
        return [], "OpenCL runtime found but it lists no platforms; install a driver or pocl", []
    found: list[tuple[Device, Any]] = []
    for pi, plat in enumerate(platforms):
        pname = str(_info(plat, "name", f"platform {pi}"))
        try:
            devs = plat.get_devices()
        except Exception as e:  # DEVICE_NOT_FOUND on a platform with nothing plugged in
            warnings.append(f"platform {pi} ({pname}): cannot list devices: {e}")
            continue
        for di, dev in enumerate(devs):
            try:
                found.append((describe(cl, pi, di, plat, dev), dev))
            except Exception as e:
                warnings.append(f"device {pi}:{di} on {pname}: cannot read its properties: {e}")
    problem = None
    if not found:
        problem = "OpenCL platforms found but no usable devices" + (
            ": " + "; ".join(warnings) if warnings else "")
    return found, problem, warnings


def parse_selection(selection: str | Iterable[str] | None) -> str | list[str]:
    """'all' | 'none' | list of entries. A string is split on commas ('0:0,1:0' or 'RTX,0:1')."""
    if selection is None:
        return "all"
    if isinstance(selection, str):
        s = selection.strip()
        if s.lower() in ("all", "none", ""):
            return s.lower() or "all"
        entries = [e.strip() for e in s.split(",")]
    else:
        entries = [str(e).strip() for e in selection]
    entries = [e for e in entries if e]
    if not entries:
        raise DeviceSelectionError("empty device selection; use 'all', 'none' or a list of device ids or names")
    if any(e.lower() == "all" for e in entries):
        return "all"
    if any(e.lower() == "none" for e in entries):
        if len(entries) > 1:
            raise DeviceSelectionError("device selection 'none' cannot be combined with other entries")
        return "none"
    return entries


def matches(entry: str, dev: Device) -> bool:
    """An entry selects a device by id ("0:1"), fingerprint, or a case-insensitive substring of its name."""
    return entry == dev.id or entry == dev.fingerprint or entry.lower() in dev.name.lower()


def select(available: Sequence[Device], selection: str | list[str]) -> tuple[list[Device], list[str]]:
    """The selected devices (enumeration order, no duplicates) and the entries that matched nothing."""
    if selection == "all":
        return list(available), []
    if selection == "none":
        return [], []
    chosen: list[Device] = []
    unmatched: list[str] = []
    for entry in selection:
        hit = [d for d in available if matches(entry, d)]
        if not hit:
            unmatched.append(entry)
        for d in hit:
            if d not in chosen:
                chosen.append(d)
    order = {d.id: i for i, d in enumerate(available)}
    chosen.sort(key=lambda d: order[d.id])
    return chosen, unmatched


def describe_available(available: Sequence[Device]) -> str:
    if not available:
        return "no OpenCL devices exist on this host"
    return "devices present: " + "; ".join(f"{d.id} {d.name!r} ({d.kind}, {d.platform})" for d in available)


def discover(selection: str | Iterable[str] | None = "all", *, strict: bool = True,
             opencl: Callable[[], Any] | None = None) -> DiscoveryResult:
    """Enumerate OpenCL devices and apply `selection` ('all', 'none', or ids / name substrings).

    Never raises for a missing runtime, no platforms, or a broken driver: those give zero devices and
    a human `problem`. A selection entry that matches nothing raises `DeviceSelectionError` naming what
    exists when `strict`, else it becomes a warning (and, if nothing is selected, the problem).
    `opencl` returns the pyopencl module (tests inject a fake one).
    """
    sel = parse_selection(selection)
    if sel == "none":
        return DiscoveryResult(devices=(), problem=None, warnings=("devices disabled by selection 'none'",))
    try:
        cl = (opencl or _import_opencl)()
    except ImportError as e:
        return DiscoveryResult((), f"no OpenCL runtime: pyopencl cannot be imported ({e})")
    except Exception as e:  # a broken ICD loader can fail in odd ways at import
        return DiscoveryResult((), f"no OpenCL runtime: loading it failed ({type(e).__name__}: {e})")
    found, problem, warnings = enumerate_opencl(cl)
    available = [d for d, _ in found]
    chosen, unmatched = select(available, sel)
    if unmatched:
        msg = (f"device selection {', '.join(repr(u) for u in unmatched)} matches no device; "
               f"{describe_available(available)}" + (f" ({problem})" if problem else ""))
        if strict:
            raise DeviceSelectionError(msg)
        warnings.append(msg)
        if not chosen and problem is None:
            problem = msg
    return DiscoveryResult(tuple(chosen), problem if not chosen else None, tuple(warnings), tuple(available))


# --- metrics --------------------------------------------------------------------------------------------

_published: dict[str, tuple[str, ...]] = {}


def publish_metrics(devices: Sequence[Device], problem: str | None = None) -> None:
    """Set the device gauges to `devices` (removing series of devices no longer offered)."""
    real = [d for d in devices if d.opencl]
    DEVICES_GAUGE.set(len(real))
    DISCOVERY_PROBLEMS.set(1 if problem else 0)
    current = {d.id for d in real}
    for dev_id, info_labels in list(_published.items()):
        if dev_id not in current or info_labels != _info_labels(next(d for d in real if d.id == dev_id)):
            for g in (DEVICE_MEMORY, DEVICE_COMPUTE_UNITS, DEVICE_MULMOD, DEVICE_FMA):
                try:
                    g.remove(dev_id)
                except KeyError:
                    pass
            try:
                DEVICE_INFO.remove(*info_labels)
            except KeyError:
                pass
            del _published[dev_id]
    for d in real:
        labels = _info_labels(d)
        DEVICE_INFO.labels(*labels).set(1)
        DEVICE_MEMORY.labels(d.id).set(d.global_mem_bytes)
        DEVICE_COMPUTE_UNITS.labels(d.id).set(d.compute_units)
        if d.mulmod_mops is not None:
            DEVICE_MULMOD.labels(d.id).set(d.mulmod_mops * 1e6)
        if d.f32_gflops is not None:
            DEVICE_FMA.labels(d.id).set(d.f32_gflops * 1e9)
        _published[d.id] = labels


def _info_labels(d: Device) -> tuple[str, ...]:
    return (d.id, d.fingerprint, d.vendor, d.name, d.kind)


# --- periodic rescan ------------------------------------------------------------------------------------


def device_set_key(devices: Iterable[Device]) -> frozenset[tuple[str, str]]:
    return frozenset((d.id, d.fingerprint) for d in devices)


class DeviceWatcher:
    """Re-runs discovery every `interval_s` seconds; reports when the set of devices changes.

    A change is a device appearing, disappearing, or a slot now holding different hardware (calibration
    figures do not count). On a change the watcher updates `devices`, calls `on_change(result)` (sync or
    async; an exception there is logged, not fatal) and wakes `wait_changed()`. `discover_fn(selection,
    strict=False)` is called in a worker thread; tests inject a fake.
    """

    def __init__(
        self,
        selection: str | Iterable[str] | None = "all",
        interval_s: float = 30.0,
        *,
        initial: DiscoveryResult | None = None,
        discover_fn: Callable[..., DiscoveryResult] = discover,
        on_change: Callable[[DiscoveryResult], Awaitable[None] | None] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("rescan interval must be positive")
        self.selection = selection
        self.interval_s = interval_s
        self._discover = discover_fn
        self._on_change = on_change
        self.result: DiscoveryResult | None = initial
        self.generation = 0  # bumped on each change
        self.scans = 0
        self._changed = trio.Event()
        self._scanned = trio.Event()

    @property
    def devices(self) -> tuple[Device, ...]:
        return self.result.devices if self.result else ()

    async def rescan(self) -> bool:
        """One discovery now; True when the device set changed."""

        result = await trio.to_thread.run_sync(lambda: self._discover(self.selection, strict=False),
                                               limiter=blocking_limiter())
        self.scans += 1
        old = self.result
        changed = old is None or device_set_key(old.devices) != device_set_key(result.devices)
        if old is not None and result.problem != old.problem and result.problem:
            log.warning("device discovery: %s", result.problem)
        self.result = result
        if changed:
            self.generation += 1
            if old is not None:
                gone = device_set_key(old.devices) - device_set_key(result.devices)
                new = device_set_key(result.devices) - device_set_key(old.devices)
                log.info("devices changed: +%s -%s", sorted(new), sorted(gone))
            if self._on_change is not None:
                try:
                    r = self._on_change(result)
                    if r is not None:
                        await r
                except Exception:
                    log.exception("device change callback failed")
            ev, self._changed = self._changed, trio.Event()
            ev.set()
        ev2, self._scanned = self._scanned, trio.Event()
        ev2.set()
        return changed

    async def wait_changed(self) -> DiscoveryResult:
        """Wait for the next change of the device set; returns the new result."""
        await self._changed.wait()
        assert self.result is not None
        return self.result

    async def wait_scanned(self) -> None:
        """Wait for the next completed scan (changed or not)."""
        await self._scanned.wait()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Scan at once when no initial result was given, then every `interval_s`; runs until cancelled."""
        if self.result is None:
            await self.rescan()
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            try:
                await self.rescan()
            except Exception:  # discovery itself never raises; a faulty injected one must not kill the node
                log.exception("device rescan failed")
