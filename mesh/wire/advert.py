"""The advert body's schema: every field typed and bounded, checked when the advert is decoded.

A signed advert is still peer input: a member can sign anything with its own key. These structs are what
`mesh.advert.decode` turns the signed body into; nothing else of a peer's advert reaches the node.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

MAX_DEVICES = 64
MAX_ADDRS = 16
MAX_LABELS = 32
DEVICE_KINDS = ("gpu", "cpu", "accelerator", "reference")

PEER_ID_PATTERN = r"^(12D3KooW|Qm)[1-9A-HJ-NP-Za-km-z]{40,60}$"
_PORT = re.compile(r"^[0-9]{1,5}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")

Name = Annotated[str, Meta(max_length=256)]
Id = Annotated[str, Meta(min_length=1, max_length=128)]
Count = Annotated[int, Meta(ge=0, le=1_000_000)]
Rate = Annotated[float, Meta(ge=0.0, le=1e12)]  # msgspec refuses nan/inf against these bounds


class AddressError(ValueError):
    """Not a HOST:PORT address a node can dial."""


def split_hostport(addr: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` -> (host, port); raises AddressError for anything else (the one parser of
    data-plane addresses that came from a peer)."""
    if not isinstance(addr, str) or len(addr) > 300:
        raise AddressError("address too long")
    host, sep, port_s = addr.rpartition(":")
    if not sep or not _PORT.match(port_s):
        raise AddressError(f"{addr[:80]!r} is not HOST:PORT")
    port = int(port_s)
    if not 1 <= port <= 65535:
        raise AddressError(f"port {port} out of range")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise AddressError(f"{host[:80]!r} is not an IPv6 address") from None
        return host[1:-1], port
    if not _HOSTNAME.match(host):
        raise AddressError(f"{host[:80]!r} is not a host name or IPv4 address")
    return host, port


class DeviceBody(msgspec.Struct, array_like=True, frozen=True):
    """A device record: positional; an older node's shorter record takes the defaults of the newer fields,
    a newer node's longer one has its extra fields ignored."""

    id: Id
    kind: Literal["gpu", "cpu", "accelerator", "reference"]
    vendor: Name
    name: Name
    compute_units: Annotated[int, Meta(ge=0, le=1 << 24)]
    global_mem_bytes: Annotated[int, Meta(ge=0, le=1 << 50)]  # 1 PiB
    fp64: bool
    int64: bool
    mulmod_mops: Rate
    f32_gflops: Rate
    slots: Annotated[int, Meta(ge=0, le=4096)]
    free_slots: Annotated[int, Meta(ge=0, le=4096)]
    queue_depth: Count
    max_work_group_size: Annotated[int, Meta(ge=0, le=1 << 31)] = 0
    max_work_item_sizes: Annotated[tuple[Annotated[int, Meta(ge=0, le=1 << 40)], ...], Meta(max_length=3)] = ()
    max_alloc_bytes: Annotated[int, Meta(ge=0, le=1 << 50)] = 0
    local_mem_bytes: Annotated[int, Meta(ge=0, le=1 << 40)] = 0
    opencl_version: Annotated[str, Meta(max_length=16)] = ""
    non_uniform_work_groups: bool = False

    def __post_init__(self) -> None:
        if self.free_slots > self.slots:
            raise ValueError(f"device {self.id!r}: free_slots {self.free_slots} > slots {self.slots}")


class AdvertBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    peer_id: Annotated[str, Meta(pattern=PEER_ID_PATTERN)]
    public_key: Annotated[bytes, Meta(min_length=32, max_length=32)]
    seq: Annotated[int, Meta(ge=0, le=2**63 - 1)]
    timestamp: Annotated[float, Meta(ge=0.0, le=1e11)]  # signed issue time, sender's wall clock (unix s)
    version: int
    addrs: Annotated[list[Annotated[str, Meta(max_length=512)]], Meta(max_length=MAX_ADDRS)] = []
    data_addr: Annotated[str, Meta(max_length=300)] = ""
    devices: Annotated[list[DeviceBody], Meta(max_length=MAX_DEVICES)] = []
    software: Annotated[str, Meta(max_length=128)] = ""
    interval_s: Annotated[float, Meta(gt=0.0, le=3600.0)] = 2.0
    labels: Annotated[dict[Annotated[str, Meta(min_length=1, max_length=64)], Name], Meta(max_length=MAX_LABELS)] = {}

    def __post_init__(self) -> None:
        _check_data_addr(self.data_addr)
        if len({d.id for d in self.devices}) != len(self.devices):
            raise ValueError("duplicate device ids")


class _VersionOnly(msgspec.Struct):
    version: object = None


class Envelope(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    b: bytes  # the signed body
    s: Annotated[bytes, Meta(max_length=128)]  # Ed25519 signature over b


ENVELOPE_DECODER = msgspec.msgpack.Decoder(Envelope)
BODY_DECODER = msgspec.msgpack.Decoder(AdvertBody)
_VERSION_DECODER = msgspec.msgpack.Decoder(_VersionOnly)


def body_version(body: bytes) -> object:
    """The `version` field of a body that did not fit the schema (to tell 'other version' from 'malformed')."""
    try:
        return _VERSION_DECODER.decode(body).version
    except Exception:
        return None


def _check_data_addr(addr: str | None) -> None:
    if addr:
        try:
            split_hostport(addr)
        except AddressError as e:
            raise ValueError(f"data_addr: {e}") from None


class DeltaBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A delta advert's body (short wire keys): what changed since the sender's last full advert."""

    version: int = msgspec.field(name="v")
    peer_id: Annotated[str, Meta(pattern=PEER_ID_PATTERN)] = msgspec.field(name="p")
    public_key: Annotated[bytes, Meta(min_length=32, max_length=32)] = msgspec.field(name="k")
    seq: Annotated[int, Meta(ge=0, le=2**63 - 1)] = msgspec.field(name="q")
    base_seq: Annotated[int, Meta(ge=0, le=2**63 - 1)] = msgspec.field(name="b")
    timestamp: Annotated[float, Meta(ge=0.0, le=1e11)] = msgspec.field(name="t")
    interval_s: Annotated[float, Meta(gt=0.0, le=86400.0)] = msgspec.field(name="i")
    loads: Annotated[dict[Id, tuple[Annotated[int, Meta(ge=0, le=4096)], Count]],
                     Meta(max_length=MAX_DEVICES)] = msgspec.field(name="l", default_factory=dict)
    labels: Annotated[dict[Annotated[str, Meta(min_length=1, max_length=64)], Name],
                      Meta(max_length=MAX_LABELS)] | None = msgspec.field(name="lb", default=None)
    data_addr: Annotated[str, Meta(max_length=300)] | None = msgspec.field(name="da", default=None)
    addrs: Annotated[list[Annotated[str, Meta(max_length=512)]], Meta(max_length=MAX_ADDRS)] | None = \
        msgspec.field(name="a", default=None)

    def __post_init__(self) -> None:
        if self.seq <= self.base_seq:
            raise ValueError("a delta is newer than its base")
        _check_data_addr(self.data_addr)


class DeltaEnvelope(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    d: bytes
    s: Annotated[bytes, Meta(max_length=128)]


DELTA_ENVELOPE_DECODER = msgspec.msgpack.Decoder(DeltaEnvelope)
DELTA_DECODER = msgspec.msgpack.Decoder(DeltaBody)


class _DeltaVersionOnly(msgspec.Struct):
    v: object = None


_DELTA_VERSION_DECODER = msgspec.msgpack.Decoder(_DeltaVersionOnly)


def delta_version(body: bytes) -> object:
    try:
        return _DELTA_VERSION_DECODER.decode(body).v
    except Exception:
        return None
