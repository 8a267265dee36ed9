import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import advert as codec
from mesh.advert import MAX_ADVERT_BYTES, Advert, AdvertError, DeviceAdvert
from mesh.identity import Identity

IDENT = Identity.generate(b"\x01" * 32)
OTHER = Identity.generate(b"\x02" * 32)


def make(ident=IDENT, seq=1, **kw) -> Advert:
    dev = DeviceAdvert("0:0", "cpu", "pocl", "cpu dev", 2, 1 << 30, True, True, 310.0, 12.5, 1, 1, 0)
    return Advert(ident.peer_id_str, ident.key_pair.public_key.to_bytes(), seq, 1.5,
                  addrs=("/ip4/127.0.0.1/tcp/4001/p2p/" + ident.peer_id_str,), data_addr="127.0.0.1:4002",
                  devices=(dev,), software="test", **kw)


def test_round_trip():
    ad = make()
    assert codec.decode(codec.encode(ad, IDENT)) == ad
    assert ad.free_slots == 1 and ad.queue_depth == 0


def test_signed_by_someone_else_rejected():
    wire = codec.encode(make(IDENT), OTHER)
    with pytest.raises(AdvertError) as e:
        codec.decode(wire)
    assert e.value.reason == "signature"


def test_claims_another_peer_id_rejected():
    forged = make(OTHER)
    forged = Advert(**{**forged.__dict__, "public_key": IDENT.key_pair.public_key.to_bytes()})
    with pytest.raises(AdvertError, match="does not match"):
        codec.decode(codec.encode(forged, IDENT))


def test_altered_body_rejected():
    outer = msgpack.unpackb(codec.encode(make(), IDENT))
    body = msgpack.unpackb(outer["b"])
    body["seq"] = 99
    outer["b"] = msgpack.packb(body, use_bin_type=True)
    with pytest.raises(AdvertError) as e:
        codec.decode(msgpack.packb(outer, use_bin_type=True))
    assert e.value.reason == "signature"


def test_unsigned_rejected():
    outer = msgpack.unpackb(codec.encode(make(), IDENT))
    del outer["s"]
    with pytest.raises(AdvertError) as e:
        codec.decode(msgpack.packb(outer, use_bin_type=True))
    assert e.value.reason == "malformed"


def test_oversized_rejected_before_parsing():
    with pytest.raises(AdvertError) as e:
        codec.decode(b"\x00" * (MAX_ADVERT_BYTES + 1))
    assert e.value.reason == "oversized"


def test_other_version_rejected():
    ad = Advert(**{**make().__dict__, "version": 2})
    with pytest.raises(AdvertError) as e:
        codec.decode(codec.encode(ad, IDENT))
    assert e.value.reason == "version"


def test_negative_load_rejected():
    bad = DeviceAdvert("0:0", "cpu", "v", "n", 1, 1, False, False, 1.0, 1.0, 1, -1, 0)
    ad = Advert(**{**make().__dict__, "devices": (bad,)})
    with pytest.raises(AdvertError, match=r">= 0"):
        codec.decode(codec.encode(ad, IDENT))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_only_raises_advert_error(data):
    try:
        codec.decode(data)
    except AdvertError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=255))
def test_single_byte_corruption_never_accepted_silently(pos, value):
    wire = bytearray(codec.encode(make(), IDENT))
    pos %= len(wire)
    if wire[pos] == value:
        return
    wire[pos] = value
    try:
        decoded = codec.decode(bytes(wire))
    except AdvertError:
        return
    # msgpack has a few equivalent encodings (e.g. of the outer map); anything that still verifies is the original.
    assert decoded == make()


def _signed(body: dict, ident=IDENT) -> bytes:
    raw = msgpack.packb(body, use_bin_type=True)
    return msgpack.packb({"b": raw, "s": ident.sign(raw)}, use_bin_type=True)


def test_device_opencl_limits_round_trip_and_older_or_newer_devices_decode():
    ad = make()
    dev = DeviceAdvert(**{**ad.devices[0].__dict__, "max_work_group_size": 256, "max_work_item_sizes": (256, 256, 64),
                          "max_alloc_bytes": 1 << 28, "local_mem_bytes": 65536, "opencl_version": "3.0",
                          "non_uniform_work_groups": True})
    full = Advert(**{**ad.__dict__, "devices": (dev,)})
    assert codec.decode(codec.encode(full, IDENT)) == full
    body = msgpack.unpackb(codec._body(full), raw=False)
    old = dict(body, devices=[body["devices"][0][:13]])  # a node from before the OpenCL limits
    got = codec.decode(_signed(old)).devices[0]
    assert got.max_work_group_size == 0 and got.opencl_version == "" and got.global_mem_bytes == 1 << 30
    newer = dict(body, devices=[body["devices"][0] + ["a field from the future"]])
    assert codec.decode(_signed(newer)).devices[0] == dev
    for bad in (body["devices"][0][:12], body["devices"][0][:14] + [["x"]]):
        with pytest.raises(AdvertError, match="malformed"):
            codec.decode(_signed(dict(body, devices=[bad])))
