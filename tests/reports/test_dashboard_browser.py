"""The feature dashboard in a real headless Chromium, offline (as tests/reports/test_reports_browser.py): it opens
from file://, loads only the index and the pages of the features shown, navigates to a feature on another page,
finds features by id and by label text, and shows hostile labels (HTML and script in the CSV) as text."""

from __future__ import annotations

import csv
from pathlib import Path

import jax
import numpy as np
import pytest
from test_reports_browser import browser  # noqa: F401  (fixture)

from jax_impl import saes
from jax_impl.evaluation.dashboard import DashboardConfig
from jax_impl.jobs.dashboard import dashboard
from jax_impl.reports.dashboard_page import page_file

WIDTH, FEATURES, ROWS, PER_PAGE = 12, 600, 400, 50
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script></td><b>row {i}</b> & "q"'


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, saes.SAE]:
    folder = tmp_path_factory.mktemp("dashboard")
    sae = saes.create("topk", WIDTH, FEATURES, saes.get("topk").config(k=5), key=jax.random.key(7))
    x = np.random.default_rng(7).standard_normal((ROWS, WIDTH)).astype(np.float32)
    np.save(folder / "acts.npy", x)
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["token", "context"])
        out.writerows([f"tok{i:04d}", HOSTILE.format(i=i)] for i in range(ROWS))
    dashboard(sae, folder / "acts.npy", folder / "out", labels=folder / "labels.csv",
              config=DashboardConfig(features_per_page=PER_PAGE, top_k=8, neighbours=4), log=lambda _: None)
    return folder / "out", sae


@pytest.fixture
def open_page(browser, tmp_path):  # noqa: F811
    """(path, fragment) -> (page, requests), opened offline; on teardown: no console error, no dialog, nothing but
    file:// requested."""
    contexts, errors, requests, dialogs = [], [], [], []

    def open_(path: Path, fragment: str = ""):
        context = browser.new_context(viewport={"width": 1300, "height": 900}, offline=True)
        context.route("**/*", lambda r: (requests.append(r.request.url),
                                         r.continue_() if r.request.url.startswith("file://") else r.abort()))
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri() + fragment)
        return page, requests

    yield open_
    for context in contexts:
        context.close()
    assert errors == [] and dialogs == []
    assert requests and all(u.startswith("file://") for u in requests), requests


def _pages_requested(requests: list[str]) -> set[str]:
    return {u.rsplit("/", 2)[-2] + "/" + u.rsplit("/", 1)[-1] for u in requests if "/page-" in u}


def test_opens_offline_and_loads_only_the_page_shown(open_page, written):
    out, _ = written
    page, requests = open_page(out / "dashboard.html")
    page.wait_for_selector('body[data-shown="0"]')
    assert page.text_content("#feature h2") == "Feature 0"
    assert _pages_requested(requests) == {page_file(0)}
    assert page.locator("#list li").count() == PER_PAGE
    assert "600 features" in page.text_content("#summary")


def test_navigating_to_a_feature_on_another_page_loads_its_data(open_page, written):
    out, sae = written
    page, requests = open_page(out / "dashboard.html", "#feature=517")
    page.wait_for_selector('body[data-shown="517"]')
    assert _pages_requested(requests) == {page_file(517 // PER_PAGE)}
    # its neighbours by decoder cosine, as numpy finds them; a click shows one (maybe on yet another page)
    w = np.asarray(sae.params()["w_dec"])
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = unit @ unit[517]
    cos[517] = -np.inf
    shown = [int(b) for b in page.eval_on_selector_all(".neighbour", "bs => bs.map(b => b.dataset.id)")]
    assert shown == list(np.argsort(-cos, kind="stable")[:4])
    page.click(f'.neighbour[data-id="{shown[-1]}"]')
    page.wait_for_selector(f'body[data-shown="{shown[-1]}"]')
    assert page.text_content("#feature h2") == f"Feature {shown[-1]}"
    page.click("#next")
    page.wait_for_function(f"document.getElementById('page-info').textContent.startsWith('page {shown[-1] // PER_PAGE + 2} ')")


def test_hostile_labels_are_text(open_page, written):
    out, _ = written
    page, _ = open_page(out / "dashboard.html", "#feature=3")
    page.wait_for_selector('body[data-shown="3"]')
    cells = page.eval_on_selector_all("#feature td.label", "tds => tds.map(t => t.textContent)")
    assert cells and any(c.startswith("<img src=x") and "<script>" in c for c in cells)
    assert page.locator("#feature img, #feature td b, #feature script").count() == 0
    assert page.evaluate("window.pwned") is None


def test_search_by_id_and_by_label_text(open_page, written):
    out, sae = written
    page, requests = open_page(out / "dashboard.html")
    page.wait_for_selector('body[data-shown="0"]')
    page.fill("#q", "233")
    page.press("#q", "Enter")
    page.wait_for_selector('body[data-shown="233"]')
    # a label's text: every feature with that row among its top rows, found by scanning the pages one by one
    x = np.load(out.parent / "acts.npy")
    features = np.asarray(sae.encode(x))
    row = int(np.argmax(features[:, 42]))
    expected = sorted(j for j in range(FEATURES) if row in np.argsort(-features[:, j], kind="stable")[:8]
                      and features[row, j] > 0)
    page.fill("#q", f"TOK{row:04d}")  # any case
    page.press("#q", "Enter")
    page.wait_for_function("document.getElementById('status').textContent.includes('feature(s) with')")
    found = sorted(int(i) for i in page.eval_on_selector_all("#results li", "ls => ls.map(l => l.dataset.id)"))
    assert 42 in found and found == expected
    held = page.evaluate("window.monosemDashboard.heldPages().length")
    assert held <= 8 < FEATURES // PER_PAGE  # every page was read, few are kept
    assert len(_pages_requested(requests)) == FEATURES // PER_PAGE
    page.click(f'#results li[data-id="{found[-1]}"]')
    page.wait_for_selector(f'body[data-shown="{found[-1]}"]')
