"""zk.prove job specs: good ones normalised, bad ones refused with a message naming the problem."""

import re

import pytest

from worker import zk

GOOD = {"air": "cubic", "public_inputs": {"x0": 2, "c": 9}, "steps": 1024}


def test_defaults_filled_in():
    spec = zk.validate_spec(GOOD)
    assert spec == {**GOOD, "blowup": 8, "queries": 30, "grinding": 16}
    assert zk.validate_spec({**GOOD, "blowup": 8, "queries": 28, "grinding": 20})["queries"] == 28


@pytest.mark.parametrize(
    "change,message",
    [
        ({"air": "sha256"}, "unknown AIR 'sha256'; known: cubic, fibonacci, membership"),
        ({"steps": 1000}, "steps must be a power of two"),
        ({"steps": 4}, "steps must be a power of two between 8"),
        ({"steps": 1 << 23}, "steps must be a power of two"),
        ({"steps": "1024"}, "steps must be an integer"),
        ({"blowup": 3}, "blowup must be one of (2, 4, 8)"),
        ({"blowup": 16}, "blowup must be one of"),
        ({"steps": 1 << 22, "blowup": 8}, "exceeds the 2^24"),
        ({"queries": 0}, "queries must be between 1 and 128"),
        ({"queries": 4, "blowup": 4}, "below the 100-bit floor"),
        ({"grinding": 0}, "89 bits of conjectured security, below the 100-bit floor"),
        ({"grinding": 25}, "grinding must be between 0 and 24"),
        ({"witness": {"secret": [1]}}, "takes no private witness"),
        ({"queries": True}, "queries must be an integer"),
        ({"public_inputs": {"x0": 2}}, "missing ['c']"),
        ({"public_inputs": {"x0": 2, "c": 9, "y": 1}}, "unexpected ['y']"),
        ({"public_inputs": {"x0": -1, "c": 9}}, "public input 'x0' must be an integer in [0, p)"),
        ({"public_inputs": {"x0": 2**64, "c": 9}}, "in [0, p)"),
        ({"public_inputs": [2, 9]}, "public_inputs must be a map"),
        ({"colour": "red"}, "unknown zk spec field(s) ['colour']"),
    ],
)
def test_bad_specs(change, message):
    with pytest.raises(ValueError) as err:
        zk.validate_spec({**GOOD, **change})
    assert message in str(err.value)


def test_missing_and_non_map():
    with pytest.raises(ValueError, match="needs 'steps'"):
        zk.validate_spec({"air": "cubic", "public_inputs": {"x0": 1, "c": 1}})
    with pytest.raises(ValueError, match="must be a map"):
        zk.validate_spec([GOOD])


def test_prove_spec_and_inspect():
    proof = zk.prove_spec({"air": "fibonacci", "public_inputs": {"a": 0, "b": 1}, "steps": 16})
    info = zk.inspect(proof)
    assert info["air"] == "fibonacci" and info["public"]["out"] == 987 and info["bytes"] == len(proof)
    assert info["security_bits"] == 105 and info["provable_bits"] > 40 and info["grinding"] == 16
    assert zk.verify(proof).ok


def test_expected_statements_are_bounded_and_typed():
    from worker.zk.spec import validate_expect

    assert validate_expect({"air": "cubic", "public_inputs": {"out": 5}}) == {"air": "cubic", "public_inputs": {"out": 5}}
    for bad, msg in (({"witness": {}}, "unknown expected-statement"), ({"steps": "8"}, "must be an integer"),
                     ({"public_inputs": {"x": -1}}, "in [0, p)"), ({"air": "sha"}, "unknown AIR"),
                     ({"public_inputs": {str(i): 1 for i in range(65)}}, "at most 64")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            validate_expect(bad)
