"""Delta adverts: diff/apply, the signed wire form, and how the membership view applies them (pure)."""

from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import advert as full_codec
from mesh import advert_delta as delta_codec
from mesh.advert import Advert, AdvertError, DeviceAdvert
from mesh.advert_delta import AdvertDelta
from mesh.identity import Identity
from mesh.membership import Joined, MembershipView, Updated

IDENT = Identity.generate(b"\x03" * 32)
OTHER = Identity.generate(b"\x04" * 32)
DEV = DeviceAdvert("0:0", "cpu", "pocl", "cpu dev", 2, 1 << 30, True, True, 310.0, 12.5, 2, 2, 0)
DEV2 = replace(DEV, id="0:1", name="second")


def full(seq=10, ident=IDENT, **kw) -> Advert:
    return Advert(ident.peer_id_str, ident.key_pair.public_key.to_bytes(), seq, 100.0,
                  addrs=("/ip4/127.0.0.1/tcp/4001/p2p/" + ident.peer_id_str,), data_addr="127.0.0.1:4002",
                  devices=(DEV, DEV2), software="t", **kw)


def busy(ad: Advert, seq: int, free=0, queue=3, labels=None) -> Advert:
    devs = (replace(ad.devices[0], free_slots=free, queue_depth=queue), ad.devices[1])
    return replace(ad, seq=seq, timestamp=ad.timestamp + seq, devices=devs,
                   labels=ad.labels if labels is None else labels)


def test_diff_carries_only_what_changed_and_apply_rebuilds_the_advert():
    base = full()
    cur = busy(base, 11, labels={"zone": "a"})
    d = delta_codec.diff(base, cur)
    assert d is not None and d.base_seq == 10 and d.seq == 11
    assert d.loads == {"0:0": (0, 3)} and d.labels == {"zone": "a"}
    assert d.addrs is None and d.data_addr is None
    assert delta_codec.apply(base, d) == cur
    assert len(delta_codec.encode(d, IDENT)) < len(full_codec.encode(cur, IDENT)) / 2


def test_a_changed_device_set_or_static_field_needs_a_full_advert():
    base = full()
    assert delta_codec.diff(base, replace(base, seq=11, devices=(DEV,))) is None
    assert delta_codec.diff(base, replace(base, seq=11, devices=(replace(DEV, mulmod_mops=1.0), DEV2))) is None
    assert delta_codec.diff(base, replace(base, seq=11, software="other")) is None


def test_wire_round_trip_and_both_kinds_decode():
    base = full()
    d = delta_codec.diff(base, busy(base, 12))
    assert delta_codec.decode(delta_codec.encode(d, IDENT)) == d
    assert delta_codec.decode(full_codec.encode(base, IDENT)) == base


def test_delta_signed_by_another_key_or_claiming_another_peer_is_refused():
    d = delta_codec.diff(full(), busy(full(), 12))
    with pytest.raises(AdvertError) as e:
        delta_codec.decode(delta_codec.encode(d, OTHER))
    assert e.value.reason == "signature"
    forged = replace(d, public_key=OTHER.key_pair.public_key.to_bytes())
    with pytest.raises(AdvertError) as e:
        delta_codec.decode(delta_codec.encode(forged, OTHER))
    assert e.value.reason == "signature"


@pytest.mark.parametrize("bad", [
    {"loads": {"0:0": [-1, 0]}}, {"loads": {"0:0": [1]}}, {"loads": {"0:0": [True, 0]}},
    {"loads": {str(i): [0, 0] for i in range(65)}}, {"labels": {str(i): "x" for i in range(33)}},
    {"labels": {"k": 1}}, {"seq": 5}, {"interval_s": 0}, {"interval_s": float("inf")}, {"extra": 1},
    {"addrs": ["x"] * 17}, {"data_addr": 7}, {"version": 2}, {"timestamp": "now"},
])
def test_bad_fields_are_refused_with_a_reason(bad):
    d = delta_codec.diff(full(), busy(full(), 12))
    m = msgpack.unpackb(delta_codec._body(d), raw=False)
    m.update({delta_codec._KEYS.get(k, k): v for k, v in bad.items()})
    body = msgpack.packb(m, use_bin_type=True)
    wire = msgpack.packb({"d": body, "s": IDENT.sign(body)}, use_bin_type=True)
    with pytest.raises(AdvertError) as e:
        delta_codec.decode(wire)
    assert e.value.reason in ("malformed", "version")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_signed_bodies_never_raise_anything_but_advert_error(body):
    for wire in (msgpack.packb({"d": body, "s": IDENT.sign(body)}, use_bin_type=True), body):
        try:
            delta_codec.decode(wire)
        except AdvertError:
            pass


# ---- the membership view ---------------------------------------------------------------------------------------
def test_view_applies_a_delta_on_its_base_and_deltas_are_cumulative():
    v = MembershipView("me", ttl_s=6)
    base = full()
    assert v.apply(base, now=0) == Joined(IDENT.peer_id_str)
    d1 = delta_codec.diff(base, busy(base, 11, free=1, queue=0))
    d2 = delta_codec.diff(base, busy(base, 12, free=0, queue=5))
    assert v.apply(d2, now=1) == Updated(IDENT.peer_id_str)  # d1 lost: d2 alone carries everything since base
    assert v.get(IDENT.peer_id_str).advert == busy(base, 12, free=0, queue=5)
    assert v.apply(d1, now=2) is None and v.stale == 1  # late and older: dropped
    assert v.get(IDENT.peer_id_str).advert.devices[0].queue_depth == 5
    assert v.get(IDENT.peer_id_str).last_seen == 1


def test_a_delta_without_its_base_waits_for_the_next_full_advert():
    v = MembershipView("me", ttl_s=6)
    base = full(seq=10)
    d = delta_codec.diff(base, busy(base, 11))
    assert v.apply(d, now=0) is None and v.no_base == 1 and IDENT.peer_id_str not in v
    v.apply(full(seq=5), now=0)  # an older full: the delta's base is not this one either
    assert v.apply(d, now=1) is None and v.no_base == 2
    assert v.get(IDENT.peer_id_str).advert.seq == 5
    v.apply(base, now=2)
    assert v.apply(d, now=3) == Updated(IDENT.peer_id_str)


def test_a_newer_full_advert_replaces_the_base():
    v = MembershipView("me", ttl_s=6)
    base = full(seq=10)
    v.apply(base, now=0)
    newer = full(seq=20)
    v.apply(newer, now=1)
    old_delta = delta_codec.diff(base, busy(base, 21))  # seq newer, but its base is gone
    assert v.apply(old_delta, now=2) is None and v.no_base == 1
    assert v.apply(delta_codec.diff(newer, busy(newer, 22)), now=2) == Updated(IDENT.peer_id_str)


def test_ttl_follows_the_interval_each_peer_announces_within_bounds():
    v = MembershipView("me", ttl_s=6, ttl_intervals=3, max_ttl_s=90)
    v.apply(full(interval_s=2.0), now=0)
    assert v.get(IDENT.peer_id_str).expires_at == 6
    v.apply(full(seq=11, interval_s=10.0), now=1)
    assert v.get(IDENT.peer_id_str).expires_at == 31
    assert v.expire(30.9) == [] and len(v.expire(31.1)) == 1
    v.apply(full(seq=12, interval_s=1e6), now=100)  # a peer cannot stay for ever by announcing a long interval
    assert v.get(IDENT.peer_id_str).expires_at == 190
    v.apply(full(seq=13, interval_s=0.1), now=100)  # nor expire before the floor
    assert v.get(IDENT.peer_id_str).expires_at == 106
    d = delta_codec.diff(full(seq=13, interval_s=0.1), replace(busy(full(seq=13), 14), interval_s=5.0))
    v.apply(d, now=101)
    assert v.get(IDENT.peer_id_str).expires_at == 116


def test_without_ttl_intervals_the_ttl_is_fixed():
    v = MembershipView("me", ttl_s=6)
    v.apply(full(interval_s=100.0), now=0)
    assert v.get(IDENT.peer_id_str).expires_at == 6


def test_tracked_view_logs_a_peer_changed_by_a_delta():
    from scheduler.core.placement import TrackedView
    v = TrackedView("me", ttl_s=6)
    base = full()
    v.apply(base, now=0)
    ver = v.version
    v.apply(delta_codec.diff(base, busy(base, 11)), now=1)
    assert v.version == ver + 1
    _, changed = v.changes_since(ver)
    assert changed == {IDENT.peer_id_str}
    v.apply(AdvertDelta(IDENT.peer_id_str, b"", 30, 99, 0.0, 2.0), now=2)  # no base: no change logged
    assert v.version == ver + 1
