"""The sweep's report files are the same bytes for the same sweep (plotly would name its element at random)."""

from __future__ import annotations

import copy

from jax_impl.reports.sweep_page import SWEEP_CSV, SWEEP_HTML, SWEEP_JSON, write_report

DOC = {
    "format": "monosem-sweep/1",
    "stage": "sae",
    "source": "acts.npy",
    "run_dir": None,
    "grid": {"dict_size": ["32", "64"]},
    "groups": [{"group": 0, "configurations": ["000-topk", "001-topk"], "seconds": 7.3}],
    "configurations": [
        {"name": "000-topk", "variant": "topk", "dict_size": 32, "explained_variance": 0.68, "l0": 28.7,
         "dead_fraction": 0.0, "mse": 0.028, "final_loss": 0.037, "seconds": 4.5, "status": "ok", "group": 0},
        {"name": "001-topk", "variant": "topk", "dict_size": 64, "explained_variance": 0.75, "l0": 32.0,
         "dead_fraction": 0.0, "mse": 0.022, "final_loss": 0.029, "seconds": 2.8, "status": "ok", "group": 0},
    ],
}


def test_the_same_sweep_writes_the_same_bytes(tmp_path):
    written = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        write_report(out, copy.deepcopy(DOC), log=lambda _: None)
        written.append({f: (out / f).read_bytes() for f in (SWEEP_JSON, SWEEP_CSV, SWEEP_HTML)})
    assert written[0] == written[1]
    assert b'id="sweep-plot"' in written[0][SWEEP_HTML]
