"""The package's architecture as a test: every import points down the layers below (or stays inside its own
subpackage), no module imports itself back through others, and no module reads another's private names.

The layers, lowest first (docs/design.md draws the graph):

    errors, precision < checks < files < task, models < saes < interop < data < training < evaluation < reports < jobs
    < the public API (jax_impl/__init__.py) < cli

A module may import its own subpackage and any lower layer. Imports inside functions count: an import moved
into a function to break a cycle is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jax_impl"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "precision"),
    ("checks",),
    ("files",),
    ("task", "models"),
    ("saes",),
    ("interop",),
    ("data",),
    ("training",),
    ("evaluation",),
    ("reports",),
    ("jobs",),
    ("__init__",),  # the public API re-exports the layers below; the command line reads its __version__
    ("cli",),
)
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _unit(module: str) -> str:
    """The layer unit of a module: its first subpackage (jax_impl.training.loop -> training)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every jax_impl import in the module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "jax_impl":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (node.module, alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; the package uses absolute ones")
        elif isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "jax_impl"]
    return out


def test_every_module_sits_in_a_layer():
    assert set(map(_unit, MODULES)) <= set(RANK), sorted(set(map(_unit, MODULES)) - set(RANK))


def test_every_import_points_down_or_within_its_subpackage():
    upward = []
    for module, path in MODULES.items():
        for target, _, line in _imports(module, path):
            if target not in MODULES:
                continue
            here, there = _unit(module), _unit(target)
            if here != there and RANK[there] >= RANK[here] and here != "__init__":
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} ({here}) imports {target} ({there})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {m: sorted({t for t, _, _ in _imports(m, p) if t in MODULES and t != m}) for m, p in MODULES.items()}
    # A package's __init__ re-exporting its modules is not a cycle with them.
    for m in graph:
        graph[m] = [t for t in graph[m] if not (MODULES[m].name == "__init__.py" and t.startswith(m + "."))]
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {name} from {target}"
        for module, path in MODULES.items()
        for target, name, line in _imports(module, path)
        # a dunder (`__version__`) is public
        if name is not None and name.startswith("_") and not name.endswith("__") and target != module
    ]
    assert not private, "private names imported across modules:\n" + "\n".join(private)


_MODULE_UNITS = {"cli", "__init__", "errors", "checks", "precision"}  # single modules, not subpackages


@pytest.mark.parametrize("unit", sorted({u for units in LAYERS for u in units} - _MODULE_UNITS))
def test_each_subpackage_says_what_it_holds(unit):
    init = PACKAGE / unit / "__init__.py"
    assert init.exists(), f"jax_impl/{unit}/ is not a package"
    assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"jax_impl/{unit}/__init__.py has no docstring"


def test_the_module_maps_in_the_docs_are_current():
    """README.md's package map and docs/design.md's module map and import graph are generated from the code."""
    result = subprocess.run([sys.executable, str(PACKAGE.parent / "scripts" / "module_map.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
