"""Circuit reports: which hidden neurons and SAE features carry each input's computation.

Input is plain arrays (no model files, no JAX), one row per sample:

- ``inputs``      (N, x_dim * y_dim) int: ``y_dim`` columns of ``x_dim`` integers, concatenated;
  the last entry of a column points into that column's first ``x_dim - 1`` values.
  The task only reads the first and the last column: target = |a[p1] - b[p2]|.
- ``expected``    (N,) float: the target.
- ``predictions`` (N,) float: the MLP output.
- ``layer2``      (N, 512) float32: the hooked hidden activation.
- ``features``    (N, F) float32: the SAE feature activations (sparse, non-negative).

From them :func:`circuit_trace_table` builds the long table (per sample and rank 1..k the
rank-th strongest neuron and the rank-th strongest feature). The *energy* of a row is
``neuron_act * feature_act``: the co-activation of the rank-r neuron with the rank-r
feature of one sample. It pairs by rank, so it measures co-occurrence, not a causal weight.
:func:`write_reports` writes the workbook and three self-contained HTML pages (plotly.js
embedded, nothing fetched from the network).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from plotly.offline import get_plotlyjs

from jax_impl.files import xlsx
from jax_impl.files.atomic import write_text_atomic
from jax_impl.reports.circuit_page import CIRCUIT_HTML, circuit_link, link_note
from jax_impl.reports.templates import fill, template

TRACE_COLUMNS = (
    "sample_id", "idx_combination", "val_combination", "inputs", "indices", "values",
    "rank", "neuron_id", "neuron_act", "feature_id", "feature_act",
    "outputs", "expected", "actual", "delta", "equals",
)
REPORT_FILES = {
    "trace": "circuit_trace_detailed.xlsx",
    "heatmap": "logic_circuit_map.html",
    "bell_curves": "circuit_bell_curves.html",
    "sankey": "uhd_bold_sankey.html",
}
HEATMAP_TOP_PAIRS = 10
BELL_MAX_PAIRS = 1000
BELL_DEFAULT_SHOWN = 10
SANKEY_LINKS_PER_STEP = 250

ENERGY_NOTE = (
    "<b>Energy</b> = neuron activation &times; SAE feature activation of one row of the trace "
    "table (sample <i>s</i>, rank <i>r</i>: the r-th strongest of the {neurons} hidden neurons paired "
    "with the r-th strongest SAE feature of that sample, r = 1..{k})."
)


@dataclass(frozen=True)
class CircuitTrace:
    """The long table in array form; row (s, r) of the workbook is sample s, rank r + 1.

    Per sample (N,): ``p1, p2`` pointers, ``v1, v2`` the values they point at, ``expected``
    (target rounded to int), ``target`` (as given), ``actual`` (prediction).
    Per sample and rank (N, k), strongest first: ``neuron_id`` int64, ``neuron_act`` float64,
    ``feature_id`` int64, ``feature_act`` float64 (activations rounded to 6 decimals, as written).
    """

    inputs: np.ndarray
    p1: np.ndarray
    p2: np.ndarray
    v1: np.ndarray
    v2: np.ndarray
    expected: np.ndarray
    target: np.ndarray
    actual: np.ndarray
    neuron_id: np.ndarray
    neuron_act: np.ndarray
    feature_id: np.ndarray
    feature_act: np.ndarray

    @property
    def energy(self) -> np.ndarray:
        """(N, k) float64: neuron_act * feature_act per row."""
        return self.neuron_act * self.feature_act

    def per_row(self, per_sample: np.ndarray) -> np.ndarray:
        """Repeat an (N,) per-sample array to the (N * k,) rows of the long table."""
        return np.repeat(per_sample, self.neuron_id.shape[1])


def top_k_desc(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest entries, largest first; ties go to the lower column id.

    x: (N, M) float. Returns ids (N, k) int64 and values (N, k) of x's dtype.
    A partition over the whole batch finds each row's k-th largest value; the entries
    equal to it (e.g. the many zero SAE features of a row with fewer than k active) are
    filled in lowest id first, so the table is reproducible, unlike a bare argpartition.
    """
    x = np.asarray(x)
    k = min(k, x.shape[1])
    kth = -np.partition(-x, k - 1, axis=1)[:, k - 1:k]              # (N, 1)
    above, tied = x > kth, x == kth
    chosen = above | tied
    crowded = chosen.sum(axis=1) > k                                 # ties straddle the cut
    if crowded.any():  # only those rows need the (costly) running count of ties
        t, missing = tied[crowded], k - above[crowded].sum(axis=1, keepdims=True)
        chosen[crowded] = above[crowded] | (t & (np.cumsum(t, axis=1, dtype=np.int32) <= missing))
    ids = np.nonzero(chosen)[1].reshape(-1, k)                       # exactly k per row, ascending
    order = np.argsort(-np.take_along_axis(x, ids, axis=1), axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    return ids, np.take_along_axis(x, ids, axis=1)


def circuit_trace_table(
    inputs: np.ndarray,
    expected: np.ndarray,
    predictions: np.ndarray,
    layer2: np.ndarray,
    features: np.ndarray,
    *,
    x_dim: int = 5,
    y_dim: int = 2,
    top_k: int = 10,
) -> CircuitTrace:
    """Build the long table with array ops over the whole batch.

    inputs (N, x_dim * y_dim) int, expected (N,) float, predictions (N,) float,
    layer2 (N, 512) float32, features (N, F) float32.
    """
    inputs = np.asarray(inputs).astype(np.int64)
    n = inputs.shape[0]
    if inputs.shape[1] != x_dim * y_dim:
        raise ValueError(f"inputs has {inputs.shape[1]} columns, expected x_dim*y_dim = {x_dim * y_dim}")
    for name, arr, ndim in (("expected", expected, 1), ("predictions", predictions, 1),
                            ("layer2", layer2, 2), ("features", features, 2)):
        if np.ndim(arr) != ndim or np.shape(arr)[0] != n:
            raise ValueError(f"{name} has shape {np.shape(arr)}, expected {ndim}-D with {n} rows")
        if not np.isfinite(arr).all():  # a NaN would sort arbitrarily and is no valid xlsx number
            raise ValueError(f"{name} has non-finite values")
    rows = np.arange(n)
    last = (y_dim - 1) * x_dim
    p1, p2 = inputs[:, x_dim - 1], inputs[:, last + x_dim - 1]
    n_ids, n_acts = top_k_desc(np.asarray(layer2), top_k)
    f_ids, f_acts = top_k_desc(np.asarray(features), top_k)
    return CircuitTrace(
        inputs=inputs,
        p1=p1,
        p2=p2,
        v1=inputs[rows, p1],
        v2=inputs[rows, last + p2],
        expected=np.rint(np.asarray(expected, dtype=np.float64)).astype(np.int64),
        target=np.asarray(expected, dtype=np.float64),
        actual=np.asarray(predictions, dtype=np.float64),
        neuron_id=n_ids,
        neuron_act=np.round(n_acts.astype(np.float64), 6),
        feature_id=f_ids,
        feature_act=np.round(f_acts.astype(np.float64), 6),
    )


def _group_sum(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum weights per distinct key. keys (R,) int64 -> unique keys (G,), sums (G,)."""
    uniq, inv = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inv, weights=weights, minlength=len(uniq))


# ---------------------------------------------------------------- workbook


def _list_text(values: np.ndarray) -> str:
    return "[" + ", ".join(map(str, values)) + "]"


def _write_trace_xlsx(path: Path, t: CircuitTrace) -> None:
    """Write the long table as one sheet, streaming the sheet XML ourselves.

    openpyxl builds a Python object per cell (1.6M here) and takes tens of seconds; the
    XML is regular, so per sample the six leading and five trailing cells are formatted
    once and only the five per-rank cells per row. Strings go to the shared-string table.
    Cell styles (`s`) are jax_impl.files.xlsx's: 1 header, 2 centred, 3 centred "0.0000".
    """
    n, k = t.neuron_id.shape
    strings: dict[str, int] = {}

    def s_cell(text: str) -> str:
        return f'<c s="2" t="s"><v>{strings.setdefault(text, len(strings))}</v></c>'

    sample_text = {
        "idx_combination": [f"{a}-{b}" for a, b in zip(t.p1.tolist(), t.p2.tolist())],
        "val_combination": [f"{a}-{b}" for a, b in zip(t.v1.tolist(), t.v2.tolist())],
        "inputs": [_list_text(row) for row in t.inputs.tolist()],
        "indices": [f"({a}, {b})" for a, b in zip(t.p1.tolist(), t.p2.tolist())],
        "values": [f"({a}, {b})" for a, b in zip(t.v1.tolist(), t.v2.tolist())],
        "outputs": [f"[{v!r}]" for v in t.target.tolist()],
    }
    actual = np.round(t.actual, 4)
    delta = np.round(np.abs(t.actual - t.expected), 4)
    equals = np.rint(t.actual).astype(np.int64) == t.expected
    prefix = [
        f'<c s="2"><v>{s + 1}</v></c>' + "".join(s_cell(sample_text[c][s]) for c in TRACE_COLUMNS[1:6])
        for s in range(n)
    ]
    suffix = [
        s_cell(out) + f'<c s="2"><v>{e}</v></c><c s="3"><v>{a!r}</v></c><c s="3"><v>{d!r}</v></c>'
        f'<c s="2" t="b"><v>{int(q)}</v></c>'
        for out, e, a, d, q in zip(sample_text["outputs"], t.expected.tolist(), actual.tolist(),
                                   delta.tolist(), equals.tolist())
    ]
    n_ids, f_ids = t.neuron_id.tolist(), t.feature_id.tolist()
    n_acts, f_acts = t.neuron_act.tolist(), t.feature_act.tolist()

    def sheet_rows() -> Iterator[str]:
        yield '<row r="1">' + "".join(
            f'<c s="1" t="s"><v>{strings.setdefault(c, len(strings))}</v></c>' for c in TRACE_COLUMNS) + "</row>"
        r = 2
        for s in range(n):
            pre, suf = prefix[s], suffix[s]
            ni, na, fi, fa = n_ids[s], n_acts[s], f_ids[s], f_acts[s]
            yield "".join(
                f'<row r="{r + j}">{pre}<c s="2"><v>{j + 1}</v></c><c s="2"><v>{ni[j]}</v></c>'
                f'<c s="2"><v>{na[j]!r}</v></c><c s="2"><v>{fi[j]}</v></c><c s="2"><v>{fa[j]!r}</v></c>{suf}</row>'
                for j in range(k))
            r += k

    # Width = longest shown text + 2, as the reference sizes its columns.
    def longest(values: list) -> int:
        return max((len(str(v)) for v in values), default=0)

    widths = [
        longest([n]), *(longest(sample_text[c]) for c in TRACE_COLUMNS[1:6]), longest([k]),
        longest(np.unique(t.neuron_id).tolist()), longest(np.unique(t.neuron_act).tolist()),
        longest(np.unique(t.feature_id).tolist()), longest(np.unique(t.feature_act).tolist()),
        longest(sample_text["outputs"]), longest(np.unique(t.expected).tolist()),
        # "0.0000" shows at least 6 characters; a boolean shows as TRUE/FALSE.
        max(longest(np.unique(actual).tolist()), 6), max(longest(np.unique(delta).tolist()), 6), 5,
    ]
    cols = "".join(
        f'<col min="{i + 1}" max="{i + 1}" width="{max(w, len(name)) + 2}" customWidth="1"/>'
        for i, (name, w) in enumerate(zip(TRACE_COLUMNS, widths)))
    last_cell = f"{xlsx.column_letter(len(TRACE_COLUMNS) - 1)}{n * k + 1}"
    sheet_head = xlsx.sheet_start(
        f'<dimension ref="A1:{last_cell}"/><sheetViews><sheetView workbookViewId="0">'
        '<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
        '<selection pane="bottomLeft" activeCell="A2" sqref="A2"/></sheetView></sheetViews>'
        f'<sheetFormatPr defaultRowHeight="15"/><cols>{cols}</cols>'
    )
    xlsx.write_workbook(path, "Detailed Trace", chain([sheet_head], sheet_rows(), [xlsx.SHEET_END]), strings)


# ---------------------------------------------------------------- pages



def _write_page(path: Path, *, title: str, notes: list[str], data: dict, script: str,
                controls: str = "", sidebar: str = "", height: int = 640) -> None:
    """One self-contained HTML page: plotly.js inline, the data as JSON, a small script.

    ``controls`` (HTML) go above the plot, ``sidebar`` (HTML) to its right.
    """

    # "</" cannot end the <script> early once escaped; labels are ours, this is belt and braces.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    html = fill(template("report_page.html"),
        TITLE=escape(title), HEIGHT=str(height), CONTROLS=controls, SIDEBAR=sidebar, DATA=payload, SCRIPT=script,
        NOTES="\n".join(f'<p class="note">{n}</p>' for n in notes), PLOTLYJS=get_plotlyjs())
    write_text_atomic(path, html)


_CONFIG_JS = "const CONFIG = {responsive: true, displaylogo: false};"


def heatmap_data(t: CircuitTrace, top_pairs: int = HEATMAP_TOP_PAIRS) -> dict:
    """Summed energy per (expected output, index combination) cell and its strongest pairs.

    Returns rows (expected outputs, ascending), cols ("p1-p2" labels present, ascending),
    z (rows x cols) summed energy, samples (rows x cols) sample counts, and pairs: per cell
    a list of up to ``top_pairs`` (neuron_id, feature_id, summed energy), strongest first.
    """
    n_feat, p_base = int(t.feature_id.max()) + 1, int(t.p2.max()) + 1
    idx_code = t.p1 * p_base + t.p2
    out_vals, out_pos = np.unique(t.expected, return_inverse=True)
    idx_vals, idx_pos = np.unique(idx_code, return_inverse=True)
    cell = out_pos * len(idx_vals) + idx_pos                        # (N,)
    energy = t.energy.ravel()
    z = np.bincount(t.per_row(cell), weights=energy, minlength=len(out_vals) * len(idx_vals))
    samples = np.bincount(cell, minlength=len(z))

    pair = t.neuron_id.ravel() * n_feat + t.feature_id.ravel()
    pair_space = (int(t.neuron_id.max()) + 1) * n_feat
    keys, sums = _group_sum(t.per_row(cell) * pair_space + pair, energy)
    key_cell, key_pair = keys // pair_space, keys % pair_space
    order = np.lexsort((key_pair, -sums, key_cell))                 # by cell, then energy desc
    key_cell, key_pair, sums = key_cell[order], key_pair[order], sums[order]
    starts = np.searchsorted(key_cell, np.arange(len(z)))
    rank_in_cell = np.arange(len(key_cell)) - starts[key_cell]
    pairs: list[list] = [[] for _ in range(len(z))]
    for c, p, e in zip(*(a[rank_in_cell < top_pairs].tolist() for a in (key_cell, key_pair, sums))):
        pairs[c].append([p // n_feat, p % n_feat, round(e, 4)])
    return {
        "rows": out_vals.tolist(),
        "cols": [f"{c // p_base}-{c % p_base}" for c in idx_vals.tolist()],
        "z": np.round(z, 4).reshape(len(out_vals), len(idx_vals)).tolist(),
        "samples": samples.reshape(len(out_vals), len(idx_vals)).tolist(),
        "pairs": [pairs[i * len(idx_vals):(i + 1) * len(idx_vals)] for i in range(len(out_vals))],
    }


_HEATMAP_JS = _CONFIG_JS + "\n" + template("heatmap.js")  # jax_impl/reports/templates/heatmap.js


def bell_curve_data(t: CircuitTrace, max_pairs: int = BELL_MAX_PAIRS) -> dict:
    """Energy statistics per neuron<->feature pair seen in more than 2 rows.

    Returns parallel lists for the ``max_pairs`` pairs with the largest mean * count
    (descending): neuron, feature, mean, std (sample std, ddof=1), count. Pairs whose
    energy never varies (std 0) have no curve to draw and are left out.
    """
    n_feat = int(t.feature_id.max()) + 1
    energy = t.energy.ravel()
    uniq, inv, count = np.unique(t.neuron_id.ravel() * n_feat + t.feature_id.ravel(),
                                 return_inverse=True, return_counts=True)
    mean = np.bincount(inv, weights=energy) / count
    sq = np.bincount(inv, weights=(energy - mean[inv]) ** 2)        # two-pass: no cancellation
    std = np.sqrt(sq / np.maximum(count - 1, 1))
    keep = (count > 2) & (std > 0)
    uniq, mean, std, count = uniq[keep], mean[keep], std[keep], count[keep]
    order = np.lexsort((uniq, -(mean * count)))[:max_pairs]
    return {
        "neuron": (uniq[order] // n_feat).tolist(),
        "feature": (uniq[order] % n_feat).tolist(),
        "mean": np.round(mean[order], 6).tolist(),
        "std": np.round(std[order], 6).tolist(),
        "count": count[order].tolist(),
    }


_BELL_JS = _CONFIG_JS + "\n" + template("bell.js")  # jax_impl/reports/templates/bell.js


def _sankey_view(codes: list[np.ndarray], energy: np.ndarray, labels: list[Callable[[int], str]],
                 links_per_step: int) -> dict:
    """Nodes and links of the 5-column Sankey for some rows of the long table.

    codes: per column an (R,) int64 node code per row; energy (R,) float64.
    Per step (column c -> c + 1) the ``links_per_step`` largest energy sums are kept;
    the nodes are those these links touch. Node ids are positions in the returned lists.
    """
    steps = []
    for src, tgt in zip(codes[:-1], codes[1:]):
        base = int(tgt.max()) + 1
        keys, sums = _group_sum(src * base + tgt, energy)
        top = np.lexsort((keys, -sums))[:links_per_step]
        top = top[sums[top] > 0]
        steps.append((keys[top] // base, keys[top] % base, sums[top]))

    node_id: list[dict[int, int]] = []
    view: dict[str, list] = {"label": [], "flow": [], "column": []}
    for c in range(len(codes)):
        ends = ([(steps[c - 1][1], steps[c - 1][2])] if c > 0 else []) + \
               ([(steps[c][0], steps[c][2])] if c < len(steps) else [])
        nodes = np.unique(np.concatenate([e for e, _ in ends]))
        # A node is as tall as the larger of its in- and out-flow (as plotly draws it).
        flow = np.max([np.bincount(np.searchsorted(nodes, e), weights=w, minlength=len(nodes))
                       for e, w in ends], axis=0)
        # Neurons and features strongest first; the other columns in their natural order.
        order = np.argsort(-flow, kind="stable") if c in (2, 3) else np.arange(len(nodes))
        nodes, flow = nodes[order], flow[order]
        node_id.append({code: len(view["label"]) + i for i, code in enumerate(nodes.tolist())})
        view["label"] += [labels[c](code) for code in nodes.tolist()]
        view["flow"] += np.round(flow, 4).tolist()
        view["column"] += [c] * len(nodes)
    view["source"] = [node_id[c][s] for c, (src, _, _) in enumerate(steps) for s in src.tolist()]
    view["target"] = [node_id[c + 1][d] for c, (_, tgt, _) in enumerate(steps) for d in tgt.tolist()]
    view["value"] = np.round(np.concatenate([v for _, _, v in steps]), 4).tolist()
    return view


def sankey_data(t: CircuitTrace, links_per_step: int = SANKEY_LINKS_PER_STEP) -> dict:
    """The Sankey for all samples plus one view per expected output and per index combination.

    Returns {"views": {key: view}, "filters": [(group label, [(key, option text), ...])]};
    a view holds the nodes (label, flow = node height, column; column by column in display
    order) and the links (source, target: node positions; value: summed energy).
    """
    p_base, v_base = int(t.p2.max()) + 1, int(max(t.v1.max(), t.v2.max())) + 1
    out_min = int(t.expected.min())
    codes = [t.per_row(t.p1 * p_base + t.p2), t.per_row(t.v1 * v_base + t.v2),
             t.neuron_id.ravel(), t.feature_id.ravel(), t.per_row(t.expected - out_min)]
    labels = [lambda c: f"idx {c // p_base}-{c % p_base}", lambda c: f"val {c // v_base}-{c % v_base}",
              lambda c: f"neuron {c}", lambda c: f"feature {c}", lambda c: f"out {c + out_min}"]
    energy = t.energy.ravel()

    def view(sample_mask: np.ndarray) -> dict:
        rows = t.per_row(sample_mask)
        return _sankey_view([c[rows] for c in codes], energy[rows], labels, links_per_step)

    views = {"all": view(np.ones(len(t.p1), bool))}
    by_output, by_index = [], []
    for out in np.unique(t.expected).tolist():
        views[f"out:{out}"] = view(t.expected == out)
        by_output.append((f"out:{out}", f"expected output {out}"))
    for code in np.unique(t.p1 * p_base + t.p2).tolist():
        p1, p2 = divmod(code, p_base)
        views[f"idx:{p1}-{p2}"] = view((t.p1 == p1) & (t.p2 == p2))
        by_index.append((f"idx:{p1}-{p2}", f"index combination {p1}-{p2}"))
    return {"views": views, "filters": [("expected output (last column)", by_output),
                                        ("index combination (first column)", by_index)]}


def causal_sankey_view(causal: Mapping[str, Any]) -> dict | None:
    """The causal view of the Sankey from a causal.json document (jax_impl.evaluation.causal): the sparse circuit's
    variables -> their named features -> the output. Link widths are measured effects, not correlations:
    variable -> feature, the mean |change of the output| when that feature alone is patched from the variable's
    source rows; feature -> output, the mean |change| when it is mean-ablated from the circuit. None without a
    circuit. A view like sankey_data's, with its own column heads."""
    circuit = causal.get("circuit") if isinstance(causal, Mapping) else None
    if not circuit:
        return None
    hook = circuit["hook"]
    names = causal.get("hooks", {}).get(hook, {}).get("features", {})
    kept = [int(f) for f in circuit["features"]]
    to_output = dict(zip(kept, circuit.get("effects", [])))
    links: list[tuple[str, str, float]] = []
    for variable in circuit["variables"]:
        chosen = (causal["variables"][variable]["by_hook"][hook].get("features") or {})
        for feature, effect in zip(chosen.get("chosen", []), chosen.get("effects", [])):
            if effect and effect > 0:
                links.append((f"var:{variable}", f"feat:{feature}", float(effect)))
    for feature, effect in to_output.items():
        if effect and effect > 0:
            links.append((f"feat:{feature}", "out", float(effect)))
    if not links:
        return None

    def label(node: str) -> str:
        kind, _, name = node.partition(":")
        if kind == "var":
            return f"variable {name}"
        if kind == "feat":
            info = names.get(name, {})
            return f"feature {name}" + (f": {info['label']} (F1 {info['f1']:.2f})" if info.get("label") else "")
        return f"output (circuit: {100 * circuit['share']:.0f}% of rows)"

    column = {"var": 1, "feat": 3, "out": 4}
    nodes = list(dict.fromkeys(n for link in links for n in link[:2]))
    nodes.sort(key=lambda n: column[n.partition(":")[0]])
    index = {n: i for i, n in enumerate(nodes)}
    flow_in, flow_out = np.zeros(len(nodes)), np.zeros(len(nodes))
    for a, b, v in links:
        flow_out[index[a]] += v
        flow_in[index[b]] += v
    return {
        "label": [label(n) for n in nodes], "flow": np.round(np.maximum(flow_in, flow_out), 4).tolist(),
        "column": [column[n.partition(":")[0]] for n in nodes],
        "source": [index[a] for a, _, _ in links], "target": [index[b] for _, b, _ in links],
        "value": [round(v, 4) for _, _, v in links],
        "heads": ["", f"task variable (interchange at {hook})", "", "SAE feature (named by the causal map)",
                  "model output"],
        "measure": "measured effect (mean |change of the output|)",
    }


_SANKEY_JS = _CONFIG_JS + "\n" + template("sankey.js")  # jax_impl/reports/templates/sankey.js


def _write_heatmap_page(path: Path, t: CircuitTrace, notes: list[str]) -> None:
    hm = heatmap_data(t)
    _write_page(
        path, title="Logic circuit map: summed energy per expected output and pointer pair",
        notes=[notes[0] + " Colour and cell number: energy summed over all rows of the samples in that cell. "
               f"Hover a cell for its {HEATMAP_TOP_PAIRS} strongest neuron &harr; feature pairs.", *notes[1:]],
        data=hm, script=_HEATMAP_JS, height=max(420, 40 * len(hm["rows"]) + 140))


def _write_bell_page(path: Path, t: CircuitTrace, notes: list[str]) -> int:
    """Returns the number of pairs offered."""
    stats = bell_curve_data(t)
    n_pairs = len(stats["neuron"])
    sidebar = (
        '<div class="side"><label for="pairs"><b>Pairs to draw</b> (ctrl/shift-click for several), '
        'ranked by mean &times; rows:</label><select id="pairs" multiple size="26"></select>'
        f'<p><button id="reset" type="button">Reset to top {BELL_DEFAULT_SHOWN}</button> '
        '<span class="note" id="shown"></span></p></div>')
    _write_page(
        path, title="Circuit bell curves: energy distribution per neuron \u2194 feature pair",
        notes=[notes[0] + " Each curve is the normal density with the mean and standard deviation of one "
               f"pair's row energies; {n_pairs} pairs seen in more than 2 rows (at most the top "
               f"{BELL_MAX_PAIRS} by mean &times; rows).", *notes[1:]],
        data={"stats": stats, "default_shown": BELL_DEFAULT_SHOWN}, script=_BELL_JS,
        sidebar=sidebar, height=520)
    return n_pairs


def _write_sankey_page(path: Path, t: CircuitTrace, notes: list[str], causal: Mapping[str, Any] | None = None) -> None:
    sk = sankey_data(t)
    causal_view = causal_sankey_view(causal) if causal is not None else None
    if causal_view is not None:
        sk["views"]["causal"] = causal_view
        sk["filters"].insert(0, ("causal view (interventions, monosem causal)",
                                 [("causal", "the sparse circuit: variables -> named features -> output")]))
    options = '<option value="all">all samples</option>' + "".join(
        f'<optgroup label="{group}">' + "".join(f'<option value="{v}">{text}</option>' for v, text in opts)
        + "</optgroup>" for group, opts in sk["filters"])
    controls = (f'<div class="controls"><label for="filter">Only samples with:</label>'
                f'<select id="filter">{options}</select><button id="reset" type="button">Show all</button>'
                '<span class="note" id="shown"></span></div>')
    _write_page(
        path, title="Circuit flow: index combination \u2192 values \u2192 neuron \u2192 SAE feature "
                    "\u2192 expected output",
        notes=[notes[0] + " Link width: energy summed over the rows that pass through both ends; the "
               f"{SANKEY_LINKS_PER_STEP} largest links of each step are drawn. Hover for values.", *notes[1:]],
        data={"views": sk["views"]}, script=_SANKEY_JS, controls=controls, height=840)


def write_reports(
    out_dir: Path,
    inputs: np.ndarray,
    expected: np.ndarray,
    predictions: np.ndarray,
    layer2: np.ndarray,
    features: np.ndarray,
    *,
    x_dim: int = 5,
    y_dim: int = 2,
    top_k: int = 10,
    log: Callable[[str], object] = print,
    causal: Mapping[str, Any] | None = None,
    link_circuit: bool | None = None,
) -> dict[str, Path]:
    """Write the trace workbook and the three circuit pages into ``out_dir``.

    inputs (N, x_dim * y_dim) int, expected (N,) float, predictions (N,) float,
    layer2 (N, 512) float32, features (N, F) float32.
    causal: a causal.json document (jax_impl.evaluation.causal); its sparse circuit becomes the Sankey's causal view.
    Each page links to out_dir's attribution-graph page (circuit/circuit.html) when out_dir holds a circuit, or as
    link_circuit says (a pipeline stage writes into a staging folder whose run directory holds the circuit).
    Returns {"trace", "heatmap", "bell_curves", "sankey"} -> written path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / file for name, file in REPORT_FILES.items()}
    start = clock = time.perf_counter()

    def done(what: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        log(f"{what} ({now - clock:.2f} s)")
        clock = now

    t = circuit_trace_table(inputs, expected, predictions, layer2, features,
                            x_dim=x_dim, y_dim=y_dim, top_k=top_k)
    n, k = t.neuron_id.shape
    done(f"Traced {n:,} samples x top-{k}")
    notes = [ENERGY_NOTE.format(k=k, neurons=np.shape(layer2)[1]),
             f"{n:,} samples &times; top-{k} = {n * k:,} rows. Inputs: {y_dim} columns of {x_dim} integers, "
             "pointers p1, p2 = last entry of the first and last column; expected output = |a[p1] - b[p2]|."]
    href = circuit_link(out_dir) if link_circuit is None else (CIRCUIT_HTML if link_circuit else None)
    if href is not None:
        notes.append(link_note(href))
    _write_trace_xlsx(paths["trace"], t)
    done(f"Circuit trace ({n * k:,} rows) saved to {paths['trace']}")
    _write_heatmap_page(paths["heatmap"], t, notes)
    done(f"Logic heatmap saved to {paths['heatmap']}")
    n_pairs = _write_bell_page(paths["bell_curves"], t, notes)
    done(f"Bell curves ({n_pairs} pairs) saved to {paths['bell_curves']}")
    _write_sankey_page(paths["sankey"], t, notes, causal)
    done(f"Sankey diagram saved to {paths['sankey']}")
    log(f"Reports written in {time.perf_counter() - start:.1f} s")
    return paths
