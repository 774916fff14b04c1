"""The layout's promises: no import circle inside quantkit/, and the library never imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import quantkit

PACKAGE = Path(quantkit.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["quantkit", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports, at its top or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            found.update(submodules)
            if len(submodules) < len(node.names):  # names defined in ``base`` itself
                found.add(base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: {m for m in _imports(name, path, known) if m in known and m != name} for name, path in modules.items()}


def test_no_import_circle_in_the_library():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_library_never_imports_the_cli():
    modules = _modules()
    known = set(modules)
    for name, path in modules.items():
        if name == "quantkit.__main__":  # `python -m quantkit` is the CLI's entry point
            continue
        cli = sorted(m for m in _imports(name, path, known) if m.split(".")[0] == "quantkit_cli")
        assert not cli, f"{name} imports {cli}"


def test_imports_inside_functions_count(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from .sources import open_checkpoint\n    from . import layout\n")
    assert _imports("quantkit.m", module, {"quantkit.sources", "quantkit.layout"}) == {"quantkit.sources", "quantkit.layout"}
