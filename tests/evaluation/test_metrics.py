"""The metric formulas (jax_impl.evaluation.metrics) against hand computations, and their two ways of gathering
the sums (rows in memory, rows streamed from a file in chunks) against each other."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jax_impl import saes
from jax_impl.data.activations import open_activations
from jax_impl.evaluation import metrics


def test_formulas_on_hand_computed_numbers():
    x = np.array([[1.0, 2.0], [3.0, 6.0]])  # column means (2, 4): centred sum of squares 1 + 1 + 4 + 4 = 10
    assert metrics.centred_sum_of_squares(x) == 10.0
    assert metrics.centred_sum_of_squares_from_sums(x.sum(axis=0), np.square(x).sum(axis=0), 2) == 10.0
    assert metrics.explained_variance(2.5, 10.0) == 0.75
    assert metrics.explained_variance(2.5, 0.0) is None  # every row the same: nothing to explain
    assert metrics.mse_per_element(2.5, 4) == 0.625
    assert metrics.mean_l0(6.0, 4) == 1.5
    assert metrics.dead_fraction(np.array([True, False, False, True])) == 0.5
    assert metrics.prediction_metrics(np.array([0.4, 2.0]), np.array([0.0, 3.0])) == pytest.approx(
        {"mse": (0.16 + 1.0) / 2, "exact_match": 0.5})


def test_in_memory_and_streamed_metrics_agree(tmp_path):
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(300, 16))).astype(np.float32) + 1.0  # a mean far from 0: one pass loses digits
    np.save(tmp_path / "acts.npy", x)
    sae = saes.create("relu-l1", 16, 24, key=jax.random.key(0))
    reconstruction, features = (np.asarray(a) for a in sae(x))
    in_memory = metrics.reconstruction_quality(x, reconstruction, features)
    streamed = metrics.reconstruction_metrics(sae, open_activations(tmp_path / "acts.npy"), chunk_rows=64)
    assert streamed["rows"] == 300
    assert streamed["mse"] == pytest.approx(in_memory["reconstruction_mse"], rel=1e-5)
    assert streamed["explained_variance"] == pytest.approx(in_memory["explained_variance"], rel=1e-4)
    assert streamed["l0"] == in_memory["l0"] and streamed["dead_fraction"] == in_memory["dead_fraction"]
    assert 0 < in_memory["dead_fraction"] < 1 and in_memory["l0"] > 0  # the comparison covers both cases
