"""The shape of src/: packages in the order the data flows, no import cycles, small modules, public faces.

Imports are read with ``ast`` (nothing is imported to check them). An import under ``if TYPE_CHECKING:``
is only for the type checker and is left out. Imports inside functions (lazy imports, used so that a
command does not load what it does not touch: FastAPI for the CLI, a backend that is not configured) are
allowed but held to the same rules: they must not close a cycle and must not point up the layers, so the
graph is checked both with and without them. Importing ``a.b.c`` also runs ``a/__init__`` and
``a/b/__init__``, so those count as imported too (except a module's own ancestors).
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
PACKAGE = "context_assistant"
MAX_LINES = 600

# What each part may import (its own modules aside): the package map of the README, in the order the data
# flows. core is used by all and uses none; services is the composition root; refresh orders ingest -> sync;
# cli, web and jobs are the front doors (the CLI reaches the web app only for `serve`, lazily).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "storage": {"core"},
    "ingest": {"core"},
    "llm": {"core"},
    "retrieval": {"core", "storage", "ingest"},
    "assistant": {"core", "storage", "retrieval", "llm"},
    "services": {"core", "storage", "ingest", "retrieval", "llm", "assistant"},
    "refresh": {"core", "storage", "ingest", "retrieval", "llm", "assistant", "services"},
    "jobs": {"core", "storage", "ingest", "retrieval", "services", "refresh"},
    "web": {"core", "storage", "ingest", "retrieval", "llm", "assistant", "services", "refresh"},
    "cli": {"core", "storage", "ingest", "retrieval", "llm", "assistant", "services", "refresh", "web"},
    "notebook": set(),
    "__main__": {"cli"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in (SRC / PACKAGE).rglob("*.py")}
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        package = module if module in PACKAGES else module.rsplit(".", 1)[0]
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    for alias in node.names:
        submodule = f"{target}.{alias.name}"
        yield submodule if submodule in MODULES else target


def imports(module: str, *, lazy: bool) -> set[str]:
    """The project modules ``module`` runs when imported (``lazy``: and when its functions run)."""
    found: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_statement(other, in_function)
                continue
            visit_statement(child, in_function)

    def visit_statement(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if in_function and not lazy:
                return
            for target in _targets(module, node):
                parts = target.split(".")
                for i in range(2, len(parts) + 1):
                    name = ".".join(parts[:i])
                    if name in MODULES and not (module == name or module.startswith(name + ".")):
                        found.add(name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(node, True)
        else:
            visit(node, in_function)

    visit(ast.parse(MODULES[module].read_text(encoding="utf-8")), False)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                strong(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strong(node)
    return found


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "(package)"


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level imports", "with imports inside functions"])
def test_there_is_no_import_cycle(lazy: bool) -> None:
    graph = {module: imports(module, lazy=lazy) for module in MODULES}
    assert cycles(graph) == []


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level imports", "with imports inside functions"])
def test_packages_import_only_what_comes_before_them(lazy: bool) -> None:
    assert set(ALLOWED) == {part(m) for m in MODULES} - {"(package)"}, "a new part needs its place in ALLOWED"
    wrong = sorted(
        f"{module} imports {target}"
        for module in MODULES
        for target in imports(module, lazy=lazy)
        if part(module) != "(package)"
        and part(target) not in {part(module), "(package)"}
        and part(target) not in ALLOWED[part(module)]
    )
    assert wrong == []


def test_no_module_is_over_600_lines() -> None:
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in SRC.rglob("*.py")}
    tools = REPO / "tools"
    for path in tools.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "GENERATED by" not in text.split("\n", 1)[0]:  # the vendored schema is data, written by a script
            sizes[path] = len(text.splitlines())
    assert {str(p.relative_to(REPO)): n for p, n in sizes.items() if n > MAX_LINES} == {}


def test_every_package_states_its_public_names() -> None:
    for package in sorted(PACKAGES - {PACKAGE}):
        module = importlib.import_module(package)
        public = getattr(module, "__all__", None)
        assert public, f"{package}/__init__.py has no __all__"
        missing = [name for name in public if not hasattr(module, name)]
        assert missing == [], f"{package}.__all__ names what it does not define: {missing}"


def public_names(module: str) -> set[str]:
    return set(getattr(importlib.import_module(module), "__all__", ()))


@pytest.mark.parametrize("folder", ["notebooks", "benchmarks"])
def test_notebooks_and_benchmarks_use_only_public_names(folder: str) -> None:
    """They are the project's first outside users: a package's public face is what they may rely on."""
    wrong = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                module = node.module or ""
                public = public_names(module)
                for alias in node.names:
                    if alias.name not in public:
                        wrong.append(f"{path.relative_to(REPO)}: {module}.{alias.name}")
            elif isinstance(node, ast.Import):
                wrong += [
                    f"{path.relative_to(REPO)}: import {a.name}" for a in node.names if a.name.startswith(PACKAGE)
                ]
    assert wrong == []
