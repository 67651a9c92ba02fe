"""Print the package-level import graph of moesim and the harness, its cycles, and line counts per package.

    python benchmarks/import_graph.py [--root PATH]

``--root`` reads another checkout (e.g. a ``git worktree`` of an older commit) to compare before and after.
Imports are read with ``ast`` (nothing is imported): every ``import moesim.x`` / ``from moesim.x import``,
including those inside functions, counts as an edge from the importing module's package to the imported
one's. A package is the first level under ``moesim`` (``moesim.engine``) or a top-level module
(``moesim.units``); ``validation/`` is installed as ``moesim.validation``. Relative imports are resolved;
imports under ``if TYPE_CHECKING:`` (annotations only) are left out.
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter, defaultdict
from pathlib import Path


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "validation":
        parts = ["moesim", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks (annotations only: no runtime import)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(module: str, is_package: bool, tree: ast.AST, known: set[str]) -> set[str]:
    """The known modules ``module`` imports: ``from a import b`` is module ``a.b`` where that is one, else ``a``."""
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for alias in node.names:
                found.add(f"{name}.{alias.name}" if f"{name}.{alias.name}" in known else name)
    return {name for name in found if name == "moesim" or name.startswith("moesim.")}


def graph(root: Path) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]], dict[str, int]]:
    """(package -> imported package -> number of modules importing it, module -> imported modules,
    package -> lines of code)."""
    files = sorted([*root.glob("moesim/**/*.py"), *root.glob("validation/**/*.py")])
    modules = {_module_name(root, path): path for path in files}
    known = set(modules)
    edges: dict[str, Counter[str]] = defaultdict(Counter)
    module_edges: dict[str, Counter[str]] = defaultdict(Counter)
    lines: Counter[str] = Counter()
    for module, path in modules.items():
        text = path.read_text()
        lines[_package(module)] += len(text.splitlines())
        targets = set()
        for name in _imports(module, path.name == "__init__.py", ast.parse(text), known):
            while name not in known and "." in name:  # ``import moesim.x.y`` of a name that is no module
                name = name.rsplit(".", 1)[0]
            if name in known and name != module:
                targets.add(_package(name))
                module_edges[module][name] += 1
        for target in targets - {_package(module)}:
            edges[_package(module)][target] += 1
    return edges, module_edges, dict(lines)


def cycles(edges: dict[str, Counter[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(set(edges) | {t for targets in edges.values() for t in targets}):
        if node not in index:
            visit(node)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    edges, module_edges, lines = graph(args.root)
    print("package imports (number of its modules importing each)")
    for package in sorted(set(edges) | set(lines)):
        targets = ", ".join(f"{t} ({n})" for t, n in sorted(edges.get(package, Counter()).items()))
        print(f"  {package:<22} -> {targets or '-'}")
    found = cycles(edges)
    print("cycles between packages: " + ("; ".join(" <-> ".join(c) for c in found) if found else "none"))
    found = cycles(module_edges)
    print("cycles between modules (function-level imports included): "
          + ("; ".join(" <-> ".join(c) for c in found) if found else "none"))
    print("lines per package")
    for package, count in sorted(lines.items(), key=lambda item: -item[1]):
        print(f"  {package:<22} {count:>6}")
    print(f"  {'total':<22} {sum(lines.values()):>6}")


if __name__ == "__main__":
    main()
