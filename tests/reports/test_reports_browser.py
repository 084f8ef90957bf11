"""The report pages in a real headless Chromium, offline: drawn, hoverable, no errors.

Needs Debian's /usr/bin/chromium (scripts/ensure_chromium.sh installs it); Playwright only
drives it, no browser download. Set MONOSEM_SKIP_BROWSER=1 to skip, MONOSEM_SCREENSHOT_DIR
to keep the screenshots.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from benchmarks.report_demo import demo_arrays
from jax_impl.reports import circuit_trace

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
N, N_FEATURES = 300, 256
GD = "document.querySelector('.js-plotly-plot')"


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("MONOSEM_SKIP_BROWSER") == "1":
        pytest.skip("MONOSEM_SKIP_BROWSER=1")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure_chromium.sh (or set MONOSEM_SKIP_BROWSER=1)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # launch() runs Chromium on a fresh temporary profile, removed on close.
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    return demo_arrays(N, n_features=N_FEATURES, seed=11)


@pytest.fixture(scope="module")
def written(arrays, tmp_path_factory) -> dict[str, Path]:
    return circuit_trace.write_reports(tmp_path_factory.mktemp("reports"), **arrays, log=lambda _: None)


def open_offline(browser, path: Path, requests: list[str], errors: list[str]):
    """Open ``path`` in a fresh offline context; every request is recorded, any but file:// aborted,
    console errors and uncaught exceptions are recorded. Returns the page once plotly has drawn."""
    context = browser.new_context(viewport={"width": 1200, "height": 700}, offline=True)

    def route(r):
        requests.append(r.request.url)
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=10_000)
    return page


@pytest.fixture
def page_at(browser, tmp_path):
    """path -> page, opened by open_offline; on teardown asserts no console error happened and
    nothing but the page file was requested. ``page_at.screenshot(page, name)`` saves a PNG."""
    pages, errors, requests = [], [], []

    def open_page(path: Path):
        pages.append(open_offline(browser, path, requests, errors))
        return pages[-1]

    def screenshot(page, name: str) -> Path:
        shot = tmp_path / f"{name}.png"
        page.screenshot(path=str(shot))
        if target := os.environ.get("MONOSEM_SCREENSHOT_DIR"):
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(target) / shot.name)
        return shot

    open_page.screenshot = screenshot
    yield open_page
    for page in pages:
        page.context.close()
    assert errors == []
    assert requests and all(url.startswith("file://") for url in requests), requests


def test_offline_guard_catches_network_and_console_errors(browser, written, tmp_path):
    # The same page with one external script and one script error: the guard must see both.
    html = written["heatmap"].read_text(encoding="utf-8")
    bad = tmp_path / "bad.html"
    bad.write_text(html.replace("<body>", '<body><script src="https://cdn.example.org/x.js"></script>'
                                          "<script>undefinedFunction()</script>", 1), encoding="utf-8")
    requests, errors = [], []
    page = open_offline(browser, bad, requests, errors)
    page.context.close()
    assert "https://cdn.example.org/x.js" in requests
    assert any("undefinedFunction" in e for e in errors)


def cell_top_pair(arrays, out: int, idx: str) -> tuple[int, int]:
    """Strongest neuron<->feature pair of one heatmap cell, by plain Python."""
    energy: dict[tuple, float] = defaultdict(float)
    for s in range(N):
        row = arrays["inputs"][s]
        if round(arrays["expected"][s]) != out or f"{row[4]}-{row[9]}" != idx:
            continue
        l2, f = arrays["layer2"][s], arrays["features"][s]
        n_top = sorted(range(512), key=lambda j: (-l2[j], j))[:10]
        f_top = sorted(range(len(f)), key=lambda j: (-f[j], j))[:10]
        for n_id, f_id in zip(n_top, f_top):
            energy[(n_id, f_id)] += round(float(l2[n_id]), 6) * round(float(f[f_id]), 6)
    return max(energy, key=energy.get)


def test_heatmap_draws_every_cell_and_hover_lists_circuits(page_at, written, arrays):
    page = page_at(written["heatmap"])
    rows = sorted({round(e) for e in arrays["expected"]})
    cols = sorted({f"{r[4]}-{r[9]}" for r in arrays["inputs"]})
    drawn = page.evaluate(f"""() => {{ const gd = {GD};
        return {{x: gd.data[0].x, y: gd.data[0].y, z: gd.data[0].z,
                 labels: document.querySelectorAll('.heatmaplayer text').length,
                 images: document.querySelectorAll('.heatmaplayer image').length}}; }}""")
    assert drawn["x"] == cols and drawn["y"] == [str(r) for r in rows]
    assert drawn["labels"] == len(rows) * len(cols) and drawn["images"] == 1
    assert "summed energy" in page.inner_text("body")

    # Hover the cell with the most energy; its label must list that cell's strongest pair.
    z = np.array(drawn["z"])
    i, j = np.unravel_index(np.argmax(z), z.shape)
    x, y = page.evaluate(f"""([i, j]) => {{ const gd = {GD}, fl = gd._fullLayout, r = gd.getBoundingClientRect();
        return [r.left + fl.xaxis._offset + fl.xaxis.c2p(j), r.top + fl.yaxis._offset + fl.yaxis.c2p(i)]; }}""",
                         [int(i), int(j)])
    page.mouse.move(x, y)
    page.wait_for_selector(".hoverlayer .hovertext")
    label = page.text_content(".hoverlayer .hovertext")
    n_id, f_id = cell_top_pair(arrays, rows[i], cols[j])
    assert f"expected output {rows[i]}, pointers {cols[j]}" in label
    assert f"1. neuron {n_id} \u2194 feature {f_id}:" in label
    assert label.count("\u2194") == 11  # heading + 10 pairs
    page_at.screenshot(page, "heatmap")  # with the hover label: it is what the page is for


def test_bell_curves_draw_default_pairs_and_controls_work(page_at, written):
    page = page_at(written["bell_curves"])

    def drawn():
        return page.evaluate(f"""() => ({{
            names: {GD}.data.map(t => t.name),
            paths: Array.from(document.querySelectorAll('.scatterlayer .trace .js-line'),
                              p => (p.getAttribute('d') || '').length),
            legend: document.querySelectorAll('.legend .traces').length}})""")

    stats = page.evaluate("() => REPORT.stats")
    names = [f"n{n} \u2194 f{f}" for n, f in zip(stats["neuron"], stats["feature"])]
    first = drawn()
    assert len(names) > 10 and first["names"] == names[:10]
    assert len(first["paths"]) == first["legend"] == 10 and min(first["paths"]) > 100
    assert page.locator("#pairs option").count() == len(names)
    page_at.screenshot(page, "bell_curves")

    page.select_option("#pairs", ["2", "5", str(len(names) - 1)])
    page.wait_for_function(f"{GD}.data.length === 3")
    assert drawn()["names"] == [names[2], names[5], names[-1]] and len(drawn()["paths"]) == 3
    page.click("#reset")
    page.wait_for_function(f"{GD}.data.length === 10")
    assert drawn()["names"] == names[:10]


def test_sankey_draws_nodes_and_links_and_filters(page_at, written, arrays):
    views = circuit_trace.sankey_data(circuit_trace.circuit_trace_table(**arrays))["views"]
    page = page_at(written["sankey"])

    def drawn(key: str) -> None:
        # The page marks a finished (two-pass) draw; plotly then still animates node moves
        # for 500 ms, and old nodes and links leave the DOM at the end of that.
        page.wait_for_selector(f'#plot[data-shown="{key}"]', timeout=5_000)
        page.wait_for_function(
            "([nodes, links]) => document.querySelectorAll('.sankey-node').length === nodes"
            " && document.querySelectorAll('.sankey-link').length === links",
            arg=[len(views[key]["label"]), len(views[key]["source"])], timeout=5_000)
        page.wait_for_timeout(600)

    full = views["all"]
    drawn("all")
    assert len(set(full["column"])) == 5
    # Hover the widest link: its label names both ends and the summed energy.
    box = page.locator(".sankey-link").nth(int(np.argmax(full["value"]))).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector(".hoverlayer .hovertext")
    label = page.text_content(".hoverlayer .hovertext")
    assert "summed energy" in label and "\u2192" in label
    page_at.screenshot(page, "sankey")

    page.select_option("#filter", "out:3")
    drawn("out:3")
    assert len(views["out:3"]["source"]) < len(full["source"])
    assert page.evaluate(f"() => {GD}.data[0].node.customdata") == views["out:3"]["label"]
    page.click("#reset")
    drawn("all")


def test_pages_without_energy_show_no_errors(page_at, arrays, tmp_path):
    zero = dict(arrays, layer2=np.zeros_like(arrays["layer2"]), features=np.zeros_like(arrays["features"]))
    paths = circuit_trace.write_reports(tmp_path / "zero", **zero, log=lambda _: None)
    assert page_at(paths["bell_curves"]).locator("#pairs option").count() == 0
    page = page_at(paths["sankey"])
    page.wait_for_selector('#plot[data-shown="all"]')
    assert page.locator(".sankey-node").count() == 0 and "no row with energy" in page.inner_text("#plot")
