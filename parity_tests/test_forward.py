"""Forward passes, JAX vs the PyTorch reference: MLP (eval and train mode) and SAE, random and upstream weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jax_impl.interop import bridge
from monosem_torch_ref.models import InterpretabilityMLP, SparseAutoencoder, mlp_from_state_dict
from parity_tests.helpers import assert_close, randomize_batch_stats, task_rows, ulps
from parity_tests.seed_sae import seed_sae_from_state_dict

# Random torch-initialised weights: the outputs differ only by summation order in dot products of
# K <= 512 terms, i.e. a few ulps of the largest output value (measured: <= 4). RANDOM_ULPS = 64 allows
# ~sqrt(512) ~ 23 (a random walk of one rounding per term) with room, while a semantic slip (biased
# running_var, eps outside the sqrt, a transposed weight) changes outputs by >= 1e-3, i.e. >= 1000 ulps.
RANDOM_ULPS = 64

# The upstream perfect_mlp.pth has large first-layer weights (up to 31): pre-BatchNorm values reach
# ~300 (ulp 3e-5) before BatchNorm divides them by sqrt(running_var) ~ 35, i.e. ~1e-6 per ulp in
# layer2 and in the prediction (O(10)). 5e-5 allows ~50 of those ulps.
UPSTREAM_TOL = 5e-5


def torch_mlp(seed: int) -> InterpretabilityMLP:
    torch.manual_seed(seed)
    model = InterpretabilityMLP()
    randomize_batch_stats(model, seed)
    return model


def jax_forward(model, x: np.ndarray):
    prediction, layer2 = model(x)
    return np.asarray(prediction), np.asarray(layer2)


@torch.no_grad()
def test_mlp_eval_mode_random_weights():
    reference = torch_mlp(0).eval()
    model = bridge.mlp_from_state_dict(reference.state_dict())  # eval mode
    x, _ = task_rows(512)
    prediction, layer2 = reference(torch.from_numpy(x))
    jax_prediction, jax_layer2 = jax_forward(model, x)
    assert_close("MLP eval prediction (random)", jax_prediction, prediction, ulps(prediction, RANDOM_ULPS))
    assert_close("MLP eval layer2 (random)", jax_layer2, layer2, ulps(layer2, RANDOM_ULPS))


@torch.no_grad()
def test_mlp_train_mode_random_weights():
    """Train mode normalises with the batch's own statistics (biased variance) and updates the running ones."""
    reference = torch_mlp(1).train()
    model = bridge.mlp_from_state_dict(reference.state_dict())
    model.train()
    x, _ = task_rows(64, seed=1)
    prediction, layer2 = reference(torch.from_numpy(x))
    jax_prediction, jax_layer2 = jax_forward(model, x)
    assert_close("MLP train prediction (random)", jax_prediction, prediction, ulps(prediction, RANDOM_ULPS))
    assert_close("MLP train layer2 (random)", jax_layer2, layer2, ulps(layer2, RANDOM_ULPS))


@torch.no_grad()
def test_mlp_upstream_weights_all_upstream_rows(upstream_state_dict, upstream_splits):
    """The published perfect_mlp.pth gives the same predictions in JAX as in torch on all 10,000 rows."""
    reference = mlp_from_state_dict(upstream_state_dict)
    model = bridge.mlp_from_state_dict(upstream_state_dict)
    x = np.concatenate([s.inputs for s in upstream_splits.values()]).astype(np.float32)
    assert x.shape == (10_000, 10)
    prediction, layer2 = reference(torch.from_numpy(x))
    jax_prediction, jax_layer2 = jax_forward(model, x)
    assert_close("MLP eval prediction (upstream, 10,000 rows)", jax_prediction, prediction, UPSTREAM_TOL)
    assert_close("MLP eval layer2 (upstream, 10,000 rows)", jax_layer2, layer2, UPSTREAM_TOL)
    # Same rounded answers, row for row: what a user of the predictions sees.
    np.testing.assert_array_equal(np.rint(jax_prediction), np.rint(prediction.numpy()))


@torch.no_grad()
def test_mlp_upstream_weights_train_mode(upstream_state_dict, upstream_splits):
    reference = mlp_from_state_dict(upstream_state_dict).train()
    model = bridge.mlp_from_state_dict(upstream_state_dict)
    model.train()
    x = upstream_splits["train"].inputs[:64].astype(np.float32)
    prediction, layer2 = reference(torch.from_numpy(x))
    jax_prediction, jax_layer2 = jax_forward(model, x)
    # Train mode divides by the batch's own std, which for this model can be ~10x smaller than the running
    # one, so the same pre-BatchNorm ulps weigh ~10x more: 10 x UPSTREAM_TOL.
    assert_close("MLP train prediction (upstream)", jax_prediction, prediction, 10 * UPSTREAM_TOL)
    assert_close("MLP train layer2 (upstream)", jax_layer2, layer2, 10 * UPSTREAM_TOL)


@pytest.mark.parametrize("dict_size", [2048, 96])
@torch.no_grad()
def test_sae_random_weights(dict_size):
    torch.manual_seed(2)
    reference = SparseAutoencoder(512, dict_size)
    model = seed_sae_from_state_dict(reference.state_dict())
    # Non-negative, sparse-ish inputs like ReLU activations, at the scale of a trained layer2 (up to ~5).
    x = torch.relu(torch.randn(256, 512, generator=torch.Generator().manual_seed(3)) * 2.0)
    reconstruction, features = reference(x)
    jax_reconstruction, jax_features = model(x.numpy())
    # Encoder dot products of 512 terms, decoder of dict_size terms: the same rounding budget as the MLP.
    assert_close(f"SAE features (random, {dict_size})", np.asarray(jax_features), features, ulps(features, RANDOM_ULPS))
    assert_close(f"SAE reconstruction (random, {dict_size})", np.asarray(jax_reconstruction), reconstruction,
                 ulps(reconstruction, RANDOM_ULPS))
