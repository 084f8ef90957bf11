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


SIGNIFICANT = 6  # digits of each number in a page (the page shows 4): its size bounded by its numbers' count


def _rounded(values: np.ndarray) -> list:
    """values (any shape) to SIGNIFICANT significant digits as nested lists of Python floats, None for NaN/inf.
    Vectorised (a page has ~10^4 numbers): scaled by an exact power of ten, rounded, scaled back, so each is the
    double nearest its short decimal and JSON writes that decimal."""
    v = np.asarray(values, np.float64)
    finite = np.isfinite(v) & (v != 0)
    exponent = np.where(finite, SIGNIFICANT - 1 - np.floor(np.log10(np.abs(np.where(finite, v, 1.0)))), 0)
    up, down = np.clip(exponent, 0, 300), np.clip(-exponent, 0, 300)
    rounded = np.round(v * 10.0 ** up / 10.0 ** down) * 10.0 ** down / 10.0 ** up
    out = np.where(np.isfinite(v), rounded, np.nan).astype(object)
    out[~np.isfinite(v)] = None
    return out.tolist()


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
    part = slice(first, last)
    density, logs = _rounded(stats.density[part]), _rounded(log_density(stats.density[part]))
    means, largest = _rounded(stats.mean_active[part]), _rounded(stats.max[part])
    fires, hist = stats.fires[part].tolist(), stats.histogram[part].tolist()
    top_rows, top_values = stats.top_rows[part].tolist(), _rounded(stats.top_values[part])
    neighbours, cosines = stats.neighbours[part].tolist(), _rounded(stats.cosines[part])
    cut = {r: [_cut(c) for c in labels.get(r, ())] for r in {r for rows in top_rows for r in rows if r >= 0}}
    docs = []
    for i in range(last - first):
        docs.append({
            "id": first + i, "fires": fires[i], "density": density[i], "log10_density": logs[i], "mean": means[i],
            "max": largest[i], "hist": hist[i],
            "top": [[r, v, cut[r]] for r, v in zip(top_rows[i], top_values[i], strict=True) if r >= 0],
            "nbrs": [[n, c] for n, c in zip(neighbours[i], cosines[i], strict=True)],
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
