"""`make stress-test`'s driver: the command runs while busy loops load the cores, and the loops are gone on
every path out (the command ends or fails, the driver is stopped, or killed outright)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from scheduler.devtools.localmesh import wait_for

REPO = Path(__file__).resolve().parent.parent
DRIVER = [sys.executable, "-m", "scheduler.devtools.stress", "--busy", "2", "--"]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def busy_pids(text: str) -> list[int]:
    return [int(x) for x in text.split()]


def test_the_command_runs_under_load_and_its_status_is_returned():
    show = "import os, sys; print(os.environ['GPUMESH_STRESS_PIDS']); sys.exit(7)"
    r = subprocess.run([*DRIVER, sys.executable, "-c", show], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 7, r.stderr
    pids = busy_pids(r.stdout)
    assert len(pids) == 2
    assert not any(alive(p) for p in pids)


def test_busy_loops_really_burn_cpu():
    probe = ("import os, time; pids = os.environ['GPUMESH_STRESS_PIDS'].split(); time.sleep(1.0); "
             "print(' '.join(open(f'/proc/{p}/stat').read().split(')')[-1].split()[11] for p in pids))")
    r = subprocess.run([*DRIVER, sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(int(t) > 0 for t in r.stdout.split())  # user-mode clock ticks used by each loop


def test_busy_loops_end_when_the_driver_is_killed_outright(tmp_path):
    pids_file = tmp_path / "pids"
    wait = f"import os, time; open({str(pids_file)!r}, 'w').write(os.environ['GPUMESH_STRESS_PIDS']); time.sleep(600)"
    driver = subprocess.Popen([*DRIVER, sys.executable, "-c", wait], cwd=REPO, start_new_session=True)
    try:
        wait_for(lambda: pids_file.exists() and pids_file.read_text(), 60, "the command to start")
        pids = busy_pids(pids_file.read_text())
        assert all(alive(p) for p in pids)
        driver.send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel and the loops' own check must
        driver.wait()
        wait_for(lambda: not any(alive(p) for p in pids), 60, "the busy loops to end")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the command (sleep) too
        driver.wait()


def test_sigterm_to_the_driver_stops_the_command_and_the_loops(tmp_path):
    pids_file = tmp_path / "pids"
    wait = f"import os, time; open({str(pids_file)!r}, 'w').write(os.environ['GPUMESH_STRESS_PIDS'] + ' ' + str(os.getpid())); time.sleep(600)"
    driver = subprocess.Popen([*DRIVER, sys.executable, "-c", wait], cwd=REPO)
    wait_for(lambda: pids_file.exists() and pids_file.read_text(), 60, "the command to start")
    pids = busy_pids(pids_file.read_text())
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(60) == 143
    assert not any(alive(p) for p in pids)
