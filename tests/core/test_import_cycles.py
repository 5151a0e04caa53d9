"""No two of our modules import each other, not even through a function-level import (DESIGN: a small leaf module
holds what both need). Read from the sources with ``ast``: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"mindvideo": "mindvideo", "kernels": "mindvideo.kernels", "export": "mindvideo.export",
           "engine": "mindvideo.engine", "benchmarks": "mindvideo.benchmarks"}  # fmt: skip


def _modules() -> dict[str, tuple[Path, bool]]:
    """Installed module name → (source file, is a package)."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _imports(name: str, path: Path, is_package: bool, modules) -> set[str]:
    """Our modules that ``name`` imports anywhere in its body (``if TYPE_CHECKING:`` blocks aside)."""
    found = set()

    def own(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(filter(None, (own(alias.name) for alias in child.names)))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[: len(package) - child.level + 1] + ([base] if base else []))
                found.update(filter(None, (own(f"{base}.{alias.name}") for alias in child.names)))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    # a package importing its own submodules (or a module its parent package) is not a cycle between peers
    return {m for m in found if not m.startswith(name + ".") and not name.startswith(m + ".")}


def import_cycles() -> list[list[str]]:
    """Strongly connected components (size > 1) of the import graph."""
    modules = _modules()
    graph = {name: _imports(name, path, is_package, modules) for name, (path, is_package) in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def connect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def test_no_import_cycles():
    assert import_cycles() == []


def test_the_check_sees_a_function_level_cycle(tmp_path, monkeypatch):
    """Two throw-away modules importing each other, one of them inside a function, are reported."""
    package = tmp_path / "mindvideo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from mindvideo.b import g\n\ndef f():\n    return g()\n")
    (package / "b.py").write_text("def g():\n    from mindvideo import a\n\n    return a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mindvideo import a\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert import_cycles() == [["mindvideo.a", "mindvideo.b"]]
