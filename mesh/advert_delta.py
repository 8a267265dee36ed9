"""Delta adverts: what changed in a node's advert since its last full advert, signed like a full advert.

A delta is relative to the sender's last *full* advert (its `base_seq`), never to the previous delta, so a lost
delta costs nothing: the next one carries everything since the base. A receiver holding that base applies it;
one that does not (it joined later, or lost the full advert) ignores it until the next full refresh. What a delta
can carry is what changes at run time: each device's load, the labels, the addresses and the refresh interval;
a changed device set (or anything else) needs a full advert.

Wire: msgpack {"d": body, "s": Ed25519 signature of body} (full adverts use "b"), so the two cannot be mistaken
for each other and each is checked by the same key as the peer id it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import msgspec

from mesh import advert as advert_codec
from mesh.advert import ADVERT_VERSION, MAX_ADVERT_BYTES, Advert, AdvertError
from mesh.identity import Identity
from mesh.wire import advert as schema

MAX_LABELS = schema.MAX_LABELS
MAX_ADDRS = schema.MAX_ADDRS


@dataclass(frozen=True)
class AdvertDelta:
    peer_id: str
    public_key: bytes
    seq: int  # in the same sequence as full adverts: newer than the base and every earlier delta
    base_seq: int  # the full advert this applies to
    timestamp: float
    interval_s: float
    loads: dict[str, tuple[int, int]] = field(default_factory=dict)  # device id -> (free_slots, queue_depth)
    labels: dict[str, str] | None = None  # the whole label map, when it changed
    data_addr: str | None = None
    addrs: tuple[str, ...] | None = None
    version: int = ADVERT_VERSION


def diff(base: Advert, cur: Advert) -> AdvertDelta | None:
    """The delta taking `base` to `cur`, or None when it needs a full advert (devices added, removed or changed
    in anything but their load, or another field changed)."""
    if (cur.peer_id, cur.public_key, cur.software, cur.version) != \
            (base.peer_id, base.public_key, base.software, base.version):
        return None
    if [d.id for d in cur.devices] != [d.id for d in base.devices]:
        return None
    loads = {}
    for b, c in zip(base.devices, cur.devices, strict=True):
        if replace(c, free_slots=b.free_slots, queue_depth=b.queue_depth) != b:
            return None
        if (c.free_slots, c.queue_depth) != (b.free_slots, b.queue_depth):
            loads[c.id] = (c.free_slots, c.queue_depth)
    return AdvertDelta(
        peer_id=cur.peer_id, public_key=cur.public_key, seq=cur.seq, base_seq=base.seq, timestamp=cur.timestamp,
        interval_s=cur.interval_s, loads=loads,
        labels=dict(cur.labels) if cur.labels != base.labels else None,
        data_addr=cur.data_addr if cur.data_addr != base.data_addr else None,
        addrs=cur.addrs if cur.addrs != base.addrs else None)


def apply(base: Advert, delta: AdvertDelta) -> Advert:
    """The advert `delta` describes, built on its base (the caller checks base.seq == delta.base_seq)."""
    if base.seq != delta.base_seq or base.peer_id != delta.peer_id:
        raise ValueError("delta does not apply to this base")
    devices = tuple(replace(d, free_slots=delta.loads[d.id][0], queue_depth=delta.loads[d.id][1])
                    if d.id in delta.loads else d for d in base.devices)
    return replace(
        base, seq=delta.seq, timestamp=delta.timestamp, interval_s=delta.interval_s, devices=devices,
        labels=dict(delta.labels) if delta.labels is not None else base.labels,
        data_addr=delta.data_addr if delta.data_addr is not None else base.data_addr,
        addrs=delta.addrs if delta.addrs is not None else base.addrs)


# wire keys: short, since a delta is mostly its peer id, key and signature
_KEYS = {"version": "v", "peer_id": "p", "public_key": "k", "seq": "q", "base_seq": "b", "timestamp": "t",
         "interval_s": "i", "loads": "l", "labels": "lb", "data_addr": "da", "addrs": "a"}


def _body(d: AdvertDelta) -> bytes:
    m: dict[str, Any] = {"version": d.version, "peer_id": d.peer_id, "public_key": d.public_key, "seq": d.seq,
                         "base_seq": d.base_seq, "timestamp": d.timestamp, "interval_s": d.interval_s,
                         "loads": {k: list(v) for k, v in d.loads.items()}}
    if d.labels is not None:
        m["labels"] = d.labels
    if d.data_addr is not None:
        m["data_addr"] = d.data_addr
    if d.addrs is not None:
        m["addrs"] = list(d.addrs)
    return msgpack.packb({_KEYS[k]: v for k, v in m.items()}, use_bin_type=True)


def encode(delta: AdvertDelta, identity: Identity) -> bytes:
    body = _body(delta)
    return msgpack.packb({"d": body, "s": identity.sign(body)}, use_bin_type=True)


def decode(data: bytes) -> Advert | AdvertDelta:
    """A wire message on the advert topic: a full advert or a delta, checked against its schema
    (`mesh.wire.advert`) and verified; AdvertError for anything bad."""
    if len(data) > MAX_ADVERT_BYTES:
        raise AdvertError("oversized", f"advert of {len(data)} bytes exceeds {MAX_ADVERT_BYTES}")
    try:
        env = schema.DELTA_ENVELOPE_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return advert_codec.decode(data)  # not a delta: a full advert, or refused as one
    b = advert_codec.decode_signed_body(schema.DELTA_DECODER, schema.delta_version, env.d, env.s, "delta advert")
    return AdvertDelta(peer_id=b.peer_id, public_key=b.public_key, seq=b.seq, base_seq=b.base_seq,
                       timestamp=float(b.timestamp), interval_s=float(b.interval_s),
                       loads={k: (v[0], v[1]) for k, v in b.loads.items()},
                       labels=dict(b.labels) if b.labels is not None else None, data_addr=b.data_addr,
                       addrs=tuple(b.addrs) if b.addrs is not None else None)
