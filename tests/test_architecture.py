"""The layering docs/architecture.md describes, checked against the code's own imports.

Every import of a kbundle module counts, wherever it stands (inside a function, under
``TYPE_CHECKING``): a lazy import is still a dependency. A module may import from its own
package and from any lower layer; an import from a higher layer, or from a peer package of
the same layer, fails this test, and so does any cycle among modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kbundle"

# Bottom up. Packages on one layer are peers: neither imports the other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kbundle._version", "kbundle.findings", "kbundle._io"),
    ("kbundle.errors",),
    ("kbundle.config",),
    ("kbundle.container",),
    ("kbundle.storage",),
    ("kbundle.env",),
    ("kbundle.models",),
    ("kbundle.code", "kbundle.signing"),
    ("kbundle.pipelines",),
    ("kbundle.doctor", "kbundle.integrations"),
    ("kbundle.cli",),
    ("kbundle", "kbundle.__main__"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The layer unit a module belongs to: the longest name in ``LAYERS`` it falls under."""
    units = [u for layer in LAYERS for u in layer if module == u or module.startswith(u + ".")]
    return max(units, key=len)


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The kbundle modules ``path`` imports (a name imported from a package that is itself
    a module counts as that module)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "kbundle")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base.split(".")[0] != "kbundle":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    found.discard(module)
    return {name for name in found if name in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def test_every_module_belongs_to_a_layer(graph: dict[str, set[str]]) -> None:
    for module in graph:
        _layer(_unit(module))  # raises for a module no layer names


def test_no_layer_imports_a_higher_layer_or_a_peer(graph: dict[str, set[str]]) -> None:
    wrong = []
    for module, imported in sorted(graph.items()):
        here = _unit(module)
        for target in sorted(imported):
            there = _unit(target)
            if here == there or (here == "kbundle" and module == "kbundle"):
                continue
            if _layer(there) >= _layer(here):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    """Tarjan's strongly connected components: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_checks_see_imports(graph: dict[str, set[str]]) -> None:
    """The graph is not vacuous: known imports are found, lazy ones included."""
    assert "kbundle.container.reader" in graph["kbundle.pipelines.verify"]
    assert "kbundle.models.keras_io" in graph["kbundle.pipelines.load"]  # imported lazily
    assert _layer(_unit("kbundle.cli.app")) > _layer(_unit("kbundle.pipelines.load"))
