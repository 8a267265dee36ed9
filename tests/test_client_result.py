"""The client's JobResult: the job's state and reason around the worker's own Result, decoded and checked by
Result.from_wire (a node's answer is input like any other: a result map that does not decode is refused)."""

import pytest

from scheduler.client.client import JobResult, _job_result
from scheduler.core.job import Result, WireError


def _answer(result: Result | dict | None, state: str = "done") -> dict:
    return {"id": "j1", "state": state, "reason": "", "final": True,
            "result": result.to_wire() if isinstance(result, Result) else result}


def test_the_result_the_worker_sent_reads_through():
    sent = Result({"sum": 3}, job_id="j1", attempt=2, worker="peerW", device="0:0", output_size=2,
                  output_sha256="ab" * 32, timings={"run_s": 0.5})
    res = _job_result("j1", _answer(sent), b"hi")
    assert isinstance(res, JobResult) and res.ok
    assert (res.body, res.output, res.worker, res.attempt, res.timings) == ({"sum": 3}, b"hi", "peerW", 2, {"run_s": 0.5})
    assert res.result.output_size == 2 and res.result.device == "0:0"


def test_a_job_without_a_result():
    res = _job_result("j1", _answer(None, state="failed"), b"")
    assert not res.ok and (res.body, res.output, res.worker, res.attempt, res.timings) == ({}, b"", "", 0, {})


@pytest.mark.parametrize("bad", [
    "not a map",
    {"v": 1, "t": "result", "id": "j1", "attempt": 1, "ok": True, "body": ["not", "a", "map"]},
    {"v": 1, "t": "result", "id": "j1", "attempt": 0, "ok": True},
    {"v": 2, "t": "result", "id": "j1", "attempt": 1, "ok": True},
    {"v": 1, "t": "result", "id": "j1", "attempt": 1, "ok": True, "timings": {"run_s": "slow"}},
])
def test_a_result_map_that_does_not_decode_is_refused(bad):
    with pytest.raises(WireError):
        _job_result("j1", _answer(bad), b"")
