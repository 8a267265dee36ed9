"""Property tests per message type: arbitrary well-framed input never raises past its decoder, and what it
accepts is typed and bounded. (Adverts and deltas: tests/test_wire_advert.py.)"""

import math

import msgpack
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.bigtcp import messages as m
from mesh.bigtcp.framing import Frame, FrameType, PeerProtocolError
from mesh.bigtcp.limits import MAX_HELLO_BYTES
from mesh.bigtcp.rpc import RpcServer
from scheduler.core import job as jobs
from scheduler.core.job import Accept, Cancel, Job, LeaseEntry, LeaseRenew, Offer, Reject, Result, WireError

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), st.binary(max_size=30))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                      max_leaves=10)

JOB = Job(kind="echo", spec={"a": 1}, job_id="j1", input=b"xy").to_wire(0.0)
RESULT = Result(job_id="j1", attempt=1, ok=True, body={"x": 1}, output_size=3, output_sha256="a" * 64, timings={"run_s": 0.1}).to_wire()
GOOD = {
    "job": (JOB, lambda d: Job.from_wire(d, 0.0)),
    "offer": (Offer(Job(kind="echo", job_id="j1"), 1, "0:0", 5.0).to_wire(0.0), lambda d: Offer.from_wire(d, 0.0)),
    "result": (RESULT, Result.from_wire),
    "accept": (Accept("j1", 1, "dev", 3).to_wire(), Accept.from_wire),
    "reject": (Reject("j1", 1, "busy").to_wire(), Reject.from_wire),
    "lease": (LeaseRenew((LeaseEntry("j1", 1, True),)).to_wire(), LeaseRenew.from_wire),
    "cancel": (Cancel("j1", 1, "x").to_wire(), Cancel.from_wire),
    "any": (JOB, lambda d: jobs.decode_message(d, 0.0)),
}


@st.composite
def mutated(draw, good):
    d = dict(good)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["set", "drop", "add"]))
        if op == "set" and d:
            d[draw(st.sampled_from(sorted(d)))] = draw(values)
        elif op == "drop" and d:
            d.pop(draw(st.sampled_from(sorted(d))))
        else:
            d[draw(st.text(max_size=8))] = draw(values)
    return d


def _bounded(obj) -> None:
    """What a decoder accepted: finite numbers, bounded strings (a cheap structural check)."""
    for v in vars(obj).values() if hasattr(obj, "__dict__") else ():
        if isinstance(v, float):
            assert math.isfinite(v), v
        if isinstance(v, str):
            assert len(v) <= 4096


def _check(name, d):
    _good, decode = GOOD[name]
    try:
        msg = decode(d)
    except WireError:
        return
    _bounded(msg)
    msgpack.packb(msg.to_wire(0.0) if name in ("job", "offer") else msg.to_wire(), use_bin_type=True)


for _name in GOOD:
    def _make(name):
        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(mutated(GOOD[name][0]))
        def test(d):
            _check(name, d)
        test.__name__ = f"test_{name}_mutations_are_typed_or_refused"
        return test

    globals()[f"test_{_name}_mutations_are_typed_or_refused"] = _make(_name)


@settings(max_examples=200, deadline=None)
@given(values)
def test_any_value_is_a_message_or_refused(v):
    try:
        jobs.decode_message(v, 0.0)
    except WireError:
        pass


@st.composite
def hello_payloads(draw):
    d = {"v": 1, "id": "x", "mf": 1 << 20, "w": 1 << 24, "ms": 8, "x": {"token": "t"}}
    for _ in range(draw(st.integers(0, 4))):
        k = draw(st.sampled_from(sorted(d) + ["a", "cw", "zz"]))
        d[k] = draw(values)
    return msgpack.packb(d, use_bin_type=True)


@settings(max_examples=300, deadline=None)
@given(st.one_of(hello_payloads(), st.binary(max_size=MAX_HELLO_BYTES + 64)))
def test_hello_payloads_are_typed_or_refused(payload):
    try:
        h = m.decode_control(Frame(FrameType.HELLO, 0, 0, payload))
    except PeerProtocolError:
        return
    assert isinstance(h, m.Hello) and len(payload) <= MAX_HELLO_BYTES
    assert isinstance(h.peer_id, str) and len(h.peer_id) <= 128 and 1 <= h.max_frame <= 0xFFFFFFFF
    assert isinstance(h.extra, dict) and len(h.extra) <= 8
    assert all(isinstance(v, str | bytes | int) and not isinstance(v, bool) for v in h.extra.values())


class _FakeStream:
    """Just what RpcServer needs from a stream: the request, and where the reply goes."""

    def __init__(self, req) -> None:
        self.req, self.sent, self.was_reset = req, [], False
        self.peer_id = "p"
        self._error = self._lost = None

    @property
    def buffered(self) -> int:  # the request is already here, as when it came with the stream's OPEN
        return 1

    async def receive_msg(self):
        return self.req

    async def send_msg(self, msg, *, end=False):
        self.sent.append(msg)

    def reset(self, reason="", code=0):
        self.was_reset = True

    def cancel_on_reset(self, scope):
        pass

    @property
    def connection(self):
        return self


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["id", "m", "b", "t", "x"]), values, max_size=5))
def test_rpc_envelopes_are_answered_or_refused(req):
    rpc = RpcServer()
    seen = []

    async def echo(call):
        seen.append(call.body)
        return {}

    rpc.register("echo", echo)
    s = _FakeStream(req)
    trio.run(rpc.handle_stream, s)
    assert s.sent and ("ok" in s.sent[-1] or "err" in s.sent[-1])
    if seen:  # reached the handler: typed and bounded
        assert isinstance(req["m"], str) and isinstance(seen[0], dict)
        t = req.get("t")
        assert t is None or (isinstance(t, int | float) and 0 < t <= 7 * 24 * 3600)
