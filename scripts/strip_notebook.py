"""Strip a notebook's outputs in place, so that it is committed as source only.

Usage:  python scripts/strip_notebook.py examples/quickstart.ipynb [more.ipynb ...]

Clears every code cell's outputs and execution count, the per-cell metadata that executing adds
(`execution` timings, `collapsed`/`scrolled` view state) and the notebook's saved widget state.
tests/test_notebook.py fails when the committed examples/quickstart.ipynb is not already stripped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

CELL_METADATA = ("execution", "collapsed", "scrolled")
NOTEBOOK_METADATA = ("widgets",)


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook without outputs (modified in place and returned)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in CELL_METADATA:
            cell.metadata.pop(key, None)
    for key in NOTEBOOK_METADATA:
        nb.metadata.pop(key, None)
    return nb


def main(paths: list[str]) -> int:
    if not paths or any(p.startswith("-") for p in paths):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    for path in map(Path, paths):
        if not path.is_file():
            print(f"{path}: file not found (expected a .ipynb notebook)", file=sys.stderr)
            return 2
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=nbformat.NO_CONVERT)
        before = nbformat.writes(nb)
        after = nbformat.writes(strip(nb))
        if after != before:
            path.write_text(after, encoding="utf-8")
            print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
