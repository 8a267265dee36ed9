#!/usr/bin/env python3
"""Operations toolkit: what a real node exports, which metrics a PromQL expression uses, and the generated parts
of the docs (configuration, CLI and metrics references).

    .venv/bin/python deploy/opskit.py metrics            # start a node, print the metric families it exports
    .venv/bin/python deploy/opskit.py docs               # regenerate the generated blocks in docs/*.md
    .venv/bin/python deploy/opskit.py docs --check       # exit 1 when a generated block is out of date

The tests load this file by path (tests/test_deploy.py, test_prometheus.py, test_docs.py): it is a script, not
a package, so `deploy/` never shadows anything on sys.path.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
DEPLOY = REPO / "deploy"


# ---- the exposition format of a real node ---------------------------------------------------------------------
@dataclass
class Family:
    name: str            # as on the TYPE line (counters keep their _total, info metrics their _info)
    type: str
    help: str = ""
    labels: set[str] = field(default_factory=set)
    samples: set[str] = field(default_factory=set)

    def series_names(self) -> set[str]:
        """Every name PromQL may select from this family, whether or not it has samples yet."""
        names = {self.name} | self.samples
        if self.type == "histogram":
            names |= {self.name + s for s in ("_bucket", "_sum", "_count")}
        elif self.type == "summary":
            names |= {self.name + s for s in ("_sum", "_count")}
        return names


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')


def parse_exposition(text: str) -> dict[str, Family]:
    """Families of a Prometheus text exposition, keyed by TYPE-line name. `_created` gauges (a prometheus-client
    detail of counters/histograms) are folded into their family."""
    fams: dict[str, Family] = {}
    helps: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, h = line[7:].partition(" ")
            helps[name] = h
        elif line.startswith("# TYPE "):
            name, _, typ = line[7:].partition(" ")
            if name.endswith("_created") and typ == "gauge":
                continue
            fams[name] = Family(name, typ.strip(), helps.get(name, ""))
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            if not m:
                continue
            sname = m.group(1)
            fam = _family_of(sname, fams)
            if fam is not None:
                fam.samples.add(sname)
                fam.labels |= {lbl for lbl in _LABEL.findall(m.group(3) or "") if lbl not in ("le", "quantile")}
    return fams


def _family_of(sample: str, fams: dict[str, Family]) -> Family | None:
    if sample in fams:
        return fams[sample]
    for suffix in ("_bucket", "_sum", "_count", "_created", "_total"):
        if sample.endswith(suffix):
            base = sample[: -len(suffix)]
            for cand in (base, base + "_total"):
                if cand in fams:
                    return fams[cand]
    return None


def exported_names(fams: dict[str, Family]) -> set[str]:
    out: set[str] = set()
    for f in fams.values():
        out |= f.series_names()
    return out


def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


@contextlib.contextmanager
def running_nodes(n: int = 2, extra: tuple[str, ...] = ("--advert-interval", "0.5")) -> Iterator[list]:
    """Start n real nodes on loopback (scheduler.devtools.localmesh), wait until they see each other, yield them."""
    sys.path.insert(0, str(REPO))
    from scheduler.devtools.localmesh import running_mesh

    with tempfile.TemporaryDirectory(prefix="gm-ops-") as root, running_mesh(Path(root), n, list(extra), 120) as nodes:
        yield nodes


@functools.cache
def node_families(n: int = 2) -> dict[str, Family]:
    """Metric families a real node exports after it has joined a mesh of n nodes (cached per process: the
    tests of one run share one scrape; do not mutate the result)."""
    with running_nodes(n) as nodes:
        return parse_exposition(scrape(f"http://127.0.0.1:{nodes[0].metrics_port}/metrics"))


def own_families(fams: dict[str, Family]) -> dict[str, Family]:
    return {k: v for k, v in fams.items() if k.startswith("gpumesh_")}


# ---- PromQL: which series names does an expression select? ----------------------------------------------------
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile", "limitk", "limit_ratio"}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_count",
    "histogram_fraction", "histogram_quantile", "histogram_sum", "histogram_stddev", "histogram_stdvar",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10",
    "minute", "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt",
    "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan",
    "tanh", "deg", "rad", "pi", "label_values", "label_names", "metrics", "query_result",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
            "bool", "inf", "nan", "atan2", "start", "end"}
_GRAFANA_VARS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")
_VARS = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]*\]\]")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*")


class PromQLNameError(ValueError):
    pass


def substitute_grafana_vars(expr: str) -> str:
    expr = _GRAFANA_VARS.sub("1m", expr)
    return _VARS.sub("x", expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects. Raises PromQLNameError on a call of an unknown function."""
    s = substitute_grafana_vars(expr)
    s = _STRINGS.sub('""', s)
    s = re.sub(r"\{[^}]*\}", " ", s)          # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)          # ranges, subqueries
    s = _GROUPING.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        tok = m.group(0)
        rest = s[m.end():].lstrip()
        if tok in KEYWORDS or tok.lower() in ("inf", "nan"):
            continue
        if rest.startswith("("):
            if tok not in FUNCTIONS and tok not in AGGREGATIONS:
                raise PromQLNameError(f"unknown PromQL function {tok!r} in {expr!r}")
            continue
        if tok in AGGREGATIONS:  # `sum by (x) (...)` after the grouping was removed
            continue
        names.add(tok)
    return names


_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUP_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
TARGET_LABELS = {"job", "instance", "role", "__name__"}  # added by Prometheus / our scrape config


def promql_label_refs(expr: str) -> set[str]:
    """Label names an expression matches on or groups by."""
    s = _STRINGS.sub('""', substitute_grafana_vars(expr))
    out: set[str] = set()
    for block in re.findall(r"\{([^}]*)\}", s):
        out |= set(_MATCHER.findall(block))
    for lst in _GROUP_LISTS.findall(s):
        out |= {x.strip() for x in lst.split(",") if x.strip()}
    return out


def series_labels(fams: dict[str, Family]) -> dict[str, set[str]]:
    """Series name -> label names it may carry (seen in the scrape, or declared by the metric's definition)."""
    reg = registry_labels()
    out: dict[str, set[str]] = {}
    for f in fams.values():
        declared = set(reg.get(f.name, ())) | set(reg.get(f.name.removesuffix("_total"), ()))
        for name in f.series_names():
            extra = {"le"} if name.endswith("_bucket") else set()
            out[name] = set(f.labels) | declared | extra
    return out


# ---- dashboards ---------------------------------------------------------------------------------------------
def dashboard_files() -> list[Path]:
    return sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))


def iter_panels(dash: dict) -> Iterator[dict]:
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])  # collapsed rows keep their panels inside


def dashboard_queries(dash: dict) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and query variable of a dashboard JSON."""
    out = []
    for p in iter_panels(dash):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"{dash.get('title')} / {p.get('title')} / {t.get('refId')}", t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            inner = re.match(r"^\s*label_values\((.*),\s*[a-zA-Z_]\w*\s*\)\s*$", q or "")
            out.append((f"{dash.get('title')} / variable {v.get('name')}", inner.group(1) if inner else q))
    return out


# ---- alert rules --------------------------------------------------------------------------------------------
def rule_files() -> list[Path]:
    return sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))


def load_rules() -> list[dict]:
    import yaml

    rules = []
    for f in rule_files():
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                rules.append({**r, "group": g["name"], "file": f.name})
    return rules


# ---- generated documentation --------------------------------------------------------------------------------
BEGIN = "<!-- BEGIN GENERATED: {} (deploy/opskit.py docs) -->"
END = "<!-- END GENERATED: {} -->"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_config_reference() -> str:
    sys.path.insert(0, str(REPO))
    from scheduler.node.config import NodeSettings

    rows = ["| option | environment | default | description |", "|---|---|---|---|"]
    for name, f in NodeSettings.model_fields.items():
        default = f.default_factory() if f.default_factory else f.default  # type: ignore[call-arg]
        if name == "data_dir":
            default = "$XDG_DATA_HOME/gpumesh (~/.local/share/gpumesh)"
        elif name == "advert_ttl":
            default = "3 × advert-interval"
        shown = "none" if default in (None, "", []) else (", ".join(default) if isinstance(default, list) else default)
        if isinstance(default, bool):
            shown = str(default).lower()
        rows.append(f"| `--{name.replace('_', '-')}` | `GPUMESH_{name.upper()}` | `{_md_escape(str(shown))}` | "
                    f"{_md_escape(f.description or '')} |")
    return "\n".join(rows)


HELP_ENV = {"COLUMNS": "100", "XDG_DATA_HOME": "$XDG_DATA_HOME"}  # same text on every machine


@contextlib.contextmanager
def _help_env() -> Iterator[None]:
    saved = dict(os.environ)
    for k in [k for k in os.environ if k.startswith("GPUMESH_")]:
        del os.environ[k]
    os.environ.update(HELP_ENV)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def cli_help_subprocess(*args: str) -> str:
    """`mesh-node ARGS --help` as a user sees it (a real process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMESH_")} | HELP_ENV | {"PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "scheduler.cli", *args, "--help"], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"mesh-node {' '.join(args)} --help failed: {r.stderr}")
    return r.stdout.rstrip()


def cli_parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)parser of mesh-node by command path, depth first; () is the top level."""
    sys.path.insert(0, str(REPO))
    from scheduler.cli.main import build_parser

    out: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        out[prefix] = parser
        for action in parser._actions:  # noqa: SLF001 - argparse has no public API for subcommands
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, sub in action.choices.items():
                    walk(sub, (*prefix, name))

    with _help_env():
        walk(build_parser(), ())
    return out


def cli_help(*path: str) -> str:
    """The help text of `mesh-node PATH --help`, rendered in this process (the same argparse formatting)."""
    parsers = cli_parsers()
    with _help_env():
        return parsers[tuple(path)].format_help().rstrip()


def cli_commands() -> list[list[str]]:
    return [list(p) for p in cli_parsers() if p]


def render_cli_reference() -> str:
    parsers = cli_parsers()
    with _help_env():
        parts = ["```text", "$ mesh-node --help", parsers[()].format_help().rstrip(), "```"]
        for path, parser in parsers.items():
            if path:
                cmd = " ".join(path)
                parts += ["", f"### mesh-node {cmd}", "", "```text", f"$ mesh-node {cmd} --help",
                          parser.format_help().rstrip(), "```"]
    return "\n".join(parts)


def registry_labels() -> dict[str, list[str]]:
    """Label names of every metric family the node's code defines (scrapes only show the labels of families
    that already have a child). Imports every module of mesh/, scheduler/ and worker/ that uses
    prometheus_client, so families a node registers lazily are included too."""
    import importlib

    sys.path.insert(0, str(REPO))
    for pkg in ("mesh", "scheduler", "worker"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "prometheus_client" in path.read_text(errors="replace"):
                parts = path.relative_to(REPO).with_suffix("").parts
                importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    from prometheus_client import REGISTRY

    out: dict[str, list[str]] = {}
    for collector in set(REGISTRY._names_to_collectors.values()):  # noqa: SLF001
        if hasattr(collector, "_labelnames"):
            labels = list(collector._labelnames)  # noqa: SLF001
            for name in REGISTRY._collector_to_names.get(collector, ()):  # noqa: SLF001
                out[name] = labels
        elif hasattr(collector, "describe"):  # custom collectors describe their families
            for fam in collector.describe():
                labels = list(getattr(fam, "_labelnames", ()))
                for suffix in ("", "_total"):
                    out[fam.name + suffix] = labels
    return out


def render_metrics_catalogue(fams: dict[str, Family]) -> str:
    reg = registry_labels()
    rows = ["| metric | type | labels | description |", "|---|---|---|---|"]
    for name in sorted(own_families(fams)):
        f = fams[name]
        label_names = set(f.labels) | set(reg.get(name, ())) | set(reg.get(name.removesuffix("_total"), ()))
        labels = ", ".join(f"`{x}`" for x in sorted(label_names)) or "—"
        rows.append(f"| `{name}` | {f.type} | {labels} | {_md_escape(f.help)} |")
    return "\n".join(rows)


def render_advert_reference() -> str:
    sys.path.insert(0, str(REPO))
    from dataclasses import fields

    from mesh import advert, gossip

    lines = [f"Topic `{gossip.TOPIC}`, advert version {advert.ADVERT_VERSION}, at most {advert.MAX_ADVERT_BYTES} bytes "
             f"and {advert.MAX_DEVICES} devices.", "", "| advert field | type |", "|---|---|"]
    lines += [f"| `{f.name}` | `{f.type}` |" for f in fields(advert.Advert)]
    lines += ["", "| device field (in order) | type |", "|---|---|"]
    lines += [f"| `{f.name}` | `{f.type}` |" for f in fields(advert.DeviceAdvert)]
    return "\n".join(lines)


def render_frame_reference() -> str:
    sys.path.insert(0, str(REPO))
    from mesh.bigtcp import framing, messages

    lines = [f"Magic `{framing.MAGIC.decode()}`, version {framing.VERSION}, header {framing.HEADER_SIZE} bytes, "
             f"default maximum frame {framing.DEFAULT_MAX_FRAME // (1024 * 1024)} MiB.", "",
             "| frame type | value | stream | flags allowed |", "|---|---|---|---|"]
    for t in framing.FrameType:
        flags = framing._ALLOWED_FLAGS[t]  # noqa: SLF001
        names = [n for n, bit in (("END", framing.FLAG_END), ("ACK", framing.FLAG_ACK)) if flags & bit] or ["none"]
        where = "0 (connection)" if t in framing._CONNECTION_TYPES else "non-zero"  # noqa: SLF001
        lines.append(f"| `{t.name}` | {int(t)} | {where} | {', '.join(names)} |")
    lines += ["", "| RESET / GOAWAY code | value |", "|---|---|"]
    lines += [f"| `{name}` | {code} |" for code, name in sorted(messages.CODE_NAMES.items())]
    return "\n".join(lines)


def render_readme_commands() -> str:
    """The set-up commands block at the top of the repository's README.md, verbatim."""
    m = re.search(r"^```sh\n(make demo.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    if not m:
        raise RuntimeError("README.md has no ```sh block starting with `make demo`")
    return f"```sh\n{m.group(1)}```"


def generated_blocks(fams: dict[str, Family] | None) -> dict[tuple[str, str], str]:
    """(docs file, block name) -> generated text."""
    blocks = {("getting-started.md", "readme"): render_readme_commands(),
              ("configuration.md", "config"): render_config_reference(),
              ("cli.md", "cli"): render_cli_reference(),
              ("protocol.md", "advert"): render_advert_reference(),
              ("protocol.md", "frames"): render_frame_reference()}
    if fams is not None:
        blocks[("metrics.md", "metrics")] = render_metrics_catalogue(fams)
    return blocks


def read_block(text: str, name: str) -> str | None:
    b, e = BEGIN.format(name), END.format(name)
    if b not in text or e not in text:
        return None
    return text.split(b, 1)[1].split(e, 1)[0].strip("\n")


def write_block(text: str, name: str, body: str) -> str:
    b, e = BEGIN.format(name), END.format(name)
    head, rest = text.split(b, 1)
    _, tail = rest.split(e, 1)
    return f"{head}{b}\n{body}\n{e}{tail}"


def docs_command(check: bool) -> int:
    fams = node_families()
    bad = []
    for (fname, block), body in generated_blocks(fams).items():
        path = DOCS / fname
        text = path.read_text() if path.exists() else ""
        current = read_block(text, block)
        if current is None:
            bad.append(f"{fname}: no generated block {block!r}")
        elif current != body:
            if check:
                bad.append(f"{fname}: block {block!r} is out of date")
            else:
                path.write_text(write_block(text, block, body))
                print(f"updated {fname} ({block})")
    for b in bad:
        print(b, file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("metrics", help="print the metric families a real node exports")
    d = sub.add_parser("docs", help="regenerate the generated blocks of docs/*.md")
    d.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "metrics":
        for name, f in sorted(node_families().items()):
            print(f"{name}\t{f.type}\t{','.join(sorted(f.labels))}\t{f.help}")
        return 0
    return docs_command(args.check)


if __name__ == "__main__":
    sys.exit(main())
