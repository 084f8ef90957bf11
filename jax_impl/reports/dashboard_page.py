"""The feature dashboard as an offline page: DIR/dashboard.html and its data files in DIR/dashboard_data/.

dashboard.html (its HTML, CSS and JS are package data: jax_impl/reports/templates/dashboard_page.html,
dashboard.css, dashboard.js) loads `dashboard_data/index.js` (the SAE, the activations, the label columns, the
page count: a few kB whatever the SAE's size), then one `dashboard_data/page-NNNNN.js` per page of
`features_per_page` features when a feature of it is shown or searched, each a <script> element calling
`monosemDashboard.page(N, {...})`: Chromium refuses fetch() of a neighbouring file from a file:// page, not a
script. So 16,384 features open as quickly as 16, and the browser holds a few pages, never all of them.

Per feature a page holds: its density (share of rows it fires on, and SAELens's log10(share + 1e-10)), the
rows it fires on, its mean activation when firing and its largest, its histogram, its top-activating rows with
their labels (each cell cut at LABEL_CHARS) and its decoder-cosine neighbours.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jax_impl.evaluation.dashboard import FeatureStatistics
from jax_impl.files.atomic import write_text_atomic
from jax_impl.interop.saelens import log_density
from jax_impl.reports.templates import fill, template

FORMAT = "monosem-dashboard/1"
DASHBOARD_HTML = "dashboard.html"
DATA_DIR = "dashboard_data"
INDEX_JS = f"{DATA_DIR}/index.js"
LABEL_CHARS = 300  # a label cell longer than this is cut (bounds a page's size whatever the CSV holds)


def page_file(page: int) -> str:
    """The data file of page `page` (0-based), relative to the dashboard's folder."""
    return f"{DATA_DIR}/page-{page:05d}.js"


def _round(value: float) -> float | None:
    """6 significant digits (the page shows 4): a page's size bounded by its numbers' count; None for NaN/inf."""
    value = float(value)
    return float(f"{value:.6g}") if math.isfinite(value) else None


def _script(call: str, *args: Any) -> str:
    """`monosemDashboard.call(args...)` with the args as JSON; "<" as \\u003c, so the file's text can never close
    a <script> element or open a comment wherever it is put."""
    text = ",".join(json.dumps(a, separators=(",", ":"), allow_nan=False) for a in args)
    return f"monosemDashboard.{call}({text.replace('<', chr(92) + 'u003c')});\n"


def _cut(cell: str) -> str:
    return cell if len(cell) <= LABEL_CHARS else cell[:LABEL_CHARS - 1] + "\u2026"


def feature_docs(stats: FeatureStatistics, first: int, last: int,
                 labels: Mapping[int, Sequence[str]]) -> list[dict[str, Any]]:
    """The page records of features [first, last). labels: the label cells of (at least) every top row of these
    features, by row; a row without labels shows none."""
    density, logs, means = stats.density, log_density(stats.density), stats.mean_active
    docs = []
    for j in range(first, last):
        top = [[int(r), _round(v), [_cut(c) for c in labels.get(int(r), ())]]
               for r, v in zip(stats.top_rows[j], stats.top_values[j], strict=True) if r >= 0]
        docs.append({
            "id": j, "fires": int(stats.fires[j]), "density": _round(density[j]), "log10_density": _round(logs[j]),
            "mean": _round(means[j]), "max": _round(stats.max[j]), "hist": [int(c) for c in stats.histogram[j]],
            "top": top, "nbrs": [[int(n), _round(c)] for n, c in zip(stats.neighbours[j], stats.cosines[j], strict=True)],
        })
    return docs


def render_page(title: str = "Feature dashboard") -> str:
    """dashboard.html: the same for every dashboard (all it shows comes from its data files)."""
    return fill(template("dashboard_page.html"), TITLE=html.escape(title), CSS="\n" + template("dashboard.css"),
                JS="\n" + template("dashboard.js"), DATA=DATA_DIR)


def page_count(features: int, per_page: int) -> int:
    return -(-features // per_page)


def index_doc(stats: FeatureStatistics, *, per_page: int, sae: Mapping[str, Any], activations: Mapping[str, Any],
              columns: Sequence[str], settings: Mapping[str, Any]) -> dict[str, Any]:
    """index.js's record: what the page needs before any page of features (no per-feature data: its size does not
    grow with the SAE's)."""
    features = len(stats.fires)
    return {"format": FORMAT, "data": DATA_DIR, "features": features, "per_page": per_page,
            "pages": page_count(features, per_page), "dead": int(np.sum(stats.fires == 0)),
            "sae": dict(sae), "activations": dict(activations), "columns": list(columns), "settings": dict(settings)}


def pages(stats: FeatureStatistics, per_page: int, labels: Mapping[int, Sequence[str]]) -> Iterator[tuple[int, str]]:
    """(page number, its data file's text) for every page of features."""
    features = len(stats.fires)
    for p in range(page_count(features, per_page)):
        first, last = p * per_page, min((p + 1) * per_page, features)
        yield p, _script("page", p, {"page": p, "first": first, "features": feature_docs(stats, first, last, labels)})


def write_dashboard(folder: Path, stats: FeatureStatistics, index: dict[str, Any],
                    labels: Mapping[int, Sequence[str]]) -> list[Path]:
    """Write folder/dashboard.html, folder/dashboard_data/index.js and every page's data file, each atomically;
    returns their paths (the page first)."""
    written = [folder / DASHBOARD_HTML, folder / INDEX_JS]
    write_text_atomic(written[0], render_page(f"Feature dashboard: {index['sae']['name']}"))
    write_text_atomic(written[1], _script("index", index))
    for p, text in pages(stats, index["per_page"], labels):
        written.append(folder / page_file(p))
        write_text_atomic(written[-1], text)
    return written


def dashboard_link(out_dir: Path, href: str) -> str | None:
    """href when out_dir/href (a dashboard's page) exists, else None."""
    return href if (Path(out_dir) / href).is_file() else None
