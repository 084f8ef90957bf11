"""The feature atlas as one self-contained HTML page (inline CSS, JS and SVG; no network references).

The page embeds the feature_atlas.json document and draws everything from it in the browser:
a searchable, sortable feature table and, for the selected feature, its activation histogram,
its top-activating inputs and its concept scores. Its HTML, CSS and JS are package data
(jax_impl/reports/templates/atlas_page.html, atlas.css, atlas.js); `@@NAME@@` marks where a value goes.
`write_atlas` writes the document and its page.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from jax_impl.evaluation.atlas.document import ATLAS_HTML, ATLAS_JSON
from jax_impl.files.atomic import write_text_atomic
from jax_impl.reports.circuit_page import circuit_link, link_note
from jax_impl.reports.templates import fill, template


def render_page(atlas: dict[str, Any], title: str = "Feature atlas", circuit: str | None = None,
                dashboard: str | None = None) -> str:
    """Return the HTML page for a feature_atlas.json document (as built by evaluation.atlas.document.build_atlas);
    circuit, dashboard: the circuit page's and the feature dashboard's relative addresses, linked from the header
    when given."""
    # Inside <script>, "</" could close the element early; "<\/" means the same to JSON.parse.
    data = json.dumps(atlas, separators=(",", ":")).replace("</", "<\\/")
    return fill(template("atlas_page.html"), TITLE=html.escape(title), CSS="\n" + template("atlas.css"),
                ROWS=str(atlas["rows"]), SOURCE=html.escape(str(atlas.get("source", ""))), DATA=data,
                JS="\n" + template("atlas.js"),
                LINKS=_links(circuit, dashboard))


def _links(circuit: str | None, dashboard: str | None) -> str:
    notes = [link_note(circuit)] if circuit else []
    if dashboard:
        href = html.escape(dashboard)
        notes.append(f'Every feature\'s density, histogram, top rows and decoder neighbours (the feature dashboard): '
                     f'<a href="{href}">{href}</a>')
    return "".join(f'<p style="margin:10px 20px 0">{note}</p>' for note in notes)


def write_atlas(atlas: dict[str, Any], out_dir: Path, dashboard: str | None = None) -> tuple[Path, Path]:
    """Write out_dir/feature_atlas.json and out_dir/feature_atlas.html (linking out_dir's circuit page when there
    is one, and the feature dashboard at the relative address `dashboard` when given); returns both paths."""
    json_path, html_path = out_dir / ATLAS_JSON, out_dir / ATLAS_HTML
    write_text_atomic(json_path, json.dumps(atlas, separators=(",", ":"), allow_nan=False))
    write_text_atomic(html_path, render_page(atlas, circuit=circuit_link(out_dir), dashboard=dashboard))
    return json_path, html_path
