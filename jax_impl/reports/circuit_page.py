"""The attribution graphs as one self-contained offline page (inline CSS/JS/SVG, no network).

The page embeds a circuit.json document ("monosem-circuit/1": the replacement model, one attribution graph per
input, the features' atlas labels and the global view) and draws everything from it in the browser: a picker of
the inputs (number box, search, `#graph=I&feature=ID` in the URL), the selected graph as layered SVG, its numbers
and intervention checks, the replacement model's table and the global view by causal variable. Its HTML, CSS
and JS are package data (jax_impl/reports/templates/circuit_page.html, circuit.css, circuit.js).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from jax_impl.reports.templates import fill, template

CIRCUIT_DIR = "circuit"  # a run's folder of the circuit (jax_impl.jobs.circuit writes it)
JSON_NAME = "circuit.json"
HTML_NAME = "circuit.html"
CIRCUIT_JSON = f"{CIRCUIT_DIR}/{JSON_NAME}"
CIRCUIT_HTML = f"{CIRCUIT_DIR}/{HTML_NAME}"


def _finite(value: Any) -> Any:
    """value with every NaN and infinity as None: JSON has none, and one would stop JSON.parse, so the whole page."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def render_page(doc: dict[str, Any], title: str = "Attribution graphs") -> str:
    """The HTML page for a circuit.json document; every field but "graphs" may be missing."""
    # "<" as \u003c: nothing inside the <script> element can close it or open a comment, and JSON.parse reads it back.
    data = json.dumps(_finite(doc), separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return fill(template("circuit_page.html"), TITLE=html.escape(title), CSS="\n" + template("circuit.css"),
                DATA=data, JS="\n" + template("circuit.js"))


def circuit_link(out_dir: Path) -> str | None:
    """The circuit page's address relative to out_dir when out_dir holds a circuit (its circuit.json), else None."""
    return CIRCUIT_HTML if (Path(out_dir) / CIRCUIT_JSON).is_file() else None


def link_note(href: str) -> str:
    """One line of HTML pointing to the circuit page at href (relative)."""
    return (f'Attribution graphs per input (transcoders replace the MLP layers; exact, checked by intervention): '
            f'<a href="{html.escape(href)}">{html.escape(href)}</a>')
