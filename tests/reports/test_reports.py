"""Circuit reports: the long table, the workbook, the page data and the offline pages.

Expected values are recomputed here independently (per-row Python sorts and dict sums)
from the arrays that went into the circuit_trace.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import openpyxl
import pytest

from benchmarks.report_demo import demo_arrays
from jax_impl.reports import circuit_trace

N, N_FEATURES, K = 300, 256, 10


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    return demo_arrays(N, n_features=N_FEATURES, seed=7)


@pytest.fixture(scope="module")
def trace(arrays) -> circuit_trace.CircuitTrace:
    return circuit_trace.circuit_trace_table(**arrays)


@pytest.fixture(scope="module")
def written(arrays, tmp_path_factory) -> dict[str, Path]:
    logs: list[str] = []
    paths = circuit_trace.write_reports(tmp_path_factory.mktemp("reports"), **arrays, log=logs.append)
    assert len(logs) == 6 and all(str(p) in "\n".join(logs) for p in paths.values())
    return paths


def top_ids(row: np.ndarray, k: int = K) -> list[int]:
    """Reference top-k: largest first, ties to the lower id."""
    return sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]


def pointer_values(row: np.ndarray, x_dim: int = 5, y_dim: int = 2) -> tuple[int, int, int, int]:
    first, last = row[:x_dim], row[(y_dim - 1) * x_dim:]
    p1, p2 = int(first[-1]), int(last[-1])
    return p1, p2, int(first[p1]), int(last[p2])


def energies_by_row(arrays) -> list[tuple[int, int, int, float]]:
    """(sample, neuron, feature, energy) per row of the long table, by plain Python."""
    rows = []
    for s in range(N):
        l2, f = arrays["layer2"][s], arrays["features"][s]
        for n_id, f_id in zip(top_ids(l2), top_ids(f)):
            rows.append((s, n_id, f_id, round(float(l2[n_id]), 6) * round(float(f[f_id]), 6)))
    return rows


def test_demo_arrays_follow_the_task():
    d = demo_arrays(500, n_features=128, seed=3)
    for row, target in zip(d["inputs"], d["expected"]):
        p1, p2, a, b = pointer_values(row)
        assert 0 <= p1 <= 3 and 0 <= p2 <= 3
        assert target == abs(a - b)
    f = d["features"]
    assert f.dtype == np.float32 and d["layer2"].shape == (500, 512) and f.shape == (500, 128)
    assert f.min() >= 0 and 0.01 < (f > 0).mean() < 0.1


def test_top_k_desc_breaks_ties_by_lower_id():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(50, 30)).astype(np.float32)   # many ties
    x[0] = 0                                                   # all tied
    ids, vals = circuit_trace.top_k_desc(x, 7)
    for row, got_ids, got_vals in zip(x, ids, vals):
        want = top_ids(row, 7)
        assert got_ids.tolist() == want
        assert got_vals.tolist() == row[want].tolist()


def test_top_k_desc_k_larger_than_width():
    ids, _ = circuit_trace.top_k_desc(np.array([[0.5, 2.0, 1.0]], np.float32), 10)
    assert ids.tolist() == [[1, 2, 0]]


def test_trace_table_matches_per_sample_reference(arrays, trace):
    assert trace.neuron_id.shape == trace.feature_id.shape == (N, K)
    for s in range(N):
        p1, p2, a, b = pointer_values(arrays["inputs"][s])
        assert (trace.p1[s], trace.p2[s], trace.v1[s], trace.v2[s]) == (p1, p2, a, b)
        assert trace.expected[s] == round(arrays["expected"][s])
        n_ids, f_ids = top_ids(arrays["layer2"][s]), top_ids(arrays["features"][s])
        assert trace.neuron_id[s].tolist() == n_ids
        assert trace.feature_id[s].tolist() == f_ids
        np.testing.assert_array_equal(trace.neuron_act[s], np.round(arrays["layer2"][s, n_ids].astype(float), 6))
        np.testing.assert_array_equal(trace.feature_act[s], np.round(arrays["features"][s, f_ids].astype(float), 6))
    np.testing.assert_array_equal(trace.energy, trace.neuron_act * trace.feature_act)


def test_trace_table_other_shape_reads_first_and_last_column():
    # 3 columns of 4: [a0 a1 a2 p1 | c0 c1 c2 pc | b0 b1 b2 p2]
    inputs = np.array([[5, 6, 7, 2, 9, 9, 9, 0, 1, 2, 3, 1]])
    t = circuit_trace.circuit_trace_table(inputs, np.array([6.0]), np.array([5.6]), np.ones((1, 512), np.float32),
                                    np.ones((1, 64), np.float32), x_dim=4, y_dim=3, top_k=3)
    assert (t.p1[0], t.p2[0], t.v1[0], t.v2[0]) == (2, 1, 7, 2)
    assert t.neuron_id.tolist() == [[0, 1, 2]]


def test_trace_table_rejects_non_finite(arrays):
    args = dict(arrays, predictions=np.where(np.arange(N) == 5, np.nan, arrays["predictions"]))
    with pytest.raises(ValueError, match="predictions has non-finite"):
        circuit_trace.circuit_trace_table(**args)


@pytest.mark.parametrize("bad", ["inputs", "layer2", "predictions"])
def test_trace_table_rejects_mismatched_shapes(arrays, bad):
    args = dict(arrays)
    args[bad] = args[bad][:-1] if bad != "inputs" else args[bad][:, :-1]
    with pytest.raises(ValueError, match=bad):
        circuit_trace.circuit_trace_table(**args)


def test_workbook_layout(written):
    ws = openpyxl.load_workbook(written["trace"]).active
    assert [c.value for c in ws[1]] == list(circuit_trace.TRACE_COLUMNS)
    assert ws.max_row == N * K + 1 and ws.max_column == len(circuit_trace.TRACE_COLUMNS)
    assert ws.freeze_panes == "A2"
    assert all(c.font.b for c in ws[1])
    for row in (1, 2, 57, ws.max_row):
        for cell in ws[row]:
            assert (cell.alignment.horizontal, cell.alignment.vertical) == ("center", "center"), cell.coordinate
    assert ws["N2"].number_format == ws["O2"].number_format == "0.0000"
    for col_cells in ws.iter_cols():
        letter = col_cells[0].column_letter
        longest = max(len(str(c.value)) for c in col_cells)
        assert ws.column_dimensions[letter].width >= longest, letter


def test_workbook_values_match_arrays(arrays, written):
    ws = openpyxl.load_workbook(written["trace"], read_only=True).active
    rows = list(ws.iter_rows(min_row=2, values_only=True))
    rng = np.random.default_rng(1)
    for r in [0, 9, 10, len(rows) - 1, *rng.integers(0, len(rows), 40).tolist()]:
        row = dict(zip(circuit_trace.TRACE_COLUMNS, rows[r]))
        s, rank = divmod(r, K)
        inp, target, pred = arrays["inputs"][s], arrays["expected"][s], arrays["predictions"][s]
        p1, p2, a, b = pointer_values(inp)
        n_id, f_id = top_ids(arrays["layer2"][s])[rank], top_ids(arrays["features"][s])[rank]
        assert row["sample_id"] == s + 1 and row["rank"] == rank + 1
        assert row["idx_combination"] == f"{p1}-{p2}" and row["val_combination"] == f"{a}-{b}"
        assert row["inputs"] == str(inp.tolist())
        assert row["indices"] == str((p1, p2)) and row["values"] == str((a, b))
        assert (row["neuron_id"], row["feature_id"]) == (n_id, f_id)
        # Rounded as written (6 decimals; numpy and Python may differ by one unit in a near-tie).
        assert row["neuron_act"] == pytest.approx(float(arrays["layer2"][s, n_id]), abs=5.01e-7)
        assert row["feature_act"] == pytest.approx(float(arrays["features"][s, f_id]), abs=5.01e-7)
        assert round(row["neuron_act"], 6) == row["neuron_act"]
        assert row["outputs"] == str([float(target)])
        assert row["expected"] == round(target)
        assert row["actual"] == pytest.approx(float(pred), abs=5.01e-5)
        assert row["delta"] == pytest.approx(abs(float(pred) - round(target)), abs=5.01e-5)
        assert row["equals"] is (round(float(pred)) == round(target))


def test_heatmap_sums_and_top_pairs(arrays, trace):
    cell_energy: dict[tuple, float] = defaultdict(float)
    pair_energy: dict[tuple, dict] = defaultdict(lambda: defaultdict(float))
    for s, n_id, f_id, e in energies_by_row(arrays):
        p1, p2, _, _ = pointer_values(arrays["inputs"][s])
        cell = (round(arrays["expected"][s]), f"{p1}-{p2}")
        cell_energy[cell] += e
        pair_energy[cell][(n_id, f_id)] += e
    hm = circuit_trace.heatmap_data(trace)
    assert hm["rows"] == sorted({c[0] for c in cell_energy})
    assert hm["cols"] == sorted({c[1] for c in cell_energy})
    for i, out in enumerate(hm["rows"]):
        for j, idx in enumerate(hm["cols"]):
            assert hm["z"][i][j] == pytest.approx(cell_energy.get((out, idx), 0.0), abs=1e-3)
            want = sorted(pair_energy[(out, idx)].items(), key=lambda kv: (-kv[1], kv[0]))[:10]
            got = hm["pairs"][i][j]
            assert [(n, f) for n, f, _ in got] == [p for p, _ in want]
            assert [e for _, _, e in got] == pytest.approx([e for _, e in want], abs=1e-4)


def test_bell_curve_stats(arrays, trace):
    by_pair: dict[tuple, list] = defaultdict(list)
    for _, n_id, f_id, e in energies_by_row(arrays):
        by_pair[(n_id, f_id)].append(e)
    kept = {p: v for p, v in by_pair.items() if len(v) > 2 and statistics.stdev(v) > 0}
    want = sorted(kept, key=lambda p: (-statistics.mean(kept[p]) * len(kept[p]), p))
    stats = circuit_trace.bell_curve_data(trace)
    got = list(zip(stats["neuron"], stats["feature"]))
    assert got == want[:circuit_trace.BELL_MAX_PAIRS]
    for i, pair in enumerate(got[:20]):
        assert stats["count"][i] == len(kept[pair])
        assert stats["mean"][i] == pytest.approx(statistics.mean(kept[pair]), abs=1e-6)
        assert stats["std"][i] == pytest.approx(statistics.stdev(kept[pair]), abs=1e-6)
    assert len(circuit_trace.bell_curve_data(trace, max_pairs=5)["neuron"]) == 5


def sankey_reference(arrays, keep=lambda s: True, per_step: int = circuit_trace.SANKEY_LINKS_PER_STEP):
    """(node labels, links) of the Sankey by dict sums over the rows of the kept samples."""
    steps = [defaultdict(float) for _ in range(4)]
    for s, n_id, f_id, e in energies_by_row(arrays):
        if not keep(s):
            continue
        p1, p2, a, b = pointer_values(arrays["inputs"][s])
        col = [f"idx {p1}-{p2}", f"val {a}-{b}", f"neuron {n_id}", f"feature {f_id}",
               f"out {round(arrays['expected'][s])}"]
        for i in range(4):
            steps[i][(col[i], col[i + 1])] += e
    links = {}
    for step in steps:
        top = sorted(step.items(), key=lambda kv: -kv[1])[:per_step]
        links.update((k, v) for k, v in top if v > 0)
    return {n for pair in links for n in pair}, links


def test_sankey_views_match_reference(arrays, trace):
    data = circuit_trace.sankey_data(trace)
    assert set(data["views"]) == {"all"} | {k for _, opts in data["filters"] for k, _ in opts}
    filters = {"all": lambda s: True, "out:3": lambda s: round(arrays["expected"][s]) == 3,
               "idx:1-2": lambda s: tuple(arrays["inputs"][s, [4, 9]]) == (1, 2)}
    for key, keep in filters.items():
        view = data["views"][key]
        nodes, links = sankey_reference(arrays, keep)
        assert set(view["label"]) == nodes and len(view["label"]) == len(nodes)
        got = {(view["label"][s], view["label"][t]): v
               for s, t, v in zip(view["source"], view["target"], view["value"])}
        # Ties at the 250th link could pick a different link; energies are continuous here.
        assert got.keys() == links.keys()
        assert list(got.values()) == pytest.approx([links[k] for k in got], abs=1e-3)
        assert view["column"] == sorted(view["column"])
        inflow, outflow = defaultdict(float), defaultdict(float)
        for (src, dst), v in links.items():
            outflow[src] += v
            inflow[dst] += v
        for label, flow, col in zip(view["label"], view["flow"], view["column"]):
            assert label.split()[0] == ["idx", "val", "neuron", "feature", "out"][col]
            assert flow == pytest.approx(max(inflow[label], outflow[label]), abs=1e-3)
        neuron_flow = [f for f, c in zip(view["flow"], view["column"]) if c == 2]
        assert neuron_flow == sorted(neuron_flow, reverse=True)
    assert max(len(v["source"]) for v in data["views"].values()) <= 4 * circuit_trace.SANKEY_LINKS_PER_STEP


def test_sankey_keeps_only_the_largest_links(arrays, trace):
    view = circuit_trace.sankey_data(trace, links_per_step=5)["views"]["all"]
    _, links = sankey_reference(arrays, per_step=5)
    assert len(view["source"]) == 20 == len(links)


# A tag attribute that would make the browser fetch something: src/href/url()/@import.
NETWORK_REF = re.compile(
    r"""<(?:script|link|img|iframe|source|embed|object)\b[^>]*\b(?:src|href|data)\s*=\s*["']?\s*(?:https?:)?//"""
    r"""|url\(\s*["']?\s*(?:https?:)?//|@import\s+(?:url\()?\s*["']?\s*(?:https?:)?//""",
    re.IGNORECASE)


def test_pages_load_nothing_from_the_network(written):
    assert set(written) == {"trace", "heatmap", "bell_curves", "sankey"}
    for name in ("heatmap", "bell_curves", "sankey"):
        html = written[name].read_text(encoding="utf-8")
        assert NETWORK_REF.search(html) is None, name
        assert "<script src" not in html.lower() and "<link" not in html.lower(), name
        assert html.count("<script") == 2, name  # plotly.js inline, then the page's data and code
    assert NETWORK_REF.search('<script src="https://cdn.plot.ly/plotly-3.0.0.min.js"></script>')
    assert NETWORK_REF.search("<link rel=stylesheet href=//fonts.googleapis.com/css>")


def test_no_temp_files_left(written):
    assert sorted(p.name for p in written["trace"].parent.iterdir()) == sorted(circuit_trace.REPORT_FILES.values())


def test_all_zero_activations_still_write_every_report(arrays, tmp_path):
    # An untrained or dead model: every energy is 0, so no pair has a curve and no link is kept.
    zero = dict(arrays, layer2=np.zeros_like(arrays["layer2"]), features=np.zeros_like(arrays["features"]))
    paths = circuit_trace.write_reports(tmp_path, **zero, log=lambda _: None)
    t = circuit_trace.circuit_trace_table(**zero)
    assert t.neuron_id[0].tolist() == list(range(K))  # ties: lowest ids first
    assert circuit_trace.bell_curve_data(t)["neuron"] == []
    assert all(v["source"] == [] for v in circuit_trace.sankey_data(t)["views"].values())
    assert all(p.stat().st_size > 0 for p in paths.values())
