"""`monosem parity` and `monosem export` on a finished run directory (built directly, without training)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from jax_impl.cli import main
from jax_impl.interop import bridge
from jax_impl.jobs import parity
from jax_impl.jobs.run_config import RunConfig
from jax_impl.jobs.rundir import MANIFEST, MLP_PATH, SAE_PATH, dataset_path
from jax_impl.task.pointer import SPLITS, DataConfig, Split
from jax_impl.task.splits import write_split
from monosem_torch_ref.models import InterpretabilityMLP, SparseAutoencoder
from parity_tests.helpers import randomize_batch_stats, task_rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small run: 3 splits of 64-100 rows, random torch-initialised models saved through the bridge."""
    root = tmp_path_factory.mktemp("run")
    sizes = {"train": 100, "val": 64, "test": 64}
    for i, (split, n) in enumerate(sizes.items()):
        x, y = task_rows(n, seed=50 + i)
        write_split(dataset_path(root, split), Split(x.astype(np.int32), y[:, 0]))
    torch.manual_seed(50)
    mlp = InterpretabilityMLP()
    randomize_batch_stats(mlp, 50)
    bridge.save_mlp(bridge.mlp_from_state_dict(mlp.state_dict()), root / MLP_PATH)
    bridge.save_sae(bridge.sae_from_state_dict(SparseAutoencoder(512, 256).state_dict()), root / SAE_PATH)
    config = RunConfig(data=DataConfig(n_train=100, n_val=64, n_test=64))
    (root / MANIFEST).write_text(json.dumps({"config": config.to_dict(), "stages": {}}))
    return root


def test_parity_passes_and_prints_the_table(run_dir, capsys):
    assert main(["parity", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    for quantity in parity.QUANTITIES:
        assert quantity in out
    assert "EXCEEDED" not in out and all(s in out for s in SPLITS)


def test_parity_fails_when_a_tolerance_is_exceeded(run_dir, monkeypatch, capsys):
    # Below any real float32 difference: the prediction row must then be reported and the exit code be 1.
    monkeypatch.setitem(parity.TOLERANCES, "prediction", -1.0)
    assert main(["parity", "--run-dir", str(run_dir)]) == 1
    assert "EXCEEDED" in capsys.readouterr().out


def test_parity_names_a_missing_model(tmp_path, run_dir, capsys):
    shutil.copytree(run_dir / "dataset", tmp_path / "dataset")
    shutil.copy(run_dir / MANIFEST, tmp_path / MANIFEST)
    assert main(["parity", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "perfect_mlp.pth: file not found" in err and len(err.strip().splitlines()) == 1
