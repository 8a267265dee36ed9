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

import math
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from mesh import advert as advert_codec
from mesh.advert import ADVERT_VERSION, MAX_ADVERT_BYTES, MAX_DEVICES, Advert, AdvertError
from mesh.identity import Identity, peer_id_of, public_key_from_bytes

MAX_LABELS = 32
MAX_ADDRS = 16
MAX_STR = 1024


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
    """A wire message on the advert topic: a full advert or a delta, verified; AdvertError for anything bad."""
    if len(data) > MAX_ADVERT_BYTES:
        raise AdvertError("oversized", f"advert of {len(data)} bytes exceeds {MAX_ADVERT_BYTES}")
    try:
        outer = msgpack.unpackb(data, raw=False, max_bin_len=MAX_ADVERT_BYTES, max_str_len=MAX_ADVERT_BYTES)
        is_delta = isinstance(outer, dict) and "d" in outer
    except Exception as e:
        raise AdvertError("malformed", f"malformed advert: {e}") from None
    if not is_delta:
        return advert_codec.decode(data)
    try:
        body, sig = outer["d"], outer["s"]
        if set(outer) != {"d", "s"} or not isinstance(body, bytes) or not isinstance(sig, bytes):
            raise TypeError("a delta is {d: bytes, s: bytes}")
        wire = msgpack.unpackb(body, raw=False, max_map_len=64, max_array_len=MAX_DEVICES * 2)
        if not isinstance(wire, dict):
            raise TypeError("body is not a map")
        unknown = set(wire) - _NAMES.keys()
        if unknown:
            raise ValueError(f"unknown fields {sorted(map(str, unknown))}")
        m = {_NAMES[k]: v for k, v in wire.items()}
    except Exception as e:
        raise AdvertError("malformed", f"malformed delta advert: {e}") from None
    if m.get("version") != ADVERT_VERSION:
        raise AdvertError("version", f"advert version {m.get('version')!r} not supported (want {ADVERT_VERSION})")
    try:
        delta = _typed(m)
        pub = public_key_from_bytes(delta.public_key)
    except Exception as e:
        raise AdvertError("malformed", f"malformed delta advert: {e}") from None
    if peer_id_of(pub) != delta.peer_id:
        raise AdvertError("signature", f"delta key does not match its peer id {delta.peer_id}")
    if not pub.verify(body, sig):
        raise AdvertError("signature", f"bad signature on delta from {delta.peer_id}")
    return delta


_NAMES = {v: k for k, v in _KEYS.items()}


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_STR:
        raise TypeError(f"{what} must be a string of at most {MAX_STR} characters")
    return v


def _count(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not (0 <= v < 2**31):
        raise TypeError(f"{what} must be an integer in [0, 2^31)")
    return v


def _typed(m: dict[str, Any]) -> AdvertDelta:
    seq, base_seq = m["seq"], m["base_seq"]
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63 for x in (seq, base_seq)):
        raise TypeError("seq/base_seq")
    if seq <= base_seq:
        raise ValueError("a delta is newer than its base")
    ts, interval = m["timestamp"], m["interval_s"]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in (ts, interval)) \
            or not (0 < interval <= 86400):
        raise TypeError("timestamp/interval_s")
    raw_loads = m["loads"]
    if not isinstance(raw_loads, dict) or len(raw_loads) > MAX_DEVICES:
        raise TypeError(f"loads must be a map of at most {MAX_DEVICES} devices")
    loads = {}
    for k, v in raw_loads.items():
        if not (isinstance(v, list) and len(v) == 2):
            raise TypeError("a load is [free_slots, queue_depth]")
        loads[_str(k, "device id")] = (_count(v[0], "free_slots"), _count(v[1], "queue_depth"))
    labels = None
    if "labels" in m:
        if not isinstance(m["labels"], dict) or len(m["labels"]) > MAX_LABELS:
            raise TypeError(f"labels must be a map of at most {MAX_LABELS} entries")
        labels = {_str(k, "label key"): _str(v, "label value") for k, v in m["labels"].items()}
    addrs = None
    if "addrs" in m:
        if not isinstance(m["addrs"], list) or len(m["addrs"]) > MAX_ADDRS:
            raise TypeError(f"addrs must be a list of at most {MAX_ADDRS}")
        addrs = tuple(_str(a, "addr") for a in m["addrs"])
    pk = m["public_key"]
    if not isinstance(pk, bytes):
        raise TypeError("public_key")
    return AdvertDelta(peer_id=_str(m["peer_id"], "peer_id"), public_key=pk, seq=seq, base_seq=base_seq,
                       timestamp=float(ts), interval_s=float(interval), loads=loads, labels=labels,
                       data_addr=_str(m["data_addr"], "data_addr") if "data_addr" in m else None, addrs=addrs)
