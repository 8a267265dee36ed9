"""`mesh-node prove --local` / `mesh-node verify` and the zk.verify job kind: the statement is printed, --expect
pins it, and nothing below the security floor is proven or called valid."""

import json

import pytest

from scheduler.cli.main import main
from worker import zk
from worker.kinds import SpecError
from worker.zk import gpu
from worker.zk import membership as MB
from worker.zk import security as SEC
from worker.zk.kind import ZkVerify


def test_prove_local_then_verify_prints_the_statement(tmp_path, capsys):
    out = tmp_path / "p.bin"
    assert main(["prove", "cubic", "--steps", "64", "--public", "x0=3", "--public", "c=5", "--local", "--numpy",
                 "--out", str(out)]) == 0
    assert "numpy (--numpy)" in capsys.readouterr().out
    assert main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    want = zk.verify(out.read_bytes()).public["out"]
    assert text.startswith("VALID") and f"cubic(x0=3, c=5, out={want}) over 64 steps" in text
    assert "105 bits conjectured" in text and "bits provable" in text and "grinding 16" in text
    assert main(["verify", str(out), "--expect", "air=cubic", "--expect", "x0=3", "--expect", f"out={want}"]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--expect", "x0=4"]) == 1
    text = capsys.readouterr().out
    assert text.startswith("INVALID") and "public value x0=3, expected 4" in text and "statement: cubic(" in text
    assert main(["verify", str(out), "--expect", "steps=128"]) == 1
    assert main(["verify", str(out), "--expect", "x0=three"]) == 2
    capsys.readouterr()
    assert main(["verify", str(out), "--json", "--expect", "c=5"]) == 0
    assert json.loads(capsys.readouterr().out)["expected"] == {"public_inputs": {"c": 5}}


def test_verify_json_has_both_security_figures(tmp_path, capsys):
    out = tmp_path / "p.bin"
    out.write_bytes(zk.prove("fibonacci", {"a": 1, "b": 1}, 64))
    capsys.readouterr()
    assert main(["verify", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] and d["security_bits"] == 105 and 40 < d["provable_bits"] < 105
    assert d["statement"].startswith("fibonacci(a=1, b=1, out=") and d["params"]["grinding"] == 16


def test_floor_in_the_cli_and_the_job_kind(tmp_path, capsys, monkeypatch):
    assert main(["prove", "cubic", "--steps", "64", "--queries", "4", "--blowup", "4", "--local"]) == 2
    assert "below the 100-bit floor" in capsys.readouterr().err
    monkeypatch.setattr(SEC, "MIN_SECURITY_BITS", 0)
    weak = zk.prove("cubic", {"x0": 3, "c": 5}, 64, blowup=4, queries=4, grinding=0)
    monkeypatch.undo()
    out = tmp_path / "weak.bin"
    out.write_bytes(weak)
    assert main(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert text.startswith("INVALID") and "below the 100-bit floor" in text and "7 bits conjectured" in text
    res = ZkVerify().reference({"min_security_bits": 0}, weak)
    assert not res.body["ok"] and "below the 100-bit floor" in res.body["reason"]
    with pytest.raises(SpecError):
        ZkVerify().validate({"min_security_bits": "0"}, len(weak))
    with pytest.raises(SpecError):
        ZkVerify().validate({"expect": {"witness": 1}}, len(weak))
    good = zk.prove("cubic", {"x0": 3, "c": 5}, 64)
    res = ZkVerify().reference({"expect": {"public_inputs": {"x0": 3}}}, good)
    assert res.body["ok"] and res.body["statement"].startswith("cubic(x0=3") and res.body["provable_bits"] > 0


def test_prove_local_uses_opencl_when_there_is_a_device(tmp_path, capsys):
    if gpu.default_queue() is None:
        pytest.skip("no OpenCL device")
    out = tmp_path / "p.bin"
    assert main(["prove", "fibonacci", "--steps", "64", "--local", "--out", str(out)]) == 0
    assert "on this machine, OpenCL (" in capsys.readouterr().out
    assert zk.verify(out.read_bytes()).ok


def test_membership_from_the_cli(tmp_path, capsys):
    root, wits = MB.make_tree([[i, i + 1, i + 2, i + 3] for i in range(4)])
    wfile = tmp_path / "w.json"
    wfile.write_text(json.dumps(wits[2]))
    out = tmp_path / "m.bin"
    pub = ["--public", "depth=2"] + [a for i in range(4) for a in ("--public", f"root{i}={root[i]}")]
    assert main(["prove", "membership", "--steps", "512", *pub, "--local", "--numpy", "--out", str(out)]) == 2
    assert "needs --witness" in capsys.readouterr().err
    assert main(["prove", "membership", "--steps", "512", *pub, "--witness", str(wfile), "--local", "--numpy",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--expect", f"root0={root[0]}", "--expect", "depth=2"]) == 0
    assert f"membership(depth=2, root0={root[0]}" in capsys.readouterr().out
    assert main(["verify", str(out), "--expect", f"root0={(root[0] + 1) % zk.field.P}"]) == 1
