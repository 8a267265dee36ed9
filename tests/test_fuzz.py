"""A short `make fuzz` run in `make test`: random and mutated adverts, HELLOs and RPCs at a live 3-node mesh."""

import subprocess
import sys


def test_short_fuzz_run_keeps_every_node_up():
    r = subprocess.run([sys.executable, "-m", "scheduler.devtools.fuzz", "--seconds", "15", "--seed", "16"],
                       capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "every node stayed up" in r.stdout
    sent = r.stdout.split("fuzz: sent ")[1].split()
    assert int(sent[0]) > 0 and int(sent[2]) > 0 and int(sent[4]) > 0  # adverts, HELLOs, RPCs all went out
