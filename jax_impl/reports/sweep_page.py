"""A sweep's table and plot: sweep.json, sweep.csv and sweep.html (offline: plotly.js inline), and the
lines printed at its end.

Every configuration is one row: its name (its folder), its grid values, its metrics and seconds. Two
summaries are added: `pareto` (SAE sweeps: the configurations no other beats on both L0, lower, and
explained variance, higher) and `spread` (for each setting of the grid's other keys, the mean, standard
deviation (n - 1), min and max of every metric over its seeds: the seed-to-seed spread).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from jax_impl.files.artifact_set import artifact_set
from jax_impl.files.atomic import write_json_atomic, write_text_atomic

SWEEP_JSON, SWEEP_CSV, SWEEP_HTML = "sweep.json", "sweep.csv", "sweep.html"
_NOT_METRICS = {"name", "group", "variant", "status", "config", "pareto"}


def pareto_front(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the rows with an L0 and an explained variance that no other row dominates (L0 <= and EV >=,
    one of them strictly), in increasing L0."""
    points = [(r["l0"], r["explained_variance"], r["name"]) for r in rows
              if r.get("l0") is not None and r.get("explained_variance") is not None]
    front = [p for p in points
             if not any(q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1]) for q in points)]
    return [name for _, _, name in sorted(front)]


def metric_columns(doc: Mapping[str, Any]) -> list[str]:
    keys = set(doc["grid"])
    columns: list[str] = []
    for row in doc["configurations"]:
        for k, v in row.items():
            if k not in keys and k not in _NOT_METRICS and k not in columns and (v is None or isinstance(v, (int, float))):
                columns.append(k)
    return columns


def seed_spread(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For each setting of the grid's keys other than `seed`: n, and mean/std/min/max of every metric."""
    others = [k for k in doc["grid"] if k != "seed"]
    settings: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in doc["configurations"]:
        if row.get("status") == "ok":
            settings.setdefault(tuple((k, _key(row.get(k))) for k in ["variant", *others] if k in row), []).append(row)
    out = []
    for setting, rows in settings.items():
        stats = {}
        for m in metric_columns(doc):
            values = [float(r[m]) for r in rows if r.get(m) is not None]
            if values:
                stats[m] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else None,
                    "min": min(values), "max": max(values),
                }
        out.append({"settings": {k: v for k, v in setting}, "n": len(rows), "metrics": stats})
    return out


def _key(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (tuple, list)):
        return ":".join(str(t) for t in v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def csv_text(doc: Mapping[str, Any]) -> str:
    columns: list[str] = []
    for row in doc["configurations"]:
        columns += [k for k in row if k != "config" and k not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in doc["configurations"]:
        writer.writerow([_cell(row.get(k)) if not isinstance(row.get(k), float) else repr(row[k]) for k in columns])
    return buffer.getvalue()


def format_table(doc: Mapping[str, Any], limit: int = 40) -> str:
    """The table for a terminal: name, the main metrics (and atlas scores), then the spread over seeds."""
    if doc["stage"] == "sae":
        shown = [("explained_variance", "EV"), ("l0", "L0"), ("dead_fraction", "dead"), ("mse", "MSE"),
                 ("monosemantic_share", "mono"), ("seconds", "s")]
    else:
        shown = [("test_mse", "test MSE"), ("test_exact_match", "test exact"), ("val_mse", "val MSE"),
                 ("final_train_loss", "train loss"), ("seconds", "s")]
    rows = doc["configurations"]
    shown = [(k, h) for k, h in shown if any(r.get(k) is not None for r in rows)]
    width = max([len("configuration")] + [len(r["name"]) for r in rows[:limit]])
    lines = [f"{'configuration':<{width}}  " + "  ".join(f"{h:>10}" for _, h in shown)]
    for r in rows[:limit]:
        if r.get("status") != "ok":
            lines.append(f"{r['name']:<{width}}  {r.get('status')}")
            continue
        lines.append(f"{r['name']:<{width}}  " + "  ".join(f"{_cell(r.get(k)):>10}" for k, _ in shown))
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more in {SWEEP_CSV}")
    for s in doc["spread"]:
        if s["n"] > 1:
            label = ", ".join(f"{k}={_cell(v)}" for k, v in s["settings"].items()) or "all"
            parts = [f"{h} {_cell(s['metrics'][k]['mean'])} ± {_cell(s['metrics'][k]['std'])}"
                     for k, h in shown if k in s["metrics"] and k != "seconds"]
            lines.append(f"spread over {s['n']} seeds ({label}): " + "; ".join(parts))
    return "\n".join(lines)


def _hover(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    return "<br>".join([row["name"], *(f"{k}: {_cell(row.get(k))}" for k in keys if row.get(k) is not None)])


def sae_figure(doc: Mapping[str, Any]) -> go.Figure:
    """L0 against explained variance, one point per configuration, the Pareto front as a line; coloured by the
    atlas's monosemantic share where there is one, else by architecture."""
    rows = [r for r in doc["configurations"] if r.get("l0") is not None and r.get("explained_variance") is not None]
    keys = [*doc["grid"], "explained_variance", "l0", "dead_fraction", "mse", "monosemantic_share", "seconds"]
    fig = go.Figure()
    scored = [r for r in rows if r.get("monosemantic_share") is not None]
    if scored:
        fig.add_trace(go.Scatter(
            x=[r["l0"] for r in scored], y=[r["explained_variance"] for r in scored], mode="markers", name="configuration",
            text=[_hover(r, keys) for r in scored], hoverinfo="text",
            marker={"size": 11, "color": [r["monosemantic_share"] for r in scored], "colorscale": "Viridis",
                    "showscale": True, "colorbar": {"title": "monosemantic<br>share"}},
        ))
    for variant in dict.fromkeys(r["variant"] for r in rows if r not in scored):
        mine = [r for r in rows if r["variant"] == variant and r not in scored]
        fig.add_trace(go.Scatter(
            x=[r["l0"] for r in mine], y=[r["explained_variance"] for r in mine], mode="markers", name=variant,
            text=[_hover(r, keys) for r in mine], hoverinfo="text", marker={"size": 11},
        ))
    front = [next(r for r in rows if r["name"] == name) for name in doc.get("pareto", [])]
    fig.add_trace(go.Scatter(
        x=[r["l0"] for r in front], y=[r["explained_variance"] for r in front], mode="lines", name="Pareto front",
        line={"color": "black", "dash": "dot"}, hoverinfo="skip",
    ))
    fig.update_layout(
        title=f"SAE sweep: {len(rows)} configurations (Pareto front: lower L0, higher explained variance)",
        xaxis_title="L0 (mean active features per row)", yaxis_title="explained variance", template="plotly_white",
    )
    return fig


def mlp_figure(doc: Mapping[str, Any]) -> go.Figure:
    """Test MSE against test exact-match share, one point per configuration (the seed-to-seed spread)."""
    rows = [r for r in doc["configurations"] if r.get("status") == "ok"]
    keys = [*doc["grid"], "test_mse", "test_exact_match", "val_mse", "train_mse", "final_train_loss"]
    fig = go.Figure(go.Scatter(
        x=[r["test_mse"] for r in rows], y=[r["test_exact_match"] for r in rows], mode="markers+text",
        text=[str(r.get("seed", r["name"])) for r in rows], textposition="top center",
        hovertext=[_hover(r, keys) for r in rows], hoverinfo="text", marker={"size": 11},
    ))
    fig.update_layout(
        title=f"MLP sweep: {len(rows)} configurations (labels: seed)", xaxis_title="test MSE",
        yaxis_title="test exact-match share", template="plotly_white",
    )
    return fig


def write_report(out_dir: Path, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Complete doc (pareto, spread), write sweep.json, sweep.csv and sweep.html into out_dir as one artifact set
    (jax_impl.files.artifact_set; the caller holds out_dir's lock), log the table. Returns doc."""
    if doc["stage"] == "sae":
        doc["pareto"] = pareto_front(doc["configurations"])
        for row in doc["configurations"]:
            row["pareto"] = row["name"] in doc["pareto"]
    doc["spread"] = seed_spread(doc)
    figure = sae_figure(doc) if doc["stage"] == "sae" else mlp_figure(doc)
    with artifact_set(out_dir, last=(SWEEP_JSON,)) as staging:
        write_json_atomic(staging / SWEEP_JSON, _finite(doc))
        write_text_atomic(staging / SWEEP_CSV, csv_text(doc))
        write_text_atomic(staging / SWEEP_HTML, figure.to_html(include_plotlyjs=True, full_html=True, div_id="sweep-plot"))
    log(format_table(doc))
    log(f"Wrote {out_dir / SWEEP_CSV}, {out_dir / SWEEP_JSON} and {out_dir / SWEEP_HTML}")
    return doc


def _finite(obj: Any) -> Any:
    """NaN/inf (a diverged configuration's loss) as None: JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
