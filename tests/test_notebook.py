"""examples/quickstart.ipynb: committed without outputs, every name it takes from the package exists, and (`-m slow`)
every cell runs without an error.

The notebook is executed with nbclient in a kernel started from this interpreter (sys.executable, i.e. the
venv that runs pytest), its run directory in a temporary folder (MONOSEM_QUICKSTART_DIR). About 45 s alone on
two CPU cores and 70 s beside the rest of the suite, so `make test` checks the names the cells import and use
from jax_impl (what an API change breaks) and `-m slow` executes it. After an edit in Jupyter, strip it before
committing:

    .venv/bin/python scripts/strip_notebook.py examples/quickstart.ipynb
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"
STRIP_COMMAND = "python scripts/strip_notebook.py examples/quickstart.ipynb"
CELL_TIMEOUT_S = 300  # the pipeline cell takes ~15 s on two cores; the rest a few seconds each
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def test_committed_notebook_is_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"code cells {dirty} of {NOTEBOOK.name} keep outputs or an execution count; run `{STRIP_COMMAND}`"
    executed = [i for i, cell in enumerate(nb.cells) if "execution" in cell.metadata]
    assert not executed, f"cells {executed} of {NOTEBOOK.name} keep execution timings; run `{STRIP_COMMAND}`"
    assert "widgets" not in nb.metadata, f"{NOTEBOOK.name} keeps saved widget state; run `{STRIP_COMMAND}`"


def test_every_package_name_the_notebook_uses_exists():
    """Each `from jax_impl... import name` of a cell, and each `alias.name` read from a jax_impl module a cell
    imports (`from jax_impl import atlas` ... `atlas.feature_labels`, in that cell or a later one), exists."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    modules: dict[str, ModuleType] = {}  # a name bound by a cell -> the jax_impl module it is
    checked, missing = 0, []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jax_impl":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    checked += 1
                    with contextlib.suppress(ImportError):  # a submodule not imported yet (`from jax_impl import saes`)
                        importlib.import_module(f"{node.module}.{alias.name}")
                    if not hasattr(module, alias.name):
                        missing.append(f"cell {i}: from {node.module} import {alias.name}")
                    elif isinstance(getattr(module, alias.name), ModuleType):
                        modules[alias.asname or alias.name] = getattr(module, alias.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                checked += 1
                if not hasattr(modules[node.value.id], node.attr):
                    missing.append(f"cell {i}: {node.value.id}.{node.attr}")
    assert checked > 10, checked  # the notebook uses the package: this counted its names
    assert not missing, f"{NOTEBOOK.name} uses names the package no longer has: {missing}"


def _this_interpreter_kernel(tmp_path: Path) -> KernelManager:
    """A kernel manager whose only kernelspec runs ipykernel under sys.executable (not whatever `python3`
    kernelspec a Jupyter data directory holds)."""
    spec_dir = tmp_path / "kernels" / "monosem-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "monosem test kernel",
        "language": "python",
        "metadata": {"supported_encryption": ["curve"]},  # else ipykernel warns about plain-text TCP
    }), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="monosem-test", kernel_spec_manager=specs)


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("MONOSEM_QUICKSTART_DIR", str(run_dir))  # the kernel inherits the environment
    cwd = tmp_path / "cwd"  # the notebook must not depend on (or write into) its working directory
    cwd.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    n_cells = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    km = _this_interpreter_kernel(tmp_path)
    client = NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, startup_timeout=120,
        allow_errors=False, resources={"metadata": {"path": str(cwd)}},
    )
    started = time.perf_counter()
    try:
        client.execute()  # raises nbclient.exceptions.CellExecutionError on the first cell that fails
    finally:
        if km.has_kernel:  # nbclient shuts down only the kernels of managers it created itself
            km.shutdown_kernel(now=True)
    print(f"{NOTEBOOK.name} executed in {time.perf_counter() - started:.1f} s")

    interpreter = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    assert interpreter == sys.executable, f"the kernel ran {interpreter!r}, not this interpreter {sys.executable!r}"
    assert (run_dir / "manifest.json").exists(), "the notebook did not run into $MONOSEM_QUICKSTART_DIR"
    assert not any(cwd.iterdir()), f"the notebook wrote into its working directory: {sorted(cwd.iterdir())}"
    figures = [
        i for i, cell in enumerate(nb.cells[:n_cells]) if cell.cell_type == "code"
        for o in cell.outputs if PLOTLY_MIME in o.get("data", {})
    ]
    assert len(figures) == 2, f"expected two inline plotly figures (top features, histogram), got cells {figures}"
    errors = [
        (i, o.text) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
        for o in cell.outputs if o.get("name") == "stderr" and ("Error" in o.text or "Warning" in o.text)
    ]
    if errors:
        pytest.fail(f"cells wrote warnings or errors to stderr: {errors}")
