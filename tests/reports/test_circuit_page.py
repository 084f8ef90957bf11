"""The attribution-graph page (reports/circuit_page.py) from synthetic circuit.json documents: its HTML (offline,
the document embedded and escaped), the reports' links to it, and the page in a real headless Chromium, offline
(as tests/reports/test_reports_browser.py): one SVG element per node and edge of the selected graph, switching
graphs, hover, the global view, and documents at the edges (no edges, only error nodes, 1,000 graphs, no optional
fields)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from test_reports_browser import browser  # noqa: F401  (fixture)

from benchmarks.report_demo import demo_arrays
from jax_impl.reports import circuit_trace
from jax_impl.reports.atlas_page import write_atlas
from jax_impl.reports.circuit_page import CIRCUIT_HTML, CIRCUIT_JSON, circuit_link, render_page
from jax_impl.reports.templates import template

EVIL = '</script><b class="x">bold</b><!--'
HIDDEN = ("layer1", "layer2", "layer3")
HIGHLIGHTED = "() => Array.from(document.querySelectorAll('#graph .node.hl'), n => n.dataset.id)"
DATA = re.compile(r'<script id="circuit-data" type="application/json">(.*?)</script>', re.S)


def make_graph(rng: np.random.Generator, sizes: tuple[int, int, int], label: str | None = None) -> dict:
    """One graph in the circuit.json shape: 10 input cells, sizes[k] features of each hidden layer, an error node
    per hidden layer, the output; edges from every node of a column to every node of the next, signed weights."""
    x = [int(v) for v in rng.integers(0, 10, 10)]
    columns = [[{"id": f"input/{j}", "layer": "input", "feature": j, "activation": float(x[j]),
                 "label": f"a{j} = {x[j]}",
                 "influence": round(float(rng.uniform(0, 0.2)), 4)} for j in range(10)]]
    for layer, size in zip(HIDDEN, sizes):
        ids = sorted(int(f) for f in rng.choice(64, size, replace=False))
        column = [{"id": f"{layer}/{f}", "layer": layer, "feature": f, "activation": round(float(rng.uniform(0, 3)), 4),
                   "label": f"{layer} f{f}", "influence": round(float(rng.uniform(-0.5, 0.5)), 4)} for f in ids]
        column.append({"id": f"error/{layer}", "layer": layer, "feature": None, "activation": 0.3, "label": "error",
                       "influence": 0.02})
        columns.append(column)
    output = round(float(rng.uniform(0, 9)), 4)
    columns.append([{"id": "output", "layer": "output", "feature": None, "activation": output, "label": "prediction",
                     "influence": 1.0}])
    if label is not None:
        columns[1][0]["label"] = label
    edges = [{"source": s["id"], "target": t["id"], "weight": round(float(rng.normal()), 4)}
             for a, b in zip(columns, columns[1:]) for s in a[:4] for t in b]
    nodes = [n for c in columns for n in c]
    checks = [{"node": n["id"], "attributed": n["influence"], "measured": round(n["influence"] + 0.01, 4),
               "agrees": i % 3 != 2} for i, n in enumerate(columns[1][:3])]
    return {"input": x, "target": float(round(output)), "output": output, "completeness": 0.93,
            "n_features": sum(sizes), "nodes": nodes, "edges": edges, "checks": checks}


def make_doc(n_graphs: int = 5, seed: int = 0) -> dict:
    """A circuit.json ("monosem-circuit/1") of n_graphs graphs, graph 0's first layer1 feature labelled EVIL."""
    rng = np.random.default_rng(seed)
    graphs = [make_graph(rng, (2 + i % 3, 1 + i % 2, 2), EVIL if i == 0 else None) for i in range(n_graphs)]
    seen: dict[str, list[int]] = {}
    for i, g in enumerate(graphs):
        for n in g["nodes"]:
            if n["layer"] in HIDDEN and n["feature"] is not None:
                seen.setdefault(n["id"], []).append(i)
    labels: dict[str, str] = {}
    for g in graphs:
        for n in g["nodes"]:
            labels.setdefault(n["id"], n["label"])
    variables = ["A", "B", "D", "T", None]
    features = {fid: {"layer": fid.split("/")[0], "feature": int(fid.split("/")[1]), "label": labels[fid],
                      "variable": variables[k % 5], "graphs": len(at) / n_graphs,
                      "top_inputs": [{"input": graphs[j]["input"], "activation": 1.5} for j in at[:3]]}
                for k, (fid, at) in enumerate(sorted(seen.items()))}
    groups = [{"variable": v, "features": [{"id": fid, "graphs": f["graphs"], "label": f["label"]}
                                           for fid, f in features.items() if f["variable"] == v]} for v in variables]
    layers = [{"name": layer, "reads": r, "writes": layer, "d_in": 10 if r == "input" else 256, "d_out": 256,
               "architecture": "topk", "dict_size": 512, "skip": True, "fvu": 0.01, "l0": 12.3}
              for r, layer in zip(("input", *HIDDEN), HIDDEN)]
    test = {"rows": 2000, "mlp": {"mse": 0.001, "exact_match": 0.999},
            "replacement": {"mse": 0.01, "exact_match": 0.995},
            "replacement_with_errors": {"mse": 0.001, "exact_match": 0.999}}
    return {"format": "monosem-circuit/1", "share": 0.9, "replacement": {"layers": layers, "test": test},
            "graphs": graphs, "features": features, "global": {"graphs": n_graphs, "groups": groups}}


@pytest.fixture(scope="module")
def doc() -> dict:
    return make_doc()


def embedded(page_html: str) -> dict:
    (data,) = DATA.findall(page_html)
    return json.loads(data)


# ---------------------------------------------------------------- the HTML


def test_page_is_offline_and_embeds_the_document_escaped(doc):
    page = render_page(doc, title="graphs <b>of</b> x")
    assert embedded(page) == doc
    # the only </script> are the two elements' own; the label's markup stays inside the JSON string
    assert page.count("</script>") == 2 and EVIL not in page and "<!--" not in page and "<b class" not in page
    assert "<title>graphs &lt;b&gt;of&lt;/b&gt; x</title>" in page
    assert "@@" not in page and template("circuit.js") in page and template("circuit.css") in page
    urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s'\"]*", page))
    assert urls == {"http://www.w3.org/2000/svg"}, urls
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=", page)


def test_non_finite_numbers_become_null():
    doc = {"graphs": [{"input": [1], "output": math.nan, "completeness": math.inf, "nodes": [], "edges": []}]}
    g = embedded(render_page(doc))["graphs"][0]
    assert g["output"] is None and g["completeness"] is None and doc["graphs"][0]["output"] != 0  # input untouched


def test_reports_and_atlas_link_to_the_circuit_page_only_when_there_is_one(tmp_path):
    arrays = demo_arrays(40, n_features=32, seed=3)
    atlas = {"rows": 40, "source": "rows"}
    for has_circuit in (False, True):
        out = tmp_path / str(has_circuit)
        if has_circuit:
            (out / CIRCUIT_JSON).parent.mkdir(parents=True)
            (out / CIRCUIT_JSON).write_text("{}")
        assert circuit_link(out) == (CIRCUIT_HTML if has_circuit else None)
        paths = circuit_trace.write_reports(out, **arrays, log=lambda _: None)
        pages = [paths[k] for k in ("heatmap", "bell_curves", "sankey")] + [write_atlas(atlas, out)[1]]
        for page in pages:
            assert (f'<a href="{CIRCUIT_HTML}">' in page.read_text(encoding="utf-8")) == has_circuit, page


# ---------------------------------------------------------------- in Chromium


@pytest.fixture
def open_page(browser, tmp_path):  # noqa: F811
    """(doc, hash) -> a page showing render_page(doc), opened offline; on teardown asserts that no console error
    or uncaught exception happened and nothing but the page's file was requested."""
    contexts, errors, requests = [], [], []

    def open_(document: dict, fragment: str = ""):
        path = tmp_path / f"circuit{len(contexts)}.html"
        path.write_text(render_page(document), encoding="utf-8")
        context = browser.new_context(viewport={"width": 1300, "height": 900}, offline=True)
        context.route("**/*", lambda r: (requests.append(r.request.url),
                                         r.continue_() if r.request.url.startswith("file://") else r.abort()))
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(5_000)
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri() + fragment)
        page.wait_for_selector("body[data-ready]", timeout=10_000)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == []
    assert requests and all(u.startswith("file://") for u in requests), requests


def drawn(page) -> dict:
    return page.evaluate("""() => ({
        nodes: Array.from(document.querySelectorAll('#graph svg .node'), n => n.getAttribute('data-id')),
        errors: document.querySelectorAll('#graph svg .node.error rect').length,
        edges: document.querySelectorAll('#graph svg path.edge').length,
        red: document.querySelectorAll('#graph svg path.edge[stroke="#c53030"]').length,
        title: document.getElementById('graph-title').textContent})""")


def expect(graph: dict) -> dict:
    return {"nodes": sorted(n["id"] for n in graph["nodes"]), "edges": len(graph["edges"]),
            "errors": sum(n["id"].startswith("error/") for n in graph["nodes"]),
            "red": sum(e["weight"] < 0 for e in graph["edges"])}


def check_drawn(page, graph: dict, i: int) -> None:
    got = drawn(page)
    assert got["title"].startswith(f"Graph #{i} of ")
    assert {**got, "nodes": sorted(got["nodes"])} | {"title": None} == expect(graph) | {"title": None}


def test_graph_is_drawn_and_the_hash_switches_it(open_page, doc):
    assert expect(doc["graphs"][0]) != expect(doc["graphs"][2])  # so that switching shows
    page = open_page(doc)
    check_drawn(page, doc["graphs"][0], 0)
    assert page.locator("#summary .card", has_text="completeness").inner_text().startswith("0.930")
    assert page.locator("#checks tr").count() == 1 + len(doc["graphs"][0]["checks"])
    assert page.locator("#replacement-body tr").count() == (1 + 3) + (1 + 3)
    # the widest edge is the one with the largest |weight|
    widths = page.evaluate("() => Array.from(document.querySelectorAll('#graph path.edge'), e =>"
                           " [+e.getAttribute('stroke-width'), e.getAttribute('data-source'),"
                           " e.getAttribute('data-target')])")
    top = max(doc["graphs"][0]["edges"], key=lambda e: abs(e["weight"]))
    assert max(widths)[1:] == [top["source"], top["target"]] and max(widths)[0] > 4 * min(widths)[0]

    page.evaluate("() => { location.hash = '#graph=2'; }")
    page.wait_for_function("() => document.getElementById('graph-title').textContent.startsWith('Graph #2 ')")
    check_drawn(page, doc["graphs"][2], 2)
    page.click("#next")
    check_drawn(page, doc["graphs"][3], 3)
    assert page.evaluate("() => location.hash") == "#graph=3"
    check_drawn(open_page(doc, "#graph=4"), doc["graphs"][4], 4)


def test_hover_shows_atlas_label_and_top_inputs_as_text(open_page, doc):
    page = open_page(doc)
    g = doc["graphs"][0]
    evil = next(n for n in g["nodes"] if n["label"] == EVIL)
    page.hover(f'#graph .node[data-id="{evil["id"]}"] circle')
    tip = page.locator("#tip")
    assert tip.is_visible()
    text = tip.inner_text()
    f = doc["features"][evil["id"]]
    assert EVIL in text and f"atlas label: {EVIL}" in text
    assert f"activation {evil['activation']:.3f}" in text and f"influence {evil['influence']:.3f}" in text
    assert "[" + ",".join(map(str, f["top_inputs"][0]["input"])) + "] → 1.500" in text
    assert page.evaluate("() => document.querySelectorAll('b.x').length") == 0  # the label made no element
    assert page.locator("#graph svg.focus").count() == 1  # its edges lit, the rest dimmed
    lit = page.locator("#graph path.edge.lit").count()
    assert lit == sum(evil["id"] in (e["source"], e["target"]) for e in g["edges"]) > 0
    page.mouse.move(5, 5)
    assert not tip.is_visible()


def test_global_view_highlights_a_feature_in_the_current_graph(open_page, doc):
    page = open_page(doc)
    ids = {n["id"] for n in doc["graphs"][0]["nodes"]}
    groups = doc["global"]["groups"]
    assert page.locator("#groups h3").all_inner_texts() == [g["variable"] or "unassigned" for g in groups]
    listed = [f["id"] for g in groups for f in g["features"]]
    inside = next(i for i in listed if i in ids)
    outside = next(i for i in listed if i not in ids)
    assert page.locator("#groups li.present").count() == sum(i in ids for i in listed)
    page.click(f'#groups li[data-id="{inside}"]')
    assert page.evaluate(HIGHLIGHTED) == [inside]
    page.click(f'#groups li[data-id="{outside}"]')
    assert page.locator("#graph .node.hl").count() == 0
    assert f"{outside} is not in graph #0" in page.inner_text("#hl-note")
    # the note offers the next graph that has it, and the highlight follows there
    j = next(i for i, g in enumerate(doc["graphs"]) if outside in {n["id"] for n in g["nodes"]})
    page.click("#hl-next")
    check_drawn(page, doc["graphs"][j], j)
    assert page.evaluate("() => location.hash") == f"#graph={j}&feature={outside.replace('/', '%2F')}"
    reopened = open_page(doc, f"#graph={j}&feature={outside.replace('/', '%2F')}")
    assert reopened.evaluate(HIGHLIGHTED) == [outside]
    assert page.evaluate(HIGHLIGHTED) == [outside]


def test_documents_at_the_edges(open_page):
    rng = np.random.default_rng(5)
    no_edges = make_graph(rng, (2, 2, 2)) | {"edges": [], "checks": []}
    errors_only = {"input": [1] * 10, "output": 2.0, "completeness": 0.0, "n_features": 0,
                   "nodes": [{"id": f"error/{h}", "layer": h, "feature": None, "activation": 0.1, "label": "error",
                              "influence": 0.3} for h in HIDDEN],
                   "edges": [{"source": "error/layer1", "target": "error/layer2", "weight": -0.2},
                             {"source": "error/layer2", "target": "missing", "weight": 1.0}]}  # an end not drawn
    # every optional field missing: only graphs with their nodes and edges
    page = open_page({"graphs": [no_edges, errors_only]})
    check_drawn(page, no_edges, 0)
    assert "No global view" in page.inner_text("#groups") and "No replacement model" in page.inner_text("#replacement")
    page.click("#next")
    got = drawn(page)
    assert got["errors"] == 3 and len(got["nodes"]) == 3 and got["edges"] == 1 and got["red"] == 1
    page.hover('#graph .node[data-id="error/layer2"] rect')
    assert "misses" in page.inner_text("#tip")
    assert "has no graphs" in open_page({"graphs": []}).inner_text("#graph-title")


def test_a_thousand_graphs_stay_pickable(open_page):
    rng = np.random.default_rng(9)
    small = [make_graph(rng, (1, 1, 1)) for _ in range(1000)]
    page = open_page({"format": "monosem-circuit/1", "graphs": small})
    assert page.locator("#graphs option").count() == 300 and "300 of 1000" in page.inner_text("#matches")
    page.fill("#graph-n", "999")
    page.dispatch_event("#graph-n", "change")
    check_drawn(page, small[999], 999)
    page.fill("#q", "[" + ",".join(map(str, small[500]["input"])) + "]")
    values = page.evaluate("() => Array.from(document.querySelectorAll('#graphs option'), o => +o.value)")
    assert 500 in values and len(values) < 10
    page.select_option("#graphs", "500")
    check_drawn(page, small[500], 500)
    assert page.evaluate("() => location.hash") == "#graph=500"


def test_template_files_are_package_data_with_their_markers():
    markers = set(re.findall(r"@@[A-Z]+@@", template("circuit_page.html")))
    assert markers == {"@@TITLE@@", "@@CSS@@", "@@DATA@@", "@@JS@@"}
    for name in ("circuit.css", "circuit.js"):
        assert "@@" not in template(name) and len(template(name)) > 500
