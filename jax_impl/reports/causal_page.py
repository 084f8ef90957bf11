"""The causal map as one self-contained offline page (inline CSS/JS/SVG, no network): a variable x hook heatmap
of IIA for each intervention, IIA against the number of named features (beside random sets) and against the DAS
rank, and each named feature with its concept label and top inputs. Its HTML, CSS and JS are package data
(jax_impl/reports/templates/causal_page.html, causal.css, causal.js)."""

from __future__ import annotations

import html
import json
from typing import Any

from jax_impl.reports.templates import fill, template


def render_page(document: dict[str, Any], title: str = "Causal map") -> str:
    """The HTML page for a causal.json document."""
    data = json.dumps(document, separators=(",", ":")).replace("</", "<\\/")
    return fill(template("causal_page.html"), TITLE=html.escape(title), CSS="\n" + template("causal.css"),
                LOOKUP=html.escape(document.get("lookup", "")), DATA=data, JS="\n" + template("causal.js"))
