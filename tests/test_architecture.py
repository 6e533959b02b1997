"""The shape of the code: every module imports, and the project's modules do not import each other in a loop."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = {
    "smoothcore": ROOT / "smoothcore",
    "smoothcore_plugins": ROOT / "plugins",
    "smoothcore_denoisers": ROOT / "denoisers",
}


def project_modules() -> dict[str, Path]:
    """Every module of the three packages, by its import name."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``module`` imports, at its top or inside functions (what ``if TYPE_CHECKING:`` imports
    is left out: it never runs). ``from a import b`` counts as importing ``a.b`` when that is a module."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for stmt in branch.body
        for node in ast.walk(stmt)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:  # import a.b.c: the deepest project module named
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


@pytest.mark.parametrize("module", sorted(project_modules()))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_the_project_modules_import_each_other_without_a_loop():
    modules = project_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert import_cycles(graph) == []


def test_an_import_loop_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_no_module_shadows_a_public_function_of_the_package():
    """``smoothcore.noise`` is the factory function; the module that defines noises is ``smoothcore.noises``, so
    ``import smoothcore.noises`` and ``smoothcore.noise(...)`` each give what they say."""
    import smoothcore
    import smoothcore.noises

    assert callable(smoothcore.noise) and not isinstance(smoothcore.noise, type(smoothcore))
    assert smoothcore.noises.Noise is smoothcore.Noise
    public = {name for name in dir(smoothcore) if not name.startswith("_")}
    modules = {name.split(".")[1] for name in project_modules() if name.startswith("smoothcore.")}
    clashes = {
        name for name in public & modules if not isinstance(getattr(smoothcore, name), type(smoothcore))
    }
    assert not clashes, f"modules named like public functions: {sorted(clashes)}"
