"""The JAX harvest (a vmapped per-row eval-mode forward) against a torch forward-hook harvest."""

from __future__ import annotations

import numpy as np
import torch

from jax_impl.data.harvest import harvest_activations
from jax_impl.interop import bridge
from monosem_torch_ref.models import InterpretabilityMLP, mlp_from_state_dict
from monosem_torch_ref.train import harvest_layer2
from parity_tests.helpers import assert_close, randomize_batch_stats, task_rows, ulps


def test_harvest_matches_forward_hook_upstream(upstream_state_dict, upstream_splits):
    """The seed's harvest: the published MLP over the 8,000 upstream training rows -> (8000, 512)."""
    inputs = upstream_splits["train"].inputs
    reference = harvest_layer2(mlp_from_state_dict(upstream_state_dict), torch.as_tensor(inputs, dtype=torch.float32))
    ours = harvest_activations(bridge.mlp_from_state_dict(upstream_state_dict), inputs)
    assert ours.shape == (8000, 512) and ours.dtype == np.float32
    # Same budget as the upstream-weights forward test (test_forward.UPSTREAM_TOL): ~50 ulps of layer2
    # after BatchNorm divides pre-activations of up to ~300 by sqrt(running_var) ~ 35.
    assert_close("harvest layer2 (upstream, 8,000 rows)", ours, reference, 5e-5)


def test_harvest_matches_forward_hook_random():
    torch.manual_seed(11)
    model = InterpretabilityMLP()
    randomize_batch_stats(model, 11)
    inputs, _ = task_rows(300, seed=11)
    reference = harvest_layer2(model, torch.from_numpy(inputs))
    ours = harvest_activations(bridge.mlp_from_state_dict(model.state_dict()), inputs)
    # Per-row (vmapped) vs batched matmuls: summation order only; 64 ulps as in test_forward.
    assert_close("harvest layer2 (random, 300 rows)", ours, reference, ulps(reference, 64))
