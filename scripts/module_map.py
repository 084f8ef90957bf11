"""Write the module map and the import graph into docs/design.md and the package map into README.md, from the
code: each subpackage's and module's docstring (first sentence) and the imports between subpackages.

    python scripts/module_map.py           # rewrite the marked sections
    python scripts/module_map.py --check   # exit 1 when they are out of date (tests/test_layout.py runs this)

Each file holds the generated text between `<!-- module-map:start -->` and `<!-- module-map:end -->`.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "jax_impl"
START, END = "<!-- module-map:start -->", "<!-- module-map:end -->"
FOUNDATION = ("errors", "precision", "checks")  # every package may use them: left out of the graph


def _first_sentence(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    text = " ".join(doc.split())
    m = re.match(r"(.+?\.)(\s|$)", text)
    sentence = (m.group(1) if m else text).rstrip(".")
    return sentence.replace("|", "\\|")


def _units() -> list[tuple[str, Path]]:
    """(name, path) of every subpackage and top-level module, in the layers' order (tests/test_layout.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_layout import LAYERS

    out = []
    for layer in LAYERS:
        for unit in layer:
            if unit == "__init__":
                out.append(("jax_impl", PACKAGE / "__init__.py"))
            elif (PACKAGE / unit).is_dir():
                out.append((unit, PACKAGE / unit / "__init__.py"))
            else:
                out.append((unit, PACKAGE / f"{unit}.py"))
    return out


def _edges() -> dict[str, set[str]]:
    """Subpackage -> the other subpackages it imports (imports inside functions included)."""
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        here = rel[0] if len(rel) > 1 else ("jax_impl" if rel[0] == "__init__" else rel[0])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jax_impl"):
                names = [node.module] if node.module != "jax_impl" else [
                    f"jax_impl.{a.name}" if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").exists()
                    else "jax_impl" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("jax_impl.")]
            for name in names:
                there = name.split(".")[1] if "." in name else "jax_impl"
                if there not in (here, *FOUNDATION):
                    edges.setdefault(here, set()).add(there)
    return edges


def module_table() -> str:
    rows = ["| where | what |", "| --- | --- |"]
    for name, path in _units():
        if name == "jax_impl":
            continue
        rows.append(f"| `jax_impl/{name}{'/' if path.name == '__init__.py' else '.py'}` | {_first_sentence(path)} |")
        if path.name == "__init__.py":
            for module in sorted(path.parent.glob("*.py")) + sorted(path.parent.glob("*/__init__.py")):
                if module.name == "__init__.py" and module.parent == path.parent:
                    continue
                shown = module.parent.name + "/" if module.name == "__init__.py" else module.name
                rows.append(f"| &nbsp;&nbsp;`{shown}` | {_first_sentence(module)} |")
    return "\n".join(rows)


def import_graph() -> str:
    edges = _edges()
    lines = ["```mermaid", "flowchart TD"]
    order = [name for name, _ in _units()]
    for here in reversed(order):
        for there in sorted(edges.get(here, ()), key=order.index, reverse=True):
            lines.append(f"    {here} --> {there}")
    lines.append("```")
    return "\n".join(lines)


def package_map() -> str:
    rows = ["| package | what it holds |", "| --- | --- |"]
    for name, path in _units():
        if name != "jax_impl":
            rows.append(f"| `{name}{'/' if path.name == '__init__.py' else '.py'}` | {_first_sentence(path)} |")
    return "\n".join(rows)


def _replace(path: Path, body: str) -> str:
    text = path.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{path}: no {START} ... {END} section to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the files are out of date")
    args = p.parse_args(argv)
    design = ("Arrows point from a package to those it imports (errors, precision and checks, which any package may use, "
              "are left out); every arrow points down the layers (tests/test_layout.py).\n\n" + import_graph() + "\n\n" + module_table())
    stale = []
    for path, body in ((REPO / "docs" / "design.md", design), (REPO / "README.md", package_map())):
        new = _replace(path, body)
        if new != path.read_text(encoding="utf-8"):
            stale.append(str(path.relative_to(REPO)))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python scripts/module_map.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
