"""The shape of the code: no import cycles among goae modules (imports inside functions count), and the core
pipeline does not depend on the downloader. Read from the AST by benchmarks/structure.py; nothing is imported."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _structure():
    spec = importlib.util.spec_from_file_location("goae_bench_structure", ROOT / "benchmarks" / "structure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_no_import_cycles():
    s = _structure()
    found = s.cycles(s.import_graph(ROOT))
    assert found == [], "import cycles among goae modules: " + "; ".join(" -> ".join(c) for c in found)


def test_core_does_not_import_the_downloader():
    graph = _structure().import_graph(ROOT)
    for core in ("goae.pipeline", "goae.align", "goae.edit", "goae.domains", "goae.weights.resolve",
                 "goae.weights.checks", "goae.weights.cards"):
        reached = _reachable(graph, core)
        assert not reached & {"goae.download", "goae.weights.download", "goae.weights.fetch", "goae.weights.sources",
                              "goae.weights.convert"}, core
    assert "goae.paths" in graph["goae.pipeline"] and graph["goae.paths"] == set()


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    # The checker itself: a cycle closed by an import inside a function, through a package's __init__ and a
    # relative import, is reported; the same tree without that import has none.
    s = _structure()
    files = {"goae/__init__.py": "", "goae/a.py": "from goae.pkg import thing\n",
             "goae/pkg/__init__.py": "from .inner import thing\n",
             "goae/pkg/inner.py": "import os\n\ndef thing():\n    from goae import a\n    return a\n"}
    root = _tree(tmp_path, files)
    assert s.cycles(s.import_graph(root)) == [["goae.a", "goae.pkg", "goae.pkg.inner"]]
    assert s.report(root)["imports_inside_functions"] == 1
    (root / "goae/pkg/inner.py").write_text("import os\n\ndef thing():\n    return os\n")
    assert s.cycles(s.import_graph(root)) == []
    assert s.report(root)["imports_inside_functions"] == 0
