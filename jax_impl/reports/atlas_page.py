"""The feature atlas as one self-contained HTML page (inline CSS, JS and SVG; no network references).

The page embeds the feature_atlas.json document and draws everything from it in the browser:
a searchable, sortable feature table and, for the selected feature, its activation histogram,
its top-activating inputs and its concept scores. Its HTML, CSS and JS are package data
(jax_impl/reports/templates/atlas_page.html, atlas.css, atlas.js); `@@NAME@@` marks where a value goes.
"""

from __future__ import annotations

import html
import json
from typing import Any

from jax_impl.reports.templates import fill, template


def render_page(atlas: dict[str, Any], title: str = "Feature atlas") -> str:
    """Return the HTML page for a feature_atlas.json document (as built by atlas.build_atlas)."""
    # Inside <script>, "</" could close the element early; "<\/" means the same to JSON.parse.
    data = json.dumps(atlas, separators=(",", ":")).replace("</", "<\\/")
    return fill(template("atlas_page.html"), TITLE=html.escape(title), CSS="\n" + template("atlas.css"),
                ROWS=str(atlas["rows"]), SOURCE=html.escape(str(atlas.get("source", ""))), DATA=data,
                JS="\n" + template("atlas.js"))
