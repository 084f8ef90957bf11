"""`monosem dashboard` without a browser: its statistics against plain numpy (streamed in chunks or not), any SAE
file (ours, a SAELens folder), 16,384 features in pages of bounded size, bad input one line with exit 2 and
nothing written, a rerun replacing the set. The page in Chromium: tests/reports/test_dashboard_browser.py."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_impl import saes
from jax_impl.cli import main
from jax_impl.evaluation.dashboard import ArrayRows, DashboardConfig, feature_statistics
from jax_impl.interop import bridge, saelens
from jax_impl.reports.dashboard_page import INDEX_JS, page_file

WIDTH = 10
X = np.random.default_rng(1).standard_normal((333, WIDTH)).astype(np.float32)


def _sae(name: str = "topk", features: int = 40) -> saes.SAE:
    arch = saes.get(name)
    cfg = arch.config(k=3) if name == "topk" else arch.config()
    return saes.create(name, WIDTH, features, cfg, key=jax.random.key(2))


def _data(call: str, path: Path):
    text = path.read_text(encoding="utf-8")
    match = re.fullmatch(rf"monosemDashboard\.{call}\((.*)\);\n", text, re.S)
    assert match, text[:80]
    return json.loads("[" + match.group(1) + "]")


# TopK: streamed in chunks, sparse histogram binning; ReLU: one chunk (automatic size), dense binning
@pytest.mark.parametrize("name, chunk", [("topk", 111), ("relu-l1", 0)])
def test_statistics_equal_numpy(name, chunk):
    sae = _sae(name)
    # encoded in the same chunks: a matmul's last bit may depend on its shape
    step = chunk or len(X)
    f = np.concatenate([np.asarray(sae.encode(X[i:i + step])) for i in range(0, len(X), step)])
    s = feature_statistics(sae, ArrayRows(X), DashboardConfig(chunk_rows=chunk, top_k=5, bins=7, neighbours=3))
    np.testing.assert_array_equal(s.fires, (f != 0).sum(axis=0))
    np.testing.assert_allclose(s.sums, f.sum(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(s.max, f.max(axis=0))
    for j in range(sae.dict_size):
        a = f[:, j]
        hist = np.histogram(a[a > 0], bins=7, range=(0, a.max()))[0] if a.max() > 0 else np.zeros(7)
        np.testing.assert_array_equal(s.histogram[j], hist)
        top = np.argsort(-a, kind="stable")[:5]
        top = top[a[top] > 0]
        np.testing.assert_array_equal(np.sort(s.top_values[j][: len(top)]), np.sort(a[top]))
        assert set(s.top_rows[j][: len(top)]) == set(top) and (s.top_rows[j][len(top):] == -1).all()
    w = np.asarray(sae.params()["w_dec"])
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    np.testing.assert_array_equal(s.neighbours, np.argsort(-cos, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(s.cosines, np.sort(cos, axis=1)[:, ::-1][:, :3], atol=1e-5)
    assert s.fires.sum() > 0


def _write_labels(path: Path, rows: int, header=("token", "context")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(header)
        out.writerows([f"t{i}", f"context of {i}"] for i in range(rows))
    return path


def test_any_sae_file_and_its_labels(tmp_path):
    sae = _sae()
    bridge.save_sae(sae, tmp_path / "sae.pth")
    saelens.save_saelens(sae, tmp_path / "saelens", activations=X)
    np.save(tmp_path / "x.npy", X)
    labels = _write_labels(tmp_path / "labels.csv", len(X))
    pages = {}
    for name in ("sae.pth", "saelens"):
        out = tmp_path / f"out-{name}"
        assert main(["dashboard", "--sae", str(tmp_path / name), "--activations", str(tmp_path / "x.npy"),
                     "--labels", str(labels), "--out", str(out), "--features-per-page", "16", "--top-k", "4"]) == 0
        index = _data("index", out / INDEX_JS)[0]
        assert (index["features"], index["pages"], index["columns"]) == (40, 3, ["token", "context"])
        assert index["activations"] == {"file": "x.npy", "rows": len(X), "width": WIDTH}
        assert json.loads((out / "dashboard.json").read_text()) == index
        number, doc = _data("page", out / page_file(1))
        assert number == 1 and [f["id"] for f in doc["features"]] == list(range(16, 32))
        pages[name] = doc
        # the density shown is the one in the SAELens folder's sparsity.safetensors
        logs = saelens.read_sparsity(tmp_path / "saelens")
        np.testing.assert_allclose([f["log10_density"] for f in doc["features"]], logs[16:32], atol=1e-5)
        for f in doc["features"]:
            assert [t[2] for t in f["top"]] == [[f"t{r}", f"context of {r}"] for r, _, _ in f["top"]]
    assert pages["sae.pth"] == pages["saelens"]


def test_sixteen_thousand_features_make_bounded_pages(tmp_path):
    """16,384 features: 64 pages of 256, each file bounded by its features (not the SAE), the index a few kB."""
    sae = saes.create("relu-l1", 8, 16384, saes.get("relu-l1").config(), key=jax.random.key(0))
    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)  # about half the features fire per row
    labels = [(f"w{i}", "c" * 30) for i in range(len(x))]
    from jax_impl.jobs.dashboard import LabelTable, dashboard

    dashboard(sae, x, tmp_path, labels=LabelTable(("token", "context"), labels), log=lambda _: None)
    files = sorted((tmp_path / "dashboard_data").glob("page-*.js"))
    assert len(files) == 64 and files[-1].name == "page-00063.js"
    assert (tmp_path / INDEX_JS).stat().st_size < 2048
    # per feature: 20 top rows of ~40 label characters, 24 bins, 10 neighbours: < 2 kB
    assert max(f.stat().st_size for f in files) < 256 * 2048
    _, last = _data("page", files[-1])
    assert [f["id"] for f in last["features"]][-1] == 16383
    assert sum(len(f["top"]) for f in last["features"]) > 256 * 10  # the rows shown are there


def test_a_rerun_with_fewer_pages_leaves_none_of_the_old(tmp_path):
    np.save(tmp_path / "x.npy", X)
    bridge.save_sae(_sae(), tmp_path / "sae.pth")
    argv = ["dashboard", "--sae", str(tmp_path / "sae.pth"), "--activations", str(tmp_path / "x.npy"),
            "--out", str(tmp_path / "out")]
    assert main([*argv, "--features-per-page", "5"]) == 0
    assert len(list((tmp_path / "out" / "dashboard_data").glob("page-*"))) == 8
    assert main([*argv, "--features-per-page", "20"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "dashboard_data").iterdir()) == [
        "index.js", "page-00000.js", "page-00001.js"]
    assert _data("index", tmp_path / "out" / INDEX_JS)[0]["columns"] == []


BAD = {
    "short": (lambda d: _write_labels(d / "l.csv", len(X) - 1), r"l\.csv: 332 label rows after the header, expected 333"),
    "long": (lambda d: _write_labels(d / "l.csv", len(X) + 5), r"l\.csv: more than 333 label rows"),
    "fields": (lambda d: (d / "l.csv").write_text("a,b\n1,2\n3\n"), r"l\.csv: line 3 \(label row 1\) has 1 fields, expected 2"),
    "empty": (lambda d: (d / "l.csv").write_text(""), r"l\.csv: empty; expected a header row"),
    "binary": (lambda d: (d / "l.csv").write_bytes(b"a,b\n\xff\xfe,1\n"), r"l\.csv: not UTF-8 text"),
    "missing": (lambda d: d / "nope.csv", r"nope\.csv: file not found"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_labels_are_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    np.save(tmp_path / "x.npy", X)
    bridge.save_sae(_sae(), tmp_path / "sae.pth")
    make, message = BAD[case]
    labels = make(tmp_path)
    labels = tmp_path / "l.csv" if labels is None or not isinstance(labels, Path) else labels
    code = main(["dashboard", "--sae", str(tmp_path / "sae.pth"), "--activations", str(tmp_path / "x.npy"),
                 "--labels", str(labels), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_bad_activations_and_flags_are_one_line(tmp_path, capsys):
    bridge.save_sae(_sae(), tmp_path / "sae.pth")
    np.save(tmp_path / "wide.npy", np.zeros((5, WIDTH + 1), np.float32))
    base = ["dashboard", "--sae", str(tmp_path / "sae.pth"), "--out", str(tmp_path / "out")]
    assert main([*base, "--activations", str(tmp_path / "wide.npy")]) == 2
    assert f"wide.npy: rows of width {WIDTH + 1}, expected the SAE's input width {WIDTH}" in capsys.readouterr().err
    assert main([*base, "--activations", str(tmp_path / "wide.npy"), "--top-k", "0"]) == 2
    assert "--top-k must be a whole number in [1, 1000], got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
