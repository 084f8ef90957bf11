"""The causal map's page and the Sankey's causal view, from a map of two planted networks: their data, and
both pages in a real headless Chromium, offline (as tests/reports/test_reports_browser.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_reports_browser import GD, N_FEATURES, N, browser, open_offline, page_at  # noqa: F401  (fixtures)

from benchmarks.report_demo import demo_arrays
from jax_impl.evaluation.causal import CausalConfig
from jax_impl.evaluation.causal.planted import early_selection, identity_dictionary, late_selection
from jax_impl.evaluation.causal.study import PairSet, causal_map_of_site
from jax_impl.jobs.causal import build_document, write_causal
from jax_impl.reports import circuit_trace
from jax_impl.task.pointer import TaskShape
from jax_impl.task.variables import TaskVariables

TINY = CausalConfig(fit_pairs=128, eval_pairs=128, isolation_pairs=64, ranks=(1, 4), das_steps=100, max_features=4,
                    shortlist=8, random_draws=1, circuit_rows=128)
NAMES = ["P1", "A", "B", "T"]


@pytest.fixture(scope="module")
def document():
    variables = TaskVariables(TaskShape())
    pairs = PairSet.draw(variables, TINY, names=NAMES)
    by_hook = {}
    for hook, site in (("layer1", late_selection()), ("layer2", early_selection())):
        doc = causal_map_of_site(site, identity_dictionary(site.width), variables, pairs, TINY)
        by_hook[hook] = doc | {"sae": f"planted/{hook}"}
    return build_document(by_hook, variables, pairs, TINY)


def test_document_names_where_each_variable_is_mediated(document, tmp_path):
    v = document["variables"]
    # late selection (layer1 here) holds the pointer; early selection (layer2) holds the selected values
    assert v["P1"]["best"]["hook"] == "layer1" and v["P1"]["best"]["iia"] == 1.0
    assert v["A"]["best"]["features"] and v["A"]["best"]["iia"] == 1.0
    assert document["circuit"]["share"] == 1.0
    json_path, html_path = write_causal(document, tmp_path)
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(document))
    assert "http" not in html_path.read_text().replace("http://www.w3.org/2000/svg", "")


def test_sankey_causal_view_links_are_measured_effects(document):
    view = circuit_trace.causal_sankey_view(document)
    c = document["circuit"]
    assert view["heads"][1].startswith("task variable") and set(view["column"]) <= {1, 3, 4}
    to_output = [val for s, t, val in zip(view["source"], view["target"], view["value"]) if view["column"][t] == 4]
    assert sorted(to_output) == sorted(round(e, 4) for e in c["effects"] if e > 0)
    assert circuit_trace.causal_sankey_view({"circuit": None}) is None


def test_causal_page_in_chromium(browser, document, tmp_path):  # noqa: F811
    _, html_path = write_causal(document, tmp_path)
    errors, requests = [], []
    context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
    context.route("**/*", lambda r: (requests.append(r.request.url),
                                     r.continue_() if r.request.url.startswith("file://") else r.abort()))
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(html_path.as_uri())
    page.wait_for_selector("#chart-features svg")
    # four heatmaps of variables x hooks, one star per variable and heatmap
    assert page.locator("table.heat td.cell").count() == 4 * len(NAMES) * 2
    assert page.locator("table.heat td.cell", has_text="\u2605").count() == 4 * len(NAMES)
    page.locator("table.heat").first.locator("td.cell").nth(2).click()  # A at layer1
    assert page.text_content("#detail-title").startswith("A at layer1")
    chosen = document["variables"]["A"]["by_hook"]["layer1"]["features"]["chosen"]
    assert page.locator("#features tr").count() == 1 + len(chosen)
    assert page.locator("#chart-rank polyline").count() == 2
    assert "reproduce the model" in page.text_content("#circuit")
    context.close()
    assert errors == [] and all(u.startswith("file://") for u in requests)


def test_sankey_page_offers_the_causal_view(page_at, document, tmp_path):  # noqa: F811
    arrays = demo_arrays(N, n_features=N_FEATURES, seed=11)
    paths = circuit_trace.write_reports(tmp_path, **arrays, log=lambda _: None, causal=document)
    page = page_at(paths["sankey"])
    page.select_option("#filter", "causal")
    page.wait_for_selector('#plot[data-shown="causal"]', timeout=5_000)
    view = circuit_trace.causal_sankey_view(document)
    assert page.evaluate(f"() => {GD}.data[0].node.customdata") == view["label"]
    heads = page.evaluate(f"() => {GD}.layout.annotations.map(a => a.text)")
    assert any("task variable" in h for h in heads)
    assert np.isclose(sum(page.evaluate(f"() => {GD}.data[0].link.value")), sum(view["value"]))
