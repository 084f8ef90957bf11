"""Training that fails says so (issue 24, item 6): a NaN/inf or exploding loss, or a state that ends NaN, stops
with one line naming the epoch and a hint, a non-zero exit and no artifact set; a sweep marks such a configuration
failed in its table and exits 1 with one line; no JSON we write carries a bare NaN.

What "exploding" means (train.EXPLOSION_FACTOR): an epoch's mean loss above 1000 times the training's first
step's loss (the initial model's, before any update).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jax_impl.cli import main
from jax_impl.errors import TrainingDiverged
from jax_impl.files.atomic import write_json_atomic
from jax_impl.training.loop import EXPLOSION_FACTOR, divergence, run_epochs

ARTIFACTS = ("sae.pth", "sae.safetensors", "sae_config.json", "metrics.json", "saelens")


@pytest.fixture(scope="module")
def acts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(96, 8)).astype(np.float32))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_divergence_names_the_epoch_and_step_of_a_non_finite_or_exploding_loss():
    calm = np.array([1.0, 0.9, 0.8, 0.85], np.float32)
    assert divergence(calm, "SAE", 0) is None
    assert divergence(calm * 999, "SAE", 3, first_loss=1.0) is None  # below the factor: a poor training, not exploded
    assert divergence(np.array([1.0, np.nan, 1.0], np.float32), "SAE", 4) == (
        "SAE training diverged at epoch 5, step 2 (loss nan); no weights were written. Try a smaller learning rate.")
    reason = divergence(np.array([1.0, 5.0, 3e3, 5e3], np.float32), "MLP", 0)  # mean 2001.5 > 1000 x the first step's 1
    assert reason is not None and reason.startswith("MLP training diverged at epoch 1, step 3 (loss 3000, more than 1000 "
                                                    "times the first step's 1; the epoch's mean 2002)")
    assert divergence(np.full(4, 2e3, np.float32), "SAE", 7, first_loss=1.0).startswith("SAE training diverged at epoch 8, step 1")
    assert divergence(np.full(4, 1e9, np.float32), "SAE", 7, first_loss=0.0) is None  # no scale to grow from
    assert EXPLOSION_FACTOR == 1e3


def test_a_state_that_ends_nan_with_finite_losses_is_divergence():
    """E.g. a NaN threshold silences every feature: the loss stays finite, the weights are not; our loader refuses
    them, so nothing may be written."""
    def run_epoch(carry, e):
        return {"w": carry["w"] * (jnp.nan if e == 1 else 1.0), "count": carry["count"] + 1}, jnp.ones(3)

    with pytest.raises(TrainingDiverged, match=r"^SAE training diverged: after epoch 2 its state holds NaN or infinite "
                                               r"values \(\['w'\]\); no weights were written"):
        run_epochs(2, "SAE", {"w": jnp.ones(3), "count": jnp.zeros((), jnp.int32)}, run_epoch,
                   lambda carry, e, losses: (carry, None), log=lambda line: None)


def test_an_exploding_sae_ends_with_one_line_exit_2_and_no_artifacts(acts, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train-sae", "--activations", str(acts), "--out", str(out), "--variant", "topk", "--k", "4",
                 "--dict-size", "16", "--epochs", "2", "--batch-size", "16", "--lr", "1e6"]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"monosem: error: {acts}: SAE training diverged at epoch 1, step "), line
    assert "times the first step's" in line and line.endswith("no weights were written. Try a smaller learning rate.")
    assert not [name for name in ARTIFACTS if (out / name).exists()]


def test_a_sweep_marks_a_diverged_configuration_failed_and_exits_1(acts, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "--activations", str(acts), "--out", str(out), "--variant", "relu-l1", "--dict-size", "8",
                 "--epochs", "1", "--batch-size", "16", "--log-every", "1", "--grid", "lr=1e-3,1e12"]) == 1
    line = one_line_error(capsys)
    assert line.startswith(f"monosem: 1 of 2 configurations failed and have no folder; the status column of {out / 'sweep.csv'} "
                           "says why (first: SAE (001-lr1000000000000.0) training diverged at epoch 1, step "), line
    doc = json.loads((out / "sweep.json").read_text(), parse_constant=lambda token: pytest.fail(f"bare {token} in JSON"))
    ok, bad = doc["configurations"]
    assert ok["status"] == "ok" and (out / ok["name"] / "sae.pth").exists()
    assert "training diverged" in bad["status"] and not (out / bad["name"]).exists()
    assert bad.get("explained_variance") is None and doc["pareto"] == [ok["name"]]


def test_json_with_nan_is_never_written(tmp_path):
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json_atomic(tmp_path / "m.json", {"explained_variance": float("nan")})
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary
