import hashlib

import msgpack
import pytest

from scheduler.core.job import (
    INLINE_INPUT_LIMIT,
    WIRE_VERSION,
    Accept,
    Cancel,
    Job,
    JobState,
    LeaseEntry,
    LeaseRenew,
    Offer,
    Priority,
    Reject,
    Requirements,
    Result,
    WhenSaturated,
    WireError,
    decode_message,
)


def roundtrip(d):
    """Through msgpack, as on the wire."""
    return msgpack.unpackb(msgpack.packb(d, use_bin_type=True), raw=False)


def test_job_roundtrip_with_inline_input_and_requirements():
    req = Requirements(device_kind="gpu", min_memory_bytes=16 << 30, fp64=True, min_mulmod_mops=100.0)
    j = Job("checksum", {"a": 1}, job_id="client-7", input=b"hello", requirements=req,
            priority=Priority.INTERACTIVE, timeout_s=30, max_attempts=2, submitted_by="alice",
            when_saturated=WhenSaturated.REJECT).validate()
    assert j.input_size == 5
    back = Job.from_wire(roundtrip(j.to_wire()))
    assert back == j


def test_deadline_is_relative_on_the_wire():
    j = Job("echo", job_id="x", priority="realtime", deadline=1000.5)
    d = roundtrip(j.to_wire(now=1000.0))
    assert d["deadline_ms"] == pytest.approx(500.0)
    # received on a clock where "now" is 7.0: the deadline is rebased
    back = Job.from_wire(d, now=7.0)
    assert back.deadline == pytest.approx(7.5)
    with pytest.raises(ValueError, match="needs `now`"):
        j.to_wire()


def test_streamed_input_needs_hash_and_inline_limit():
    with pytest.raises(WireError) as e:
        Job("checksum", input=b"x" * (INLINE_INPUT_LIMIT + 1)).validate()
    assert e.value.reason == "input_too_large"
    with pytest.raises(WireError, match="input_sha256"):
        Job("checksum", input_size=10).validate()
    h = hashlib.sha256(b"0123456789").hexdigest()
    j = Job("checksum", input_size=10, input_sha256=h).validate()
    assert not j.inline
    # an inline job sent without its bytes (the input streams separately) carries its content address
    d = Job("checksum", input=b"0123456789").to_wire(with_input=False)
    assert d["input_sha256"] == h and "input" not in d


def test_version_and_type_checked_with_clear_errors():
    d = Job("echo", job_id="a").to_wire()
    d["v"] = WIRE_VERSION + 1
    with pytest.raises(WireError) as e:
        Job.from_wire(d)
    assert e.value.reason == "version" and "not supported" in str(e.value)
    with pytest.raises(WireError, match="expected a 'job'"):
        Job.from_wire({**Job("echo").to_wire(), "t": "result"})
    with pytest.raises(WireError, match="kind"):
        Job.from_wire({"v": WIRE_VERSION, "t": "job", "kind": 5})


@pytest.mark.parametrize("patch,match", [
    ({"prio": "urgent"}, "priority"),
    ({"prio": "realtime"}, "deadline"),
    ({"deadline_ms": 10.0}, "only realtime"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": True}, "max_attempts"),
    ({"id": "bad id with spaces"}, "job id"),
    ({"req": {"device_kind": "tpu"}}, "device kind"),
    ({"req": {"colour": "red"}}, "unknown field"),
    ({"req": {"fp64": 1}}, "'fp64' must be bool"),
    ({"req": [1]}, "must be a map"),
    ({"spec": [1, 2]}, "spec"),
    ({"timeout_s": float("nan")}, "finite"),
])
def test_invalid_jobs_rejected(patch, match):
    d = {**Job("echo", job_id="ok").to_wire(), **patch}
    with pytest.raises(WireError, match=match):
        Job.from_wire(roundtrip(d))


def test_requirements_describe_and_merge():
    r = Requirements(device_kind="gpu", min_memory_bytes=16 << 30)
    assert r.describe() == "a gpu with >= 16 GiB"
    assert Requirements().describe() == "a device"
    m = r.merged(Requirements(fp64=True, min_memory_bytes=8 << 30))
    assert m == Requirements(device_kind="gpu", min_memory_bytes=16 << 30, fp64=True)
    with pytest.raises(ValueError, match="conflicting"):
        r.merged(Requirements(device_kind="cpu"))
    # the kinds registry's dict form is accepted as is
    assert Requirements.from_wire({"device_kind": "cpu", "min_f32_gflops": 2.0, "opencl": True}).opencl


def test_messages_roundtrip_through_decode_message():
    job = Job("echo", {"k": "v"}, job_id="j1", priority="realtime", deadline=12.0)
    msgs = [
        Accept("j1", 2, "0:1", queue_position=3, load={"0:1": (0, 4)}),
        Reject("j1", 2, "queue full", {"0:0": (0, 9), "0:1": (1, 0)}),
        LeaseRenew((LeaseEntry("j1", 2, True), LeaseEntry("j2", 1, False))),
        Cancel("j1", 2, "cancelled by client"),
        Result(job_id="j1", attempt=2, ok=True, body={"sum": 3}, output_size=10, output_sha256="ab" * 32, worker="peerX",
               device="0:1", timings={"run_s": 0.5}),
        Result(job_id="j1", attempt=3, ok=False, error="device lost", retryable=True),
    ]
    for m in msgs:
        assert decode_message(roundtrip(m.to_wire())) == m
    o = Offer(job, 2, "0:1", lease_s=6.0, max_wait_s=0.25, est_run_s=0.5, coordinator="C")
    back = decode_message(roundtrip(o.to_wire(now=10.0)), now=100.0)
    assert isinstance(back, Offer) and back.job.deadline == pytest.approx(102.0)
    assert back.attempt == 2 and back.max_wait_s == 0.25 and back.est_run_s == 0.5 and back.coordinator == "C"
    assert decode_message(roundtrip(Offer(job, 1, "d", 3.0).to_wire(now=10.0))).max_wait_s is None


def test_bad_messages():
    with pytest.raises(WireError, match="unknown message type"):
        decode_message({"v": 1, "t": "nope"})
    with pytest.raises(WireError, match="attempt"):
        decode_message({"v": 1, "t": "cancel", "id": "j", "attempt": 0})
    with pytest.raises(WireError, match="load"):
        decode_message({"v": 1, "t": "reject", "id": "j", "attempt": 1, "load": {"d": [-1, 0]}})
    with pytest.raises(WireError, match="lease"):
        decode_message({"v": 1, "t": "lease", "jobs": [["j", "1", True]]})
    with pytest.raises(WireError, match="no id"):
        decode_message(Offer(Job("echo"), 1, "d", 3.0).to_wire())


def test_states():
    assert [s for s in JobState if s.terminal] == [JobState.DONE, JobState.FAILED, JobState.CANCELLED]
    assert Priority.REALTIME.rank < Priority.INTERACTIVE.rank < Priority.BATCH.rank
    assert len(Job("echo").with_id().job_id) == 32
    assert Job("echo").with_id(lambda: "abc-1").job_id == "abc-1"
