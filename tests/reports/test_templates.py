"""The pages' HTML/CSS/JS are package data; `fill` puts values at their markers and nowhere else."""

from __future__ import annotations

import pytest

from jax_impl.reports.templates import fill, template


def test_every_page_template_is_package_data_with_its_markers():
    assert "@@DATA@@" in template("atlas_page.html") and "@@JS@@" in template("atlas_page.html")
    assert "@@PLOTLYJS@@" in template("report_page.html") and "@@SCRIPT@@" in template("report_page.html")
    for name in ("atlas.js", "heatmap.js", "bell.js", "sankey.js"):
        assert "@@" not in template(name) and len(template(name)) > 200


def test_fill_replaces_markers_once_and_checks_both_sides():
    assert fill("<p>@@A@@ and @@B@@</p>", A="@@B@@", B="{x}") == "<p>@@B@@ and {x}</p>"  # values are not rescanned
    with pytest.raises(KeyError):
        fill("@@A@@ @@B@@", A="1")
    with pytest.raises(ValueError, match=r"no marker for \['C'\]"):
        fill("@@A@@", A="1", C="2")
