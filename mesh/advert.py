"""Capacity adverts: the signed, versioned full-state message each node gossips periodically.

Gossip is lossy, so an advert is always the node's whole state (never a delta) and carries a sequence number
so that receivers keep only the newest one. The signature binds the advert to the libp2p key of its peer id,
so a relay cannot forge or alter another node's capacity.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field
from typing import Any

import msgpack

from mesh.identity import Identity, peer_id_of, public_key_from_bytes

ADVERT_VERSION = 1
MAX_ADVERT_BYTES = 64 * 1024
MAX_DEVICES = 64


class AdvertError(ValueError):
    """An advert that must be dropped: malformed, unsigned, badly signed, oversized or of another version."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # short label for metrics: malformed, signature, oversized, version


@dataclass(frozen=True)
class DeviceAdvert:
    """One compute device as peers see it (capacity and calibrated speed, not the OpenCL handle)."""

    id: str
    kind: str  # gpu | cpu | accelerator | reference
    vendor: str
    name: str
    compute_units: int
    global_mem_bytes: int
    fp64: bool
    int64: bool
    mulmod_mops: float  # Goldilocks mul-mod, millions per second
    f32_gflops: float
    slots: int
    free_slots: int
    queue_depth: int
    # OpenCL limits, so a client can check a compute job before sending it (0 / "" / (): unknown; an advert
    # from a node that predates them decodes with these defaults)
    max_work_group_size: int = 0
    max_work_item_sizes: tuple[int, ...] = ()
    max_alloc_bytes: int = 0
    local_mem_bytes: int = 0
    opencl_version: str = ""  # "3.0"
    non_uniform_work_groups: bool = False


_DEVICE_REQUIRED = sum(1 for f in DeviceAdvert.__dataclass_fields__.values() if f.default is MISSING)


@dataclass(frozen=True)
class Advert:
    peer_id: str
    public_key: bytes  # raw Ed25519, 32 bytes; its peer id must equal peer_id
    seq: int
    timestamp: float  # sender's wall clock, informational only (expiry uses the receiver's clock)
    addrs: tuple[str, ...] = ()  # libp2p multiaddrs (with /p2p/ suffix)
    data_addr: str = ""  # host:port of the bigtcp data plane, "" if none
    devices: tuple[DeviceAdvert, ...] = ()
    software: str = ""
    interval_s: float = 2.0  # how often the sender publishes; receivers expire on their own TTL
    labels: dict[str, str] = field(default_factory=dict)
    version: int = ADVERT_VERSION

    @property
    def free_slots(self) -> int:
        return sum(d.free_slots for d in self.devices)

    @property
    def queue_depth(self) -> int:
        return sum(d.queue_depth for d in self.devices)

    def capacity_key(self) -> tuple:
        """What changes when capacity changes (not seq or timestamp): used to publish right after a change."""
        return (self.addrs, self.data_addr, self.devices, self.labels)


def _body(ad: Advert) -> bytes:
    d = asdict(ad)
    d["devices"] = [list(asdict(x).values()) for x in ad.devices]
    d["addrs"] = list(ad.addrs)
    return msgpack.packb(d, use_bin_type=True)


def encode(ad: Advert, identity: Identity) -> bytes:
    body = _body(ad)
    return msgpack.packb({"b": body, "s": identity.sign(body)}, use_bin_type=True)


_DEVICE_FIELDS = list(DeviceAdvert.__dataclass_fields__)
_ADVERT_FIELDS = set(Advert.__dataclass_fields__)


def decode(data: bytes) -> Advert:
    """Parse and verify a wire advert; raises AdvertError (never anything else) for any bad input."""
    if len(data) > MAX_ADVERT_BYTES:
        raise AdvertError("oversized", f"advert of {len(data)} bytes exceeds {MAX_ADVERT_BYTES}")
    try:
        outer = msgpack.unpackb(data, raw=False, max_bin_len=MAX_ADVERT_BYTES, max_str_len=MAX_ADVERT_BYTES)
        body, sig = outer["b"], outer["s"]
        if not isinstance(body, bytes) or not isinstance(sig, bytes):
            raise TypeError("body and signature must be bytes")
        d: dict[str, Any] = msgpack.unpackb(body, raw=False)
        if not isinstance(d, dict):
            raise TypeError("body is not a map")
    except AdvertError:
        raise
    except Exception as e:
        raise AdvertError("malformed", f"malformed advert: {e}") from None
    if d.get("version") != ADVERT_VERSION:
        raise AdvertError("version", f"advert version {d.get('version')!r} not supported (want {ADVERT_VERSION})")
    try:
        unknown = set(d) - _ADVERT_FIELDS
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        devs = d.get("devices", [])
        if len(devs) > MAX_DEVICES:
            raise ValueError(f"{len(devs)} devices exceeds {MAX_DEVICES}")
        devices = tuple(_device(x) for x in devs)
        ad = Advert(**{**d, "devices": devices, "addrs": tuple(d.get("addrs", ())), "labels": dict(d.get("labels", {}))})
        _check_types(ad)
        pub = public_key_from_bytes(ad.public_key)
    except Exception as e:
        raise AdvertError("malformed", f"malformed advert: {e}") from None
    if peer_id_of(pub) != ad.peer_id:
        raise AdvertError("signature", f"advert key does not match its peer id {ad.peer_id}")
    if not pub.verify(body, sig):
        raise AdvertError("signature", f"bad signature on advert from {ad.peer_id}")
    return ad


def _device(x: Any) -> DeviceAdvert:
    """A device from its positional list: the fields this version knows; a shorter list (an older node) takes
    the defaults of the newer fields, a longer one (a newer node) has its extra fields ignored."""
    if not isinstance(x, list | tuple) or len(x) < _DEVICE_REQUIRED:
        raise ValueError(f"device record needs at least {_DEVICE_REQUIRED} fields")
    d = dict(zip(_DEVICE_FIELDS, x[:len(_DEVICE_FIELDS)], strict=False))
    if "max_work_item_sizes" in d:
        sizes = d["max_work_item_sizes"]
        if not isinstance(sizes, list | tuple) or len(sizes) > 3 or not all(isinstance(v, int) for v in sizes):
            raise TypeError("max_work_item_sizes")
        d["max_work_item_sizes"] = tuple(sizes)
    return DeviceAdvert(**d)


def _check_types(ad: Advert) -> None:
    if not (isinstance(ad.peer_id, str) and isinstance(ad.public_key, bytes)):
        raise TypeError("peer_id/public_key")
    if not (isinstance(ad.seq, int) and ad.seq >= 0 and isinstance(ad.timestamp, int | float)):
        raise TypeError("seq/timestamp")
    if not all(isinstance(a, str) for a in ad.addrs) or not isinstance(ad.data_addr, str):
        raise TypeError("addresses")
    for dv in ad.devices:
        if not (isinstance(dv.id, str) and isinstance(dv.slots, int) and isinstance(dv.free_slots, int)
                and isinstance(dv.queue_depth, int) and isinstance(dv.global_mem_bytes, int)
                and isinstance(dv.max_work_group_size, int) and isinstance(dv.max_alloc_bytes, int)
                and isinstance(dv.local_mem_bytes, int) and isinstance(dv.opencl_version, str)
                and len(dv.opencl_version) <= 16 and isinstance(dv.non_uniform_work_groups, bool)):
            raise TypeError(f"device {dv.id!r}")
        if dv.free_slots < 0 or dv.queue_depth < 0 or dv.slots < 0:
            raise ValueError(f"device {dv.id!r}: negative load")
