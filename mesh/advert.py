"""Capacity adverts: the signed, versioned full-state message each node gossips periodically.

Gossip is lossy, so an advert is always the node's whole state (never a delta) and carries a sequence number
so that receivers keep only the newest one. The signature binds the advert to the libp2p key of its peer id,
so a relay cannot forge or alter another node's capacity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import msgspec

from mesh.identity import Identity, peer_id_of, public_key_from_bytes
from mesh.wire import advert as schema

ADVERT_VERSION = 1
MAX_ADVERT_BYTES = 64 * 1024
MAX_DEVICES = schema.MAX_DEVICES


class AdvertError(ValueError):
    """An advert that must be dropped: malformed, unsigned, badly signed, oversized or of another version."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # short label for metrics: malformed, signature, oversized, version, stale


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


def decode(data: bytes) -> Advert:
    """Parse and verify a wire advert; raises AdvertError (never anything else) for any bad input.

    The body is checked against its schema (`mesh.wire.advert`: every field typed and bounded) before
    anything else reads it. A device record from an older node (fewer fields) takes the defaults of the
    newer fields; one from a newer node has its extra fields ignored."""
    if len(data) > MAX_ADVERT_BYTES:
        raise AdvertError("oversized", f"advert of {len(data)} bytes exceeds {MAX_ADVERT_BYTES}")
    try:
        env = schema.ENVELOPE_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise AdvertError("malformed", f"malformed advert: {e}") from None
    b = decode_signed_body(schema.BODY_DECODER, schema.body_version, env.b, env.s, "advert")
    devices = tuple(DeviceAdvert(**{f: getattr(d, f) for f in d.__struct_fields__}) for d in b.devices)
    return Advert(peer_id=b.peer_id, public_key=b.public_key, seq=b.seq, timestamp=float(b.timestamp),
                  addrs=tuple(b.addrs), data_addr=b.data_addr, devices=devices, software=b.software,
                  interval_s=float(b.interval_s), labels=dict(b.labels), version=b.version)


def decode_signed_body(decoder: Any, version_of: Any, body: bytes, sig: bytes, what: str) -> Any:
    """A signed body (of a full or a delta advert): checked against its schema, its version, then its signature.
    A body the schema refuses is a 'version' refusal when it names another version, else 'malformed'."""
    try:
        b = decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        version = version_of(body)
        if version is not None and version != ADVERT_VERSION:
            raise AdvertError("version", f"advert version {version!r} not supported (want {ADVERT_VERSION})") from None
        raise AdvertError("malformed", f"malformed {what}: {e}") from None
    if b.version != ADVERT_VERSION:
        raise AdvertError("version", f"advert version {b.version!r} not supported (want {ADVERT_VERSION})")
    verify_signature(b.peer_id, b.public_key, body, sig)
    return b


def verify_signature(peer_id: str, public_key: bytes, body: bytes, sig: bytes) -> None:
    """The body is signed by the key of the peer id it names; AdvertError otherwise."""
    try:
        pub = public_key_from_bytes(public_key)
    except Exception as e:
        raise AdvertError("malformed", f"malformed advert: public key: {e}") from None
    if peer_id_of(pub) != peer_id:
        raise AdvertError("signature", f"advert key does not match its peer id {peer_id}")
    if not pub.verify(body, sig):
        raise AdvertError("signature", f"bad signature on advert from {peer_id}")


def check_fresh(peer_id: str, timestamp: float, now_wall: float, max_age_s: float) -> None:
    """Refuse (AdvertError 'stale') an advert or delta whose signed issue time is more than `max_age_s` (its
    TTL) from `now_wall` (unix time), either way: a replay of a peer that is gone cannot bring it back, and
    an advert signed for the future cannot be kept for a later replay."""
    age = now_wall - timestamp
    if abs(age) > max_age_s:
        raise AdvertError("stale", f"advert from {peer_id} issued {age:.1f} s ago (accepted: within {max_age_s:g} s)")
