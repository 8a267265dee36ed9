"""Docs that run: every code block in docs/ marked `<!-- runnable -->` (or `<!-- runnable: mesh -->`: with a
local two-node mesh, found through $GPUMESH_DATA_DIR) is executed and must succeed; every `mesh-node COMMAND
--option` the docs mention must be an option of that command; docs and the Makefile agree on the compose command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.devtools.localmesh import running_mesh

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
MARK = re.compile(r"<!--\s*runnable(?::\s*(?P<tags>[\w ,]+))?\s*-->\s*\n```(?P<lang>\w+)\n(?P<code>.*?)\n```", re.S)
GENERATED = re.compile(r"<!-- BEGIN GENERATED.*?<!-- END GENERATED[^>]*-->", re.S)


def runnable_blocks() -> list[tuple[str, int, set[str], str, str]]:
    out = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for m in MARK.finditer(text):
            line = text[: m.start()].count("\n") + 1
            tags = {t.strip() for t in (m.group("tags") or "").replace(",", " ").split() if t.strip()}
            out.append((page.name, line, tags, m.group("lang"), m.group("code")))
    return out


BLOCKS = runnable_blocks()


def test_the_marked_blocks_are_found():
    pages = {b[0] for b in BLOCKS}
    assert {"compute.md"} <= pages and len(BLOCKS) >= 2
    assert all(lang in ("python", "sh") for _, _, _, lang, _ in BLOCKS)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("docs"), 2, ["--advert-interval", "0.5"]) as nodes:
        yield nodes


def _run(lang: str, code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, **env})


@pytest.mark.parametrize("page,line,tags,lang,code", BLOCKS, ids=[f"{b[0]}:{b[1]}" for b in BLOCKS])
def test_runnable_block(page, line, tags, lang, code, request):
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # mesh-node of this checkout
    if "mesh" in tags:
        nodes = request.getfixturevalue("mesh")
        env["GPUMESH_DATA_DIR"] = str(nodes[0].data_dir)
    r = _run(lang, code, env)
    assert r.returncode == 0, f"{page}:{line} failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


def _options() -> dict[str, set[str]]:
    """--options of each mesh-node command (subcommands as 'token create'), and of the top level ('')."""
    import argparse

    from scheduler.cli.main import build_parser

    out: dict[str, set[str]] = {}

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        out[name] = {s for a in p._actions for s in a.option_strings if s.startswith("--")}
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, sp in a.choices.items():
                    walk(sp, f"{name} {sub}".strip())

    walk(build_parser(), "")
    return out


SKIP_WORDS = {"COMMAND", "command", "commands", "process", "processes", "and", "or", "is", "the", "run's"}


def wrong_options(name: str, text: str, opts: dict[str, set[str]]) -> list[str]:
    wrong = []
    for n, line in enumerate(GENERATED.sub("", text).splitlines(), 1):
        for m in re.finditer(r"mesh-node ([a-z][a-z-]*|[A-Z]+)(?: ([a-z][a-z-]*))?([^`|\n]*)", line):
            cmd = m.group(1)
            if cmd not in opts:
                if cmd not in SKIP_WORDS:
                    wrong.append(f"{name}:{n}: mesh-node {cmd}: no such command")
                continue
            sub = f"{cmd} {m.group(2)}" if m.group(2) and f"{cmd} {m.group(2)}" in opts else cmd
            for o in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(3)):
                if o not in opts[sub] and o not in opts[""]:
                    wrong.append(f"{name}:{n}: mesh-node {sub} has no {o}")
    return wrong


def test_every_mesh_node_option_the_docs_mention_exists():
    opts = _options()
    wrong = [w for page in sorted(DOCS.glob("*.md")) for w in wrong_options(page.name, page.read_text(), opts)]
    assert not wrong, "\n".join(wrong)


def test_the_option_check_finds_wrong_options():
    opts = _options()
    text = "Run `mesh-node jobs --state done --colour red` or `mesh-node frobnicate`; `mesh-node token create --name x`."
    assert wrong_options("x.md", text, opts) == ["x.md:1: mesh-node jobs has no --colour",
                                                 "x.md:1: mesh-node frobnicate: no such command"]


def test_docs_and_makefile_agree_on_the_compose_command():
    makefile = (REPO / "Makefile").read_text()
    assert "docker-compose" in re.search(r"APT_PACKAGES :=(.*)", makefile).group(1)
    for path in [*DOCS.glob("*.md"), REPO / "README.md", *(REPO / "deploy").glob("docker-*")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "docker compose " in line and "Compose v2 plugin" not in line:
                pytest.fail(f"{path.name}:{n} uses `docker compose` (v2); the docs and Makefile use docker-compose")


def test_feature_statements_match_the_code():
    """The statements the issue found wrong: which kinds have a CPU reference path, and avoid_peers."""
    from worker.compute.kind import register_kind
    from worker.kinds import KindRegistry, Requirements

    reg = KindRegistry()
    register_kind(reg)
    with pytest.raises(NotImplementedError):
        reg.get("compute.opencl").reference({}, b"")
    kinds_page = " ".join((DOCS / "job-kinds.md").read_text().split())
    assert "Every built-in kind except `compute.opencl` has a plain-CPU reference path" in kinds_page
    assert Requirements(avoid_peers=("x",)).avoid_peers == ("x",)  # the scheduler has the field
    compute_page = " ".join((DOCS / "compute.md").read_text().split())
    assert "does not have that field yet" not in compute_page and "`Requirements.avoid_peers`" in compute_page
