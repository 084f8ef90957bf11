"""What pyproject.toml declares is what the package is: its package list is the folders on disk, and its
requirements are the distributions its code imports (runtime ones as requirements, optional ones as extras)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
# Where each installed name's code lies in the checkout.
FOLDERS = {"jax_impl": REPO / "jax_impl", **{name: REPO / folder for name, folder in SETUPTOOLS["package-dir"].items()}}
FIRST_PARTY = set(FOLDERS)


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports(folder: Path) -> dict[str, list[str]]:
    """Top-level module name -> the files that import it (anywhere: inside functions too)."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(REPO)))
    return found


def test_the_package_list_is_every_package_folder():
    on_disk = set()
    for name, folder in FOLDERS.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            on_disk.add(".".join((name, *relative)))
    assert set(SETUPTOOLS["packages"]) == on_disk


def test_requirements_are_what_the_code_imports():
    third_party = {}
    for folder in FOLDERS.values():
        for module, files in _imports(folder).items():
            if module not in sys.stdlib_module_names and module not in FIRST_PARTY and module != "__future__":
                third_party.setdefault(module, []).extend(files)
    distributions = packages_distributions()
    imported = {}
    for module, files in third_party.items():
        assert module in distributions, f"{module} (imported by {files[0]}) is not installed here"
        imported[_dist_name(distributions[module][0])] = files
    required = {_dist_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = {_dist_name(r) for reqs in PYPROJECT["project"]["optional-dependencies"].values() for r in reqs}
    undeclared = {d: f[0] for d, f in imported.items() if d not in required | extras}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = required - set(imported)
    assert not unused, f"declared as requirements but never imported by the package: {sorted(unused)}"


def test_torch_is_a_range_and_the_cpu_pin_lives_in_the_constraints_file():
    torch = [r for r in PYPROJECT["project"]["dependencies"] if _dist_name(r) == "torch"]
    assert torch and "==" not in torch[0], torch
    constraints = (REPO / "constraints.txt").read_text()
    assert re.search(r"^torch==\S+$", constraints, re.M)
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()
