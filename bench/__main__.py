"""Run benchmarks: `python -m bench` runs all, `python -m bench NAME` one.

Each `bench/<name>.py` exposes `run() -> dict` (the keys its issue names, JSON-serialisable) and optionally
`table(result) -> list[tuple[str, str]]` rows for bench/RESULTS.md. Results go to bench/results/NAME.json and
the NAME section of bench/RESULTS.md is replaced, stamped with the machine and date.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import platform
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SKIP = {"__init__", "__main__", "common"}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in SKIP and not p.stem.startswith("_"))  # _x: helpers


def update_markdown(name: str, result: dict, rows: list[tuple[str, str]]) -> None:
    md = HERE / "RESULTS.md"
    text = md.read_text() if md.exists() else "# Benchmark results\n\nWritten by `make bench`; one section per benchmark.\n"
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"## {name}", "", f"Machine: {machine()}. Run: {stamp}.", "", "| measure | value |", "|---|---|"]
    if not rows:
        rows = [(k, json.dumps(v)) for k, v in result.items()]
    body += [f"| {k} | {v} |" for k, v in rows]
    section = "\n".join(body) + "\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str]) -> int:
    wanted = argv or names()
    unknown = [n for n in wanted if n not in names()]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(names())}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for name in wanted:
        mod = importlib.import_module(f"bench.{name}")
        print(f"== bench {name}", flush=True)
        result = mod.run()
        result["machine"] = machine()
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        rows = mod.table(result) if hasattr(mod, "table") else []
        update_markdown(name, result, rows)
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
