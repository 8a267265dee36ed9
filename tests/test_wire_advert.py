"""The advert schema: signed, well-framed adverts with arbitrary field values are valid typed data or refused
with a reason, and nothing a member can sign crashes what consumes adverts (gauges, placement costs)."""

import math
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh import advert as codec
from mesh import advert_delta
from mesh.advert import Advert, AdvertError, DeviceAdvert
from mesh.identity import Identity
from mesh.membership import MembershipView
from mesh.wire.advert import DEVICE_KINDS, AddressError, split_hostport
from scheduler.node.coordinator_io import device_of
from worker.kinds_basic import load_builtin_kinds

IDENT = Identity.generate(b"\x05" * 32)


def signed(body: dict) -> bytes:
    raw = msgpack.packb(body, use_bin_type=True)
    return msgpack.packb({"b": raw, "s": IDENT.sign(raw)}, use_bin_type=True)


def good_device(**over) -> list:
    d = dict(id="0:0", kind="cpu", vendor="pocl", name="cpu", compute_units=2, global_mem_bytes=1 << 30,
             fp64=True, int64=True, mulmod_mops=300.0, f32_gflops=10.0, slots=1, free_slots=1, queue_depth=0)
    d.update(over)
    return list(d.values())


def good_body(**over) -> dict:
    b = dict(peer_id=IDENT.peer_id_str, public_key=IDENT.key_pair.public_key.to_bytes(), seq=7,
             timestamp=time.time(), addrs=[], data_addr="127.0.0.1:4002", devices=[good_device()],
             software="t", interval_s=2.0, labels={}, version=1)
    b.update(over)
    return b


def test_good_body_decodes():
    ad = codec.decode(signed(good_body()))
    assert ad.devices[0].kind == "cpu" and ad.data_addr == "127.0.0.1:4002"


@pytest.mark.parametrize("over,needle", [
    ({"devices": [good_device(kind=[1, 2])]}, r"\$.devices\[0\]\[1\]"),  # unhashable kind crashed every node's gauges
    ({"devices": [good_device(kind="quantum")]}, "enum"),
    ({"data_addr": "evilhost"}, "data_addr"),  # crashed the coordinator and journal replay
    ({"data_addr": "evil host:1"}, "data_addr"),
    ({"data_addr": "h:70000"}, "data_addr"),
    ({"devices": [good_device(global_mem_bytes=2**64 - 1)]}, "global_mem_bytes|<="),  # OverflowError in job.submit
    ({"devices": [good_device(mulmod_mops="fast")]}, "float"),
    ({"devices": [good_device(mulmod_mops=float("nan"))]}, ">="),
    ({"devices": [good_device(mulmod_mops=float("inf"))]}, "<="),
    ({"devices": [good_device(free_slots=5, slots=1)]}, "free_slots"),
    ({"devices": [good_device(), good_device()]}, "duplicate"),
    ({"devices": [good_device(id=i) for i in map(str, range(65))]}, "length"),
    ({"seq": -1}, ">= 0"),
    ({"seq": 2**64 - 1}, "<="),
    ({"labels": {"k": 1}}, "str"),
    ({"labels": {str(i): "v" for i in range(40)}}, "length"),
    ({"interval_s": 0}, "> 0"),
    ({"software": "x" * 1000}, "length"),
    ({"evil": 1}, "unknown field"),
    ({"peer_id": "not-a-peer"}, "regex"),
])
def test_hostile_fields_refused_as_malformed(over, needle):
    with pytest.raises(AdvertError, match=needle) as e:
        codec.decode(signed(good_body(**over)))
    assert e.value.reason == "malformed"


def test_other_version_is_told_apart():
    with pytest.raises(AdvertError) as e:
        codec.decode(signed(good_body(version=2, extra_field_of_v2=1)))
    assert e.value.reason == "version"


def test_issue_time_older_than_ttl_is_stale():
    ad = codec.decode(signed(good_body(timestamp=1000.0)))
    with pytest.raises(AdvertError) as e:
        codec.check_fresh(ad.peer_id, ad.timestamp, now_wall=1000.0 + 7, max_age_s=6)
    assert e.value.reason == "stale"
    with pytest.raises(AdvertError):  # issued in the future: pre-signed to be replayed later
        codec.check_fresh(ad.peer_id, ad.timestamp, now_wall=1000.0 - 7, max_age_s=6)
    codec.check_fresh(ad.peer_id, ad.timestamp, now_wall=1005.0, max_age_s=6)


def delta_wire(**over) -> bytes:
    body = {"v": 1, "p": IDENT.peer_id_str, "k": IDENT.key_pair.public_key.to_bytes(), "q": 9, "b": 7,
            "t": time.time(), "i": 2.0, "l": {"0:0": [1, 0]}}
    body.update(over)
    raw = msgpack.packb(body, use_bin_type=True)
    return msgpack.packb({"d": raw, "s": IDENT.sign(raw)}, use_bin_type=True)


def test_delta_adverts_have_the_same_schema():
    d = advert_delta.decode(delta_wire())
    assert isinstance(d, advert_delta.AdvertDelta) and d.loads == {"0:0": (1, 0)}
    for over in ({"da": "evilhost"}, {"l": {"0:0": [2**40, 0]}}, {"l": {"0:0": ["x", 0]}}, {"q": 3},
                 {"lb": {"k": 1}}, {"i": float("nan")}, {"zz": 1}):
        with pytest.raises(AdvertError) as e:
            advert_delta.decode(delta_wire(**over))
        assert e.value.reason == "malformed", over
    with pytest.raises(AdvertError) as e:
        advert_delta.decode(delta_wire(v=2))
    assert e.value.reason == "version"


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "p", "k", "q", "b", "t", "i", "l", "lb", "da", "a", "x"]),
                       st.deferred(lambda: values), max_size=12))
def test_signed_arbitrary_deltas_never_raise_past_the_decoder(over):
    try:
        wire = delta_wire(**over)
    except (TypeError, ValueError, OverflowError):
        return
    try:
        d = advert_delta.decode(wire)
    except AdvertError:
        return
    if isinstance(d, advert_delta.AdvertDelta) and d.data_addr:
        split_hostport(d.data_addr)


@pytest.mark.parametrize("addr,ok", [("127.0.0.1:4002", ("127.0.0.1", 4002)), ("[::1]:5", ("::1", 5)),
                                     ("node-1.example.org:80", ("node-1.example.org", 80)),
                                     ("evilhost", None), (":80", None), ("[zz]:1", None), ("a:0", None),
                                     ("a:-1", None), ("a:１２", None), ("a/b:1", None)])
def test_split_hostport(addr, ok):
    if ok is None:
        with pytest.raises(AddressError):
            split_hostport(addr)
    else:
        assert split_hostport(addr) == ok


# ---- property tests: arbitrary signed bodies --------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
device_fields = list(DeviceAdvert.__dataclass_fields__)


@st.composite
def mutated_bodies(draw):
    body = good_body()
    for _ in range(draw(st.integers(0, 4))):
        target = draw(st.sampled_from(["body", "device", "drop", "add"]))
        if target == "body":
            body[draw(st.sampled_from(sorted(body)))] = draw(values)
        elif (target == "device" and isinstance(body.get("devices"), list) and body["devices"]
              and isinstance(body["devices"][0], list | tuple) and body["devices"][0]):
            dev = list(body["devices"][0])
            dev[draw(st.integers(0, len(dev) - 1))] = draw(values)
            body["devices"] = [dev]
        elif target == "drop":
            body.pop(draw(st.sampled_from(sorted(body))), None)
        else:
            body[draw(st.text(max_size=10))] = draw(values)
    return body


def _consume(ad: Advert) -> None:
    """What nodes do with an accepted advert: view, gauges by kind, data address, placement costs."""
    view = MembershipView("self", ttl_s=6.0)
    view.apply(ad, 0.0)
    by_kind: dict[str, int] = {}
    for p in view.peers():
        for d in p.devices():
            by_kind[d.kind] = by_kind.get(d.kind, 0) + d.free_slots
            assert d.kind in DEVICE_KINDS and 0 <= d.free_slots <= d.slots
            assert math.isfinite(d.mulmod_mops) and math.isfinite(d.f32_gflops)
    if ad.data_addr:
        split_hostport(ad.data_addr)
    reg = load_builtin_kinds()
    for d in ad.devices:
        dev = device_of(d)
        for name in ("echo", "checksum"):
            cost = reg.get(name).cost_s({}, 1 << 20, dev)
            assert cost >= 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_bodies())
def test_signed_mutated_adverts_are_typed_or_refused(body):
    try:
        wire = signed(body)
    except (TypeError, ValueError, OverflowError):
        return  # not packable: cannot be on the wire
    try:
        ad = codec.decode(wire)
    except AdvertError as e:
        assert e.reason in ("malformed", "version", "signature", "oversized")
        return
    _consume(ad)


@settings(max_examples=300, deadline=None)
@given(values)
def test_signed_arbitrary_bodies_never_raise_past_the_decoder(body):
    try:
        wire = signed(body)
    except (TypeError, ValueError, OverflowError):
        return
    try:
        _consume(codec.decode(wire))
    except AdvertError:
        pass
