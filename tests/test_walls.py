"""The import walls (docs/architecture.md): the engine never imports a schedule, a schedule never
imports simpy, no torch in the core."""

import ast
import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "moesim"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_schedules_never_import_simpy():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(m for m in imported_modules(path) if m.split(".")[0] == "simpy")
        for path in (PACKAGE / "schedules").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_engine_never_imports_a_schedule_even_indirectly():
    code = "import sys, moesim.engine; print(sorted(m for m in sys.modules if m.startswith('moesim.schedules')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_core_never_imports_torch():
    code = ("import sys, moesim.api, moesim.cli, moesim.analysis.gantt, moesim.analysis.tables; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    top_level_torch = [
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
        if any(isinstance(node, (ast.Import, ast.ImportFrom)) and ast.unparse(node).split()[1].split(".")[0] == "torch"
               for node in ast.parse(path.read_text()).body)
    ]
    assert top_level_torch == []


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", PACKAGE.parent / "benchmarks" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycle_between_packages_or_modules():
    graph = _import_graph()
    packages, modules, _ = graph.graph(PACKAGE.parent)
    assert "moesim.engine" in packages and "moesim.hardware" in packages["moesim.engine"]  # the graph is read
    assert graph.cycles(packages) == []
    assert graph.cycles(modules) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = _import_graph()
    edges = {"a": Counter({"b": 1}), "b": Counter({"c": 1}), "c": Counter({"a": 1}), "d": Counter({"a": 1})}
    assert graph.cycles(edges) == [["a", "b", "c"]]
