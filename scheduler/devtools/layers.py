"""`python -m scheduler.devtools.layers`: check that imports go one way and form no cycle (`make lint` runs it).

Rules (the rooms of docs/architecture.md):
  * mesh/ and worker/ import nothing from scheduler/;
  * scheduler.core imports nothing from node, client, cli or devtools (core <- node <- cli; client <- cli);
  * scheduler.node imports nothing from client, cli or devtools; scheduler.client nothing from node, cli or
    devtools; scheduler.cli nothing from devtools (devtools use everything and are used by nothing);
  * no import cycle between modules (imports under `if TYPE_CHECKING:` do not count: they never run);
  * no import inside a function unless its line (or the one above) says it guards an optional dependency
    (a comment with the word "optional").
Reads the source with `ast` (nothing is imported); exits 1 listing every violation.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("mesh", "worker", "scheduler")

# importer prefix -> prefixes it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "mesh": ("scheduler",),
    "worker": ("scheduler",),
    "scheduler.core": ("scheduler.node", "scheduler.client", "scheduler.cli", "scheduler.devtools"),
    "scheduler.node": ("scheduler.client", "scheduler.cli", "scheduler.devtools"),
    "scheduler.client": ("scheduler.node", "scheduler.cli", "scheduler.devtools"),
    "scheduler.cli": ("scheduler.devtools",),
}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    runtime: bool  # False under `if TYPE_CHECKING:`
    in_function: bool
    optional: bool  # a comment on the line (or the line above) says "optional"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def edges_of(name: str, source: str, is_package: bool, modules: set[str]) -> list[Edge]:
    tree = ast.parse(source)
    lines = source.split("\n")
    out: list[Edge] = []

    def target(mod: str, names: Iterable[str]) -> list[str]:
        found = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in modules]
        return found or [mod]

    def visit(node: ast.AST, runtime: bool, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                if isinstance(child, ast.Import):
                    dsts = [a.name for a in child.names]
                else:
                    base = child.module or ""
                    if child.level:
                        pkg = name.split(".") if is_package else name.split(".")[:-1]
                        pkg = pkg[:len(pkg) - (child.level - 1)]
                        base = ".".join(pkg + ([base] if base else []))
                    dsts = target(base, [a.name for a in child.names])
                text = " ".join(lines[max(0, child.lineno - 2):child.end_lineno or child.lineno])
                for d in dsts:
                    if d.split(".")[0] in PACKAGES:
                        out.append(Edge(name, d, child.lineno, runtime, in_function, "optional" in text))
                    elif in_function:
                        out.append(Edge(name, d, child.lineno, runtime, in_function, "optional" in text))
            elif _type_checking_block(child):
                visit(child, False, in_function)
            else:
                visit(child, runtime, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(tree, True, False)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[v] = min(low[v], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def check(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Violations for `sources`: module name -> (source text, is a package __init__)."""
    modules = set(sources)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, (src, is_pkg) in sorted(sources.items()):
        for e in edges_of(name, src, is_pkg, modules):
            if e.in_function and not e.optional:
                problems.append(f"{name}:{e.line}: imports {e.dst} inside a function (move it to the top, or "
                                f"say in a comment which optional dependency it guards)")
            for importer, banned in FORBIDDEN.items():
                if _under(name, importer) and any(_under(e.dst, b) for b in banned):
                    problems.append(f"{name}:{e.line}: imports {e.dst}, a layer {importer} must not depend on")
            if _under(e.dst, "scheduler.devtools") and not _under(name, "scheduler.devtools"):
                problems.append(f"{name}:{e.line}: imports {e.dst}: devtools are used by nothing in production")
            if e.runtime and e.dst in modules and e.dst != name:
                graph[name].add(e.dst)
    for comp in cycles(graph):
        problems.append("import cycle: " + " <-> ".join(comp))
    return problems


def load(root: Path) -> dict[str, tuple[str, bool]]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            out[module_name(root, path)] = (path.read_text(), path.name == "__init__.py")
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[2]
    problems = check(load(root))
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} layering problem(s)", file=sys.stderr)
        return 1
    print(f"imports: {len(load(root))} modules, one way, no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
