"""The shape of the code, read from the AST (nothing is imported): files over 500 lines, the import
cycles among goae modules (imports inside functions count too), and how many goae imports hide inside
functions.

    python benchmarks/structure.py            # a report
    python benchmarks/structure.py --json     # the same, as JSON

`import_graph()` and `cycles()` are also what tests/test_structure.py checks.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LONG = 500


def _sources(root: Path) -> list[Path]:
    files = sorted((root / "goae").rglob("*.py")) + sorted((root / "train").rglob("*.py"))
    return [p for p in files + [root / "app.py"] if p.is_file() and "__pycache__" not in p.parts]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    """The absolute module an `from X import ...` names (relative imports resolved against `here`)."""
    if not node.level:
        return node.module or ""
    base = here.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, root: Path) -> list[tuple[str, bool]]:
    """(imported goae module, inside a function?) for each import statement of goae modules in the file."""
    here, is_package = module_name(path, root), path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    known = {module_name(p, root) for p in _sources(root)}
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                mod = _resolve(child, here, is_package)
                # `from goae.align import cat` imports the submodule goae.align.cat
                names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in child.names]
            else:
                visit(child, inner)
                continue
            for name in dict.fromkeys(names):
                if name == "goae" or name.startswith("goae."):
                    found.append((_known_prefix(name, known), in_function))
    visit(tree, False)
    return found


def _known_prefix(name: str, known: set[str]) -> str:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """goae module -> the goae modules it imports (anywhere in the file). Importing a.b.c also runs a and a.b,
    so a submodule import counts as an edge to its parent packages' __init__ too."""
    graph: dict[str, set[str]] = {}
    for path in _sources(root):
        here = module_name(path, root)
        if not here.startswith("goae"):
            continue
        edges = graph.setdefault(here, set())
        for name, _ in _imports(path, root):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                # a package's own submodules importing the package (or a parent) is how packages work
                if target != here and not here.startswith(target + "."):
                    edges.add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(out)


def _a_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One shortest cycle through the component's first module, for a readable report."""
    start, members = comp[0], set(comp)
    paths, seen = [[start]], {start}
    while paths:
        nxt = []
        for p in paths:
            for w in sorted(graph.get(p[-1], ())):
                if w == start:
                    return p + [start]
                if w in members and w not in seen:
                    seen.add(w)
                    nxt.append(p + [w])
        paths = nxt
    return comp


def report(root: Path = ROOT) -> dict:
    files = _sources(root)
    lines = {str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines()) for p in files}
    inside = {str(p.relative_to(root)): sum(f for _, f in _imports(p, root)) for p in files}
    graph = import_graph(root)
    comps = cycles(graph)
    return {
        "long_files": dict(sorted(((k, v) for k, v in lines.items() if v > LONG), key=lambda kv: -kv[1])),
        "cycles": [{"modules": c, "example": _a_cycle(graph, c)} for c in comps],
        "imports_inside_functions": sum(inside.values()),
        "imports_inside_functions_by_file": {k: v for k, v in sorted(inside.items()) if v},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    r = report()
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"files over {LONG} lines:")
    for name, n in r["long_files"].items():
        print(f"  {n:6d}  {name}")
    print(f"import cycles among goae modules: {len(r['cycles'])}")
    for c in r["cycles"]:
        print(f"  {len(c['modules'])} modules, e.g. " + " -> ".join(c["example"]))
        print(f"    all: {', '.join(c['modules'])}")
    print(f"imports of goae modules inside functions: {r['imports_inside_functions']}")
    for name, n in r["imports_inside_functions_by_file"].items():
        print(f"  {n:4d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
